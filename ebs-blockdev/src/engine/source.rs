//! Two things that make a volume's blocks depend on a snapshot:
//!
//! - **Lazy hydration**: a volume created from a snapshot is usable at once; a block that
//!   is not yet local is fetched from its source on first access (or by the background
//!   fill) and written into the data file before the request proceeds.
//! - **Capture**: while a snapshot of the volume is being uploaded, a write to one of its
//!   not-yet-uploaded blocks first preserves the old contents, so the snapshot is the
//!   volume as it was when the snapshot started.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, MutexGuard};

use super::blockmap::{Bitmap, BLOCK_SIZE};
use super::{io_context, BlockStore, EngineError};

/// Where the blocks of a volume created from a snapshot come from.
pub trait BlockSource: Send + Sync {
    /// Block `index` (BLOCK_SIZE bytes, already in the volume's at-rest form), or `None`
    /// when the snapshot holds no data there (zeros).
    fn fetch_block(&self, index: u64) -> Result<Option<Vec<u8>>, EngineError>;
}

pub(super) struct Capture {
    pending: Bitmap,
    captured: Bitmap,
    preserved: HashMap<u64, Vec<u8>>,
}

/// The blocks a snapshot must upload: those changed since the previous snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSession {
    pub changed_blocks: Vec<u64>,
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BlockStore {
    /// Sets the source for blocks that are not local (after create or reopen).
    pub fn attach_source(&self, source: Arc<dyn BlockSource>) {
        if self.non_local_blocks() > 0 {
            *lock(&self.source) = Some(source);
        }
    }

    /// Blocks still to be fetched from the source.
    pub fn non_local_blocks(&self) -> u64 {
        let state = self.lock_map();
        state.map.local.len() - state.map.local.count_ones()
    }

    fn is_local(&self, block: u64) -> bool {
        self.lock_map().map.local.get(block)
    }

    fn block_bounds(&self, block: u64) -> (u64, u64) {
        let start = block * BLOCK_SIZE;
        (start, (start + BLOCK_SIZE).min(self.size()))
    }

    /// Makes the blocks of [offset, offset+length) local. With `overwriting`, blocks the
    /// range covers whole are only marked (their old contents are about to be replaced).
    pub(super) fn make_local(
        &self,
        offset: u64,
        length: u64,
        overwriting: bool,
    ) -> Result<(), EngineError> {
        if length == 0 {
            return Ok(());
        }
        for block in offset / BLOCK_SIZE..=(offset + length - 1) / BLOCK_SIZE {
            if self.is_local(block) {
                continue;
            }
            let (start, end) = self.block_bounds(block);
            let covered = overwriting && offset <= start && offset + length >= end;
            self.hydrate_block(block, covered)?;
        }
        Ok(())
    }

    /// Fetches one block from the source unless it became local meanwhile.
    fn hydrate_block(&self, block: u64, skip_fetch: bool) -> Result<(), EngineError> {
        let _serialised = lock(&self.hydration_lock);
        if self.is_local(block) {
            return Ok(());
        }
        let source = lock(&self.source).clone();
        let mut allocated = false;
        if !skip_fetch {
            let source = source.ok_or_else(|| {
                EngineError::Source(format!(
                    "block {block} is not local and the volume has no source attached"
                ))
            })?;
            if let Some(bytes) = source.fetch_block(block)? {
                let (start, end) = self.block_bounds(block);
                let length = ((end - start) as usize).min(bytes.len());
                self.data
                    .write_all_at(&bytes[..length], start)
                    .map_err(io_context(format!("hydrate block {block}")))?;
                allocated = true;
            }
        }
        let mut state = self.lock_map();
        state.map.local.set(block, true);
        if allocated {
            state.map.allocated.set(block, true);
        }
        state.dirty = true;
        Ok(())
    }

    /// Fetches every block not yet local (background fill / fast snapshot restore);
    /// `progress(done, total)` is called after each block.
    pub fn hydrate_all(&self, mut progress: impl FnMut(u64, u64)) -> Result<(), EngineError> {
        let missing: Vec<u64> = {
            let state = self.lock_map();
            (0..state.map.local.len())
                .filter(|&block| !state.map.local.get(block))
                .collect()
        };
        let total = missing.len() as u64;
        for (done, block) in missing.into_iter().enumerate() {
            self.hydrate_block(block, false)?;
            progress(done as u64 + 1, total);
        }
        if self.non_local_blocks() == 0 {
            *lock(&self.source) = None;
        }
        self.flush()
    }

    /// Preserves not-yet-uploaded snapshot blocks, then makes the range local: called
    /// before every write, TRIM or WRITE_ZEROES.
    pub(super) fn prepare_modification(&self, offset: u64, length: u64) -> Result<(), EngineError> {
        if length == 0 {
            return Ok(());
        }
        {
            let mut capture = lock(&self.capture);
            if let Some(capture) = capture.as_mut() {
                for block in offset / BLOCK_SIZE..=(offset + length - 1) / BLOCK_SIZE {
                    if capture.pending.get(block) && !capture.captured.get(block) {
                        let contents = self.read_block_raw(block)?;
                        capture.preserved.insert(block, contents);
                        capture.captured.set(block, true);
                    }
                }
            }
        }
        self.make_local(offset, length, true)
    }

    fn read_block_raw(&self, block: u64) -> Result<Vec<u8>, EngineError> {
        let (start, end) = self.block_bounds(block);
        let mut contents = vec![0u8; BLOCK_SIZE as usize];
        self.data
            .read_exact_at(&mut contents[..(end - start) as usize], start)
            .map_err(io_context(format!("read block {block}")))?;
        Ok(contents)
    }

    /// Starts a snapshot: the blocks changed since the previous one become the capture
    /// set and the changed bits start afresh.
    pub fn begin_capture(&self) -> Result<CaptureSession, EngineError> {
        let mut capture = lock(&self.capture);
        if capture.is_some() {
            return Err(EngineError::Busy(
                "a snapshot of this volume is already in progress".into(),
            ));
        }
        let pending = {
            let mut state = self.lock_map();
            let blocks = state.map.changed.len();
            let pending = std::mem::replace(&mut state.map.changed, Bitmap::new(blocks, false));
            state.dirty = true;
            pending
        };
        let changed_blocks = pending.iter_ones().collect();
        let captured = Bitmap::new(pending.len(), false);
        *capture = Some(Capture {
            pending,
            captured,
            preserved: HashMap::new(),
        });
        Ok(CaptureSession { changed_blocks })
    }

    /// The contents block `block` had when the capture began (BLOCK_SIZE bytes).
    pub fn read_captured_block(&self, block: u64) -> Result<Vec<u8>, EngineError> {
        let mut capture = lock(&self.capture);
        let capture = capture
            .as_mut()
            .ok_or_else(|| EngineError::Busy("no snapshot capture in progress".into()))?;
        if let Some(contents) = capture.preserved.remove(&block) {
            return Ok(contents);
        }
        // Holding the capture lock keeps writers to this block waiting until it is read.
        let contents = self.read_block_raw(block)?;
        capture.captured.set(block, true);
        Ok(contents)
    }

    /// Ends the capture; a failed snapshot gives its blocks back to the changed set.
    pub fn end_capture(&self, succeeded: bool) -> Result<(), EngineError> {
        let finished = lock(&self.capture).take();
        if let (Some(capture), false) = (finished, succeeded) {
            let mut state = self.lock_map();
            for block in capture.pending.iter_ones() {
                state.map.changed.set(block, true);
            }
            state.dirty = true;
        }
        self.lock_map().dirty = true;
        self.flush()
    }

    pub(super) fn capture_pending_blocks(&self) -> Option<Vec<u64>> {
        lock(&self.capture)
            .as_ref()
            .map(|capture| capture.pending.iter_ones().collect())
    }
}
