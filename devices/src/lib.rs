//! Guest-visible devices. Devices see guest memory only through vm-memory and
//! reach the VMM only through the [`bus::BusDevice`] trait and eventfds.

pub mod bus;
pub mod legacy;
pub mod pci;
pub mod rate_limiter;
pub mod state;
pub mod vfio;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
