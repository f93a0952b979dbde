//! Two OS processes writing to the same users in one database at the same time, as two
//! `rookery router` processes of a loopback cluster do.
//!
//! The parent re-runs this test binary twice (selected with `--exact writer_process` and
//! [`DB_ENV`]); both children open the database, report `READY`, wait for a start file
//! so their writes overlap, then push offline messages, append archive rows and change a
//! roster for the same users, printing every acknowledged write. The parent checks that
//! every acknowledged write is stored exactly once, that offline seqs and roster versions
//! never repeat and strictly increase, and that the two writers really interleaved.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use rookery_jid::BareJid;
use rookery_storage::{ArchiveEntry, ArchiveId, ArchiveIdGen, ArchiveQuery, ArchiveRow, RosterItem, Subscription};
use rookery_storage_sqlite::{Durability, SqliteStore, sqlite_stores};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DB_ENV: &str = "ROOKERY_TEST_SQLITE_MP_DB";
const WRITER_ENV: &str = "ROOKERY_TEST_SQLITE_MP_WRITER";
const GO_ENV: &str = "ROOKERY_TEST_SQLITE_MP_GO";
/// Writes of each kind per writer.
const PER_WRITER: u64 = 300;
const USERS: [&str; 2] = ["alice@a.example", "bob@a.example"];

fn jid(s: &str) -> BareJid {
    BareJid::parse(s).unwrap()
}

fn stanza(writer: u64, i: u64, user: usize) -> Bytes {
    Bytes::from(format!("<message w='{writer}' n='{i}' u='{user}'><body>{}</body></message>", "y".repeat(200)))
}

fn contact(writer: u64, i: u64) -> String {
    format!("c{writer}-{i}@c.example")
}

fn item(contact: &str) -> RosterItem {
    RosterItem {
        jid: contact.to_owned(),
        name: None,
        subscription: Subscription::None,
        ask: false,
        pending_in: None,
        approved: false,
        groups: vec![],
        hidden: false,
    }
}

/// The child: a no-op unless started by [`two_processes_share_one_database`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_process() {
    let (Some(db), Some(writer), Some(go)) =
        (std::env::var_os(DB_ENV), std::env::var(WRITER_ENV).ok(), std::env::var_os(GO_ENV))
    else {
        return;
    };
    let writer: u64 = writer.parse().unwrap();
    let s = sqlite_stores(Arc::new(SqliteStore::open(Path::new(&db), Durability::Os).unwrap()));
    let mut out = std::io::stdout().lock();
    // libtest has printed `test writer_process ... ` without a newline: start a fresh line.
    writeln!(out, "\nREADY").unwrap();
    out.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Path::new(&go).exists() {
        assert!(Instant::now() < deadline, "never told to start");
        std::thread::sleep(Duration::from_millis(2));
    }
    let users: Vec<BareJid> = USERS.iter().map(|u| jid(u)).collect();
    // Distinct node numbers, as two routers of one cluster have.
    let ids = ArchiveIdGen::new(u16::try_from(writer + 1).unwrap());
    for i in 0..PER_WRITER {
        for (u, user) in users.iter().enumerate() {
            let seq = s.offline.push(user, stanza(writer, i, u)).await.unwrap();
            writeln!(out, "OFF {u} {seq} {i}").unwrap();
        }
        let id = ids.next();
        let rows: Vec<ArchiveRow> = users
            .iter()
            .enumerate()
            .map(|(u, owner)| ArchiveRow {
                owner: owner.clone(),
                entry: ArchiveEntry {
                    id,
                    with: USERS[1 - u].to_owned(),
                    with_resource: format!("w{writer}"),
                    outgoing: u == 0,
                    stanza: stanza(writer, i, u),
                },
            })
            .collect();
        s.archive.append(&rows).await.unwrap();
        writeln!(out, "ARCH {} {i}", id.0).unwrap();
        let v = s.roster.put_item(&users[0], item(&contact(writer, i))).await.unwrap();
        writeln!(out, "ROSTER {v} {i}").unwrap();
        out.flush().unwrap();
    }
    writeln!(out, "DONE").unwrap();
}

/// What one child acknowledged.
#[derive(Default)]
struct Acked {
    /// Per user: (seq, i) in acknowledgement order.
    offline: [Vec<(u64, u64)>; 2],
    /// (id, i).
    archive: Vec<(u64, u64)>,
    /// (version, i) in acknowledgement order.
    roster: Vec<(u64, u64)>,
    done: bool,
}

fn spawn_writer(db: &Path, go: &Path, writer: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["writer_process", "--exact", "--nocapture", "--test-threads=1"])
        .env(DB_ENV, db)
        .env(WRITER_ENV, writer.to_string())
        .env(GO_ENV, go)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Reads one child's stdout on a thread: sends () once it is ready, returns what it acked.
fn collect(child: &mut Child, ready: mpsc::Sender<()>) -> std::thread::JoinHandle<Acked> {
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut acked = Acked::default();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let n: Vec<u64> = line.split_whitespace().skip(1).filter_map(|p| p.parse().ok()).collect();
            match (line.split_whitespace().next(), n.as_slice()) {
                (Some("READY"), _) => ready.send(()).unwrap(),
                (Some("OFF"), &[u, seq, i]) => acked.offline[u as usize].push((seq, i)),
                (Some("ARCH"), &[id, i]) => acked.archive.push((id, i)),
                (Some("ROSTER"), &[v, i]) => acked.roster.push((v, i)),
                (Some("DONE"), _) => acked.done = true,
                _ => {} // test harness chatter
            }
        }
        acked
    })
}

fn strictly_increasing(v: &[u64]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let db: PathBuf = dir.path().join("shared.sqlite3");
    let go = dir.path().join("go");
    // The parent holds the database open too, as a third process would.
    let s = sqlite_stores(Arc::new(SqliteStore::open(&db, Durability::Os).unwrap()));

    let (ready_tx, ready_rx) = mpsc::channel();
    let mut children: Vec<Child> = (0..2).map(|w| spawn_writer(&db, &go, w)).collect();
    let readers: Vec<_> = children.iter_mut().map(|c| collect(c, ready_tx.clone())).collect();
    for _ in 0..2 {
        ready_rx.recv_timeout(Duration::from_secs(60)).expect("a writer never became ready");
    }
    std::fs::write(&go, b"go").unwrap();
    for child in &mut children {
        let status = child.wait().unwrap();
        assert!(status.success(), "a writer process failed: {status}");
    }
    let acked: Vec<Acked> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(acked.iter().all(|a| a.done), "both writers finished");

    // Offline: every acknowledged push is listed exactly once, with its own stanza, and
    // the listed seqs (one order for both writers) strictly increase.
    for (u, user) in USERS.iter().enumerate() {
        let listed = s.offline.list(&jid(user)).await.unwrap();
        let listed_seqs: Vec<u64> = listed.iter().map(|m| m.seq).collect();
        assert!(strictly_increasing(&listed_seqs), "{user}: listed seqs strictly increase");
        let mut want: BTreeMap<u64, Bytes> = BTreeMap::new();
        for (w, a) in acked.iter().enumerate() {
            let own: Vec<u64> = a.offline[u].iter().map(|(seq, _)| *seq).collect();
            assert_eq!(own.len() as u64, PER_WRITER);
            assert!(strictly_increasing(&own), "{user}: writer {w}'s own seqs strictly increase");
            for &(seq, i) in &a.offline[u] {
                assert!(want.insert(seq, stanza(w as u64, i, u)).is_none(), "{user}: seq {seq} handed out twice");
            }
        }
        assert_eq!(listed.len(), want.len(), "{user}: every acknowledged push stored exactly once");
        for m in &listed {
            assert_eq!(Some(&m.stanza), want.get(&m.seq), "{user}: seq {} holds its own stanza", m.seq);
        }
        // The writers overlapped: neither's seqs all come before the other's.
        let range = |a: &Acked| (a.offline[u][0].0, a.offline[u].last().unwrap().0);
        let ((a0, a1), (b0, b1)) = (range(&acked[0]), range(&acked[1]));
        assert!(a0 < b1 && b0 < a1, "{user}: the two writers did not run concurrently ({a0}..{a1}, {b0}..{b1})");
    }

    // Archive: both owners hold every acknowledged id once, with its own message.
    let everything = ArchiveQuery { limit: usize::MAX, count_cap: usize::MAX, ..Default::default() };
    for (u, user) in USERS.iter().enumerate() {
        let page = s.archive.query(&jid(user), &everything).await.unwrap();
        let mut want: BTreeMap<ArchiveId, Bytes> = BTreeMap::new();
        for (w, a) in acked.iter().enumerate() {
            for &(id, i) in &a.archive {
                assert!(want.insert(ArchiveId(id), stanza(w as u64, i, u)).is_none(), "archive id {id} minted twice");
            }
        }
        assert_eq!(page.count, Some(want.len() as u64), "{user}: every acknowledged append stored once");
        let got: BTreeMap<ArchiveId, Bytes> = page.items.iter().map(|e| (e.id, e.stanza.clone())).collect();
        assert_eq!(got.len(), page.items.len(), "{user}: no id twice");
        assert!(got == want, "{user}: the stored archive is exactly the acknowledged rows");
        for w in 0..2u64 {
            let conv = ArchiveQuery {
                with: Some(rookery_storage::WithFilter {
                    bare: USERS[1 - u].to_owned(),
                    resource: Some(format!("w{w}")),
                }),
                ..everything.clone()
            };
            let n = s.archive.query(&jid(user), &conv).await.unwrap().count;
            assert_eq!(n, Some(PER_WRITER), "{user}: writer {w}'s conversation rows");
        }
    }

    // Roster: every put got its own version, the roster holds every item, and reports the
    // last version handed out.
    let mut versions = BTreeSet::new();
    for a in &acked {
        let own: Vec<u64> = a.roster.iter().map(|(v, _)| *v).collect();
        assert!(strictly_increasing(&own), "one writer's roster versions strictly increase");
        versions.extend(own);
    }
    assert_eq!(versions.len() as u64, 2 * PER_WRITER, "no roster version handed out twice");
    let roster = s.roster.get(&jid(USERS[0])).await.unwrap();
    assert_eq!(roster.items.len() as u64, 2 * PER_WRITER, "no roster put lost");
    assert_eq!(Some(roster.version), versions.last().copied());
    for (w, a) in acked.iter().enumerate() {
        for &(_, i) in &a.roster {
            let c = contact(w as u64, i);
            assert!(roster.items.iter().any(|it| it.jid == c), "roster item {c} lost");
        }
    }
}
