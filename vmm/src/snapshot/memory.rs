//! Guest memory to and from the memory file, sparsely.
//!
//! The file holds the guest's RAM regions back to back (their guest
//! addresses are recorded in the snapshot). Pages that are all zero are
//! not written: the file is sized first, so they stay holes and cost no
//! disk space. Restore maps the file privately as the new VM's memory
//! (MAP_PRIVATE, as Firecracker does): pages come in lazily as the guest
//! touches them, so restore time does not grow with memory size, and the
//! guest's writes never reach the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use vm_memory::mmap::MmapRegionBuilder;

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

/// Guest memory for a restore: the memory file mapped privately, region by
/// region. Nothing is read up front: the guest faults pages in from the
/// file as it touches them (holes read as zero), and its writes go to
/// private copies, never to the file. The file must stay as it is (it may
/// be unlinked or renamed over, not truncated or rewritten in place) while
/// the VM runs. `mem_bytes` is the configured memory size, whose layout
/// the snapshot's must be.
pub fn map(
    info: &MemoryInfo,
    mem_bytes: u64,
    path: &Path,
) -> Result<GuestMemoryMmap, SnapshotError> {
    let mut offset = 0;
    let expected: Vec<RegionInfo> = crate::arch::layout::ram_ranges(mem_bytes)
        .into_iter()
        .map(|(guest_addr, size)| {
            let r = RegionInfo {
                guest_addr,
                size,
                file_offset: offset,
            };
            offset += size;
            r
        })
        .collect();
    if info.regions != expected || info.file_size != offset {
        return Err(SnapshotError::Mismatch(format!(
            "guest memory layout differs: {} bytes in {} region(s) in the snapshot, {offset} bytes in {} here",
            info.file_size,
            info.regions.len(),
            expected.len()
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
    let mut regions = Vec::with_capacity(info.regions.len());
    for r in &info.regions {
        let size = usize::try_from(r.size).map_err(|_| SnapshotError::Invalid {
            what: "guest memory".into(),
            reason: "region larger than the address space".into(),
        })?;
        let fo = FileOffset::new(file.try_clone().map_err(io)?, r.file_offset);
        let mapping = MmapRegionBuilder::new(size)
            .with_file_offset(fo)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::Invalid {
                what: format!("mapping {}", path.display()),
                reason: e.to_string(),
            })?;
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr)).ok_or_else(|| {
                SnapshotError::Invalid {
                    what: "guest memory".into(),
                    reason: format!("region at {:#x} overflows", r.guest_addr),
                }
            })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| SnapshotError::Invalid {
        what: "guest memory".into(),
        reason: e.to_string(),
    })
}

/// Bytes of the memory file that hold data (allocated blocks).
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn sparse_file_maps_back_privately() {
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
        assert!(allocated_bytes(&path) < 1 << 20, "zero pages are holes");

        // The layout ram_ranges gives for 2 MiB is one region: refused.
        let e = map(&info, 2 << 20, &path).unwrap_err();
        assert!(matches!(e, SnapshotError::Mismatch(_)), "{e}");
        // A layout that matches (one region of the file's size).
        let one = MemoryInfo {
            regions: vec![RegionInfo {
                guest_addr: 0,
                size: 2 << 20,
                file_offset: 0,
            }],
            file_size: 2 << 20,
        };
        let back = map(&one, 2 << 20, &path).unwrap();
        let mut b = [0u8; 4];
        back.read_slice(&mut b[..3], GuestAddress(0x5000)).unwrap();
        assert_eq!(&b[..3], b"low");
        back.read_slice(&mut b, GuestAddress((1 << 20) + 0xff000))
            .unwrap();
        assert_eq!(&b, b"high");
        back.read_slice(&mut b, GuestAddress(0x9000)).unwrap();
        assert_eq!(b, [0; 4], "a hole reads as zero");
        // Guest writes stay private.
        back.write_slice(b"new!", GuestAddress(0x5000)).unwrap();
        let file = std::fs::read(&path).unwrap();
        assert_eq!(&file[0x5000..0x5003], b"low");
        let short = dir.join("short");
        std::fs::write(&short, [0u8; 4096]).unwrap();
        assert!(matches!(
            map(&one, 2 << 20, &short),
            Err(SnapshotError::Mismatch(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
