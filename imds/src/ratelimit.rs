//! Per-instance request rate limit (a token bucket).
//!
//! EC2 throttles metadata traffic at about 1,024 packets per second per ENI and silently
//! drops the excess. We count HTTP requests instead of packets and answer the excess with
//! 503 + `Retry-After: 1`: a dropped request on a keep-alive connection would stall the
//! client until its timeout, while a 503 makes botocore and cloud-init back off and retry
//! at once, and the excess still costs us almost nothing.

use std::time::Instant;

pub struct RateLimiter {
    per_second: f64,
    /// Burst size: one second's worth of requests.
    capacity: f64,
    available: f64,
    last_refill: Instant,
}

impl RateLimiter {
    /// `None` when `requests_per_second` is 0 (unlimited).
    pub fn new(requests_per_second: u32, now: Instant) -> Option<RateLimiter> {
        if requests_per_second == 0 {
            return None;
        }
        let per_second = f64::from(requests_per_second);
        Some(RateLimiter {
            per_second,
            capacity: per_second,
            available: per_second,
            last_refill: now,
        })
    }

    /// Takes one request's worth; false means throttle this request.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.last_refill = now.max(self.last_refill);
        self.available = (self.available + elapsed * self.per_second).min(self.capacity);
        if self.available >= 1.0 {
            self.available -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The answer to a throttled request.
pub fn throttled_response() -> crate::http::Response {
    crate::http::Response::text(503, "Service Unavailable").with_header("Retry-After", "1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, start).expect("limited");
        let allowed = (0..25).filter(|_| limiter.try_acquire(start)).count();
        assert_eq!(allowed, 10);
        assert!(!limiter.try_acquire(start + Duration::from_millis(50)));
        assert!(limiter.try_acquire(start + Duration::from_millis(150)));
        let later = start + Duration::from_secs(10);
        let allowed = (0..25).filter(|_| limiter.try_acquire(later)).count();
        assert_eq!(allowed, 10, "refill is capped at one second's worth");
        assert!(RateLimiter::new(0, start).is_none());
    }
}
