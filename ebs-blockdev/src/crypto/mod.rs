//! Encryption at rest: XTS-AES-256 per 512-byte sector under a per-volume data key, and a
//! local KMS whose master keys wrap those data keys (AES-256-GCM).
//!
//! A sector whose stored bytes are all zero reads as zeros: holes (never written, trimmed,
//! zeroed) need no encryption, and thin provisioning keeps working. A real ciphertext
//! sector is all zero with probability 2^-4096.

pub mod kms;

use aes::cipher::KeyInit;
use aes::Aes256;
use xts_mode::{get_tweak_default, Xts128};

pub use kms::{KmsError, LocalKms};

pub const SECTOR_SIZE: u64 = 512;
/// XTS-AES-256 takes two 256-bit keys.
pub const DATA_KEY_LEN: usize = 64;

/// Encrypts and decrypts whole sectors of one volume.
pub struct SectorCipher {
    xts: Xts128<Aes256>,
}

impl SectorCipher {
    pub fn new(data_key: &[u8; DATA_KEY_LEN]) -> Self {
        let (first, second) = data_key.split_at(DATA_KEY_LEN / 2);
        // Both halves are exactly 32 bytes, the AES-256 key size.
        let cipher =
            |key: &[u8]| Aes256::new(aes::cipher::generic_array::GenericArray::from_slice(key));
        SectorCipher {
            xts: Xts128::new(cipher(first), cipher(second)),
        }
    }

    /// Encrypts `buffer` (whole sectors) in place; `first_sector` is the index of the
    /// volume sector it starts at (the XTS tweak).
    pub fn encrypt(&self, buffer: &mut [u8], first_sector: u64) {
        debug_assert_eq!(buffer.len() as u64 % SECTOR_SIZE, 0);
        self.xts.encrypt_area(
            buffer,
            SECTOR_SIZE as usize,
            u128::from(first_sector),
            get_tweak_default,
        );
    }

    /// Decrypts `buffer` (whole sectors) in place; all-zero sectors stay zeros.
    pub fn decrypt(&self, buffer: &mut [u8], first_sector: u64) {
        for (index, sector) in buffer.chunks_mut(SECTOR_SIZE as usize).enumerate() {
            if sector.iter().all(|&byte| byte == 0) {
                continue;
            }
            self.xts.decrypt_sector(
                sector,
                get_tweak_default(u128::from(first_sector + index as u64)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> [u8; DATA_KEY_LEN] {
        std::array::from_fn(|index| seed.wrapping_add(index as u8).wrapping_mul(7))
    }

    #[test]
    fn sectors_round_trip_and_depend_on_position_and_key() {
        let cipher = SectorCipher::new(&key(1));
        let plaintext: Vec<u8> = (0..2048u32).map(|i| (i % 512 % 251) as u8).collect();
        let mut at_ten = plaintext.clone();
        cipher.encrypt(&mut at_ten, 10);
        assert_ne!(at_ten, plaintext);
        let mut at_eleven = plaintext.clone();
        cipher.encrypt(&mut at_eleven, 11);
        assert_ne!(
            at_ten[..512],
            at_eleven[..512],
            "the tweak is the sector index"
        );
        assert_eq!(at_ten[512..1024], at_eleven[..512]);
        let mut other_key = plaintext.clone();
        SectorCipher::new(&key(2)).encrypt(&mut other_key, 10);
        assert_ne!(other_key, at_ten);
        cipher.decrypt(&mut at_ten, 10);
        assert_eq!(at_ten, plaintext);
    }

    #[test]
    fn zero_sectors_read_as_zeros_but_written_zeros_are_encrypted() {
        let cipher = SectorCipher::new(&key(3));
        let mut hole = vec![0u8; 1024];
        cipher.decrypt(&mut hole, 0);
        assert!(hole.iter().all(|&b| b == 0));
        let mut zeros = vec![0u8; 512];
        cipher.encrypt(&mut zeros, 5);
        assert!(
            zeros.iter().any(|&b| b != 0),
            "plaintext zeros must not be stored as zeros"
        );
        cipher.decrypt(&mut zeros, 5);
        assert!(zeros.iter().all(|&b| b == 0));
    }
}
