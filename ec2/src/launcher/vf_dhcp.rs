//! DHCP for an instance whose ENI is a VF. An emulated ENI gets its address from the
//! VMM's responder on the tap; a VF's frames go straight to the NIC, so the host answers
//! instead, like the VPC's DHCP: the supervisor of each VF instance listens on a packet
//! socket for DHCP requests from its instance's MAC on any interface (the VF's PF,
//! whichever the VMM leased from) and answers with the instance's address, the subnet's
//! mask, the gateway and the MTU. A packet socket rather than UDP port 67: several
//! supervisors (and no DHCP server of the host's own) share the host, each sees every
//! request and answers only its own instance, and the client has no address yet.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::Ec2Error;

const BOOTP_FIXED: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;
/// Renewals come back within the hour; an instance keeps its address while it exists.
const LEASE_SECS: u32 = 3600;
const ETH_P_IP: u16 = 0x0800;

/// What the instance is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
    pub hostname: String,
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The reply (an IPv4 packet: the socket adds the Ethernet header) to `packet`, an IPv4
/// packet from `offer.mac`; `None` when it is not a DHCP request of that client.
pub fn answer(packet: &[u8], offer: &Offer) -> Option<Vec<u8>> {
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != 17 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0xf) * 4;
    let udp = packet.get(ihl..)?;
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != 67 {
        return None;
    }
    let bootp = &udp[8..];
    if bootp.len() < BOOTP_FIXED + 4 || bootp[0] != 1 || bootp[28..34] != offer.mac {
        return None;
    }
    if bootp[BOOTP_FIXED..BOOTP_FIXED + 4] != MAGIC {
        return None;
    }
    let (mut kind, mut requested) = (None, None);
    let mut options = &bootp[BOOTP_FIXED + 4..];
    while let [code, rest @ ..] = options {
        match *code {
            255 => break,
            0 => options = rest,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(len))?;
                match (*code, value) {
                    (53, [k]) => kind = Some(*k),
                    (50, [a, b, c, d]) => requested = Some(Ipv4Addr::new(*a, *b, *c, *d)),
                    _ => {}
                }
                options = &rest[usize::from(len)..];
            }
        }
    }
    let ciaddr = Ipv4Addr::new(bootp[12], bootp[13], bootp[14], bootp[15]);
    let reply = match kind? {
        DISCOVER => OFFER,
        REQUEST => {
            let asked = requested.unwrap_or(ciaddr);
            if asked == offer.ip {
                ACK
            } else {
                NAK
            }
        }
        _ => return None,
    };
    Some(build(offer, reply, &bootp[4..8], &bootp[10..12]))
}

fn build(offer: &Offer, kind: u8, xid: &[u8], flags: &[u8]) -> Vec<u8> {
    let mut bootp = vec![0u8; BOOTP_FIXED];
    bootp[0] = 2; // BOOTREPLY
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(xid);
    bootp[10..12].copy_from_slice(flags);
    if kind != NAK {
        bootp[16..20].copy_from_slice(&offer.ip.octets());
    }
    bootp[20..24].copy_from_slice(&offer.gateway.octets());
    bootp[28..34].copy_from_slice(&offer.mac);
    bootp.extend_from_slice(&MAGIC);
    let mut option = |code: u8, value: &[u8]| {
        bootp.push(code);
        bootp.push(value.len() as u8);
        bootp.extend_from_slice(value);
    };
    option(53, &[kind]);
    option(54, &offer.gateway.octets());
    if kind != NAK {
        option(51, &LEASE_SECS.to_be_bytes());
        option(1, &netmask(offer.prefix).octets());
        option(3, &offer.gateway.octets());
        let broadcast = u32::from(offer.ip) | !u32::from(netmask(offer.prefix));
        option(28, &Ipv4Addr::from(broadcast).octets());
        option(26, &offer.mtu.to_be_bytes());
        let name = offer.hostname.as_bytes();
        option(12, &name[..name.len().min(63)]);
    }
    bootp.push(255);
    // BOOTP's minimum message, which some clients insist on.
    bootp.resize(bootp.len().max(300), 0);

    let total = 20 + 8 + bootp.len();
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&offer.gateway.octets());
    packet.extend_from_slice(&Ipv4Addr::BROADCAST.octets());
    let sum = checksum(&packet);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&67u16.to_be_bytes());
    packet.extend_from_slice(&68u16.to_be_bytes());
    packet.extend_from_slice(&((8 + bootp.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]); // no UDP checksum (allowed for IPv4)
    packet.extend_from_slice(&bootp);
    packet
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Classic BPF over the IPv4 packet (SOCK_DGRAM: no link header): UDP, not a later
/// fragment, destination port 67. Everything else stays in the kernel.
const FILTER: [(u16, u8, u8, u32); 9] = [
    (0x30, 0, 0, 9),      // ldb [9]            protocol
    (0x15, 0, 6, 17),     // jeq #17 else drop
    (0x28, 0, 0, 6),      // ldh [6]            flags + fragment offset
    (0x45, 4, 0, 0x1fff), // jset #0x1fff -> drop
    (0xb1, 0, 0, 0),      // ldxb 4*([0]&0xf)   header length
    (0x48, 0, 0, 2),      // ldh [x+2]          destination port
    (0x15, 0, 1, 67),     // jeq #67 else drop
    (0x06, 0, 0, 0xffff), // accept
    (0x06, 0, 0, 0),      // drop
];

/// A packet socket receiving DHCP requests on every interface.
pub struct Responder {
    fd: OwnedFd,
}

fn os_error(what: &str) -> Ec2Error {
    Ec2Error::internal(format!("{what}: {}", std::io::Error::last_os_error()))
}

impl Responder {
    pub fn open() -> Result<Responder, Ec2Error> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_IP.to_be()),
            )
        };
        if raw < 0 {
            return Err(os_error("packet socket"));
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut code: Vec<libc::sock_filter> = FILTER
            .iter()
            .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
            .collect();
        let program = libc::sock_fprog {
            len: code.len() as u16,
            filter: code.as_mut_ptr(),
        };
        // SAFETY: program points at `code`, alive for the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&program as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_error("attaching the DHCP filter"));
        }
        Ok(Responder { fd })
    }

    /// Answer `offer`'s client forever (the supervisor's thread).
    pub fn serve(&self, offer: &Offer) {
        let mut buffer = vec![0u8; 2048];
        loop {
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buffer and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("DHCP for {:02x?}: {}", offer.mac, os_error("recvfrom"));
                return;
            }
            let packet = &buffer[..n as usize];
            if from.sll_pkttype == libc::PACKET_OUTGOING || from.sll_addr[..6] != offer.mac {
                continue;
            }
            let Some(reply) = answer(packet, offer) else {
                continue;
            };
            let mut to = from;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&offer.mac);
            to.sll_protocol = ETH_P_IP.to_be();
            // SAFETY: reply and to are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    reply.as_ptr().cast(),
                    reply.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                log::warn!("DHCP reply: {}", os_error("sendto"));
            } else {
                log::info!(
                    "DHCP: {} for {} on interface {}",
                    offer.ip,
                    offer.hostname,
                    from.sll_ifindex
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            mac: [2, 0, 0xac, 0x1f, 0x10, 0x0a],
            ip: Ipv4Addr::new(172, 31, 16, 10),
            prefix: 20,
            gateway: Ipv4Addr::new(172, 31, 16, 1),
            mtu: 1500,
            hostname: "ip-172-31-16-10".into(),
        }
    }

    /// A client's request as udhcpc sends it (IPv4 + UDP + BOOTP with options).
    fn request(mac: [u8; 6], kind: u8, requested: Option<Ipv4Addr>) -> Vec<u8> {
        let mut bootp = vec![0u8; BOOTP_FIXED];
        bootp[0] = 1;
        bootp[4..8].copy_from_slice(&[1, 2, 3, 4]);
        bootp[28..34].copy_from_slice(&mac);
        bootp.extend_from_slice(&MAGIC);
        bootp.extend_from_slice(&[53, 1, kind]);
        if let Some(ip) = requested {
            bootp.extend_from_slice(&[50, 4]);
            bootp.extend_from_slice(&ip.octets());
        }
        bootp.push(255);
        let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(&[255; 4]);
        packet.extend_from_slice(&[0, 68, 0, 67, 0, 0, 0, 0]);
        packet.extend_from_slice(&bootp);
        packet
    }

    fn options(reply: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = &reply[28 + BOOTP_FIXED + 4..];
        while let [code, len, tail @ ..] = rest {
            if *code == 255 {
                break;
            }
            out.push((*code, tail[..usize::from(*len)].to_vec()));
            rest = &tail[usize::from(*len)..];
        }
        out
    }

    #[test]
    fn offers_and_acks_the_instance_address() {
        let o = offer();
        let reply = answer(&request(o.mac, DISCOVER, None), &o).expect("an offer");
        assert_eq!(checksum(&reply[..20]), 0, "valid IPv4 header checksum");
        assert_eq!(&reply[20..24], &[0, 67, 0, 68]);
        let bootp = &reply[28..];
        assert_eq!(bootp[0], 2);
        assert_eq!(&bootp[4..8], &[1, 2, 3, 4], "same transaction id");
        assert_eq!(&bootp[16..20], &[172, 31, 16, 10]);
        let opts = options(&reply);
        assert!(opts.contains(&(53, vec![OFFER])));
        assert!(opts.contains(&(1, vec![255, 255, 240, 0])));
        assert!(opts.contains(&(3, vec![172, 31, 16, 1])));
        assert!(opts.contains(&(28, vec![172, 31, 31, 255])));

        let ack = answer(&request(o.mac, REQUEST, Some(o.ip)), &o).unwrap();
        assert!(options(&ack).contains(&(53, vec![ACK])));
        let wrong = Some(Ipv4Addr::new(172, 31, 16, 99));
        let nak = answer(&request(o.mac, REQUEST, wrong), &o).unwrap();
        assert!(options(&nak).contains(&(53, vec![NAK])));
    }

    #[test]
    fn other_clients_and_packets_are_ignored() {
        let o = offer();
        assert!(answer(&request([2, 0, 0, 0, 0, 1], DISCOVER, None), &o).is_none());
        assert!(answer(&request(o.mac, 7, None), &o).is_none(), "release");
        let mut tcp = request(o.mac, DISCOVER, None);
        tcp[9] = 6;
        assert!(answer(&tcp, &o).is_none());
        assert!(answer(&[0x45; 10], &o).is_none());
        assert!(answer(&request(o.mac, DISCOVER, None)[..200], &o).is_none());
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:00:ac:1f:10:0a"),
            Some([2, 0, 0xac, 0x1f, 0x10, 0x0a])
        );
        assert_eq!(parse_mac("02:00:ac:1f:10"), None);
        assert_eq!(parse_mac("02:00:ac:1f:10:0a:00"), None);
    }
}
