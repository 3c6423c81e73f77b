//! Device state for VM snapshots: plain serde structs that the VMM writes
//! into its snapshot file, and the errors of saving and restoring them.
//!
//! Each device saves what the guest can observe (registers, queues,
//! interrupt state); backends (files, NBD connections, taps) are not state
//! but configuration, reopened by the VMM on restore.

use serde::{Deserialize, Serialize};

use crate::legacy::{CmosState, I8042State, SerialState};
use crate::pci::PciDeviceState;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("{0} cannot be saved in a snapshot")]
    Unsupported(String),
    #[error("{0}: the device is running; pause the VM first")]
    NotPaused(String),
    #[error("snapshot does not match this device: {0}")]
    Mismatch(String),
    #[error("invalid saved state: {0}")]
    Invalid(String),
}

/// The legacy PC devices and the 0xCF8 address latch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LegacyState {
    pub serial: SerialState,
    pub i8042: I8042State,
    pub cmos: CmosState,
    /// The PCI configuration address register at 0xCF8: a guest paused
    /// between writing it and accessing 0xCFC must find it again.
    pub pci_config_address: u32,
}

/// A PCI function in its slot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PciSlotState {
    pub slot: u8,
    pub state: PciDeviceState,
}

/// Bytes as a lowercase hex string: compact in JSON and readable.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).map_err(serde::de::Error::custom)
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        if !text.len().is_multiple_of(2) {
            return Err("hex string of odd length".into());
        }
        (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .ok_or_else(|| format!("bad hex digits at {i}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trip_and_errors() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct W(#[serde(with = "super::hex_bytes")] Vec<u8>);
        let j = serde_json::to_string(&W(vec![0, 0xab, 0x10])).unwrap();
        assert_eq!(j, "\"00ab10\"");
        assert_eq!(
            serde_json::from_str::<W>(&j).unwrap().0,
            vec![0, 0xab, 0x10]
        );
        assert!(super::hex_bytes::decode("abc").is_err());
        assert!(super::hex_bytes::decode("zz").is_err());
    }
}
