//! ModifyVolume against a real ebsd on its test clock: the modifying -> optimizing ->
//! completed phases with progress, when the new size and the new performance apply, the
//! six-hour cooldown (kept across a restart), and EC2's error codes.

mod common;

use common::daemon::Daemon;
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint};
use serde_json::Value;

const GIB: u64 = 1 << 30;

fn metric(daemon: &Daemon, name: &str, volume_id: &str) -> f64 {
    let api = ebs_blockdev::api::client::ApiClient::new(
        ebs_blockdev::api::client::ApiTarget::Unix(daemon.api_sock.clone()),
    );
    let (_, metrics) = api.request("GET", "/metrics", b"").unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    let prefix = format!("{name}{{volume_id=\"{volume_id}\",volume_type=\"gp3\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
}

fn limits(daemon: &Daemon, volume_id: &str) -> (f64, f64) {
    (
        metric(daemon, "ebs_volume_iops_limit", volume_id),
        metric(daemon, "ebs_volume_throughput_limit_mibps", volume_id),
    )
}

fn modification(daemon: &Daemon, volume_id: &str) -> Value {
    let described = daemon.cli_ok(&["describe-volumes-modifications", "--volume-ids", volume_id]);
    let all = described["VolumesModifications"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{described}");
    all[0].clone()
}

fn error_of(daemon: &Daemon, args: &[&str]) -> String {
    let (ok, _, stderr) = daemon.cli(args);
    assert!(!ok, "ebs {args:?} should have failed");
    stderr
}

#[test]
fn modifications_go_through_ec2_phases_with_cooldown() {
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    let mut daemon = Daemon::start_with(run.path(), &data_dir, &["--test-clock"], &[]);
    let volume = daemon.cli_ok(&["create-volume", "--size", "8", "--volume-type", "gp3"]);
    let volume_id = volume["VolumeId"].as_str().unwrap().to_string();
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        &volume_id,
        "--instance-id",
        "i-0123456789abcdef0",
    ]);
    let export = attached["NbdExport"]["ExportName"]
        .as_str()
        .unwrap()
        .to_string();
    let endpoint = NbdEndpoint::Unix(daemon.nbd_sock.clone());
    let size_now = |daemon: &Daemon| {
        let _ = daemon;
        NbdClient::connect_export(&endpoint, &export)
            .unwrap()
            .size()
    };
    let never_modified = daemon.cli_ok(&["describe-volumes-modifications"]);
    assert_eq!(never_modified["VolumesModifications"], Value::Array(vec![]));
    assert_eq!(limits(&daemon, &volume_id), (3000.0, 125.0));

    let started = daemon.cli_ok(&[
        "modify-volume",
        "--volume-id",
        &volume_id,
        "--size",
        "16",
        "--iops",
        "5000",
        "--throughput",
        "250",
    ])["VolumeModification"]
        .clone();
    assert_eq!(started["ModificationState"], "modifying");
    assert_eq!(started["Progress"], 0);
    assert_eq!(
        (
            started["OriginalSize"].clone(),
            started["TargetSize"].clone()
        ),
        (8.into(), 16.into())
    );
    assert_eq!(started["TargetIops"], 5000);
    // DescribeVolumes shows the requested values; the storage and QoS are unchanged.
    let described = daemon.cli_ok(&["describe-volumes", "--volume-ids", &volume_id]);
    assert_eq!(described["Volumes"][0]["Size"], 16);
    assert_eq!(
        modification(&daemon, &volume_id)["ModificationState"],
        "modifying"
    );
    assert_eq!(size_now(&daemon), 8 * GIB);
    assert_eq!(limits(&daemon, &volume_id), (3000.0, 125.0));
    let busy = error_of(
        &daemon,
        &["modify-volume", "--volume-id", &volume_id, "--size", "20"],
    );
    assert!(
        busy.contains("IncorrectModificationState") && busy.contains("MODIFYING"),
        "{busy}"
    );

    // Optimizing: the new size is usable; performance at the lower of old and new.
    daemon.advance_clock(11.0);
    let optimizing = modification(&daemon, &volume_id);
    assert_eq!(
        optimizing["ModificationState"], "optimizing",
        "{optimizing}"
    );
    assert_eq!(size_now(&daemon), 16 * GIB);
    assert_eq!(limits(&daemon, &volume_id), (3000.0, 125.0));
    daemon.advance_clock(30.0);
    let halfway = modification(&daemon, &volume_id);
    let progress = halfway["Progress"].as_u64().unwrap();
    assert!((40..=60).contains(&progress), "{halfway}");
    let filtered = daemon.cli_ok(&[
        "describe-volumes-modifications",
        "--filters",
        "Name=modification-state,Values=optimizing",
        "Name=target-size,Values=16",
    ]);
    assert_eq!(
        filtered["VolumesModifications"].as_array().unwrap().len(),
        1
    );
    let other = daemon.cli_ok(&[
        "describe-volumes-modifications",
        "--filters",
        "Name=modification-state,Values=completed",
    ]);
    assert_eq!(other["VolumesModifications"].as_array().unwrap().len(), 0);

    // Completed: the new performance, progress 100, an end time.
    daemon.advance_clock(60.0);
    let completed = modification(&daemon, &volume_id);
    assert_eq!(completed["ModificationState"], "completed", "{completed}");
    assert_eq!(completed["Progress"], 100);
    assert!(completed["EndTime"].is_string(), "{completed}");
    assert_eq!(limits(&daemon, &volume_id), (5000.0, 250.0));

    // Six hours between the starts of two modifications, also across a restart.
    let early = error_of(
        &daemon,
        &["modify-volume", "--volume-id", &volume_id, "--size", "20"],
    );
    assert!(
        early.contains("VolumeModificationRateExceeded") && early.contains("6 hours"),
        "{early}"
    );
    daemon.terminate();
    let daemon = Daemon::start_with(run.path(), &data_dir, &["--test-clock"], &[]);
    assert_eq!(
        modification(&daemon, &volume_id)["ModificationState"],
        "completed"
    );
    assert_eq!(limits(&daemon, &volume_id), (5000.0, 250.0));
    let still = error_of(
        &daemon,
        &["modify-volume", "--volume-id", &volume_id, "--size", "20"],
    );
    assert!(still.contains("VolumeModificationRateExceeded"), "{still}");
    daemon.advance_clock(6.0 * 3600.0);
    // Lower performance: during optimizing the volume already runs at the new ceiling.
    let again = daemon.cli_ok(&[
        "modify-volume",
        "--volume-id",
        &volume_id,
        "--iops",
        "4000",
        "--throughput",
        "200",
    ]);
    assert_eq!(
        again["VolumeModification"]["ModificationState"],
        "modifying"
    );
    assert_eq!(limits(&daemon, &volume_id), (5000.0, 250.0));
    daemon.advance_clock(11.0);
    assert_eq!(limits(&daemon, &volume_id), (4000.0, 200.0));
    daemon.advance_clock(3600.0);
    assert_eq!(
        modification(&daemon, &volume_id)["ModificationState"],
        "completed"
    );
    assert_eq!(limits(&daemon, &volume_id), (4000.0, 200.0));
}
