//! The NBD server: accept loops for TCP and Unix sockets, and the transmission phase.
//!
//! Per connection one thread reads requests (and WRITE payloads) and hands them to a few
//! worker threads, so several requests are in flight at once; workers send each reply
//! whole under a writer lock. Malformed requests get an error reply and the connection
//! keeps serving; only a request header that cannot be parsed ends the connection.

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;

use super::handshake::{negotiate, Negotiated};
use super::proto::*;
use super::{ExportProvider, IoDirection};
use crate::engine::EngineError;

/// Requests processed concurrently per connection.
const WORKERS_PER_CONNECTION: usize = 4;
/// Requests queued per connection beyond those being processed (back-pressure).
const QUEUED_REQUESTS: usize = 16;

/// A socket the server can split into a reader and a writer.
pub trait NbdStream: Read + Write + Send + Sized + 'static {
    fn try_clone_stream(&self) -> io::Result<Self>;
    fn shutdown_stream(&self);
}

impl NbdStream for TcpStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_stream(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl NbdStream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_stream(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

pub struct NbdServer {
    provider: Arc<dyn ExportProvider>,
}

/// One request ready for a worker.
struct Job {
    header: RequestHeader,
    payload: Vec<u8>,
}

/// What a worker sends back.
enum Outcome {
    Done,
    Data(Vec<u8>),
    Extents(Vec<(u32, u32)>),
    Failed(u32, String),
}

impl NbdServer {
    pub fn new(provider: Arc<dyn ExportProvider>) -> Arc<Self> {
        Arc::new(NbdServer { provider })
    }

    /// Accepts connections on `listener` forever (in the calling thread).
    pub fn serve_unix(self: &Arc<Self>, listener: UnixListener) {
        for connection in listener.incoming() {
            match connection {
                Ok(stream) => self.spawn_connection(stream, "unix".to_string()),
                Err(error) => log::warn!("nbd: accept on unix socket failed: {error}"),
            }
        }
    }

    pub fn serve_tcp(self: &Arc<Self>, listener: TcpListener) {
        for connection in listener.incoming() {
            match connection {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    self.spawn_connection(stream, peer);
                }
                Err(error) => log::warn!("nbd: accept on tcp socket failed: {error}"),
            }
        }
    }

    fn spawn_connection<S: NbdStream>(self: &Arc<Self>, stream: S, peer: String) {
        let server = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || {
                if let Err(error) = server.handle_connection(stream) {
                    log::info!("nbd: connection from {peer} ended: {error}");
                }
            });
        if let Err(error) = spawned {
            log::error!("nbd: cannot start a connection thread: {error}");
        }
    }

    /// Serves one connection from negotiation to disconnect.
    pub fn handle_connection<S: NbdStream>(&self, stream: S) -> io::Result<()> {
        let writer = stream.try_clone_stream()?;
        let mut reader = BufReader::with_capacity(256 * 1024, stream);
        let negotiated = {
            // Negotiation is strictly request/response: read and write on one handle.
            let mut duplex = Duplex {
                reader: &mut reader,
                writer: &writer,
            };
            match negotiate(&mut duplex, self.provider.as_ref())? {
                Some(negotiated) => negotiated,
                None => return Ok(()),
            }
        };
        log::info!(
            "nbd: serving {} (read_only={}, structured={})",
            negotiated.export.volume_id,
            negotiated.export.read_only,
            negotiated.structured_replies
        );
        let negotiated = Arc::new(negotiated);
        let writer = Arc::new(Mutex::new(writer));
        let (sender, receiver) = mpsc::sync_channel::<Job>(QUEUED_REQUESTS);
        let receiver = Arc::new(Mutex::new(receiver));
        let workers: Vec<_> = (0..WORKERS_PER_CONNECTION)
            .map(|_| {
                let negotiated = Arc::clone(&negotiated);
                let writer = Arc::clone(&writer);
                let receiver = Arc::clone(&receiver);
                thread::spawn(move || worker_loop(&negotiated, &writer, &receiver))
            })
            .collect();
        let result = read_requests(&mut reader, &negotiated, &writer, &sender);
        drop(sender);
        for worker in workers {
            let _ = worker.join();
        }
        if let Ok(stream) = writer.lock() {
            stream.shutdown_stream();
        }
        result
    }
}

/// Reads from the buffered reader, writes straight to the socket (negotiation only).
struct Duplex<'a, R: Read, W> {
    reader: &'a mut R,
    writer: &'a W,
}

impl<R: Read, W> Read for Duplex<'_, R, W> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buffer)
    }
}

impl<R: Read, W: NbdStream> Write for Duplex<'_, R, W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        // A cloned socket handle: writes go to the same connection.
        let mut handle = self.writer.try_clone_stream()?;
        handle.write(buffer)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn read_requests<R: Read, S: NbdStream>(
    reader: &mut R,
    negotiated: &Negotiated,
    writer: &Mutex<S>,
    sender: &mpsc::SyncSender<Job>,
) -> io::Result<()> {
    loop {
        let header = match RequestHeader::read(reader) {
            Ok(Some(header)) => header,
            Ok(None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad request magic; closing",
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        };
        if header.command == CMD_DISC {
            return Ok(());
        }
        let mut payload = Vec::new();
        if header.command == CMD_WRITE {
            if header.length > MAX_PAYLOAD {
                // Drain the payload so the stream stays in sync, then refuse it.
                io::copy(&mut reader.take(u64::from(header.length)), &mut io::sink())?;
                let errno = if negotiated.structured_replies {
                    EOVERFLOW
                } else {
                    EINVAL
                };
                send_outcome(
                    writer,
                    negotiated,
                    &header,
                    Outcome::Failed(
                        errno,
                        format!(
                            "WRITE of {} bytes exceeds the maximum of {MAX_PAYLOAD}",
                            header.length
                        ),
                    ),
                )?;
                continue;
            }
            payload.resize(header.length as usize, 0);
            reader.read_exact(&mut payload)?;
        }
        // Checked after the payload was read, so the reply is not lost to a reset.
        if negotiated.export.revoked.load(Ordering::Acquire) {
            send_outcome(
                writer,
                negotiated,
                &header,
                Outcome::Failed(ESHUTDOWN, "the attachment was detached".into()),
            )?;
            return Ok(());
        }
        if sender.send(Job { header, payload }).is_err() {
            return Err(io::Error::other("workers stopped"));
        }
    }
}

fn worker_loop<S: NbdStream>(
    negotiated: &Negotiated,
    writer: &Mutex<S>,
    receiver: &Mutex<Receiver<Job>>,
) {
    loop {
        let job = {
            let Ok(receiver) = receiver.lock() else {
                return;
            };
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let outcome = execute(negotiated, &job.header, job.payload);
        if let Outcome::Failed(errno, message) = &outcome {
            log::debug!(
                "nbd: {} {} offset={} length={} failed: errno {errno}: {message}",
                negotiated.export.volume_id,
                command_name(job.header.command),
                job.header.offset,
                job.header.length
            );
        }
        if let Err(error) = send_outcome(writer, negotiated, &job.header, outcome) {
            log::info!(
                "nbd: reply to {} failed: {error}",
                negotiated.export.volume_id
            );
            if let Ok(stream) = writer.lock() {
                stream.shutdown_stream();
            }
            return;
        }
    }
}

fn engine_failure(error: EngineError) -> Outcome {
    let errno = match error.errno() {
        libc::EINVAL => EINVAL,
        libc::ENOSPC => ENOSPC,
        _ => EIO,
    };
    Outcome::Failed(errno, error.to_string())
}

/// Validates and carries out one request.
fn execute(negotiated: &Negotiated, header: &RequestHeader, payload: Vec<u8>) -> Outcome {
    let export = &negotiated.export;
    let store = &export.store;
    let allowed_flags = match header.command {
        CMD_READ => CMD_FLAG_DF,
        CMD_WRITE | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
        CMD_FLUSH => 0,
        other => return Outcome::Failed(EINVAL, format!("unknown command {other}")),
    };
    if header.flags & !allowed_flags != 0 {
        return Outcome::Failed(
            EINVAL,
            format!(
                "flags {:#x} are not valid for {}",
                header.flags,
                command_name(header.command)
            ),
        );
    }
    let length = u64::from(header.length);
    let size = store.size();
    if header.command != CMD_FLUSH
        && header
            .offset
            .checked_add(length)
            .is_none_or(|end| end > size)
    {
        return Outcome::Failed(
            EINVAL,
            format!(
                "offset {} + length {length} is beyond the end of the {size}-byte export",
                header.offset
            ),
        );
    }
    let is_write = matches!(header.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if is_write && export.read_only {
        return Outcome::Failed(EPERM, "the export is read-only for this attachment".into());
    }
    let fua = header.flags & CMD_FLAG_FUA != 0;
    if let Some(throttle) = &export.throttle {
        match header.command {
            CMD_READ => throttle.admit(IoDirection::Read, header.offset, length),
            CMD_WRITE => throttle.admit(IoDirection::Write, header.offset, length),
            _ => {}
        }
    }
    let result = match header.command {
        CMD_READ => {
            if header.length > MAX_PAYLOAD {
                let errno = if negotiated.structured_replies {
                    EOVERFLOW
                } else {
                    EINVAL
                };
                return Outcome::Failed(
                    errno,
                    format!("READ of {length} bytes exceeds the maximum of {MAX_PAYLOAD}"),
                );
            }
            let mut data = vec![0u8; header.length as usize];
            return match store.read_at(header.offset, &mut data) {
                Ok(()) => Outcome::Data(data),
                Err(error) => engine_failure(error),
            };
        }
        CMD_WRITE => store.write_at(header.offset, &payload, fua),
        CMD_TRIM => store.trim(header.offset, length, fua),
        CMD_WRITE_ZEROES => store.write_zeroes(
            header.offset,
            length,
            fua,
            header.flags & CMD_FLAG_NO_HOLE == 0,
        ),
        CMD_FLUSH => store.flush(),
        CMD_BLOCK_STATUS => {
            if negotiated.allocation_context.is_none() {
                return Outcome::Failed(
                    EINVAL,
                    "BLOCK_STATUS needs the base:allocation meta context".into(),
                );
            }
            if length == 0 {
                return Outcome::Failed(EINVAL, "BLOCK_STATUS of length 0".into());
            }
            return match store.block_status(header.offset, length) {
                Ok(extents) => {
                    let mut descriptors: Vec<(u32, u32)> = extents
                        .iter()
                        .map(|extent| {
                            let flags = if extent.is_hole {
                                STATE_HOLE | STATE_ZERO
                            } else {
                                0
                            };
                            // Extents lie within a u32-length request.
                            (extent.length as u32, flags)
                        })
                        .collect();
                    if header.flags & CMD_FLAG_REQ_ONE != 0 {
                        descriptors.truncate(1);
                    }
                    Outcome::Extents(descriptors)
                }
                Err(error) => engine_failure(error),
            };
        }
        _ => unreachable!("filtered by the flag check above"),
    };
    match result {
        Ok(()) => Outcome::Done,
        Err(error) => engine_failure(error),
    }
}

fn send_outcome<S: NbdStream>(
    writer: &Mutex<S>,
    negotiated: &Negotiated,
    header: &RequestHeader,
    outcome: Outcome,
) -> io::Result<()> {
    let handle = header.handle;
    let mut message = Vec::new();
    if negotiated.structured_replies {
        match outcome {
            Outcome::Done => message.extend_from_slice(&structured_chunk_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_NONE,
                handle,
                0,
            )),
            Outcome::Data(data) => {
                message.reserve(28 + data.len());
                message.extend_from_slice(&structured_chunk_header(
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_OFFSET_DATA,
                    handle,
                    8 + data.len() as u32,
                ));
                message.extend_from_slice(&header.offset.to_be_bytes());
                message.extend_from_slice(&data);
            }
            Outcome::Extents(descriptors) => {
                let context = negotiated.allocation_context.unwrap_or(0);
                message.extend_from_slice(&structured_chunk_header(
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_BLOCK_STATUS,
                    handle,
                    4 + 8 * descriptors.len() as u32,
                ));
                message.extend_from_slice(&context.to_be_bytes());
                for (length, flags) in descriptors {
                    message.extend_from_slice(&length.to_be_bytes());
                    message.extend_from_slice(&flags.to_be_bytes());
                }
            }
            Outcome::Failed(errno, text) => {
                let text = &text.as_bytes()[..text.len().min(4096)];
                message.extend_from_slice(&structured_chunk_header(
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_ERROR,
                    handle,
                    6 + text.len() as u32,
                ));
                message.extend_from_slice(&errno.to_be_bytes());
                message.extend_from_slice(&(text.len() as u16).to_be_bytes());
                message.extend_from_slice(text);
            }
        }
    } else {
        match outcome {
            Outcome::Done | Outcome::Extents(_) => {
                message.extend_from_slice(&simple_reply_header(0, handle))
            }
            Outcome::Data(data) => {
                message.reserve(16 + data.len());
                message.extend_from_slice(&simple_reply_header(0, handle));
                message.extend_from_slice(&data);
            }
            Outcome::Failed(errno, _) => {
                message.extend_from_slice(&simple_reply_header(errno, handle))
            }
        }
    }
    let mut stream = writer
        .lock()
        .map_err(|_| io::Error::other("writer lock poisoned"))?;
    stream.write_all(&message)
}
