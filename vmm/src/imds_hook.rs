//! The instance metadata service on the guest's own virtio-net link: the
//! imds crate's frame responder (ARP and TCP for 169.254.169.254) plugged
//! into the device's frame hook, so the guest reaches IMDS without any host
//! network set-up, as on EC2.

use std::time::Instant;

use devices::virtio::net::FrameHook;
use imds::{ImdsResponder, InstanceRecord, ResponderConfig};

pub struct ImdsHook {
    responder: ImdsResponder,
}

impl ImdsHook {
    pub fn new(record: &InstanceRecord) -> Result<Self, imds::ImdsError> {
        Ok(Self {
            responder: ImdsResponder::new(record, ResponderConfig::default())?,
        })
    }
}

impl FrameHook for ImdsHook {
    fn guest_sent(&mut self, frame: &[u8], now: Instant) -> bool {
        self.responder.handle_frame(frame, now)
    }

    fn poll_to_guest(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.responder.poll_tx(now)
    }

    fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.responder.poll_at(now)
    }
}
