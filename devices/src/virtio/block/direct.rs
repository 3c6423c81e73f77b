//! Reads and writes between a file backend and guest memory with one copy: preadv /
//! pwritev straight on the request's data buffers, instead of through a bounce
//! buffer (the kernel's copy is then the only one, as with QEMU's `aio=threads`).
//!
//! The data buffers are what virtio-queue's Reader and Writer would use: for a read,
//! the device-writable descriptors in chain order minus the last byte (the status);
//! for a write, the driver-readable descriptors minus the 16-byte header in front.
//! Every buffer is resolved through vm-memory (`get_slice` refuses ranges outside
//! guest memory or across regions), so the kernel is only given guest RAM.

use std::fs::File;
use std::os::fd::AsRawFd;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

/// At most this many buffers per request: IOV_MAX is 1024, and the queue size
/// (256) bounds a chain anyway.
const MAX_IOVECS: usize = 1024;

/// A request's data buffers in guest memory.
pub struct DataBuffers<'a> {
    // Keeps the guest memory borrowed while the kernel uses the iovecs.
    _slices: Vec<VolatileSlice<'a>>,
    iovecs: Vec<libc::iovec>,
    len: usize,
}

impl<'a> DataBuffers<'a> {
    /// The `len` bytes of the `writable` (or readable) descriptors that follow the
    /// first `skip` bytes; None when they are not all in guest memory or the
    /// descriptors hold fewer bytes.
    pub fn new(
        mem: &'a GuestMemoryMmap,
        descriptors: &[Descriptor],
        writable: bool,
        mut skip: usize,
        len: usize,
    ) -> Option<Self> {
        let mut out = Self {
            _slices: Vec::new(),
            iovecs: Vec::new(),
            len: 0,
        };
        for d in descriptors.iter().filter(|d| d.is_write_only() == writable) {
            if out.len == len {
                break;
            }
            let mut start = d.len() as usize;
            if skip >= start {
                skip -= start;
                continue;
            }
            start = skip;
            skip = 0;
            let take = (d.len() as usize - start).min(len - out.len);
            let addr = d.addr().0.checked_add(start as u64)?;
            let slice = mem.get_slice(vm_memory::GuestAddress(addr), take).ok()?;
            if out.iovecs.len() == MAX_IOVECS {
                return None;
            }
            out.iovecs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
            out.len += slice.len();
            out._slices.push(slice);
        }
        (out.len == len).then_some(out)
    }

    /// Fill the buffers from `file` at `offset` (short reads continue; end of file
    /// is an error: the device checked the range against the disk's size).
    pub fn read_from(&mut self, file: &File, offset: u64) -> std::io::Result<()> {
        self.transfer(file, offset, true)
    }

    /// Write the buffers to `file` at `offset`.
    pub fn write_to(&mut self, file: &File, offset: u64) -> std::io::Result<()> {
        self.transfer(file, offset, false)
    }

    fn transfer(&mut self, file: &File, mut offset: u64, read: bool) -> std::io::Result<()> {
        let mut first = 0;
        while first < self.iovecs.len() {
            let iov = &self.iovecs[first..];
            let count = iov.len() as libc::c_int;
            let at = offset as libc::off_t;
            // SAFETY: every iovec points into guest memory borrowed by `_slices` for
            // 'a and is as long as its slice; the kernel reads or writes only those
            // bytes of a descriptor we own.
            let n = unsafe {
                if read {
                    libc::preadv(file.as_raw_fd(), iov.as_ptr(), count, at)
                } else {
                    libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count, at)
                }
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} at {offset:#x}: no progress",
                        if read { "read" } else { "write" }
                    ),
                ));
            }
            let mut done = n as usize;
            offset += done as u64;
            // Drop what was transferred from the front of the iovecs.
            while done > 0 && first < self.iovecs.len() {
                let v = &mut self.iovecs[first];
                if done >= v.iov_len {
                    done -= v.iov_len;
                    first += 1;
                } else {
                    // SAFETY: advancing inside the same buffer by less than its length.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(done) }.cast();
                    v.iov_len -= done;
                    done = 0;
                }
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn segments(&self) -> usize {
        self.iovecs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestAddress};

    fn d(addr: u64, len: u32, write: bool) -> Descriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        Descriptor::new(addr, len, flags, 0)
    }

    #[test]
    fn buffers_skip_the_header_and_stop_before_the_status() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        // A read request: header, two data buffers, status.
        let descs = [
            d(0x100, 16, false),
            d(0x1000, 512, true),
            d(0x2000, 1024, true),
            d(0x3000, 1, true),
        ];
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        let mut bufs = DataBuffers::new(&m, &descs, true, 0, 1536).unwrap();
        assert_eq!(bufs.segments(), 2);
        m.write_obj(0xeeu8, GuestAddress(0x3000)).unwrap();
        bufs.read_from(&file, 512).unwrap();
        let mut got = vec![0u8; 1536];
        m.read_slice(&mut got[..512], GuestAddress(0x1000)).unwrap();
        m.read_slice(&mut got[512..], GuestAddress(0x2000)).unwrap();
        assert_eq!(got, data[512..2048]);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0xee);

        // A write request whose header shares its descriptor with the data.
        m.write_slice(&[7u8; 512], GuestAddress(0x4010)).unwrap();
        let descs = [d(0x4000, 16 + 512, false), d(0x5000, 1, true)];
        let mut bufs = DataBuffers::new(&m, &descs, false, 16, 512).unwrap();
        bufs.write_to(&file, 0).unwrap();
        let mut back = vec![0u8; 512];
        file.rewind().unwrap();
        file.read_exact(&mut back).unwrap();
        assert_eq!(back, vec![7u8; 512]);
    }

    #[test]
    fn buffers_outside_memory_or_too_short_are_refused() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let outside = [
            d(0x100, 16, false),
            d(0xff00, 512, true),
            d(0x3000, 1, true),
        ];
        assert!(DataBuffers::new(&m, &outside, true, 0, 512).is_none());
        let short = [
            d(0x100, 16, false),
            d(0x1000, 256, true),
            d(0x3000, 1, true),
        ];
        assert!(DataBuffers::new(&m, &short, true, 0, 512).is_none());
        let wrapping = [d(u64::MAX - 8, 16, false), d(0x3000, 1, true)];
        assert!(DataBuffers::new(&m, &wrapping, false, 12, 4).is_none());
    }

    #[test]
    fn reading_past_the_end_of_the_file_is_an_error_not_a_hang() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let file = tempfile::tempfile().unwrap();
        let descs = [d(0x1000, 512, true), d(0x3000, 1, true)];
        let mut bufs = DataBuffers::new(&m, &descs, true, 0, 512).unwrap();
        assert!(bufs.read_from(&file, 0).is_err());
    }
}
