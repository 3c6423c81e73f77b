//! A blocking facade over `object_store`: a local directory by default, an
//! S3-compatible bucket by configuration. Snapshot code stays synchronous; the facade
//! owns a small tokio runtime for the async client.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("object store setup: {0}")]
    Setup(String),
}

pub struct SnapshotStorage {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    description: String,
    pub(super) held_locks: super::locks::HeldLocks,
}

impl SnapshotStorage {
    /// `location` is a directory path, or `s3://bucket[/prefix]` with the endpoint and
    /// credentials taken from the usual AWS_* environment variables (AWS_ENDPOINT,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP).
    pub fn open(location: &str) -> Result<Self, StorageError> {
        let store: Arc<dyn ObjectStore> = if location.starts_with("s3://") {
            // S3 over TLS needs a process-wide rustls provider; ring is the one built in.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Arc::new(AmazonS3Builder::from_env().with_url(location).build()?)
        } else {
            std::fs::create_dir_all(location)
                .map_err(|error| StorageError::Setup(format!("create {location}: {error}")))?;
            Arc::new(LocalFileSystem::new_with_prefix(Path::new(location))?)
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ebs-objects")
            .enable_all()
            .build()
            .map_err(|error| StorageError::Setup(format!("tokio runtime: {error}")))?;
        Ok(SnapshotStorage {
            store,
            runtime,
            description: location.to_string(),
            held_locks: Default::default(),
        })
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let path = ObjectPath::from(key);
        self.runtime
            .block_on(self.store.put(&path, PutPayload::from(Bytes::from(bytes))))?;
        Ok(())
    }

    /// The object's bytes, or `None` if it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = ObjectPath::from(key);
        self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(result) => Ok(Some(result.bytes().await?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(error.into()),
            }
        })
    }

    pub fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let path = ObjectPath::from(key);
        self.runtime.block_on(async {
            match self.store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(error) => Err(error.into()),
            }
        })
    }

    pub fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = ObjectPath::from(key);
        self.runtime.block_on(async {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(error) => Err(error.into()),
            }
        })
    }

    /// Keys under `prefix`.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let path = ObjectPath::from(prefix);
        self.runtime.block_on(async {
            let objects: Vec<_> = self.store.list(Some(&path)).try_collect().await?;
            Ok(objects
                .into_iter()
                .map(|meta| meta.location.to_string())
                .collect())
        })
    }
}
