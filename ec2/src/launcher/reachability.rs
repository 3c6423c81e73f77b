//! The instance status check, as EC2 defines it: "ARP reachability of the instance's
//! network interface". The host asks for the instance's private address with an ARP
//! request on the interface its route goes out of (the bridge for an emulated ENI,
//! the VF's PF for an enhanced one) and waits briefly for the guest's kernel to answer.
//! Unlike a console marker, this needs nothing from the image: any guest whose network
//! is up passes, and a guest that hangs or loses its network fails.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{Ec2Error, ErrorCode};

const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
/// The ARP payload for Ethernet/IPv4.
const ARP_LEN: usize = 28;

fn internal(message: String) -> Ec2Error {
    Ec2Error::new(ErrorCode::InternalError, message)
}

/// The interface and source address the host's routing uses to reach `target`
/// (`ip route get`).
pub fn route_to(target: Ipv4Addr) -> Result<(String, Option<Ipv4Addr>), Ec2Error> {
    let out = Command::new("ip")
        .args(["-o", "route", "get", &target.to_string()])
        .output()
        .map_err(|e| internal(format!("ip route get: {e}")))?;
    if !out.status.success() {
        return Err(internal(format!(
            "ip route get {target}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
    };
    let dev = after("dev")
        .ok_or_else(|| internal(format!("no interface in route {text:?}")))?
        .to_string();
    let src = after("src").and_then(|s| s.parse().ok());
    Ok((dev, src))
}

/// An ARP request for `target` from `sender` (`0.0.0.0` makes it an RFC 5227 probe,
/// which Linux answers too).
pub fn request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> [u8; ARP_LEN] {
    let mut arp = [0u8; ARP_LEN];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    arp[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    arp[8..14].copy_from_slice(&sender_mac);
    arp[14..18].copy_from_slice(&sender.octets());
    // Target hardware address unknown: zeroes.
    arp[24..28].copy_from_slice(&target.octets());
    arp
}

/// The MAC in `packet` when it is an ARP reply from `target`.
pub fn reply_from(packet: &[u8], target: Ipv4Addr) -> Option<[u8; 6]> {
    if packet.len() < ARP_LEN
        || packet[0..2] != 1u16.to_be_bytes()
        || packet[2..4] != 0x0800u16.to_be_bytes()
        || packet[4] != 6
        || packet[5] != 4
        || packet[6..8] != ARP_REPLY.to_be_bytes()
        || packet[14..18] != target.octets()
    {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&packet[8..14]);
    Some(mac)
}

fn os_error(what: &str) -> Ec2Error {
    internal(format!("{what}: {}", std::io::Error::last_os_error()))
}

fn interface_mac(ifname: &str) -> Result<[u8; 6], Ec2Error> {
    let path = format!("/sys/class/net/{ifname}/address");
    let text = std::fs::read_to_string(&path).map_err(|e| internal(format!("{path}: {e}")))?;
    super::vf_dhcp::parse_mac(text.trim()).ok_or_else(|| internal(format!("{path}: {text:?}")))
}

/// Ask for `target` on `ifname` (from `sender`, or as a probe) and wait up to
/// `timeout` for its answer: the replying MAC, or None.
pub fn probe(
    ifname: &str,
    sender: Option<Ipv4Addr>,
    target: Ipv4Addr,
    timeout: Duration,
) -> Result<Option<[u8; 6]>, Ec2Error> {
    let ifindex = {
        let name = std::ffi::CString::new(ifname)
            .map_err(|_| internal(format!("bad interface name {ifname:?}")))?;
        // SAFETY: a NUL-terminated name that outlives the call.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    if ifindex == 0 {
        return Err(os_error(&format!("interface {ifname}")));
    }
    let mac = interface_mac(ifname)?;
    // SAFETY: plain socket(2); the descriptor is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if raw < 0 {
        return Err(os_error("packet socket"));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; zeroes are a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    let addr_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: binds our socket to a sockaddr_ll of the right length.
    if unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            addr_len,
        )
    } < 0
    {
        return Err(os_error("bind packet socket"));
    }
    let frame = request(mac, sender.unwrap_or(Ipv4Addr::UNSPECIFIED), target);
    let mut to = addr;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: sends `frame` (valid for its length) to a sockaddr_ll of the right length.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            addr_len,
        )
    };
    if sent < 0 {
        return Err(os_error("send ARP request"));
    }
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut pfd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(os_error("poll"));
        }
        if ready == 0 {
            return Ok(None);
        }
        // SAFETY: receives into `buffer`, valid for its length.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if n < 0 {
            return Err(os_error("receive"));
        }
        if let Some(mac) = reply_from(&buffer[..n as usize], target) {
            return Ok(Some(mac));
        }
    }
}

/// Whether `target` answers ARP on the host's route to it (two tries).
pub fn reachable(target: Ipv4Addr) -> Result<bool, Ec2Error> {
    let (dev, src) = route_to(target)?;
    for _ in 0..2 {
        if probe(&dev, src, target, Duration::from_millis(400))?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_have_the_ethernet_ipv4_layout() {
        let mac = [2, 0, 0xac, 0x1f, 0x10, 1];
        let req = request(
            mac,
            Ipv4Addr::new(172, 31, 16, 1),
            Ipv4Addr::new(172, 31, 16, 10),
        );
        assert_eq!(&req[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&req[8..14], &mac);
        assert_eq!(&req[24..], &[172, 31, 16, 10]);
        // The answer a guest sends: roles swapped, opcode 2.
        let mut reply = req;
        reply[6..8].copy_from_slice(&ARP_REPLY.to_be_bytes());
        reply[8..14].copy_from_slice(&[2, 0, 0xac, 0x1f, 0x10, 0x0a]);
        reply[14..18].copy_from_slice(&[172, 31, 16, 10]);
        reply[18..24].copy_from_slice(&mac);
        reply[24..28].copy_from_slice(&[172, 31, 16, 1]);
        let target = Ipv4Addr::new(172, 31, 16, 10);
        assert_eq!(
            reply_from(&reply, target),
            Some([2, 0, 0xac, 0x1f, 0x10, 0x0a])
        );
        assert_eq!(reply_from(&reply, Ipv4Addr::new(172, 31, 16, 11)), None);
        assert_eq!(reply_from(&req, target), None, "a request is no answer");
        assert_eq!(reply_from(&reply[..20], target), None);
    }
}
