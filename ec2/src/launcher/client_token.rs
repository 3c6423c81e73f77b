//! RunInstances idempotency: EC2's `ClientToken`.
//!
//! The aws CLI and the SDKs send a fresh token with every RunInstances and reuse it
//! when they retry a call whose answer was lost, so a timeout never launches twice.
//! As on EC2: the same token with the same parameters returns the original
//! reservation (its instances in their current state) and launches nothing; the same
//! token with other parameters fails with `IdempotentParameterMismatch`; a token is
//! at most 64 ASCII characters and belongs to one account.
//!
//! A claim per token lives in `STATE/client-tokens/<sha256(account, token)>.json`,
//! written under the state lock before anything is launched, so two concurrent calls
//! with one token launch once: the second waits for the first to finish. A claim left
//! incomplete by a launcher that died is taken over (or, if that launcher created
//! instances, completed with them).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::paths::io_error;
use super::Launcher;
use crate::error::{Ec2Error, ErrorCode};
use crate::ids::{new_id, ResourceKind};

/// EC2's limit on a client token's length.
pub const MAX_TOKEN_LEN: usize = 64;
/// How long a call waits for a concurrent call with the same token to finish.
const WAIT_FOR_OTHER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct Claim {
    client_token: String,
    account: String,
    /// sha256 of the request's parameters (everything but the token).
    fingerprint: String,
    reservation_id: String,
    /// The launcher process working on it, until `complete`.
    launcher_pid: u32,
    complete: bool,
}

/// What a call with a client token does.
#[derive(Debug)]
pub enum TokenOutcome {
    /// Launch under this reservation id, then `settle_client_token`.
    Launch { reservation_id: String },
    /// An earlier call with this token launched: its answer, now.
    Replay(Value),
}

/// Checks a token as EC2 does (at most 64 printable ASCII characters).
pub fn validate(token: &str) -> Result<(), Ec2Error> {
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || !token.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(Ec2Error::invalid_value(format!(
            "Value ({token}) for parameter clientToken is invalid. A client token is 1 to \
             {MAX_TOKEN_LEN} ASCII characters"
        )));
    }
    Ok(())
}

/// A stable digest of a request's parameters (its canonical text, token excluded).
pub fn fingerprint(parameters: &str) -> String {
    hex(&Sha256::digest(parameters.as_bytes()))
}

/// Tokens this process is launching with (the HTTP API serves calls on several
/// threads of one process, so the pid alone does not tell who is working).
static LAUNCHING_HERE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn launching_here() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    LAUNCHING_HERE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An incomplete claim a live launch (another process, or another thread of this
/// one) is working on.
fn claimed_elsewhere(claim: &Claim, key: &str) -> bool {
    if claim.complete {
        return false;
    }
    if claim.launcher_pid == std::process::id() {
        launching_here().contains(key)
    } else {
        Launcher::alive(Some(claim.launcher_pid))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Launcher {
    fn claim_path(&self, token: &str) -> PathBuf {
        let mut digest = Sha256::new();
        digest.update(self.account.as_bytes());
        digest.update([0]);
        digest.update(token.as_bytes());
        self.paths
            .root()
            .join("client-tokens")
            .join(format!("{}.json", hex(&digest.finalize())))
    }

    fn read_claim(path: &Path) -> Result<Option<Claim>, Ec2Error> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Ec2Error::internal(format!(
                    "corrupt client-token claim {}: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(path, e)),
        }
    }

    fn write_claim(&self, path: &Path, claim: &Claim) -> Result<(), Ec2Error> {
        let dir = path.parent().unwrap_or(self.paths.root());
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let bytes =
            serde_json::to_vec_pretty(claim).map_err(|e| Ec2Error::internal(e.to_string()))?;
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, bytes).map_err(|e| io_error(&partial, e))?;
        std::fs::rename(&partial, path).map_err(|e| io_error(path, e))
    }

    /// The reservation as RunInstances answered it, with its instances as they are now.
    fn reservation_reply(&self, reservation_id: &str) -> Result<Option<Value>, Ec2Error> {
        let mut records: Vec<_> = self
            .instances()
            .list()?
            .into_iter()
            .filter(|r| r.reservation_id == reservation_id && r.owner_id == self.account)
            .collect();
        if records.is_empty() {
            return Ok(None);
        }
        records.sort_by_key(|r| r.instance.ami_launch_index);
        let instances: Vec<_> = records.into_iter().map(|r| r.instance).collect();
        Ok(Some(json!({
            "Groups": [],
            "Instances": instances,
            "OwnerId": self.account,
            "ReservationId": reservation_id,
        })))
    }

    /// Claims `token` for a launch with `fingerprint`, or answers with the launch that
    /// already holds it (waiting for it if it is still running).
    pub fn claim_client_token(
        &self,
        token: &str,
        fingerprint: &str,
    ) -> Result<TokenOutcome, Ec2Error> {
        validate(token)?;
        let path = self.claim_path(token);
        let key = path.to_string_lossy().into_owned();
        let deadline = Instant::now() + WAIT_FOR_OTHER;
        loop {
            {
                let _lock = self.paths.lock()?;
                let take_over = match Launcher::read_claim(&path)? {
                    None => true,
                    Some(claim) if claim.fingerprint != fingerprint => {
                        return Err(Ec2Error::new(
                            ErrorCode::IdempotentParameterMismatch,
                            format!(
                                "The client token {token} was used with different parameters; \
                                 use a new client token for a new request"
                            ),
                        ));
                    }
                    Some(claim) if claim.complete || !claimed_elsewhere(&claim, &key) => {
                        match self.reservation_reply(&claim.reservation_id)? {
                            Some(reply) => {
                                if !claim.complete {
                                    // Its launcher died after launching: settle for it.
                                    self.write_claim(
                                        &path,
                                        &Claim {
                                            complete: true,
                                            ..claim
                                        },
                                    )?;
                                }
                                return Ok(TokenOutcome::Replay(reply));
                            }
                            None if claim.complete => {
                                return Err(Ec2Error::new(
                                    ErrorCode::IdempotentParameterMismatch,
                                    format!(
                                        "The client token {token} is associated with a \
                                         resource that is already deleted. Please use a \
                                         different client token."
                                    ),
                                ));
                            }
                            // Its launcher died before launching anything.
                            None => true,
                        }
                    }
                    // Another call is launching with this token: wait for it.
                    Some(_) => false,
                };
                if take_over {
                    let reservation_id = new_id(ResourceKind::Reservation);
                    self.write_claim(
                        &path,
                        &Claim {
                            client_token: token.to_string(),
                            account: self.account.clone(),
                            fingerprint: fingerprint.to_string(),
                            reservation_id: reservation_id.clone(),
                            launcher_pid: std::process::id(),
                            complete: false,
                        },
                    )?;
                    launching_here().insert(key);
                    return Ok(TokenOutcome::Launch { reservation_id });
                }
            }
            if Instant::now() > deadline {
                return Err(Ec2Error::new(
                    ErrorCode::IncorrectState,
                    format!("A launch with client token {token} is still in progress"),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// After the launch a claim led to: a launch that created instances keeps the
    /// token (a retry returns them); one that created nothing frees it for a retry.
    pub fn settle_client_token(&self, token: &str) -> Result<(), Ec2Error> {
        let _lock = self.paths.lock()?;
        let path = self.claim_path(token);
        launching_here().remove(path.to_string_lossy().as_ref());
        let Some(claim) = Launcher::read_claim(&path)? else {
            return Ok(());
        };
        if claim.launcher_pid != std::process::id() || claim.complete {
            return Ok(());
        }
        if self.reservation_reply(&claim.reservation_id)?.is_some() {
            self.write_claim(
                &path,
                &Claim {
                    complete: true,
                    ..claim
                },
            )
        } else {
            std::fs::remove_file(&path).map_err(|e| io_error(&path, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_like_ec2() {
        assert!(validate("0b5c3f1e-7d7e-4a55-9a43-1c2d3e4f5a6b").is_ok());
        assert!(validate(&"a".repeat(64)).is_ok());
        assert!(validate(&"a".repeat(65)).is_err());
        assert!(validate("").is_err());
        assert!(validate("tab\there").is_err());
        assert!(validate("über").is_err());
    }

    #[test]
    fn fingerprints_are_stable_and_distinct() {
        assert_eq!(fingerprint("a"), fingerprint("a"));
        assert_ne!(fingerprint("a"), fingerprint("b"));
        assert_eq!(fingerprint("a").len(), 64);
    }
}
