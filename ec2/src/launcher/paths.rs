//! The state directory: one per front door, everything it owns lives under it.
//!
//! ```text
//! STATE/
//!   lock                      flock: one read-modify-write of records at a time
//!   store/                    object store: ebsd's snapshots, AMI manifests, kernels
//!   ebsd/{data,api.sock,nbd.sock,ebsd.log}
//!   instances/<i-...>.json    instance records (InstanceStore)
//!   run/<i-...>/              console.log, console.in (FIFO), vmm.sock, vmm.log,
//!                             imds.json, supervisor.log
//! ```

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::Ec2Error;

#[derive(Debug, Clone)]
pub struct StatePaths {
    root: PathBuf,
}

impl StatePaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StatePaths { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    pub fn ebsd_dir(&self) -> PathBuf {
        self.root.join("ebsd")
    }

    pub fn ebsd_api(&self) -> PathBuf {
        self.ebsd_dir().join("api.sock")
    }

    pub fn ebsd_nbd(&self) -> PathBuf {
        self.ebsd_dir().join("nbd.sock")
    }

    pub fn instances(&self) -> PathBuf {
        self.root.join("instances")
    }

    pub fn run_dir(&self, instance_id: &str) -> PathBuf {
        self.root.join("run").join(instance_id)
    }

    /// Take the state directory's lock (released when the guard drops).
    pub fn lock(&self) -> Result<StateLock, Ec2Error> {
        std::fs::create_dir_all(&self.root).map_err(|e| io_error(&self.root, e))?;
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        // SAFETY: flock on an fd we own; blocks until the lock is free.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_error(&path, std::io::Error::last_os_error()));
        }
        Ok(StateLock { _file: file })
    }
}

/// Held while records are read, changed and written back.
pub struct StateLock {
    _file: File,
}

pub fn io_error(path: &Path, error: std::io::Error) -> Ec2Error {
    Ec2Error::internal(format!("{}: {error}", path.display()))
}
