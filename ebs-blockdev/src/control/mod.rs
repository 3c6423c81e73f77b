//! The control plane: volume (and later snapshot) records, their EC2 ids and state
//! machines, and the validation EC2 applies to each request.
//!
//! This layer is storage-free: [`volume::VolumeTable`] decides what a request does to the
//! records; `crate::service` carries the decision out on the storage engine and persists it.

pub mod filters;
pub mod ids;
pub mod modification;
pub mod snapshot;
pub mod tags;
pub mod volume;
pub mod volume_type;

pub use modification::{ModificationRecord, ModificationState, VolumeModification};
pub use volume::{
    AttachVolumeRequest, AttachmentGrant, CreateVolumeRequest, DescribeVolumesRequest,
    DetachVolumeRequest, ModifyVolumeRequest, Volume, VolumeAttachment, VolumeState, VolumeTable,
};
pub use volume_type::{RequestedPerformance, VolumePerformance, VolumeType};

/// Errors a control-plane request can end in. `code()` gives EC2's error code, which the
/// HTTP API returns next to the message.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    InvalidParameterValue(String),
    #[error("{0}")]
    InvalidParameterCombination(String),
    #[error("{0}")]
    MissingParameter(String),
    #[error("Invalid id: \"{0}\"")]
    MalformedVolumeId(String),
    #[error("The volume '{0}' does not exist.")]
    VolumeNotFound(String),
    #[error("{0}")]
    ZoneMismatch(String),
    #[error("{0}")]
    IncorrectState(String),
    #[error("Volume {0} is currently attached and cannot be deleted")]
    VolumeInUse(String),
    #[error("{0}")]
    AttachmentLimitExceeded(String),
    #[error("{0}")]
    AttachmentNotFound(String),
    #[error("The snapshot '{0}' does not exist.")]
    SnapshotNotFound(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    TagLimitExceeded(String),
    #[error("The ID '{0}' is not valid")]
    InvalidId(String),
    #[error("{0}")]
    IncorrectModificationState(String),
    #[error("{0}")]
    VolumeModificationRateExceeded(String),
    #[error("{0}")]
    IdempotentParameterMismatch(String),
    /// EBS direct APIs: a ClientToken reused with other parameters.
    #[error("{0}")]
    Conflict(String),
    /// EBS direct APIs: a request that fails validation.
    #[error("{0}")]
    Validation(String),
    /// EBS direct APIs: no such snapshot or block.
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ControlError {
    /// EC2's error code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::InvalidParameterValue(_) => "InvalidParameterValue",
            ControlError::InvalidParameterCombination(_) => "InvalidParameterCombination",
            ControlError::MissingParameter(_) => "MissingParameter",
            ControlError::MalformedVolumeId(_) => "InvalidVolumeID.Malformed",
            ControlError::VolumeNotFound(_) => "InvalidVolume.NotFound",
            ControlError::ZoneMismatch(_) => "InvalidVolume.ZoneMismatch",
            ControlError::IncorrectState(_) => "IncorrectState",
            ControlError::VolumeInUse(_) => "VolumeInUse",
            ControlError::AttachmentLimitExceeded(_) => "AttachmentLimitExceeded",
            ControlError::AttachmentNotFound(_) => "InvalidAttachment.NotFound",
            ControlError::SnapshotNotFound(_) => "InvalidSnapshot.NotFound",
            ControlError::Unsupported(_) => "UnsupportedOperation",
            ControlError::TagLimitExceeded(_) => "TagLimitExceeded",
            ControlError::InvalidId(_) => "InvalidID",
            ControlError::IncorrectModificationState(_) => "IncorrectModificationState",
            ControlError::VolumeModificationRateExceeded(_) => "VolumeModificationRateExceeded",
            ControlError::IdempotentParameterMismatch(_) => "IdempotentParameterMismatch",
            ControlError::Conflict(_) => "ConflictException",
            ControlError::Validation(_) => "ValidationException",
            ControlError::ResourceNotFound(_) => "ResourceNotFoundException",
            ControlError::Internal(_) => "InternalError",
        }
    }

    /// Whether the caller (4xx) or the service (5xx) is at fault.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, ControlError::Internal(_))
    }
}
