//! The VPC's DHCP on an emulated ENI's link: frames from the guest go through
//! [`imds::dhcp::answer`] (shared with the host's responder for VF instances) and
//! answers come back as Ethernet frames from a locally administered server MAC.
//! Frames it does not recognise are left alone.

use std::collections::VecDeque;

pub use imds::dhcp::DhcpLease;
use imds::dhcp::{answer, DhcpAnswer};

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// The server's own MAC on the link (locally administered).
pub const SERVER_MAC: [u8; 6] = [0x06, 0x00, 0x00, 0x00, 0x00, 0x01];

pub struct DhcpServer {
    lease: DhcpLease,
    replies: VecDeque<Vec<u8>>,
}

impl DhcpServer {
    pub fn new(lease: DhcpLease) -> Self {
        Self {
            lease,
            replies: VecDeque::new(),
        }
    }

    /// Offer a frame from the guest; true when it was a DHCP message for us.
    pub fn handle_frame(&mut self, frame: &[u8]) -> bool {
        if frame.len() < ETH_HDR || frame[12..14] != ETHERTYPE_IPV4 {
            return false;
        }
        match answer(&frame[ETH_HDR..], &self.lease) {
            DhcpAnswer::NotOurs => false,
            DhcpAnswer::NoReply => true,
            DhcpAnswer::Reply(packet) => {
                let mut reply = Vec::with_capacity(ETH_HDR + packet.len());
                reply.extend_from_slice(&[0xff; 6]); // broadcast: the guest has no address yet
                reply.extend_from_slice(&SERVER_MAC);
                reply.extend_from_slice(&ETHERTYPE_IPV4);
                reply.extend_from_slice(&packet);
                self.replies.push_back(reply);
                true
            }
        }
    }

    pub fn poll_reply(&mut self) -> Option<Vec<u8>> {
        self.replies.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

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
            hostname: None,
        }
    }

    /// A DISCOVER in an Ethernet frame, as udhcpc sends it.
    fn discover(mac: [u8; 6]) -> Vec<u8> {
        let mut bootp = vec![0u8; 236];
        bootp[0] = 1;
        bootp[28..34].copy_from_slice(&mac);
        bootp.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 255]);
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&ETHERTYPE_IPV4);
        frame.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&[255; 4]);
        frame.extend_from_slice(&[0, 68, 0, 67, 0, 0, 0, 0]);
        frame.extend_from_slice(&bootp);
        frame
    }

    #[test]
    fn answers_its_guest_in_an_ethernet_frame() {
        let mut server = DhcpServer::new(lease());
        assert!(server.handle_frame(&discover(MAC)));
        let offer = server.poll_reply().expect("an offer");
        assert_eq!(&offer[..6], &[0xff; 6]);
        assert_eq!(&offer[6..12], &SERVER_MAC);
        assert_eq!(&offer[12..14], &ETHERTYPE_IPV4);
        // yiaddr in the BOOTP reply behind IPv4 and UDP.
        assert_eq!(
            &offer[ETH_HDR + 28 + 16..ETH_HDR + 28 + 20],
            &[172, 31, 16, 10]
        );
        assert!(server.poll_reply().is_none());
    }

    #[test]
    fn leaves_other_frames_alone() {
        let mut server = DhcpServer::new(lease());
        assert!(!server.handle_frame(&discover([2, 0, 0, 0, 0, 9])));
        assert!(!server.handle_frame(&[0u8; 10]));
        let mut arp = discover(MAC);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!server.handle_frame(&arp));
        assert!(server.poll_reply().is_none());
    }
}
