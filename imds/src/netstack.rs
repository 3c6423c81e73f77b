//! The in-VMM front end: Ethernet frames in, Ethernet frames out, for the VMM's virtio-net
//! device, using smoltcp as the TCP/IP stack.
//!
//! The VMM hands every frame the guest transmits to [`ImdsResponder::handle_frame`]; it
//! returns `true` for the frames it claims (see [`claims_frame`]) and `false` for all
//! others, which the VMM passes on to the tap as usual. Frames for the guest come out of
//! [`ImdsResponder::poll_tx`]; [`ImdsResponder::poll_at`] says when timers (retransmits,
//! timeouts) next need a call even without traffic.
//!
//! Claimed: ARP packets whose target protocol address is 169.254.169.254 (the guest
//! resolving the metadata address on-link) and IPv4 packets to 169.254.169.254 (whatever
//! the destination MAC: a guest that routes via its gateway sends them to the gateway's
//! MAC). The responder answers TCP port 80 with the same [`Handler`] as the host daemon,
//! ICMP echo, and resets or ICMP errors for anything else, like a host would.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::config::InstanceRecord;
use crate::error::ImdsError;
use crate::handler::Handler;
use crate::http::{parse_request, Parsed, Response, MAX_BODY_BYTES, MAX_HEAD_BYTES};
use crate::identity::IdentitySigner;
use crate::model::InstanceMetadata;
use crate::ratelimit::{throttled_response, RateLimiter};
use crate::timefmt::{http_date, unix_seconds};

/// The metadata address.
pub const IMDS_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const HTTP_PORT: u16 = 80;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ETHERNET_HEADER_LEN: usize = 14;
/// Frames waiting for the guest beyond this are dropped (TCP retransmits them).
const MAX_QUEUED_FRAMES: usize = 256;
const SOCKET_BUFFER_BYTES: usize = 16 * 1024;
/// Re-teach smoltcp the guest's MAC this often (its neighbour cache expires after 60 s).
const NEIGHBOUR_HINT_INTERVAL: Duration = Duration::from_secs(20);
const MAX_NEIGHBOUR_HINTS: usize = 64;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the responder takes this guest-transmitted frame (pure; no state needed).
pub fn claims_frame(frame: &[u8]) -> bool {
    if frame.len() < ETHERNET_HEADER_LEN {
        return false;
    }
    let ethertype = [frame[12], frame[13]];
    let payload = &frame[ETHERNET_HEADER_LEN..];
    let imds = IMDS_IPV4.octets();
    if ethertype == ETHERTYPE_ARP {
        // Ethernet/IPv4 ARP: target protocol address at bytes 24..28.
        return payload.len() >= 28 && payload[24..28] == imds;
    }
    if ethertype == ETHERTYPE_IPV4 {
        return payload.len() >= 20 && payload[0] >> 4 == 4 && payload[16..20] == imds;
    }
    false
}

/// How the responder presents itself on the guest's link.
#[derive(Clone, Debug)]
pub struct ResponderConfig {
    /// The MAC the responder answers ARP with; locally administered by default.
    pub mac: [u8; 6],
    /// Concurrent TCP connections; SYNs beyond this go unanswered until one closes.
    pub max_connections: usize,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        ResponderConfig {
            mac: [0x06, 0x00, 0xa9, 0xfe, 0xa9, 0xfe],
            max_connections: 8,
        }
    }
}

/// Frame queues standing in for a NIC between the VMM and smoltcp.
#[derive(Default)]
struct FrameQueues {
    from_guest: VecDeque<Vec<u8>>,
    to_guest: VecDeque<Vec<u8>>,
}

struct ReceivedFrame(Vec<u8>);
struct FrameForGuest<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for ReceivedFrame {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for FrameForGuest<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        if self.0.len() < MAX_QUEUED_FRAMES {
            self.0.push_back(frame);
        }
        result
    }
}

impl Device for FrameQueues {
    type RxToken<'a> = ReceivedFrame;
    type TxToken<'a> = FrameForGuest<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(ReceivedFrame, FrameForGuest<'_>)> {
        let frame = self.from_guest.pop_front()?;
        Some((ReceivedFrame(frame), FrameForGuest(&mut self.to_guest)))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<FrameForGuest<'_>> {
        Some(FrameForGuest(&mut self.to_guest))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = 1514;
        // Frames come straight from guest memory: nothing on the way can corrupt them, and
        // a guest using virtio-net checksum offload sends partial checksums. So verify
        // nothing on receive and compute everything on transmit.
        capabilities.checksum.ipv4 = Checksum::Tx;
        capabilities.checksum.tcp = Checksum::Tx;
        capabilities.checksum.udp = Checksum::Tx;
        capabilities.checksum.icmpv4 = Checksum::Tx;
        capabilities
    }
}

/// Per-connection HTTP state next to its smoltcp socket.
#[derive(Default)]
struct Connection {
    received: Vec<u8>,
    unsent: Vec<u8>,
    close_when_sent: bool,
    request_started: Option<Instant>,
    last_activity: Option<Instant>,
}

/// The IMDS endpoint for one guest, on the guest's own link.
pub struct ImdsResponder {
    interface: Interface,
    device: FrameQueues,
    sockets: SocketSet<'static>,
    connections: Vec<(SocketHandle, Connection)>,
    handler: Handler,
    instance: InstanceMetadata,
    limiter: Option<RateLimiter>,
    mac: [u8; 6],
    epoch: Instant,
    neighbour_hints: HashMap<[u8; 4], ([u8; 6], Instant)>,
}

impl ImdsResponder {
    /// A responder for `record` with fresh token and credential secrets.
    pub fn new(record: &InstanceRecord, config: ResponderConfig) -> Result<Self, ImdsError> {
        Self::with_parts(
            InstanceMetadata::build(record, None)?,
            Handler::with_random_secrets()?,
            record.metadata_options.requests_per_second,
            config,
        )
    }

    /// Like [`new`](Self::new) with the host's identity signer.
    pub fn with_signer(
        record: &InstanceRecord,
        signer: &IdentitySigner,
        config: ResponderConfig,
    ) -> Result<Self, ImdsError> {
        Self::with_parts(
            InstanceMetadata::build(record, Some(signer))?,
            Handler::with_random_secrets()?,
            record.metadata_options.requests_per_second,
            config,
        )
    }

    /// From prebuilt parts: e.g. a handler whose token key and credential secret the host
    /// shares across VMMs, so tokens and credentials survive a VMM restart or migration.
    pub fn with_parts(
        instance: InstanceMetadata,
        handler: Handler,
        requests_per_second: u32,
        config: ResponderConfig,
    ) -> Result<Self, ImdsError> {
        let epoch = Instant::now();
        let mut device = FrameQueues::default();
        let mut seed = [0u8; 8];
        crate::token::fill_random(&mut seed)?;
        let mut interface_config =
            Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac)));
        // Seeds TCP initial sequence numbers: must not be predictable to the guest.
        interface_config.random_seed = u64::from_le_bytes(seed);
        let mut interface =
            Interface::new(interface_config, &mut device, smoltcp::time::Instant::ZERO);
        interface.update_ip_addrs(|addresses| {
            // Prefix 0: every guest address is on-link, so replies go straight to the
            // guest's MAC (learned below) with no gateway and no routing table.
            let _ = addresses.push(IpCidr::new(IMDS_IPV4.into(), 0));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let mut connections = Vec::with_capacity(config.max_connections);
        for _ in 0..config.max_connections.max(1) {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER_BYTES]),
                tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER_BYTES]),
            );
            socket
                .listen(HTTP_PORT)
                .map_err(|error| ImdsError::Netstack(format!("listen on port 80: {error:?}")))?;
            socket.set_nagle_enabled(false);
            connections.push((sockets.add(socket), Connection::default()));
        }
        Ok(ImdsResponder {
            interface,
            device,
            sockets,
            connections,
            handler,
            instance,
            limiter: RateLimiter::new(requests_per_second, epoch),
            mac: config.mac,
            epoch,
            neighbour_hints: HashMap::new(),
        })
    }

    /// Swaps in a changed instance record; connections stay open, and tokens stay valid as
    /// long as the instance id is the same (it is the tokens' associated data).
    pub fn update_instance(
        &mut self,
        record: &InstanceRecord,
        signer: Option<&IdentitySigner>,
    ) -> Result<(), ImdsError> {
        self.instance = InstanceMetadata::build(record, signer)?;
        self.limiter =
            RateLimiter::new(record.metadata_options.requests_per_second, Instant::now());
        Ok(())
    }

    /// The responder's MAC (the one its ARP replies carry).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn stack_time(&self, now: Instant) -> smoltcp::time::Instant {
        let elapsed = now.saturating_duration_since(self.epoch);
        smoltcp::time::Instant::from_micros(elapsed.as_micros().min(i64::MAX as u128) as i64)
    }

    /// Offers a frame the guest transmitted. Returns `false` (and keeps nothing) for frames
    /// that are not for the metadata service; the VMM forwards those as usual.
    pub fn handle_frame(&mut self, frame: &[u8], now: Instant) -> bool {
        if !claims_frame(frame) {
            return false;
        }
        let mut frame = frame.to_vec();
        if frame[12..14] == ETHERTYPE_IPV4 {
            self.teach_guest_mac(&frame, now);
            // Sent to the gateway's MAC when the guest routes 169.254.169.254 via it.
            frame[0..6].copy_from_slice(&self.mac);
        }
        if self.device.from_guest.len() < MAX_QUEUED_FRAMES {
            self.device.from_guest.push_back(frame);
        }
        self.process(now);
        true
    }

    /// A guest that reaches us through its gateway never ARPs for us, and smoltcp only
    /// learns neighbours from ARP; feed it an ARP reply built from the frame's own source
    /// so replies need no ARP round trip (and work even if the guest ignores our ARP).
    fn teach_guest_mac(&mut self, frame: &[u8], now: Instant) {
        let mut guest_mac = [0u8; 6];
        guest_mac.copy_from_slice(&frame[6..12]);
        let mut guest_ip = [0u8; 4];
        guest_ip.copy_from_slice(&frame[ETHERNET_HEADER_LEN + 12..ETHERNET_HEADER_LEN + 16]);
        let fresh = self
            .neighbour_hints
            .get(&guest_ip)
            .is_some_and(|(mac, taught)| {
                *mac == guest_mac
                    && now.saturating_duration_since(*taught) < NEIGHBOUR_HINT_INTERVAL
            });
        if fresh || guest_mac[0] & 1 == 1 {
            return;
        }
        // A guest can spoof any number of source addresses; keep the table small (smoltcp's
        // own neighbour cache is bounded the same way).
        if self.neighbour_hints.len() >= MAX_NEIGHBOUR_HINTS {
            self.neighbour_hints.retain(|_, (_, taught)| {
                now.saturating_duration_since(*taught) < NEIGHBOUR_HINT_INTERVAL
            });
            if self.neighbour_hints.len() >= MAX_NEIGHBOUR_HINTS {
                self.neighbour_hints.clear();
            }
        }
        self.neighbour_hints.insert(guest_ip, (guest_mac, now));
        let mut arp = Vec::with_capacity(42);
        arp.extend_from_slice(&self.mac);
        arp.extend_from_slice(&guest_mac);
        arp.extend_from_slice(&ETHERTYPE_ARP);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]); // Ethernet, IPv4, reply
        arp.extend_from_slice(&guest_mac);
        arp.extend_from_slice(&guest_ip);
        arp.extend_from_slice(&self.mac);
        arp.extend_from_slice(&IMDS_IPV4.octets());
        self.device.from_guest.push_back(arp);
    }

    /// The next frame for the guest, if any.
    pub fn poll_tx(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.device.to_guest.is_empty() {
            self.process(now);
        }
        self.device.to_guest.pop_front()
    }

    /// When to call [`poll_tx`](Self::poll_tx) next even if no frame arrives; `None`: only
    /// on traffic. May be in the past (call now).
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        if !self.device.to_guest.is_empty() {
            return Some(now);
        }
        let stack_now = self.stack_time(now);
        let stack_deadline = self.interface.poll_at(stack_now, &self.sockets);
        let http_deadline = self
            .connections
            .iter()
            .filter_map(|(_, connection)| match connection.request_started {
                Some(started) => Some(started + REQUEST_TIMEOUT),
                None => connection.last_activity.map(|last| last + IDLE_TIMEOUT),
            })
            .min();
        let stack_deadline = stack_deadline.map(|deadline| {
            let micros = u64::try_from(deadline.total_micros()).unwrap_or(0);
            self.epoch + Duration::from_micros(micros)
        });
        match (stack_deadline, http_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn process(&mut self, now: Instant) {
        let stack_now = self.stack_time(now);
        // Two rounds: the first delivers segments and lets us answer; the second sends.
        for _ in 0..2 {
            self.interface
                .poll(stack_now, &mut self.device, &mut self.sockets);
            self.serve_connections(now);
        }
        self.interface
            .poll(stack_now, &mut self.device, &mut self.sockets);
    }

    fn serve_connections(&mut self, now: Instant) {
        let wall_clock = unix_seconds(SystemTime::now());
        for (handle, connection) in &mut self.connections {
            let socket = self.sockets.get_mut::<tcp::Socket>(*handle);
            serve_connection(
                socket,
                connection,
                &self.handler,
                &self.instance,
                &mut self.limiter,
                now,
                wall_clock,
            );
        }
    }
}

fn serve_connection(
    socket: &mut tcp::Socket,
    connection: &mut Connection,
    handler: &Handler,
    instance: &InstanceMetadata,
    limiter: &mut Option<RateLimiter>,
    now: Instant,
    wall_clock: u64,
) {
    if matches!(socket.state(), tcp::State::Closed) {
        // Finished (or reset): back to listening for the next guest connection.
        *connection = Connection::default();
        socket.set_hop_limit(None);
        if let Err(error) = socket.listen(HTTP_PORT) {
            log::warn!("imds responder: cannot listen again: {error:?}");
        }
        return;
    }
    if socket.is_listening() {
        return;
    }
    // A connection that never sends a byte still idles out.
    connection.last_activity.get_or_insert(now);
    let limit = MAX_HEAD_BYTES + MAX_BODY_BYTES;
    while socket.can_recv() && connection.received.len() < limit {
        let room = limit - connection.received.len();
        let received = socket.recv(|data| {
            let taken = data.len().min(room);
            (taken, data[..taken].to_vec())
        });
        match received {
            Ok(bytes) if !bytes.is_empty() => {
                connection.received.extend_from_slice(&bytes);
                connection.last_activity = Some(now);
            }
            _ => break,
        }
    }
    let date = http_date(wall_clock);
    while !connection.close_when_sent {
        match parse_request(&connection.received) {
            Ok(Parsed::Complete { request, consumed }) => {
                connection.received.drain(..consumed);
                let allowed = limiter
                    .as_mut()
                    .is_none_or(|bucket| bucket.try_acquire(now));
                let response = if allowed {
                    handler.handle(instance, &request, wall_clock)
                } else {
                    throttled_response()
                };
                if let Some(ttl) = response.ip_ttl {
                    socket.set_hop_limit(Some(ttl));
                }
                response.write_to(request.keep_alive, &date, &mut connection.unsent);
                connection.close_when_sent = !request.keep_alive || response.close;
            }
            Ok(Parsed::Partial) => break,
            Err(error) => {
                log::debug!("imds responder: malformed request: {error}");
                Response::bad_request().write_to(false, &date, &mut connection.unsent);
                connection.close_when_sent = true;
            }
        }
    }
    connection.request_started = if connection.received.is_empty() {
        None
    } else {
        connection.request_started.or(Some(now))
    };
    if !connection.unsent.is_empty() && socket.can_send() {
        if let Ok(sent) = socket.send_slice(&connection.unsent) {
            connection.unsent.drain(..sent);
        }
    }
    let timed_out = connection
        .request_started
        .is_some_and(|started| now.saturating_duration_since(started) > REQUEST_TIMEOUT)
        || connection
            .last_activity
            .is_some_and(|last| now.saturating_duration_since(last) > IDLE_TIMEOUT);
    // The guest sent FIN and everything it sent has been answered.
    let peer_done = socket.state() == tcp::State::CloseWait && connection.received.is_empty();
    if connection.unsent.is_empty() && (connection.close_when_sent || peer_done) {
        socket.close();
    } else if timed_out {
        socket.abort();
    }
}

#[cfg(test)]
#[path = "netstack_tests.rs"]
mod tests;
