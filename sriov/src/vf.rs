//! Enabling VFs on a PF (`sriov_numvfs`) and the per-VF settings that the PF's driver keeps
//! (MAC, VLAN, spoof checking, trust, rate, link state), applied through a
//! [`VfConfigurator`] so that everything above it can be tested without a NIC.

use std::sync::Mutex;

use serde::Serialize;

use crate::address::{MacAddress, PciAddress};
use crate::error::{Error, Result};
use crate::sysfs::{PhysicalFunction, Sysfs};

/// `IFF_UP` from `<net/if.h>`: the interface is administratively up.
const IFF_UP: u32 = 0x1;

/// Sets the number of VFs on `pf` to `count` (0 disables SR-IOV).
///
/// The PF's interface must be up first: igb brings its mailbox out of reset only when the PF
/// is opened, and VFs created before that fail to probe ("PF still in reset state").
/// Changing a non-zero count to another non-zero count goes through 0, because the kernel
/// refuses it otherwise (EBUSY).
pub fn set_num_vfs(sysfs: &Sysfs, pf: &PciAddress, count: u32) -> Result<()> {
    let function = sysfs.physical_function(pf)?;
    if count > function.total_vfs {
        return Err(Error::TooManyVfs {
            pf: *pf,
            requested: count,
            total: function.total_vfs,
        });
    }
    if count == function.num_vfs {
        log::info!("{pf} already has {count} VFs");
        return Ok(());
    }
    let numvfs_path = sysfs.device_dir(pf).join("sriov_numvfs");
    if count > 0 {
        ensure_pf_up(sysfs, &function)?;
        if function.num_vfs != 0 {
            sysfs.write_attr(&numvfs_path, "0")?;
        }
    }
    sysfs.write_attr(&numvfs_path, &count.to_string())?;
    log::info!("{pf}: {} -> {count} VFs", function.num_vfs);
    Ok(())
}

/// Fails with [`Error::PfDown`] unless the PF's interface has IFF_UP set (or, where sysfs
/// has no `flags`, its operstate is up).
fn ensure_pf_up(sysfs: &Sysfs, function: &PhysicalFunction) -> Result<()> {
    let ifname = function.ifname.clone().ok_or(Error::PfHasNoInterface {
        pf: function.address,
    })?;
    let net_dir = sysfs
        .device_dir(&function.address)
        .join("net")
        .join(&ifname);
    let operstate = sysfs
        .read_optional_attr(&net_dir.join("operstate"))?
        .unwrap_or_else(|| "unknown".to_string());
    let flags_path = net_dir.join("flags");
    let is_up = match sysfs.read_optional_attr(&flags_path)? {
        Some(flags) => {
            let digits = flags.strip_prefix("0x").unwrap_or(&flags);
            let flags = u32::from_str_radix(digits, 16).map_err(|_| Error::SysfsParse {
                path: flags_path,
                content: flags.clone(),
                reason: "expected hexadecimal interface flags".to_string(),
            })?;
            flags & IFF_UP != 0
        }
        None => operstate == "up" || operstate == "unknown",
    };
    if is_up {
        Ok(())
    } else {
        Err(Error::PfDown {
            pf: function.address,
            ifname,
            operstate,
        })
    }
}

/// A VF's VLAN as the PF tags it (the guest sees untagged frames). Id 0 removes the tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VfVlan {
    pub id: u16,
    pub qos: u8,
}

/// Transmit rate limits in Mbit/s; 0 means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VfRate {
    pub min_mbps: u32,
    pub max_mbps: u32,
}

/// Whether the VF's link follows the PF's (`Auto`) or is forced up or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VfLinkState {
    Auto,
    Enable,
    Disable,
}

/// Settings for one VF; `None` leaves that setting as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VfSettings {
    pub mac: Option<MacAddress>,
    pub vlan: Option<VfVlan>,
    pub spoof_check: Option<bool>,
    pub trust: Option<bool>,
    pub rate: Option<VfRate>,
    pub link_state: Option<VfLinkState>,
}

/// Applies [`VfSettings`] to VF `vf_index` of the PF whose interface is `pf_ifname`.
/// The real one is [`crate::NetlinkVfConfigurator`]; tests use
/// [`RecordingVfConfigurator`].
pub trait VfConfigurator: Send + Sync {
    fn apply(&self, pf_ifname: &str, vf_index: u32, settings: &VfSettings) -> Result<()>;
}

/// One [`VfConfigurator::apply`] call as the recorder saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedVfSettings {
    pub pf_ifname: String,
    pub vf_index: u32,
    pub settings: VfSettings,
}

/// A [`VfConfigurator`] for tests: records every call and, when told to, fails them.
#[derive(Debug, Default)]
pub struct RecordingVfConfigurator {
    calls: Mutex<Vec<RecordedVfSettings>>,
    failing: Mutex<bool>,
}

impl RecordingVfConfigurator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<RecordedVfSettings> {
        lock_ignoring_poison(&self.calls).clone()
    }

    /// From now on, `apply` fails (as netlink would with EOPNOTSUPP) while `failing` is set.
    pub fn set_failing(&self, failing: bool) {
        *lock_ignoring_poison(&self.failing) = failing;
    }
}

impl VfConfigurator for RecordingVfConfigurator {
    fn apply(&self, pf_ifname: &str, vf_index: u32, settings: &VfSettings) -> Result<()> {
        if *lock_ignoring_poison(&self.failing) {
            return Err(Error::Netlink {
                ifname: pf_ifname.to_string(),
                vf_index,
                setting: "any",
                source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            });
        }
        lock_ignoring_poison(&self.calls).push(RecordedVfSettings {
            pf_ifname: pf_ifname.to_string(),
            vf_index,
            settings: settings.clone(),
        });
        Ok(())
    }
}

/// A panic elsewhere while holding the lock leaves plain data that is still consistent.
fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pci, FakeHost};

    #[test]
    fn enabling_vfs_on_a_pf_that_is_up_creates_them() {
        let host = FakeHost::new();
        host.add_igb_pf("0000:01:00.0", "eth0", true, 7);
        let sysfs = host.sysfs();
        let pf = pci("0000:01:00.0");
        set_num_vfs(&sysfs, &pf, 3).unwrap();
        assert_eq!(sysfs.physical_function(&pf).unwrap().vfs.len(), 3);
        // A different non-zero count passes through 0, which the kernel requires.
        set_num_vfs(&sysfs, &pf, 2).unwrap();
        assert_eq!(sysfs.physical_function(&pf).unwrap().num_vfs, 2);
        set_num_vfs(&sysfs, &pf, 0).unwrap();
        let function = sysfs.physical_function(&pf).unwrap();
        assert_eq!((function.num_vfs, function.vfs.len()), (0, 0));
    }

    #[test]
    fn enabling_vfs_on_a_pf_that_is_down_says_how_to_fix_it() {
        let host = FakeHost::new();
        host.add_igb_pf("0000:01:00.0", "eth0", false, 7);
        let sysfs = host.sysfs();
        let pf = pci("0000:01:00.0");
        let error = set_num_vfs(&sysfs, &pf, 2).unwrap_err();
        assert!(matches!(error, Error::PfDown { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("0000:01:00.0 (eth0) is down"), "{message}");
        assert!(message.contains("ip link set eth0 up"), "{message}");
        assert_eq!(sysfs.physical_function(&pf).unwrap().num_vfs, 0);

        host.set_interface_up(&pf, "eth0", true);
        set_num_vfs(&sysfs, &pf, 2).unwrap();
        assert_eq!(sysfs.physical_function(&pf).unwrap().num_vfs, 2);
    }

    #[test]
    fn asking_for_more_vfs_than_the_pf_has_is_refused() {
        let host = FakeHost::new();
        host.add_igb_pf("0000:01:00.0", "eth0", true, 7);
        let error = set_num_vfs(&host.sysfs(), &pci("0000:01:00.0"), 8).unwrap_err();
        assert!(error.to_string().contains("at most 7"), "{error}");
    }

    #[test]
    fn recording_configurator_records_and_fails_on_demand() {
        let recorder = RecordingVfConfigurator::new();
        let settings = VfSettings {
            spoof_check: Some(true),
            ..VfSettings::default()
        };
        recorder.apply("eth0", 1, &settings).unwrap();
        recorder.set_failing(true);
        assert!(recorder.apply("eth0", 2, &settings).is_err());
        assert_eq!(
            recorder.calls(),
            vec![RecordedVfSettings {
                pf_ifname: "eth0".to_string(),
                vf_index: 1,
                settings
            }]
        );
    }
}
