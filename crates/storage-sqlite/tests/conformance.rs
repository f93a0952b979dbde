//! The shared conformance suite on the SQLite backend, one test per check, each on a
//! fresh database file in its own temporary directory.
#![allow(clippy::unwrap_used)]

use rookery_storage::{Stores, conformance};
use rookery_storage_sqlite::{Durability, SqliteStore, sqlite_stores};
use std::sync::Arc;

/// The directory must outlive the stores, so both are returned.
fn open(durability: Durability) -> (tempfile::TempDir, Stores) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("rookery.sqlite3"), durability).unwrap();
    (dir, sqlite_stores(Arc::new(store)))
}

rookery_storage::conformance_tests!(open(Durability::Os));

/// Fsync mode (`synchronous = FULL`) must not change the contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_fsync() {
    let (_dir, stores) = open(Durability::Fsync);
    conformance::run_all(&stores).await;
}

/// Two stores opened on one file in one process behave as one store: what the suite
/// checks holds with calls spread over both (each check's stores mix the two handles).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_over_two_handles_of_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sqlite3");
    let a = Arc::new(SqliteStore::open(&path, Durability::Os).unwrap());
    let b = Arc::new(SqliteStore::open(&path, Durability::Os).unwrap());
    let stores = Stores {
        accounts: a.clone(),
        roster: b.clone(),
        offline: a.clone(),
        vcard: b.clone(),
        blocking: a.clone(),
        last: b.clone(),
        archive: a,
    };
    conformance::run_all(&stores).await;
    // And the other handle reads what the first wrote.
    let other = sqlite_stores(b);
    let alice = rookery_jid::BareJid::parse("alice@a-accounts.example").unwrap();
    assert!(other.accounts.get(&alice).await.unwrap().is_some());
    assert_eq!(
        other.offline.count(&rookery_jid::BareJid::parse("alice@a-offconc.example").unwrap()).await.unwrap(),
        1600
    );
}

/// Writes from a current-thread runtime (the default for `#[tokio::test]`) go through the
/// blocking pool like any other.
#[tokio::test]
async fn fsync_current_thread() {
    let (_dir, stores) = open(Durability::Fsync);
    conformance::check_roster_versions(&stores).await;
    conformance::check_offline_remove_up_to(&stores).await;
}
