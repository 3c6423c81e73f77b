//! What the VMM answers itself on a guest's virtio-net link, as the Nitro
//! card does on EC2: DHCP (the interface's private IP, mask, gateway, MTU)
//! and the instance metadata service at 169.254.169.254 (the imds crate's
//! frame responder). Everything else goes to the tap.

use std::time::Instant;

use devices::virtio::net::FrameHook;
use imds::{ImdsResponder, InstanceRecord, ResponderConfig};

use crate::dhcp::DhcpServer;

#[derive(Default)]
pub struct GuestLinkHook {
    dhcp: Option<DhcpServer>,
    imds: Option<ImdsResponder>,
}

impl GuestLinkHook {
    pub fn new(
        dhcp: Option<DhcpServer>,
        imds: Option<&InstanceRecord>,
    ) -> Result<Self, imds::ImdsError> {
        Ok(Self {
            dhcp,
            imds: match imds {
                Some(record) => Some(ImdsResponder::new(record, ResponderConfig::default())?),
                None => None,
            },
        })
    }

    pub fn is_empty(&self) -> bool {
        self.dhcp.is_none() && self.imds.is_none()
    }
}

/// An IPv4/UDP frame to port 67: a DHCP client message (cheap test on the
/// first bytes; `DhcpServer::handle_frame` does the full parse).
fn is_dhcp_request(head: &[u8]) -> bool {
    const ETH: usize = 14;
    if head.len() < ETH + 20 || head[12..14] != [0x08, 0x00] || head[ETH] >> 4 != 4 {
        return false;
    }
    let ihl = usize::from(head[ETH] & 0x0f) * 4;
    head[ETH + 9] == 17
        && head
            .get(ETH + ihl + 2..ETH + ihl + 4)
            .is_some_and(|port| port == [0, 67])
}

impl FrameHook for GuestLinkHook {
    fn may_claim(&self, head: &[u8]) -> bool {
        (self.imds.is_some() && imds::netstack::claims_frame(head))
            || (self.dhcp.is_some() && is_dhcp_request(head))
    }

    fn guest_sent(&mut self, frame: &[u8], now: Instant) -> bool {
        if let Some(dhcp) = self.dhcp.as_mut() {
            if dhcp.handle_frame(frame) {
                return true;
            }
        }
        match self.imds.as_mut() {
            Some(imds) => imds.handle_frame(frame, now),
            None => false,
        }
    }

    fn poll_to_guest(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(reply) = self.dhcp.as_mut().and_then(|d| d.poll_reply()) {
            return Some(reply);
        }
        self.imds.as_mut().and_then(|i| i.poll_tx(now))
    }

    fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.imds.as_mut().and_then(|i| i.poll_at(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp(dst: [u8; 4], dst_port: u16) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&dst_port.to_be_bytes());
        f
    }

    #[test]
    fn claims_only_dhcp_and_metadata_frames() {
        let record: InstanceRecord = serde_json::from_str(
            r#"{"instance_id": "i-0123456789abcdef0", "image_id": "ami-0abcdef1234567890",
                "instance_type": "m5.large", "reservation_id": "r-0123456789abcdef0",
                "placement": {"availability_zone": "eu-west-1b", "availability_zone_id": "euw1-az2"},
                "network_interfaces": [{"mac": "02:00:ac:1f:10:0a", "interface_id": "eni-0123",
                    "device_number": 0, "private_ipv4s": ["172.31.16.10"], "public_ipv4s": [],
                    "subnet_id": "subnet-01", "subnet_ipv4_cidr_block": "172.31.16.0/20",
                    "vpc_id": "vpc-01", "vpc_ipv4_cidr_blocks": ["172.31.0.0/16"],
                    "security_groups": []}],
                "metadata_options": {}}"#,
        )
        .expect("record");
        let both = GuestLinkHook::new(None, Some(&record)).expect("hook");
        assert!(both.may_claim(&ipv4_udp([169, 254, 169, 254], 80)));
        assert!(
            !both.may_claim(&ipv4_udp([10, 0, 0, 1], 67)),
            "no DHCP server"
        );
        assert!(!both.may_claim(&ipv4_udp([10, 0, 0, 1], 5201)));
        let mut arp = vec![0u8; 64];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        arp[14 + 24..14 + 28].copy_from_slice(&[169, 254, 169, 254]);
        assert!(both.may_claim(&arp));
        arp[14 + 24..14 + 28].copy_from_slice(&[10, 0, 0, 1]);
        assert!(
            !both.may_claim(&arp),
            "ARP for someone else goes to the tap"
        );

        assert!(is_dhcp_request(&ipv4_udp([255, 255, 255, 255], 67)));
        assert!(!is_dhcp_request(&ipv4_udp([255, 255, 255, 255], 68)));
        let mut tcp = ipv4_udp([255, 255, 255, 255], 67);
        tcp[14 + 9] = 6;
        assert!(!is_dhcp_request(&tcp));
        assert!(!is_dhcp_request(&[0u8; 20]), "short frames are not claimed");
    }
}
