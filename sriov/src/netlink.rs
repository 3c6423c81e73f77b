//! [`VfConfigurator`] over rtnetlink: one RTM_SETLINK on the PF carrying an
//! IFLA_VFINFO_LIST with the VF's IFLA_VF_* attributes, the same message `ip link set PF vf
//! N ...` sends. Synchronous on purpose: a VMM thread makes a handful of these calls per
//! instance, so an async runtime would buy nothing.

use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    LinkAttribute, LinkMessage, LinkVfInfo, VfInfo, VfInfoLinkState, VfInfoMac, VfInfoRate,
    VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan, VfLinkState as NetlinkLinkState,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result};
use crate::vf::{VfConfigurator, VfLinkState, VfSettings};

/// The real [`VfConfigurator`]: needs CAP_NET_ADMIN and a PF driver that implements the
/// `ndo_set_vf_*` operations (igb does, except the minimum rate, which must be 0).
#[derive(Debug, Default)]
pub struct NetlinkVfConfigurator {
    next_sequence: AtomicU32,
}

impl NetlinkVfConfigurator {
    pub fn new() -> Self {
        Self::default()
    }
}

impl VfConfigurator for NetlinkVfConfigurator {
    /// Sends one request per setting, so that an error names the setting the driver
    /// refused (igb, for one, has no link-state control); the settings before it stay
    /// applied, as they would with one combined request, which the kernel also applies in
    /// order up to the first failure.
    fn apply(&self, pf_ifname: &str, vf_index: u32, settings: &VfSettings) -> Result<()> {
        let netlink_error = |setting: &'static str| {
            move |source| Error::Netlink {
                ifname: pf_ifname.to_string(),
                vf_index,
                setting,
                source,
            }
        };
        let ifindex = interface_index(pf_ifname).map_err(netlink_error("interface"))?;
        for (setting, attribute) in vf_attributes(vf_index, settings) {
            let message = set_link_message(ifindex, attribute);
            let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed) + 1;
            send_and_wait_for_ack(message, sequence).map_err(netlink_error(setting))?;
        }
        log::info!("{pf_ifname} vf {vf_index}: applied {settings:?}");
        Ok(())
    }
}

fn interface_index(ifname: &str) -> io::Result<u32> {
    let name = CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call, and
    // if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// The IFLA_VF_* attribute for each setting that is not `None`, named for error messages,
/// in the order the kernel applies them within one request.
fn vf_attributes(vf_index: u32, settings: &VfSettings) -> Vec<(&'static str, VfInfo)> {
    let mut attributes = Vec::new();
    if let Some(mac) = settings.mac {
        attributes.push(("mac", VfInfo::Mac(VfInfoMac::new(vf_index, &mac.0))));
    }
    if let Some(vlan) = settings.vlan {
        let vlan = VfInfoVlan::new(vf_index, u32::from(vlan.id), u32::from(vlan.qos));
        attributes.push(("vlan", VfInfo::Vlan(vlan)));
    }
    if let Some(rate) = settings.rate {
        let rate = VfInfoRate::new(vf_index, rate.min_mbps, rate.max_mbps);
        attributes.push(("rate", VfInfo::Rate(rate)));
    }
    if let Some(enabled) = settings.spoof_check {
        let spoof_check = VfInfoSpoofCheck::new(vf_index, enabled);
        attributes.push(("spoof_check", VfInfo::SpoofCheck(spoof_check)));
    }
    if let Some(state) = settings.link_state {
        let state = match state {
            VfLinkState::Auto => NetlinkLinkState::Auto,
            VfLinkState::Enable => NetlinkLinkState::Enable,
            VfLinkState::Disable => NetlinkLinkState::Disable,
        };
        let link_state = VfInfoLinkState::new(vf_index, state);
        attributes.push(("link_state", VfInfo::LinkState(link_state)));
    }
    if let Some(enabled) = settings.trust {
        attributes.push(("trust", VfInfo::Trust(VfInfoTrust::new(vf_index, enabled))));
    }
    attributes
}

/// An RTM_SETLINK payload for the PF carrying one VF attribute.
fn set_link_message(ifindex: u32, attribute: VfInfo) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    message
        .attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![attribute])]));
    message
}

fn send_and_wait_for_ack(message: LinkMessage, sequence: u32) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut packet = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::SetLink(message)),
    );
    packet.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    packet.header.sequence_number = sequence;
    packet.finalize();
    let mut request = vec![0; packet.buffer_len()];
    packet.serialize(&mut request);
    socket.send(&request, 0)?;

    let mut reply = vec![0u8; 16 * 1024];
    loop {
        let size = socket.recv(&mut &mut reply[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..size])
                .map_err(|error| {
                io::Error::new(io::ErrorKind::InvalidData, error.to_string())
            })?;
            let length = answer.header.length as usize;
            if answer.header.sequence_number == sequence {
                if let NetlinkPayload::Error(error) = answer.payload {
                    return match error.code {
                        None => Ok(()),
                        Some(_) => Err(error.to_io()),
                    };
                }
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::MacAddress;
    use crate::vf::{VfRate, VfVlan};

    /// Serialises the message as it goes to the kernel and parses it back.
    fn round_trip(message: &LinkMessage) -> LinkMessage {
        let mut packet = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(RouteNetlinkMessage::SetLink(message.clone())),
        );
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes)
            .unwrap()
            .payload
        {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::SetLink(parsed)) => parsed,
            other => panic!("unexpected payload {other:?}"),
        }
    }

    #[test]
    fn every_requested_setting_becomes_its_own_vf_attribute() {
        let mac: MacAddress = "02:00:00:00:00:07".parse().unwrap();
        let settings = VfSettings {
            mac: Some(mac),
            vlan: Some(VfVlan { id: 100, qos: 0 }),
            spoof_check: Some(true),
            trust: Some(false),
            rate: Some(VfRate {
                min_mbps: 0,
                max_mbps: 1000,
            }),
            link_state: Some(VfLinkState::Enable),
        };
        assert_eq!(
            vf_attributes(3, &settings),
            vec![
                ("mac", VfInfo::Mac(VfInfoMac::new(3, &mac.0))),
                ("vlan", VfInfo::Vlan(VfInfoVlan::new(3, 100, 0))),
                ("rate", VfInfo::Rate(VfInfoRate::new(3, 0, 1000))),
                (
                    "spoof_check",
                    VfInfo::SpoofCheck(VfInfoSpoofCheck::new(3, true))
                ),
                (
                    "link_state",
                    VfInfo::LinkState(VfInfoLinkState::new(3, NetlinkLinkState::Enable))
                ),
                ("trust", VfInfo::Trust(VfInfoTrust::new(3, false))),
            ]
        );
        let only_mac = VfSettings {
            mac: Some(MacAddress::ZERO),
            ..VfSettings::default()
        };
        assert_eq!(
            vf_attributes(0, &only_mac),
            vec![("mac", VfInfo::Mac(VfInfoMac::new(0, &[0; 6])))]
        );
    }

    #[test]
    fn set_link_message_survives_encoding_as_the_kernel_reads_it() {
        let attribute = VfInfo::SpoofCheck(VfInfoSpoofCheck::new(2, true));
        let parsed = round_trip(&set_link_message(5, attribute.clone()));
        assert_eq!(parsed.header.index, 5);
        assert_eq!(
            parsed.attributes,
            vec![LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![attribute])])]
        );
    }

    #[test]
    fn unknown_interface_is_reported_with_its_name() {
        let error = NetlinkVfConfigurator::new()
            .apply("nosuchif-sriov0", 0, &VfSettings::default())
            .unwrap_err();
        assert!(
            error.to_string().contains("nosuchif-sriov0"),
            "unexpected message: {error}"
        );
    }
}
