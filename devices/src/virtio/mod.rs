//! Virtio devices and their PCI transport.
//!
//! The transport ([`pci::VirtioPciDevice`], modern virtio 1.x) owns feature
//! negotiation, queue set-up, status and interrupts; a device
//! ([`VirtioDevice`]) only knows its feature bits, config space and how to
//! serve its queues. On DRIVER_OK the transport hands the device its
//! queues, one kick eventfd per queue (KVM ioeventfds on the notify area,
//! so a guest notification never exits to the VMM), and a
//! [`VirtioInterrupt`]. Devices serve their queues on their own worker
//! threads, so a slow backend never blocks a vCPU or the VMM thread.

pub mod block;
pub mod net;
pub mod pci;
pub mod state;

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::pci::MsixConfig;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Descriptor tables in guest memory (virtio-queue walks them, bounded by
/// the table's length): a 64 KiB TSO frame or a large block request then
/// takes one ring slot instead of up to 18.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;

/// "No MSI-X vector" in the common config.
pub const NO_VECTOR: u16 = 0xffff;

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("cannot start the device worker: {0}")]
    Worker(std::io::Error),
    #[error("invalid queue set-up: {0}")]
    Queues(String),
}

/// A virtio device independent of its transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits offered to the driver.
    fn avail_features(&self) -> u64;
    /// The features the driver accepted (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64);
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start serving `queues`; `kicks[i]` is signalled when the driver
    /// notifies queue `i`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        kicks: Vec<EventFd>,
    ) -> Result<(), ActivateError>;
    /// Stop the worker (device reset). The transport re-creates the queues.
    fn reset(&mut self);
    /// Stop the workers after the requests they hold are complete, and
    /// hand back the queues they served (in activation order), so that
    /// their positions can be saved and a later `activate` continues
    /// where they stopped. None: this device cannot pause.
    fn pause(&mut self) -> Option<Vec<Queue>> {
        None
    }
}

/// What a device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    Config,
    Queue(u16),
}

/// Interrupt delivery shared by the transport and the device's worker:
/// MSI-X when the driver enabled it, else INTx with the ISR status bits.
pub struct VirtioInterrupt {
    msix: Arc<Mutex<MsixConfig>>,
    config_vector: Arc<AtomicU16>,
    queue_vectors: Arc<Vec<AtomicU16>>,
    isr: Arc<AtomicU8>,
    intx: EventFd,
}

pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

impl VirtioInterrupt {
    pub fn trigger(&self, kind: InterruptKind) {
        let mut msix = self.msix.lock().unwrap_or_else(|e| e.into_inner());
        if msix.enabled() {
            let vector = match kind {
                InterruptKind::Config => self.config_vector.load(Ordering::Acquire),
                InterruptKind::Queue(q) => self
                    .queue_vectors
                    .get(usize::from(q))
                    .map(|v| v.load(Ordering::Acquire))
                    .unwrap_or(NO_VECTOR),
            };
            if vector != NO_VECTOR {
                msix.trigger(vector);
            }
            return;
        }
        drop(msix);
        let bit = match kind {
            InterruptKind::Config => ISR_CONFIG,
            InterruptKind::Queue(_) => ISR_QUEUE,
        };
        self.isr.fetch_or(bit, Ordering::AcqRel);
        if let Err(e) = self.intx.write(1) {
            log::warn!("virtio: cannot raise INTx: {e}");
        }
    }
}

#[cfg(test)]
impl VirtioInterrupt {
    /// Interrupts for device tests: MSI-X stays disabled, so every trigger
    /// sets the ISR bits and signals `intx`.
    pub(crate) fn for_tests(intx: EventFd) -> Self {
        struct NoMsi;
        impl crate::pci::MsiInterrupts for NoMsi {
            fn update(
                &self,
                _vector: u16,
                _msg: Option<crate::pci::MsiMessage>,
            ) -> std::io::Result<()> {
                Ok(())
            }
            fn fire(&self, _vector: u16) -> std::io::Result<()> {
                Ok(())
            }
        }
        Self {
            msix: Arc::new(Mutex::new(MsixConfig::new(1, Arc::new(NoMsi)))),
            config_vector: Arc::new(AtomicU16::new(NO_VECTOR)),
            queue_vectors: Arc::new(vec![AtomicU16::new(NO_VECTOR)]),
            isr: Arc::new(AtomicU8::new(0)),
            intx,
        }
    }
}
