//! Real AWS clients (botocore/boto3 and the aws CLI from the venv that
//! scripts/setup/imds.sh builds) get credentials and region from imdsd on loopback.

mod common;

use std::process::Command;
use std::time::SystemTime;

use common::*;
use imds::credentials::CredentialIssuer;
use imds::timefmt::unix_seconds;

const INSTANCE_ID: &str = "i-0aaaaaaaaaaaaaaa1";

/// Environment that leaves IMDS as the only source of credentials and region.
fn client_command(program: &std::path::Path, daemon: &Daemon, dir: &std::path::Path) -> Command {
    let empty = dir.join("empty-aws-config");
    std::fs::write(&empty, "").expect("write empty config");
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir)
        .env("AWS_CONFIG_FILE", &empty)
        .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", daemon.endpoint())
        .env("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "1")
        .env("AWS_METADATA_SERVICE_TIMEOUT", "5");
    command
}

fn expected_access_keys() -> Vec<String> {
    let issuer = CredentialIssuer::from_hex(CREDENTIAL_SECRET).expect("hex secret");
    let now = unix_seconds(SystemTime::now());
    // The client ran moments ago; accept the period before too in case an hour just turned.
    [now, now.saturating_sub(60)]
        .iter()
        .map(|time| {
            issuer
                .credentials(INSTANCE_ID, "app-role", *time)
                .access_key_id
        })
        .collect()
}

fn run_botocore(daemon: &Daemon, dir: &std::path::Path, v1_disabled: bool) -> serde_json::Value {
    let script = repo_root().join("imds/tests/clients/botocore_client.py");
    let mut command = client_command(&venv_tool("python"), daemon, dir);
    command.arg(script);
    if v1_disabled {
        command.env("AWS_EC2_METADATA_V1_DISABLED", "true");
    }
    let stdout = run_ok(&mut command);
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}: {stdout}"))
}

fn assert_credentials_and_region(result: &serde_json::Value) {
    assert_eq!(result["method"], "iam-role", "{result}");
    let access_key = result["access_key"].as_str().expect("access key");
    assert!(
        expected_access_keys().iter().any(|key| key == access_key),
        "botocore got {access_key}, expected one of {:?}",
        expected_access_keys()
    );
    assert!(result["secret_key"]
        .as_str()
        .is_some_and(|key| key.len() == 40));
    assert!(result["token"]
        .as_str()
        .is_some_and(|token| !token.is_empty()));
    assert_eq!(result["region"], "eu-west-1", "{result}");
}

fn token_was_used(log: &[String]) -> bool {
    log.iter()
        .any(|line| line.contains("PUT /latest/api/token") && line.ends_with("200"))
        && log
            .iter()
            .filter(|line| line.contains("GET "))
            .all(|line| line.contains("token=true"))
}

#[test]
fn botocore_with_v1_allowed_uses_a_token() {
    let dir = scratch_dir("botocore-v1-allowed");
    let config = host_config(vec![instance_json(
        INSTANCE_ID,
        "127.0.0.1",
        serde_json::json!({}),
    )]);
    let daemon = Daemon::start(&dir, &config, &[]);
    let result = run_botocore(&daemon, &dir, false);
    assert_credentials_and_region(&result);
    let log = daemon.access_log();
    assert!(token_was_used(&log), "access log: {log:#?}");
    assert!(
        log.iter()
            .any(|line| line.contains("GET /latest/meta-data/placement/availability-zone/")),
        "region comes from the zone with a trailing slash: {log:#?}"
    );
}

#[test]
fn botocore_with_tokens_required_and_v1_disabled() {
    let dir = scratch_dir("botocore-required");
    let config = host_config(vec![instance_json(
        INSTANCE_ID,
        "127.0.0.1",
        serde_json::json!({"http_tokens": "required"}),
    )]);
    let daemon = Daemon::start(&dir, &config, &[]);
    for v1_disabled in [false, true] {
        daemon.clear_log();
        let result = run_botocore(&daemon, &dir, v1_disabled);
        assert_credentials_and_region(&result);
        let log = daemon.access_log();
        assert!(token_was_used(&log), "v1_disabled={v1_disabled}: {log:#?}");
    }
}

#[test]
fn botocore_gets_nothing_from_a_disabled_endpoint() {
    let dir = scratch_dir("botocore-disabled");
    let config = host_config(vec![instance_json(
        INSTANCE_ID,
        "127.0.0.1",
        serde_json::json!({"http_endpoint": "disabled"}),
    )]);
    let daemon = Daemon::start(&dir, &config, &[]);
    let result = run_botocore(&daemon, &dir, false);
    assert!(result["access_key"].is_null(), "{result}");
    let log = daemon.access_log();
    assert!(
        !log.is_empty() && log.iter().all(|line| line.ends_with("403")),
        "{log:#?}"
    );
}

/// The aws CLI (v1, from pip) resolves credentials through botocore's IMDS provider; it
/// takes no region from IMDS (`configure list` shows it unset), so only credentials are
/// checked here.
fn aws_cli_credentials(tokens: &str, v1_disabled: bool) {
    let dir = scratch_dir(&format!("aws-cli-{tokens}-{v1_disabled}"));
    let config = host_config(vec![instance_json(
        INSTANCE_ID,
        "127.0.0.1",
        serde_json::json!({"http_tokens": tokens}),
    )]);
    let daemon = Daemon::start(&dir, &config, &[]);
    let aws = venv_tool("aws");
    let mut command = client_command(&aws, &daemon, &dir);
    command
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", venv_dir().join("bin").display()),
        )
        .args(["configure", "list"]);
    if v1_disabled {
        command.env("AWS_EC2_METADATA_V1_DISABLED", "true");
    }
    let listing = run_ok(&mut command);
    let access_key_line = listing
        .lines()
        .find(|line| line.trim_start().starts_with("access_key"))
        .unwrap_or_else(|| panic!("no access_key line:\n{listing}"));
    assert!(access_key_line.contains("iam-role"), "{listing}");
    let expected = expected_access_keys();
    assert!(
        expected
            .iter()
            .any(|key| access_key_line.contains(&key[key.len() - 4..])),
        "aws shows the last four characters of {expected:?}:\n{listing}"
    );
    assert!(token_was_used(&daemon.access_log()));
}

#[test]
fn aws_cli_reads_credentials_with_v1_allowed() {
    aws_cli_credentials("optional", false);
}

#[test]
fn aws_cli_reads_credentials_with_tokens_required_and_v1_disabled() {
    aws_cli_credentials("required", true);
}
