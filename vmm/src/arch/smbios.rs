//! SMBIOS 2.8 tables: BIOS information (type 0), system information (type
//! 1) with the caller's UUID and serial, and the end marker (type 127).
//!
//! cloud-init tells EC2 apart by a system UUID that starts with `ec2` and
//! equals the serial number, both read from /sys/class/dmi/id.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{SMBIOS_END, SMBIOS_START};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmbiosConfig {
    /// System UUID, canonical text form (8-4-4-4-12 hex digits).
    pub uuid: Option<String>,
    pub serial: Option<String>,
    #[serde(default = "default_manufacturer")]
    pub manufacturer: String,
    #[serde(default = "default_product")]
    pub product: String,
}

fn default_manufacturer() -> String {
    "nitro-vmm".to_string()
}

fn default_product() -> String {
    "microvm".to_string()
}

impl Default for SmbiosConfig {
    fn default() -> Self {
        Self {
            uuid: None,
            serial: None,
            manufacturer: default_manufacturer(),
            product: default_product(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    #[error("smbios.uuid {0:?} is not a UUID (expected 8-4-4-4-12 hex digits)")]
    BadUuid(String),
    #[error("smbios.{field} must be 1..=64 printable ASCII characters")]
    BadString { field: &'static str },
    #[error("SMBIOS tables do not fit below {SMBIOS_END:#x}")]
    TooLarge,
    #[error("cannot write SMBIOS tables into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Parse a canonical UUID into its 16 bytes (big-endian text order).
pub fn parse_uuid(text: &str) -> Result<[u8; 16], SmbiosError> {
    let bad = || SmbiosError::BadUuid(text.to_string());
    let groups: Vec<&str> = text.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return Err(bad());
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(out)
}

fn check_string(field: &'static str, s: &str) -> Result<(), SmbiosError> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(SmbiosError::BadString { field });
    }
    Ok(())
}

impl SmbiosConfig {
    pub fn validate(&self) -> Result<(), SmbiosError> {
        if let Some(u) = &self.uuid {
            parse_uuid(u)?;
        }
        if let Some(s) = &self.serial {
            check_string("serial", s)?;
        }
        check_string("manufacturer", &self.manufacturer)?;
        check_string("product", &self.product)
    }
}

/// A structure: formatted area followed by its string set.
fn structure(formatted: &[u8], strings: &[&str]) -> Vec<u8> {
    let mut out = formatted.to_vec();
    if strings.is_empty() {
        out.extend_from_slice(&[0, 0]);
    } else {
        for s in strings {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        out.push(0);
    }
    out
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Encode the UUID as SMBIOS 2.6+ stores it: the first three fields little
/// endian, so that the guest prints back the same text.
fn smbios_uuid_bytes(uuid: [u8; 16]) -> [u8; 16] {
    let mut b = uuid;
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

pub fn write_tables(mem: &GuestMemoryMmap, cfg: &SmbiosConfig) -> Result<(), SmbiosError> {
    cfg.validate()?;
    let mut table = Vec::new();

    // Type 0: vendor "1", version "2", starting segment 0xe800, release date "3",
    // ROM size 64 KiB, characteristics: "BIOS characteristics not supported".
    let mut t0 = vec![0u8, 0x18, 0x00, 0x00, 1, 2, 0x00, 0xe8, 3, 0];
    t0.extend_from_slice(&(1u64 << 3).to_le_bytes());
    t0.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff]);
    table.extend(structure(&t0, &[&cfg.manufacturer, "1.0", "11/25/2026"]));

    // Type 1: manufacturer "1", product "2", version "3", serial "4" (or
    // none), UUID, wake-up type power switch (6), SKU 0, family 0.
    let serial_ref = if cfg.serial.is_some() { 4 } else { 0 };
    let uuid = match &cfg.uuid {
        Some(u) => smbios_uuid_bytes(parse_uuid(u)?),
        None => [0u8; 16],
    };
    let mut t1 = vec![1u8, 0x1b, 0x01, 0x00, 1, 2, 3, serial_ref];
    t1.extend_from_slice(&uuid);
    t1.extend_from_slice(&[6, 0, 0]);
    let mut strings = vec![cfg.manufacturer.as_str(), cfg.product.as_str(), "1.0"];
    if let Some(s) = &cfg.serial {
        strings.push(s);
    }
    table.extend(structure(&t1, &strings));

    // Type 127: end of table.
    table.extend(structure(&[127u8, 4, 0x7f, 0x00], &[]));

    // 2.8 entry point (31 bytes) at SMBIOS_START, table right after it.
    let table_addr = SMBIOS_START + 0x20;
    if table_addr + table.len() as u64 > SMBIOS_END {
        return Err(SmbiosError::TooLarge);
    }
    let max_structure = 0x40u16.max(table.len() as u16);
    let mut ep = Vec::with_capacity(31);
    ep.extend_from_slice(b"_SM_");
    ep.push(0); // checksum
    ep.push(0x1f); // length
    ep.extend_from_slice(&[2, 8]); // version 2.8
    ep.extend_from_slice(&max_structure.to_le_bytes());
    ep.push(0); // revision
    ep.extend_from_slice(&[0; 5]);
    ep.extend_from_slice(b"_DMI_");
    ep.push(0); // intermediate checksum
    ep.extend_from_slice(&(table.len() as u16).to_le_bytes());
    ep.extend_from_slice(&(table_addr as u32).to_le_bytes());
    ep.extend_from_slice(&3u16.to_le_bytes()); // number of structures
    ep.push(0x28); // BCD revision 2.8
    ep[0x15] = checksum(&ep[0x10..0x1f]);
    ep[4] = checksum(&ep);
    mem.write_slice(&ep, GuestAddress(SMBIOS_START))?;
    mem.write_slice(&table, GuestAddress(table_addr))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_parsing_and_encoding() {
        let u = parse_uuid("ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8").unwrap();
        assert_eq!(u[0], 0xec);
        let enc = smbios_uuid_bytes(u);
        assert_eq!(&enc[0..4], &[0x2c, 0x1b, 0x2a, 0xec]);
        assert_eq!(&enc[8..], &u[8..]);
        assert!(parse_uuid("ec2a1b2c3d4e").is_err());
        assert!(parse_uuid("zz2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8").is_err());
    }

    #[test]
    fn entry_point_and_system_strings() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let cfg = SmbiosConfig {
            uuid: Some("ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8".into()),
            serial: Some("ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8".into()),
            manufacturer: "Amazon EC2".into(),
            product: "m5.large".into(),
        };
        write_tables(&mem, &cfg).unwrap();
        let mut ep = [0u8; 31];
        mem.read_slice(&mut ep, GuestAddress(SMBIOS_START)).unwrap();
        assert_eq!(&ep[0..4], b"_SM_");
        assert_eq!(ep.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(
            ep[0x10..0x1f].iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0
        );
        let len = u16::from_le_bytes([ep[0x16], ep[0x17]]) as usize;
        let addr = u32::from_le_bytes(ep[0x18..0x1c].try_into().unwrap()) as u64;
        let mut t = vec![0u8; len];
        mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
        let text = String::from_utf8_lossy(&t);
        assert!(text.contains("Amazon EC2") && text.contains("m5.large"));
        assert!(text.contains("ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8"));
    }

    #[test]
    fn rejects_bad_strings() {
        let cfg = SmbiosConfig {
            serial: Some("bad\nserial".into()),
            ..Default::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(SmbiosError::BadString { field: "serial" })
        ));
    }
}
