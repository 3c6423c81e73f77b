//! `ebsd`: the EBS-like block service daemon.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ebs_blockdev::nbd::{NbdEndpoint, NbdServer};
use ebs_blockdev::service::{Service, ServiceConfig};

#[derive(Parser)]
#[command(
    name = "ebsd",
    about = "EBS-like block service with an NBD export",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve volumes: the control API and the NBD export.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory holding volumes and control state (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// NBD listen address, `unix:/path` or `tcp:host:port`; repeatable.
    #[arg(long = "nbd-listen", required = true)]
    nbd_listen: Vec<String>,
    /// Unix socket for the HTTP/JSON API.
    #[arg(long)]
    api_sock: PathBuf,
    /// Optional TCP address for the HTTP/JSON API (e.g. 127.0.0.1:8780).
    #[arg(long)]
    api_listen: Option<String>,
    /// Snapshot object store: a directory, or s3://bucket[/prefix] with AWS_ENDPOINT,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (and AWS_ALLOW_HTTP=true for
    /// plain-HTTP endpoints) from the environment. Default: DATA_DIR/objects.
    #[arg(long)]
    snapshot_store: Option<String>,
    /// Local KMS key file with the master keys (must be mode 0600; created if missing).
    /// Default: DATA_DIR/kms-keys.json.
    #[arg(long)]
    kms_key_file: Option<PathBuf>,
    /// For tests: the control plane's clock (StartSnapshot timeouts, ModifyVolume phases
    /// and cooldown) moves only through `POST /test/clock/advance {"Seconds": N}`.
    #[arg(long, hide = true)]
    test_clock: bool,
    /// Seconds between the starts of two modifications of one volume (default: EC2's
    /// six hours).
    #[arg(long, hide = true)]
    modification_cooldown_seconds: Option<u64>,
    /// API worker threads.
    #[arg(long, default_value_t = 4)]
    api_workers: usize,
}

/// Whether an HTTP request on `stream` gets a status line back within 3 s (the
/// API's liveness probe: any status will do).
fn api_answers<S: std::io::Read + std::io::Write + ProbeTimeout>(mut stream: S) -> bool {
    if stream.set_timeouts(Duration::from_secs(3)).is_err() {
        return false;
    }
    let request = b"GET /healthz HTTP/1.1\r\nHost: ebsd\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

trait ProbeTimeout {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()>;
}

impl ProbeTimeout for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

impl ProbeTimeout for std::net::TcpStream {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

/// Descriptors: one per volume, per NBD connection, per API client, and bursts of
/// object-store files during snapshot uploads; the usual soft limit (1024) is low for
/// a host's block service, so take the hard limit.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into `limit`, a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads `limit`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            log::warn!("open files limit: {}", std::io::Error::last_os_error());
        }
    }
}

/// Removes a stale socket left by a previous run; refuses to remove anything else.
fn remove_stale_socket(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            fs::remove_file(path).with_context(|| format!("remove stale socket {}", path.display()))
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => Ok(()),
    }
}

/// Blocks SIGTERM and SIGINT in every thread (call before spawning any), so that one
/// thread can wait for them with sigwait and shut the service down in order.
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut signals: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `signals` is a valid sigset_t owned by this frame; the calls only write it
    // and the calling thread's signal mask.
    unsafe {
        libc::sigemptyset(&mut signals);
        libc::sigaddset(&mut signals, libc::SIGTERM);
        libc::sigaddset(&mut signals, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut());
    }
    signals
}

fn wait_for_termination(signals: &libc::sigset_t) -> i32 {
    let mut received: libc::c_int = 0;
    // SAFETY: `signals` is an initialised set and `received` a valid out-pointer.
    unsafe { libc::sigwait(signals, &mut received) };
    received
}

fn serve(args: ServeArgs) -> Result<()> {
    let signals = block_termination_signals();
    raise_open_files_limit();
    let mut endpoints = Vec::new();
    for text in &args.nbd_listen {
        let endpoint: NbdEndpoint = text
            .parse()
            .with_context(|| format!("--nbd-listen {text}"))?;
        endpoints.push(endpoint);
    }
    // TCP endpoints are reported with the port actually bound (":0" picks one).
    let mut unix_listeners = Vec::new();
    let mut tcp_listeners = Vec::new();
    let mut advertised = Vec::new();
    for endpoint in &endpoints {
        match endpoint {
            NbdEndpoint::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = UnixListener::bind(path)
                    .with_context(|| format!("bind NBD socket {}", path.display()))?;
                advertised.push(endpoint.to_string());
                unix_listeners.push(listener);
            }
            NbdEndpoint::Tcp(address) => {
                let listener = TcpListener::bind(address)
                    .with_context(|| format!("bind NBD address {address}"))?;
                advertised.push(format!("tcp:{}", listener.local_addr()?));
                tcp_listeners.push(listener);
            }
        }
    }
    let service = Service::open(ServiceConfig {
        data_dir: args.data_dir.clone(),
        nbd_endpoints: advertised.clone(),
        snapshot_store: args.snapshot_store.clone(),
        kms_key_file: args.kms_key_file.clone(),
        test_clock: args.test_clock,
        modification_cooldown: args
            .modification_cooldown_seconds
            .map(std::time::Duration::from_secs),
    })
    .with_context(|| format!("open data directory {}", args.data_dir.display()))?;
    service.spawn_housekeeping();
    let nbd = NbdServer::new(Arc::clone(&service) as _);
    for listener in unix_listeners {
        let nbd = Arc::clone(&nbd);
        thread::spawn(move || nbd.serve_unix(listener));
    }
    for listener in tcp_listeners {
        let nbd = Arc::clone(&nbd);
        thread::spawn(move || nbd.serve_tcp(listener));
    }
    let api_sock = args.api_sock.clone();
    let bind_unix = move || {
        remove_stale_socket(&api_sock).map_err(|e| format!("{e:#}"))?;
        tiny_http::Server::http_unix(&api_sock)
            .map_err(|error| format!("bind API socket {}: {error}", api_sock.display()))
    };
    let api = bind_unix().map_err(anyhow::Error::msg)?;
    let probe_path = args.api_sock.clone();
    let probe_unix =
        move || std::os::unix::net::UnixStream::connect(&probe_path).is_ok_and(api_answers);
    ebs_blockdev::api::serve_resilient(
        Arc::clone(&service),
        api,
        Box::new(bind_unix),
        Box::new(probe_unix),
        args.api_workers,
    );
    if let Some(address) = args.api_listen.clone() {
        let probe_address = address.clone();
        let bind_tcp = move || {
            tiny_http::Server::http(&address)
                .map_err(|error| format!("bind API address {address}: {error}"))
        };
        let api = bind_tcp().map_err(anyhow::Error::msg)?;
        log::info!("API on http://{}", api.server_addr());
        let probe_tcp = move || std::net::TcpStream::connect(&probe_address).is_ok_and(api_answers);
        ebs_blockdev::api::serve_resilient(
            Arc::clone(&service),
            api,
            Box::new(bind_tcp),
            Box::new(probe_tcp),
            args.api_workers,
        );
    }
    log::info!(
        "ebsd serving {} (NBD: {}; API: {})",
        args.data_dir.display(),
        advertised.join(", "),
        args.api_sock.display()
    );
    let signal = wait_for_termination(&signals);
    log::info!("signal {signal}: flushing and closing volumes");
    service.shutdown();
    let _ = fs::remove_file(&args.api_sock);
    Ok(())
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
    }
}
