//! EC2-compatible instance metadata service (IMDS).
//!
//! Layers: [`config`] (instance records) -> [`model`] (metadata tree) -> [`handler`]
//! (paths, listings, IMDSv1/v2 rules, tokens) <- [`http`] (bounded parser) <- front ends:
//! [`server`] (the `imdsd` host daemon) and [`netstack`] (Ethernet frames in and out for
//! the VMM's virtio-net device, via smoltcp).

pub mod config;
pub mod credentials;
pub mod dhcp;
pub mod error;
pub mod handler;
pub mod http;
pub mod identity;
pub mod model;
pub mod netstack;
pub mod ratelimit;
pub mod server;
pub mod timefmt;
pub mod token;

pub use config::{HostConfig, InstanceRecord, MetadataOptions};
pub use error::ImdsError;
pub use handler::Handler;
pub use identity::IdentitySigner;
pub use model::InstanceMetadata;
pub use netstack::{claims_frame, ImdsResponder, ResponderConfig, IMDS_IPV4};
