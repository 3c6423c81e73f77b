//! The VMM thread's side of pause/resume, snapshot create and restore.
//! Everything runs on the VMM thread, which owns the VM: no request can
//! race with another.

use std::path::PathBuf;

use serde_json::json;

use super::{open_serial, Controller, RuntimeError};
use crate::api::snapshot::{SnapshotCreateParams, SnapshotLoadParams, VmRunState};
use crate::api::ApiResponse;
use crate::snapshot::{self, RestoreOverrides, SnapshotError};

/// A restore asked for on the command line (or through the API).
#[derive(Clone, Debug)]
pub struct RestoreRequest {
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
    pub overrides: RestoreOverrides,
    /// Devices as full flags (CLI): checked against the snapshot's list.
    pub drives: Vec<crate::config::DriveConfig>,
    pub net: Vec<crate::config::NetConfig>,
    pub resume: bool,
}

fn snapshot_error(e: &SnapshotError) -> ApiResponse {
    ApiResponse::error(400, e.to_string(), None)
}

impl Controller {
    pub(super) fn patch_vm(&mut self, state: VmRunState) -> ApiResponse {
        let Some(vm) = self.vm.as_mut() else {
            return ApiResponse::error(400, "the instance is not running", None);
        };
        let result = match state {
            VmRunState::Paused => vm.pause(),
            VmRunState::Resumed if !vm.is_paused() => Ok(()),
            VmRunState::Resumed => vm.resume(),
        };
        match result {
            Ok(()) => ApiResponse::no_content(),
            Err(e) => ApiResponse::error(400, e.to_string(), None),
        }
    }

    pub(super) fn create_snapshot(&mut self, p: &SnapshotCreateParams) -> ApiResponse {
        let Some(vm) = self.vm.as_ref() else {
            return ApiResponse::error(400, "the instance is not running", None);
        };
        // As built (not re-validated: a restored VM's kernel image may be
        // gone, and it is not needed again).
        let cfg = crate::config::VmConfig {
            boot_source: self
                .boot
                .clone()
                .unwrap_or_else(|| crate::config::BootSource {
                    kernel_image_path: PathBuf::new(),
                    initrd_path: None,
                    boot_args: None,
                }),
            machine_config: self.machine.clone(),
            serial: self.serial.clone(),
            drives: self.drives.clone(),
            net: self.net.clone(),
            imds: self.imds.clone(),
            vfs: self.vfs.clone(),
        };
        match snapshot::create(vm, &cfg, &p.snapshot_path, &p.mem_file_path) {
            Ok(stats) => ApiResponse::ok(json!(stats)),
            Err(e) => snapshot_error(&e),
        }
    }

    pub(super) fn load_snapshot(&mut self, p: SnapshotLoadParams) -> ApiResponse {
        let req = RestoreRequest {
            snapshot_path: p.snapshot_path,
            mem_file_path: p.mem_file_path,
            overrides: RestoreOverrides {
                drives: p.drive_overrides,
                net: p.network_overrides,
                serial_output: p.serial_output_path,
                ..Default::default()
            },
            drives: Vec::new(),
            net: Vec::new(),
            resume: p.resume_vm,
        };
        match self.restore_vm(&req) {
            Ok(()) => ApiResponse::no_content(),
            Err(RuntimeError::Snapshot(e)) => snapshot_error(&e),
            Err(e) => ApiResponse::error(400, format!("cannot restore: {e}"), None),
        }
    }

    /// Build the VM from a snapshot; it becomes this controller's VM and
    /// its configuration this controller's configuration.
    pub(super) fn restore_vm(&mut self, req: &RestoreRequest) -> Result<(), RuntimeError> {
        let snap = snapshot::read(&req.snapshot_path)?;
        let mut overrides = RestoreOverrides::from_devices(&snap.config, &req.drives, &req.net)?;
        overrides
            .drives
            .extend(req.overrides.drives.iter().cloned());
        overrides.net.extend(req.overrides.net.iter().cloned());
        overrides.serial_output = req.overrides.serial_output.clone();
        overrides.vcpu_count = req.overrides.vcpu_count;
        overrides.mem_size_mib = req.overrides.mem_size_mib;
        let cfg = overrides.apply(&snap.config)?;
        let out = open_serial(&cfg)?;
        let (mut vm, cfg, _stats) =
            snapshot::restore(&snap, &req.mem_file_path, &overrides, out, self.start)?;
        if req.resume {
            vm.resume()?;
        }
        self.machine = cfg.machine_config.clone();
        self.boot = Some(cfg.boot_source.clone());
        self.serial = cfg.serial.clone();
        self.drives = cfg.drives.clone();
        self.net = cfg.net.clone();
        self.imds = cfg.imds.clone();
        self.vfs = cfg.vfs.clone();
        self.vm = Some(vm);
        Ok(())
    }
}
