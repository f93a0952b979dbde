//! The cluster's failure modes, each on a loopback cluster of real processes (2 edges,
//! 2 routers, a real redis-server, one shared SQLite store; tests/src/cluster.rs):
//! kill -9 of an edge, kill -9 of a router, a restart of redis-server, and a network
//! partition of one edge. In each, a message counts as acknowledged when the sender got
//! the answer to a ping it sent after the message: the router handles one session's
//! stanzas in order (RFC 6120 §10.1), so by then the message was delivered or stored.
//! No acknowledged message may be lost.
//!
//! When redis-server is missing the tests skip with a notice, except under `CI=true`
//! (`tests/run` installs it).
#![allow(clippy::unwrap_used)]

use rookery_tests::cluster::{Cluster, DEAD_AFTER_MS, Options};
use rookery_tests::raw::{Incoming, RawClient};
use rookery_xml::Element;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const PW: &str = "cluster-pw";

fn is_presence_from(e: &Element, bare: &str, kind: Option<&str>) -> bool {
    e.name == "presence"
        && e.get_attr("from").is_some_and(|f| f.split('/').next() == Some(bare))
        && e.get_attr("type") == kind
}

/// Mutual subscription (RFC 6121 §3), so each sees the other's presence.
async fn befriend(a: &mut RawClient, a_jid: &str, b: &mut RawClient, b_jid: &str) {
    subscribe(a, a_jid, b, b_jid).await;
    subscribe(b, b_jid, a, a_jid).await;
}

/// `x` subscribes to `y`'s presence and `y` approves.
async fn subscribe(x: &mut RawClient, x_jid: &str, y: &mut RawClient, y_jid: &str) {
    x.send(&format!("<presence to='{y_jid}' type='subscribe'/>")).await;
    y.recv_until(|e| is_presence_from(e, x_jid, Some("subscribe"))).await;
    y.send(&format!("<presence to='{x_jid}' type='subscribed'/>")).await;
    // The approval makes the server send y's current presence to x.
    x.recv_until(|e| is_presence_from(e, y_jid, None)).await;
}

/// Sends a ping to the server and waits up to `wait` for its answer, ignoring anything
/// else. True when answered: every stanza this client sent before it was handled.
async fn acked(c: &mut RawClient, id: &str, wait: Duration) -> bool {
    c.send(&format!("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_timeout(left).await {
            Some(Incoming::Element(e)) if e.name == "iq" && e.get_attr("id") == Some(id) => {
                return e.get_attr("type") == Some("result");
            }
            Some(Incoming::Element(_)) | Some(Incoming::Header) => continue,
            Some(Incoming::Closed) | None => return false,
        }
    }
}

async fn send_batch(c: &mut RawClient, to: &str, tag: &str, range: std::ops::Range<u32>) {
    for i in range {
        c.send(&format!("<message to='{to}' type='chat' id='{tag}{i}'><body>{tag} {i}</body></message>")).await;
    }
}

/// Bodies of chat messages received until nothing arrives for `quiet`.
async fn drain_bodies(c: &mut RawClient, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(x) = c.recv_timeout(quiet).await {
        match x {
            Incoming::Element(e) if e.name == "message" => {
                if let Some(b) = e.get_child("body", "jabber:client") {
                    out.push(b.text_content());
                }
            }
            Incoming::Closed => break,
            _ => {}
        }
    }
    out
}

/// Waits until `pred` matches an element, up to `wait`; false on timeout or close.
async fn wait_for(c: &mut RawClient, wait: Duration, pred: impl Fn(&Element) -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_timeout(left).await {
            Some(Incoming::Element(e)) if pred(&e) => return true,
            Some(Incoming::Element(_)) | Some(Incoming::Header) => continue,
            Some(Incoming::Closed) | None => return false,
        }
    }
}

async fn online(cluster: &Cluster, edge: usize, user: &str) -> RawClient {
    let mut c = RawClient::login(cluster.edge_c2s(edge), user, PW, "res").await;
    c.available().await;
    c
}

fn expect_all(got: &[String], tag: &str, range: std::ops::Range<u32>, logs: impl Fn() -> String) {
    let got: BTreeSet<&str> = got.iter().map(String::as_str).collect();
    let missing: Vec<String> = range.map(|i| format!("{tag} {i}")).filter(|b| !got.contains(b.as_str())).collect();
    assert!(missing.is_empty(), "acknowledged messages lost: {missing:?}\n{}", logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_edge_loses_no_acknowledged_message() {
    let Some(mut cluster) = Cluster::start().await else { return };
    cluster.add_user("alice", PW).await;
    cluster.add_user("bob", PW).await;
    let (alice_jid, bob_jid) = ("alice@localhost", "bob@localhost");
    let mut alice = online(&cluster, 0, "alice").await;
    let mut bob = online(&cluster, 1, "bob").await;
    befriend(&mut alice, alice_jid, &mut bob, bob_jid).await;

    send_batch(&mut alice, bob_jid, "live", 0..20).await;
    assert!(acked(&mut alice, "p1", Duration::from_secs(5)).await);
    let live = drain_bodies(&mut bob, Duration::from_millis(500)).await;
    expect_all(&live, "live", 0..20, || cluster.logs());

    // Bob's edge dies without a word. Once it is declared dead its sessions are purged
    // and alice hears that bob went away.
    cluster.kill_edge(1);
    let gone = wait_for(&mut alice, Duration::from_millis(DEAD_AFTER_MS * 4), |e| {
        is_presence_from(e, bob_jid, Some("unavailable"))
    })
    .await;
    assert!(gone, "alice never saw bob's unavailable presence\n{}", cluster.logs());

    // While bob is away, acknowledged messages go to offline storage.
    send_batch(&mut alice, bob_jid, "away", 0..10).await;
    assert!(acked(&mut alice, "p2", Duration::from_secs(5)).await);

    // Bob reconnects through the surviving edge, gets them, and alice sees him again.
    let mut bob = RawClient::login(cluster.edge_c2s(0), "bob", PW, "res").await;
    bob.send("<presence/>").await;
    let offline = drain_bodies(&mut bob, Duration::from_millis(1500)).await;
    expect_all(&offline, "away", 0..10, || cluster.logs());
    assert!(
        wait_for(&mut alice, Duration::from_secs(5), |e| is_presence_from(e, bob_jid, None)).await,
        "alice never saw bob come back\n{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_router_moves_traffic_to_the_survivor() {
    let Some(mut cluster) = Cluster::start().await else { return };
    cluster.add_user("alice", PW).await;
    cluster.add_user("bob", PW).await;
    let bob_jid = "bob@localhost";
    let mut alice = online(&cluster, 0, "alice").await;
    let mut bob = online(&cluster, 1, "bob").await;

    send_batch(&mut alice, bob_jid, "before", 0..10).await;
    assert!(acked(&mut alice, "p1", Duration::from_secs(5)).await);
    let got = drain_bodies(&mut bob, Duration::from_millis(500)).await;
    expect_all(&got, "before", 0..10, || cluster.logs());

    // Each router in turn dies (so whichever one owns alice's traffic is hit once).
    for victim in 0..2 {
        let tag = format!("after-kill-{victim}");
        cluster.kill_router(victim);
        // Traffic continues within seconds: edges re-hash every user to the survivor.
        let started = Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            if acked(&mut alice, &format!("probe{victim}-{n}"), Duration::from_secs(2)).await {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no router answered after killing router {victim}\n{}",
                cluster.logs()
            );
        }
        send_batch(&mut alice, bob_jid, &tag, 0..20).await;
        assert!(acked(&mut alice, &format!("a{victim}"), Duration::from_secs(5)).await, "{}", cluster.logs());
        let got = drain_bodies(&mut bob, Duration::from_millis(1000)).await;
        expect_all(&got, &tag, 0..20, || cluster.logs());

        // The router comes back and takes its share again without losing anything.
        cluster.restart_router(victim).await;
        let tag = format!("back-{victim}");
        send_batch(&mut alice, bob_jid, &tag, 0..20).await;
        assert!(acked(&mut alice, &format!("b{victim}"), Duration::from_secs(5)).await, "{}", cluster.logs());
        let got = drain_bodies(&mut bob, Duration::from_millis(1000)).await;
        expect_all(&got, &tag, 0..20, || cluster.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_recovered_without_restarting_rookery() {
    let Some(mut cluster) = Cluster::start().await else { return };
    cluster.add_user("alice", PW).await;
    cluster.add_user("bob", PW).await;
    let bob_jid = "bob@localhost";
    let mut alice = online(&cluster, 0, "alice").await;
    let mut bob = online(&cluster, 1, "bob").await;

    // Redis loses everything (no persistence in the test server).
    cluster.redis.restart();

    // The edges notice the registry reset and register their live sessions again; until
    // then a message may go to offline storage, but none is lost. Probe until bob gets a
    // message live.
    let started = Instant::now();
    let mut i = 0u32;
    let mut sent = Vec::new();
    loop {
        send_batch(&mut alice, bob_jid, "probe", i..i + 1).await;
        let ok = acked(&mut alice, &format!("p{i}"), Duration::from_secs(2)).await;
        if ok {
            sent.push(i);
        }
        i += 1;
        if wait_for(&mut bob, Duration::from_millis(300), |e| e.name == "message").await {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "delivery did not resume\n{}", cluster.logs());
    }
    send_batch(&mut alice, bob_jid, "resumed", 0..20).await;
    assert!(acked(&mut alice, "pr", Duration::from_secs(5)).await, "{}", cluster.logs());
    let got = drain_bodies(&mut bob, Duration::from_millis(1000)).await;
    expect_all(&got, "resumed", 0..20, || cluster.logs());
    // Probes that went to offline storage during the reset reach bob on his next login.
    drop(bob);
    let mut bob = RawClient::login(cluster.edge_c2s(1), "bob", PW, "again").await;
    bob.send("<presence/>").await;
    let _ = drain_bodies(&mut bob, Duration::from_millis(1000)).await;
    // Every process is still the one started at the beginning.
    for p in cluster.routers.iter_mut().chain(cluster.edges.iter_mut()) {
        assert!(p.is_running(), "{:?} {} died", p.role, p.node_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_edge_is_purged_and_its_sessions_do_not_come_back() {
    let Some(cluster) =
        Cluster::start_with(Options { edges: 2, routers: 2, partitionable_edges: vec![0], ..Options::default() }).await
    else {
        return;
    };
    cluster.add_user("alice", PW).await;
    cluster.add_user("bob", PW).await;
    let (alice_jid, bob_jid) = ("alice@localhost", "bob@localhost");
    let mut alice = online(&cluster, 0, "alice").await;
    let mut bob = online(&cluster, 1, "bob").await;
    befriend(&mut alice, alice_jid, &mut bob, bob_jid).await;

    cluster.partition_edge(0);
    // The cluster declares the cut-off edge dead: bob hears alice went away.
    assert!(
        wait_for(&mut bob, Duration::from_millis(DEAD_AFTER_MS * 4), |e| {
            is_presence_from(e, alice_jid, Some("unavailable"))
        })
        .await,
        "bob never saw alice's unavailable presence\n{}",
        cluster.logs()
    );
    // The cut-off edge gives up its clients too: alice's stream ends.
    let deadline = Instant::now() + Duration::from_millis(DEAD_AFTER_MS * 4);
    let mut closed = false;
    while Instant::now() < deadline {
        match alice.recv_timeout(Duration::from_millis(200)).await {
            Some(Incoming::Closed) => {
                closed = true;
                break;
            }
            _ => continue,
        }
    }
    assert!(closed, "the partitioned edge kept alice's stream open\n{}", cluster.logs());

    cluster.heal_edge(0);
    // Give the healed edge a few heartbeats: its old sessions must not reappear.
    tokio::time::sleep(Duration::from_millis(DEAD_AFTER_MS)).await;
    send_batch(&mut bob, alice_jid, "while-away", 0..5).await;
    assert!(acked(&mut bob, "pb", Duration::from_secs(5)).await, "{}", cluster.logs());
    // Alice logs in again (through the healed edge): the messages were stored offline,
    // not handed to a ghost session.
    let mut alice = RawClient::login(cluster.edge_c2s(0), "alice", PW, "res").await;
    alice.send("<presence/>").await;
    let got = drain_bodies(&mut alice, Duration::from_millis(1500)).await;
    expect_all(&got, "while-away", 0..5, || cluster.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_on_one_edge_is_disconnected_without_loss() {
    // Bounded end to end: the edge's per-connection queue (limits.outbound_queue) overflows,
    // the slow client gets <policy-violation/>, and what it did not get goes offline.
    let extra = "\n[limits]\noutbound_queue = 16\nstanza_rate_per_sec = 100000\n".to_owned();
    let Some(cluster) =
        Cluster::start_with(Options { edges: 2, routers: 2, extra_toml: extra, ..Options::default() }).await
    else {
        return;
    };
    cluster.add_user("alice", PW).await;
    cluster.add_user("bob", PW).await;
    let mut bob = online(&cluster, 1, "bob").await;
    let mut alice = online(&cluster, 0, "alice").await;
    let body = "x".repeat(64 * 1024);
    let total = 150u32;
    for i in 0..total {
        alice.send(&format!("<message to='bob@localhost' type='chat'><body>flood {i} {body}</body></message>")).await;
    }
    assert!(acked(&mut alice, "flooded", Duration::from_secs(30)).await, "{}", cluster.logs());
    let mut got = Vec::new();
    let cond = loop {
        match bob.recv_timeout(Duration::from_secs(10)).await {
            Some(Incoming::Element(e)) if e.name == "message" => {
                if let Some(b) = e.get_child("body", "jabber:client") {
                    got.push(b.text_content());
                }
            }
            Some(Incoming::Element(e)) if e.name == "error" => {
                break e.elements().next().map(|c| c.name.clone()).unwrap_or_default();
            }
            Some(Incoming::Element(_)) | Some(Incoming::Header) => {}
            // The edge's writer gave up on the unread socket (write timeout) first.
            Some(Incoming::Closed) => break "closed".to_owned(),
            None => panic!("bob's stream neither delivered nor ended\n{}", cluster.logs()),
        }
    };
    assert!(cond == "policy-violation" || cond == "closed", "unexpected end: {cond}");
    assert!(got.len() < total as usize, "the queue limit never applied");
    // The router cannot see the edge's per-connection queue, so an offline backlog larger
    // than that queue can overflow it again on login (docs/cluster.md, "Backpressure"): what
    // is not written goes back to offline storage and comes with the next login. Log in
    // until everything arrived.
    for attempt in 0..20 {
        let mut bob = RawClient::login(cluster.edge_c2s(0), "bob", PW, &format!("again{attempt}")).await;
        bob.send("<presence/>").await;
        let batch = drain_bodies(&mut bob, Duration::from_secs(2)).await;
        let empty = batch.is_empty();
        got.extend(batch);
        if empty {
            break;
        }
    }
    let got: Vec<String> = got.iter().map(|b| b.split(' ').take(2).collect::<Vec<_>>().join(" ")).collect();
    expect_all(&got, "flood", 0..total, || cluster.logs());
}
