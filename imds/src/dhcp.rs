//! The VPC's DHCP, as one function: a client's IPv4 packet in, the server's answer
//! out. Both places that play the VPC use it: the VMM's responder on an emulated
//! ENI's link (it adds the Ethernet header) and the host's responder for an instance
//! whose ENI is a VF (a packet socket adds it). Only the instance's own MAC is
//! answered, with its private IP, the subnet's mask, gateway, broadcast address and
//! MTU, and its hostname; everything a guest controls is bounds-checked.

use std::net::Ipv4Addr;

const IP_HDR: usize = 20;
const UDP_HDR: usize = 8;
const BOOTP_FIXED: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// BOOTP's minimum message length, which some clients insist on.
const BOOTP_MIN: usize = 300;

pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;

const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_MTU: u8 = 26;
const OPT_BROADCAST: u8 = 28;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MSG_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_END: u8 = 255;

/// What the instance is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpLease {
    pub guest_mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub dns: Option<Ipv4Addr>,
    pub mtu: u16,
    pub lease_secs: u32,
    pub hostname: Option<String>,
}

impl DhcpLease {
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }
}

/// What to do with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum DhcpAnswer {
    /// Not a DHCP client message of this lease's MAC: let it go its way.
    NotOurs,
    /// Ours, and nothing to say (DECLINE, RELEASE, INFORM).
    NoReply,
    /// The answer: an IPv4 packet from the gateway to 255.255.255.255 (the client
    /// has no address yet), to be sent to the client's MAC.
    Reply(Vec<u8>),
}

/// The fields of a client message the answer depends on.
struct ClientMessage<'a> {
    kind: u8,
    xid: &'a [u8],
    flags: &'a [u8],
    ciaddr: Ipv4Addr,
    requested: Option<Ipv4Addr>,
}

fn parse<'a>(packet: &'a [u8], mac: &[u8; 6]) -> Option<ClientMessage<'a>> {
    if packet.len() < IP_HDR || packet[0] >> 4 != 4 || packet[9] != 17 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if ihl < IP_HDR {
        return None;
    }
    let udp = packet.get(ihl..)?;
    if udp.len() < UDP_HDR
        || u16::from_be_bytes([udp[0], udp[1]]) != 68
        || u16::from_be_bytes([udp[2], udp[3]]) != 67
    {
        return None;
    }
    let bootp = &udp[UDP_HDR..];
    if bootp.len() < BOOTP_FIXED + MAGIC.len()
        || bootp[0] != 1
        || bootp[BOOTP_FIXED..BOOTP_FIXED + MAGIC.len()] != MAGIC
        || bootp[28..34] != mac[..]
    {
        return None;
    }
    let (mut kind, mut requested) = (None, None);
    let mut options = &bootp[BOOTP_FIXED + MAGIC.len()..];
    while let Some((&code, rest)) = options.split_first() {
        match code {
            0 => options = rest,
            OPT_END => break,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(len))?;
                match (code, value) {
                    (OPT_MSG_TYPE, [k]) => kind = Some(*k),
                    (OPT_REQUESTED_IP, [a, b, c, d]) => {
                        requested = Some(Ipv4Addr::new(*a, *b, *c, *d))
                    }
                    _ => {}
                }
                options = &rest[usize::from(len)..];
            }
        }
    }
    Some(ClientMessage {
        kind: kind?,
        xid: &bootp[4..8],
        flags: &bootp[10..12],
        ciaddr: Ipv4Addr::new(bootp[12], bootp[13], bootp[14], bootp[15]),
        requested,
    })
}

/// The server's answer to `packet`, an IPv4 packet from the instance.
pub fn answer(packet: &[u8], lease: &DhcpLease) -> DhcpAnswer {
    let Some(message) = parse(packet, &lease.guest_mac) else {
        return DhcpAnswer::NotOurs;
    };
    let kind = match message.kind {
        DISCOVER => OFFER,
        REQUEST => {
            // A new lease names the address in option 50; a renewal in ciaddr.
            let asked = message
                .requested
                .or((!message.ciaddr.is_unspecified()).then_some(message.ciaddr));
            if asked.is_none_or(|ip| ip == lease.ip) {
                ACK
            } else {
                NAK
            }
        }
        _ => return DhcpAnswer::NoReply,
    };
    log::debug!(
        "dhcp: {} from {:02x?} -> {kind}",
        message.kind,
        lease.guest_mac
    );
    DhcpAnswer::Reply(build(lease, kind, message.xid, message.flags))
}

fn build(lease: &DhcpLease, kind: u8, xid: &[u8], flags: &[u8]) -> Vec<u8> {
    let mut bootp = vec![0u8; BOOTP_FIXED];
    bootp[0] = 2; // BOOTREPLY
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(xid);
    bootp[10..12].copy_from_slice(flags);
    if kind != NAK {
        bootp[16..20].copy_from_slice(&lease.ip.octets()); // yiaddr
    }
    bootp[20..24].copy_from_slice(&lease.gateway.octets()); // siaddr
    bootp[28..34].copy_from_slice(&lease.guest_mac);
    bootp.extend_from_slice(&MAGIC);
    let mut option = |code: u8, value: &[u8]| {
        bootp.push(code);
        bootp.push(value.len() as u8);
        bootp.extend_from_slice(value);
    };
    option(OPT_MSG_TYPE, &[kind]);
    option(OPT_SERVER_ID, &lease.gateway.octets());
    if kind != NAK {
        option(OPT_LEASE_TIME, &lease.lease_secs.to_be_bytes());
        option(OPT_SUBNET_MASK, &lease.netmask().octets());
        option(OPT_ROUTER, &lease.gateway.octets());
        let broadcast = u32::from(lease.ip) | !u32::from(lease.netmask());
        option(OPT_BROADCAST, &broadcast.to_be_bytes());
        option(OPT_MTU, &lease.mtu.to_be_bytes());
        if let Some(dns) = lease.dns {
            option(OPT_DNS, &dns.octets());
        }
        if let Some(name) = &lease.hostname {
            // One DNS label at most.
            option(OPT_HOSTNAME, &name.as_bytes()[..name.len().min(63)]);
        }
    }
    bootp.push(OPT_END);
    bootp.resize(bootp.len().max(BOOTP_MIN), 0);

    let (src, dst) = (lease.gateway.octets(), Ipv4Addr::BROADCAST.octets());
    let udp_len = (UDP_HDR + bootp.len()) as u16;
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend_from_slice(&67u16.to_be_bytes());
    udp.extend_from_slice(&68u16.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&bootp);
    let pseudo: u32 = [src, dst]
        .iter()
        .map(|a| {
            u32::from(u16::from_be_bytes([a[0], a[1]]))
                + u32::from(u16::from_be_bytes([a[2], a[3]]))
        })
        .sum::<u32>()
        + 17
        + u32::from(udp_len);
    let sum = checksum(&udp, pseudo);
    udp[6..8].copy_from_slice(&(if sum == 0 { 0xffff } else { sum }).to_be_bytes());

    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    packet[2..4].copy_from_slice(&((IP_HDR + udp.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&src);
    packet.extend_from_slice(&dst);
    let sum = checksum(&packet, 0);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&udp);
    packet
}

/// The Internet checksum of `data`, starting from `initial` (a pseudo-header's sum).
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for pair in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
#[path = "dhcp_tests.rs"]
mod tests;
