//! Snapshot operations of the service: CreateSnapshot (incremental, in the background),
//! DeleteSnapshot (with garbage collection of unshared blocks), DescribeSnapshots,
//! CopySnapshot, EnableFastSnapshotRestores, and volumes created from snapshots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use serde_json::{json, Value};

use super::crypto::EncryptingSource;
use super::{Service, ServiceState, VOLUMES_DIR};
use crate::control::snapshot::{
    CopySnapshotRequest, CreateSnapshotRequest, DescribeSnapshotsRequest,
    EnableFastSnapshotRestoresRequest, Snapshot, SnapshotState, SnapshotTable,
};
use crate::control::tags::tags_from_specifications;
use crate::control::volume_type::GIB;
use crate::control::{ControlError, CreateVolumeRequest, Volume, VolumeState};
use crate::engine::durable::replace_file_atomically;
use crate::engine::{BlockSource, BlockStore, BLOCK_SIZE};
use crate::snapshot::locks::LockKind;
use crate::snapshot::manifest::{manifest_key, MANIFEST_FORMAT_VERSION};
use crate::snapshot::{upload_capture, Manifest, ManifestSource, SnapshotError, SnapshotStorage};

/// How a new volume gets its snapshot's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fill {
    /// Not made from a snapshot.
    Nothing,
    /// Usable at once; blocks come on first access and from a background fill.
    InBackground,
    /// Fast snapshot restore: every block is fetched while the volume is `creating`.
    BeforeAvailable,
}

/// The block list of the volume's latest snapshot (or its source snapshot): the base
/// that the next incremental snapshot overlays its changed blocks on.
pub(super) const BASE_BLOCKS: &str = "base-blocks.json";
/// The block list still being hydrated from; removed once every block is local.
pub(super) const SOURCE_BLOCKS: &str = "source-blocks.json";

impl From<SnapshotError> for ControlError {
    fn from(error: SnapshotError) -> Self {
        ControlError::Internal(error.to_string())
    }
}

pub(super) fn read_block_list(
    directory: &Path,
    name: &str,
) -> Result<Option<BTreeMap<u64, String>>, ControlError> {
    match std::fs::read(directory.join(name)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|error| {
            ControlError::Internal(format!(
                "{}/{name} is corrupt: {error}",
                directory.display()
            ))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(ControlError::Internal(format!(
            "read {}/{name}: {error}",
            directory.display()
        ))),
    }
}

pub(super) fn write_block_list(
    directory: &Path,
    name: &str,
    blocks: &BTreeMap<u64, String>,
) -> Result<(), ControlError> {
    let encoded =
        serde_json::to_vec(blocks).map_err(|error| ControlError::Internal(error.to_string()))?;
    replace_file_atomically(&directory.join(name), &encoded).map_err(|error| {
        ControlError::Internal(format!("write {}/{name}: {error}", directory.display()))
    })
}

/// Publishes the blocks a volume needs (its base and hydration source) to the object
/// store, so that the collections of every daemon sharing the store keep them. Call
/// with a shared store lock held.
pub(super) fn publish_roots(
    storage: &SnapshotStorage,
    volume_id: &str,
    directory: &Path,
) -> Result<(), ControlError> {
    let mut blocks = std::collections::BTreeSet::new();
    for name in [BASE_BLOCKS, SOURCE_BLOCKS] {
        if let Some(list) = read_block_list(directory, name)? {
            blocks.extend(list.into_values());
        }
    }
    if blocks.is_empty() {
        return Ok(storage.delete_volume_roots(volume_id)?);
    }
    Ok(storage.put_volume_roots(volume_id, &blocks)?)
}

/// Snapshots that were pending when the daemon stopped cannot resume: their capture
/// state was in memory. Their blocks stay "changed", so the next snapshot includes them.
pub(super) fn fail_interrupted_snapshots(snapshots: &mut SnapshotTable) {
    for snapshot in snapshots.all_mut() {
        if snapshot.state == SnapshotState::Pending {
            log::warn!(
                "{}: interrupted by a restart; marking it error",
                snapshot.snapshot_id
            );
            snapshot.state = SnapshotState::Error;
            snapshot.state_message = Some("interrupted by a restart of ebsd".into());
        }
    }
}

/// Reconnects a reopened volume that is still hydrating to its source snapshot's blocks;
/// returns whether a background fill should resume.
pub(super) fn reattach_source(
    store: &Arc<BlockStore>,
    directory: &Path,
    storage: &Arc<SnapshotStorage>,
) -> Result<bool, ControlError> {
    let Some(blocks) = read_block_list(directory, SOURCE_BLOCKS)? else {
        return Ok(false);
    };
    if store.non_local_blocks() == 0 {
        let _ = std::fs::remove_file(directory.join(SOURCE_BLOCKS));
        return Ok(false);
    }
    store.attach_source(Arc::new(ManifestSource::new(Arc::clone(storage), blocks)));
    Ok(true)
}

/// Fetches the remaining blocks of a volume created from a snapshot, in the background.
pub(super) fn spawn_background_fill(store: Arc<BlockStore>, directory: PathBuf, volume_id: String) {
    let name = volume_id.clone();
    let spawned = thread::Builder::new()
        .name("ebs-hydrate".into())
        .spawn(move || {
            match store.hydrate_all(|_, _| {}) {
                Ok(()) => {
                    let _ = std::fs::remove_file(directory.join(SOURCE_BLOCKS));
                    log::info!("{volume_id}: fully initialised from its snapshot");
                }
                // Reads still hydrate on demand; a restart resumes the fill.
                Err(error) => log::warn!("{volume_id}: background fill stopped: {error}"),
            }
        });
    if let Err(error) = spawned {
        log::error!("{name}: cannot start the background fill: {error}");
    }
}

impl Service {
    /// The storage of a new volume: empty, or backed by its snapshot; encrypted under
    /// the key EBS's rules give it. Returns whether a background fill is needed (not for
    /// fast-restored snapshots, hydrated here) and the (master key id, wrapped data key).
    #[allow(clippy::type_complexity)]
    pub(super) fn create_store(
        &self,
        state: &ServiceState,
        volume: &Volume,
        request: &CreateVolumeRequest,
    ) -> Result<(BlockStore, Fill, Option<(String, String)>), ControlError> {
        let directory = self.volume_directory(&volume.volume_id);
        if volume.snapshot_id.is_empty() {
            let key = self.new_volume_key(request, None)?;
            let store = BlockStore::create(&directory, volume.size_bytes())?;
            store.set_cipher(key.as_ref().map(|key| Arc::clone(&key.cipher)));
            return Ok((
                store,
                Fill::Nothing,
                key.map(|key| (key.key_id, key.wrapped)),
            ));
        }
        let snapshot = state.snapshots.completed(&volume.snapshot_id)?.clone();
        // Held until the volume's roots are published: no collection runs in between.
        let _shared = self.storage.lock_shared(&self.lock_owner())?;
        let manifest = self
            .storage
            .get_manifest(&snapshot.snapshot_id)?
            .ok_or_else(|| {
                ControlError::Internal(format!("manifest of {} is missing", snapshot.snapshot_id))
            })?;
        let key = self.new_volume_key(request, Some(&manifest))?;
        let mut source: Arc<dyn BlockSource> = Arc::new(ManifestSource::new(
            Arc::clone(&self.storage),
            manifest.blocks.clone(),
        ));
        if let (Some(key), false) = (&key, manifest.encrypted) {
            source = Arc::new(EncryptingSource {
                inner: source,
                cipher: Arc::clone(&key.cipher),
            });
        }
        let store = BlockStore::create_from_source(
            &directory,
            volume.size_bytes(),
            snapshot.volume_size * GIB,
            source,
        )?;
        store.set_cipher(key.as_ref().map(|key| Arc::clone(&key.cipher)));
        write_block_list(&directory, BASE_BLOCKS, &manifest.blocks)?;
        let key = key.map(|key| (key.key_id, key.wrapped));
        write_block_list(&directory, SOURCE_BLOCKS, &manifest.blocks)?;
        publish_roots(&self.storage, &volume.volume_id, &directory)?;
        let fill = if snapshot.fast_restored {
            Fill::BeforeAvailable
        } else {
            Fill::InBackground
        };
        Ok((store, fill, key))
    }

    pub fn create_snapshot(
        self: &Arc<Self>,
        request: &CreateSnapshotRequest,
    ) -> Result<Snapshot, ControlError> {
        let mut state = self.lock();
        let volume = state.table.get(&request.volume_id)?.clone();
        if !matches!(volume.state, VolumeState::Available | VolumeState::InUse) {
            return Err(ControlError::IncorrectState(format!(
                "Volume {} cannot be snapshotted in its current state",
                volume.volume_id
            )));
        }
        let store = state
            .open
            .get(&volume.volume_id)
            .map(|open| Arc::clone(&open.store))
            .ok_or_else(|| {
                ControlError::IncorrectState(format!(
                    "Volume {} has no storage open",
                    volume.volume_id
                ))
            })?;
        // During a modification the storage may still have the original size.
        let mut volume = volume;
        volume.size = store.size().div_ceil(GIB);
        let tags = tags_from_specifications(&request.tag_specifications, "snapshot")?;
        // The capture starts now: the snapshot is the volume as of this request.
        let session = store
            .begin_capture()
            .map_err(|error| ControlError::IncorrectState(error.to_string()))?;
        let mut snapshot = state.snapshots.insert_pending(
            &volume.volume_id,
            volume.size,
            request.description.as_deref().unwrap_or(""),
            volume.encrypted,
            volume.kms_key_id.clone(),
        );
        state.snapshots.get_mut(&snapshot.snapshot_id)?.tags = tags.clone();
        snapshot.tags = tags;
        if let Err(error) = self.persist(&state) {
            state.snapshots.get_mut(&snapshot.snapshot_id)?.state = SnapshotState::Error;
            store.end_capture(false)?;
            return Err(error);
        }
        drop(state);
        let service = Arc::clone(self);
        let snapshot_id = snapshot.snapshot_id.clone();
        let directory = self.volume_directory(&volume.volume_id);
        thread::Builder::new()
            .name("ebs-snapshot".into())
            .spawn(move || {
                service.upload_snapshot(&snapshot_id, &volume, &store, &directory, &session)
            })
            .map_err(|error| ControlError::Internal(format!("start snapshot upload: {error}")))?;
        Ok(snapshot)
    }

    fn upload_snapshot(
        &self,
        snapshot_id: &str,
        volume: &Volume,
        store: &BlockStore,
        directory: &Path,
        session: &crate::engine::CaptureSession,
    ) {
        let result = (|| -> Result<(), ControlError> {
            // Blocks found already stored are reused: no collection may run meanwhile.
            let _shared = self.storage.lock_shared(&self.lock_owner())?;
            let base = read_block_list(directory, BASE_BLOCKS)?.unwrap_or_default();
            let mut last_percent = 0;
            let blocks = upload_capture(&self.storage, store, &base, session, |done, total| {
                let percent = done * 100 / total.max(1);
                if percent != last_percent {
                    last_percent = percent;
                    if let Ok(snapshot) = self.lock().snapshots.get_mut(snapshot_id) {
                        snapshot.progress = format!("{}%", percent.min(99));
                    }
                }
            })?;
            let manifest = Manifest {
                format_version: MANIFEST_FORMAT_VERSION,
                snapshot_id: snapshot_id.to_string(),
                volume_size: volume.size,
                block_size: BLOCK_SIZE,
                parent_snapshot_id: None,
                encrypted: volume.encrypted,
                wrapped_data_key: self.volume_wrapped_key(&volume.volume_id)?,
                kms_key_id: volume.kms_key_id.clone(),
                blocks,
            };
            self.storage.put_manifest(&manifest)?;
            if directory.exists() {
                write_block_list(directory, BASE_BLOCKS, &manifest.blocks)?;
                publish_roots(&self.storage, &volume.volume_id, directory)?;
            }
            log::info!(
                "{snapshot_id}: completed, {} changed blocks uploaded",
                session.changed_blocks.len()
            );
            Ok(())
        })();
        if let Err(error) = store.end_capture(result.is_ok()) {
            log::error!("{snapshot_id}: ending the capture failed: {error}");
        }
        let mut state = self.lock();
        if let Ok(snapshot) = state.snapshots.get_mut(snapshot_id) {
            match &result {
                Ok(()) => {
                    snapshot.state = SnapshotState::Completed;
                    snapshot.progress = "100%".into();
                }
                Err(error) => {
                    log::error!("{snapshot_id}: upload failed: {error}");
                    snapshot.state = SnapshotState::Error;
                    snapshot.state_message = Some(error.to_string());
                }
            }
        }
        if let Err(error) = self.persist(&state) {
            log::error!("{snapshot_id}: persisting its state failed: {error}");
        }
    }

    pub fn describe_snapshots(
        &self,
        request: &DescribeSnapshotsRequest,
    ) -> Result<Vec<Snapshot>, ControlError> {
        self.lock().snapshots.describe(request)
    }

    /// Deletes a snapshot; blocks that other snapshots (or volumes' bases) share stay.
    pub fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), ControlError> {
        let mut state = self.lock();
        state.snapshots.remove(snapshot_id)?;
        self.persist(&state)?;
        self.storage
            .delete(&manifest_key(snapshot_id))
            .map_err(SnapshotError::from)?;
        if let Some(deleted) = self.collect_garbage_if_idle(&state)? {
            log::info!("{snapshot_id}: deleted; {deleted} unshared blocks removed");
        }
        Ok(())
    }

    /// Deletes blocks nothing references any more, unless an upload is in progress
    /// (its blocks have no manifest yet; a later collection gets them). Returns how many
    /// blocks were deleted, or None when collection was deferred.
    pub(super) fn collect_garbage_if_idle(
        &self,
        state: &ServiceState,
    ) -> Result<Option<usize>, ControlError> {
        let uploading = state
            .snapshots
            .all()
            .any(|snapshot| snapshot.state == SnapshotState::Pending);
        if uploading {
            return Ok(None);
        }
        // Other daemons sharing the store may be uploading: their shared locks defer it.
        let Some(_exclusive) = self
            .storage
            .try_lock(LockKind::Exclusive, &self.lock_owner())?
        else {
            log::info!("garbage collection deferred: the object store is in use");
            return Ok(None);
        };
        let stale = self.storage.remove_stale_locks()?;
        if stale > 0 {
            log::warn!("removed {stale} expired object-store locks of stopped daemons");
        }
        let roots = self.volume_block_roots()?;
        Ok(Some(self.storage.collect_garbage(&roots)?))
    }

    /// Names this daemon in the object-store locks it takes.
    pub(super) fn lock_owner(&self) -> String {
        format!(
            "ebsd pid {} data {}",
            std::process::id(),
            self.config.data_dir.display()
        )
    }

    /// Base and hydration-source block lists of every volume on this host.
    fn volume_block_roots(&self) -> Result<Vec<BTreeMap<u64, String>>, ControlError> {
        let mut roots = Vec::new();
        let volumes = self.config.data_dir.join(VOLUMES_DIR);
        let entries = std::fs::read_dir(&volumes)
            .map_err(|error| ControlError::Internal(format!("list volumes: {error}")))?;
        for entry in entries.flatten() {
            for name in [BASE_BLOCKS, SOURCE_BLOCKS] {
                if let Some(blocks) = read_block_list(&entry.path(), name)? {
                    roots.push(blocks);
                }
            }
        }
        Ok(roots)
    }

    pub fn copy_snapshot(&self, request: &CopySnapshotRequest) -> Result<Snapshot, ControlError> {
        // The copy's manifest reuses stored blocks: no collection may run meanwhile.
        let _shared = self.storage.lock_shared(&self.lock_owner())?;
        let mut state = self.lock();
        let source = state
            .snapshots
            .completed(&request.source_snapshot_id)?
            .clone();
        let mut manifest = self
            .storage
            .get_manifest(&source.snapshot_id)?
            .ok_or_else(|| {
                ControlError::Internal(format!("manifest of {} is missing", source.snapshot_id))
            })?;
        if source.encrypted && request.encrypted == Some(false) {
            return Err(ControlError::InvalidParameterCombination(format!(
                "Snapshot {} is encrypted; a copy cannot be unencrypted",
                source.snapshot_id
            )));
        }
        let encrypted =
            request.encrypted.unwrap_or(false) || request.kms_key_id.is_some() || source.encrypted;
        // The copy gets the tags asked for, not the source's (as in EC2).
        let tags = tags_from_specifications(&request.tag_specifications, "snapshot")?;
        let copy = state.snapshots.insert_pending(
            &source.volume_id,
            source.volume_size,
            request
                .description
                .as_deref()
                .unwrap_or(&source.description),
            encrypted,
            request.kms_key_id.clone().or(source.kms_key_id.clone()),
        );
        state.snapshots.get_mut(&copy.snapshot_id)?.tags = tags;
        let result = (|| -> Result<(), ControlError> {
            manifest.snapshot_id = copy.snapshot_id.clone();
            self.reencrypt_for_copy(
                &source,
                &mut manifest,
                encrypted,
                request.kms_key_id.as_deref(),
            )?;
            self.storage.put_manifest(&manifest)?;
            Ok(())
        })();
        let record = state.snapshots.get_mut(&copy.snapshot_id)?;
        match result {
            Ok(()) => {
                record.state = SnapshotState::Completed;
                record.progress = "100%".into();
                let record = record.clone();
                self.persist(&state)?;
                Ok(record)
            }
            Err(error) => {
                state.snapshots.remove(&copy.snapshot_id).ok();
                self.persist(&state)?;
                Err(error)
            }
        }
    }

    pub fn enable_fast_snapshot_restores(
        &self,
        request: &EnableFastSnapshotRestoresRequest,
    ) -> Result<Value, ControlError> {
        let mut state = self.lock();
        let mut successful = Vec::new();
        for snapshot_id in &request.source_snapshot_ids {
            state.snapshots.completed(snapshot_id)?;
            state.snapshots.get_mut(snapshot_id)?.fast_restored = true;
            successful.push(json!({"SnapshotId": snapshot_id, "State": "enabled", "AvailabilityZones": request.availability_zones}));
        }
        self.persist(&state)?;
        Ok(json!({"Successful": successful, "Unsuccessful": []}))
    }
}
