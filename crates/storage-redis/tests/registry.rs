//! `RedisRegistry` against a real `redis-server` (see common/mod.rs): the shared registry
//! conformance suite on a single server and on a one-node Redis Cluster, cache
//! invalidation between two registries, recovery from a Redis restart, the dead-edge
//! purge, and the Redis round-trip counter.
#![allow(clippy::unwrap_used)]

mod common;

use common::RedisServer;
use rookery_core::registry_conformance::{assert_same, check_registry};
use rookery_core::{Location, SessionEntry, SessionRegistry};
use rookery_jid::{BareJid, FullJid};
use rookery_storage_redis::{Heartbeat, RedisConfig, RedisRegistry};
use std::future::Future;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn config(server: &RedisServer, cluster: bool) -> RedisConfig {
    RedisConfig {
        urls: vec![server.url()],
        cluster,
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(1),
        ..RedisConfig::default()
    }
}

async fn registry(server: &RedisServer) -> RedisRegistry {
    let r = RedisRegistry::connect(config(server, false)).await.unwrap();
    assert!(r.cache_live(), "the invalidation subscription comes up during connect");
    r
}

fn full(s: &str) -> FullJid {
    FullJid::parse(s).unwrap()
}

fn bare(s: &str) -> BareJid {
    BareJid::parse(s).unwrap()
}

fn entry(jid: &str, edge: u32, conn: u64) -> SessionEntry {
    let mut e = SessionEntry::new(full(jid), Location { edge, conn });
    e.available = true;
    e
}

fn names(v: Vec<SessionEntry>) -> Vec<String> {
    let mut n: Vec<String> = v.into_iter().map(|e| e.jid.to_string()).collect();
    n.sort();
    n
}

/// Polls `check` until it holds, failing after `WAIT`.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn conforms_on_a_single_server() {
    let Some(server) = RedisServer::try_start() else { return };
    check_registry(&registry(&server).await).await;
}

#[tokio::test]
async fn conforms_on_redis_cluster_and_purges_there() {
    let Some(server) = RedisServer::try_start_cluster() else { return };
    let r = RedisRegistry::connect(config(&server, true)).await.unwrap();
    check_registry(&r).await;
    // The conformance run leaves bob@example.org/phone on edge 1 and
    // alice@other.example/phone on edge 2; the edge sets were kept outside the scripts.
    r.insert(entry("carol@example.org/a", 1, 7)).await.unwrap();
    r.insert(entry("carol@example.org/a", 2, 8)).await.unwrap();
    assert_eq!(r.heartbeat(1, 5, Duration::from_secs(60)).await.unwrap(), Heartbeat::Ok);
    let (epoch, mut sessions) = r.claim_purge(1).await.unwrap().unwrap();
    sessions.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(epoch, 5);
    // carol moved to edge 2, so edge 1 only lists bob.
    assert_eq!(sessions, [(full("bob@example.org/phone"), Location { edge: 1, conn: 4 })]);
    for (jid, loc) in &sessions {
        assert!(r.remove(jid, *loc).await.is_some());
    }
    r.finish_purge(1).await.unwrap();
    assert_eq!(r.count().await, 2);
    assert_eq!(r.heartbeat(1, 5, Duration::from_secs(60)).await.unwrap(), Heartbeat::Purged);
    let resynced = r.resync([entry("carol@example.org/a", 3, 9), entry("dave@example.org/a", 3, 10)]).await.unwrap();
    assert_eq!(resynced, 1, "resync keeps the newer binding of carol");
    assert_eq!(r.get(&full("carol@example.org/a")).await.unwrap().loc, Location { edge: 2, conn: 8 });
    assert_eq!(r.count().await, 3);
}

#[tokio::test]
async fn a_write_on_one_registry_invalidates_the_others_cache() {
    let Some(server) = RedisServer::try_start() else { return };
    let a = registry(&server).await;
    let b = registry(&server).await;
    let alice = bare("alice@example.org");
    a.insert(entry("alice@example.org/phone", 1, 1)).await.unwrap();

    // The invalidation A's insert published may still be in flight to B's subscriber; a
    // read it overlaps is not cached (by design), so read until one is.
    eventually("B caches alice's sessions", || async {
        names(b.sessions(&alice).await) == ["alice@example.org/phone"] && b.cached_users() == 1
    })
    .await;
    // Served from the cache: no Redis request for any of the read calls.
    let ops = b.ops();
    assert_eq!(names(b.sessions(&alice).await), ["alice@example.org/phone"]);
    assert!(b.get(&full("alice@example.org/phone")).await.is_some());
    assert!(b.is_current(&full("alice@example.org/phone"), Location { edge: 1, conn: 1 }).await);
    assert!(b.sessions_with(&alice, "carbons").await.is_empty());
    assert_eq!(b.ops(), ops, "cached reads must not reach Redis");

    // A bind on A reaches B's cache.
    a.insert(entry("alice@example.org/laptop", 2, 2)).await.unwrap();
    eventually("B sees the new session", || async {
        names(b.sessions(&alice).await) == ["alice@example.org/laptop", "alice@example.org/phone"]
    })
    .await;
    // An update on A (an extension slot set) reaches B.
    assert!(
        a.update(&full("alice@example.org/laptop"), &mut |e| e.ext.set_raw("carbons", Some(bytes::Bytes::new()))).await
    );
    eventually("B sees the slot", || async {
        names(b.sessions_with(&alice, "carbons").await) == ["alice@example.org/laptop"]
    })
    .await;
    // An unbind on A reaches B.
    assert!(a.remove(&full("alice@example.org/phone"), Location { edge: 1, conn: 1 }).await.is_some());
    eventually("B sees the session gone", || async {
        !b.is_current(&full("alice@example.org/phone"), Location { edge: 1, conn: 1 }).await
    })
    .await;
    // And once settled, B serves the new state from its cache again.
    let ops = b.ops();
    assert_eq!(names(b.sessions(&alice).await), ["alice@example.org/laptop"]);
    assert_eq!(b.ops(), ops);
}

#[tokio::test]
async fn own_writes_are_visible_immediately() {
    let Some(server) = RedisServer::try_start() else { return };
    let a = registry(&server).await;
    let alice = bare("alice@example.org");
    assert!(a.sessions(&alice).await.is_empty());
    assert_eq!(a.cached_users(), 1, "an empty list is cached too");
    a.insert(entry("alice@example.org/phone", 1, 1)).await.unwrap();
    assert_eq!(names(a.sessions(&alice).await), ["alice@example.org/phone"]);
    assert!(a.update(&full("alice@example.org/phone"), &mut |e| e.priority = 9).await);
    assert_eq!(a.get(&full("alice@example.org/phone")).await.unwrap().priority, 9);
    // The update started from the cached entry: one request (the compare-and-set).
    let _ = a.sessions(&alice).await;
    let ops = a.ops();
    assert!(
        a.update(&full("alice@example.org/phone"), &mut |e| e.ext.set_raw("roster", Some(bytes::Bytes::new()))).await
    );
    assert_eq!(a.ops() - ops, 1);
    assert!(a.get(&full("alice@example.org/phone")).await.unwrap().ext.contains("roster"));
}

#[tokio::test]
async fn update_never_applies_to_a_replacing_session() {
    let Some(server) = RedisServer::try_start() else { return };
    let a = registry(&server).await;
    let b = registry(&server).await;
    let jid = full("alice@example.org/phone");
    a.insert(entry("alice@example.org/phone", 1, 1)).await.unwrap();
    // A caches the session at (1, 1); B replaces it; A's update, racing the
    // invalidation, must apply to the new session's current state or not at all, and
    // never write the old session's bytes back.
    assert!(a.get(&jid).await.is_some());
    let mut replacement = entry("alice@example.org/phone", 2, 2);
    replacement.priority = 3;
    b.insert(replacement.clone()).await.unwrap();
    let _ = a.update(&jid, &mut |e| e.ext.set_raw("carbons", Some(bytes::Bytes::new()))).await;
    let now = b.get(&jid).await.unwrap();
    assert_eq!(now.loc, replacement.loc);
    assert_eq!(now.priority, 3);
}

#[tokio::test]
async fn recovers_from_a_redis_restart() {
    let Some(mut server) = RedisServer::try_start() else { return };
    let a = registry(&server).await;
    let b = registry(&server).await;
    let alice = bare("alice@example.org");
    let phone = entry("alice@example.org/phone", 1, 1);
    let laptop = entry("alice@example.org/laptop", 1, 2);
    a.insert(phone.clone()).await.unwrap();
    a.insert(laptop.clone()).await.unwrap();
    assert_eq!(a.heartbeat(1, 1, Duration::from_secs(60)).await.unwrap(), Heartbeat::Ok);
    assert_eq!(b.sessions(&alice).await.len(), 2);
    assert_eq!(b.cached_users(), 1);

    server.kill();
    // The subscription drops: the cache is cleared and stops serving.
    eventually("B notices the lost subscription", || async { !b.cache_live() }).await;
    assert_eq!(b.cached_users(), 0);
    // Reads fail soft, writes report the failure.
    assert!(b.sessions(&alice).await.is_empty());
    assert!(a.insert(entry("alice@example.org/tablet", 1, 3)).await.is_err());

    server.restart();
    eventually("B resubscribes", || async { b.cache_live() }).await;
    assert_eq!(b.cached_users(), 0, "nothing cached survives a reconnect");
    // The data is gone (no persistence); reads work again once reconnected.
    eventually("A reconnects and writes", || async { a.insert(entry("alice@example.org/tablet", 1, 3)).await.is_ok() })
        .await;
    eventually("B reads again", || async { names(b.sessions(&alice).await) == ["alice@example.org/tablet"] }).await;
    // The edge learns that the registry lost its data and re-registers what it holds.
    assert_eq!(a.heartbeat(1, 1, Duration::from_secs(60)).await.unwrap(), Heartbeat::RegistryReset);
    assert_eq!(b.heartbeat(2, 1, Duration::from_secs(60)).await.unwrap(), Heartbeat::RegistryReset);
    assert_eq!(a.resync([phone.clone(), laptop.clone()]).await.unwrap(), 2);
    assert_eq!(a.heartbeat(1, 1, Duration::from_secs(60)).await.unwrap(), Heartbeat::Ok);
    assert_eq!(b.heartbeat(2, 1, Duration::from_secs(60)).await.unwrap(), Heartbeat::Ok);
    eventually("B sees the resynced sessions", || async { b.sessions(&alice).await.len() == 3 }).await;
    assert_same(&b.get(&phone.jid).await.unwrap(), &phone);
    assert_eq!(a.count().await, 3);
}

#[tokio::test]
async fn a_dead_edge_is_purged_exactly_once() {
    let Some(server) = RedisServer::try_start() else { return };
    let a = registry(&server).await;
    let b = registry(&server).await;
    let ttl = Duration::from_secs(60);
    let timeout = Duration::from_millis(300);
    for (jid, edge, conn) in
        [("alice@example.org/phone", 7, 1), ("bob@example.org/phone", 7, 2), ("carol@example.org/phone", 7, 3)]
    {
        a.insert(entry(jid, edge, conn)).await.unwrap();
    }
    // carol reconnects through edge 8 before edge 7 dies.
    a.insert(entry("carol@example.org/phone", 8, 1)).await.unwrap();
    assert_eq!(a.heartbeat(7, 42, ttl).await.unwrap(), Heartbeat::Ok);
    assert_eq!(b.heartbeat(8, 1, ttl).await.unwrap(), Heartbeat::Ok);
    assert!(a.dead_edges(timeout).await.unwrap().is_empty());

    // Edge 7 stops; edge 8 keeps beating.
    eventually("edge 7 is listed dead", || async {
        b.heartbeat(8, 1, ttl).await.unwrap();
        b.dead_edges(timeout).await.unwrap() == [7]
    })
    .await;

    let (ra, rb) = tokio::join!(a.claim_purge(7), b.claim_purge(7));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.is_some() != rb.is_some(), "exactly one purge wins: {ra:?} / {rb:?}");
    let (epoch, mut sessions) = ra.or(rb).unwrap();
    sessions.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(epoch, 42);
    assert_eq!(
        sessions,
        [
            (full("alice@example.org/phone"), Location { edge: 7, conn: 1 }),
            (full("bob@example.org/phone"), Location { edge: 7, conn: 2 }),
        ]
    );
    // Until the purge is finished the edge stays listed (a winner that dies mid-purge
    // leaves it for the next claim), but the lock keeps anyone else from claiming it.
    assert!(a.dead_edges(timeout).await.unwrap().contains(&7), "an unfinished purge stays listed");
    assert!(a.claim_purge(7).await.unwrap().is_none(), "the purge lock holds");
    for (jid, loc) in &sessions {
        assert!(b.remove(jid, *loc).await.is_some());
    }
    b.finish_purge(7).await.unwrap();
    assert!(!a.dead_edges(timeout).await.unwrap().contains(&7), "a finished purge leaves the dead list");
    assert_eq!(a.count().await, 1);
    assert_eq!(names(a.sessions(&bare("carol@example.org")).await), ["carol@example.org/phone"]);

    // The edge comes back: its old epoch is refused, on any registry; a new one is fine.
    assert_eq!(a.heartbeat(7, 42, ttl).await.unwrap(), Heartbeat::Purged);
    assert_eq!(b.heartbeat(7, 42, ttl).await.unwrap(), Heartbeat::Purged);
    assert_eq!(a.heartbeat(7, 43, ttl).await.unwrap(), Heartbeat::Ok);
    assert!(a.dead_edges(timeout).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_epoch_silent_past_its_ttl_counts_as_purged() {
    let Some(server) = RedisServer::try_start() else { return };
    let a = registry(&server).await;
    assert_eq!(a.heartbeat(9, 1, Duration::from_millis(200)).await.unwrap(), Heartbeat::Ok);
    let raw = redis::Client::open(server.url()).unwrap();
    let raw = raw.get_multiplexed_async_connection().await.unwrap();
    eventually("the epoch record expires", || {
        let mut raw = raw.clone();
        async move { !redis::cmd("EXISTS").arg("rk:edge:{9}:epoch").query_async::<bool>(&mut raw).await.unwrap() }
    })
    .await;
    assert_eq!(a.heartbeat(9, 1, Duration::from_secs(60)).await.unwrap(), Heartbeat::Purged);
    assert_eq!(a.heartbeat(9, 1, Duration::from_secs(60)).await.unwrap(), Heartbeat::Purged, "and stays so");
    // A registry that never saw epoch 1 accepted cannot tell it went silent, but the
    // purged marker tells it.
    let b = registry(&server).await;
    assert_eq!(b.heartbeat(9, 1, Duration::from_secs(60)).await.unwrap(), Heartbeat::Purged);
    assert_eq!(a.heartbeat(9, 2, Duration::from_secs(60)).await.unwrap(), Heartbeat::Ok);
}
