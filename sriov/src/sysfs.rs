//! Reading and writing the kernel's PCI view in sysfs, under a configurable root so that
//! tests run against a fabricated tree, and discovery of SR-IOV PFs and their VFs.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::address::PciAddress;
use crate::error::{Error, Result};

/// Called after every attribute write with the attribute's path and the written value.
/// Real sysfs needs none (the kernel reacts by itself); a fabricated tree uses it to play
/// the kernel's part, e.g. move a `driver` link after a write to `drivers_probe`. An error
/// it returns is reported as the write's error, as the kernel's errno would be.
pub type WriteHook = Arc<dyn Fn(&Path, &str) -> io::Result<()> + Send + Sync>;

/// The sysfs mount (normally `/sys`) that everything in this crate reads and writes.
#[derive(Clone)]
pub struct Sysfs {
    root: PathBuf,
    write_hook: Option<WriteHook>,
}

impl std::fmt::Debug for Sysfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sysfs").field("root", &self.root).finish()
    }
}

/// An SR-IOV physical function and the VFs it currently has.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PhysicalFunction {
    pub address: PciAddress,
    pub driver: Option<String>,
    /// The PF's network interface, when its driver has created one.
    pub ifname: Option<String>,
    pub total_vfs: u32,
    pub num_vfs: u32,
    pub vfs: Vec<VirtualFunction>,
}

/// One virtual function as the kernel currently sees it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VirtualFunction {
    pub address: PciAddress,
    pub pf: PciAddress,
    /// The VF number on its PF (the N of `virtfnN`), which netlink's IFLA_VF_* calls `vf`.
    pub index: u32,
    pub vendor_id: u16,
    pub device_id: u16,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// The VF's own network interface while a host driver (e.g. igbvf) owns it.
    pub ifname: Option<String>,
}

impl Sysfs {
    /// A sysfs tree mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs {
            root: root.into(),
            write_hook: None,
        }
    }

    /// The host's own `/sys`.
    pub fn host() -> Self {
        Sysfs::new("/sys")
    }

    /// Runs `hook` after every attribute write (see [`WriteHook`]).
    pub fn with_write_hook(mut self, hook: WriteHook) -> Self {
        self.write_hook = Some(hook);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn pci_devices_dir(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }

    pub(crate) fn device_dir(&self, address: &PciAddress) -> PathBuf {
        self.pci_devices_dir().join(address.to_string())
    }

    pub(crate) fn driver_dir(&self, driver: &str) -> PathBuf {
        self.root.join("bus/pci/drivers").join(driver)
    }

    pub(crate) fn drivers_probe_path(&self) -> PathBuf {
        self.root.join("bus/pci/drivers_probe")
    }

    pub(crate) fn iommu_group_devices_dir(&self, group: u32) -> PathBuf {
        self.root
            .join("kernel/iommu_groups")
            .join(group.to_string())
            .join("devices")
    }

    /// The trimmed content of an attribute.
    pub(crate) fn read_attr(&self, path: &Path) -> Result<String> {
        fs::read_to_string(path)
            .map(|content| content.trim().to_string())
            .map_err(|source| Error::SysfsRead {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Like [`Self::read_attr`], but an absent attribute is `None` rather than an error.
    pub(crate) fn read_optional_attr(&self, path: &Path) -> Result<Option<String>> {
        match fs::read_to_string(path) {
            Ok(content) => Ok(Some(content.trim().to_string())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::SysfsRead {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub(crate) fn read_u32_attr(&self, path: &Path) -> Result<u32> {
        let content = self.read_attr(path)?;
        content.parse().map_err(|_| Error::SysfsParse {
            path: path.to_path_buf(),
            content,
            reason: "expected a decimal number".to_string(),
        })
    }

    /// Parses attributes such as `vendor` and `device`, which read `0x8086`.
    pub(crate) fn read_hex_u16_attr(&self, path: &Path) -> Result<u16> {
        let content = self.read_attr(path)?;
        let digits = content.strip_prefix("0x").unwrap_or(&content);
        u16::from_str_radix(digits, 16).map_err(|_| Error::SysfsParse {
            path: path.to_path_buf(),
            content: content.clone(),
            reason: "expected a hexadecimal number".to_string(),
        })
    }

    /// Writes `value` in one `write(2)`, as `echo value > path` would: sysfs attributes act
    /// on each write call, so the value must not be split.
    pub(crate) fn write_attr(&self, path: &Path, value: &str) -> Result<()> {
        log::debug!("sysfs write {:?} > {}", value, path.display());
        let write_error = |source| Error::SysfsWrite {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(write_error)?;
        file.write_all(value.as_bytes()).map_err(write_error)?;
        drop(file);
        if let Some(hook) = &self.write_hook {
            hook(path, value).map_err(write_error)?;
        }
        Ok(())
    }

    /// The last component of a symlink's target (`driver -> ../../bus/pci/drivers/igb`
    /// gives `igb`), or `None` when the link does not exist.
    pub(crate) fn link_name(&self, link: &Path) -> Result<Option<String>> {
        match fs::read_link(link) {
            Ok(target) => Ok(target
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::SysfsRead {
                path: link.to_path_buf(),
                source,
            }),
        }
    }

    /// The driver a device is bound to, if any.
    pub(crate) fn driver_of(&self, address: &PciAddress) -> Result<Option<String>> {
        self.link_name(&self.device_dir(address).join("driver"))
    }

    /// The device's IOMMU group, if the IOMMU is on.
    pub(crate) fn iommu_group_of(&self, address: &PciAddress) -> Result<Option<u32>> {
        let link = self.device_dir(address).join("iommu_group");
        match self.link_name(&link)? {
            None => Ok(None),
            Some(name) => name.parse().map(Some).map_err(|_| Error::SysfsParse {
                path: link,
                content: name,
                reason: "IOMMU group link does not end in a number".to_string(),
            }),
        }
    }

    /// The first network interface under the device's `net/` directory.
    pub(crate) fn ifname_of(&self, address: &PciAddress) -> Result<Option<String>> {
        let net_dir = self.device_dir(address).join("net");
        let entries = match fs::read_dir(&net_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::SysfsRead {
                    path: net_dir,
                    source,
                })
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::SysfsRead {
                path: net_dir.clone(),
                source,
            })?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names.into_iter().next())
    }

    pub(crate) fn device_exists(&self, address: &PciAddress) -> bool {
        self.device_dir(address).exists()
    }

    /// Every SR-IOV capable PF (a device with `sriov_totalvfs`), sorted by address.
    pub fn physical_functions(&self) -> Result<Vec<PhysicalFunction>> {
        let mut functions = Vec::new();
        for address in self.pci_addresses()? {
            if self.device_dir(&address).join("sriov_totalvfs").exists() {
                functions.push(self.physical_function(&address)?);
            }
        }
        Ok(functions)
    }

    /// One PF with its VFs.
    pub fn physical_function(&self, address: &PciAddress) -> Result<PhysicalFunction> {
        let dir = self.device_dir(address);
        if !dir.exists() {
            return Err(Error::NoSuchDevice(*address));
        }
        let total_path = dir.join("sriov_totalvfs");
        if !total_path.exists() {
            return Err(Error::NotPhysicalFunction(*address));
        }
        let total_vfs = self.read_u32_attr(&total_path)?;
        let num_vfs = self.read_u32_attr(&dir.join("sriov_numvfs"))?;
        let mut vfs = Vec::new();
        for index in 0..total_vfs {
            let link = dir.join(format!("virtfn{index}"));
            let Some(name) = self.link_name(&link)? else {
                continue;
            };
            let vf_address = parse_link_address(&link, &name)?;
            vfs.push(self.describe_vf(&vf_address, *address, index)?);
        }
        Ok(PhysicalFunction {
            address: *address,
            driver: self.driver_of(address)?,
            ifname: self.ifname_of(address)?,
            total_vfs,
            num_vfs,
            vfs,
        })
    }

    /// One VF, found through its `physfn` link and the PF's `virtfnN` links.
    pub fn virtual_function(&self, address: &PciAddress) -> Result<VirtualFunction> {
        let dir = self.device_dir(address);
        if !dir.exists() {
            return Err(Error::NoSuchDevice(*address));
        }
        let physfn = dir.join("physfn");
        let pf_name = self
            .link_name(&physfn)?
            .ok_or(Error::NotVirtualFunction(*address))?;
        let pf = parse_link_address(&physfn, &pf_name)?;
        self.physical_function(&pf)?
            .vfs
            .into_iter()
            .find(|vf| vf.address == *address)
            .ok_or(Error::NotVirtualFunction(*address))
    }

    fn describe_vf(
        &self,
        address: &PciAddress,
        pf: PciAddress,
        index: u32,
    ) -> Result<VirtualFunction> {
        let dir = self.device_dir(address);
        Ok(VirtualFunction {
            address: *address,
            pf,
            index,
            vendor_id: self.read_hex_u16_attr(&dir.join("vendor"))?,
            device_id: self.read_hex_u16_attr(&dir.join("device"))?,
            driver: self.driver_of(address)?,
            iommu_group: self.iommu_group_of(address)?,
            ifname: self.ifname_of(address)?,
        })
    }

    fn pci_addresses(&self) -> Result<Vec<PciAddress>> {
        let devices = self.pci_devices_dir();
        let entries = fs::read_dir(&devices).map_err(|source| Error::SysfsRead {
            path: devices.clone(),
            source,
        })?;
        let mut addresses = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::SysfsRead {
                path: devices.clone(),
                source,
            })?;
            // Anything that is not a PCI address (there should be nothing) is skipped.
            if let Ok(address) = entry.file_name().to_string_lossy().parse() {
                addresses.push(address);
            }
        }
        addresses.sort();
        Ok(addresses)
    }
}

fn parse_link_address(link: &Path, name: &str) -> Result<PciAddress> {
    name.parse().map_err(|_| Error::SysfsParse {
        path: link.to_path_buf(),
        content: name.to_string(),
        reason: "link target is not a PCI address".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use crate::testing::{pci, FakeHost};
    use crate::vf::set_num_vfs;

    #[test]
    fn discovers_pf_and_its_vfs_with_drivers_and_groups() {
        let host = FakeHost::new();
        host.add_igb_pf("0000:01:00.0", "eth0", true, 7);
        host.add_device_in_group("0000:00:1f.0", "e1000e", 40);
        let sysfs = host.sysfs();
        set_num_vfs(&sysfs, &pci("0000:01:00.0"), 2).unwrap();

        let pfs = sysfs.physical_functions().unwrap();
        assert_eq!(
            pfs.len(),
            1,
            "only the SR-IOV capable device is a PF: {pfs:?}"
        );
        let pf = &pfs[0];
        assert_eq!(pf.address, pci("0000:01:00.0"));
        assert_eq!(pf.driver.as_deref(), Some("igb"));
        assert_eq!(pf.ifname.as_deref(), Some("eth0"));
        assert_eq!((pf.total_vfs, pf.num_vfs), (7, 2));
        let addresses: Vec<_> = pf.vfs.iter().map(|vf| vf.address.to_string()).collect();
        assert_eq!(addresses, ["0000:01:10.0", "0000:01:10.2"]);
        for (index, vf) in pf.vfs.iter().enumerate() {
            assert_eq!(vf.index, index as u32);
            assert_eq!(vf.pf, pf.address);
            assert_eq!((vf.vendor_id, vf.device_id), (0x8086, 0x10ca));
            assert_eq!(vf.driver.as_deref(), Some("igbvf"));
        }
        assert_ne!(pf.vfs[0].iommu_group, pf.vfs[1].iommu_group);
        assert!(pf.vfs[0].iommu_group.is_some());

        let vf = sysfs.virtual_function(&pci("0000:01:10.2")).unwrap();
        assert_eq!(vf, pf.vfs[1]);
    }

    #[test]
    fn looking_up_the_wrong_kind_of_function_is_an_error() {
        let host = FakeHost::new();
        host.add_igb_pf("0000:01:00.0", "eth0", true, 7);
        let sysfs = host.sysfs();
        let not_vf = sysfs.virtual_function(&pci("0000:01:00.0")).unwrap_err();
        assert!(
            not_vf
                .to_string()
                .contains("not an SR-IOV virtual function"),
            "{not_vf}"
        );
        let missing = sysfs.physical_function(&pci("0000:02:00.0")).unwrap_err();
        assert!(
            missing.to_string().contains("0000:02:00.0 does not exist"),
            "{missing}"
        );
    }
}
