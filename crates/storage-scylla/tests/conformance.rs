//! The shared conformance suite on a live ScyllaDB or Cassandra node, one test per check,
//! each in a fresh keyspace `rookery_test_<random>` created by `migrate()` and dropped at
//! the end, plus checks of migrations and the schema-version guard.
//!
//! Runs only when `ROOKERY_SCYLLA_NODES` names a node (`127.0.0.1:9042`); otherwise every
//! test prints why it was skipped and passes. docs/storage.md shows how to start a node.
#![allow(clippy::unwrap_used)]

use futures::FutureExt;
use rookery_storage::{Stores, conformance};
use rookery_storage_scylla::{Replication, SCHEMA_VERSION, ScyllaConfig, ScyllaStore, scylla_stores};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

const NODES_VAR: &str = "ROOKERY_SCYLLA_NODES";

fn nodes(test: &str) -> Option<Vec<String>> {
    let nodes: Vec<String> = std::env::var(NODES_VAR)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() {
        eprintln!(
            "skipping {test}: {NODES_VAR} is not set; to run the ScyllaDB suite start a node and set \
             {NODES_VAR}=127.0.0.1:9042 (see docs/storage.md)"
        );
        return None;
    }
    Some(nodes)
}

fn test_config(nodes: Vec<String>) -> ScyllaConfig {
    let mut raw = [0u8; 6];
    getrandom::fill(&mut raw).unwrap();
    let suffix: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut cfg = ScyllaConfig::new(nodes);
    cfg.keyspace = format!("rookery_test_{suffix}");
    cfg.replication = Replication::Simple(1);
    // Schema changes and contended lightweight transactions on a small test node are slow.
    cfg.request_timeout = Duration::from_secs(30);
    cfg
}

async fn drop_keyspace(store: &ScyllaStore) {
    let cql = format!("DROP KEYSPACE IF EXISTS {}", store.keyspace());
    if let Err(e) = store.session().query_unpaged(cql, &[]).await {
        eprintln!("could not drop test keyspace {}: {e}", store.keyspace());
    }
}

/// Runs `body` on a store in a fresh keyspace (migrated unless `migrate` is false), and
/// drops the keyspace afterwards, also when `body` panics.
async fn in_fresh_keyspace<F, Fut>(test: &str, cfg_edit: impl FnOnce(&mut ScyllaConfig), migrate: bool, body: F)
where
    F: FnOnce(Arc<ScyllaStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(nodes) = nodes(test) else { return };
    let mut cfg = test_config(nodes);
    cfg_edit(&mut cfg);
    let store = Arc::new(ScyllaStore::connect(&cfg).await.unwrap());
    if migrate {
        let report = store.migrate().await.unwrap();
        assert!(report.keyspace_created, "{report:?}");
        assert_eq!(report.version, SCHEMA_VERSION);
    }
    let outcome = AssertUnwindSafe(body(store.clone())).catch_unwind().await;
    drop_keyspace(&store).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn with_stores<F, Fut>(test: &str, check: F)
where
    F: FnOnce(Stores) -> Fut,
    Fut: Future<Output = ()>,
{
    in_fresh_keyspace(test, |_| {}, true, |store| check(scylla_stores(store))).await;
}

macro_rules! conformance_test {
    ($name:ident, $check:ident) => {
        #[tokio::test]
        async fn $name() {
            with_stores(stringify!($name), |s| async move { conformance::$check(&s).await }).await;
        }
    };
    (multi $name:ident, $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            with_stores(stringify!($name), |s| async move { conformance::$check(&s).await }).await;
        }
    };
}

conformance_test!(accounts, check_accounts);
conformance_test!(account_isolation, check_account_isolation);
conformance_test!(roster_basic, check_roster_basic);
conformance_test!(roster_versions, check_roster_versions);
conformance_test!(roster_isolation, check_roster_isolation);
conformance_test!(roster_unicode_and_groups, check_roster_unicode_and_groups);
conformance_test!(offline_basic, check_offline_basic);
conformance_test!(offline_remove_up_to, check_offline_remove_up_to);
conformance_test!(offline_delete_all, check_offline_delete_all);
conformance_test!(offline_large_stanza, check_offline_large_stanza);
conformance_test!(offline_many, check_offline_many);
conformance_test!(vcard, check_vcard);
conformance_test!(blocking, check_blocking);
conformance_test!(last_activity, check_last_activity);
conformance_test!(delete_user, check_delete_user);
conformance_test!(multi concurrent_offline, check_concurrent_offline);
conformance_test!(multi concurrent_roster, check_concurrent_roster);
conformance_test!(archive_ordering, check_archive_ordering);
conformance_test!(archive_replace, check_archive_replace);
conformance_test!(archive_bounds, check_archive_bounds);
conformance_test!(archive_with_and_ids, check_archive_with_and_ids);
conformance_test!(archive_isolation, check_archive_isolation);
conformance_test!(archive_count, check_archive_count);
conformance_test!(multi archive_concurrent, check_archive_concurrent);
conformance_test!(archive_retention, check_archive_retention);
conformance_test!(archive_unicode, check_archive_unicode);
conformance_test!(archive_scale, check_archive_scale);
conformance_test!(archive_prefs, check_archive_prefs);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_on_one_keyspace() {
    with_stores("run_all_on_one_keyspace", |s| async move { conformance::run_all(&s).await }).await;
}

/// Before `migrate` the store refuses work with the fix in the message; `migrate` creates
/// everything, and running it again applies nothing.
#[tokio::test]
async fn migrate_creates_the_schema_once() {
    in_fresh_keyspace(
        "migrate_creates_the_schema_once",
        |_| {},
        false,
        |store| async move {
            let e = store.check_schema().await.unwrap_err().to_string();
            assert!(e.contains("does not exist: run `rookery migrate`"), "{e}");
            let jid = rookery_jid::BareJid::parse("alice@migrate.example").unwrap();
            let stores = scylla_stores(store.clone());
            let e = stores.vcard.get(&jid).await.unwrap_err().to_string();
            assert!(e.contains("run `rookery migrate`"), "{e}");

            let first = store.migrate().await.unwrap();
            assert!(first.keyspace_created);
            assert_eq!(
                first.applied.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
                (1..=SCHEMA_VERSION).collect::<Vec<_>>()
            );
            store.check_schema().await.unwrap();
            assert_eq!(stores.vcard.get(&jid).await.unwrap(), None, "usable after migrate");

            let again = store.migrate().await.unwrap();
            assert!(!again.keyspace_created);
            assert!(again.applied.is_empty(), "{again:?}");
            assert_eq!(again.version, SCHEMA_VERSION);
        },
    )
    .await;
}

/// A keyspace migrated by a newer binary is refused, and never migrated down.
#[tokio::test]
async fn newer_schema_is_refused() {
    in_fresh_keyspace(
        "newer_schema_is_refused",
        |_| {},
        true,
        |store| async move {
            let cql = format!(
                "INSERT INTO {}.schema_version (component, version, name) VALUES ('rookery', ?, 'from_the_future')",
                store.keyspace()
            );
            let newer = i32::try_from(SCHEMA_VERSION + 1).unwrap();
            store.session().query_unpaged(cql, (newer,)).await.unwrap();
            let e = store.check_schema().await.unwrap_err().to_string();
            assert!(e.contains("newer") && e.contains("upgrade rookery"), "{e}");
            assert!(store.migrate().await.is_err(), "migrate must not touch a newer schema");
            // A fresh connection to that keyspace does not prepare statements either.
            let mut cfg = test_config(nodes("newer_schema_is_refused").unwrap());
            cfg.keyspace = store.keyspace().to_owned();
            let other = ScyllaStore::connect(&cfg).await.unwrap();
            assert!(other.check_schema().await.is_err());
        },
    )
    .await;
}

/// `offline_ttl_days` writes offline messages with a TTL; 0 writes none.
#[tokio::test]
async fn offline_ttl() {
    for days in [0u32, 2] {
        in_fresh_keyspace(
            "offline_ttl",
            |c| c.offline_ttl_days = days,
            true,
            |store| async move {
                let jid = rookery_jid::BareJid::parse("alice@ttl.example").unwrap();
                let stores = scylla_stores(store.clone());
                stores.offline.push(&jid, bytes::Bytes::from_static(b"<m/>")).await.unwrap();
                let cql = format!("SELECT TTL(stanza) FROM {}.offline WHERE owner = ?", store.keyspace());
                let rows =
                    store.session().query_unpaged(cql, (jid.as_str(),)).await.unwrap().into_rows_result().unwrap();
                let (ttl,): (Option<i32>,) = rows.first_row().unwrap();
                match days {
                    0 => assert_eq!(ttl, None, "no TTL"),
                    d => {
                        let ttl = ttl.unwrap();
                        let full = i32::try_from(d * 86_400).unwrap();
                        assert!(ttl <= full && ttl > full - 600, "ttl {ttl}");
                    }
                }
            },
        )
        .await;
    }
}
