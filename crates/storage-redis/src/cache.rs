//! Bounded local cache of each user's session list, kept coherent by invalidation.
//!
//! Owns: the cache and its eviction (CLOCK, a cheap approximation of LRU: a hit sets a
//! bit, the hand clears bits until it finds an unreferenced slot to reuse).
//! Must not touch: Redis. `subscriber.rs` feeds it invalidations; `registry.rs` fills it.
//!
//! A read that misses first *reserves* the slot with a fresh token, then reads Redis,
//! then fills the slot only if the reservation survived. An invalidation or a clear that
//! lands while the read is in flight removes the reservation, so a value read before a
//! write can never be cached after that write's invalidation arrived.
//! The cache serves nothing while it is disabled (no live invalidation subscription).

use rookery_core::SessionEntry;
use rookery_jid::BareJid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) type Sessions = Arc<[SessionEntry]>;

enum State {
    Pending(u64),
    Ready(Sessions),
}

struct Slot {
    key: BareJid,
    state: State,
    referenced: bool,
}

struct Inner {
    enabled: bool,
    index: HashMap<BareJid, usize>,
    slots: Vec<Slot>,
    hand: usize,
    next_token: u64,
}

pub(crate) struct Cache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Cache {
        Cache {
            capacity,
            inner: Mutex::new(Inner {
                enabled: false,
                index: HashMap::new(),
                slots: Vec::new(),
                hand: 0,
                next_token: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections only move values around; a panic cannot leave them torn.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, key: &BareJid) -> Option<Sessions> {
        let mut g = self.lock();
        let i = *g.index.get(key)?;
        let slot = &mut g.slots[i];
        match &slot.state {
            State::Ready(v) => {
                slot.referenced = true;
                Some(v.clone())
            }
            State::Pending(_) => None,
        }
    }

    /// Reserves the user's slot before reading Redis; None while the cache is disabled.
    pub(crate) fn reserve(&self, key: &BareJid) -> Option<u64> {
        if self.capacity == 0 {
            return None;
        }
        let mut g = self.lock();
        if !g.enabled {
            return None;
        }
        g.next_token += 1;
        let token = g.next_token;
        let slot = Slot { key: key.clone(), state: State::Pending(token), referenced: false };
        if let Some(&i) = g.index.get(key) {
            g.slots[i] = slot;
        } else if g.slots.len() < self.capacity {
            let i = g.slots.len();
            g.slots.push(slot);
            g.index.insert(key.clone(), i);
        } else {
            let i = g.victim();
            let old = std::mem::replace(&mut g.slots[i], slot);
            g.index.remove(&old.key);
            g.index.insert(key.clone(), i);
        }
        Some(token)
    }

    /// Stores what was read, if the reservation is still in place.
    pub(crate) fn fill(&self, key: &BareJid, token: u64, value: Sessions) {
        let mut g = self.lock();
        let Some(&i) = g.index.get(key) else { return };
        let slot = &mut g.slots[i];
        if matches!(slot.state, State::Pending(t) if t == token) {
            slot.state = State::Ready(value);
        }
    }

    pub(crate) fn invalidate(&self, key: &BareJid) {
        let mut g = self.lock();
        let Some(i) = g.index.remove(key) else { return };
        g.slots.swap_remove(i);
        if let Some(moved) = g.slots.get(i) {
            let k = moved.key.clone();
            g.index.insert(k, i);
        }
        if g.hand >= g.slots.len() {
            g.hand = 0;
        }
    }

    /// Drops everything; with `enabled == false` also stops serving and filling until
    /// enabled again (the invalidation stream is down and updates may be missed).
    pub(crate) fn reset(&self, enabled: bool) {
        let mut g = self.lock();
        g.index.clear();
        g.slots.clear();
        g.hand = 0;
        g.enabled = enabled;
    }

    /// Drops everything, keeping the enabled state.
    pub(crate) fn clear(&self) {
        let mut g = self.lock();
        g.index.clear();
        g.slots.clear();
        g.hand = 0;
    }

    pub(crate) fn enabled(&self) -> bool {
        self.lock().enabled
    }

    /// Users with a cached (not merely reserved) session list.
    pub(crate) fn len(&self) -> usize {
        self.lock().slots.iter().filter(|s| matches!(s.state, State::Ready(_))).count()
    }
}

impl Inner {
    /// CLOCK: the first slot not referenced since the hand last passed it.
    fn victim(&mut self) -> usize {
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let slot = &mut self.slots[i];
            if !slot.referenced {
                return i;
            }
            slot.referenced = false;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn user(n: usize) -> BareJid {
        BareJid::parse(&format!("u{n}@example.org")).unwrap()
    }

    /// Reserves and fills without reading, so the slot is not yet referenced.
    fn put(c: &Cache, n: usize) {
        let k = user(n);
        let t = c.reserve(&k).unwrap();
        c.fill(&k, t, Arc::from(Vec::new()));
    }

    fn cached(c: &Cache, n: usize) -> bool {
        put(c, n);
        c.get(&user(n)).is_some()
    }

    #[test]
    fn disabled_cache_neither_reserves_nor_serves() {
        let c = Cache::new(10);
        assert_eq!(c.reserve(&user(1)), None);
        c.reset(true);
        assert!(cached(&c, 1));
        c.reset(false);
        assert!(c.get(&user(1)).is_none());
        assert_eq!(c.reserve(&user(1)), None);
    }

    #[test]
    fn invalidation_during_a_read_discards_the_fill() {
        let c = Cache::new(10);
        c.reset(true);
        let k = user(1);
        let t = c.reserve(&k).unwrap();
        c.invalidate(&k);
        c.fill(&k, t, Arc::from(Vec::new()));
        assert!(c.get(&k).is_none());
        // A newer reservation wins over an older read.
        let old = c.reserve(&k).unwrap();
        let new = c.reserve(&k).unwrap();
        c.fill(&k, old, Arc::from(Vec::new()));
        assert!(c.get(&k).is_none());
        c.fill(&k, new, Arc::from(Vec::new()));
        assert!(c.get(&k).is_some());
        // A clear (reconnect) also voids reads in flight.
        let t = c.reserve(&user(2)).unwrap();
        c.reset(true);
        c.fill(&user(2), t, Arc::from(Vec::new()));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn bounded_and_evicts_unreferenced_first() {
        let c = Cache::new(3);
        c.reset(true);
        for n in 0..3 {
            put(&c, n);
        }
        assert!(c.get(&user(0)).is_some());
        // The hand passes 0 (referenced: bit cleared) and takes 1.
        put(&c, 3);
        let present: Vec<usize> = (0..4).filter(|&n| c.get(&user(n)).is_some()).collect();
        assert_eq!(present, [0, 2, 3]);
        // swap_remove moves the last slot; the index must follow it.
        c.invalidate(&user(0));
        assert!(c.get(&user(0)).is_none());
        assert!(c.get(&user(2)).is_some() && c.get(&user(3)).is_some());
        for n in 10..20 {
            assert!(cached(&c, n));
            assert!(c.len() <= 3);
        }
    }
}
