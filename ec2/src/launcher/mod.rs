//! The launcher: what the front door does with the records of `images` and
//! `instances`. It starts the block service on demand, makes volumes from an image's
//! snapshots, gives each instance a tap on the host's bridge and a metadata record,
//! and runs one `vmm` per instance under a small supervisor process
//! (`ec2 __supervise`), which outlives the CLI, restarts the VMM on a guest reboot or
//! a crash (auto-recovery), and finishes stops and terminations.
//!
//! Verbs return EC2's response JSON. Every read-modify-write of a record holds the
//! state directory's lock, so the CLI and the supervisors can run side by side.

pub mod boot_volume;
pub mod client_token;
pub mod enhanced;
pub mod hibernate;
pub mod images;
pub mod kernels;
pub mod lifecycle;
pub mod network;
pub mod paths;
pub mod qos;
pub mod reachability;
pub mod run;
pub mod services;
pub mod supervisor;
pub mod vf_dhcp;

use std::sync::Arc;

use ebs_blockdev::snapshot::storage::SnapshotStorage;
use serde::{Deserialize, Serialize};

use crate::error::Ec2Error;
use crate::images::{EbsdSnapshots, ImageStore};
use crate::instances::{InstanceRecord, InstanceStore};
use kernels::Kernels;
use paths::StatePaths;
use services::BlockService;

/// The zone this host is (ebsd's default zone).
pub const ZONE: &str = "local-1a";

/// What the launcher keeps in an instance record's `launcher` slot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct LaunchState {
    pub kernel_id: String,
    #[serde(default)]
    pub ramdisk_id: Option<String>,
    pub kernel_parameters: String,
    /// The image has no kernel: each VMM start boots the newest kernel in the root
    /// volume's /boot (boot_volume.rs); `kernel_id` is empty then.
    #[serde(default)]
    pub boot_from_volume: bool,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub ip: String,
    pub mac: String,
    pub tap: String,
    /// The primary ENI: emulated (the tap) or enhanced (a VF leased by the VMM).
    #[serde(default)]
    pub eni: enhanced::EniKind,
    /// The VF pool an enhanced ENI leases from (fixed at launch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf_pool: Option<std::path::PathBuf>,
    /// In boot order: the root volume first.
    pub volumes: Vec<AttachedVolume>,
    #[serde(default)]
    pub supervisor_pid: Option<u32>,
    #[serde(default)]
    pub vmm_pid: Option<u32>,
    /// Restarts after a VMM crash (auto-recovery), for describe-instance-status.
    #[serde(default)]
    pub recoveries: u32,
    #[serde(default)]
    pub last_exit: Option<String>,
    /// While hibernated: the encrypted volume holding the VM's snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation_volume: Option<String>,
    /// The restored VMM maps this memory file; removed when the VMM is gone.
    #[serde(default)]
    pub restored_from_hibernation: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AttachedVolume {
    pub device_name: String,
    pub volume_id: String,
    /// `vol-.../TOKEN`: the NBD export of the attachment.
    pub export: String,
    pub delete_on_termination: bool,
}

impl LaunchState {
    pub fn of(record: &InstanceRecord) -> Result<LaunchState, Ec2Error> {
        serde_json::from_value(record.launcher.clone()).map_err(|e| {
            Ec2Error::internal(format!(
                "instance {}: launcher state unreadable: {e}",
                record.instance.instance_id
            ))
        })
    }

    pub fn store(&self, record: &mut InstanceRecord) {
        record.launcher = serde_json::to_value(self).unwrap_or_default();
    }
}

pub struct Launcher {
    pub paths: StatePaths,
    pub account: String,
    ebs: BlockService,
    images: ImageStore,
    kernels: Kernels,
    instances: InstanceStore,
}

impl Launcher {
    /// Open the state directory, starting the block service if needed.
    pub fn open(paths: StatePaths, account: &str) -> Result<Launcher, Ec2Error> {
        std::fs::create_dir_all(paths.store()).map_err(|e| paths::io_error(&paths.store(), e))?;
        let ebs = BlockService::ensure(&paths)?;
        let location = paths.store().to_string_lossy().into_owned();
        let storage = Arc::new(
            SnapshotStorage::open(&location)
                .map_err(|e| Ec2Error::internal(format!("object store {location}: {e}")))?,
        );
        Ok(Launcher {
            images: ImageStore::with_storage(Arc::clone(&storage)),
            kernels: Kernels::new(storage, paths.root().join("cache")),
            instances: InstanceStore::open(paths.instances())?,
            ebs,
            account: account.to_string(),
            paths,
        })
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn instances(&self) -> &InstanceStore {
        &self.instances
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    pub fn ebs(&self) -> &BlockService {
        &self.ebs
    }

    pub fn snapshot_ops(&self) -> EbsdSnapshots {
        EbsdSnapshots::new(self.ebs.target())
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// ISO-8601 UTC with milliseconds, as EC2 prints times.
pub fn iso_now() -> String {
    ebs_blockdev::control::ids::now_rfc3339()
}
