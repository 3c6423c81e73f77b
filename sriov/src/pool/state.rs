//! The pool's on-disk state: a JSON file replaced atomically (write a temporary file, fsync
//! it, rename it over the old one, fsync the directory), guarded by an flock'ed lock file so
//! that concurrent processes see and change it one at a time, and the liveness test for the
//! processes that hold leases.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::address::{MacAddress, PciAddress};
use crate::error::{Error, Result};

const STATE_FILE: &str = "pool.json";
const STATE_TMP_FILE: &str = "pool.json.tmp";
const LOCK_FILE: &str = "pool.lock";
const STATE_VERSION: u32 = 1;

/// One lease as stored: enough to undo everything the lease did, even after the process
/// that took it is gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub(crate) vf: PciAddress,
    pub(crate) pf: PciAddress,
    pub(crate) pf_ifname: String,
    pub(crate) vf_index: u32,
    pub(crate) iommu_group: u32,
    pub(crate) instance_id: String,
    pub(crate) mac: MacAddress,
    pub(crate) holder_pid: u32,
    /// The holder's start time (clock ticks since boot), so that a recycled pid is not taken
    /// for the holder.
    pub(crate) holder_start_time: Option<u64>,
    /// The driver the VF goes back to on release.
    pub(crate) original_driver: Option<String>,
    /// Set when a release was attempted and failed part-way; such a lease is never handed
    /// out and every later reconcile retries the release.
    #[serde(default)]
    pub(crate) release_pending: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct PoolState {
    pub(crate) version: u32,
    pub(crate) leases: Vec<LeaseRecord>,
}

/// The state directory, with the lock held for as long as this value lives.
pub(crate) struct LockedState {
    dir: PathBuf,
    // Closing the file releases the flock.
    _lock: File,
}

impl LockedState {
    /// Creates `dir` if needed and waits for the exclusive lock.
    pub(crate) fn lock(dir: &Path) -> Result<LockedState> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::PoolIo { path, source }
        };
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        flock(&lock, libc::LOCK_EX).map_err(io_error(&lock_path))?;
        Ok(LockedState {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub(crate) fn load(&self) -> Result<PoolState> {
        let path = self.dir.join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(PoolState {
                    version: STATE_VERSION,
                    leases: Vec::new(),
                })
            }
            Err(source) => return Err(Error::PoolIo { path, source }),
        };
        let state: PoolState = serde_json::from_str(&text).map_err(|error| Error::PoolCorrupt {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(Error::PoolCorrupt {
                path,
                reason: format!(
                    "version {} (this build reads version {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(state)
    }

    /// Replaces the state file so that a crash at any point leaves either the old or the
    /// new content, never a mix.
    pub(crate) fn save(&self, state: &PoolState) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp_path = self.dir.join(STATE_TMP_FILE);
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::PoolIo { path, source }
        };
        let text = serde_json::to_string_pretty(state).map_err(|error| Error::PoolCorrupt {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        let mut tmp = File::create(&tmp_path).map_err(io_error(&tmp_path))?;
        tmp.write_all(text.as_bytes())
            .and_then(|()| tmp.write_all(b"\n"))
            .and_then(|()| tmp.sync_all())
            .map_err(io_error(&tmp_path))?;
        drop(tmp);
        fs::rename(&tmp_path, &path).map_err(io_error(&path))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(&self.dir))
    }
}

fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: the descriptor belongs to `file`, which is open for the whole call; flock
        // touches no memory.
        let result = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// The start time of process `pid` from /proc/PID/stat (field 22), if it exists.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that took a lease still runs. A pid that now belongs to a process
/// started at another time is a recycled pid, and the holder is gone.
pub(crate) fn holder_is_alive(pid: u32, start_time: Option<u64>) -> bool {
    let Ok(pid_value) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid_value <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that `pid_value` (a positive pid, so never a process
    // group) exists and may be signalled; nothing is delivered.
    let result = unsafe { libc::kill(pid_value, 0) };
    let exists = result == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match (start_time, process_start_time(pid)) {
        (Some(recorded), Some(current)) => recorded == current,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::DEAD_PID;

    #[test]
    fn state_survives_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let locked = LockedState::lock(dir.path()).unwrap();
        assert!(locked.load().unwrap().leases.is_empty());
        let record = LeaseRecord {
            vf: "0000:01:10.0".parse().unwrap(),
            pf: "0000:01:00.0".parse().unwrap(),
            pf_ifname: "eth0".to_string(),
            vf_index: 0,
            iommu_group: 9,
            instance_id: "i-0123".to_string(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            holder_pid: 42,
            holder_start_time: Some(7),
            original_driver: Some("igbvf".to_string()),
            release_pending: false,
        };
        let state = PoolState {
            version: STATE_VERSION,
            leases: vec![record.clone()],
        };
        locked.save(&state).unwrap();
        assert!(!dir.path().join(STATE_TMP_FILE).exists());
        drop(locked);
        let reloaded = LockedState::lock(dir.path()).unwrap().load().unwrap();
        assert_eq!(reloaded.leases, vec![record]);
    }

    #[test]
    fn corrupt_state_is_an_error_not_an_empty_pool() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(STATE_FILE),
            "{\"version\": 1, \"leases\": [",
        )
        .unwrap();
        let error = LockedState::lock(dir.path()).unwrap().load().unwrap_err();
        assert!(matches!(error, Error::PoolCorrupt { .. }), "{error:?}");
    }

    #[test]
    fn lock_excludes_a_second_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let locked = LockedState::lock(dir.path()).unwrap();
        let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
        let error = flock(&other, libc::LOCK_EX | libc::LOCK_NB).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EWOULDBLOCK));
        drop(locked);
        flock(&other, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    }

    #[test]
    fn liveness_tells_running_dead_and_recycled_holders_apart() {
        let me = std::process::id();
        let my_start = process_start_time(me);
        assert!(my_start.is_some());
        assert!(holder_is_alive(me, my_start));
        assert!(!holder_is_alive(me, my_start.map(|start| start + 1)));
        assert!(!holder_is_alive(DEAD_PID, None));
        assert!(!holder_is_alive(0, None));
    }
}
