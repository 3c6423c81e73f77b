//! virtio-blk: request parsing, a worker thread per device, and backends.
//!
//! Every guest-supplied value is checked before use: the header must be
//! readable and complete, the status byte writable, sectors and lengths
//! inside the disk, data lengths multiples of 512 for I/O. Descriptor
//! chains are walked by virtio-queue, which bounds a chain by the queue
//! size (no loops) and checks every address against guest memory.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, VirtioDevice, VirtioInterrupt, TYPE_BLOCK, VIRTIO_RING_F_EVENT_IDX};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use worker::{Completions, DriveContext, IoPool, QueueWorker};

pub mod backend;
mod direct;
mod worker;
pub use backend::{BlockBackend, FileBackend};

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Largest single request we accept (bounds the bounce buffer).
const MAX_REQUEST_BYTES: usize = 4 << 20;
const SERIAL_LEN: usize = 20;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

const WRITE_ZEROES_UNMAP: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct RequestHeader {
    kind: u32,
    _reserved: u32,
    sector: u64,
}
// SAFETY: plain integers, no padding (4 + 4 + 8), any bit pattern valid.
unsafe impl ByteValued for RequestHeader {}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct DiscardSegment {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}
// SAFETY: plain integers, no padding (8 + 4 + 4), any bit pattern valid.
unsafe impl ByteValued for DiscardSegment {}

/// How a drive is presented to the guest.
#[derive(Clone, Debug)]
pub struct BlockConfig {
    pub read_only: bool,
    /// Up to 20 bytes; shows as /dev/disk/by-id/virtio-<serial>.
    pub serial: String,
    pub num_queues: u16,
    pub rate_limiter: RateLimiterConfig,
}

pub struct Block {
    backend: Arc<dyn BlockBackend>,
    cfg: BlockConfig,
    acked: u64,
    /// Each worker hands its queue back when it stops.
    workers: Vec<(EventFd, JoinHandle<Queue>)>,
    /// The I/O threads the queues' workers hand requests to.
    pool: Option<Arc<IoPool>>,
}

impl Block {
    pub fn new(backend: Arc<dyn BlockBackend>, cfg: BlockConfig) -> Self {
        Self {
            backend,
            cfg: BlockConfig {
                num_queues: cfg.num_queues.clamp(1, 16),
                ..cfg
            },
            acked: 0,
            workers: Vec::new(),
            pool: None,
        }
    }

    fn config_space(&self) -> [u8; 0x3c] {
        let mut c = [0u8; 0x3c];
        let sectors = self.backend.size() / SECTOR_SIZE;
        c[0..8].copy_from_slice(&sectors.to_le_bytes());
        // seg_max: descriptors per request minus header and status.
        c[0x0c..0x10].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        c[0x14..0x18].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c[0x22..0x24].copy_from_slice(&self.cfg.num_queues.to_le_bytes());
        let max_sectors = (MAX_REQUEST_BYTES as u64 / SECTOR_SIZE) as u32;
        c[0x24..0x28].copy_from_slice(&max_sectors.to_le_bytes()); // max_discard_sectors
        c[0x28..0x2c].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        c[0x2c..0x30].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
        c[0x30..0x34].copy_from_slice(&max_sectors.to_le_bytes()); // max_write_zeroes_sectors
        c[0x34..0x38].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        c[0x38] = 1; // write_zeroes_may_unmap
        c
    }

    /// Stop the queue workers (each first waits for the requests it has
    /// in flight and publishes them) and collect their queues; then stop
    /// the I/O threads, which have nothing left to do.
    fn stop_workers(&mut self) -> Option<Vec<Queue>> {
        let mut queues = Vec::new();
        let mut all = true;
        for (stop, handle) in self.workers.drain(..) {
            let _ = stop.write(1);
            match handle.join() {
                Ok(q) => queues.push(q),
                Err(_) => {
                    log::error!("virtio-blk: worker panicked");
                    all = false;
                }
            }
        }
        // The workers held the other references.
        self.pool = None;
        all.then_some(queues)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; usize::from(self.cfg.num_queues)]
    }

    fn avail_features(&self) -> u64 {
        let mut f =
            F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_DISCARD | F_WRITE_ZEROES | VIRTIO_RING_F_EVENT_IDX;
        if self.cfg.num_queues > 1 {
            f |= F_MQ;
        }
        if self.cfg.read_only {
            f |= F_RO;
        }
        f
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_space();
        let at = offset as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = c.get(at + i).copied().unwrap_or(0);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        kicks: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if queues.is_empty() {
            return Err(ActivateError::Queues("no queue is ready".into()));
        }
        let limiter = Some(RateLimiter::new(&self.cfg.rate_limiter, Instant::now()))
            .filter(|l| !l.is_unlimited())
            .map(|l| Arc::new(Mutex::new(l)));
        let mem = Arc::new(mem);
        let pool = Arc::new(IoPool::new(DriveContext {
            backend: Arc::clone(&self.backend),
            read_only: self.cfg.read_only,
            serial: self.cfg.serial.clone(),
        }));
        self.pool = Some(Arc::clone(&pool));
        for (index, (queue, kick)) in queues.into_iter().zip(kicks).enumerate() {
            let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::Worker)?;
            let worker = QueueWorker {
                index: index as u16,
                queue,
                kick,
                stop: stop.try_clone().map_err(ActivateError::Worker)?,
                mem: Arc::clone(&mem),
                interrupt: Arc::clone(&interrupt),
                pool: Arc::clone(&pool),
                completions: Completions::new().map_err(ActivateError::Worker)?,
                limiter: limiter.clone(),
                blocked_until: None,
                in_flight: 0,
            };
            let handle = std::thread::Builder::new()
                .name(format!("blk-q{index}"))
                .spawn(move || worker.run())
                .map_err(ActivateError::Worker)?;
            self.workers.push((stop, handle));
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_workers();
    }

    fn pause(&mut self) -> Option<Vec<Queue>> {
        self.stop_workers()
    }
}

/// Why a request failed, as the guest will see it.
#[derive(Debug, PartialEq, Eq)]
enum RequestError {
    /// Malformed chain or out-of-range access.
    Invalid(String),
    Unsupported(u32),
    Io(String),
}

/// Serve one request chain: parse, execute, write the status byte.
/// Returns the number of bytes written into guest buffers (the used
/// length), 0 when the chain is too broken to carry a status.
fn handle_request<M>(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<M>,
    backend: &dyn BlockBackend,
    read_only: bool,
    serial: &str,
    buffer: &mut Vec<u8>,
) -> u32
where
    M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
{
    let chain_descriptors = chain.clone();
    let (mut reader, mut writer) = match (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
    {
        (Ok(r), Ok(w)) => (r, w),
        _ => {
            log::warn!("virtio-blk: descriptor chain outside guest memory");
            return 0;
        }
    };
    if writer.available_bytes() == 0 {
        log::warn!("virtio-blk: request without a status byte");
        return 0;
    }
    // File backends move data with preadv/pwritev on the guest's buffers.
    let descriptors: Vec<Descriptor> = match backend.as_file() {
        Some(_) => chain_descriptors.collect(),
        None => Vec::new(),
    };
    let direct = backend.as_file().map(|file| Direct {
        file,
        mem,
        descriptors: &descriptors,
    });
    // The status byte is the last writable byte.
    let status_at = writer.available_bytes() - 1;
    let mut status_writer = match writer.split_at(status_at) {
        Ok(s) => s,
        Err(_) => return 0,
    };
    let (status, data_written) = match execute(
        &mut reader,
        &mut writer,
        backend,
        read_only,
        serial,
        buffer,
        direct,
    ) {
        Ok(n) => (S_OK, n),
        Err(RequestError::Unsupported(t)) => {
            log::debug!("virtio-blk: unsupported request type {t}");
            (S_UNSUPP, 0)
        }
        Err(RequestError::Invalid(why)) => {
            log::warn!("virtio-blk: bad request: {why}");
            (S_IOERR, 0)
        }
        Err(RequestError::Io(why)) => {
            log::warn!("virtio-blk: I/O error: {why}");
            (S_IOERR, 0)
        }
    };
    if status_writer.write_all(&[status]).is_err() {
        return data_written as u32;
    }
    (data_written + 1) as u32
}

/// A file backend's request: its file and the chain's descriptors.
#[derive(Clone, Copy)]
struct Direct<'a> {
    file: &'a std::fs::File,
    mem: &'a GuestMemoryMmap,
    descriptors: &'a [Descriptor],
}

impl<'a> Direct<'a> {
    fn buffers(
        &self,
        writable: bool,
        skip: usize,
        len: usize,
    ) -> Result<direct::DataBuffers<'a>, RequestError> {
        direct::DataBuffers::new(self.mem, self.descriptors, writable, skip, len)
            .ok_or_else(|| RequestError::Invalid("data buffers outside guest memory".into()))
    }
}

fn check_range(sector: u64, len: u64, capacity: u64) -> Result<u64, RequestError> {
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or_else(|| RequestError::Invalid(format!("sector {sector} overflows")))?;
    let end = offset
        .checked_add(len)
        .ok_or_else(|| RequestError::Invalid("length overflows".into()))?;
    if end > capacity {
        return Err(RequestError::Invalid(format!(
            "access {offset:#x}+{len:#x} beyond the end of the disk ({capacity:#x})"
        )));
    }
    Ok(offset)
}

/// Parse and execute one request. Returns the bytes written to the
/// guest's data buffers (not counting the status byte).
fn execute<B: vm_memory::bitmap::BitmapSlice>(
    reader: &mut Reader<'_, B>,
    writer: &mut Writer<'_, B>,
    backend: &dyn BlockBackend,
    read_only: bool,
    serial: &str,
    buffer: &mut Vec<u8>,
    direct: Option<Direct<'_>>,
) -> Result<usize, RequestError> {
    let header: RequestHeader = reader
        .read_obj()
        .map_err(|_| RequestError::Invalid("header shorter than 16 bytes".into()))?;
    let capacity = backend.size();
    let io = |e: std::io::Error| RequestError::Io(e.to_string());
    match header.kind {
        T_IN => {
            let len = writer.available_bytes();
            if !len.is_multiple_of(SECTOR_SIZE as usize) || len > MAX_REQUEST_BYTES {
                return Err(RequestError::Invalid(format!("read of {len} bytes")));
            }
            let offset = check_range(header.sector, len as u64, capacity)?;
            if let Some(direct) = direct {
                direct
                    .buffers(true, 0, len)?
                    .read_from(direct.file, offset)
                    .map_err(io)?;
                return Ok(len);
            }
            buffer.resize(len, 0);
            backend.read_at(&mut buffer[..len], offset).map_err(io)?;
            writer
                .write_all(&buffer[..len])
                .map_err(|e| RequestError::Invalid(e.to_string()))?;
            Ok(len)
        }
        T_OUT => {
            if read_only {
                return Err(RequestError::Io("write to a read-only drive".into()));
            }
            let len = reader.available_bytes();
            if !len.is_multiple_of(SECTOR_SIZE as usize) || len > MAX_REQUEST_BYTES {
                return Err(RequestError::Invalid(format!("write of {len} bytes")));
            }
            let offset = check_range(header.sector, len as u64, capacity)?;
            if let Some(direct) = direct {
                let header_len = std::mem::size_of::<RequestHeader>();
                direct
                    .buffers(false, header_len, len)?
                    .write_to(direct.file, offset)
                    .map_err(io)?;
                return Ok(0);
            }
            buffer.resize(len, 0);
            reader
                .read_exact(&mut buffer[..len])
                .map_err(|e| RequestError::Invalid(e.to_string()))?;
            backend.write_at(&buffer[..len], offset).map_err(io)?;
            Ok(0)
        }
        T_FLUSH => {
            backend.flush().map_err(io)?;
            Ok(0)
        }
        T_GET_ID => {
            let mut id = [0u8; SERIAL_LEN];
            let s = serial.as_bytes();
            let n = s.len().min(SERIAL_LEN);
            id[..n].copy_from_slice(&s[..n]);
            let n = writer.available_bytes().min(SERIAL_LEN);
            writer
                .write_all(&id[..n])
                .map_err(|e| RequestError::Invalid(e.to_string()))?;
            Ok(n)
        }
        T_DISCARD | T_WRITE_ZEROES => {
            if read_only {
                return Err(RequestError::Io("discard on a read-only drive".into()));
            }
            if reader.available_bytes() < std::mem::size_of::<DiscardSegment>() {
                return Err(RequestError::Invalid("missing discard segment".into()));
            }
            // We announce one segment per request.
            let seg: DiscardSegment = reader
                .read_obj()
                .map_err(|e| RequestError::Invalid(e.to_string()))?;
            let len = u64::from(seg.num_sectors) * SECTOR_SIZE;
            let offset = check_range(seg.sector, len, capacity)?;
            if header.kind == T_DISCARD {
                backend.discard(offset, len).map_err(io)?;
            } else {
                backend
                    .write_zeroes(offset, len, seg.flags & WRITE_ZEROES_UNMAP != 0)
                    .map_err(io)?;
            }
            Ok(0)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Fuzzing entry point (built only with `--cfg fuzzing`, as cargo-fuzz
/// does): `data` becomes a queue's descriptor table, available ring and
/// guest memory contents; every available chain is served against an
/// in-memory disk.
#[cfg(fuzzing)]
pub fn fuzz_queue(data: &[u8]) {
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    struct Disk(std::sync::Mutex<Vec<u8>>);
    impl BlockBackend for Disk {
        fn size(&self) -> u64 {
            64 * 1024
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let d = self.0.lock().unwrap_or_else(|e| e.into_inner());
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            let mut d = self.0.lock().unwrap_or_else(|e| e.into_inner());
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
            let mut d = self.0.lock().unwrap_or_else(|e| e.into_inner());
            d[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }
    }
    const MEM: usize = 1 << 20;
    let Some((&size_sel, rest)) = data.split_first() else {
        return;
    };
    let size = 1u16 << (size_sel % 9); // 1..=256
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    // Everything the guest controls, laid over the start of its memory:
    // descriptor table at 0, available ring at 0x1000, used ring at 0x2000.
    let n = rest.len().min(MEM);
    if mem.write_slice(&rest[..n], GuestAddress(0)).is_err() {
        return;
    }
    let Ok(mut queue) = Queue::new(size) else {
        return;
    };
    queue.set_size(size);
    queue.set_desc_table_address(Some(0), Some(0));
    queue.set_avail_ring_address(Some(0x1000), Some(0));
    queue.set_used_ring_address(Some(0x2000), Some(0));
    queue.set_ready(true);
    if !queue.is_valid(&mem) {
        return;
    }
    let disk = Disk(std::sync::Mutex::new(vec![0; 64 * 1024]));
    let mut buffer = Vec::new();
    // The avail index is guest-controlled: bound the work per input.
    for _ in 0..512 {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        let used = handle_request(
            &mem,
            chain,
            &disk,
            size_sel & 0x80 != 0,
            "fuzz",
            &mut buffer,
        );
        let _ = queue.add_used(&mem, head, used);
    }
}

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod tests;
