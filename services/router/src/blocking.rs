//! XEP-0191 enforcement (§3.6 outbound, §3.7 inbound) and the presence changes a block
//! list edit causes (§3.3, §3.4). Matching follows the JID rules XEP-0191 §3 borrows from
//! XEP-0016 §2.1: full JID, bare JID, domain/resource, domain.

use crate::LocalRouter;
use rookery_jid::{BareJid, Jid};
use rookery_storage::BlockStore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Block lists cached per user; invalidated whenever the blocking module changes one.
pub struct BlockCache {
    store: Arc<dyn BlockStore>,
    cache: RwLock<HashMap<BareJid, Arc<Vec<String>>>>,
    /// Bumped by every invalidation; a list read from the store is cached only if no
    /// invalidation happened meanwhile (else a stale list could outlive a block).
    generation: AtomicU64,
}

impl BlockCache {
    pub fn new(store: Arc<dyn BlockStore>) -> Self {
        BlockCache { store, cache: RwLock::new(HashMap::new()), generation: AtomicU64::new(0) }
    }

    /// Drops every cached list (change notices may have been missed).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
    }

    pub fn invalidate(&self, user: &BareJid) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut c) = self.cache.write() {
            c.remove(user);
        }
    }

    async fn list(&self, user: &BareJid) -> Arc<Vec<String>> {
        if let Some(l) = self.cache.read().ok().and_then(|c| c.get(user).cloned()) {
            return l;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let list = match self.store.list(user).await {
            Ok(l) => Arc::new(l),
            Err(e) => {
                // Fail closed would drop legitimate traffic on a storage hiccup; we fail
                // open but log loudly and do not cache.
                tracing::warn!(event = "blocklist_read_failed", user = %user, error = %e);
                return Arc::new(Vec::new());
            }
        };
        // Bound the cache: a node serving many users drops it wholesale rather than
        // growing without limit; entries reload lazily.
        if let Ok(mut c) = self.cache.write() {
            if self.generation.load(Ordering::SeqCst) != generation {
                return list;
            }
            if c.len() > 100_000 {
                c.clear();
            }
            c.insert(user.clone(), list.clone());
        }
        list
    }

    /// Whether `owner` has blocked `other`.
    pub async fn blocks(&self, owner: &BareJid, other: &Jid) -> bool {
        let list = self.list(owner).await;
        !list.is_empty() && list.iter().any(|item| matches(item, other))
    }
}

/// XEP-0016 §2.1 JID matching of a block-list item against an address.
pub fn matches(item: &str, jid: &Jid) -> bool {
    let Ok(item) = Jid::parse(item) else { return false };
    match (item.node(), item.resource()) {
        (Some(_), Some(_)) => item.as_str() == jid.as_str(),
        (Some(_), None) => item.as_str() == jid.bare_str(),
        (None, Some(r)) => item.domain() == jid.domain() && jid.resource() == Some(r) && jid.node().is_none(),
        (None, None) => item.domain() == jid.domain(),
    }
}

impl LocalRouter {
    pub(crate) async fn on_blocklist_change(&self, user: &BareJid, blocked: &[String], unblocked: &[String]) {
        let sessions = self.registry.sessions(user).await;
        // §3.3: a newly blocked contact that could see the user's presence gets
        // unavailable from every available resource.
        for item in blocked {
            let Ok(target) = Jid::parse(item) else { continue };
            let Some(contact) = crate::user_of(&target) else { continue };
            if !self.contact_sees_presence(user, &contact).await {
                continue;
            }
            for s in sessions.iter().filter(|s| s.available) {
                let p = rookery_stanza::presence(s.jid.as_jid(), &target, Some("unavailable"));
                self.deliver_presence_from(s.jid.as_jid(), &target, p).await;
            }
        }
        // §3.4: an unblocked contact that is subscribed gets current presence again.
        for item in unblocked {
            let Ok(target) = Jid::parse(item) else { continue };
            let Some(contact) = crate::user_of(&target) else { continue };
            if !self.contact_sees_presence(user, &contact).await {
                continue;
            }
            for s in sessions.iter().filter(|s| s.available) {
                if let Some(p) = &s.presence {
                    let bytes = crate::presence::readdress(p, &target);
                    self.deliver_presence_from(s.jid.as_jid(), &target, bytes).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn xep0016_matching() {
        let j = Jid::parse("juliet@example.com/balcony").unwrap();
        assert!(matches("juliet@example.com/balcony", &j));
        assert!(!matches("juliet@example.com/chamber", &j));
        assert!(matches("juliet@example.com", &j));
        assert!(matches("example.com", &j));
        assert!(!matches("example.org", &j));
        assert!(!matches("romeo@example.com", &j));
        let d = Jid::parse("example.com/res").unwrap();
        assert!(matches("example.com/res", &d));
        assert!(!matches("example.com/res", &j));
    }
}
