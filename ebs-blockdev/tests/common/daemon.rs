//! Runs the real `ebsd` binary and the `ebs` CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Daemon {
    pub child: Child,
    pub data_dir: PathBuf,
    pub api_sock: PathBuf,
    pub nbd_sock: PathBuf,
}

impl Daemon {
    /// Starts ebsd on sockets inside `run_dir`, with its data in `data_dir`.
    pub fn start(run_dir: &Path, data_dir: &Path) -> Daemon {
        Self::start_with(run_dir, data_dir, &[], &[])
    }

    /// Like `start`, with extra `ebsd serve` arguments and environment variables.
    pub fn start_with(
        run_dir: &Path,
        data_dir: &Path,
        extra_args: &[&str],
        environment: &[(&str, &str)],
    ) -> Daemon {
        let api_sock = run_dir.join("api.sock");
        let nbd_sock = run_dir.join("nbd.sock");
        let _ = std::fs::remove_file(&api_sock);
        let child = Command::new(env!("CARGO_BIN_EXE_ebsd"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--nbd-listen")
            .arg(format!("unix:{}", nbd_sock.display()))
            .arg("--api-sock")
            .arg(&api_sock)
            .args(extra_args)
            .envs(environment.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start ebsd");
        let daemon = Daemon {
            child,
            data_dir: data_dir.to_path_buf(),
            api_sock,
            nbd_sock,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&daemon.api_sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "ebsd did not open its API socket"
            );
            thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// Runs `ebs <args>` against this daemon; returns (success, JSON or stderr text).
    pub fn cli(&self, args: &[&str]) -> (bool, Value, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_ebs"))
            .arg("--api-sock")
            .arg(&self.api_sock)
            .args(args)
            .output()
            .expect("run ebs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (output.status.success(), value, stderr)
    }

    /// Runs `ebs <args>`, failing the test if it fails.
    pub fn cli_ok(&self, args: &[&str]) -> Value {
        let (ok, value, stderr) = self.cli(args);
        assert!(ok, "ebs {args:?} failed: {stderr}");
        value
    }

    /// Moves the clock of a daemon started with `--test-clock` (and runs the work time
    /// triggers).
    pub fn advance_clock(&self, seconds: f64) {
        let api = ebs_blockdev::api::client::ApiClient::new(
            ebs_blockdev::api::client::ApiTarget::Unix(self.api_sock.clone()),
        );
        let body = serde_json::json!({ "Seconds": seconds }).to_string();
        let reply = api
            .send("POST", "/test/clock/advance", &[], body.as_bytes())
            .expect("advance the test clock");
        assert_eq!(
            reply.status,
            200,
            "advance the test clock: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }

    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the orderly shutdown path.
    pub fn terminate(&mut self) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_hard();
    }
}
