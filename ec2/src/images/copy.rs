//! CopyImage: the plan (new id, name, encryption of each snapshot copy; launch
//! permissions and tags stay behind) and its execution through [`SnapshotOps`], whose
//! real implementation talks to a running ebsd.

use ebs_blockdev::api::client::{ApiCallError, ApiClient, ApiTarget};
use ebs_blockdev::control::snapshot::{Snapshot, SnapshotState};
use serde::Deserialize;
use serde_json::json;

use super::{validate_image_name, Image, ImageRecord, ImageState};
use crate::error::{Ec2Error, ErrorCode};
use crate::ids::{self, ResourceKind};
use crate::shorthand::lenient;

/// One CopySnapshot call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotCopyRequest {
    pub source_snapshot_id: String,
    pub description: String,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
}

/// What images need from the block service: look a snapshot up (RegisterImage checks
/// sizes and encryption against it), copy one (CopyImage), delete one (undoing a copy
/// that failed half way).
pub trait SnapshotOps {
    fn describe_snapshot(&self, snapshot_id: &str) -> Result<Option<Snapshot>, Ec2Error>;
    fn copy_snapshot(&self, request: &SnapshotCopyRequest) -> Result<Snapshot, Ec2Error>;
    fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), Ec2Error>;
}

/// [`SnapshotOps`] against ebsd's control API (`POST /v1/<Action>`).
pub struct EbsdSnapshots {
    client: ApiClient,
}

impl EbsdSnapshots {
    pub fn new(target: ApiTarget) -> Self {
        EbsdSnapshots {
            client: ApiClient::new(target),
        }
    }
}

/// ebsd already answers with EC2 codes; keep them when this crate knows them.
pub(crate) fn from_api(error: ApiCallError) -> Ec2Error {
    match error {
        ApiCallError::Service { code, message, .. } => match ErrorCode::parse(&code) {
            Some(known) => Ec2Error::new(known, message),
            None => Ec2Error::internal(format!("block service: {code}: {message}")),
        },
        other => Ec2Error::internal(format!("block service: {other}")),
    }
}

fn decode_snapshot(value: serde_json::Value) -> Result<Snapshot, Ec2Error> {
    serde_json::from_value(value)
        .map_err(|error| Ec2Error::internal(format!("block service sent a bad snapshot: {error}")))
}

impl SnapshotOps for EbsdSnapshots {
    fn describe_snapshot(&self, snapshot_id: &str) -> Result<Option<Snapshot>, Ec2Error> {
        match self
            .client
            .call("DescribeSnapshots", &json!({"SnapshotIds": [snapshot_id]}))
        {
            Ok(mut reply) => match reply["Snapshots"].get_mut(0).map(serde_json::Value::take) {
                Some(snapshot) => decode_snapshot(snapshot).map(Some),
                None => Ok(None),
            },
            Err(ApiCallError::Service { code, .. }) if code == "InvalidSnapshot.NotFound" => {
                Ok(None)
            }
            Err(error) => Err(from_api(error)),
        }
    }

    fn copy_snapshot(&self, request: &SnapshotCopyRequest) -> Result<Snapshot, Ec2Error> {
        let mut body = json!({
            "SourceSnapshotId": request.source_snapshot_id,
            "Description": request.description,
            "Encrypted": request.encrypted,
        });
        if let Some(key) = &request.kms_key_id {
            body["KmsKeyId"] = json!(key);
        }
        // EC2's CopySnapshot answers with the new id only; the record comes from
        // DescribeSnapshots.
        let reply = self.client.call("CopySnapshot", &body).map_err(from_api)?;
        let snapshot_id = reply["SnapshotId"].as_str().ok_or_else(|| {
            Ec2Error::internal(format!("CopySnapshot sent no SnapshotId: {reply}"))
        })?;
        self.describe_snapshot(snapshot_id)?
            .ok_or_else(|| Ec2Error::internal(format!("copied snapshot {snapshot_id} vanished")))
    }

    fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), Ec2Error> {
        self.client
            .call("DeleteSnapshot", &json!({"SnapshotId": snapshot_id}))
            .map(|_| ())
            .map_err(from_api)
    }
}

/// CopyImage's parameters (EC2 field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CopyImageRequest {
    pub source_image_id: Option<String>,
    /// Accepted for `aws ec2` compatibility; there is one region.
    pub source_region: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    pub client_token: Option<String>,
    /// EC2 copies user tags only when asked.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub copy_image_tags: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSnapshotCopy {
    pub device_name: String,
    pub request: SnapshotCopyRequest,
}

/// The new image (pending, still naming the source's snapshots) and the copies to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    pub image: Image,
    pub copies: Vec<PlannedSnapshotCopy>,
}

/// Works out a copy of `source` for `caller`, refusing what EC2 refuses.
pub(crate) fn plan_copy(
    source: &ImageRecord,
    request: &CopyImageRequest,
    caller: &str,
) -> Result<CopyPlan, Ec2Error> {
    let name = request
        .name
        .as_deref()
        .ok_or_else(|| Ec2Error::missing("name"))?;
    validate_image_name(name)?;
    let source_image = &source.image;
    if !source.can_launch(caller) {
        return Err(Ec2Error::image_not_found(&source_image.image_id));
    }
    if source_image.state != ImageState::Available {
        return Err(Ec2Error::new(
            ErrorCode::IncorrectState,
            format!(
                "Image {} is not available (state {})",
                source_image.image_id, source_image.state
            ),
        ));
    }
    if request.kms_key_id.is_some() && request.encrypted != Some(true) {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterDependency,
            "The parameter KmsKeyId requires the parameter Encrypted to be set.",
        ));
    }
    if source_image.is_encrypted() && request.encrypted == Some(false) {
        return Err(Ec2Error::combination(format!(
            "Image {} has encrypted snapshots; a copy of it cannot be unencrypted",
            source_image.image_id
        )));
    }
    let mut image = source_image.clone();
    image.image_id = ids::new_id(ResourceKind::Image);
    image.name = name.to_string();
    image.image_location = format!("{caller}/{name}");
    image.description = request.description.clone().or(image.description);
    image.owner_id = caller.to_string();
    image.creation_date = ebs_blockdev::control::ids::now_rfc3339();
    image.public = false;
    image.state = ImageState::Pending;
    image.state_reason = None;
    if request.copy_image_tags != Some(true) {
        image.tags.clear();
    }
    let mut copies = Vec::new();
    for mapping in &mut image.block_device_mappings {
        let Some(ebs) = mapping.ebs.as_mut() else {
            continue;
        };
        let Some(snapshot_id) = ebs.snapshot_id.clone() else {
            continue;
        };
        let encrypted = ebs.encrypted == Some(true) || request.encrypted == Some(true);
        let kms_key_id = if encrypted {
            request.kms_key_id.clone().or(ebs.kms_key_id.clone())
        } else {
            None
        };
        ebs.encrypted = Some(encrypted);
        ebs.kms_key_id = kms_key_id.clone();
        copies.push(PlannedSnapshotCopy {
            device_name: mapping.device_name.clone(),
            request: SnapshotCopyRequest {
                description: format!(
                    "Copied for DestinationAmi {} from SourceAmi {} for SourceSnapshot {snapshot_id}",
                    image.image_id, source_image.image_id
                ),
                source_snapshot_id: snapshot_id,
                encrypted,
                kms_key_id,
            },
        });
    }
    Ok(CopyPlan { image, copies })
}

/// Makes the planned snapshot copies and returns the image naming them (available when
/// every copy completed, pending otherwise). On a failure the copies made so far are
/// deleted, so a failed CopyImage leaves nothing behind.
pub(crate) fn execute_copy(
    plan: &CopyPlan,
    snapshots: &dyn SnapshotOps,
) -> Result<Image, Ec2Error> {
    let mut image = plan.image.clone();
    let mut made: Vec<String> = Vec::new();
    let mut all_completed = true;
    for copy in &plan.copies {
        let snapshot = match snapshots.copy_snapshot(&copy.request) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                for snapshot_id in &made {
                    if let Err(cleanup) = snapshots.delete_snapshot(snapshot_id) {
                        log::warn!(
                            "could not delete {snapshot_id} after a failed image copy: {cleanup}"
                        );
                    }
                }
                return Err(error);
            }
        };
        all_completed &= snapshot.state == SnapshotState::Completed;
        made.push(snapshot.snapshot_id.clone());
        if let Some(ebs) = image
            .block_device_mappings
            .iter_mut()
            .find(|mapping| mapping.device_name == copy.device_name)
            .and_then(|mapping| mapping.ebs.as_mut())
        {
            ebs.snapshot_id = Some(snapshot.snapshot_id);
        }
    }
    image.state = if all_completed {
        ImageState::Available
    } else {
        ImageState::Pending
    };
    Ok(image)
}
