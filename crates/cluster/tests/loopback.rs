//! Edge and router transport on loopback: real tonic servers on 127.0.0.1, the real
//! `LocalHub` on the edge side and `MemoryRegistry` for sessions, and a small recording
//! `Router` on the router side (the real `LocalRouter` lives in services/router, which this
//! crate must not depend on).

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use bytes::Bytes;
use rookery_cluster::{
    ClusterEvents, ClusterLink, RemoteRouter, RemoteRouterConfig, RouterEndpoint, RouterServer, RouterServerConfig,
    StaticMembership,
};
use rookery_core::hub::{ConnQueues, control_lane};
use rookery_core::{
    BindError, EdgeLink, IqRequest, IqResult, IqType, LocalHub, Location, MemoryRegistry, Outbound, Router,
    SessionEntry, SessionRegistry,
};
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_stanza::{Condition, Envelope, Kind, StanzaError, StreamCondition};
use rookery_xml::{Element, RawElement};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

// ------------------------------------------------------------------ router side

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Bind { jid: String, loc: Location },
    Route { loc: Location, from: String, id: String },
    Unbind { jid: String, loc: Location },
    Undelivered { to: String, raw: Bytes },
    Preauth { id: String },
}

/// Every call any fake router handled, in the order they were handled.
#[derive(Default)]
struct Log {
    entries: Mutex<Vec<(String, Call)>>,
}

impl Log {
    fn push(&self, router: &str, c: Call) {
        self.entries.lock().unwrap().push((router.to_owned(), c));
    }
    fn snapshot(&self) -> Vec<(String, Call)> {
        self.entries.lock().unwrap().clone()
    }
    async fn wait(&self, what: &str, pred: impl Fn(&[(String, Call)]) -> bool) {
        for _ in 0..1000 {
            if pred(&self.entries.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}; log has {} entries", self.entries.lock().unwrap().len());
    }
    fn routes(&self) -> Vec<(String, String, u64)> {
        self.snapshot()
            .into_iter()
            .filter_map(|(r, c)| match c {
                Call::Route { from, id, .. } => {
                    let seq = id.rsplit('-').next().and_then(|s| s.parse().ok())?;
                    Some((r, from, seq))
                }
                _ => None,
            })
            .collect()
    }
}

struct Fake {
    name: String,
    link: Arc<ClusterLink>,
    registry: MemoryRegistry,
    log: Arc<Log>,
    bind_delay: Mutex<Duration>,
    preauth_delay: Mutex<Duration>,
    route_delay: Duration,
    /// Set when the test kills this router: a dead process handles nothing more.
    dead: std::sync::atomic::AtomicBool,
}

fn entry(jid: &FullJid, loc: Location) -> SessionEntry {
    SessionEntry::new(jid.clone(), loc)
}

#[async_trait]
impl Router for Fake {
    async fn bind(&self, jid: &FullJid, loc: Location) -> Result<(), BindError> {
        let delay = *self.bind_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.log.push(&self.name, Call::Bind { jid: jid.to_string(), loc });
        if jid.resource() == "taken" {
            return Err(BindError::Conflict);
        }
        self.registry.insert(entry(jid, loc)).await.unwrap();
        Ok(())
    }

    async fn route(&self, from: Location, env: Envelope) {
        if !self.route_delay.is_zero() {
            tokio::time::sleep(self.route_delay).await;
        }
        if self.dead.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.log.push(
            &self.name,
            Call::Route { loc: from, from: env.from.to_string(), id: env.id().unwrap_or_default().to_owned() },
        );
        // A module setting a session extension slot, as carbons' <enable/> does.
        if let Some(key) = env.id().and_then(|id| id.strip_prefix("ext:")) {
            self.link.session_ext(from, key, Some(Bytes::from_static(b"on")));
            return;
        }
        if env.kind != Kind::Message {
            return;
        }
        if env.id() == Some("close-me") {
            self.link.deliver(from, Outbound::Close(StreamCondition::Conflict));
            return;
        }
        if let Ok(to) = FullJid::try_from(env.to.clone())
            && let Some(s) = self.registry.get(&to).await
        {
            self.link.deliver(s.loc, Outbound::Stanza(env.wire()));
        }
    }

    async fn unbind(&self, jid: &FullJid, loc: Location) {
        self.log.push(&self.name, Call::Unbind { jid: jid.to_string(), loc });
        self.registry.remove(jid, loc).await;
    }

    async fn preauth_iq(&self, req: IqRequest) -> IqResult {
        let delay = *self.preauth_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.log.push(&self.name, Call::Preauth { id: req.id.clone() });
        if req.id == "bad" {
            return Err(StanzaError::new(Condition::NotAcceptable).with_text("username is not valid"));
        }
        let mut q = Element::new("query", "jabber:iq:register");
        for c in req.payload.elements() {
            q.push_child(c.clone());
        }
        Ok(Some(q))
    }

    async fn undelivered(&self, to: &FullJid, stanza: Bytes) {
        self.log.push(&self.name, Call::Undelivered { to: to.to_string(), raw: stanza });
    }
}

/// The coordinator's part for resync: put the session back into the registry.
struct Events {
    registry: Arc<MemoryRegistry>,
    connected: Mutex<Vec<(u32, u64, Option<u64>)>>,
}

#[async_trait]
impl ClusterEvents for Events {
    async fn session_state(&self, entry: SessionEntry) {
        self.registry.insert(entry).await.unwrap();
    }
    fn edge_connected(&self, edge: u32, epoch: u64, previous_epoch: Option<u64>) {
        self.connected.lock().unwrap().push((edge, epoch, previous_epoch));
    }
}

struct RouterProc {
    name: String,
    addr: SocketAddr,
    server: RouterServer,
    fake: Arc<Fake>,
    events_registry: Arc<MemoryRegistry>,
    events: Arc<Events>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RouterProc {
    async fn start(name: &str, addr: Option<SocketAddr>, log: &Arc<Log>) -> RouterProc {
        Self::start_with(name, addr, log, Duration::ZERO).await
    }

    async fn start_with(name: &str, addr: Option<SocketAddr>, log: &Arc<Log>, route_delay: Duration) -> RouterProc {
        Self::start_cfg(name, addr, log, route_delay, RouterServerConfig::default()).await
    }

    async fn start_cfg(
        name: &str,
        addr: Option<SocketAddr>,
        log: &Arc<Log>,
        route_delay: Duration,
        cfg: RouterServerConfig,
    ) -> RouterProc {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let link = ClusterLink::new(4096);
        let fake = Arc::new(Fake {
            name: name.to_owned(),
            link: link.clone(),
            registry: MemoryRegistry::new(),
            log: log.clone(),
            bind_delay: Mutex::new(Duration::ZERO),
            preauth_delay: Mutex::new(Duration::ZERO),
            route_delay,
            dead: Default::default(),
        });
        let events_registry = Arc::new(MemoryRegistry::new());
        let events = Arc::new(Events { registry: events_registry.clone(), connected: Mutex::default() });
        let server = RouterServer::new(fake.clone(), link, events.clone(), cfg);
        let (shutdown, rx) = watch::channel(false);
        let s = server.clone();
        let task = tokio::spawn(async move { s.serve(listener, rx).await.unwrap() });
        RouterProc { name: name.to_owned(), addr, server, fake, events_registry, events, shutdown, task }
    }

    fn endpoint(&self) -> RouterEndpoint {
        RouterEndpoint::from_addr(&self.name, self.addr)
    }

    /// Stops without draining (what a crash looks like to the edges).
    async fn kill(self) {
        self.fake.dead.store(true, std::sync::atomic::Ordering::SeqCst);
        self.shutdown.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.task).await.unwrap().unwrap();
    }
}

// ------------------------------------------------------------------ edge side

const EDGE: u32 = 7;

struct EdgeProc {
    hub: Arc<LocalHub>,
    remote: Arc<RemoteRouter>,
    membership: StaticMembership,
}

fn edge_cfg() -> RemoteRouterConfig {
    RemoteRouterConfig {
        edge_id: EDGE,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ping_interval: Duration::from_secs(1),
        ping_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..RemoteRouterConfig::default()
    }
}

impl EdgeProc {
    async fn start(routers: &[&RouterProc]) -> EdgeProc {
        Self::start_with(routers, edge_cfg()).await
    }

    async fn start_with(routers: &[&RouterProc], cfg: RemoteRouterConfig) -> EdgeProc {
        let hub = Arc::new(LocalHub::new());
        let membership = StaticMembership::new(routers.iter().map(|r| r.endpoint()).collect());
        let remote = RemoteRouter::start(cfg, &membership, hub.clone());
        EdgeProc { hub, remote, membership }
    }

    async fn wait_up(&self, n: usize) {
        assert!(
            self.remote.wait_routers(n, Duration::from_secs(10)).await,
            "edge did not get {n} routers: {:?}",
            self.remote.status()
        );
    }

    async fn wait_exactly(&self, n: usize) {
        for _ in 0..1000 {
            if self.remote.counts().await.routers_up == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("edge never had exactly {n} routers: {:?}", self.remote.status());
    }

    /// A client connection registered in the hub, as c2s does.
    fn connect(&self, conn: u64, queue: usize) -> Client {
        let (data, data_rx) = mpsc::channel(queue);
        let (control, control_rx) = control_lane();
        self.hub.register(conn, ConnQueues { data, control });
        Client { data: data_rx, control: control_rx }
    }
}

struct Client {
    data: mpsc::Receiver<Outbound>,
    control: tokio::sync::oneshot::Receiver<Outbound>,
}

impl Client {
    async fn next_stanza(&mut self) -> Bytes {
        match tokio::time::timeout(Duration::from_secs(5), self.data.recv()).await {
            Ok(Some(Outbound::Stanza(b))) => b,
            other => panic!("expected a stanza, got {other:?}"),
        }
    }
    async fn next_control(&mut self) -> Outbound {
        tokio::time::timeout(Duration::from_secs(5), &mut self.control).await.unwrap().unwrap()
    }
}

fn loc(conn: u64) -> Location {
    Location { edge: EDGE, conn }
}

/// A stanza as the edge's c2s hands it to the router: framed, `from` stamped.
fn stanza(from: &str, xml: String) -> Envelope {
    let el = RawElement::from_bytes(Bytes::from(xml), "jabber:client").unwrap();
    let kind = Kind::from_name(&el.name).unwrap();
    let from = Jid::parse(from).unwrap();
    let to = match &el.to {
        Some(t) => Jid::parse(t).unwrap(),
        None => from.to_bare().into_jid(),
    };
    Envelope { kind, from, to, el }
}

fn msg(from: &str, to: &str, id: &str) -> Envelope {
    stanza(from, format!("<message to='{to}' id='{id}' type='chat'><body>{id}</body></message>"))
}

fn full(s: &str) -> FullJid {
    FullJid::parse(s).unwrap()
}

fn user(i: usize) -> String {
    format!("user{i}@example.com/res")
}

/// Binds users 0..n on connections 1..=n.
async fn bind_users(edge: &EdgeProc, n: usize) {
    for i in 0..n {
        edge.remote.bind(&full(&user(i)), loc(i as u64 + 1)).await.unwrap();
    }
}

/// Per user: routed sequence numbers in the order routers handled them must be exactly
/// `expected` (complete, in order, no duplicates).
fn assert_in_order(routes: &[(String, String, u64)], users: usize, expected: &[u64]) {
    for i in 0..users {
        let u = user(i);
        let seqs: Vec<u64> = routes.iter().filter(|(_, f, _)| *f == u).map(|(_, _, s)| *s).collect();
        assert_eq!(seqs, expected, "order of {u}");
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_order_per_sender_holds_across_10k_stanzas_and_two_routers() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    let r1 = RouterProc::start("router-1", None, &log).await;
    let edge = EdgeProc::start(&[&r0, &r1]).await;
    edge.wait_up(2).await;
    let (users, per_user) = (50usize, 200u64);
    bind_users(&edge, users).await;
    let mut tasks = Vec::new();
    for i in 0..users {
        let remote = edge.remote.clone();
        // One task per session, calling the router in order like c2s does.
        tasks.push(tokio::spawn(async move {
            for n in 0..per_user {
                remote.route(loc(i as u64 + 1), msg(&user(i), "sink@example.com", &format!("m-{n}"))).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = users * per_user as usize;
    log.wait("all routes", |l| l.iter().filter(|(_, c)| matches!(c, Call::Route { .. })).count() >= total).await;
    let routes = log.routes();
    assert_eq!(routes.len(), total);
    assert_in_order(&routes, users, &(0..per_user).collect::<Vec<_>>());
    // Each user went to its ring owner only, and both routers had users.
    for i in 0..users {
        let owner = edge.remote.owner(&BareJid::parse(&format!("user{i}@example.com")).unwrap()).await.unwrap();
        assert!(routes.iter().filter(|(_, f, _)| *f == user(i)).all(|(r, _, _)| r == owner.as_str()));
    }
    let on_r0 = routes.iter().filter(|(r, _, _)| r == "router-0").count();
    assert!(on_r0 > 0 && on_r0 < total, "all traffic on one router: {on_r0}");
    // The location reported to the router is the edge's id and the session's connection.
    assert!(log.snapshot().iter().any(|(_, c)| matches!(c, Call::Route { loc: l, .. } if *l == loc(1))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_reaches_the_right_connection_and_close_reaches_its_control_queue() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    let edge = EdgeProc::start(&[&r0]).await;
    edge.wait_up(1).await;
    let mut alice = edge.connect(1, 16);
    let mut bob = edge.connect(2, 16);
    edge.remote.bind(&full("alice@example.com/a"), loc(1)).await.unwrap();
    edge.remote.bind(&full("bob@example.com/b"), loc(2)).await.unwrap();

    edge.remote.route(loc(1), msg("alice@example.com/a", "bob@example.com/b", "hello")).await;
    let got = bob.next_stanza().await;
    // The router's bytes, exactly: its `wire()` stamped `from` and re-wrote `to`.
    assert_eq!(
        std::str::from_utf8(&got).unwrap(),
        "<message to=\"bob@example.com/b\" id='hello' type='chat' from=\"alice@example.com/a\"><body>hello</body></message>"
    );
    assert!(alice.data.try_recv().is_err(), "nothing for the sender");

    edge.remote.route(loc(2), msg("bob@example.com/b", "alice@example.com/a", "close-me")).await;
    match bob.next_control().await {
        Outbound::Close(c) => assert_eq!(c, StreamCondition::Conflict),
        other => panic!("{other:?}"),
    }
    assert!(alice.control.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_to_a_vanished_or_full_connection_comes_back_as_undelivered() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    let edge = EdgeProc::start(&[&r0]).await;
    edge.wait_up(1).await;
    let _alice = edge.connect(1, 16);
    let _bob = edge.connect(2, 16);
    edge.remote.bind(&full("alice@example.com/a"), loc(1)).await.unwrap();
    edge.remote.bind(&full("bob@example.com/b"), loc(2)).await.unwrap();

    // Bob's connection disappears before the router hears of it.
    edge.hub.unregister(2);
    edge.remote.route(loc(1), msg("alice@example.com/a", "bob@example.com/b", "lost-1")).await;
    log.wait("undelivered", |l| l.iter().any(|(_, c)| matches!(c, Call::Undelivered { .. }))).await;
    let back: Vec<_> = log
        .snapshot()
        .into_iter()
        .filter_map(|(_, c)| match c {
            Call::Undelivered { to, raw } => Some((to, raw)),
            _ => None,
        })
        .collect();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, "bob@example.com/b");
    assert!(std::str::from_utf8(&back[0].1).unwrap().contains("id='lost-1'"));

    // A full queue: the hub refuses (and closes the slow client); the stanza comes back.
    let mut carol = edge.connect(3, 1);
    edge.remote.bind(&full("carol@example.com/c"), loc(3)).await.unwrap();
    for id in ["q-1", "q-2"] {
        edge.remote.route(loc(1), msg("alice@example.com/a", "carol@example.com/c", id)).await;
    }
    log.wait("second undelivered", |l| l.iter().filter(|(_, c)| matches!(c, Call::Undelivered { .. })).count() == 2)
        .await;
    let last = log.snapshot().into_iter().rev().find_map(|(_, c)| match c {
        Call::Undelivered { to, raw } => Some((to, raw)),
        _ => None,
    });
    let (to, raw) = last.unwrap();
    assert_eq!(to, "carol@example.com/c");
    assert!(std::str::from_utf8(&raw).unwrap().contains("id='q-2'"));
    assert!(std::str::from_utf8(&carol.next_stanza().await).unwrap().contains("id='q-1'"));
    assert!(matches!(carol.next_control().await, Outbound::Close(StreamCondition::PolicyViolation)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_and_preauth_results_and_timeouts() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    let edge =
        EdgeProc::start_with(&[&r0], RemoteRouterConfig { request_timeout: Duration::from_millis(300), ..edge_cfg() })
            .await;
    edge.wait_up(1).await;

    assert_eq!(edge.remote.bind(&full("a@example.com/taken"), loc(1)).await, Err(BindError::Conflict));
    assert_eq!(edge.remote.bind(&full("a@example.com/free"), loc(2)).await, Ok(()));
    assert_eq!(edge.remote.live_sessions(), 1, "a refused bind leaves no session behind");

    let payload = Element::new("query", "jabber:iq:register")
        .child(Element::new("username", "jabber:iq:register").text("newbie"));
    let req = |id: &str| IqRequest {
        from: None,
        to: Jid::parse("example.com").unwrap(),
        kind: IqType::Set,
        id: id.to_owned(),
        payload: payload.clone(),
    };
    let ok = edge.remote.preauth_iq(req("reg-1")).await.unwrap().unwrap();
    assert!(ok.is("query", "jabber:iq:register"));
    assert_eq!(ok.get_child("username", "jabber:iq:register").unwrap().text_content(), "newbie");
    let err = edge.remote.preauth_iq(req("bad")).await.unwrap_err();
    assert_eq!(err.condition, Condition::NotAcceptable);
    assert_eq!(err.text, Some("username is not valid"));

    // Slow router: the edge gives up after request_timeout.
    *r0.fake.preauth_delay.lock().unwrap() = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let err = edge.remote.preauth_iq(req("slow")).await.unwrap_err();
    assert_eq!(err.condition, Condition::InternalServerError);
    assert!(started.elapsed() < Duration::from_millis(900));

    *r0.fake.bind_delay.lock().unwrap() = Duration::from_secs(1);
    assert_eq!(edge.remote.bind(&full("late@example.com/r"), loc(3)).await, Err(BindError::Internal));
    // The router did bind it in the end, and the edge's Unbind undoes that right after.
    log.wait("compensating unbind", |l| {
        l.iter().any(|(_, c)| matches!(c, Call::Unbind { jid, .. } if jid == "late@example.com/r"))
    })
    .await;
    let calls: Vec<_> = log.snapshot().into_iter().map(|(_, c)| c).collect();
    let bind_at = calls.iter().position(|c| matches!(c, Call::Bind { jid, .. } if jid == "late@example.com/r"));
    let unbind_at = calls.iter().position(|c| matches!(c, Call::Unbind { jid, .. } if jid == "late@example.com/r"));
    assert!(bind_at.unwrap() < unbind_at.unwrap());
    assert!(r0.fake.registry.get(&full("late@example.com/r")).await.is_none());
    assert_eq!(edge.remote.counts().await.pending_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_restart_edge_reconnects_and_users_move_back() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    let r1 = RouterProc::start("router-1", None, &log).await;
    let r1_addr = r1.addr;
    let edge = EdgeProc::start(&[&r0, &r1]).await;
    edge.wait_up(2).await;
    let users = 40;
    bind_users(&edge, users).await;
    let mut owned_by_r1 = Vec::new();
    for i in 0..users {
        let o = edge.remote.owner(&BareJid::parse(&format!("user{i}@example.com")).unwrap()).await.unwrap();
        if o.as_str() == "router-1" {
            owned_by_r1.push(i);
        }
    }
    assert!(!owned_by_r1.is_empty());
    let send_round = |round: u64| {
        let remote = edge.remote.clone();
        async move {
            for i in 0..users {
                remote.route(loc(i as u64 + 1), msg(&user(i), "sink@example.com", &format!("m-{round}"))).await;
            }
        }
    };
    send_round(0).await;
    log.wait("round 0", |l| l.iter().filter(|(_, c)| matches!(c, Call::Route { .. })).count() == users).await;

    r1.kill().await;
    edge.wait_exactly(1).await;
    assert!(edge.remote.ready());
    send_round(1).await;
    log.wait("round 1", |l| l.iter().filter(|(_, c)| matches!(c, Call::Route { .. })).count() == 2 * users).await;

    let r1 = RouterProc::start("router-1", Some(r1_addr), &log).await;
    edge.wait_up(2).await;
    assert_eq!(r1.server.connected_edges(), vec![EDGE]);
    send_round(2).await;
    log.wait("round 2", |l| l.iter().filter(|(_, c)| matches!(c, Call::Route { .. })).count() == 3 * users).await;

    let routes = log.routes();
    assert_in_order(&routes, users, &[0, 1, 2]);
    for &i in &owned_by_r1 {
        let by: Vec<&str> = routes.iter().filter(|(_, f, _)| *f == user(i)).map(|(r, _, _)| r.as_str()).collect();
        assert_eq!(by, ["router-1", "router-0", "router-1"], "user{i} while router-1 was away and back");
    }
    drop(r0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_users_to_the_other_router_in_order() {
    let log = Arc::new(Log::default());
    // router-0 is slower than the traffic it gets, so when the drain begins it still has
    // a backlog of frames for its users, and the edge has more queued for it.
    let r0 = RouterProc::start_with("router-0", None, &log, Duration::from_millis(2)).await;
    let r1 = RouterProc::start("router-1", None, &log).await;
    let edge = EdgeProc::start(&[&r0, &r1]).await;
    edge.wait_up(2).await;
    let (users, per_user) = (20usize, 300u64);
    bind_users(&edge, users).await;
    let mut tasks = Vec::new();
    for i in 0..users {
        let remote = edge.remote.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..per_user {
                remote.route(loc(i as u64 + 1), msg(&user(i), "sink@example.com", &format!("m-{n}"))).await;
                if n % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    // Act once traffic is flowing (progress, not wall time, so a loaded machine does not
    // change what is tested).
    log.wait("traffic", |l| l.len() >= 100).await;
    assert!(tasks.iter().any(|t| !t.is_finished()), "the drain starts while users are sending");
    assert!(r0.server.drain(Duration::from_secs(10)).await, "drain completed");
    let handled_by_r0 = log.routes().iter().filter(|(r, _, _)| r == "router-0").count();
    assert!(r0.server.connected_edges().is_empty());
    for t in tasks {
        t.await.unwrap();
    }
    let total = users * per_user as usize;
    log.wait("all routes", |l| l.iter().filter(|(_, c)| matches!(c, Call::Route { .. })).count() >= total).await;
    let routes = log.routes();
    assert_eq!(routes.len(), total, "every stanza handled exactly once");
    assert_in_order(&routes, users, &(0..per_user).collect::<Vec<_>>());
    // Nothing reached router-0 after its drain finished, and every user now belongs to
    // router-1.
    assert_eq!(routes.iter().filter(|(r, _, _)| r == "router-0").count(), handled_by_r0);
    assert!(handled_by_r0 > 0, "router-0 had users before the drain");
    for i in 0..users {
        let o = edge.remote.owner(&BareJid::parse(&format!("user{i}@example.com")).unwrap()).await.unwrap();
        assert_eq!(o.as_str(), "router-1");
    }
    let st = edge.remote.status();
    assert!(st.iter().any(|s| s.id.as_str() == "router-0" && s.draining && !s.up), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_router_takes_users_only_after_their_old_owner_caught_up() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start_with("router-0", None, &log, Duration::from_millis(2)).await;
    let r1 = RouterProc::start("router-1", None, &log).await;
    let edge = EdgeProc::start(&[&r0]).await;
    edge.wait_up(1).await;
    let (users, per_user) = (20usize, 300u64);
    bind_users(&edge, users).await;
    let mut tasks = Vec::new();
    for i in 0..users {
        let remote = edge.remote.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..per_user {
                remote.route(loc(i as u64 + 1), msg(&user(i), "sink@example.com", &format!("m-{n}"))).await;
                if n % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    // Act once traffic is flowing (progress, not wall time, so a loaded machine does not
    // change what is tested).
    log.wait("traffic", |l| l.len() >= 100).await;
    assert!(tasks.iter().any(|t| !t.is_finished()), "the join happens while users are sending");
    edge.membership.set(vec![r0.endpoint(), r1.endpoint()]);
    for t in tasks {
        t.await.unwrap();
    }
    let total = users * per_user as usize;
    log.wait("all routes", |l| l.iter().filter(|(_, c)| matches!(c, Call::Route { .. })).count() >= total).await;
    let routes = log.routes();
    assert_eq!(routes.len(), total);
    assert_in_order(&routes, users, &(0..per_user).collect::<Vec<_>>());
    assert!(routes.iter().any(|(r, _, _)| r == "router-1"), "some users moved to the new router");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_crash_under_load_keeps_order_and_reroutes_what_was_still_queued() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    // Small shard queues and in-flight caps: router-1 pushes back early, so the edge holds a
    // backlog for it, and what router-1 holds when it dies stays small. (Without the
    // in-flight cap its lanes could take up to 512 frames per shard, and the bound below
    // held only by timing.)
    let small = RouterServerConfig {
        shards: 2,
        shard_queue: 4,
        shard_inflight: 4,
        stream_window: Some(4096),
        ..RouterServerConfig::default()
    };
    let r1 = RouterProc::start_cfg("router-1", None, &log, Duration::from_millis(2), small).await;
    let edge = EdgeProc::start(&[&r0, &r1]).await;
    edge.wait_up(2).await;
    let (users, per_user) = (20usize, 300u64);
    bind_users(&edge, users).await;
    let mut tasks = Vec::new();
    for i in 0..users {
        let remote = edge.remote.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..per_user {
                remote.route(loc(i as u64 + 1), msg(&user(i), "sink@example.com", &format!("m-{n}"))).await;
                if n % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    // Act once traffic is flowing (progress, not wall time, so a loaded machine does not
    // change what is tested).
    log.wait("traffic", |l| l.len() >= 100).await;
    assert!(tasks.iter().any(|t| !t.is_finished()), "the crash happens while users are sending");
    r1.kill().await;
    for t in tasks {
        t.await.unwrap();
    }
    let last = per_user - 1;
    log.wait("every user's last stanza", |l| {
        (0..users).all(|i| {
            let u = user(i);
            l.iter().any(|(_, c)| matches!(c, Call::Route { from, id, .. } if *from == u && *id == format!("m-{last}")))
        })
    })
    .await;
    let routes = log.routes();
    let mut lost = 0;
    for i in 0..users {
        let seqs: Vec<u64> = routes.iter().filter(|(_, f, _)| *f == user(i)).map(|(_, _, s)| *s).collect();
        // What the dead router had taken in is gone with it; everything else arrives,
        // once, in order.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order of user{i}: {seqs:?}");
        assert_eq!(seqs.last(), Some(&last));
        lost += per_user as usize - seqs.len();
    }
    // Frames the edge still had queued for router-1 (over a thousand here) were moved,
    // not dropped: only what was inside router-1 can be missing, i.e. its 4 KiB HTTP/2
    // window (a few dozen frames), 2 x 4 queued in front of the shards and 2 x 4 in flight.
    assert!(lost < 150, "lost {lost}");
    assert!(routes.iter().any(|(r, _, _)| r == "router-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_version_mismatch_is_refused_with_a_clear_error() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    let cfg = RemoteRouterConfig { proto_version: rookery_cluster::PROTO_VERSION + 5, ..edge_cfg() };
    let edge = EdgeProc::start_with(&[&r0], cfg).await;
    let mut error = None;
    for _ in 0..500 {
        if let Some(e) = edge.remote.status().into_iter().find_map(|s| s.last_error) {
            error = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = error.expect("the edge reports why it is not connected");
    assert!(error.contains("router-0"), "{error}");
    assert!(error.contains(&format!("protocol version {}", rookery_cluster::PROTO_VERSION + 5)), "{error}");
    assert!(error.contains("upgrade the routers before the edges"), "{error}");
    assert!(!edge.remote.ready());
    assert!(r0.server.connected_edges().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_resends_live_sessions_with_their_presence_state() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    let edge = EdgeProc::start(&[&r0]).await;
    edge.wait_up(1).await;
    let me = "juliet@example.com/balcony";
    edge.remote.bind(&full(me), loc(5)).await.unwrap();
    edge.remote.bind(&full("romeo@example.com/r"), loc(6)).await.unwrap();
    edge.remote.bind(&full("gone@example.com/r"), loc(8)).await.unwrap();
    edge.remote.unbind(&full("gone@example.com/r"), loc(8)).await;
    edge.remote.route(loc(5), stanza(me, "<presence><priority>5</priority><show>dnd</show></presence>".into())).await;
    // The router sets two extension slots (as the roster and carbons code do); the edge
    // learns them from the router, not from the IQs.
    edge.remote
        .route(loc(5), stanza(me, "<iq type='get' id='ext:roster'><query xmlns='jabber:iq:roster'/></iq>".into()))
        .await;
    edge.remote
        .route(loc(5), stanza(me, "<iq type='set' id='ext:carbons'><enable xmlns='urn:xmpp:carbons:2'/></iq>".into()))
        .await;
    edge.remote
        .route(loc(5), stanza(me, "<iq type='set' id='x1'><enable xmlns='urn:xmpp:carbons:2'/></iq>".into()))
        .await;
    edge.remote.route(loc(5), stanza(me, "<presence to='room@muc.example.com/j'/>".into())).await;
    log.wait("the router handled the session's stanzas", |l| {
        l.iter().filter(|(_, c)| matches!(c, Call::Route { loc: l, .. } if *l == loc(5))).count() == 5
    })
    .await;

    assert_eq!(r0.server.link().request_resync().await, 1);
    let reg = &r0.events_registry;
    for _ in 0..500 {
        if reg.count().await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reg.count().await, 2, "the two live sessions, not the ended one");
    let j = reg.get(&full(me)).await.unwrap();
    assert_eq!(j.loc, loc(5));
    assert!(j.available);
    let slots: Vec<_> = j.ext.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect();
    assert_eq!(
        slots,
        [("carbons".to_owned(), Bytes::from_static(b"on")), ("roster".to_owned(), Bytes::from_static(b"on"))],
        "the slots the router set, and nothing sniffed from the IQ without one"
    );
    assert_eq!(j.priority, 5);
    assert_eq!(j.directed, [Jid::parse("room@muc.example.com/j").unwrap()]);
    let p = String::from_utf8(j.presence.unwrap().to_vec()).unwrap();
    assert!(p.starts_with("<presence from=\"juliet@example.com/balcony\">") && p.contains("<show>dnd</show>"), "{p}");
    let r = reg.get(&full("romeo@example.com/r")).await.unwrap();
    assert!(!r.available && r.presence.is_none() && r.ext.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_routers_stanzas_wait_then_the_client_is_closed_and_nothing_is_lost() {
    // An address with nothing listening yet.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let log = Arc::new(Log::default());
    let hub = Arc::new(LocalHub::new());
    let membership = StaticMembership::new(vec![RouterEndpoint::from_addr("router-0", addr)]);
    let cfg = RemoteRouterConfig { route_wait: Duration::from_millis(300), ..edge_cfg() };
    let remote = RemoteRouter::start(cfg, &membership, hub.clone());
    let edge = EdgeProc { hub, remote, membership };
    let mut client = edge.connect(1, 16);
    let started = std::time::Instant::now();
    edge.remote.route(loc(1), msg(&user(0), "sink@example.com", "m-0")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(matches!(client.next_control().await, Outbound::Close(StreamCondition::SystemShutdown)));
    assert_eq!(edge.remote.counts().await.parked, 1);
    assert!(edge.remote.status()[0].last_error.as_deref().unwrap_or_default().contains(&addr.to_string()));

    // A router appears: the parked frame goes first, then newer traffic.
    let r0 = RouterProc::start("router-0", Some(addr), &log).await;
    edge.wait_up(1).await;
    edge.remote.route(loc(1), msg(&user(0), "sink@example.com", "m-1")).await;
    log.wait("both", |l| l.len() == 2).await;
    assert_in_order(&log.routes(), 1, &[0, 1]);
    assert_eq!(edge.remote.counts().await.parked, 0);
    drop(r0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_and_edge_shutdown_are_graceful() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    let r1 = RouterProc::start("router-1", None, &log).await;
    let edge = EdgeProc::start(&[&r0]).await;
    edge.wait_up(1).await;
    edge.membership.set(vec![r0.endpoint(), r1.endpoint()]);
    edge.wait_up(2).await;
    assert_eq!(r1.server.connected_edges(), vec![EDGE]);
    edge.membership.set(vec![r1.endpoint()]);
    edge.wait_exactly(1).await;
    for _ in 0..500 {
        if r0.server.connected_edges().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(r0.server.connected_edges().is_empty(), "the removed router's stream is closed");
    assert_eq!(edge.remote.status().len(), 1);

    bind_users(&edge, 3).await;
    for i in 0..3 {
        edge.remote.route(loc(i as u64 + 1), msg(&user(i), "sink@example.com", "m-0")).await;
    }
    edge.remote.shutdown().await;
    // Everything queued was handled before the streams closed.
    assert_eq!(log.routes().len(), 3);
    assert!(log.routes().iter().all(|(r, _, _)| r == "router-1"));
    for _ in 0..500 {
        if r1.server.connected_edges().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(r1.server.connected_edges().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_edge_is_reported_with_its_previous_epoch() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    let first = EdgeProc::start_with(&[&r0], RemoteRouterConfig { epoch: 100, ..edge_cfg() }).await;
    first.wait_up(1).await;
    first.remote.shutdown().await;
    let second = EdgeProc::start_with(&[&r0], RemoteRouterConfig { epoch: 200, ..edge_cfg() }).await;
    second.wait_up(1).await;
    assert_eq!(r0.server.link().epoch(EDGE), Some(200));
    assert_eq!(*r0.events.connected.lock().unwrap(), [(EDGE, 100, None), (EDGE, 200, Some(100))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_static_membership_keeps_its_routers() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    let hub = Arc::new(LocalHub::new());
    let remote = {
        let membership = StaticMembership::new(vec![r0.endpoint()]);
        RemoteRouter::start(edge_cfg(), &membership, hub.clone())
    };
    assert!(remote.wait_routers(1, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(remote.ready());
    remote.route(loc(1), msg(&user(0), "sink@example.com", "m-0")).await;
    log.wait("the stanza", |l| l.len() == 1).await;
}

#[tokio::test]
async fn cluster_link_reports_unknown_edges_as_gone() {
    let link = ClusterLink::new(8);
    assert!(!link.deliver(Location { edge: 1, conn: 1 }, Outbound::Stanza(Bytes::from_static(b"<message/>"))));
    assert_eq!(link.free_capacity(Location { edge: 1, conn: 1 }), 0);
    assert!(link.connected_edges().is_empty());
    assert_eq!(link.request_resync().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_placed_by_its_jid_is_owned_by_one_router_whoever_writes_to_it() {
    let log = Arc::new(Log::default());
    let r0 = RouterProc::start("router-0", None, &log).await;
    let r1 = RouterProc::start("router-1", None, &log).await;
    let placements = rookery_core::PlacementTable::new([
        ("rooms.example.com".to_owned(), rookery_core::Placement::ByTo),
        ("upload.example.com".to_owned(), rookery_core::Placement::BySender),
    ]);
    let edge = EdgeProc::start_with(&[&r0, &r1], RemoteRouterConfig { placements, ..edge_cfg() }).await;
    edge.wait_up(2).await;
    let users = 40usize;
    bind_users(&edge, users).await;
    // Every user writes to two rooms, to the upload service and to another user; the
    // sequence numbers are per (sender, destination).
    let rooms = ["lecture-1@rooms.example.com", "lecture-2@rooms.example.com"];
    let per = 5u64;
    for n in 0..per {
        for i in 0..users {
            for to in rooms.iter().copied().chain(["upload.example.com", "sink@example.com"]) {
                let id = format!("{}-{n}", to.split('@').next().unwrap_or(to));
                edge.remote.route(loc(i as u64 + 1), msg(&user(i), to, &id)).await;
            }
        }
    }
    let total = users * 4 * per as usize;
    log.wait("all routes", |l| l.iter().filter(|(_, c)| matches!(c, Call::Route { .. })).count() >= total).await;
    let routes: Vec<(String, String, String)> = log
        .snapshot()
        .into_iter()
        .filter_map(|(r, c)| match c {
            Call::Route { from, id, .. } => Some((r, from, id)),
            _ => None,
        })
        .collect();
    assert_eq!(routes.len(), total);
    for room in rooms {
        let prefix = format!("{}-", room.split('@').next().unwrap());
        let owners: std::collections::BTreeSet<&str> =
            routes.iter().filter(|(_, _, id)| id.starts_with(&prefix)).map(|(r, _, _)| r.as_str()).collect();
        assert_eq!(owners.len(), 1, "{room} is handled by one router, whoever writes: {owners:?}");
        // Order per (sender, room) holds.
        for i in 0..users {
            let seqs: Vec<u64> = routes
                .iter()
                .filter(|(_, f, id)| *f == user(i) && id.starts_with(&prefix))
                .map(|(_, _, id)| id.rsplit('-').next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(seqs, (0..per).collect::<Vec<_>>(), "order of {} to {room}", user(i));
        }
    }
    // Everything else goes by the sender, as before.
    for i in 0..users {
        let owner = edge.remote.owner(&BareJid::parse(&format!("user{i}@example.com")).unwrap()).await.unwrap();
        assert!(
            routes
                .iter()
                .filter(|(_, f, id)| *f == user(i) && (id.starts_with("upload.") || id.starts_with("sink-")))
                .all(|(r, _, _)| r == owner.as_str()),
            "{} goes to its own ring owner",
            user(i)
        );
    }
    let sender_routers: std::collections::BTreeSet<&str> =
        routes.iter().filter(|(_, _, id)| id.starts_with("sink-")).map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(sender_routers.len(), 2, "users are spread over both routers");
}
