//! The `vmm` binary end to end on the host's /dev/kvm, with tiny ELF
//! kernels built by the test: boot paths, command line, config file, API,
//! signals, faults and configuration errors.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{long_mode_print_cmdline, pvh_print_cmdline, scratch_dir, tiny_elf_kernel};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

fn write_kernel(dir: &Path, name: &str, pvh: bool) -> PathBuf {
    let path = dir.join(name);
    let elf = tiny_elf_kernel(
        &long_mode_print_cmdline(b"L:"),
        &pvh_print_cmdline(b"P:"),
        pvh,
    );
    std::fs::write(&path, elf).unwrap();
    path
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "vmm did not exit in {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_vmm(args: &[&str]) -> Output {
    let child = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_timeout(child, Duration::from_secs(30))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn boots_elf_through_the_64bit_entry_with_its_command_line() {
    let dir = scratch_dir("elf64");
    let k = write_kernel(&dir, "vmlinux", false);
    let out = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "hello from cmdline",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "L:hello from cmdline");
}

#[test]
fn boots_elf_through_the_pvh_entry_when_the_note_is_present() {
    let dir = scratch_dir("pvh");
    let k = write_kernel(&dir, "vmlinux-pvh", true);
    let out = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "pvh works",
        "--vcpus",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "P:pvh works");
    assert!(
        text(&out.stderr).contains("Pvh entry"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn config_file_with_serial_to_a_file() {
    let dir = scratch_dir("config");
    let k = write_kernel(&dir, "vmlinux", false);
    let console = dir.join("console.log");
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": k, "boot_args": "from config"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64,
                           "smbios": {"uuid": "ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8"}},
        "serial": {"output_path": console}
    });
    let cfg_path = dir.join("vm.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = run_vmm(&["--config", cfg_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&console).unwrap(), "L:from config");
    assert!(out.stdout.is_empty());
}

#[test]
fn configuration_errors_are_clear_and_exit_2() {
    let dir = scratch_dir("errors");
    let k = write_kernel(&dir, "vmlinux", false);
    let k = k.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--kernel", "/nonexistent/vmlinux"],
            "/nonexistent/vmlinux",
        ),
        (vec!["--kernel", k, "--mem-mib", "8"], "too small"),
        (vec!["--kernel", k, "--vcpus", "33"], "vcpu_count"),
        (vec!["--kernel", k, "--vcpus", "0"], "vcpu_count"),
        (
            vec!["--kernel", k, "--initrd", "/nonexistent/initrd"],
            "initrd_path",
        ),
        (vec![], "nothing to run"),
    ];
    for (args, needle) in cases {
        let out = run_vmm(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
    }
}

#[test]
fn bad_kernel_images_are_rejected() {
    let dir = scratch_dir("badelf");
    let bad_elf = dir.join("bad-elf");
    std::fs::write(&bad_elf, b"\x7fELF\x02\x01\x01garbage-after-the-magic").unwrap();
    let out = run_vmm(&["--kernel", bad_elf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a valid ELF"),
        "{}",
        text(&out.stderr)
    );

    let junk = dir.join("junk");
    std::fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    let out = run_vmm(&["--kernel", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("neither an ELF vmlinux nor a bzImage"),
        "{}",
        text(&out.stderr)
    );

    let big_initrd = dir.join("initrd");
    let f = std::fs::File::create(&big_initrd).unwrap();
    f.set_len(40 << 20).unwrap();
    let k = write_kernel(&dir, "vmlinux", false);
    let out = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        big_initrd.to_str().unwrap(),
        "--mem-mib",
        "32",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not fit"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sigterm_tears_down_a_spinning_guest() {
    let dir = scratch_dir("sigterm");
    let path = dir.join("spin");
    // Both entries spin forever.
    std::fs::write(&path, tiny_elf_kernel(&[0xEB, 0xFE], &[0xEB, 0xFE], false)).unwrap();
    let child = Command::new(VMM)
        .args(["--kernel", path.to_str().unwrap(), "--vcpus", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = wait_with_timeout(child, Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("received signal 15"));
}

#[test]
fn vcpu_fault_exits_non_zero_with_a_message() {
    let dir = scratch_dir("fault");
    let path = dir.join("fault");
    let jump_to_mmio = [
        0x48, 0xB8, 0x00, 0x00, 0x00, 0xD0, 0x00, 0x00, 0x00, 0x00, // mov rax, 0xd0000000
        0xFF, 0xE0, // jmp rax
    ];
    std::fs::write(&path, tiny_elf_kernel(&jump_to_mmio, &[0xF4], false)).unwrap();
    let out = run_vmm(&["--kernel", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("VM stopped on a fault"),
        "{}",
        text(&out.stderr)
    );
}

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

#[test]
fn rest_api_configures_and_starts_the_instance() {
    let dir = scratch_dir("api");
    let sock = dir.join("api.sock");
    let k = write_kernel(&dir, "vmlinux", false);
    let child = Command::new(VMM)
        .args(["--api-sock", sock.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "API socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (st, info) = api(&sock, "GET", "/", None);
    assert_eq!(st, 200);
    assert_eq!(info["state"], "Not started");

    let (st, err) = api(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 99, "mem_size_mib": 64}"#),
    );
    assert_eq!(st, 400);
    assert_eq!(err["field"], "vcpu_count");
    let (st, err) = api(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": "lots"}"#),
    );
    assert_eq!(st, 400);
    assert_eq!(err["field"], "mem_size_mib");
    let (st, _) = api(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(st, 400, "no boot source yet");
    let (st, _) = api(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    );
    assert_eq!(st, 400, "not running");
    let (st, _) = api(&sock, "POST", "/machine-config", Some("{}"));
    assert_eq!(st, 405);
    let (st, _) = api(&sock, "GET", "/no-such-thing", None);
    assert_eq!(st, 404);
    let (st, err) = api(
        &sock,
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/nonexistent"}"#),
    );
    assert_eq!(st, 400);
    assert_eq!(err["field"], "kernel_image_path");

    let (st, _) = api(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "mem_size_mib": 64}"#),
    );
    assert_eq!(st, 204);
    let boot = serde_json::json!({"kernel_image_path": k, "boot_args": "via api"}).to_string();
    let (st, _) = api(&sock, "PUT", "/boot-source", Some(&boot));
    assert_eq!(st, 204);
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let drive = serde_json::json!({"drive_id": "data", "path_on_host": disk}).to_string();
    let (st, err) = api(&sock, "PUT", "/drives/other", Some(&drive));
    assert_eq!((st, err["field"].as_str()), (400, Some("drive_id")));
    let bad = serde_json::json!({"drive_id": "data", "path_on_host": "/nonexistent"}).to_string();
    let (st, err) = api(&sock, "PUT", "/drives/data", Some(&bad));
    assert_eq!((st, err["field"].as_str()), (400, Some("path_on_host")));
    let (st, _) = api(&sock, "PUT", "/drives/data", Some(&drive));
    assert_eq!(st, 204);
    let (st, _) = api(&sock, "PUT", "/drives/data", Some(&drive));
    assert_eq!(st, 204, "PUT replaces");
    let (st, drives) = api(&sock, "GET", "/drives", None);
    assert_eq!((st, drives.as_array().map(Vec::len)), (200, Some(1)));
    let bad_net =
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "01:00:00:00:00:01"}"#;
    let (st, err) = api(&sock, "PUT", "/network-interfaces/eth0", Some(bad_net));
    assert_eq!(
        (st, err["field"].as_str()),
        (400, Some("guest_mac")),
        "multicast MAC refused"
    );
    let (st, nets) = api(&sock, "GET", "/network-interfaces", None);
    assert_eq!((st, nets.as_array().map(Vec::len)), (200, Some(0)));
    let (st, err) = api(
        &sock,
        "PUT",
        "/imds",
        Some(r#"{"instance_id": "i-0123456789abcdef0"}"#),
    );
    assert_eq!(st, 400, "incomplete instance record: {err}");
    let (st, _) = api(&sock, "GET", "/imds", None);
    assert_eq!(st, 404);
    let vf = r#"{"vf_id": "eni0", "pool": "/run/sriov-pool"}"#;
    let (st, err) = api(&sock, "PUT", "/vfio-devices/eni0", Some(vf));
    assert_eq!(
        (st, err["field"].as_str()),
        (400, Some("mac")),
        "a pool lease needs the ENI's MAC"
    );
    let vf = r#"{"vf_id": "eni0", "bdf": "0000:01:10.0"}"#;
    let (st, err) = api(&sock, "PUT", "/vfio-devices/eni1", Some(vf));
    assert_eq!((st, err["field"].as_str()), (400, Some("vf_id")));
    let (st, vfs) = api(&sock, "GET", "/vfio-devices", None);
    assert_eq!((st, vfs.as_array().map(Vec::len)), (200, Some(0)));
    let (st, cfg) = api(&sock, "GET", "/machine-config", None);
    assert_eq!((st, cfg["vcpu_count"].as_u64()), (200, Some(2)));
    let (st, _) = api(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(st, 204);
    // The guest prints its command line and resets: the VMM exits cleanly.
    let out = wait_with_timeout(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "L:via api");
    assert!(!sock.exists(), "socket removed on exit");
}
