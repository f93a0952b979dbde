//! Single-node on-disk backend: every `rookery-storage` trait on one fjall database.
//!
//! Owns: the on-disk layout of accounts, rosters, offline messages, vCards, block lists,
//! last activity and message archives (see [`archive`]) for a node that runs without a
//! cluster database, and the durability promise of [`Durability`].
//! Must not touch: sockets, XML (stanzas and vCards are opaque bytes), XMPP rules beyond
//! the trait contracts, and any other process's copy of the directory (fjall locks it; a
//! database must be opened by one process at a time).
//!
//! # Why fjall
//!
//! fjall is an LSM tree with ordered keys and cheap prefix and range scans, which matches
//! the ScyllaDB partition model the clustered backend uses (partition = user, clustering =
//! contact / seq), so both backends answer the same queries the same way. It is pure Rust
//! (no C toolchain in the build) and had the best write throughput of the embedded stores
//! we measured (fjall, redb, SQLite), both for single writes and for fsynced batches.
//!
//! # Layout
//!
//! One fjall database, one keyspace per store. Every per-user key starts with the user's
//! normalised bare JID and a `\0` separator, so all rows of a user are one contiguous
//! prefix (JIDs cannot contain NUL, so `alice@a.example\0` never prefixes the rows of
//! `alice@a.example.org`):
//!
//! | keyspace        | key                                      | value                                     |
//! |-----------------|------------------------------------------|-------------------------------------------|
//! | `accounts`      | `domain \0 localpart`                    | JSON [`Account`]                          |
//! | `roster`        | `jid \0 contact-jid`                     | JSON [`RosterItem`]                       |
//! | `roster_meta`   | `jid \0`                                 | roster version, u64 BE                    |
//! | `offline`       | `jid \0 seq` (u64 big-endian)            | stanza bytes, as pushed                   |
//! | `vcard`         | `jid \0`                                 | vCard bytes, as set                       |
//! | `blocking`      | `jid \0 blocked-jid`                     | empty                                     |
//! | `last`          | `jid \0`                                 | JSON [`LastActivity`]                     |
//! | `archive`       | `jid \0 id` (u64 big-endian)             | binary: with, resource, direction, stanza |
//! | `archive_with`  | `jid \0 len(with) with id` (u32, u64 BE) | resource of the other party               |
//! | `archive_prefs` | `jid \0`                                 | JSON `ArchivePrefs`                       |
//!
//! The archive is written once per owner: `archive` holds the message, `archive_with` is
//! an index per conversation (XEP-0313 §4.1.1 `with` filter) whose rows carry only the
//! resource, so a `with` page scans small keys and reads the bodies it returns. The
//! `with` JID is length-prefixed instead of separated, so no byte in it can make one
//! conversation's rows look like another's. Big-endian ids make key order archive order:
//! a MAM page, forwards or backwards, is one range scan.
//!
//! Accounts are keyed by domain first because the one multi-user query, `list(domain)`,
//! is then a prefix scan. Big-endian seqs make key order equal seq order, so `list` is a
//! prefix scan and `remove_up_to` a range delete.
//!
//! Structured values are JSON: stable, inspectable with any tool, and easy to migrate.
//! A compact binary codec is a later optimisation once the shapes settle.
//!
//! # Consistency
//!
//! Read-modify-write operations (account create, roster put/remove with their version,
//! offline seq allocation) run under a per-user lock (a fixed array of shards keyed by
//! JID hash) and commit every row they touch in one atomic fjall write batch, so a
//! roster version always matches its items, also after a crash. Offline seqs come from
//! one store-wide counter, started at open from `max(largest stored seq + 1, now in µs)`,
//! so they stay increasing across restarts even when every message was deleted.
//! Allocating and writing a seq under the user's lock means a user's messages become
//! visible in seq order, so `remove_up_to(last listed seq)` never drops an unlisted one.
//!
//! # Blocking calls
//!
//! fjall's API is synchronous. With [`Durability::Os`] a write is a memtable insert plus a
//! `write(2)` of the journal into the OS page cache: microseconds, so it runs inline on the
//! async task. With [`Durability::Fsync`] every write waits for the disk, so writes run on
//! tokio's blocking pool (`spawn_blocking`). Reads are point lookups or one user's prefix
//! scan served mostly from memtables and the block cache, and run inline in both modes.

use async_trait::async_trait;
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode, Readable};
use rookery_jid::BareJid;
use rookery_sasl::StoredCredentials;
use rookery_storage::{
    Account, AccountStore, BlockStore, LastActivity, LastActivityStore, OfflineMessage, OfflineStore, Result, Roster,
    RosterItem, RosterStore, StoreError, Stores, VcardStore,
};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub mod archive;

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every write is handed to the OS before it returns: survives a crash or `kill -9` of
    /// the process, not a power loss or kernel crash.
    #[default]
    Os,
    /// Every write is fsynced before it returns: survives power loss, at the cost of one
    /// disk flush per write.
    Fsync,
}

impl Durability {
    fn persist_mode(self) -> PersistMode {
        match self {
            Durability::Os => PersistMode::Buffer,
            // SyncAll rather than SyncData: journal files are created and grow, and their
            // size is metadata some filesystems only persist with a full fsync.
            Durability::Fsync => PersistMode::SyncAll,
        }
    }
}

const LOCK_SHARDS: usize = 64;
const SEP: u8 = 0;

/// The fjall-backed store; implements every store trait. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    accounts: Keyspace,
    roster: Keyspace,
    roster_meta: Keyspace,
    offline: Keyspace,
    vcard: Keyspace,
    blocking: Keyspace,
    last: Keyspace,
    archive: Keyspace,
    archive_with: Keyspace,
    archive_prefs: Keyspace,
    durability: Durability,
    /// Next offline seq to hand out.
    next_seq: AtomicU64,
    user_locks: Box<[Mutex<()>]>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `jid \0`: the prefix of all of a user's rows, and the whole key of single-row stores.
fn user_prefix(user: &BareJid) -> Vec<u8> {
    let s = user.as_str().as_bytes();
    let mut k = Vec::with_capacity(s.len() + 1 + 8);
    k.extend_from_slice(s);
    k.push(SEP);
    k
}

fn user_key(user: &BareJid, suffix: &[u8]) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(suffix);
    k
}

fn account_key(user: &BareJid) -> Vec<u8> {
    let domain = user.domain().as_bytes();
    let node = user.node().unwrap_or_default().as_bytes();
    let mut k = Vec::with_capacity(domain.len() + 1 + node.len());
    k.extend_from_slice(domain);
    k.push(SEP);
    k.extend_from_slice(node);
    k
}

fn offline_key(user: &BareJid, seq: u64) -> Vec<u8> {
    user_key(user, &seq.to_be_bytes())
}

fn seq_of(key: &[u8], prefix_len: usize) -> Result<u64> {
    key.get(prefix_len..)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("offline key", format!("bad seq suffix in {key:?}")))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(what, e))
}

fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(format!("encoding {what}: {e}")))
}

fn decode_version(bytes: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("roster version", format!("{} bytes, expected 8", bytes.len())))
}

fn suffix_string(what: &str, key: &[u8], prefix_len: usize) -> Result<String> {
    let suffix = key.get(prefix_len..).ok_or_else(|| corrupt(what, "key shorter than its prefix"))?;
    String::from_utf8(suffix.to_vec()).map_err(|e| corrupt(what, e))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database in `dir`.
    ///
    /// Fails when the directory is unusable or already opened by another process.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        let db = Database::builder(dir)
            // Persistence is requested per write batch (see `commit`), never implicitly.
            .manual_journal_persist(true)
            .open()
            .map_err(|e| StoreError::Backend(format!("opening embedded store at {}: {e}", dir.display())))?;
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| StoreError::Backend(format!("opening keyspace {name}: {e}")))
        };
        let accounts = ks("accounts")?;
        let roster = ks("roster")?;
        let roster_meta = ks("roster_meta")?;
        let offline = ks("offline")?;
        let vcard = ks("vcard")?;
        let blocking = ks("blocking")?;
        let last = ks("last")?;
        let archive = ks("archive")?;
        let archive_with = ks("archive_with")?;
        let archive_prefs = ks("archive_prefs")?;

        let max_stored = max_offline_seq(&offline)?;
        let next_seq = max_stored.saturating_add(1).max(now_micros());
        tracing::debug!(
            event = "embedded_store_opened",
            dir = %dir.display(),
            ?durability,
            max_stored_seq = max_stored,
            next_seq,
        );

        let user_locks = (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect();
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                accounts,
                roster,
                roster_meta,
                offline,
                vcard,
                blocking,
                last,
                archive,
                archive_with,
                archive_prefs,
                durability,
                next_seq: AtomicU64::new(next_seq),
                user_locks,
            }),
        })
    }

    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Runs a write: inline for [`Durability::Os`], on the blocking pool for
    /// [`Durability::Fsync`] (see the crate docs).
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        match self.inner.durability {
            Durability::Os => f(&self.inner),
            Durability::Fsync => {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || f(&inner))
                    .await
                    .map_err(|e| StoreError::Backend(format!("storage write task failed: {e}")))?
            }
        }
    }
}

/// Largest seq in the offline keyspace (0 when empty). Seqs are only ordered within a
/// user, so this reads every key once; offline queues are short-lived and small.
fn max_offline_seq(offline: &Keyspace) -> Result<u64> {
    let mut max = 0;
    for guard in offline.iter() {
        let key = guard.key().map_err(backend)?;
        let seq_at = key.len().saturating_sub(8);
        if key.len() < 10 || key.get(seq_at - 1) != Some(&SEP) {
            return Err(corrupt("offline key", format!("no seq suffix in {:?}", &key[..])));
        }
        max = max.max(seq_of(&key, seq_at)?);
    }
    Ok(max)
}

/// A fresh [`Stores`] whose members all share `store`.
pub fn embedded_stores(store: Arc<EmbeddedStore>) -> Stores {
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

impl Inner {
    fn shard(&self, key: &[u8]) -> usize {
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        // Truncation is the point: any bits pick a shard.
        #[allow(clippy::cast_possible_truncation)]
        let shard = (h.finish() as usize) % self.user_locks.len();
        shard
    }

    fn lock_user(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        self.user_locks[self.shard(key)].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the shards of several users at once, in shard order, so two callers with
    /// overlapping sets cannot deadlock (every other caller holds one shard at a time).
    fn lock_users<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> Vec<MutexGuard<'_, ()>> {
        let mut shards: Vec<usize> = keys.map(|k| self.shard(k)).collect();
        shards.sort_unstable();
        shards.dedup();
        shards.into_iter().map(|s| self.user_locks[s].lock().unwrap_or_else(PoisonError::into_inner)).collect()
    }

    fn batch(&self) -> OwnedWriteBatch {
        self.db.batch().durability(Some(self.durability.persist_mode()))
    }

    fn commit(batch: OwnedWriteBatch) -> Result<()> {
        batch.commit().map_err(backend)
    }

    fn get(ks: &Keyspace, key: &[u8]) -> Result<Option<fjall::Slice>> {
        ks.get(key).map_err(backend)
    }

    fn keys_with_prefix(ks: &Keyspace, prefix: &[u8]) -> Result<Vec<fjall::UserKey>> {
        ks.prefix(prefix).map(|g| g.key().map_err(backend)).collect()
    }

    /// Deletes every row under `prefix` in one batch.
    fn delete_prefix(&self, ks: &Keyspace, prefix: &[u8]) -> Result<()> {
        let keys = Self::keys_with_prefix(ks, prefix)?;
        if keys.is_empty() {
            return Ok(());
        }
        let mut batch = self.batch();
        for k in keys {
            batch.remove(ks, k);
        }
        Self::commit(batch)
    }

    fn roster_version(&self, meta_key: &[u8]) -> Result<u64> {
        Self::get(&self.roster_meta, meta_key)?.map_or(Ok(0), |v| decode_version(&v))
    }
}

#[async_trait]
impl AccountStore for EmbeddedStore {
    async fn create(&self, user: &BareJid, account: Account) -> Result<bool> {
        let key = account_key(user);
        let value = encode("account", &account)?;
        self.write(move |db| {
            let _guard = db.lock_user(&key);
            if Inner::get(&db.accounts, &key)?.is_some() {
                return Ok(false);
            }
            let mut batch = db.batch();
            batch.insert(&db.accounts, key, value);
            Inner::commit(batch)?;
            Ok(true)
        })
        .await
    }

    async fn get(&self, user: &BareJid) -> Result<Option<Account>> {
        Inner::get(&self.inner.accounts, &account_key(user))?.map(|v| decode("account", &v)).transpose()
    }

    async fn set_credentials(&self, user: &BareJid, creds: Vec<StoredCredentials>) -> Result<bool> {
        let key = account_key(user);
        self.write(move |db| {
            let _guard = db.lock_user(&key);
            let Some(old) = Inner::get(&db.accounts, &key)? else {
                return Ok(false);
            };
            let mut account: Account = decode("account", &old)?;
            account.credentials = creds;
            let mut batch = db.batch();
            batch.insert(&db.accounts, key, encode("account", &account)?);
            Inner::commit(batch)?;
            Ok(true)
        })
        .await
    }

    async fn delete(&self, user: &BareJid) -> Result<bool> {
        let key = account_key(user);
        self.write(move |db| {
            let _guard = db.lock_user(&key);
            if Inner::get(&db.accounts, &key)?.is_none() {
                return Ok(false);
            }
            let mut batch = db.batch();
            batch.remove(&db.accounts, key);
            Inner::commit(batch)?;
            Ok(true)
        })
        .await
    }

    async fn list(&self, domain: &str) -> Result<Vec<String>> {
        let mut prefix = domain.as_bytes().to_vec();
        prefix.push(SEP);
        let mut out = Vec::new();
        for key in Inner::keys_with_prefix(&self.inner.accounts, &prefix)? {
            let node = suffix_string("account key", &key, prefix.len())?;
            if !node.is_empty() {
                out.push(node);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl RosterStore for EmbeddedStore {
    async fn get(&self, user: &BareJid) -> Result<Roster> {
        let prefix = user_prefix(user);
        // One snapshot so the version and the items belong together.
        let snap = self.inner.db.snapshot();
        let version =
            snap.get(&self.inner.roster_meta, &prefix).map_err(backend)?.map_or(Ok(0), |v| decode_version(&v))?;
        let items = snap
            .prefix(&self.inner.roster, &prefix)
            .map(|g| {
                let (_, v) = g.into_inner().map_err(backend)?;
                decode::<RosterItem>("roster item", &v)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Roster { version, items })
    }

    async fn get_item(&self, user: &BareJid, contact: &str) -> Result<Option<RosterItem>> {
        Inner::get(&self.inner.roster, &user_key(user, contact.as_bytes()))?
            .map(|v| decode("roster item", &v))
            .transpose()
    }

    async fn put_item(&self, user: &BareJid, item: RosterItem) -> Result<u64> {
        let meta_key = user_prefix(user);
        let item_key = user_key(user, item.jid.as_bytes());
        let value = encode("roster item", &item)?;
        self.write(move |db| {
            let _guard = db.lock_user(&meta_key);
            let version = db.roster_version(&meta_key)? + 1;
            let mut batch = db.batch();
            batch.insert(&db.roster, item_key, value);
            batch.insert(&db.roster_meta, meta_key, version.to_be_bytes().to_vec());
            Inner::commit(batch)?;
            Ok(version)
        })
        .await
    }

    async fn remove_item(&self, user: &BareJid, contact: &str) -> Result<Option<u64>> {
        let meta_key = user_prefix(user);
        let item_key = user_key(user, contact.as_bytes());
        self.write(move |db| {
            let _guard = db.lock_user(&meta_key);
            if Inner::get(&db.roster, &item_key)?.is_none() {
                return Ok(None);
            }
            let version = db.roster_version(&meta_key)? + 1;
            let mut batch = db.batch();
            batch.remove(&db.roster, item_key);
            batch.insert(&db.roster_meta, meta_key, version.to_be_bytes().to_vec());
            Inner::commit(batch)?;
            Ok(Some(version))
        })
        .await
    }

    async fn delete_all(&self, user: &BareJid) -> Result<()> {
        let prefix = user_prefix(user);
        self.write(move |db| {
            let _guard = db.lock_user(&prefix);
            let keys = Inner::keys_with_prefix(&db.roster, &prefix)?;
            let mut batch = db.batch();
            for k in keys {
                batch.remove(&db.roster, k);
            }
            batch.remove(&db.roster_meta, prefix);
            Inner::commit(batch)
        })
        .await
    }
}

#[async_trait]
impl OfflineStore for EmbeddedStore {
    async fn push(&self, user: &BareJid, stanza: Bytes) -> Result<u64> {
        let prefix = user_prefix(user);
        self.write(move |db| {
            let _guard = db.lock_user(&prefix);
            let seq = db.next_seq.fetch_add(1, Ordering::Relaxed);
            let mut key = prefix;
            key.extend_from_slice(&seq.to_be_bytes());
            let mut batch = db.batch();
            batch.insert(&db.offline, key, &stanza[..]);
            Inner::commit(batch)?;
            Ok(seq)
        })
        .await
    }

    async fn list(&self, user: &BareJid) -> Result<Vec<OfflineMessage>> {
        let prefix = user_prefix(user);
        self.inner
            .offline
            .prefix(&prefix)
            .map(|g| {
                let (k, v) = g.into_inner().map_err(backend)?;
                Ok(OfflineMessage { seq: seq_of(&k, prefix.len())?, stanza: Bytes::copy_from_slice(&v) })
            })
            .collect()
    }

    async fn count(&self, user: &BareJid) -> Result<usize> {
        Ok(Inner::keys_with_prefix(&self.inner.offline, &user_prefix(user))?.len())
    }

    async fn remove_up_to(&self, user: &BareJid, up_to: u64) -> Result<()> {
        let start = offline_key(user, 0);
        let end = offline_key(user, up_to);
        self.write(move |db| {
            let keys = db.offline.range(start..=end).map(|g| g.key().map_err(backend)).collect::<Result<Vec<_>>>()?;
            if keys.is_empty() {
                return Ok(());
            }
            let mut batch = db.batch();
            for k in keys {
                batch.remove(&db.offline, k);
            }
            Inner::commit(batch)
        })
        .await
    }

    async fn delete_all(&self, user: &BareJid) -> Result<()> {
        let prefix = user_prefix(user);
        self.write(move |db| db.delete_prefix(&db.offline, &prefix)).await
    }
}

#[async_trait]
impl VcardStore for EmbeddedStore {
    async fn get(&self, user: &BareJid) -> Result<Option<Bytes>> {
        Ok(Inner::get(&self.inner.vcard, &user_prefix(user))?.map(|v| Bytes::copy_from_slice(&v)))
    }

    async fn set(&self, user: &BareJid, vcard: Bytes) -> Result<()> {
        let key = user_prefix(user);
        self.write(move |db| {
            let mut batch = db.batch();
            batch.insert(&db.vcard, key, &vcard[..]);
            Inner::commit(batch)
        })
        .await
    }

    async fn delete(&self, user: &BareJid) -> Result<()> {
        let key = user_prefix(user);
        self.write(move |db| {
            let mut batch = db.batch();
            batch.remove(&db.vcard, key);
            Inner::commit(batch)
        })
        .await
    }
}

#[async_trait]
impl BlockStore for EmbeddedStore {
    async fn list(&self, user: &BareJid) -> Result<Vec<String>> {
        let prefix = user_prefix(user);
        Inner::keys_with_prefix(&self.inner.blocking, &prefix)?
            .iter()
            .map(|k| suffix_string("blocking key", k, prefix.len()))
            .collect()
    }

    async fn block(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = jids.iter().map(|j| user_key(user, j.as_bytes())).collect();
        self.write(move |db| {
            let mut batch = db.batch();
            for k in keys {
                batch.insert(&db.blocking, k, &[][..]);
            }
            Inner::commit(batch)
        })
        .await
    }

    async fn unblock(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = jids.iter().map(|j| user_key(user, j.as_bytes())).collect();
        self.write(move |db| {
            let mut batch = db.batch();
            for k in keys {
                batch.remove(&db.blocking, k);
            }
            Inner::commit(batch)
        })
        .await
    }

    async fn unblock_all(&self, user: &BareJid) -> Result<()> {
        let prefix = user_prefix(user);
        self.write(move |db| db.delete_prefix(&db.blocking, &prefix)).await
    }
}

#[async_trait]
impl LastActivityStore for EmbeddedStore {
    async fn get(&self, user: &BareJid) -> Result<Option<LastActivity>> {
        Inner::get(&self.inner.last, &user_prefix(user))?.map(|v| decode("last activity", &v)).transpose()
    }

    async fn set(&self, user: &BareJid, last: LastActivity) -> Result<()> {
        let key = user_prefix(user);
        let value = encode("last activity", &last)?;
        self.write(move |db| {
            let mut batch = db.batch();
            batch.insert(&db.last, key, value);
            Inner::commit(batch)
        })
        .await
    }

    async fn delete(&self, user: &BareJid) -> Result<()> {
        let key = user_prefix(user);
        self.write(move |db| {
            let mut batch = db.batch();
            batch.remove(&db.last, key);
            Inner::commit(batch)
        })
        .await
    }
}
