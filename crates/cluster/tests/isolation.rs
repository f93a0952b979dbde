//! Isolation on the router (docs/cluster.md, "Ordering and isolation"): a router call that
//! hangs holds up only the later frames of its own key, a panicking call is caught and
//! counted and its lane goes on, and the barrier `Pong` still comes only after everything
//! sent before its `Ping`.
//!
//! The edge here is a raw gRPC client speaking `cluster.proto` to a real `RouterServer` on
//! 127.0.0.1, so the test decides exactly which frames go out in which order. The router
//! is a test double whose `route` blocks until released for stanzas marked `hang…` and
//! panics for stanzas marked `boom…`. Nothing here depends on timing: every wait is for a
//! condition, with a long deadline that only turns a deadlock into a failure.

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use bytes::Bytes;
use rookery_cluster::{ClusterEvents, ClusterLink, RouterServer, RouterServerConfig};
use rookery_core::{BindError, IqRequest, IqResult, IqType, Location, Router, SessionEntry};
use rookery_jid::{FullJid, Jid};
use rookery_proto::pb::router_service_client::RouterServiceClient;
use rookery_proto::{EdgeMsg, Hello, PROTO_VERSION, RouterMsg, pb};
use rookery_stanza::{Condition, Envelope, Kind};
use rookery_xml::{Element, RawElement};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Long enough that only a deadlock reaches it.
const DEADLINE: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ the router double

#[derive(Default)]
struct Gated {
    /// (sender's bare JID, stanza id) of every route call that returned, in that order.
    handled: Mutex<Vec<(String, String)>>,
    /// Per bare JID: the gate its `hang…` stanzas wait on (opened by `release`).
    gates: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Route calls currently waiting at a gate.
    hanging: Mutex<usize>,
}

impl Gated {
    fn gate(&self, user: &str) -> watch::Receiver<bool> {
        self.gates.lock().unwrap().entry(user.to_owned()).or_insert_with(|| watch::Sender::new(false)).subscribe()
    }

    fn release(&self, user: &str) {
        self.gates
            .lock()
            .unwrap()
            .entry(user.to_owned())
            .or_insert_with(|| watch::Sender::new(false))
            .send_replace(true);
    }

    fn handled(&self) -> Vec<(String, String)> {
        self.handled.lock().unwrap().clone()
    }

    fn ids_of(&self, user: &str) -> Vec<String> {
        self.handled().into_iter().filter(|(u, _)| u == user).map(|(_, id)| id).collect()
    }

    async fn wait(&self, what: &str, pred: impl Fn(&Gated) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !pred(self) {
            assert!(tokio::time::Instant::now() < deadline, "never happened: {what}; handled: {:?}", self.handled());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[async_trait]
impl Router for Gated {
    async fn bind(&self, jid: &FullJid, _loc: Location) -> Result<(), BindError> {
        if jid.resource() == "boom" {
            panic!("bind of a marked resource");
        }
        Ok(())
    }

    async fn route(&self, _from: Location, env: Envelope) {
        let user = env.from.to_bare().to_string();
        let id = env.id().unwrap_or_default().to_owned();
        if id.starts_with("hang") {
            let mut gate = self.gate(&user);
            *self.hanging.lock().unwrap() += 1;
            let _ = gate.wait_for(|open| *open).await;
            *self.hanging.lock().unwrap() -= 1;
        }
        if id.starts_with("boom") {
            panic!("route of a marked stanza");
        }
        self.handled.lock().unwrap().push((user, id));
    }

    async fn unbind(&self, _jid: &FullJid, _loc: Location) {}

    async fn preauth_iq(&self, req: IqRequest) -> IqResult {
        if req.id == "boom" {
            panic!("pre-auth IQ marked to fail");
        }
        Ok(None)
    }

    async fn undelivered(&self, _to: &FullJid, _stanza: Bytes) {}
}

struct NoEvents;

#[async_trait]
impl ClusterEvents for NoEvents {
    async fn session_state(&self, _entry: SessionEntry) {}
}

async fn start_router(router: Arc<Gated>, cfg: RouterServerConfig) -> (SocketAddr, RouterServer, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = RouterServer::new(router, ClusterLink::new(4096), Arc::new(NoEvents), cfg);
    let (shutdown, rx) = watch::channel(false);
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener, rx).await.unwrap() });
    (addr, server, shutdown)
}

// ------------------------------------------------------------------ a raw edge

struct RawEdge {
    tx: mpsc::Sender<pb::EdgeFrame>,
    rx: mpsc::UnboundedReceiver<RouterMsg>,
}

impl RawEdge {
    async fn connect(addr: SocketAddr) -> RawEdge {
        let (tx, out) = mpsc::channel::<pb::EdgeFrame>(4096);
        tx.send(EdgeMsg::Hello(Hello { edge_id: 7, epoch: 1, proto_version: PROTO_VERSION }).into()).await.unwrap();
        let outbound = futures::stream::unfold(out, |mut out| async move { out.recv().await.map(|f| (f, out)) });
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut client = RouterServiceClient::new(channel);
        let mut inbound = client.connect(outbound).await.unwrap().into_inner();
        let (frames, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(f)) = inbound.message().await {
                if frames.send(RouterMsg::try_from(f).unwrap()).is_err() {
                    return;
                }
            }
        });
        RawEdge { tx, rx }
    }

    async fn send(&self, msg: EdgeMsg) {
        self.tx.send(msg.into()).await.unwrap();
    }

    async fn route(&self, from: &str, id: &str) {
        self.send(EdgeMsg::Route { conn: 1, env: msg(from, id) }).await;
    }

    async fn next(&mut self) -> RouterMsg {
        tokio::time::timeout(DEADLINE, self.rx.recv()).await.expect("no frame from the router").unwrap()
    }

    /// The next frame, which must be `Pong { seq }`.
    async fn pong(&mut self, seq: u64) {
        match self.next().await {
            RouterMsg::Pong { seq: s } if s == seq => {}
            other => panic!("expected Pong {seq}, got {other:?}"),
        }
    }

    fn nothing_yet(&mut self) -> bool {
        self.rx.try_recv().is_err()
    }
}

fn msg(from: &str, id: &str) -> Envelope {
    let xml = format!("<message to='sink@example.com' id='{id}' type='chat'><body>{id}</body></message>");
    let el = RawElement::from_bytes(Bytes::from(xml), "jabber:client").unwrap();
    let kind = Kind::from_name(&el.name).unwrap();
    let to = Jid::parse(el.to.as_deref().unwrap()).unwrap();
    Envelope { kind, from: Jid::parse(from).unwrap(), to, el }
}

fn user(i: usize) -> String {
    format!("user{i}@example.com")
}

/// The shard the previous design put a bare JID on: FNV-1a (as in ring.rs) modulo 8.
fn old_shard(bare: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bare.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % 8
}

const STUCK: &str = "stuck@example.com";
const USERS: usize = 64;

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_call_holds_up_only_its_own_key_and_the_barrier_waits_for_it() {
    // With the old 8 fixed shards, these users share the stuck user's shard.
    let neighbours = (0..USERS).filter(|i| old_shard(&user(*i)) == old_shard(STUCK)).count();
    assert!(neighbours >= 2, "the test needs users on the stuck user's old shard");

    let router = Arc::new(Gated::default());
    let (addr, _server, _shutdown) = start_router(router.clone(), RouterServerConfig::default()).await;
    let mut edge = RawEdge::connect(addr).await;

    edge.route(&format!("{STUCK}/r"), "hang-1").await;
    edge.route(&format!("{STUCK}/r"), "a-2").await;
    for i in 0..USERS {
        edge.route(&format!("{}/r", user(i)), "m-1").await;
    }
    edge.send(EdgeMsg::Ping { seq: 1 }).await;
    for i in 0..USERS {
        edge.route(&format!("{}/r", user(i)), "m-2").await;
    }

    // Everybody else's frames, sent before and after the Ping, are handled while the
    // stuck user's call hangs.
    router.wait("every other user's frames", |r| r.handled().len() == 2 * USERS).await;
    for i in 0..USERS {
        assert_eq!(router.ids_of(&user(i)), ["m-1", "m-2"], "order of {}", user(i));
    }
    assert_eq!(*router.hanging.lock().unwrap(), 1);
    // The stuck user's next stanza waits behind its hanging call (RFC 6120 §10.1), and
    // the barrier waits for it: nothing has been sent back.
    assert!(router.ids_of(STUCK).is_empty());
    assert!(edge.nothing_yet(), "Pong before the stuck call returned");

    router.release(STUCK);
    edge.pong(1).await;
    // The Pong came only after the call that hung returned, and the user's order held.
    assert_eq!(router.ids_of(STUCK)[0], "hang-1");
    router.wait("the stuck user's second stanza", |r| r.ids_of(STUCK).len() == 2).await;
    assert_eq!(router.ids_of(STUCK), ["hang-1", "a-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_call_is_caught_counted_answered_and_the_lanes_go_on() {
    let router = Arc::new(Gated::default());
    let (addr, server, _shutdown) = start_router(router.clone(), RouterServerConfig::default()).await;
    let mut edge = RawEdge::connect(addr).await;
    let crasher = "crasher@example.com";

    edge.route(&format!("{crasher}/r"), "boom-1").await;
    edge.route(&format!("{crasher}/r"), "c-2").await;
    for i in 0..USERS {
        edge.route(&format!("{}/r", user(i)), "m-1").await;
    }
    edge.send(EdgeMsg::Bind { req: 1, jid: FullJid::parse(&format!("{crasher}/boom")).unwrap(), conn: 2 }).await;
    edge.send(EdgeMsg::Bind { req: 2, jid: FullJid::parse(&format!("{crasher}/ok")).unwrap(), conn: 3 }).await;
    let iq = |id: &str| IqRequest {
        from: None,
        to: Jid::parse("example.com").unwrap(),
        kind: IqType::Set,
        id: id.to_owned(),
        payload: Element::new("query", "jabber:iq:register"),
    };
    edge.send(EdgeMsg::PreauthIq { req: 3, iq: iq("boom") }).await;
    edge.send(EdgeMsg::PreauthIq { req: 4, iq: iq("fine") }).await;
    edge.send(EdgeMsg::Ping { seq: 1 }).await;

    // The answers owed to the edge come (a panicking bind is an internal error, a
    // panicking pre-auth IQ an internal-server-error), and the Pong after them.
    let mut answers = HashMap::new();
    loop {
        match edge.next().await {
            RouterMsg::BindResult { req, result } => {
                answers.insert(req, format!("{result:?}"));
            }
            RouterMsg::PreauthResult { req, result } => {
                let text = match result {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => format!("{:?}", e.condition),
                };
                answers.insert(req, text);
            }
            RouterMsg::Pong { seq: 1 } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(answers[&1], format!("{:?}", Err::<(), _>(BindError::Internal)));
    assert_eq!(answers[&2], "Ok(())");
    assert_eq!(answers[&3], format!("{:?}", Condition::InternalServerError));
    assert_eq!(answers[&4], "ok");
    // Everything before the Ping was handled: the panicking user's next stanza and all
    // the others'.
    assert_eq!(router.ids_of(crasher), ["c-2"]);
    for i in 0..USERS {
        assert_eq!(router.ids_of(&user(i)), ["m-1"]);
    }
    assert_eq!(server.router_call_panics(), 3);

    // The same lane and the others keep working, and a second panic is counted too.
    edge.route(&format!("{crasher}/r"), "c-3").await;
    edge.route(&format!("{}/r", user(0)), "boom-2").await;
    edge.route(&format!("{}/r", user(0)), "m-3").await;
    edge.send(EdgeMsg::Ping { seq: 2 }).await;
    edge.pong(2).await;
    assert_eq!(router.ids_of(crasher), ["c-2", "c-3"]);
    assert_eq!(router.ids_of(&user(0)), ["m-1", "m-3"]);
    assert_eq!(server.router_call_panics(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_barrier_covers_the_lanes_of_its_moment_and_not_later_ones() {
    let router = Arc::new(Gated::default());
    // One shard: every key shares it, so only the lanes keep them apart.
    let cfg = RouterServerConfig { shards: 1, ..RouterServerConfig::default() };
    let (addr, _server, _shutdown) = start_router(router.clone(), cfg).await;
    let mut edge = RawEdge::connect(addr).await;
    let (a, b) = ("alice@example.com", "bob@example.com");

    edge.route(&format!("{a}/r"), "hang-a").await;
    edge.send(EdgeMsg::Ping { seq: 1 }).await;
    // Sent after the Ping: the barrier does not wait for it, though it hangs too.
    edge.route(&format!("{b}/r"), "hang-b").await;
    router.wait("both calls hanging", |r| *r.hanging.lock().unwrap() == 2).await;
    assert!(edge.nothing_yet(), "Pong before alice's call returned");

    router.release(a);
    edge.pong(1).await;
    assert_eq!(router.handled(), [(a.to_owned(), "hang-a".to_owned())]);
    assert_eq!(*router.hanging.lock().unwrap(), 1, "bob's call still hangs");

    // A second barrier now waits for bob's call.
    edge.send(EdgeMsg::Ping { seq: 2 }).await;
    edge.route(&format!("{a}/r"), "a-2").await;
    router.wait("alice's next stanza", |r| r.ids_of(a).len() == 2).await;
    assert!(edge.nothing_yet(), "Pong before bob's call returned");
    router.release(b);
    edge.pong(2).await;
    assert_eq!(router.ids_of(b), ["hang-b"]);
}
