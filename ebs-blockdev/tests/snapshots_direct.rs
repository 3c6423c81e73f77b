//! The EBS direct APIs against a real ebsd: StartSnapshot's Timeout (on the daemon's test
//! clock, so minutes pass without waiting) and ClientToken idempotency, and encrypted
//! snapshots written and read block by block.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::daemon::Daemon;
use common::*;
use ebs_blockdev::api::client::{ApiClient, ApiReply, ApiTarget};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const BLOCK: usize = 512 * 1024;

fn checksum(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

/// LINEAR: SHA-256 over the per-block digests in ascending BlockIndex order.
fn linear(blocks: &[&[u8]]) -> String {
    let digests: Vec<u8> = blocks
        .iter()
        .flat_map(|data| Sha256::digest(data).to_vec())
        .collect();
    checksum(&digests)
}

struct Direct {
    api: ApiClient,
}

impl Direct {
    fn new(daemon: &Daemon) -> Self {
        Direct {
            api: ApiClient::new(ApiTarget::Unix(daemon.api_sock.clone())),
        }
    }

    fn start(&self, body: Value) -> ApiReply {
        self.api
            .send("POST", "/snapshots", &[], body.to_string().as_bytes())
            .unwrap()
    }

    fn start_ok(&self, body: Value) -> Value {
        let reply = self.start(body);
        assert_eq!(reply.status, 200, "{}", text(&reply));
        serde_json::from_slice(&reply.body).unwrap()
    }

    fn put(&self, snapshot_id: &str, index: u64, data: &[u8]) -> ApiReply {
        let length = data.len().to_string();
        self.api
            .send(
                "PUT",
                &format!("/snapshots/{snapshot_id}/blocks/{index}"),
                &[
                    ("x-amz-Data-Length", &length),
                    ("x-amz-Checksum", &checksum(data)),
                    ("x-amz-Checksum-Algorithm", "SHA256"),
                ],
                data,
            )
            .unwrap()
    }

    fn complete(&self, snapshot_id: &str, count: usize, aggregated: &str) -> ApiReply {
        self.api
            .send(
                "POST",
                &format!("/snapshots/completion/{snapshot_id}"),
                &[
                    ("x-amz-ChangedBlocksCount", &count.to_string()),
                    ("x-amz-Checksum", aggregated),
                    ("x-amz-Checksum-Algorithm", "SHA256"),
                    ("x-amz-Checksum-Aggregation-Method", "LINEAR"),
                ],
                b"",
            )
            .unwrap()
    }

    fn advance_clock(&self, seconds: u64) {
        let reply = self
            .api
            .send(
                "POST",
                "/test/clock/advance",
                &[],
                json!({ "Seconds": seconds }).to_string().as_bytes(),
            )
            .unwrap();
        assert_eq!(reply.status, 200, "{}", text(&reply));
    }

    fn describe(&self, snapshot_id: &str) -> Value {
        self.api
            .call(
                "DescribeSnapshots",
                &json!({ "SnapshotIds": [snapshot_id] }),
            )
            .unwrap()["Snapshots"][0]
            .clone()
    }
}

fn text(reply: &ApiReply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

fn error_code(reply: &ApiReply) -> String {
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    body["Error"]["Code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn block_objects(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("objects").join("blocks"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

#[test]
fn start_snapshot_timeout_cancels_idle_uploads_and_releases_their_blocks() {
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    let daemon = Daemon::start_with(run.path(), &data_dir, &["--test-clock"], &[]);
    let direct = Direct::new(&daemon);

    let idle = direct.start_ok(json!({"VolumeSize": 1, "Timeout": 10}));
    let idle_id = idle["SnapshotId"].as_str().unwrap().to_string();
    let kept = direct.start_ok(json!({"VolumeSize": 1}));
    let kept_id = kept["SnapshotId"].as_str().unwrap().to_string();
    let first = random_bytes(1, BLOCK);
    let second = random_bytes(2, BLOCK);
    assert_eq!(direct.put(&idle_id, 0, &first).status, 200);
    assert_eq!(block_objects(&data_dir), 1);

    // Each block restarts the Timeout: 9 + 9 minutes with a block in between is fine.
    direct.advance_clock(9 * 60);
    assert_eq!(direct.put(&idle_id, 1, &second).status, 200);
    direct.advance_clock(9 * 60);
    assert_eq!(direct.describe(&idle_id)["State"], "pending");
    assert_eq!(block_objects(&data_dir), 2);

    // The default Timeout is 60 minutes: 18 minutes in, the other upload still works.
    assert_eq!(direct.describe(&kept_id)["State"], "pending");
    let third = random_bytes(3, BLOCK);
    assert_eq!(direct.put(&kept_id, 0, &third).status, 200);
    assert_eq!(direct.complete(&kept_id, 1, &linear(&[&third])).status, 200);
    assert_eq!(direct.describe(&kept_id)["State"], "completed");
    assert_eq!(block_objects(&data_dir), 3);

    // Ten minutes after the last block without completion: cancelled, blocks released.
    direct.advance_clock(60 + 1);
    let cancelled = direct.describe(&idle_id);
    assert_eq!(cancelled["State"], "error", "{cancelled}");
    assert!(
        cancelled["StateMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("Timeout"),
        "{cancelled}"
    );
    assert_eq!(
        block_objects(&data_dir),
        1,
        "a cancelled upload's blocks must be released (the completed snapshot's stays)"
    );
    assert_eq!(direct.put(&idle_id, 2, &first).status, 404);
    assert_eq!(direct.complete(&idle_id, 2, &linear(&[&first])).status, 404);

    // Completed snapshots never time out.
    direct.advance_clock(5 * 3600);
    assert_eq!(direct.describe(&kept_id)["State"], "completed");
    assert_eq!(block_objects(&data_dir), 1);

    // Without --test-clock the clock cannot be moved.
    drop(daemon);
    let plain = Daemon::start(run.path(), &data_dir);
    let reply = Direct::new(&plain)
        .api
        .send("POST", "/test/clock/advance", &[], br#"{"Seconds": 60}"#)
        .unwrap();
    assert_eq!(reply.status, 404);
}

#[test]
fn start_snapshot_client_token_is_idempotent() {
    let run = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(run.path(), &run.path().join("data"));
    let direct = Direct::new(&daemon);
    let request = json!({"VolumeSize": 2, "Description": "nightly", "ClientToken": "token-1"});
    let first = direct.start_ok(request.clone());
    let again = direct.start_ok(request.clone());
    assert_eq!(again["SnapshotId"], first["SnapshotId"]);
    assert_eq!(again["Status"], "pending");
    let listed = ApiClient::new(ApiTarget::Unix(daemon.api_sock.clone()))
        .call("DescribeSnapshots", &json!({}))
        .unwrap();
    assert_eq!(listed["Snapshots"].as_array().unwrap().len(), 1);

    // The same token with other parameters is a conflict.
    let conflict =
        direct.start(json!({"VolumeSize": 4, "Description": "nightly", "ClientToken": "token-1"}));
    assert_eq!(conflict.status, 409, "{}", text(&conflict));
    assert_eq!(error_code(&conflict), "ConflictException");
    let long_token = "x".repeat(65);
    let too_long = direct.start(json!({"VolumeSize": 2, "ClientToken": long_token}));
    assert_eq!(error_code(&too_long), "ValidationException");

    // After completion the retry still answers with the same snapshot, now completed.
    let snapshot_id = first["SnapshotId"].as_str().unwrap();
    let data = random_bytes(3, BLOCK);
    assert_eq!(direct.put(snapshot_id, 5, &data).status, 200);
    assert_eq!(
        direct.complete(snapshot_id, 1, &linear(&[&data])).status,
        200
    );
    let retried = direct.start_ok(request);
    assert_eq!(retried["SnapshotId"], first["SnapshotId"]);
    assert_eq!(retried["Status"], "completed");
    // Another token makes another snapshot.
    let other = direct.start_ok(json!({"VolumeSize": 2, "ClientToken": "token-2"}));
    assert_ne!(other["SnapshotId"], first["SnapshotId"]);
}
