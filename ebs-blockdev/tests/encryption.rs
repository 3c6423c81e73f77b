//! Encryption at rest end to end: encrypted volumes keep no plaintext on disk or in the
//! object store, keys survive restarts through the 0600 KMS key file, and EBS's snapshot
//! encryption rules hold.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use ebs_blockdev::api::client::{ApiClient, ApiTarget};
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint};
use serde_json::{json, Value};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-0123456789";
const BLOCK: u64 = 512 * 1024;

fn marked_block() -> Vec<u8> {
    MARKER
        .iter()
        .copied()
        .cycle()
        .take(BLOCK as usize)
        .collect()
}

fn contains_marker(bytes: &[u8]) -> bool {
    bytes.windows(MARKER.len()).any(|window| window == MARKER)
}

/// Whether a volume's data file holds the marker in [offset, offset+length): volume
/// files are sparse gigabytes, so only the written region is searched.
fn plaintext_in_volume(data_dir: &Path, volume_id: &str, offset: u64, length: usize) -> bool {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(data_dir.join("volumes").join(volume_id).join("data")).unwrap();
    let mut region = vec![0u8; length];
    file.read_exact_at(&mut region, offset).unwrap();
    contains_marker(&region)
}

/// Whether any file under `root` (the object store: small block files) holds the marker.
fn plaintext_under(root: &Path) -> bool {
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .map(|entry| entry.path()),
            );
        } else if let Ok(bytes) = std::fs::read(&path) {
            if contains_marker(&bytes) {
                return true;
            }
        }
    }
    false
}

fn attach(daemon: &Daemon, volume_id: &str) -> NbdClient {
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        volume_id,
        "--instance-id",
        "i-0123456789abcdef0",
    ]);
    let export = attached["NbdExport"]["ExportName"].as_str().unwrap();
    let (id, token) = export.split_once('/').unwrap();
    NbdClient::connect(&NbdEndpoint::Unix(daemon.nbd_sock.clone()), id, Some(token)).unwrap()
}

fn create(daemon: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["create-volume"];
    all.extend_from_slice(args);
    daemon.cli_ok(&all)
}

fn snapshot(daemon: &Daemon, volume_id: &str) -> Value {
    let created = daemon.cli_ok(&["create-snapshot", "--volume-id", volume_id]);
    let snapshot_id = created["SnapshotId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let described = daemon.cli_ok(&["describe-snapshots", "--snapshot-ids", &snapshot_id]);
        if described["Snapshots"][0]["State"] == "completed" {
            return described["Snapshots"][0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "snapshot did not complete: {described}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn read(client: &NbdClient, offset: u64, length: usize) -> Vec<u8> {
    let mut buffer = vec![0u8; length];
    client.read_at(offset, &mut buffer).unwrap();
    buffer
}

#[test]
fn encrypted_volumes_and_snapshots_hold_no_plaintext_and_survive_restart() {
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    let mut daemon = Daemon::start(run.path(), &data_dir);
    let key_file = data_dir.join("kms-keys.json");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let volume = create(&daemon, &["--size", "1", "--encrypted"]);
    assert_eq!(volume["Encrypted"], true);
    assert!(volume["KmsKeyId"].as_str().unwrap().starts_with("mrk-"));
    let volume_id = volume["VolumeId"].as_str().unwrap().to_string();
    let client = attach(&daemon, &volume_id);
    client.write_at(3 * BLOCK, &marked_block(), true).unwrap();
    client.write_at(7, MARKER, true).unwrap();
    assert!(read(&client, 3 * BLOCK, BLOCK as usize) == marked_block());
    assert!(
        !plaintext_in_volume(&data_dir, &volume_id, 0, (4 * BLOCK) as usize),
        "plaintext reached the volume file"
    );
    let attached = daemon.cli_ok(&["describe-volumes", "--volume-ids", &volume_id]);
    assert_eq!(attached["Volumes"][0]["State"], "in-use");

    let encrypted_snapshot = snapshot(&daemon, &volume_id);
    assert_eq!(encrypted_snapshot["Encrypted"], true);
    assert!(
        !plaintext_under(&data_dir.join("objects")),
        "plaintext reached the object store"
    );
    drop(client);

    daemon.terminate();
    let daemon = Daemon::start(run.path(), &data_dir);
    let client = attach_again(&daemon, &volume_id);
    assert!(
        read(&client, 3 * BLOCK, BLOCK as usize) == marked_block(),
        "the key must survive a restart"
    );
    assert!(read(&client, 7, MARKER.len()) == MARKER);

    let snapshot_id = encrypted_snapshot["SnapshotId"].as_str().unwrap();
    let restored = create(&daemon, &["--snapshot-id", snapshot_id]);
    assert_eq!(
        restored["Encrypted"], true,
        "a volume from an encrypted snapshot is encrypted"
    );
    let restored_client = attach(&daemon, restored["VolumeId"].as_str().unwrap());
    assert!(read(&restored_client, 3 * BLOCK, BLOCK as usize) == marked_block());

    let api = ApiClient::new(ApiTarget::Unix(daemon.api_sock.clone()));
    let refused = api
        .call(
            "CreateVolume",
            &json!({"AvailabilityZone": "local-1a", "SnapshotId": snapshot_id, "Encrypted": false}),
        )
        .unwrap_err();
    assert!(
        refused.to_string().contains("InvalidParameterCombination"),
        "{refused}"
    );
    let refused = api
        .call(
            "CopySnapshot",
            &json!({"SourceSnapshotId": snapshot_id, "Encrypted": false}),
        )
        .unwrap_err();
    assert!(
        refused.to_string().contains("cannot be unencrypted"),
        "{refused}"
    );
    let unknown = api
        .call("CreateVolume", &json!({"AvailabilityZone": "local-1a", "Size": 1, "Encrypted": true, "KmsKeyId": "mrk-00000000000000000000000000000000"}))
        .unwrap_err();
    assert!(unknown.to_string().contains("does not exist"), "{unknown}");
}

fn attach_again(daemon: &Daemon, volume_id: &str) -> NbdClient {
    daemon.cli_ok(&["detach-volume", "--volume-id", volume_id]);
    attach(daemon, volume_id)
}

#[test]
fn unencrypted_snapshots_become_encrypted_on_copy_and_on_create_volume() {
    require_tool("qemu-io");
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    let daemon = Daemon::start(run.path(), &data_dir);
    let plain = create(&daemon, &["--size", "1"]);
    let plain_id = plain["VolumeId"].as_str().unwrap().to_string();
    let client = attach(&daemon, &plain_id);
    client.write_at(BLOCK, &marked_block(), true).unwrap();
    let plain_snapshot = snapshot(&daemon, &plain_id);
    assert_eq!(plain_snapshot["Encrypted"], false);
    let plain_snapshot_id = plain_snapshot["SnapshotId"].as_str().unwrap();

    let copy = daemon.cli_ok(&[
        "copy-snapshot",
        "--source-snapshot-id",
        plain_snapshot_id,
        "--encrypted",
    ]);
    let copy_id = copy["SnapshotId"].as_str().unwrap();
    let described = daemon.cli_ok(&["describe-snapshots", "--snapshot-ids", copy_id]);
    assert_eq!(described["Snapshots"][0]["Encrypted"], true);
    let from_copy = create(&daemon, &["--snapshot-id", copy_id]);
    assert_eq!(from_copy["Encrypted"], true);
    let from_copy_client = attach(&daemon, from_copy["VolumeId"].as_str().unwrap());
    assert!(read(&from_copy_client, BLOCK, BLOCK as usize) == marked_block());

    let encrypted_from_plain = create(
        &daemon,
        &["--snapshot-id", plain_snapshot_id, "--encrypted"],
    );
    assert_eq!(encrypted_from_plain["Encrypted"], true);
    let volume_id = encrypted_from_plain["VolumeId"].as_str().unwrap();
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        volume_id,
        "--instance-id",
        "i-0123456789abcdef1",
    ]);
    let export = attached["NbdExport"]["ExportName"].as_str().unwrap();
    // qemu-io reads the hydrated data, writes a pattern and reads it back.
    let opts = qemu_image_opts(&daemon.nbd_sock, export);
    qemu_io(
        &opts,
        &[
            "read -P 0x50 524288 1",
            "write -P 0xc3 4096 8192",
            "flush",
            "read -P 0xc3 4096 8192",
            "discard 0 4096",
            "read -P 0 0 4096",
        ],
    );
    let directory = data_dir.join("volumes").join(volume_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while directory.join("source-blocks.json").exists() {
        assert!(Instant::now() < deadline, "background fill did not finish");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !plaintext_in_volume(&data_dir, volume_id, BLOCK, BLOCK as usize),
        "hydrated blocks of an encrypted volume must be encrypted"
    );
    assert!(
        plaintext_in_volume(&data_dir, &plain_id, BLOCK, BLOCK as usize),
        "the check must see plaintext where it is"
    );
    let output = Command::new("qemu-io")
        .args([
            "--image-opts",
            &opts,
            "-c",
            &format!("read -P 0x50 {BLOCK} 1"),
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
}

#[test]
fn a_key_file_open_to_others_is_refused_at_start() {
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let key_file = data_dir.join("kms-keys.json");
    std::fs::write(
        &key_file,
        r#"{"DefaultKeyId":"k","Keys":{"k":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}"#,
    )
    .unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ebsd"))
        .args(["serve", "--nbd-listen"])
        .arg(format!("unix:{}", run.path().join("n.sock").display()))
        .arg("--api-sock")
        .arg(run.path().join("a.sock"))
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("0600"), "{stderr}");
}
