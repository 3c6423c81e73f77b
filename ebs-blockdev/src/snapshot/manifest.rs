//! Snapshot manifests and block addressing in the object store.
//!
//! ```text
//! blocks/<sha256-hex>                 one 512 KiB block, as stored (ciphertext if encrypted)
//! snapshots/<snap-id>/manifest.json   the snapshot: BlockIndex -> block hash, complete
//! ```
//! Every manifest lists all of its snapshot's blocks (parent blocks included), so a
//! snapshot never depends on another manifest and deleting one only has to drop the
//! blocks no remaining manifest references.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Manifest {
    pub format_version: u32,
    pub snapshot_id: String,
    /// GiB.
    pub volume_size: u64,
    pub block_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<String>,
    pub encrypted: bool,
    /// The data key, wrapped under the KMS master key (encrypted snapshots only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_data_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// BlockIndex -> lowercase hex SHA-256 of the stored block; absent blocks are zeros.
    pub blocks: BTreeMap<u64, String>,
}

pub fn manifest_key(snapshot_id: &str) -> String {
    format!("snapshots/{snapshot_id}/manifest.json")
}

pub fn block_key(hash: &str) -> String {
    format!("blocks/{hash}")
}

/// Hex SHA-256 (the block's address).
pub fn block_hash(bytes: &[u8]) -> String {
    crate::control::ids::to_hex(&Sha256::digest(bytes))
}

/// Base64 SHA-256 (the EBS direct APIs' x-amz-Checksum of one block).
pub fn block_checksum(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

/// EBS's LINEAR aggregated checksum: Base64 SHA-256 over the concatenated per-block
/// SHA-256 digests, in ascending BlockIndex order. `hex_digests` must be in that order.
pub fn linear_checksum<'a>(hex_digests: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut hasher = Sha256::new();
    for digest in hex_digests {
        hasher.update(from_hex(digest)?);
    }
    Some(base64::engine::general_purpose::STANDARD.encode(hasher.finalize()))
}

pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() & 1 == 1 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok())
        .collect()
}

/// Decodes a Base64 checksum into hex, for comparison with block hashes.
pub fn checksum_to_hex(checksum: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(checksum)
        .ok()?;
    (bytes.len() == 32).then(|| crate::control::ids::to_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_sha256_test_vectors() {
        assert_eq!(
            block_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            block_checksum(b"abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        assert_eq!(
            checksum_to_hex("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=").unwrap(),
            block_hash(b"abc")
        );
    }

    #[test]
    fn linear_checksum_hashes_the_concatenated_digests_in_order() {
        let first = block_hash(b"one");
        let second = block_hash(b"two");
        let mut concatenated = from_hex(&first).unwrap();
        concatenated.extend(from_hex(&second).unwrap());
        let expected = block_checksum(&concatenated);
        assert_eq!(
            linear_checksum([first.as_str(), second.as_str()]).unwrap(),
            expected
        );
        assert_ne!(
            linear_checksum([second.as_str(), first.as_str()]).unwrap(),
            expected
        );
        assert!(linear_checksum(["zz"]).is_none());
    }
}
