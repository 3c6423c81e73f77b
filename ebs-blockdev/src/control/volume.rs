//! Volume records and their state machine: CreateVolume, DeleteVolume, DescribeVolumes,
//! ModifyVolume, AttachVolume, DetachVolume with EC2's field names and rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{
    is_valid_resource_id, new_resource_id, new_secret_token, now_rfc3339, secrets_equal,
};
use super::modification::{ModificationRecord, ModificationState, VolumeModification};
use super::tags::{tags_from_specifications, Tag, TagSpecification};
use super::volume_type::{resolve_performance, RequestedPerformance, VolumeType, GIB};
use super::ControlError;
use std::time::Duration;

/// Multi-Attach allows up to 16 instances on one io1/io2 volume.
pub const MAX_MULTI_ATTACHMENTS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    Creating,
    Available,
    InUse,
    Deleting,
    Deleted,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeAttachment {
    pub volume_id: String,
    pub instance_id: String,
    pub device: String,
    /// attaching, attached, detaching, detached (EC2's attachment states).
    pub state: String,
    pub attach_time: String,
    pub delete_on_termination: bool,
    /// Extension: the attachment was granted read-only access.
    #[serde(default)]
    pub read_only: bool,
}

/// A volume as DescribeVolumes shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    pub volume_id: String,
    /// GiB.
    pub size: u64,
    pub volume_type: VolumeType,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iops: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub throughput: Option<u32>,
    pub availability_zone: String,
    pub state: VolumeState,
    pub create_time: String,
    pub encrypted: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kms_key_id: Option<String>,
    /// Empty when the volume was not created from a snapshot (as EC2 prints it).
    pub snapshot_id: String,
    pub multi_attach_enabled: bool,
    pub attachments: Vec<VolumeAttachment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

impl Volume {
    pub fn size_bytes(&self) -> u64 {
        self.size * GIB
    }

    /// The IOPS/throughput this volume's type, size and provisioning give it.
    pub fn performance(&self) -> Result<super::VolumePerformance, ControlError> {
        resolve_performance(
            self.volume_type,
            self.size,
            RequestedPerformance {
                iops: self.iops.filter(|_| self.volume_type != VolumeType::Gp2),
                throughput_mibps: self.throughput,
            },
        )
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateVolumeRequest {
    pub availability_zone: Option<String>,
    pub size: Option<u64>,
    pub volume_type: Option<String>,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub multi_attach_enabled: Option<bool>,
    pub client_token: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_specifications: Vec<TagSpecification>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ModifyVolumeRequest {
    pub volume_id: String,
    pub size: Option<u64>,
    pub volume_type: Option<String>,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AttachVolumeRequest {
    pub volume_id: String,
    pub instance_id: String,
    pub device: Option<String>,
    /// Extension: the zone the instance runs in (EC2 knows it from the instance record).
    pub instance_availability_zone: String,
    /// Extension: grant read-only access through the NBD export.
    pub read_only: Option<bool>,
    pub delete_on_termination: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DetachVolumeRequest {
    pub volume_id: String,
    pub instance_id: Option<String>,
    pub device: Option<String>,
    pub force: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeVolumesRequest {
    #[serde(default)]
    pub volume_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<super::filters::Filter>,
}

/// What an attachment may do through the NBD export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentGrant {
    pub volume_id: String,
    pub instance_id: String,
    pub read_only: bool,
    pub size_bytes: u64,
}

/// The per-attachment secret a consumer presents as the NBD export name
/// `<volume-id>/<token>`; kept out of DescribeVolumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AttachmentSecret {
    instance_id: String,
    token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VolumeRecord {
    volume: Volume,
    secrets: Vec<AttachmentSecret>,
    /// The volume's data key wrapped under its KMS master key (encrypted volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrapped_data_key: Option<String>,
    /// The latest ModifyVolume and its phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modification: Option<ModificationRecord>,
}

/// All volumes, keyed by id. Serializable so the service can persist it atomically.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VolumeTable {
    records: BTreeMap<String, VolumeRecord>,
    /// CreateVolume ClientToken -> (volume id, the request's other fields as JSON).
    #[serde(default)]
    client_tokens: BTreeMap<String, (String, String)>,
}

/// Separator between the volume id and the attachment token in NBD export names.
pub const EXPORT_TOKEN_SEPARATOR: char = '/';

fn validate_volume_id(volume_id: &str) -> Result<(), ControlError> {
    if is_valid_resource_id("vol", volume_id) {
        Ok(())
    } else {
        Err(ControlError::MalformedVolumeId(volume_id.to_string()))
    }
}

fn validate_zone(zone: &str, field: &str) -> Result<(), ControlError> {
    let well_formed = !zone.is_empty()
        && zone.len() <= 64
        && zone
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if well_formed {
        Ok(())
    } else {
        Err(ControlError::InvalidParameterValue(format!(
            "{field} '{zone}' is not a valid availability zone name (lowercase letters, digits, '-')"
        )))
    }
}

fn validate_device(device: &str) -> Result<(), ControlError> {
    let name = device.strip_prefix("/dev/").unwrap_or("");
    let well_formed = (2..=16).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if well_formed {
        Ok(())
    } else {
        Err(ControlError::InvalidParameterValue(format!(
            "Value ({device}) for parameter device is invalid. It must look like /dev/sdf or /dev/xvdf"
        )))
    }
}

impl VolumeTable {
    fn record(&self, volume_id: &str) -> Result<&VolumeRecord, ControlError> {
        validate_volume_id(volume_id)?;
        self.records
            .get(volume_id)
            .ok_or_else(|| ControlError::VolumeNotFound(volume_id.to_string()))
    }

    fn record_mut(&mut self, volume_id: &str) -> Result<&mut VolumeRecord, ControlError> {
        validate_volume_id(volume_id)?;
        self.records
            .get_mut(volume_id)
            .ok_or_else(|| ControlError::VolumeNotFound(volume_id.to_string()))
    }

    pub fn get(&self, volume_id: &str) -> Result<&Volume, ControlError> {
        Ok(&self.record(volume_id)?.volume)
    }

    /// Volumes whose state should be served, e.g. to reopen their storage at start-up.
    pub fn all(&self) -> impl Iterator<Item = &Volume> {
        self.records.values().map(|record| &record.volume)
    }

    /// The volume an earlier CreateVolume with this request's ClientToken made (EC2's
    /// idempotency); the same token with other parameters is an error.
    pub fn find_by_client_token(
        &self,
        request: &CreateVolumeRequest,
    ) -> Result<Option<Volume>, ControlError> {
        let Some(token) = &request.client_token else {
            return Ok(None);
        };
        let Some((volume_id, fingerprint)) = self.client_tokens.get(token) else {
            return Ok(None);
        };
        if *fingerprint != Self::fingerprint(request) {
            return Err(ControlError::IdempotentParameterMismatch(format!(
                "ClientToken {token} was already used with different parameters"
            )));
        }
        Ok(self
            .records
            .get(volume_id)
            .map(|record| record.volume.clone()))
    }

    fn fingerprint(request: &CreateVolumeRequest) -> String {
        let mut without_token = request.clone();
        without_token.client_token = None;
        serde_json::to_string(&without_token).unwrap_or_default()
    }

    /// Validates a CreateVolume request and records the volume in state `creating`.
    /// `snapshot_size_gib` is the source snapshot's size when `SnapshotId` is given.
    pub fn create(
        &mut self,
        request: &CreateVolumeRequest,
        snapshot_size_gib: Option<u64>,
    ) -> Result<Volume, ControlError> {
        let zone = request.availability_zone.as_deref().ok_or_else(|| {
            ControlError::MissingParameter(
                "The request must contain the parameter AvailabilityZone".into(),
            )
        })?;
        validate_zone(zone, "AvailabilityZone")?;
        let volume_type = match request.volume_type.as_deref() {
            Some(name) => name.parse()?,
            None => VolumeType::Gp2,
        };
        let size = match (request.size, snapshot_size_gib) {
            (Some(size), Some(snapshot_size)) if size < snapshot_size => {
                return Err(ControlError::InvalidParameterValue(format!(
                    "Size {size} GiB is smaller than the snapshot's size of {snapshot_size} GiB"
                )))
            }
            (Some(size), _) => size,
            (None, Some(snapshot_size)) => snapshot_size,
            (None, None) => {
                return Err(ControlError::MissingParameter(
                    "The request must contain the parameter Size or SnapshotId".into(),
                ))
            }
        };
        let performance = resolve_performance(
            volume_type,
            size,
            RequestedPerformance {
                iops: request.iops,
                throughput_mibps: request.throughput,
            },
        )?;
        let tags = tags_from_specifications(&request.tag_specifications, "volume")?;
        let multi_attach = request.multi_attach_enabled.unwrap_or(false);
        if multi_attach && !volume_type.supports_multi_attach() {
            return Err(ControlError::InvalidParameterCombination(format!(
                "Multi-Attach is supported only on io1 and io2 volumes, not {volume_type}"
            )));
        }
        let volume = Volume {
            volume_id: new_resource_id("vol"),
            size,
            volume_type,
            iops: performance.reported_iops,
            throughput: performance.reported_throughput_mibps,
            availability_zone: zone.to_string(),
            state: VolumeState::Creating,
            create_time: now_rfc3339(),
            encrypted: request.encrypted.unwrap_or(false) || request.kms_key_id.is_some(),
            kms_key_id: request.kms_key_id.clone(),
            snapshot_id: request.snapshot_id.clone().unwrap_or_default(),
            multi_attach_enabled: multi_attach,
            attachments: Vec::new(),
            tags,
        };
        if let Some(token) = &request.client_token {
            if token.is_empty() || token.len() > 64 {
                return Err(ControlError::InvalidParameterValue(
                    "ClientToken must be 1 to 64 characters".into(),
                ));
            }
            self.client_tokens.insert(
                token.clone(),
                (volume.volume_id.clone(), Self::fingerprint(request)),
            );
        }
        self.records.insert(
            volume.volume_id.clone(),
            VolumeRecord {
                volume: volume.clone(),
                secrets: Vec::new(),
                wrapped_data_key: None,
                modification: None,
            },
        );
        Ok(volume)
    }

    /// Moves a volume to `state` (used for creating -> available / error).
    pub fn set_state(
        &mut self,
        volume_id: &str,
        state: VolumeState,
    ) -> Result<Volume, ControlError> {
        let record = self.record_mut(volume_id)?;
        record.volume.state = state;
        Ok(record.volume.clone())
    }

    /// Records that a volume is encrypted under `kms_key_id` with this wrapped data key.
    pub fn set_encryption(
        &mut self,
        volume_id: &str,
        kms_key_id: &str,
        wrapped_data_key: &str,
    ) -> Result<Volume, ControlError> {
        let record = self.record_mut(volume_id)?;
        record.volume.encrypted = true;
        record.volume.kms_key_id = Some(kms_key_id.to_string());
        record.wrapped_data_key = Some(wrapped_data_key.to_string());
        Ok(record.volume.clone())
    }

    pub fn wrapped_data_key(&self, volume_id: &str) -> Result<Option<String>, ControlError> {
        Ok(self.record(volume_id)?.wrapped_data_key.clone())
    }

    /// Marks a volume `deleting`; refused while it is attached.
    pub fn begin_delete(&mut self, volume_id: &str) -> Result<Volume, ControlError> {
        let record = self.record_mut(volume_id)?;
        match record.volume.state {
            VolumeState::Available | VolumeState::Error => {
                record.volume.state = VolumeState::Deleting;
                Ok(record.volume.clone())
            }
            VolumeState::InUse => Err(ControlError::VolumeInUse(volume_id.to_string())),
            other => Err(ControlError::IncorrectState(format!(
                "Volume {volume_id} is in state {} and cannot be deleted",
                serde_json::to_string(&other).unwrap_or_default()
            ))),
        }
    }

    /// Forgets a volume whose storage has been removed.
    pub fn finish_delete(&mut self, volume_id: &str) -> Result<(), ControlError> {
        self.record(volume_id)?;
        self.records.remove(volume_id);
        Ok(())
    }

    pub fn describe(&self, request: &DescribeVolumesRequest) -> Result<Vec<Volume>, ControlError> {
        let volumes = if request.volume_ids.is_empty() {
            self.all().cloned().collect()
        } else {
            request
                .volume_ids
                .iter()
                .map(|volume_id| self.get(volume_id).cloned())
                .collect::<Result<Vec<_>, _>>()?
        };
        super::filters::filter_volumes(volumes, &request.filters)
    }

    /// Applies a ModifyVolume request: the record takes the target values at once (as
    /// DescribeVolumes shows them) and a modification starts in `modifying`; size only
    /// grows, the new combination is validated against the (possibly new) type's limits,
    /// and a volume whose last modification runs or started within `cooldown` is refused.
    pub fn modify(
        &mut self,
        request: &ModifyVolumeRequest,
        now: Duration,
        cooldown: Duration,
    ) -> Result<VolumeModification, ControlError> {
        let record = self.record_mut(&request.volume_id)?;
        let original = record.volume.clone();
        if let Some(previous) = &record.modification {
            previous.check_new_modification(now, cooldown)?;
        }
        if !matches!(original.state, VolumeState::Available | VolumeState::InUse) {
            return Err(ControlError::IncorrectState(format!(
                "Volume {} cannot be modified in its current state",
                original.volume_id
            )));
        }
        let target_type = match request.volume_type.as_deref() {
            Some(name) => name.parse()?,
            None => original.volume_type,
        };
        let target_size = request.size.unwrap_or(original.size);
        if target_size < original.size {
            return Err(ControlError::InvalidParameterValue(format!(
                "New size {target_size} GiB cannot be smaller than the existing size of {} GiB",
                original.size
            )));
        }
        if original.multi_attach_enabled && !target_type.supports_multi_attach() {
            return Err(ControlError::InvalidParameterCombination(format!(
                "Volume {} has Multi-Attach enabled and cannot become {target_type}",
                original.volume_id
            )));
        }
        // Keep provisioned values that still apply to the target type unless overridden.
        let carries_iops = matches!(
            target_type,
            VolumeType::Gp3 | VolumeType::Io1 | VolumeType::Io2
        ) && original.volume_type != VolumeType::Gp2;
        let iops = request.iops.or(original.iops.filter(|_| carries_iops));
        let throughput = request.throughput.or(original
            .throughput
            .filter(|_| target_type == VolumeType::Gp3));
        let performance = resolve_performance(
            target_type,
            target_size,
            RequestedPerformance {
                iops,
                throughput_mibps: throughput,
            },
        )?;
        let volume = &mut record.volume;
        volume.size = target_size;
        volume.volume_type = target_type;
        volume.iops = performance.reported_iops;
        volume.throughput = performance.reported_throughput_mibps;
        let started = ModificationRecord::new(
            VolumeModification {
                volume_id: volume.volume_id.clone(),
                modification_state: ModificationState::Modifying,
                status_message: None,
                target_size,
                target_iops: volume.iops,
                target_volume_type: target_type,
                target_throughput: volume.throughput,
                target_multi_attach_enabled: volume.multi_attach_enabled,
                original_size: original.size,
                original_iops: original.iops,
                original_volume_type: original.volume_type,
                original_throughput: original.throughput,
                original_multi_attach_enabled: original.multi_attach_enabled,
                progress: 0,
                start_time: String::new(),
                end_time: None,
            },
            now,
        );
        let view = started.view(now);
        record.modification = Some(started);
        Ok(view)
    }

    pub fn tags_mut(&mut self, volume_id: &str) -> Result<&mut Vec<Tag>, ControlError> {
        Ok(&mut self.record_mut(volume_id)?.volume.tags)
    }

    pub fn modification(
        &self,
        volume_id: &str,
    ) -> Result<Option<&ModificationRecord>, ControlError> {
        Ok(self.record(volume_id)?.modification.as_ref())
    }

    /// Records that the service applied `phase` of a volume's modification.
    pub fn set_modification_applied(
        &mut self,
        volume_id: &str,
        phase: ModificationState,
    ) -> Result<(), ControlError> {
        if let Some(modification) = &mut self.record_mut(volume_id)?.modification {
            modification.applied = phase;
        }
        Ok(())
    }

    /// Ends a modification whose storage change failed: the volume keeps its original
    /// size, type and performance, and the modification shows `failed`.
    pub fn fail_modification(
        &mut self,
        volume_id: &str,
        message: &str,
    ) -> Result<(), ControlError> {
        let record = self.record_mut(volume_id)?;
        let Some(modification) = &mut record.modification else {
            return Ok(());
        };
        let original = &mut modification.modification;
        record.volume.size = original.original_size;
        record.volume.volume_type = original.original_volume_type;
        record.volume.iops = original.original_iops;
        record.volume.throughput = original.original_throughput;
        original.status_message = Some(message.to_string());
        modification.applied = ModificationState::Failed;
        Ok(())
    }

    /// Attaches a volume to an instance in the same zone and issues the attachment's
    /// secret token. Returns the attachment and the NBD export name to connect with.
    pub fn attach(
        &mut self,
        request: &AttachVolumeRequest,
    ) -> Result<(VolumeAttachment, String), ControlError> {
        if !is_valid_resource_id("i", &request.instance_id) {
            return Err(ControlError::InvalidParameterValue(format!(
                "Invalid id: \"{}\" (expecting \"i-...\")",
                request.instance_id
            )));
        }
        validate_zone(
            &request.instance_availability_zone,
            "InstanceAvailabilityZone",
        )?;
        let device = request.device.clone().unwrap_or_else(|| "/dev/sdf".into());
        validate_device(&device)?;
        let record = self.record_mut(&request.volume_id)?;
        let volume = &mut record.volume;
        if volume.availability_zone != request.instance_availability_zone {
            return Err(ControlError::ZoneMismatch(format!(
                "The volume '{}' is not in the same availability zone as instance '{}' \
                 ({} vs {})",
                volume.volume_id,
                request.instance_id,
                volume.availability_zone,
                request.instance_availability_zone
            )));
        }
        match volume.state {
            VolumeState::Available => {}
            VolumeState::InUse if volume.multi_attach_enabled => {
                if volume
                    .attachments
                    .iter()
                    .any(|a| a.instance_id == request.instance_id)
                {
                    return Err(ControlError::IncorrectState(format!(
                        "Volume {} is already attached to {}",
                        volume.volume_id, request.instance_id
                    )));
                }
                if volume.attachments.len() >= MAX_MULTI_ATTACHMENTS {
                    return Err(ControlError::AttachmentLimitExceeded(format!(
                        "Volume {} already has the maximum of {MAX_MULTI_ATTACHMENTS} attachments",
                        volume.volume_id
                    )));
                }
            }
            VolumeState::InUse => {
                return Err(ControlError::VolumeInUse(format!(
                    "{} (it is attached and Multi-Attach is not enabled)",
                    volume.volume_id
                )))
            }
            _ => {
                return Err(ControlError::IncorrectState(format!(
                    "Volume {} is not available for attachment",
                    volume.volume_id
                )))
            }
        }
        let attachment = VolumeAttachment {
            volume_id: volume.volume_id.clone(),
            instance_id: request.instance_id.clone(),
            device,
            state: "attached".into(),
            attach_time: now_rfc3339(),
            delete_on_termination: request.delete_on_termination.unwrap_or(false),
            read_only: request.read_only.unwrap_or(false),
        };
        volume.attachments.push(attachment.clone());
        volume.state = VolumeState::InUse;
        let token = new_secret_token();
        let export_name = format!("{}{EXPORT_TOKEN_SEPARATOR}{token}", volume.volume_id);
        record.secrets.push(AttachmentSecret {
            instance_id: request.instance_id.clone(),
            token,
        });
        Ok((attachment, export_name))
    }

    /// Detaches a volume from one instance (the only one unless Multi-Attach).
    pub fn detach(
        &mut self,
        request: &DetachVolumeRequest,
    ) -> Result<VolumeAttachment, ControlError> {
        let record = self.record_mut(&request.volume_id)?;
        let volume = &mut record.volume;
        let position = volume
            .attachments
            .iter()
            .position(|attachment| {
                request
                    .instance_id
                    .as_deref()
                    .is_none_or(|id| id == attachment.instance_id)
                    && request
                        .device
                        .as_deref()
                        .is_none_or(|d| d == attachment.device)
            })
            .ok_or_else(|| {
                ControlError::AttachmentNotFound(format!(
                    "Volume {} is not attached{}",
                    request.volume_id,
                    request
                        .instance_id
                        .as_deref()
                        .map(|id| format!(" to instance {id}"))
                        .unwrap_or_default()
                ))
            })?;
        if request.instance_id.is_none() && volume.attachments.len() > 1 {
            return Err(ControlError::MissingParameter(format!(
                "Volume {} has several attachments: the request must name InstanceId",
                volume.volume_id
            )));
        }
        let mut attachment = volume.attachments.remove(position);
        record
            .secrets
            .retain(|secret| secret.instance_id != attachment.instance_id);
        if volume.attachments.is_empty() {
            volume.state = VolumeState::Available;
        }
        attachment.state = "detached".into();
        Ok(attachment)
    }

    /// Checks an NBD export name `<volume-id>/<token>` against the current attachments.
    pub fn authorize_export(&self, export_name: &str) -> Result<AttachmentGrant, ControlError> {
        let (volume_id, token) = export_name
            .split_once(EXPORT_TOKEN_SEPARATOR)
            .unwrap_or((export_name, ""));
        let record = self.record(volume_id)?;
        let secret = record
            .secrets
            .iter()
            .find(|secret| !token.is_empty() && secrets_equal(&secret.token, token))
            .ok_or_else(|| {
                ControlError::AttachmentNotFound(format!(
                    "Volume {volume_id} has no attachment with that token: attach it first \
                     and use the export name AttachVolume returned"
                ))
            })?;
        let attachment = record
            .volume
            .attachments
            .iter()
            .find(|attachment| attachment.instance_id == secret.instance_id)
            .ok_or_else(|| ControlError::Internal(format!("attachment of {volume_id} lost")))?;
        Ok(AttachmentGrant {
            volume_id: volume_id.to_string(),
            instance_id: attachment.instance_id.clone(),
            read_only: attachment.read_only,
            size_bytes: record.volume.size_bytes(),
        })
    }
}

#[cfg(test)]
#[path = "volume_tests.rs"]
mod tests;
