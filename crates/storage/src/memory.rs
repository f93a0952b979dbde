//! In-memory backend: every store trait over plain maps behind std locks.
//!
//! Owns: process-local copies of all durable data, for tests and ephemeral single-node runs.
//! Nothing survives a restart, and nothing here is shared between processes.
//! Must not touch: the filesystem, the network, or any XML inside the opaque byte values.
//!
//! Locks are never held across an `.await`, so std locks are cheaper here than tokio ones.
//! A poisoned lock is recovered rather than propagated: each critical section leaves its
//! map consistent before any code that could panic runs.
//!
//! Ordering choices shared with the other backends (the conformance suite checks them):
//! roster items come back sorted by contact JID, block lists sorted, offline messages in
//! seq order. Offline seqs come from one counter for the whole store, so they are strictly
//! increasing per user (and across users) for the lifetime of the store.

use crate::archive::{ArchiveEntry, ArchiveId, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveRow, ArchiveStore};
use crate::{
    Account, AccountStore, BlockStore, LastActivity, LastActivityStore, OfflineMessage, OfflineStore, Result, Roster,
    RosterItem, RosterStore, Stores, VcardStore,
};
use async_trait::async_trait;
use bytes::Bytes;
use rookery_jid::BareJid;
use rookery_sasl::StoredCredentials;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

/// All six stores in one object; see the module docs.
#[derive(Default)]
pub struct MemoryStore {
    /// Keyed by (domain, local part) so `list(domain)` is a sorted range.
    accounts: RwLock<BTreeMap<(String, String), Account>>,
    rosters: Mutex<HashMap<String, MemRoster>>,
    offline: Mutex<OfflineState>,
    vcards: RwLock<HashMap<String, Bytes>>,
    blocking: RwLock<HashMap<String, BTreeSet<String>>>,
    last: RwLock<HashMap<String, LastActivity>>,
    archives: RwLock<HashMap<String, BTreeMap<ArchiveId, ArchiveEntry>>>,
    archive_prefs: RwLock<HashMap<String, ArchivePrefs>>,
}

#[derive(Default)]
struct MemRoster {
    version: u64,
    items: BTreeMap<String, RosterItem>,
}

#[derive(Default)]
struct OfflineState {
    /// Last seq handed out; store-wide so seqs never repeat while the store lives.
    last_seq: u64,
    queues: HashMap<String, BTreeMap<u64, Bytes>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

/// A [`Stores`] whose members all share one fresh [`MemoryStore`].
pub fn memory_stores() -> Stores {
    let store = Arc::new(MemoryStore::new());
    Stores {
        accounts: store.clone(),
        roster: store.clone(),
        offline: store.clone(),
        vcard: store.clone(),
        blocking: store.clone(),
        last: store.clone(),
        archive: store,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

fn account_key(user: &BareJid) -> (String, String) {
    (user.domain().to_owned(), user.node().unwrap_or_default().to_owned())
}

#[async_trait]
impl AccountStore for MemoryStore {
    async fn create(&self, user: &BareJid, account: Account) -> Result<bool> {
        let mut map = write(&self.accounts);
        match map.entry(account_key(user)) {
            std::collections::btree_map::Entry::Occupied(_) => Ok(false),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(account);
                Ok(true)
            }
        }
    }

    async fn get(&self, user: &BareJid) -> Result<Option<Account>> {
        Ok(read(&self.accounts).get(&account_key(user)).cloned())
    }

    async fn set_credentials(&self, user: &BareJid, creds: Vec<StoredCredentials>) -> Result<bool> {
        match write(&self.accounts).get_mut(&account_key(user)) {
            Some(account) => {
                account.credentials = creds;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn delete(&self, user: &BareJid) -> Result<bool> {
        Ok(write(&self.accounts).remove(&account_key(user)).is_some())
    }

    async fn list(&self, domain: &str) -> Result<Vec<String>> {
        let map = read(&self.accounts);
        let start = (domain.to_owned(), String::new());
        Ok(map
            .range(start..)
            .take_while(|((d, _), _)| d == domain)
            .filter(|((_, node), _)| !node.is_empty())
            .map(|((_, node), _)| node.clone())
            .collect())
    }
}

#[async_trait]
impl RosterStore for MemoryStore {
    async fn get(&self, user: &BareJid) -> Result<Roster> {
        Ok(match lock(&self.rosters).get(user.as_str()) {
            Some(r) => Roster { version: r.version, items: r.items.values().cloned().collect() },
            None => Roster::default(),
        })
    }

    async fn get_item(&self, user: &BareJid, contact: &str) -> Result<Option<RosterItem>> {
        Ok(lock(&self.rosters).get(user.as_str()).and_then(|r| r.items.get(contact).cloned()))
    }

    async fn put_item(&self, user: &BareJid, item: RosterItem) -> Result<u64> {
        let mut rosters = lock(&self.rosters);
        let roster = rosters.entry(user.as_str().to_owned()).or_default();
        roster.version += 1;
        roster.items.insert(item.jid.clone(), item);
        Ok(roster.version)
    }

    async fn remove_item(&self, user: &BareJid, contact: &str) -> Result<Option<u64>> {
        let mut rosters = lock(&self.rosters);
        let Some(roster) = rosters.get_mut(user.as_str()) else {
            return Ok(None);
        };
        if roster.items.remove(contact).is_none() {
            return Ok(None);
        }
        roster.version += 1;
        Ok(Some(roster.version))
    }

    async fn delete_all(&self, user: &BareJid) -> Result<()> {
        lock(&self.rosters).remove(user.as_str());
        Ok(())
    }
}

#[async_trait]
impl OfflineStore for MemoryStore {
    async fn push(&self, user: &BareJid, stanza: Bytes) -> Result<u64> {
        let mut state = lock(&self.offline);
        state.last_seq += 1;
        let seq = state.last_seq;
        state.queues.entry(user.as_str().to_owned()).or_default().insert(seq, stanza);
        Ok(seq)
    }

    async fn list(&self, user: &BareJid) -> Result<Vec<OfflineMessage>> {
        Ok(lock(&self.offline)
            .queues
            .get(user.as_str())
            .map(|q| q.iter().map(|(&seq, stanza)| OfflineMessage { seq, stanza: stanza.clone() }).collect())
            .unwrap_or_default())
    }

    async fn count(&self, user: &BareJid) -> Result<usize> {
        Ok(lock(&self.offline).queues.get(user.as_str()).map_or(0, BTreeMap::len))
    }

    async fn remove_up_to(&self, user: &BareJid, up_to: u64) -> Result<()> {
        let mut state = lock(&self.offline);
        if let Some(q) = state.queues.get_mut(user.as_str()) {
            *q = match up_to.checked_add(1) {
                Some(first_kept) => q.split_off(&first_kept),
                None => BTreeMap::new(),
            };
            if q.is_empty() {
                state.queues.remove(user.as_str());
            }
        }
        Ok(())
    }

    async fn delete_all(&self, user: &BareJid) -> Result<()> {
        lock(&self.offline).queues.remove(user.as_str());
        Ok(())
    }
}

#[async_trait]
impl VcardStore for MemoryStore {
    async fn get(&self, user: &BareJid) -> Result<Option<Bytes>> {
        Ok(read(&self.vcards).get(user.as_str()).cloned())
    }

    async fn set(&self, user: &BareJid, vcard: Bytes) -> Result<()> {
        write(&self.vcards).insert(user.as_str().to_owned(), vcard);
        Ok(())
    }

    async fn delete(&self, user: &BareJid) -> Result<()> {
        write(&self.vcards).remove(user.as_str());
        Ok(())
    }
}

#[async_trait]
impl BlockStore for MemoryStore {
    async fn list(&self, user: &BareJid) -> Result<Vec<String>> {
        Ok(read(&self.blocking).get(user.as_str()).map(|s| s.iter().cloned().collect()).unwrap_or_default())
    }

    async fn block(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        write(&self.blocking).entry(user.as_str().to_owned()).or_default().extend(jids.iter().cloned());
        Ok(())
    }

    async fn unblock(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        let mut map = write(&self.blocking);
        if let Some(set) = map.get_mut(user.as_str()) {
            for jid in jids {
                set.remove(jid);
            }
            if set.is_empty() {
                map.remove(user.as_str());
            }
        }
        Ok(())
    }

    async fn unblock_all(&self, user: &BareJid) -> Result<()> {
        write(&self.blocking).remove(user.as_str());
        Ok(())
    }
}

#[async_trait]
impl LastActivityStore for MemoryStore {
    async fn get(&self, user: &BareJid) -> Result<Option<LastActivity>> {
        Ok(read(&self.last).get(user.as_str()).cloned())
    }

    async fn set(&self, user: &BareJid, last: LastActivity) -> Result<()> {
        write(&self.last).insert(user.as_str().to_owned(), last);
        Ok(())
    }

    async fn delete(&self, user: &BareJid) -> Result<()> {
        write(&self.last).remove(user.as_str());
        Ok(())
    }
}

#[async_trait]
impl ArchiveStore for MemoryStore {
    async fn append(&self, rows: &[ArchiveRow]) -> Result<()> {
        let mut map = write(&self.archives);
        for row in rows {
            map.entry(row.owner.as_str().to_owned()).or_default().insert(row.entry.id, row.entry.clone());
        }
        Ok(())
    }

    async fn query(&self, owner: &BareJid, q: &ArchiveQuery) -> Result<ArchivePage> {
        use std::ops::Bound;
        let map = read(&self.archives);
        let Some(archive) = map.get(owner.as_str()) else {
            return Ok(crate::archive::page_of(std::iter::empty(), q));
        };
        let lo = q.after.map_or(Bound::Unbounded, Bound::Excluded);
        let hi = q.before.map_or(Bound::Unbounded, Bound::Excluded);
        if matches!((lo, hi), (Bound::Excluded(a), Bound::Excluded(b)) if a >= b) {
            return Ok(crate::archive::page_of(std::iter::empty(), q));
        }
        Ok(crate::archive::page_of(archive.range((lo, hi)).map(|(_, e)| e), q))
    }

    async fn bounds(&self, owner: &BareJid) -> Result<Option<(ArchiveId, ArchiveId)>> {
        let map = read(&self.archives);
        let Some(archive) = map.get(owner.as_str()) else { return Ok(None) };
        Ok(archive.keys().next().copied().zip(archive.keys().next_back().copied()))
    }

    async fn remove_before(&self, owner: &BareJid, before: ArchiveId) -> Result<u64> {
        let mut map = write(&self.archives);
        let Some(archive) = map.get_mut(owner.as_str()) else { return Ok(0) };
        let keep = archive.split_off(&before);
        let removed = archive.len() as u64;
        *archive = keep;
        Ok(removed)
    }

    async fn delete_all(&self, owner: &BareJid) -> Result<()> {
        write(&self.archives).remove(owner.as_str());
        write(&self.archive_prefs).remove(owner.as_str());
        Ok(())
    }

    async fn get_prefs(&self, owner: &BareJid) -> Result<Option<ArchivePrefs>> {
        Ok(read(&self.archive_prefs).get(owner.as_str()).cloned())
    }

    async fn set_prefs(&self, owner: &BareJid, prefs: &ArchivePrefs) -> Result<()> {
        write(&self.archive_prefs).insert(owner.as_str().to_owned(), prefs.clone());
        Ok(())
    }
}
