//! The router side of the cluster: `RouterServer` serves `RouterService.Connect` for the
//! edges, and `ClusterLink` is the router's `EdgeLink` over those streams.
//!
//! Owns: accepting edge streams (Hello, version check, draining refusal), dispatching
//! each stream's frames to the `Router` (the `LocalRouter`) in sharded workers, the
//! outbound frames per edge, `Drain`, `ResyncRequest` and the barrier `Pong`.
//! Must not touch: XMPP rules and the session registry (the `Router` and the coordinator's
//! `ClusterEvents` do that), client sockets.
//!
//! Ordering (RFC 6120 §10.1): the frames of one stream are split over N workers by the
//! hash of the sender's bare JID, so one user's frames are handled one after another in
//! stream order while different users run in parallel. The worker queues are bounded: a
//! busy router stops reading the stream, and HTTP/2 flow control pushes back to the edge.
//! A `Ping` goes through every worker, so its `Pong` means that everything the edge sent
//! before it has been handled.

use crate::ClusterError;
use crate::ring::fnv1a;
use async_trait::async_trait;
use rookery_core::{EdgeLink, Location, Outbound, Router, SessionEntry};
use rookery_proto::pb::router_service_server::{RouterService, RouterServiceServer};
use rookery_proto::{EdgeMsg, Hello, NsCache, ProtoError, RouterMsg, pb};
use std::collections::HashMap;
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
    /// Workers per edge stream.
    pub shards: usize,
    /// Frames queued per worker.
    pub shard_queue: usize,
    /// How long an edge has to send Hello.
    pub hello_timeout: Duration,
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive towards the edges.
    pub keepalive: Duration,
    /// HTTP/2 flow-control window per edge stream (bytes); `None` keeps hyper's default.
    /// With the worker queues it bounds what a router buffers per edge before the edge's
    /// own queue fills and its sessions wait.
    pub stream_window: Option<u32>,
}

impl Default for RouterServerConfig {
    fn default() -> Self {
        RouterServerConfig {
            shards: 8,
            shard_queue: 256,
            hello_timeout: Duration::from_secs(10),
            max_message_bytes: 16 * 1024 * 1024,
            keepalive: Duration::from_secs(10),
            stream_window: None,
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
            }),
        }
    }

    pub fn link(&self) -> Arc<ClusterLink> {
        self.inner.link.clone()
    }

    pub fn connected_edges(&self) -> Vec<u32> {
        self.inner.link.connected_edges()
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
    Msg(EdgeMsg),
    Barrier(oneshot::Sender<()>),
}

/// Reads one edge stream and hands its frames to the workers.
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
        workers.spawn(worker(inner.clone(), edge, rx, out.clone()));
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
        let shard = match &msg {
            EdgeMsg::Route { env, .. } => Some(fnv1a(env.from.bare_str().as_bytes())),
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
        let delivered = match shard {
            Some(h) => {
                let i = (h % n as u64) as usize;
                tokio::select! {
                    r = shards[i].send(Work::Msg(msg)) => r.is_ok(),
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

/// Passes a barrier through every worker; `Pong { seq }` goes out once all have reached
/// it. Waiting happens in a task so the stream keeps being read meanwhile.
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

async fn worker(inner: Arc<Inner>, edge: u32, mut rx: mpsc::Receiver<Work>, out: mpsc::Sender<pb::RouterFrame>) {
    while let Some(work) = rx.recv().await {
        let msg = match work {
            Work::Barrier(ack) => {
                let _ = ack.send(());
                continue;
            }
            Work::Msg(m) => m,
        };
        match msg {
            EdgeMsg::Route { conn, env } => inner.router.route(Location { edge, conn }, env).await,
            EdgeMsg::Bind { req, jid, conn } => {
                let result = inner.router.bind(&jid, Location { edge, conn }).await;
                let _ = out.send(RouterMsg::BindResult { req, result }.into()).await;
            }
            EdgeMsg::Unbind { jid, conn } => inner.router.unbind(&jid, Location { edge, conn }).await,
            EdgeMsg::PreauthIq { req, iq } => {
                let result = inner.router.preauth_iq(iq).await;
                let _ = out.send(RouterMsg::PreauthResult { req, result }.into()).await;
            }
            EdgeMsg::Undelivered { to, raw } => inner.router.undelivered(&to, raw).await,
            EdgeMsg::SessionState(s) => inner.events.session_state(s.into_entry(edge)).await,
            EdgeMsg::Ping { .. } | EdgeMsg::Hello(_) => {}
        }
    }
}
