//! A fabricated sysfs tree with the files, directories and links the real kernel has, and a
//! write hook that plays the kernel's part: creating VFs on a write to `sriov_numvfs`, moving
//! `driver` links on unbind/bind/drivers_probe, keeping `driver_override`, recording resets.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tempfile::TempDir;

use crate::address::PciAddress;
use crate::sysfs::Sysfs;

const INTEL: &str = "0x8086";
const IGB_PF_DEVICE: &str = "0x10c9";
const IGB_VF_DEVICE: &str = "0x10ca";
const ETHERNET_CLASS: &str = "0x020000";
const BRIDGE_CLASS: &str = "0x060400";

/// Above any pid_max the kernel allows (2^22), so no process has it.
pub(crate) const DEAD_PID: u32 = 0x7fff_fff0;

pub(crate) struct FakeHost {
    _dir: TempDir,
    root: PathBuf,
    kernel: Arc<Mutex<FakeKernel>>,
}

#[derive(Default)]
struct FakeKernel {
    next_iommu_group: u32,
    resets: Vec<PciAddress>,
    /// (device, driver) pairs for which drivers_probe binds nothing, as when that
    /// driver's probe fails.
    refuse_probe: Vec<(PciAddress, String)>,
    /// The driver each device id gets from an ordinary probe.
    default_driver: BTreeMap<String, String>,
}

pub(crate) fn pci(text: &str) -> PciAddress {
    text.parse().expect("test PCI address")
}

impl FakeHost {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("sys");
        for driver in ["igb", "igbvf", "vfio-pci", "pcieport", "e1000e"] {
            let driver_dir = root.join("bus/pci/drivers").join(driver);
            fs::create_dir_all(&driver_dir).unwrap();
            for attribute in ["bind", "unbind", "new_id"] {
                fs::write(driver_dir.join(attribute), "").unwrap();
            }
        }
        fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        fs::create_dir_all(root.join("kernel/iommu_groups")).unwrap();
        fs::write(root.join("bus/pci/drivers_probe"), "").unwrap();
        let kernel = FakeKernel {
            next_iommu_group: 1,
            default_driver: BTreeMap::from([
                (IGB_PF_DEVICE.to_string(), "igb".to_string()),
                (IGB_VF_DEVICE.to_string(), "igbvf".to_string()),
            ]),
            ..FakeKernel::default()
        };
        FakeHost {
            _dir: dir,
            root,
            kernel: Arc::new(Mutex::new(kernel)),
        }
    }

    /// A [`Sysfs`] on this tree whose writes the fake kernel reacts to.
    pub(crate) fn sysfs(&self) -> Sysfs {
        let kernel = Arc::clone(&self.kernel);
        let root = self.root.clone();
        Sysfs::new(&self.root).with_write_hook(Arc::new(move |path: &Path, value: &str| {
            let relative = path.strip_prefix(&root).map_err(io::Error::other)?;
            let mut kernel = kernel.lock().map_err(|_| io::Error::other("poisoned"))?;
            kernel.react(&root, relative, value)
        }))
    }

    /// A directory outside the sysfs tree for state files.
    pub(crate) fn scratch_dir(&self, name: &str) -> PathBuf {
        let dir = self._dir.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn device_dir(&self, address: &PciAddress) -> PathBuf {
        device_dir(&self.root, address)
    }

    /// An igb PF bound to igb with interface `ifname`, in an IOMMU group of its own.
    pub(crate) fn add_igb_pf(&self, address: &str, ifname: &str, up: bool, total_vfs: u32) {
        let address = pci(address);
        let mut kernel = self.kernel.lock().unwrap();
        let dir = kernel.create_device(&self.root, &address, IGB_PF_DEVICE, ETHERNET_CLASS);
        fs::write(dir.join("sriov_totalvfs"), format!("{total_vfs}\n")).unwrap();
        fs::write(dir.join("sriov_numvfs"), "0\n").unwrap();
        fs::write(dir.join("sriov_vf_device"), "10ca\n").unwrap();
        let net = dir.join("net").join(ifname);
        fs::create_dir_all(&net).unwrap();
        drop(kernel);
        self.set_interface_up(&address, ifname, up);
    }

    /// `ip link set IFNAME up|down` as sysfs shows it.
    pub(crate) fn set_interface_up(&self, address: &PciAddress, ifname: &str, up: bool) {
        let net = self.device_dir(address).join("net").join(ifname);
        let (operstate, flags) = if up {
            ("up", "0x1003")
        } else {
            ("down", "0x1002")
        };
        fs::write(net.join("operstate"), format!("{operstate}\n")).unwrap();
        fs::write(net.join("flags"), format!("{flags}\n")).unwrap();
    }

    /// `ip link set OLD name NEW` as sysfs shows it.
    pub(crate) fn rename_interface(&self, address: &PciAddress, old: &str, new: &str) {
        let net = self.device_dir(address).join("net");
        fs::rename(net.join(old), net.join(new)).unwrap();
    }

    /// A device of any kind bound to `driver`, put into IOMMU group `group`.
    pub(crate) fn add_device_in_group(&self, address: &str, driver: &str, group: u32) {
        let address = pci(address);
        let class = if driver == "pcieport" {
            BRIDGE_CLASS
        } else {
            ETHERNET_CLASS
        };
        let mut kernel = self.kernel.lock().unwrap();
        let dir = kernel.create_device(&self.root, &address, "0x10d3", class);
        fs::remove_file(dir.join("iommu_group")).unwrap();
        let group_dir = self
            .root
            .join("kernel/iommu_groups")
            .join(group.to_string());
        let old_group = kernel.next_iommu_group - 1;
        let old_entry = self
            .root
            .join(format!("kernel/iommu_groups/{old_group}/devices/{address}"));
        fs::remove_file(old_entry).unwrap();
        fs::create_dir_all(group_dir.join("devices")).unwrap();
        symlink(
            format!("../../../../bus/pci/devices/{address}"),
            group_dir.join("devices").join(address.to_string()),
        )
        .unwrap();
        symlink(
            format!("../../../kernel/iommu_groups/{group}"),
            dir.join("iommu_group"),
        )
        .unwrap();
        bind(&self.root, &address, driver).unwrap();
    }

    pub(crate) fn refuse_probe(&self, address: &PciAddress, driver: &str) {
        let mut kernel = self.kernel.lock().unwrap();
        kernel.refuse_probe.push((*address, driver.to_string()));
    }

    pub(crate) fn resets(&self) -> Vec<PciAddress> {
        self.kernel.lock().unwrap().resets.clone()
    }

    pub(crate) fn driver_override(&self, address: &PciAddress) -> String {
        fs::read_to_string(self.device_dir(address).join("driver_override"))
            .unwrap()
            .trim()
            .to_string()
    }
}

fn device_dir(root: &Path, address: &PciAddress) -> PathBuf {
    root.join("bus/pci/devices").join(address.to_string())
}

/// Where igb's VF n appears: routing ID offset 0x80, stride 2 from a PF at device 0.
fn igb_vf_address(pf: &PciAddress, index: u32) -> PciAddress {
    let routing_id = 0x80 + 2 * index;
    PciAddress {
        domain: pf.domain,
        bus: pf.bus,
        device: (routing_id >> 3) as u8,
        function: (routing_id & 7) as u8,
    }
}

fn bind(root: &Path, address: &PciAddress, driver: &str) -> io::Result<()> {
    let device = device_dir(root, address);
    symlink(
        format!("../../../bus/pci/drivers/{driver}"),
        device.join("driver"),
    )?;
    symlink(
        format!("../../devices/{address}"),
        root.join("bus/pci/drivers")
            .join(driver)
            .join(address.to_string()),
    )
}

impl FakeKernel {
    fn create_device(
        &mut self,
        root: &Path,
        address: &PciAddress,
        device_id: &str,
        class: &str,
    ) -> PathBuf {
        let dir = device_dir(root, address);
        fs::create_dir_all(&dir).unwrap();
        for (attribute, value) in [
            ("vendor", INTEL),
            ("device", device_id),
            ("class", class),
            ("driver_override", "(null)"),
            ("reset", ""),
        ] {
            fs::write(dir.join(attribute), format!("{value}\n")).unwrap();
        }
        let group = self.next_iommu_group;
        self.next_iommu_group += 1;
        let group_devices = root.join(format!("kernel/iommu_groups/{group}/devices"));
        fs::create_dir_all(&group_devices).unwrap();
        symlink(
            format!("../../../../bus/pci/devices/{address}"),
            group_devices.join(address.to_string()),
        )
        .unwrap();
        symlink(
            format!("../../../kernel/iommu_groups/{group}"),
            dir.join("iommu_group"),
        )
        .unwrap();
        if let Some(driver) = self.default_driver.get(device_id) {
            bind(root, address, driver).unwrap();
        }
        dir
    }

    fn react(&mut self, root: &Path, relative: &Path, value: &str) -> io::Result<()> {
        let parts: Vec<String> = relative
            .iter()
            .map(|part| part.to_string_lossy().into_owned())
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let address = || -> io::Result<PciAddress> {
            value
                .trim()
                .parse()
                .map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))
        };
        match parts.as_slice() {
            ["bus", "pci", "devices", device, "sriov_numvfs"] => {
                self.set_num_vfs(root, &pci(device), value.trim())
            }
            ["bus", "pci", "devices", device, "driver_override"] => {
                let shown = if value.trim().is_empty() {
                    "(null)"
                } else {
                    value.trim()
                };
                let path = device_dir(root, &pci(device)).join("driver_override");
                fs::write(path, format!("{shown}\n"))
            }
            ["bus", "pci", "devices", device, "reset"] => {
                self.resets.push(pci(device));
                Ok(())
            }
            ["bus", "pci", "drivers", driver, "unbind"] => {
                let address = address()?;
                let link = device_dir(root, &address).join("driver");
                let bound_to = fs::read_link(&link).ok();
                if bound_to.as_ref().and_then(|target| target.file_name()) != Some(driver.as_ref())
                {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                fs::remove_file(link)?;
                fs::remove_file(
                    root.join("bus/pci/drivers")
                        .join(driver)
                        .join(address.to_string()),
                )
            }
            ["bus", "pci", "drivers_probe"] => self.probe(root, &address()?),
            _ => Ok(()),
        }
    }

    fn probe(&mut self, root: &Path, address: &PciAddress) -> io::Result<()> {
        let dir = device_dir(root, address);
        if dir.join("driver").exists() {
            return Ok(());
        }
        let override_driver = fs::read_to_string(dir.join("driver_override"))?;
        let override_driver = override_driver.trim();
        let driver = if override_driver != "(null)" {
            Some(override_driver.to_string())
        } else {
            let device_id = fs::read_to_string(dir.join("device"))?;
            self.default_driver.get(device_id.trim()).cloned()
        };
        match driver {
            Some(driver)
                if root.join("bus/pci/drivers").join(&driver).exists()
                    && !self.refuse_probe.contains(&(*address, driver.clone())) =>
            {
                bind(root, address, &driver)
            }
            _ => Ok(()),
        }
    }

    fn set_num_vfs(&mut self, root: &Path, pf: &PciAddress, value: &str) -> io::Result<()> {
        let requested: u32 = value
            .parse()
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let pf_dir = device_dir(root, pf);
        // The write itself already replaced the file's content, so the VFs that exist tell
        // the count the kernel still has.
        let existing = (0..)
            .take_while(|n| pf_dir.join(format!("virtfn{n}")).exists())
            .count() as u32;
        if requested != 0 && existing != 0 {
            fs::write(pf_dir.join("sriov_numvfs"), format!("{existing}\n"))?;
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        for index in 0..existing {
            let vf = igb_vf_address(pf, index);
            let vf_dir = device_dir(root, &vf);
            if let Ok(target) = fs::read_link(vf_dir.join("driver")) {
                if let Some(driver) = target.file_name() {
                    let bound = root.join("bus/pci/drivers").join(driver);
                    fs::remove_file(bound.join(vf.to_string()))?;
                }
            }
            let group = fs::read_link(vf_dir.join("iommu_group"))?;
            if let Some(group) = group.file_name() {
                fs::remove_dir_all(root.join("kernel/iommu_groups").join(group))?;
            }
            fs::remove_dir_all(vf_dir)?;
            fs::remove_file(pf_dir.join(format!("virtfn{index}")))?;
        }
        for index in 0..requested {
            let vf = igb_vf_address(pf, index);
            let vf_dir = self.create_device(root, &vf, IGB_VF_DEVICE, ETHERNET_CLASS);
            symlink(format!("../{pf}"), vf_dir.join("physfn"))?;
            symlink(format!("../{vf}"), pf_dir.join(format!("virtfn{index}")))?;
        }
        fs::write(pf_dir.join("sriov_numvfs"), format!("{requested}\n"))
    }
}
