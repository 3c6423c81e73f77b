//! AMIs: the manifest (DescribeImages' field names), its validation, and the store that
//! keeps manifests in the object store beside ebsd's snapshots.
//!
//! A manifest is `images/<ami-id>.json` holding `{"Image": {..}, "LaunchPermissions": {..}}`:
//! the image exactly as DescribeImages shows it, and its launch permissions, which EC2
//! keeps apart (DescribeImageAttribute) and this crate enforces at launch.

mod copy;
mod describe;
#[cfg(test)]
pub(crate) mod fake;
mod store;
mod validate;

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::shorthand::lenient;

pub(crate) use copy::from_api;
pub use copy::{
    CopyImageRequest, CopyPlan, EbsdSnapshots, PlannedSnapshotCopy, SnapshotCopyRequest,
    SnapshotOps,
};
pub use describe::{
    AttributeValue, DescribeImagesRequest, LaunchPermission, LaunchPermissionModifications,
    ModifyImageAttributeRequest,
};
pub use ebs_blockdev::control::snapshot::{Snapshot, SnapshotState};
pub use store::ImageStore;
pub(crate) use validate::check_mapping_shapes;
pub use validate::{
    is_valid_device_name, resolve_ebs, validate_image_name, RegisterImageRequest, TagSpecification,
};

/// Where the image's kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "Type")]
pub enum BootSource {
    /// The kernel and initrd are read from `/boot` on the root volume (how EC2's HVM
    /// AMIs boot); the launcher finds them there.
    #[serde(rename = "root-volume")]
    RootVolume,
    /// EC2's `KernelId`/`RamdiskId` (`aki-`/`ari-`): a kernel and initrd registered
    /// apart from the volumes; where the launcher keeps them is its business.
    #[serde(rename = "kernel", rename_all = "PascalCase")]
    Kernel {
        kernel_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ramdisk_id: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    Pending,
    Available,
    Failed,
    Deregistered,
}

impl ImageState {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Pending => "pending",
            ImageState::Available => "available",
            ImageState::Failed => "failed",
            ImageState::Deregistered => "deregistered",
        }
    }
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMode {
    LegacyBios,
    Uefi,
    UefiPreferred,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StateReason {
    pub code: String,
    pub message: String,
}

/// The `Ebs` part of a block-device mapping. In a request every field is optional; in a
/// stored manifest validation has filled in size, type, encryption and deletion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct EbsBlockDevice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// GiB.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_u64"
    )]
    pub volume_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_u32"
    )]
    pub iops: Option<u32>,
    /// MiB/s (gp3).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_u32"
    )]
    pub throughput: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub encrypted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub delete_on_termination: Option<bool>,
}

/// One block-device mapping: an EBS volume, an instance-store volume (`ephemeralN`) or,
/// at launch, `NoDevice` to drop a mapping the image has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct BlockDeviceMapping {
    pub device_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs: Option<EbsBlockDevice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_device: Option<String>,
}

/// An AMI, serialised with DescribeImages' field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Image {
    pub image_id: String,
    pub image_location: String,
    pub state: ImageState,
    pub owner_id: String,
    pub creation_date: String,
    pub public: bool,
    pub architecture: String,
    pub image_type: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub boot_source: BootSource,
    pub root_device_name: String,
    pub root_device_type: String,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    pub virtualization_type: String,
    pub ena_support: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov_net_support: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_support: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<BootMode>,
    pub platform_details: String,
    pub usage_operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<StateReason>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

impl Image {
    /// The root device's mapping (validation guarantees there is one).
    pub fn root_mapping(&self) -> Option<&BlockDeviceMapping> {
        self.block_device_mappings
            .iter()
            .find(|mapping| same_device(&mapping.device_name, &self.root_device_name))
    }

    /// Snapshot ids of every EBS mapping.
    pub fn snapshot_ids(&self) -> Vec<String> {
        self.block_device_mappings
            .iter()
            .filter_map(|mapping| mapping.ebs.as_ref()?.snapshot_id.clone())
            .collect()
    }

    /// Whether any EBS mapping is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.block_device_mappings
            .iter()
            .any(|mapping| mapping.ebs.as_ref().and_then(|ebs| ebs.encrypted) == Some(true))
    }
}

/// `/dev/sdb` and `sdb` name the same device.
pub(crate) fn same_device(left: &str, right: &str) -> bool {
    left.trim_start_matches("/dev/") == right.trim_start_matches("/dev/")
}

/// Who may launch an image besides its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LaunchPermissions {
    /// `Group=all`.
    pub public: bool,
    pub user_ids: BTreeSet<String>,
}

impl LaunchPermissions {
    /// The `LaunchPermissions` list of DescribeImageAttribute.
    pub fn to_json(&self) -> serde_json::Value {
        let mut list: Vec<serde_json::Value> = Vec::new();
        if self.public {
            list.push(serde_json::json!({"Group": "all"}));
        }
        list.extend(
            self.user_ids
                .iter()
                .map(|id| serde_json::json!({"UserId": id})),
        );
        serde_json::Value::Array(list)
    }
}

/// What the store keeps per image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageRecord {
    pub image: Image,
    #[serde(default)]
    pub launch_permissions: LaunchPermissions,
}

impl ImageRecord {
    /// Whether `account` may see (DescribeImages) and launch the image.
    pub fn can_launch(&self, account: &str) -> bool {
        self.image.owner_id == account
            || self.launch_permissions.public
            || self.launch_permissions.user_ids.contains(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_source_serialises_clearly() {
        assert_eq!(
            serde_json::to_value(BootSource::RootVolume).unwrap(),
            serde_json::json!({"Type": "root-volume"})
        );
        let kernel = BootSource::Kernel {
            kernel_id: "aki-0123456789abcdef0".into(),
            ramdisk_id: Some("ari-0123456789abcdef0".into()),
        };
        let json = serde_json::to_value(&kernel).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"Type": "kernel", "KernelId": "aki-0123456789abcdef0",
                               "RamdiskId": "ari-0123456789abcdef0"})
        );
        assert_eq!(serde_json::from_value::<BootSource>(json).unwrap(), kernel);
    }

    #[test]
    fn mappings_read_shorthand_strings_and_json_numbers() {
        let shorthand = crate::shorthand::parse_argument(
            "--block-device-mappings",
            "DeviceName=/dev/xvda,Ebs={SnapshotId=snap-0123456789abcdef0,VolumeSize=8,Encrypted=true}",
        )
        .unwrap();
        let mapping: BlockDeviceMapping = crate::shorthand::from_json(shorthand).unwrap();
        let ebs = mapping.ebs.clone().unwrap();
        assert_eq!((ebs.volume_size, ebs.encrypted), (Some(8), Some(true)));
        let json = serde_json::to_value(&mapping).unwrap();
        assert_eq!(json["Ebs"]["VolumeSize"], 8);
        assert!(json.get("VirtualName").is_none());
        assert_eq!(
            serde_json::from_value::<BlockDeviceMapping>(json).unwrap(),
            mapping
        );
    }

    #[test]
    fn launch_permissions_json() {
        let mut permissions = LaunchPermissions::default();
        assert_eq!(permissions.to_json(), serde_json::json!([]));
        permissions.public = true;
        permissions.user_ids.insert("123456789012".into());
        assert_eq!(
            permissions.to_json(),
            serde_json::json!([{"Group": "all"}, {"UserId": "123456789012"}])
        );
        assert!(same_device("/dev/xvda", "xvda"));
        assert!(!same_device("/dev/xvda", "/dev/xvdb"));
    }
}
