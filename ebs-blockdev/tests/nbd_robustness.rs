//! Bad input against the NBD server: malformed and out-of-range requests, wrong export
//! names and tokens, read-only and revoked attachments. The server must answer with a
//! clear error and keep serving.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

use common::*;
use ebs_blockdev::nbd::proto::*;
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint, NbdError};

const MIB: u64 = 1 << 20;
const WRITABLE: &str = "vol-00000000000000001/aaaa";
const READ_ONLY: &str = "vol-00000000000000002/bbbb";

/// A hand-driven connection, negotiated with NBD_OPT_EXPORT_NAME.
struct RawConnection {
    stream: UnixStream,
    size: u64,
    flags: u16,
}

impl RawConnection {
    fn open(socket: &Path, export: &str) -> Option<Self> {
        let mut stream = UnixStream::connect(socket).unwrap();
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        stream
            .write_all(&(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES).to_be_bytes())
            .unwrap();
        let mut option = Vec::new();
        option.extend_from_slice(&IHAVEOPT.to_be_bytes());
        option.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        option.extend_from_slice(&(export.len() as u32).to_be_bytes());
        option.extend_from_slice(export.as_bytes());
        stream.write_all(&option).unwrap();
        let mut reply = [0u8; 10];
        stream.read_exact(&mut reply).ok()?;
        Some(RawConnection {
            stream,
            size: u64::from_be_bytes(reply[..8].try_into().unwrap()),
            flags: u16::from_be_bytes([reply[8], reply[9]]),
        })
    }

    /// Sends one request and returns (errno, data) of its simple reply.
    fn request(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
        read_length: usize,
    ) -> (u32, Vec<u8>) {
        let handle = 0xfeed_0000 + u64::from(command);
        let header = RequestHeader {
            flags,
            command,
            handle,
            offset,
            length,
        }
        .encode();
        self.stream.write_all(&header).unwrap();
        self.stream.write_all(payload).unwrap();
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply).unwrap();
        assert_eq!(
            u32::from_be_bytes(reply[..4].try_into().unwrap()),
            SIMPLE_REPLY_MAGIC
        );
        assert_eq!(u64::from_be_bytes(reply[8..16].try_into().unwrap()), handle);
        let errno = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        let mut data = vec![0u8; if errno == 0 { read_length } else { 0 }];
        self.stream.read_exact(&mut data).unwrap();
        (errno, data)
    }
}

#[test]
fn malformed_requests_get_errors_and_the_connection_keeps_serving() {
    let directory = tempfile::tempdir().unwrap();
    let (provider, _stores) = provider_with(directory.path(), &[(WRITABLE, 4 * MIB, false)]);
    let socket = start_unix_server(directory.path(), provider);
    let mut connection = RawConnection::open(&socket, WRITABLE).expect("export accepted");
    assert_eq!(connection.size, 4 * MIB);
    assert_ne!(connection.flags & TFLAG_SEND_FUA, 0);
    assert_eq!(
        connection.request(CMD_READ, 0, 4 * MIB - 1, 2, &[], 2).0,
        EINVAL,
        "read past the end"
    );
    assert_eq!(
        connection.request(CMD_READ, 0, u64::MAX - 1, 4, &[], 4).0,
        EINVAL,
        "offset overflow"
    );
    assert_eq!(
        connection.request(CMD_WRITE, 0, 4 * MIB, 1, b"x", 0).0,
        EINVAL,
        "write past the end"
    );
    assert_eq!(
        connection
            .request(CMD_TRIM, CMD_FLAG_NO_HOLE, 0, 512, &[], 0)
            .0,
        EINVAL,
        "flag not valid for TRIM"
    );
    assert_eq!(
        connection.request(42, 0, 0, 0, &[], 0).0,
        EINVAL,
        "unknown command"
    );
    assert_eq!(
        connection.request(CMD_BLOCK_STATUS, 0, 0, 512, &[], 0).0,
        EINVAL,
        "no meta context negotiated"
    );
    assert_eq!(
        connection
            .request(CMD_READ, 0, 0, 64 * 1024 * 1024, &[], 0)
            .0,
        EINVAL,
        "oversized read"
    );
    let oversized = vec![0u8; (MAX_PAYLOAD + 1) as usize];
    assert_eq!(
        connection
            .request(CMD_WRITE, 0, 0, MAX_PAYLOAD + 1, &oversized, 0)
            .0,
        EINVAL,
        "oversized write drained"
    );
    // Still in sync and serving.
    assert_eq!(
        connection
            .request(CMD_WRITE, CMD_FLAG_FUA, 100, 5, b"hello", 0)
            .0,
        0
    );
    assert_eq!(
        connection.request(CMD_READ, 0, 100, 5, &[], 5),
        (0, b"hello".to_vec())
    );
    assert_eq!(connection.request(CMD_FLUSH, 0, 0, 0, &[], 0).0, 0);
}

#[test]
fn a_bad_magic_closes_only_that_connection() {
    let directory = tempfile::tempdir().unwrap();
    let (provider, _stores) = provider_with(directory.path(), &[(WRITABLE, MIB, false)]);
    let socket = start_unix_server(directory.path(), provider);
    let mut broken = RawConnection::open(&socket, WRITABLE).unwrap();
    broken.stream.write_all(&[0xde; 28]).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        broken.stream.read(&mut byte).unwrap_or(0),
        0,
        "server should close after a bad magic"
    );
    // Garbage during negotiation too.
    let mut garbage = UnixStream::connect(&socket).unwrap();
    let mut greeting = [0u8; 18];
    garbage.read_exact(&mut greeting).unwrap();
    garbage.write_all(&[0xff; 64]).unwrap();
    let _ = garbage.read(&mut byte);
    let client = NbdClient::connect(&NbdEndpoint::Unix(socket), WRITABLE, None).unwrap();
    client.write_at(0, b"still serving", true).unwrap();
}

#[test]
fn unknown_exports_and_wrong_tokens_are_refused_clearly() {
    let directory = tempfile::tempdir().unwrap();
    let (provider, _stores) = provider_with(directory.path(), &[(WRITABLE, MIB, false)]);
    let socket = start_unix_server(directory.path(), provider);
    let endpoint = NbdEndpoint::Unix(socket.clone());
    match NbdClient::connect(&endpoint, "vol-0ffffffffffffffff", Some("aaaa")) {
        Err(NbdError::Refused {
            reason, message, ..
        }) => {
            assert_eq!(reason, "unknown export");
            assert!(message.contains("vol-0ffffffffffffffff"), "{message}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    match NbdClient::connect(&endpoint, "vol-00000000000000001", Some("wrong")) {
        Err(NbdError::Refused { reason, .. }) => assert_eq!(reason, "not authorized"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    assert!(
        RawConnection::open(&socket, "vol-00000000000000001").is_none(),
        "EXPORT_NAME without token closes"
    );
    let client = NbdClient::connect(&endpoint, "vol-00000000000000001", Some("aaaa")).unwrap();
    assert_eq!(client.size(), MIB);
}

#[test]
fn read_only_and_revoked_attachments_refuse_writes() {
    let directory = tempfile::tempdir().unwrap();
    let (provider, stores) = provider_with(
        directory.path(),
        &[(WRITABLE, MIB, false), (READ_ONLY, MIB, true)],
    );
    let revoked = Arc::clone(&provider.exports[WRITABLE].revoked);
    let socket = start_unix_server(directory.path(), provider);
    stores[1].write_at(0, b"ro-data", true).unwrap();
    let mut read_only = RawConnection::open(&socket, READ_ONLY).unwrap();
    assert_ne!(read_only.flags & TFLAG_READ_ONLY, 0);
    assert_eq!(read_only.request(CMD_WRITE, 0, 0, 3, b"bad", 0).0, EPERM);
    assert_eq!(read_only.request(CMD_TRIM, 0, 0, 512, &[], 0).0, EPERM);
    assert_eq!(
        read_only.request(CMD_WRITE_ZEROES, 0, 0, 512, &[], 0).0,
        EPERM
    );
    assert_eq!(
        read_only.request(CMD_READ, 0, 0, 7, &[], 7),
        (0, b"ro-data".to_vec())
    );
    let client = NbdClient::connect(&NbdEndpoint::Unix(socket.clone()), READ_ONLY, None).unwrap();
    assert!(matches!(
        client.write_at(0, b"x", false),
        Err(NbdError::ReadOnly)
    ));

    let mut writable = RawConnection::open(&socket, WRITABLE).unwrap();
    assert_eq!(writable.request(CMD_WRITE, 0, 0, 1, b"a", 0).0, 0);
    revoked.store(true, Ordering::Release);
    assert_eq!(writable.request(CMD_READ, 0, 0, 1, &[], 1).0, ESHUTDOWN);
}

#[test]
fn many_threads_pipeline_requests_on_one_client() {
    let directory = tempfile::tempdir().unwrap();
    let (provider, _stores) = provider_with(directory.path(), &[(WRITABLE, 32 * MIB, false)]);
    let socket = start_unix_server(directory.path(), provider);
    let client = Arc::new(NbdClient::connect(&NbdEndpoint::Unix(socket), WRITABLE, None).unwrap());
    let workers: Vec<_> = (0..8u64)
        .map(|worker| {
            let client = Arc::clone(&client);
            thread::spawn(move || {
                for round in 0..20u64 {
                    let offset = worker * 4 * MIB + round * 128 * 1024;
                    let data = random_bytes(worker * 1000 + round, 100_000);
                    client.write_at(offset, &data, round % 5 == 0).unwrap();
                    let mut back = vec![0u8; data.len()];
                    client.read_at(offset, &mut back).unwrap();
                    assert!(
                        back == data,
                        "worker {worker} round {round} read back other data"
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    // A 40 MiB read would exceed the export; 20 MiB spans several pipelined requests.
    let mut large = vec![0u8; 20 * MIB as usize];
    client.read_at(0, &mut large).unwrap();
    assert!(large[..100_000] == random_bytes(0, 100_000)[..]);
    client.flush().unwrap();
}

#[test]
fn completions_can_be_polled_and_notified_for_an_event_loop() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    let directory = tempfile::tempdir().unwrap();
    let (provider, _stores) = provider_with(directory.path(), &[(WRITABLE, 8 * MIB, false)]);
    let socket = start_unix_server(directory.path(), provider);
    let client = NbdClient::connect(&NbdEndpoint::Unix(socket), WRITABLE, None).unwrap();
    let notified = Arc::new(AtomicUsize::new(0));
    let (wake, woken) = mpsc::channel::<()>();
    let counter = Arc::clone(&notified);
    let wake = std::sync::Mutex::new(wake);
    client.set_completion_notifier(Some(Arc::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        let _ = wake.lock().unwrap().send(());
    })));
    // An event loop: submit 16 writes and a flush, then collect them as notifications come.
    let mut pending: Vec<_> = (0..16u64)
        .map(|i| {
            client
                .submit_write(i * 65536, &random_bytes(i, 65536), false)
                .unwrap()
        })
        .collect();
    pending.push(client.submit_flush().unwrap());
    let mut done = 0;
    while done < 17 {
        woken
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a completion notification");
        pending.retain(|request| match request.try_wait() {
            Some(result) => {
                result.unwrap();
                done += 1;
                false
            }
            None => true,
        });
    }
    assert_eq!(notified.load(Ordering::SeqCst), 17);
    let read = client.submit_read(65536, 65536).unwrap();
    assert!(read.wait().unwrap() == random_bytes(1, 65536));
}

#[test]
fn random_garbage_connections_do_not_disturb_the_server() {
    let directory = tempfile::tempdir().unwrap();
    let (provider, _stores) = provider_with(directory.path(), &[(WRITABLE, MIB, false)]);
    let socket = start_unix_server(directory.path(), provider);
    let client = NbdClient::connect(&NbdEndpoint::Unix(socket.clone()), WRITABLE, None).unwrap();
    for seed in 0..100u64 {
        let mut garbage_connection = UnixStream::connect(&socket).unwrap();
        garbage_connection
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut greeting = [0u8; 18];
        garbage_connection.read_exact(&mut greeting).unwrap();
        // Valid client flags half of the time, so option parsing sees garbage too.
        if seed % 2 == 0 {
            garbage_connection
                .write_all(&(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES).to_be_bytes())
                .unwrap();
            garbage_connection
                .write_all(&IHAVEOPT.to_be_bytes())
                .unwrap();
        }
        let noise = random_bytes(seed, 1 + (seed as usize * 37) % 300);
        let _ = garbage_connection.write_all(&noise);
        let _ = garbage_connection.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = garbage_connection.read_to_end(&mut sink);
        // Between garbage connections the real client still works.
        client
            .write_at(seed * 512, &[seed as u8; 512], false)
            .unwrap();
    }
    let mut back = [0u8; 512];
    client.read_at(99 * 512, &mut back).unwrap();
    assert_eq!(back, [99u8; 512]);
}
