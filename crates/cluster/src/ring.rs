//! Rendezvous (highest random weight) hashing of a user's bare JID over the routers an
//! edge may use right now (connected and not draining).
//!
//! Every (key, router) pair gets a score from a fixed 64-bit hash; the key belongs to the
//! router with the highest score. Removing a router moves only the keys it owned; adding
//! one moves to it only the keys it now wins. The hash is spelled out here (FNV-1a plus
//! the SplitMix64 finalizer) rather than taken from `std`, whose hasher may change between
//! Rust releases: edges built by different compilers must agree on the owner of a user.
//!
//! Must not touch: connections, I/O, JID parsing (keys are already-normalized bare JIDs).

use rookery_jid::BareJid;
use std::fmt;
use std::sync::Arc;

/// A router's stable name in the membership (a pod name, or a configured id).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouterId(Arc<str>);

impl RouterId {
    pub fn new(id: &str) -> Self {
        RouterId(Arc::from(id))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RouterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RouterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RouterId({})", self.0)
    }
}

/// FNV-1a, 64 bit.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64 finalizer: a bijection with full avalanche, so the XOR of two FNV hashes
/// becomes a well-spread score.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The set of routers keys are spread over. Cheap to rebuild: it changes only when a
/// router connects, drains or disconnects.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    routers: Vec<(RouterId, u64)>,
}

impl Ring {
    pub fn new(routers: impl IntoIterator<Item = RouterId>) -> Self {
        let mut ring = Ring::default();
        for r in routers {
            ring.insert(r);
        }
        ring
    }

    pub fn insert(&mut self, id: RouterId) {
        if !self.contains(&id) {
            let h = fnv1a(id.as_str().as_bytes());
            self.routers.push((id, h));
            self.routers.sort_by(|a, b| a.0.cmp(&b.0));
        }
    }

    pub fn remove(&mut self, id: &RouterId) -> bool {
        let before = self.routers.len();
        self.routers.retain(|(r, _)| r != id);
        self.routers.len() != before
    }

    pub fn contains(&self, id: &RouterId) -> bool {
        self.routers.iter().any(|(r, _)| r == id)
    }

    pub fn len(&self) -> usize {
        self.routers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
    }

    pub fn routers(&self) -> impl Iterator<Item = &RouterId> {
        self.routers.iter().map(|(r, _)| r)
    }

    /// The router owning `key` (a user's bare JID), or `None` when the ring is empty.
    pub fn pick(&self, key: &BareJid) -> Option<RouterId> {
        self.pick_hash(fnv1a(key.as_str().as_bytes()))
    }

    /// The owner of a key given by its hash (for traffic without a user, e.g. in-band
    /// registration before authentication).
    pub fn pick_hash(&self, key_hash: u64) -> Option<RouterId> {
        // Ties (astronomically unlikely) go to the smaller id: the list is sorted and
        // `max_by_key` keeps the last maximum, so iterate in reverse.
        self.routers.iter().rev().max_by_key(|(_, h)| mix(key_hash ^ h)).map(|(r, _)| r.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn ids(names: &[&str]) -> Vec<RouterId> {
        names.iter().map(|n| RouterId::new(n)).collect()
    }

    fn keys(n: usize) -> Vec<BareJid> {
        (0..n).map(|i| BareJid::parse(&format!("user{i}@example.com")).unwrap()).collect()
    }

    #[test]
    fn empty_ring_picks_nothing() {
        assert_eq!(Ring::default().pick(&BareJid::parse("a@b").unwrap()), None);
    }

    #[test]
    fn assignment_is_stable_and_independent_of_insertion_order() {
        let a = Ring::new(ids(&["router-0", "router-1", "router-2"]));
        let b = Ring::new(ids(&["router-2", "router-0", "router-1"]));
        for k in keys(2000) {
            let first = a.pick(&k).unwrap();
            assert_eq!(a.pick(&k).unwrap(), first);
            assert_eq!(b.pick(&k).unwrap(), first);
        }
    }

    #[test]
    fn removing_a_router_moves_only_its_keys() {
        let full = Ring::new(ids(&["r0", "r1", "r2"]));
        let mut less = full.clone();
        assert!(less.remove(&RouterId::new("r1")));
        let mut moved = 0;
        for k in keys(20_000) {
            let before = full.pick(&k).unwrap();
            let after = less.pick(&k).unwrap();
            if before.as_str() == "r1" {
                moved += 1;
                assert_ne!(after.as_str(), "r1");
            } else {
                assert_eq!(after, before, "{k} moved although its router stayed");
            }
        }
        // r1 owned about a third of them.
        assert!((5_000..8_400).contains(&moved), "{moved}");
    }

    #[test]
    fn adding_a_router_moves_keys_only_to_it() {
        let small = Ring::new(ids(&["r0", "r1"]));
        let mut big = small.clone();
        big.insert(RouterId::new("r2"));
        let mut gained = 0;
        for k in keys(20_000) {
            let before = small.pick(&k).unwrap();
            let after = big.pick(&k).unwrap();
            if after != before {
                assert_eq!(after.as_str(), "r2");
                gained += 1;
            }
        }
        assert!((5_000..8_400).contains(&gained), "{gained}");
    }

    #[test]
    fn spread_over_three_routers_is_even() {
        let ring = Ring::new(ids(&["rookery-router-0", "rookery-router-1", "rookery-router-2"]));
        let n = 100_000usize;
        let mut counts: HashMap<RouterId, usize> = HashMap::new();
        for k in keys(n) {
            *counts.entry(ring.pick(&k).unwrap()).or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        let expected = n as f64 / 3.0;
        let chi2: f64 = counts.values().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
        // Two degrees of freedom: P(chi² > 13.8) = 0.001 for a uniform assignment. The
        // keys are fixed, so this is deterministic; it fails if the hash is biased.
        assert!(chi2 < 13.8, "chi² = {chi2}, counts = {counts:?}");
    }

    #[test]
    fn insert_is_idempotent() {
        let mut r = Ring::new(ids(&["a"]));
        r.insert(RouterId::new("a"));
        assert_eq!(r.len(), 1);
        assert!(!r.remove(&RouterId::new("b")));
    }
}
