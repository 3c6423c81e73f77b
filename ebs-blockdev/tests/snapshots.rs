//! Snapshots end to end against a real ebsd with a local object store: incremental
//! chains, volumes restored from snapshots (lazy and fast), deletion keeping shared
//! blocks, copies, and the EBS direct APIs with their checksums.

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::daemon::Daemon;
use common::*;
use ebs_blockdev::api::client::{ApiClient, ApiTarget};
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const BLOCK: u64 = 512 * 1024;
const INSTANCE: &str = "i-0123456789abcdef0";

fn wait_completed(daemon: &Daemon, snapshot_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let described = daemon.cli_ok(&["describe-snapshots", "--snapshot-ids", snapshot_id]);
        let snapshot = described["Snapshots"][0].clone();
        match snapshot["State"].as_str() {
            Some("completed") => return snapshot,
            Some("error") => panic!("snapshot {snapshot_id} failed: {snapshot}"),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "snapshot {snapshot_id} did not complete: {snapshot}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn snapshot(daemon: &Daemon, volume_id: &str) -> String {
    let created = daemon.cli_ok(&[
        "create-snapshot",
        "--volume-id",
        volume_id,
        "--description",
        "test",
    ]);
    assert_eq!(created["State"], "pending");
    let snapshot_id = created["SnapshotId"].as_str().unwrap().to_string();
    wait_completed(daemon, &snapshot_id);
    snapshot_id
}

/// Creates a volume (optionally from a snapshot) and connects to it.
fn volume(daemon: &Daemon, extra: &[&str]) -> (String, NbdClient) {
    let mut args = vec!["create-volume", "--volume-type", "io2", "--iops", "4000"];
    args.extend_from_slice(extra);
    if !extra.contains(&"--snapshot-id") {
        args.extend_from_slice(&["--size", "4"]);
    }
    let created = daemon.cli_ok(&args);
    let volume_id = created["VolumeId"].as_str().unwrap().to_string();
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        &volume_id,
        "--instance-id",
        INSTANCE,
    ]);
    let export = attached["NbdExport"]["ExportName"].as_str().unwrap();
    let (id, token) = export.split_once('/').unwrap();
    let client =
        NbdClient::connect(&NbdEndpoint::Unix(daemon.nbd_sock.clone()), id, Some(token)).unwrap();
    (volume_id, client)
}

fn block_objects(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("objects").join("blocks"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

fn read(client: &NbdClient, offset: u64, length: usize) -> Vec<u8> {
    let mut buffer = vec![0u8; length];
    client.read_at(offset, &mut buffer).unwrap();
    buffer
}

#[test]
fn incremental_chain_restore_and_delete_keeping_shared_blocks() {
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    let daemon = Daemon::start(run.path(), &data_dir);
    let (volume_id, client) = volume(&daemon, &[]);
    let a = random_bytes(1, (4 * BLOCK) as usize);
    client.write_at(0, &a, true).unwrap();
    client
        .write_at(100 * BLOCK, &random_bytes(2, BLOCK as usize), true)
        .unwrap();
    let first = snapshot(&daemon, &volume_id);
    assert_eq!(block_objects(&data_dir), 5);

    // Change one block, trim another, add one: only two new blocks are uploaded.
    let b = random_bytes(3, 1000);
    client.write_at(BLOCK + 7, &b, true).unwrap();
    client.trim(2 * BLOCK, BLOCK).unwrap();
    client
        .write_at(200 * BLOCK, &random_bytes(4, BLOCK as usize), false)
        .unwrap();
    client.flush().unwrap();
    let second = snapshot(&daemon, &volume_id);
    let by_volume = daemon.cli_ok(&[
        "describe-snapshots",
        "--filters",
        &format!("Name=volume-id,Values={volume_id}"),
        "Name=status,Values=completed",
    ]);
    let ids: Vec<&str> = by_volume["Snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["SnapshotId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&first.as_str()) && ids.contains(&second.as_str()));
    assert_eq!(
        block_objects(&data_dir),
        7,
        "an incremental snapshot uploads only changed blocks"
    );

    // Writes after the snapshot are not in it.
    client.write_at(0, b"after the snapshot", true).unwrap();

    let (first_restored_id, from_first) = volume(&daemon, &["--snapshot-id", &first]);
    assert_eq!(from_first.size(), 4 << 30);
    assert!(
        read(&from_first, 0, (4 * BLOCK) as usize) == a,
        "a volume from the first snapshot reads its data"
    );
    let (restored_id, from_second) = volume(&daemon, &["--snapshot-id", &second]);
    let mut expected = a.clone();
    expected[(BLOCK + 7) as usize..(BLOCK + 7) as usize + b.len()].copy_from_slice(&b);
    expected[(2 * BLOCK) as usize..(3 * BLOCK) as usize].fill(0);
    assert!(
        read(&from_second, 0, (4 * BLOCK) as usize) == expected,
        "the second snapshot has the changes"
    );
    assert!(read(&from_second, 200 * BLOCK, BLOCK as usize) == random_bytes(4, BLOCK as usize));
    // The restored volume is writable and snapshots incrementally on its source.
    from_second
        .write_at(300 * BLOCK, &random_bytes(5, BLOCK as usize), true)
        .unwrap();
    let third = snapshot(&daemon, &restored_id);
    assert_eq!(block_objects(&data_dir), 8);

    // Deleting the first snapshot keeps blocks the others share.
    drop(from_first);
    daemon.cli_ok(&["delete-snapshot", "--snapshot-id", &first]);
    let (_, from_third) = volume(&daemon, &["--snapshot-id", &third]);
    assert!(read(&from_third, 0, (4 * BLOCK) as usize) == expected);
    assert!(read(&from_third, 300 * BLOCK, BLOCK as usize) == random_bytes(5, BLOCK as usize));
    let (ok, _, stderr) = daemon.cli(&["describe-snapshots", "--snapshot-ids", &first]);
    assert!(
        !ok && stderr.contains("InvalidSnapshot.NotFound"),
        "{stderr}"
    );
    assert_eq!(
        block_objects(&data_dir),
        8,
        "the volume restored from it still needs its blocks"
    );
    // Once nothing references the first snapshot's own blocks, deleting another
    // snapshot collects them: the old block 1 and the trimmed block 2.
    daemon.cli_ok(&["detach-volume", "--volume-id", &first_restored_id]);
    daemon.cli_ok(&["delete-volume", "--volume-id", &first_restored_id]);
    daemon.cli_ok(&["delete-snapshot", "--snapshot-id", &second]);
    assert_eq!(block_objects(&data_dir), 6);
    assert!(
        read(&from_third, 0, (4 * BLOCK) as usize) == expected,
        "shared blocks must survive"
    );
}

#[test]
fn copies_fast_restore_and_snapshot_errors() {
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    let daemon = Daemon::start(run.path(), &data_dir);
    let (volume_id, client) = volume(&daemon, &[]);
    let data = random_bytes(7, (3 * BLOCK) as usize);
    client.write_at(5 * BLOCK, &data, true).unwrap();
    let original = snapshot(&daemon, &volume_id);
    let copy = daemon.cli_ok(&[
        "copy-snapshot",
        "--source-snapshot-id",
        &original,
        "--description",
        "copy",
    ]);
    let copy_id = copy["SnapshotId"].as_str().unwrap().to_string();
    assert_ne!(copy_id, original);
    assert_eq!(wait_completed(&daemon, &copy_id)["Description"], "copy");
    assert_eq!(block_objects(&data_dir), 3, "a copy shares the blocks");
    daemon.cli_ok(&[
        "enable-fast-snapshot-restores",
        "--source-snapshot-ids",
        &copy_id,
    ]);
    let (restored_id, restored) = volume(&daemon, &["--snapshot-id", &copy_id]);
    let restored_dir = data_dir.join("volumes").join(&restored_id);
    assert!(
        !restored_dir.join("source-blocks.json").exists(),
        "fast restore initialises everything at creation"
    );
    assert!(read(&restored, 5 * BLOCK, data.len()) == data);
    let metrics_client = ApiClient::new(ApiTarget::Unix(daemon.api_sock.clone()));
    let (_, metrics) = metrics_client.request("GET", "/metrics", b"").unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    let line = format!(
        "ebs_volume_blocks_to_hydrate{{volume_id=\"{restored_id}\",volume_type=\"io2\"}} 0"
    );
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in\n{metrics}"
    );

    let api = ApiClient::new(ApiTarget::Unix(daemon.api_sock.clone()));
    let error = api
        .call(
            "CreateVolume",
            &json!({"AvailabilityZone": "local-1a", "SnapshotId": "snap-0123456789abcdef0"}),
        )
        .unwrap_err();
    assert!(
        error.to_string().contains("InvalidSnapshot.NotFound"),
        "{error}"
    );
    let error = api
        .call("CreateVolume", &json!({"AvailabilityZone": "local-1a", "SnapshotId": original, "Size": 2, "VolumeType": "gp3"}))
        .unwrap_err();
    assert!(
        error.to_string().contains("smaller than the snapshot"),
        "{error}"
    );
    let error = api
        .call(
            "CreateSnapshot",
            &json!({"VolumeId": "vol-0123456789abcdef0"}),
        )
        .unwrap_err();
    assert!(
        error.to_string().contains("InvalidVolume.NotFound"),
        "{error}"
    );
}

fn checksum(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

#[test]
fn ebs_direct_apis_write_list_diff_and_read_snapshots() {
    let run = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(run.path(), &run.path().join("data"));
    let api = ApiClient::new(ApiTarget::Unix(daemon.api_sock.clone()));
    let start = |body: Value| -> Value {
        let reply = api
            .send("POST", "/snapshots", &[], body.to_string().as_bytes())
            .unwrap();
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        serde_json::from_slice(&reply.body).unwrap()
    };
    let put = |snapshot_id: &str, index: u64, data: &[u8], sum: &str| {
        let length = data.len().to_string();
        api.send(
            "PUT",
            &format!("/snapshots/{snapshot_id}/blocks/{index}"),
            &[
                ("Content-Type", "application/octet-stream"),
                ("x-amz-Data-Length", &length),
                ("x-amz-Checksum", sum),
                ("x-amz-Checksum-Algorithm", "SHA256"),
            ],
            data,
        )
        .unwrap()
    };
    let complete = |snapshot_id: &str, count: usize, aggregated: &str| {
        let count = count.to_string();
        api.send(
            "POST",
            &format!("/snapshots/completion/{snapshot_id}"),
            &[
                ("x-amz-ChangedBlocksCount", &count),
                ("x-amz-Checksum", aggregated),
                ("x-amz-Checksum-Algorithm", "SHA256"),
                ("x-amz-Checksum-Aggregation-Method", "LINEAR"),
            ],
            b"",
        )
        .unwrap()
    };

    let started = start(json!({"VolumeSize": 4, "Description": "direct", "Timeout": 60}));
    assert_eq!(started["BlockSize"], BLOCK);
    assert_eq!(started["Status"], "pending");
    let first_id = started["SnapshotId"].as_str().unwrap().to_string();
    let blocks: Vec<(u64, Vec<u8>)> = vec![
        (3, random_bytes(10, BLOCK as usize)),
        (0, random_bytes(11, BLOCK as usize)),
        (1000, random_bytes(12, BLOCK as usize)),
    ];
    // A wrong checksum, a short block and an index past the end are refused.
    assert_eq!(
        put(&first_id, 0, &blocks[0].1, &checksum(b"other")).status,
        400
    );
    assert_eq!(
        put(
            &first_id,
            0,
            &blocks[0].1[..4096],
            &checksum(&blocks[0].1[..4096])
        )
        .status,
        400
    );
    assert_eq!(
        put(&first_id, 8192, &blocks[0].1, &checksum(&blocks[0].1)).status,
        400
    );
    for (index, data) in &blocks {
        let reply = put(&first_id, *index, data, &checksum(data));
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    // LINEAR: SHA-256 over the per-block digests in ascending BlockIndex order.
    let mut ordered = blocks.clone();
    ordered.sort_by_key(|(index, _)| *index);
    let digests: Vec<u8> = ordered
        .iter()
        .flat_map(|(_, data)| Sha256::digest(data).to_vec())
        .collect();
    let aggregated = checksum(&digests);
    assert_eq!(
        complete(&first_id, 2, &aggregated).status,
        400,
        "wrong ChangedBlocksCount"
    );
    assert_eq!(
        complete(&first_id, 3, &checksum(b"wrong")).status,
        400,
        "wrong aggregated checksum"
    );
    let completed = complete(&first_id, 3, &aggregated);
    assert_eq!(
        completed.status,
        200,
        "{}",
        String::from_utf8_lossy(&completed.body)
    );
    assert_eq!(wait_completed(&daemon, &first_id)["State"], "completed");

    let listed = api
        .send(
            "GET",
            &format!("/snapshots/{first_id}/blocks?maxResults=100"),
            &[],
            b"",
        )
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.body).unwrap();
    let indexes: Vec<u64> = listed["Blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["BlockIndex"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![0, 3, 1000]);
    let token = listed["Blocks"][1]["BlockToken"]
        .as_str()
        .unwrap()
        .to_string();
    let got = api
        .send(
            "GET",
            &format!("/snapshots/{first_id}/blocks/3?blockToken={token}"),
            &[],
            b"",
        )
        .unwrap();
    assert_eq!(got.status, 200);
    assert!(got.body == blocks[0].1);
    assert_eq!(
        got.header("x-amz-Checksum"),
        Some(checksum(&blocks[0].1).as_str())
    );
    assert_eq!(
        api.send(
            "GET",
            &format!("/snapshots/{first_id}/blocks/4?blockToken={token}"),
            &[],
            b""
        )
        .unwrap()
        .status,
        404
    );
    assert_eq!(
        api.send(
            "GET",
            &format!("/snapshots/{first_id}/blocks?maxResults=5"),
            &[],
            b""
        )
        .unwrap()
        .status,
        400
    );

    // An incremental child: one block replaced, one added.
    let child = start(json!({"VolumeSize": 4, "ParentSnapshotId": first_id}));
    let child_id = child["SnapshotId"].as_str().unwrap().to_string();
    let replaced = random_bytes(13, BLOCK as usize);
    let added = random_bytes(14, BLOCK as usize);
    assert_eq!(
        put(&child_id, 3, &replaced, &checksum(&replaced)).status,
        200
    );
    assert_eq!(put(&child_id, 7, &added, &checksum(&added)).status, 200);
    let digests: Vec<u8> = [&replaced, &added]
        .iter()
        .flat_map(|data| Sha256::digest(data).to_vec())
        .collect();
    assert_eq!(complete(&child_id, 2, &checksum(&digests)).status, 200);
    let changed = api
        .send(
            "GET",
            &format!("/snapshots/{child_id}/changedblocks?firstSnapshotId={first_id}"),
            &[],
            b"",
        )
        .unwrap();
    let changed: Value = serde_json::from_slice(&changed.body).unwrap();
    let changed_indexes: Vec<u64> = changed["ChangedBlocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["BlockIndex"].as_u64().unwrap())
        .collect();
    assert_eq!(changed_indexes, vec![3, 7]);
    assert!(changed["ChangedBlocks"][1]["FirstBlockToken"].is_null());

    // A volume from the direct snapshot serves the blocks over NBD.
    let (_, client) = volume(&daemon, &["--snapshot-id", &child_id]);
    assert!(read(&client, 0, BLOCK as usize) == blocks[1].1);
    assert!(read(&client, 3 * BLOCK, BLOCK as usize) == replaced);
    assert!(read(&client, 7 * BLOCK, BLOCK as usize) == added);
    assert!(read(&client, 1000 * BLOCK, BLOCK as usize) == blocks[2].1);
    assert!(read(&client, 5 * BLOCK, 4096).iter().all(|&b| b == 0));
}

#[test]
fn a_snapshot_taken_under_writes_is_point_in_time() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const SLOTS: u64 = 64;
    let run = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(run.path(), &run.path().join("data"));
    let (volume_id, client) = volume(&daemon, &[]);
    let client = Arc::new(client);
    let stop = Arc::new(AtomicBool::new(false));
    // One writer sweeps the slots (one per block) in order, round after round, so at any
    // instant the volume holds round r in slots [0, k) and round r-1 in [k, SLOTS).
    let writer = {
        let (client, stop) = (Arc::clone(&client), Arc::clone(&stop));
        thread::spawn(move || {
            let mut round = 1u64;
            while !stop.load(Ordering::Relaxed) {
                for slot in 0..SLOTS {
                    client
                        .write_at(slot * BLOCK, &[round as u8; 4096], false)
                        .unwrap();
                }
                round += 1;
            }
            round
        })
    };
    thread::sleep(Duration::from_millis(300));
    let created = daemon.cli_ok(&["create-snapshot", "--volume-id", &volume_id]);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    assert!(
        rounds > 3,
        "the writer made too little progress ({rounds} rounds)"
    );
    let snapshot_id = created["SnapshotId"].as_str().unwrap();
    wait_completed(&daemon, snapshot_id);
    let (_, restored) = volume(&daemon, &["--snapshot-id", snapshot_id]);
    let rounds_seen: Vec<u8> = (0..SLOTS)
        .map(|slot| read(&restored, slot * BLOCK, 4096)[0])
        .collect();
    let first = rounds_seen[0];
    assert!(
        rounds_seen.windows(2).all(|pair| pair[0] >= pair[1])
            && first - rounds_seen[SLOTS as usize - 1] <= 1,
        "not a point-in-time image: {rounds_seen:?}"
    );
    assert!(
        rounds_seen.iter().all(|&round| round > 0),
        "the snapshot missed writes made before it: {rounds_seen:?}"
    );
    let now = read(&client, 0, 4096)[0];
    assert!(
        now > first,
        "writes after the snapshot must not be in it (volume {now}, snapshot {first})"
    );
}
