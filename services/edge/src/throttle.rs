//! Per-address protections: a cap on concurrent connections per IP, and a growing delay
//! for repeated authentication failures from one IP (RFC 6120 §13.1 asks servers to
//! resist dictionary attacks). Entries age out so the maps stay bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct ConnLimiter {
    max: u32,
    counts: Mutex<HashMap<IpAddr, u32>>,
}

/// Releases the slot when dropped.
pub struct ConnSlot<'a> {
    limiter: &'a ConnLimiter,
    ip: IpAddr,
}

impl ConnLimiter {
    pub fn new(max: u32) -> Self {
        ConnLimiter { max, counts: Mutex::new(HashMap::new()) }
    }
    pub fn acquire(&self, ip: IpAddr) -> Option<ConnSlot<'_>> {
        let mut m = self.counts.lock().ok()?;
        let c = m.entry(ip).or_insert(0);
        if *c >= self.max {
            return None;
        }
        *c += 1;
        Some(ConnSlot { limiter: self, ip })
    }
}

impl Drop for ConnSlot<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.limiter.counts.lock()
            && let Some(c) = m.get_mut(&self.ip)
        {
            *c = c.saturating_sub(1);
            if *c == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

pub struct AuthThrottle {
    free: u32,
    max_delay: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

impl AuthThrottle {
    pub fn new(free: u32, max_delay: Duration) -> Self {
        AuthThrottle { free, max_delay, failures: Mutex::new(HashMap::new()) }
    }

    /// Records a failure and returns how long to wait before answering it.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let Ok(mut m) = self.failures.lock() else { return self.max_delay };
        let now = Instant::now();
        if m.len() > 50_000 {
            m.retain(|_, (_, t)| now.duration_since(*t) < FORGET_AFTER);
        }
        let e = m.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) > FORGET_AFTER {
            *e = (0, now);
        }
        e.0 += 1;
        e.1 = now;
        self.delay_for(e.0)
    }

    /// The delay after the n-th consecutive failure: none for the first `free` ones,
    /// then doubling from one second up to the maximum.
    pub fn delay_for(&self, n: u32) -> Duration {
        if n <= self.free {
            return Duration::ZERO;
        }
        let exp = (n - self.free - 1).min(16);
        Duration::from_secs(1u64 << exp).min(self.max_delay)
    }

    pub fn succeeded(&self, ip: IpAddr) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn connection_cap_per_ip() {
        let l = ConnLimiter::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let a = l.acquire(ip).unwrap();
        let _b = l.acquire(ip).unwrap();
        assert!(l.acquire(ip).is_none());
        assert!(l.acquire(other).is_some());
        drop(a);
        assert!(l.acquire(ip).is_some());
    }

    #[test]
    fn auth_delay_grows_then_caps_and_resets() {
        let t = AuthThrottle::new(2, Duration::from_secs(5));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(t.failed(ip), Duration::ZERO);
        assert_eq!(t.failed(ip), Duration::ZERO);
        assert_eq!(t.failed(ip), Duration::from_secs(1));
        assert_eq!(t.failed(ip), Duration::from_secs(2));
        assert_eq!(t.failed(ip), Duration::from_secs(4));
        assert_eq!(t.failed(ip), Duration::from_secs(5));
        t.succeeded(ip);
        assert_eq!(t.failed(ip), Duration::ZERO);
    }
}
