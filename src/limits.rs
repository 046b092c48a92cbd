//! Limits on clients: connection caps, enforced before the upgrade (a
//! refused client gets an HTTP status, 503 for the relay-wide cap and 429
//! for the per-address cap, never a WebSocket that is then closed), and the
//! per-connection message rate.
//!
//! Nothing else in the crate: plain counters and a token bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What happens to a client that sends faster than its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRateExceeded {
    /// Close it with 1008 "rate limit exceeded".
    Close,
    /// Drop the excess messages and keep the client.
    Drop,
}

/// Caps on concurrent clients; 0 means no cap.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    // Only touched when a per-address cap is set.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Which cap a refused client hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    Total,
    PerIp,
}

/// A client's place under the caps; given back when dropped.
pub struct Permit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for a client from `ip`, or says which cap is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, LimitExceeded> {
        let taken = self.total.fetch_add(1, Ordering::AcqRel);
        if self.max_total > 0 && taken >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitExceeded::Total);
        }
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(LimitExceeded::PerIp);
            }
            *n += 1;
        }
        Ok(Permit {
            limits: self.clone(),
            ip,
        })
    }

    /// Clients holding a place now (what the tests check; the metrics
    /// count clients themselves).
    #[cfg(test)]
    pub fn active(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Permit {
    /// The address the place was taken for.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let limits = &self.limits;
        if limits.max_per_ip > 0 {
            let mut per_ip = limits.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
        limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A token bucket: `rate` messages per second on average, bursts of up to
/// `burst`. Sixteen bytes per client, and only for clients with a limit.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f32,
    burst: f32,
    tokens: f32,
    last: Instant,
}

impl RateLimit {
    /// `None` when `per_second` is 0 (no limit). A `burst` of 0 means one
    /// second's worth.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let burst = if burst == 0 { per_second } else { burst } as f32;
        Some(Self {
            rate: per_second as f32,
            burst,
            tokens: burst,
            last: Instant::now(),
        })
    }

    /// Takes a token for one message at `now`; false if there is none.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn total_cap_refuses_until_a_place_is_freed() {
        let l = ConnectionLimits::new(2, 0);
        let a = l.try_acquire(ip("10.0.0.1")).unwrap();
        let _b = l.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(
            l.try_acquire(ip("10.0.0.3")).err(),
            Some(LimitExceeded::Total)
        );
        assert_eq!(l.active(), 2);
        drop(a);
        assert!(l.try_acquire(ip("10.0.0.3")).is_ok());
    }

    #[test]
    fn per_address_cap_counts_each_address_apart() {
        let l = ConnectionLimits::new(0, 1);
        let a = l.try_acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(
            l.try_acquire(ip("10.0.0.1")).err(),
            Some(LimitExceeded::PerIp)
        );
        let _b = l.try_acquire(ip("10.0.0.2")).unwrap();
        drop(a);
        let _c = l.try_acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(l.active(), 2);
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        use std::time::Duration;
        assert!(RateLimit::new(0, 5).is_none());
        let mut r = RateLimit::new(10, 3).unwrap();
        let t0 = Instant::now();
        assert_eq!((0..5).filter(|_| r.allow(t0)).count(), 3);
        // 10 per second: one more token every 100 ms, never above the burst.
        assert!(r.allow(t0 + Duration::from_millis(100)));
        assert!(!r.allow(t0 + Duration::from_millis(110)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| r.allow(later)).count(), 3);
    }

    #[test]
    fn no_caps_means_no_refusals() {
        let l = ConnectionLimits::new(0, 0);
        let permits: Vec<_> = (0..1000)
            .map(|_| l.try_acquire(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(l.active(), 1000);
        drop(permits);
        assert_eq!(l.active(), 0);
    }
}
