//! Rotating temporary credentials for an instance's IAM role.
//!
//! There is no STS here, so credentials are derived: HMAC-SHA256 over (instance, role,
//! rotation period) with a host secret. They rotate every `ROTATION_SECONDS` and stay valid
//! `VALIDITY_SECONDS` past issue, so a client that cached the previous set keeps working
//! through a rotation, as on EC2 (new credentials at least 5 minutes before expiry).
//! Deriving instead of storing means the daemon and every VMM agree without sharing state.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::error::ImdsError;
use crate::timefmt::iso8601;
use crate::token::fill_random;

pub const ROTATION_SECONDS: u64 = 3_600;
pub const VALIDITY_SECONDS: u64 = 6 * 3_600;

/// The JSON body of `meta-data/iam/security-credentials/<role>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RoleCredentials {
    pub code: String,
    pub last_updated: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    pub expiration: String,
}

pub struct CredentialIssuer {
    secret: Vec<u8>,
}

impl CredentialIssuer {
    pub fn random() -> Result<CredentialIssuer, ImdsError> {
        let mut secret = vec![0u8; 32];
        fill_random(&mut secret)?;
        Ok(CredentialIssuer { secret })
    }

    /// From a hex secret, so credentials survive daemon restarts.
    pub fn from_hex(secret_hex: &str) -> Result<CredentialIssuer, ImdsError> {
        let text = secret_hex.trim();
        let invalid = || ImdsError::InvalidConfig {
            instance: "-".to_string(),
            field: "credential_secret".to_string(),
            rule: "must be an even number (>= 32) of hex digits".to_string(),
        };
        if text.len() < 32 || !text.len().is_multiple_of(2) {
            return Err(invalid());
        }
        let secret = (0..text.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&text[index..index + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| invalid())?;
        Ok(CredentialIssuer { secret })
    }

    fn derive(&self, label: &str, instance_id: &str, role: &str, period: u64) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail; fall back to an empty-key
        // MAC rather than panic if the hmac crate ever changes that.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        for part in [label, instance_id, role] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&period.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The credentials in force at `now` (Unix seconds).
    pub fn credentials(&self, instance_id: &str, role: &str, now: u64) -> RoleCredentials {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine;
        let period = now / ROTATION_SECONDS;
        let issued_at = period * ROTATION_SECONDS;
        const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let key_id_bytes = self.derive("access-key-id", instance_id, role, period);
        let access_key_id: String = std::iter::once("ASIA".to_string())
            .chain(
                key_id_bytes[..16]
                    .iter()
                    .map(|byte| char::from(BASE32[usize::from(byte % 32)]).to_string()),
            )
            .collect();
        let secret_bytes = self.derive("secret-access-key", instance_id, role, period);
        let secret_access_key = STANDARD.encode(&secret_bytes[..30]);
        let mut token_bytes = Vec::with_capacity(96);
        for part in 0..3u64 {
            token_bytes.extend_from_slice(&self.derive(
                "session-token",
                instance_id,
                role,
                period * 3 + part,
            ));
        }
        RoleCredentials {
            code: "Success".to_string(),
            last_updated: iso8601(issued_at),
            kind: "AWS-HMAC".to_string(),
            access_key_id,
            secret_access_key,
            token: STANDARD.encode(token_bytes),
            expiration: iso8601(issued_at + VALIDITY_SECONDS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_rotate_per_period_and_differ_per_instance() {
        let issuer = CredentialIssuer::from_hex("00112233445566778899aabbccddeeff").expect("hex");
        let start = 1_800_000_000 - 1_800_000_000 % ROTATION_SECONDS;
        let first = issuer.credentials("i-a", "role", start + 10);
        let same_period = issuer.credentials("i-a", "role", start + ROTATION_SECONDS - 1);
        let next_period = issuer.credentials("i-a", "role", start + ROTATION_SECONDS);
        let other_instance = issuer.credentials("i-b", "role", start + 10);
        assert_eq!(first, same_period);
        assert_ne!(first.access_key_id, next_period.access_key_id);
        assert_ne!(first.secret_access_key, other_instance.secret_access_key);
        assert!(first.access_key_id.starts_with("ASIA") && first.access_key_id.len() == 20);
        assert_eq!(first.last_updated, iso8601(start));
        assert_eq!(first.expiration, iso8601(start + VALIDITY_SECONDS));
        // Still valid after the next rotation: clients holding it keep working.
        assert!(start + VALIDITY_SECONDS > start + ROTATION_SECONDS + 300);
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(CredentialIssuer::from_hex("abc").is_err());
        assert!(CredentialIssuer::from_hex(&"zz".repeat(16)).is_err());
    }
}
