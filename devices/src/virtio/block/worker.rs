//! Asynchronous request service for virtio-blk.
//!
//! Each queue has one *queue thread* ([`QueueWorker`]) that owns the ring:
//! it takes chains off the available ring (after the rate limiter admits
//! them), hands them to the device's [`IoPool`], and publishes completions
//! on the used ring as they arrive, in whatever order the backend finishes
//! them. The guest therefore keeps up to [`MAX_IN_FLIGHT`] requests per
//! queue in flight, and one slow request (a cold EBS block, a FLUSH) never
//! holds back the completions behind it. Why not per-batch threads: a batch
//! completes only when its slowest request does, which serialises again
//! under a mixed load.
//!
//! virtio-blk allows completion in any order, and FLUSH only covers writes
//! the driver has seen completed, so nothing here orders requests.
//!
//! Pause and stop drain: the queue thread stops taking new chains, waits
//! until every request it dispatched has completed and is on the used
//! ring, and only then hands its queue back. A snapshot therefore never
//! holds a request in flight.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{handle_request, BlockBackend};
use crate::rate_limiter::RateLimiter;
use crate::virtio::{InterruptKind, VirtioInterrupt};

/// Requests one queue keeps in flight at most (Linux's default queue depth
/// per hardware queue is the ring size, but beyond this the backend, not
/// the device, is the bottleneck).
pub const MAX_IN_FLIGHT: usize = 64;
/// I/O threads per device at most; started on demand. Each blocks in one
/// backend call (pread, or waiting for an NBD reply), so this bounds the
/// requests the backend sees at once.
pub const MAX_IO_THREADS: usize = 16;

type Chain = DescriptorChain<Arc<GuestMemoryMmap>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the drive serves: shared by the pool's threads.
pub struct DriveContext {
    pub backend: Arc<dyn BlockBackend>,
    pub read_only: bool,
    pub serial: String,
}

/// Finished requests of one queue, waiting for its queue thread.
pub struct Completions {
    done: Mutex<Vec<(u16, u32)>>,
    ready: EventFd,
}

impl Completions {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            done: Mutex::new(Vec::new()),
            ready: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    fn push(&self, head: u16, used: u32) {
        lock(&self.done).push((head, used));
        if let Err(e) = self.ready.write(1) {
            log::error!("virtio-blk: cannot signal a completion: {e}");
        }
    }

    fn take(&self) -> Vec<(u16, u32)> {
        let _ = self.ready.read();
        std::mem::take(&mut *lock(&self.done))
    }
}

struct Job {
    mem: Arc<GuestMemoryMmap>,
    chain: Chain,
    completions: Arc<Completions>,
}

#[derive(Default)]
struct PoolState {
    jobs: VecDeque<Job>,
    idle: usize,
    closed: bool,
}

struct PoolShared {
    state: Mutex<PoolState>,
    wake: Condvar,
    drive: DriveContext,
}

/// A device's I/O threads. Grows on demand up to [`MAX_IO_THREADS`];
/// dropping it finishes the queued jobs and joins the threads.
pub struct IoPool {
    shared: Arc<PoolShared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl IoPool {
    pub fn new(drive: DriveContext) -> Self {
        Self {
            shared: Arc::new(PoolShared {
                state: Mutex::new(PoolState::default()),
                wake: Condvar::new(),
                drive,
            }),
            threads: Mutex::new(Vec::new()),
        }
    }

    fn submit(&self, job: Job) {
        let start_thread = {
            let mut state = lock(&self.shared.state);
            state.jobs.push_back(job);
            state.jobs.len() > state.idle
        };
        self.shared.wake.notify_one();
        if start_thread {
            self.grow();
        }
    }

    fn grow(&self) {
        let mut threads = lock(&self.threads);
        if threads.len() >= MAX_IO_THREADS {
            return;
        }
        let shared = Arc::clone(&self.shared);
        match std::thread::Builder::new()
            .name(format!("blk-io{}", threads.len()))
            .spawn(move || io_thread(&shared))
        {
            Ok(handle) => threads.push(handle),
            // The running threads still serve every job, only fewer at once.
            Err(e) => log::warn!("virtio-blk: cannot start an I/O thread: {e}"),
        }
    }

    /// Threads started so far.
    #[cfg(test)]
    pub fn threads(&self) -> usize {
        lock(&self.threads).len()
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_all();
        for handle in lock(&self.threads).drain(..) {
            if handle.join().is_err() {
                log::error!("virtio-blk: an I/O thread panicked");
            }
        }
    }
}

fn io_thread(shared: &PoolShared) {
    let mut buffer = Vec::new();
    loop {
        let job = {
            let mut state = lock(&shared.state);
            loop {
                if let Some(job) = state.jobs.pop_front() {
                    break job;
                }
                if state.closed {
                    return;
                }
                state.idle += 1;
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                state.idle -= 1;
            }
        };
        let head = job.chain.head_index();
        let drive = &shared.drive;
        let used = handle_request(
            &job.mem,
            job.chain,
            &*drive.backend,
            drive.read_only,
            &drive.serial,
            &mut buffer,
        );
        job.completions.push(head, used);
    }
}

const TOKEN_KICK: u64 = 1;
const TOKEN_STOP: u64 = 2;
const TOKEN_DONE: u64 = 3;

/// One queue's thread: the ring side of the device.
pub struct QueueWorker {
    pub index: u16,
    pub queue: Queue,
    pub kick: EventFd,
    pub stop: EventFd,
    pub mem: Arc<GuestMemoryMmap>,
    pub interrupt: Arc<VirtioInterrupt>,
    pub pool: Arc<IoPool>,
    pub completions: Arc<Completions>,
    /// Shared by the device's queues, like Firecracker's per-drive limiter.
    pub limiter: Option<Arc<Mutex<RateLimiter>>>,
    /// While throttled: when to try the queue again.
    pub blocked_until: Option<Instant>,
    pub in_flight: usize,
}

impl QueueWorker {
    /// Serve the queue until told to stop; returns it with its positions
    /// once nothing is in flight.
    pub fn run(mut self) -> Queue {
        self.serve_until_stopped();
        self.drain();
        self.queue
    }

    fn serve_until_stopped(&mut self) {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtio-blk q{}: {e}", self.index);
                return;
            }
        };
        for (fd, token) in [
            (self.kick.as_raw_fd(), TOKEN_KICK),
            (self.stop.as_raw_fd(), TOKEN_STOP),
            (self.completions.ready.as_raw_fd(), TOKEN_DONE),
        ] {
            if let Err(e) = epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            ) {
                log::error!("virtio-blk q{}: {e}", self.index);
                return;
            }
        }
        let mut events = [EpollEvent::default(); 3];
        // Requests may already be queued before the first kick.
        self.process_queue();
        loop {
            let timeout = match self.blocked_until {
                Some(t) => t
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .clamp(1, i32::MAX as u128) as i32,
                None => -1,
            };
            let n = match epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-blk q{}: {e}", self.index);
                    return;
                }
            };
            let mut kicked = false;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return,
                    TOKEN_DONE => self.reap(),
                    TOKEN_KICK => {
                        let _ = self.kick.read();
                        kicked = true;
                    }
                    _ => {}
                }
            }
            // A completion frees an in-flight slot, so it may also let
            // waiting chains go; while throttled, only the timer does.
            let timer_due = self.blocked_until.is_some_and(|t| Instant::now() >= t);
            if timer_due || (self.blocked_until.is_none() && (kicked || n > 0)) {
                self.process_queue();
            }
        }
    }

    /// Wait for every dispatched request and publish it.
    fn drain(&mut self) {
        while self.in_flight > 0 {
            let mut pfd = libc::pollfd {
                fd: self.completions.ready.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
            if rc < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                log::error!(
                    "virtio-blk q{}: cannot wait for {} requests in flight: {}",
                    self.index,
                    self.in_flight,
                    std::io::Error::last_os_error()
                );
                return;
            }
            self.reap();
        }
    }

    /// Put finished requests on the used ring and notify the driver once.
    fn reap(&mut self) {
        let done = self.completions.take();
        if done.is_empty() {
            return;
        }
        self.in_flight -= done.len().min(self.in_flight);
        for (head, used) in done {
            if let Err(e) = self.queue.add_used(&*self.mem, head, used) {
                log::warn!("virtio-blk q{}: cannot add used entry: {e:?}", self.index);
            }
        }
        match self.queue.needs_notification(&*self.mem) {
            Ok(true) => self.interrupt.trigger(InterruptKind::Queue(self.index)),
            Ok(false) => {}
            Err(e) => log::warn!("virtio-blk q{}: {e:?}", self.index),
        }
    }

    /// Pay for a request before serving it; on refusal the chain goes back
    /// on the queue and the worker sleeps until the limiter refills.
    fn admit(&mut self, chain: &Chain) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        let bytes: u64 = chain.clone().map(|d| u64::from(d.len())).sum();
        let now = Instant::now();
        match lock(limiter).consume(bytes, now) {
            Ok(()) => true,
            Err(wait) => {
                self.queue.go_to_previous_position();
                self.blocked_until = Some(now + wait);
                false
            }
        }
    }

    /// Take what the limiter and the in-flight bound allow off the ring.
    fn process_queue(&mut self) {
        self.blocked_until = None;
        loop {
            // With EVENT_IDX, disable notifications while draining and
            // re-check after enabling them, so no request is missed.
            if let Err(e) = self.queue.disable_notification(&*self.mem) {
                log::warn!("virtio-blk q{}: {e:?}", self.index);
            }
            let mut batch = Vec::new();
            while self.in_flight + batch.len() < MAX_IN_FLIGHT {
                let Some(chain) = self.queue.pop_descriptor_chain(Arc::clone(&self.mem)) else {
                    break;
                };
                if !self.admit(&chain) {
                    break;
                }
                batch.push(chain);
            }
            self.dispatch(batch);
            if self.blocked_until.is_some() || self.in_flight >= MAX_IN_FLIGHT {
                // The timer or a completion brings us back; notifications
                // stay off meanwhile (re-enabling them here would find the
                // ring non-empty and spin).
                return;
            }
            match self.queue.enable_notification(&*self.mem) {
                Ok(true) => continue, // more arrived meanwhile
                Ok(false) => return,
                Err(e) => {
                    log::warn!("virtio-blk q{}: {e:?}", self.index);
                    return;
                }
            }
        }
    }

    fn dispatch(&mut self, batch: Vec<Chain>) {
        self.in_flight += batch.len();
        for chain in batch {
            self.pool.submit(Job {
                mem: Arc::clone(&self.mem),
                chain,
                completions: Arc::clone(&self.completions),
            });
        }
    }
}
