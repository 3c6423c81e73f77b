//! The instances' "VPC": one Linux bridge per host with the subnet's gateway address,
//! one tap per emulated ENI on it. The VMM answers DHCP (address, mask, gateway, MTU)
//! and the metadata service on each tap itself, so the bridge needs no DHCP server.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::error::Ec2Error;

pub const BRIDGE: &str = "nitrobr0";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 31, 16, 1);
pub const PREFIX: u8 = 20;
pub const SUBNET_CIDR: &str = "172.31.16.0/20";
pub const VPC_CIDR: &str = "172.31.0.0/16";
/// First address handed out (EC2 reserves the subnet's first four; we keep a few more).
const FIRST_HOST: u32 = 10;
const SUBNET_HOSTS: u32 = (1 << (32 - PREFIX)) - 2;

fn run(args: &[&str]) -> Result<(), Ec2Error> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Ec2Error::internal(format!("ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Ec2Error::internal(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// The bridge with the gateway address, created if missing.
pub fn ensure_bridge() -> Result<(), Ec2Error> {
    if !link_exists(BRIDGE) {
        run(&["link", "add", BRIDGE, "type", "bridge"])?;
        run(&["addr", "add", &format!("{GATEWAY}/{PREFIX}"), "dev", BRIDGE])?;
    }
    run(&["link", "set", BRIDGE, "up"])
}

/// The tap of one instance's primary ENI (interface names are at most 15 bytes).
pub fn tap_name(instance_id: &str) -> String {
    let hex = instance_id.trim_start_matches("i-");
    format!("ni-{}", &hex[hex.len().saturating_sub(12)..])
}

/// A fresh tap (with virtio-net headers) on the bridge.
pub fn create_tap(name: &str) -> Result<(), Ec2Error> {
    ensure_bridge()?;
    if link_exists(name) {
        let _ = run(&["link", "del", name]);
    }
    run(&["tuntap", "add", name, "mode", "tap", "vnet_hdr"])?;
    run(&["link", "set", name, "master", BRIDGE])?;
    run(&["link", "set", name, "up"])
}

pub fn delete_tap(name: &str) {
    if link_exists(name) {
        let _ = run(&["link", "del", name]);
    }
}

/// The lowest free address of the subnet, given those in use.
pub fn allocate_ip(in_use: &[Ipv4Addr]) -> Result<Ipv4Addr, Ec2Error> {
    let base = u32::from(GATEWAY) & !((1u32 << (32 - PREFIX)) - 1);
    (FIRST_HOST..=SUBNET_HOSTS)
        .map(|host| Ipv4Addr::from(base + host))
        .find(|ip| !in_use.contains(ip))
        .ok_or_else(|| {
            Ec2Error::new(
                crate::error::ErrorCode::InsufficientFreeAddressesInSubnet,
                format!("There are not enough free addresses in subnet {SUBNET_CIDR}"),
            )
        })
}

/// A `PrivateIpAddress` the request named: in the subnet, not reserved, not in use.
pub fn check_requested_ip(ip: Ipv4Addr, in_use: &[Ipv4Addr]) -> Result<Ipv4Addr, Ec2Error> {
    let base = u32::from(GATEWAY) & !((1u32 << (32 - PREFIX)) - 1);
    let host = u32::from(ip).wrapping_sub(base);
    if !(FIRST_HOST..=SUBNET_HOSTS).contains(&host) {
        return Err(Ec2Error::invalid_value(format!(
            "Address {ip} does not fall within the subnet's address range ({SUBNET_CIDR}, \
             from .{FIRST_HOST})"
        )));
    }
    if in_use.contains(&ip) {
        return Err(Ec2Error::new(
            crate::error::ErrorCode::InvalidIpAddressInUse,
            format!("Address {ip} is in use."),
        ));
    }
    Ok(ip)
}

/// A locally administered MAC derived from the address (stable across stop/start).
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_macs_and_tap_names() {
        assert_eq!(allocate_ip(&[]).unwrap(), Ipv4Addr::new(172, 31, 16, 10));
        let used = [
            Ipv4Addr::new(172, 31, 16, 10),
            Ipv4Addr::new(172, 31, 16, 12),
        ];
        assert_eq!(allocate_ip(&used).unwrap(), Ipv4Addr::new(172, 31, 16, 11));
        let all: Vec<_> = (10..=4094)
            .map(|h| Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 31, 16, 0)) + h))
            .collect();
        assert!(allocate_ip(&all).is_err(), "a full subnet is an error");
        let asked = Ipv4Addr::new(172, 31, 16, 20);
        assert_eq!(check_requested_ip(asked, &used).unwrap(), asked);
        assert!(check_requested_ip(used[0], &used).is_err(), "in use");
        assert!(check_requested_ip(Ipv4Addr::new(172, 31, 16, 1), &[]).is_err());
        assert!(check_requested_ip(Ipv4Addr::new(10, 0, 0, 10), &[]).is_err());
        assert_eq!(mac_for(Ipv4Addr::new(172, 31, 16, 10)), "02:00:ac:1f:10:0a");
        assert_eq!(tap_name("i-0123456789abcdef0"), "ni-56789abcdef0");
        assert!(tap_name("i-0123456789abcdef0").len() <= 15);
    }
}
