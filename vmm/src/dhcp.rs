//! A small DHCP server on the guest's own link, as a VPC's DHCP: it offers
//! the interface's private IP, mask, gateway, MTU and lease time to the
//! guest's MAC only, so an unmodified guest configures itself. Frames it
//! does not recognise are left alone.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

const ETH_HDR: usize = 14;
const IP_HDR: usize = 20;
const UDP_HDR: usize = 8;
const BOOTP_FIXED: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

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

/// What the guest is told.
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

/// The server's own MAC on the link (locally administered).
pub const SERVER_MAC: [u8; 6] = [0x06, 0x00, 0x00, 0x00, 0x00, 0x01];

/// The parts of a client message the server answers from.
struct ClientMessage {
    kind: u8,
    xid: [u8; 4],
    flags: [u8; 2],
    requested: Option<Ipv4Addr>,
}

pub struct DhcpServer {
    lease: DhcpLease,
    replies: VecDeque<Vec<u8>>,
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl DhcpServer {
    pub fn new(lease: DhcpLease) -> Self {
        Self {
            lease,
            replies: VecDeque::new(),
        }
    }

    /// A DHCP client message from our guest?
    fn parse(&self, frame: &[u8]) -> Option<ClientMessage> {
        if frame.len() < ETH_HDR + IP_HDR + UDP_HDR + BOOTP_FIXED + 4
            || frame[12..14] != [0x08, 0x00]
        {
            return None;
        }
        let ip = &frame[ETH_HDR..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[0] >> 4 != 4 || ihl < IP_HDR || ip[9] != 17 {
            return None;
        }
        let udp = ip.get(ihl..)?;
        if udp.len() < UDP_HDR
            || u16::from_be_bytes([udp[0], udp[1]]) != 68
            || u16::from_be_bytes([udp[2], udp[3]]) != 67
        {
            return None;
        }
        let bootp = &udp[UDP_HDR..];
        if bootp.len() < BOOTP_FIXED + 4
            || bootp[0] != 1
            || bootp[BOOTP_FIXED..BOOTP_FIXED + 4] != MAGIC
        {
            return None;
        }
        // Only our guest gets an answer (chaddr), like a VPC's DHCP.
        if bootp[28..34] != self.lease.guest_mac {
            return None;
        }
        let mut xid = [0u8; 4];
        xid.copy_from_slice(&bootp[4..8]);
        let flags = [bootp[10], bootp[11]];
        let (mut kind, mut requested) = (None, None);
        let mut opts = &bootp[BOOTP_FIXED + 4..];
        while let Some((&code, rest)) = opts.split_first() {
            match code {
                0 => opts = rest,
                OPT_END => break,
                _ => {
                    let (&len, rest) = rest.split_first()?;
                    let value = rest.get(..usize::from(len))?;
                    match code {
                        OPT_MSG_TYPE if len == 1 => kind = Some(value[0]),
                        OPT_REQUESTED_IP if len == 4 => {
                            requested = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3]))
                        }
                        _ => {}
                    }
                    opts = &rest[usize::from(len)..];
                }
            }
        }
        Some(ClientMessage {
            kind: kind?,
            xid,
            flags,
            requested,
        })
    }

    /// Offer a frame from the guest; true when it was a DHCP message for us.
    pub fn handle_frame(&mut self, frame: &[u8]) -> bool {
        let Some(ClientMessage {
            kind,
            xid,
            flags,
            requested,
        }) = self.parse(frame)
        else {
            return false;
        };
        let reply = match kind {
            DISCOVER => OFFER,
            REQUEST if requested.is_none_or(|r| r == self.lease.ip) => ACK,
            REQUEST => NAK,
            // DECLINE, RELEASE, INFORM: nothing to say.
            _ => return true,
        };
        log::debug!("dhcp: {kind} from guest -> {reply}");
        let reply = self.build(reply, xid, flags);
        self.replies.push_back(reply);
        true
    }

    pub fn poll_reply(&mut self) -> Option<Vec<u8>> {
        self.replies.pop_front()
    }

    fn build(&self, kind: u8, xid: [u8; 4], flags: [u8; 2]) -> Vec<u8> {
        let l = &self.lease;
        let mut bootp = vec![0u8; BOOTP_FIXED];
        bootp[0] = 2; // BOOTREPLY
        bootp[1] = 1; // Ethernet
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&xid);
        bootp[10..12].copy_from_slice(&flags);
        if kind != NAK {
            bootp[16..20].copy_from_slice(&l.ip.octets()); // yiaddr
        }
        bootp[20..24].copy_from_slice(&l.gateway.octets()); // siaddr
        bootp[28..34].copy_from_slice(&l.guest_mac);
        bootp.extend_from_slice(&MAGIC);
        let mut opt = |code: u8, value: &[u8]| {
            bootp.push(code);
            bootp.push(value.len() as u8);
            bootp.extend_from_slice(value);
        };
        opt(OPT_MSG_TYPE, &[kind]);
        opt(OPT_SERVER_ID, &l.gateway.octets());
        if kind != NAK {
            opt(OPT_LEASE_TIME, &l.lease_secs.to_be_bytes());
            opt(OPT_SUBNET_MASK, &l.netmask().octets());
            opt(OPT_ROUTER, &l.gateway.octets());
            let broadcast = u32::from(l.ip) | !u32::from(l.netmask());
            opt(OPT_BROADCAST, &broadcast.to_be_bytes());
            opt(OPT_MTU, &l.mtu.to_be_bytes());
            if let Some(dns) = l.dns {
                opt(OPT_DNS, &dns.octets());
            }
            if let Some(h) = &l.hostname {
                let h = &h.as_bytes()[..h.len().min(255)];
                opt(OPT_HOSTNAME, h);
            }
        }
        bootp.push(OPT_END);

        let udp_len = (UDP_HDR + bootp.len()) as u16;
        let src = l.gateway.octets();
        let dst = [255u8; 4];
        let mut udp = Vec::with_capacity(usize::from(udp_len));
        udp.extend_from_slice(&67u16.to_be_bytes());
        udp.extend_from_slice(&68u16.to_be_bytes());
        udp.extend_from_slice(&udp_len.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&bootp);
        let mut pseudo = 0u32;
        for w in [src, dst] {
            pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]))
                + u32::from(u16::from_be_bytes([w[2], w[3]]));
        }
        pseudo += 17 + u32::from(udp_len);
        let c = checksum(&udp, pseudo);
        udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());

        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        let total = (IP_HDR + udp.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let c = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut frame = Vec::with_capacity(ETH_HDR + ip.len() + udp.len());
        frame.extend_from_slice(&[0xff; 6]); // broadcast: the guest has no address yet
        frame.extend_from_slice(&SERVER_MAC);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&udp);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0xac, 0x1f, 0x10, 0x0a];

    fn lease() -> DhcpLease {
        DhcpLease {
            guest_mac: MAC,
            ip: Ipv4Addr::new(172, 31, 16, 10),
            prefix_len: 20,
            gateway: Ipv4Addr::new(172, 31, 16, 1),
            dns: None,
            mtu: 9001,
            lease_secs: 3600,
            hostname: Some("ip-172-31-16-10".into()),
        }
    }

    /// A client message as udhcpc sends it.
    fn client(kind: u8, mac: [u8; 6], requested: Option<[u8; 4]>) -> Vec<u8> {
        let mut bootp = vec![0u8; BOOTP_FIXED];
        bootp[0] = 1;
        bootp[1] = 1;
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&[1, 2, 3, 4]);
        bootp[28..34].copy_from_slice(&mac);
        bootp.extend_from_slice(&MAGIC);
        bootp.extend_from_slice(&[OPT_MSG_TYPE, 1, kind]);
        if let Some(r) = requested {
            bootp.extend_from_slice(&[OPT_REQUESTED_IP, 4]);
            bootp.extend_from_slice(&r);
        }
        bootp.push(OPT_END);
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[8, 0]);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
        ];
        let total = (20 + 8 + bootp.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&68u16.to_be_bytes());
        f.extend_from_slice(&67u16.to_be_bytes());
        f.extend_from_slice(&((8 + bootp.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&bootp);
        f
    }

    fn option(reply: &[u8], code: u8) -> Option<Vec<u8>> {
        let mut o = &reply[ETH_HDR + IP_HDR + UDP_HDR + BOOTP_FIXED + 4..];
        while let Some((&c, rest)) = o.split_first() {
            if c == OPT_END {
                return None;
            }
            let len = usize::from(rest[0]);
            if c == code {
                return Some(rest[1..1 + len].to_vec());
            }
            o = &rest[1 + len..];
        }
        None
    }

    #[test]
    fn discover_offer_request_ack() {
        let mut s = DhcpServer::new(lease());
        assert!(s.handle_frame(&client(DISCOVER, MAC, None)));
        let offer = s.poll_reply().unwrap();
        assert_eq!(option(&offer, OPT_MSG_TYPE), Some(vec![OFFER]));
        let bootp = &offer[ETH_HDR + IP_HDR + UDP_HDR..];
        assert_eq!(&bootp[16..20], &[172, 31, 16, 10]);
        assert_eq!(
            option(&offer, OPT_SUBNET_MASK),
            Some(vec![255, 255, 240, 0])
        );
        assert_eq!(option(&offer, OPT_ROUTER), Some(vec![172, 31, 16, 1]));
        assert_eq!(
            option(&offer, OPT_MTU),
            Some(9001u16.to_be_bytes().to_vec())
        );
        // Valid IP header checksum: summing the header gives 0xffff.
        assert_eq!(checksum(&offer[ETH_HDR..ETH_HDR + IP_HDR], 0), 0);
        assert!(s.handle_frame(&client(REQUEST, MAC, Some([172, 31, 16, 10]))));
        assert_eq!(
            option(&s.poll_reply().unwrap(), OPT_MSG_TYPE),
            Some(vec![ACK])
        );
        assert!(s.handle_frame(&client(REQUEST, MAC, Some([10, 0, 0, 9]))));
        assert_eq!(
            option(&s.poll_reply().unwrap(), OPT_MSG_TYPE),
            Some(vec![NAK])
        );
    }

    #[test]
    fn ignores_other_macs_and_non_dhcp_frames() {
        let mut s = DhcpServer::new(lease());
        assert!(!s.handle_frame(&client(DISCOVER, [2, 0, 0, 0, 0, 9], None)));
        assert!(!s.handle_frame(&[0u8; 60]));
        let mut truncated = client(DISCOVER, MAC, None);
        truncated.truncate(100);
        assert!(!s.handle_frame(&truncated));
        // Options running past the end are not a panic.
        let mut bad = client(DISCOVER, MAC, None);
        let n = bad.len();
        bad[n - 1] = 42;
        bad.push(200);
        assert!(!s.handle_frame(&bad));
        assert!(s.poll_reply().is_none());
    }
}
