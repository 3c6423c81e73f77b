//! Clocks and token buckets. Buckets run on an injected clock so tests can drive time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Monotonic time and sleeping, injectable for tests.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed origin.
    fn now(&self) -> Duration;
    fn sleep(&self, duration: Duration);
}

/// The real monotonic clock.
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// Wall-clock time since the Unix epoch, for deadlines that must hold across restarts
/// (snapshot timeouts, modification phases and cooldowns, credits accrued while down).
#[derive(Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    }
    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// A clock that only moves when told to (or when something sleeps on it).
#[derive(Default)]
pub struct FakeClock {
    now: Mutex<Duration>,
}

impl FakeClock {
    /// A fake clock that starts at `now` (e.g. the real wall-clock time).
    pub fn starting_at(now: Duration) -> Self {
        FakeClock {
            now: Mutex::new(now),
        }
    }

    pub fn advance(&self, duration: Duration) {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) += duration;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    fn sleep(&self, duration: Duration) {
        self.advance(duration);
    }
}

/// A token bucket that may go into debt: a request always takes its tokens and learns how
/// long to wait until the balance is back at zero. Requests larger than the capacity
/// therefore pass (slowly) instead of stalling, and concurrent callers queue in order.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    refill_per_second: f64,
    balance: f64,
    updated_at: Duration,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: f64, refill_per_second: f64, now: Duration) -> Self {
        TokenBucket {
            capacity,
            refill_per_second,
            balance: capacity,
            updated_at: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.updated_at).as_secs_f64();
        self.balance = (self.balance + elapsed * self.refill_per_second).min(self.capacity);
        self.updated_at = self.updated_at.max(now);
    }

    /// Takes `tokens`; returns how long the caller must wait before proceeding.
    pub fn take(&mut self, tokens: f64, now: Duration) -> Duration {
        self.refill(now);
        self.balance -= tokens;
        if self.balance >= 0.0 || self.refill_per_second <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.balance / self.refill_per_second)
        }
    }

    /// The balance at `now` (negative while in debt).
    pub fn balance(&mut self, now: Duration) -> f64 {
        self.refill(now);
        self.balance
    }

    /// Sets the balance (clamped to the capacity), e.g. to restore saved credits.
    pub fn set_balance(&mut self, balance: f64, now: Duration) {
        self.refill(now);
        self.balance = balance.min(self.capacity);
    }

    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    pub fn refill_per_second(&self) -> f64 {
        self.refill_per_second
    }

    /// Changes size and rate, keeping the balance (clamped to the new capacity).
    pub fn reconfigure(&mut self, capacity: f64, refill_per_second: f64, now: Duration) {
        self.refill(now);
        self.capacity = capacity;
        self.refill_per_second = refill_per_second;
        self.balance = self.balance.min(capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_up_to_capacity() {
        let mut bucket = TokenBucket::new(10.0, 5.0, Duration::ZERO);
        assert_eq!(bucket.take(10.0, Duration::ZERO), Duration::ZERO);
        assert_eq!(bucket.balance(Duration::from_secs(1)), 5.0);
        assert_eq!(bucket.balance(Duration::from_secs(100)), 10.0);
    }

    #[test]
    fn debt_turns_into_waiting_time() {
        let mut bucket = TokenBucket::new(10.0, 5.0, Duration::ZERO);
        assert_eq!(bucket.take(20.0, Duration::ZERO), Duration::from_secs(2));
        // A second caller queues behind the first.
        assert_eq!(bucket.take(5.0, Duration::ZERO), Duration::from_secs(3));
        assert_eq!(
            bucket.take(5.0, Duration::from_secs(3)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn reconfigure_keeps_and_clamps_the_balance() {
        let mut bucket = TokenBucket::new(100.0, 1.0, Duration::ZERO);
        bucket.take(40.0, Duration::ZERO);
        bucket.reconfigure(50.0, 2.0, Duration::ZERO);
        assert_eq!(bucket.balance(Duration::ZERO), 50.0);
        bucket.reconfigure(200.0, 2.0, Duration::ZERO);
        assert_eq!(bucket.balance(Duration::from_secs(10)), 70.0);
    }

    #[test]
    fn fake_clock_moves_only_when_told() {
        let clock = FakeClock::default();
        assert_eq!(clock.now(), Duration::ZERO);
        clock.sleep(Duration::from_millis(1500));
        clock.advance(Duration::from_millis(500));
        assert_eq!(clock.now(), Duration::from_secs(2));
    }
}
