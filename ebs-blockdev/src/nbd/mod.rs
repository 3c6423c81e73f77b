//! NBD: the server that exports attached volumes, and the client the VMM uses.
//!
//! Export names are `<volume-id>/<attachment-token>`: AttachVolume returns the name, and a
//! connection naming a volume without a current attachment's token is refused
//! (NBD_REP_ERR_UNKNOWN for an unknown volume, NBD_REP_ERR_POLICY for a wrong token).

pub mod client;
mod handshake;
pub mod proto;
pub mod server;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::engine::BlockStore;

pub use client::{NbdClient, NbdEndpoint, NbdError};
pub use server::NbdServer;

/// Direction of an I/O, for QoS accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDirection {
    Read,
    Write,
}

/// Admission control applied before each data request (the QoS token buckets).
pub trait IoThrottle: Send + Sync {
    /// Blocks until an I/O of `length` bytes at `offset` may proceed.
    fn admit(&self, direction: IoDirection, offset: u64, length: u64);
}

/// What a successful negotiation hands to the transmission phase.
pub struct Export {
    /// For logs: the volume id (never the token).
    pub volume_id: String,
    pub store: Arc<BlockStore>,
    pub read_only: bool,
    pub throttle: Option<Arc<dyn IoThrottle>>,
    /// Set when the attachment is detached; the connection then stops serving.
    pub revoked: Arc<AtomicBool>,
}

/// Why an export name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportRefusal {
    /// No such volume (NBD_REP_ERR_UNKNOWN).
    Unknown(String),
    /// The volume exists but the name carries no valid attachment token (ERR_POLICY).
    NotAuthorized(String),
}

/// Resolves export names to volumes; implemented by the service (and by tests).
pub trait ExportProvider: Send + Sync {
    fn open_export(&self, export_name: &str) -> Result<Export, ExportRefusal>;
}
