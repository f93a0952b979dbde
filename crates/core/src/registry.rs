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
    /// The user's sessions that enabled carbons (XEP-0280); empty without allocating in
    /// the common case where none did.
    async fn carbons_sessions(&self, user: &BareJid) -> Vec<SessionEntry>;
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

    async fn carbons_sessions(&self, user: &BareJid) -> Vec<SessionEntry> {
        // Nothing is allocated when no session enabled carbons (the common case).
        self.users
            .read()
            .ok()
            .and_then(|m| m.get(user).map(|l| l.iter().filter(|e| e.carbons).cloned().collect()))
            .unwrap_or_default()
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

    #[tokio::test]
    async fn carbons_sessions_lists_only_enabled_ones() {
        let r = MemoryRegistry::new();
        r.insert(entry("u@d/a", 1)).await.unwrap();
        r.insert(entry("u@d/b", 2)).await.unwrap();
        r.insert(entry("v@d/a", 3)).await.unwrap();
        let u = BareJid::parse("u@d").unwrap();
        assert!(r.carbons_sessions(&u).await.is_empty());
        assert!(r.update(&FullJid::parse("u@d/b").unwrap(), &mut |e| e.carbons = true).await);
        let on: Vec<_> = r.carbons_sessions(&u).await.into_iter().map(|e| e.jid.to_string()).collect();
        assert_eq!(on, ["u@d/b"]);
        assert!(r.carbons_sessions(&BareJid::parse("v@d").unwrap()).await.is_empty());
        assert!(!r.update(&FullJid::parse("u@d/gone").unwrap(), &mut |e| e.carbons = true).await);
    }
}
