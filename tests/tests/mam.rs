//! Message archive end to end with an external client library (slixmpp, Python):
//! two users chat, both page through their archives forwards, backwards and filtered,
//! the live stanza-ids equal the archive ids, and the archive survives a restart of the
//! node on the same data directory. `tests/run` installs slixmpp into a virtualenv and names
//! its python in `ROOKERY_TEST_PYTHON` (default `python3`); outside CI the test is skipped
//! with a notice when the module is missing.
#![allow(clippy::unwrap_used)]

use rookery_tests::{TestServer, python, slixmpp_available, test_config};
use std::path::Path;
use std::process::Command;

async fn run_script(mode: &'static str, srv: &TestServer, state: &Path) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/slixmpp_mam.py");
    let port = srv.c2s.port().to_string();
    let domain = srv.domain.clone();
    let state = state.to_str().unwrap().to_owned();
    let python = python();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["120", &python, script, mode, "127.0.0.1", &port, &domain, "mam-pw", &state])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "slixmpp {mode} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_and_page_their_archives_across_a_restart() {
    if !slixmpp_available() {
        assert!(std::env::var("CI").is_err(), "slixmpp must be installed in CI (tests/run installs it)");
        eprintln!("slixmpp is not installed for {}: skipping (tests/run installs it)", python());
        return;
    }
    let srv = TestServer::start().await;
    srv.add_user("alice", "mam-pw").await;
    srv.add_user("bob", "mam-pw").await;
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("archive.json");

    let out = run_script("chat", &srv, &state).await;
    for step in
        ["live stanza-ids: ok", "alice@localhost archive paging: ok (55 messages)", "stanza-ids match archive: ok"]
    {
        assert!(out.contains(step), "{step:?} missing in:\n{out}");
    }

    let tmp = srv.stop().await.unwrap();
    let srv = TestServer::start_cfg(test_config(tmp.path())).await;
    let out = run_script("verify", &srv, &state).await;
    for who in ["alice", "bob"] {
        assert!(out.contains(&format!("{who}@localhost archive after restart: ok")), "{who} in:\n{out}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_purges_an_archive_through_the_admin_api() {
    use bytes::Bytes;
    use rookery_storage::{ArchiveEntry, ArchiveId, ArchiveQuery, ArchiveRow};
    let srv = TestServer::start().await;
    srv.add_user("carol", "pw-carol").await;
    let carol = rookery_jid::BareJid::parse("carol@localhost").unwrap();
    let now = rookery_storage::archive::now_micros();
    let day = 86_400_000_000u64;
    let rows: Vec<_> = [40 * day, 10 * day, 1]
        .iter()
        .map(|age| ArchiveRow {
            owner: carol.clone(),
            entry: ArchiveEntry {
                id: ArchiveId::first_at(now - age),
                with: "dave@localhost".into(),
                with_resource: String::new(),
                outgoing: true,
                stanza: Bytes::from_static(b"<message xmlns='jabber:client'><body>x</body></message>"),
            },
        })
        .collect();
    let stores = srv.server.router.stores().clone();
    stores.archive.append(&rows).await.unwrap();
    let left = || async {
        let q = ArchiveQuery { limit: 10, ..Default::default() };
        stores.archive.query(&carol, &q).await.unwrap().items.len()
    };
    let call = |path: &'static str| rookery::admin::call(srv.http, &srv.server.admin_token, "DELETE", path, None);

    let (status, json) = call("/admin/users/carol@localhost/archive?older_than_days=30").await.unwrap();
    assert_eq!((status, json["removed"].as_u64()), (200, Some(1)));
    assert_eq!(left().await, 2);
    let (status, json) = call("/admin/users/carol@localhost/archive").await.unwrap();
    assert_eq!((status, json["removed"].as_u64()), (200, Some(2)));
    assert_eq!(left().await, 0);
    let (status, _) = call("/admin/users/carol@elsewhere.example/archive").await.unwrap();
    assert_ne!(status, 200, "a foreign domain must be refused");
    srv.stop().await;
}
