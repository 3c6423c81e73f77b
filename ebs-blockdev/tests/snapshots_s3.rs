//! The snapshot object store's S3 backend against an S3-compatible server (moto, from the
//! venv that scripts/setup/ebs.sh makes): snapshots are written to the bucket and
//! volumes restored from it.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint};

struct S3Server {
    child: Child,
    port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> PathBuf {
    let venv = std::env::var_os("EBS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv-ebs"));
    let server = venv.join("bin/moto_server");
    assert!(
        server.exists(),
        "{} is missing: run scripts/setup/ebs.sh to install the S3 test server",
        server.display()
    );
    server
}

fn start_s3() -> S3Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let server = S3Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        thread::sleep(Duration::from_millis(100));
    }
    server
}

/// CreateBucket with a bare HTTP PUT (moto does not check signatures).
fn create_bucket(port: u16, bucket: &str) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "{response}"
    );
}

#[test]
fn snapshots_round_trip_through_an_s3_compatible_store() {
    let s3 = start_s3();
    create_bucket(s3.port, "ebs-snapshots");
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let environment = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
    ];
    let daemon = Daemon::start_with(
        run.path(),
        &data_dir,
        &["--snapshot-store", "s3://ebs-snapshots/region-1"],
        &environment,
    );
    let volume = daemon.cli_ok(&["create-volume", "--size", "1"]);
    let volume_id = volume["VolumeId"].as_str().unwrap().to_string();
    let attach = |volume_id: &str, instance: &str| {
        let attached = daemon.cli_ok(&[
            "attach-volume",
            "--volume-id",
            volume_id,
            "--instance-id",
            instance,
        ]);
        let export = attached["NbdExport"]["ExportName"]
            .as_str()
            .unwrap()
            .to_string();
        let (id, token) = export.split_once('/').unwrap();
        NbdClient::connect(&NbdEndpoint::Unix(daemon.nbd_sock.clone()), id, Some(token)).unwrap()
    };
    let client = attach(&volume_id, "i-0123456789abcdef0");
    let data = random_bytes(42, 3 << 20);
    client.write_at(1 << 20, &data, true).unwrap();
    let created = daemon.cli_ok(&["create-snapshot", "--volume-id", &volume_id]);
    let snapshot_id = created["SnapshotId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let described = daemon.cli_ok(&["describe-snapshots", "--snapshot-ids", &snapshot_id]);
        match described["Snapshots"][0]["State"].as_str() {
            Some("completed") => break,
            Some("error") => panic!("snapshot failed: {described}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "snapshot did not complete");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !data_dir.join("objects").exists(),
        "with an S3 store nothing goes to the local directory"
    );
    let restored = daemon.cli_ok(&["create-volume", "--snapshot-id", &snapshot_id]);
    let restored_client = attach(
        restored["VolumeId"].as_str().unwrap(),
        "i-0123456789abcdef1",
    );
    let mut back = vec![0u8; data.len()];
    restored_client.read_at(1 << 20, &mut back).unwrap();
    assert!(back == data, "the volume restored from S3 differs");
    drop(restored_client);
    daemon.cli_ok(&["delete-snapshot", "--snapshot-id", &snapshot_id]);
}
