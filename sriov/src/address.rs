//! PCI and MAC addresses: parsed once at the edge, printed in the kernel's canonical form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// A PCI function address in the kernel's sysfs form `DDDD:BB:DD.F`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl FromStr for PciAddress {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidPciAddress(text.to_string());
        let (domain, rest) = text.split_once(':').ok_or_else(invalid)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(invalid)?;
        let (device, function) = rest.split_once('.').ok_or_else(invalid)?;
        let hex_field = |field: &str, digits: usize| {
            if field.len() != digits || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            u16::from_str_radix(field, 16).map_err(|_| invalid())
        };
        let device = hex_field(device, 2)?;
        let function = hex_field(function, 1)?;
        if device > 0x1f || function > 7 {
            return Err(invalid());
        }
        Ok(PciAddress {
            domain: hex_field(domain, 4)?,
            bus: hex_field(bus, 2)? as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for PciAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// 00:00:00:00:00:00, which tells the PF driver to forget the VF's administrative MAC.
    pub const ZERO: MacAddress = MacAddress([0; 6]);
}

impl FromStr for MacAddress {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidMacAddress(text.to_string());
        let mut octets = [0u8; 6];
        let mut fields = text.split(':');
        for octet in octets.iter_mut() {
            let field = fields.next().ok_or_else(invalid)?;
            if field.len() != 2 {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(field, 16).map_err(|_| invalid())?;
        }
        if fields.next().is_some() {
            return Err(invalid());
        }
        Ok(MacAddress(octets))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_address_round_trips_in_canonical_form() {
        let address: PciAddress = "0000:01:10.3".parse().unwrap();
        assert_eq!(
            address,
            PciAddress {
                domain: 0,
                bus: 1,
                device: 0x10,
                function: 3
            }
        );
        assert_eq!(address.to_string(), "0000:01:10.3");
        assert_eq!(
            "000a:ff:1f.7".parse::<PciAddress>().unwrap().to_string(),
            "000a:ff:1f.7"
        );
    }

    #[test]
    fn pci_address_rejects_malformed_text() {
        for bad in [
            "",
            "01:00.0",
            "0000:01:00",
            "0000:01:20.0",
            "0000:01:00.8",
            "0000:0g:00.0",
            "0000:01:00.0x",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn mac_address_parses_and_prints() {
        let mac: MacAddress = "02:AB:00:00:00:01".parse().unwrap();
        assert_eq!(mac.0, [2, 0xab, 0, 0, 0, 1]);
        assert_eq!(mac.to_string(), "02:ab:00:00:00:01");
        for bad in [
            "02:ab:00:00:00",
            "02:ab:00:00:00:01:02",
            "2:ab:00:00:00:01",
            "zz:ab:00:00:00:01",
        ] {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad:?} accepted");
        }
    }
}
