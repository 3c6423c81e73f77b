//! An in-memory [`SnapshotOps`] for tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ebs_blockdev::control::snapshot::{Snapshot, SnapshotState};

use super::copy::{SnapshotCopyRequest, SnapshotOps};
use crate::error::{Ec2Error, ErrorCode};
use crate::ids::{self, ResourceKind};

#[derive(Default)]
pub(crate) struct FakeSnapshots {
    pub snapshots: Mutex<BTreeMap<String, Snapshot>>,
    /// Fail the n-th copy (0-based) with InternalError.
    pub fail_copy_at: Option<usize>,
    pub copies: Mutex<Vec<SnapshotCopyRequest>>,
}

impl FakeSnapshots {
    pub fn add(&self, size_gib: u64, encrypted: bool, state: SnapshotState) -> String {
        let id = ids::new_id(ResourceKind::Snapshot);
        self.snapshots.lock().unwrap().insert(
            id.clone(),
            // From JSON, so fields ebsd adds later (with serde defaults) need no edit here.
            serde_json::from_value::<Snapshot>(serde_json::json!({
                "SnapshotId": id,
                "VolumeId": "vol-0123456789abcdef0",
                "VolumeSize": size_gib,
                "State": state,
                "StartTime": "2026-01-01T00:00:00.000Z",
                "Progress": "100%",
                "Description": "",
                "Encrypted": encrypted,
                "KmsKeyId": encrypted.then_some("mrk-source"),
                "OwnerId": ids::LOCAL_ACCOUNT_ID,
            }))
            .unwrap(),
        );
        id
    }

    pub fn set_state(&self, id: &str, state: SnapshotState) {
        self.snapshots.lock().unwrap().get_mut(id).unwrap().state = state;
    }

    pub fn count(&self) -> usize {
        self.snapshots.lock().unwrap().len()
    }
}

impl SnapshotOps for FakeSnapshots {
    fn describe_snapshot(&self, snapshot_id: &str) -> Result<Option<Snapshot>, Ec2Error> {
        Ok(self.snapshots.lock().unwrap().get(snapshot_id).cloned())
    }

    fn copy_snapshot(&self, request: &SnapshotCopyRequest) -> Result<Snapshot, Ec2Error> {
        let mut copies = self.copies.lock().unwrap();
        if self.fail_copy_at == Some(copies.len()) {
            return Err(Ec2Error::new(ErrorCode::InternalError, "copy failed"));
        }
        copies.push(request.clone());
        let mut snapshots = self.snapshots.lock().unwrap();
        let source = snapshots
            .get(&request.source_snapshot_id)
            .cloned()
            .ok_or_else(|| Ec2Error::new(ErrorCode::InvalidSnapshotNotFound, "no source"))?;
        let mut copy = source;
        copy.snapshot_id = ids::new_id(ResourceKind::Snapshot);
        copy.encrypted = request.encrypted;
        copy.kms_key_id = request.kms_key_id.clone();
        copy.description = request.description.clone();
        snapshots.insert(copy.snapshot_id.clone(), copy.clone());
        Ok(copy)
    }

    fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), Ec2Error> {
        self.snapshots.lock().unwrap().remove(snapshot_id);
        Ok(())
    }
}
