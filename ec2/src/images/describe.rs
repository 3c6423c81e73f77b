//! DescribeImages (ImageIds, Owners, ExecutableUsers, Filters), ModifyImageAttribute and
//! DescribeImageAttribute over image records; storage-free.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{ImageRecord, ImageState};
use crate::error::{Ec2Error, ErrorCode};
use crate::filters::{self, Filter};
use crate::ids::{self, ResourceKind};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeImagesRequest {
    #[serde(default)]
    pub image_ids: Vec<String>,
    /// `self`, account ids, or EC2's owner aliases (`amazon`, `aws-marketplace`), which
    /// own nothing here.
    #[serde(default)]
    pub owners: Vec<String>,
    /// `self`, `all` (public images) or account ids.
    #[serde(default)]
    pub executable_users: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchPermission {
    pub group: Option<String>,
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchPermissionModifications {
    #[serde(default)]
    pub add: Vec<LaunchPermission>,
    #[serde(default)]
    pub remove: Vec<LaunchPermission>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AttributeValue {
    pub value: Option<String>,
}

/// ModifyImageAttribute in both of EC2's forms: `LaunchPermission={Add=[..],Remove=[..]}`
/// / `Description={Value=..}`, or `Attribute` + `OperationType` + `UserIds`/`UserGroups`
/// (+ `Value` for the description).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ModifyImageAttributeRequest {
    pub image_id: Option<String>,
    pub attribute: Option<String>,
    pub launch_permission: Option<LaunchPermissionModifications>,
    pub description: Option<AttributeValue>,
    pub operation_type: Option<String>,
    #[serde(default)]
    pub user_ids: Vec<String>,
    #[serde(default)]
    pub user_groups: Vec<String>,
    pub value: Option<String>,
}

fn resolve_account<'a>(value: &'a str, caller: &'a str) -> &'a str {
    if value == "self" {
        caller
    } else {
        value
    }
}

const IMAGE_FILTERS: &[&str] = &[
    "image-id",
    "name",
    "description",
    "architecture",
    "state",
    "owner-id",
    "is-public",
    "image-type",
    "root-device-type",
    "root-device-name",
    "virtualization-type",
    "ena-support",
    "sriov-net-support",
    "kernel-id",
    "ramdisk-id",
    "creation-date",
    "block-device-mapping.snapshot-id",
    "block-device-mapping.device-name",
    "block-device-mapping.volume-size",
    "block-device-mapping.volume-type",
    "block-device-mapping.encrypted",
    "block-device-mapping.delete-on-termination",
];

fn filter_values(record: &ImageRecord, name: &str) -> Vec<String> {
    let image = &record.image;
    if let Some(values) = filters::tag_values(&image.tags, name) {
        return values;
    }
    let ebs_values = |field: fn(&super::EbsBlockDevice) -> Option<String>| -> Vec<String> {
        image
            .block_device_mappings
            .iter()
            .filter_map(|mapping| mapping.ebs.as_ref().and_then(field))
            .collect()
    };
    let one = |value: &str| vec![value.to_string()];
    let kernel = match &image.boot_source {
        super::BootSource::Kernel {
            kernel_id,
            ramdisk_id,
        } => (Some(kernel_id.clone()), ramdisk_id.clone()),
        super::BootSource::RootVolume => (None, None),
    };
    match name {
        "image-id" => one(&image.image_id),
        "name" => one(&image.name),
        "description" => image.description.iter().cloned().collect(),
        "architecture" => one(&image.architecture),
        "state" => one(image.state.as_str()),
        "owner-id" => one(&image.owner_id),
        "is-public" => one(&image.public.to_string()),
        "image-type" => one(&image.image_type),
        "root-device-type" => one(&image.root_device_type),
        "root-device-name" => one(&image.root_device_name),
        "virtualization-type" => one(&image.virtualization_type),
        "ena-support" => one(&image.ena_support.to_string()),
        "sriov-net-support" => image.sriov_net_support.iter().cloned().collect(),
        "kernel-id" => kernel.0.into_iter().collect(),
        "ramdisk-id" => kernel.1.into_iter().collect(),
        "creation-date" => one(&image.creation_date),
        "block-device-mapping.snapshot-id" => ebs_values(|ebs| ebs.snapshot_id.clone()),
        "block-device-mapping.device-name" => image
            .block_device_mappings
            .iter()
            .map(|mapping| mapping.device_name.clone())
            .collect(),
        "block-device-mapping.volume-size" => {
            ebs_values(|ebs| ebs.volume_size.map(|s| s.to_string()))
        }
        "block-device-mapping.volume-type" => ebs_values(|ebs| ebs.volume_type.clone()),
        "block-device-mapping.encrypted" => ebs_values(|ebs| ebs.encrypted.map(|e| e.to_string())),
        "block-device-mapping.delete-on-termination" => {
            ebs_values(|ebs| ebs.delete_on_termination.map(|d| d.to_string()))
        }
        _ => Vec::new(),
    }
}

/// The images `caller` may see that match the request, in id order.
pub(crate) fn describe(
    records: Vec<ImageRecord>,
    request: &DescribeImagesRequest,
    caller: &str,
) -> Result<Vec<super::Image>, Ec2Error> {
    for image_id in &request.image_ids {
        ids::validate(ResourceKind::Image, image_id)?;
    }
    let mut owners = Vec::new();
    for owner in &request.owners {
        match owner.as_str() {
            "self" => owners.push(caller.to_string()),
            // EC2's aliases for Amazon's own images: none exist on this host.
            "amazon" | "aws-marketplace" | "aws-backup-vault" => owners.push(String::new()),
            account => {
                ids::validate_account_id(account)?;
                owners.push(account.to_string());
            }
        }
    }
    for user in &request.executable_users {
        if user != "self" && user != "all" {
            ids::validate_account_id(user)?;
        }
    }
    let mut visible: Vec<ImageRecord> = records
        .into_iter()
        .filter(|record| {
            record.image.state != ImageState::Deregistered && record.can_launch(caller)
        })
        .collect();
    visible.sort_by(|a, b| a.image.image_id.cmp(&b.image.image_id));
    if !request.image_ids.is_empty() {
        if let Some(missing) = request
            .image_ids
            .iter()
            .find(|id| !visible.iter().any(|record| &record.image.image_id == *id))
        {
            return Err(Ec2Error::image_not_found(missing));
        }
        visible.retain(|record| request.image_ids.contains(&record.image.image_id));
    }
    if !owners.is_empty() {
        visible.retain(|record| owners.contains(&record.image.owner_id));
    }
    if !request.executable_users.is_empty() {
        visible.retain(|record| {
            request
                .executable_users
                .iter()
                .any(|user| match user.as_str() {
                    "all" => record.launch_permissions.public,
                    user => {
                        let account = resolve_account(user, caller);
                        record.image.owner_id == account
                            || record.launch_permissions.user_ids.contains(account)
                    }
                })
        });
    }
    let known = |name: &str| IMAGE_FILTERS.contains(&name) || filters::is_tag_filter(name);
    let kept = filters::apply(visible, &request.filters, known, filter_values)?;
    Ok(kept.into_iter().map(|record| record.image).collect())
}

fn item_error(value: &str, item: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::InvalidAmiAttributeItemValue,
        format!("Invalid attribute item value \"{value}\" for {item} item type."),
    )
}

/// Applies ModifyImageAttribute to a record the caller owns.
pub(crate) fn modify(
    record: &mut ImageRecord,
    request: &ModifyImageAttributeRequest,
) -> Result<(), Ec2Error> {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    if let Some(changes) = &request.launch_permission {
        add.extend(changes.add.iter().cloned());
        remove.extend(changes.remove.iter().cloned());
    }
    let legacy: Vec<LaunchPermission> = request
        .user_ids
        .iter()
        .map(|id| LaunchPermission {
            user_id: Some(id.clone()),
            group: None,
        })
        .chain(request.user_groups.iter().map(|group| LaunchPermission {
            group: Some(group.clone()),
            user_id: None,
        }))
        .collect();
    if !legacy.is_empty() {
        match request.operation_type.as_deref() {
            Some("add") => add.extend(legacy),
            Some("remove") => remove.extend(legacy),
            Some(other) => {
                return Err(Ec2Error::invalid_value(format!(
                    "Invalid operation type: {other}"
                )))
            }
            None => return Err(Ec2Error::missing("OperationType")),
        }
    }
    let description = request
        .description
        .as_ref()
        .and_then(|d| d.value.clone())
        .or_else(|| {
            (request.attribute.as_deref() == Some("description"))
                .then(|| request.value.clone())
                .flatten()
        });
    if add.is_empty() && remove.is_empty() && description.is_none() {
        return Err(Ec2Error::combination("No attributes specified."));
    }
    let mut permissions = record.launch_permissions.clone();
    for (permission, adding) in add
        .iter()
        .map(|p| (p, true))
        .chain(remove.iter().map(|p| (p, false)))
    {
        match (&permission.group, &permission.user_id) {
            (Some(group), None) if group == "all" => permissions.public = adding,
            (Some(group), None) => return Err(item_error(group, "group")),
            (None, Some(user)) => {
                if !ids::is_account_id(user) {
                    return Err(item_error(user, "userId"));
                }
                if adding {
                    permissions.user_ids.insert(user.clone());
                } else {
                    permissions.user_ids.remove(user);
                }
            }
            _ => return Err(item_error("", "launchPermission (one of Group or UserId)")),
        }
    }
    if let Some(description) = description {
        if description.chars().count() > 255 {
            return Err(Ec2Error::invalid_value(
                "The description is too long: at most 255 characters",
            ));
        }
        record.image.description = Some(description);
    }
    record.image.public = permissions.public;
    record.launch_permissions = permissions;
    Ok(())
}

/// DescribeImageAttribute's answer for one attribute.
pub(crate) fn attribute(record: &ImageRecord, attribute: &str) -> Result<Value, Ec2Error> {
    let image = &record.image;
    let value = |v: Option<&str>| v.map_or_else(|| json!({}), |v| json!({ "Value": v }));
    let (kernel, ramdisk) = match &image.boot_source {
        super::BootSource::Kernel {
            kernel_id,
            ramdisk_id,
        } => (Some(kernel_id.as_str()), ramdisk_id.as_deref()),
        super::BootSource::RootVolume => (None, None),
    };
    let mut answer = json!({ "ImageId": image.image_id });
    let (field, content) = match attribute {
        "launchPermission" => ("LaunchPermissions", record.launch_permissions.to_json()),
        "description" => ("Description", value(image.description.as_deref())),
        "blockDeviceMapping" => (
            "BlockDeviceMappings",
            serde_json::to_value(&image.block_device_mappings)
                .map_err(|e| Ec2Error::internal(e.to_string()))?,
        ),
        "sriovNetSupport" => ("SriovNetSupport", value(image.sriov_net_support.as_deref())),
        "imdsSupport" => ("ImdsSupport", value(image.imds_support.as_deref())),
        "bootMode" => (
            "BootMode",
            image
                .boot_mode
                .map_or_else(|| json!({}), |mode| json!({ "Value": mode })),
        ),
        "kernel" => ("KernelId", value(kernel)),
        "ramdisk" => ("RamdiskId", value(ramdisk)),
        other => {
            return Err(Ec2Error::invalid_value(format!(
                "Value ({other}) for parameter attribute is invalid. Unknown attribute."
            )))
        }
    };
    answer[field] = content;
    Ok(answer)
}
