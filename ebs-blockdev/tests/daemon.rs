//! The `ebsd` daemon end to end: CLI verbs over the API, the NBD export with the
//! attachment token, detach revoking access, bad API input, restart persistence, metrics.

mod common;

use common::daemon::Daemon;
use common::*;
use ebs_blockdev::api::client::{ApiCallError, ApiClient, ApiTarget};
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint, NbdError};
use serde_json::json;

const INSTANCE: &str = "i-0123456789abcdef0";

#[test]
fn volume_lifecycle_through_cli_and_nbd() {
    require_tool("qemu-io");
    let run = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(run.path(), &run.path().join("data"));
    let created = daemon.cli_ok(&[
        "create-volume",
        "--size",
        "1",
        "--volume-type",
        "gp3",
        "--availability-zone",
        "local-1a",
    ]);
    let volume_id = created["VolumeId"].as_str().unwrap().to_string();
    assert_eq!(created["State"], "available");
    assert_eq!(created["Iops"], 3000);
    assert_eq!(created["Throughput"], 125);
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        &volume_id,
        "--instance-id",
        INSTANCE,
        "--device",
        "/dev/xvdb",
        "--instance-availability-zone",
        "local-1a",
    ]);
    assert_eq!(attached["State"], "attached");
    let export_name = attached["NbdExport"]["ExportName"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(export_name.starts_with(&format!("{volume_id}/")));
    assert_eq!(
        attached["NbdExport"]["Endpoints"][0],
        format!("unix:{}", daemon.nbd_sock.display())
    );
    let described = daemon.cli_ok(&["describe-volumes", "--volume-ids", &volume_id]);
    assert_eq!(described["Volumes"][0]["State"], "in-use");
    let in_use = daemon.cli_ok(&[
        "describe-volumes",
        "--filters",
        "Name=status,Values=in-use",
        "Name=volume-type,Values=gp*",
    ]);
    assert_eq!(in_use["Volumes"].as_array().unwrap().len(), 1);
    let available = daemon.cli_ok(&[
        "describe-volumes",
        "--filters",
        "Name=status,Values=available",
    ]);
    assert!(available["Volumes"].as_array().unwrap().is_empty());
    let (ok, _, stderr) = daemon.cli(&["describe-volumes", "--filters", "Name=colour,Values=red"]);
    assert!(!ok && stderr.contains("'colour' is invalid"), "{stderr}");
    assert_eq!(
        described["Volumes"][0]["Attachments"][0]["InstanceId"],
        INSTANCE
    );
    assert!(
        !described
            .to_string()
            .contains(export_name.split('/').nth(1).unwrap()),
        "token leaked by DescribeVolumes"
    );

    let opts = qemu_image_opts(&daemon.nbd_sock, &export_name);
    qemu_io(&opts, &["write -P 0x5a 0 2M", "flush", "read -P 0x5a 0 2M"]);
    // Without the token the volume is not served.
    let endpoint = NbdEndpoint::Unix(daemon.nbd_sock.clone());
    assert!(matches!(
        NbdClient::connect(&endpoint, &volume_id, None),
        Err(NbdError::Refused { .. })
    ));

    let client = NbdClient::connect(&endpoint, &volume_id, export_name.split('/').nth(1)).unwrap();
    client.write_at(0, b"before detach", true).unwrap();
    let (ok, _, stderr) = daemon.cli(&["delete-volume", "--volume-id", &volume_id]);
    assert!(!ok && stderr.contains("VolumeInUse"), "{stderr}");
    daemon.cli_ok(&["detach-volume", "--volume-id", &volume_id]);
    let after = client.write_at(0, b"after detach", false);
    assert!(
        matches!(after, Err(NbdError::Server { errno: 108, .. })),
        "detach must revoke: {after:?}"
    );
    assert!(NbdClient::connect(&endpoint, &volume_id, export_name.split('/').nth(1)).is_err());

    let api = ApiClient::new(ApiTarget::Unix(daemon.api_sock.clone()));
    let (status, metrics) = api.request("GET", "/metrics", b"").unwrap();
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    let written =
        format!("ebs_volume_write_bytes_total{{volume_id=\"{volume_id}\",volume_type=\"gp3\"}} ");
    let line = metrics
        .lines()
        .find(|line| line.starts_with(&written))
        .unwrap_or_else(|| panic!("no {written} in {metrics}"));
    let bytes: u64 = line[written.len()..].parse().unwrap();
    assert!(bytes >= 2 << 20, "2 MiB were written, metrics say {bytes}");
    daemon.cli_ok(&["delete-volume", "--volume-id", &volume_id]);
    let (ok, _, stderr) = daemon.cli(&["describe-volumes", "--volume-ids", &volume_id]);
    assert!(!ok && stderr.contains("InvalidVolume.NotFound"), "{stderr}");
    assert!(!daemon.data_dir.join("volumes").join(&volume_id).exists());
}

#[test]
fn invalid_api_input_gets_clear_errors_and_the_daemon_keeps_serving() {
    let run = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(run.path(), &run.path().join("data"));
    let api = ApiClient::new(ApiTarget::Unix(daemon.api_sock.clone()));
    let cases = [
        (
            "CreateVolume",
            json!({"AvailabilityZone": "local-1a", "Size": 20000, "VolumeType": "gp2"}),
            "InvalidParameterValue",
            "between 1 and 16384",
        ),
        (
            "CreateVolume",
            json!({"AvailabilityZone": "local-1a", "Size": 10, "VolumeType": "io1"}),
            "MissingParameter",
            "Iops",
        ),
        (
            "CreateVolume",
            json!({"AvailabilityZone": "local-1a", "Size": 10, "VolumeType": "gp9"}),
            "InvalidParameterValue",
            "gp9",
        ),
        (
            "CreateVolume",
            json!({"AvailabilityZone": "local-1a", "Sise": 10}),
            "InvalidParameterValue",
            "unknown field `Sise`",
        ),
        (
            "CreateVolume",
            json!({"AvailabilityZone": "local-1a", "Size": "ten"}),
            "InvalidParameterValue",
            "invalid type",
        ),
        (
            "CreateVolume",
            json!({"Size": 10}),
            "MissingParameter",
            "AvailabilityZone",
        ),
        (
            "CreateVolume",
            json!({"AvailabilityZone": "local-1a", "Size": 10, "MultiAttachEnabled": true}),
            "InvalidParameterCombination",
            "Multi-Attach",
        ),
        (
            "DeleteVolume",
            json!({"VolumeId": "vol-0123456789abcdef0"}),
            "InvalidVolume.NotFound",
            "does not exist",
        ),
        (
            "DeleteVolume",
            json!({"VolumeId": "volume-1"}),
            "InvalidVolumeID.Malformed",
            "volume-1",
        ),
        (
            "AttachVolume",
            json!({"VolumeId": "vol-0123456789abcdef0", "InstanceId": "bad", "InstanceAvailabilityZone": "local-1a"}),
            "InvalidParameterValue",
            "i-",
        ),
        ("FormatDisk", json!({}), "InvalidAction", "FormatDisk"),
    ];
    for (action, body, code, fragment) in cases {
        match api.call(action, &body) {
            Err(ApiCallError::Service {
                status,
                code: got,
                message,
            }) => {
                assert_eq!(status, 400, "{action} {body}");
                assert_eq!(got, code, "{action} {body}: {message}");
                assert!(
                    message.contains(fragment),
                    "{action} {body}: message {message:?} lacks {fragment:?}"
                );
            }
            other => panic!("{action} {body} should fail, got {other:?}"),
        }
    }
    let (status, body) = api
        .request("POST", "/v1/CreateVolume", b"{not json")
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _) = api.request("GET", "/nowhere", b"").unwrap();
    assert_eq!(status, 404);
    // A zone mismatch on attach, and then the daemon still creates volumes.
    let volume = api
        .call(
            "CreateVolume",
            &json!({"AvailabilityZone": "local-1a", "Size": 1}),
        )
        .unwrap();
    let mismatch = api.call("AttachVolume", &json!({"VolumeId": volume["VolumeId"], "InstanceId": INSTANCE, "InstanceAvailabilityZone": "local-1b"}));
    assert!(
        matches!(mismatch, Err(ApiCallError::Service { code, .. }) if code == "InvalidVolume.ZoneMismatch")
    );
    let (status, _) = api.request("GET", "/healthz", b"").unwrap();
    assert_eq!(status, 200);
    // ClientToken: the same call twice is one volume; other parameters are refused.
    let first = daemon.cli_ok(&["create-volume", "--size", "3", "--client-token", "once"]);
    let again = daemon.cli_ok(&["create-volume", "--size", "3", "--client-token", "once"]);
    assert_eq!(first["VolumeId"], again["VolumeId"]);
    let (ok, _, stderr) = daemon.cli(&["create-volume", "--size", "4", "--client-token", "once"]);
    assert!(
        !ok && stderr.contains("IdempotentParameterMismatch"),
        "{stderr}"
    );
}

#[test]
fn volumes_attachments_and_data_survive_restarts() {
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    let mut daemon = Daemon::start(run.path(), &data_dir);
    let volume = daemon.cli_ok(&[
        "create-volume",
        "--size",
        "4",
        "--volume-type",
        "io2",
        "--iops",
        "1000",
        "--multi-attach-enabled",
    ]);
    let volume_id = volume["VolumeId"].as_str().unwrap().to_string();
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        &volume_id,
        "--instance-id",
        INSTANCE,
    ]);
    let export_name = attached["NbdExport"]["ExportName"]
        .as_str()
        .unwrap()
        .to_string();
    let (volume_part, token) = export_name.split_once('/').unwrap();
    let endpoint = NbdEndpoint::Unix(daemon.nbd_sock.clone());
    let data = random_bytes(5, 3 << 20);
    {
        let client = NbdClient::connect(&endpoint, volume_part, Some(token)).unwrap();
        client.write_at(1 << 30, &data, false).unwrap();
        client.flush().unwrap();
    }
    daemon.terminate();
    let daemon = Daemon::start_with(run.path(), &data_dir, &["--test-clock"], &[]);
    let described = daemon.cli_ok(&["describe-volumes"]);
    assert_eq!(described["Volumes"][0]["VolumeId"], volume_id.as_str());
    assert_eq!(described["Volumes"][0]["State"], "in-use");
    assert_eq!(described["Volumes"][0]["MultiAttachEnabled"], true);
    let client = NbdClient::connect(&endpoint, volume_part, Some(token)).unwrap();
    let mut back = vec![0u8; data.len()];
    client.read_at(1 << 30, &mut back).unwrap();
    assert!(back == data, "data lost across restart");
    let modified = daemon.cli_ok(&[
        "modify-volume",
        "--volume-id",
        &volume_id,
        "--size",
        "8",
        "--iops",
        "2000",
    ]);
    assert_eq!(modified["VolumeModification"]["TargetSize"], 8);
    // The new size is usable once the modification reaches `optimizing`.
    daemon.advance_clock(11.0);
    drop(client);
    let client = NbdClient::connect(&endpoint, volume_part, Some(token)).unwrap();
    assert_eq!(
        client.size(),
        8 << 30,
        "a new connection sees the grown size"
    );
}

#[test]
fn cli_copies_a_raw_image_into_a_volume_and_back() {
    let run = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(run.path(), &run.path().join("data"));
    let volume = daemon.cli_ok(&["create-volume", "--size", "1"]);
    let volume_id = volume["VolumeId"].as_str().unwrap();
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        volume_id,
        "--instance-id",
        INSTANCE,
    ]);
    let export_name = attached["NbdExport"]["ExportName"].as_str().unwrap();
    let endpoint = attached["NbdExport"]["Endpoints"][0].as_str().unwrap();
    let mut image = random_bytes(3, 5 << 20);
    image[1 << 20..3 << 20].fill(0);
    let source = run.path().join("in.img");
    std::fs::write(&source, &image).unwrap();
    let summary = daemon.cli_ok(&[
        "copy-image-to-volume",
        "--json",
        "--image",
        source.to_str().unwrap(),
        "--endpoint",
        endpoint,
        "--export-name",
        export_name,
    ]);
    assert_eq!(summary["BytesCopied"], 5 << 20);
    assert_eq!(summary["ZeroBytesSkipped"], 2 << 20);
    let target = run.path().join("out.img");
    daemon.cli_ok(&[
        "copy-volume-to-image",
        "--json",
        "--image",
        target.to_str().unwrap(),
        "--endpoint",
        endpoint,
        "--export-name",
        export_name,
    ]);
    let back = std::fs::read(&target).unwrap();
    assert_eq!(back.len(), 1 << 30);
    assert!(
        back[..image.len()] == image[..],
        "round trip changed the data"
    );
    assert!(back[image.len()..].iter().all(|&byte| byte == 0));
}

#[test]
fn the_api_is_also_served_over_tcp_when_asked() {
    let run = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_with(
        run.path(),
        &run.path().join("data"),
        &["--api-listen", &address],
        &[],
    );
    let api = ApiClient::new(ApiTarget::Tcp(address.clone()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let created = loop {
        match api.call(
            "CreateVolume",
            &json!({"AvailabilityZone": "local-1a", "Size": 2, "VolumeType": "gp3"}),
        ) {
            Ok(created) => break created,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "API over TCP unreachable: {error}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    };
    let volume_id = created["VolumeId"].as_str().unwrap();
    // The same state is visible through the Unix socket, and via the CLI's --api-url.
    let described = daemon.cli_ok(&["describe-volumes", "--volume-ids", volume_id]);
    assert_eq!(described["Volumes"][0]["Size"], 2);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ebs"))
        .args([
            "--api-url",
            &format!("http://{address}"),
            "describe-volumes",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed["Volumes"][0]["VolumeId"], volume_id);
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        volume_id,
        "--instance-id",
        INSTANCE,
    ]);
    let export_name = attached["NbdExport"]["ExportName"].as_str().unwrap();
    let client =
        NbdClient::connect_export(&NbdEndpoint::Unix(daemon.nbd_sock.clone()), export_name)
            .unwrap();
    assert_eq!(client.size(), 2 << 30);
}
