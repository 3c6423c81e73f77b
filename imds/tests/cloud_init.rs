//! cloud-init 22.4 (Debian package) Ec2 datasource crawls imdsd, as identified AWS (IMDSv2,
//! identity document) and unidentified (IMDSv1), and yields what we served.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

const INSTANCE_ID: &str = "i-0ddddddddddddddd4";
const MAC: &str = "02:00:00:00:00:01";
const SECOND_MAC: &str = "02:00:00:00:00:02";

fn cloud_init_python() -> &'static Path {
    let python = Path::new("/usr/bin/python3");
    let module = Path::new("/usr/lib/python3/dist-packages/cloudinit/sources/DataSourceEc2.py");
    assert!(
        python.exists() && module.exists(),
        "Debian's cloud-init package is missing: {SETUP_HINT}"
    );
    python
}

fn signing_files(dir: &Path) -> (String, String) {
    let key = dir.join("identity-key.pem");
    let cert = dir.join("identity-cert.pem");
    run_ok(
        Command::new(system_tool("openssl"))
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=imds cloud-init test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    (key.display().to_string(), cert.display().to_string())
}

fn start(dir: &Path, options: serde_json::Value) -> Daemon {
    let mut instance = instance_json(INSTANCE_ID, "127.0.0.1", options);
    instance["network_interfaces"][0]["private_ipv4s"] = json!(["172.31.16.10", "172.31.16.11"]);
    // A second ENI in another subnet, attached as device 1.
    let second_eni = json!({
        "mac": SECOND_MAC, "interface_id": "eni-0456", "device_number": 1,
        "private_ipv4s": ["172.31.32.5", "172.31.32.6"],
        "subnet_id": "subnet-02", "subnet_ipv4_cidr_block": "172.31.32.0/20",
        "vpc_id": "vpc-01", "vpc_ipv4_cidr_blocks": ["172.31.0.0/16"],
        "security_groups": [{"id": "sg-02", "name": "backend"}]
    });
    if let Some(interfaces) = instance["network_interfaces"].as_array_mut() {
        interfaces.push(second_eni);
    }
    let (key, cert) = signing_files(dir);
    let mut config = host_config(vec![instance]);
    config["signing"] = json!({"private_key": key, "certificate": cert});
    Daemon::start(dir, &config, &[])
}

fn run_cloud_init(daemon: &Daemon, mode: &str) -> serde_json::Value {
    let script = repo_root().join("imds/tests/clients/cloud_init_ec2.py");
    let stdout = run_ok(
        Command::new(cloud_init_python())
            .arg(script)
            .arg(daemon.endpoint())
            .arg(mode)
            .arg(format!("{MAC},{SECOND_MAC}")),
    );
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}: {stdout}"))
}

/// The GETs a full crawl of `meta-data/` must make, derived from the leaves imdsd says it
/// serves: every leaf and every directory listing, minus IAM credentials (cloud-init skips
/// them) and `public-keys/0/` (cloud-init goes from `0=name` straight to the key).
fn expected_crawl(daemon: &Daemon, version: &str) -> BTreeSet<String> {
    let stdout = run_ok(
        Command::new(env!("CARGO_BIN_EXE_imdsd"))
            .arg("--config")
            .arg(&daemon.config_path)
            .arg("--json"),
    );
    let description: serde_json::Value = serde_json::from_str(&stdout).expect("describe JSON");
    let mut expected = BTreeSet::new();
    expected.insert(format!("/{version}/meta-data/"));
    let paths = description["instances"][0]["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .filter_map(|path| path.as_str())
        .filter(|path| path.starts_with("meta-data/") && !path.contains("security-credentials"));
    for leaf in paths {
        expected.insert(format!("/{version}/{leaf}"));
        let mut directory = String::new();
        let parts: Vec<&str> = leaf.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            directory.push_str(part);
            directory.push('/');
            if directory != "meta-data/public-keys/0/" {
                expected.insert(format!("/{version}/{directory}"));
            }
        }
    }
    expected
}

/// (method, path, token used, status) per access-log line.
fn parsed_log(daemon: &Daemon) -> Vec<(String, String, bool, u16)> {
    daemon
        .access_log()
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (
                fields[1].to_string(),
                fields[2].to_string(),
                fields[3] == "token=true",
                fields[5].parse().unwrap_or(0),
            )
        })
        .collect()
}

fn assert_yielded_what_we_served(result: &serde_json::Value) {
    assert_eq!(result["cloud_init_version"], "22.4.2");
    assert_eq!(result["found"], true, "{result}");
    assert_eq!(result["instance_id"], INSTANCE_ID);
    assert_eq!(result["user_data"], "#cloud-config\nruncmd: [echo hello]\n");
    assert_eq!(result["region"], "eu-west-1");
    assert_eq!(result["availability_zone"], "eu-west-1b");
    assert_eq!(
        result["public_keys"],
        json!(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI test@imds"])
    );
    // Both ENIs, matched by MAC, primary preferred by route metric, secondary addresses
    // with their subnet's prefix.
    let ethernets = &result["network_config"]["ethernets"];
    let eth0 = &ethernets["eth0"];
    assert_eq!(eth0["match"]["macaddress"], MAC, "{result}");
    assert_eq!(eth0["dhcp4"], true);
    assert_eq!(eth0["dhcp4-overrides"]["route-metric"], 100, "{result}");
    assert_eq!(eth0["addresses"], json!(["172.31.16.11/20"]), "{result}");
    let eth1 = &ethernets["eth1"];
    assert_eq!(eth1["match"]["macaddress"], SECOND_MAC, "{result}");
    assert_eq!(eth1["dhcp4-overrides"]["route-metric"], 200, "{result}");
    assert_eq!(eth1["addresses"], json!(["172.31.32.6/20"]), "{result}");
}

#[test]
fn cloud_init_identified_as_aws_uses_tokens_and_reads_identity() {
    let dir = scratch_dir("cloud-init-aws");
    let daemon = start(&dir, json!({"http_tokens": "required"}));
    let result = run_cloud_init(&daemon, "aws");
    assert_eq!(result["cloud_name"], "aws");
    assert_yielded_what_we_served(&result);
    assert_eq!(result["identity"]["instanceId"], INSTANCE_ID);
    assert_eq!(result["identity"]["privateIp"], "172.31.16.10");

    let log = parsed_log(&daemon);
    let requests: Vec<String> = log.iter().map(|(m, p, _, _)| format!("{m} {p}")).collect();
    assert!(
        log.iter().all(|(_, _, _, status)| *status == 200),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .filter(|(m, ..)| m == "GET")
            .all(|(_, _, token, _)| *token),
        "every GET carries the token: {log:#?}"
    );
    assert_eq!(
        requests[..3],
        [
            "PUT /latest/api/token",
            "GET /2021-03-23/meta-data/instance-id",
            "GET /2021-03-23/user-data",
        ],
        "{requests:#?}"
    );
    let identity: Vec<&String> = requests[requests.len() - 4..].iter().collect();
    assert_eq!(
        identity,
        [
            "GET /2021-03-23/dynamic/instance-identity",
            "GET /2021-03-23/dynamic/instance-identity/document",
            "GET /2021-03-23/dynamic/instance-identity/pkcs7",
            "GET /2021-03-23/dynamic/instance-identity/signature",
        ],
        "{requests:#?}"
    );
    let crawl: BTreeSet<String> = log[3..log.len() - 4]
        .iter()
        .map(|(_, path, _, _)| path.clone())
        .collect();
    assert_eq!(crawl, expected_crawl(&daemon, "2021-03-23"));
    assert_eq!(crawl.len(), log.len() - 7, "no path fetched twice");
    eprintln!("cloud-init (AWS) made {} requests", log.len());
}

#[test]
fn cloud_init_unidentified_uses_v1_without_identity() {
    let dir = scratch_dir("cloud-init-unidentified");
    let daemon = start(&dir, json!({}));
    let result = run_cloud_init(&daemon, "unidentified");
    assert_eq!(result["cloud_name"], "unknown");
    assert_yielded_what_we_served(&result);

    let log = parsed_log(&daemon);
    assert!(
        log.iter()
            .all(|(method, _, token, status)| method == "GET" && !token && *status == 200),
        "{log:#?}"
    );
    assert_eq!(log[0].1, "/2009-04-04/meta-data/instance-id", "{log:#?}");
    assert!(!log.iter().any(|(_, path, ..)| path.contains("dynamic")));
    let crawled: BTreeSet<String> = log.iter().map(|(_, path, ..)| path.clone()).collect();
    assert!(
        expected_crawl(&daemon, "2021-03-23").is_subset(&crawled),
        "{log:#?}"
    );
}

#[test]
fn cloud_init_gives_up_on_a_disabled_endpoint() {
    let dir = scratch_dir("cloud-init-disabled");
    let daemon = start(&dir, json!({"http_endpoint": "disabled"}));
    let result = run_cloud_init(&daemon, "aws");
    assert_eq!(result["found"], false, "{result}");
    let log = parsed_log(&daemon);
    assert_eq!(
        log,
        vec![(
            "PUT".to_string(),
            "/latest/api/token".to_string(),
            false,
            403
        )],
        "a 403 on the PUT means IMDS is disabled: one request, then nothing"
    );
}
