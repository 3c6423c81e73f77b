//! Descriptor chains as iovecs into guest memory, so frames move between
//! the tap and the guest with one copy (the kernel's) instead of two.
//!
//! Every descriptor is checked against guest memory (vm-memory's
//! `get_slice` fails for ranges outside it or across regions) and for its
//! direction; a chain that fails either check is not used for I/O.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

/// At most this many buffers per chain (a 64 KiB frame in 4 KiB pages is
/// 17; the queue size bounds chains anyway).
const MAX_IOVECS: usize = 64;

/// A chain's buffers, resolved to host memory.
pub struct GuestIovecs<'a> {
    slices: Vec<VolatileSlice<'a>>,
    iovecs: Vec<libc::iovec>,
    len: usize,
}

// SAFETY: the iovecs point into guest memory borrowed for 'a (kept alive by
// `slices`); they are only handed to the kernel by the thread that owns
// this value.
unsafe impl Send for GuestIovecs<'_> {}

impl<'a> GuestIovecs<'a> {
    /// The chain's buffers if all of them are inside guest memory and of
    /// the wanted direction (`writable`: device-writable, for RX).
    pub fn from_chain<I>(mem: &'a GuestMemoryMmap, chain: I, writable: bool) -> Option<Self>
    where
        I: Iterator<Item = Descriptor>,
    {
        let mut out = Self {
            slices: Vec::new(),
            iovecs: Vec::new(),
            len: 0,
        };
        for d in chain {
            if d.is_write_only() != writable || out.slices.len() == MAX_IOVECS {
                return None;
            }
            if d.len() == 0 {
                continue;
            }
            let slice = mem.get_slice(d.addr(), d.len() as usize).ok()?;
            out.iovecs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
            out.len += slice.len();
            out.slices.push(slice);
        }
        Some(out)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn as_iovecs(&self) -> &[libc::iovec] {
        &self.iovecs
    }

    /// Copy bytes from offset 0 into `buf` (as many as fit); returns how many.
    pub fn read_prefix(&self, buf: &mut [u8]) -> usize {
        let mut done = 0;
        for s in &self.slices {
            if done == buf.len() {
                break;
            }
            let n = s.len().min(buf.len() - done);
            if let Ok(sub) = s.subslice(0, n) {
                sub.copy_to(&mut buf[done..done + n]);
            }
            done += n;
        }
        done
    }

    /// Write `data` at byte `offset` of the chain (spanning buffers).
    pub fn write_at(&self, mut offset: usize, mut data: &[u8]) {
        for s in &self.slices {
            if data.is_empty() {
                return;
            }
            if offset >= s.len() {
                offset -= s.len();
                continue;
            }
            let n = (s.len() - offset).min(data.len());
            if let Ok(sub) = s.subslice(offset, n) {
                sub.copy_from(&data[..n]);
            }
            data = &data[n..];
            offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestAddress};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x2_0000), 0x1_0000),
        ])
        .unwrap()
    }

    fn d(addr: u64, len: u32, write: bool) -> Descriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        Descriptor::new(addr, len, flags, 0)
    }

    #[test]
    fn resolves_buffers_and_reads_and_writes_across_them() {
        let m = mem();
        m.write_slice(b"hello", GuestAddress(0x100)).unwrap();
        m.write_slice(b" world", GuestAddress(0x2_0000)).unwrap();
        let iov = GuestIovecs::from_chain(
            &m,
            [d(0x100, 5, false), d(0x2_0000, 6, false)].into_iter(),
            false,
        )
        .expect("valid chain");
        assert_eq!(iov.len(), 11);
        assert_eq!(iov.as_iovecs().len(), 2);
        let mut buf = [0u8; 32];
        assert_eq!(iov.read_prefix(&mut buf), 11);
        assert_eq!(&buf[..11], b"hello world");
        let mut short = [0u8; 7];
        assert_eq!(iov.read_prefix(&mut short), 7);
        assert_eq!(&short, b"hello w");

        iov.write_at(3, b"XXXX");
        let mut a = [0u8; 5];
        let mut b = [0u8; 6];
        m.read_slice(&mut a, GuestAddress(0x100)).unwrap();
        m.read_slice(&mut b, GuestAddress(0x2_0000)).unwrap();
        assert_eq!((&a, &b), (b"helXX", b"XXorld"));
    }

    #[test]
    fn refuses_wrong_direction_and_memory_outside_the_guest() {
        let m = mem();
        // A device-writable buffer in a TX chain.
        assert!(GuestIovecs::from_chain(&m, [d(0x100, 5, true)].into_iter(), false).is_none());
        // A read-only buffer in an RX chain.
        assert!(GuestIovecs::from_chain(&m, [d(0x100, 5, false)].into_iter(), true).is_none());
        // Past the end of memory, in the hole, and across two regions.
        for (addr, len) in [(0x3_0000, 16), (0x1_8000, 16), (0xfff0, 0x20)] {
            assert!(
                GuestIovecs::from_chain(&m, [d(addr, len, false)].into_iter(), false).is_none(),
                "{addr:#x}+{len:#x}"
            );
        }
        // Too many buffers.
        let many = (0..=MAX_IOVECS as u64).map(|i| d(i * 16, 16, false));
        assert!(GuestIovecs::from_chain(&m, many, false).is_none());
    }
}
