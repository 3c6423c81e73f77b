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

/// Whether any stored object under `root` contains a 4 KiB run of `plaintext`.
fn plaintext_stored(root: &Path, plaintext: &[u8]) -> bool {
    let needle = &plaintext[8192..8192 + 4096];
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|window| window == needle) {
                return true;
            }
        }
    }
    false
}

#[test]
fn encrypted_snapshots_through_the_direct_apis() {
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    let daemon = Daemon::start(run.path(), &data_dir);
    let direct = Direct::new(&daemon);
    let objects = data_dir.join("objects");

    let started = direct.start_ok(json!({"VolumeSize": 1, "Encrypted": true}));
    let parent_id = started["SnapshotId"].as_str().unwrap().to_string();
    let default_key = started["KmsKeyArn"].as_str().unwrap().to_string();
    assert!(default_key.starts_with("mrk-"), "{started}");
    let zero = random_bytes(20, BLOCK);
    let five = random_bytes(21, BLOCK);
    assert_eq!(direct.put(&parent_id, 0, &zero).status, 200);
    assert_eq!(direct.put(&parent_id, 5, &five).status, 200);
    // LINEAR is over the checksums of the blocks as sent (plaintext).
    let completed = direct.complete(&parent_id, 2, &linear(&[&zero, &five]));
    assert_eq!(completed.status, 200, "{}", text(&completed));
    let described = direct.describe(&parent_id);
    assert_eq!(described["Encrypted"], true);
    assert_eq!(described["KmsKeyId"], default_key.as_str());
    assert!(!plaintext_stored(&objects, &zero) && !plaintext_stored(&objects, &five));

    // GetSnapshotBlock decrypts and checksums the plaintext.
    let listed = direct
        .api
        .send("GET", &format!("/snapshots/{parent_id}/blocks"), &[], b"")
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.body).unwrap();
    let token = listed["Blocks"][1]["BlockToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(listed["Blocks"][1]["BlockIndex"], 5);
    let got = direct
        .api
        .send(
            "GET",
            &format!("/snapshots/{parent_id}/blocks/5?blockToken={token}"),
            &[],
            b"",
        )
        .unwrap();
    assert_eq!(got.status, 200);
    assert!(
        got.body == five,
        "GetSnapshotBlock must return the plaintext"
    );
    assert_eq!(got.header("x-amz-Checksum"), Some(checksum(&five).as_str()));

    // A child of an encrypted parent is encrypted with the parent's key.
    let child = direct.start_ok(json!({"VolumeSize": 1, "ParentSnapshotId": parent_id}));
    let child_id = child["SnapshotId"].as_str().unwrap().to_string();
    assert_eq!(child["KmsKeyArn"], default_key.as_str());
    let seven = random_bytes(22, BLOCK);
    assert_eq!(direct.put(&child_id, 7, &seven).status, 200);
    assert_eq!(
        direct.complete(&child_id, 1, &linear(&[&seven])).status,
        200
    );
    assert_eq!(direct.describe(&child_id)["Encrypted"], true);
    assert!(!plaintext_stored(&objects, &seven));

    // A volume from the child reads the parent's and the child's blocks in plaintext.
    let volume = daemon.cli_ok(&["create-volume", "--snapshot-id", &child_id]);
    assert_eq!(volume["Encrypted"], true);
    let volume_id = volume["VolumeId"].as_str().unwrap();
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        volume_id,
        "--instance-id",
        "i-0123456789abcdef0",
    ]);
    let export = attached["NbdExport"]["ExportName"].as_str().unwrap();
    let client = ebs_blockdev::nbd::NbdClient::connect_export(
        &ebs_blockdev::nbd::NbdEndpoint::Unix(daemon.nbd_sock.clone()),
        export,
    )
    .unwrap();
    let read = |offset: u64| {
        let mut buffer = vec![0u8; BLOCK];
        client.read_at(offset, &mut buffer).unwrap();
        buffer
    };
    assert!(read(0) == zero);
    assert!(read(5 * BLOCK as u64) == five);
    assert!(read(7 * BLOCK as u64) == seven);
    assert!(read(BLOCK as u64).iter().all(|&byte| byte == 0));
    let refused = ApiClient::new(ApiTarget::Unix(daemon.api_sock.clone())).call(
        "CreateVolume",
        &json!({"SnapshotId": child_id, "AvailabilityZone": "local-1a", "Encrypted": false}),
    );
    assert!(
        refused.is_err(),
        "an encrypted snapshot made an unencrypted volume"
    );

    // A key ARN names a key; what EBS refuses is refused.
    let arn = format!("arn:aws:kms:local-1:000000000000:key/{default_key}");
    let by_arn = direct.start_ok(json!({"VolumeSize": 1, "Encrypted": true, "KmsKeyArn": arn}));
    assert_eq!(by_arn["KmsKeyArn"], default_key.as_str());
    let plain = direct.start_ok(json!({"VolumeSize": 1}));
    let plain_id = plain["SnapshotId"].as_str().unwrap().to_string();
    assert_eq!(direct.complete(&plain_id, 0, &linear(&[])).status, 200);
    for (body, why) in [
        (
            json!({"VolumeSize": 1, "ParentSnapshotId": parent_id, "Encrypted": true}),
            "Encrypted with an encrypted parent",
        ),
        (
            json!({"VolumeSize": 1, "ParentSnapshotId": parent_id, "Encrypted": false}),
            "an unencrypted child of an encrypted parent",
        ),
        (
            json!({"VolumeSize": 1, "ParentSnapshotId": plain_id, "Encrypted": true}),
            "an encrypted child of an unencrypted parent",
        ),
        (
            json!({"VolumeSize": 1, "ParentSnapshotId": parent_id, "KmsKeyArn": arn}),
            "KmsKeyArn with a parent",
        ),
        (
            json!({"VolumeSize": 1, "KmsKeyArn": arn}),
            "KmsKeyArn without Encrypted",
        ),
        (
            json!({"VolumeSize": 1, "Encrypted": false, "KmsKeyArn": arn}),
            "KmsKeyArn with Encrypted=false",
        ),
        (
            json!({"VolumeSize": 1, "Encrypted": true, "KmsKeyArn": "mrk-00000000000000000000000000000000"}),
            "an unknown key",
        ),
    ] {
        let reply = direct.start(body);
        assert_eq!(reply.status, 400, "{why}: {}", text(&reply));
        assert_eq!(error_code(&reply), "ValidationException", "{why}");
    }
}
