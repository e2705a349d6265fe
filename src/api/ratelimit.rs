//! Per-client-IP rate limit: a token bucket per address, refilled at
//! `rate-limit-per-s` up to `rate-limit-burst`. Sans-IO: callers pass `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Buckets kept before idle (full) ones are swept.
const SWEEP_AT: usize = 4096;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    /// `per_second == 0` turns the limit off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `ip`, or says how long until one is available.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        if self.buckets.len() >= SWEEP_AT {
            self.sweep(now);
        }
        let (rate, burst) = (self.per_second, self.burst);
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Forgets addresses whose bucket has refilled: they are as good as new.
    fn sweep(&mut self, now: Instant) {
        let (rate, burst) = (self.per_second, self.burst);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut rl = RateLimiter::new(10, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check(ip, t0).is_ok());
        }
        let wait = rl.check(ip, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(rl.check(other, t0).is_ok(), "limits are per address");
        assert!(rl.check(ip, t0 + Duration::from_millis(100)).is_ok());
        assert!(rl.check(ip, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn off_when_zero() {
        let mut rl = RateLimiter::new(0, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(rl.check(ip, t0).is_ok());
        }
    }

    #[test]
    fn sweep_keeps_memory_bounded() {
        let mut rl = RateLimiter::new(1, 1);
        let t0 = Instant::now();
        for i in 0..(SWEEP_AT as u32 + 10) {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = rl.check(ip, t0 + Duration::from_secs(u64::from(i)));
        }
        assert!(rl.buckets.len() < SWEEP_AT);
    }
}
