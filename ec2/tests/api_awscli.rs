//! The HTTP API driven by the real aws CLI (scripts/setup/imds.sh puts it in
//! .cache/venv-imds) on this host: images, instance types, run-instances with user
//! data and an extra volume, describe-instances equal to the CLI's JSON, status,
//! the aws CLI's waiters, stop/start/terminate, console output, launch permissions
//! by account (a 12-digit access key), and EC2's errors for bad requests, also sent
//! raw (unknown action and parameter, malformed encoding, DryRun). The guest does
//! not boot on this host's KVM; the lifecycle does not need it to.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use integration_tests::{repo_root, workspace_bin};
use serde_json::Value;

struct Api {
    ec2: PathBuf,
    aws: PathBuf,
    state: PathBuf,
    server: Child,
    endpoint: String,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!(
                "ebsd serve --data-dir {}",
                self.state.join("ebsd/data").display()
            ))
            .status();
    }
}

impl Api {
    /// `aws ec2 ARGS --output json` as `key` (an access key id); Ok(JSON) or
    /// Err(stderr).
    fn aws_as(&self, key: &str, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(&self.aws)
            .arg("ec2")
            .args(["--endpoint-url", &self.endpoint, "--output", "json"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", "local")
            .env("AWS_DEFAULT_REGION", "local-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .expect("run the aws CLI (scripts/setup/imds.sh installs it)");
        if out.status.success() {
            Ok(if out.stdout.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(&out.stdout).expect("JSON from the aws CLI")
            })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn aws(&self, args: &[&str]) -> Value {
        self.aws_as("AKIDLOCALTEST", args)
            .unwrap_or_else(|e| panic!("aws ec2 {args:?}: {e}"))
    }

    fn aws_error(&self, key: &str, args: &[&str]) -> String {
        match self.aws_as(key, args) {
            Ok(v) => panic!("aws ec2 {args:?} should fail, got {v}"),
            Err(e) => e,
        }
    }

    fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(&self.ec2)
            .args(args)
            .env("NITRO_STATE_DIR", &self.state)
            .output()
            .expect("run ec2");
        assert!(
            out.status.success(),
            "ec2 {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON from ec2")
    }

    /// A raw POST: (HTTP status, body).
    fn post(&self, body: &str) -> (u16, String) {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).expect("connect to the API");
        write!(
            stream,
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let status = reply
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = reply
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (status, body)
    }
}

fn aws_cli() -> PathBuf {
    let venv = std::env::var_os("IMDS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/venv-imds"));
    let aws = venv.join("bin/aws");
    assert!(
        aws.is_file(),
        "{} missing: run scripts/setup/imds.sh",
        aws.display()
    );
    aws
}

fn kernel() -> PathBuf {
    let path = repo_root().join(".cache/ami/kernel");
    assert!(
        path.is_file(),
        "{} missing: run scripts/default-ami.sh (scripts/setup/vmm.sh does)",
        path.display()
    );
    path
}

fn start(dir: &Path) -> Api {
    let ec2 = workspace_bin("ec2", "ec2");
    // vmm and ebsd are found next to ec2.
    workspace_bin("vmm", "vmm");
    workspace_bin("ebs-blockdev", "ebsd");
    let state = dir.join("state");
    let mut server = Command::new(&ec2)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("NITRO_STATE_DIR", &state)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ec2 serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ec2 serve announces its address");
    let endpoint = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Api {
        ec2,
        aws: aws_cli(),
        state,
        server,
        endpoint,
    }
}

/// Compare two JSON documents; the paths where they differ.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let here = format!("{path}.{key}");
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => differences(u, v, &here, out),
                    _ => out.push(here),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                differences(u, v, &format!("{path}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} vs {b}")),
    }
}

#[test]
fn the_aws_cli_drives_the_front_door() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("api-awscli");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let api = start(&dir);

    // An image with a real kernel and a small root disk (imported with the CLI:
    // EC2's ImportImage takes its disk from S3, which this front door has not).
    let root = dir.join("root.raw");
    std::fs::write(&root, vec![0u8; 8 << 20]).unwrap();
    let url = format!("Format=raw,Url=file://{}", root.display());
    let kernel = kernel();
    let imported = api.cli(&[
        "import-image",
        "--disk-containers",
        &url,
        "--kernel-file",
        &kernel.to_string_lossy(),
        "--name",
        "api-test",
    ]);
    let image = imported["ImageId"].as_str().expect("ImageId").to_string();

    let images = api.aws(&["describe-images", "--owners", "self"]);
    assert_eq!(images["Images"][0]["ImageId"], image.as_str());
    assert_eq!(images["Images"][0]["Name"], "api-test");
    assert_eq!(images["Images"][0]["State"], "available");
    let types = api.aws(&[
        "describe-instance-types",
        "--instance-types",
        "t3.micro",
        "m5.large",
    ]);
    let t3 = &types["InstanceTypes"][0];
    assert_eq!(t3["InstanceType"], "t3.micro");
    assert_eq!(t3["VCpuInfo"]["DefaultVCpus"], 2);
    assert_eq!(t3["MemoryInfo"]["SizeInMiB"], 1024);
    assert_eq!(t3["BurstablePerformanceSupported"], true);

    // Launch permissions: another account may not launch a private image, and
    // may once it is shared with it.
    let other = "111122223333";
    let denied = api.aws_error(other, &["run-instances", "--image-id", &image]);
    assert!(denied.contains("(AuthFailure)"), "{denied}");
    api.aws(&[
        "modify-image-attribute",
        "--image-id",
        &image,
        "--launch-permission",
        &format!("Add=[{{UserId={other}}}]"),
    ]);
    let perms = api.aws(&[
        "describe-image-attribute",
        "--image-id",
        &image,
        "--attribute",
        "launchPermission",
    ]);
    assert_eq!(perms["LaunchPermissions"][0]["UserId"], other);

    let launched = api.aws(&[
        "run-instances",
        "--image-id",
        &image,
        "--instance-type",
        "t3.micro",
        "--user-data",
        "#!/bin/sh\necho from the API",
        "--block-device-mappings",
        "DeviceName=/dev/vdb,Ebs={VolumeSize=1,DeleteOnTermination=false}",
        "--metadata-options",
        "HttpTokens=required",
        "--credit-specification",
        "CpuCredits=standard",
        "--network-interfaces",
        "DeviceIndex=0,InterfaceType=emulated,Description=primary",
    ]);
    let instance = &launched["Instances"][0];
    let id = instance["InstanceId"]
        .as_str()
        .expect("InstanceId")
        .to_string();
    assert_eq!(instance["ImageId"], image.as_str());
    assert_eq!(instance["InstanceType"], "t3.micro");
    assert_eq!(instance["MetadataOptions"]["HttpTokens"], "required");
    let devices: Vec<&str> = instance["BlockDeviceMappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .filter_map(|m| m["DeviceName"].as_str())
        .collect();
    assert_eq!(devices, ["/dev/vda", "/dev/vdb"]);
    // User data went through base64 on the wire and arrived as sent (the
    // instance record keeps it base64, as DescribeInstanceAttribute shows it).
    let record: Value = serde_json::from_slice(
        &std::fs::read(api.state.join("instances").join(format!("{id}.json")))
            .expect("instance record"),
    )
    .expect("record JSON");
    {
        use base64::Engine;
        let sent = base64::engine::general_purpose::STANDARD
            .decode(record["UserData"].as_str().expect("UserData"))
            .expect("base64 user data");
        assert_eq!(sent, b"#!/bin/sh\necho from the API");
    }
    api.aws(&["wait", "instance-running", "--instance-ids", &id]);
    let credits = api.aws(&[
        "describe-instance-credit-specifications",
        "--instance-ids",
        &id,
    ]);
    assert_eq!(
        credits["InstanceCreditSpecifications"][0]["CpuCredits"],
        "standard"
    );
    api.aws(&[
        "modify-instance-credit-specification",
        "--instance-credit-specification",
        &format!("InstanceId={id},CpuCredits=unlimited"),
    ]);
    let credits = api.aws(&[
        "describe-instance-credit-specifications",
        "--instance-ids",
        &id,
    ]);
    assert_eq!(
        credits["InstanceCreditSpecifications"][0]["CpuCredits"],
        "unlimited"
    );

    // The API and the CLI describe the same instance identically: no field is
    // lost or renamed on the way through the XML.
    let through_api = api.aws(&["describe-instances", "--instance-ids", &id]);
    let through_cli = api.cli(&["describe-instances", "--instance-ids", &id]);
    let mut diff = Vec::new();
    differences(&through_api, &through_cli, "", &mut diff);
    assert!(diff.is_empty(), "API and CLI differ: {diff:#?}");
    let filtered = api.aws(&[
        "describe-instances",
        "--filters",
        "Name=instance-state-name,Values=running",
        "Name=instance-type,Values=t3.micro",
    ]);
    assert_eq!(
        filtered["Reservations"][0]["Instances"][0]["InstanceId"],
        id.as_str()
    );
    let status = api.aws(&["describe-instance-status", "--instance-ids", &id]);
    assert_eq!(
        status["InstanceStatuses"][0]["SystemStatus"]["Status"],
        "ok"
    );
    let console = api.aws(&["get-console-output", "--instance-id", &id]);
    let cli_console = api.cli(&["get-console-output", "--instance-id", &id]);
    assert_eq!(console["InstanceId"], id.as_str());
    // The aws CLI decodes the base64 the wire carries.
    assert_eq!(
        console["Output"].as_str().unwrap_or_default(),
        cli_console["Output"].as_str().unwrap_or_default()
    );

    let stopping = api.aws(&["stop-instances", "--instance-ids", &id, "--force"]);
    assert_eq!(
        stopping["StoppingInstances"][0]["CurrentState"]["Name"],
        "stopping"
    );
    api.aws(&["wait", "instance-stopped", "--instance-ids", &id]);
    let started = api.aws(&["start-instances", "--instance-ids", &id]);
    assert_eq!(
        started["StartingInstances"][0]["PreviousState"]["Name"],
        "stopped"
    );
    api.aws(&["wait", "instance-running", "--instance-ids", &id]);
    api.aws(&["stop-instances", "--instance-ids", &id, "--force"]);
    api.aws(&["wait", "instance-stopped", "--instance-ids", &id]);
    let terminating = api.aws(&["terminate-instances", "--instance-ids", &id]);
    assert_eq!(
        terminating["TerminatingInstances"][0]["CurrentState"]["Name"],
        "shutting-down"
    );
    api.aws(&["wait", "instance-terminated", "--instance-ids", &id]);

    // Idempotency: a retried RunInstances (same ClientToken, same parameters)
    // answers with the first call's reservation and launches nothing; the same
    // token with other parameters is refused.
    let launch = |instance_type: &str| {
        vec![
            "run-instances".to_string(),
            "--image-id".to_string(),
            image.clone(),
            "--instance-type".to_string(),
            instance_type.to_string(),
            "--client-token".to_string(),
            "retry-0001".to_string(),
        ]
    };
    fn as_strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let first = api.aws(&as_strs(&launch("t3.micro")));
    let retried = api.aws(&as_strs(&launch("t3.micro")));
    assert_eq!(first["ReservationId"], retried["ReservationId"]);
    let token_id = first["Instances"][0]["InstanceId"]
        .as_str()
        .expect("InstanceId")
        .to_string();
    assert_eq!(retried["Instances"][0]["InstanceId"], token_id.as_str());
    assert_eq!(retried["Instances"][0]["ClientToken"], "retry-0001");
    let with_token = api.aws(&[
        "describe-instances",
        "--filters",
        "Name=client-token,Values=retry-0001",
    ]);
    let launched_with_token: Vec<&Value> = with_token["Reservations"]
        .as_array()
        .expect("Reservations")
        .iter()
        .flat_map(|r| r["Instances"].as_array().expect("Instances"))
        .collect();
    assert_eq!(launched_with_token.len(), 1, "{with_token}");
    let mismatch = api.aws_error("AKIDLOCALTEST", &as_strs(&launch("t3.small")));
    assert!(
        mismatch.contains("(IdempotentParameterMismatch)"),
        "{mismatch}"
    );
    api.aws(&[
        "terminate-instances",
        "--instance-ids",
        &token_id,
        "--force",
    ]);
    api.aws(&["wait", "instance-terminated", "--instance-ids", &token_id]);
    // Still the same answer once the instance is gone (EC2 keeps a token's
    // reservation at least as long as it lists terminated instances).
    let late = api.aws(&as_strs(&launch("t3.micro")));
    assert_eq!(late["Instances"][0]["InstanceId"], token_id.as_str());
    assert_eq!(late["Instances"][0]["State"]["Name"], "terminated");

    // EC2's errors, through the aws CLI...
    let missing = api.aws_error(
        "AKIDLOCALTEST",
        &["run-instances", "--image-id", "ami-0123456789abcdef0"],
    );
    assert!(missing.contains("(InvalidAMIID.NotFound)"), "{missing}");
    let gone = api.aws_error(
        "AKIDLOCALTEST",
        &["reboot-instances", "--instance-ids", "i-0123456789abcdef0"],
    );
    assert!(gone.contains("(InvalidInstanceID.NotFound)"), "{gone}");
    let unsupported = api.aws_error(
        "AKIDLOCALTEST",
        &[
            "run-instances",
            "--image-id",
            &image,
            "--security-group-ids",
            "sg-0123456789abcdef0",
        ],
    );
    assert!(unsupported.contains("(Unsupported)"), "{unsupported}");
    // ...and raw.
    let (code, body) = api.post("Action=LaunchRockets&Version=2016-11-15");
    assert_eq!(code, 400);
    assert!(body.contains("<Code>InvalidAction</Code>"), "{body}");
    assert!(body.contains("<RequestID>"), "{body}");
    let (code, body) = api.post("Action=DescribeInstances&InstanceIdz.1=i-1");
    assert_eq!(code, 400);
    assert!(body.contains("<Code>UnknownParameter</Code>"), "{body}");
    let (code, body) = api.post("Action=DescribeImages&Owner.1=%zz");
    assert_eq!(code, 400);
    assert!(body.contains("<Code>MalformedQueryString</Code>"), "{body}");
    let (code, body) = api.post("Version=2016-11-15");
    assert_eq!(code, 400);
    assert!(body.contains("<Code>MissingAction</Code>"), "{body}");
    let (code, body) = api.post(&format!(
        "Action=RunInstances&ImageId={image}&MinCount=1&MaxCount=1&DryRun=true"
    ));
    assert_eq!(code, 412);
    assert!(body.contains("<Code>DryRunOperation</Code>"), "{body}");
    let (code, body) = api.post("Action=DescribeInstances&InstanceId.1=i-1");
    assert_eq!(code, 400, "{body}");
    let (code, body) = api.post("Action=DescribeInstanceTypes&InstanceType.1=t3.nano");
    assert_eq!(code, 200);
    assert!(
        body.starts_with("<?xml") && body.contains("<instanceType>t3.nano</instanceType>"),
        "{body}"
    );
    // Nothing above launched anything else: the first instance and the one the
    // client token launched (once) are terminated.
    let all = api.aws(&["describe-instances"]);
    let states: Vec<&str> = all["Reservations"]
        .as_array()
        .expect("reservations")
        .iter()
        .flat_map(|r| r["Instances"].as_array().into_iter().flatten())
        .filter_map(|i| i["State"]["Name"].as_str())
        .collect();
    assert_eq!(states, ["terminated", "terminated"]);
}
