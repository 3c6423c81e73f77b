//! Snapshot records with EC2's field names and states (pending, completed, error), and
//! the request shapes of CreateSnapshot, DeleteSnapshot, DescribeSnapshots, CopySnapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{is_valid_resource_id, new_resource_id, now_rfc3339};
use super::tags::{Tag, TagSpecification};
use super::ControlError;

/// Account id shown as OwnerId (a single-tenant host).
pub const LOCAL_OWNER_ID: &str = "000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Snapshot {
    pub snapshot_id: String,
    /// The source volume ("" for snapshots made with the EBS direct APIs).
    pub volume_id: String,
    /// GiB.
    pub volume_size: u64,
    pub state: SnapshotState,
    pub start_time: String,
    pub progress: String,
    pub description: String,
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    pub owner_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_message: Option<String>,
    /// Extension: EnableFastSnapshotRestores was called (volumes from it are fully
    /// initialised before they become available).
    #[serde(default)]
    pub fast_restored: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    pub volume_id: String,
    pub description: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteSnapshotRequest {
    pub snapshot_id: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeSnapshotsRequest {
    #[serde(default)]
    pub snapshot_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<super::filters::Filter>,
    /// Accepted for `aws ec2` compatibility ("self" and the local account match all).
    #[serde(default)]
    pub owner_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CopySnapshotRequest {
    pub source_snapshot_id: String,
    pub source_region: Option<String>,
    pub description: Option<String>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct EnableFastSnapshotRestoresRequest {
    pub source_snapshot_ids: Vec<String>,
    #[serde(default)]
    pub availability_zones: Vec<String>,
}

pub fn validate_snapshot_id(snapshot_id: &str) -> Result<(), ControlError> {
    if is_valid_resource_id("snap", snapshot_id) {
        Ok(())
    } else {
        Err(ControlError::InvalidParameterValue(format!(
            "Invalid id: \"{snapshot_id}\" (expecting \"snap-...\")"
        )))
    }
}

/// All snapshot records.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotTable {
    records: BTreeMap<String, Snapshot>,
    /// StartSnapshot ClientToken -> (snapshot id, the request's other fields as JSON).
    #[serde(default)]
    client_tokens: BTreeMap<String, (String, String)>,
}

/// EBS's ClientToken: up to 64 ASCII characters.
pub fn validate_client_token(token: &str) -> Result<(), ControlError> {
    if token.is_empty() || token.len() > 64 || !token.is_ascii() {
        return Err(ControlError::Validation(
            "ClientToken must be 1 to 64 ASCII characters".into(),
        ));
    }
    Ok(())
}

impl SnapshotTable {
    /// The snapshot an earlier StartSnapshot with `token` made, if its parameters
    /// (`fingerprint`) are the same; other parameters are a ConflictException, as in
    /// the EBS direct APIs.
    pub fn find_by_client_token(
        &self,
        token: &str,
        fingerprint: &str,
    ) -> Result<Option<Snapshot>, ControlError> {
        let Some((snapshot_id, recorded)) = self.client_tokens.get(token) else {
            return Ok(None);
        };
        if recorded != fingerprint {
            return Err(ControlError::Conflict(format!(
                "ClientToken {token} was already used by a StartSnapshot request with \
                 different parameters"
            )));
        }
        Ok(self.records.get(snapshot_id).cloned())
    }

    pub fn remember_client_token(&mut self, token: &str, snapshot_id: &str, fingerprint: &str) {
        self.client_tokens.insert(
            token.to_string(),
            (snapshot_id.to_string(), fingerprint.to_string()),
        );
    }

    pub fn get(&self, snapshot_id: &str) -> Result<&Snapshot, ControlError> {
        validate_snapshot_id(snapshot_id)?;
        self.records
            .get(snapshot_id)
            .ok_or_else(|| ControlError::SnapshotNotFound(snapshot_id.to_string()))
    }

    pub fn get_mut(&mut self, snapshot_id: &str) -> Result<&mut Snapshot, ControlError> {
        validate_snapshot_id(snapshot_id)?;
        self.records
            .get_mut(snapshot_id)
            .ok_or_else(|| ControlError::SnapshotNotFound(snapshot_id.to_string()))
    }

    /// The snapshot, which must be completed to be used as a source.
    pub fn completed(&self, snapshot_id: &str) -> Result<&Snapshot, ControlError> {
        let snapshot = self.get(snapshot_id)?;
        if snapshot.state != SnapshotState::Completed {
            return Err(ControlError::IncorrectState(format!(
                "Snapshot {snapshot_id} is not completed"
            )));
        }
        Ok(snapshot)
    }

    /// Records a new pending snapshot.
    pub fn insert_pending(
        &mut self,
        volume_id: &str,
        volume_size: u64,
        description: &str,
        encrypted: bool,
        kms_key_id: Option<String>,
    ) -> Snapshot {
        let snapshot = Snapshot {
            snapshot_id: new_resource_id("snap"),
            volume_id: volume_id.to_string(),
            volume_size,
            state: SnapshotState::Pending,
            start_time: now_rfc3339(),
            progress: "0%".into(),
            description: description.to_string(),
            encrypted,
            kms_key_id,
            owner_id: LOCAL_OWNER_ID.into(),
            state_message: None,
            fast_restored: false,
            tags: Vec::new(),
        };
        self.records
            .insert(snapshot.snapshot_id.clone(), snapshot.clone());
        snapshot
    }

    pub fn remove(&mut self, snapshot_id: &str) -> Result<Snapshot, ControlError> {
        let snapshot = self.get(snapshot_id)?;
        if snapshot.state == SnapshotState::Pending {
            return Err(ControlError::IncorrectState(format!(
                "Snapshot {snapshot_id} is still pending"
            )));
        }
        let removed = self
            .records
            .remove(snapshot_id)
            .ok_or_else(|| ControlError::SnapshotNotFound(snapshot_id.to_string()))?;
        self.client_tokens
            .retain(|_, (recorded_id, _)| recorded_id != snapshot_id);
        Ok(removed)
    }

    pub fn all(&self) -> impl Iterator<Item = &Snapshot> {
        self.records.values()
    }

    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut Snapshot> {
        self.records.values_mut()
    }

    pub fn describe(
        &self,
        request: &DescribeSnapshotsRequest,
    ) -> Result<Vec<Snapshot>, ControlError> {
        let snapshots = if request.snapshot_ids.is_empty() {
            self.records.values().cloned().collect()
        } else {
            request
                .snapshot_ids
                .iter()
                .map(|id| self.get(id).cloned())
                .collect::<Result<Vec<_>, _>>()?
        };
        let owned = request.owner_ids.is_empty()
            || request
                .owner_ids
                .iter()
                .any(|owner| owner == "self" || owner == LOCAL_OWNER_ID);
        if !owned {
            return Ok(Vec::new());
        }
        super::filters::filter_snapshots(snapshots, &request.filters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_snapshots_cannot_be_deleted_or_used() {
        let mut table = SnapshotTable::default();
        let snapshot = table.insert_pending("vol-0123456789abcdef0", 8, "d", false, None);
        assert!(snapshot.snapshot_id.starts_with("snap-"));
        assert_eq!(
            table.completed(&snapshot.snapshot_id).unwrap_err().code(),
            "IncorrectState"
        );
        assert_eq!(
            table.remove(&snapshot.snapshot_id).unwrap_err().code(),
            "IncorrectState"
        );
        table.get_mut(&snapshot.snapshot_id).unwrap().state = SnapshotState::Completed;
        assert!(table.completed(&snapshot.snapshot_id).is_ok());
        table.remove(&snapshot.snapshot_id).unwrap();
        assert_eq!(
            table.get(&snapshot.snapshot_id).unwrap_err().code(),
            "InvalidSnapshot.NotFound"
        );
        assert_eq!(
            table.get("snap-x").unwrap_err().code(),
            "InvalidParameterValue"
        );
    }

    #[test]
    fn records_use_ec2_field_names() {
        let mut table = SnapshotTable::default();
        let snapshot = table.insert_pending("vol-0123456789abcdef0", 8, "nightly", false, None);
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["State"], "pending");
        assert_eq!(json["VolumeSize"], 8);
        assert_eq!(json["Progress"], "0%");
        assert_eq!(json["OwnerId"], LOCAL_OWNER_ID);
    }
}
