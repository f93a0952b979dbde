//! The SQLite schema: numbered migrations, the schema version in `PRAGMA user_version`,
//! and the per-connection settings every process must agree on.
//!
//! Owns: table and index definitions, the order migrations run in, and the rule that a
//! binary never opens a database whose schema is newer than it knows.
//! Must not touch: row encoding (see the crate root and [`crate::archive`]).
//!
//! Migrations run at open, inside one `BEGIN IMMEDIATE` transaction that first re-reads
//! `user_version`: two processes opening a fresh database at the same moment serialise on
//! the write lock, and the second finds the schema already there and applies nothing.
//! `user_version` lives in the database header and changes with the transaction, so a crash
//! mid-migration leaves the old version and the old tables.

use crate::{Durability, db};
use rookery_storage::{Result, StoreError};
use rusqlite::{Connection, TransactionBehavior};
use std::time::Duration;

/// How long a statement waits for another connection's (or process's) write lock before
/// failing with `SQLITE_BUSY`. Write transactions here last milliseconds, so hitting this
/// means a stuck process, not contention.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One schema step: `version` is what `user_version` says once it has run.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Never edit an applied one: add the next.
pub const MIGRATIONS: &[Migration] = &[Migration { version: 1, name: "initial", sql: INITIAL }];

/// The schema version this binary writes and expects.
pub const SCHEMA_VERSION: u32 = 1;

const INITIAL: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    domain      TEXT    NOT NULL,
    localpart   TEXT    NOT NULL,
    credentials TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (domain, localpart)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS roster (
    owner   TEXT NOT NULL,
    contact TEXT NOT NULL,
    item    TEXT NOT NULL,
    PRIMARY KEY (owner, contact)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS roster_version (
    owner   TEXT    NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS offline (
    owner  TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    stanza BLOB    NOT NULL,
    PRIMARY KEY (owner, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS counters (
    name  TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS vcard (
    owner TEXT NOT NULL PRIMARY KEY,
    vcard BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS blocklist (
    owner TEXT NOT NULL,
    jid   TEXT NOT NULL,
    PRIMARY KEY (owner, jid)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS last_activity (
    owner  TEXT    NOT NULL PRIMARY KEY,
    at     INTEGER NOT NULL,
    status TEXT    NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS archive (
    owner     TEXT    NOT NULL,
    id        INTEGER NOT NULL,
    with_bare TEXT    NOT NULL,
    with_res  TEXT    NOT NULL,
    outgoing  INTEGER NOT NULL,
    stanza    BLOB    NOT NULL,
    PRIMARY KEY (owner, id)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS archive_with ON archive (owner, with_bare, id);

CREATE TABLE IF NOT EXISTS archive_prefs (
    owner TEXT NOT NULL PRIMARY KEY,
    prefs TEXT NOT NULL
) WITHOUT ROWID;
";

/// What opening (or `rookery migrate`) did to the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// `user_version` found.
    pub from: u32,
    /// `user_version` left.
    pub to: u32,
    /// Migrations applied now, in order: (version, name).
    pub applied: Vec<(u32, &'static str)>,
}

/// Opens one connection with the settings every connection of every process uses.
pub(crate) fn connect(path: &std::path::Path, durability: Durability) -> Result<Connection> {
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    // WAL lets readers run while one process writes, and lets several processes share the
    // file. The mode is stored in the file; only the first open of a database switches it,
    // so a process opening a database already in WAL mode takes no lock here.
    // Switching the mode needs the database to itself and SQLite answers SQLITE_BUSY at
    // once (without the busy handler) when another process is opening the new file at
    // the same moment, so the switch is retried for as long as the busy timeout.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        let attempt = conn.pragma_query_value(None, "journal_mode", |r| r.get::<_, String>(0)).and_then(|mode| {
            if mode.eq_ignore_ascii_case("wal") {
                Ok(mode)
            } else {
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            }
        });
        match attempt {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => break,
            Ok(mode) => {
                return Err(StoreError::Backend(format!(
                    "cannot use WAL mode (journal_mode stays {mode:?}); put the database on a local filesystem"
                )));
            }
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(db(e)),
        }
    }
    // NORMAL in WAL mode: a commit is in the OS page cache (survives kill -9); FULL also
    // fsyncs the WAL at every commit (survives power loss).
    let sync = match durability {
        Durability::Os => "NORMAL",
        Durability::Fsync => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync).map_err(db)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Applies pending migrations in one IMMEDIATE transaction; refuses a newer schema.
pub(crate) fn migrate(conn: &mut Connection) -> Result<MigrationReport> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
    let from: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db)?;
    if from > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "SQLite schema version {from} is newer than this binary's {SCHEMA_VERSION}: upgrade Rookery"
        )));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        tx.execute_batch(m.sql)
            .map_err(|e| StoreError::Backend(format!("SQLite migration {} ({}): {e}", m.version, m.name)))?;
        applied.push((m.version, m.name));
    }
    if !applied.is_empty() {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(db)?;
    }
    tx.commit().map_err(db)?;
    Ok(MigrationReport { from, to: from.max(SCHEMA_VERSION), applied })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_end_at_the_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }

    #[test]
    fn every_statement_is_idempotent() {
        for m in MIGRATIONS {
            for stmt in m.sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                assert!(stmt.contains(" IF NOT EXISTS "), "migration {} statement is not idempotent: {stmt}", m.name);
            }
        }
    }

    #[test]
    fn migrate_applies_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqlite3");
        let mut conn = connect(&path, Durability::Os).unwrap();
        let first = migrate(&mut conn).unwrap();
        assert_eq!(first, MigrationReport { from: 0, to: 1, applied: vec![(1, "initial")] });
        let again = migrate(&mut conn).unwrap();
        assert_eq!(again, MigrationReport { from: 1, to: 1, applied: vec![] });
        // Running a migration's statements over an existing schema changes nothing.
        conn.execute_batch(INITIAL).unwrap();

        conn.pragma_update(None, "user_version", 99).unwrap();
        let e = migrate(&mut conn).unwrap_err().to_string();
        assert!(e.contains("schema version 99 is newer") && e.contains("upgrade Rookery"), "{e}");
    }
}
