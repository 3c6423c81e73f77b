//! A local KMS: master keys in a JSON key file that must be mode 0600, wrapping
//! per-volume data keys with AES-256-GCM. Wrapped keys read `<key-id>:<base64(nonce ||
//! ciphertext || tag)>`, with the key id as associated data.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::control::ids::{fill_random, to_hex};
use crate::engine::durable::sync_directory;

/// The alias EC2 accepts for the account's default EBS key.
pub const DEFAULT_KEY_ALIAS: &str = "alias/aws/ebs";

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("KMS key '{0}' does not exist")]
    UnknownKey(String),
    #[error("wrapped data key is malformed or was not made by this KMS: {0}")]
    BadWrappedKey(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyFile {
    default_key_id: String,
    /// Key id -> base64 of 32 key bytes.
    keys: BTreeMap<String, String>,
}

pub struct LocalKms {
    path: PathBuf,
    file: KeyFile,
}

fn base64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl LocalKms {
    /// Opens the key file, creating it (mode 0600) with one default master key if missing.
    /// A key file readable or writable by group or others is refused.
    pub fn open(path: &Path) -> Result<Self, KmsError> {
        let key_file_error = |message: String| KmsError::KeyFile {
            path: path.to_path_buf(),
            message,
        };
        match fs::metadata(path) {
            Ok(metadata) => {
                let mode = metadata.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(key_file_error(format!(
                        "mode is {mode:04o}; master keys must be 0600 (chmod 600 it)"
                    )));
                }
                let bytes = fs::read(path).map_err(|error| key_file_error(error.to_string()))?;
                let file: KeyFile = serde_json::from_slice(&bytes)
                    .map_err(|error| key_file_error(format!("not a key file: {error}")))?;
                if !file.keys.contains_key(&file.default_key_id) {
                    return Err(key_file_error(format!(
                        "default key {} is not in the file",
                        file.default_key_id
                    )));
                }
                Ok(LocalKms {
                    path: path.to_path_buf(),
                    file,
                })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut kms = LocalKms {
                    path: path.to_path_buf(),
                    file: KeyFile::default(),
                };
                let key_id = kms.create_key()?;
                kms.file.default_key_id = key_id;
                kms.save()?;
                Ok(kms)
            }
            Err(error) => Err(key_file_error(error.to_string())),
        }
    }

    fn save(&self) -> Result<(), KmsError> {
        let key_file_error = |message: String| KmsError::KeyFile {
            path: self.path.clone(),
            message,
        };
        let encoded = serde_json::to_vec_pretty(&self.file)
            .map_err(|error| key_file_error(error.to_string()))?;
        let mut temporary = self.path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let _ = fs::remove_file(&temporary);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|error| key_file_error(error.to_string()))?;
        file.write_all(&encoded)
            .and_then(|()| file.sync_all())
            .map_err(|error| key_file_error(error.to_string()))?;
        fs::rename(&temporary, &self.path).map_err(|error| key_file_error(error.to_string()))?;
        if let Some(directory) = self.path.parent() {
            sync_directory(directory).map_err(|error| key_file_error(error.to_string()))?;
        }
        Ok(())
    }

    /// Adds a new master key and returns its id (not saved until `save`).
    fn create_key(&mut self) -> Result<String, KmsError> {
        let mut id = [0u8; 16];
        fill_random(&mut id);
        let key_id = format!("mrk-{}", to_hex(&id));
        let mut key = [0u8; 32];
        fill_random(&mut key);
        self.file.keys.insert(key_id.clone(), base64().encode(key));
        Ok(key_id)
    }

    pub fn default_key_id(&self) -> &str {
        &self.file.default_key_id
    }

    /// Resolves a KmsKeyId as given in a request (None or the EBS alias: the default).
    pub fn resolve(&self, key_id: Option<&str>) -> Result<String, KmsError> {
        match key_id {
            None | Some(DEFAULT_KEY_ALIAS) => Ok(self.file.default_key_id.clone()),
            Some(id) if self.file.keys.contains_key(id) => Ok(id.to_string()),
            Some(id) => Err(KmsError::UnknownKey(id.to_string())),
        }
    }

    fn cipher(&self, key_id: &str) -> Result<Aes256Gcm, KmsError> {
        let encoded = self
            .file
            .keys
            .get(key_id)
            .ok_or_else(|| KmsError::UnknownKey(key_id.to_string()))?;
        let key = base64()
            .decode(encoded)
            .ok()
            .filter(|key| key.len() == 32)
            .ok_or_else(|| KmsError::KeyFile {
                path: self.path.clone(),
                message: format!("key {key_id} is not 32 base64 bytes"),
            })?;
        Aes256Gcm::new_from_slice(&key).map_err(|_| KmsError::UnknownKey(key_id.to_string()))
    }

    /// Wraps `plaintext` under master key `key_id`.
    pub fn wrap(&self, key_id: &str, plaintext: &[u8]) -> Result<String, KmsError> {
        let cipher = self.cipher(key_id)?;
        let mut nonce = [0u8; 12];
        fill_random(&mut nonce);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: key_id.as_bytes(),
                },
            )
            .map_err(|_| KmsError::BadWrappedKey("encryption failed".into()))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(format!("{key_id}:{}", base64().encode(blob)))
    }

    /// Unwraps a key made by `wrap`; returns the master key id and the plaintext.
    pub fn unwrap(&self, wrapped: &str) -> Result<(String, Vec<u8>), KmsError> {
        let (key_id, blob) = wrapped
            .split_once(':')
            .ok_or_else(|| KmsError::BadWrappedKey("no key id".into()))?;
        let blob = base64()
            .decode(blob)
            .map_err(|error| KmsError::BadWrappedKey(error.to_string()))?;
        if blob.len() < 12 + 16 {
            return Err(KmsError::BadWrappedKey("too short".into()));
        }
        let (nonce, sealed) = blob.split_at(12);
        let plaintext = self
            .cipher(key_id)?
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: key_id.as_bytes(),
                },
            )
            .map_err(|_| {
                KmsError::BadWrappedKey(format!("authentication under {key_id} failed"))
            })?;
        Ok((key_id.to_string(), plaintext))
    }

    /// A fresh random data key of `length` bytes, wrapped under `key_id`.
    pub fn generate_data_key(
        &self,
        key_id: &str,
        length: usize,
    ) -> Result<(Vec<u8>, String), KmsError> {
        let mut key = vec![0u8; length];
        fill_random(&mut key);
        let wrapped = self.wrap(key_id, &key)?;
        Ok((key, wrapped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_0600_key_file_and_round_trips_wrapped_keys() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("kms.json");
        let kms = LocalKms::open(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let key_id = kms.resolve(Some(DEFAULT_KEY_ALIAS)).unwrap();
        let (key, wrapped) = kms.generate_data_key(&key_id, 64).unwrap();
        assert!(wrapped.starts_with(&format!("{key_id}:")));
        let reopened = LocalKms::open(&path).unwrap();
        assert_eq!(reopened.unwrap(&wrapped).unwrap(), (key_id.clone(), key));
        assert!(matches!(
            reopened.resolve(Some("mrk-nope")),
            Err(KmsError::UnknownKey(_))
        ));
    }

    #[test]
    fn tampered_wrapped_keys_and_open_key_files_are_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("kms.json");
        let kms = LocalKms::open(&path).unwrap();
        let wrapped = kms.wrap(kms.default_key_id(), b"secret").unwrap();
        let mut tampered = wrapped.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(kms.unwrap(&String::from_utf8(tampered).unwrap()).is_err());
        assert!(kms.unwrap("no-colon").is_err());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = LocalKms::open(&path).err().unwrap().to_string();
        assert!(error.contains("0600"), "{error}");
    }
}
