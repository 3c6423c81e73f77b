//! The instance status check's ARP probe against a real peer on this host: a veth
//! pair into a network namespace, the namespace's end holding an address. The probe
//! goes out on the interface `ip route get` names, as it does for instances.

use std::net::Ipv4Addr;
use std::process::Command;

use ec2::launcher::reachability::{reachable, route_to};

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?}");
}

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_peer_that_answers_arp_is_reachable_and_one_that_stops_is_not() {
    let tag = std::process::id() % 10000;
    let ns = Namespace(format!("nitro-arp-{tag}"));
    let (host_end, peer_end) = (format!("narp{tag}h"), format!("narp{tag}p"));
    ip(&["netns", "add", &ns.0]);
    ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", &peer_end, "netns", &ns.0,
    ]);
    ip(&["addr", "add", "10.213.7.1/24", "dev", &host_end]);
    ip(&["link", "set", &host_end, "up"]);
    ip(&[
        "-n",
        &ns.0,
        "addr",
        "add",
        "10.213.7.2/24",
        "dev",
        &peer_end,
    ]);
    ip(&["-n", &ns.0, "link", "set", &peer_end, "up"]);

    let peer = Ipv4Addr::new(10, 213, 7, 2);
    let (dev, src) = route_to(peer).unwrap();
    assert_eq!(dev, host_end);
    assert_eq!(src, Some(Ipv4Addr::new(10, 213, 7, 1)));
    // The link needs a moment to come up (carrier on both ends).
    let mut up = false;
    for _ in 0..20 {
        if reachable(peer).unwrap() {
            up = true;
            break;
        }
    }
    assert!(up, "the namespace's address never answered ARP");
    assert!(!reachable(Ipv4Addr::new(10, 213, 7, 3)).unwrap());
    // A guest whose network went away fails the check.
    ip(&[
        "-n",
        &ns.0,
        "addr",
        "del",
        "10.213.7.2/24",
        "dev",
        &peer_end,
    ]);
    assert!(!reachable(peer).unwrap());
    // The host end goes with the namespace's peer.
}
