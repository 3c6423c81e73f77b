//! QoS credit balances that survive restarts and crashes: each volume's balances are
//! written (atomic replace) every couple of seconds while its I/O spends them and at an
//! orderly shutdown, with the wall-clock time of the save. At start-up they are restored
//! plus what the buckets earn at their baseline since that time, downtime included (an
//! EBS volume accrues credits while it is idle, up to the bucket's capacity). A crash
//! loses at most the spending of the last interval.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Service;
use crate::engine::durable::replace_file_atomically;
use crate::qos::{Clock, CreditBalances, SystemClock, VolumeQos};

const QOS_CREDITS_FILE: &str = "qos-credits.json";

/// How often spent balances are written.
pub(super) const SAVE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedCredits {
    #[serde(flatten)]
    balances: CreditBalances,
    /// Seconds since the Unix epoch when the balances were read (absent in files from
    /// versions that saved only at shutdown: then no downtime is credited).
    #[serde(default)]
    saved_at: Option<f64>,
}

/// Writes the balances of one volume (types without credit buckets write nothing).
pub(super) fn save(qos: &VolumeQos, directory: &Path) {
    let balances = qos.credit_balances();
    if balances == CreditBalances::default() {
        return;
    }
    let saved = SavedCredits {
        balances,
        saved_at: Some(SystemClock.now().as_secs_f64()),
    };
    let written = serde_json::to_vec(&saved)
        .map_err(|error| error.to_string())
        .and_then(|encoded| {
            replace_file_atomically(&directory.join(QOS_CREDITS_FILE), &encoded)
                .map_err(|error| error.to_string())
        });
    if let Err(error) = written {
        log::warn!("{}: cannot save QoS credits: {error}", directory.display());
    }
}

/// Restores a volume's saved balances with the credits earned since they were saved.
pub(super) fn restore(qos: &VolumeQos, directory: &Path) {
    let path = directory.join(QOS_CREDITS_FILE);
    let Ok(bytes) = fs::read(&path) else { return };
    match serde_json::from_slice::<SavedCredits>(&bytes) {
        Ok(saved) => {
            let elapsed = saved
                .saved_at
                .map(|at| (SystemClock.now().as_secs_f64() - at).max(0.0))
                .unwrap_or(0.0);
            qos.restore_credit_balances(saved.balances, Duration::from_secs_f64(elapsed));
        }
        Err(error) => log::warn!(
            "{}: ignoring unreadable QoS credits: {error}",
            path.display()
        ),
    }
}

impl Service {
    /// Saves the balances of volumes whose I/O spent credits since their last save, at
    /// most every [`SAVE_INTERVAL`]. Balances that only refilled need no write: the
    /// restore credits the refill from the time of the last save.
    pub(super) fn save_spent_credits(&self) {
        {
            let mut last = self
                .credits_saved
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.elapsed() < SAVE_INTERVAL {
                return;
            }
            *last = std::time::Instant::now();
        }
        let state = self.lock();
        for open in state.open.values() {
            let counted = open.qos.snapshot().counted_ios;
            if open.credits_saved_at_ios.swap(counted, Ordering::Relaxed) != counted {
                save(&open.qos, open.store.directory());
            }
        }
    }
}
