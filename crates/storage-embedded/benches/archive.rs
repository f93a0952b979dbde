//! Message archive on the fjall store: write throughput and MAM page latency.
//!
//! Owns: a stand-alone measurement (not a test, no assertions about speed) printed as
//! Markdown tables for docs/benchmarks.md. Must not touch: anything outside a temporary
//! directory. Run with `cargo bench -p rookery-storage-embedded --bench archive`.
//!
//! - Writes: pairs of rows (sender's and recipient's archive, as the router archives one
//!   chat message, XEP-0313 §4) appended with one call per pair, from 1 task and from 8
//!   concurrent tasks, across 1,000 users.
//! - Reads: pages of 50 (XEP-0059) for owners holding 1k, 10k and 100k messages: the last
//!   page, a page after an id in the middle, the last page of one conversation (`with`),
//!   and the last page with a full count. The owners are written first, then the write
//!   runs push some hundred MB more through the store, so their rows sit in on-disk
//!   tables (behind the block and page caches), not only in the memtable.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use rookery_jid::BareJid;
use rookery_storage::{ArchiveEntry, ArchiveId, ArchiveIdGen, ArchiveQuery, ArchiveRow, ArchiveStore, WithFilter};
use rookery_storage_embedded::{Durability, EmbeddedStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USERS: usize = 1_000;
const PEERS: usize = 10;
const PAGE: usize = 50;
const QUERY_RUNS: usize = 2_000;

fn jid(s: &str) -> BareJid {
    BareJid::parse(s).unwrap()
}

/// A chat message the size of a typical archived one (about 400 bytes).
fn stanza(from: &str, to: &str, n: u64, id: ArchiveId) -> Bytes {
    Bytes::from(format!(
        "<message xmlns='jabber:client' from='{from}/phone' to='{to}' type='chat' id='m{n}'>\
         <body>Message number {n}: the quick brown fox jumps over the lazy dog, twice over.</body>\
         <active xmlns='http://jabber.org/protocol/chatstates'/>\
         <stanza-id xmlns='urn:xmpp:sid:0' id='{id}' by='{to}'/></message>"
    ))
}

fn pair(ids: &ArchiveIdGen, n: u64, from: &BareJid, to: &BareJid) -> [ArchiveRow; 2] {
    let id = ids.next();
    let stanza = stanza(from.as_str(), to.as_str(), n, id);
    let entry = |with: &BareJid, resource: &str, outgoing: bool| ArchiveEntry {
        id,
        with: with.as_str().to_owned(),
        with_resource: resource.to_owned(),
        outgoing,
        stanza: stanza.clone(),
    };
    [
        ArchiveRow { owner: from.clone(), entry: entry(to, "", true) },
        ArchiveRow { owner: to.clone(), entry: entry(from, "phone", false) },
    ]
}

fn users() -> Arc<Vec<BareJid>> {
    Arc::new((0..USERS).map(|i| jid(&format!("user{i}@bench.example"))).collect())
}

/// Appends `pairs_per_task` pairs from each of `tasks` tasks; returns rows per second.
async fn write_run(store: &Arc<EmbeddedStore>, tasks: usize, pairs_per_task: usize, node_base: u16) -> f64 {
    let users = users();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (store, users) = (store.clone(), users.clone());
        let node = node_base + u16::try_from(t).unwrap();
        set.spawn(async move {
            let ids = ArchiveIdGen::new(node);
            for n in 0..pairs_per_task {
                let from = &users[(n * 7 + t) % USERS];
                let to = &users[(n * 13 + t * 31 + 1) % USERS];
                store.append(&pair(&ids, n as u64, from, to)).await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let rows = (2 * tasks * pairs_per_task) as f64;
    rows / started.elapsed().as_secs_f64()
}

/// One owner with `n` messages, alternating over [`PEERS`] conversations; returns the ids.
async fn populate(store: &EmbeddedStore, owner: &BareJid, n: usize) -> Vec<ArchiveId> {
    let ids = ArchiveIdGen::new(900);
    let peers: Vec<BareJid> = (0..PEERS).map(|p| jid(&format!("peer{p}@bench.example"))).collect();
    let mut all = Vec::with_capacity(n);
    let mut batch = Vec::with_capacity(500);
    for i in 0..n {
        let peer = &peers[i % PEERS];
        let id = ids.next();
        all.push(id);
        let outgoing = i % 2 == 0;
        let (from, to) = if outgoing { (owner, peer) } else { (peer, owner) };
        let entry = ArchiveEntry {
            id,
            with: peer.as_str().to_owned(),
            with_resource: "phone".to_owned(),
            outgoing,
            stanza: stanza(from.as_str(), to.as_str(), i as u64, id),
        };
        batch.push(ArchiveRow { owner: owner.clone(), entry });
        if batch.len() == 500 {
            store.append(&batch).await.unwrap();
            batch.clear();
        }
    }
    store.append(&batch).await.unwrap();
    all
}

struct Latency {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

async fn measure(store: &EmbeddedStore, owner: &BareJid, q: &ArchiveQuery) -> Latency {
    let expected = store.query(owner, q).await.unwrap();
    assert_eq!(expected.items.len(), q.limit, "the benchmark pages are full pages");
    for _ in 0..20 {
        std::hint::black_box(store.query(owner, q).await.unwrap());
    }
    // Up to QUERY_RUNS samples, fewer (at least 50) for queries slower than ~1.5 ms.
    let budget = Instant::now();
    let mut times = Vec::with_capacity(QUERY_RUNS);
    while times.len() < QUERY_RUNS && (times.len() < 50 || budget.elapsed() < Duration::from_secs(3)) {
        let t = Instant::now();
        std::hint::black_box(store.query(owner, q).await.unwrap());
        times.push(t.elapsed());
    }
    times.sort_unstable();
    let total: Duration = times.iter().sum();
    Latency {
        p50: times[times.len() / 2],
        p99: times[times.len() * 99 / 100],
        mean: total / u32::try_from(times.len()).unwrap(),
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), Durability::Os).unwrap());

    let sizes = [1_000usize, 10_000, 100_000];
    let mut owners = Vec::new();
    let started = Instant::now();
    for n in sizes {
        let owner = jid(&format!("owner{n}@bench.example"));
        let ids = populate(&store, &owner, n).await;
        owners.push((n, owner, ids));
    }
    eprintln!("populated {} messages in {:.1?}", sizes.iter().sum::<usize>(), started.elapsed());

    println!("| writes (Durability::Os, one append call per pair) | rows | rows/s |");
    println!("|---|---:|---:|");
    let single = write_run(&store, 1, 50_000, 1).await;
    println!("| 1 task | {} | {:.0} |", 100_000, single);
    let eight = write_run(&store, 8, 12_500, 10).await;
    println!("| 8 concurrent tasks | {} | {:.0} |", 200_000, eight);

    let fsync_dir = tempfile::tempdir().unwrap();
    let fsync_store = Arc::new(EmbeddedStore::open(fsync_dir.path(), Durability::Fsync).unwrap());
    let single_fsync = write_run(&fsync_store, 1, 2_000, 1).await;
    println!("| 1 task, Durability::Fsync | {} | {:.0} |", 4_000, single_fsync);
    let eight_fsync = write_run(&fsync_store, 8, 500, 10).await;
    println!("| 8 concurrent tasks, Durability::Fsync | {} | {:.0} |", 8_000, eight_fsync);
    drop(fsync_store);
    println!();
    eprintln!("store size after writes: {} MB", dir_size(dir.path()) / 1_000_000);

    println!("| query (limit {PAGE}) | archive size | p50 µs | p99 µs | mean µs |");
    println!("|---|---:|---:|---:|---:|");
    let peer3 = WithFilter { bare: "peer3@bench.example".to_owned(), resource: None };
    for (n, owner, ids) in &owners {
        let queries = [
            ("last page (from_end)", ArchiveQuery { limit: PAGE, from_end: true, ..Default::default() }),
            ("page after a middle id", ArchiveQuery { limit: PAGE, after: Some(ids[n / 2]), ..Default::default() }),
            (
                "`with` last page (1 of 10 conversations)",
                ArchiveQuery { limit: PAGE, from_end: true, with: Some(peer3.clone()), ..Default::default() },
            ),
            (
                "last page + count (count_cap 200k)",
                ArchiveQuery { limit: PAGE, from_end: true, count_cap: 200_000, ..Default::default() },
            ),
        ];
        for (name, q) in &queries {
            let l = measure(&store, owner, q).await;
            println!("| {name} | {n} | {} | {} | {} |", us(l.p50), us(l.p99), us(l.mean));
        }
    }
}
