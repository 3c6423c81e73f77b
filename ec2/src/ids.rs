//! EC2 resource ids (`ami-`, `i-`, `r-`, `eni-` + 17 lowercase hex digits, random) and
//! account ids (12 digits).
//!
//! Generation and the hex check are ebs-blockdev's (`control::ids`), so volumes,
//! snapshots, images and instances share one id format and one source of randomness.

use ebs_blockdev::control::ids::{is_valid_resource_id, new_resource_id};

use crate::error::{Ec2Error, ErrorCode};

/// The account that owns everything on a single-tenant host. The same value ebsd shows
/// as a snapshot's OwnerId, so images and their snapshots agree on their owner.
pub const LOCAL_ACCOUNT_ID: &str = ebs_blockdev::control::snapshot::LOCAL_OWNER_ID;

/// The kinds of id the front door hands out or checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Image,
    Instance,
    Reservation,
    NetworkInterface,
    NetworkInterfaceAttachment,
    Snapshot,
    Volume,
    Kernel,
    Ramdisk,
}

impl ResourceKind {
    pub fn prefix(self) -> &'static str {
        match self {
            ResourceKind::Image => "ami",
            ResourceKind::Instance => "i",
            ResourceKind::Reservation => "r",
            ResourceKind::NetworkInterface => "eni",
            ResourceKind::NetworkInterfaceAttachment => "eni-attach",
            ResourceKind::Snapshot => "snap",
            ResourceKind::Volume => "vol",
            ResourceKind::Kernel => "aki",
            ResourceKind::Ramdisk => "ari",
        }
    }

    /// The error EC2 gives for a malformed id of this kind.
    fn malformed_code(self) -> ErrorCode {
        match self {
            ResourceKind::Image => ErrorCode::InvalidAmiIdMalformed,
            ResourceKind::Instance => ErrorCode::InvalidInstanceIdMalformed,
            ResourceKind::NetworkInterface => ErrorCode::InvalidNetworkInterfaceIdMalformed,
            ResourceKind::Snapshot => ErrorCode::InvalidSnapshotIdMalformed,
            ResourceKind::Volume => ErrorCode::InvalidVolumeIdMalformed,
            ResourceKind::Reservation
            | ResourceKind::NetworkInterfaceAttachment
            | ResourceKind::Kernel
            | ResourceKind::Ramdisk => ErrorCode::InvalidParameterValue,
        }
    }
}

/// A fresh random id of this kind, e.g. `ami-0a1b2c3d4e5f60718`.
pub fn new_id(kind: ResourceKind) -> String {
    new_resource_id(kind.prefix())
}

/// Whether `id` is well formed for `kind` (8 legacy or 17 hex digits after the prefix).
pub fn is_valid(kind: ResourceKind, id: &str) -> bool {
    is_valid_resource_id(kind.prefix(), id)
}

/// Checks an id's shape; a bad one is EC2's `*.Malformed` error for that kind.
pub fn validate(kind: ResourceKind, id: &str) -> Result<(), Ec2Error> {
    if is_valid(kind, id) {
        Ok(())
    } else {
        Err(Ec2Error::new(
            kind.malformed_code(),
            format!("Invalid id: \"{id}\" (expecting \"{}-...\")", kind.prefix()),
        ))
    }
}

/// Whether `text` is an AWS account id: exactly 12 ASCII digits.
pub fn is_account_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Checks an account id given as a launch-permission user or an owner.
pub fn validate_account_id(text: &str) -> Result<(), Ec2Error> {
    if is_account_id(text) {
        Ok(())
    } else {
        Err(Ec2Error::new(
            ErrorCode::InvalidUserIdMalformed,
            format!("Invalid user id: \"{text}\""),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_have_prefix_and_17_hex_digits() {
        for kind in [
            ResourceKind::Image,
            ResourceKind::Instance,
            ResourceKind::Reservation,
            ResourceKind::NetworkInterface,
        ] {
            let id = new_id(kind);
            let digits = id.strip_prefix(&format!("{}-", kind.prefix())).unwrap();
            assert_eq!(digits.len(), 17, "{id}");
            assert!(digits
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(is_valid(kind, &id));
        }
        assert_ne!(new_id(ResourceKind::Image), new_id(ResourceKind::Image));
    }

    #[test]
    fn malformed_ids_get_the_kinds_error_code() {
        let error = validate(ResourceKind::Image, "ami-xyz").unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidAmiIdMalformed);
        assert_eq!(
            error.message,
            "Invalid id: \"ami-xyz\" (expecting \"ami-...\")"
        );
        assert_eq!(
            validate(ResourceKind::Instance, "ami-0123456789abcdef0")
                .unwrap_err()
                .code,
            ErrorCode::InvalidInstanceIdMalformed
        );
        assert_eq!(
            validate(ResourceKind::Snapshot, "snap-0123456789ABCDEF0")
                .unwrap_err()
                .code,
            ErrorCode::InvalidSnapshotIdMalformed
        );
        assert!(validate(ResourceKind::Instance, "i-0123456789abcdef0").is_ok());
        assert!(validate(ResourceKind::Instance, "i-01234567").is_ok());
        assert!(validate(ResourceKind::Instance, "i-012345678").is_err());
        assert!(validate(ResourceKind::NetworkInterface, "eni-").is_err());
    }

    #[test]
    fn account_ids_are_twelve_digits() {
        assert!(is_account_id(LOCAL_ACCOUNT_ID));
        assert!(is_account_id("123456789012"));
        assert!(!is_account_id("12345678901"));
        assert!(!is_account_id("12345678901a"));
        assert_eq!(
            validate_account_id("self").unwrap_err().code,
            ErrorCode::InvalidUserIdMalformed
        );
    }
}
