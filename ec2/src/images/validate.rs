//! RegisterImage's request and EC2's rules for it: the name, device names, the root
//! device, and each EBS mapping's snapshot, size, type and encryption.

use std::str::FromStr;

use ebs_blockdev::control::snapshot::SnapshotState;
use ebs_blockdev::control::volume_type::{resolve_performance, RequestedPerformance, VolumeType};
use serde::Deserialize;

use super::copy::SnapshotOps;
use super::{
    same_device, BlockDeviceMapping, BootMode, BootSource, EbsBlockDevice, Image, ImageState, Tag,
};
use crate::error::{Ec2Error, ErrorCode};
use crate::ids::{self, ResourceKind};
use crate::shorthand::lenient;

/// Volume type of a mapping that names none.
const DEFAULT_VOLUME_TYPE: &str = "gp3";
const MAX_DESCRIPTION_CHARS: usize = 255;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TagSpecification {
    pub resource_type: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// RegisterImage's parameters (EC2 field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RegisterImageRequest {
    pub name: Option<String>,
    pub description: Option<String>,
    pub architecture: Option<String>,
    pub root_device_name: Option<String>,
    #[serde(default)]
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub ena_support: Option<bool>,
    pub sriov_net_support: Option<String>,
    pub imds_support: Option<String>,
    pub boot_mode: Option<String>,
    pub virtualization_type: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
}

/// EC2's AMI name rule: 3-128 characters of letters, digits, `( ) [ ] . / - ' @ _` and
/// spaces.
pub fn validate_image_name(name: &str) -> Result<(), Ec2Error> {
    let length = name.chars().count();
    let allowed = |c: char| c.is_ascii_alphanumeric() || " ()[]./-'@_".contains(c);
    if (3..=128).contains(&length) && name.chars().all(allowed) {
        Ok(())
    } else {
        Err(Ec2Error::new(
            ErrorCode::InvalidAmiNameMalformed,
            format!(
                "AMI name '{name}' is invalid: AMI names must be between 3 and 128 characters long, \
                 and may contain letters, numbers, spaces, and the characters ( ) [ ] . / - ' @ _"
            ),
        ))
    }
}

/// Linux device names EC2 accepts in mappings: `/dev/sdX[N]`, `/dev/xvdX[Y]`,
/// `/dev/vdX[Y]`, `/dev/hdX`, with or without `/dev/`.
pub fn is_valid_device_name(name: &str) -> bool {
    let bare = name.strip_prefix("/dev/").unwrap_or(name);
    let (prefix, rest) = if let Some(rest) = bare.strip_prefix("xvd") {
        ("xvd", rest)
    } else if let Some(rest) = bare.strip_prefix("sd") {
        ("sd", rest)
    } else if let Some(rest) = bare.strip_prefix("vd") {
        ("vd", rest)
    } else if let Some(rest) = bare.strip_prefix("hd") {
        ("hd", rest)
    } else {
        return false;
    };
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    let digits = &rest[letters..];
    let partition_ok = digits.is_empty()
        || (prefix == "sd"
            && letters == 1
            && digits.parse::<u8>().is_ok_and(|n| (1..=15).contains(&n)));
    let letters_ok = match prefix {
        "sd" | "hd" => letters == 1,
        _ => (1..=2).contains(&letters),
    };
    letters_ok && partition_ok && digits.bytes().all(|b| b.is_ascii_digit())
}

fn unsupported(what: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::Unsupported,
        format!("The requested configuration is currently not supported: {what}"),
    )
}

/// Maps ebs-blockdev's volume-type rejections onto EC2 codes (it uses the same names).
fn from_control(error: ebs_blockdev::control::ControlError) -> Ec2Error {
    let code = ErrorCode::parse(error.code()).unwrap_or(ErrorCode::InvalidParameterValue);
    Ec2Error::new(code, error.to_string())
}

/// Validates one EBS mapping and fills in what EC2 derives: the size (the snapshot's when
/// none is given), the type, IOPS/throughput as DescribeImages reports them, encryption
/// (inherited from an encrypted snapshot) and DeleteOnTermination (default true).
/// Returns the resolved device and the snapshot's state (None without a snapshot).
pub fn resolve_ebs(
    device: &str,
    ebs: &EbsBlockDevice,
    snapshots: &dyn SnapshotOps,
) -> Result<(EbsBlockDevice, Option<SnapshotState>), Ec2Error> {
    let snapshot = match &ebs.snapshot_id {
        Some(snapshot_id) => {
            ids::validate(ResourceKind::Snapshot, snapshot_id)?;
            let snapshot = snapshots.describe_snapshot(snapshot_id)?.ok_or_else(|| {
                Ec2Error::new(
                    ErrorCode::InvalidSnapshotNotFound,
                    format!("The snapshot '{snapshot_id}' does not exist."),
                )
            })?;
            if snapshot.state == SnapshotState::Error {
                return Err(Ec2Error::new(
                    ErrorCode::IncorrectState,
                    format!("Snapshot '{snapshot_id}' is in invalid state - error"),
                ));
            }
            Some(snapshot)
        }
        None => None,
    };
    let size = match (ebs.volume_size, &snapshot) {
        (Some(size), Some(snapshot)) if size < snapshot.volume_size => {
            return Err(Ec2Error::block_device_mapping(format!(
                "Volume of size {size}GB is smaller than snapshot '{}', expect size >= {}GB",
                snapshot.snapshot_id, snapshot.volume_size
            )))
        }
        (Some(size), _) => size,
        (None, Some(snapshot)) => snapshot.volume_size,
        (None, None) => {
            return Err(Ec2Error::block_device_mapping(format!(
                "The block device mapping for {device} needs a VolumeSize or a SnapshotId"
            )))
        }
    };
    let type_name = ebs.volume_type.as_deref().unwrap_or(DEFAULT_VOLUME_TYPE);
    let kind = VolumeType::from_str(type_name).map_err(from_control)?;
    let performance = resolve_performance(
        kind,
        size,
        RequestedPerformance {
            iops: ebs.iops,
            throughput_mibps: ebs.throughput,
        },
    )
    .map_err(from_control)?;
    let snapshot_encrypted = snapshot.as_ref().is_some_and(|s| s.encrypted);
    if snapshot_encrypted && ebs.encrypted == Some(false) {
        return Err(Ec2Error::combination(format!(
            "The encrypted flag cannot be false for {device}: snapshot '{}' is encrypted",
            ebs.snapshot_id.as_deref().unwrap_or_default()
        )));
    }
    let encrypted = snapshot_encrypted || ebs.encrypted == Some(true);
    if ebs.kms_key_id.is_some() && !encrypted {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterDependency,
            "The parameter KmsKeyId requires the parameter Encrypted to be set.",
        ));
    }
    let kms_key_id = ebs
        .kms_key_id
        .clone()
        .or_else(|| snapshot.as_ref().and_then(|s| s.kms_key_id.clone()));
    let resolved = EbsBlockDevice {
        snapshot_id: ebs.snapshot_id.clone(),
        volume_size: Some(size),
        volume_type: Some(kind.to_string()),
        iops: performance.reported_iops,
        throughput: performance.reported_throughput_mibps,
        encrypted: Some(encrypted),
        kms_key_id: if encrypted { kms_key_id } else { None },
        delete_on_termination: Some(ebs.delete_on_termination.unwrap_or(true)),
    };
    Ok((resolved, snapshot.map(|s| s.state)))
}

/// An ephemeral (instance-store) virtual name: `ephemeral0` .. `ephemeral23`.
fn is_ephemeral_name(name: &str) -> bool {
    let Some(digits) = name.strip_prefix("ephemeral") else {
        return false;
    };
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && digits.parse::<u8>().is_ok_and(|n| n <= 23)
}

/// Checks every mapping's device name and shape (not the EBS contents). Shared with
/// run-instances, whose overrides may also say `NoDevice`.
pub(crate) fn check_mapping_shapes(
    mappings: &[BlockDeviceMapping],
    allow_no_device: bool,
) -> Result<(), Ec2Error> {
    for (index, mapping) in mappings.iter().enumerate() {
        let device = &mapping.device_name;
        if !is_valid_device_name(device) {
            return Err(Ec2Error::block_device_mapping(format!(
                "Invalid device name {device}"
            )));
        }
        if mappings[..index]
            .iter()
            .any(|m| same_device(&m.device_name, device))
        {
            return Err(Ec2Error::block_device_mapping(format!(
                "The device '{}' is used in more than one block-device mapping",
                device.trim_start_matches("/dev/")
            )));
        }
        let kinds = [
            mapping.ebs.is_some(),
            mapping.virtual_name.is_some(),
            mapping.no_device.is_some(),
        ];
        if kinds.iter().filter(|&&set| set).count() != 1 {
            return Err(Ec2Error::block_device_mapping(format!(
                "The block device mapping for {device} must have exactly one of Ebs, VirtualName or NoDevice"
            )));
        }
        if mapping.no_device.is_some() && !allow_no_device {
            return Err(Ec2Error::block_device_mapping(format!(
                "NoDevice is only valid at launch ({device})"
            )));
        }
        if let Some(name) = &mapping.virtual_name {
            if !is_ephemeral_name(name) {
                return Err(Ec2Error::block_device_mapping(format!(
                    "Invalid virtual name {name} for {device}: expected ephemeral0 to ephemeral23"
                )));
            }
        }
    }
    Ok(())
}

/// Builds the manifest of a new image owned by `owner` (uniqueness of the name is the
/// store's check). The image is `pending` while any snapshot is, else `available`.
pub(crate) fn build_image(
    request: &RegisterImageRequest,
    owner: &str,
    snapshots: &dyn SnapshotOps,
) -> Result<Image, Ec2Error> {
    let name = request
        .name
        .as_deref()
        .ok_or_else(|| Ec2Error::missing("name"))?;
    validate_image_name(name)?;
    if let Some(description) = &request.description {
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(Ec2Error::invalid_value(format!(
                "The description is too long: at most {MAX_DESCRIPTION_CHARS} characters"
            )));
        }
    }
    let architecture = request.architecture.as_deref().unwrap_or("x86_64");
    match architecture {
        "x86_64" => {}
        "i386" | "arm64" | "x86_64_mac" | "arm64_mac" => return Err(unsupported(&format!("architecture {architecture}"))),
        other => {
            return Err(Ec2Error::invalid_value(format!(
                "Value ({other}) for parameter architecture is invalid. Valid values: i386, x86_64, arm64"
            )))
        }
    }
    match request.virtualization_type.as_deref() {
        None | Some("hvm") => {}
        Some("paravirtual") => return Err(unsupported("paravirtual images")),
        Some(other) => {
            return Err(Ec2Error::invalid_value(format!(
                "Invalid virtualization type: {other}"
            )))
        }
    }
    let boot_mode = match request.boot_mode.as_deref() {
        None => None,
        Some(text) => Some(
            serde_json::from_value::<BootMode>(serde_json::Value::String(text.to_string())).map_err(|_| {
                Ec2Error::invalid_value(format!(
                    "Value ({text}) for parameter bootMode is invalid. Valid values: legacy-bios, uefi, uefi-preferred"
                ))
            })?,
        ),
    };
    if let Some(imds) = request.imds_support.as_deref().filter(|v| *v != "v2.0") {
        return Err(Ec2Error::invalid_value(format!(
            "Value ({imds}) for parameter imdsSupport is invalid. Valid values: v2.0"
        )));
    }
    if let Some(sriov) = request
        .sriov_net_support
        .as_deref()
        .filter(|v| *v != "simple")
    {
        return Err(Ec2Error::invalid_value(format!(
            "Value ({sriov}) for parameter sriovNetSupport is invalid. Valid values: simple"
        )));
    }
    let boot_source = match (&request.kernel_id, &request.ramdisk_id) {
        (None, None) => BootSource::RootVolume,
        (None, Some(_)) => return Err(Ec2Error::combination("RamdiskId requires KernelId")),
        (Some(kernel), ramdisk) => {
            ids::validate(ResourceKind::Kernel, kernel)?;
            if let Some(ramdisk) = ramdisk {
                ids::validate(ResourceKind::Ramdisk, ramdisk)?;
            }
            BootSource::Kernel {
                kernel_id: kernel.clone(),
                ramdisk_id: ramdisk.clone(),
            }
        }
    };
    let root_device_name = request
        .root_device_name
        .as_deref()
        .ok_or_else(|| Ec2Error::missing("rootDeviceName"))?;
    check_mapping_shapes(&request.block_device_mappings, false)?;
    let root = request
        .block_device_mappings
        .iter()
        .find(|mapping| same_device(&mapping.device_name, root_device_name))
        .ok_or_else(|| {
            Ec2Error::block_device_mapping(format!(
                "The root device name {root_device_name} is not in the block device mappings"
            ))
        })?;
    if root
        .ebs
        .as_ref()
        .and_then(|ebs| ebs.snapshot_id.as_ref())
        .is_none()
    {
        return Err(Ec2Error::block_device_mapping(format!(
            "The root device {root_device_name} must be an EBS volume with a SnapshotId"
        )));
    }
    let mut mappings = Vec::with_capacity(request.block_device_mappings.len());
    let mut pending = false;
    for mapping in &request.block_device_mappings {
        let mut resolved = mapping.clone();
        if let Some(ebs) = &mapping.ebs {
            let (ebs, state) = resolve_ebs(&mapping.device_name, ebs, snapshots)?;
            pending |= state == Some(SnapshotState::Pending);
            resolved.ebs = Some(ebs);
        }
        mappings.push(resolved);
    }
    let tags = request
        .tag_specifications
        .iter()
        .filter(|spec| spec.resource_type == "image")
        .flat_map(|spec| spec.tags.iter().cloned())
        .collect();
    Ok(Image {
        image_id: ids::new_id(ResourceKind::Image),
        image_location: format!("{owner}/{name}"),
        state: if pending {
            ImageState::Pending
        } else {
            ImageState::Available
        },
        owner_id: owner.to_string(),
        creation_date: ebs_blockdev::control::ids::now_rfc3339(),
        public: false,
        architecture: architecture.to_string(),
        image_type: "machine".into(),
        name: name.to_string(),
        description: request.description.clone(),
        boot_source,
        root_device_name: root_device_name.to_string(),
        root_device_type: "ebs".into(),
        block_device_mappings: mappings,
        virtualization_type: "hvm".into(),
        ena_support: request.ena_support.unwrap_or(false),
        sriov_net_support: request.sriov_net_support.clone(),
        imds_support: request.imds_support.clone(),
        boot_mode,
        platform_details: "Linux/UNIX".into(),
        usage_operation: "RunInstances".into(),
        state_reason: None,
        tags,
    })
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
