//! Tags through the `ebs` CLI against a real ebsd: CreateTags / DeleteTags / DescribeTags
//! on volumes and snapshots, TagSpecifications at creation, `tag:` and `tag-key`
//! filters, EC2's limits, and persistence across a restart.

mod common;

use std::thread;
use std::time::Duration;

use common::daemon::Daemon;
use serde_json::Value;

fn ids(listed: &Value, field: &str, id: &str) -> Vec<String> {
    let mut ids: Vec<String> = listed[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[id].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn tag_pairs(resource: &Value) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = resource["Tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .map(|tag| {
                    (
                        tag["Key"].as_str().unwrap().to_string(),
                        tag["Value"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    pairs
}

fn pair(key: &str, value: &str) -> (String, String) {
    (key.to_string(), value.to_string())
}

fn wait_completed(daemon: &Daemon, snapshot_id: &str) {
    for _ in 0..600 {
        let described = daemon.cli_ok(&["describe-snapshots", "--snapshot-ids", snapshot_id]);
        if described["Snapshots"][0]["State"] == "completed" {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("{snapshot_id} did not complete");
}

#[test]
fn tags_on_volumes_and_snapshots() {
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    let mut daemon = Daemon::start(run.path(), &data_dir);
    let web = daemon.cli_ok(&[
        "create-volume",
        "--size",
        "1",
        "--tag-specifications",
        "ResourceType=volume,Tags=[{Key=Name,Value=web},{Key=team,Value=blue}]",
    ]);
    assert_eq!(
        tag_pairs(&web),
        vec![pair("Name", "web"), pair("team", "blue")]
    );
    let web_id = web["VolumeId"].as_str().unwrap().to_string();
    let db = daemon.cli_ok(&["create-volume", "--size", "1"]);
    let db_id = db["VolumeId"].as_str().unwrap().to_string();
    assert!(
        db.get("Tags").is_none(),
        "untagged volumes show no Tags: {db}"
    );
    let snapshot = daemon.cli_ok(&[
        "create-snapshot",
        "--volume-id",
        &web_id,
        "--tag-specifications",
        r#"[{"ResourceType": "snapshot", "Tags": [{"Key": "backup", "Value": "nightly"}]}]"#,
    ]);
    let snapshot_id = snapshot["SnapshotId"].as_str().unwrap().to_string();
    assert_eq!(tag_pairs(&snapshot), vec![pair("backup", "nightly")]);
    wait_completed(&daemon, &snapshot_id);
    let copy = daemon.cli_ok(&[
        "copy-snapshot",
        "--source-snapshot-id",
        &snapshot_id,
        "--tag-specifications",
        "ResourceType=snapshot,Tags=[{Key=copy,Value=yes}]",
    ]);
    let copy_id = copy["SnapshotId"].as_str().unwrap().to_string();
    let described = daemon.cli_ok(&["describe-snapshots", "--snapshot-ids", &copy_id]);
    // A copy gets the tags asked for, not the source's.
    assert_eq!(
        tag_pairs(&described["Snapshots"][0]),
        vec![pair("copy", "yes")]
    );

    // CreateTags on several resources at once, overwriting a value.
    daemon.cli_ok(&[
        "create-tags",
        "--resources",
        &web_id,
        &db_id,
        &snapshot_id,
        "--tags",
        "Key=team,Value=red",
        "Key=env,Value=prod",
    ]);
    let volumes = daemon.cli_ok(&["describe-volumes", "--volume-ids", &web_id]);
    assert_eq!(
        tag_pairs(&volumes["Volumes"][0]),
        vec![
            pair("Name", "web"),
            pair("env", "prod"),
            pair("team", "red")
        ]
    );

    // Filters: tag:Key (values, wildcards) and tag-key.
    let red = daemon.cli_ok(&["describe-volumes", "--filters", "Name=tag:team,Values=red"]);
    let mut both = vec![web_id.clone(), db_id.clone()];
    both.sort();
    assert_eq!(ids(&red, "Volumes", "VolumeId"), both);
    let named = daemon.cli_ok(&["describe-volumes", "--filters", "Name=tag-key,Values=Name"]);
    assert_eq!(ids(&named, "Volumes", "VolumeId"), vec![web_id.clone()]);
    let wild = daemon.cli_ok(&["describe-volumes", "--filters", "Name=tag:Name,Values=w*"]);
    assert_eq!(ids(&wild, "Volumes", "VolumeId"), vec![web_id.clone()]);
    let none = daemon.cli_ok(&[
        "describe-volumes",
        "--filters",
        "Name=tag:team,Values=green",
    ]);
    assert!(none["Volumes"].as_array().unwrap().is_empty());
    let nightly = daemon.cli_ok(&[
        "describe-snapshots",
        "--filters",
        "Name=tag:backup,Values=nightly",
    ]);
    assert_eq!(
        ids(&nightly, "Snapshots", "SnapshotId"),
        vec![snapshot_id.clone()]
    );

    // DescribeTags lists (resource, key, value) with its own filters.
    let all = daemon.cli_ok(&["describe-tags"]);
    assert_eq!(all["Tags"].as_array().unwrap().len(), 3 + 2 + 3 + 1);
    let of_db = daemon.cli_ok(&[
        "describe-tags",
        "--filters",
        &format!("Name=resource-id,Values={db_id}"),
    ]);
    let entries = of_db["Tags"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries
        .iter()
        .all(|entry| entry["ResourceType"] == "volume"));
    let snapshots = daemon.cli_ok(&[
        "describe-tags",
        "--filters",
        "Name=resource-type,Values=snapshot",
        "Name=key,Values=team",
    ]);
    assert_eq!(snapshots["Tags"].as_array().unwrap().len(), 1);
    assert_eq!(snapshots["Tags"][0]["ResourceId"], snapshot_id.as_str());

    // DeleteTags: by key, by key and value (only if it matches), or everything.
    daemon.cli_ok(&[
        "delete-tags",
        "--resources",
        &web_id,
        "--tags",
        "Key=env",
        "Key=team,Value=blue",
    ]);
    let volumes = daemon.cli_ok(&["describe-volumes", "--volume-ids", &web_id]);
    assert_eq!(
        tag_pairs(&volumes["Volumes"][0]),
        vec![pair("Name", "web"), pair("team", "red")]
    );
    daemon.cli_ok(&["delete-tags", "--resources", &db_id]);
    let volumes = daemon.cli_ok(&["describe-volumes", "--volume-ids", &db_id]);
    assert!(tag_pairs(&volumes["Volumes"][0]).is_empty());

    // EC2's limits, checked for every resource before any changes.
    let refused = |args: &[&str], code: &str| {
        let (ok, _, stderr) = daemon.cli(args);
        assert!(!ok && stderr.contains(code), "{args:?}: {stderr}");
    };
    let long_key = format!("Key={},Value=v", "k".repeat(129));
    let long_value = format!("Key=k,Value={}", "v".repeat(257));
    for bad in [
        long_key.as_str(),
        long_value.as_str(),
        "Key=aws:owner,Value=me",
    ] {
        refused(
            &["create-tags", "--resources", &web_id, "--tags", bad],
            "InvalidParameterValue",
        );
    }
    let fifty: Vec<String> = (0..49).map(|i| format!("Key=k{i},Value=v")).collect();
    let mut args = vec!["create-tags", "--resources", &db_id, &web_id, "--tags"];
    args.extend(fifty.iter().map(String::as_str));
    // db has 0 tags and takes 49; web has 2 and would have 51: nothing changes.
    refused(&args, "TagLimitExceeded");
    let volumes = daemon.cli_ok(&["describe-volumes", "--volume-ids", &db_id]);
    assert!(tag_pairs(&volumes["Volumes"][0]).is_empty());
    refused(
        &[
            "create-tags",
            "--resources",
            "vol-0123456789abcdef0",
            "--tags",
            "Key=a,Value=b",
        ],
        "InvalidVolume.NotFound",
    );
    refused(
        &[
            "create-tags",
            "--resources",
            "ami-0123456789abcdef0",
            "--tags",
            "Key=a,Value=b",
        ],
        "InvalidID",
    );
    refused(
        &[
            "create-volume",
            "--size",
            "1",
            "--tag-specifications",
            "ResourceType=snapshot,Tags=[{Key=a,Value=b}]",
        ],
        "InvalidParameterValue",
    );

    // Tags are kept across a restart.
    daemon.terminate();
    let daemon = Daemon::start(run.path(), &data_dir);
    let volumes = daemon.cli_ok(&["describe-volumes", "--volume-ids", &web_id]);
    assert_eq!(
        tag_pairs(&volumes["Volumes"][0]),
        vec![pair("Name", "web"), pair("team", "red")]
    );
}
