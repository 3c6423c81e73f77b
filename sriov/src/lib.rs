//! SR-IOV for "enhanced networking": discovery of physical and virtual functions in sysfs,
//! enabling VFs, per-VF settings through rtnetlink, binding VFs to vfio-pci with an IOMMU
//! group check, and a persistent, crash-safe pool that leases VFs to instances.
//!
//! Layers (each only uses the ones before it): [`Sysfs`] (discovery under a configurable
//! root) -> [`vf`] (enable VFs, [`VfConfigurator`]) -> [`bind`] (vfio-pci, IOMMU group
//! viability) -> [`Pool`] (leases). See docs/sriov.md.

mod address;
pub mod bind;
mod error;
mod netlink;
mod pool;
mod sysfs;
#[cfg(test)]
mod testing;
pub mod vf;

pub use address::{MacAddress, PciAddress};
pub use error::{Error, Result};
pub use netlink::NetlinkVfConfigurator;
pub use pool::{Lease, Pool, PoolConfig, PoolEntry, DEFAULT_POOL_DIR};
pub use sysfs::{PhysicalFunction, Sysfs, VirtualFunction, WriteHook};
pub use vf::{VfConfigurator, VfSettings};
