//! SR-IOV for "enhanced networking": discovery of physical and virtual functions in sysfs,
//! enabling VFs, per-VF settings through rtnetlink, binding VFs to vfio-pci with an IOMMU
//! group check, and a persistent, crash-safe pool that leases VFs to instances.
//!
//! Layers (each only uses the ones before it): [`Sysfs`] (discovery under a configurable
//! root) -> [`vf`] (enable VFs, [`VfConfigurator`]) -> [`bind`] (vfio-pci, IOMMU group
//! viability) -> [`Pool`] (leases). See docs/sriov.md.
//!
//! What a VMM does with a VF (`vmm --vf POOL_DIR`):
//!
//! ```no_run
//! # fn main() -> sriov::Result<()> {
//! let pool = sriov::Pool::open(sriov::DEFAULT_POOL_DIR)?; // releases dead holders' leases
//! let mac: sriov::MacAddress = "02:00:00:00:01:23".parse()?;
//! let lease = pool.lease("i-0123456789abcdef0", mac)?;
//! // lease.bdf is on vfio-pci; open lease.vfio_dev_path (/dev/vfio/<lease.iommu_group>),
//! // run the guest, then close every VFIO descriptor before giving the VF back:
//! pool.release(&lease)?;
//! # Ok(())
//! # }
//! ```

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
