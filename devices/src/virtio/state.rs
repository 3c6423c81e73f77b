//! Pause, save and restore of the virtio-pci transport and its device.
//!
//! Pausing stops the device's workers (a virtio-blk worker completes the
//! request it is serving first: requests are served synchronously) and
//! takes back their queues, whose `next_avail`/`next_used` positions are
//! the only device-side ring state; everything else lives in guest memory.
//! Resuming activates the device again from those positions.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::pci::VirtioPciDevice;
use crate::pci::{BarMove, ConfigSpaceState, MsixState};
use crate::state::StateError;

/// One virtqueue as the transport knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
    /// MSI-X vector of the queue (0xffff: none).
    pub vector: u16,
}

/// The virtio-pci function: PCI config space, MSI-X, the common
/// configuration registers and the queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioPciState {
    pub device_type: u32,
    pub config: ConfigSpaceState,
    pub msix: MsixState,
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    pub driver_features: u64,
    pub status: u8,
    pub queue_select: u16,
    pub config_generation: u8,
    pub config_vector: u16,
    pub isr: u8,
    /// The driver said DRIVER_OK and the device was serving its queues.
    pub active: bool,
    pub queues: Vec<QueueSnapshot>,
}

impl VirtioPciDevice {
    /// Stop the device's workers and keep their queue positions.
    pub(super) fn pause_device(&mut self) {
        if !self.active || self.paused {
            return;
        }
        self.paused = true;
        let Some(returned) = self.device.pause() else {
            log::warn!("virtio: device cannot pause; its queue positions are not saved");
            return;
        };
        // `activate` handed out the ready queues, in order.
        let mut returned = returned.into_iter();
        for q in self.queues.iter_mut().filter(|q| q.ready()) {
            let Some(worker_queue) = returned.next() else {
                break;
            };
            q.set_next_avail(worker_queue.next_avail());
            q.set_next_used(worker_queue.next_used());
            q.set_event_idx(worker_queue.event_idx_enabled());
        }
    }

    /// Start the workers again from the saved positions.
    pub(super) fn resume_device(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        if self.active {
            self.active = false;
            self.activate();
        }
    }

    pub(super) fn virtio_state(&mut self) -> Result<VirtioPciState, StateError> {
        if self.active && !self.paused {
            return Err(StateError::NotPaused("virtio device".into()));
        }
        let queues = self
            .queues
            .iter()
            .zip(self.queue_vectors.iter())
            .map(|(q, v)| {
                let s = q.state();
                QueueSnapshot {
                    max_size: s.max_size,
                    size: s.size,
                    ready: s.ready,
                    desc_table: s.desc_table,
                    avail_ring: s.avail_ring,
                    used_ring: s.used_ring,
                    next_avail: s.next_avail,
                    next_used: s.next_used,
                    event_idx: s.event_idx_enabled,
                    vector: v.load(Ordering::Acquire),
                }
            })
            .collect();
        Ok(VirtioPciState {
            device_type: self.device.device_type(),
            config: self.config.state(),
            msix: self.msix.lock().unwrap_or_else(|e| e.into_inner()).state(),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            status: self.status,
            queue_select: self.queue_select,
            config_generation: self.config_generation,
            config_vector: self.config_vector.load(Ordering::Acquire),
            isr: self.isr.load(Ordering::Acquire),
            active: self.active,
            queues,
        })
    }

    /// Load saved state into a freshly built, never activated function.
    /// An active device comes back paused: `resume` starts its workers.
    pub(super) fn restore_virtio_state(
        &mut self,
        s: &VirtioPciState,
    ) -> Result<Vec<BarMove>, StateError> {
        if self.active {
            return Err(StateError::Invalid(
                "restore into a device that already runs".into(),
            ));
        }
        let device_type = self.device.device_type();
        if s.device_type != device_type {
            return Err(StateError::Mismatch(format!(
                "virtio device type {} in the snapshot, {device_type} here",
                s.device_type
            )));
        }
        if s.queues.len() != self.queues.len() {
            return Err(StateError::Mismatch(format!(
                "{} queues in the snapshot, {} here",
                s.queues.len(),
                self.queues.len()
            )));
        }
        if s.driver_features & !self.features() != 0 {
            return Err(StateError::Mismatch(format!(
                "the driver accepted features {:#x} this device does not offer",
                s.driver_features
            )));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (saved, mine)) in s.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != mine.max_size() {
                return Err(StateError::Mismatch(format!(
                    "queue {i}: {} entries in the snapshot, {} here",
                    saved.max_size,
                    mine.max_size()
                )));
            }
            let state = virtio_queue::QueueState {
                max_size: saved.max_size,
                next_avail: saved.next_avail,
                next_used: saved.next_used,
                event_idx_enabled: saved.event_idx,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
            };
            let q = Queue::try_from(state)
                .map_err(|e| StateError::Invalid(format!("queue {i}: {e:?}")))?;
            queues.push(q);
        }
        let moves = self.config.restore(&s.config)?;
        // The capability's control word was restored with the config space;
        // the table itself carries enable/mask state too.
        self.msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(&s.msix)?;
        self.queues = queues;
        for (slot, saved) in self.queue_vectors.iter().zip(&s.queues) {
            slot.store(saved.vector, Ordering::Release);
        }
        self.config_vector.store(s.config_vector, Ordering::Release);
        self.isr.store(s.isr, Ordering::Release);
        self.device_feature_select = s.device_feature_select;
        self.driver_feature_select = s.driver_feature_select;
        self.driver_features = s.driver_features;
        self.status = s.status;
        self.queue_select = s.queue_select;
        self.config_generation = s.config_generation;
        if s.status & super::pci::STATUS_FEATURES_OK != 0 {
            self.device.set_acked_features(s.driver_features);
        }
        self.active = s.active;
        self.paused = s.active;
        Ok(moves)
    }
}
