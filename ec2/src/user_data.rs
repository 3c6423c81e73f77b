//! Instance user data: base64 on the wire, at most 16 KB before encoding.
//!
//! EC2's rule (User Guide, "Work with instance user data"): "User data is limited to
//! 16 KB, in raw form, before it is base64-encoded", i.e. 16,384 decoded bytes; RunInstances
//! answers a larger payload with `InvalidParameterValue: User data is limited to 16384
//! bytes`, and a payload that is not base64 with `InvalidUserData.Malformed`.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

use crate::error::{Ec2Error, ErrorCode};

/// The limit on decoded user data, in bytes.
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;

/// Standard alphabet; padding optional on input (some encoders drop it), always written.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decoded user data, guaranteed within EC2's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserData(Vec<u8>);

impl UserData {
    /// From the base64 text of a `UserData` parameter. Line breaks and other ASCII
    /// whitespace are ignored, since `base64(1)` wraps its output at 76 columns.
    pub fn from_base64(text: &str) -> Result<UserData, Ec2Error> {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = BASE64.decode(compact.as_bytes()).map_err(|_| {
            Ec2Error::new(
                ErrorCode::InvalidUserDataMalformed,
                "Invalid BASE64 encoding of user data.",
            )
        })?;
        UserData::from_raw(bytes)
    }

    /// From raw bytes (what `aws ec2 run-instances --user-data file://...` reads).
    pub fn from_raw(bytes: Vec<u8>) -> Result<UserData, Ec2Error> {
        if bytes.len() > MAX_USER_DATA_BYTES {
            return Err(Ec2Error::invalid_value(format!(
                "User data is limited to {MAX_USER_DATA_BYTES} bytes"
            )));
        }
        Ok(UserData(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The padded base64 form, as DescribeInstanceAttribute returns it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64_with_or_without_padding_and_line_breaks() {
        let script = b"#!/bin/sh\necho hello > /root/marker\n";
        let encoded = BASE64.encode(script);
        assert_eq!(UserData::from_base64(&encoded).unwrap().as_bytes(), script);
        let wrapped: String = encoded
            .as_bytes()
            .chunks(10)
            .map(|chunk| format!("{}\n", String::from_utf8_lossy(chunk)))
            .collect();
        assert_eq!(UserData::from_base64(&wrapped).unwrap().as_bytes(), script);
        assert_eq!(UserData::from_base64("aGk").unwrap().as_bytes(), b"hi");
        assert_eq!(UserData::from_base64("aGk=").unwrap().to_base64(), "aGk=");
        assert!(UserData::from_base64("").unwrap().as_bytes().is_empty());
    }

    #[test]
    fn malformed_base64_is_refused() {
        for bad in ["not base64!", "aGk==x", "a", "aGk*"] {
            let error = UserData::from_base64(bad).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidUserDataMalformed, "{bad}");
            assert_eq!(error.message, "Invalid BASE64 encoding of user data.");
        }
    }

    #[test]
    fn the_limit_is_16_kib_of_decoded_bytes() {
        let exactly = vec![b'x'; MAX_USER_DATA_BYTES];
        // 16 KiB decoded is 21,848 base64 characters: the limit is on the raw form.
        let encoded = BASE64.encode(&exactly);
        assert_eq!(encoded.len(), 21_848);
        assert_eq!(
            UserData::from_base64(&encoded).unwrap().as_bytes().len(),
            16_384
        );
        let over = BASE64.encode(vec![b'x'; MAX_USER_DATA_BYTES + 1]);
        let error = UserData::from_base64(&over).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidParameterValue);
        assert_eq!(error.message, "User data is limited to 16384 bytes");
        assert!(UserData::from_raw(vec![0; MAX_USER_DATA_BYTES + 1]).is_err());
        assert!(UserData::from_raw(vec![0; MAX_USER_DATA_BYTES]).is_ok());
    }
}
