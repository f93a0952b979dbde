//! The router side of the cluster: `RouterServer` serves `RouterService.Connect` for the
//! edges, and `ClusterLink` is the router's `EdgeLink` over those streams.
//!
//! Owns: accepting edge streams (Hello, version check, draining refusal), dispatching
//! each stream's frames to the `Router` (the `LocalRouter`) in per-key lanes, isolating
//! router calls from each other (a slow call waits alone, a panicking call is caught), the
//! outbound frames per edge, `Drain`, `ResyncRequest` and the barrier `Pong`.
//! Must not touch: XMPP rules and the session registry (the `Router` and the coordinator's
//! `ClusterEvents` do that), client sockets.
//!
//! Ordering and isolation (RFC 6120 §10.1). Every frame has a key: the hash of the
//! sender's bare JID (`Route`: the stamped `from`; `Bind`, `Unbind`, `SessionState`: the
//! JID; `Undelivered`: the recipient; `PreauthIq`: its request number). The frames of one
//! key are handled one after another in stream order; frames of different keys never wait
//! for each other.
//!
//! - The stream's reader hands each frame to one of N shard tasks (`shards`, by key), as a
//!   way to spread the CPU work over threads; a shard is not a unit of ordering any more.
//! - Inside a shard, each key with work is a *lane*: the call running for that key plus a
//!   queue of that key's later frames. A frame whose key has no lane starts its call at
//!   once; otherwise it is queued behind the key's running call. When a call finishes, the
//!   key's next frame starts, or the lane ends (its map entry is removed). A shard runs
//!   the calls of all its lanes concurrently (a `FuturesUnordered`), so a MAM query or a
//!   store call that takes seconds holds up only the later frames of its own key. Lanes
//!   are not tasks: creating one costs a map insert, and a call that completes without
//!   waiting (most routed messages) is polled inline, never parked, as the old worker did.
//! - Each router call runs under `catch_unwind`. A panic is logged
//!   (`router_call_panicked`), counted ([`RouterServer::router_call_panics`]), answered
//!   where the edge waits for an answer (`Bind`: `BindError::Internal`; `PreauthIq`:
//!   `internal-server-error`), and the lane goes on with its next frame.
//! - Bounds: a shard takes at most `shard_inflight` frames (running or queued in lanes);
//!   this caps both the number of live lanes and the work queued in them. At the cap it
//!   stops taking frames, its channel (`shard_queue`) fills, the reader stops reading the
//!   stream and HTTP/2 flow control pushes back to the edge, as before. There is no
//!   separate per-lane cap: with one ordered stream per edge, a full lane could push back
//!   only by stopping the whole stream, so a per-lane cap would make one stuck user stall
//!   everybody sooner. A key whose call never returns therefore stalls its edge's stream
//!   only when the frames piling up behind it (with whatever else its shard is handling)
//!   reach `shard_inflight`.
//! - Barrier: a `Ping` goes to every shard. A shard answers it once every frame it took
//!   before the `Ping` has been handled (it counts down the frames in flight at that
//!   moment: a snapshot of the lanes that exist then), while frames taken after it go on
//!   being handled. The `Pong` goes out when every shard answered, so it still means that
//!   everything the edge sent before the `Ping` has been handled.

use crate::ClusterError;
use crate::ring::fnv1a;
use async_trait::async_trait;
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use rookery_core::{BindError, EdgeLink, Location, Outbound, Router, SessionEntry};
use rookery_proto::pb::router_service_server::{RouterService, RouterServiceServer};
use rookery_proto::{EdgeMsg, Hello, NsCache, ProtoError, RouterMsg, pb};
use rookery_stanza::{Condition, StanzaError};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tonic::{Request, Response, Status, Streaming};

/// What the coordinator does with cluster events that concern the session registry.
#[async_trait]
pub trait ClusterEvents: Send + Sync + 'static {
    /// A live session re-sent by its edge after `ClusterLink::request_resync` (the
    /// registry was reset): re-insert it. Called in order with the user's other frames.
    async fn session_state(&self, entry: SessionEntry);
    /// An edge opened a stream. `previous_epoch` is the epoch this router last saw for
    /// the same edge id, if different: that edge process restarted and its old
    /// connections are gone.
    fn edge_connected(&self, _edge: u32, _epoch: u64, _previous_epoch: Option<u64>) {}
    /// An edge's stream ended.
    fn edge_disconnected(&self, _edge: u32) {}
}

/// Settings of the router side.
#[derive(Debug, Clone)]
pub struct RouterServerConfig {
    /// Shard tasks per edge stream (they spread the CPU work; ordering is per key).
    pub shards: usize,
    /// Frames waiting in the channel in front of each shard.
    pub shard_queue: usize,
    /// Frames a shard holds at most, running or queued in its lanes: bounds the live lanes
    /// and their queues. At the cap the shard stops taking frames (backpressure).
    pub shard_inflight: usize,
    /// How long an edge has to send Hello.
    pub hello_timeout: Duration,
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive towards the edges.
    pub keepalive: Duration,
    /// HTTP/2 flow-control window per edge stream (bytes); `None` keeps hyper's default.
    /// With the worker queues it bounds what a router buffers per edge before the edge's
    /// own queue fills and its sessions wait.
    pub stream_window: Option<u32>,
    /// Where components want their stanzas (the router's own table): a stanza for a
    /// component placed by `to` is ordered by its bare `to` (one room, one lane), the
    /// others by the sender's bare JID.
    pub placements: rookery_core::PlacementTable,
}

impl Default for RouterServerConfig {
    fn default() -> Self {
        RouterServerConfig {
            shards: 8,
            shard_queue: 256,
            shard_inflight: 512,
            hello_timeout: Duration::from_secs(10),
            max_message_bytes: 16 * 1024 * 1024,
            keepalive: Duration::from_secs(10),
            stream_window: None,
            placements: rookery_core::PlacementTable::default(),
        }
    }
}

#[derive(Clone)]
struct EdgeEntry {
    stream: u64,
    epoch: u64,
    tx: mpsc::Sender<pb::RouterFrame>,
}

/// The router's `EdgeLink`: one bounded outbound queue per connected edge.
pub struct ClusterLink {
    edges: RwLock<HashMap<u32, EdgeEntry>>,
    /// Last epoch seen per edge id, kept after the stream ends.
    epochs: RwLock<HashMap<u32, u64>>,
    queue: usize,
    next_stream: AtomicU64,
}

impl ClusterLink {
    /// `queue`: frames buffered per edge before `deliver` reports the edge as congested.
    pub fn new(queue: usize) -> Arc<ClusterLink> {
        Arc::new(ClusterLink {
            edges: RwLock::new(HashMap::new()),
            epochs: RwLock::new(HashMap::new()),
            queue: queue.max(1),
            next_stream: AtomicU64::new(1),
        })
    }

    /// Ids of the edges with a stream to this router.
    pub fn connected_edges(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.edges.read().unwrap_or_else(PoisonError::into_inner).keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Asks every connected edge to re-send its live sessions (`SessionState`), e.g. after
    /// the session registry lost its data. Returns how many edges were asked.
    pub async fn request_resync(&self) -> usize {
        let mut asked = 0;
        for (edge, tx) in self.senders() {
            match tx.send(RouterMsg::ResyncRequest.into()).await {
                Ok(()) => asked += 1,
                Err(_) => tracing::debug!(event = "resync_edge_gone", edge),
            }
        }
        tracing::info!(event = "resync_requested", edges = asked);
        asked
    }

    fn senders(&self) -> Vec<(u32, mpsc::Sender<pb::RouterFrame>)> {
        self.edges.read().unwrap_or_else(PoisonError::into_inner).iter().map(|(id, e)| (*id, e.tx.clone())).collect()
    }

    fn sender(&self, edge: u32) -> Option<mpsc::Sender<pb::RouterFrame>> {
        self.edges.read().unwrap_or_else(PoisonError::into_inner).get(&edge).map(|e| e.tx.clone())
    }

    /// A new stream from `hello.edge_id` replaces an older one from the same edge.
    fn register(
        &self,
        hello: &Hello,
    ) -> (u64, mpsc::Sender<pb::RouterFrame>, mpsc::Receiver<pb::RouterFrame>, Option<u64>) {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue);
        let entry = EdgeEntry { stream, epoch: hello.epoch, tx: tx.clone() };
        self.edges.write().unwrap_or_else(PoisonError::into_inner).insert(hello.edge_id, entry);
        let previous = self.epochs.write().unwrap_or_else(PoisonError::into_inner).insert(hello.edge_id, hello.epoch);
        (stream, tx, rx, previous.filter(|p| *p != hello.epoch))
    }

    fn unregister(&self, edge: u32, stream: u64) -> bool {
        let mut edges = self.edges.write().unwrap_or_else(PoisonError::into_inner);
        if edges.get(&edge).is_some_and(|e| e.stream == stream) {
            edges.remove(&edge);
            return true;
        }
        false
    }

    /// The epoch of the edge's current stream.
    pub fn epoch(&self, edge: u32) -> Option<u64> {
        self.edges.read().unwrap_or_else(PoisonError::into_inner).get(&edge).map(|e| e.epoch)
    }
}

impl EdgeLink for ClusterLink {
    fn deliver(&self, loc: Location, out: Outbound) -> bool {
        let Some(tx) = self.sender(loc.edge) else { return false };
        match tx.try_send(RouterMsg::from_outbound(loc.conn, out).into()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(event = "edge_queue_full", edge = loc.edge, conn = loc.conn);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The edge's queue is shared by all its connections: this is what the stream to
    /// that edge takes right now, an upper bound for one connection.
    fn free_capacity(&self, loc: Location) -> usize {
        self.sender(loc.edge).map(|tx| tx.capacity()).unwrap_or(0)
    }

    /// Sent on the edge's ordered queue, so the edge has the slot before it writes the
    /// reply to the request that changed it.
    fn session_ext(&self, loc: Location, key: &str, value: Option<bytes::Bytes>) {
        let Some(tx) = self.sender(loc.edge) else { return };
        let frame = RouterMsg::SetSessionExt { conn: loc.conn, key: key.to_owned(), value };
        if tx.try_send(frame.into()).is_err() {
            // Only a re-registration after a registry reset would miss it.
            tracing::warn!(event = "session_ext_not_sent", edge = loc.edge, conn = loc.conn, key);
        }
    }
}

struct Inner {
    router: Arc<dyn Router>,
    link: Arc<ClusterLink>,
    events: Arc<dyn ClusterEvents>,
    cfg: RouterServerConfig,
    draining: AtomicBool,
    /// Edge streams whose frames are still being handled.
    active: watch::Sender<usize>,
    /// Set when the server stops without draining: every stream ends at once.
    kill: watch::Sender<bool>,
    /// Router calls that panicked (caught; the lane went on).
    panics: AtomicU64,
}

/// The gRPC side of a router process.
#[derive(Clone)]
pub struct RouterServer {
    inner: Arc<Inner>,
}

impl RouterServer {
    /// `router` handles the edges' calls; `link` must be the `EdgeLink` that router
    /// delivers through.
    pub fn new(
        router: Arc<dyn Router>,
        link: Arc<ClusterLink>,
        events: Arc<dyn ClusterEvents>,
        cfg: RouterServerConfig,
    ) -> RouterServer {
        RouterServer {
            inner: Arc::new(Inner {
                router,
                link,
                events,
                cfg,
                draining: AtomicBool::new(false),
                active: watch::Sender::new(0),
                kill: watch::Sender::new(false),
                panics: AtomicU64::new(0),
            }),
        }
    }

    pub fn link(&self) -> Arc<ClusterLink> {
        self.inner.link.clone()
    }

    pub fn connected_edges(&self) -> Vec<u32> {
        self.inner.link.connected_edges()
    }

    /// Router calls that panicked since start; each was caught and its lane went on.
    /// Exposed in the router's `/admin/stats` as `router_call_panics`.
    pub fn router_call_panics(&self) -> u64 {
        self.inner.panics.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// The tonic service, to mount next to other services on one server.
    pub fn service(&self) -> RouterServiceServer<RouterServer> {
        RouterServiceServer::new(self.clone())
            .max_decoding_message_size(self.inner.cfg.max_message_bytes)
            .max_encoding_message_size(self.inner.cfg.max_message_bytes)
    }

    /// Serves edges on `listener` until `shutdown` turns true. Call `drain` first for a
    /// graceful stop; streams still open at shutdown end with `UNAVAILABLE`.
    pub async fn serve(&self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) -> Result<(), ClusterError> {
        let addr = listener.local_addr().ok();
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let kill = self.inner.kill.clone();
        let signal = async move {
            let _ = crate::until_true(&mut shutdown).await;
            kill.send_replace(true);
        };
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(self.inner.cfg.keepalive))
            .initial_stream_window_size(self.inner.cfg.stream_window)
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, signal)
            .await
            .map_err(|e| ClusterError::Serve { addr: addr.map(|a| a.to_string()).unwrap_or_default(), source: e })
    }

    /// Graceful stop: refuses new streams, sends `Drain` to every edge and waits (at most
    /// `wait`) until each has moved its users away and closed its stream, i.e. all the
    /// work the edges sent here is done. Returns whether that happened in time.
    pub async fn drain(&self, wait: Duration) -> bool {
        self.inner.draining.store(true, Ordering::Relaxed);
        let edges = self.inner.link.senders();
        tracing::info!(event = "router_draining", edges = edges.len());
        let deadline = tokio::time::Instant::now() + wait;
        for (edge, tx) in edges {
            if tokio::time::timeout_at(deadline, tx.send(RouterMsg::Drain.into())).await.is_err() {
                tracing::warn!(event = "drain_send_timeout", edge);
            }
        }
        let mut active = self.inner.active.subscribe();
        let done = tokio::time::timeout_at(deadline, active.wait_for(|n| *n == 0)).await.is_ok();
        if !done {
            tracing::warn!(event = "drain_incomplete", streams = *active.borrow());
        }
        done
    }
}

type FrameStream = Pin<Box<dyn futures::Stream<Item = Result<pb::RouterFrame, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RouterService for RouterServer {
    type ConnectStream = FrameStream;

    async fn connect(&self, request: Request<Streaming<pb::EdgeFrame>>) -> Result<Response<FrameStream>, Status> {
        let inner = &self.inner;
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(inner.cfg.hello_timeout, inbound.message()).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return Err(Status::invalid_argument("stream ended before Hello")),
            Ok(Err(s)) => return Err(s),
            Err(_) => return Err(Status::deadline_exceeded("no Hello frame in time")),
        };
        let hello = match EdgeMsg::try_from(first) {
            Ok(EdgeMsg::Hello(h)) => h,
            _ => return Err(Status::invalid_argument("the first frame of a stream must be Hello")),
        };
        if !rookery_proto::accepts_version(hello.proto_version) {
            tracing::warn!(event = "edge_version_refused", edge = hello.edge_id, version = hello.proto_version);
            return Err(Status::failed_precondition(format!(
                "edge {} speaks cluster protocol version {}, this router accepts versions {} to {}; \
                 upgrade the routers before the edges (docs/cluster.md)",
                hello.edge_id,
                hello.proto_version,
                rookery_proto::MIN_PROTO_VERSION,
                rookery_proto::PROTO_VERSION
            )));
        }
        if inner.draining.load(Ordering::Relaxed) {
            return Err(Status::unavailable("router is draining"));
        }
        let (stream, tx, rx, previous) = inner.link.register(&hello);
        inner.active.send_modify(|n| *n += 1);
        if let Some(p) = previous {
            tracing::info!(event = "edge_restarted", edge = hello.edge_id, epoch = hello.epoch, previous_epoch = p);
        }
        tracing::info!(event = "edge_connected", edge = hello.edge_id, version = hello.proto_version);
        inner.events.edge_connected(hello.edge_id, hello.epoch, previous);
        tokio::spawn(run_stream(self.inner.clone(), hello, stream, inbound, tx));

        let kill = inner.kill.subscribe();
        let out = futures::stream::unfold((rx, kill, false), |(mut rx, mut kill, done)| async move {
            if done {
                return None;
            }
            let next = tokio::select! {
                biased;
                f = rx.recv() => Some(f),
                _ = crate::until_true(&mut kill) => None,
            };
            match next {
                Some(f) => f.map(|f| (Ok(f), (rx, kill, false))),
                None => Some((Err(Status::unavailable("router shutting down")), (rx, kill, true))),
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

// Almost every item is a `Msg`; boxing it would cost an allocation per stanza to save
// space in the rare `Barrier`.
#[allow(clippy::large_enum_variant)]
enum Work {
    Msg { key: u64, msg: EdgeMsg },
    Barrier(oneshot::Sender<()>),
}

/// Reads one edge stream and hands its frames to the shards.
async fn run_stream(
    inner: Arc<Inner>,
    hello: Hello,
    stream: u64,
    mut inbound: Streaming<pb::EdgeFrame>,
    out: mpsc::Sender<pb::RouterFrame>,
) {
    let edge = hello.edge_id;
    let n = inner.cfg.shards.max(1);
    let mut workers = JoinSet::new();
    let mut shards = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::channel(inner.cfg.shard_queue.max(1));
        shards.push(tx);
        workers.spawn(shard(inner.clone(), edge, rx, out.clone()));
    }
    let mut kill = inner.kill.subscribe();
    let mut ns = NsCache::default();
    loop {
        let frame = tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(event = "edge_stream_error", edge, error = %status.message());
                    break;
                }
            },
            _ = crate::until_true(&mut kill) => break,
        };
        let msg = match EdgeMsg::decode(frame, &mut ns) {
            Ok(m) => m,
            Err(ProtoError::UnknownFrame) => {
                tracing::debug!(event = "unknown_edge_frame", edge);
                continue;
            }
            Err(e) => {
                tracing::warn!(event = "bad_edge_frame", edge, error = %e);
                continue;
            }
        };
        let key = match &msg {
            EdgeMsg::Route { env, .. } => Some(fnv1a(inner.cfg.placements.key(env).as_bytes())),
            EdgeMsg::Bind { jid, .. } | EdgeMsg::Unbind { jid, .. } => Some(fnv1a(jid.bare_str().as_bytes())),
            EdgeMsg::Undelivered { to, .. } => Some(fnv1a(to.bare_str().as_bytes())),
            EdgeMsg::SessionState(s) => Some(fnv1a(s.jid.bare_str().as_bytes())),
            EdgeMsg::PreauthIq { req, .. } => Some(*req),
            EdgeMsg::Ping { .. } => None,
            EdgeMsg::Hello(_) => {
                tracing::warn!(event = "bad_edge_frame", edge, error = "a second Hello");
                continue;
            }
        };
        let delivered = match key {
            Some(key) => {
                let i = (key % n as u64) as usize;
                tokio::select! {
                    r = shards[i].send(Work::Msg { key, msg }) => r.is_ok(),
                    _ = crate::until_true(&mut kill) => false,
                }
            }
            None => {
                let EdgeMsg::Ping { seq } = msg else { continue };
                barrier(&shards, seq, &out, &mut kill).await
            }
        };
        if !delivered {
            break;
        }
    }
    drop(shards);
    if *inner.kill.borrow() {
        workers.abort_all();
    }
    while workers.join_next().await.is_some() {}
    if inner.link.unregister(edge, stream) {
        inner.events.edge_disconnected(edge);
    }
    tracing::info!(event = "edge_disconnected", edge);
    inner.active.send_modify(|n| *n = n.saturating_sub(1));
}

/// Passes a barrier to every shard; `Pong { seq }` goes out once each has handled what it
/// took before it. Waiting happens in a task so the stream keeps being read meanwhile.
async fn barrier(
    shards: &[mpsc::Sender<Work>],
    seq: u64,
    out: &mpsc::Sender<pb::RouterFrame>,
    kill: &mut watch::Receiver<bool>,
) -> bool {
    let mut acks = Vec::with_capacity(shards.len());
    for s in shards {
        let (tx, rx) = oneshot::channel();
        let sent = tokio::select! {
            r = s.send(Work::Barrier(tx)) => r.is_ok(),
            _ = crate::until_true(kill) => false,
        };
        if !sent {
            return false;
        }
        acks.push(rx);
    }
    let out = out.clone();
    tokio::spawn(async move {
        if futures::future::join_all(acks).await.iter().all(Result::is_ok) {
            let _ = out.send(RouterMsg::Pong { seq }.into()).await;
        }
    });
    true
}

/// What every call of one stream's shards needs; one `Arc` clone per call.
struct Ctx {
    inner: Arc<Inner>,
    edge: u32,
    out: mpsc::Sender<pb::RouterFrame>,
}

/// One router call with its answer to the edge; resolves to the key and frame number.
type Call = Pin<Box<dyn Future<Output = (u64, u64)> + Send>>;

/// A barrier in a shard: acknowledged once the `remaining` frames taken before it
/// (numbered below `before`) have been handled.
struct PendingBarrier {
    before: u64,
    remaining: usize,
    ack: oneshot::Sender<()>,
}

/// One shard of an edge stream: per-key lanes whose calls run concurrently.
struct Shard {
    cx: Arc<Ctx>,
    /// Keys with a running call, each with its later frames (and their numbers) in order.
    lanes: HashMap<u64, VecDeque<(u64, EdgeMsg)>>,
    running: FuturesUnordered<Call>,
    /// Number of the next frame taken.
    taken: u64,
    /// Frames taken and not handled yet (running or queued in a lane).
    inflight: usize,
    barriers: Vec<PendingBarrier>,
}

async fn shard(inner: Arc<Inner>, edge: u32, mut rx: mpsc::Receiver<Work>, out: mpsc::Sender<pb::RouterFrame>) {
    let cap = inner.cfg.shard_inflight.max(1);
    let mut s = Shard {
        cx: Arc::new(Ctx { inner, edge, out }),
        lanes: HashMap::new(),
        running: FuturesUnordered::new(),
        taken: 0,
        inflight: 0,
        barriers: Vec::new(),
    };
    let mut open = true;
    loop {
        if !open && s.running.is_empty() {
            break;
        }
        let take = open && s.inflight < cap;
        tokio::select! {
            // Finishing calls first keeps what a shard holds small.
            biased;
            Some((key, n)) = s.running.next(), if !s.running.is_empty() => s.finished(key, n).await,
            w = rx.recv(), if take => match w {
                Some(Work::Msg { key, msg }) => s.take(key, msg).await,
                Some(Work::Barrier(ack)) => s.barrier(ack),
                None => open = false,
            },
            else => break,
        }
    }
}

impl Shard {
    async fn take(&mut self, key: u64, msg: EdgeMsg) {
        let n = self.taken;
        self.taken += 1;
        self.inflight += 1;
        if let Some(queue) = self.lanes.get_mut(&key) {
            queue.push_back((n, msg));
            return;
        }
        self.lanes.insert(key, VecDeque::new());
        self.start(key, n, msg).await;
    }

    /// Frame `n` of `key` was handled: its lane starts the next one or ends.
    async fn finished(&mut self, key: u64, n: u64) {
        self.done(n);
        if let Some((n, msg)) = self.next_of(key) {
            self.start(key, n, msg).await;
        }
    }

    /// Starts a lane's call. A call that completes on its first poll (no store access,
    /// most routed messages) is finished here without being parked in `running`; the
    /// lane's next frames then follow in the same way.
    async fn start(&mut self, key: u64, mut n: u64, mut msg: EdgeMsg) {
        loop {
            let mut call = call(self.cx.clone(), key, n, msg);
            if futures::poll!(call.as_mut()).is_pending() {
                self.running.push(call);
                return;
            }
            self.done(n);
            match self.next_of(key) {
                Some(next) => (n, msg) = next,
                None => return,
            }
        }
    }

    /// The next waiting frame of `key`, or `None` after ending its lane.
    fn next_of(&mut self, key: u64) -> Option<(u64, EdgeMsg)> {
        let next = self.lanes.get_mut(&key).and_then(VecDeque::pop_front);
        if next.is_none() {
            self.lanes.remove(&key);
        }
        next
    }

    fn done(&mut self, n: u64) {
        self.inflight = self.inflight.saturating_sub(1);
        let mut i = 0;
        while i < self.barriers.len() {
            let b = &mut self.barriers[i];
            if n < b.before {
                b.remaining = b.remaining.saturating_sub(1);
            }
            if b.remaining == 0 {
                let _ = self.barriers.swap_remove(i).ack.send(());
            } else {
                i += 1;
            }
        }
    }

    /// Everything in flight now was taken before the barrier: it passes when that is done.
    fn barrier(&mut self, ack: oneshot::Sender<()>) {
        if self.inflight == 0 {
            let _ = ack.send(());
        } else {
            self.barriers.push(PendingBarrier { before: self.taken, remaining: self.inflight, ack });
        }
    }
}

fn call(cx: Arc<Ctx>, key: u64, n: u64, msg: EdgeMsg) -> Call {
    Box::pin(async move {
        cx.handle(msg).await;
        (key, n)
    })
}

impl Ctx {
    async fn handle(&self, msg: EdgeMsg) {
        let edge = self.edge;
        let router = &self.inner.router;
        match msg {
            EdgeMsg::Route { conn, env } => {
                self.guard("route", None, Some(conn), router.route(Location { edge, conn }, env)).await;
            }
            EdgeMsg::Bind { req, jid, conn } => {
                let result = self
                    .guard("bind", Some(&jid), Some(conn), router.bind(&jid, Location { edge, conn }))
                    .await
                    .unwrap_or(Err(BindError::Internal));
                let _ = self.out.send(RouterMsg::BindResult { req, result }.into()).await;
            }
            EdgeMsg::Unbind { jid, conn } => {
                self.guard("unbind", Some(&jid), Some(conn), router.unbind(&jid, Location { edge, conn })).await;
            }
            EdgeMsg::PreauthIq { req, iq } => {
                let result = self
                    .guard("preauth_iq", None, None, router.preauth_iq(iq))
                    .await
                    .unwrap_or_else(|| Err(StanzaError::new(Condition::InternalServerError)));
                let _ = self.out.send(RouterMsg::PreauthResult { req, result }.into()).await;
            }
            EdgeMsg::Undelivered { to, raw } => {
                self.guard("undelivered", Some(&to), None, router.undelivered(&to, raw)).await;
            }
            EdgeMsg::SessionState(s) => {
                let jid = s.jid.clone();
                let conn = s.conn;
                self.guard(
                    "session_state",
                    Some(&jid),
                    Some(conn),
                    self.inner.events.session_state(s.into_entry(edge)),
                )
                .await;
            }
            EdgeMsg::Ping { .. } | EdgeMsg::Hello(_) => {}
        }
    }

    /// Runs one router call; a panic is logged, counted and turned into `None`.
    async fn guard<T>(
        &self,
        call: &'static str,
        user: Option<&(dyn std::fmt::Display + Sync)>,
        conn: Option<u64>,
        f: impl Future<Output = T>,
    ) -> Option<T> {
        match AssertUnwindSafe(f).catch_unwind().await {
            Ok(v) => Some(v),
            Err(payload) => {
                self.inner.panics.fetch_add(1, Ordering::Relaxed);
                let text = rookery_core::hooks::panic_message(payload.as_ref());
                tracing::error!(
                    event = "router_call_panicked",
                    edge = self.edge,
                    call,
                    user = user.map(tracing::field::display),
                    conn,
                    panic = text
                );
                None
            }
        }
    }
}
