//! The NBD export against real clients (qemu-io, qemu-img, nbdinfo) and our client against
//! a real server (qemu-nbd). Run scripts/setup/ebs.sh first.

mod common;

use std::fs;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint, NbdError};

const MIB: u64 = 1 << 20;
const EXPORT: &str = "vol-0123456789abcdef0/0123456789abcdef0123456789abcdef";

#[test]
fn qemu_io_writes_discards_zeroes_flushes_and_reads_back() {
    require_tool("qemu-io");
    let directory = tempfile::tempdir().unwrap();
    let (provider, stores) = provider_with(directory.path(), &[(EXPORT, 64 * MIB, false)]);
    let socket = start_unix_server(directory.path(), provider);
    let opts = qemu_image_opts(&socket, EXPORT);
    qemu_io(
        &opts,
        &[
            "write -P 0xab 0 4M",
            "write -P 0xcd 1000448 8k",
            "write -f -P 0x11 60M 1M",
            "flush",
            "read -P 0xab 0 1000448",
            "read -P 0xcd 1000448 8k",
            "read -P 0x11 60M 1M",
        ],
    );
    assert_eq!(stores[0].allocated_bytes(), 4 * MIB + MIB);
    // Discard whole blocks frees them; write-zeroes with unmap too; without unmap reads zero.
    qemu_io(
        &opts,
        &[
            "discard 0 2M",
            "write -z -u 2M 1M",
            "write -z 3M 512k",
            "flush",
            "read -P 0 0 3584k",
            "read -P 0xab 3584k 512k",
        ],
    );
    assert_eq!(
        stores[0].allocated_bytes(),
        MIB / 2 + MIB / 2 + MIB,
        "discarded blocks should be freed"
    );
    let mut check = vec![0u8; 4096];
    stores[0].read_at(60 * MIB, &mut check).unwrap();
    assert!(check.iter().all(|&b| b == 0x11));
}

#[test]
fn qemu_io_sees_several_requests_in_flight_via_aio() {
    require_tool("qemu-io");
    let directory = tempfile::tempdir().unwrap();
    let (provider, _stores) = provider_with(directory.path(), &[(EXPORT, 16 * MIB, false)]);
    let socket = start_unix_server(directory.path(), provider);
    let opts = qemu_image_opts(&socket, EXPORT);
    let mut commands: Vec<String> = (0..16)
        .map(|i| format!("aio_write -P {} {}k 64k", i + 1, i * 64))
        .collect();
    commands.push("aio_flush".into());
    commands.extend((0..16).map(|i| format!("aio_read -P {} {}k 64k", i + 1, i * 64)));
    commands.push("aio_flush".into());
    let borrowed: Vec<&str> = commands.iter().map(String::as_str).collect();
    qemu_io(&opts, &borrowed);
}

#[test]
fn nbdinfo_reports_size_flags_block_sizes_and_allocation_map() {
    require_tool("nbdinfo");
    let directory = tempfile::tempdir().unwrap();
    let (provider, stores) = provider_with(directory.path(), &[(EXPORT, 8 * MIB, false)]);
    stores[0]
        .write_at(MIB, &vec![7u8; MIB as usize], false)
        .unwrap();
    let socket = start_unix_server(directory.path(), provider);
    let uri = nbd_uri(&socket, EXPORT);
    let output = run_ok(Command::new("nbdinfo").arg("--json").arg(&uri));
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 8 * MIB);
    assert_eq!(export["is_read_only"], false);
    assert_eq!(export["can_flush"], true);
    assert_eq!(export["can_fua"], true);
    assert_eq!(export["can_trim"], true);
    assert_eq!(export["can_zero"], true);
    assert_eq!(export["can_multi_conn"], true);
    assert_eq!(export["block_size_preferred"], 4096);
    assert_eq!(export["block_size_maximum"], 32 * MIB);
    assert_eq!(info["protocol"], "newstyle-fixed");
    let map = run_ok(Command::new("nbdinfo").arg("--map").arg("--json").arg(&uri));
    let extents: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
    let summary: Vec<(u64, u64, u64)> = extents
        .as_array()
        .unwrap()
        .iter()
        .map(|extent| {
            (
                extent["offset"].as_u64().unwrap(),
                extent["length"].as_u64().unwrap(),
                extent["type"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![(0, MIB, 3), (MIB, MIB, 0), (2 * MIB, 6 * MIB, 3)]
    );
}

#[test]
fn qemu_img_convert_into_a_volume_and_back_is_bit_identical() {
    require_tool("qemu-img");
    let directory = tempfile::tempdir().unwrap();
    let size = 24 * MIB;
    let (provider, _stores) = provider_with(directory.path(), &[(EXPORT, size, false)]);
    let socket = start_unix_server(directory.path(), provider);
    // A raw image with data, a hole and a run of zeros.
    let source = directory.path().join("source.img");
    let mut image = random_bytes(1, size as usize);
    image[(5 * MIB) as usize..(9 * MIB) as usize].fill(0);
    fs::write(&source, &image).unwrap();
    let uri = nbd_uri(&socket, EXPORT);
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&source)
            .arg(&uri),
    );
    let back = directory.path().join("back.img");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&uri)
            .arg(&back),
    );
    assert!(
        fs::read(&back).unwrap() == image,
        "round trip through the volume changed the bytes"
    );
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&source)
            .arg(&uri),
    );
}

struct QemuNbd {
    child: Child,
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn our_client_against_qemu_nbd() {
    require_tool("qemu-nbd");
    let directory = tempfile::tempdir().unwrap();
    let image = directory.path().join("disk.img");
    fs::write(&image, vec![0u8; (8 * MIB) as usize]).unwrap();
    let socket = directory.path().join("qemu-nbd.sock");
    let child = Command::new("qemu-nbd")
        .args([
            "--format=raw",
            "--persistent",
            "--shared=4",
            "--export-name=disk",
            "--discard=unmap",
            "--cache=none",
            "--aio=threads",
        ])
        .arg(format!("--socket={}", socket.display()))
        .arg(&image)
        .spawn()
        .expect("start qemu-nbd");
    let _server = QemuNbd { child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "qemu-nbd did not create its socket"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let endpoint = NbdEndpoint::Unix(socket.clone());
    let client = NbdClient::connect(&endpoint, "disk", None).unwrap();
    assert_eq!(client.size(), 8 * MIB);
    assert!(client.info().can_flush() && client.info().can_trim());
    let data = random_bytes(9, 3 * MIB as usize + 123);
    client.write_at(777, &data, true).unwrap();
    client.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    client.read_at(777, &mut back).unwrap();
    assert!(back == data);
    client.write_zeroes(MIB, MIB, false).unwrap();
    let mut zeros = vec![1u8; MIB as usize];
    client.read_at(MIB, &mut zeros).unwrap();
    assert!(zeros.iter().all(|&b| b == 0));
    assert!(matches!(
        client.read_at(8 * MIB - 1, &mut [0u8; 2]),
        Err(NbdError::OutOfRange { .. })
    ));
    client.disconnect().unwrap();
    let unknown = NbdClient::connect(&endpoint, "nope", None)
        .err()
        .expect("unknown export must be refused");
    assert!(matches!(unknown, NbdError::Refused { .. }), "{unknown}");
    // qemu-nbd wrote what we sent to the file itself.
    let file = fs::read(&image).unwrap();
    assert!(file[777..777 + 1000] == data[..1000]);
}

#[test]
fn the_export_is_served_over_tcp_too() {
    require_tool("qemu-io");
    require_tool("nbdinfo");
    let directory = tempfile::tempdir().unwrap();
    let (provider, _stores) = provider_with(directory.path(), &[(EXPORT, 4 * MIB, false)]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = ebs_blockdev::nbd::NbdServer::new(std::sync::Arc::new(provider));
    thread::spawn(move || server.serve_tcp(listener));
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export={EXPORT}"
    );
    qemu_io(&opts, &["write -P 0x77 0 1M", "flush", "read -P 0x77 0 1M"]);
    let endpoint: NbdEndpoint = format!("tcp:127.0.0.1:{port}").parse().unwrap();
    let (volume, token) = EXPORT.split_once('/').unwrap();
    let client = NbdClient::connect(&endpoint, volume, Some(token)).unwrap();
    let mut back = vec![0u8; 4096];
    client.read_at(4096, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0x77));
    let output = run_ok(
        Command::new("nbdinfo")
            .arg("--size")
            .arg(format!("nbd://127.0.0.1:{port}/{EXPORT}")),
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        (4 * MIB).to_string()
    );
}
