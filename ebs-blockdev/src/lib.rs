//! ebs-blockdev: an EBS-like block service (`ebsd`) with an NBD export, and the NBD client
//! the VMM's virtio-blk backend uses to reach volumes. See README.md for what each layer owns.

pub mod api;
pub mod control;
pub mod crypto;
pub mod engine;
pub mod nbd;
pub mod qos;
pub mod service;
pub mod snapshot;
