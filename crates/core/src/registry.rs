//! Session registry: which full JIDs are bound where, with their presence state
//! (RFC 6121 §4: availability, priority, last presence broadcast, directed presences).
//! The in-memory implementation serves the single binary; the cluster backs the same
//! trait with Redis. Per-module session state rides along as opaque extension slots
//! (`crate::ext`), which the registries store and never interpret.

use crate::Location;
use crate::ext::Extensions;
use bytes::Bytes;
use rookery_jid::{BareJid, FullJid, Jid};
use std::collections::HashMap;
use std::sync::RwLock;

/// Directed-presence targets remembered per session (RFC 6121 §4.6). Bounded: the oldest
/// target is forgotten (it may then miss the final unavailable, which beats unbounded
/// memory per session).
pub const MAX_DIRECTED: usize = 1000;

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
    /// Entities that received directed presence (RFC 6121 §4.6) and must get unavailable.
    pub directed: Vec<Jid>,
    /// The modules' per-session slots (roster interest, carbons, ...).
    pub ext: Extensions,
}

impl SessionEntry {
    /// A freshly bound session: not yet available, nothing asked for.
    pub fn new(jid: FullJid, loc: Location) -> Self {
        SessionEntry {
            jid,
            loc,
            priority: 0,
            available: false,
            presence: None,
            directed: Vec::new(),
            ext: Extensions::new(),
        }
    }
}

/// RFC 6121 §8.5.2.1.1: the resources a message to the bare JID goes to: the available,
/// non-negative ones with the highest priority ("most available"); with
/// `all_non_negative` (headline messages, §8.5.2.1.2), every non-negative one.
pub fn pick_resources(sessions: &[SessionEntry], all_non_negative: bool) -> Vec<&SessionEntry> {
    let candidates = sessions.iter().filter(|s| s.available && s.priority >= 0);
    if all_non_negative {
        return candidates.collect();
    }
    let Some(top) = sessions.iter().filter(|s| s.available && s.priority >= 0).map(|s| s.priority).max() else {
        return Vec::new();
    };
    candidates.filter(|s| s.priority == top).collect()
}

/// Why the registry could not record a session.
#[derive(Debug, Clone, thiserror::Error)]
#[error("session registry unavailable: {0}")]
pub struct RegistryError(pub String);

/// Where sessions are. Reads never fail: a backend that cannot answer logs it and answers
/// "no sessions", so a message goes to offline storage instead of being lost. Writes that
/// decide whether a session exists (`insert`) report failure, so a bind is refused rather
/// than leaving an unregistered session.
#[async_trait::async_trait]
pub trait SessionRegistry: Send + Sync + 'static {
    /// Inserts the session; returns the entry it replaced (same full JID), if any.
    async fn insert(&self, entry: SessionEntry) -> Result<Option<SessionEntry>, RegistryError>;
    /// Removes the session if it is still at `loc`; returns it.
    async fn remove(&self, jid: &FullJid, loc: Location) -> Option<SessionEntry>;
    async fn get(&self, jid: &FullJid) -> Option<SessionEntry>;
    /// Whether `jid` is bound at `loc` (and not replaced by a newer session).
    async fn is_current(&self, jid: &FullJid, loc: Location) -> bool;
    async fn sessions(&self, user: &BareJid) -> Vec<SessionEntry>;
    /// The user's sessions that carry extension slot `key`; empty without allocating in
    /// the common case where none does.
    async fn sessions_with(&self, user: &BareJid, key: &str) -> Vec<SessionEntry>;
    /// `sessions_with` when it can be answered without waiting (from memory, or from a
    /// cache that holds the user); `None`: ask `sessions_with`.
    fn sessions_with_now(&self, _user: &BareJid, _key: &str) -> Option<Vec<SessionEntry>> {
        None
    }
    /// Applies `f` to the entry if present; returns whether it was.
    async fn update(&self, jid: &FullJid, f: &mut (dyn for<'e> FnMut(&'e mut SessionEntry) + Send)) -> bool;
    /// Sessions this registry knows of (all of the cluster's for a shared backend).
    async fn count(&self) -> usize;
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

#[async_trait::async_trait]
impl SessionRegistry for MemoryRegistry {
    async fn insert(&self, entry: SessionEntry) -> Result<Option<SessionEntry>, RegistryError> {
        let mut m = self.users.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = m.entry(entry.jid.to_bare()).or_default();
        if let Some(pos) = list.iter().position(|e| e.jid == entry.jid) {
            return Ok(Some(std::mem::replace(&mut list[pos], entry)));
        }
        list.push(entry);
        Ok(None)
    }

    async fn remove(&self, jid: &FullJid, loc: Location) -> Option<SessionEntry> {
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

    async fn get(&self, jid: &FullJid) -> Option<SessionEntry> {
        let m = self.users.read().ok()?;
        m.get(&jid.to_bare())?.iter().find(|e| &e.jid == jid).cloned()
    }

    async fn is_current(&self, jid: &FullJid, loc: Location) -> bool {
        self.users
            .read()
            .ok()
            .and_then(|m| m.get(&jid.to_bare()).map(|l| l.iter().any(|e| &e.jid == jid && e.loc == loc)))
            .unwrap_or(false)
    }

    async fn sessions(&self, user: &BareJid) -> Vec<SessionEntry> {
        self.users.read().ok().and_then(|m| m.get(user).cloned()).unwrap_or_default()
    }

    async fn sessions_with(&self, user: &BareJid, key: &str) -> Vec<SessionEntry> {
        self.sessions_with_now(user, key).unwrap_or_default()
    }

    fn sessions_with_now(&self, user: &BareJid, key: &str) -> Option<Vec<SessionEntry>> {
        // Nothing is allocated when no session has the slot (the common case).
        let m = self.users.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(m.get(user).map(|l| l.iter().filter(|e| e.ext.contains(key)).cloned().collect()).unwrap_or_default())
    }

    async fn update(&self, jid: &FullJid, f: &mut (dyn for<'e> FnMut(&'e mut SessionEntry) + Send)) -> bool {
        let Ok(mut m) = self.users.write() else { return false };
        match m.get_mut(&jid.to_bare()).and_then(|l| l.iter_mut().find(|e| &e.jid == jid)) {
            Some(e) => {
                f(e);
                true
            }
            None => false,
        }
    }

    async fn count(&self) -> usize {
        self.users.read().map(|m| m.values().map(Vec::len).sum()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(jid: &str, conn: u64) -> SessionEntry {
        let mut e = SessionEntry::new(FullJid::parse(jid).unwrap(), Location { edge: 0, conn });
        e.available = true;
        e
    }

    #[tokio::test]
    async fn sessions_with_lists_only_those_with_the_slot() {
        let r = MemoryRegistry::new();
        r.insert(entry("u@d/a", 1)).await.unwrap();
        r.insert(entry("u@d/b", 2)).await.unwrap();
        r.insert(entry("v@d/a", 3)).await.unwrap();
        let u = BareJid::parse("u@d").unwrap();
        assert!(r.sessions_with(&u, "roster").await.is_empty());
        assert!(r.update(&FullJid::parse("u@d/b").unwrap(), &mut |e| e.ext.set(Some(crate::RosterInterest))).await);
        let on: Vec<_> = r.sessions_with(&u, "roster").await.into_iter().map(|e| e.jid.to_string()).collect();
        assert_eq!(on, ["u@d/b"]);
        assert!(r.sessions_with(&BareJid::parse("v@d").unwrap(), "roster").await.is_empty());
        assert!(!r.update(&FullJid::parse("u@d/gone").unwrap(), &mut |e| e.ext.set(Some(crate::RosterInterest))).await);
    }

    fn s(res: &str, prio: i8, available: bool) -> SessionEntry {
        let mut e = SessionEntry::new(FullJid::parse(&format!("u@d/{res}")).unwrap(), Location { edge: 0, conn: 0 });
        e.priority = prio;
        e.available = available;
        e
    }

    #[test]
    fn highest_non_negative_priority_wins() {
        let list = vec![s("a", 1, true), s("b", 5, true), s("c", 5, true), s("d", 9, false), s("e", -1, true)];
        let picked: Vec<_> = pick_resources(&list, false).iter().map(|e| e.jid.resource().to_string()).collect();
        assert_eq!(picked, vec!["b", "c"]);
        let all: Vec<_> = pick_resources(&list, true).iter().map(|e| e.jid.resource().to_string()).collect();
        assert_eq!(all, vec!["a", "b", "c"]);
    }

    #[test]
    fn negative_only_means_nobody() {
        let list = vec![s("a", -1, true), s("b", 3, false)];
        assert!(pick_resources(&list, false).is_empty());
        assert!(pick_resources(&list, true).is_empty());
    }
}
