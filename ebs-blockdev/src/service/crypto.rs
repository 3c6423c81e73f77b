//! Encryption hooks of the service (volume data keys, snapshot re-encryption).

use super::Service;
use crate::control::snapshot::Snapshot;
use crate::control::ControlError;
use crate::snapshot::Manifest;

impl Service {
    /// The volume's wrapped data key, recorded in its snapshots' manifests.
    pub(super) fn volume_wrapped_key(
        &self,
        _volume_id: &str,
    ) -> Result<Option<String>, ControlError> {
        Ok(None)
    }

    /// Applies EBS's encryption rules to a snapshot copy.
    pub(super) fn reencrypt_for_copy(
        &self,
        source: &Snapshot,
        _manifest: &mut Manifest,
        encrypted: bool,
        _kms_key_id: Option<&str>,
    ) -> Result<(), ControlError> {
        if source.encrypted && !encrypted {
            return Err(ControlError::InvalidParameterCombination(format!(
                "Snapshot {} is encrypted; a copy cannot be unencrypted",
                source.snapshot_id
            )));
        }
        if encrypted && !source.encrypted {
            return Err(ControlError::Unsupported(
                "encrypting snapshots is not available yet".into(),
            ));
        }
        Ok(())
    }
}
