//! VFIO passthrough wiring: one VFIO container per VM (with KVM's VFIO
//! pseudo-device, so KVM knows about non-coherent DMA), all guest memory
//! DMA-mapped at IOVA = guest physical address, and each passed-through
//! function on the PCI bus with its BARs in the MMIO hole, its MSI-X
//! vectors on KVM irqfds and its INTx on a resampling irqfd of its slot's
//! GSI ([`KvmIntxLine`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioContainer, VfioDeviceFd, VfioError};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("no VFIO on this host (/dev/vfio/vfio): load vfio-pci and enable the IOMMU (intel_iommu=on / amd_iommu=on)")]
    NoVfio,
    #[error("{bdf}: no such PCI device in sysfs")]
    NoDevice { bdf: String },
    #[error("{bdf} is not bound to vfio-pci (bound to {driver}); bind it first (sriovctl, or driver_override + drivers_probe)")]
    NotVfio { bdf: String, driver: String },
    #[error("{bdf}: IOMMU group not viable: every device in /sys/bus/pci/devices/{bdf}/iommu_group/devices must be bound to vfio-pci or have no driver")]
    GroupNotViable { bdf: String },
    #[error("{bdf} is in use by another process (its VFIO group is already open)")]
    InUse { bdf: String },
    #[error("cannot DMA-map {needed} bytes of guest memory: the memlock limit is too low (RLIMIT_MEMLOCK: {limit}); raise it to at least {needed} bytes (ulimit -l {needed_kib})")]
    Memlock {
        needed: u64,
        limit: String,
        needed_kib: u64,
    },
    #[error("VFIO: {0}")]
    Vfio(String),
    #[error("KVM VFIO device: {0}")]
    Kvm(kvm_ioctls::Error),
}

fn memlock_limit() -> String {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return "unknown".into();
    }
    if r.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} bytes", r.rlim_cur)
    }
}

/// The VM's VFIO container with guest memory mapped for DMA.
pub struct Passthrough {
    pub container: Arc<VfioContainer>,
    mapped: Vec<(u64, u64)>,
}

impl Passthrough {
    pub fn new(vm: &VmFd) -> Result<Self, PassthroughError> {
        if !Path::new("/dev/vfio/vfio").exists() {
            return Err(PassthroughError::NoVfio);
        }
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm.create_device(&mut dev).map_err(PassthroughError::Kvm)?;
        let handle = Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio));
        let container = Arc::new(
            VfioContainer::new(Some(handle)).map_err(|e| PassthroughError::Vfio(e.to_string()))?,
        );
        Ok(Self {
            container,
            mapped: Vec::new(),
        })
    }

    pub fn is_mapped(&self) -> bool {
        !self.mapped.is_empty()
    }

    /// Map all guest memory at IOVA = GPA. Only possible once a group is
    /// in the container (adding the first group sets the IOMMU type).
    pub fn map_memory(&mut self, mem: &GuestMemoryMmap) -> Result<(), PassthroughError> {
        let total: u64 = mem.iter().map(|r| r.len()).sum();
        for region in mem.iter() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| PassthroughError::Vfio(e.to_string()))?;
            // SAFETY: the range is a live mapping of guest memory owned by
            // `mem`, which outlives the container (the Vm drops devices and
            // this mapping before its memory); guest memory is only ever
            // accessed with volatile operations.
            let r = unsafe {
                self.container
                    .vfio_dma_map(region.start_addr().0, region.len() as usize, host)
            };
            if let Err(e) = r {
                let text = e.to_string();
                if text.contains("ENOMEM")
                    || text.contains("Cannot allocate memory")
                    || text.contains("os error 12")
                {
                    return Err(PassthroughError::Memlock {
                        needed: total,
                        limit: memlock_limit(),
                        needed_kib: total.div_ceil(1024),
                    });
                }
                return Err(PassthroughError::Vfio(format!(
                    "DMA map of guest memory: {text}"
                )));
            }
            self.mapped.push((region.start_addr().0, region.len()));
        }
        log::info!("vfio: {total} bytes of guest memory mapped for DMA");
        Ok(())
    }

    /// Remove the DMA mappings. Must run while a group is still in the
    /// container: once the last group leaves, the container has no IOMMU
    /// driver and every unmap fails with EINVAL (the kernel then drops the
    /// mappings itself, but silently, and we would only log noise).
    pub fn unmap_all(&mut self) {
        for (iova, len) in self.mapped.drain(..) {
            if let Err(e) = self.container.vfio_dma_unmap(iova, len as usize) {
                log::warn!("vfio: DMA unmap {iova:#x}+{len:#x}: {e}");
            }
        }
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        self.unmap_all();
    }
}

/// A passed-through function's INTx in KVM: the slot's GSI (an IOAPIC pin,
/// routed by the _PRT) driven by a resampling irqfd, so a level interrupt
/// is asserted from VFIO's trigger eventfd and, at the guest's EOI,
/// deasserted with the resample eventfd signalled (VFIO then unmasks the
/// host line), all in the kernel.
pub struct KvmIntxLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl KvmIntxLine {
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Self {
        Self { vm, gsi }
    }
}

impl devices::vfio::IntxLine for KvmIntxLine {
    fn gsi(&self) -> u32 {
        self.gsi
    }

    fn attach(&self, trigger: &EventFd, resample: &EventFd) -> io::Result<()> {
        self.vm
            .register_irqfd_with_resample(trigger, resample, self.gsi)
            .map_err(|e| io::Error::other(format!("KVM_IRQFD (resample) GSI {}: {e}", self.gsi)))
    }

    fn detach(&self, trigger: &EventFd) -> io::Result<()> {
        self.vm
            .unregister_irqfd(trigger, self.gsi)
            .map_err(|e| io::Error::other(format!("KVM_IRQFD deassign GSI {}: {e}", self.gsi)))
    }
}

/// Check the function before handing it to VFIO, for clear errors.
pub fn check_device(bdf: &str) -> Result<PathBuf, PassthroughError> {
    let path = PathBuf::from("/sys/bus/pci/devices").join(bdf);
    if !path.exists() {
        return Err(PassthroughError::NoDevice { bdf: bdf.into() });
    }
    let driver = std::fs::read_link(path.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "no driver".into());
    if driver != "vfio-pci" {
        return Err(PassthroughError::NotVfio {
            bdf: bdf.into(),
            driver,
        });
    }
    Ok(path)
}

/// Turn vfio-ioctls' errors into the ones users can act on.
pub fn explain(bdf: &str, e: VfioError) -> PassthroughError {
    let text = e.to_string();
    match e {
        VfioError::GroupViable => PassthroughError::GroupNotViable { bdf: bdf.into() },
        _ if text.contains("EBUSY")
            || text.contains("Device or resource busy")
            || text.contains("os error 16") =>
        {
            PassthroughError::InUse { bdf: bdf.into() }
        }
        _ => PassthroughError::Vfio(format!("{bdf}: {text}")),
    }
}

/// Keep io::Error conversions available to callers.
impl From<PassthroughError> for io::Error {
    fn from(e: PassthroughError) -> Self {
        io::Error::other(e.to_string())
    }
}
