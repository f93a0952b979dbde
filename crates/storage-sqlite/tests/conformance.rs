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

#[tokio::test]
async fn accounts() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_accounts(&stores).await;
}

#[tokio::test]
async fn account_isolation() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_account_isolation(&stores).await;
}

#[tokio::test]
async fn roster_basic() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_roster_basic(&stores).await;
}

#[tokio::test]
async fn roster_versions() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_roster_versions(&stores).await;
}

#[tokio::test]
async fn roster_isolation() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_roster_isolation(&stores).await;
}

#[tokio::test]
async fn roster_unicode_and_groups() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_roster_unicode_and_groups(&stores).await;
}

#[tokio::test]
async fn offline_basic() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_offline_basic(&stores).await;
}

#[tokio::test]
async fn offline_remove_up_to() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_offline_remove_up_to(&stores).await;
}

#[tokio::test]
async fn offline_delete_all() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_offline_delete_all(&stores).await;
}

#[tokio::test]
async fn offline_large_stanza() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_offline_large_stanza(&stores).await;
}

#[tokio::test]
async fn offline_many() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_offline_many(&stores).await;
}

#[tokio::test]
async fn vcard() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_vcard(&stores).await;
}

#[tokio::test]
async fn blocking() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_blocking(&stores).await;
}

#[tokio::test]
async fn last_activity() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_last_activity(&stores).await;
}

#[tokio::test]
async fn delete_user() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_delete_user(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_offline() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_concurrent_offline(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_roster() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_concurrent_roster(&stores).await;
}

#[tokio::test]
async fn archive_ordering() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_archive_ordering(&stores).await;
}

#[tokio::test]
async fn archive_replace() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_archive_replace(&stores).await;
}

#[tokio::test]
async fn archive_bounds() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_archive_bounds(&stores).await;
}

#[tokio::test]
async fn archive_with_and_ids() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_archive_with_and_ids(&stores).await;
}

#[tokio::test]
async fn archive_isolation() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_archive_isolation(&stores).await;
}

#[tokio::test]
async fn archive_count() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_archive_count(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_concurrent() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_archive_concurrent(&stores).await;
}

#[tokio::test]
async fn archive_retention() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_archive_retention(&stores).await;
}

#[tokio::test]
async fn archive_unicode() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_archive_unicode(&stores).await;
}

#[tokio::test]
async fn archive_scale() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_archive_scale(&stores).await;
}

#[tokio::test]
async fn archive_prefs() {
    let (_dir, stores) = open(Durability::Os);
    conformance::check_archive_prefs(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_on_one_store() {
    let (_dir, stores) = open(Durability::Os);
    conformance::run_all(&stores).await;
}

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
