//! The whole device on its threads: a queue in guest memory, a kick, the
//! used ring and the interrupt, against backends that make requests wait
//! for each other. These show that requests are served concurrently, that
//! a slow request does not hold back the completions behind it, and that
//! pausing waits for everything in flight.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::rate_limiter::RateLimiterConfig;

const DISK: usize = 256 * 1024;
const QSIZE: u16 = 256;
const REQUESTS: u64 = 0x10_0000;
const WAIT: Duration = Duration::from_secs(10);

/// A disk whose reads can be made to wait: reads of `gated_sector` until
/// the gate opens, and every read until `rendezvous` reads are inside the
/// backend at once (or `WAIT` passes, so a serial device fails the test
/// instead of hanging it).
struct TestDisk {
    data: Vec<u8>,
    gated_sector: Option<u64>,
    rendezvous: usize,
    state: Mutex<DiskState>,
    changed: Condvar,
}

#[derive(Default)]
struct DiskState {
    gate_open: bool,
    inside: usize,
    arrived: usize,
    max_inside: usize,
}

impl TestDisk {
    fn new(gated_sector: Option<u64>, rendezvous: usize) -> Self {
        Self {
            data: (0..DISK).map(|i| (i / 512) as u8).collect(),
            gated_sector,
            rendezvous,
            state: Mutex::new(DiskState::default()),
            changed: Condvar::new(),
        }
    }

    fn open_gate(&self) {
        self.state.lock().unwrap().gate_open = true;
        self.changed.notify_all();
    }

    fn max_inside(&self) -> usize {
        self.state.lock().unwrap().max_inside
    }
}

impl BlockBackend for TestDisk {
    fn size(&self) -> u64 {
        DISK as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let deadline = Instant::now() + WAIT;
        let mut state = self.state.lock().unwrap();
        state.inside += 1;
        state.arrived += 1;
        state.max_inside = state.max_inside.max(state.inside);
        self.changed.notify_all();
        let gated = self.gated_sector == Some(offset / 512);
        while (gated && !state.gate_open) || state.arrived < self.rendezvous {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
        state.inside -= 1;
        drop(state);
        let at = offset as usize;
        buf.copy_from_slice(&self.data[at..at + buf.len()]);
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> std::io::Result<()> {
        Ok(())
    }
}

/// Request `i` lives at REQUESTS + i * 0x1000: header, 512-byte buffer at
/// +0x200, status byte at +0x400.
fn request_base(i: u64) -> u64 {
    REQUESTS + i * 0x1000
}

struct Harness {
    mem: GuestMemoryMmap,
    used_addr: GuestAddress,
    block: Block,
    kick: EventFd,
}

impl Harness {
    /// A one-queue device serving `sectors.len()` reads (request i reads
    /// sector sectors[i]), already on the available ring.
    fn start(disk: Arc<TestDisk>, sectors: &[u64]) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let mut descs = Vec::new();
        for (i, &sector) in sectors.iter().enumerate() {
            let base = request_base(i as u64);
            mem.write_obj(
                RequestHeader {
                    kind: T_IN,
                    _reserved: 0,
                    sector,
                },
                GuestAddress(base),
            )
            .unwrap();
            mem.write_obj(0xeeu8, GuestAddress(base + 0x400)).unwrap();
            let first = (i * 3) as u16;
            let next = VRING_DESC_F_NEXT as u16;
            let write = VRING_DESC_F_WRITE as u16;
            for (addr, len, flags, to) in [
                (base, 16, next, first + 1),
                (base + 0x200, 512, next | write, first + 2),
                (base + 0x400, 1, write, 0),
            ] {
                descs.push(RawDescriptor::from(SplitDescriptor::new(
                    addr, len, flags, to,
                )));
            }
        }
        vq.add_desc_chains(&descs, 0).unwrap();
        let queue: Queue = vq.create_queue().unwrap();
        let used_addr = vq.used_addr();
        let mut block = Block::new(
            disk,
            BlockConfig {
                read_only: false,
                serial: "vol-test".into(),
                num_queues: 1,
                rate_limiter: RateLimiterConfig::default(),
            },
        );
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let intx = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::for_tests(intx));
        block
            .activate(
                mem.clone(),
                interrupt,
                vec![queue],
                vec![kick.try_clone().unwrap()],
            )
            .unwrap();
        kick.write(1).unwrap();
        Self {
            mem,
            used_addr,
            block,
            kick,
        }
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(self.used_addr.unchecked_add(2)).unwrap()
    }

    /// Descriptor heads on the used ring, in completion order.
    fn used_heads(&self) -> Vec<u16> {
        (0..u64::from(self.used_idx()))
            .map(|i| {
                let entry = self.used_addr.unchecked_add(4 + 8 * i);
                self.mem.read_obj::<u32>(entry).unwrap() as u16
            })
            .collect()
    }

    fn wait_for_used(&self, count: u16) -> bool {
        let deadline = Instant::now() + WAIT;
        while self.used_idx() < count {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Request i completed OK with sector sectors[i]'s data.
    fn assert_read(&self, i: u64, sector: u64) {
        let base = request_base(i);
        let status: u8 = self.mem.read_obj(GuestAddress(base + 0x400)).unwrap();
        assert_eq!(status, S_OK, "request {i}");
        let mut data = [0u8; 512];
        self.mem
            .read_slice(&mut data, GuestAddress(base + 0x200))
            .unwrap();
        assert!(data.iter().all(|&b| b == sector as u8), "request {i}");
    }
}

#[test]
fn requests_are_served_concurrently() {
    const N: usize = 12;
    let disk = Arc::new(TestDisk::new(None, N));
    let sectors: Vec<u64> = (0..N as u64).map(|i| i * 3).collect();
    let h = Harness::start(Arc::clone(&disk), &sectors);
    assert!(h.wait_for_used(N as u16), "not all requests completed");
    // A device serving one request at a time sees each read wait out its
    // timeout alone; here all of them met inside the backend.
    assert_eq!(disk.max_inside(), N);
    for (i, &sector) in sectors.iter().enumerate() {
        h.assert_read(i as u64, sector);
    }
    let pool_threads = h.block.pool.as_ref().map(|p| p.threads()).unwrap_or(0);
    assert!((N..=worker::MAX_IO_THREADS).contains(&pool_threads));
}

#[test]
fn a_slow_request_does_not_hold_back_later_completions() {
    // Request 0 reads the gated sector; requests 1..=3 are quick.
    let disk = Arc::new(TestDisk::new(Some(40), 0));
    let h = Harness::start(Arc::clone(&disk), &[40, 1, 2, 3]);
    assert!(h.wait_for_used(3), "quick requests waited for the slow one");
    let heads = h.used_heads();
    assert_eq!(heads.len(), 3);
    assert!(
        !heads.contains(&0),
        "the gated request completed: {heads:?}"
    );
    for i in 1..=3 {
        h.assert_read(i, i);
    }
    disk.open_gate();
    assert!(h.wait_for_used(4));
    assert_eq!(h.used_heads()[3], 0);
    h.assert_read(0, 40);
}

#[test]
fn pause_waits_for_requests_in_flight_and_publishes_them() {
    let disk = Arc::new(TestDisk::new(Some(7), 0));
    let mut h = Harness::start(Arc::clone(&disk), &[1, 7, 2]);
    assert!(h.wait_for_used(2));
    let opener = {
        let disk = Arc::clone(&disk);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            disk.open_gate();
        })
    };
    let queues = h.block.pause().expect("block devices can pause");
    // Pause returned only after the gated read finished and was published.
    assert_eq!(h.used_idx(), 3);
    opener.join().unwrap();
    h.assert_read(1, 7);
    assert_eq!(queues.len(), 1);
    assert_eq!(queues[0].next_used(), 3);
    assert_eq!(queues[0].next_avail(), 3);
    // A kick after the pause changes nothing: no worker is left.
    h.kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(h.used_idx(), 3);
}
