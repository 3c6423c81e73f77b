//! Frames through the responder: a second smoltcp stack plays the guest's kernel, so every
//! frame is a real Ethernet/ARP/IPv4/TCP frame, and the test plays the tap for the rest.

use super::*;
use crate::config::tests::sample_record;
use crate::config::HttpTokens;
use smoltcp::wire::{EthernetFrame, Ipv4Address, Ipv4Packet};

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

struct Guest {
    interface: Interface,
    device: FrameQueues,
    sockets: SocketSet<'static>,
    socket: SocketHandle,
}

impl Guest {
    /// `via_gateway`: the guest routes 169.254.169.254 through 172.31.16.1 (EC2's shape);
    /// otherwise it has a link-local address and ARPs for 169.254.169.254 itself.
    fn new(via_gateway: bool) -> Guest {
        let mut device = FrameQueues::default();
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut interface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        interface.update_ip_addrs(|addresses| {
            let cidr = if via_gateway {
                IpCidr::new(Ipv4Address::new(172, 31, 16, 10).into(), 20)
            } else {
                IpCidr::new(Ipv4Address::new(169, 254, 10, 2).into(), 16)
            };
            addresses.push(cidr).expect("one address");
        });
        if via_gateway {
            interface
                .routes_mut()
                .add_default_ipv4_route(Ipv4Address::new(172, 31, 16, 1))
                .expect("route");
        }
        let mut sockets = SocketSet::new(Vec::new());
        let socket = sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; 65536]),
            tcp::SocketBuffer::new(vec![0u8; 65536]),
        ));
        Guest {
            interface,
            device,
            sockets,
            socket,
        }
    }

    fn connect(&mut self, local_port: u16) {
        let context = self.interface.context();
        self.sockets
            .get_mut::<tcp::Socket>(self.socket)
            .connect(context, (IMDS_IPV4, 80), local_port)
            .expect("connect");
    }

    fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.socket)
    }
}

/// Everything that crossed the wire, for assertions.
#[derive(Default)]
struct Wire {
    to_guest: Vec<Vec<u8>>,
    not_claimed: Vec<Vec<u8>>,
}

/// Moves frames both ways until nothing moves, answering the gateway ARP as a host would.
fn exchange(
    guest: &mut Guest,
    responder: &mut ImdsResponder,
    clock: &mut Instant,
    wire: &mut Wire,
) {
    for _ in 0..200 {
        *clock += Duration::from_millis(1);
        let stack_now = smoltcp::time::Instant::from_micros(
            clock.duration_since(responder.epoch).as_micros() as i64,
        );
        guest
            .interface
            .poll(stack_now, &mut guest.device, &mut guest.sockets);
        let mut moved = false;
        while let Some(frame) = guest.device.to_guest.pop_front() {
            moved = true;
            if !responder.handle_frame(&frame, *clock) {
                if let Some(reply) = gateway_arp_reply(&frame) {
                    guest.device.from_guest.push_back(reply);
                }
                wire.not_claimed.push(frame);
            }
        }
        while let Some(frame) = responder.poll_tx(*clock) {
            moved = true;
            wire.to_guest.push(frame.clone());
            guest.device.from_guest.push_back(frame);
        }
        if !moved && guest.device.from_guest.is_empty() {
            break;
        }
    }
}

fn gateway_arp_reply(frame: &[u8]) -> Option<Vec<u8>> {
    if frame.len() < 42 || frame[12..14] != ETHERTYPE_ARP || frame[38..42] != [172, 31, 16, 1] {
        return None;
    }
    let mut reply = Vec::with_capacity(42);
    reply.extend_from_slice(&frame[6..12]);
    reply.extend_from_slice(&GATEWAY_MAC);
    reply.extend_from_slice(&ETHERTYPE_ARP);
    reply.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&GATEWAY_MAC);
    reply.extend_from_slice(&[172, 31, 16, 1]);
    reply.extend_from_slice(&frame[22..32]);
    Some(reply)
}

fn request(
    guest: &mut Guest,
    responder: &mut ImdsResponder,
    clock: &mut Instant,
    wire: &mut Wire,
    text: &str,
) -> String {
    guest.socket().send_slice(text.as_bytes()).expect("send");
    let mut received = Vec::new();
    for _ in 0..20 {
        exchange(guest, responder, clock, wire);
        let socket = guest.socket();
        while socket.can_recv() {
            let _ = socket.recv(|data| {
                received.extend_from_slice(data);
                (data.len(), ())
            });
        }
        let text = String::from_utf8_lossy(&received);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("Content-Length: "))
                .and_then(|value| value.parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
    panic!(
        "no complete response; got {:?}",
        String::from_utf8_lossy(&received)
    );
}

fn responder(configure: impl FnOnce(&mut InstanceRecord)) -> ImdsResponder {
    let mut record = sample_record();
    configure(&mut record);
    ImdsResponder::new(&record, ResponderConfig::default()).expect("responder")
}

fn ttls_of_frames_containing(frames: &[Vec<u8>], needle: &[u8]) -> Vec<u8> {
    frames
        .iter()
        .filter(|frame| frame.windows(needle.len()).any(|window| window == needle))
        .filter_map(|frame| {
            let ethernet = EthernetFrame::new_checked(frame.as_slice()).ok()?;
            let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
            Some(ip.hop_limit())
        })
        .collect()
}

#[test]
fn claims_only_metadata_frames() {
    let mut arp_for_imds = vec![0xff; 6];
    arp_for_imds.extend_from_slice(&GUEST_MAC);
    arp_for_imds.extend_from_slice(&ETHERTYPE_ARP);
    arp_for_imds.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp_for_imds.extend_from_slice(&GUEST_MAC);
    arp_for_imds.extend_from_slice(&[172, 31, 16, 10]);
    arp_for_imds.extend_from_slice(&[0; 6]);
    arp_for_imds.extend_from_slice(&IMDS_IPV4.octets());
    assert!(claims_frame(&arp_for_imds));
    let mut arp_for_gateway = arp_for_imds.clone();
    arp_for_gateway[38..42].copy_from_slice(&[172, 31, 16, 1]);
    assert!(!claims_frame(&arp_for_gateway));
    assert!(!claims_frame(&arp_for_imds[..30]), "truncated ARP");
    assert!(!claims_frame(&[]));

    let mut ipv4 = GATEWAY_MAC.to_vec();
    ipv4.extend_from_slice(&GUEST_MAC);
    ipv4.extend_from_slice(&ETHERTYPE_IPV4);
    let mut header = [0u8; 20];
    header[0] = 0x45;
    header[12..16].copy_from_slice(&[172, 31, 16, 10]);
    header[16..20].copy_from_slice(&IMDS_IPV4.octets());
    ipv4.extend_from_slice(&header);
    assert!(claims_frame(&ipv4));
    let mut elsewhere = ipv4.clone();
    elsewhere[30..34].copy_from_slice(&[1, 1, 1, 1]);
    assert!(!claims_frame(&elsewhere));

    let mut responder = responder(|_| {});
    assert!(!responder.handle_frame(&elsewhere, Instant::now()));
    assert!(responder.handle_frame(&arp_for_imds, Instant::now()));
    let reply = responder.poll_tx(Instant::now()).expect("ARP reply");
    assert_eq!(&reply[0..6], &GUEST_MAC, "reply goes to the asker");
    assert_eq!(&reply[20..22], &[0, 2], "ARP reply opcode");
    assert_eq!(&reply[22..28], &responder.mac(), "answers with its own MAC");
    assert_eq!(&reply[28..32], &IMDS_IPV4.octets());
}

fn full_exchange(via_gateway: bool) {
    let mut responder = responder(|record| {
        record.metadata_options.http_tokens = HttpTokens::Required;
        record.metadata_options.http_put_response_hop_limit = 2;
    });
    let mut guest = Guest::new(via_gateway);
    let mut clock = Instant::now();
    let mut wire = Wire::default();
    guest.connect(40000);
    exchange(&mut guest, &mut responder, &mut clock, &mut wire);
    assert!(guest.socket().may_send(), "handshake completed");

    let token_response = request(
        &mut guest,
        &mut responder,
        &mut clock,
        &mut wire,
        "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
    );
    assert!(
        token_response.starts_with("HTTP/1.1 200 OK"),
        "{token_response}"
    );
    let token = token_response
        .split("\r\n\r\n")
        .nth(1)
        .expect("body")
        .to_string();
    assert_eq!(
        ttls_of_frames_containing(&wire.to_guest, token.as_bytes()),
        vec![2],
        "token response carries the hop limit as IP TTL"
    );

    let refused = request(
        &mut guest,
        &mut responder,
        &mut clock,
        &mut wire,
        "GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n",
    );
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let answered = request(
        &mut guest,
        &mut responder,
        &mut clock,
        &mut wire,
        &format!("GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"),
    );
    assert!(
        answered.ends_with("\r\n\r\ni-0123456789abcdef0"),
        "{answered}"
    );
    if via_gateway {
        assert!(
            wire.not_claimed
                .iter()
                .any(|frame| frame[12..14] == ETHERTYPE_ARP),
            "the guest resolved its gateway through the tap, not through us"
        );
    }
    // Every frame we sent is addressed to the guest.
    assert!(wire.to_guest.iter().all(|frame| frame[0..6] == GUEST_MAC));
}

#[test]
fn tcp_exchange_on_link() {
    full_exchange(false);
}

#[test]
fn tcp_exchange_via_gateway() {
    full_exchange(true);
}

#[test]
fn malformed_request_gets_400_and_close_then_socket_is_reused() {
    let mut responder = responder(|_| {});
    let mut clock = Instant::now();
    let mut wire = Wire::default();
    let mut guest = Guest::new(false);
    guest.connect(40001);
    exchange(&mut guest, &mut responder, &mut clock, &mut wire);
    let response = request(
        &mut guest,
        &mut responder,
        &mut clock,
        &mut wire,
        "BROKEN\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    exchange(&mut guest, &mut responder, &mut clock, &mut wire);
    assert!(!guest.socket().may_recv(), "server closed its side");
    guest.socket().close();
    exchange(&mut guest, &mut responder, &mut clock, &mut wire);
    // Well past TIME-WAIT: every responder socket listens again.
    clock += Duration::from_secs(30);
    exchange(&mut guest, &mut responder, &mut clock, &mut wire);
    let listening = responder
        .connections
        .iter()
        .filter(|(handle, _)| responder.sockets.get::<tcp::Socket>(*handle).is_listening())
        .count();
    assert_eq!(listening, ResponderConfig::default().max_connections);
}

#[test]
fn poll_at_reports_pending_retransmission() {
    let mut responder = responder(|_| {});
    let mut clock = Instant::now();
    let mut wire = Wire::default();
    let mut guest = Guest::new(false);
    guest.connect(40002);
    exchange(&mut guest, &mut responder, &mut clock, &mut wire);
    guest
        .socket()
        .send_slice(b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n")
        .expect("send");
    // Deliver the request but drop the response: the responder must ask to be polled.
    let stack_now = smoltcp::time::Instant::from_micros(
        clock.duration_since(responder.epoch).as_micros() as i64,
    );
    guest
        .interface
        .poll(stack_now, &mut guest.device, &mut guest.sockets);
    while let Some(frame) = guest.device.to_guest.pop_front() {
        assert!(responder.handle_frame(&frame, clock));
    }
    while responder.poll_tx(clock).is_some() {}
    let deadline = responder
        .poll_at(clock)
        .expect("a retransmit timer is armed");
    assert!(deadline > clock && deadline < clock + Duration::from_secs(5));
    let retransmitted = responder.poll_tx(deadline + Duration::from_millis(1));
    assert!(retransmitted.is_some(), "retransmits after the deadline");
}

#[test]
fn requests_over_the_instance_rate_limit_get_503() {
    let mut responder = responder(|record| record.metadata_options.requests_per_second = 2);
    let mut clock = Instant::now();
    let mut wire = Wire::default();
    let mut guest = Guest::new(false);
    guest.connect(40003);
    exchange(&mut guest, &mut responder, &mut clock, &mut wire);
    let statuses: Vec<String> = (0..4)
        .map(|_| {
            let response = request(
                &mut guest,
                &mut responder,
                &mut clock,
                &mut wire,
                "GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n",
            );
            response.split(' ').nth(1).unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(statuses, ["200", "200", "503", "503"]);
    // A second later the bucket has refilled.
    clock += Duration::from_secs(1);
    let response = request(
        &mut guest,
        &mut responder,
        &mut clock,
        &mut wire,
        "GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[test]
fn spoofed_source_addresses_do_not_grow_state_without_bound() {
    let mut responder = responder(|_| {});
    let now = Instant::now();
    for index in 0..10_000u32 {
        let mut frame = GATEWAY_MAC.to_vec();
        frame.extend_from_slice(&GUEST_MAC);
        frame.extend_from_slice(&ETHERTYPE_IPV4);
        let mut header = [0u8; 20];
        header[0] = 0x45;
        header[8] = 64;
        header[9] = 17; // UDP: smoltcp answers port-unreachable, no socket state
        header[12..16].copy_from_slice(&(0x0a00_0000 + index).to_be_bytes());
        header[16..20].copy_from_slice(&IMDS_IPV4.octets());
        frame.extend_from_slice(&header);
        assert!(responder.handle_frame(&frame, now));
        while responder.poll_tx(now).is_some() {}
    }
    assert!(responder.neighbour_hints.len() <= MAX_NEIGHBOUR_HINTS);
    assert!(responder.device.from_guest.is_empty());
}
