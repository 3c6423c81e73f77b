//! The in-VMM responder against a real Linux TCP stack: a tap device moved into a network
//! namespace plays the guest (169.254.169.254 routed to it), this test plays the VMM's
//! virtio-net loop (frames from the tap go to `handle_frame`, `poll_tx` frames go back),
//! and curl inside the namespace is the client. Needs root (tap + netns).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use common::*;
use imds::{ImdsResponder, ResponderConfig};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const GUEST_ADDRESS: &str = "172.31.16.10/20";
const HOP_LIMIT: u8 = 3;

/// `struct ifreq` as TUNSETIFF reads it: name, then flags, padded to 40 bytes.
#[repr(C)]
struct InterfaceRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _padding: [u8; 22],
}

fn open_tap(name: &str) -> File {
    let path = c"/dev/net/tun";
    // SAFETY: a valid NUL-terminated path; the returned fd is checked before use.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    assert!(
        fd >= 0,
        "open /dev/net/tun: {} (this test needs root and the tun module; {SETUP_HINT})",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just opened by us and nothing else owns it.
    let tap = unsafe { File::from_raw_fd(fd) };
    let mut request = InterfaceRequest {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _padding: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a struct ifreq; InterfaceRequest has its layout and size
    // and lives on our stack for the duration of the call.
    let result = unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETIFF as _, &mut request) };
    assert!(
        result == 0,
        "TUNSETIFF {name}: {} (this test needs root: CAP_NET_ADMIN)",
        std::io::Error::last_os_error()
    );
    tap
}

fn ip(args: &[&str]) {
    run_ok(Command::new(system_tool("ip")).args(args));
}

/// Deletes the namespace (and the tap inside it) however the test ends.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct VmmLoop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Every frame the responder sent to the guest.
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    responder: Arc<Mutex<ImdsResponder>>,
}

impl Drop for VmmLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The loop a VMM's virtio-net device would run around the responder.
const GATEWAY: [u8; 4] = [172, 31, 16, 1];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// The host's answer to "who has 172.31.16.1" (what the tap's far side would send).
fn gateway_arp_reply(frame: &[u8]) -> Option<Vec<u8>> {
    let is_arp_request = frame.len() >= 42 && frame[12..14] == [8, 6] && frame[20..22] == [0, 1];
    if !is_arp_request || frame[38..42] != GATEWAY {
        return None;
    }
    let mut reply = Vec::with_capacity(42);
    reply.extend_from_slice(&frame[6..12]);
    reply.extend_from_slice(&GATEWAY_MAC);
    reply.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&GATEWAY_MAC);
    reply.extend_from_slice(&GATEWAY);
    reply.extend_from_slice(&frame[22..32]);
    Some(reply)
}

fn start_vmm_loop(mut tap: File, responder: ImdsResponder) -> VmmLoop {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let responder = Arc::new(Mutex::new(responder));
    let (stop_flag, sent_log, shared) =
        (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&responder));
    let thread = std::thread::spawn(move || {
        let mut frame = vec![0u8; 65536];
        while !stop_flag.load(Ordering::SeqCst) {
            let now = Instant::now();
            let wait_ms = shared
                .lock()
                .expect("responder lock")
                .poll_at(now)
                .map(|at| at.saturating_duration_since(now).as_millis().min(20) as i32)
                .unwrap_or(20);
            let mut poll_fd = libc::pollfd {
                fd: tap.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on our stack, count 1.
            unsafe { libc::poll(&mut poll_fd, 1, wait_ms) };
            let mut responder = shared.lock().expect("responder lock");
            loop {
                match tap.read(&mut frame) {
                    Ok(length) if length > 0 => {
                        let frame = &frame[..length];
                        if !responder.handle_frame(frame, Instant::now()) {
                            // Unclaimed frames would go to the host's tap in a VMM; here the
                            // only one that needs an answer is the guest's ARP for its
                            // gateway, which the host side would answer.
                            if let Some(reply) = gateway_arp_reply(frame) {
                                let _ = tap.write_all(&reply);
                            }
                        }
                    }
                    _ => break,
                }
            }
            while let Some(out) = responder.poll_tx(Instant::now()) {
                let _ = tap.write_all(&out);
                sent_log.lock().expect("sent lock").push(out);
            }
        }
    });
    VmmLoop {
        stop,
        thread: Some(thread),
        sent,
        responder,
    }
}

/// A namespace playing the guest: a tap (whose other end this process holds) with
/// GUEST_ADDRESS and 169.254.169.254 routed on-link to it.
fn guest_namespace(suffix: &str) -> (Namespace, String, File) {
    let tag = std::process::id() % 10_000;
    let namespace = Namespace(format!("imds-guest-{suffix}-{tag}"));
    let tap_name = format!("imds{suffix}{tag}");
    ip(&["netns", "add", &namespace.0]);
    let tap = open_tap(&tap_name);
    ip(&["link", "set", "dev", &tap_name, "netns", &namespace.0]);
    in_namespace(&namespace.0, &["link", "set", "lo", "up"]);
    in_namespace(
        &namespace.0,
        &["link", "set", &tap_name, "address", "02:00:00:00:00:01"],
    );
    in_namespace(
        &namespace.0,
        &["addr", "add", GUEST_ADDRESS, "dev", &tap_name],
    );
    in_namespace(&namespace.0, &["link", "set", &tap_name, "up"]);
    in_namespace(
        &namespace.0,
        &["route", "add", "169.254.169.254/32", "dev", &tap_name],
    );
    (namespace, tap_name, tap)
}

fn in_namespace(namespace: &str, args: &[&str]) {
    let mut full = vec!["netns", "exec", namespace, "ip"];
    full.extend_from_slice(args);
    ip(&full);
}

fn record_with(options: serde_json::Value) -> imds::InstanceRecord {
    serde_json::from_value(instance_json(
        "i-0ccccccccccccccc3",
        "172.31.16.10",
        options,
    ))
    .expect("record")
}

fn curl_in(namespace: &str, args: &[&str]) -> String {
    run_ok(
        Command::new(system_tool("ip"))
            .args(["netns", "exec", namespace])
            .arg(system_tool("curl"))
            .args(["-s", "--fail-with-body", "--max-time", "10"])
            .args(args),
    )
}

#[test]
fn linux_guest_stack_and_curl_through_the_responder() {
    system_tool("curl");
    let (namespace, _tap_name, tap) = guest_namespace("a");
    let record = record_with(
        serde_json::json!({"http_tokens": "required", "http_put_response_hop_limit": HOP_LIMIT}),
    );
    let responder = ImdsResponder::new(&record, ResponderConfig::default()).expect("responder");
    let vmm = start_vmm_loop(tap, responder);

    let token = curl_in(
        &namespace.0,
        &[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 300",
            "http://169.254.169.254/latest/api/token",
        ],
    );
    assert!(token.len() > 20, "token: {token:?}");
    let instance_id = curl_in(
        &namespace.0,
        &[
            "-H",
            &format!("X-aws-ec2-metadata-token: {token}"),
            "http://169.254.169.254/latest/meta-data/instance-id",
        ],
    );
    assert_eq!(instance_id, "i-0ccccccccccccccc3");
    // Keep-alive: curl reuses one connection for two URLs.
    let both = curl_in(
        &namespace.0,
        &[
            "-H",
            &format!("X-aws-ec2-metadata-token: {token}"),
            "http://169.254.169.254/latest/meta-data/placement/region",
            "http://169.254.169.254/latest/meta-data/local-ipv4",
        ],
    );
    assert_eq!(both, "eu-west-1172.31.16.10");
    // Without a token: 401 (curl --fail-with-body exits 22).
    let status = Command::new(system_tool("ip"))
        .args(["netns", "exec", &namespace.0])
        .arg(system_tool("curl"))
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("http://169.254.169.254/latest/meta-data/instance-id")
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "401");

    // The frame that carried the token left with IP TTL = hop limit; others with 64.
    let sent = vmm.sent.lock().expect("sent lock").clone();
    let ttl_of = |needle: &[u8]| -> Vec<u8> {
        sent.iter()
            .filter(|frame| frame.windows(needle.len()).any(|window| window == needle))
            .map(|frame| frame[14 + 8])
            .collect()
    };
    assert_eq!(ttl_of(token.as_bytes()), vec![HOP_LIMIT]);
    assert_eq!(ttl_of(b"i-0ccccccccccccccc3"), vec![64]);
}

/// Exit status of curl (28: timed out) and its output.
fn curl_status_in(namespace: &str, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(system_tool("ip"))
        .args(["netns", "exec", namespace])
        .arg(system_tool("curl"))
        .args(["-s", "--max-time", "3"])
        .args(args)
        .output()
        .expect("run curl");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn token_does_not_survive_an_extra_hop_unless_the_hop_limit_allows_it() {
    system_tool("curl");
    // guest namespace (router, forwarding) <- veth -> container namespace behind it.
    let (guest, _tap_name, tap) = guest_namespace("h");
    let tag = std::process::id() % 10_000;
    let container = Namespace(format!("imds-container-{tag}"));
    ip(&["netns", "add", &container.0]);
    let (router_side, container_side) = (format!("imdsvr{tag}"), format!("imdsvc{tag}"));
    ip(&[
        "link",
        "add",
        &router_side,
        "type",
        "veth",
        "peer",
        "name",
        &container_side,
    ]);
    ip(&["link", "set", &router_side, "netns", &guest.0]);
    ip(&["link", "set", &container_side, "netns", &container.0]);
    in_namespace(
        &guest.0,
        &["addr", "add", "10.88.0.1/24", "dev", &router_side],
    );
    in_namespace(&guest.0, &["link", "set", &router_side, "up"]);
    run_ok(
        Command::new(system_tool("ip"))
            .args(["netns", "exec", &guest.0])
            .args(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]),
    );
    in_namespace(&container.0, &["link", "set", "lo", "up"]);
    in_namespace(
        &container.0,
        &["addr", "add", "10.88.0.2/24", "dev", &container_side],
    );
    in_namespace(&container.0, &["link", "set", &container_side, "up"]);
    in_namespace(
        &container.0,
        &["route", "add", "default", "via", "10.88.0.1"],
    );

    let record = record_with(serde_json::json!({"http_put_response_hop_limit": 1}));
    let responder = ImdsResponder::new(&record, ResponderConfig::default()).expect("responder");
    let vmm = start_vmm_loop(tap, responder);
    let token_put = [
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        "http://169.254.169.254/latest/api/token",
    ];
    let instance_id = ["http://169.254.169.254/latest/meta-data/instance-id"];

    // Hop limit 1: the guest itself gets a token...
    let (status, token) = curl_status_in(&guest.0, &token_put);
    assert_eq!(status, Some(0));
    assert!(token.len() > 20);
    // ...a container one hop further does not (the router drops the TTL-1 reply)...
    let (status, _) = curl_status_in(&container.0, &token_put);
    assert_eq!(
        status,
        Some(28),
        "the token PUT must time out behind an extra hop"
    );
    // ...while IMDSv1 answers (TTL 64) still cross the hop, as on EC2.
    let (status, body) = curl_status_in(&container.0, &instance_id);
    assert_eq!((status, body.as_str()), (Some(0), "i-0ccccccccccccccc3"));

    // Hop limit 2 (changed on the running responder): the container gets a token too.
    let record = record_with(serde_json::json!({"http_put_response_hop_limit": 2}));
    vmm.responder
        .lock()
        .expect("responder lock")
        .update_instance(&record, None)
        .expect("update");
    let (status, token) = curl_status_in(&container.0, &token_put);
    assert_eq!(status, Some(0));
    let (status, body) = curl_status_in(
        &container.0,
        &[
            "-H",
            &format!("X-aws-ec2-metadata-token: {token}"),
            "http://169.254.169.254/latest/meta-data/instance-id",
        ],
    );
    assert_eq!((status, body.as_str()), (Some(0), "i-0ccccccccccccccc3"));
}

#[test]
fn guest_routing_via_its_gateway_like_on_ec2() {
    system_tool("curl");
    let (namespace, tap_name, tap) = guest_namespace("g");
    // EC2's shape: no on-link route to 169.254.169.254, only the default gateway. The
    // guest's IPv4 frames then carry the gateway's MAC, and the responder still claims them.
    in_namespace(
        &namespace.0,
        &["route", "del", "169.254.169.254/32", "dev", &tap_name],
    );
    in_namespace(
        &namespace.0,
        &["route", "add", "default", "via", "172.31.16.1"],
    );
    let record = record_with(serde_json::json!({"http_tokens": "required"}));
    let responder = ImdsResponder::new(&record, ResponderConfig::default()).expect("responder");
    let vmm = start_vmm_loop(tap, responder);
    let token = curl_in(
        &namespace.0,
        &[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 300",
            "http://169.254.169.254/latest/api/token",
        ],
    );
    let mac = curl_in(
        &namespace.0,
        &[
            "-H",
            &format!("X-aws-ec2-metadata-token: {token}"),
            "http://169.254.169.254/latest/meta-data/mac",
        ],
    );
    assert_eq!(mac, "02:00:00:00:00:01");
    // The responder never ARPed: it learned the guest's MAC from the guest's own frames.
    let sent = vmm.sent.lock().expect("sent lock").clone();
    assert!(!sent.is_empty());
    assert!(
        sent.iter().all(|frame| frame[12..14] == [8, 0]),
        "only IPv4 frames sent"
    );
    assert!(sent.iter().all(|frame| frame[0..6] == [2, 0, 0, 0, 0, 1]));
}
