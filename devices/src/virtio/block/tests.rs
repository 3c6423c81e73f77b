//! Request parsing against descriptor chains written into guest memory,
//! including malicious ones.

use std::sync::Mutex;

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

struct MemBackend(Mutex<Vec<u8>>);

impl BlockBackend for MemBackend {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let d = self.0.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> std::io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x10_1000;
const STATUS: u64 = 0x10_3000;
const DISK: usize = 64 * 1024;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
}

fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    mem.write_obj(
        RequestHeader {
            kind,
            _reserved: 0,
            sector,
        },
        GuestAddress(HDR),
    )
    .unwrap();
}

/// Run one chain through the request handler: (status byte, used length).
fn run(
    mem: &GuestMemoryMmap,
    descs: &[RawDescriptor],
    backend: &MemBackend,
    ro: bool,
) -> (u8, u32) {
    let vq = MockSplitQueue::new(mem, 16);
    let chain = vq.build_desc_chain(descs).unwrap();
    mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let used = handle_request(
        mem,
        chain,
        backend,
        ro,
        "vol0123456789abcdef0",
        &mut Vec::new(),
    );
    (mem.read_obj(GuestAddress(STATUS)).unwrap(), used)
}

fn disk() -> MemBackend {
    MemBackend(Mutex::new(vec![0u8; DISK]))
}

#[test]
fn write_then_read_round_trips() {
    let m = mem();
    let b = disk();
    header(&m, T_OUT, 3);
    m.write_slice(&[0xab; 1024], GuestAddress(DATA)).unwrap();
    let (st, used) = run(
        &m,
        &[
            desc(HDR, 16, false),
            desc(DATA, 1024, false),
            desc(STATUS, 1, true),
        ],
        &b,
        false,
    );
    assert_eq!((st, used), (S_OK, 1));
    assert!(b.0.lock().unwrap()[3 * 512..5 * 512]
        .iter()
        .all(|&x| x == 0xab));
    assert_eq!(b.0.lock().unwrap()[3 * 512 - 1], 0);

    m.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
    header(&m, T_IN, 3);
    let (st, used) = run(
        &m,
        &[
            desc(HDR, 16, false),
            desc(DATA, 1024, true),
            desc(STATUS, 1, true),
        ],
        &b,
        false,
    );
    assert_eq!((st, used), (S_OK, 1025));
    let mut back = [0u8; 1024];
    m.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert!(back.iter().all(|&x| x == 0xab));
}

#[test]
fn get_id_flush_discard_and_write_zeroes() {
    let m = mem();
    let b = disk();
    header(&m, T_GET_ID, 0);
    let (st, used) = run(
        &m,
        &[
            desc(HDR, 16, false),
            desc(DATA, 20, true),
            desc(STATUS, 1, true),
        ],
        &b,
        false,
    );
    assert_eq!((st, used), (S_OK, 21));
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"vol0123456789abcdef0");

    header(&m, T_FLUSH, 0);
    assert_eq!(
        run(
            &m,
            &[desc(HDR, 16, false), desc(STATUS, 1, true)],
            &b,
            false
        )
        .0,
        S_OK
    );

    b.0.lock().unwrap().fill(0x11);
    for kind in [T_DISCARD, T_WRITE_ZEROES] {
        header(&m, kind, 0);
        let seg = DiscardSegment {
            sector: if kind == T_DISCARD { 1 } else { 4 },
            num_sectors: 2,
            flags: 0,
        };
        m.write_obj(seg, GuestAddress(DATA)).unwrap();
        let (st, _) = run(
            &m,
            &[
                desc(HDR, 16, false),
                desc(DATA, 16, false),
                desc(STATUS, 1, true),
            ],
            &b,
            false,
        );
        assert_eq!(st, S_OK);
    }
    let d = b.0.lock().unwrap();
    assert!(d[512..3 * 512].iter().all(|&x| x == 0));
    assert!(d[4 * 512..6 * 512].iter().all(|&x| x == 0));
    assert_eq!(d[0], 0x11);
    assert_eq!(d[3 * 512], 0x11);
}

#[test]
fn out_of_range_and_malformed_requests_fail_without_touching_the_disk() {
    let m = mem();
    let b = disk();
    b.0.lock().unwrap().fill(0x5a);
    // Past the end of the disk.
    header(&m, T_OUT, (DISK as u64 / 512) - 1);
    let (st, _) = run(
        &m,
        &[
            desc(HDR, 16, false),
            desc(DATA, 1024, false),
            desc(STATUS, 1, true),
        ],
        &b,
        false,
    );
    assert_eq!(st, S_IOERR);
    // A sector number that overflows when turned into bytes.
    header(&m, T_IN, u64::MAX / 2);
    let (st, used) = run(
        &m,
        &[
            desc(HDR, 16, false),
            desc(DATA, 512, true),
            desc(STATUS, 1, true),
        ],
        &b,
        false,
    );
    assert_eq!((st, used), (S_IOERR, 1));
    // Data length not a multiple of 512.
    header(&m, T_OUT, 0);
    let (st, _) = run(
        &m,
        &[
            desc(HDR, 16, false),
            desc(DATA, 100, false),
            desc(STATUS, 1, true),
        ],
        &b,
        false,
    );
    assert_eq!(st, S_IOERR);
    // Header shorter than 16 bytes.
    let (st, _) = run(&m, &[desc(HDR, 8, false), desc(STATUS, 1, true)], &b, false);
    assert_eq!(st, S_IOERR);
    // Writes to a read-only drive.
    header(&m, T_OUT, 0);
    let (st, _) = run(
        &m,
        &[
            desc(HDR, 16, false),
            desc(DATA, 512, false),
            desc(STATUS, 1, true),
        ],
        &b,
        true,
    );
    assert_eq!(st, S_IOERR);
    // Unknown request type.
    header(&m, 77, 0);
    assert_eq!(
        run(
            &m,
            &[desc(HDR, 16, false), desc(STATUS, 1, true)],
            &b,
            false
        )
        .0,
        S_UNSUPP
    );
    assert!(
        b.0.lock().unwrap().iter().all(|&x| x == 0x5a),
        "disk untouched"
    );
}

#[test]
fn chains_without_status_or_outside_memory_are_dropped() {
    let m = mem();
    let b = disk();
    header(&m, T_OUT, 0);
    // No writable descriptor: no status can be reported.
    let (st, used) = run(
        &m,
        &[desc(HDR, 16, false), desc(DATA, 512, false)],
        &b,
        false,
    );
    assert_eq!((st, used), (0xee, 0));
    // A buffer beyond guest memory.
    let (st, used) = run(
        &m,
        &[
            desc(HDR, 16, false),
            desc(0x4000_0000, 512, false),
            desc(STATUS, 1, true),
        ],
        &b,
        false,
    );
    assert_eq!((st, used), (0xee, 0));
}

#[test]
fn a_descriptor_loop_terminates() {
    let m = mem();
    let b = disk();
    header(&m, T_IN, 0);
    let vq = MockSplitQueue::new(&m, 16);
    // Descriptor 1 points at itself with NEXT set: a cycle.
    let looping = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(SplitDescriptor::new(
            DATA,
            512,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            1,
        )),
    ];
    vq.add_desc_chains(&looping, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let chain = q.pop_descriptor_chain(&m).unwrap();
    // Bounded by the queue size: returns instead of spinning.
    let used = handle_request(&m, chain, &b, false, "x", &mut Vec::new());
    assert!(used <= 16 * 512 + 1);
}

/// Write `descs` as an indirect table at `table` (each `next` field indexes
/// the table, per the virtio spec) and return the one ring descriptor that
/// points at it.
fn indirect(m: &GuestMemoryMmap, table: u64, descs: &[(u64, u32, u16)]) -> RawDescriptor {
    for (i, &(addr, len, flags)) in descs.iter().enumerate() {
        let next = if flags & VRING_DESC_F_NEXT as u16 != 0 {
            i as u16 + 1
        } else {
            0
        };
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        m.write_obj(d, GuestAddress(table + 16 * i as u64)).unwrap();
    }
    RawDescriptor::from(SplitDescriptor::new(
        table,
        16 * descs.len() as u32,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ))
}

#[test]
fn requests_in_indirect_tables_are_served() {
    const TABLE: u64 = 0x18_0000;
    let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
    let m = mem();
    let b = disk();
    header(&m, T_OUT, 8);
    m.write_slice(&[0x3c; 2048], GuestAddress(DATA)).unwrap();
    // The data split over two descriptors, as a guest's scatter-gather list.
    let ring_desc = indirect(
        &m,
        TABLE,
        &[
            (HDR, 16, next),
            (DATA, 1024, next),
            (DATA + 1024, 1024, next),
            (STATUS, 1, write),
        ],
    );
    assert_eq!(run(&m, &[ring_desc], &b, false), (S_OK, 1));
    assert!(b.0.lock().unwrap()[8 * 512..12 * 512]
        .iter()
        .all(|&x| x == 0x3c));
}

#[test]
fn malformed_indirect_tables_are_dropped() {
    const TABLE: u64 = 0x18_0000;
    let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
    let m = mem();
    let b = disk();
    header(&m, T_OUT, 0);
    m.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    // An indirect descriptor inside an indirect table (forbidden by the spec).
    let nested = indirect(
        &m,
        TABLE,
        &[
            (HDR, 16, next),
            (TABLE, 32, next | VRING_DESC_F_INDIRECT as u16),
            (STATUS, 1, write),
        ],
    );
    assert_eq!(run(&m, &[nested], &b, false), (0xee, 0));
    // A table length that is not a whole number of descriptors.
    indirect(
        &m,
        TABLE,
        &[(HDR, 16, next), (DATA, 512, next), (STATUS, 1, write)],
    );
    let odd = RawDescriptor::from(SplitDescriptor::new(
        TABLE,
        40,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ));
    assert_eq!(run(&m, &[odd], &b, false), (0xee, 0));
    // A table beyond guest memory.
    let outside = RawDescriptor::from(SplitDescriptor::new(
        0x4000_0000,
        48,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ));
    assert_eq!(run(&m, &[outside], &b, false), (0xee, 0));
    assert!(
        b.0.lock().unwrap().iter().all(|&x| x == 0),
        "no malformed request reached the disk"
    );
}
