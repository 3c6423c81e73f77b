//! Library errors. Binaries wrap these with anyhow; the library never panics on input.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("reading config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config {path}: {message}")]
    ParseConfig { path: PathBuf, message: String },
    #[error("instance {instance}: field {field}: {rule}")]
    InvalidConfig {
        instance: String,
        field: String,
        rule: String,
    },
    #[error("reading signing material {path}: {source}")]
    ReadSigningMaterial {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing key or certificate is unusable: {0}")]
    SigningMaterial(String),
    #[error("signing the identity document failed: {0}")]
    Signing(String),
    #[error("sealing a token failed")]
    TokenSeal,
    #[error("in-VMM network stack: {0}")]
    Netstack(String),
    #[error("no randomness from the operating system: {0}")]
    Randomness(String),
    #[error("I/O on {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}
