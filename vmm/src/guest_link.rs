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

impl FrameHook for GuestLinkHook {
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
