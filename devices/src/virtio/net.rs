//! virtio-net on a tap device, with a hook on the guest's path for frames
//! the VMM answers itself (the metadata service at 169.254.169.254, DHCP).
//!
//! One worker thread per device polls the tap, both queues' kicks and the
//! hook's timers. TX: a chain is `virtio_net_hdr_v1` + frame; it goes to
//! the tap as is (header included, so checksum and TSO offloads reach the
//! host stack) unless the hook claims the frame. RX: frames from the hook
//! or the tap are copied into the guest's receive buffers; when the guest
//! has none posted, the tap stops being polled until it posts more.

mod iov;
pub mod tap;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateError, InterruptKind, VirtioDevice, VirtioInterrupt, TYPE_NET, VIRTIO_RING_F_EVENT_IDX,
};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use iov::GuestIovecs;
pub use tap::{Tap, VNET_HDR_LEN};

const QUEUE_SIZE: u16 = 256;
/// Largest frame plus header we move (64 KiB TSO frame + header).
const MAX_FRAME: usize = 65_562;

const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MTU: u64 = 1 << 3;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_GUEST_ECN: u64 = 1 << 9;
const F_MAC: u64 = 1 << 5;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_HOST_ECN: u64 = 1 << 13;
const F_STATUS: u64 = 1 << 16;

const HDR_F_NEEDS_CSUM: u8 = 1;
const LINK_UP: u16 = 1;

/// Frames the VMM answers itself, on the guest's side of the tap.
pub trait FrameHook: Send {
    /// Whether a guest frame starting with `head` (its first bytes from
    /// the Ethernet header on, up to 64) may be for the hook. Frames it
    /// cannot claim go to the tap straight from guest memory, without the
    /// copy and checksum completion `guest_sent` needs.
    fn may_claim(&self, _head: &[u8]) -> bool {
        true
    }
    /// A frame the guest sent. True: consumed (it does not go to the tap).
    fn guest_sent(&mut self, frame: &[u8], now: Instant) -> bool;
    /// Next frame for the guest, if any.
    fn poll_to_guest(&mut self, now: Instant) -> Option<Vec<u8>>;
    /// When the hook next needs to run (retransmissions, timeouts).
    fn poll_at(&mut self, now: Instant) -> Option<Instant>;
}

#[derive(Clone, Debug)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub mtu: Option<u16>,
    /// Frames from the host to the guest.
    pub rx_rate_limiter: RateLimiterConfig,
    /// Frames from the guest to the host (frames the VMM answers itself
    /// are not charged).
    pub tx_rate_limiter: RateLimiterConfig,
}

pub struct Net {
    tap: Option<Tap>,
    cfg: NetConfig,
    hook: Option<Box<dyn FrameHook>>,
    acked: u64,
    worker: Option<(EventFd, JoinHandle<WorkerParts>)>,
}

/// What a stopped worker hands back, for the next activation: the tap, the
/// hook, and the RX and TX queues with their positions.
type WorkerParts = (Tap, Option<Box<dyn FrameHook>>, Queue, Queue);

impl Net {
    pub fn new(tap: Tap, cfg: NetConfig, hook: Option<Box<dyn FrameHook>>) -> Self {
        Self {
            tap: Some(tap),
            cfg,
            hook,
            acked: 0,
            worker: None,
        }
    }

    fn config_space(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0..6].copy_from_slice(&self.cfg.mac);
        c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.cfg.mtu.unwrap_or(1500).to_le_bytes());
        c
    }

    /// Stop the worker; returns its (RX, TX) queues. A frame it held for
    /// a receive buffer is dropped, as a NIC drops one on a full ring.
    fn stop_worker(&mut self) -> Option<Vec<Queue>> {
        let (stop, handle) = self.worker.take()?;
        let _ = stop.write(1);
        match handle.join() {
            // Keep the tap (and hook) for the next activation.
            Ok((tap, hook, rx, tx)) => {
                self.tap = Some(tap);
                self.hook = hook;
                Some(vec![rx, tx])
            }
            Err(_) => {
                log::error!("virtio-net: worker panicked");
                None
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2]
    }

    fn avail_features(&self) -> u64 {
        let mut f = F_CSUM
            | F_GUEST_CSUM
            | F_MAC
            | F_STATUS
            | F_HOST_TSO4
            | F_HOST_TSO6
            | F_HOST_ECN
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_GUEST_ECN
            | VIRTIO_RING_F_EVENT_IDX;
        if self.cfg.mtu.is_some() {
            f |= F_MTU;
        }
        f
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_space();
        for (i, b) in data.iter_mut().enumerate() {
            *b = c.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        mut queues: Vec<Queue>,
        mut kicks: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 2 || kicks.len() != 2 {
            return Err(ActivateError::Queues(
                "virtio-net needs its RX and TX queues ready".into(),
            ));
        }
        let tap = self
            .tap
            .take()
            .ok_or_else(|| ActivateError::Queues("tap already in use".into()))?;
        // The tap may hand us what the guest said it takes: partial
        // checksums, and then TCP segments up to 64 KiB (GSO), which the
        // guest's driver receives into "big packet" buffers (one chain of
        // 64 KiB; without mergeable buffers every frame fits one chain).
        let offload = tap_offload(self.acked);
        if let Err(e) = tap.set_offload(offload) {
            log::warn!("virtio-net: TUNSETOFFLOAD: {e}");
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let (tx_queue, rx_queue) = (queues.remove(1), queues.remove(0));
        let (tx_kick, rx_kick) = (kicks.remove(1), kicks.remove(0));
        let worker = NetWorker {
            mem,
            interrupt,
            rx: rx_queue,
            tx: tx_queue,
            rx_kick,
            tx_kick,
            stop: stop.try_clone().map_err(ActivateError::Worker)?,
            tap,
            hook: self.hook.take(),
            pending: None,
            buf: vec![0u8; MAX_FRAME],
            tap_polled: true,
            rx_limiter: RateLimiter::new(&self.cfg.rx_rate_limiter, Instant::now()),
            tx_limiter: RateLimiter::new(&self.cfg.tx_rate_limiter, Instant::now()),
            rx_blocked_until: None,
            tx_blocked_until: None,
        };
        let handle = std::thread::Builder::new()
            .name("net".into())
            .spawn(move || worker.run())
            .map_err(ActivateError::Worker)?;
        self.worker = Some((stop, handle));
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }

    fn pause(&mut self) -> Option<Vec<Queue>> {
        self.stop_worker()
    }
}

const TOKEN_TAP: u64 = 1;
const TOKEN_RX_KICK: u64 = 2;
const TOKEN_TX_KICK: u64 = 3;
const TOKEN_STOP: u64 = 4;

struct NetWorker {
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    stop: EventFd,
    tap: Tap,
    hook: Option<Box<dyn FrameHook>>,
    /// A frame (with vnet header) waiting for a guest receive buffer.
    pending: Option<Vec<u8>>,
    buf: Vec<u8>,
    tap_polled: bool,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    /// While throttled: when to try again.
    rx_blocked_until: Option<Instant>,
    tx_blocked_until: Option<Instant>,
}

/// Complete a partial checksum (NEEDS_CSUM) in software, for frames the
/// VMM consumes itself instead of the host stack.
/// TUNSETOFFLOAD flags for the features the guest acked.
fn tap_offload(acked: u64) -> u32 {
    if acked & F_GUEST_CSUM == 0 {
        // Without checksum offload the tap must not hand over GSO frames.
        return 0;
    }
    let mut flags = tap::TUN_F_CSUM;
    if acked & F_GUEST_TSO4 != 0 {
        flags |= tap::TUN_F_TSO4;
    }
    if acked & F_GUEST_TSO6 != 0 {
        flags |= tap::TUN_F_TSO6;
    }
    if acked & F_GUEST_ECN != 0 && flags & (tap::TUN_F_TSO4 | tap::TUN_F_TSO6) != 0 {
        flags |= tap::TUN_F_TSO_ECN;
    }
    flags
}

pub fn complete_checksum(hdr: &[u8], frame: &mut [u8]) {
    if hdr.first().copied().unwrap_or(0) & HDR_F_NEEDS_CSUM == 0 || hdr.len() < 10 {
        return;
    }
    let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
    let offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
    let at = start + offset;
    if start >= frame.len() || at + 2 > frame.len() {
        return;
    }
    let mut sum: u32 = 0;
    for chunk in frame[start..].chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    frame[at..at + 2].copy_from_slice(&csum.to_be_bytes());
}

impl NetWorker {
    fn run(mut self) -> WorkerParts {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtio-net: {e}");
                return (self.tap, self.hook, self.rx, self.tx);
            }
        };
        for (fd, token) in [
            (self.tap.as_raw_fd(), TOKEN_TAP),
            (self.rx_kick.as_raw_fd(), TOKEN_RX_KICK),
            (self.tx_kick.as_raw_fd(), TOKEN_TX_KICK),
            (self.stop.as_raw_fd(), TOKEN_STOP),
        ] {
            if let Err(e) = epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            ) {
                log::error!("virtio-net: {e}");
                return (self.tap, self.hook, self.rx, self.tx);
            }
        }
        let mut events = [EpollEvent::default(); 4];
        self.process_tx();
        self.process_rx(&epoll);
        loop {
            let now = Instant::now();
            let wake = [
                self.hook.as_mut().and_then(|h| h.poll_at(now)),
                self.rx_blocked_until,
                self.tx_blocked_until,
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = wake
                .map(|t| t.saturating_duration_since(now).as_millis().clamp(1, 1000) as i32)
                .unwrap_or(-1);
            let n = match epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-net: {e}");
                    return (self.tap, self.hook, self.rx, self.tx);
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return (self.tap, self.hook, self.rx, self.tx),
                    TOKEN_TX_KICK => {
                        let _ = self.tx_kick.read();
                        if self.tx_blocked_until.is_none() {
                            self.process_tx();
                        }
                    }
                    TOKEN_RX_KICK => {
                        let _ = self.rx_kick.read();
                    }
                    _ => {}
                }
            }
            if self.tx_blocked_until.is_some_and(|t| Instant::now() >= t) {
                self.process_tx();
            }
            // New receive buffers, tap frames or hook replies: try RX.
            if self.rx_blocked_until.is_none_or(|t| Instant::now() >= t) {
                self.process_rx(&epoll);
            }
        }
    }

    fn notify(&self, queue: &mut Queue, index: u16) {
        match queue.needs_notification(&self.mem) {
            Ok(true) => self.interrupt.trigger(InterruptKind::Queue(index)),
            Ok(false) => {}
            Err(e) => log::warn!("virtio-net: {e:?}"),
        }
    }

    fn process_tx(&mut self) {
        self.tx_blocked_until = None;
        let mem = self.mem.clone();
        loop {
            let _ = self.tx.disable_notification(&mem);
            let mut sent = false;
            while let Some(chain) = self.tx.pop_descriptor_chain(&mem) {
                if !self.tx_limiter.is_unlimited() {
                    let bytes: u64 = chain.clone().map(|d| u64::from(d.len())).sum();
                    let now = Instant::now();
                    if let Err(wait) = self.tx_limiter.consume(bytes, now) {
                        // Back on the ring; the timer retries it.
                        self.tx.go_to_previous_position();
                        self.tx_blocked_until = Some(now + wait);
                        break;
                    }
                }
                let head = chain.head_index();
                match GuestIovecs::from_chain(&mem, chain, false) {
                    Some(iov) if (VNET_HDR_LEN..=MAX_FRAME).contains(&iov.len()) => {
                        self.transmit(&iov)
                    }
                    Some(iov) => {
                        log::debug!("virtio-net: dropping TX chain of {} bytes", iov.len())
                    }
                    None => log::warn!(
                        "virtio-net: TX chain outside guest memory or with device-writable buffers"
                    ),
                }
                if let Err(e) = self.tx.add_used(&mem, head, 0) {
                    log::warn!("virtio-net: {e:?}");
                }
                sent = true;
            }
            if sent {
                let mut q = std::mem::replace(
                    &mut self.tx,
                    Queue::new(QUEUE_SIZE).unwrap_or_else(|_| unreachable_queue()),
                );
                self.notify(&mut q, 1);
                self.tx = q;
            }
            if self.tx_blocked_until.is_some() {
                return;
            }
            match self.tx.enable_notification(&mem) {
                Ok(true) => continue,
                _ => return,
            }
        }
    }

    fn transmit(&mut self, iov: &GuestIovecs) {
        let len = iov.len();
        if let Some(hook) = self.hook.as_mut() {
            let mut head = [0u8; VNET_HDR_LEN + 64];
            let n = iov.read_prefix(&mut head);
            if hook.may_claim(&head[VNET_HDR_LEN..n]) {
                iov.read_prefix(&mut self.buf[..len]);
                let (hdr, frame) = self.buf[..len].split_at_mut(VNET_HDR_LEN);
                // The hook sees a frame with complete checksums.
                let mut copy = frame.to_vec();
                complete_checksum(hdr, &mut copy);
                if hook.guest_sent(&copy, Instant::now()) {
                    return;
                }
                if let Err(e) = self.tap.write_frame(&self.buf[..len]) {
                    log::debug!("virtio-net: tap write: {e}");
                }
                return;
            }
        }
        // Straight from guest memory: the kernel's copy is the only one.
        if let Err(e) = self.tap.write_vectored(iov.as_iovecs(), len) {
            log::debug!("virtio-net: tap write: {e}");
        }
    }

    fn set_tap_polling(&mut self, epoll: &Epoll, on: bool) {
        if self.tap_polled == on {
            return;
        }
        let events = if on { EventSet::IN } else { EventSet::empty() };
        if epoll
            .ctl(
                ControlOperation::Modify,
                self.tap.as_raw_fd(),
                EpollEvent::new(events, TOKEN_TAP),
            )
            .is_ok()
        {
            self.tap_polled = on;
        }
    }

    /// Frames queued inside the VMM (held back, or from the hook), which
    /// take the copy path; tap frames are read in `process_rx`.
    fn queued_frame(&mut self) -> Option<Vec<u8>> {
        if let Some(p) = self.pending.take() {
            return Some(p);
        }
        let frame = self
            .hook
            .as_mut()
            .and_then(|h| h.poll_to_guest(Instant::now()))?;
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(&frame);
        Some(f)
    }

    /// Copy one frame into the guest's next receive buffer.
    fn deliver_copy(&mut self, mem: &GuestMemoryMmap, mut frame: Vec<u8>) -> RxStep {
        if !self.rx_limiter.is_unlimited() {
            let now = Instant::now();
            if let Err(wait) = self.rx_limiter.consume(frame.len() as u64, now) {
                // Hold the frame (and stop reading the tap) until the
                // limiter refills.
                self.pending = Some(frame);
                self.rx_blocked_until = Some(now + wait);
                return RxStep::Stop;
            }
        }
        let Some(chain) = self.rx.pop_descriptor_chain(mem) else {
            self.pending = Some(frame);
            return RxStep::NoBuffers;
        };
        let head = chain.head_index();
        // num_buffers = 1: each frame fits one chain (no MRG_RXBUF).
        frame[10..12].copy_from_slice(&1u16.to_le_bytes());
        let written = match Writer::new(mem, chain) {
            Ok(mut w) if w.available_bytes() >= frame.len() => match w.write_all(&frame) {
                Ok(()) => frame.len() as u32,
                Err(_) => 0,
            },
            Ok(w) => {
                log::debug!(
                    "virtio-net: dropping {}-byte frame, guest buffer holds {}",
                    frame.len(),
                    w.available_bytes()
                );
                0
            }
            Err(e) => {
                log::warn!("virtio-net: RX chain outside guest memory: {e:?}");
                0
            }
        };
        if let Err(e) = self.rx.add_used(mem, head, written) {
            log::warn!("virtio-net: {e:?}");
        }
        RxStep::Delivered
    }

    /// Read one tap frame into the guest's next receive buffer: straight
    /// into guest memory when the buffer holds any frame the tap can give
    /// (64 KiB "big packet" buffers), else through `buf` (small buffers:
    /// a frame too big for them is dropped rather than truncated).
    fn deliver_from_tap(&mut self, mem: &GuestMemoryMmap) -> RxStep {
        if !self.rx_limiter.is_unlimited() {
            // The limiter needs the frame's size before it is delivered.
            return match self.read_tap() {
                Some(frame) => self.deliver_copy(mem, frame),
                None => RxStep::TapEmpty,
            };
        }
        let Some(chain) = self.rx.pop_descriptor_chain(mem) else {
            return RxStep::NoBuffers;
        };
        let head = chain.head_index();
        let Some(iov) = GuestIovecs::from_chain(mem, chain, true) else {
            log::warn!("virtio-net: RX chain outside guest memory or with read-only buffers");
            if let Err(e) = self.rx.add_used(mem, head, 0) {
                log::warn!("virtio-net: {e:?}");
            }
            return RxStep::Delivered;
        };
        if iov.len() < MAX_FRAME {
            self.rx.go_to_previous_position();
            return match self.read_tap() {
                Some(frame) => self.deliver_copy(mem, frame),
                None => RxStep::TapEmpty,
            };
        }
        match self.tap.read_vectored(iov.as_iovecs()) {
            Ok(n) if n >= VNET_HDR_LEN => {
                iov.write_at(10, &1u16.to_le_bytes());
                if let Err(e) = self.rx.add_used(mem, head, n as u32) {
                    log::warn!("virtio-net: {e:?}");
                }
                RxStep::Delivered
            }
            Ok(_) => {
                self.rx.go_to_previous_position();
                RxStep::TapEmpty
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    log::debug!("virtio-net: tap read: {e}");
                }
                self.rx.go_to_previous_position();
                RxStep::TapEmpty
            }
        }
    }

    fn read_tap(&mut self) -> Option<Vec<u8>> {
        match self.tap.read_frame(&mut self.buf) {
            Ok(n) if n >= VNET_HDR_LEN => Some(self.buf[..n].to_vec()),
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => {
                log::debug!("virtio-net: tap read: {e}");
                None
            }
        }
    }

    fn process_rx(&mut self, epoll: &Epoll) {
        self.rx_blocked_until = None;
        let mem = self.mem.clone();
        let mut delivered = false;
        let mut out_of_buffers = false;
        loop {
            let step = match self.queued_frame() {
                Some(frame) => self.deliver_copy(&mem, frame),
                None => self.deliver_from_tap(&mem),
            };
            match step {
                RxStep::Delivered => delivered = true,
                RxStep::TapEmpty | RxStep::Stop => break,
                RxStep::NoBuffers => {
                    // Ask for a kick when the guest posts buffers; if it
                    // posted some meanwhile, go on.
                    if let Ok(true) = self.rx.enable_notification(&mem) {
                        continue;
                    }
                    out_of_buffers = true;
                    break;
                }
            }
        }
        // The tap is polled only while its frames can go somewhere: not
        // while the guest has no buffers or the limiter holds a frame
        // (level-triggered epoll would spin on a readable tap).
        let can_take = !out_of_buffers && self.pending.is_none() && self.rx_blocked_until.is_none();
        self.set_tap_polling(epoll, can_take);
        if delivered {
            let mut q = std::mem::replace(
                &mut self.rx,
                Queue::new(QUEUE_SIZE).unwrap_or_else(|_| unreachable_queue()),
            );
            self.notify(&mut q, 0);
            self.rx = q;
        }
    }
}

/// What one receive step did.
enum RxStep {
    Delivered,
    /// No frame waiting in the tap.
    TapEmpty,
    /// The guest has no receive buffer posted.
    NoBuffers,
    /// The RX limiter holds the next frame.
    Stop,
}

fn unreachable_queue() -> Queue {
    Queue::new(1).unwrap_or_else(|_| panic!("a queue of size 1 is always valid"))
}

/// Keeps the device in a `Mutex` when it must be shared with the API.
pub type SharedNet = Arc<Mutex<Net>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_offloads_follow_the_guests_features() {
        assert_eq!(tap_offload(0), 0);
        // TSO without checksum offload is not a valid combination for tun.
        assert_eq!(tap_offload(F_GUEST_TSO4 | F_GUEST_TSO6), 0);
        assert_eq!(tap_offload(F_GUEST_CSUM), tap::TUN_F_CSUM);
        assert_eq!(
            tap_offload(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_ECN),
            tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO_ECN
        );
        assert_eq!(
            tap_offload(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6),
            tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6
        );
        assert_eq!(tap_offload(F_GUEST_CSUM | F_GUEST_ECN), tap::TUN_F_CSUM);
    }

    #[test]
    fn completes_a_partial_tcp_checksum() {
        // A 4-byte payload at offset 14; checksum field at offset 16.
        let mut frame = vec![0u8; 20];
        frame[14..18].copy_from_slice(&[0x12, 0x34, 0x00, 0x00]);
        frame[18..20].copy_from_slice(&[0x56, 0x78]);
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[0] = HDR_F_NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&14u16.to_le_bytes());
        hdr[8..10].copy_from_slice(&2u16.to_le_bytes());
        complete_checksum(&hdr, &mut frame);
        // Sum of the covered words with the result must be 0xffff.
        let mut sum: u32 = 0;
        for c in frame[14..].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        // Out-of-range offsets are ignored, not a panic.
        hdr[6..8].copy_from_slice(&100u16.to_le_bytes());
        complete_checksum(&hdr, &mut frame);
    }
}
