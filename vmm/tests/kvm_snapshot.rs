//! Snapshot and restore of the `vmm` binary on the host's /dev/kvm: a
//! hand-written guest counts in memory and prints the count on the serial
//! port; the test pauses it, snapshots it through the API, kills the
//! process and restores the snapshot in a new one, where the count goes on
//! from where it stopped. Error cases: snapshot while running, corrupt,
//! truncated and other-version snapshot files, memory size mismatch.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{scratch_dir, tiny_elf_kernel};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// 64-bit guest: `inc qword [0x200000]`, a delay loop, then print
/// `n=<count as 16 hex digits>\n` on COM1; forever. The count lives in
/// guest memory and passes through rbx/rcx/rip, so a restore that lost
/// memory or registers shows up as a reset or garbage.
const COUNTER_GUEST: [u8; 63] = [
    0x48, 0xc7, 0xc7, 0x00, 0x00, 0x20, 0x00, // mov rdi, 0x200000
    0x48, 0xff, 0x07, // loop: inc qword [rdi]
    0xb9, 0x00, 0x40, 0x00, 0x00, // mov ecx, 0x4000
    0xff, 0xc9, 0x75, 0xfc, // delay: dec ecx; jnz delay
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, 0x6e, 0xee, 0xb0, 0x3d, 0xee, // "n="
    0x48, 0x8b, 0x1f, // mov rbx, [rdi]
    0xb9, 0x10, 0x00, 0x00, 0x00, // mov ecx, 16
    0x48, 0xc1, 0xc3, 0x04, // digit: rol rbx, 4
    0x88, 0xd8, 0x24, 0x0f, // mov al, bl; and al, 0xf
    0x04, 0x30, 0x3c, 0x39, 0x76, 0x02, 0x04, 0x07, // to ASCII hex
    0xee, // out dx, al
    0xff, 0xc9, 0x75, 0xeb, // dec ecx; jnz digit
    0xb0, 0x0a, 0xee, // newline
    0xeb, 0xc8, // jmp loop
];

/// One HTTP/1.1 request over the API socket; returns (status, body).
fn api(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(sock).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status: u16 = resp[9..12].parse().unwrap();
    let json = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .filter(|b| !b.is_empty())
        .map(|b| serde_json::from_str(b).unwrap())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The counts printed so far (complete lines only).
fn counts(console: &Path) -> Vec<u64> {
    counts_in(&std::fs::read_to_string(console).unwrap_or_default())
}

fn counts_in(text: &str) -> Vec<u64> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim().strip_prefix("n="))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .collect()
}

struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], stderr: &Path) -> Vmm {
    let log = std::fs::File::create(stderr).unwrap();
    Vmm(Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Boot the counter guest with a drive and an API socket, run it until it
/// printed a few counts, pause it and snapshot it. Returns the directory,
/// the snapshot and memory files, and the last count before the pause.
fn counter_snapshot(name: &str) -> (PathBuf, PathBuf, PathBuf, u64) {
    let dir = scratch_dir(name);
    let kernel = dir.join("counter");
    std::fs::write(&kernel, tiny_elf_kernel(&COUNTER_GUEST, &[0xf4], false)).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let sock = dir.join("api.sock");
    let console = dir.join("console1.log");
    let vmm = spawn(
        &[
            "--kernel",
            s(&kernel),
            "--mem-mib",
            "64",
            "--serial",
            s(&console),
            "--drive",
            &format!("id=data,path={}", s(&disk)),
            "--api-sock",
            s(&sock),
        ],
        &dir.join("vmm1.err"),
    );
    wait_for("the API socket", Duration::from_secs(10), || sock.exists());
    wait_for("three counts", Duration::from_secs(30), || {
        counts(&console).len() >= 3
    });
    let snap = dir.join("vm.snap");
    let mem = dir.join("vm.mem");
    let create = serde_json::json!({"snapshot_path": snap, "mem_file_path": mem}).to_string();

    // A snapshot needs a paused VM.
    let (st, err) = api(&sock, "PUT", "/snapshot/create", Some(&create));
    assert_eq!(st, 400, "{err}");
    assert!(
        err["fault_message"].as_str().unwrap().contains("pause"),
        "{err}"
    );
    assert!(!snap.exists() && !mem.exists());

    let (st, err) = api(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(st, 204, "{err}");
    let (_, info) = api(&sock, "GET", "/", None);
    assert_eq!(info["state"], "Paused");
    // Paused really stops the guest: no more output.
    let before = std::fs::read(&console).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read(&console).unwrap(),
        before,
        "the guest ran while paused"
    );
    let last = *counts(&console).last().unwrap();

    let (st, stats) = api(&sock, "PUT", "/snapshot/create", Some(&create));
    assert_eq!(st, 200, "{stats}");
    assert_eq!(stats["mem_file_bytes"], 64 << 20);
    let data = stats["mem_data_bytes"].as_u64().unwrap();
    assert!(
        data > 0 && data < 8 << 20,
        "sparse memory file: {data} bytes of data"
    );
    // The memory file keeps zero pages as holes.
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&mem).unwrap());
    assert!(blocks * 512 < 16 << 20, "{blocks} blocks allocated");
    let head = std::fs::read(&snap).unwrap();
    assert!(head.starts_with(b"NITRO-VMM-SNAPSHOT version=1 "));
    drop(vmm); // SIGKILL: nothing of the first process survives
    (dir, snap, mem, last)
}

#[test]
fn counter_continues_in_a_new_process_after_pause_snapshot_kill_restore() {
    let (dir, snap, mem, last) = counter_snapshot("counter");
    let console = dir.join("console2.log");
    let sock = dir.join("api2.sock");
    let vmm = spawn(
        &[
            "--restore",
            s(&snap),
            "--restore-mem",
            s(&mem),
            "--serial",
            s(&console),
            "--api-sock",
            s(&sock),
        ],
        &dir.join("vmm2.err"),
    );
    wait_for("counts after restore", Duration::from_secs(30), || {
        counts(&console).len() >= 3
    });
    let after = counts(&console);
    let err = std::fs::read_to_string(dir.join("vmm2.err")).unwrap();
    // The pause may have caught the guest in the middle of a line, which
    // the restored guest finishes: the two consoles together read as one.
    let both = std::fs::read_to_string(dir.join("console1.log")).unwrap()
        + &std::fs::read_to_string(&console).unwrap();
    let all = counts_in(&both);
    assert!(
        after[0] == last + 1 || after[0] == last + 2,
        "the count goes on from the snapshot ({last}), not from zero: {after:?}\n{err}"
    );
    assert_eq!(all[0], 1);
    assert!(
        all.windows(2).all(|w| w[1] == w[0] + 1),
        "one unbroken count across the restore: {all:?}"
    );
    let (_, info) = api(&sock, "GET", "/", None);
    assert_eq!(info["state"], "Running");
    let (_, drives) = api(&sock, "GET", "/drives", None);
    assert_eq!(
        drives[0]["drive_id"], "data",
        "config came from the snapshot"
    );

    // Pause and resume in place: the count stops, then goes on.
    let (st, _) = api(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(st, 204);
    let n = counts(&console).len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counts(&console).len(), n);
    let (st, _) = api(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    assert_eq!(st, 204);
    wait_for("counts after resume", Duration::from_secs(30), || {
        counts(&console).len() >= n + 2
    });
    let c = counts(&console);
    assert!(c.windows(2).all(|w| w[1] == w[0] + 1), "{c:?}");

    // A second hibernation of the restored VM, to the same paths: the new
    // files are renamed over the ones this VM's memory is mapped from.
    let (st, _) = api(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(st, 204);
    let create = serde_json::json!({"snapshot_path": snap, "mem_file_path": mem}).to_string();
    let (st, stats) = api(&sock, "PUT", "/snapshot/create", Some(&create));
    assert_eq!(st, 200, "{stats}");
    drop(vmm);
    let last2 = *counts(&console).last().unwrap();
    let console3 = dir.join("console3.log");
    let _vmm = spawn(
        &[
            "--restore",
            s(&snap),
            "--restore-mem",
            s(&mem),
            "--serial",
            s(&console3),
        ],
        &dir.join("vmm3.err"),
    );
    wait_for(
        "counts after the second restore",
        Duration::from_secs(30),
        || counts(&console3).len() >= 2,
    );
    let both =
        std::fs::read_to_string(&console).unwrap() + &std::fs::read_to_string(&console3).unwrap();
    let all = counts_in(&both);
    assert!(all[0] == last + 1 || all[0] == last + 2, "{all:?}");
    assert!(*all.last().unwrap() > last2 + 1, "{all:?}");
    assert!(
        all.windows(2).all(|w| w[1] == w[0] + 1),
        "one unbroken count across two restores: {all:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn api_load_restores_a_paused_vm_that_resumes_on_request() {
    let (dir, snap, mem, last) = counter_snapshot("apiload");
    let sock = dir.join("api3.sock");
    let console = dir.join("console3.log");
    let _vmm = spawn(&["--api-sock", s(&sock)], &dir.join("vmm3.err"));
    wait_for("the API socket", Duration::from_secs(10), || sock.exists());
    let load = |extra: serde_json::Value| {
        let mut body = serde_json::json!({
            "snapshot_path": snap, "mem_file_path": mem,
            "serial_output_path": console,
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        api(&sock, "PUT", "/snapshot/load", Some(&body.to_string()))
    };
    // An override for a drive the snapshot does not have is refused.
    let (st, err) = load(serde_json::json!({"drive_overrides": [{"drive_id": "nope"}]}));
    assert_eq!(st, 400, "{err}");
    assert!(
        err["fault_message"].as_str().unwrap().contains("nope"),
        "{err}"
    );
    // Loaded paused (Firecracker's default): nothing runs until resumed.
    let (st, err) = load(serde_json::json!({}));
    assert_eq!(st, 204, "{err}");
    let (_, info) = api(&sock, "GET", "/", None);
    assert_eq!(info["state"], "Paused");
    assert_eq!(info["mem_size_mib"], 64);
    std::thread::sleep(Duration::from_millis(300));
    assert!(counts(&console).is_empty());
    let (st, err) = load(serde_json::json!({}));
    assert_eq!(st, 400, "a second load: {err}");
    let (st, _) = api(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    assert_eq!(st, 204);
    wait_for("counts after resume", Duration::from_secs(30), || {
        counts(&console).len() >= 2
    });
    let c = counts(&console);
    assert!(c[0] == last + 1 || c[0] == last + 2, "{last} then {c:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn restore_fails(args: &[&str]) -> (i32, String) {
    let out = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn broken_or_mismatched_snapshots_are_refused_with_clear_errors() {
    let (dir, snap, mem, _) = counter_snapshot("errors");
    let good = std::fs::read(&snap).unwrap();
    let bad = dir.join("bad.snap");
    let check = |bytes: &[u8], extra: &[&str], code: i32, needle: &str| {
        std::fs::write(&bad, bytes).unwrap();
        let mut args = vec!["--restore", s(&bad), "--restore-mem", s(&mem)];
        args.extend_from_slice(extra);
        let (got, err) = restore_fails(&args);
        assert_eq!(got, code, "{needle}: {err}");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    };
    // Truncated: the header announces more than the file holds.
    check(&good[..good.len() - 100], &[], 1, "truncated snapshot");
    // Corrupt: one flipped byte in the body.
    let mut corrupt = good.clone();
    let at = corrupt.len() - 50;
    corrupt[at] ^= 0x20;
    check(&corrupt, &[], 1, "corrupt snapshot");
    // Another format version.
    let text = String::from_utf8(good.clone()).unwrap();
    check(
        text.replacen("version=1", "version=9", 1).as_bytes(),
        &[],
        1,
        "snapshot format version 9, this vmm reads version 1",
    );
    check(b"garbage", &[], 1, "not a snapshot file");
    // Machine shape given at restore must be the snapshot's.
    check(&good, &["--mem-mib", "128"], 2, "mem_size_mib");
    check(&good, &["--vcpus", "2"], 2, "vcpu_count");
    // A memory file of another size.
    let short = dir.join("short.mem");
    std::fs::write(&short, vec![0u8; 1 << 20]).unwrap();
    let (code, err) = restore_fails(&["--restore", s(&snap), "--restore-mem", s(&short)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("guest memory is 64 MiB"), "{err}");
    // Device flags must name the snapshot's devices.
    let (code, err) = restore_fails(&[
        "--restore",
        s(&snap),
        "--restore-mem",
        s(&mem),
        "--drive",
        "id=other,path=/dev/null",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("drives"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
