//! Helpers shared by the integration tests: start `imdsd` on loopback, find the tools
//! scripts/setup/imds.sh installs, and fail with a pointer to it when one is missing.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SETUP_HINT: &str = "run scripts/setup/imds.sh (as root) to install the test tools";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("imds/ has a parent")
        .to_path_buf()
}

/// The venv with botocore, boto3 and the aws CLI.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("IMDS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/venv-imds"))
}

pub fn venv_tool(name: &str) -> PathBuf {
    let path = venv_dir().join("bin").join(name);
    assert!(path.exists(), "{} is missing: {SETUP_HINT}", path.display());
    path
}

/// A program from the system (Debian packages), or a clear failure.
pub fn system_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is not installed: {SETUP_HINT}");
}

/// A fresh directory for one test's files.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("imds-test-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub const CREDENTIAL_SECRET: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// One instance served to requests from `source`, with options merged in.
pub fn instance_json(
    instance_id: &str,
    source: &str,
    options: serde_json::Value,
) -> serde_json::Value {
    let mut record = serde_json::json!({
        "instance_id": instance_id,
        "image_id": "ami-0abcdef1234567890",
        "instance_type": "m5.large",
        "reservation_id": "r-0123456789abcdef0",
        "pending_time": "2026-11-25T10:00:00Z",
        "placement": {"availability_zone": "eu-west-1b", "availability_zone_id": "euw1-az2"},
        "source_addresses": [source],
        "network_interfaces": [{
            "mac": "02:00:00:00:00:01", "interface_id": "eni-0123", "device_number": 0,
            "private_ipv4s": ["172.31.16.10"],
            "subnet_id": "subnet-01", "subnet_ipv4_cidr_block": "172.31.16.0/20",
            "vpc_id": "vpc-01", "vpc_ipv4_cidr_blocks": ["172.31.0.0/16"],
            "security_groups": [{"id": "sg-01", "name": "default"}]
        }],
        "public_keys": [{"name": "test-key", "openssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI test@imds"}],
        "block_device_mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
        "iam": {"role_name": "app-role",
                "instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/app-role",
                "instance_profile_id": "AIPAEXAMPLEPROFILE"},
        "user_data": "#cloud-config\nruncmd: [echo hello]\n",
        "metadata_options": {"requests_per_second": 0}
    });
    if let (Some(target), Some(extra)) = (
        record["metadata_options"].as_object_mut(),
        options.as_object(),
    ) {
        for (key, value) in extra {
            target.insert(key.clone(), value.clone());
        }
    }
    record
}

pub fn host_config(instances: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({"credential_secret": CREDENTIAL_SECRET, "instances": instances})
}

/// A running `imdsd` on 127.0.0.1:<free port>; killed on drop.
pub struct Daemon {
    child: Child,
    pub port: u16,
    /// Every listener's port, in --listen order (`port` is the first, on 127.0.0.1).
    pub ports: Vec<u16>,
    pub config_path: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(dir: &Path, config: &serde_json::Value, extra_args: &[&str]) -> Daemon {
        let config_path = dir.join("imdsd.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(config).expect("json"),
        )
        .expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_imdsd"))
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "info,imds::access=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start imdsd");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut reader = BufReader::new(stdout);
        // One "listening on" line per --listen: ours first, then any in extra_args.
        let listeners = 1 + extra_args.iter().filter(|arg| **arg == "--listen").count();
        let mut ports = Vec::with_capacity(listeners);
        for _ in 0..listeners {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read imdsd stdout");
            let port: u16 = line
                .trim()
                .rsplit(':')
                .next()
                .and_then(|port| port.parse().ok())
                .unwrap_or_else(|| panic!("imdsd did not report its port: {line:?}"));
            ports.push(port);
        }
        let port = ports[0];
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        Daemon {
            child,
            port,
            ports,
            config_path,
            log,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Access-log lines (`<ip> <method> <target> token=<bool> -> <status>`) so far.
    pub fn access_log(&self) -> Vec<String> {
        // Give the stderr reader a moment to catch up with the last responses.
        std::thread::sleep(Duration::from_millis(100));
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter_map(|line| line.split("imds::access] ").nth(1).map(str::to_string))
            .collect()
    }

    pub fn clear_log(&self) {
        self.log.lock().expect("log lock").clear();
    }

    pub fn all_log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.all_log().iter().any(|line| line.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Reads exactly one response (status line, headers, Content-Length body).
pub fn read_response(stream: &mut TcpStream) -> RawResponse {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = stream.read(&mut byte).expect("read response head");
        assert_eq!(
            read,
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read body");
    RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub fn send(stream: &mut TcpStream, request: &str) -> RawResponse {
    stream.write_all(request.as_bytes()).expect("write request");
    read_response(stream)
}

pub fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).expect("connect to imdsd")
}

/// Runs a command, failing the test with its output when it exits non-zero.
pub fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error} ({SETUP_HINT})"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
