//! Moving a PCI function between drivers the way the kernel documents it (driver_override,
//! unbind, drivers_probe), checking that its IOMMU group can be handed to VFIO, and
//! resetting it.

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::address::PciAddress;
use crate::error::{Error, Result};
use crate::sysfs::Sysfs;

/// The driver that hands devices to user space through /dev/vfio.
pub const VFIO_PCI: &str = "vfio-pci";

/// Drivers that do not use DMA on their devices, so the kernel lets VFIO own their group.
const DMA_FREE_DRIVERS: [&str; 3] = [VFIO_PCI, "pci-stub", "pcieport"];

/// How long a probe may take to show up in the `driver` link; drivers_probe is synchronous
/// for almost every driver, so this is only reached when binding really failed.
const BIND_TIMEOUT: Duration = Duration::from_secs(2);
const BIND_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The character device through which a VMM opens IOMMU group `group`.
pub fn vfio_group_path(group: u32) -> PathBuf {
    PathBuf::from("/dev/vfio").join(group.to_string())
}

/// Binds `device` to `driver`, or leaves it without a driver when `driver` is `None`.
///
/// `driver_override` makes the probe pick exactly this driver whatever the device's ids;
/// for vfio-pci it stays set so that a later rescan cannot hand the device back to a host
/// driver, for any other driver it is cleared once the device is bound.
pub fn bind_driver(sysfs: &Sysfs, device: &PciAddress, driver: Option<&str>) -> Result<()> {
    if !sysfs.device_exists(device) {
        return Err(Error::NoSuchDevice(*device));
    }
    if let Some(driver) = driver {
        if !sysfs.driver_dir(driver).exists() {
            return Err(Error::DriverNotLoaded(driver.to_string()));
        }
    }
    let current = sysfs.driver_of(device)?;
    let override_path = sysfs.device_dir(device).join("driver_override");
    let address = device.to_string();
    if current.as_deref() != driver {
        // An empty write clears the override.
        sysfs.write_attr(&override_path, &format!("{}\n", driver.unwrap_or("")))?;
        if let Some(current) = &current {
            sysfs.write_attr(&sysfs.driver_dir(current).join("unbind"), &address)?;
        }
        if driver.is_some() {
            sysfs.write_attr(&sysfs.drivers_probe_path(), &address)?;
        }
        wait_for_driver(sysfs, device, driver)?;
        log::info!(
            "{device}: {} -> {}",
            current.as_deref().unwrap_or("(no driver)"),
            driver.unwrap_or("(no driver)")
        );
    }
    let keep_override = driver == Some(VFIO_PCI);
    if !keep_override && has_driver_override(sysfs, device)? {
        sysfs.write_attr(&override_path, "\n")?;
    } else if keep_override && current.as_deref() == driver {
        sysfs.write_attr(&override_path, &format!("{VFIO_PCI}\n"))?;
    }
    Ok(())
}

/// Reads back `driver_override`, which the kernel shows as `(null)` when unset.
fn has_driver_override(sysfs: &Sysfs, device: &PciAddress) -> Result<bool> {
    let value = sysfs.read_optional_attr(&sysfs.device_dir(device).join("driver_override"))?;
    Ok(matches!(value.as_deref(), Some(text) if !text.is_empty() && text != "(null)"))
}

fn wait_for_driver(sysfs: &Sysfs, device: &PciAddress, expected: Option<&str>) -> Result<()> {
    let deadline = Instant::now() + BIND_TIMEOUT;
    loop {
        let actual = sysfs.driver_of(device)?;
        if actual.as_deref() == expected {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::BindFailed {
                device: *device,
                expected: expected.unwrap_or("(no driver)").to_string(),
                actual: actual.unwrap_or_else(|| "(no driver)".to_string()),
            });
        }
        thread::sleep(BIND_POLL_INTERVAL);
    }
}

/// Fails with [`Error::GroupNotViable`], naming the first offending device and its driver,
/// unless every member of `group` is driverless, bound to a driver that does no DMA
/// (vfio-pci, pci-stub, pcieport) or a bridge, which is what the kernel requires before
/// VFIO lets a process use the group.
pub fn check_iommu_group_viable(sysfs: &Sysfs, group: u32) -> Result<()> {
    check_group_members(sysfs, group, None)
}

/// Like [`check_iommu_group_viable`] but ignores `device`, the one about to be bound to
/// vfio-pci: checked before anything is changed, so that a group that cannot become
/// viable leaves the device and its settings untouched.
pub(crate) fn check_iommu_group_viable_except(
    sysfs: &Sysfs,
    group: u32,
    device: &PciAddress,
) -> Result<()> {
    check_group_members(sysfs, group, Some(device))
}

fn check_group_members(sysfs: &Sysfs, group: u32, ignored: Option<&PciAddress>) -> Result<()> {
    let devices_dir = sysfs.iommu_group_devices_dir(group);
    let entries = fs::read_dir(&devices_dir).map_err(|source| Error::SysfsRead {
        path: devices_dir.clone(),
        source,
    })?;
    let mut members = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::SysfsRead {
            path: devices_dir.clone(),
            source,
        })?;
        members.push(entry.file_name().to_string_lossy().into_owned());
    }
    members.sort();
    for member in members {
        let Ok(address) = member.parse::<PciAddress>() else {
            return Err(Error::GroupNotViable {
                group,
                device: member,
                driver: "(not a PCI device)".to_string(),
            });
        };
        if ignored == Some(&address) {
            continue;
        }
        let Some(driver) = sysfs.driver_of(&address)? else {
            continue;
        };
        if DMA_FREE_DRIVERS.contains(&driver.as_str()) || is_bridge(sysfs, &address)? {
            continue;
        }
        return Err(Error::GroupNotViable {
            group,
            device: member,
            driver,
        });
    }
    Ok(())
}

/// PCI class 0x0604 (PCI-to-PCI bridge) or 0x0607 (CardBus bridge).
fn is_bridge(sysfs: &Sysfs, device: &PciAddress) -> Result<bool> {
    let path = sysfs.device_dir(device).join("class");
    let Some(class) = sysfs.read_optional_attr(&path)? else {
        return Ok(false);
    };
    let digits = class.strip_prefix("0x").unwrap_or(&class);
    let class = u32::from_str_radix(digits, 16).map_err(|_| Error::SysfsParse {
        path,
        content: class.clone(),
        reason: "expected a hexadecimal class code".to_string(),
    })?;
    Ok(matches!(class >> 8, 0x0604 | 0x0607))
}

/// Resets the function through its `reset` attribute (FLR, or whatever reset method the
/// kernel picked for it), so that nothing a guest programmed survives into the next lease.
/// Returns false when the device offers no reset method.
pub fn reset_function(sysfs: &Sysfs, device: &PciAddress) -> Result<bool> {
    let path = sysfs.device_dir(device).join("reset");
    if !path.exists() {
        log::warn!("{device} has no reset attribute; it is released without a reset");
        return Ok(false);
    }
    sysfs.write_attr(&path, "1")?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pci, FakeHost};
    use crate::vf::set_num_vfs;

    fn host_with_vfs(count: u32) -> FakeHost {
        let host = FakeHost::new();
        host.add_igb_pf("0000:01:00.0", "eth0", true, 7);
        set_num_vfs(&host.sysfs(), &pci("0000:01:00.0"), count).unwrap();
        host
    }

    #[test]
    fn vf_moves_to_vfio_pci_and_back_to_its_driver() {
        let host = host_with_vfs(1);
        let sysfs = host.sysfs();
        let vf = pci("0000:01:10.0");
        bind_driver(&sysfs, &vf, Some(VFIO_PCI)).unwrap();
        assert_eq!(sysfs.driver_of(&vf).unwrap().as_deref(), Some(VFIO_PCI));
        assert_eq!(host.driver_override(&vf), VFIO_PCI);

        bind_driver(&sysfs, &vf, Some("igbvf")).unwrap();
        assert_eq!(sysfs.driver_of(&vf).unwrap().as_deref(), Some("igbvf"));
        assert_eq!(host.driver_override(&vf), "(null)");

        bind_driver(&sysfs, &vf, None).unwrap();
        assert_eq!(sysfs.driver_of(&vf).unwrap(), None);
    }

    #[test]
    fn a_probe_that_binds_nothing_is_reported() {
        let host = host_with_vfs(1);
        let vf = pci("0000:01:10.0");
        host.refuse_probe(&vf, VFIO_PCI);
        let error = bind_driver(&host.sysfs(), &vf, Some(VFIO_PCI)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "0000:01:10.0 is bound to (no driver) after asking for vfio-pci"
        );
    }

    #[test]
    fn binding_to_a_driver_that_is_not_loaded_is_refused() {
        let host = host_with_vfs(1);
        let error =
            bind_driver(&host.sysfs(), &pci("0000:01:10.0"), Some("mlx5_core")).unwrap_err();
        assert!(error.to_string().contains("modprobe mlx5_core"), "{error}");
    }

    #[test]
    fn group_viability_names_the_device_and_driver_in_the_way() {
        let host = host_with_vfs(1);
        let sysfs = host.sysfs();
        let vf = pci("0000:01:10.0");
        let group = sysfs.iommu_group_of(&vf).unwrap().unwrap();
        let error = check_iommu_group_viable(&sysfs, group).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("IOMMU group {group} is not viable: 0000:01:10.0 is bound to igbvf; every member must be bound to vfio-pci or to no driver")
        );

        bind_driver(&sysfs, &vf, Some(VFIO_PCI)).unwrap();
        check_iommu_group_viable(&sysfs, group).unwrap();

        host.add_device_in_group("0000:00:1c.0", "pcieport", group);
        check_iommu_group_viable(&sysfs, group).unwrap();

        host.add_device_in_group("0000:00:19.0", "e1000e", group);
        let error = check_iommu_group_viable(&sysfs, group).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("0000:00:19.0 is bound to e1000e"),
            "{error}"
        );
    }

    #[test]
    fn reset_writes_the_reset_attribute() {
        let host = host_with_vfs(1);
        let vf = pci("0000:01:10.0");
        assert!(reset_function(&host.sysfs(), &vf).unwrap());
        assert_eq!(host.resets(), vec![vf]);
    }
}
