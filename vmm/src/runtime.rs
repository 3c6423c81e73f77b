//! The VMM thread: one epoll loop over signals, API requests, the guest's
//! exit events and console input. It owns the configuration and the VM.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use serde_json::json;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::terminal::Terminal;

use crate::api::{ActionType, ApiMessage, ApiRequest, ApiResponse, ApiServer};
use crate::config::{
    BootSource, ConfigError, DriveConfig, MachineConfig, NetConfig, SerialConfig, VmConfig,
};
use crate::vcpu::ExitReason;
use crate::vm::{Vm, VmError};

mod snapshot_api;
pub use snapshot_api::RestoreRequest;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot open serial output {path}: {source}")]
    SerialOutput { path: PathBuf, source: io::Error },
    #[error("API socket {path}: {source}")]
    ApiSocket { path: PathBuf, source: io::Error },
    #[error("VF pool: {0}")]
    Pool(String),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
}

pub struct RunOptions {
    /// Boot this configuration at once (CLI flags or `--config`).
    pub config: Option<VmConfig>,
    pub api_sock: Option<PathBuf>,
    /// Restore this snapshot at once (`--restore`).
    pub restore: Option<RestoreRequest>,
    /// When the process started (for the boot timer).
    pub start: Instant,
}

const TOKEN_SIGNAL: u64 = 1;
const TOKEN_API: u64 = 2;
const TOKEN_EXIT: u64 = 3;
const TOKEN_RESET: u64 = 4;
const TOKEN_STDIN: u64 = 5;

/// Signals that stop the VMM. They are blocked in every thread and read
/// from a signalfd here, so no handler ever runs on a vCPU thread.
const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn block_stop_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only modify it and the
    // calling thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: `set` is valid; -1 asks for a new signalfd.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_signal(fd: &OwnedFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading at most `size` bytes into a buffer of that size.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            &mut info as *mut _ as *mut libc::c_void,
            size,
        )
    };
    (n as usize == size).then_some(info.ssi_signo as i32)
}

/// Puts the console in raw mode while the guest owns it, and restores it.
struct RawConsole {
    active: bool,
}

impl RawConsole {
    fn enter() -> Self {
        let stdin = io::stdin();
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(stdin.as_raw_fd()) } == 1;
        let active = tty && stdin.lock().set_raw_mode().is_ok();
        Self { active }
    }
}

impl Drop for RawConsole {
    fn drop(&mut self) {
        if self.active {
            let _ = io::stdin().lock().set_canon_mode();
        }
    }
}

struct Controller {
    machine: MachineConfig,
    boot: Option<BootSource>,
    serial: SerialConfig,
    drives: Vec<DriveConfig>,
    net: Vec<NetConfig>,
    imds: Option<serde_json::Value>,
    vfs: Vec<crate::config::VfConfig>,
    leases: Vec<(sriov::Pool, sriov::Lease)>,
    vm: Option<Vm>,
    start: Instant,
}

impl Controller {
    fn config(&self) -> Result<VmConfig, ConfigError> {
        let boot = self.boot.clone().ok_or_else(|| {
            ConfigError::new(
                "boot-source",
                "no boot source was configured (PUT /boot-source)",
            )
        })?;
        let cfg = VmConfig {
            boot_source: boot,
            machine_config: self.machine.clone(),
            serial: self.serial.clone(),
            drives: self.drives.clone(),
            net: self.net.clone(),
            imds: self.imds.clone(),
            vfs: self.vfs.clone(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Lease pool VFs, turning them into addresses; kept for release.
    fn lease_vfs(&mut self, cfg: &mut VmConfig) -> Result<(), RuntimeError> {
        for vf in cfg.vfs.iter_mut() {
            let Some(dir) = vf.pool.clone() else { continue };
            let mac: sriov::MacAddress = vf
                .mac
                .as_deref()
                .unwrap_or_default()
                .parse()
                .map_err(|e: sriov::Error| RuntimeError::Pool(e.to_string()))?;
            let instance = vf
                .instance_id
                .clone()
                .or_else(|| cfg.machine_config.smbios.serial.clone())
                .unwrap_or_else(|| format!("vmm-{}", std::process::id()));
            let pool = sriov::Pool::open(&dir).map_err(|e| RuntimeError::Pool(e.to_string()))?;
            let lease = pool
                .lease(&instance, mac)
                .map_err(|e| RuntimeError::Pool(format!("{}: {e}", dir.display())))?;
            log::info!(
                "leased VF {} from {} for {instance}",
                lease.bdf,
                dir.display()
            );
            vf.bdf = Some(lease.bdf.to_string());
            vf.pool = None;
            self.leases.push((pool, lease));
        }
        Ok(())
    }

    /// Give leased VFs back (after the VM and its VFIO fds are gone).
    fn release_vfs(&mut self) {
        for (pool, lease) in self.leases.drain(..) {
            match pool.release(&lease) {
                Ok(()) => log::info!("released VF {}", lease.bdf),
                Err(e) => log::error!("cannot release VF {}: {e}", lease.bdf),
            }
        }
    }

    fn start_vm(&mut self) -> Result<(), RuntimeError> {
        let mut cfg = self.config()?;
        self.lease_vfs(&mut cfg)?;
        let built = self.build_and_start(&cfg);
        if built.is_err() {
            self.release_vfs();
        }
        built
    }

    fn build_and_start(&mut self, cfg: &VmConfig) -> Result<(), RuntimeError> {
        let out = open_serial(cfg)?;
        let mut vm = Vm::build(cfg, out, self.start)?;
        vm.start()?;
        self.vm = Some(vm);
        Ok(())
    }

    fn info(&self) -> serde_json::Value {
        let state = match &self.vm {
            Some(vm) if vm.is_paused() => "Paused",
            Some(_) => "Running",
            None => "Not started",
        };
        json!({
            "app_name": "vmm",
            "id": "vmm",
            "state": state,
            "vmm_version": env!("CARGO_PKG_VERSION"),
            "vcpu_count": self.machine.vcpu_count,
            "mem_size_mib": self.machine.mem_size_mib,
            "boot_time_us": self.vm.as_ref().map(|v| v.boot_time_us.load(Ordering::Relaxed)),
        })
    }

    fn handle(&mut self, request: ApiRequest) -> ApiResponse {
        let started = self.vm.is_some();
        let pre_boot_only = |what: &str| {
            ApiResponse::error(
                400,
                format!("{what} cannot be changed after the instance has started"),
                None,
            )
        };
        match request {
            ApiRequest::GetInfo => ApiResponse::ok(self.info()),
            ApiRequest::GetMachineConfig => ApiResponse::ok(json!(self.machine)),
            ApiRequest::GetBootSource => match &self.boot {
                Some(b) => ApiResponse::ok(json!(b)),
                None => ApiResponse::error(404, "no boot source configured", None),
            },
            ApiRequest::GetDrives => ApiResponse::ok(json!(self.drives)),
            ApiRequest::GetNetworkInterfaces => ApiResponse::ok(json!(self.net)),
            ApiRequest::GetVfs => ApiResponse::ok(json!(self.vfs)),
            ApiRequest::GetImds => match &self.imds {
                Some(r) => ApiResponse::ok(r.clone()),
                None => ApiResponse::error(404, "no instance metadata configured", None),
            },
            ApiRequest::PutMachineConfig(_)
            | ApiRequest::PutBootSource(_)
            | ApiRequest::PutDrive(..)
            | ApiRequest::PutNetworkInterface(..)
            | ApiRequest::PutImds(_)
            | ApiRequest::PutVf(..)
                if started =>
            {
                pre_boot_only("the configuration")
            }
            ApiRequest::PutMachineConfig(m) => match m.validate() {
                Ok(()) => {
                    self.machine = m;
                    ApiResponse::no_content()
                }
                Err(e) => ApiResponse::error(400, format!("machine-config.{e}"), Some(&e.field)),
            },
            ApiRequest::PutBootSource(b) => match b.validate() {
                Ok(()) => {
                    self.boot = Some(b);
                    ApiResponse::no_content()
                }
                Err(e) => ApiResponse::error(400, format!("boot-source.{e}"), Some(&e.field)),
            },
            ApiRequest::PutDrive(path_id, d) => put_by_id(
                &mut self.drives,
                &path_id,
                d,
                |d| &d.drive_id,
                DriveConfig::validate,
                ("drives", "drive_id"),
            ),
            ApiRequest::PutNetworkInterface(path_id, n) => put_by_id(
                &mut self.net,
                &path_id,
                n,
                |n| &n.iface_id,
                NetConfig::validate,
                ("network-interfaces", "iface_id"),
            ),
            ApiRequest::PutVf(path_id, v) => put_by_id(
                &mut self.vfs,
                &path_id,
                v,
                |v| &v.vf_id,
                crate::config::VfConfig::validate,
                ("vfio-devices", "vf_id"),
            ),
            ApiRequest::PutImds(record) => match crate::config::parse_imds_record(&record) {
                Ok(_) => {
                    self.imds = Some(record);
                    ApiResponse::no_content()
                }
                Err(e) => ApiResponse::error(400, format!("imds.{e}"), Some(&e.field)),
            },
            ApiRequest::Action(ActionType::InstanceStart) if started => {
                ApiResponse::error(400, "the instance is already running", None)
            }
            ApiRequest::Action(ActionType::InstanceStart) => match self.start_vm() {
                Ok(()) => ApiResponse::no_content(),
                Err(RuntimeError::Config(e)) => {
                    ApiResponse::error(400, e.to_string(), Some(&e.field))
                }
                Err(e) => ApiResponse::error(400, format!("cannot start the instance: {e}"), None),
            },
            ApiRequest::PatchVm(state) => self.patch_vm(state),
            ApiRequest::CreateSnapshot(params) => self.create_snapshot(&params),
            ApiRequest::LoadSnapshot(_) if started => ApiResponse::error(
                400,
                "a snapshot can only be loaded before the instance starts",
                None,
            ),
            ApiRequest::LoadSnapshot(params) => self.load_snapshot(params),
            ApiRequest::Action(ActionType::SendCtrlAltDel) => match &self.vm {
                Some(vm) => {
                    vm.i8042
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .send_ctrl_alt_del();
                    ApiResponse::no_content()
                }
                None => ApiResponse::error(400, "the instance is not running", None),
            },
        }
    }
}

/// Where the guest console goes: the configured file (appended), or stdout.
fn open_serial(cfg: &VmConfig) -> Result<Box<dyn Write + Send>, RuntimeError> {
    Ok(match &cfg.serial.output_path {
        Some(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| RuntimeError::SerialOutput {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => Box::new(io::stdout()),
    })
}

/// PUT of a resource keyed by id (`/drives/{id}`, `/network-interfaces/{id}`):
/// the body's id must match the path's; a valid item replaces the one with
/// the same id. `names` is (collection, id field) for error messages.
fn put_by_id<T>(
    list: &mut Vec<T>,
    path_id: &str,
    item: T,
    id_of: fn(&T) -> &String,
    validate: fn(&T) -> Result<(), ConfigError>,
    names: (&str, &str),
) -> ApiResponse {
    let (collection, id_field) = names;
    if id_of(&item) != path_id {
        return ApiResponse::error(
            400,
            format!(
                "{id_field} {:?} does not match the path's {path_id:?}",
                id_of(&item)
            ),
            Some(id_field),
        );
    }
    match validate(&item) {
        Ok(()) => {
            list.retain(|x| id_of(x) != path_id);
            list.push(item);
            ApiResponse::no_content()
        }
        Err(e) => ApiResponse::error(400, format!("{collection}.{e}"), Some(&e.field)),
    }
}

/// Run until the guest stops or the VMM is told to. Returns why.
pub fn run(opts: RunOptions) -> Result<ExitReason, RuntimeError> {
    // Before any thread exists, so that every thread inherits the mask.
    let signals = block_stop_signals()?;
    let epoll = Epoll::new()?;
    let add = |fd: i32, token: u64| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    };
    add(signals.as_raw_fd(), TOKEN_SIGNAL)?;

    let mut ctl = Controller {
        machine: MachineConfig::default(),
        boot: None,
        serial: SerialConfig::default(),
        drives: Vec::new(),
        net: Vec::new(),
        imds: None,
        vfs: Vec::new(),
        leases: Vec::new(),
        vm: None,
        start: opts.start,
    };
    if let Some(cfg) = &opts.config {
        ctl.machine = cfg.machine_config.clone();
        ctl.boot = Some(cfg.boot_source.clone());
        ctl.serial = cfg.serial.clone();
        ctl.drives = cfg.drives.clone();
        ctl.net = cfg.net.clone();
        ctl.imds = cfg.imds.clone();
        ctl.vfs = cfg.vfs.clone();
    }

    let (api_tx, api_rx) = mpsc::channel::<ApiMessage>();
    let api_wake = EventFd::new(libc::EFD_NONBLOCK)?;
    let _api = match &opts.api_sock {
        Some(path) => {
            let server =
                ApiServer::spawn(path, api_tx, api_wake.try_clone()?).map_err(|source| {
                    RuntimeError::ApiSocket {
                        path: path.clone(),
                        source,
                    }
                })?;
            add(api_wake.as_raw_fd(), TOKEN_API)?;
            log::info!("API listening on {}", path.display());
            Some(server)
        }
        None => None,
    };

    let mut console: Option<RawConsole> = None;
    let mut wired = false;
    if let Some(req) = &opts.restore {
        ctl.restore_vm(req)?;
    } else if opts.config.is_some() {
        ctl.start_vm()?;
    }

    let mut events = vec![EpollEvent::default(); 8];
    let mut pending_input: Vec<u8> = Vec::new();
    let reason = 'outer: loop {
        if let (false, Some(vm)) = (wired, &ctl.vm) {
            add(vm.exit.evt.as_raw_fd(), TOKEN_EXIT)?;
            add(vm.i8042_reset.as_raw_fd(), TOKEN_RESET)?;
            if ctl.serial.output_path.is_none() {
                console = Some(RawConsole::enter());
                // stdin may be /dev/null or a file, which epoll refuses.
                if add(io::stdin().as_raw_fd(), TOKEN_STDIN).is_err() {
                    log::debug!("stdin cannot be polled; console input disabled");
                }
            }
            wired = true;
        }
        // Retry queued console input while the guest drains its FIFO.
        let timeout = if pending_input.is_empty() { -1 } else { 10 };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if !pending_input.is_empty() {
            if let Some(vm) = &ctl.vm {
                let taken = vm
                    .serial
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .enqueue_input(&pending_input);
                pending_input.drain(..taken);
            }
        }
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_SIGNAL => {
                    if let Some(sig) = read_signal(&signals) {
                        log::info!("received signal {sig}, stopping");
                        break 'outer ExitReason::Signal(sig);
                    }
                }
                TOKEN_API => {
                    let _ = api_wake.read();
                    while let Ok(msg) = api_rx.try_recv() {
                        let response = ctl.handle(msg.request);
                        let _ = msg.reply.send(response);
                    }
                }
                TOKEN_EXIT | TOKEN_RESET => {
                    if let Some(reason) = ctl.vm.as_ref().and_then(|vm| vm.exit_reason()) {
                        break 'outer reason;
                    }
                }
                TOKEN_STDIN => {
                    let mut buf = [0u8; 256];
                    match io::stdin().lock().read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                io::stdin().as_raw_fd(),
                                EpollEvent::default(),
                            );
                        }
                        Ok(k) => {
                            pending_input.extend_from_slice(&buf[..k]);
                            if let Some(vm) = &ctl.vm {
                                let taken = vm
                                    .serial
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .enqueue_input(&pending_input);
                                pending_input.drain(..taken);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    };

    if let Some(mut vm) = ctl.vm.take() {
        if !vm.stop() {
            log::error!("some vCPU threads did not stop");
        }
        // Dropping the VM closes its VFIO fds, which a VF release waits for.
        drop(vm);
    }
    ctl.release_vfs();
    drop(console);
    Ok(reason)
}
