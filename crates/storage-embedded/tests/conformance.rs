//! The shared conformance suite on the fjall backend, one test per check, each on a
//! fresh database in its own temporary directory.
#![allow(clippy::unwrap_used)]

use rookery_storage::{Stores, conformance};
use rookery_storage_embedded::{Durability, EmbeddedStore, embedded_stores};
use std::sync::Arc;

/// The directory must outlive the stores, so both are returned.
fn open(durability: Durability) -> (tempfile::TempDir, Stores) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), durability).unwrap();
    (dir, embedded_stores(Arc::new(store)))
}

rookery_storage::conformance_tests!(open(Durability::Os));

/// Fsync mode runs writes on the blocking pool; the contract must not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_fsync() {
    let (_dir, stores) = open(Durability::Fsync);
    conformance::run_all(&stores).await;
}

/// Fsync mode on a current-thread runtime (the default for `#[tokio::test]`).
#[tokio::test]
async fn fsync_current_thread() {
    let (_dir, stores) = open(Durability::Fsync);
    conformance::check_roster_versions(&stores).await;
    conformance::check_offline_remove_up_to(&stores).await;
}
