//! The EBS backend survives the block service crashing: kill -9 `ebsd`
//! between and during I/O, start it again on the same port and data; the
//! backend reconnects (same attachment token) and the I/O that was cut off
//! completes instead of failing. Runs on this machine, no guest needed.

use std::path::Path;
use std::time::Duration;

use devices::virtio::block::BlockBackend;
use integration_tests::Ebsd;
use vmm::ebs_backend::EbsBackend;

#[test]
fn writes_survive_a_block_service_crash() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ebs-reconnect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut ebsd = Ebsd::start(&dir, 0);
    let (volume_id, export) = ebsd.attached_volume(1);
    let token = export.split_once('/').unwrap().1;
    let endpoint = format!("tcp:127.0.0.1:{}", ebsd.port);
    let backend = EbsBackend::connect(&endpoint, &volume_id, Some(token)).expect("connect");
    assert_eq!(backend.size(), 1 << 30);

    let block_a = vec![0xa5u8; 256 * 1024];
    backend.write_at(&block_a, 0).unwrap();
    backend.flush().unwrap();

    // The daemon dies with our connection open; the next write must ride
    // over the restart.
    ebsd.crash_and_restart();
    let block_b = vec![0x5au8; 256 * 1024];
    backend
        .write_at(&block_b, 1 << 20)
        .expect("write retried on a new connection");
    backend.flush().unwrap();

    // Crash while a reader thread hammers the volume: every read completes.
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut buf = vec![0u8; 256 * 1024];
            for _ in 0..40 {
                backend
                    .read_at(&mut buf, 1 << 20)
                    .expect("read completes across the crash");
                assert!(buf.iter().all(|&b| b == 0x5a));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        ebsd.crash_and_restart();
        reader.join().unwrap();
    });

    let mut buf = vec![0u8; 256 * 1024];
    backend.read_at(&mut buf, 0).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0xa5),
        "flushed data survived kill -9"
    );
}

#[test]
fn wrong_token_is_refused_clearly() {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ebs-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ebsd = Ebsd::start(&dir, 0);
    let (volume_id, _export) = ebsd.attached_volume(1);
    let endpoint = format!("tcp:127.0.0.1:{}", ebsd.port);
    let err = EbsBackend::connect(
        &endpoint,
        &volume_id,
        Some("00000000000000000000000000000000"),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains(&volume_id), "{err}");
}
