//! What kill -9 cannot show: that data is on stable storage before a FUA write or a FLUSH
//! is acknowledged. strace records ebsd's system calls while a client issues only FUA
//! writes and FLUSHes; in every thread, each reply sent on a socket must come after an
//! fdatasync of the volume's data file that follows that thread's last write to it.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ebs_blockdev::api::client::{ApiClient, ApiTarget};
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint};
use serde_json::json;

struct Traced {
    child: Child,
    trace_path: std::path::PathBuf,
}

impl Drop for Traced {
    fn drop(&mut self) {
        // The traced ebsd's pid starts the trace's first line; killing strace alone would
        // leave ebsd running, detached.
        let traced_pid = std::fs::read_to_string(&self.trace_path)
            .ok()
            .and_then(|trace| {
                trace
                    .split_whitespace()
                    .next()
                    .and_then(|pid| pid.parse::<i32>().ok())
            });
        if let Some(pid) = traced_pid {
            // SAFETY: kill(2) on the pid of the ebsd this test started under strace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct ThreadState {
    unsynced_data_write: bool,
}

/// Replays the trace; returns (data writes, replies checked) or the offending line.
fn check_trace(trace: &str) -> Result<(usize, usize), String> {
    let mut threads: HashMap<&str, ThreadState> = HashMap::new();
    let (mut data_writes, mut replies) = (0, 0);
    for line in trace.lines() {
        let Some((pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        let state = threads.entry(pid).or_default();
        let on_data_file = call.contains("/data>");
        if call.starts_with("pwrite64(") && on_data_file {
            state.unsynced_data_write = true;
            data_writes += 1;
        } else if call.starts_with("fdatasync(") && on_data_file {
            state.unsynced_data_write = false;
        } else if (call.starts_with("write(")
            || call.starts_with("sendto(")
            || call.starts_with("sendmsg("))
            && call.contains("<socket:[")
        {
            if state.unsynced_data_write {
                return Err(format!("reply sent before its data was synced: {line}"));
            }
            replies += 1;
        }
    }
    Ok((data_writes, replies))
}

#[test]
fn fua_and_flush_replies_follow_fdatasync() {
    require_tool("strace");
    let run = tempfile::tempdir().unwrap();
    let trace_path = run.path().join("trace");
    let api_sock = run.path().join("api.sock");
    let nbd_sock = run.path().join("nbd.sock");
    let child = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-y",
            "-s",
            "0",
            "-e",
            "trace=pwrite64,fdatasync,write,sendto,sendmsg",
            "-o",
        ])
        .arg(&trace_path)
        .arg(env!("CARGO_BIN_EXE_ebsd"))
        .arg("serve")
        .arg("--data-dir")
        .arg(run.path().join("data"))
        .arg("--nbd-listen")
        .arg(format!("unix:{}", nbd_sock.display()))
        .arg("--api-sock")
        .arg(&api_sock)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start ebsd under strace");
    let _traced = Traced {
        child,
        trace_path: trace_path.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&api_sock).is_err() {
        assert!(Instant::now() < deadline, "ebsd did not start under strace");
        thread::sleep(Duration::from_millis(50));
    }
    let api = ApiClient::new(ApiTarget::Unix(api_sock));
    let volume = api
        .call(
            "CreateVolume",
            &json!({"AvailabilityZone": "local-1a", "Size": 1, "VolumeType": "gp3"}),
        )
        .unwrap();
    let attached = api
        .call("AttachVolume", &json!({"VolumeId": volume["VolumeId"], "InstanceId": "i-0123456789abcdef0", "InstanceAvailabilityZone": "local-1a"}))
        .unwrap();
    let export_name = attached["NbdExport"]["ExportName"].as_str().unwrap();
    let client = NbdClient::connect_export(&NbdEndpoint::Unix(nbd_sock), export_name).unwrap();
    for round in 0..40u64 {
        client
            .write_at(round * 70_000, &random_bytes(round, 5000), true)
            .unwrap();
        if round % 10 == 9 {
            client.flush().unwrap();
        }
    }
    eprintln!("durability: requests done");
    client.disconnect().unwrap();
    thread::sleep(Duration::from_millis(200));
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let (data_writes, replies) = check_trace(&trace).unwrap_or_else(|error| panic!("{error}"));
    assert!(
        data_writes >= 40,
        "saw only {data_writes} data writes: is strace's -y path annotation working?"
    );
    assert!(replies >= 44, "saw only {replies} replies");
}

#[test]
fn the_checker_catches_an_unsynced_reply() {
    let bad = "100 pwrite64(7</d/volumes/vol-1/data>, \"\"..., 4096, 0) = 4096\n100 write(9<socket:[55]>, \"\"..., 16) = 16\n";
    assert!(check_trace(bad).is_err());
    let good = "100 pwrite64(7</d/volumes/vol-1/data>, \"\"..., 4096, 0) = 4096\n100 fdatasync(7</d/volumes/vol-1/data>) = 0\n100 write(9<socket:[55]>, \"\"..., 16) = 16\n";
    assert_eq!(check_trace(good).unwrap(), (1, 1));
}
