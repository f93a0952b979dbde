//! Durability of the SQLite backend: data survives closing and reopening, and every write
//! acknowledged before a `kill -9` is there afterwards.
//!
//! The crash test re-runs this test binary as a child process (selected with
//! `--exact writer_child` and [`WRITER_DB_ENV`]) that writes and prints each acknowledged
//! write; the parent kills it with SIGKILL mid-stream and checks the acknowledged set.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use rookery_jid::BareJid;
use rookery_storage::{
    Account, ArchiveEntry, ArchiveId, ArchiveIdGen, ArchivePrefs, ArchiveQuery, ArchiveRow, LastActivity, RosterItem,
    Stores, Subscription, WithFilter,
};
use rookery_storage_sqlite::{Durability, SCHEMA_VERSION, SqliteStore, sqlite_stores};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITER_DB_ENV: &str = "ROOKERY_TEST_SQLITE_CRASH_WRITER_DB";

fn jid(s: &str) -> BareJid {
    BareJid::parse(s).unwrap()
}

fn open(path: &Path, durability: Durability) -> Stores {
    sqlite_stores(Arc::new(SqliteStore::open(path, durability).unwrap()))
}

fn item(contact: &str) -> RosterItem {
    RosterItem {
        jid: contact.to_owned(),
        name: Some(format!("name of {contact}")),
        subscription: Subscription::Both,
        ask: false,
        pending_in: None,
        approved: false,
        groups: vec!["g2".into(), "g1".into()],
        hidden: false,
    }
}

fn account() -> Account {
    Account {
        credentials: vec![rookery_sasl::StoredCredentials {
            alg: rookery_sasl::HashAlg::Sha256,
            salt: vec![1; 16],
            iterations: 4096,
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
        }],
        created_at: 1_700_000_000,
    }
}

fn stanza(i: u64) -> Bytes {
    Bytes::from(format!("<message n='{i}'><body>{}</body></message>", "x".repeat(512)))
}

fn archive_pair(id: ArchiveId, i: u64) -> [ArchiveRow; 2] {
    let row = |owner: &str, with: &str, resource: &str, outgoing: bool| ArchiveRow {
        owner: jid(owner),
        entry: ArchiveEntry {
            id,
            with: with.to_owned(),
            with_resource: resource.to_owned(),
            outgoing,
            stanza: stanza(i),
        },
    };
    [row("alice@a.example", "bob@a.example", "phone", true), row("bob@a.example", "alice@a.example", "laptop", false)]
}

fn whole_archive() -> ArchiveQuery {
    ArchiveQuery { limit: usize::MAX, count_cap: usize::MAX, ..Default::default() }
}

async fn reopen_keeps_everything(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rookery.sqlite3");
    let alice = jid("alice@a.example");
    let bob = jid("bob@a.example");
    let alice_b = jid("alice@b.example");

    let (pushed, roster_version, gone_seq, ids) = {
        let s = open(&path, durability);
        assert!(s.accounts.create(&alice, account()).await.unwrap());
        assert!(s.accounts.create(&bob, account()).await.unwrap());
        s.roster.put_item(&alice, item("x@c.example")).await.unwrap();
        s.roster.put_item(&alice, item("y@c.example")).await.unwrap();
        let roster_version = s.roster.remove_item(&alice, "x@c.example").await.unwrap().unwrap();
        let mut pushed = Vec::new();
        for i in 0..50 {
            let stanza = Bytes::from(format!("<message n='{i}'/>"));
            pushed.push((s.offline.push(&alice, stanza.clone()).await.unwrap(), stanza));
        }
        // Bob's queue is emptied before the restart: his next seq must still be higher.
        let gone_seq = s.offline.push(&bob, Bytes::from_static(b"<gone/>")).await.unwrap();
        s.offline.delete_all(&bob).await.unwrap();
        s.vcard.set(&alice, Bytes::from_static(b"<vCard/>")).await.unwrap();
        s.blocking.block(&alice, &["eve@evil.example".to_owned()]).await.unwrap();
        s.last.set(&alice, LastActivity { at: 42, status: "zzz".into() }).await.unwrap();
        s.offline.push(&alice_b, Bytes::from_static(b"<b/>")).await.unwrap();
        // Ids past i64::MAX (2041 onwards) must survive and keep their order.
        let mut ids = vec![ArchiveId(u64::MAX - 7), ArchiveId(1 << 62)];
        let gen_ids = ArchiveIdGen::new(0);
        ids.extend((0..18).map(|_| gen_ids.next()));
        ids.sort_unstable();
        for (i, id) in ids.iter().enumerate() {
            s.archive.append(&archive_pair(*id, i as u64)).await.unwrap();
        }
        s.archive
            .set_prefs(&alice, &ArchivePrefs { never: vec!["eve@evil.example".into()], ..Default::default() })
            .await
            .unwrap();
        (pushed, roster_version, gone_seq, ids)
        // Every handle is dropped here, closing the database.
    };

    let s = open(&path, durability);
    assert_eq!(s.accounts.get(&alice).await.unwrap(), Some(account()));
    assert_eq!(s.accounts.list("a.example").await.unwrap(), vec!["alice", "bob"]);
    let roster = s.roster.get(&alice).await.unwrap();
    assert_eq!(roster.version, roster_version, "roster version survives a restart");
    assert_eq!(roster.items, vec![item("y@c.example")]);
    let listed = s.offline.list(&alice).await.unwrap();
    assert_eq!(
        listed.iter().map(|m| (m.seq, m.stanza.clone())).collect::<Vec<_>>(),
        pushed,
        "offline messages survive a restart in order"
    );
    assert_eq!(s.offline.count(&bob).await.unwrap(), 0);
    assert_eq!(s.offline.count(&alice_b).await.unwrap(), 1);
    assert_eq!(s.vcard.get(&alice).await.unwrap(), Some(Bytes::from_static(b"<vCard/>")));
    assert_eq!(s.blocking.list(&alice).await.unwrap(), vec!["eve@evil.example"]);
    assert_eq!(s.last.get(&alice).await.unwrap().map(|l| l.at), Some(42));
    for owner in [&alice, &bob] {
        let archive = s.archive.query(owner, &whole_archive()).await.unwrap();
        assert_eq!(archive.items.iter().map(|e| e.id).collect::<Vec<_>>(), ids, "{owner}: archive ids in order");
        let stanzas: Vec<Bytes> = archive.items.iter().map(|e| e.stanza.clone()).collect();
        assert_eq!(stanzas, (0..20).map(stanza).collect::<Vec<_>>(), "{owner}: archive survives a restart");
        assert_eq!(s.archive.bounds(owner).await.unwrap(), Some((ids[0], ids[19])));
    }
    let newest = ArchiveQuery { limit: 1, from_end: true, ..Default::default() };
    let page = s.archive.query(&alice, &newest).await.unwrap();
    assert_eq!(page.items[0].id, ArchiveId(u64::MAX - 7), "an id above i64::MAX sorts last");
    let with_bob = ArchiveQuery {
        with: Some(WithFilter { bare: "bob@a.example".into(), resource: Some("phone".into()) }),
        ..whole_archive()
    };
    assert_eq!(s.archive.query(&alice, &with_bob).await.unwrap().count, Some(20), "the conversation index survives");
    assert_eq!(s.archive.get_prefs(&alice).await.unwrap().map(|p| p.never), Some(vec!["eve@evil.example".to_owned()]));

    let last_before = pushed.last().unwrap().0;
    let next = s.offline.push(&alice, Bytes::from_static(b"<after/>")).await.unwrap();
    assert!(next > last_before, "seqs keep increasing after a restart ({last_before} -> {next})");
    let bob_next = s.offline.push(&bob, Bytes::from_static(b"<after/>")).await.unwrap();
    assert!(
        bob_next > gone_seq,
        "seqs keep increasing after a restart even when the queue was emptied ({gone_seq} -> {bob_next})"
    );
    let v = s.roster.put_item(&alice, item("z@c.example")).await.unwrap();
    assert!(v > roster_version, "roster versions keep increasing after a restart");
}

#[tokio::test]
async fn reopen_keeps_everything_os() {
    reopen_keeps_everything(Durability::Os).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything_fsync() {
    reopen_keeps_everything(Durability::Fsync).await;
}

#[tokio::test]
async fn open_creates_missing_directories_and_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/rookery/rookery.sqlite3");
    let s = open(&path, Durability::Os);
    s.vcard.set(&jid("alice@a.example"), Bytes::from_static(b"<vCard/>")).await.unwrap();
    // WAL mode: the log file sits next to the database while it is open.
    assert!(path.with_file_name("rookery.sqlite3-wal").exists(), "the database runs in WAL mode");
    drop(s);
    let s = open(&path, Durability::Os);
    assert!(s.vcard.get(&jid("alice@a.example")).await.unwrap().is_some());
}

#[tokio::test]
async fn migrate_reports_once_then_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m/rookery.sqlite3");
    let first = rookery_storage_sqlite::migrate(&path).unwrap();
    assert_eq!((first.from, first.to, first.applied.len()), (0, SCHEMA_VERSION, SCHEMA_VERSION as usize));
    let again = rookery_storage_sqlite::migrate(&path).unwrap();
    assert_eq!((again.from, again.to), (SCHEMA_VERSION, SCHEMA_VERSION));
    assert!(again.applied.is_empty(), "a second migrate applies nothing");
    // A store opens on the migrated file and works.
    let s = open(&path, Durability::Os);
    assert!(s.accounts.create(&jid("alice@a.example"), account()).await.unwrap());
}

#[test]
fn open_refuses_a_newer_schema_and_a_non_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.sqlite3");
    drop(SqliteStore::open(&path, Durability::Os).unwrap());
    // As a newer binary's migration would leave it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    drop(conn);
    let e = SqliteStore::open(&path, Durability::Os).err().expect("a newer schema must be refused").to_string();
    assert!(e.contains("newer") && e.contains(&path.display().to_string()), "{e}");

    let junk = dir.path().join("junk.sqlite3");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let e = SqliteStore::open(&junk, Durability::Os).err().expect("a non-database file must be refused").to_string();
    assert!(e.contains(&junk.display().to_string()), "the error names the file: {e}");
}

/// The child side of [`kill_9_loses_no_acknowledged_write`]; a no-op unless started by it.
#[tokio::test]
async fn writer_child() {
    let Some(db) = std::env::var_os(WRITER_DB_ENV) else {
        return;
    };
    let s = open(Path::new(&db), Durability::Os);
    let alice = jid("alice@a.example");
    let mut out = std::io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids = ArchiveIdGen::new(0);
    let mut i = 0u64;
    // Bounded so an orphaned child cannot run forever.
    while Instant::now() < deadline {
        let seq = s.offline.push(&alice, stanza(i)).await.unwrap();
        writeln!(out, "ACK {seq} {i}").unwrap();
        if i.is_multiple_of(10) {
            let v = s.roster.put_item(&alice, item(&format!("c{i}@c.example"))).await.unwrap();
            writeln!(out, "ROSTER {v} {i}").unwrap();
        }
        // As the router archives a chat message: once for the sender, once for the recipient.
        let id = ids.next();
        s.archive.append(&archive_pair(id, i)).await.unwrap();
        writeln!(out, "ARCH {} {i}", id.0).unwrap();
        out.flush().unwrap();
        i += 1;
    }
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_write() {
    const KILL_AFTER: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.sqlite3");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["writer_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(WRITER_DB_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();

    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut roster: BTreeMap<u64, u64> = BTreeMap::new();
    let mut archived: BTreeMap<u64, u64> = BTreeMap::new();
    let mut record = |line: &str| {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["ACK", seq, i] => {
                acked.insert(seq.parse().unwrap(), i.parse().unwrap());
            }
            ["ROSTER", v, i] => {
                roster.insert(v.parse().unwrap(), i.parse().unwrap());
            }
            ["ARCH", id, i] => {
                archived.insert(id.parse().unwrap(), i.parse().unwrap());
            }
            _ => {} // test harness chatter
        }
    };
    let mut seen = 0;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("ACK ") {
            seen += 1;
        }
        record(&line);
        if seen >= KILL_AFTER {
            break;
        }
    }
    assert!(seen >= KILL_AFTER, "the writer child stopped early after {seen} writes");
    child.kill().unwrap(); // SIGKILL on Unix
    // Lines already in the pipe were acknowledged before the kill.
    for line in lines {
        match line {
            Ok(line) => record(&line),
            Err(_) => break,
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must have been killed, not finished: {status}");

    let s = open(&db, Durability::Os);
    let alice = jid("alice@a.example");
    let stored: BTreeMap<u64, Bytes> =
        s.offline.list(&alice).await.unwrap().into_iter().map(|m| (m.seq, m.stanza)).collect();
    for (seq, i) in &acked {
        assert_eq!(stored.get(seq), Some(&stanza(*i)), "acknowledged offline message {i} (seq {seq}) lost by kill -9");
    }
    assert!(stored.len() >= acked.len());
    let r = s.roster.get(&alice).await.unwrap();
    if let Some((&max_v, _)) = roster.last_key_value() {
        assert!(r.version >= max_v, "roster version went back: {} < {max_v}", r.version);
    }
    for i in roster.values() {
        let contact = format!("c{i}@c.example");
        assert!(r.items.iter().any(|it| it.jid == contact), "acknowledged roster item {contact} lost by kill -9");
    }
    assert_eq!(
        r.version as usize,
        r.items.len(),
        "version and items stay consistent (one bump per distinct item here)"
    );

    assert!(archived.len() >= KILL_AFTER - 1, "the writer archived along with its pushes");
    for (owner, peer) in [("alice@a.example", "bob@a.example"), ("bob@a.example", "alice@a.example")] {
        let owner = jid(owner);
        let stored: BTreeMap<ArchiveId, ArchiveEntry> =
            s.archive.query(&owner, &whole_archive()).await.unwrap().items.into_iter().map(|e| (e.id, e)).collect();
        for (&id, &i) in &archived {
            let e = stored.get(&ArchiveId(id)).unwrap_or_else(|| panic!("{owner}: acknowledged archive row {i} lost"));
            assert_eq!((e.with.as_str(), &e.stanza), (peer, &stanza(i)), "{owner}: archive row {i} intact");
        }
        let conv = ArchiveQuery { with: Some(WithFilter { bare: peer.into(), resource: None }), ..whole_archive() };
        let indexed = s.archive.query(&owner, &conv).await.unwrap();
        assert_eq!(indexed.items.len(), stored.len(), "{owner}: conversation index matches the archive after a crash");
    }

    let last = *acked.keys().last().unwrap();
    let next = s.offline.push(&alice, Bytes::from_static(b"<after/>")).await.unwrap();
    assert!(next > *stored.keys().last().unwrap_or(&last), "seqs keep increasing after a crash");
}
