//! The modern (virtio 1.x) PCI transport.
//!
//! BAR 0 (64-bit memory, 32 KiB) holds every structure the driver needs:
//!
//! | offset | size | structure |
//! |---|---|---|
//! | 0x0000 | 0x40 | common configuration |
//! | 0x1000 | 0x4 | ISR status |
//! | 0x2000 | 0x1000 | device configuration |
//! | 0x3000 | 4 per queue | notifications (one ioeventfd each) |
//! | 0x4000 | 16 per vector | MSI-X table |
//! | 0x6000 | | MSI-X pending bits |

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    VirtioDevice, VirtioInterrupt, NO_VECTOR, VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::pci::config::COMMAND;
use crate::pci::msix::MSIX_CAP_ID;
use crate::pci::{
    Bar, BarKind, BarMove, MsiInterrupts, MsixConfig, PciConfiguration, PciDevice, PciIds,
};

pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_SIZE: u64 = 0x40;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_SIZE: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;

const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

const STATUS_DRIVER_OK: u8 = 4;
pub(super) const STATUS_FEATURES_OK: u8 = 8;
const STATUS_FAILED: u8 = 0x80;

/// Registers and removes KVM ioeventfds for queue notifications.
pub trait IoEventRegistry: Send + Sync {
    fn register(&self, evt: &EventFd, addr: u64) -> std::io::Result<()>;
    fn unregister(&self, evt: &EventFd, addr: u64) -> std::io::Result<()>;
}

pub struct VirtioPciDevice {
    pub(super) config: PciConfiguration,
    pub(super) msix_cap: usize,
    pub(super) msix: Arc<Mutex<MsixConfig>>,
    pub(super) device: Box<dyn VirtioDevice>,
    pub(super) mem: GuestMemoryMmap,
    pub(super) ioevents: Arc<dyn IoEventRegistry>,
    pub(super) bar_addr: u64,
    pub(super) queues: Vec<Queue>,
    pub(super) kicks: Vec<EventFd>,
    pub(super) config_vector: Arc<AtomicU16>,
    pub(super) queue_vectors: Arc<Vec<AtomicU16>>,
    pub(super) isr: Arc<AtomicU8>,
    pub(super) intx: EventFd,
    pub(super) device_feature_select: u32,
    pub(super) driver_feature_select: u32,
    pub(super) driver_features: u64,
    pub(super) status: u8,
    pub(super) queue_select: u16,
    pub(super) config_generation: u8,
    pub(super) active: bool,
    /// Active, but the device's workers are stopped (VM paused or just
    /// restored); [`PciDevice::resume`] starts them again.
    pub(super) paused: bool,
}

fn pci_ids(device_type: u32) -> PciIds {
    let (class, subclass) = match device_type {
        super::TYPE_NET => (0x02, 0x00),
        super::TYPE_BLOCK => (0x01, 0x00),
        _ => (0xff, 0x00),
    };
    PciIds {
        vendor: 0x1af4,
        // Modern virtio devices: 0x1040 + device type.
        device: 0x1040 + device_type as u16,
        subsystem_vendor: 0x1af4,
        subsystem: 0x40,
        class,
        subclass,
        prog_if: 0,
        revision: 1,
    }
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let cap_len = if extra.is_some() { 20u8 } else { 16 };
    let mut b = vec![cap_len, cfg_type, 0, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

impl VirtioPciDevice {
    /// `bar_addr` is where the VMM allocated BAR 0; `intx` raises the
    /// function's legacy interrupt line `irq`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        bar_addr: u64,
        msi: Arc<dyn MsiInterrupts>,
        ioevents: Arc<dyn IoEventRegistry>,
        intx: EventFd,
        irq: u8,
    ) -> std::io::Result<Self> {
        let sizes = device.queue_max_sizes();
        let num_queues = sizes.len();
        let mut config = PciConfiguration::new(pci_ids(device.device_type()), 1);
        config.set_interrupt_line(irq);
        let bar = Bar {
            index: 0,
            kind: BarKind::Mem64,
            size: BAR_SIZE,
            addr: bar_addr,
            prefetchable: false,
        };
        let cap_err = |e: crate::pci::config::ConfigError| std::io::Error::other(e.to_string());
        config.add_bar(bar).map_err(cap_err)?;
        // One vector for config changes plus one per queue.
        let msix = MsixConfig::new(num_queues as u16 + 1, msi);
        let (body, writable) = msix.capability(0, MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32);
        let msix_cap = config
            .add_capability(MSIX_CAP_ID, &body, &writable)
            .map_err(cap_err)?;
        for (t, off, len, extra) in [
            (CFG_COMMON, COMMON_OFFSET, COMMON_SIZE, None),
            (CFG_ISR, ISR_OFFSET, 4, None),
            (CFG_DEVICE, DEVICE_OFFSET, DEVICE_SIZE, None),
            (
                CFG_NOTIFY,
                NOTIFY_OFFSET,
                u64::from(NOTIFY_MULTIPLIER) * num_queues as u64,
                Some(NOTIFY_MULTIPLIER),
            ),
        ] {
            config
                .add_capability(CAP_VENDOR, &vendor_cap(t, off, len, extra), &[])
                .map_err(cap_err)?;
        }
        let mut queues = Vec::with_capacity(num_queues);
        let mut kicks = Vec::with_capacity(num_queues);
        for (i, &max) in sizes.iter().enumerate() {
            queues.push(
                Queue::new(max).map_err(|e| std::io::Error::other(format!("queue {i}: {e:?}")))?,
            );
            let kick = EventFd::new(libc::EFD_NONBLOCK)?;
            ioevents.register(
                &kick,
                bar_addr + NOTIFY_OFFSET + (i as u64) * u64::from(NOTIFY_MULTIPLIER),
            )?;
            kicks.push(kick);
        }
        Ok(Self {
            config,
            msix_cap,
            msix: Arc::new(Mutex::new(msix)),
            device,
            mem,
            ioevents,
            bar_addr,
            queues,
            kicks,
            config_vector: Arc::new(AtomicU16::new(NO_VECTOR)),
            queue_vectors: Arc::new((0..num_queues).map(|_| AtomicU16::new(NO_VECTOR)).collect()),
            isr: Arc::new(AtomicU8::new(0)),
            intx,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            config_generation: 0,
            active: false,
            paused: false,
        })
    }

    pub(super) fn features(&self) -> u64 {
        self.device.avail_features() | VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.paused = false;
        for q in &mut self.queues {
            q.reset();
        }
        for v in self.queue_vectors.iter() {
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        self.isr.store(0, Ordering::Release);
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
    }

    fn set_status(&mut self, status: u8) {
        if status == 0 {
            self.reset();
            return;
        }
        if status & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            // The driver must accept VERSION_1 and nothing we did not offer.
            let ok = self.driver_features & !self.features() == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                log::warn!(
                    "virtio: driver accepted features {:#x} outside {:#x}",
                    self.driver_features,
                    self.features()
                );
                self.status = status & !STATUS_FEATURES_OK;
                return;
            }
            self.device.set_acked_features(self.driver_features);
        }
        self.status = status;
        if status & STATUS_DRIVER_OK != 0 && !self.active && status & STATUS_FAILED == 0 {
            self.activate();
        }
    }

    pub(super) fn activate(&mut self) {
        let event_idx = self.driver_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::new();
        let mut kicks = Vec::new();
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
                log::warn!("virtio: queue {i} has invalid addresses or size; device needs reset");
                self.status |= 0x40; // DEVICE_NEEDS_RESET
                return;
            }
            q.set_event_idx(event_idx);
            let kick = match self.kicks[i].try_clone() {
                Ok(k) => k,
                Err(e) => {
                    log::error!("virtio: {e}");
                    return;
                }
            };
            // The worker gets its own Queue built from this one's state.
            match Queue::try_from(q.state()) {
                Ok(worker_queue) => queues.push(worker_queue),
                Err(e) => {
                    log::warn!("virtio: queue {i}: {e:?}");
                    self.status |= 0x40;
                    return;
                }
            }
            kicks.push(kick);
        }
        let interrupt = Arc::new(VirtioInterrupt {
            msix: Arc::clone(&self.msix),
            config_vector: Arc::clone(&self.config_vector),
            queue_vectors: Arc::clone(&self.queue_vectors),
            isr: Arc::clone(&self.isr),
            intx: match self.intx.try_clone() {
                Ok(e) => e,
                Err(e) => {
                    log::error!("virtio: {e}");
                    return;
                }
            },
        });
        match self
            .device
            .activate(self.mem.clone(), interrupt, queues, kicks)
        {
            Ok(()) => self.active = true,
            Err(e) => {
                log::error!("virtio: activation failed: {e}");
                self.status |= 0x40;
            }
        }
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        let features = self.features();
        let v: u64 = match offset {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.config_vector.load(Ordering::Acquire)),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(self.status),
            0x15 => u64::from(self.config_generation),
            0x16 => u64::from(self.queue_select),
            0x18 => self
                .selected_queue()
                .map(|q| u64::from(q.size()))
                .unwrap_or(0),
            0x1a => self
                .queue_vectors
                .get(usize::from(self.queue_select))
                .map(|v| u64::from(v.load(Ordering::Acquire)))
                .unwrap_or(u64::from(NO_VECTOR)),
            0x1c => self
                .selected_queue()
                .map(|q| u64::from(q.ready()))
                .unwrap_or(0),
            0x1e => u64::from(self.queue_select),
            0x20 => self.selected_queue().map(|q| q.desc_table()).unwrap_or(0),
            0x24 => self
                .selected_queue()
                .map(|q| q.desc_table() >> 32)
                .unwrap_or(0),
            0x28 => self.selected_queue().map(|q| q.avail_ring()).unwrap_or(0),
            0x2c => self
                .selected_queue()
                .map(|q| q.avail_ring() >> 32)
                .unwrap_or(0),
            0x30 => self.selected_queue().map(|q| q.used_ring()).unwrap_or(0),
            0x34 => self
                .selected_queue()
                .map(|q| q.used_ring() >> 32)
                .unwrap_or(0),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut buf = [0u8; 8];
        let n = data.len().min(8);
        buf[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(buf);
        let lo = Some(v as u32);
        // Queue set-up is only allowed before the driver says DRIVER_OK.
        let queue_writable = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x00 => self.device_feature_select = v as u32,
            0x08 => self.driver_feature_select = v as u32,
            0x0c if self.status & STATUS_FEATURES_OK == 0 => match self.driver_feature_select {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | (v & 0xffff_ffff)
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | ((v & 0xffff_ffff) << 32)
                }
                _ => {}
            },
            0x10 => self.config_vector.store(v as u16, Ordering::Release),
            0x14 => self.set_status(v as u8),
            0x16 => self.queue_select = v as u16,
            0x18 if queue_writable => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            0x1a => {
                if let Some(slot) = self.queue_vectors.get(usize::from(self.queue_select)) {
                    slot.store(v as u16, Ordering::Release);
                }
            }
            0x1c if queue_writable => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            0x20 if queue_writable => self.with_queue(|q| q.set_desc_table_address(lo, None)),
            0x24 if queue_writable => self.with_queue(|q| q.set_desc_table_address(None, lo)),
            0x28 if queue_writable => self.with_queue(|q| q.set_avail_ring_address(lo, None)),
            0x2c if queue_writable => self.with_queue(|q| q.set_avail_ring_address(None, lo)),
            0x30 if queue_writable => self.with_queue(|q| q.set_used_ring_address(lo, None)),
            0x34 if queue_writable => self.with_queue(|q| q.set_used_ring_address(None, lo)),
            _ => log::debug!("virtio: ignored common config write at {offset:#x}"),
        }
        // 64-bit writes to the queue addresses arrive as one access.
        if data.len() == 8 && matches!(offset, 0x20 | 0x28 | 0x30) && queue_writable {
            self.write_common(offset + 4, &data[4..8]);
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarMove> {
        let moves = self.config.write(offset, data);
        // The MSI-X message control word lives at cap + 2.
        let ctrl_at = self.msix_cap + 2;
        if offset <= ctrl_at + 1 && offset + data.len() > ctrl_at {
            let ctrl = self.config.read_u16(ctrl_at);
            self.msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_control(ctrl);
        }
        if offset <= COMMAND + 1 && offset + data.len() > COMMAND {
            log::trace!("virtio: command register {:#x}", self.config.command());
        }
        moves
    }

    fn bars(&self) -> Vec<Bar> {
        self.config.bars().copied().collect()
    }

    fn read_bar(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.read_common(o - COMMON_OFFSET, data),
            o if (ISR_OFFSET..ISR_OFFSET + 4).contains(&o) => {
                // Reading the ISR acknowledges (clears) it.
                let v = self.isr.swap(0, Ordering::AcqRel);
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = v;
                }
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.read_config(o - DEVICE_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => self
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_table(o - MSIX_TABLE_OFFSET, data),
            o if o >= MSIX_PBA_OFFSET => self
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_pba(o - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn write_bar(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.write_common(o - COMMON_OFFSET, data),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.write_config(o - DEVICE_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // Normally consumed by the ioeventfd in KVM; a write that
                // reaches us (e.g. before registration) still kicks.
                let q = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(k) = self.kicks.get(q) {
                    let _ = k.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => self
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_table(o - MSIX_TABLE_OFFSET, data),
            _ => {}
        }
    }

    fn pause(&mut self) {
        self.pause_device();
    }

    fn resume(&mut self) {
        self.resume_device();
    }

    fn save_state(&mut self) -> Result<crate::pci::PciDeviceState, crate::state::StateError> {
        Ok(crate::pci::PciDeviceState::Virtio(Box::new(
            self.virtio_state()?,
        )))
    }

    fn restore_state(
        &mut self,
        state: &crate::pci::PciDeviceState,
    ) -> Result<Vec<BarMove>, crate::state::StateError> {
        match state {
            crate::pci::PciDeviceState::Virtio(s) => self.restore_virtio_state(s),
            _ => Err(crate::state::StateError::Mismatch(
                "a virtio function in this slot, not in the snapshot".into(),
            )),
        }
    }

    fn bar_moved(&mut self, mv: &BarMove) {
        if mv.index != 0 {
            return;
        }
        for (i, kick) in self.kicks.iter().enumerate() {
            let off = NOTIFY_OFFSET + (i as u64) * u64::from(NOTIFY_MULTIPLIER);
            if let Err(e) = self.ioevents.unregister(kick, self.bar_addr + off) {
                log::warn!("virtio: cannot remove ioeventfd: {e}");
            }
            if mv.new != 0 {
                if let Err(e) = self.ioevents.register(kick, mv.new + off) {
                    log::warn!("virtio: cannot add ioeventfd: {e}");
                }
            }
        }
        self.bar_addr = mv.new;
    }
}
