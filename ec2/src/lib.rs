//! ec2: the data and rules of the EC2-style front door (issue #7).
//!
//! What this crate owns (see README.md): EC2 error codes and ids, the AMI manifest and
//! its store in the object store, the instance-type catalogue, the burstable CPU-credit
//! model and its cgroup v2 enforcement, user data, the instance record, its state machine
//! and state directory, and the `aws ec2` shorthand parsers. It spawns no processes: the
//! launcher (ebsd/vmm orchestration) lives beside these modules, added by the front door.

pub mod api;
pub mod cgroup;
pub mod cpu_credits;
pub mod error;
pub mod filters;
pub mod ids;
pub mod images;
pub mod instance_types;
pub mod instances;
pub mod launcher;
pub mod shorthand;
pub mod user_data;

pub use error::{Ec2Error, ErrorCode};
