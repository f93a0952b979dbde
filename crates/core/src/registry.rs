//! Session registry: which full JIDs are bound where, with their presence state
//! (RFC 6121 §4: availability, priority, last presence broadcast, directed presences).
//! The in-memory implementation serves the single binary; the cluster backs the same
//! trait with Redis. Also per session: whether it enabled XEP-0280 carbons (§4, §5).

use crate::Location;
use bytes::Bytes;
use rookery_jid::{BareJid, FullJid, Jid};
use std::collections::HashMap;
use std::sync::RwLock;

#[derive(Debug, Clone)]
pub struct SessionEntry {
    pub jid: FullJid,
    pub loc: Location,
    /// RFC 6121 §4.7.2.3; only meaningful when `available`.
    pub priority: i8,
    /// Sent initial presence and not yet unavailable (RFC 6121 §4.2).
    pub available: bool,
    /// The last broadcast presence stanza (for probes, RFC 6121 §4.3.2).
    pub presence: Option<Bytes>,
    /// Requested the roster (an "interested resource", RFC 6121 §2.1.6).
    pub interested: bool,
    /// Requested the block list (XEP-0191 §3.3: it gets block/unblock pushes).
    pub blocklist: bool,
    /// Entities that received directed presence (RFC 6121 §4.6) and must get unavailable.
    pub directed: Vec<Jid>,
    /// Enabled XEP-0280 message carbons (§4); cleared by `<disable/>` (§5).
    pub carbons: bool,
}

pub trait SessionRegistry: Send + Sync + 'static {
    /// Inserts the session; returns the entry it replaced (same full JID), if any.
    fn insert(&self, entry: SessionEntry) -> Option<SessionEntry>;
    /// Removes the session if it is still at `loc`; returns it.
    fn remove(&self, jid: &FullJid, loc: Location) -> Option<SessionEntry>;
    fn get(&self, jid: &FullJid) -> Option<SessionEntry>;
    /// Whether `jid` is bound at `loc` (and not replaced by a newer session).
    fn is_current(&self, jid: &FullJid, loc: Location) -> bool;
    fn sessions(&self, user: &BareJid) -> Vec<SessionEntry>;
    /// The user's sessions that enabled carbons (XEP-0280 §4). Asked for every message a
    /// local user sends, so implementations should not copy the other sessions.
    fn carbons_sessions(&self, user: &BareJid) -> Vec<SessionEntry> {
        let mut all = self.sessions(user);
        all.retain(|e| e.carbons);
        all
    }
    /// Applies `f` to the entry if present; returns its result.
    fn update(&self, jid: &FullJid, f: &mut dyn FnMut(&mut SessionEntry)) -> bool;
    fn count(&self) -> usize;
}

#[derive(Default)]
pub struct MemoryRegistry {
    users: RwLock<HashMap<BareJid, Vec<SessionEntry>>>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }
}

impl SessionRegistry for MemoryRegistry {
    fn insert(&self, entry: SessionEntry) -> Option<SessionEntry> {
        let Ok(mut m) = self.users.write() else { return None };
        let list = m.entry(entry.jid.to_bare()).or_default();
        if let Some(pos) = list.iter().position(|e| e.jid == entry.jid) {
            return Some(std::mem::replace(&mut list[pos], entry));
        }
        list.push(entry);
        None
    }

    fn remove(&self, jid: &FullJid, loc: Location) -> Option<SessionEntry> {
        let Ok(mut m) = self.users.write() else { return None };
        let bare = jid.to_bare();
        let list = m.get_mut(&bare)?;
        let pos = list.iter().position(|e| &e.jid == jid && e.loc == loc)?;
        let e = list.swap_remove(pos);
        if list.is_empty() {
            m.remove(&bare);
        }
        Some(e)
    }

    fn get(&self, jid: &FullJid) -> Option<SessionEntry> {
        let m = self.users.read().ok()?;
        m.get(&jid.to_bare())?.iter().find(|e| &e.jid == jid).cloned()
    }

    fn is_current(&self, jid: &FullJid, loc: Location) -> bool {
        self.users
            .read()
            .ok()
            .and_then(|m| m.get(&jid.to_bare()).map(|l| l.iter().any(|e| &e.jid == jid && e.loc == loc)))
            .unwrap_or(false)
    }

    fn sessions(&self, user: &BareJid) -> Vec<SessionEntry> {
        self.users.read().ok().and_then(|m| m.get(user).cloned()).unwrap_or_default()
    }

    fn carbons_sessions(&self, user: &BareJid) -> Vec<SessionEntry> {
        // Nothing is allocated when no session enabled carbons (the common case).
        self.users
            .read()
            .ok()
            .and_then(|m| m.get(user).map(|l| l.iter().filter(|e| e.carbons).cloned().collect()))
            .unwrap_or_default()
    }

    fn update(&self, jid: &FullJid, f: &mut dyn FnMut(&mut SessionEntry)) -> bool {
        let Ok(mut m) = self.users.write() else { return false };
        match m.get_mut(&jid.to_bare()).and_then(|l| l.iter_mut().find(|e| &e.jid == jid)) {
            Some(e) => {
                f(e);
                true
            }
            None => false,
        }
    }

    fn count(&self) -> usize {
        self.users.read().map(|m| m.values().map(Vec::len).sum()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(jid: &str, conn: u64) -> SessionEntry {
        SessionEntry {
            jid: FullJid::parse(jid).unwrap(),
            loc: Location { edge: 0, conn },
            priority: 0,
            available: true,
            presence: None,
            interested: false,
            blocklist: false,
            directed: Vec::new(),
            carbons: false,
        }
    }

    #[test]
    fn carbons_sessions_lists_only_enabled_ones() {
        let r = MemoryRegistry::new();
        r.insert(entry("u@d/a", 1));
        r.insert(entry("u@d/b", 2));
        r.insert(entry("v@d/a", 3));
        let u = BareJid::parse("u@d").unwrap();
        assert!(r.carbons_sessions(&u).is_empty());
        assert!(r.update(&FullJid::parse("u@d/b").unwrap(), &mut |e| e.carbons = true));
        let on: Vec<_> = r.carbons_sessions(&u).into_iter().map(|e| e.jid.to_string()).collect();
        assert_eq!(on, ["u@d/b"]);
        assert!(r.carbons_sessions(&BareJid::parse("v@d").unwrap()).is_empty());
        assert!(!r.update(&FullJid::parse("u@d/gone").unwrap(), &mut |e| e.carbons = true));
    }
}
