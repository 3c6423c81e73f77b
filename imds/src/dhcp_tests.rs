use super::*;

const MAC: [u8; 6] = [2, 0, 0xac, 0x1f, 0x10, 0x0a];
const IP: Ipv4Addr = Ipv4Addr::new(172, 31, 16, 10);

fn lease() -> DhcpLease {
    DhcpLease {
        guest_mac: MAC,
        ip: IP,
        prefix_len: 20,
        gateway: Ipv4Addr::new(172, 31, 16, 1),
        dns: Some(Ipv4Addr::new(172, 31, 0, 2)),
        mtu: 9001,
        lease_secs: 3600,
        hostname: Some("ip-172-31-16-10".into()),
    }
}

/// A client message as udhcpc sends it: IPv4 + UDP + BOOTP with options.
fn client(kind: u8, mac: [u8; 6], requested: Option<Ipv4Addr>, ciaddr: Ipv4Addr) -> Vec<u8> {
    let mut bootp = vec![0u8; BOOTP_FIXED];
    bootp[0] = 1;
    bootp[1] = 1;
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&[1, 2, 3, 4]);
    bootp[12..16].copy_from_slice(&ciaddr.octets());
    bootp[28..34].copy_from_slice(&mac);
    bootp.extend_from_slice(&MAGIC);
    bootp.extend_from_slice(&[OPT_MSG_TYPE, 1, kind]);
    if let Some(ip) = requested {
        bootp.extend_from_slice(&[OPT_REQUESTED_IP, 4]);
        bootp.extend_from_slice(&ip.octets());
    }
    bootp.push(OPT_END);
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0];
    packet[2..4].copy_from_slice(&((IP_HDR + UDP_HDR + bootp.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[255; 4]);
    packet.extend_from_slice(&68u16.to_be_bytes());
    packet.extend_from_slice(&67u16.to_be_bytes());
    packet.extend_from_slice(&((UDP_HDR + bootp.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(&bootp);
    packet
}

fn discover() -> Vec<u8> {
    client(DISCOVER, MAC, None, Ipv4Addr::UNSPECIFIED)
}

fn reply(answer: DhcpAnswer) -> Vec<u8> {
    match answer {
        DhcpAnswer::Reply(packet) => packet,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn options(reply: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = &reply[IP_HDR + UDP_HDR + BOOTP_FIXED + MAGIC.len()..];
    while let [code, len, tail @ ..] = rest {
        if *code == OPT_END {
            break;
        }
        out.push((*code, tail[..usize::from(*len)].to_vec()));
        rest = &tail[usize::from(*len)..];
    }
    out
}

fn message_type(reply: &[u8]) -> u8 {
    options(reply)
        .into_iter()
        .find(|(code, _)| *code == OPT_MSG_TYPE)
        .map(|(_, value)| value[0])
        .expect("a message type")
}

#[test]
fn offers_the_lease_with_valid_checksums() {
    let offer = reply(answer(&discover(), &lease()));
    assert_eq!(checksum(&offer[..IP_HDR], 0), 0, "IPv4 header checksum");
    assert_eq!(&offer[12..16], &[172, 31, 16, 1], "from the gateway");
    assert_eq!(&offer[16..20], &[255; 4], "to broadcast");
    // The UDP checksum over the pseudo-header verifies too.
    let udp = &offer[IP_HDR..];
    let pseudo = 0xac1f + 0x1001 + 0xffff + 0xffff + 17 + udp.len() as u32;
    assert_eq!(checksum(udp, pseudo), 0, "UDP checksum");
    assert_eq!(&udp[..4], &[0, 67, 0, 68]);
    let bootp = &udp[UDP_HDR..];
    assert!(bootp.len() >= BOOTP_MIN);
    assert_eq!(bootp[0], 2);
    assert_eq!(&bootp[4..8], &[1, 2, 3, 4], "same transaction id");
    assert_eq!(&bootp[16..20], &IP.octets());
    let opts = options(&offer);
    assert!(opts.contains(&(OPT_MSG_TYPE, vec![OFFER])));
    assert!(opts.contains(&(OPT_SUBNET_MASK, vec![255, 255, 240, 0])));
    assert!(opts.contains(&(OPT_ROUTER, vec![172, 31, 16, 1])));
    assert!(opts.contains(&(OPT_BROADCAST, vec![172, 31, 31, 255])));
    assert!(opts.contains(&(OPT_MTU, 9001u16.to_be_bytes().to_vec())));
    assert!(opts.contains(&(OPT_DNS, vec![172, 31, 0, 2])));
    assert!(opts.contains(&(OPT_HOSTNAME, b"ip-172-31-16-10".to_vec())));
}

#[test]
fn requests_are_acked_for_the_lease_only() {
    let l = lease();
    let none = Ipv4Addr::UNSPECIFIED;
    let ack = reply(answer(&client(REQUEST, MAC, Some(IP), none), &l));
    assert_eq!(message_type(&ack), ACK);
    // A renewal names its address in ciaddr.
    let renew = reply(answer(&client(REQUEST, MAC, None, IP), &l));
    assert_eq!(message_type(&renew), ACK);
    let other = Ipv4Addr::new(172, 31, 16, 99);
    let nak = reply(answer(&client(REQUEST, MAC, Some(other), none), &l));
    assert_eq!(message_type(&nak), NAK);
    assert_eq!(&nak[IP_HDR + UDP_HDR + 16..IP_HDR + UDP_HDR + 20], &[0; 4]);
    let nak = reply(answer(&client(REQUEST, MAC, None, other), &l));
    assert_eq!(message_type(&nak), NAK);
}

#[test]
fn other_clients_and_packets_are_not_ours() {
    let l = lease();
    let none = Ipv4Addr::UNSPECIFIED;
    let stranger = client(DISCOVER, [2, 0, 0, 0, 0, 9], None, none);
    assert_eq!(answer(&stranger, &l), DhcpAnswer::NotOurs);
    assert_eq!(answer(&[0u8; 60], &l), DhcpAnswer::NotOurs);
    assert_eq!(answer(&[0x45; 10], &l), DhcpAnswer::NotOurs);
    let mut tcp = discover();
    tcp[9] = 6;
    assert_eq!(answer(&tcp, &l), DhcpAnswer::NotOurs);
    assert_eq!(answer(&discover()[..200], &l), DhcpAnswer::NotOurs);
    // Options running past the end are not a panic.
    let mut bad = discover();
    let n = bad.len();
    bad[n - 1] = 42;
    bad.push(200);
    assert_eq!(answer(&bad, &l), DhcpAnswer::NotOurs);
    // A RELEASE is ours, with nothing to say.
    let release = client(7, MAC, None, IP);
    assert_eq!(answer(&release, &l), DhcpAnswer::NoReply);
}

#[test]
fn every_truncation_of_a_request_is_handled() {
    let l = lease();
    let full = client(REQUEST, MAC, Some(IP), Ipv4Addr::UNSPECIFIED);
    for len in 0..full.len() {
        // Must not panic; short packets are never answered as ours.
        let _ = answer(&full[..len], &l);
    }
}
