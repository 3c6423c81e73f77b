//! DHCP for an instance whose ENI is a VF. An emulated ENI gets its address from the
//! VMM's responder on the tap; a VF's frames go straight to the NIC, so the host answers
//! instead, like the VPC's DHCP: the supervisor of each VF instance listens on a packet
//! socket for DHCP requests from its instance's MAC on any interface (the VF's PF,
//! whichever the VMM leased from) and answers with the instance's address, the subnet's
//! mask, the gateway and the MTU. A packet socket rather than UDP port 67: several
//! supervisors (and no DHCP server of the host's own) share the host, each sees every
//! request and answers only its own instance, and the client has no address yet. The
//! messages themselves are `imds::dhcp`'s, shared with the VMM's responder.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use imds::dhcp::{answer, DhcpAnswer, DhcpLease};

use crate::error::Ec2Error;

/// Renewals come back within the hour; an instance keeps its address while it exists.
pub const LEASE_SECS: u32 = 3600;
const ETH_P_IP: u16 = 0x0800;

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Classic BPF over the IPv4 packet (SOCK_DGRAM: no link header): UDP, not a later
/// fragment, destination port 67. Everything else stays in the kernel.
const FILTER: [(u16, u8, u8, u32); 9] = [
    (0x30, 0, 0, 9),      // ldb [9]            protocol
    (0x15, 0, 6, 17),     // jeq #17 else drop
    (0x28, 0, 0, 6),      // ldh [6]            flags + fragment offset
    (0x45, 4, 0, 0x1fff), // jset #0x1fff -> drop
    (0xb1, 0, 0, 0),      // ldxb 4*([0]&0xf)   header length
    (0x48, 0, 0, 2),      // ldh [x+2]          destination port
    (0x15, 0, 1, 67),     // jeq #67 else drop
    (0x06, 0, 0, 0xffff), // accept
    (0x06, 0, 0, 0),      // drop
];

/// A packet socket receiving DHCP requests on every interface.
pub struct Responder {
    fd: OwnedFd,
}

fn os_error(what: &str) -> Ec2Error {
    Ec2Error::internal(format!("{what}: {}", std::io::Error::last_os_error()))
}

impl Responder {
    pub fn open() -> Result<Responder, Ec2Error> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_IP.to_be()),
            )
        };
        if raw < 0 {
            return Err(os_error("packet socket"));
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut code: Vec<libc::sock_filter> = FILTER
            .iter()
            .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
            .collect();
        let program = libc::sock_fprog {
            len: code.len() as u16,
            filter: code.as_mut_ptr(),
        };
        // SAFETY: program points at `code`, alive for the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&program as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_error("attaching the DHCP filter"));
        }
        Ok(Responder { fd })
    }

    /// Answer `lease`'s client forever (the supervisor's thread).
    pub fn serve(&self, lease: &DhcpLease) {
        let mut buffer = vec![0u8; 2048];
        loop {
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buffer and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!(
                    "DHCP for {:02x?}: {}",
                    lease.guest_mac,
                    os_error("recvfrom")
                );
                return;
            }
            let packet = &buffer[..n as usize];
            if from.sll_pkttype == libc::PACKET_OUTGOING || from.sll_addr[..6] != lease.guest_mac {
                continue;
            }
            let DhcpAnswer::Reply(reply) = answer(packet, lease) else {
                continue;
            };
            let mut to = from;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&lease.guest_mac);
            to.sll_protocol = ETH_P_IP.to_be();
            // SAFETY: reply and to are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    reply.as_ptr().cast(),
                    reply.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                log::warn!("DHCP reply: {}", os_error("sendto"));
            } else {
                log::info!(
                    "DHCP: {} for {:02x?} on interface {}",
                    lease.ip,
                    lease.guest_mac,
                    from.sll_ifindex
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:00:ac:1f:10:0a"),
            Some([2, 0, 0xac, 0x1f, 0x10, 0x0a])
        );
        assert_eq!(parse_mac("02:00:ac:1f:10"), None);
        assert_eq!(parse_mac("02:00:ac:1f:10:0a:00"), None);
    }
}
