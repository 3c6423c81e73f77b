//! Guest memory to and from the memory file, sparsely.
//!
//! The file holds the guest's RAM regions back to back (their guest
//! addresses are recorded in the snapshot). Pages that are all zero are
//! not written: the file is sized first, so they stay holes and cost no
//! disk space. Restore zeroes the fresh guest memory (it already holds the
//! firmware tables the VM builder wrote) and reads only the file's data
//! extents (SEEK_DATA/SEEK_HOLE), so the work follows what the guest used.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::format::AtomicFile;
use super::SnapshotError;

const PAGE: usize = 4096;
/// Longest run of data pages written with one call.
const MAX_RUN: usize = 1 << 20;

/// One guest RAM region and where it sits in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionInfo {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryInfo {
    pub regions: Vec<RegionInfo>,
    /// Length of the memory file (the sum of the regions).
    pub file_size: u64,
}

/// How much of the memory was actually written.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryStats {
    pub data_bytes: u64,
}

/// The layout of `mem` in a memory file.
pub fn layout(mem: &GuestMemoryMmap) -> MemoryInfo {
    let mut offset = 0;
    let regions = mem
        .iter()
        .map(|r| {
            let info = RegionInfo {
                guest_addr: r.start_addr().0,
                size: r.len(),
                file_offset: offset,
            };
            offset += r.len();
            info
        })
        .collect();
    MemoryInfo {
        regions,
        file_size: offset,
    }
}

/// The host view of a region of guest memory.
fn host_slice(mem: &GuestMemoryMmap, r: &RegionInfo) -> Result<(*mut u8, usize), SnapshotError> {
    let ptr = mem
        .get_host_address(GuestAddress(r.guest_addr))
        .map_err(|e| SnapshotError::Invalid {
            what: "guest memory".into(),
            reason: format!("{:#x}: {e}", r.guest_addr),
        })?;
    let len = usize::try_from(r.size).map_err(|_| SnapshotError::Invalid {
        what: "guest memory".into(),
        reason: "region larger than the address space".into(),
    })?;
    Ok((ptr, len))
}

fn is_zero(page: &[u8]) -> bool {
    // OR-folding fixed blocks vectorises; an early exit per block keeps a
    // page with data in its first bytes cheap.
    page.chunks(256)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Write the guest's memory to `path` (atomically). The VM must be paused:
/// nothing may write guest memory meanwhile.
pub fn save(
    mem: &GuestMemoryMmap,
    path: &Path,
) -> Result<(MemoryInfo, MemoryStats), SnapshotError> {
    let info = layout(mem);
    let out = AtomicFile::create(path)?;
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    out.file.set_len(info.file_size).map_err(io)?;
    let mut stats = MemoryStats::default();
    for r in &info.regions {
        let (ptr, len) = host_slice(mem, r)?;
        // SAFETY: the region is a live mapping of `len` bytes owned by
        // `mem`, which outlives this borrow; the VM is paused (vCPUs parked,
        // device workers stopped), so nothing writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        let mut at = 0;
        while at < len {
            let end = (at + PAGE).min(len);
            if is_zero(&bytes[at..end]) {
                at = end;
                continue;
            }
            // A run of data pages, written in one call.
            let start = at;
            at = end;
            while at < len && at - start < MAX_RUN {
                let end = (at + PAGE).min(len);
                if is_zero(&bytes[at..end]) {
                    break;
                }
                at = end;
            }
            out.file
                .write_all_at(&bytes[start..at], r.file_offset + start as u64)
                .map_err(io)?;
            stats.data_bytes += (at - start) as u64;
        }
    }
    out.commit()?;
    Ok((info, stats))
}

/// Data extents of `file` within [start, end): (offset, length).
fn data_extents(file: &File, start: u64, end: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        // SAFETY: lseek on a descriptor we own; no memory is involved.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error();
            if errno == Some(libc::ENXIO) {
                break; // no data after pos
            }
            // SEEK_DATA unsupported here: treat everything as data.
            out.push((pos, end - pos));
            break;
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        out.push((data, hole - data));
        pos = hole;
    }
    out
}

/// Load the memory file into `mem`, a freshly built VM's memory with the
/// same layout. Returns the bytes read.
pub fn load(mem: &GuestMemoryMmap, info: &MemoryInfo, path: &Path) -> Result<u64, SnapshotError> {
    let mine = layout(mem);
    if mine != *info {
        return Err(SnapshotError::Mismatch(format!(
            "guest memory layout differs: {} bytes in {} region(s) in the snapshot, {} bytes in {} here",
            info.file_size,
            info.regions.len(),
            mine.file_size,
            mine.regions.len()
        )));
    }
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len != info.file_size {
        return Err(SnapshotError::Mismatch(format!(
            "memory file {} has {len} bytes, the snapshot expects {} (guest memory size differs, or the file is truncated)",
            path.display(),
            info.file_size
        )));
    }
    let mut read = 0;
    for r in &info.regions {
        let (ptr, size) = host_slice(mem, r)?;
        // SAFETY: `ptr..ptr+size` is a private anonymous mapping owned by
        // `mem`; dropping its pages makes them read as zero again. No vCPU
        // runs yet and no device has been activated.
        if unsafe { libc::madvise(ptr as *mut libc::c_void, size, libc::MADV_DONTNEED) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: as above; this is the only reference to the region while
        // the VM is not running.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, size) };
        for (off, n) in data_extents(&file, r.file_offset, r.file_offset + r.size) {
            let at = (off - r.file_offset) as usize;
            file.read_exact_at(&mut bytes[at..at + n as usize], off)
                .map_err(io)?;
            read += n;
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn sparse_round_trip_keeps_holes_and_clears_stale_memory() {
        let dir = std::env::temp_dir().join(format!("vmm-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        let ranges = [(GuestAddress(0), 1 << 20), (GuestAddress(1 << 32), 1 << 20)];
        let mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
        mem.write_slice(b"low", GuestAddress(0x5000)).unwrap();
        mem.write_slice(b"high", GuestAddress((1 << 32) + 0xff000))
            .unwrap();
        let (info, stats) = save(&mem, &path).unwrap();
        assert_eq!(stats.data_bytes, 2 * PAGE as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 << 20);

        let fresh = GuestMemoryMmap::from_ranges(&ranges).unwrap();
        fresh.write_slice(b"stale", GuestAddress(0x9000)).unwrap();
        load(&fresh, &info, &path).unwrap();
        let mut b = [0u8; 5];
        fresh.read_slice(&mut b[..3], GuestAddress(0x5000)).unwrap();
        assert_eq!(&b[..3], b"low");
        fresh
            .read_slice(&mut b[..4], GuestAddress((1 << 32) + 0xff000))
            .unwrap();
        assert_eq!(&b[..4], b"high");
        fresh.read_slice(&mut b, GuestAddress(0x9000)).unwrap();
        assert_eq!(b, [0; 5], "a hole in the file reads as zero");

        let small = GuestMemoryMmap::from_ranges(&ranges[..1]).unwrap();
        assert!(matches!(
            load(&small, &info, &path),
            Err(SnapshotError::Mismatch(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
