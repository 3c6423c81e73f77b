//! EC2's error model: a code from EC2's published list plus a message shaped like EC2's,
//! serialised as `{"Error":{"Code":..,"Message":..}}` (the JSON form of EC2's
//! `<Response><Errors><Error>` body, as ebsd's API already returns).
//!
//! Codes are an enum so a typo is a compile error, and so callers can match on them;
//! `as_str` gives the exact wire spelling (dots included, e.g. `InvalidAMIID.NotFound`).

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($($variant:ident => $text:literal, $status:literal;)*) => {
        /// An EC2 API error code (the `Code` element of an EC2 error response).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code exactly as EC2 spells it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            /// The HTTP status EC2 answers with (client errors 400, except the
            /// authentication and authorisation ones; server errors 500).
            pub fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }
        }
    };
}

error_codes! {
    AuthFailure => "AuthFailure", 401;
    UnauthorizedOperation => "UnauthorizedOperation", 403;
    DryRunOperation => "DryRunOperation", 412;
    IdempotentParameterMismatch => "IdempotentParameterMismatch", 400;
    IncorrectInstanceState => "IncorrectInstanceState", 400;
    IncorrectState => "IncorrectState", 400;
    InstanceLimitExceeded => "InstanceLimitExceeded", 400;
    InsufficientFreeAddressesInSubnet => "InsufficientFreeAddressesInSubnet", 400;
    InsufficientInstanceCapacity => "InsufficientInstanceCapacity", 500;
    InternalError => "InternalError", 500;
    InvalidAmiAttributeItemValue => "InvalidAMIAttributeItemValue", 400;
    InvalidAmiIdMalformed => "InvalidAMIID.Malformed", 400;
    InvalidAmiIdNotFound => "InvalidAMIID.NotFound", 400;
    InvalidAmiIdUnavailable => "InvalidAMIID.Unavailable", 400;
    InvalidAmiNameDuplicate => "InvalidAMIName.Duplicate", 400;
    InvalidAmiNameMalformed => "InvalidAMIName.Malformed", 400;
    InvalidBlockDeviceMapping => "InvalidBlockDeviceMapping", 400;
    InvalidInstanceIdMalformed => "InvalidInstanceID.Malformed", 400;
    InvalidInstanceIdNotFound => "InvalidInstanceID.NotFound", 400;
    InvalidIpAddressInUse => "InvalidIPAddress.InUse", 400;
    InvalidKeyPairNotFound => "InvalidKeyPair.NotFound", 400;
    InvalidNetworkInterfaceIdMalformed => "InvalidNetworkInterfaceID.Malformed", 400;
    InvalidNetworkInterfaceIdNotFound => "InvalidNetworkInterfaceID.NotFound", 400;
    InvalidParameter => "InvalidParameter", 400;
    InvalidParameterCombination => "InvalidParameterCombination", 400;
    InvalidParameterDependency => "InvalidParameterDependency", 400;
    InvalidParameterValue => "InvalidParameterValue", 400;
    InvalidSnapshotIdMalformed => "InvalidSnapshotID.Malformed", 400;
    InvalidSnapshotNotFound => "InvalidSnapshot.NotFound", 400;
    InvalidUserDataMalformed => "InvalidUserData.Malformed", 400;
    InvalidUserIdMalformed => "InvalidUserID.Malformed", 400;
    InvalidVolumeIdMalformed => "InvalidVolumeID.Malformed", 400;
    InvalidVolumeNotFound => "InvalidVolume.NotFound", 400;
    InvalidVolumeZoneMismatch => "InvalidVolume.ZoneMismatch", 400;
    InvalidZoneNotFound => "InvalidZone.NotFound", 400;
    InvalidAction => "InvalidAction", 400;
    MalformedQueryString => "MalformedQueryString", 400;
    MissingAction => "MissingAction", 400;
    MissingParameter => "MissingParameter", 400;
    Unsupported => "Unsupported", 400;
    UnknownParameter => "UnknownParameter", 400;
    UnsupportedHibernationConfiguration => "UnsupportedHibernationConfiguration", 400;
    UnsupportedOperation => "UnsupportedOperation", 400;
    VolumeTypeNotAvailableInZone => "VolumeTypeNotAvailableInZone", 400;
}

impl ErrorCode {
    /// The code for EC2's spelling, if it is one this crate knows.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|code| code.as_str() == text)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An EC2 error: what every fallible operation in this crate returns, ready to be sent
/// back to an `aws ec2` client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Ec2Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Ec2Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Ec2Error {
            code,
            message: message.into(),
        }
    }

    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    pub fn invalid_value(message: impl Into<String>) -> Self {
        Ec2Error::new(ErrorCode::InvalidParameterValue, message)
    }

    pub fn combination(message: impl Into<String>) -> Self {
        Ec2Error::new(ErrorCode::InvalidParameterCombination, message)
    }

    /// EC2's wording for an absent required parameter.
    pub fn missing(parameter: &str) -> Self {
        Ec2Error::new(
            ErrorCode::MissingParameter,
            format!("The request must contain the parameter {parameter}"),
        )
    }

    pub fn block_device_mapping(message: impl Into<String>) -> Self {
        Ec2Error::new(ErrorCode::InvalidBlockDeviceMapping, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Ec2Error::new(ErrorCode::InternalError, message)
    }

    /// `InvalidAMIID.NotFound` as EC2 words it (the id in brackets).
    pub fn image_not_found(image_id: &str) -> Self {
        Ec2Error::new(
            ErrorCode::InvalidAmiIdNotFound,
            format!("The image id '[{image_id}]' does not exist"),
        )
    }

    /// `InvalidInstanceID.NotFound` for one or several ids, in EC2's singular/plural forms.
    pub fn instances_not_found(instance_ids: &[&str]) -> Self {
        let message = match instance_ids {
            [one] => format!("The instance ID '{one}' does not exist"),
            many => format!("The instance IDs '{}' do not exist", many.join(", ")),
        };
        Ec2Error::new(ErrorCode::InvalidInstanceIdNotFound, message)
    }

    /// The body EC2 clients parse: `{"Error":{"Code":..,"Message":..}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"Error": {"Code": self.code.as_str(), "Message": self.message}})
    }
}

impl Serialize for Ec2Error {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireError {
    code: String,
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireBody {
    error: WireError,
}

impl<'de> Deserialize<'de> for Ec2Error {
    /// Accepts only codes this crate knows, so a reply can be matched on reliably.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let body = WireBody::deserialize(deserializer)?;
        let code = ErrorCode::parse(&body.error.code).ok_or_else(|| {
            D::Error::custom(format!("unknown EC2 error code {}", body.error.code))
        })?;
        Ok(Ec2Error::new(code, body.error.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_spelled_as_ec2_spells_them() {
        assert_eq!(
            ErrorCode::InvalidAmiIdNotFound.as_str(),
            "InvalidAMIID.NotFound"
        );
        assert_eq!(
            ErrorCode::InvalidAmiIdMalformed.as_str(),
            "InvalidAMIID.Malformed"
        );
        assert_eq!(
            ErrorCode::InvalidAmiIdUnavailable.as_str(),
            "InvalidAMIID.Unavailable"
        );
        assert_eq!(
            ErrorCode::InvalidInstanceIdNotFound.as_str(),
            "InvalidInstanceID.NotFound"
        );
        assert_eq!(
            ErrorCode::InvalidUserDataMalformed.as_str(),
            "InvalidUserData.Malformed"
        );
        assert_eq!(
            ErrorCode::InvalidVolumeZoneMismatch.as_str(),
            "InvalidVolume.ZoneMismatch"
        );
        assert_eq!(
            ErrorCode::InvalidSnapshotIdMalformed.as_str(),
            "InvalidSnapshotID.Malformed"
        );
    }

    #[test]
    fn every_code_round_trips_and_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
        }
        assert_eq!(ErrorCode::parse("InvalidAmiId.NotFound"), None);
    }

    #[test]
    fn serialises_as_the_ec2_error_body() {
        let error = Ec2Error::image_not_found("ami-0123456789abcdef0");
        let json = serde_json::to_value(&error).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"Error": {"Code": "InvalidAMIID.NotFound",
                "Message": "The image id '[ami-0123456789abcdef0]' does not exist"}})
        );
        let back: Ec2Error = serde_json::from_value(json).unwrap();
        assert_eq!(back, error);
        let unknown = serde_json::json!({"Error": {"Code": "Nope", "Message": "x"}});
        assert!(serde_json::from_value::<Ec2Error>(unknown).is_err());
    }

    #[test]
    fn statuses_and_messages() {
        assert_eq!(Ec2Error::missing("ImageId").http_status(), 400);
        assert_eq!(
            Ec2Error::missing("ImageId").message,
            "The request must contain the parameter ImageId"
        );
        assert_eq!(ErrorCode::AuthFailure.http_status(), 401);
        assert_eq!(ErrorCode::UnauthorizedOperation.http_status(), 403);
        assert_eq!(Ec2Error::internal("x").http_status(), 500);
        assert_eq!(
            Ec2Error::instances_not_found(&["i-1"]).message,
            "The instance ID 'i-1' does not exist"
        );
        assert_eq!(
            Ec2Error::instances_not_found(&["i-1", "i-2"]).message,
            "The instance IDs 'i-1, i-2' do not exist"
        );
        assert_eq!(
            Ec2Error::invalid_value("bad").to_string(),
            "InvalidParameterValue: bad"
        );
    }
}
