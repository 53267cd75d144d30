//! The task endpoint's rate limit (task-credentials.md §4.5): one token bucket per (caller IP,
//! URL path), refilled at `rps` tokens a second up to `burst`; a request takes one token or is
//! refused (429). Buckets that are full again are forgotten when the map grows, so a caller
//! walking through many paths cannot grow it without bound.
//!
//! Pure arithmetic over a clock passed in ([`RateLimiter::allow_at`]); no I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept before idle (full) ones are dropped.
const PRUNE_AT: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per (IP, path).
#[derive(Debug)]
pub struct RateLimiter {
    rps: f64,
    burst: f64,
    buckets: Mutex<HashMap<(IpAddr, String), Bucket>>,
}

impl RateLimiter {
    /// `rps` requests a second, bursts of `burst` (`ECS_TASK_METADATA_RPS_LIMIT`).
    pub fn new(rps: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rps: f64::from(rps.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a request from `ip` for `path` may go ahead now.
    pub fn allow(&self, ip: IpAddr, path: &str) -> bool {
        self.allow_at(ip, path, Instant::now())
    }

    /// Whether a request from `ip` for `path` at `now` may go ahead (takes a token if so).
    pub fn allow_at(&self, ip: IpAddr, path: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PRUNE_AT {
            let (rps, burst) = (self.rps, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rps < burst
            });
        }
        let b = buckets.entry((ip, path.to_owned())).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rps).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Buckets held (tests).
    pub fn buckets(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_steady_rate_per_ip_and_path() {
        let l = RateLimiter::new(40, 60);
        let t0 = Instant::now();
        let a = ip("172.17.0.3");
        let allowed = (0..100)
            .filter(|_| l.allow_at(a, "/v2/credentials/x", t0))
            .count();
        assert_eq!(allowed, 60, "the burst");
        // Another path, another caller: their own buckets.
        assert!(l.allow_at(a, "/v4/e", t0));
        assert!(l.allow_at(ip("172.17.0.4"), "/v2/credentials/x", t0));
        // 40 a second: after 100 ms, 4 more.
        let t1 = t0 + Duration::from_millis(100);
        let allowed = (0..10)
            .filter(|_| l.allow_at(a, "/v2/credentials/x", t1))
            .count();
        assert_eq!(allowed, 4);
        // Refilled up to the burst, never beyond.
        let t2 = t1 + Duration::from_secs(60);
        let allowed = (0..100)
            .filter(|_| l.allow_at(a, "/v2/credentials/x", t2))
            .count();
        assert_eq!(allowed, 60);
    }

    #[test]
    fn idle_buckets_are_forgotten_when_many() {
        let l = RateLimiter::new(1, 2);
        let t0 = Instant::now();
        for i in 0..PRUNE_AT {
            assert!(l.allow_at(ip("10.0.0.1"), &format!("/v4/{i}"), t0));
        }
        assert_eq!(l.buckets(), PRUNE_AT);
        // One second later every bucket is full again: all but the new one go.
        l.allow_at(ip("10.0.0.1"), "/v4/new", t0 + Duration::from_secs(1));
        assert_eq!(l.buckets(), 1);
    }
}
