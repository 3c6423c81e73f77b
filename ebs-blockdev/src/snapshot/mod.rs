//! Snapshots in an object store: uploading a volume's changed blocks (incremental),
//! serving blocks back for lazy hydration, and collecting blocks no snapshot uses.

pub mod locks;
pub mod manifest;
pub mod storage;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub use manifest::Manifest;
pub use storage::{SnapshotStorage, StorageError};

use crate::engine::{BlockSource, BlockStore, CaptureSession, EngineError};
use manifest::{block_hash, block_key, manifest_key};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("snapshot data is corrupt: {0}")]
    Corrupt(String),
    #[error("object store busy: {0}")]
    Busy(String),
}

/// Blocks of a snapshot, fetched from the object store and verified against their hash.
pub struct ManifestSource {
    storage: Arc<SnapshotStorage>,
    blocks: BTreeMap<u64, String>,
}

impl ManifestSource {
    pub fn new(storage: Arc<SnapshotStorage>, blocks: BTreeMap<u64, String>) -> Self {
        ManifestSource { storage, blocks }
    }
}

impl BlockSource for ManifestSource {
    fn fetch_block(&self, index: u64) -> Result<Option<Vec<u8>>, EngineError> {
        let Some(hash) = self.blocks.get(&index) else {
            return Ok(None);
        };
        let bytes = self
            .storage
            .get_block(hash)
            .map_err(|error| EngineError::Source(format!("block {index}: {error}")))?;
        Ok(Some(bytes))
    }
}

impl SnapshotStorage {
    /// A block by hash, verified: a corrupt object is an error, never data.
    pub fn get_block(&self, hash: &str) -> Result<Vec<u8>, SnapshotError> {
        let bytes = self.get(&block_key(hash))?.ok_or_else(|| {
            SnapshotError::Corrupt(format!("block {hash} is missing from the object store"))
        })?;
        if block_hash(&bytes) != hash {
            return Err(SnapshotError::Corrupt(format!(
                "block {hash} does not match its hash"
            )));
        }
        Ok(bytes)
    }

    /// Stores a block unless an identical one is already there; returns its hash.
    pub fn put_block(&self, bytes: &[u8]) -> Result<String, SnapshotError> {
        let hash = block_hash(bytes);
        if !self.exists(&block_key(&hash))? {
            self.put(&block_key(&hash), bytes.to_vec())?;
        }
        Ok(hash)
    }

    pub fn put_manifest(&self, manifest: &Manifest) -> Result<(), SnapshotError> {
        let encoded = serde_json::to_vec_pretty(manifest)
            .map_err(|error| SnapshotError::Corrupt(format!("encode manifest: {error}")))?;
        Ok(self.put(&manifest_key(&manifest.snapshot_id), encoded)?)
    }

    pub fn get_manifest(&self, snapshot_id: &str) -> Result<Option<Manifest>, SnapshotError> {
        match self.get(&manifest_key(snapshot_id))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|error| {
                SnapshotError::Corrupt(format!("manifest of {snapshot_id}: {error}"))
            }),
        }
    }

    /// Deletes blocks referenced by no manifest in the store and by none of
    /// `extra_roots` (volumes' base and hydration-source block lists). Returns how many
    /// blocks were deleted.
    pub fn collect_garbage(
        &self,
        extra_roots: &[BTreeMap<u64, String>],
    ) -> Result<usize, SnapshotError> {
        let mut referenced: BTreeSet<String> = BTreeSet::new();
        for key in self.list("snapshots")? {
            if !key.ends_with("/manifest.json") {
                continue;
            }
            let snapshot_id = key
                .trim_start_matches("snapshots/")
                .trim_end_matches("/manifest.json");
            if let Some(manifest) = self.get_manifest(snapshot_id)? {
                referenced.extend(manifest.blocks.into_values());
            }
        }
        for root in extra_roots {
            referenced.extend(root.values().cloned());
        }
        // Blocks volumes of every daemon sharing the store still need.
        referenced.extend(self.all_volume_roots()?);
        let mut deleted = 0;
        for key in self.list("blocks")? {
            let hash = key.trim_start_matches("blocks/");
            if !referenced.contains(hash) {
                self.delete(&key)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// Uploads the blocks a capture session found changed and returns the new snapshot's
/// complete block list: `base` (the previous snapshot's blocks) overlaid with them.
/// Changed blocks that read as zeros leave the list (EBS stores only written blocks).
pub fn upload_capture(
    storage: &SnapshotStorage,
    store: &BlockStore,
    base: &BTreeMap<u64, String>,
    session: &CaptureSession,
    mut progress: impl FnMut(usize, usize),
) -> Result<BTreeMap<u64, String>, SnapshotError> {
    let mut blocks = base.clone();
    let total = session.changed_blocks.len();
    for (done, &index) in session.changed_blocks.iter().enumerate() {
        let contents = store.read_captured_block(index)?;
        if is_zero(&contents) {
            blocks.remove(&index);
        } else {
            blocks.insert(index, storage.put_block(&contents)?);
        }
        progress(done + 1, total);
    }
    Ok(blocks)
}

pub fn is_zero(bytes: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    bytes
        .chunks(ZEROS.len())
        .all(|page| page == &ZEROS[..page.len()])
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
