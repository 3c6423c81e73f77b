//! Encryption in the service: each encrypted volume has a data key (DEK) generated under
//! a KMS master key and stored wrapped in its record; snapshots carry the same wrapped
//! DEK. EBS's rules: a volume from an encrypted snapshot is encrypted (with the
//! snapshot's DEK); an encrypted snapshot cannot be copied to an unencrypted one; an
//! unencrypted snapshot may become encrypted on copy or on CreateVolume (a new DEK, the
//! blocks encrypted as they are copied or hydrated).

use std::sync::Arc;

use super::Service;
use crate::control::snapshot::Snapshot;
use crate::control::{ControlError, CreateVolumeRequest};
use crate::crypto::{KmsError, SectorCipher, DATA_KEY_LEN, SECTOR_SIZE};
use crate::engine::{BlockSource, EngineError, BLOCK_SIZE};
use crate::snapshot::Manifest;

impl From<KmsError> for ControlError {
    fn from(error: KmsError) -> Self {
        match error {
            KmsError::UnknownKey(_) | KmsError::BadWrappedKey(_) => {
                ControlError::InvalidParameterValue(error.to_string())
            }
            KmsError::KeyFile { .. } => ControlError::Internal(error.to_string()),
        }
    }
}

/// A volume's data key: the master key id, the plaintext key and its wrapped form.
pub(super) struct VolumeKey {
    pub key_id: String,
    pub cipher: Arc<SectorCipher>,
    pub wrapped: String,
}

pub(super) fn cipher_from(plaintext: &[u8]) -> Result<Arc<SectorCipher>, ControlError> {
    let key: &[u8; DATA_KEY_LEN] = plaintext.try_into().map_err(|_| {
        ControlError::Internal(format!(
            "data key is {} bytes, not {DATA_KEY_LEN}",
            plaintext.len()
        ))
    })?;
    Ok(Arc::new(SectorCipher::new(key)))
}

/// First sector of a snapshot block (the XTS tweak of its first sector).
pub(super) fn first_sector(block_index: u64) -> u64 {
    block_index * (BLOCK_SIZE / SECTOR_SIZE)
}

/// Encrypts the blocks of an unencrypted snapshot as an encrypted volume hydrates them.
pub(super) struct EncryptingSource {
    pub inner: Arc<dyn BlockSource>,
    pub cipher: Arc<SectorCipher>,
}

impl BlockSource for EncryptingSource {
    fn fetch_block(&self, index: u64) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.inner.fetch_block(index)?.map(|mut block| {
            self.cipher.encrypt(&mut block, first_sector(index));
            block
        }))
    }
}

/// A KmsKeyArn as EBS takes it: a key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`), an
/// alias ARN (`...:alias/NAME`), or a bare key id or alias; returns the id or alias.
fn key_from_arn(arn: &str) -> &str {
    if !arn.starts_with("arn:") {
        return arn;
    }
    if let Some(at) = arn.find(":key/") {
        return &arn[at + ":key/".len()..];
    }
    match arn.find(":alias/") {
        Some(at) => &arn[at + 1..],
        None => arn,
    }
}

impl Service {
    /// The key of a snapshot written through the direct APIs, by EBS's encryption
    /// outcomes (encryption by default is off here): with a parent, Encrypted and
    /// KmsKeyArn must be omitted and the new snapshot takes the parent's data key (or
    /// none); without one, Encrypted=true makes a new data key under KmsKeyArn or the
    /// default key, and KmsKeyArn without Encrypted=true is refused.
    pub(super) fn direct_snapshot_key(
        &self,
        encrypted: Option<bool>,
        kms_key_arn: Option<&str>,
        parent: Option<&Manifest>,
    ) -> Result<Option<VolumeKey>, ControlError> {
        let kms = self.kms()?;
        let invalid = |message: String| ControlError::Validation(message);
        let resolve = |arn: Option<&str>| {
            kms.resolve(arn.map(key_from_arn))
                .map_err(|error| invalid(format!("KmsKeyArn: {error}")))
        };
        if let Some(parent) = parent {
            if encrypted.is_some() || kms_key_arn.is_some() {
                return Err(invalid(format!(
                    "Encrypted and KmsKeyArn must be omitted with ParentSnapshotId: the \
                     snapshot takes the encryption of {} ({})",
                    parent.snapshot_id,
                    if parent.encrypted {
                        "encrypted"
                    } else {
                        "unencrypted"
                    }
                )));
            }
            let Some(wrapped) = parent
                .wrapped_data_key
                .as_deref()
                .filter(|_| parent.encrypted)
            else {
                return Ok(None);
            };
            let (key_id, plaintext) = kms.unwrap(wrapped)?;
            return Ok(Some(VolumeKey {
                key_id,
                cipher: cipher_from(&plaintext)?,
                wrapped: wrapped.to_string(),
            }));
        }
        match (encrypted, kms_key_arn) {
            (Some(true), arn) => {
                let key_id = resolve(arn)?;
                let (plaintext, wrapped) = kms.generate_data_key(&key_id, DATA_KEY_LEN)?;
                Ok(Some(VolumeKey {
                    key_id,
                    cipher: cipher_from(&plaintext)?,
                    wrapped,
                }))
            }
            (_, Some(_)) => Err(invalid(
                "KmsKeyArn requires Encrypted to be true".to_string(),
            )),
            (_, None) => Ok(None),
        }
    }

    /// The data key of an encrypted snapshot's manifest (None when unencrypted).
    pub(super) fn manifest_cipher(
        &self,
        manifest: &Manifest,
    ) -> Result<Option<Arc<SectorCipher>>, ControlError> {
        match manifest
            .wrapped_data_key
            .as_deref()
            .filter(|_| manifest.encrypted)
        {
            Some(wrapped) => Ok(Some(cipher_from(&self.kms()?.unwrap(wrapped)?.1)?)),
            None if manifest.encrypted => Err(ControlError::Internal(format!(
                "{} is encrypted but has no data key",
                manifest.snapshot_id
            ))),
            None => Ok(None),
        }
    }

    /// Checks a CreateVolume request's encryption fields before anything is created.
    pub(super) fn validate_volume_encryption(
        &self,
        request: &CreateVolumeRequest,
        snapshot: Option<&Snapshot>,
    ) -> Result<(), ControlError> {
        if snapshot.is_some_and(|snapshot| snapshot.encrypted) && request.encrypted == Some(false) {
            return Err(ControlError::InvalidParameterCombination(
                "A volume created from an encrypted snapshot is encrypted: Encrypted cannot be false".into(),
            ));
        }
        if request.kms_key_id.is_some() && request.encrypted == Some(false) {
            return Err(ControlError::InvalidParameterCombination(
                "KmsKeyId requires Encrypted".into(),
            ));
        }
        self.kms()?.resolve(request.kms_key_id.as_deref())?;
        Ok(())
    }

    /// The data key a new volume gets: the snapshot's (rewrapped if another master key
    /// is requested), a new one when encryption is requested, or none.
    pub(super) fn new_volume_key(
        &self,
        request: &CreateVolumeRequest,
        manifest: Option<&Manifest>,
    ) -> Result<Option<VolumeKey>, ControlError> {
        let kms = self.kms()?;
        if let Some(wrapped) = manifest
            .filter(|manifest| manifest.encrypted)
            .and_then(|manifest| manifest.wrapped_data_key.as_deref())
        {
            let (snapshot_key_id, plaintext) = kms.unwrap(wrapped)?;
            let key_id = match &request.kms_key_id {
                Some(requested) => kms.resolve(Some(requested))?,
                None => snapshot_key_id,
            };
            let wrapped = kms.wrap(&key_id, &plaintext)?;
            return Ok(Some(VolumeKey {
                key_id,
                cipher: cipher_from(&plaintext)?,
                wrapped,
            }));
        }
        if request.encrypted == Some(true) || request.kms_key_id.is_some() {
            let key_id = kms.resolve(request.kms_key_id.as_deref())?;
            let (plaintext, wrapped) = kms.generate_data_key(&key_id, DATA_KEY_LEN)?;
            return Ok(Some(VolumeKey {
                key_id,
                cipher: cipher_from(&plaintext)?,
                wrapped,
            }));
        }
        Ok(None)
    }

    /// The volume's wrapped data key, recorded in its snapshots' manifests.
    pub(super) fn volume_wrapped_key(
        &self,
        volume_id: &str,
    ) -> Result<Option<String>, ControlError> {
        self.lock().table.wrapped_data_key(volume_id)
    }

    /// Applies EBS's encryption rules to a snapshot copy's manifest.
    pub(super) fn reencrypt_for_copy(
        &self,
        source: &Snapshot,
        manifest: &mut Manifest,
        encrypted: bool,
        kms_key_id: Option<&str>,
    ) -> Result<(), ControlError> {
        let kms = self.kms()?;
        match (source.encrypted, encrypted) {
            (true, false) => Err(ControlError::InvalidParameterCombination(format!(
                "Snapshot {} is encrypted; a copy cannot be unencrypted",
                source.snapshot_id
            ))),
            (false, false) => Ok(()),
            (true, true) => {
                // Same data key; rewrap it when another master key is asked for.
                if let Some(requested) = kms_key_id {
                    let key_id = kms.resolve(Some(requested))?;
                    let wrapped = manifest.wrapped_data_key.as_deref().ok_or_else(|| {
                        ControlError::Internal(format!("{} has no data key", source.snapshot_id))
                    })?;
                    let (_, plaintext) = kms.unwrap(wrapped)?;
                    manifest.wrapped_data_key = Some(kms.wrap(&key_id, &plaintext)?);
                    manifest.kms_key_id = Some(key_id);
                }
                Ok(())
            }
            (false, true) => {
                let key_id = kms.resolve(kms_key_id)?;
                let (plaintext, wrapped) = kms.generate_data_key(&key_id, DATA_KEY_LEN)?;
                let cipher = cipher_from(&plaintext)?;
                for (index, hash) in manifest.blocks.iter_mut() {
                    let mut block = self.storage.get_block(hash)?;
                    cipher.encrypt(&mut block, first_sector(*index));
                    *hash = self.storage.put_block(&block)?;
                }
                manifest.encrypted = true;
                manifest.wrapped_data_key = Some(wrapped);
                manifest.kms_key_id = Some(key_id);
                Ok(())
            }
        }
    }
}
