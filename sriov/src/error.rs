//! The crate's error type: every variant names the device, file or rule involved so that
//! an operator can act on the message alone.

use std::io;
use std::path::PathBuf;

use crate::address::PciAddress;

/// Errors from discovery, VF configuration, binding and the pool.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    SysfsRead { path: PathBuf, source: io::Error },

    #[error("cannot write {value:?} to {path}: {source}")]
    SysfsWrite {
        path: PathBuf,
        value: String,
        source: io::Error,
    },

    #[error("unexpected content {content:?} in {path}: {reason}")]
    SysfsParse {
        path: PathBuf,
        content: String,
        reason: String,
    },

    #[error("invalid PCI address {0:?} (expected DDDD:BB:DD.F, e.g. 0000:01:00.0)")]
    InvalidPciAddress(String),

    #[error("invalid MAC address {0:?} (expected six hex octets, e.g. 02:00:00:00:00:01)")]
    InvalidMacAddress(String),

    #[error("PCI device {0} does not exist")]
    NoSuchDevice(PciAddress),

    #[error("{0} is not an SR-IOV physical function (no sriov_totalvfs)")]
    NotPhysicalFunction(PciAddress),

    #[error("{0} is not an SR-IOV virtual function (no physfn link)")]
    NotVirtualFunction(PciAddress),

    #[error("cannot enable {requested} VFs on {pf}: it supports at most {total}")]
    TooManyVfs {
        pf: PciAddress,
        requested: u32,
        total: u32,
    },

    #[error("PF {pf} has no network interface (is its driver loaded?); it must be up before VFs are enabled")]
    PfHasNoInterface { pf: PciAddress },

    #[error("PF {pf} ({ifname}) is down (operstate {operstate}): bring it up first with `ip link set {ifname} up`; the driver refuses sriov_numvfs while the PF is in reset")]
    PfDown {
        pf: PciAddress,
        ifname: String,
        operstate: String,
    },

    #[error("driver {0} is not loaded (no /sys/bus/pci/drivers/{0}); try `modprobe {0}`")]
    DriverNotLoaded(String),

    #[error("{device} is bound to {actual} after asking for {expected}")]
    BindFailed {
        device: PciAddress,
        expected: String,
        actual: String,
    },

    #[error("{0} has no IOMMU group (is the IOMMU enabled? intel_iommu=on / amd_iommu=on)")]
    NoIommuGroup(PciAddress),

    #[error("IOMMU group {group} is not viable: {device} is bound to {driver}; every member must be bound to vfio-pci or to no driver")]
    GroupNotViable {
        group: u32,
        device: String,
        driver: String,
    },

    #[error("setting {setting} of VF {vf_index} on {ifname} through netlink failed: {source}")]
    Netlink {
        ifname: String,
        vf_index: u32,
        setting: &'static str,
        source: io::Error,
    },

    #[error("pool state {path}: {source}")]
    PoolIo { path: PathBuf, source: io::Error },

    #[error("pool state {path} is corrupt: {reason}")]
    PoolCorrupt { path: PathBuf, reason: String },

    #[error(
        "no free VF in the pool ({leased} leased of {total}; `sriovctl enable PF N` creates VFs)"
    )]
    PoolExhausted { leased: usize, total: usize },

    #[error("VF {vf} is not in the pool")]
    NotInPool { vf: PciAddress },

    #[error("VF {vf} is already leased to instance {instance_id} (holder pid {pid})")]
    AlreadyLeased {
        vf: PciAddress,
        instance_id: String,
        pid: u32,
    },

    #[error("MAC {mac} is already in use by VF {vf} (instance {instance_id})")]
    MacInUse {
        mac: String,
        vf: PciAddress,
        instance_id: String,
    },

    #[error("no lease of VF {vf} for instance {instance_id}")]
    NoSuchLease { vf: PciAddress, instance_id: String },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
