//! The host daemon front end: HTTP/1.1 over tokio TCP sockets, many instances told apart by
//! source address, reloadable without dropping connections.
//!
//! Each connection is one task that parses pipelined requests from a bounded buffer. A
//! request must arrive completely within [`ConnectionLimits::request_timeout`] of its first
//! byte and an idle keep-alive connection closes after [`ConnectionLimits::idle_timeout`],
//! so slow or stuck clients cost one small task and never block anyone else. Reloading swaps an `Arc` to a new instance
//! table: requests in flight finish against the old one, the next use the new one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::HostConfig;
use crate::credentials::CredentialIssuer;
use crate::error::ImdsError;
use crate::handler::Handler;
use crate::http::{parse_request, Parsed, Request, Response, MAX_BODY_BYTES, MAX_HEAD_BYTES};
use crate::identity::IdentitySigner;
use crate::model::InstanceMetadata;
use crate::ratelimit::{throttled_response, RateLimiter};
use crate::timefmt::{http_date, unix_seconds};
use crate::token::TokenSealer;

/// Bounds on what one client can hold.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// A request must be complete this long after its first byte.
    pub request_timeout: Duration,
    /// A keep-alive connection with nothing in flight closes after this.
    pub idle_timeout: Duration,
    /// Connections beyond this are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}
const READ_CHUNK: usize = 4096;

/// One instance as the daemon serves it.
pub struct ServedInstance {
    pub metadata: InstanceMetadata,
    limiter: Option<Mutex<RateLimiter>>,
}

/// Source address -> instance.
#[derive(Default)]
pub struct InstanceTable {
    by_address: HashMap<IpAddr, Arc<ServedInstance>>,
    instances: Vec<Arc<ServedInstance>>,
}

impl InstanceTable {
    pub fn build(
        config: &HostConfig,
        signer: Option<&IdentitySigner>,
    ) -> Result<InstanceTable, ImdsError> {
        config.validate()?;
        let mut table = InstanceTable::default();
        let now = Instant::now();
        for record in &config.instances {
            let served = Arc::new(ServedInstance {
                metadata: InstanceMetadata::build(record, signer)?,
                limiter: RateLimiter::new(record.metadata_options.requests_per_second, now)
                    .map(Mutex::new),
            });
            for address in record.effective_source_addresses() {
                table.by_address.insert(address, Arc::clone(&served));
            }
            table.instances.push(served);
        }
        Ok(table)
    }

    pub fn instances(&self) -> &[Arc<ServedInstance>] {
        &self.instances
    }
}

/// Shared by every connection: the handler (token key, credential secret) lives as long
/// as the daemon, the instance table is swapped on reload.
pub struct ServerState {
    handler: Handler,
    table: RwLock<Arc<InstanceTable>>,
}

impl ServerState {
    pub fn new(handler: Handler, table: InstanceTable) -> ServerState {
        ServerState {
            handler,
            table: RwLock::new(Arc::new(table)),
        }
    }

    pub fn replace_table(&self, table: InstanceTable) {
        // A poisoned lock only means a panic elsewhere mid-swap; the Arc inside is whole.
        let mut guard = self
            .table
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        *guard = Arc::new(table);
    }

    pub fn table(&self) -> Arc<InstanceTable> {
        let guard = self
            .table
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        Arc::clone(&guard)
    }

    /// Picks the instance by source address, applies its rate limit, runs the handler.
    pub fn respond(
        &self,
        peer: IpAddr,
        request: &Request,
        now: Instant,
        wall_clock: u64,
    ) -> Response {
        let table = self.table();
        let Some(instance) = table.by_address.get(&peer.to_canonical()) else {
            log::debug!("request from {peer}, which is no configured instance's address");
            return Response::text(403, "Forbidden");
        };
        if let Some(limiter) = &instance.limiter {
            let allowed = limiter
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .try_acquire(now);
            if !allowed {
                return throttled_response();
            }
        }
        self.handler.handle(&instance.metadata, request, wall_clock)
    }
}

/// Accepts connections forever; each connection runs in its own task.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    limits: ConnectionLimits,
) -> Result<(), ImdsError> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of fds or a connection reset before accept: transient, keep serving
                // the connections we have and try again shortly.
                log::warn!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            log::warn!(
                "connection limit {} reached; closing {peer}",
                limits.max_connections
            );
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, peer, &state, limits).await {
                log::debug!("connection {peer}: {error}");
            }
            drop(slot);
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: &ServerState,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    // Once a token went out, the connection keeps the hop-limited TTL: retransmissions of
    // the token (sent later by the kernel) must not escape further than the first copy.
    let mut applied_ttl: Option<u8> = None;
    let mut request_started: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wall_clock = unix_seconds(SystemTime::now());
        let date = http_date(wall_clock);
        let mut close_after_write = false;
        // Answer everything already buffered (pipelining) before reading again.
        loop {
            match parse_request(&buffer) {
                Ok(Parsed::Complete { request, consumed }) => {
                    buffer.drain(..consumed);
                    let response = state.respond(peer.ip(), &request, now, wall_clock);
                    log::debug!(
                        target: "imds::access",
                        "{} {} {} token={} -> {}",
                        peer.ip(),
                        request.method,
                        request.target,
                        request.has_header(crate::handler::TOKEN_HEADER),
                        response.status
                    );
                    if let Some(ttl) = response.ip_ttl {
                        if applied_ttl != Some(ttl) {
                            set_ip_ttl(&stream, peer, ttl);
                            applied_ttl = Some(ttl);
                        }
                    }
                    response.write_to(request.keep_alive, &date, &mut out);
                    if !request.keep_alive || response.close {
                        close_after_write = true;
                        break;
                    }
                }
                Ok(Parsed::Partial) => break,
                Err(error) => {
                    log::debug!("{peer}: malformed request: {error}");
                    Response::bad_request().write_to(false, &date, &mut out);
                    close_after_write = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close_after_write {
            stream.shutdown().await?;
            return Ok(());
        }
        request_started = if buffer.is_empty() {
            None
        } else {
            request_started.or(Some(now))
        };
        let wait = match request_started {
            Some(started) => limits.request_timeout.saturating_sub(started.elapsed()),
            None => limits.idle_timeout,
        };
        let read = match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(result) => result?,
            Err(_elapsed) => {
                if request_started.is_some() {
                    log::debug!(
                        "{peer}: request not complete within {:?}",
                        limits.request_timeout
                    );
                }
                return Ok(());
            }
        };
        if read == 0 {
            return Ok(());
        }
        // The parser rejects heads over MAX_HEAD_BYTES, so a buffer beyond head + body
        // limits can only be pipelined requests we have not parsed yet; refuse more.
        if buffer.len() + read > MAX_HEAD_BYTES + MAX_BODY_BYTES + READ_CHUNK {
            Response::bad_request().write_to(false, &date, &mut out);
            stream.write_all(&out).await?;
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn set_ip_ttl(stream: &TcpStream, peer: SocketAddr, ttl: u8) {
    let result = if peer.is_ipv4() || peer.ip().to_canonical().is_ipv4() {
        stream.set_ttl(u32::from(ttl))
    } else {
        set_ipv6_hop_limit(stream, ttl)
    };
    if let Err(error) = result {
        log::warn!("{peer}: cannot set IP TTL {ttl}: {error}");
    }
}

fn set_ipv6_hop_limit(stream: &TcpStream, hops: u8) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::from(hops);
    // SAFETY: the fd is a live socket owned by `stream` for this call; the option value
    // points at a c_int on our stack whose size we pass exactly.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Loads a config file and everything it points at (signing key, credential secret).
pub struct LoadedConfig {
    pub config: HostConfig,
    pub signer: Option<IdentitySigner>,
}

pub fn load_config(
    path: &Path,
    signing_override: Option<(&Path, &Path)>,
) -> Result<LoadedConfig, ImdsError> {
    let config = HostConfig::load(path)?;
    let signer = match (signing_override, &config.signing) {
        (Some((key, certificate)), _) => Some(IdentitySigner::load(key, certificate)?),
        (None, Some(signing)) => Some(IdentitySigner::load(
            &signing.private_key,
            &signing.certificate,
        )?),
        (None, None) => None,
    };
    Ok(LoadedConfig { config, signer })
}

/// A handler with a fresh token key and the config's credential secret (or a random one).
pub fn handler_for(config: &HostConfig) -> Result<Handler, ImdsError> {
    let credentials = match &config.credential_secret {
        Some(secret) => CredentialIssuer::from_hex(secret)?,
        None => CredentialIssuer::random()?,
    };
    Ok(Handler::new(TokenSealer::random()?, credentials))
}

/// Re-reads the config and swaps the table; on error the old table stays in service.
pub struct Reloader {
    pub config_path: PathBuf,
    pub signing_override: Option<(PathBuf, PathBuf)>,
    pub state: Arc<ServerState>,
}

impl Reloader {
    pub fn reload(&self) -> Result<usize, ImdsError> {
        let override_paths = self
            .signing_override
            .as_ref()
            .map(|(key, certificate)| (key.as_path(), certificate.as_path()));
        let loaded = load_config(&self.config_path, override_paths)?;
        let table = InstanceTable::build(&loaded.config, loaded.signer.as_ref())?;
        let count = table.instances().len();
        self.state.replace_table(table);
        Ok(count)
    }

    /// Modification time and length: a cheap change detector for polling.
    pub fn fingerprint(&self) -> Option<(SystemTime, u64)> {
        let metadata = std::fs::metadata(&self.config_path).ok()?;
        Some((metadata.modified().ok()?, metadata.len()))
    }
}
