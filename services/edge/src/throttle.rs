//! Login protections: a cap on concurrent connections per IP, and a growing delay for
//! repeated wrong credentials per (account, address) and per account (RFC 6120 §13.1 asks
//! servers to resist dictionary attacks). Entries age out and are capped so the maps stay
//! bounded.

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

/// Growing delays for wrong credentials (RFC 6120 §13.1: resist dictionary attacks).
///
/// Only a password that was checked and found wrong counts (or an unknown user after a
/// complete exchange, which looks the same to the client); protocol errors such as a
/// malformed SASL request or a `-PLUS` mechanism without channel binding never do, so a
/// client that falls back from one mechanism to another is not slowed.
///
/// Two counters, and the delay is the larger of the two:
/// - per (account, address): `free` failures, then 1 s doubling up to `max_delay`; a
///   successful login of that account from that address clears it. Users sharing one
///   address (a campus NAT, a bridge) do not slow each other down.
/// - per account, across addresses: [`ACCOUNT_FREE_FACTOR`] times as many free failures,
///   then the same growth and bound, so a guesser spreading over many addresses is still
///   slowed. A success does not clear it (the guesser could log in to an account of its
///   own in between); it ages out.
///
/// Entries are forgotten [`FORGET_AFTER`] after their last failure; each map holds at most
/// [`MAX_ENTRIES`] (the oldest go first), so memory stays bounded under a flood of names.
pub struct AuthThrottle {
    free: u32,
    max_delay: Duration,
    maps: Mutex<Maps>,
}

#[derive(Default)]
struct Maps {
    by_pair: HashMap<(String, IpAddr), Count>,
    by_account: HashMap<String, Count>,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    n: u32,
    last: Instant,
}

/// Failures older than this are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most entries in each map.
pub const MAX_ENTRIES: usize = 50_000;
/// The per-account counter allows this many times the per-(account, address) free failures.
pub const ACCOUNT_FREE_FACTOR: u32 = 10;

/// Adds a failure under `key`, keeping `map` within `cap` entries; returns the count.
fn bump<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, Count>, key: &K, now: Instant, cap: usize) -> u32 {
    if !map.contains_key(key) && map.len() >= cap {
        map.retain(|_, c| now.duration_since(c.last) < FORGET_AFTER);
        if map.len() >= cap {
            // Still full of live entries: drop the older half.
            let mut times: Vec<Instant> = map.values().map(|c| c.last).collect();
            let mid = times.len() / 2;
            let (_, cut, _) = times.select_nth_unstable(mid);
            let cut = *cut;
            map.retain(|_, c| c.last > cut);
        }
    }
    let c = map.entry(key.clone()).or_insert(Count { n: 0, last: now });
    if now.duration_since(c.last) > FORGET_AFTER {
        c.n = 0;
    }
    c.n = c.n.saturating_add(1);
    c.last = now;
    c.n
}

impl AuthThrottle {
    pub fn new(free: u32, max_delay: Duration) -> Self {
        AuthThrottle { free, max_delay, maps: Mutex::new(Maps::default()) }
    }

    /// Records wrong credentials for `account` (`None`: a name that is no valid account)
    /// from `ip`; returns how long to wait before answering.
    pub fn failed(&self, account: Option<&str>, ip: IpAddr) -> Duration {
        self.failed_at(account, ip, Instant::now(), MAX_ENTRIES)
    }

    fn failed_at(&self, account: Option<&str>, ip: IpAddr, now: Instant, cap: usize) -> Duration {
        let Ok(mut m) = self.maps.lock() else { return self.max_delay };
        let account = account.unwrap_or_default().to_owned();
        let pair = bump(&mut m.by_pair, &(account.clone(), ip), now, cap);
        let total = bump(&mut m.by_account, &account, now, cap);
        let account_free = self.free.saturating_mul(ACCOUNT_FREE_FACTOR);
        Self::delay(self.free, pair, self.max_delay).max(Self::delay(account_free, total, self.max_delay))
    }

    /// The delay after the n-th failure: none for the first `free` ones, then doubling
    /// from one second up to `max`.
    fn delay(free: u32, n: u32, max: Duration) -> Duration {
        if n <= free {
            return Duration::ZERO;
        }
        let exp = (n - free - 1).min(16);
        Duration::from_secs(1u64 << exp).min(max)
    }

    /// The delay after the n-th failure of one account from one address.
    pub fn delay_for(&self, n: u32) -> Duration {
        Self::delay(self.free, n, self.max_delay)
    }

    /// A successful login clears the (account, address) count.
    pub fn succeeded(&self, account: &str, ip: IpAddr) {
        if let Ok(mut m) = self.maps.lock() {
            m.by_pair.remove(&(account.to_owned(), ip));
        }
    }

    /// Entries held (pairs, accounts), for tests and metrics.
    pub fn entries(&self) -> (usize, usize) {
        self.maps.lock().map(|m| (m.by_pair.len(), m.by_account.len())).unwrap_or_default()
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
        let a = Some("alice@localhost");
        assert_eq!(t.failed(a, ip), Duration::ZERO);
        assert_eq!(t.failed(a, ip), Duration::ZERO);
        assert_eq!(t.failed(a, ip), Duration::from_secs(1));
        assert_eq!(t.failed(a, ip), Duration::from_secs(2));
        assert_eq!(t.failed(a, ip), Duration::from_secs(4));
        assert_eq!(t.failed(a, ip), Duration::from_secs(5));
        t.succeeded("alice@localhost", ip);
        assert_eq!(t.failed(a, ip), Duration::ZERO);
    }

    #[test]
    fn other_accounts_behind_one_address_are_not_slowed() {
        let t = AuthThrottle::new(2, Duration::from_secs(30));
        let nat: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            t.failed(Some("typo@localhost"), nat);
        }
        assert!(t.failed(Some("typo@localhost"), nat) > Duration::ZERO);
        // Every other user behind the same address still has their free failures.
        for i in 0..50 {
            let user = format!("user{i}@localhost");
            assert_eq!(t.failed(Some(&user), nat), Duration::ZERO, "{user}");
            assert_eq!(t.failed(Some(&user), nat), Duration::ZERO, "{user}");
        }
    }

    #[test]
    fn one_account_attacked_from_many_addresses_is_slowed() {
        let t = AuthThrottle::new(2, Duration::from_secs(30));
        let free_total = 2 * ACCOUNT_FREE_FACTOR;
        // Two tries per address never trip the per-address counter...
        let mut last = Duration::ZERO;
        for i in 0..(free_total + 4) {
            let ip = IpAddr::from([198, 51, 100, (i / 2) as u8]);
            last = t.failed(Some("victim@localhost"), ip);
            if i < free_total {
                assert_eq!(last, Duration::ZERO, "failure {i}");
            }
        }
        // ...but the account's own counter does, with the same bounded growth.
        assert_eq!(last, Duration::from_secs(8));
        for i in 0..20 {
            last = t.failed(Some("victim@localhost"), IpAddr::from([203, 0, 113, i]));
        }
        assert_eq!(last, Duration::from_secs(30), "bounded by the maximum");
        // A success from one address does not clear the account's counter.
        t.succeeded("victim@localhost", IpAddr::from([198, 51, 100, 0]));
        assert!(t.failed(Some("victim@localhost"), IpAddr::from([203, 0, 113, 200])) > Duration::ZERO);
        // Another account is not affected.
        assert_eq!(t.failed(Some("bystander@localhost"), IpAddr::from([203, 0, 113, 1])), Duration::ZERO);
    }

    #[test]
    fn failures_are_forgotten_after_a_while() {
        let t = AuthThrottle::new(1, Duration::from_secs(30));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        assert_eq!(t.failed_at(Some("a@x"), ip, now, MAX_ENTRIES), Duration::ZERO);
        assert_eq!(t.failed_at(Some("a@x"), ip, now, MAX_ENTRIES), Duration::from_secs(1));
        let later = now + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(t.failed_at(Some("a@x"), ip, later, MAX_ENTRIES), Duration::ZERO);
    }

    #[test]
    fn memory_stays_bounded() {
        let t = AuthThrottle::new(1, Duration::from_secs(30));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        for i in 0..1000u32 {
            let name = format!("guess{i}@x");
            t.failed_at(Some(&name), ip, now + Duration::from_millis(u64::from(i)), 100);
        }
        let (pairs, accounts) = t.entries();
        assert!(pairs <= 100 && accounts <= 100, "{pairs} pairs, {accounts} accounts");
        // The newest entry survived the eviction and keeps counting.
        let d = t.failed_at(Some("guess999@x"), ip, now + Duration::from_secs(2), 100);
        assert_eq!(d, Duration::from_secs(1));
    }
}
