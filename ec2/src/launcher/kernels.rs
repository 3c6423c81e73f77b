//! Kernels and ramdisks (EC2's `aki-`/`ari-` ids) kept in the object store beside the
//! AMI manifests and snapshots, so an image copied to another host's store carries
//! what it boots. Each kernel also holds its default command line. The launcher
//! keeps a local copy under `STATE/cache/` for `vmm` to read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ebs_blockdev::snapshot::storage::SnapshotStorage;
use serde::{Deserialize, Serialize};

use super::paths::io_error;
use crate::error::{Ec2Error, ErrorCode};
use crate::ids::{new_id, ResourceKind};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct KernelMeta {
    pub kernel_id: String,
    /// The kernel command line the image boots with (root device, console, ...).
    pub kernel_parameters: String,
    pub sha256: String,
}

pub struct Kernels {
    storage: Arc<SnapshotStorage>,
    cache: PathBuf,
}

fn storage_error(e: impl std::fmt::Display) -> Ec2Error {
    Ec2Error::internal(format!("object store: {e}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Kernels {
    pub fn new(storage: Arc<SnapshotStorage>, cache: PathBuf) -> Self {
        Kernels { storage, cache }
    }

    /// Store a kernel file; returns its `aki-` id.
    pub fn put_kernel(&self, file: &Path, parameters: &str) -> Result<KernelMeta, Ec2Error> {
        let bytes = std::fs::read(file).map_err(|e| io_error(file, e))?;
        let meta = KernelMeta {
            kernel_id: new_id(ResourceKind::Kernel),
            kernel_parameters: parameters.to_string(),
            sha256: sha256_hex(&bytes),
        };
        self.storage
            .put(&format!("kernels/{}/image", meta.kernel_id), bytes)
            .map_err(storage_error)?;
        let json = serde_json::to_vec(&meta).map_err(storage_error)?;
        self.storage
            .put(&format!("kernels/{}/meta.json", meta.kernel_id), json)
            .map_err(storage_error)?;
        Ok(meta)
    }

    /// Store a ramdisk file; returns its `ari-` id.
    pub fn put_ramdisk(&self, file: &Path) -> Result<String, Ec2Error> {
        let bytes = std::fs::read(file).map_err(|e| io_error(file, e))?;
        let id = new_id(ResourceKind::Ramdisk);
        self.storage
            .put(&format!("ramdisks/{id}"), bytes)
            .map_err(storage_error)?;
        Ok(id)
    }

    pub fn kernel_meta(&self, kernel_id: &str) -> Result<KernelMeta, Ec2Error> {
        let bytes = self
            .storage
            .get(&format!("kernels/{kernel_id}/meta.json"))
            .map_err(storage_error)?
            .ok_or_else(|| not_found("kernel", kernel_id))?;
        serde_json::from_slice(&bytes).map_err(storage_error)
    }

    /// A local file with the kernel (fetched from the store once).
    pub fn kernel_file(&self, kernel_id: &str) -> Result<PathBuf, Ec2Error> {
        self.cached(&format!("kernels/{kernel_id}/image"), kernel_id)
    }

    pub fn ramdisk_file(&self, ramdisk_id: &str) -> Result<PathBuf, Ec2Error> {
        self.cached(&format!("ramdisks/{ramdisk_id}"), ramdisk_id)
    }

    fn cached(&self, key: &str, id: &str) -> Result<PathBuf, Ec2Error> {
        let path = self.cache.join(id);
        if path.is_file() {
            return Ok(path);
        }
        std::fs::create_dir_all(&self.cache).map_err(|e| io_error(&self.cache, e))?;
        let bytes = self
            .storage
            .get(key)
            .map_err(storage_error)?
            .ok_or_else(|| {
                not_found(
                    if id.starts_with("aki-") {
                        "kernel"
                    } else {
                        "ramdisk"
                    },
                    id,
                )
            })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(|e| io_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
        Ok(path)
    }
}

fn not_found(kind: &str, id: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::InvalidParameterValue,
        format!("The {kind} '{id}' does not exist"),
    )
}
