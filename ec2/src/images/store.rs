//! The image store: one manifest object per AMI, `images/<ami-id>.json`, in the object
//! store ebsd keeps snapshots in (same location string as `ebsd --snapshot-store`: a
//! directory, or `s3://bucket[/prefix]` with the AWS_* environment), through
//! ebs-blockdev's `SnapshotStorage` facade.
//!
//! Writes are whole-object puts, which are atomic in both back ends (object_store's local
//! directory writes a staging file and renames it; an S3 PUT replaces the object whole).
//! A mutex orders read-modify-write sequences within this process; one front door per
//! object store is assumed, as ebsd assumes one ebsd per store.

use std::sync::{Arc, Mutex, MutexGuard};

use ebs_blockdev::control::snapshot::SnapshotState;
use ebs_blockdev::snapshot::{SnapshotStorage, StorageError};

use super::copy::{execute_copy, plan_copy, CopyImageRequest, SnapshotOps};
use super::describe::{self, DescribeImagesRequest, ModifyImageAttributeRequest};
use super::validate::{build_image, RegisterImageRequest};
use super::{Image, ImageRecord, ImageState, LaunchPermissions, StateReason};
use crate::error::{Ec2Error, ErrorCode};
use crate::ids::{self, ResourceKind};

const PREFIX: &str = "images";

fn key(image_id: &str) -> String {
    format!("{PREFIX}/{image_id}.json")
}

fn storage_error(error: StorageError) -> Ec2Error {
    Ec2Error::internal(format!("image store: {error}"))
}

pub struct ImageStore {
    storage: Arc<SnapshotStorage>,
    lock: Mutex<()>,
}

impl ImageStore {
    /// Opens the store at `location` (see the module documentation).
    pub fn open(location: &str) -> Result<ImageStore, Ec2Error> {
        Ok(ImageStore::with_storage(Arc::new(
            SnapshotStorage::open(location).map_err(storage_error)?,
        )))
    }

    /// Shares an already open object store.
    pub fn with_storage(storage: Arc<SnapshotStorage>) -> ImageStore {
        ImageStore {
            storage,
            lock: Mutex::new(()),
        }
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn load(&self, image_id: &str) -> Result<Option<ImageRecord>, Ec2Error> {
        let Some(bytes) = self.storage.get(&key(image_id)).map_err(storage_error)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|error| {
            Ec2Error::internal(format!("manifest of {image_id} is corrupt: {error}"))
        })
    }

    /// Every readable manifest; a corrupt one is logged and skipped so one bad object
    /// does not hide every other image.
    fn load_all(&self) -> Result<Vec<ImageRecord>, Ec2Error> {
        let mut records = Vec::new();
        for object in self.storage.list(PREFIX).map_err(storage_error)? {
            let Some(image_id) = object
                .strip_prefix(&format!("{PREFIX}/"))
                .and_then(|name| name.strip_suffix(".json"))
            else {
                continue;
            };
            match self.load(image_id) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(error) => log::warn!("skipping image {image_id}: {error}"),
            }
        }
        Ok(records)
    }

    fn save(&self, record: &ImageRecord) -> Result<(), Ec2Error> {
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|error| Ec2Error::internal(format!("encode manifest: {error}")))?;
        self.storage
            .put(&key(&record.image.image_id), bytes)
            .map_err(storage_error)
    }

    /// The record of `image_id`, whoever owns it (for the launcher and the owner's own
    /// operations); callers acting for an account use `check_launch_permission`.
    pub fn get(&self, image_id: &str) -> Result<ImageRecord, Ec2Error> {
        ids::validate(ResourceKind::Image, image_id)?;
        self.load(image_id)?
            .filter(|record| record.image.state != ImageState::Deregistered)
            .ok_or_else(|| Ec2Error::image_not_found(image_id))
    }

    fn check_unique_name(&self, owner: &str, name: &str) -> Result<(), Ec2Error> {
        if let Some(existing) = self
            .load_all()?
            .into_iter()
            .find(|record| record.image.owner_id == owner && record.image.name == name)
        {
            return Err(Ec2Error::new(
                ErrorCode::InvalidAmiNameDuplicate,
                format!(
                    "AMI name {name} is already in use by AMI {}",
                    existing.image.image_id
                ),
            ));
        }
        Ok(())
    }

    /// RegisterImage for `owner`. The image is available at once, or pending while a
    /// snapshot is (CreateImage registers before its snapshots complete; see
    /// `refresh_state`).
    pub fn register(
        &self,
        request: &RegisterImageRequest,
        owner: &str,
        snapshots: &dyn SnapshotOps,
    ) -> Result<Image, Ec2Error> {
        let image = build_image(request, owner, snapshots)?;
        let _guard = self.guard();
        self.check_unique_name(owner, &image.name)?;
        self.save(&ImageRecord {
            image: image.clone(),
            launch_permissions: LaunchPermissions::default(),
        })?;
        Ok(image)
    }

    /// DescribeImages as `caller`.
    pub fn describe(
        &self,
        request: &DescribeImagesRequest,
        caller: &str,
    ) -> Result<Vec<Image>, Ec2Error> {
        describe::describe(self.load_all()?, request, caller)
    }

    /// A record as `caller` may see it: not visible is not found, as in EC2.
    fn visible(&self, image_id: &str, caller: &str) -> Result<ImageRecord, Ec2Error> {
        let record = self.get(image_id)?;
        if record.can_launch(caller) {
            Ok(record)
        } else {
            Err(Ec2Error::image_not_found(image_id))
        }
    }

    fn owned(&self, image_id: &str, caller: &str) -> Result<ImageRecord, Ec2Error> {
        let record = self.visible(image_id, caller)?;
        if record.image.owner_id != caller {
            return Err(Ec2Error::new(
                ErrorCode::AuthFailure,
                format!("Not authorized for image:{image_id}"),
            ));
        }
        Ok(record)
    }

    /// DeregisterImage: the manifest goes, the snapshots stay (the returned image, in
    /// state `deregistered`, names them).
    pub fn deregister(&self, image_id: &str, caller: &str) -> Result<Image, Ec2Error> {
        let _guard = self.guard();
        let mut record = self.owned(image_id, caller)?;
        self.storage.delete(&key(image_id)).map_err(storage_error)?;
        record.image.state = ImageState::Deregistered;
        Ok(record.image)
    }

    /// ModifyImageAttribute (launch permissions, description); owner only.
    pub fn modify_attribute(
        &self,
        request: &ModifyImageAttributeRequest,
        caller: &str,
    ) -> Result<(), Ec2Error> {
        let image_id = request
            .image_id
            .as_deref()
            .ok_or_else(|| Ec2Error::missing("ImageId"))?;
        let _guard = self.guard();
        let mut record = self.owned(image_id, caller)?;
        describe::modify(&mut record, request)?;
        self.save(&record)
    }

    /// DescribeImageAttribute; launch permissions are shown to the owner only.
    pub fn describe_attribute(
        &self,
        image_id: &str,
        attribute: &str,
        caller: &str,
    ) -> Result<serde_json::Value, Ec2Error> {
        let record = if attribute == "launchPermission" {
            self.owned(image_id, caller)?
        } else {
            self.visible(image_id, caller)?
        };
        describe::attribute(&record, attribute)
    }

    /// The launch-time check: `account` may launch the image and it is available.
    pub fn check_launch_permission(
        &self,
        image_id: &str,
        account: &str,
    ) -> Result<Image, Ec2Error> {
        let record = self.get(image_id)?;
        if !record.can_launch(account) {
            return Err(Ec2Error::new(
                ErrorCode::AuthFailure,
                format!("Not authorized for images: [{image_id}]"),
            ));
        }
        if record.image.state != ImageState::Available {
            return Err(Ec2Error::new(
                ErrorCode::InvalidAmiIdUnavailable,
                format!(
                    "AMI '{image_id}' is {}, and cannot be run",
                    record.image.state
                ),
            ));
        }
        Ok(record.image)
    }

    /// CopyImage as `caller`: the new image is saved as pending first (so its name is
    /// taken and DescribeImages shows it), then the snapshots are copied. A failed copy
    /// removes the new image again.
    pub fn copy_image(
        &self,
        request: &CopyImageRequest,
        caller: &str,
        snapshots: &dyn SnapshotOps,
    ) -> Result<Image, Ec2Error> {
        let source_id = request
            .source_image_id
            .as_deref()
            .ok_or_else(|| Ec2Error::missing("SourceImageId"))?;
        let plan = {
            let _guard = self.guard();
            let source = self.visible(source_id, caller)?;
            let plan = plan_copy(&source, request, caller)?;
            self.check_unique_name(caller, &plan.image.name)?;
            self.save(&ImageRecord {
                image: plan.image.clone(),
                launch_permissions: LaunchPermissions::default(),
            })?;
            plan
        };
        match execute_copy(&plan, snapshots) {
            Ok(image) => {
                let _guard = self.guard();
                self.save(&ImageRecord {
                    image: image.clone(),
                    launch_permissions: LaunchPermissions::default(),
                })?;
                Ok(image)
            }
            Err(error) => {
                let _guard = self.guard();
                self.storage
                    .delete(&key(&plan.image.image_id))
                    .map_err(storage_error)?;
                Err(error)
            }
        }
    }

    /// Sets an image's state (e.g. `failed` with a reason when CreateImage fails).
    pub fn set_state(
        &self,
        image_id: &str,
        state: ImageState,
        reason: Option<StateReason>,
    ) -> Result<Image, Ec2Error> {
        let _guard = self.guard();
        let mut record = self.get(image_id)?;
        record.image.state = state;
        record.image.state_reason = reason;
        self.save(&record)?;
        Ok(record.image)
    }

    /// A pending image becomes available when all its snapshots completed, or failed
    /// when one of them failed or vanished.
    pub fn refresh_state(
        &self,
        image_id: &str,
        snapshots: &dyn SnapshotOps,
    ) -> Result<Image, Ec2Error> {
        let record = self.get(image_id)?;
        if record.image.state != ImageState::Pending {
            return Ok(record.image);
        }
        let mut all_completed = true;
        for snapshot_id in record.image.snapshot_ids() {
            match snapshots.describe_snapshot(&snapshot_id)?.map(|s| s.state) {
                Some(SnapshotState::Completed) => {}
                Some(SnapshotState::Pending) => all_completed = false,
                Some(SnapshotState::Error) | None => {
                    return self.set_state(
                        image_id,
                        ImageState::Failed,
                        Some(StateReason {
                            code: "Client.InvalidSnapshot.NotFound".into(),
                            message: format!("Snapshot {snapshot_id} failed or does not exist"),
                        }),
                    )
                }
            }
        }
        if all_completed {
            self.set_state(image_id, ImageState::Available, None)
        } else {
            Ok(record.image)
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
