//! `vmm`: one process per guest. Builds a KVM virtual machine from a
//! [`config::VmConfig`], boots Linux on it and serves a Firecracker-shaped
//! REST API on a Unix socket.

pub mod api;
pub mod arch;
pub mod boot;
pub mod config;
pub mod dhcp;
pub mod ebs_backend;
pub mod guest_link;
pub mod interrupts;
pub mod passthrough;
pub mod runtime;
pub mod snapshot;
pub mod vcpu;
pub mod vm;
