//! The shared conformance suite on the in-memory backend, one test per check.

use rookery_storage::conformance;
use rookery_storage::memory::memory_stores;

#[tokio::test]
async fn accounts() {
    conformance::check_accounts(&memory_stores()).await;
}

#[tokio::test]
async fn account_isolation() {
    conformance::check_account_isolation(&memory_stores()).await;
}

#[tokio::test]
async fn roster_basic() {
    conformance::check_roster_basic(&memory_stores()).await;
}

#[tokio::test]
async fn roster_versions() {
    conformance::check_roster_versions(&memory_stores()).await;
}

#[tokio::test]
async fn roster_isolation() {
    conformance::check_roster_isolation(&memory_stores()).await;
}

#[tokio::test]
async fn roster_unicode_and_groups() {
    conformance::check_roster_unicode_and_groups(&memory_stores()).await;
}

#[tokio::test]
async fn offline_basic() {
    conformance::check_offline_basic(&memory_stores()).await;
}

#[tokio::test]
async fn offline_remove_up_to() {
    conformance::check_offline_remove_up_to(&memory_stores()).await;
}

#[tokio::test]
async fn offline_delete_all() {
    conformance::check_offline_delete_all(&memory_stores()).await;
}

#[tokio::test]
async fn offline_large_stanza() {
    conformance::check_offline_large_stanza(&memory_stores()).await;
}

#[tokio::test]
async fn offline_many() {
    conformance::check_offline_many(&memory_stores()).await;
}

#[tokio::test]
async fn vcard() {
    conformance::check_vcard(&memory_stores()).await;
}

#[tokio::test]
async fn blocking() {
    conformance::check_blocking(&memory_stores()).await;
}

#[tokio::test]
async fn last_activity() {
    conformance::check_last_activity(&memory_stores()).await;
}

#[tokio::test]
async fn delete_user() {
    conformance::check_delete_user(&memory_stores()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_offline() {
    conformance::check_concurrent_offline(&memory_stores()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_roster() {
    conformance::check_concurrent_roster(&memory_stores()).await;
}

#[tokio::test]
async fn run_all_on_one_store() {
    conformance::run_all(&memory_stores()).await;
}

#[tokio::test]
async fn archive_ordering() {
    conformance::check_archive_ordering(&memory_stores()).await;
}

#[tokio::test]
async fn archive_replace() {
    conformance::check_archive_replace(&memory_stores()).await;
}

#[tokio::test]
async fn archive_bounds() {
    conformance::check_archive_bounds(&memory_stores()).await;
}

#[tokio::test]
async fn archive_with_and_ids() {
    conformance::check_archive_with_and_ids(&memory_stores()).await;
}

#[tokio::test]
async fn archive_isolation() {
    conformance::check_archive_isolation(&memory_stores()).await;
}

#[tokio::test]
async fn archive_count() {
    conformance::check_archive_count(&memory_stores()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_concurrent() {
    conformance::check_archive_concurrent(&memory_stores()).await;
}

#[tokio::test]
async fn archive_retention() {
    conformance::check_archive_retention(&memory_stores()).await;
}

#[tokio::test]
async fn archive_unicode() {
    conformance::check_archive_unicode(&memory_stores()).await;
}

#[tokio::test]
async fn archive_scale() {
    conformance::check_archive_scale(&memory_stores()).await;
}

#[tokio::test]
async fn archive_prefs() {
    conformance::check_archive_prefs(&memory_stores()).await;
}
