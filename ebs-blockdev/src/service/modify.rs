//! ModifyVolume in the service: a modification starts in `modifying` (the volume keeps
//! its original size and performance), the new size becomes usable when it reaches
//! `optimizing` (performance then runs at the lower of the old and new ceilings), and
//! the new performance applies at `completed`. DescribeVolumesModifications reports the
//! phase and progress.

use std::time::Duration;

use serde_json::{json, Value};

use super::Service;
use crate::control::filters::filter_resources;
use crate::control::modification::{
    modification_values, DescribeVolumesModificationsRequest, DEFAULT_COOLDOWN,
};
use crate::control::{
    ControlError, ModificationRecord, ModificationState, ModifyVolumeRequest, Volume,
    VolumeModification,
};
use crate::qos::QosPolicy;

fn policy_of(volume: &Volume) -> Result<QosPolicy, ControlError> {
    Ok(QosPolicy::for_volume(
        volume.volume_type,
        volume.size,
        &volume.performance()?,
    ))
}

/// The volume as it was before the modification.
fn original_volume(volume: &Volume, record: &ModificationRecord) -> Volume {
    let original = &record.modification;
    Volume {
        size: original.original_size,
        volume_type: original.original_volume_type,
        iops: original.original_iops,
        throughput: original.original_throughput,
        ..volume.clone()
    }
}

/// The QoS policy for the phase of the volume's modification the service has applied.
pub(super) fn qos_policy(
    volume: &Volume,
    modification: Option<&ModificationRecord>,
) -> Result<QosPolicy, ControlError> {
    match modification.map(|record| (record.applied, record)) {
        Some((ModificationState::Modifying, record)) => policy_of(&original_volume(volume, record)),
        Some((ModificationState::Optimizing, record)) => Ok(QosPolicy::between(
            &policy_of(&original_volume(volume, record))?,
            &policy_of(volume)?,
        )),
        _ => policy_of(volume),
    }
}

impl Service {
    fn modification_cooldown(&self) -> Duration {
        self.config
            .modification_cooldown
            .unwrap_or(DEFAULT_COOLDOWN)
    }

    pub fn modify_volume(
        &self,
        request: &ModifyVolumeRequest,
    ) -> Result<VolumeModification, ControlError> {
        // Phases that ended since the last tick end now, before the cooldown check.
        self.advance_modifications();
        let now = self.wall.now();
        let mut state = self.lock();
        let modification = state
            .table
            .modify(request, now, self.modification_cooldown())?;
        self.persist(&state)?;
        log::info!(
            "{}: modifying to {} GiB {}",
            request.volume_id,
            modification.target_size,
            modification.target_volume_type
        );
        Ok(modification)
    }

    pub fn describe_volumes_modifications(
        &self,
        request: &DescribeVolumesModificationsRequest,
    ) -> Result<Value, ControlError> {
        self.advance_modifications();
        let now = self.wall.now();
        let state = self.lock();
        let mut modifications = Vec::new();
        if request.volume_ids.is_empty() {
            for volume in state.table.all() {
                if let Some(record) = state.table.modification(&volume.volume_id)? {
                    modifications.push(record.view(now));
                }
            }
        } else {
            for volume_id in &request.volume_ids {
                // A volume never modified has no modification to report.
                if let Some(record) = state.table.modification(volume_id)? {
                    modifications.push(record.view(now));
                }
            }
        }
        let modifications = filter_resources(modifications, &request.filters, modification_values)?;
        Ok(json!({ "VolumesModifications": modifications }))
    }

    /// Applies the phases modifications reached: the storage grows at `optimizing`, the
    /// QoS policy follows each phase; a failed grow fails the modification.
    pub(super) fn advance_modifications(&self) {
        let now = self.wall.now();
        let mut state = self.lock();
        let mut changed = false;
        let volumes: Vec<Volume> = state.table.all().cloned().collect();
        for volume in volumes {
            let Ok(Some(record)) = state.table.modification(&volume.volume_id) else {
                continue;
            };
            let (phase, _) = record.phase(now);
            if phase == record.applied || record.applied.is_over() {
                continue;
            }
            let record = record.clone();
            let volume_id = volume.volume_id.clone();
            let open = state.open.get(&volume_id);
            if record.applied == ModificationState::Modifying {
                let grown = match open {
                    Some(open) if open.store.size() < volume.size_bytes() => {
                        open.store.grow(volume.size_bytes())
                    }
                    _ => Ok(()),
                };
                if let Err(error) = grown {
                    log::error!("{volume_id}: modification failed: {error}");
                    let message = format!("the volume could not be resized: {error}");
                    if state.table.fail_modification(&volume_id, &message).is_ok() {
                        changed = true;
                    }
                    continue;
                }
            }
            let mut applied = record.clone();
            applied.applied = phase;
            match (qos_policy(&volume, Some(&applied)), open) {
                (Ok(policy), Some(open)) => open.qos.set_policy(policy),
                (Err(error), _) => log::error!("{volume_id}: QoS for {phase:?}: {error}"),
                (Ok(_), None) => {}
            }
            if state
                .table
                .set_modification_applied(&volume_id, phase)
                .is_ok()
            {
                log::info!("{volume_id}: modification {}", phase.as_str());
                changed = true;
            }
        }
        if changed {
            if let Err(error) = self.persist(&state) {
                log::error!("persisting modification phases failed: {error}");
            }
        }
    }
}
