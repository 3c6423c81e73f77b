//! vCPU threads: each runs `KVM_RUN` in a loop and routes port I/O and MMIO
//! exits to the buses. Backend I/O never happens here: devices that need it
//! are kicked through ioeventfds handled on the VMM thread.
//!
//! Stopping: the VMM sets `stop` and sends [`kick_signal`] to the thread
//! until it has left its loop. The signal handler is empty; its only job is
//! to make `KVM_RUN` return `EINTR`. Re-sending covers the window in which
//! the signal lands just before the thread enters `KVM_RUN`.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest rebooted (i8042 reset, ACPI reset, triple fault).
    GuestReset,
    /// The guest powered off (ACPI S5).
    GuestShutdown,
    /// The VMM was asked to stop (SIGTERM/SIGINT).
    Signal(i32),
    /// A vCPU hit a condition the VMM cannot continue from.
    Fault(String),
}

impl ExitReason {
    /// Process exit code: 0 for guest-initiated stops, 128+N for a signal,
    /// 1 for faults.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReset | ExitReason::GuestShutdown => 0,
            ExitReason::Signal(n) => 128 + n,
            ExitReason::Fault(_) => 1,
        }
    }
}

/// First reason wins; the eventfd wakes the VMM thread.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    pub evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            log::debug!("exit requested: {reason:?}");
            *r = Some(reason);
        }
        drop(r);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot signal VM exit: {e}");
        }
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The real-time signal used to kick vCPUs out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Install the (empty) kick handler once per process.
pub fn install_kick_handler() -> std::io::Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            register_signal_handler(kick_signal(), noop_handler).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(std::io::Error::other)
}

/// Everything a vCPU thread shares with the VMM.
pub struct VcpuContext {
    pub pio: Bus,
    pub mmio: Bus,
    pub stop: Arc<AtomicBool>,
    pub exit: Arc<ExitSignal>,
}

pub struct VcpuHandle {
    pub id: u8,
    /// The thread gives its vCPU back when it leaves its loop, so that a
    /// paused VM can save the vCPU's state and start a new thread later.
    thread: Option<JoinHandle<VcpuFd>>,
    done: Arc<AtomicBool>,
}

impl VcpuHandle {
    pub fn spawn(id: u8, vcpu: VcpuFd, ctx: VcpuContext) -> std::io::Result<Self> {
        let done = Arc::new(AtomicBool::new(false));
        let done_in_thread = Arc::clone(&done);
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let mut vcpu = vcpu;
                if run_loop(id, &mut vcpu, &ctx) {
                    complete_pending_io(id, &mut vcpu, &ctx);
                }
                done_in_thread.store(true, Ordering::Release);
                vcpu
            })?;
        Ok(Self {
            id,
            thread: Some(thread),
            done,
        })
    }

    /// Kick the thread until it leaves KVM_RUN, then join it. Returns false
    /// if it did not stop within `timeout` (the thread is then left behind;
    /// the process is about to exit anyway).
    pub fn stop_and_join(&mut self, timeout: Duration) -> bool {
        self.thread.is_none() || self.park(timeout).is_some()
    }

    /// Kick the thread out of KVM_RUN, join it and take its vCPU back
    /// (the caller has set the stop flag). None if the thread did not
    /// stop within `timeout` or panicked.
    pub fn park(&mut self, timeout: Duration) -> Option<VcpuFd> {
        let thread = self.thread.take()?;
        let deadline = Instant::now() + timeout;
        while !self.done.load(Ordering::Acquire) {
            // SAFETY: the pthread_t belongs to a thread we spawned and have
            // not joined yet, so it is valid; the signal's handler is a no-op.
            unsafe {
                libc::pthread_kill(thread.as_pthread_t(), kick_signal());
            }
            if Instant::now() > deadline {
                log::error!("vcpu{} did not stop within {timeout:?}", self.id);
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match thread.join() {
            Ok(vcpu) => Some(vcpu),
            Err(_) => {
                log::error!("vcpu{} thread panicked", self.id);
                None
            }
        }
    }
}

/// After an I/O or MMIO exit, the instruction completes only on the next
/// KVM_RUN (KVM copies the data in then). A vCPU leaving its loop right
/// after such an exit would have its state saved mid-instruction, so enter
/// KVM once more with `immediate_exit` set: KVM finishes the pending
/// operation and returns EINTR without running the guest. A multi-part
/// MMIO access can exit again first; those exits are served as usual.
fn complete_pending_io(id: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext) {
    vcpu.set_kvm_immediate_exit(1);
    for _ in 0..16 {
        match vcpu.run() {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => break,
            Err(e) => {
                log::warn!("vcpu{id}: completing pending I/O: {e}");
                break;
            }
            Ok(exit) => {
                if let Err(reason) = handle_exit(id, exit, ctx) {
                    ctx.exit.request(reason);
                    break;
                }
            }
        }
    }
    vcpu.set_kvm_immediate_exit(0);
}

/// Run until stopped (true) or until the guest stops the VM (false).
fn run_loop(id: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext) -> bool {
    loop {
        if ctx.stop.load(Ordering::Acquire) {
            return true;
        }
        let outcome = match vcpu.run() {
            Ok(exit) => handle_exit(id, exit, ctx),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(()),
            Err(e) => Err(ExitReason::Fault(format!("vcpu{id}: KVM_RUN failed: {e}"))),
        };
        if let Err(reason) = outcome {
            if let ExitReason::Fault(msg) = &reason {
                log::error!("{msg}");
            }
            ctx.exit.request(reason);
            return false;
        }
    }
}

fn handle_exit(id: u8, exit: VcpuExit, ctx: &VcpuContext) -> Result<(), ExitReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(u64::from(port), data) {
                // Nothing decodes this port: the bus floats high.
                data.fill(0xff);
            }
            Ok(())
        }
        VcpuExit::IoOut(port, data) => {
            if !ctx.pio.write(u64::from(port), data) {
                log::trace!("vcpu{id}: unclaimed port write {port:#x}");
            }
            Ok(())
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                data.fill(0xff);
            }
            Ok(())
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                log::trace!("vcpu{id}: unclaimed MMIO write {addr:#x}");
            }
            Ok(())
        }
        VcpuExit::Hlt => {
            // With the in-kernel LAPIC, HLT only exits when the guest halted
            // with interrupts disabled: it can never wake up again.
            log::info!("vcpu{id}: guest halted");
            Err(ExitReason::GuestShutdown)
        }
        VcpuExit::Shutdown => {
            log::info!("vcpu{id}: triple fault / shutdown, treating as reset");
            Err(ExitReason::GuestReset)
        }
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Err(ExitReason::GuestReset),
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Err(ExitReason::GuestShutdown),
            other => Err(ExitReason::Fault(format!(
                "vcpu{id}: unexpected system event {other}"
            ))),
        },
        VcpuExit::FailEntry(reason, cpu) => Err(ExitReason::Fault(format!(
            "vcpu{id}: KVM entry failed (hardware reason {reason:#x}, cpu {cpu})"
        ))),
        VcpuExit::InternalError => Err(ExitReason::Fault(format!(
            "vcpu{id}: KVM internal error (emulation failure)"
        ))),
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => Ok(()),
        other => Err(ExitReason::Fault(format!(
            "vcpu{id}: unexpected exit {other:?}"
        ))),
    }
}
