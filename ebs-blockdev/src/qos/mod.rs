//! Per-volume QoS with EBS's model: requests are converted to I/Os (see `accounting`),
//! then charged against token buckets for IOPS and throughput, with credit buckets where
//! EBS has them (gp2 and standard I/O credits, st1/sc1 throughput credits).

pub mod accounting;
pub mod bucket;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use accounting::IoAccountant;
pub use bucket::{Clock, FakeClock, MonotonicClock, SystemClock, TokenBucket};

use crate::control::{VolumePerformance, VolumeType};
use crate::nbd::{IoDirection, IoThrottle};

const MIB: f64 = 1024.0 * 1024.0;
/// gp2's I/O credit bucket: 5.4 million credits, enough for 3,000 IOPS for 30 minutes.
pub const GP2_CREDIT_CAPACITY: f64 = 5_400_000.0;
/// Rate limiters hold this much time's worth of tokens, so an idle volume cannot
/// exceed its rate by more than a few I/Os when it starts again.
const LIMITER_WINDOW_SECONDS: f64 = 0.01;

/// A credit bucket: capacity (I/Os or MiB) refilled at the baseline rate per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CreditSpec {
    pub capacity: f64,
    pub baseline_per_second: f64,
}

/// What a volume may do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QosPolicy {
    pub hdd: bool,
    /// The IOPS ceiling (burst rate when there is a credit bucket).
    pub max_iops: f64,
    pub iops_credits: Option<CreditSpec>,
    /// The throughput ceiling in MiB/s (burst rate when there is a credit bucket).
    pub max_throughput_mibps: f64,
    pub throughput_credits: Option<CreditSpec>,
}

impl QosPolicy {
    pub fn for_volume(kind: VolumeType, size_gib: u64, performance: &VolumePerformance) -> Self {
        let baseline_iops = f64::from(performance.baseline_iops);
        let burst_iops = f64::from(performance.burst_iops);
        let iops_credits = match kind {
            VolumeType::Gp2 if burst_iops > baseline_iops => Some(CreditSpec {
                capacity: GP2_CREDIT_CAPACITY,
                baseline_per_second: baseline_iops,
            }),
            // Magnetic: one hour of burst in the bucket (docs/ebs.md).
            VolumeType::Standard => Some(CreditSpec {
                capacity: burst_iops * 3600.0,
                baseline_per_second: baseline_iops,
            }),
            _ => None,
        };
        let throughput_credits = kind.is_hdd().then(|| CreditSpec {
            // 1 TiB of throughput credits per TiB of volume size.
            capacity: size_gib as f64 * 1024.0,
            baseline_per_second: f64::from(performance.baseline_throughput_mibps),
        });
        QosPolicy {
            hdd: kind.is_hdd(),
            max_iops: burst_iops,
            iops_credits,
            max_throughput_mibps: f64::from(performance.burst_throughput_mibps),
            throughput_credits,
        }
    }
}

impl QosPolicy {
    /// The policy of a volume being optimized after ModifyVolume: EC2 says performance
    /// is then "between the source and target configuration"; this takes the lower
    /// ceiling of the two for IOPS and for throughput (never more than either promises)
    /// and keeps the source's accounting and credit buckets until the modification
    /// completes.
    pub fn between(source: &QosPolicy, target: &QosPolicy) -> QosPolicy {
        QosPolicy {
            max_iops: source.max_iops.min(target.max_iops),
            max_throughput_mibps: source.max_throughput_mibps.min(target.max_throughput_mibps),
            ..*source
        }
    }
}

fn limiter(rate: f64, now: Duration) -> TokenBucket {
    TokenBucket::new((rate * LIMITER_WINDOW_SECONDS).max(1.0), rate, now)
}

fn credit_bucket(spec: CreditSpec, now: Duration) -> TokenBucket {
    TokenBucket::new(spec.capacity, spec.baseline_per_second, now)
}

struct QosState {
    policy: QosPolicy,
    iops_limit: TokenBucket,
    iops_credits: Option<TokenBucket>,
    throughput_limit: TokenBucket,
    throughput_credits: Option<TokenBucket>,
    reads: IoAccountant,
    writes: IoAccountant,
    counted_ios: u64,
}

/// A volume's QoS state; shared by every connection to the volume.
pub struct VolumeQos {
    clock: Arc<dyn Clock>,
    state: Mutex<QosState>,
    throttled_nanos: AtomicU64,
}

/// Credit balances worth keeping across a restart of ebsd (gp2/standard I/O credits,
/// st1/sc1 throughput credits).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreditBalances {
    pub io_credits: Option<f64>,
    pub throughput_credits_mib: Option<f64>,
}

/// A moment's view of a volume's buckets, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QosSnapshot {
    /// Credits left in the credit bucket as a percentage (EBS's BurstBalance); 100 when
    /// the volume type has no credit bucket.
    pub burst_balance_percent: f64,
    /// I/O credits left (gp2, standard), if the type has an I/O credit bucket.
    pub io_credit_balance: Option<f64>,
    /// Throughput credits left in MiB (st1, sc1).
    pub throughput_credit_balance_mib: Option<f64>,
    pub throttled_seconds: f64,
    pub counted_ios: u64,
    /// The IOPS and throughput ceilings in force (they change during ModifyVolume).
    pub iops_limit: f64,
    pub throughput_limit_mibps: f64,
}

impl VolumeQos {
    pub fn new(policy: QosPolicy, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        let state = QosState {
            policy,
            iops_limit: limiter(policy.max_iops, now),
            iops_credits: policy.iops_credits.map(|spec| credit_bucket(spec, now)),
            throughput_limit: limiter(policy.max_throughput_mibps, now),
            throughput_credits: policy
                .throughput_credits
                .map(|spec| credit_bucket(spec, now)),
            reads: IoAccountant::new(policy.hdd),
            writes: IoAccountant::new(policy.hdd),
            counted_ios: 0,
        };
        VolumeQos {
            clock,
            state: Mutex::new(state),
            throttled_nanos: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QosState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a new policy (ModifyVolume), keeping credit balances.
    pub fn set_policy(&self, policy: QosPolicy) {
        let now = self.clock.now();
        let mut state = self.lock();
        if state.policy.hdd != policy.hdd {
            state.reads = IoAccountant::new(policy.hdd);
            state.writes = IoAccountant::new(policy.hdd);
        }
        state.iops_limit.reconfigure(
            (policy.max_iops * LIMITER_WINDOW_SECONDS).max(1.0),
            policy.max_iops,
            now,
        );
        state.throughput_limit.reconfigure(
            (policy.max_throughput_mibps * LIMITER_WINDOW_SECONDS).max(1.0),
            policy.max_throughput_mibps,
            now,
        );
        state.iops_credits = match (state.iops_credits.take(), policy.iops_credits) {
            (Some(mut bucket), Some(spec)) => {
                bucket.reconfigure(spec.capacity, spec.baseline_per_second, now);
                Some(bucket)
            }
            (None, Some(spec)) => Some(credit_bucket(spec, now)),
            (_, None) => None,
        };
        state.throughput_credits =
            match (state.throughput_credits.take(), policy.throughput_credits) {
                (Some(mut bucket), Some(spec)) => {
                    bucket.reconfigure(spec.capacity, spec.baseline_per_second, now);
                    Some(bucket)
                }
                (None, Some(spec)) => Some(credit_bucket(spec, now)),
                (_, None) => None,
            };
        state.policy = policy;
    }

    /// Charges a request and returns how long it must wait (without sleeping).
    pub fn reserve(&self, direction: IoDirection, offset: u64, length: u64) -> Duration {
        let now = self.clock.now();
        let mut state = self.lock();
        let state = &mut *state;
        let accountant = match direction {
            IoDirection::Read => &mut state.reads,
            IoDirection::Write => &mut state.writes,
        };
        let ios = accountant.count(offset, length);
        let unit = accountant.unit() as f64;
        state.counted_ios += ios;
        // HDD I/Os are charged a whole unit of throughput each (random or small I/Os
        // cost 1 MiB); SSD throughput is the bytes moved.
        let mebibytes = if state.policy.hdd {
            ios as f64 * unit / MIB
        } else {
            length as f64 / MIB
        };
        let mut wait = Duration::ZERO;
        if ios > 0 {
            wait = wait.max(state.iops_limit.take(ios as f64, now));
            if let Some(credits) = &mut state.iops_credits {
                wait = wait.max(credits.take(ios as f64, now));
            }
        }
        if mebibytes > 0.0 {
            wait = wait.max(state.throughput_limit.take(mebibytes, now));
            if let Some(credits) = &mut state.throughput_credits {
                wait = wait.max(credits.take(mebibytes, now));
            }
        }
        wait
    }

    /// Charges a request and sleeps until it may proceed.
    pub fn admit_request(&self, direction: IoDirection, offset: u64, length: u64) {
        let wait = self.reserve(direction, offset, length);
        if !wait.is_zero() {
            self.throttled_nanos
                .fetch_add(wait.as_nanos() as u64, Ordering::Relaxed);
            self.clock.sleep(wait);
        }
    }

    pub fn credit_balances(&self) -> CreditBalances {
        let now = self.clock.now();
        let mut state = self.lock();
        CreditBalances {
            io_credits: state
                .iops_credits
                .as_mut()
                .map(|bucket| bucket.balance(now)),
            throughput_credits_mib: state
                .throughput_credits
                .as_mut()
                .map(|bucket| bucket.balance(now)),
        }
    }

    /// Restores saved balances into the buckets the current policy has, plus what the
    /// buckets earn at their baseline over `elapsed` (the time since they were saved,
    /// including downtime: EBS volumes accrue credits while nothing uses them), up to
    /// each bucket's capacity.
    pub fn restore_credit_balances(&self, balances: CreditBalances, elapsed: Duration) {
        let now = self.clock.now();
        let mut state = self.lock();
        let earned = |bucket: &TokenBucket| bucket.refill_per_second() * elapsed.as_secs_f64();
        if let (Some(bucket), Some(balance)) = (state.iops_credits.as_mut(), balances.io_credits) {
            let balance = balance + earned(bucket);
            bucket.set_balance(balance, now);
        }
        if let (Some(bucket), Some(balance)) = (
            state.throughput_credits.as_mut(),
            balances.throughput_credits_mib,
        ) {
            let balance = balance + earned(bucket);
            bucket.set_balance(balance, now);
        }
    }

    pub fn snapshot(&self) -> QosSnapshot {
        let now = self.clock.now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let counted_ios = state.counted_ios;
        let io_credit_balance = state
            .iops_credits
            .as_mut()
            .map(|bucket| bucket.balance(now).max(0.0));
        let throughput_credit_balance_mib = state
            .throughput_credits
            .as_mut()
            .map(|bucket| bucket.balance(now).max(0.0));
        let percent =
            |bucket: &mut TokenBucket| 100.0 * bucket.balance(now).max(0.0) / bucket.capacity();
        let burst_balance_percent = match (&mut state.iops_credits, &mut state.throughput_credits) {
            (Some(bucket), _) | (None, Some(bucket)) => percent(bucket),
            (None, None) => 100.0,
        };
        QosSnapshot {
            burst_balance_percent,
            io_credit_balance,
            throughput_credit_balance_mib,
            throttled_seconds: self.throttled_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            counted_ios,
            iops_limit: state.policy.max_iops,
            throughput_limit_mibps: state.policy.max_throughput_mibps,
        }
    }
}

impl IoThrottle for VolumeQos {
    fn admit(&self, direction: IoDirection, offset: u64, length: u64) {
        self.admit_request(direction, offset, length);
    }
}

#[cfg(test)]
#[path = "qos_tests.rs"]
mod tests;
