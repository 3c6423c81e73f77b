//! The instance state directory: one JSON file per instance (`<dir>/i-….json`), replaced
//! atomically (write a temporary file, fsync, rename over, fsync the directory), so a
//! crash leaves either the old or the new record and a restart finds every instance.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::record::InstanceRecord;
use crate::error::Ec2Error;
use crate::ids::{self, ResourceKind};

pub struct InstanceStore {
    dir: PathBuf,
    /// Orders read-modify-write within this process (`update`).
    lock: Mutex<()>,
}

fn io(action: &str, path: &Path, error: std::io::Error) -> Ec2Error {
    Ec2Error::internal(format!(
        "instance store: {action} {}: {error}",
        path.display()
    ))
}

impl InstanceStore {
    /// Opens (creating if needed) the state directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<InstanceStore, Ec2Error> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        Ok(InstanceStore {
            dir,
            lock: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn path(&self, instance_id: &str) -> PathBuf {
        self.dir.join(format!("{instance_id}.json"))
    }

    /// Writes a record, replacing the previous one atomically.
    pub fn put(&self, record: &InstanceRecord) -> Result<(), Ec2Error> {
        let instance_id = &record.instance.instance_id;
        ids::validate(ResourceKind::Instance, instance_id)?;
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|error| Ec2Error::internal(format!("encode {instance_id}: {error}")))?;
        let temporary = self.dir.join(format!(".{instance_id}.json.tmp"));
        let target = self.path(instance_id);
        let mut file = File::create(&temporary).map_err(|e| io("create", &temporary, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io("write", &temporary, e))?;
        fs::rename(&temporary, &target).map_err(|e| io("rename", &target, e))?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io("sync", &self.dir, e))
    }

    /// The record of `instance_id`; an unknown id is `InvalidInstanceID.NotFound`.
    pub fn get(&self, instance_id: &str) -> Result<InstanceRecord, Ec2Error> {
        ids::validate(ResourceKind::Instance, instance_id)?;
        let path = self.path(instance_id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Ec2Error::instances_not_found(&[instance_id]))
            }
            Err(error) => return Err(io("read", &path, error)),
        };
        serde_json::from_slice(&bytes).map_err(|error| {
            Ec2Error::internal(format!("record of {instance_id} is corrupt: {error}"))
        })
    }

    /// Every record; an unreadable one is logged and skipped (a leftover temporary file
    /// from a crash is ignored: it starts with a dot).
    pub fn list(&self) -> Result<Vec<InstanceRecord>, Ec2Error> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io("list", &self.dir, e))? {
            let entry = entry.map_err(|e| io("list", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(instance_id) = name
                .strip_suffix(".json")
                .filter(|_| !name.starts_with('.'))
            else {
                continue;
            };
            match self.get(instance_id) {
                Ok(record) => records.push(record),
                Err(error) => log::warn!("skipping instance record {name}: {error}"),
            }
        }
        Ok(records)
    }

    /// Reads, changes and writes one record under the store's lock; `change`'s error
    /// leaves the record as it was.
    pub fn update<T>(
        &self,
        instance_id: &str,
        change: impl FnOnce(&mut InstanceRecord) -> Result<T, Ec2Error>,
    ) -> Result<T, Ec2Error> {
        let _guard = self.guard();
        let mut record = self.get(instance_id)?;
        let result = change(&mut record)?;
        self.put(&record)?;
        Ok(result)
    }

    /// Removes a record (e.g. a terminated instance after EC2's hour of visibility).
    pub fn remove(&self, instance_id: &str) -> Result<(), Ec2Error> {
        ids::validate(ResourceKind::Instance, instance_id)?;
        let path = self.path(instance_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(Ec2Error::instances_not_found(&[instance_id]))
            }
            Err(error) => Err(io("remove", &path, error)),
        }
    }
}
