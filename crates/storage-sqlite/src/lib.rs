//! SQLite backend: every `rookery-storage` trait on one SQLite database that several
//! processes on one host open at the same time.
//!
//! Owns: the SQLite layout of accounts, rosters, offline messages, vCards, block lists,
//! last activity and message archives (see [`schema`] and [`archive`]), the connection
//! pool, and the transactions that keep read-modify-write operations correct when several
//! `rookery router` processes share the file.
//! Must not touch: sockets, XML (stanzas and vCards are opaque bytes), XMPP rules beyond
//! the trait contracts.
//!
//! # Why SQLite, and for what
//!
//! The embedded fjall store locks its directory: one process only. ScyllaDB is the shared
//! store of a real cluster but needs its own servers. A SQLite database in WAL mode can be
//! opened by several processes on one machine, each reading while another writes, and it
//! is one file: the store of the loopback cluster (tests, `deploy/local-cluster.sh`) and
//! of small clusters on one host. It is not for several hosts: SQLite's locks need a local
//! filesystem (never NFS or another network share).
//!
//! # Layout
//!
//! One table per store ([`schema::MIGRATIONS`]), every key starting with the owner's
//! normalised bare JID, `WITHOUT ROWID` so rows are stored in primary-key order:
//!
//! | table            | primary key           | columns                                    |
//! |------------------|-----------------------|--------------------------------------------|
//! | `accounts`       | `(domain, localpart)` | credentials (JSON), created_at             |
//! | `roster`         | `(owner, contact)`    | item (JSON [`RosterItem`])                 |
//! | `roster_version` | `owner`               | version                                    |
//! | `offline`        | `(owner, seq)`        | stanza (BLOB)                              |
//! | `counters`       | `name`                | value (the last offline seq handed out)    |
//! | `vcard`          | `owner`               | vcard (BLOB)                               |
//! | `blocklist`      | `(owner, jid)`        |                                            |
//! | `last_activity`  | `owner`               | at, status                                 |
//! | `archive`        | `(owner, id)`         | with_bare, with_res, outgoing, stanza      |
//! | `archive_prefs`  | `owner`               | prefs (JSON)                               |
//!
//! plus the index `archive_with (owner, with_bare, id)`. Text compares byte-wise (SQLite's
//! BINARY collation on UTF-8), the same order as Rust's `str`, so `ORDER BY contact` and
//! `ORDER BY jid` give the sorted lists the conformance suite expects.
//!
//! # Several processes
//!
//! Every write runs in one `BEGIN IMMEDIATE` transaction, which takes the database's write
//! lock before reading anything. Two processes therefore never interleave a
//! read-modify-write: account creation, a roster change and its version bump, an offline
//! push and its seq, an archive append (replacing an id). A process waiting for the lock
//! retries for up to [`schema::BUSY_TIMEOUT`]. Offline seqs come from the `counters` row,
//! incremented inside the push's transaction, so they strictly increase for every user
//! across all processes and restarts, also after a queue is emptied; commits follow seq
//! order, so `remove_up_to(last listed seq)` never drops a message it did not list.
//! Reads run in a deferred transaction: one consistent snapshot (a roster's version
//! matches its items, an archive page matches its count), never blocking writers.
//!
//! Within one process, writers also take a process-local mutex before `BEGIN IMMEDIATE`,
//! so this process's connections queue on the mutex instead of polling SQLite's lock.
//!
//! # Blocking calls
//!
//! rusqlite is synchronous. Every call runs on tokio's blocking pool (`spawn_blocking`)
//! with one connection from a small pool ([`POOL_SIZE`]); a semaphore bounds the calls in
//! flight to the pool size, so waiting for a connection is an async wait, never a blocked
//! runtime thread.

use async_trait::async_trait;
use bytes::Bytes;
use rookery_jid::BareJid;
use rookery_sasl::StoredCredentials;
use rookery_storage::{
    Account, AccountStore, BlockStore, LastActivity, LastActivityStore, OfflineMessage, OfflineStore, Result, Roster,
    RosterItem, RosterStore, StoreError, Stores, VcardStore,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Semaphore;

pub mod archive;
pub mod schema;

pub use schema::{MigrationReport, SCHEMA_VERSION};

/// Connections per process: SQLite has one writer at a time, so more connections only
/// add readers, and router reads are short point lookups and range scans.
pub const POOL_SIZE: usize = 4;

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = NORMAL`: a commit is in the OS page cache before it returns, so it
    /// survives a crash or `kill -9` of the process, not a power loss.
    #[default]
    Os,
    /// `synchronous = FULL`: the WAL is fsynced at every commit; survives power loss.
    Fsync,
}

/// The SQLite-backed store; implements every store trait. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    durability: Durability,
    /// Idle connections; at most [`POOL_SIZE`] exist because at most that many calls hold
    /// a permit of `permits`.
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    /// Serialises this process's write transactions (see the crate docs).
    write_lock: Mutex<()>,
}

/// Maps a rusqlite error: conversions of stored values are corruption, the rest backend
/// failures (I/O, lock timeouts, a closed database).
pub(crate) fn db(e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match e {
        E::FromSqlConversionFailure(..) | E::InvalidColumnType(..) | E::IntegralValueOutOfRange(..) => {
            StoreError::Corrupt(format!("sqlite: {e}"))
        }
        other => StoreError::Backend(format!("sqlite: {other}")),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("encoding {what}: {e}")))
}

/// SQLite integers are i64; values the traits give as u64 that must fit (seqs, versions,
/// timestamps) are checked both ways.
fn to_i64(what: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} does not fit a SQLite integer")))
}

fn to_u64(what: &str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupt(what, format!("negative value {v}")))
}

/// Returns a connection to the pool when the call ends, also when it panics.
struct Pooled<'a> {
    inner: &'a Inner,
    conn: Option<Connection>,
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
        }
    }
}

impl Inner {
    fn checkout(&self) -> Result<Pooled<'_>> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match idle {
            Some(conn) => conn,
            // Opened lazily: a process that only ever runs one call at a time keeps one.
            None => schema::connect(&self.path, self.durability)?,
        };
        Ok(Pooled { inner: self, conn: Some(conn) })
    }
}

impl SqliteStore {
    /// Opens (creating it and missing parent directories if needed) the database at
    /// `path`, switches it to WAL mode and applies pending migrations.
    ///
    /// Any number of processes may open the same file at the same time. Fails when the
    /// file is unusable or holds a schema newer than this binary knows.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        let (store, report) = Self::open_and_migrate(path, durability)?;
        if !report.applied.is_empty() {
            tracing::info!(
                event = "sqlite_schema_migrated",
                path = %path.display(),
                from = report.from,
                to = report.to,
            );
        }
        Ok(store)
    }

    /// [`SqliteStore::open`], also saying what happened to the schema (`rookery migrate`).
    pub fn open_and_migrate(path: &Path, durability: Durability) -> Result<(Self, MigrationReport)> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Backend(format!("creating directory {}: {e}", parent.display())))?;
        }
        let named = |e: StoreError| match e {
            StoreError::Backend(m) => StoreError::Backend(format!("SQLite database {}: {m}", path.display())),
            StoreError::Corrupt(m) => StoreError::Corrupt(format!("SQLite database {}: {m}", path.display())),
        };
        let mut conn = schema::connect(path, durability).map_err(named)?;
        let report = schema::migrate(&mut conn).map_err(named)?;
        tracing::debug!(event = "sqlite_store_opened", path = %path.display(), ?durability, version = report.to);
        let store = SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                durability,
                idle: Mutex::new(vec![conn]),
                permits: Arc::new(Semaphore::new(POOL_SIZE)),
                write_lock: Mutex::new(()),
            }),
        };
        Ok((store, report))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Runs `f` on a pooled connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &mut Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Backend(format!("sqlite pool closed: {e}")))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut pooled = inner.checkout()?;
            let conn = pooled.conn.as_mut().ok_or_else(|| StoreError::Backend("sqlite: no connection".into()))?;
            f(&inner, conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite task failed: {e}")))?
    }

    /// A read: one deferred transaction, so every statement in `f` sees one snapshot.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        self.with_conn(move |_, conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred).map_err(db)?;
            let out = f(&tx)?;
            tx.commit().map_err(db)?;
            Ok(out)
        })
        .await
    }

    /// A write: one `BEGIN IMMEDIATE` transaction, committed when `f` returns Ok and
    /// rolled back when it returns an error.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        self.with_conn(move |inner, conn| {
            let _local = inner.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
            let out = f(&tx)?;
            tx.commit().map_err(db)?;
            Ok(out)
        })
        .await
    }
}

/// Applies pending migrations to the database at `path` (creating it if needed) and says
/// what was done; what `rookery migrate` runs. Opening a store does the same.
pub fn migrate(path: &Path) -> Result<MigrationReport> {
    SqliteStore::open_and_migrate(path, Durability::Fsync).map(|(_, report)| report)
}

/// A [`Stores`] whose members all share `store`.
pub fn sqlite_stores(store: Arc<SqliteStore>) -> Stores {
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

fn owner(user: &BareJid) -> String {
    user.as_str().to_owned()
}

fn account_key(user: &BareJid) -> (String, String) {
    (user.domain().to_owned(), user.node().unwrap_or_default().to_owned())
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create(&self, user: &BareJid, account: Account) -> Result<bool> {
        let (domain, local) = account_key(user);
        let creds = encode("credentials", &account.credentials)?;
        let created_at = to_i64("created_at", account.created_at)?;
        self.write(move |tx| {
            let n = tx
                .prepare_cached(
                    "INSERT INTO accounts (domain, localpart, credentials, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (domain, localpart) DO NOTHING",
                )
                .and_then(|mut s| s.execute(params![domain, local, creds, created_at]))
                .map_err(db)?;
            Ok(n == 1)
        })
        .await
    }

    async fn get(&self, user: &BareJid) -> Result<Option<Account>> {
        let (domain, local) = account_key(user);
        let row: Option<(String, i64)> = self
            .read(move |tx| {
                tx.prepare_cached("SELECT credentials, created_at FROM accounts WHERE domain = ?1 AND localpart = ?2")
                    .and_then(|mut s| s.query_row(params![domain, local], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                    .map_err(db)
            })
            .await?;
        row.map(|(creds, at)| {
            Ok(Account { credentials: decode("credentials", &creds)?, created_at: to_u64("created_at", at)? })
        })
        .transpose()
    }

    async fn set_credentials(&self, user: &BareJid, creds: Vec<StoredCredentials>) -> Result<bool> {
        let (domain, local) = account_key(user);
        let creds = encode("credentials", &creds)?;
        self.write(move |tx| {
            let n = tx
                .prepare_cached("UPDATE accounts SET credentials = ?3 WHERE domain = ?1 AND localpart = ?2")
                .and_then(|mut s| s.execute(params![domain, local, creds]))
                .map_err(db)?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete(&self, user: &BareJid) -> Result<bool> {
        let (domain, local) = account_key(user);
        self.write(move |tx| {
            let n = tx
                .prepare_cached("DELETE FROM accounts WHERE domain = ?1 AND localpart = ?2")
                .and_then(|mut s| s.execute(params![domain, local]))
                .map_err(db)?;
            Ok(n == 1)
        })
        .await
    }

    async fn list(&self, domain: &str) -> Result<Vec<String>> {
        let domain = domain.to_owned();
        self.read(move |tx| {
            let mut s = tx
                .prepare_cached(
                    "SELECT localpart FROM accounts WHERE domain = ?1 AND localpart <> '' ORDER BY localpart",
                )
                .map_err(db)?;
            let rows = s.query_map(params![domain], |r| r.get::<_, String>(0)).map_err(db)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(db)
        })
        .await
    }
}

/// Bumps (or starts at 1) the roster version of `owner`; runs inside a write transaction.
fn bump_roster_version(tx: &Transaction<'_>, owner: &str) -> Result<u64> {
    let v: i64 = tx
        .prepare_cached(
            "INSERT INTO roster_version (owner, version) VALUES (?1, 1)
             ON CONFLICT (owner) DO UPDATE SET version = version + 1 RETURNING version",
        )
        .and_then(|mut s| s.query_row(params![owner], |r| r.get(0)))
        .map_err(db)?;
    to_u64("roster version", v)
}

#[async_trait]
impl RosterStore for SqliteStore {
    async fn get(&self, user: &BareJid) -> Result<Roster> {
        let owner = owner(user);
        let (version, items) = self
            .read(move |tx| {
                let version: Option<i64> = tx
                    .prepare_cached("SELECT version FROM roster_version WHERE owner = ?1")
                    .and_then(|mut s| s.query_row(params![owner], |r| r.get(0)).optional())
                    .map_err(db)?;
                let mut s =
                    tx.prepare_cached("SELECT item FROM roster WHERE owner = ?1 ORDER BY contact").map_err(db)?;
                let items = s
                    .query_map(params![owner], |r| r.get::<_, String>(0))
                    .and_then(|rows| rows.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(db)?;
                Ok((version, items))
            })
            .await?;
        Ok(Roster {
            version: version.map_or(Ok(0), |v| to_u64("roster version", v))?,
            items: items.iter().map(|i| decode("roster item", i)).collect::<Result<_>>()?,
        })
    }

    async fn get_item(&self, user: &BareJid, contact: &str) -> Result<Option<RosterItem>> {
        let (owner, contact) = (owner(user), contact.to_owned());
        let item: Option<String> = self
            .read(move |tx| {
                tx.prepare_cached("SELECT item FROM roster WHERE owner = ?1 AND contact = ?2")
                    .and_then(|mut s| s.query_row(params![owner, contact], |r| r.get(0)).optional())
                    .map_err(db)
            })
            .await?;
        item.map(|i| decode("roster item", &i)).transpose()
    }

    async fn put_item(&self, user: &BareJid, item: RosterItem) -> Result<u64> {
        let owner = owner(user);
        let value = encode("roster item", &item)?;
        let contact = item.jid;
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO roster (owner, contact, item) VALUES (?1, ?2, ?3)
                 ON CONFLICT (owner, contact) DO UPDATE SET item = excluded.item",
            )
            .and_then(|mut s| s.execute(params![owner, contact, value]))
            .map_err(db)?;
            bump_roster_version(tx, &owner)
        })
        .await
    }

    async fn remove_item(&self, user: &BareJid, contact: &str) -> Result<Option<u64>> {
        let (owner, contact) = (owner(user), contact.to_owned());
        self.write(move |tx| {
            let n = tx
                .prepare_cached("DELETE FROM roster WHERE owner = ?1 AND contact = ?2")
                .and_then(|mut s| s.execute(params![owner, contact]))
                .map_err(db)?;
            if n == 0 {
                return Ok(None);
            }
            bump_roster_version(tx, &owner).map(Some)
        })
        .await
    }

    async fn delete_all(&self, user: &BareJid) -> Result<()> {
        let owner = owner(user);
        self.write(move |tx| {
            tx.execute("DELETE FROM roster WHERE owner = ?1", params![owner]).map_err(db)?;
            tx.execute("DELETE FROM roster_version WHERE owner = ?1", params![owner]).map_err(db)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl OfflineStore for SqliteStore {
    async fn push(&self, user: &BareJid, stanza: Bytes) -> Result<u64> {
        let owner = owner(user);
        self.write(move |tx| {
            let seq: i64 = tx
                .prepare_cached(
                    "INSERT INTO counters (name, value) VALUES ('offline_seq', 1)
                     ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value",
                )
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(db)?;
            tx.prepare_cached("INSERT INTO offline (owner, seq, stanza) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![owner, seq, &stanza[..]]))
                .map_err(db)?;
            to_u64("offline seq", seq)
        })
        .await
    }

    async fn list(&self, user: &BareJid) -> Result<Vec<OfflineMessage>> {
        let owner = owner(user);
        let rows: Vec<(i64, Vec<u8>)> = self
            .read(move |tx| {
                let mut s =
                    tx.prepare_cached("SELECT seq, stanza FROM offline WHERE owner = ?1 ORDER BY seq").map_err(db)?;
                s.query_map(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(db)
            })
            .await?;
        rows.into_iter()
            .map(|(seq, stanza)| Ok(OfflineMessage { seq: to_u64("offline seq", seq)?, stanza: Bytes::from(stanza) }))
            .collect()
    }

    async fn count(&self, user: &BareJid) -> Result<usize> {
        let owner = owner(user);
        let n: i64 = self
            .read(move |tx| {
                tx.prepare_cached("SELECT count(*) FROM offline WHERE owner = ?1")
                    .and_then(|mut s| s.query_row(params![owner], |r| r.get(0)))
                    .map_err(db)
            })
            .await?;
        usize::try_from(n).map_err(|_| corrupt("offline count", n))
    }

    async fn remove_up_to(&self, user: &BareJid, up_to: u64) -> Result<()> {
        let owner = owner(user);
        // Seqs are positive i64s, so a bound past i64::MAX covers them all.
        let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
        self.write(move |tx| {
            tx.prepare_cached("DELETE FROM offline WHERE owner = ?1 AND seq <= ?2")
                .and_then(|mut s| s.execute(params![owner, up_to]))
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn delete_all(&self, user: &BareJid) -> Result<()> {
        let owner = owner(user);
        self.write(move |tx| {
            tx.execute("DELETE FROM offline WHERE owner = ?1", params![owner]).map_err(db)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl VcardStore for SqliteStore {
    async fn get(&self, user: &BareJid) -> Result<Option<Bytes>> {
        let owner = owner(user);
        let card: Option<Vec<u8>> = self
            .read(move |tx| {
                tx.prepare_cached("SELECT vcard FROM vcard WHERE owner = ?1")
                    .and_then(|mut s| s.query_row(params![owner], |r| r.get(0)).optional())
                    .map_err(db)
            })
            .await?;
        Ok(card.map(Bytes::from))
    }

    async fn set(&self, user: &BareJid, vcard: Bytes) -> Result<()> {
        let owner = owner(user);
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO vcard (owner, vcard) VALUES (?1, ?2) ON CONFLICT (owner) DO UPDATE SET vcard = excluded.vcard",
            )
            .and_then(|mut s| s.execute(params![owner, &vcard[..]]))
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, user: &BareJid) -> Result<()> {
        let owner = owner(user);
        self.write(move |tx| {
            tx.execute("DELETE FROM vcard WHERE owner = ?1", params![owner]).map_err(db)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl BlockStore for SqliteStore {
    async fn list(&self, user: &BareJid) -> Result<Vec<String>> {
        let owner = owner(user);
        self.read(move |tx| {
            let mut s = tx.prepare_cached("SELECT jid FROM blocklist WHERE owner = ?1 ORDER BY jid").map_err(db)?;
            s.query_map(params![owner], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(db)
        })
        .await
    }

    async fn block(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        let (owner, jids) = (owner(user), jids.to_vec());
        self.write(move |tx| {
            let mut s = tx
                .prepare_cached(
                    "INSERT INTO blocklist (owner, jid) VALUES (?1, ?2) ON CONFLICT (owner, jid) DO NOTHING",
                )
                .map_err(db)?;
            for jid in &jids {
                s.execute(params![owner, jid]).map_err(db)?;
            }
            Ok(())
        })
        .await
    }

    async fn unblock(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        let (owner, jids) = (owner(user), jids.to_vec());
        self.write(move |tx| {
            let mut s = tx.prepare_cached("DELETE FROM blocklist WHERE owner = ?1 AND jid = ?2").map_err(db)?;
            for jid in &jids {
                s.execute(params![owner, jid]).map_err(db)?;
            }
            Ok(())
        })
        .await
    }

    async fn unblock_all(&self, user: &BareJid) -> Result<()> {
        let owner = owner(user);
        self.write(move |tx| {
            tx.execute("DELETE FROM blocklist WHERE owner = ?1", params![owner]).map_err(db)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl LastActivityStore for SqliteStore {
    async fn get(&self, user: &BareJid) -> Result<Option<LastActivity>> {
        let owner = owner(user);
        let row: Option<(i64, String)> = self
            .read(move |tx| {
                tx.prepare_cached("SELECT at, status FROM last_activity WHERE owner = ?1")
                    .and_then(|mut s| s.query_row(params![owner], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                    .map_err(db)
            })
            .await?;
        row.map(|(at, status)| Ok(LastActivity { at: to_u64("last activity time", at)?, status })).transpose()
    }

    async fn set(&self, user: &BareJid, last: LastActivity) -> Result<()> {
        let owner = owner(user);
        let at = to_i64("last activity time", last.at)?;
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO last_activity (owner, at, status) VALUES (?1, ?2, ?3)
                 ON CONFLICT (owner) DO UPDATE SET at = excluded.at, status = excluded.status",
            )
            .and_then(|mut s| s.execute(params![owner, at, last.status]))
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, user: &BareJid) -> Result<()> {
        let owner = owner(user);
        self.write(move |tx| {
            tx.execute("DELETE FROM last_activity WHERE owner = ?1", params![owner]).map_err(db)?;
            Ok(())
        })
        .await
    }
}
