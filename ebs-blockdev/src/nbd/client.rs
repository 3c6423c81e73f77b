//! A blocking, pipelined NBD client: what the VMM's virtio-blk backend uses to reach a
//! volume. Any number of threads may issue requests on one `NbdClient` at once; each
//! request gets its own handle and a reader thread routes replies back, so requests are
//! in flight concurrently. `submit_*` start a request without waiting for it.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use super::proto::*;

/// Where an NBD server listens: `unix:/path` (or a bare absolute path) or `[tcp:]host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdEndpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for NbdEndpoint {
    type Err = NbdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(NbdEndpoint::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') {
            return Ok(NbdEndpoint::Unix(PathBuf::from(text)));
        }
        let address = text.strip_prefix("tcp:").unwrap_or(text);
        if address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            Ok(NbdEndpoint::Tcp(address.to_string()))
        } else {
            Err(NbdError::Protocol(format!(
                "endpoint '{text}' is neither unix:/path nor host:port"
            )))
        }
    }
}

impl fmt::Display for NbdEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdEndpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            NbdEndpoint::Tcp(address) => write!(f, "tcp:{address}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect { endpoint: String, source: io::Error },
    #[error("NBD connection I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("NBD protocol error: {0}")]
    Protocol(String),
    #[error("the server refused export '{export}' ({reason}): {message}")]
    Refused {
        export: String,
        reason: &'static str,
        message: String,
    },
    #[error("{command} at offset {offset} failed on the server: errno {errno}")]
    Server {
        command: &'static str,
        offset: u64,
        errno: u32,
    },
    #[error("the NBD connection is closed: {0}")]
    Disconnected(String),
    #[error("the export is read-only")]
    ReadOnly,
    #[error("request [{offset}, +{length}) is beyond the export's {size} bytes")]
    OutOfRange { offset: u64, length: u64, size: u64 },
    #[error("the server does not support {0}")]
    Unsupported(&'static str),
}

/// What the handshake told us about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub transmission_flags: u16,
    pub minimum_block_size: u32,
    pub preferred_block_size: u32,
    pub maximum_block_size: u32,
}

impl ExportInfo {
    fn flag(&self, flag: u16) -> bool {
        self.transmission_flags & flag != 0
    }
    pub fn read_only(&self) -> bool {
        self.flag(TFLAG_READ_ONLY)
    }
    pub fn can_flush(&self) -> bool {
        self.flag(TFLAG_SEND_FLUSH)
    }
    pub fn can_fua(&self) -> bool {
        self.flag(TFLAG_SEND_FUA)
    }
    pub fn can_trim(&self) -> bool {
        self.flag(TFLAG_SEND_TRIM)
    }
    pub fn can_write_zeroes(&self) -> bool {
        self.flag(TFLAG_SEND_WRITE_ZEROES)
    }
    pub fn can_multi_conn(&self) -> bool {
        self.flag(TFLAG_CAN_MULTI_CONN)
    }
}

type ReplyResult = Result<Vec<u8>, NbdError>;

struct Waiter {
    command: u16,
    offset: u64,
    read_length: usize,
    reply: SyncSender<ReplyResult>,
}

#[derive(Default)]
struct PendingTable {
    waiting: HashMap<u64, Waiter>,
    closed: Option<String>,
}

trait ClientStream: Read + Write + Send + 'static {
    fn clone_boxed(&self) -> io::Result<Box<dyn ClientStream>>;
    fn shutdown_both(&self);
}

impl ClientStream for UnixStream {
    fn clone_boxed(&self) -> io::Result<Box<dyn ClientStream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_both(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl ClientStream for TcpStream {
    fn clone_boxed(&self) -> io::Result<Box<dyn ClientStream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_both(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// Called by the reply thread after each reply is delivered (and on disconnect): lets an
/// event loop learn of completions without blocking, e.g. by writing an eventfd.
pub type CompletionNotifier = Arc<dyn Fn() + Send + Sync>;

struct Shared {
    writer: Mutex<Box<dyn ClientStream>>,
    pending: Mutex<PendingTable>,
    next_handle: AtomicU64,
    notifier: Mutex<Option<CompletionNotifier>>,
}

impl Shared {
    fn notify(&self) {
        let notifier = self
            .notifier
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(notify) = notifier {
            notify();
        }
    }
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, PendingTable> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fails every waiting request and refuses new ones.
    fn close(&self, reason: &str) {
        let mut pending = self.pending();
        if pending.closed.is_none() {
            pending.closed = Some(reason.to_string());
        }
        for (_, waiter) in pending.waiting.drain() {
            let _ = waiter
                .reply
                .send(Err(NbdError::Disconnected(reason.to_string())));
        }
    }
}

/// A request on its way; `wait` returns its result (the data, for reads).
#[must_use = "a submitted request must be waited for to learn whether it succeeded"]
pub struct PendingRequest {
    receiver: Receiver<ReplyResult>,
}

impl PendingRequest {
    /// Blocks until the reply arrives.
    pub fn wait(self) -> Result<Vec<u8>, NbdError> {
        self.receiver
            .recv()
            .unwrap_or_else(|_| Err(NbdError::Disconnected("reply channel closed".into())))
    }

    /// The reply if it has arrived, without blocking; `None` while it is in flight.
    pub fn try_wait(&self) -> Option<Result<Vec<u8>, NbdError>> {
        match self.receiver.try_recv() {
            Ok(result) => Some(result),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                Some(Err(NbdError::Disconnected("reply channel closed".into())))
            }
        }
    }
}

pub struct NbdClient {
    shared: Arc<Shared>,
    info: ExportInfo,
    reader_thread: Option<JoinHandle<()>>,
}

/// Largest TRIM/WRITE_ZEROES length sent in one request (the field is 32 bits).
const MAX_RANGE_REQUEST: u64 = 1 << 30;

impl NbdClient {
    /// Connects and negotiates. `export` is the volume id; `secret` the attachment token
    /// (the export name becomes `<export>/<secret>`, as AttachVolume returns it).
    pub fn connect(
        endpoint: &NbdEndpoint,
        export: &str,
        secret: Option<&str>,
    ) -> Result<Self, NbdError> {
        let export_name = match secret {
            Some(secret) => format!("{export}/{secret}"),
            None => export.to_string(),
        };
        let connect_error = |source| NbdError::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        let mut stream: Box<dyn ClientStream> = match endpoint {
            NbdEndpoint::Unix(path) => Box::new(UnixStream::connect(path).map_err(connect_error)?),
            NbdEndpoint::Tcp(address) => {
                let stream = TcpStream::connect(address).map_err(connect_error)?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
        };
        let info = negotiate(&mut stream, &export_name)?;
        let reader = stream.clone_boxed()?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream),
            pending: Mutex::new(PendingTable::default()),
            notifier: Mutex::new(None),
            next_handle: AtomicU64::new(1),
        });
        let reader_shared = Arc::clone(&shared);
        let reader_thread =
            thread::Builder::new()
                .name("nbd-client-rx".into())
                .spawn(move || {
                    let reason = match receive_replies(reader, &reader_shared) {
                        Ok(()) => "server closed the connection".to_string(),
                        Err(error) => error.to_string(),
                    };
                    reader_shared.close(&reason);
                    reader_shared.notify();
                })?;
        Ok(NbdClient {
            shared,
            info,
            reader_thread: Some(reader_thread),
        })
    }

    /// Connects with the full export name AttachVolume returned (`<volume-id>/<token>`).
    pub fn connect_export(endpoint: &NbdEndpoint, export_name: &str) -> Result<Self, NbdError> {
        match export_name.split_once('/') {
            Some((volume, token)) => Self::connect(endpoint, volume, Some(token)),
            None => Self::connect(endpoint, export_name, None),
        }
    }

    /// Sets the callback the reply thread runs after each completed request (and once
    /// when the connection closes). Keep it short and non-blocking: it runs on the
    /// thread that reads replies.
    pub fn set_completion_notifier(&self, notifier: Option<CompletionNotifier>) {
        *self
            .shared
            .notifier
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = notifier;
    }

    /// Starts a FLUSH without waiting for it.
    pub fn submit_flush(&self) -> Result<PendingRequest, NbdError> {
        if !self.info.can_flush() {
            return Err(NbdError::Unsupported("FLUSH"));
        }
        self.submit(CMD_FLUSH, 0, 0, 0, &[])
    }

    pub fn info(&self) -> ExportInfo {
        self.info
    }

    pub fn size(&self) -> u64 {
        self.info.size
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<(), NbdError> {
        match offset.checked_add(length) {
            Some(end) if end <= self.info.size => Ok(()),
            _ => Err(NbdError::OutOfRange {
                offset,
                length,
                size: self.info.size,
            }),
        }
    }

    fn submit(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<PendingRequest, NbdError> {
        let handle = self.shared.next_handle.fetch_add(1, Ordering::Relaxed);
        let (reply, receiver) = mpsc::sync_channel(1);
        {
            let mut pending = self.shared.pending();
            if let Some(reason) = &pending.closed {
                return Err(NbdError::Disconnected(reason.clone()));
            }
            let read_length = if command == CMD_READ {
                length as usize
            } else {
                0
            };
            pending.waiting.insert(
                handle,
                Waiter {
                    command,
                    offset,
                    read_length,
                    reply,
                },
            );
        }
        let header = RequestHeader {
            flags,
            command,
            handle,
            offset,
            length,
        }
        .encode();
        let sent = {
            let mut writer = self
                .shared
                .writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            writer
                .write_all(&header)
                .and_then(|()| writer.write_all(payload))
        };
        if let Err(error) = sent {
            self.shared.pending().waiting.remove(&handle);
            self.shared.close(&format!("send failed: {error}"));
            return Err(NbdError::Io(error));
        }
        Ok(PendingRequest { receiver })
    }

    /// Starts a read of `length` bytes (at most the export's maximum block size).
    pub fn submit_read(&self, offset: u64, length: u32) -> Result<PendingRequest, NbdError> {
        self.check_range(offset, u64::from(length))?;
        if length > self.info.maximum_block_size {
            return Err(NbdError::Protocol(format!(
                "read of {length} bytes exceeds the export's maximum {}",
                self.info.maximum_block_size
            )));
        }
        self.submit(CMD_READ, 0, offset, length, &[])
    }

    /// Starts a write (at most the maximum block size); `fua` makes it durable on reply.
    pub fn submit_write(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<PendingRequest, NbdError> {
        if self.info.read_only() {
            return Err(NbdError::ReadOnly);
        }
        self.check_range(offset, data.len() as u64)?;
        let length = u32::try_from(data.len())
            .ok()
            .filter(|&length| length <= self.info.maximum_block_size)
            .ok_or_else(|| {
                NbdError::Protocol(format!(
                    "write of {} bytes exceeds the export's maximum {}",
                    data.len(),
                    self.info.maximum_block_size
                ))
            })?;
        let flags = if fua && self.info.can_fua() {
            CMD_FLAG_FUA
        } else {
            0
        };
        self.submit(CMD_WRITE, flags, offset, length, data)
    }

    /// Reads `buffer.len()` bytes at `offset`, in pipelined chunks when large.
    pub fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<(), NbdError> {
        self.check_range(offset, buffer.len() as u64)?;
        let chunk = self.info.maximum_block_size as usize;
        let requests: Vec<_> = buffer
            .chunks(chunk)
            .enumerate()
            .map(|(index, part)| {
                self.submit_read(offset + (index * chunk) as u64, part.len() as u32)
            })
            .collect();
        for (part, request) in buffer.chunks_mut(chunk).zip(requests) {
            let data = request?.wait()?;
            part.copy_from_slice(&data);
        }
        Ok(())
    }

    /// Writes `data` at `offset`; with `fua` it is durable when this returns.
    pub fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        self.check_range(offset, data.len() as u64)?;
        let chunk = self.info.maximum_block_size as usize;
        let requests: Vec<_> = data
            .chunks(chunk)
            .enumerate()
            .map(|(index, part)| self.submit_write(offset + (index * chunk) as u64, part, fua))
            .collect();
        let mut first_error = None;
        for request in requests {
            if let Err(error) = request.and_then(PendingRequest::wait) {
                first_error.get_or_insert(error);
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        if fua && !self.info.can_fua() {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes all completed writes durable.
    pub fn flush(&self) -> Result<(), NbdError> {
        if !self.info.can_flush() {
            return Err(NbdError::Unsupported("FLUSH"));
        }
        self.submit(CMD_FLUSH, 0, 0, 0, &[])?.wait().map(drop)
    }

    fn range_command(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u64,
    ) -> Result<(), NbdError> {
        if self.info.read_only() {
            return Err(NbdError::ReadOnly);
        }
        self.check_range(offset, length)?;
        let mut requests = Vec::new();
        let mut done = 0;
        while done < length {
            let part = (length - done).min(MAX_RANGE_REQUEST);
            requests.push(self.submit(command, flags, offset + done, part as u32, &[]));
            done += part;
        }
        for request in requests {
            request?.wait()?;
        }
        Ok(())
    }

    /// Discards a range (the server frees its space; contents become zeros here).
    pub fn trim(&self, offset: u64, length: u64) -> Result<(), NbdError> {
        if !self.info.can_trim() {
            return Err(NbdError::Unsupported("TRIM"));
        }
        self.range_command(CMD_TRIM, 0, offset, length)
    }

    /// Zeroes a range; `may_deallocate` lets the server free the space instead of
    /// writing zeros (without it, NBD_CMD_FLAG_NO_HOLE is sent).
    pub fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        may_deallocate: bool,
    ) -> Result<(), NbdError> {
        if !self.info.can_write_zeroes() {
            return Err(NbdError::Unsupported("WRITE_ZEROES"));
        }
        let flags = if may_deallocate { 0 } else { CMD_FLAG_NO_HOLE };
        self.range_command(CMD_WRITE_ZEROES, flags, offset, length)
    }

    /// Sends NBD_CMD_DISC after the outstanding requests and closes the connection.
    pub fn disconnect(mut self) -> Result<(), NbdError> {
        self.shutdown(true)
    }

    fn shutdown(&mut self, send_disc: bool) -> Result<(), NbdError> {
        let mut result = Ok(());
        {
            let mut writer = self
                .shared
                .writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if send_disc {
                let header = RequestHeader {
                    flags: 0,
                    command: CMD_DISC,
                    handle: 0,
                    offset: 0,
                    length: 0,
                };
                result = writer.write_all(&header.encode()).map_err(NbdError::Io);
            }
            writer.shutdown_both();
        }
        if let Some(thread) = self.reader_thread.take() {
            let _ = thread.join();
        }
        result
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        if self.reader_thread.is_some() {
            let _ = self.shutdown(true);
        }
    }
}

fn receive_replies(stream: Box<dyn ClientStream>, shared: &Shared) -> Result<(), NbdError> {
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    loop {
        let magic = match read_u32(&mut reader) {
            Ok(magic) => magic,
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(NbdError::Protocol(format!(
                "unexpected reply magic {magic:#x}"
            )));
        }
        let errno = read_u32(&mut reader)?;
        let handle = read_u64(&mut reader)?;
        let waiter = shared
            .pending()
            .waiting
            .remove(&handle)
            .ok_or_else(|| NbdError::Protocol(format!("reply for unknown handle {handle}")))?;
        let result = if errno != 0 {
            Err(NbdError::Server {
                command: command_name(waiter.command),
                offset: waiter.offset,
                errno,
            })
        } else {
            let mut data = vec![0u8; waiter.read_length];
            reader.read_exact(&mut data)?;
            Ok(data)
        };
        let _ = waiter.reply.send(result);
        shared.notify();
    }
}

/// Client side of fixed-newstyle negotiation: OPT_GO (asking for block sizes), falling
/// back to OPT_EXPORT_NAME for servers without GO.
fn negotiate(
    stream: &mut Box<dyn ClientStream>,
    export_name: &str,
) -> Result<ExportInfo, NbdError> {
    if read_u64(stream)? != NBDMAGIC || read_u64(stream)? != IHAVEOPT {
        return Err(NbdError::Protocol("not a fixed-newstyle NBD server".into()));
    }
    let server_flags = read_u16(stream)?;
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Protocol(
            "server does not support fixed newstyle".into(),
        ));
    }
    let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
    let client_flags =
        CLIENT_FLAG_FIXED_NEWSTYLE | if no_zeroes { CLIENT_FLAG_NO_ZEROES } else { 0 };
    stream.write_all(&client_flags.to_be_bytes())?;

    let name = export_name.as_bytes();
    let mut go = Vec::new();
    go.extend_from_slice(&(name.len() as u32).to_be_bytes());
    go.extend_from_slice(name);
    go.extend_from_slice(&1u16.to_be_bytes());
    go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(stream, OPT_GO, &go)?;
    let mut info = ExportInfo {
        size: 0,
        transmission_flags: 0,
        minimum_block_size: 1,
        preferred_block_size: 4096,
        maximum_block_size: MAX_PAYLOAD,
    };
    let mut have_export_info = false;
    loop {
        if read_u64(stream)? != OPTION_REPLY_MAGIC {
            return Err(NbdError::Protocol("bad option reply magic".into()));
        }
        let _option = read_u32(stream)?;
        let reply = read_u32(stream)?;
        let length = read_u32(stream)?;
        if length > MAX_OPTION_LENGTH {
            return Err(NbdError::Protocol(format!(
                "option reply of {length} bytes"
            )));
        }
        let mut data = vec![0u8; length as usize];
        stream.read_exact(&mut data)?;
        let mut cursor = &data[..];
        match reply {
            REP_ACK if have_export_info => return Ok(info),
            REP_ACK => {
                return Err(NbdError::Protocol(
                    "GO acknowledged without export information".into(),
                ))
            }
            REP_INFO => match read_u16(&mut cursor)? {
                INFO_EXPORT => {
                    info.size = read_u64(&mut cursor)?;
                    info.transmission_flags = read_u16(&mut cursor)?;
                    have_export_info = true;
                }
                INFO_BLOCK_SIZE => {
                    info.minimum_block_size = read_u32(&mut cursor)?;
                    info.preferred_block_size = read_u32(&mut cursor)?;
                    info.maximum_block_size = read_u32(&mut cursor)?.clamp(512, MAX_PAYLOAD);
                }
                _ => {}
            },
            REP_ERR_UNSUP => return export_name_fallback(stream, export_name, no_zeroes),
            error if error & (1 << 31) != 0 => {
                let reason = match error {
                    REP_ERR_UNKNOWN => "unknown export",
                    REP_ERR_POLICY => "not authorized",
                    REP_ERR_INVALID => "invalid request",
                    _ => "error",
                };
                return Err(NbdError::Refused {
                    export: export_name
                        .split('/')
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    reason,
                    message: String::from_utf8_lossy(&data).into_owned(),
                });
            }
            _ => {}
        }
    }
}

fn export_name_fallback(
    stream: &mut Box<dyn ClientStream>,
    export_name: &str,
    no_zeroes: bool,
) -> Result<ExportInfo, NbdError> {
    send_option(stream, OPT_EXPORT_NAME, export_name.as_bytes())?;
    let size = read_u64(stream).map_err(|_| NbdError::Refused {
        export: export_name.to_string(),
        reason: "closed",
        message: "the server closed the connection".into(),
    })?;
    let transmission_flags = read_u16(stream)?;
    if !no_zeroes {
        let mut zeros = [0u8; 124];
        stream.read_exact(&mut zeros)?;
    }
    Ok(ExportInfo {
        size,
        transmission_flags,
        minimum_block_size: 1,
        preferred_block_size: 4096,
        maximum_block_size: MAX_PAYLOAD,
    })
}

fn send_option(stream: &mut Box<dyn ClientStream>, option: u32, data: &[u8]) -> io::Result<()> {
    let mut message = Vec::with_capacity(16 + data.len());
    message.extend_from_slice(&IHAVEOPT.to_be_bytes());
    message.extend_from_slice(&option.to_be_bytes());
    message.extend_from_slice(&(data.len() as u32).to_be_bytes());
    message.extend_from_slice(data);
    stream.write_all(&message)
}
