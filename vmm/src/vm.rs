//! Building a VM from a validated [`VmConfig`]: KVM objects, guest memory,
//! legacy devices on the port-I/O bus, firmware tables, the kernel, and the
//! vCPU threads. This is the one wiring place.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::legacy::{AcpiPm, BootTimer, Cmos, PowerEvent, Serial, BOOT_TIMER_PORT, I8042};
use devices::{Bus, BusError};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{acpi, cpuid, layout, regs, reset_vector, smbios};
use crate::boot::{self, BootError, BootSetup, KernelEntry};
use crate::config::{BootSource, DriveConfig, MachineConfig, NetConfig, VmConfig};
use crate::interrupts::{GsiRouter, KvmIoEvents, KvmMsiGroup, PCI_INTX_GSI_BASE, PCI_INTX_LINES};
use crate::vcpu::{ExitReason, ExitSignal, VcpuContext, VcpuHandle};
use acpi::PciResources;
use devices::pci::{PciConfigIo, PciConfigMmio, PciRoot};
use devices::virtio::block::{Block, BlockBackend, BlockConfig, FileBackend};
use devices::virtio::net::{Net, NetConfig as NetDeviceConfig, Tap};
use devices::virtio::pci::{VirtioPciDevice, BAR_SIZE};
use devices::virtio::VirtioDevice;
use vm_allocator::{AddressAllocator, AllocPolicy};

mod pause;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_PORT: u64 = 0x60;
pub const KBD_IRQ: u32 = 1;
pub const CMOS_PORT: u64 = 0x70;
pub const PCI_CONFIG_PORT: u64 = 0xcf8;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is the kvm module loaded and are you allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApiVersion(i32),
    #[error("machine-config.vcpu_count: {wanted} vCPUs requested but this host's KVM allows at most {max}")]
    TooManyVcpus { wanted: u8, max: usize },
    #[error("KVM {op} failed: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot allocate {mib} MiB of guest memory: {detail}")]
    Memory { mib: u32, detail: String },
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("device wiring: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Smbios(#[from] smbios::SmbiosError),
    #[error("vCPU setup: {0}")]
    Regs(#[from] regs::RegsError),
    #[error("interrupt routing: {0}")]
    Interrupts(std::io::Error),
    #[error("MMIO allocator: {0}")]
    Allocator(String),
    #[error("drive {id}: {detail}")]
    Drive { id: String, detail: String },
    #[error("network interface {id}: {detail}")]
    Net { id: String, detail: String },
    #[error("VFIO passthrough: {0}")]
    Vfio(String),
    #[error("PCI: {0}")]
    Pci(#[from] devices::pci::PciRootError),
    #[error("the vCPUs are already running")]
    AlreadyStarted,
    #[error("cannot start vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error("vCPU {0} did not stop; the VM cannot be paused")]
    Pause(u8),
    #[error("the VM is not paused")]
    NotPaused,
    #[error("the VM has not been started")]
    NotStarted,
    #[error("device state: {0}")]
    State(#[from] devices::state::StateError),
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

/// A built VM, ready to run.
pub struct Vm {
    _kvm: Kvm,
    vm_fd: Arc<VmFd>,
    router: Arc<GsiRouter>,
    pci: Arc<Mutex<PciRoot>>,
    pci_resources: PciResources,
    mmio_allocator: AddressAllocator,
    /// VFIO container and DMA mapping, created with the first VF.
    passthrough: Option<crate::passthrough::Passthrough>,
    /// KVM memory slots for device BARs mapped into the guest.
    device_slots: Option<Arc<crate::interrupts::KvmSlots>>,
    mem: GuestMemoryMmap,
    vcpu_fds: Vec<kvm_ioctls::VcpuFd>,
    vcpus: Vec<VcpuHandle>,
    pio: Bus,
    mmio: Bus,
    pub serial: Arc<Mutex<Serial>>,
    pub i8042: Arc<Mutex<I8042>>,
    cmos: Arc<Mutex<Cmos>>,
    pci_config_io: Arc<Mutex<PciConfigIo>>,
    /// MSRs KVM lists as to be saved (KVM_GET_MSR_INDEX_LIST).
    msr_list: Vec<u32>,
    /// vCPUs parked (their fds are back in `vcpu_fds`) and device workers
    /// stopped: nothing touches guest memory.
    paused: bool,
    /// Signalled by the i8042 when the guest pulses the reset line.
    pub i8042_reset: EventFd,
    pub exit: Arc<ExitSignal>,
    stop: Arc<AtomicBool>,
    pub boot_time_us: Arc<AtomicU64>,
    rsdp: GuestAddress,
    /// Where the boot vCPU enters the kernel, once one is loaded.
    pub entry: Option<KernelEntry>,
    pub vcpu_count: u8,
    pub mem_size_mib: u32,
}

fn create_guest_memory(mem_mib: u32) -> Result<GuestMemoryMmap, VmError> {
    let bytes = u64::from(mem_mib) << 20;
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmError::Memory {
        mib: mem_mib,
        detail: e.to_string(),
    })
}

fn register_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmError::Memory {
                mib: 0,
                detail: e.to_string(),
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the host range is a live mmap owned by `mem`, which the Vm
        // keeps alive (and never unmaps) for as long as the VM fd exists.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

impl Vm {
    /// Build the VM described by `cfg` with its kernel loaded. `serial_out`
    /// receives the guest's console; `start` is the VMM's start time for the
    /// boot timer.
    pub fn build(
        cfg: &VmConfig,
        serial_out: Box<dyn Write + Send>,
        start: Instant,
    ) -> Result<Vm, VmError> {
        let mut vm = Vm::build_machine(cfg, serial_out, start, None)?;
        vm.load_kernel(&cfg.boot_source)?;
        Ok(vm)
    }

    /// The machine and devices of `cfg` without a kernel. With `restored`
    /// (a snapshot's memory), that is the guest memory and nothing is
    /// written into it; the snapshot's state is loaded afterwards. Devices
    /// are plugged in a fixed order (drives, VFs, interfaces), so the same
    /// configuration always gives the same PCI slots, BARs and GSIs.
    pub fn build_machine(
        cfg: &VmConfig,
        serial_out: Box<dyn Write + Send>,
        start: Instant,
        restored: Option<GuestMemoryMmap>,
    ) -> Result<Vm, VmError> {
        let mut vm = Vm::with_memory(&cfg.machine_config, serial_out, start, restored)?;
        for drive in &cfg.drives {
            vm.add_drive(drive)?;
        }
        for vf in &cfg.vfs {
            // Pool leases were resolved to addresses before the build.
            let bdf = vf
                .bdf
                .as_deref()
                .ok_or_else(|| VmError::Vfio("VF without an address (lease it first)".into()))?;
            vm.add_vfio(bdf)?;
        }
        for (i, net) in cfg.net.iter().enumerate() {
            // The metadata service answers on the primary interface.
            let imds = match (&cfg.imds, i) {
                (Some(record), 0) => Some(crate::config::parse_imds_record(record).map_err(
                    |e| VmError::Net {
                        id: net.iface_id.clone(),
                        detail: format!("imds: {e}"),
                    },
                )?),
                _ => None,
            };
            vm.add_net(net, i, imds.as_ref())?;
        }
        Ok(vm)
    }

    /// Create the machine (KVM VM, memory, devices, firmware tables, vCPUs)
    /// without a kernel. Hand-written test guests start from here.
    pub fn new(
        machine: &MachineConfig,
        serial_out: Box<dyn Write + Send>,
        start: Instant,
    ) -> Result<Vm, VmError> {
        Vm::with_memory(machine, serial_out, start, None)
    }

    /// [`Vm::new`] on given guest memory (a restored snapshot's, which
    /// already holds the firmware tables the guest saw: they are not
    /// written again), or on fresh memory with the tables written.
    fn with_memory(
        machine: &MachineConfig,
        serial_out: Box<dyn Write + Send>,
        start: Instant,
        restored: Option<GuestMemoryMmap>,
    ) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(VmError::KvmApiVersion(api));
        }
        let max_vcpus = kvm.get_max_vcpus();
        if usize::from(machine.vcpu_count) > max_vcpus {
            return Err(VmError::TooManyVcpus {
                wanted: machine.vcpu_count,
                max: max_vcpus,
            });
        }
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm_fd
            .set_tss_address(layout::KVM_TSS_ADDR as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        if let Err(e) = vm_fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR) {
            // Only needed for real-mode emulation on old Intel CPUs.
            log::debug!("KVM_SET_IDENTITY_MAP_ADDR not available: {e}");
        }
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        let vm_fd = Arc::new(vm_fd);
        let router = Arc::new(GsiRouter::new(Arc::clone(&vm_fd)).map_err(VmError::Interrupts)?);

        let fresh = restored.is_none();
        let mem = match restored {
            Some(m) => m,
            None => create_guest_memory(machine.mem_size_mib)?,
        };
        register_memory(&vm_fd, &mem)?;

        let exit = Arc::new(ExitSignal::new().map_err(VmError::EventFd)?);
        let pio = Bus::new();
        let mmio = Bus::new();

        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd);
        let com1_irq = evt()?;
        vm_fd
            .register_irqfd(&com1_irq, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD (COM1)"))?;
        let serial = Arc::new(Mutex::new(Serial::new(com1_irq, serial_out)));
        pio.insert(serial.clone(), COM1_PORT, 8)?;

        let kbd_irq = evt()?;
        vm_fd
            .register_irqfd(&kbd_irq, KBD_IRQ)
            .map_err(kvm_err("KVM_IRQFD (i8042)"))?;
        let i8042_reset = evt()?;
        let i8042 = Arc::new(Mutex::new(I8042::new(
            i8042_reset.try_clone().map_err(VmError::EventFd)?,
            kbd_irq,
        )));
        pio.insert(i8042.clone(), I8042_PORT, 5)?;

        let pm_exit = Arc::clone(&exit);
        let acpi_pm = AcpiPm::new(
            acpi::ACPI_RESET_VALUE,
            acpi::ACPI_S5_SLP_TYP,
            Box::new(move |e| {
                pm_exit.request(match e {
                    PowerEvent::Reset => ExitReason::GuestReset,
                    PowerEvent::PowerOff => ExitReason::GuestShutdown,
                })
            }),
        );
        pio.insert(
            Arc::new(Mutex::new(acpi_pm)),
            u64::from(acpi::ACPI_PM_PORT),
            1,
        )?;
        let cmos = Arc::new(Mutex::new(Cmos::new()));
        pio.insert(cmos.clone(), CMOS_PORT, 2)?;
        let boot_timer = BootTimer::new(start);
        let boot_time_us = boot_timer.reading();
        pio.insert(
            Arc::new(Mutex::new(boot_timer)),
            u64::from(BOOT_TIMER_PORT),
            1,
        )?;

        // PCI root: config through 0xCF8/0xCFC and ECAM; BARs from the hole.
        let pci_resources = PciResources {
            ecam_base: layout::PCI_ECAM_START,
            ecam_size: layout::PCI_ECAM_SIZE,
            mmio_start: layout::PCI_MMIO_START as u32,
            mmio_end: (layout::PCI_MMIO_START + layout::PCI_MMIO_SIZE - 1) as u32,
            intx_gsi_base: PCI_INTX_GSI_BASE,
            intx_lines: PCI_INTX_LINES,
        };
        let pci = Arc::new(Mutex::new(PciRoot::new(mmio.clone(), pio.clone())));
        let pci_config_io = Arc::new(Mutex::new(PciConfigIo::new(&pci)));
        pio.insert(pci_config_io.clone(), PCI_CONFIG_PORT, 8)?;
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(&pci))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        )?;
        let mmio_allocator = AddressAllocator::new(layout::PCI_MMIO_START, layout::PCI_MMIO_SIZE)
            .map_err(|e| VmError::Allocator(e.to_string()))?;

        let rsdp = if fresh {
            let rsdp = acpi::write_tables(&mem, machine.vcpu_count, &pci_resources)?;
            smbios::write_tables(&mem, &machine.smbios)?;
            reset_vector::write(&mem).map_err(|e| VmError::Memory {
                mib: machine.mem_size_mib,
                detail: format!("reset vector: {e}"),
            })?;
            rsdp
        } else {
            // Only a kernel load needs it, and a restored VM loads none.
            GuestAddress(0)
        };

        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let supported_msrs: Vec<u32> = kvm
            .get_msr_index_list()
            .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        let mut vcpu_fds = Vec::with_capacity(usize::from(machine.vcpu_count));
        for id in 0..machine.vcpu_count {
            let vcpu = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let cpuid = cpuid::normalise(&supported_cpuid, id, machine.vcpu_count);
            vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            regs::setup_msrs(&vcpu, &supported_msrs)?;
            regs::setup_fpu(&vcpu)?;
            regs::setup_lapic(&vcpu, id == 0)?;
            vcpu_fds.push(vcpu);
        }

        Ok(Vm {
            _kvm: kvm,
            vm_fd,
            router,
            pci,
            pci_resources,
            mmio_allocator,
            passthrough: None,
            device_slots: None,
            mem,
            vcpu_fds,
            vcpus: Vec::new(),
            pio,
            mmio,
            serial,
            i8042,
            cmos,
            pci_config_io,
            msr_list: supported_msrs,
            paused: false,
            i8042_reset,
            exit,
            stop: Arc::new(AtomicBool::new(false)),
            boot_time_us,
            rsdp,
            entry: None,
            vcpu_count: machine.vcpu_count,
            mem_size_mib: machine.mem_size_mib,
        })
    }

    /// Load the kernel, initrd and command line and point the boot vCPU at
    /// the kernel's entry.
    pub fn load_kernel(&mut self, boot_source: &BootSource) -> Result<(), VmError> {
        let mem_bytes = u64::from(self.mem_size_mib) << 20;
        let entry = boot::load(
            &self.mem,
            &BootSetup {
                kernel: &boot_source.kernel_image_path,
                initrd: boot_source.initrd_path.as_deref(),
                cmdline: boot_source.cmdline(),
                mem_bytes,
                rsdp: self.rsdp,
            },
        )?;
        let bsp = self.vcpu_fds.first().ok_or(VmError::AlreadyStarted)?;
        regs::setup_regs(bsp, entry.entry.0, entry.mode)?;
        regs::setup_sregs(&self.mem, bsp, entry.mode)?;
        self.entry = Some(entry);
        Ok(())
    }

    /// Plug a virtio-blk device backed by a raw file into the next PCI slot.
    pub fn add_drive(&mut self, drive: &DriveConfig) -> Result<(), VmError> {
        let err = |detail: String| VmError::Drive {
            id: drive.drive_id.clone(),
            detail,
        };
        let backend: Arc<dyn BlockBackend> = match (&drive.path_on_host, &drive.volume_id) {
            (Some(path), _) => Arc::new(
                FileBackend::open(path, drive.is_read_only)
                    .map_err(|e| err(format!("{}: {e}", path.display())))?,
            ),
            (None, Some(vol)) => {
                let endpoint = drive.endpoint.as_deref().unwrap_or_default();
                let ebs =
                    crate::ebs_backend::EbsBackend::connect(endpoint, vol, drive.token.as_deref())
                        .map_err(|e| err(format!("EBS volume {vol}: {e}")))?;
                if ebs.read_only() && !drive.is_read_only {
                    return Err(err(format!(
                        "EBS volume {vol} is attached read-only: set is_read_only (ro=on)"
                    )));
                }
                Arc::new(ebs)
            }
            (None, None) => return Err(err("no path_on_host or volume_id".into())),
        };
        let block = Block::new(
            backend,
            BlockConfig {
                read_only: drive.is_read_only,
                serial: drive.guest_serial(),
                num_queues: drive.num_queues,
                rate_limiter: drive.rate_limiter.unwrap_or_default(),
            },
        );
        self.add_virtio_device(Box::new(block))
            .map_err(|e| err(e.to_string()))
    }

    /// Plug a virtio-net device on a tap into the next PCI slot.
    pub fn add_net(
        &mut self,
        net: &NetConfig,
        index: usize,
        imds: Option<&imds::InstanceRecord>,
    ) -> Result<(), VmError> {
        let err = |detail: String| VmError::Net {
            id: net.iface_id.clone(),
            detail,
        };
        let tap = Tap::open(&net.host_dev_name)
            .map_err(|e| err(format!("tap {}: {e}", net.host_dev_name)))?;
        let mac = net.mac(index);
        log::info!(
            "net {}: tap {} mac {}",
            net.iface_id,
            tap.name(),
            mac.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        );
        let dhcp = net.dhcp_lease(mac).map(|lease| {
            log::info!(
                "net {}: DHCP offers {}/{} via {}",
                net.iface_id,
                lease.ip,
                lease.prefix_len,
                lease.gateway
            );
            crate::dhcp::DhcpServer::new(lease)
        });
        if imds.is_some() {
            log::info!("net {}: metadata service at 169.254.169.254", net.iface_id);
        }
        let link = crate::guest_link::GuestLinkHook::new(dhcp, imds)
            .map_err(|e| err(format!("metadata service: {e}")))?;
        let hook: Option<Box<dyn devices::virtio::net::FrameHook>> = if link.is_empty() {
            None
        } else {
            Some(Box::new(link))
        };
        let device = Net::new(
            tap,
            NetDeviceConfig {
                mac,
                mtu: net.mtu,
                rx_rate_limiter: net.rx_rate_limiter.unwrap_or_default(),
                tx_rate_limiter: net.tx_rate_limiter.unwrap_or_default(),
            },
            hook,
        );
        self.add_virtio_device(Box::new(device))
            .map_err(|e| err(e.to_string()))
    }

    /// Pass the PCI function `bdf` (bound to vfio-pci) through to the guest.
    pub fn add_vfio(&mut self, bdf: &str) -> Result<(), VmError> {
        use crate::passthrough::{check_device, explain, Passthrough};
        use devices::vfio::{msix_vector_count, probe_bar, VfioPciDevice};
        let err = |e: crate::passthrough::PassthroughError| VmError::Vfio(e.to_string());
        let sysfs = check_device(bdf).map_err(err)?;
        if self.passthrough.is_none() {
            self.passthrough = Some(Passthrough::new(&self.vm_fd).map_err(err)?);
        }
        let container = match &self.passthrough {
            Some(p) => Arc::clone(&p.container),
            None => return Err(VmError::Vfio("no VFIO container".into())),
        };
        let device = Arc::new(
            vfio_ioctls::VfioDevice::new(&sysfs, container as Arc<dyn vfio_ioctls::VfioOps>, false)
                .map_err(|e| err(explain(bdf, e)))?,
        );
        if let Some(p) = self.passthrough.as_mut().filter(|p| !p.is_mapped()) {
            p.map_memory(&self.mem).map_err(err)?;
        }
        let mut bars = Vec::new();
        let mut index = 0;
        while index < 6 {
            let Some((kind, size, prefetchable)) = probe_bar(&device, index) else {
                index += 1;
                continue;
            };
            if kind == devices::pci::BarKind::Io {
                log::warn!("vfio {bdf}: I/O BAR {index} not supported, left unmapped");
                index += 1;
                continue;
            }
            let range = self
                .mmio_allocator
                .allocate(size, size, AllocPolicy::FirstMatch)
                .map_err(|e| {
                    VmError::Allocator(format!("BAR {index} of {bdf} ({size:#x} bytes): {e}"))
                })?;
            bars.push(devices::pci::Bar {
                index,
                kind,
                size,
                addr: range.start(),
                prefetchable,
            });
            index += if kind == devices::pci::BarKind::Mem64 {
                2
            } else {
                1
            };
        }
        let vectors = msix_vector_count(&device).max(1);
        let msi = KvmMsiGroup::new(Arc::clone(&self.router), &self.vm_fd, vectors)
            .map_err(VmError::Interrupts)?;
        let fds = msi.eventfds().map_err(VmError::Interrupts)?;
        // One slot allocator for all passed-through devices; guest RAM
        // uses one slot per region, from 0.
        let first_free = self.mem.num_regions() as u32;
        let vm_fd = Arc::clone(&self.vm_fd);
        let slots =
            Arc::clone(self.device_slots.get_or_insert_with(|| {
                Arc::new(crate::interrupts::KvmSlots::new(vm_fd, first_free))
            }));
        // The slot decides the INTx GSI (the _PRT's routing), as for virtio.
        let slot = self
            .pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free_slot()
            .ok_or(devices::pci::PciRootError::Full)?;
        let intx = crate::passthrough::KvmIntxLine::new(
            Arc::clone(&self.vm_fd),
            self.pci_resources.intx_gsi(slot),
        );
        let dev = VfioPciDevice::new(
            device,
            bars.clone(),
            Arc::new(msi),
            fds,
            bdf.to_string(),
            Some(slots),
            Some(Arc::new(intx)),
        )
        .map_err(|e| VmError::Vfio(e.to_string()))?;
        let intx_text = dev
            .intx_gsi()
            .map_or_else(|| "no INTx".to_string(), |g| format!("INTx GSI {g}"));
        self.pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(slot, Arc::new(Mutex::new(dev)))?;
        log::info!(
            "PCI 00:{slot:02x}.0: VFIO {bdf}, {} BAR(s), {vectors} MSI-X vector(s), {intx_text}",
            bars.len()
        );
        Ok(())
    }

    /// Put a virtio device on the PCI bus: BAR from the MMIO hole, MSI-X
    /// vectors on fresh GSIs, INTx on the slot's line.
    pub fn add_virtio_device(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), VmError> {
        let slot = self
            .pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free_slot()
            .ok_or(devices::pci::PciRootError::Full)?;
        let bar = self
            .mmio_allocator
            .allocate(BAR_SIZE, BAR_SIZE, AllocPolicy::FirstMatch)
            .map_err(|e| VmError::Allocator(e.to_string()))?;
        let vectors = device.queue_max_sizes().len() as u16 + 1;
        let msi = KvmMsiGroup::new(Arc::clone(&self.router), &self.vm_fd, vectors)
            .map_err(VmError::Interrupts)?;
        let intx_gsi = self.pci_resources.intx_gsi(slot);
        let intx = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.vm_fd
            .register_irqfd(&intx, intx_gsi)
            .map_err(kvm_err("KVM_IRQFD (PCI INTx)"))?;
        let ioevents = Arc::new(KvmIoEvents {
            vm: Arc::clone(&self.vm_fd),
        });
        let dev = VirtioPciDevice::new(
            device,
            self.mem.clone(),
            bar.start(),
            Arc::new(msi),
            ioevents,
            intx,
            intx_gsi as u8,
        )
        .map_err(VmError::Interrupts)?;
        self.pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(slot, Arc::new(Mutex::new(dev)))?;
        log::info!(
            "PCI 00:{slot:02x}.0: virtio device, BAR0 {:#x}, INTx GSI {intx_gsi}",
            bar.start()
        );
        Ok(())
    }

    /// Guest memory (for tests and devices).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The port-I/O bus (tests put probe devices on it).
    pub fn pio_bus(&self) -> &Bus {
        &self.pio
    }

    pub fn mmio_bus(&self) -> &Bus {
        &self.mmio
    }

    /// The VM file descriptor, for wiring irqfds and ioeventfds.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Override the boot CPU's registers before start (hand-written test
    /// guests use this to enter their own code).
    pub fn boot_vcpu(&self) -> Option<&kvm_ioctls::VcpuFd> {
        self.vcpu_fds.first()
    }

    /// Start every vCPU thread (first boot, or resume after a pause or a
    /// restore: the threads take the parked vCPUs).
    pub fn start(&mut self) -> Result<(), VmError> {
        crate::vcpu::install_kick_handler().map_err(VmError::Thread)?;
        self.stop.store(false, std::sync::atomic::Ordering::Release);
        self.paused = false;
        for (id, fd) in self.vcpu_fds.drain(..).enumerate() {
            let ctx = VcpuContext {
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                stop: Arc::clone(&self.stop),
                exit: Arc::clone(&self.exit),
            };
            let handle = VcpuHandle::spawn(id as u8, fd, ctx).map_err(VmError::Thread)?;
            self.vcpus.push(handle);
        }
        log::info!(
            "started {} vCPU(s), {} MiB",
            self.vcpus.len(),
            self.mem_size_mib
        );
        Ok(())
    }

    /// Why the guest stopped, if it has (i8042 reset line or a vCPU/device
    /// exit request).
    pub fn exit_reason(&self) -> Option<ExitReason> {
        if self.i8042_reset.read().is_ok() {
            // Keep it visible to later callers, as the exit signal does.
            self.exit.request(ExitReason::GuestReset);
        }
        self.exit.reason()
    }

    /// Block until the guest stops or `timeout` passes.
    pub fn wait_for_exit(&self, timeout: Duration) -> Option<ExitReason> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.exit_reason() {
                return Some(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.exit.evt.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.i8042_reset.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: `fds` is a valid array of two pollfd for the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        }
    }

    /// Stop all vCPU threads. Returns false if any did not stop in time.
    pub fn stop(&mut self) -> bool {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let mut all = true;
        for v in &mut self.vcpus {
            all &= v.stop_and_join(Duration::from_secs(5));
        }
        all
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
        // Before the fields drop: the PCI root (declared first) holds the
        // VFIO devices, whose groups must still be in the container when
        // guest memory is unmapped from the IOMMU.
        if let Some(p) = self.passthrough.as_mut() {
            p.unmap_all();
        }
    }
}
