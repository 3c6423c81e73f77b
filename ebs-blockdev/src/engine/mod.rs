//! The storage engine: one thin-provisioned block store per volume.
//!
//! Data lives in a sparse file at its logical offset, so only written ranges use space and
//! TRIM/WRITE_ZEROES punch holes. The block map (512 KiB granularity) records which blocks
//! hold data and which changed since the last snapshot; it is replaced atomically, after
//! the data is synced, on every FLUSH or FUA request that changed it. docs/ebs-format.md
//! gives the layout and the crash-consistency argument.

pub mod blockmap;
pub mod durable;
mod encrypted;
mod source;

pub use source::{BlockSource, CaptureSession};

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use blockmap::{BlockMap, BLOCK_SIZE};
use durable::{replace_file_atomically, sync_directory};

const DATA_FILE: &str = "data";
const MAP_FILE: &str = "blockmap";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("request [{offset}, +{length}) is outside the volume's {size} bytes")]
    OutOfRange { offset: u64, length: u64, size: u64 },
    #[error("corrupt metadata: {0}")]
    CorruptMetadata(String),
    #[error("{0}")]
    Busy(String),
    #[error("snapshot source: {0}")]
    Source(String),
    #[error("a volume can only grow: {requested} bytes is smaller than {current}")]
    ShrinkRefused { requested: u64, current: u64 },
}

impl EngineError {
    /// The errno an NBD reply should carry for this error.
    pub fn errno(&self) -> i32 {
        match self {
            EngineError::OutOfRange { .. } => libc::EINVAL,
            EngineError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                libc::ENOSPC
            }
            _ => libc::EIO,
        }
    }
}

fn io_context(context: impl Into<String>) -> impl FnOnce(io::Error) -> EngineError {
    let context = context.into();
    move |source| EngineError::Io { context, source }
}

/// A run of blocks with the same allocation state, as NBD_CMD_BLOCK_STATUS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    /// No data stored: the range reads as zeros.
    pub is_hole: bool,
}

struct MapState {
    map: BlockMap,
    /// The in-memory map differs from the one on disk.
    dirty: bool,
}

pub struct BlockStore {
    directory: PathBuf,
    data: File,
    map_state: Mutex<MapState>,
    /// Where blocks not yet local come from (a snapshot), while any remain.
    source: Mutex<Option<Arc<dyn BlockSource>>>,
    /// The volume's data-key cipher when it is encrypted at rest.
    cipher: Mutex<Option<Arc<crate::crypto::SectorCipher>>>,
    /// Serialises read-modify-write of partially written encrypted sectors.
    partial_sector_lock: Mutex<()>,
    /// Serialises hydration with writes to blocks that are not local yet.
    hydration_lock: Mutex<()>,
    /// The snapshot being taken, whose blocks must be preserved before overwrites.
    capture: Mutex<Option<source::Capture>>,
    /// Serialises "sync data, then persist map" so maps are written in order.
    sync_lock: Mutex<()>,
}

impl BlockStore {
    /// Creates the directory and an empty volume of `size` bytes.
    pub fn create(directory: &Path, size: u64) -> Result<Self, EngineError> {
        Self::create_with_blocks_from_source(directory, size, 0)
    }

    /// Creates a volume whose first `source_size` bytes come from `source` (a snapshot),
    /// fetched on first access or by [`BlockStore::hydrate_all`].
    pub fn create_from_source(
        directory: &Path,
        size: u64,
        source_size: u64,
        source: Arc<dyn BlockSource>,
    ) -> Result<Self, EngineError> {
        let store = Self::create_with_blocks_from_source(directory, size, source_size)?;
        store.attach_source(source);
        Ok(store)
    }

    fn create_with_blocks_from_source(
        directory: &Path,
        size: u64,
        source_size: u64,
    ) -> Result<Self, EngineError> {
        fs::create_dir_all(directory)
            .map_err(io_context(format!("create {}", directory.display())))?;
        let data_path = directory.join(DATA_FILE);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&data_path)
            .map_err(io_context(format!("create {}", data_path.display())))?;
        data.set_len(size).map_err(io_context("size data file"))?;
        data.sync_all().map_err(io_context("sync data file"))?;
        let mut map = BlockMap::new(size, source_size > 0);
        for block in blockmap::block_count(source_size.min(size))..blockmap::block_count(size) {
            map.local.set(block, true);
        }
        map.clean_shutdown = true;
        replace_file_atomically(&directory.join(MAP_FILE), &map.encode())
            .map_err(io_context("write block map"))?;
        if let Some(parent) = directory.parent() {
            sync_directory(parent).map_err(io_context("sync volumes directory"))?;
        }
        Self::open(directory)
    }

    /// Opens an existing volume. After an unclean shutdown the map is reconciled with the
    /// data file so it again covers every block that may hold data (docs/ebs-format.md).
    pub fn open(directory: &Path) -> Result<Self, EngineError> {
        let data_path = directory.join(DATA_FILE);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(io_context(format!("open {}", data_path.display())))?;
        let map_path = directory.join(MAP_FILE);
        let encoded =
            fs::read(&map_path).map_err(io_context(format!("read {}", map_path.display())))?;
        let mut map = BlockMap::decode(&encoded)?;
        let file_size = data.metadata().map_err(io_context("stat data file"))?.len();
        if file_size < map.volume_size {
            // A crash between growing the map and the file: finish the resize.
            data.set_len(map.volume_size)
                .map_err(io_context("size data file"))?;
        }
        if !map.clean_shutdown {
            log::warn!(
                "{}: unclean shutdown, reconciling block map",
                directory.display()
            );
            reconcile_after_crash(&data, &mut map)?;
        }
        map.clean_shutdown = false;
        let store = BlockStore {
            directory: directory.to_path_buf(),
            data,
            map_state: Mutex::new(MapState { map, dirty: true }),
            source: Mutex::new(None),
            hydration_lock: Mutex::new(()),
            capture: Mutex::new(None),
            cipher: Mutex::new(None),
            partial_sector_lock: Mutex::new(()),
            sync_lock: Mutex::new(()),
        };
        store.persist_map()?;
        Ok(store)
    }

    /// Removes a volume's files.
    pub fn destroy(directory: &Path) -> Result<(), EngineError> {
        match fs::remove_dir_all(directory) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_context(format!("remove {}", directory.display()))(error)),
        }
        if let Some(parent) = directory.parent() {
            sync_directory(parent).map_err(io_context("sync volumes directory"))?;
        }
        Ok(())
    }

    fn lock_map(&self) -> MutexGuard<'_, MapState> {
        // A panic while holding the lock leaves the bitmaps valid (each update is a
        // single bit flip), so poisoning carries no information here.
        self.map_state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn size(&self) -> u64 {
        self.lock_map().map.volume_size
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Bytes of the volume in allocated blocks (the thin-provisioned footprint).
    pub fn allocated_bytes(&self) -> u64 {
        self.lock_map().map.allocated.count_ones() * BLOCK_SIZE
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<(), EngineError> {
        let size = self.size();
        match offset.checked_add(length) {
            Some(end) if end <= size => Ok(()),
            _ => Err(EngineError::OutOfRange {
                offset,
                length,
                size,
            }),
        }
    }

    /// Marks the blocks of [offset, offset+length) changed, and allocated or (for blocks
    /// the range covers whole) deallocated.
    fn mark_blocks(&self, offset: u64, length: u64, allocate: bool) {
        if length == 0 {
            return;
        }
        let first = offset / BLOCK_SIZE;
        let last = (offset + length - 1) / BLOCK_SIZE;
        let mut state = self.lock_map();
        let mut changed = false;
        for block in first..=last {
            changed |= state.map.changed.set(block, true);
            changed |= state.map.local.set(block, true);
            if allocate {
                changed |= state.map.allocated.set(block, true);
            } else {
                let block_start = block * BLOCK_SIZE;
                let block_end = (block_start + BLOCK_SIZE).min(state.map.volume_size);
                if offset <= block_start && offset + length >= block_end {
                    changed |= state.map.allocated.set(block, false);
                }
            }
        }
        state.dirty |= changed;
    }

    pub fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<(), EngineError> {
        self.check_range(offset, buffer.len() as u64)?;
        self.make_local(offset, buffer.len() as u64, false)?;
        if let Some(cipher) = self.cipher() {
            return self.read_decrypted(&cipher, offset, buffer);
        }
        self.data
            .read_exact_at(buffer, offset)
            .map_err(io_context(format!(
                "read {} bytes at {offset}",
                buffer.len()
            )))
    }

    /// Writes `bytes` at `offset`; with `fua` the write is durable when this returns.
    pub fn write_at(&self, offset: u64, bytes: &[u8], fua: bool) -> Result<(), EngineError> {
        self.check_range(offset, bytes.len() as u64)?;
        self.prepare_modification(offset, bytes.len() as u64)?;
        // The map is marked before the data lands so a concurrent FLUSH that syncs this
        // write also persists its block's bits.
        self.mark_blocks(offset, bytes.len() as u64, true);
        self.write_stored(offset, bytes)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Discards a range: its space is freed and it reads as zeros.
    pub fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), EngineError> {
        self.check_range(offset, length)?;
        self.prepare_modification(offset, length)?;
        let (start, middle) = self.zero_partial_sectors(offset, length)?;
        self.punch_hole(start, middle)?;
        self.mark_blocks(offset, length, false);
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Zeroes a range; `may_deallocate` (NBD without NO_HOLE) lets it free the space.
    pub fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
        may_deallocate: bool,
    ) -> Result<(), EngineError> {
        if may_deallocate {
            return self.trim(offset, length, fua);
        }
        self.check_range(offset, length)?;
        self.prepare_modification(offset, length)?;
        self.mark_blocks(offset, length, true);
        let (start, middle) = self.zero_partial_sectors(offset, length)?;
        if self
            .fallocate(libc::FALLOC_FL_ZERO_RANGE, start, middle)
            .is_err()
        {
            self.write_zero_bytes(start, middle)?;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn write_zero_bytes(&self, offset: u64, length: u64) -> Result<(), EngineError> {
        let zeros = vec![0u8; BLOCK_SIZE as usize];
        let mut done = 0;
        while done < length {
            let chunk = (length - done).min(BLOCK_SIZE) as usize;
            self.data
                .write_all_at(&zeros[..chunk], offset + done)
                .map_err(io_context("write zeros"))?;
            done += chunk as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: i32, offset: u64, length: u64) -> io::Result<()> {
        if length == 0 {
            return Ok(());
        }
        let (Ok(offset), Ok(length)) =
            (libc::off_t::try_from(offset), libc::off_t::try_from(length))
        else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by
        // `self.data` and stays open for the duration of the call.
        let result = unsafe { libc::fallocate(self.data.as_raw_fd(), mode, offset, length) };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn punch_hole(&self, offset: u64, length: u64) -> Result<(), EngineError> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match self.fallocate(mode, offset, length) {
            Ok(()) => Ok(()),
            // Filesystems without hole punching still get the zeros TRIM promises here.
            Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zero_bytes(offset, length)
            }
            Err(error) => Err(io_context("punch hole")(error)),
        }
    }

    /// Makes every write that completed before this call durable: fdatasync the data,
    /// then atomically replace the block map if it changed.
    pub fn flush(&self) -> Result<(), EngineError> {
        let _ordered = self
            .sync_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.data
            .sync_data()
            .map_err(io_context("fdatasync data file"))?;
        self.persist_map_locked()
    }

    fn persist_map(&self) -> Result<(), EngineError> {
        let _ordered = self
            .sync_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.persist_map_locked()
    }

    fn persist_map_locked(&self) -> Result<(), EngineError> {
        // Blocks of a snapshot still being taken stay "changed" on disk until it
        // completes, so a crash meanwhile cannot hide them from the next snapshot.
        let capturing = self.capture_pending_blocks();
        let encoded = {
            let mut state = self.lock_map();
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            state.map.generation += 1;
            match capturing {
                Some(pending) => {
                    let mut map = state.map.clone();
                    for block in pending {
                        map.changed.set(block, true);
                    }
                    map.encode()
                }
                None => state.map.encode(),
            }
        };
        let result = replace_file_atomically(&self.directory.join(MAP_FILE), &encoded)
            .map_err(io_context("persist block map"));
        if result.is_err() {
            self.lock_map().dirty = true;
        }
        result
    }

    /// Grows the volume to `new_size` bytes (ModifyVolume).
    pub fn grow(&self, new_size: u64) -> Result<(), EngineError> {
        let current = self.size();
        if new_size < current {
            return Err(EngineError::ShrinkRefused {
                requested: new_size,
                current,
            });
        }
        // Map first: a crash after it is finished by open(), which sizes the file.
        {
            let mut state = self.lock_map();
            state.map.grow(new_size);
            state.dirty = true;
        }
        self.persist_map()?;
        self.data
            .set_len(new_size)
            .map_err(io_context("grow data file"))?;
        self.data.sync_all().map_err(io_context("sync data file"))
    }

    /// Allocation extents covering [offset, offset+length), block by block.
    pub fn block_status(&self, offset: u64, length: u64) -> Result<Vec<Extent>, EngineError> {
        self.check_range(offset, length)?;
        let state = self.lock_map();
        let end = offset + length;
        let mut extents: Vec<Extent> = Vec::new();
        let mut position = offset;
        while position < end {
            let block = position / BLOCK_SIZE;
            let block_end = ((block + 1) * BLOCK_SIZE).min(end);
            let is_hole = !state.map.allocated.get(block) && state.map.local.get(block);
            let run = block_end - position;
            match extents.last_mut() {
                Some(last) if last.is_hole == is_hole => last.length += run,
                _ => extents.push(Extent {
                    length: run,
                    is_hole,
                }),
            }
            position = block_end;
        }
        Ok(extents)
    }

    /// Flushes and marks the map clean, so the next open skips reconciliation.
    pub fn close(self) -> Result<(), EngineError> {
        self.shut_down()
    }

    /// Like `close` for a store still shared (the daemon is exiting): requests that
    /// arrive afterwards are not covered, so call it only when nothing serves it anymore.
    pub fn shut_down(&self) -> Result<(), EngineError> {
        self.flush()?;
        {
            let mut state = self.lock_map();
            state.map.clean_shutdown = true;
            state.dirty = true;
        }
        self.persist_map()
    }
}

/// After a crash the persisted map may miss blocks written (or trimmed) after the last
/// FLUSH. Every block that holds data now, or did at the last persisted map, is marked
/// allocated and changed so the next snapshot re-reads it. `local` bits are left alone:
/// a block not yet hydrated may hold a torn, unflushed hydration, which the next access
/// overwrites from the source again.
fn reconcile_after_crash(data: &File, map: &mut BlockMap) -> Result<(), EngineError> {
    let previously_allocated: Vec<u64> = map.allocated.iter_ones().collect();
    for block in previously_allocated {
        map.changed.set(block, true);
    }
    let fd = data.as_raw_fd();
    let size = map.volume_size;
    let mut position: u64 = 0;
    while position < size {
        let Some(data_start) = seek(fd, position, libc::SEEK_DATA)? else {
            break;
        };
        let data_end = seek(fd, data_start, libc::SEEK_HOLE)?
            .unwrap_or(size)
            .min(size);
        if data_end <= data_start {
            break;
        }
        for block in data_start / BLOCK_SIZE..=(data_end - 1) / BLOCK_SIZE {
            map.allocated.set(block, true);
            map.changed.set(block, true);
        }
        position = data_end;
    }
    Ok(())
}

/// lseek with SEEK_DATA/SEEK_HOLE; `None` when there is no further data (ENXIO).
fn seek(fd: i32, offset: u64, whence: i32) -> Result<Option<u64>, EngineError> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| EngineError::CorruptMetadata("offset overflow".into()))?;
    // SAFETY: lseek only reads its integer arguments; `fd` belongs to a File that the
    // caller keeps open for the duration of the call.
    let result = unsafe { libc::lseek(fd, offset, whence) };
    if result >= 0 {
        return Ok(Some(result as u64));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(io_context("seek data/hole")(error))
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "source_tests.rs"]
mod source_tests;

#[cfg(test)]
#[path = "encrypted_tests.rs"]
mod encrypted_tests;
