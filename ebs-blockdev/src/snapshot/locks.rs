//! Coordination of several ebsd daemons that share one object store, kept in the store
//! itself so that any S3-compatible bucket works:
//!
//! ```text
//! locks/<lock-id>.json          {"Kind": "shared"|"exclusive", "Owner", "RefreshedAt"}
//! roots/volumes/<volume-id>.json  block hashes a volume still needs (its snapshot base
//!                               and hydration source), published by the volume's ebsd
//! ```
//!
//! Anything that writes blocks or manifests, or publishes a root (uploads, copies,
//! volumes made from snapshots), holds a *shared* lock; garbage collection needs an
//! *exclusive* one. Taking a lock writes it and then lists the others: two parties that
//! race both write before they list, so at least one sees the other and backs off (an
//! uploader waits, a collection is skipped). A lock not refreshed for [`LEASE`] belongs
//! to a daemon that died and is ignored (and removed by the next collection). The
//! listing must be consistent after a write, which local directories and S3 (since 2020)
//! give.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{SnapshotError, SnapshotStorage};
use crate::control::ids::new_secret_token;
use crate::qos::{Clock, SystemClock};

/// A lock not refreshed for this long is ignored; holders refresh well within it.
pub const LEASE: Duration = Duration::from_secs(600);
/// How long a shared lock waits for a collection holding the exclusive lock.
const SHARED_WAIT: Duration = Duration::from_secs(60);
const LOCKS: &str = "locks";
pub const ROOTS: &str = "roots/volumes";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LockRecord {
    pub kind: LockKind,
    pub owner: String,
    /// Seconds since the Unix epoch.
    pub refreshed_at: f64,
}

impl LockRecord {
    fn is_live(&self, now: f64) -> bool {
        now < self.refreshed_at + LEASE.as_secs_f64()
    }
}

/// Locks this process holds, refreshed by [`SnapshotStorage::refresh_locks`].
#[derive(Default)]
pub struct HeldLocks {
    held: Mutex<BTreeMap<String, LockRecord>>,
}

impl HeldLocks {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, LockRecord>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn lock_key(id: &str) -> String {
    format!("{LOCKS}/{id}.json")
}

pub fn root_key(volume_id: &str) -> String {
    format!("{ROOTS}/{volume_id}.json")
}

fn now() -> f64 {
    SystemClock.now().as_secs_f64()
}

/// A lock in the store, released (deleted) when dropped.
pub struct StoreLock {
    storage: Arc<SnapshotStorage>,
    id: String,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        self.storage.held_locks.lock().remove(&self.id);
        if let Err(error) = self.storage.delete(&lock_key(&self.id)) {
            log::warn!("cannot release store lock {}: {error}", self.id);
        }
    }
}

impl SnapshotStorage {
    fn write_lock(&self, id: &str, record: &LockRecord) -> Result<(), SnapshotError> {
        let encoded = serde_json::to_vec(record)
            .map_err(|error| SnapshotError::Corrupt(format!("encode lock: {error}")))?;
        Ok(self.put(&lock_key(id), encoded)?)
    }

    /// Every lock in the store (unreadable ones are skipped: a lock being written).
    pub fn list_locks(&self) -> Result<Vec<(String, LockRecord)>, SnapshotError> {
        let mut locks = Vec::new();
        for key in self.list(LOCKS)? {
            let Some(id) = key
                .strip_prefix("locks/")
                .and_then(|name| name.strip_suffix(".json"))
            else {
                continue;
            };
            if let Some(bytes) = self.get(&key)? {
                if let Ok(record) = serde_json::from_slice::<LockRecord>(&bytes) {
                    locks.push((id.to_string(), record));
                }
            }
        }
        Ok(locks)
    }

    /// Takes a lock of `kind` unless a live lock that conflicts with it exists (any
    /// other lock for an exclusive one, an exclusive one for a shared one).
    pub fn try_lock(
        self: &Arc<Self>,
        kind: LockKind,
        owner: &str,
    ) -> Result<Option<StoreLock>, SnapshotError> {
        let id = new_secret_token();
        let record = LockRecord {
            kind,
            owner: owner.to_string(),
            refreshed_at: now(),
        };
        self.write_lock(&id, &record)?;
        self.held_locks.lock().insert(id.clone(), record);
        let lock = StoreLock {
            storage: Arc::clone(self),
            id: id.clone(),
        };
        let current = now();
        let conflict = self.list_locks()?.into_iter().any(|(other, record)| {
            other != id
                && record.is_live(current)
                && (kind == LockKind::Exclusive || record.kind == LockKind::Exclusive)
        });
        // Dropping the lock deletes it: the party that saw the conflict backs off.
        Ok((!conflict).then_some(lock))
    }

    /// A shared lock, waiting while a collection holds the exclusive one.
    pub fn lock_shared(self: &Arc<Self>, owner: &str) -> Result<StoreLock, SnapshotError> {
        let deadline = std::time::Instant::now() + SHARED_WAIT;
        loop {
            if let Some(lock) = self.try_lock(LockKind::Shared, owner)? {
                return Ok(lock);
            }
            if std::time::Instant::now() > deadline {
                return Err(SnapshotError::Busy(
                    "a garbage collection held the object store too long".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Rewrites the locks this process holds with the current time (call well within
    /// [`LEASE`]).
    pub fn refresh_locks(&self) {
        let held: Vec<(String, LockRecord)> = self
            .held_locks
            .lock()
            .iter()
            .map(|(id, record)| (id.clone(), record.clone()))
            .collect();
        for (id, mut record) in held {
            record.refreshed_at = now();
            // Only locks still held: one released meanwhile must not come back.
            if self.held_locks.lock().contains_key(&id) {
                if let Err(error) = self.write_lock(&id, &record) {
                    log::warn!("cannot refresh store lock {id}: {error}");
                }
            }
        }
    }

    /// Removes locks whose holder stopped refreshing them (a crashed daemon).
    pub fn remove_stale_locks(&self) -> Result<usize, SnapshotError> {
        let current = now();
        let mut removed = 0;
        for (id, record) in self.list_locks()? {
            if !record.is_live(current) {
                self.delete(&lock_key(&id))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Publishes the blocks a volume needs (its roots) for every daemon's collection.
    pub fn put_volume_roots(
        &self,
        volume_id: &str,
        blocks: &std::collections::BTreeSet<String>,
    ) -> Result<(), SnapshotError> {
        let encoded = serde_json::to_vec(blocks)
            .map_err(|error| SnapshotError::Corrupt(format!("encode roots: {error}")))?;
        Ok(self.put(&root_key(volume_id), encoded)?)
    }

    pub fn delete_volume_roots(&self, volume_id: &str) -> Result<(), SnapshotError> {
        Ok(self.delete(&root_key(volume_id))?)
    }

    /// Every published root block.
    pub fn all_volume_roots(&self) -> Result<std::collections::BTreeSet<String>, SnapshotError> {
        let mut roots = std::collections::BTreeSet::new();
        for key in self.list(ROOTS)? {
            if let Some(bytes) = self.get(&key)? {
                let blocks: Vec<String> = serde_json::from_slice(&bytes)
                    .map_err(|error| SnapshotError::Corrupt(format!("roots {key}: {error}")))?;
                roots.extend(blocks);
            }
        }
        Ok(roots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_daemons() -> (
        tempfile::TempDir,
        Arc<SnapshotStorage>,
        Arc<SnapshotStorage>,
    ) {
        let directory = tempfile::tempdir().unwrap();
        let location = directory.path().display().to_string();
        let first = Arc::new(SnapshotStorage::open(&location).unwrap());
        let second = Arc::new(SnapshotStorage::open(&location).unwrap());
        (directory, first, second)
    }

    #[test]
    fn shared_and_exclusive_locks_exclude_each_other_across_daemons() {
        let (_directory, first, second) = two_daemons();
        let upload = first.try_lock(LockKind::Shared, "a").unwrap().unwrap();
        let other_upload = second.try_lock(LockKind::Shared, "b").unwrap();
        assert!(other_upload.is_some(), "shared locks coexist");
        assert!(second.try_lock(LockKind::Exclusive, "b").unwrap().is_none());
        drop(upload);
        drop(other_upload);
        assert!(
            first.list_locks().unwrap().is_empty(),
            "released locks are gone"
        );
        let collection = second.try_lock(LockKind::Exclusive, "b").unwrap().unwrap();
        assert!(first.try_lock(LockKind::Shared, "a").unwrap().is_none());
        assert!(first.try_lock(LockKind::Exclusive, "a").unwrap().is_none());
        // Refused attempts leave nothing behind.
        assert_eq!(first.list_locks().unwrap().len(), 1);
        drop(collection);
        assert!(first.try_lock(LockKind::Shared, "a").unwrap().is_some());
    }

    #[test]
    fn locks_of_a_dead_daemon_expire() {
        let (_directory, first, second) = two_daemons();
        let stale = LockRecord {
            kind: LockKind::Shared,
            owner: "crashed".into(),
            refreshed_at: now() - LEASE.as_secs_f64() - 1.0,
        };
        first.write_lock("dead", &stale).unwrap();
        let collection = second.try_lock(LockKind::Exclusive, "b").unwrap();
        assert!(
            collection.is_some(),
            "a stale lock must not block collection"
        );
        drop(collection);
        assert_eq!(second.remove_stale_locks().unwrap(), 1);
        assert!(first.list_locks().unwrap().is_empty());
        // A held lock is refreshed, not stale.
        let held = first.try_lock(LockKind::Shared, "a").unwrap().unwrap();
        let before = first.list_locks().unwrap()[0].1.refreshed_at;
        std::thread::sleep(Duration::from_millis(20));
        first.refresh_locks();
        assert!(first.list_locks().unwrap()[0].1.refreshed_at > before);
        drop(held);
    }
}
