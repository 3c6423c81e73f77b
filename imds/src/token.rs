//! Stateless IMDSv2 session tokens.
//!
//! A token is `base64url(nonce || AES-256-GCM(expiry) || tag)` with the instance id as
//! associated data, as Firecracker's MMDS does: nothing is stored per token, a token from
//! one instance does not open another, and changing any byte makes it fail to decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::error::ImdsError;

/// EC2's bounds for `X-aws-ec2-metadata-token-ttl-seconds`.
pub const MIN_TOKEN_TTL_SECONDS: u64 = 1;
pub const MAX_TOKEN_TTL_SECONDS: u64 = 21_600;

const NONCE_LEN: usize = 12;
/// Encoded tokens longer than this are rejected before decoding (they cannot be ours).
const MAX_ENCODED_TOKEN_LEN: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRejection {
    Malformed,
    /// Forged, tampered with, or issued for another instance: indistinguishable by design.
    NotAuthentic,
    Expired,
}

/// Seals and opens tokens with one host-owned key.
pub struct TokenSealer {
    cipher: Aes256Gcm,
}

impl TokenSealer {
    /// A sealer with a fresh random key: tokens die with the process, as on EC2 reboots.
    pub fn random() -> Result<TokenSealer, ImdsError> {
        let mut key = [0u8; 32];
        fill_random(&mut key)?;
        Ok(TokenSealer::from_key(key))
    }

    pub fn from_key(key: [u8; 32]) -> TokenSealer {
        TokenSealer {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        }
    }

    /// A token for `instance_id` valid until `expires_at` (Unix seconds).
    pub fn seal(&self, instance_id: &str, expires_at: u64) -> Result<String, ImdsError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &expires_at.to_be_bytes(),
                    aad: instance_id.as_bytes(),
                },
            )
            .map_err(|_| ImdsError::TokenSeal)?;
        let mut raw = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ciphertext);
        Ok(URL_SAFE_NO_PAD.encode(raw))
    }

    /// Accepts the token only for `instance_id` and only before its expiry.
    pub fn open(&self, token: &str, instance_id: &str, now: u64) -> Result<(), TokenRejection> {
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_ENCODED_TOKEN_LEN {
            return Err(TokenRejection::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenRejection::Malformed)?;
        if raw.len() <= NONCE_LEN {
            return Err(TokenRejection::Malformed);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: instance_id.as_bytes(),
                },
            )
            .map_err(|_| TokenRejection::NotAuthentic)?;
        let expiry_bytes: [u8; 8] = plaintext
            .as_slice()
            .try_into()
            .map_err(|_| TokenRejection::NotAuthentic)?;
        if now >= u64::from_be_bytes(expiry_bytes) {
            return Err(TokenRejection::Expired);
        }
        Ok(())
    }
}

pub(crate) fn fill_random(buffer: &mut [u8]) -> Result<(), ImdsError> {
    getrandom::fill(buffer).map_err(|error| ImdsError::Randomness(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_rejections() {
        let sealer = TokenSealer::random().expect("os randomness");
        let token = sealer.seal("i-a", 1_000).expect("seal");
        assert_eq!(sealer.open(&token, "i-a", 999), Ok(()));
        assert_eq!(
            sealer.open(&token, "i-a", 1_000),
            Err(TokenRejection::Expired)
        );
        assert_eq!(
            sealer.open(&token, "i-b", 999),
            Err(TokenRejection::NotAuthentic)
        );
        let other_host = TokenSealer::random().expect("os randomness");
        assert_eq!(
            other_host.open(&token, "i-a", 999),
            Err(TokenRejection::NotAuthentic)
        );
        // Flip one character in the middle of the token.
        let mut tampered: Vec<char> = token.chars().collect();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == 'A' { 'B' } else { 'A' };
        let tampered: String = tampered.into_iter().collect();
        assert_eq!(
            sealer.open(&tampered, "i-a", 999),
            Err(TokenRejection::NotAuthentic)
        );
        assert_eq!(
            sealer.open("not base64 !", "i-a", 999),
            Err(TokenRejection::Malformed)
        );
        assert_eq!(sealer.open("", "i-a", 999), Err(TokenRejection::Malformed));
    }

    #[test]
    fn tokens_differ_each_time() {
        let sealer = TokenSealer::from_key([7; 32]);
        let first = sealer.seal("i-a", 50).expect("seal");
        let second = sealer.seal("i-a", 50).expect("seal");
        assert_ne!(first, second, "random nonce per token");
    }
}
