//! Firecracker-style rate limiting: two token buckets (bandwidth in bytes,
//! operations), each with a size, a refill time for a full bucket, and an
//! optional one-time burst spent before the bucket. A request passes only
//! if every configured bucket can pay for it; otherwise the caller is told
//! how long to wait and retries then (devices put the request back on
//! their queue meanwhile, so nothing is lost).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One bucket, as configured (Firecracker's field names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens a full bucket holds.
    pub size: u64,
    /// Extra tokens available once, before the bucket is used.
    #[serde(default)]
    pub one_time_burst: u64,
    /// Milliseconds to refill an empty bucket.
    pub refill_time: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

#[derive(Clone, Debug)]
pub struct TokenBucket {
    size: u64,
    burst: u64,
    refill: Duration,
    budget: u64,
    last: Instant,
}

impl TokenBucket {
    /// None when the configuration means "unlimited" (size or refill 0).
    pub fn new(cfg: &TokenBucketConfig, now: Instant) -> Option<Self> {
        (cfg.size > 0 && cfg.refill_time > 0).then(|| Self {
            size: cfg.size,
            burst: cfg.one_time_burst,
            refill: Duration::from_millis(cfg.refill_time),
            budget: cfg.size,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let add =
            (u128::from(self.size) * elapsed.as_nanos() / self.refill.as_nanos().max(1)) as u64;
        if add > 0 {
            self.budget = (self.budget + add).min(self.size);
            self.last = now;
        }
    }

    /// Tokens available right now (burst included).
    fn available(&self) -> u64 {
        self.burst + self.budget
    }

    /// A request bigger than the bucket passes when the bucket is full,
    /// draining it, so it is delayed but never starved.
    fn affordable(&self, tokens: u64) -> bool {
        tokens <= self.available() || (tokens > self.size && self.budget == self.size)
    }

    fn take(&mut self, mut tokens: u64) {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        tokens -= from_burst;
        self.budget = self.budget.saturating_sub(tokens);
    }

    /// How long until `tokens` (capped at a full bucket) are available.
    fn wait_for(&self, tokens: u64) -> Duration {
        let missing = tokens.min(self.size).saturating_sub(self.available());
        let nanos = u128::from(missing) * self.refill.as_nanos() / u128::from(self.size);
        Duration::from_nanos(nanos as u64).max(Duration::from_millis(1))
    }
}

/// Bandwidth and ops buckets together.
#[derive(Clone, Debug, Default)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl RateLimiter {
    pub fn new(cfg: &RateLimiterConfig, now: Instant) -> Self {
        Self {
            bandwidth: cfg
                .bandwidth
                .as_ref()
                .and_then(|c| TokenBucket::new(c, now)),
            ops: cfg.ops.as_ref().and_then(|c| TokenBucket::new(c, now)),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Pay for one operation of `bytes`, or learn how long to wait.
    pub fn consume(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        for b in [self.bandwidth.as_mut(), self.ops.as_mut()]
            .into_iter()
            .flatten()
        {
            b.refill(now);
        }
        let bw_ok = self.bandwidth.as_ref().is_none_or(|b| b.affordable(bytes));
        let ops_ok = self.ops.as_ref().is_none_or(|b| b.affordable(1));
        if bw_ok && ops_ok {
            if let Some(b) = self.bandwidth.as_mut() {
                b.take(bytes);
            }
            if let Some(b) = self.ops.as_mut() {
                b.take(1);
            }
            return Ok(());
        }
        let bw_wait = self
            .bandwidth
            .as_ref()
            .filter(|_| !bw_ok)
            .map(|b| b.wait_for(bytes));
        let ops_wait = self.ops.as_ref().filter(|_| !ops_ok).map(|b| b.wait_for(1));
        Err(bw_wait
            .into_iter()
            .chain(ops_wait)
            .max()
            .unwrap_or(Duration::from_millis(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(size: u64, burst: u64, refill_ms: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time: refill_ms,
        }
    }

    #[test]
    fn ops_bucket_limits_rate_and_refills_over_time() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            &RateLimiterConfig {
                bandwidth: None,
                ops: Some(cfg(10, 0, 1000)),
            },
            t0,
        );
        for _ in 0..10 {
            assert!(rl.consume(4096, t0).is_ok());
        }
        let wait = rl.consume(4096, t0).unwrap_err();
        assert!(
            wait >= Duration::from_millis(99) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
        // 100 ms later one token came back, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(rl.consume(4096, t1).is_ok());
        assert!(rl.consume(4096, t1).is_err());
        // A second later the bucket is full again (never more than full).
        let t2 = t1 + Duration::from_secs(5);
        for _ in 0..10 {
            assert!(rl.consume(1, t2).is_ok());
        }
        assert!(rl.consume(1, t2).is_err());
    }

    #[test]
    fn one_time_burst_is_spent_first_and_only_once() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            &RateLimiterConfig {
                bandwidth: Some(cfg(1000, 5000, 1000)),
                ops: None,
            },
            t0,
        );
        assert!(
            rl.consume(5500, t0).is_ok(),
            "burst 5000 + 500 of the bucket"
        );
        assert!(rl.consume(500, t0).is_ok());
        assert!(rl.consume(1, t0).is_err());
        let t1 = t0 + Duration::from_secs(10);
        assert!(rl.consume(1000, t1).is_ok());
        assert!(rl.consume(1, t1).is_err(), "the burst does not come back");
    }

    #[test]
    fn oversized_requests_pass_when_the_bucket_is_full() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            &RateLimiterConfig {
                bandwidth: Some(cfg(1000, 0, 100)),
                ops: None,
            },
            t0,
        );
        assert!(rl.consume(5000, t0).is_ok());
        let wait = rl.consume(5000, t0).unwrap_err();
        assert!(wait >= Duration::from_millis(99), "{wait:?}");
        assert!(rl.consume(5000, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn both_buckets_must_agree_and_zero_means_unlimited() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            &RateLimiterConfig {
                bandwidth: Some(cfg(100, 0, 1000)),
                ops: Some(cfg(1, 0, 1000)),
            },
            t0,
        );
        assert!(rl.consume(10, t0).is_ok());
        assert!(rl.consume(10, t0).is_err(), "ops bucket empty");
        assert!(RateLimiter::new(
            &RateLimiterConfig {
                bandwidth: Some(cfg(0, 0, 1000)),
                ops: None
            },
            t0
        )
        .is_unlimited());
    }
}
