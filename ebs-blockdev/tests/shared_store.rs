//! Two ebsd daemons sharing one local-directory object store: one daemon's garbage
//! collection keeps the blocks the other's volumes still need (published roots) and the
//! blocks of its uploads in progress (store locks), and still deletes what nobody uses.

mod common;

use std::path::Path;
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use common::daemon::Daemon;
use common::*;
use ebs_blockdev::api::client::{ApiClient, ApiTarget};
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint};
use serde_json::Value;
use sha2::{Digest, Sha256};

const BLOCK: usize = 512 * 1024;

fn start(run: &Path, name: &str, store: &Path) -> Daemon {
    let directory = run.join(name);
    std::fs::create_dir_all(&directory).unwrap();
    Daemon::start_with(
        &directory,
        &directory.join("data"),
        &["--snapshot-store", store.to_str().unwrap()],
        &[],
    )
}

fn wait_completed(daemon: &Daemon, snapshot_id: &str) {
    for _ in 0..600 {
        let described = daemon.cli_ok(&["describe-snapshots", "--snapshot-ids", snapshot_id]);
        match described["Snapshots"][0]["State"].as_str() {
            Some("completed") => return,
            Some("error") => panic!("{snapshot_id} failed: {described}"),
            _ => thread::sleep(Duration::from_millis(50)),
        }
    }
    panic!("{snapshot_id} did not complete");
}

/// A new volume (optionally from a snapshot), attached, and a client connected to it.
fn volume(daemon: &Daemon, extra: &[&str]) -> (String, NbdClient) {
    let mut args = vec!["create-volume"];
    args.extend_from_slice(extra);
    if !extra.contains(&"--snapshot-id") {
        args.extend_from_slice(&["--size", "1"]);
    }
    let volume_id = daemon.cli_ok(&args)["VolumeId"]
        .as_str()
        .unwrap()
        .to_string();
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        &volume_id,
        "--instance-id",
        "i-0123456789abcdef0",
    ]);
    let export = attached["NbdExport"]["ExportName"].as_str().unwrap();
    let client =
        NbdClient::connect_export(&NbdEndpoint::Unix(daemon.nbd_sock.clone()), export).unwrap();
    (volume_id, client)
}

fn snapshot(daemon: &Daemon, volume_id: &str) -> String {
    let created = daemon.cli_ok(&["create-snapshot", "--volume-id", volume_id]);
    let snapshot_id = created["SnapshotId"].as_str().unwrap().to_string();
    wait_completed(daemon, &snapshot_id);
    snapshot_id
}

fn stored(store: &Path, data: &[u8]) -> bool {
    let hash: String = Sha256::digest(data)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    store.join("blocks").join(hash).exists()
}

fn read(client: &NbdClient, offset: u64) -> Vec<u8> {
    let mut buffer = vec![0u8; BLOCK];
    client.read_at(offset, &mut buffer).unwrap();
    buffer
}

#[test]
fn garbage_collection_is_safe_with_two_daemons_on_one_store() {
    let run = tempfile::tempdir().unwrap();
    let store = run.path().join("shared-objects");
    let first = start(run.path(), "a", &store);
    let second = start(run.path(), "b", &store);

    // Daemon A: a volume, its snapshot, a volume restored from it; then the snapshot is
    // deleted, so its blocks are referenced only by A's volumes (their roots).
    let kept = random_bytes(1, BLOCK);
    let (source_id, source) = volume(&first, &[]);
    source.write_at(0, &kept, true).unwrap();
    let first_snapshot = snapshot(&first, &source_id);
    let (_restored_id, _restored) = volume(&first, &["--snapshot-id", &first_snapshot]);
    first.cli_ok(&["delete-snapshot", "--snapshot-id", &first_snapshot]);
    assert!(
        stored(&store, &kept),
        "A's own collection keeps its volumes' blocks"
    );

    // Daemon A starts a direct upload and leaves it open.
    let api = ApiClient::new(ApiTarget::Unix(first.api_sock.clone()));
    let reply = api
        .send("POST", "/snapshots", &[], br#"{"VolumeSize": 1}"#)
        .unwrap();
    let upload: Value = serde_json::from_slice(&reply.body).unwrap();
    let upload_id = upload["SnapshotId"].as_str().unwrap().to_string();
    let uploading = random_bytes(2, BLOCK);
    let checksum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&uploading));
    let put = api
        .send(
            "PUT",
            &format!("/snapshots/{upload_id}/blocks/3"),
            &[
                ("x-amz-Data-Length", "524288"),
                ("x-amz-Checksum", &checksum),
            ],
            &uploading,
        )
        .unwrap();
    assert_eq!(put.status, 200);

    // Daemon B deletes a snapshot of its own: its collection must keep A's blocks and is
    // deferred while A's upload holds the store.
    let dropped = random_bytes(3, BLOCK);
    let (other_id, other) = volume(&second, &[]);
    other.write_at(0, &dropped, true).unwrap();
    let second_snapshot = snapshot(&second, &other_id);
    // Without the volume, nothing but the snapshot references B's block.
    drop(other);
    second.cli_ok(&["detach-volume", "--volume-id", &other_id]);
    second.cli_ok(&["delete-volume", "--volume-id", &other_id]);
    second.cli_ok(&["delete-snapshot", "--snapshot-id", &second_snapshot]);
    assert!(stored(&store, &kept), "B deleted blocks A's volumes need");
    assert!(
        stored(&store, &uploading),
        "B deleted A's upload in progress"
    );
    assert!(
        stored(&store, &dropped),
        "collection ran while A was uploading"
    );

    // A completes; B's next collection deletes only what nobody uses.
    let digest = Sha256::digest(&uploading).to_vec();
    let aggregated = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&digest));
    let completed = api
        .send(
            "POST",
            &format!("/snapshots/completion/{upload_id}"),
            &[
                ("x-amz-ChangedBlocksCount", "1"),
                ("x-amz-Checksum", &aggregated),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(completed.status, 200);
    let (another_id, another) = volume(&second, &[]);
    another.write_at(0, &random_bytes(4, BLOCK), true).unwrap();
    let another_snapshot = snapshot(&second, &another_id);
    second.cli_ok(&["delete-snapshot", "--snapshot-id", &another_snapshot]);
    assert!(
        !stored(&store, &dropped),
        "unreferenced blocks must be collected"
    );
    assert!(stored(&store, &kept) && stored(&store, &uploading));

    // A's data is whole: the upload reads back, and a snapshot of the restored source
    // volume (which reuses the base blocks without uploading them) restores.
    let listed = api
        .send("GET", &format!("/snapshots/{upload_id}/blocks"), &[], b"")
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.body).unwrap();
    let token = listed["Blocks"][0]["BlockToken"].as_str().unwrap();
    let got = api
        .send(
            "GET",
            &format!("/snapshots/{upload_id}/blocks/3?blockToken={token}"),
            &[],
            b"",
        )
        .unwrap();
    assert_eq!(got.status, 200);
    assert!(got.body == uploading);
    source
        .write_at(BLOCK as u64, &random_bytes(5, BLOCK), true)
        .unwrap();
    let incremental = snapshot(&first, &source_id);
    let (_, restored) = volume(&first, &["--snapshot-id", &incremental]);
    assert!(
        read(&restored, 0) == kept,
        "a block the other daemon collected is lost"
    );
}
