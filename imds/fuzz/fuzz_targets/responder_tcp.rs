//! Arbitrary bytes sent by a real TCP client (a second smoltcp stack playing the guest)
//! through the in-VMM responder, in chunks whose sizes come from the input: exercises the
//! responder's connection handling (partial reads, pipelining, 400-and-close, backpressure)
//! on top of the parser. Never panics; every frame it emits is a valid size.
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use imds::{ImdsResponder, ResponderConfig, IMDS_IPV4};
use libfuzzer_sys::fuzz_target;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

#[path = "common.rs"]
mod common;

#[derive(Default)]
struct Queues {
    inbound: VecDeque<Vec<u8>>,
    outbound: VecDeque<Vec<u8>>,
}
struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);
impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push_back(frame);
        result
    }
}
impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.inbound.pop_front()?;
        Some((Rx(frame), Tx(&mut self.outbound)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.outbound))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = 1514;
        capabilities
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut responder) = ImdsResponder::new(&common::record(), ResponderConfig::default())
    else {
        return;
    };
    let mut device = Queues::default();
    let config = Config::new(HardwareAddress::Ethernet(EthernetAddress([
        2, 0, 0, 0, 0, 1,
    ])));
    let mut guest = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
    guest.update_ip_addrs(|addresses| {
        let _ = addresses.push(IpCidr::new(Ipv4Address::new(169, 254, 10, 2).into(), 16));
    });
    let mut sockets = SocketSet::new(Vec::new());
    let handle = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 32 * 1024]),
        tcp::SocketBuffer::new(vec![0; 32 * 1024]),
    ));
    let start = Instant::now();
    let context = guest.context();
    if sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(context, (IMDS_IPV4, 80), 40000)
        .is_err()
    {
        return;
    }
    let mut rest = data;
    for step in 0..400u64 {
        let now = start + Duration::from_millis(step * 5);
        let stack_now = smoltcp::time::Instant::from_millis((step * 5) as i64);
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        if socket.can_send() && !rest.is_empty() {
            // First byte: chunk length (at least 1); the chunk follows.
            let (length_byte, tail) = (rest[0], &rest[1..]);
            let chunk = &tail[..usize::from(length_byte).max(1).min(tail.len())];
            let _ = socket.send_slice(chunk);
            rest = &tail[chunk.len()..];
        }
        while socket.can_recv() {
            let _ = socket.recv(|received| (received.len(), ()));
        }
        guest.poll(stack_now, &mut device, &mut sockets);
        while let Some(frame) = device.outbound.pop_front() {
            let _ = responder.handle_frame(&frame, now);
        }
        while let Some(frame) = responder.poll_tx(now) {
            assert!(frame.len() >= 14 && frame.len() <= 1514);
            device.inbound.push_back(frame);
        }
        if rest.is_empty() && step > 50 {
            break;
        }
    }
});
