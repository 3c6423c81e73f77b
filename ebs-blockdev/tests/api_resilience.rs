//! ebsd's API outlives a failed accept: with its file descriptors exhausted (the
//! RLIMIT_NOFILE lowered under it and the API's connections held open), accepting
//! fails, which ends tiny_http's accept thread; once descriptors are free again the
//! API answers again (the listener is bound anew) instead of leaving every client
//! waiting forever while NBD goes on.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::daemon::Daemon;

fn set_open_files_limit(pid: u32, limit: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with no new limit only writes the current one into `old`.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: limit.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit reads `new` and writes nothing (no pointer for the old limit).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count() as u64
}

/// One DescribeVolumes over the API socket; the status line, or None on a timeout.
fn describe_volumes(api: &Path) -> Option<String> {
    let mut stream = UnixStream::connect(api).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let body = "{}";
    let request = format!(
        "POST /v1/DescribeVolumes HTTP/1.1\r\nHost: ebsd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.lines().next().map(str::to_string)
}

#[test]
fn the_api_answers_again_after_accept_fails() {
    let run = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(run.path(), &run.path().join("data"));
    let pid = daemon.child.id();
    let created = daemon.cli_ok(&["create-volume", "--size", "1", "--volume-type", "gp3"]);
    let volume = created["VolumeId"].as_str().expect("VolumeId").to_string();
    let status = describe_volumes(&daemon.api_sock).expect("the API answers");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // Room for three more descriptors, then ten idle connections: the accepts
    // beyond the limit fail with EMFILE.
    set_open_files_limit(pid, open_fds(pid) + 3);
    let held: Vec<UnixStream> = (0..10)
        .filter_map(|_| UnixStream::connect(&daemon.api_sock).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    set_open_files_limit(pid, 1024);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = describe_volumes(&daemon.api_sock) {
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ebsd's API never answered again after the failed accept"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And the service behind it is the same.
    let volumes = daemon.cli_ok(&["describe-volumes", "--volume-ids", &volume]);
    assert_eq!(volumes["Volumes"][0]["VolumeId"], volume.as_str());
}
