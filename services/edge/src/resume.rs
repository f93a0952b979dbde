//! The resumable stream-management sessions of this edge (XEP-0198 §5): which session id
//! belongs to which account, how to reach the task that holds it (live on a connection or
//! detached, waiting for the client), and, for a while after a session ended, the `h`
//! it had reached, so a late resume gets `<failed h='…'/>` and re-sends nothing twice.
//!
//! Owns: the id → holder table and the tombstones. Must not touch: the session itself
//! (`c2s.rs` holds it and hands it over), routing.

use crate::c2s::Takeover;
use rookery_jid::BareJid;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Tombstones kept at most (oldest dropped first when full).
const MAX_GONE: usize = 100_000;

struct Holder {
    user: BareJid,
    tx: mpsc::Sender<Takeover>,
}

struct Gone {
    user: BareJid,
    h: u32,
    at: Instant,
}

/// Why a resumption cannot take place.
#[derive(Debug, PartialEq, Eq)]
pub enum NotFound {
    /// No such session for this account; `h` when it ended recently (§5).
    Unknown { h: Option<u32> },
}

#[derive(Default)]
pub struct Resumable {
    live: Mutex<HashMap<String, Holder>>,
    gone: Mutex<HashMap<String, Gone>>,
    /// How long a tombstone is kept.
    keep_gone: Duration,
}

impl Resumable {
    pub fn new(keep_gone: Duration) -> Self {
        Resumable { keep_gone, ..Self::default() }
    }

    /// A new resumable session `id` of `user`, reached through `tx`.
    pub fn insert(&self, id: &str, user: &BareJid, tx: mpsc::Sender<Takeover>) {
        if let Ok(mut m) = self.live.lock() {
            m.insert(id.to_owned(), Holder { user: user.clone(), tx });
        }
    }

    /// Where to ask for session `id`, if it is `user`'s. Someone else's id is answered
    /// like an unknown one, so ids cannot be probed.
    pub fn lookup(&self, id: &str, user: &BareJid) -> Result<mpsc::Sender<Takeover>, NotFound> {
        if let Some(tx) =
            self.live.lock().ok().and_then(|m| m.get(id).filter(|h| &h.user == user).map(|h| h.tx.clone()))
        {
            return Ok(tx);
        }
        let h = self
            .gone
            .lock()
            .ok()
            .and_then(|m| m.get(id).filter(|g| &g.user == user && g.at.elapsed() < self.keep_gone).map(|g| g.h));
        Err(NotFound::Unknown { h })
    }

    /// Session `id` ended for good with `h` stanzas handled from the client.
    pub fn ended(&self, id: &str, user: &BareJid, h: u32) {
        if let Ok(mut m) = self.live.lock() {
            m.remove(id);
        }
        let Ok(mut g) = self.gone.lock() else { return };
        if g.len() >= MAX_GONE {
            let keep = self.keep_gone;
            g.retain(|_, v| v.at.elapsed() < keep);
            if g.len() >= MAX_GONE {
                // Still full of fresh ones: drop the oldest.
                if let Some(oldest) = g.iter().min_by_key(|(_, v)| v.at).map(|(k, _)| k.clone()) {
                    g.remove(&oldest);
                }
            }
        }
        g.insert(id.to_owned(), Gone { user: user.clone(), h, at: Instant::now() });
    }

    /// Sessions that can be resumed now (live or detached).
    pub fn len(&self) -> usize {
        self.live.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A new session id: 128 random bits, URL-safe base64 (no padding).
pub fn new_id() -> String {
    use base64::Engine as _;
    let mut r = [0u8; 16];
    let _ = getrandom::fill(&mut r);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_the_owner_finds_a_session_and_a_tombstone_keeps_h() {
        let t = Resumable::new(Duration::from_secs(60));
        let alice = BareJid::parse("alice@localhost").unwrap();
        let mallory = BareJid::parse("mallory@localhost").unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let id = new_id();
        assert_eq!(id.len(), 22);
        t.insert(&id, &alice, tx);
        assert!(t.lookup(&id, &alice).is_ok());
        assert_eq!(t.lookup(&id, &mallory).err(), Some(NotFound::Unknown { h: None }));
        t.ended(&id, &alice, 7);
        assert_eq!(t.lookup(&id, &alice).err(), Some(NotFound::Unknown { h: Some(7) }));
        // Someone else learns nothing, not even that the id existed.
        assert_eq!(t.lookup(&id, &mallory).err(), Some(NotFound::Unknown { h: None }));
        assert!(t.is_empty());
    }

    #[test]
    fn tombstones_expire() {
        let t = Resumable::new(Duration::ZERO);
        let alice = BareJid::parse("alice@localhost").unwrap();
        t.ended("x", &alice, 3);
        assert_eq!(t.lookup("x", &alice).err(), Some(NotFound::Unknown { h: None }));
    }
}
