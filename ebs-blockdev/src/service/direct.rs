//! The EBS direct APIs: StartSnapshot, PutSnapshotBlock, CompleteSnapshot (with the
//! LINEAR aggregated checksum), ListSnapshotBlocks, ListChangedBlocks, GetSnapshotBlock.
//! Block tokens are the blocks' SHA-256 addresses.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::crypto::{first_sector, VolumeKey};
use super::Service;
use crate::control::ids::format_rfc3339;
use crate::control::snapshot::{validate_client_token, Snapshot, SnapshotState, LOCAL_OWNER_ID};
use crate::control::volume_type::GIB;
use crate::control::ControlError;
use crate::engine::BLOCK_SIZE;
use crate::snapshot::manifest::{
    block_checksum, block_hash, checksum_to_hex, linear_checksum, MANIFEST_FORMAT_VERSION,
};
use crate::snapshot::Manifest;

/// A snapshot being written block by block.
pub(super) struct DirectUpload {
    volume_size: u64,
    parent_snapshot_id: Option<String>,
    /// The complete block list (the parent's, overlaid with this upload's blocks).
    blocks: BTreeMap<u64, String>,
    /// Blocks put in this upload (addresses of the stored, possibly encrypted, blocks).
    written: BTreeMap<u64, String>,
    /// Hex SHA-256 of each written block as the caller sent it (the plaintext), for the
    /// LINEAR checksum at completion.
    checksums: BTreeMap<u64, String>,
    /// The snapshot's data key when it is encrypted: blocks are stored encrypted.
    key: Option<VolumeKey>,
    /// Keeps collections (of every daemon sharing the store) from deleting the blocks
    /// put so far, which no manifest references yet; released with the upload.
    _shared: crate::snapshot::locks::StoreLock,
    /// How long the upload may go without a new block before it is cancelled.
    timeout: Duration,
    /// Wall-clock time (since the Unix epoch) at which it is cancelled unless completed;
    /// each PutSnapshotBlock moves it to `timeout` from then.
    deadline: Duration,
}

/// StartSnapshot's Timeout when none is given, in minutes (as in EBS).
pub const DEFAULT_TIMEOUT_MINUTES: u32 = 60;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct StartSnapshotRequest {
    pub volume_size: u64,
    pub parent_snapshot_id: Option<String>,
    pub description: Option<String>,
    pub timeout: Option<u32>,
    pub client_token: Option<String>,
    pub encrypted: Option<bool>,
    pub kms_key_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<crate::control::tags::Tag>,
}

/// Largest MaxResults and the page size when none is given.
const MAX_RESULTS: usize = 10_000;
const MIN_RESULTS: usize = 100;

fn validation(message: impl Into<String>) -> ControlError {
    ControlError::Validation(message.into())
}

/// A page of a block list: from `starting_index`, after `next_token` (a block index),
/// at most `max_results`.
pub struct Page {
    pub starting_index: u64,
    pub max_results: Option<usize>,
    pub next_token: Option<String>,
}

impl Page {
    fn bounds(&self) -> Result<(u64, usize), ControlError> {
        let limit = self.max_results.unwrap_or(MAX_RESULTS);
        if !(MIN_RESULTS..=MAX_RESULTS).contains(&limit) {
            return Err(validation(format!(
                "MaxResults {limit} must be between {MIN_RESULTS} and {MAX_RESULTS}"
            )));
        }
        let start = match &self.next_token {
            Some(token) => token
                .parse::<u64>()
                .map_err(|_| validation(format!("NextToken {token:?} is not valid")))?,
            None => 0,
        };
        Ok((start.max(self.starting_index), limit))
    }
}

/// StartSnapshot's reply for a snapshot (also for a repeated ClientToken).
fn start_response(snapshot: &Snapshot, parent_snapshot_id: Option<&str>) -> Value {
    let status = serde_json::to_value(snapshot.state).unwrap_or(Value::Null);
    json!({
        "SnapshotId": snapshot.snapshot_id,
        "OwnerId": LOCAL_OWNER_ID,
        "Status": status,
        "StartTime": snapshot.start_time,
        "VolumeSize": snapshot.volume_size,
        "BlockSize": BLOCK_SIZE,
        "Description": snapshot.description,
        "ParentSnapshotId": parent_snapshot_id,
        "KmsKeyArn": snapshot.kms_key_id,
    })
}

fn not_being_written(snapshot_id: &str) -> ControlError {
    ControlError::ResourceNotFound(format!(
        "No snapshot {snapshot_id} is being written (unknown, completed, or cancelled)"
    ))
}

fn expiry_time() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_rfc3339(now.as_secs() + 7 * 86_400, 0)
}

impl Service {
    fn completed_manifest(&self, snapshot_id: &str) -> Result<(Snapshot, Manifest), ControlError> {
        let snapshot = {
            let state = self.lock();
            let snapshot = state
                .snapshots
                .get(snapshot_id)
                .map_err(|_| {
                    ControlError::ResourceNotFound(format!(
                        "The snapshot '{snapshot_id}' does not exist."
                    ))
                })?
                .clone();
            if snapshot.state != SnapshotState::Completed {
                return Err(validation(format!(
                    "Snapshot {snapshot_id} is not completed"
                )));
            }
            snapshot
        };
        let manifest = self.storage.get_manifest(snapshot_id)?.ok_or_else(|| {
            ControlError::Internal(format!("manifest of {snapshot_id} is missing"))
        })?;
        Ok((snapshot, manifest))
    }

    pub fn start_snapshot(&self, request: &StartSnapshotRequest) -> Result<Value, ControlError> {
        if !(1..=65_536).contains(&request.volume_size) {
            return Err(validation(format!(
                "VolumeSize {} must be between 1 and 65536 GiB",
                request.volume_size
            )));
        }
        let timeout_minutes = request.timeout.unwrap_or(DEFAULT_TIMEOUT_MINUTES);
        if !(10..=4_320).contains(&timeout_minutes) {
            return Err(validation(format!(
                "Timeout {timeout_minutes} must be between 10 and 4320 minutes"
            )));
        }
        let tags = crate::control::tags::with_tags(&[], &request.tags, "the new snapshot")?;
        let fingerprint = match &request.client_token {
            Some(token) => {
                validate_client_token(token)?;
                let mut without_token = request.clone();
                without_token.client_token = None;
                let fingerprint = serde_json::to_string(&without_token)
                    .map_err(|error| ControlError::Internal(error.to_string()))?;
                let state = self.lock();
                if let Some(earlier) = state.snapshots.find_by_client_token(token, &fingerprint)? {
                    return Ok(start_response(
                        &earlier,
                        request.parent_snapshot_id.as_deref(),
                    ));
                }
                Some(fingerprint)
            }
            None => None,
        };
        let shared = self.storage.lock_shared(&self.lock_owner())?;
        let parent = match &request.parent_snapshot_id {
            Some(parent_id) => {
                let (parent, manifest) = self.completed_manifest(parent_id)?;
                if parent.volume_size > request.volume_size {
                    return Err(validation(format!(
                        "VolumeSize {} is smaller than the parent's {}",
                        request.volume_size, parent.volume_size
                    )));
                }
                Some(manifest)
            }
            None => None,
        };
        let key = self.direct_snapshot_key(
            request.encrypted,
            request.kms_key_arn.as_deref(),
            parent.as_ref(),
        )?;
        let blocks = parent.map(|manifest| manifest.blocks).unwrap_or_default();
        let mut state = self.lock();
        // Checked again under the lock: a retry may have raced this request.
        if let (Some(token), Some(fingerprint)) = (&request.client_token, &fingerprint) {
            if let Some(earlier) = state.snapshots.find_by_client_token(token, fingerprint)? {
                return Ok(start_response(
                    &earlier,
                    request.parent_snapshot_id.as_deref(),
                ));
            }
        }
        let snapshot = state.snapshots.insert_pending(
            "",
            request.volume_size,
            request.description.as_deref().unwrap_or(""),
            key.is_some(),
            key.as_ref().map(|key| key.key_id.clone()),
        );
        state.snapshots.get_mut(&snapshot.snapshot_id)?.tags = tags;
        if let (Some(token), Some(fingerprint)) = (&request.client_token, &fingerprint) {
            state
                .snapshots
                .remember_client_token(token, &snapshot.snapshot_id, fingerprint);
        }
        let timeout = Duration::from_secs(u64::from(timeout_minutes) * 60);
        state.direct_uploads.insert(
            snapshot.snapshot_id.clone(),
            DirectUpload {
                volume_size: request.volume_size,
                parent_snapshot_id: request.parent_snapshot_id.clone(),
                blocks,
                written: BTreeMap::new(),
                checksums: BTreeMap::new(),
                key,
                _shared: shared,
                timeout,
                deadline: self.wall.now() + timeout,
            },
        );
        self.persist(&state)?;
        Ok(start_response(
            &snapshot,
            request.parent_snapshot_id.as_deref(),
        ))
    }

    /// Cancels direct uploads whose Timeout passed without a new block or completion:
    /// the snapshot goes to `error` and the blocks it stored are released (collected
    /// unless something else references them).
    pub(super) fn expire_direct_uploads(&self) {
        let now = self.wall.now();
        let mut state = self.lock();
        let expired: Vec<String> = state
            .direct_uploads
            .iter()
            .filter(|(_, upload)| upload.deadline <= now)
            .map(|(snapshot_id, _)| snapshot_id.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        for snapshot_id in &expired {
            let Some(upload) = state.direct_uploads.remove(snapshot_id) else {
                continue;
            };
            log::warn!(
                "{snapshot_id}: cancelled, not completed within its Timeout of {} minutes",
                upload.timeout.as_secs() / 60
            );
            if let Ok(snapshot) = state.snapshots.get_mut(snapshot_id) {
                snapshot.state = SnapshotState::Error;
                snapshot.state_message = Some(format!(
                    "cancelled: no block written and not completed within the Timeout of {} minutes",
                    upload.timeout.as_secs() / 60
                ));
            }
        }
        if let Err(error) = self.persist(&state) {
            log::error!("persisting cancelled snapshots failed: {error}");
        }
        match self.collect_garbage_if_idle(&state) {
            Ok(Some(deleted)) => log::info!("cancelled uploads: {deleted} blocks released"),
            Ok(None) => log::info!("cancelled uploads: blocks released by a later collection"),
            Err(error) => log::error!("releasing cancelled uploads' blocks failed: {error}"),
        }
    }

    /// Stores one block after checking its length and Base64 SHA-256 checksum.
    pub fn put_snapshot_block(
        &self,
        snapshot_id: &str,
        block_index: u64,
        data: &[u8],
        data_length: Option<u64>,
        checksum: &str,
        algorithm: &str,
    ) -> Result<Value, ControlError> {
        if algorithm != "SHA256" {
            return Err(validation(format!(
                "ChecksumAlgorithm {algorithm:?} is not supported (SHA256)"
            )));
        }
        if data.len() as u64 != BLOCK_SIZE || data_length.is_some_and(|length| length != BLOCK_SIZE)
        {
            return Err(validation(format!(
                "block data must be exactly {BLOCK_SIZE} bytes (got {})",
                data.len()
            )));
        }
        let hash = block_hash(data);
        if checksum_to_hex(checksum).as_deref() != Some(hash.as_str()) {
            return Err(validation(
                "Checksum does not match the block data".to_string(),
            ));
        }
        self.expire_direct_uploads();
        let cipher = {
            let state = self.lock();
            let upload = state
                .direct_uploads
                .get(snapshot_id)
                .ok_or_else(|| not_being_written(snapshot_id))?;
            let blocks = upload.volume_size * GIB / BLOCK_SIZE;
            if block_index >= blocks {
                return Err(validation(format!(
                    "BlockIndex {block_index} is beyond the volume's {blocks} blocks"
                )));
            }
            upload
                .key
                .as_ref()
                .map(|key| std::sync::Arc::clone(&key.cipher))
        };
        // Encrypted snapshots store the block as an encrypted volume would hold it at
        // this index (XTS, tweak = sector number), so volumes made from it read it back.
        let stored = match &cipher {
            Some(cipher) => {
                let mut encrypted = data.to_vec();
                cipher.encrypt(&mut encrypted, first_sector(block_index));
                self.storage.put_block(&encrypted)?
            }
            None => self.storage.put_block(data)?,
        };
        let now = self.wall.now();
        let mut state = self.lock();
        let upload = state
            .direct_uploads
            .get_mut(snapshot_id)
            .ok_or_else(|| not_being_written(snapshot_id))?;
        upload.deadline = now + upload.timeout;
        upload.blocks.insert(block_index, stored.clone());
        upload.written.insert(block_index, stored);
        upload.checksums.insert(block_index, hash);
        Ok(json!({"Checksum": checksum, "ChecksumAlgorithm": "SHA256"}))
    }

    /// Seals a direct upload; the count and (optional) LINEAR checksum must match.
    pub fn complete_snapshot(
        &self,
        snapshot_id: &str,
        changed_blocks_count: u64,
        checksum: Option<&str>,
        algorithm: Option<&str>,
        aggregation: Option<&str>,
    ) -> Result<Value, ControlError> {
        self.expire_direct_uploads();
        let mut state = self.lock();
        let upload = state
            .direct_uploads
            .get(snapshot_id)
            .ok_or_else(|| not_being_written(snapshot_id))?;
        if upload.written.len() as u64 != changed_blocks_count {
            return Err(validation(format!(
                "ChangedBlocksCount {changed_blocks_count} does not match the {} blocks written",
                upload.written.len()
            )));
        }
        if let Some(expected) = checksum {
            if algorithm.unwrap_or("SHA256") != "SHA256"
                || aggregation.unwrap_or("LINEAR") != "LINEAR"
            {
                return Err(validation(
                    "only SHA256 checksums with LINEAR aggregation are supported".to_string(),
                ));
            }
            let actual =
                linear_checksum(upload.checksums.values().map(String::as_str)).unwrap_or_default();
            if actual != expected {
                return Err(validation(format!(
                    "aggregated checksum mismatch: expected {expected}, blocks give {actual}"
                )));
            }
        }
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            snapshot_id: snapshot_id.to_string(),
            volume_size: upload.volume_size,
            block_size: BLOCK_SIZE,
            parent_snapshot_id: upload.parent_snapshot_id.clone(),
            encrypted: upload.key.is_some(),
            wrapped_data_key: upload.key.as_ref().map(|key| key.wrapped.clone()),
            kms_key_id: upload.key.as_ref().map(|key| key.key_id.clone()),
            blocks: upload.blocks.clone(),
        };
        self.storage.put_manifest(&manifest)?;
        state.direct_uploads.remove(snapshot_id);
        let snapshot = state.snapshots.get_mut(snapshot_id)?;
        snapshot.state = SnapshotState::Completed;
        snapshot.progress = "100%".into();
        self.persist(&state)?;
        Ok(json!({"Status": "completed"}))
    }

    pub fn list_snapshot_blocks(
        &self,
        snapshot_id: &str,
        page: &Page,
    ) -> Result<Value, ControlError> {
        let (start, limit) = page.bounds()?;
        let (snapshot, manifest) = self.completed_manifest(snapshot_id)?;
        let mut entries = manifest.blocks.range(start..);
        let blocks: Vec<Value> = entries
            .by_ref()
            .take(limit)
            .map(|(index, hash)| json!({"BlockIndex": index, "BlockToken": hash}))
            .collect();
        let next_token = entries.next().map(|(index, _)| index.to_string());
        Ok(json!({
            "Blocks": blocks,
            "ExpiryTime": expiry_time(),
            "VolumeSize": snapshot.volume_size,
            "BlockSize": BLOCK_SIZE,
            "NextToken": next_token,
        }))
    }

    /// Blocks that differ between two snapshots (or all blocks of the second).
    pub fn list_changed_blocks(
        &self,
        first_snapshot_id: Option<&str>,
        second_snapshot_id: &str,
        page: &Page,
    ) -> Result<Value, ControlError> {
        let (start, limit) = page.bounds()?;
        let (second, second_manifest) = self.completed_manifest(second_snapshot_id)?;
        let first_blocks = match first_snapshot_id {
            Some(first_id) => self.completed_manifest(first_id)?.1.blocks,
            None => BTreeMap::new(),
        };
        let indexes: std::collections::BTreeSet<u64> = first_blocks
            .keys()
            .chain(second_manifest.blocks.keys())
            .copied()
            .filter(|&index| index >= start)
            .collect();
        let mut changed = indexes
            .into_iter()
            .filter(|index| first_blocks.get(index) != second_manifest.blocks.get(index))
            .map(|index| {
                json!({
                    "BlockIndex": index,
                    "FirstBlockToken": first_blocks.get(&index),
                    "SecondBlockToken": second_manifest.blocks.get(&index),
                })
            });
        let page: Vec<Value> = changed.by_ref().take(limit).collect();
        let next_token = changed
            .next()
            .and_then(|entry| entry["BlockIndex"].as_u64())
            .map(|index| index.to_string());
        Ok(json!({
            "ChangedBlocks": page,
            "ExpiryTime": expiry_time(),
            "VolumeSize": second.volume_size,
            "BlockSize": BLOCK_SIZE,
            "NextToken": next_token,
        }))
    }

    /// One block's data and its Base64 SHA-256 checksum.
    pub fn get_snapshot_block(
        &self,
        snapshot_id: &str,
        block_index: u64,
        block_token: &str,
    ) -> Result<(Vec<u8>, String), ControlError> {
        let (_, manifest) = self.completed_manifest(snapshot_id)?;
        match manifest.blocks.get(&block_index) {
            Some(hash) if hash == block_token => {}
            _ => {
                return Err(ControlError::ResourceNotFound(format!(
                    "Block {block_index} with that token is not in {snapshot_id}"
                )))
            }
        }
        let mut data = self.storage.get_block(block_token)?;
        // The direct APIs hand out plaintext: encrypted snapshots are decrypted here.
        if let Some(cipher) = self.manifest_cipher(&manifest)? {
            cipher.decrypt(&mut data, first_sector(block_index));
        }
        let checksum = block_checksum(&data);
        Ok((data, checksum))
    }
}
