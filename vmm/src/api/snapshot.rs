//! Request bodies of the pause and snapshot endpoints (Firecracker's
//! shapes: `PATCH /vm`, `PUT /snapshot/create`, `PUT /snapshot/load`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::snapshot::{DriveOverride, NetOverride};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VmRunState {
    Paused,
    Resumed,
}

/// `PATCH /vm`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateBody {
    pub state: VmRunState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SnapshotType {
    /// Every page of guest memory (zero pages as holes).
    #[default]
    Full,
}

/// `PUT /snapshot/create`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
    #[serde(default)]
    pub snapshot_type: SnapshotType,
}

/// `PUT /snapshot/load`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
    /// Run the guest at once; otherwise it stays paused until
    /// `PATCH /vm {"state": "Resumed"}` (Firecracker's default).
    #[serde(default)]
    pub resume_vm: bool,
    /// New backend locations for drives (file, NBD endpoint, token).
    #[serde(default)]
    pub drive_overrides: Vec<DriveOverride>,
    /// New taps for interfaces.
    #[serde(default)]
    pub network_overrides: Vec<NetOverride>,
    /// Where the console goes from now on (default: the snapshot's).
    #[serde(default)]
    pub serial_output_path: Option<PathBuf>,
}
