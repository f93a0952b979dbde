//! The edge side of the cluster: `RemoteRouter` implements `rookery_core::Router` over one
//! gRPC stream per router (docs/cluster.md).
//!
//! Owns: the streams to the routers (connect, Hello, keepalive, reconnect with backoff),
//! the hash ring of usable routers, the choice of router per user, request/reply
//! matching for bind and pre-auth IQs, delivery of `Deliver`/`Close` frames into the
//! edge's own `EdgeLink` (its `LocalHub`), the record of live sessions (for `Undelivered`
//! and resync), and moving queued frames when the ring changes.
//! Must not touch: sockets of clients, XMPP rules, the session registry.
//!
//! Ordering (RFC 6120 §10.1): all calls for one user go to the ring owner of its bare JID,
//! through one bounded queue per router drained in order into that router's stream. The
//! ring only changes under the write half of `Shared::routing`, and every change keeps the
//! per-user order:
//! - a router that leaves while its stream works (Drain, removed from the membership,
//!   shutdown) is sent a barrier `Ping` and answers `Pong` only when it has handled every
//!   earlier frame; routing waits for that before the users move;
//! - a router that joins gets users only after the same barrier on every other router;
//! - a broken stream's unsent frames are taken out of its queue and sent to the new
//!   owners ahead of anything newer. Frames already handed to the broken connection are
//!   lost with it (the router may or may not have handled them).

use crate::ClusterError;
use crate::membership::{Membership, RouterEndpoint};
use crate::ring::{Ring, RouterId, fnv1a};
use crate::session::SessionInfo;
use async_trait::async_trait;
use bytes::Bytes;
use rookery_core::{BindError, ConnId, EdgeLink, IqRequest, IqResult, Location, Outbound, Router};
use rookery_jid::FullJid;
use rookery_proto::pb::router_service_client::RouterServiceClient;
use rookery_proto::{EdgeMsg, Hello, ProtoError, RouterMsg, pb};
use rookery_stanza::{Condition, Envelope, Kind, StanzaError, StreamCondition};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

/// Settings of the edge side. The defaults suit a cluster on one network.
#[derive(Debug, Clone)]
pub struct RemoteRouterConfig {
    /// This edge's id: the `edge` of every `Location` it reports.
    pub edge_id: u32,
    /// Differs on every start of the edge process (default: the start time in ns).
    pub epoch: u64,
    pub connect_timeout: Duration,
    /// How long `bind` and `preauth_iq` wait for their answer.
    pub request_timeout: Duration,
    /// How long `route` waits for a router when none is reachable before the client is
    /// closed with `<system-shutdown/>`.
    pub route_wait: Duration,
    /// Frames queued per router stream (backpressure on the client sessions).
    pub queue: usize,
    /// Frames kept while no router is reachable; past this they are dropped and logged.
    pub max_parked: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A keepalive `Ping` goes out this often; a stream silent for `ping_timeout` is
    /// considered broken.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// How long a ring change waits for a router's barrier `Pong`.
    pub barrier_timeout: Duration,
    /// The largest frame accepted or sent.
    pub max_message_bytes: usize,
    /// The version announced in Hello; only tests set anything but `PROTO_VERSION`.
    pub proto_version: u32,
    /// How long the JID of an ended session is remembered, so late deliveries to it come
    /// back to a router as `Undelivered`.
    pub closed_retention: Duration,
    /// The components' placements: a stanza for a component placed by `to` goes to the
    /// ring owner of its bare `to` (the router that owns the room), others to the owner of
    /// the sender's bare JID.
    pub placements: rookery_core::PlacementTable,
}

impl Default for RemoteRouterConfig {
    fn default() -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(1);
        RemoteRouterConfig {
            edge_id: 0,
            epoch,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            route_wait: Duration::from_secs(5),
            queue: 4096,
            max_parked: 65_536,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(30),
            barrier_timeout: Duration::from_secs(5),
            max_message_bytes: 16 * 1024 * 1024,
            proto_version: rookery_proto::PROTO_VERSION,
            closed_retention: Duration::from_secs(60),
            placements: rookery_core::PlacementTable::default(),
        }
    }
}

/// What an operator (or a readiness probe) sees of one router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterStatus {
    pub id: RouterId,
    pub uri: String,
    /// In the ring: the stream is up and the router is not draining.
    pub up: bool,
    pub draining: bool,
    /// Why the last connection attempt or stream failed.
    pub last_error: Option<String>,
}

/// A frame waiting for (or re-routed to) a router, with the hash of its routing key.
struct Queued {
    key: u64,
    frame: pb::EdgeFrame,
}

enum Pending {
    Bind(oneshot::Sender<Result<(), BindError>>),
    Preauth(oneshot::Sender<IqResult>),
    Barrier(oneshot::Sender<()>),
}

/// One live stream to a router.
struct LiveConn {
    id: RouterId,
    queue: mpsc::Sender<Queued>,
    stop_forwarder: watch::Sender<bool>,
    forwarder: tokio::sync::Mutex<Option<JoinHandle<mpsc::Receiver<Queued>>>>,
    /// Barrier sequence numbers in flight on this stream (failed at once if it breaks).
    barriers: Mutex<Vec<u64>>,
    /// Held for the whole of `leave`; true once the router is out of the ring for good.
    left: tokio::sync::Mutex<bool>,
}

struct Routing {
    ring: Ring,
    conns: HashMap<RouterId, Arc<LiveConn>>,
    /// Frames for which no router was reachable, oldest first. Sent before anything
    /// newer when a router joins.
    parked: Mutex<VecDeque<Queued>>,
}

/// A session's record plus the lock that makes "observe a stanza, then queue it" and
/// "snapshot for resync, then queue it" happen one at a time.
struct Slot {
    info: Mutex<SessionInfo>,
    order: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Sessions {
    live: HashMap<ConnId, Arc<Slot>>,
    closed: HashMap<ConnId, (FullJid, Instant)>,
}

struct Shared {
    cfg: RemoteRouterConfig,
    hub: Arc<dyn EdgeLink>,
    routing: tokio::sync::RwLock<Routing>,
    /// Routers in the ring; waiters watch it.
    up: watch::Sender<usize>,
    sessions: RwLock<Sessions>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_req: AtomicU64,
    status: Mutex<HashMap<RouterId, RouterStatus>>,
    undelivered: mpsc::UnboundedSender<(FullJid, Bytes)>,
}

enum Sent {
    Queued,
    Parked,
    Dropped,
}

impl Shared {
    fn next_req(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_status(&self, id: &RouterId, f: impl FnOnce(&mut RouterStatus)) {
        if let Some(s) = self.status.lock().unwrap_or_else(PoisonError::into_inner).get_mut(id) {
            f(s);
        }
    }

    fn slot(&self, conn: ConnId) -> Option<Arc<Slot>> {
        self.sessions.read().unwrap_or_else(PoisonError::into_inner).live.get(&conn).cloned()
    }

    fn jid_of(&self, conn: ConnId) -> Option<FullJid> {
        let s = self.sessions.read().unwrap_or_else(PoisonError::into_inner);
        match s.live.get(&conn) {
            Some(slot) => Some(slot.info.lock().unwrap_or_else(PoisonError::into_inner).jid.clone()),
            None => s.closed.get(&conn).map(|(j, _)| j.clone()),
        }
    }

    fn park(&self, routing: &Routing, item: Queued) -> Sent {
        let mut parked = routing.parked.lock().unwrap_or_else(PoisonError::into_inner);
        if parked.len() >= self.cfg.max_parked {
            tracing::error!(event = "parked_overflow", parked = parked.len());
            return Sent::Dropped;
        }
        parked.push_back(item);
        Sent::Parked
    }

    /// Queues a frame for the owner of `key`, or parks it when no router is usable.
    async fn send(&self, key: u64, frame: pb::EdgeFrame) -> Sent {
        let routing = self.routing.read().await;
        let item = Queued { key, frame };
        let Some(conn) = routing.ring.pick_hash(key).and_then(|id| routing.conns.get(&id)) else {
            return self.park(&routing, item);
        };
        match conn.queue.send(item).await {
            Ok(()) => Sent::Queued,
            // The stream broke and its queue was closed; the frame waits for the
            // re-routing that follows (it holds the write lock after this read lock).
            Err(mpsc::error::SendError(item)) => self.park(&routing, item),
        }
    }

    /// With the write lock held: frames to their current owners, in the given order.
    async fn reroute(&self, routing: &Routing, items: impl IntoIterator<Item = Queued>) {
        for item in items {
            if matches!(item.frame.frame, Some(pb::edge_frame::Frame::Ping(_))) {
                continue;
            }
            let target = routing.ring.pick_hash(item.key).and_then(|id| routing.conns.get(&id));
            match target {
                Some(conn) => {
                    if let Err(mpsc::error::SendError(item)) = conn.queue.send(item).await {
                        self.park(routing, item);
                    }
                }
                None => {
                    self.park(routing, item);
                }
            }
        }
    }

    fn take_parked(routing: &Routing) -> VecDeque<Queued> {
        std::mem::take(&mut *routing.parked.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sends a barrier `Ping` on `conn` and waits for its `Pong`: the router has then
    /// handled every frame queued before it.
    async fn barrier(&self, conn: &LiveConn) -> bool {
        let seq = self.next_req();
        let (tx, rx) = oneshot::channel();
        self.pending().insert(seq, Pending::Barrier(tx));
        conn.barriers.lock().unwrap_or_else(PoisonError::into_inner).push(seq);
        let ping = Queued { key: 0, frame: EdgeMsg::Ping { seq }.into() };
        let ok = tokio::time::timeout(self.cfg.barrier_timeout, async {
            conn.queue.send(ping).await.is_ok() && rx.await.is_ok()
        })
        .await
        .unwrap_or(false);
        self.pending().remove(&seq);
        conn.barriers.lock().unwrap_or_else(PoisonError::into_inner).retain(|s| *s != seq);
        if !ok {
            tracing::warn!(event = "barrier_timeout", router = %conn.id);
        }
        ok
    }

    fn fail_barriers(&self, conn: &LiveConn) {
        let seqs = std::mem::take(&mut *conn.barriers.lock().unwrap_or_else(PoisonError::into_inner));
        let mut pending = self.pending();
        for s in seqs {
            pending.remove(&s);
        }
    }

    fn publish_up(&self, routing: &Routing) {
        self.up.send_replace(routing.ring.len());
    }

    /// Puts a freshly connected router into the ring.
    async fn join(&self, conn: &Arc<LiveConn>) {
        let mut routing = self.routing.write().await;
        // Users that now belong to `conn` may have frames in flight at their old owner:
        // those must be handled first (RFC 6120 §10.1).
        let others: Vec<Arc<LiveConn>> = routing.conns.values().cloned().collect();
        futures::future::join_all(others.iter().map(|o| self.barrier(o))).await;
        routing.ring.insert(conn.id.clone());
        routing.conns.insert(conn.id.clone(), conn.clone());
        let parked = Self::take_parked(&routing);
        if !parked.is_empty() {
            tracing::info!(event = "parked_frames_flushed", router = %conn.id, frames = parked.len());
        }
        self.reroute(&routing, parked).await;
        self.publish_up(&routing);
        self.set_status(&conn.id, |s| {
            s.up = true;
            s.draining = false;
            s.last_error = None;
        });
        tracing::info!(event = "router_joined", router = %conn.id, routers = routing.ring.len());
    }

    /// Takes a router out of the ring and moves its unsent frames. With `flush`, the
    /// router is alive: routing pauses until it has handled everything queued to it.
    async fn leave(&self, conn: &LiveConn, flush: bool) {
        let mut left = conn.left.lock().await;
        if *left {
            return;
        }
        *left = true;
        if flush {
            match tokio::time::timeout(self.cfg.barrier_timeout, self.routing.write()).await {
                Ok(mut routing) => {
                    if detach(&mut routing, conn) {
                        self.set_status(&conn.id, |s| s.up = false);
                    }
                    self.barrier(conn).await;
                    let leftovers = stop_forwarder(conn).await;
                    let parked = Self::take_parked(&routing);
                    self.reroute(&routing, leftovers.into_iter().chain(parked)).await;
                    self.publish_up(&routing);
                    tracing::info!(event = "router_left", router = %conn.id, routers = routing.ring.len());
                    return;
                }
                Err(_) => tracing::warn!(event = "router_leave_stalled", router = %conn.id),
            }
        }
        // Broken stream: close its queue first, so that senders blocked on it park their
        // frames instead of holding the read lock, then take the rest out of the queue.
        let leftovers = stop_forwarder(conn).await;
        self.fail_barriers(conn);
        let mut routing = self.routing.write().await;
        if detach(&mut routing, conn) {
            self.set_status(&conn.id, |s| s.up = false);
        }
        let moved = leftovers.len();
        let parked = Self::take_parked(&routing);
        self.reroute(&routing, leftovers.into_iter().chain(parked)).await;
        self.publish_up(&routing);
        tracing::warn!(event = "router_lost", router = %conn.id, moved, routers = routing.ring.len());
    }

    /// A `RouterFrame` from router `id`. Returns true for `Drain`.
    fn handle(&self, id: &RouterId, frame: pb::RouterFrame) -> bool {
        let msg = match RouterMsg::try_from(frame) {
            Ok(m) => m,
            Err(ProtoError::UnknownFrame) => {
                tracing::debug!(event = "unknown_router_frame", router = %id);
                return false;
            }
            Err(e) => {
                tracing::warn!(event = "bad_router_frame", router = %id, error = %e);
                return false;
            }
        };
        let edge = self.cfg.edge_id;
        match msg {
            RouterMsg::Deliver { conn, raw } => {
                if !self.hub.deliver(Location { edge, conn }, Outbound::Stanza(raw.clone())) {
                    // The connection is gone or its queue is full: the router decides
                    // again (another resource, offline storage, an error to the sender).
                    match self.jid_of(conn) {
                        Some(jid) => {
                            let _ = self.undelivered.send((jid, raw));
                        }
                        None => tracing::warn!(event = "deliver_to_unknown_conn", router = %id, conn),
                    }
                }
            }
            RouterMsg::Close { conn, condition } => {
                self.hub.deliver(Location { edge, conn }, Outbound::Close(condition));
            }
            RouterMsg::BindResult { req, result } => {
                if let Some(Pending::Bind(tx)) = self.pending().remove(&req) {
                    let _ = tx.send(result);
                }
            }
            RouterMsg::PreauthResult { req, result } => {
                if let Some(Pending::Preauth(tx)) = self.pending().remove(&req) {
                    let _ = tx.send(result);
                }
            }
            RouterMsg::Pong { seq } => {
                if let Some(Pending::Barrier(tx)) = self.pending().remove(&seq) {
                    let _ = tx.send(());
                }
            }
            RouterMsg::SetSessionExt { conn, key, value } => {
                if let Some(slot) = self.slot(conn) {
                    slot.info.lock().unwrap_or_else(PoisonError::into_inner).ext.set_raw(&key, value);
                }
            }
            RouterMsg::Drain => return true,
            RouterMsg::ResyncRequest => {} // handled by the caller, which can spawn
        }
        false
    }

    /// Re-sends every bound session's state, each through its user's ring owner so it
    /// is ordered with that user's traffic.
    async fn resync(&self) {
        let slots: Vec<(ConnId, Arc<Slot>)> = {
            let s = self.sessions.read().unwrap_or_else(PoisonError::into_inner);
            s.live.iter().map(|(c, s)| (*c, s.clone())).collect()
        };
        let mut sent = 0usize;
        for (conn, slot) in slots {
            let _order = slot.order.lock().await;
            let state = {
                let info = slot.info.lock().unwrap_or_else(PoisonError::into_inner);
                if !info.bound {
                    continue;
                }
                info.state(conn)
            };
            // A session that ended meanwhile must not be registered again.
            if self.slot(conn).is_none() {
                continue;
            }
            let key = fnv1a(state.jid.bare_str().as_bytes());
            self.send(key, EdgeMsg::SessionState(state).into()).await;
            sent += 1;
        }
        tracing::info!(event = "sessions_resynced", sessions = sent);
    }

    /// Waits until some router is in the ring, at most `wait`.
    async fn wait_for_router(&self, wait: Duration) -> bool {
        let mut rx = self.up.subscribe();
        tokio::time::timeout(wait, rx.wait_for(|n| *n > 0)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Takes `conn` out of the ring, unless a newer stream to the same router id (a changed
/// address in the membership) has replaced it there.
fn detach(routing: &mut Routing, conn: &LiveConn) -> bool {
    if routing.conns.get(&conn.id).is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), conn)) {
        routing.conns.remove(&conn.id);
        routing.ring.remove(&conn.id);
        return true;
    }
    false
}

/// Stops feeding a stream and returns what was still queued for it, in order.
async fn stop_forwarder(conn: &LiveConn) -> Vec<Queued> {
    conn.stop_forwarder.send_replace(true);
    let handle = conn.forwarder.lock().await.take();
    let mut out = Vec::new();
    if let Some(h) = handle
        && let Ok(mut rx) = h.await
    {
        rx.close();
        while let Ok(item) = rx.try_recv() {
            out.push(item);
        }
    }
    out
}

/// Moves frames from a router's queue into its stream, one at a time: at most one frame
/// sits between the queue and the HTTP/2 stream, so a stop leaves the rest in the queue.
async fn forward(
    mut queue: mpsc::Receiver<Queued>,
    body: mpsc::Sender<pb::EdgeFrame>,
    mut stop: watch::Receiver<bool>,
) -> mpsc::Receiver<Queued> {
    loop {
        let permit = tokio::select! {
            biased;
            _ = crate::until_true(&mut stop) => break,
            p = body.reserve() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let item = tokio::select! {
            biased;
            _ = crate::until_true(&mut stop) => break,
            i = queue.recv() => match i {
                Some(i) => i,
                None => break,
            },
        };
        permit.send(item.frame);
    }
    queue
}

/// The edge's `Router`: forwards every call to the router owning the user.
pub struct RemoteRouter {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl RemoteRouter {
    /// Starts keeping streams to the routers `membership` lists. `hub` is the edge's own
    /// delivery (its `LocalHub`). Must be called inside a tokio runtime.
    pub fn start(cfg: RemoteRouterConfig, membership: &dyn Membership, hub: Arc<dyn EdgeLink>) -> Arc<RemoteRouter> {
        let (undelivered_tx, undelivered_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            cfg,
            hub,
            routing: tokio::sync::RwLock::new(Routing {
                ring: Ring::default(),
                conns: HashMap::new(),
                parked: Mutex::new(VecDeque::new()),
            }),
            up: watch::Sender::new(0),
            sessions: RwLock::new(Sessions::default()),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            status: Mutex::new(HashMap::new()),
            undelivered: undelivered_tx,
        });
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(supervise(shared.clone(), membership.routers(), stop_rx.clone())),
            tokio::spawn(forward_undelivered(shared.clone(), undelivered_rx, stop_rx)),
        ];
        Arc::new(RemoteRouter { shared, stop, tasks: tokio::sync::Mutex::new(tasks) })
    }

    /// True when at least one router stream is up and not draining.
    pub fn ready(&self) -> bool {
        *self.shared.up.borrow() > 0
    }

    /// Every router of the membership and the state of its stream.
    pub fn status(&self) -> Vec<RouterStatus> {
        let mut v: Vec<_> =
            self.shared.status.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The router that currently owns `user` (None when none is usable).
    pub async fn owner(&self, user: &rookery_jid::BareJid) -> Option<RouterId> {
        self.shared.routing.read().await.ring.pick(user)
    }

    /// Waits until at least `n` routers are usable, at most `wait`.
    pub async fn wait_routers(&self, n: usize, wait: Duration) -> bool {
        let mut rx = self.shared.up.subscribe();
        tokio::time::timeout(wait, rx.wait_for(|up| *up >= n)).await.is_ok_and(|r| r.is_ok())
    }

    /// Sessions this edge has bound through the cluster.
    pub fn live_sessions(&self) -> usize {
        self.shared.sessions.read().unwrap_or_else(PoisonError::into_inner).live.len()
    }

    /// Graceful stop: every router gets a barrier (everything queued is handled), then the
    /// streams are half-closed. Call after the edge's client sessions have ended.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().await);
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn call(&self, key: u64, frame: pb::EdgeFrame) -> Sent {
        self.shared.send(key, frame).await
    }

    /// After a frame was parked: wait for a router; if none comes, close the client.
    async fn after_parked(&self, loc: Location) {
        if self.shared.wait_for_router(self.shared.cfg.route_wait).await {
            return;
        }
        tracing::warn!(
            event = "no_router_available",
            conn = loc.conn,
            waited_ms = self.shared.cfg.route_wait.as_millis()
        );
        self.shared.hub.deliver(loc, Outbound::Close(StreamCondition::SystemShutdown));
    }

    async fn await_reply<T>(&self, req: u64, rx: oneshot::Receiver<T>) -> Option<T> {
        let r = tokio::time::timeout(self.shared.cfg.request_timeout, rx).await;
        self.shared.pending().remove(&req);
        r.ok().and_then(Result::ok)
    }
}

#[async_trait]
impl Router for RemoteRouter {
    async fn bind(&self, jid: &FullJid, loc: Location) -> Result<(), BindError> {
        let slot = Arc::new(Slot { info: Mutex::new(SessionInfo::new(jid.clone())), order: Default::default() });
        self.shared.sessions.write().unwrap_or_else(PoisonError::into_inner).live.insert(loc.conn, slot.clone());
        let req = self.shared.next_req();
        let (tx, rx) = oneshot::channel();
        self.shared.pending().insert(req, Pending::Bind(tx));
        let key = fnv1a(jid.bare_str().as_bytes());
        let frame = EdgeMsg::Bind { req, jid: jid.clone(), conn: loc.conn }.into();
        let result = match self.call(key, frame).await {
            Sent::Dropped => None,
            Sent::Queued | Sent::Parked => self.await_reply(req, rx).await,
        };
        match result {
            Some(Ok(())) => {
                slot.info.lock().unwrap_or_else(PoisonError::into_inner).bound = true;
                Ok(())
            }
            Some(Err(e)) => {
                self.forget(loc.conn);
                Err(e)
            }
            None => {
                tracing::warn!(event = "bind_timeout", jid = %jid, conn = loc.conn);
                self.forget(loc.conn);
                // The router may still bind it later: undo that (same user, same router,
                // so this is handled after the bind).
                self.call(key, EdgeMsg::Unbind { jid: jid.clone(), conn: loc.conn }.into()).await;
                Err(BindError::Internal)
            }
        }
    }

    async fn route(&self, from: Location, env: Envelope) {
        let key = fnv1a(self.shared.cfg.placements.key(&env).as_bytes());
        // Presence is observed for re-registration; its order with the call matters.
        let observed = env.kind == Kind::Presence;
        let slot = if observed { self.shared.slot(from.conn) } else { None };
        let sent = match slot {
            Some(slot) => {
                let _order = slot.order.lock().await;
                slot.info.lock().unwrap_or_else(PoisonError::into_inner).observe(&env);
                self.call(key, EdgeMsg::Route { conn: from.conn, env }.into()).await
            }
            None => self.call(key, EdgeMsg::Route { conn: from.conn, env }.into()).await,
        };
        match sent {
            Sent::Queued => {}
            Sent::Parked => self.after_parked(from).await,
            Sent::Dropped => {
                self.shared.hub.deliver(from, Outbound::Close(StreamCondition::SystemShutdown));
            }
        }
    }

    async fn unbind(&self, jid: &FullJid, loc: Location) {
        self.forget(loc.conn);
        let key = fnv1a(jid.bare_str().as_bytes());
        if let Sent::Dropped = self.call(key, EdgeMsg::Unbind { jid: jid.clone(), conn: loc.conn }.into()).await {
            tracing::error!(event = "unbind_lost", jid = %jid, conn = loc.conn);
        }
    }

    async fn preauth_iq(&self, iq: IqRequest) -> IqResult {
        let req = self.shared.next_req();
        let (tx, rx) = oneshot::channel();
        self.shared.pending().insert(req, Pending::Preauth(tx));
        // No user yet: any router will do, spread by request number.
        let key = req.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let result = match self.call(key, EdgeMsg::PreauthIq { req, iq }.into()).await {
            Sent::Dropped => None,
            Sent::Queued | Sent::Parked => self.await_reply(req, rx).await,
        };
        result.unwrap_or_else(|| {
            tracing::warn!(event = "preauth_timeout", req);
            Err(StanzaError::new(Condition::InternalServerError))
        })
    }

    async fn undelivered(&self, to: &FullJid, stanza: Bytes) {
        let key = fnv1a(to.bare_str().as_bytes());
        if let Sent::Dropped = self.call(key, EdgeMsg::Undelivered { to: to.clone(), raw: stanza }.into()).await {
            tracing::error!(event = "undelivered_lost", to = %to);
        }
    }
}

impl RemoteRouter {
    /// Re-sends every bound session's state to its router (after the edge itself noticed
    /// that the registry lost its data; routers also ask with `ResyncRequest`).
    pub async fn resync(&self) {
        self.shared.resync().await;
    }

    /// The session on `conn` ended or failed to bind: keep its JID for a while so that
    /// deliveries still in flight to it come back as `Undelivered`.
    fn forget(&self, conn: ConnId) {
        let mut s = self.shared.sessions.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = s.live.remove(&conn) {
            let jid = slot.info.lock().unwrap_or_else(PoisonError::into_inner).jid.clone();
            let now = Instant::now();
            let keep = self.shared.cfg.closed_retention;
            s.closed.retain(|_, (_, at)| now.duration_since(*at) < keep);
            s.closed.insert(conn, (jid, now));
        }
    }
}

impl Drop for RemoteRouter {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Stanzas the hub refused, back to the routers (off the stream reader, which must never
/// wait on a queue: a full queue to the same router would stall both directions).
async fn forward_undelivered(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(FullJid, Bytes)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (to, raw) = tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = crate::until_true(&mut stop) => {
                // What the hub refused before the stop still goes back to a router.
                while let Ok((to, raw)) = rx.try_recv() {
                    let key = fnv1a(to.bare_str().as_bytes());
                    shared.send(key, EdgeMsg::Undelivered { to, raw }.into()).await;
                }
                return;
            }
        };
        let key = fnv1a(to.bare_str().as_bytes());
        if let Sent::Dropped = shared.send(key, EdgeMsg::Undelivered { to: to.clone(), raw }.into()).await {
            tracing::error!(event = "undelivered_lost", to = %to);
        }
    }
}

/// Keeps one connection task per router of the membership.
async fn supervise(
    shared: Arc<Shared>,
    mut members: watch::Receiver<Vec<RouterEndpoint>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut running: HashMap<RouterId, (String, watch::Sender<bool>, JoinHandle<()>)> = HashMap::new();
    let mut source_gone = false;
    loop {
        let wanted: Vec<RouterEndpoint> = members.borrow_and_update().clone();
        running.retain(|id, (uri, stop_one, _)| {
            let keep = wanted.iter().any(|e| &e.id == id && &e.uri == uri);
            if !keep {
                stop_one.send_replace(true);
            }
            keep
        });
        for ep in wanted {
            if running.contains_key(&ep.id) {
                continue;
            }
            shared.status.lock().unwrap_or_else(PoisonError::into_inner).insert(
                ep.id.clone(),
                RouterStatus { id: ep.id.clone(), uri: ep.uri.clone(), up: false, draining: false, last_error: None },
            );
            let (stop_one, stop_rx) = watch::channel(false);
            let task = tokio::spawn(run_router(shared.clone(), ep.clone(), stop_rx));
            running.insert(ep.id.clone(), (ep.uri, stop_one, task));
        }
        {
            let mut st = shared.status.lock().unwrap_or_else(PoisonError::into_inner);
            st.retain(|id, _| running.contains_key(id));
        }
        // A membership source that went away (e.g. a `StaticMembership` dropped after
        // `start`) leaves its last list in force.
        tokio::select! {
            r = members.changed(), if !source_gone => if r.is_err() { source_gone = true },
            _ = crate::until_true(&mut stop) => break,
        }
    }
    for (_, (_, stop_one, _)) in running.iter() {
        stop_one.send_replace(true);
    }
    for (_, (_, _, task)) in running {
        let _ = task.await;
    }
}

enum Ended {
    /// Told to stop (membership removal, shutdown).
    Stopped,
    /// The router announced Drain.
    Drained,
    Failed(String),
}

/// One router: connect, run the stream, reconnect with exponential backoff.
async fn run_router(shared: Arc<Shared>, ep: RouterEndpoint, mut stop: watch::Receiver<bool>) {
    let mut backoff = shared.cfg.backoff_min;
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        match run_stream(&shared, &ep, &mut stop).await {
            Ended::Stopped => return,
            Ended::Drained => {
                shared.set_status(&ep.id, |s| s.draining = true);
            }
            Ended::Failed(why) => {
                tracing::warn!(event = "router_stream_failed", router = %ep.id, uri = %ep.uri, error = %why);
                shared.set_status(&ep.id, |s| s.last_error = Some(why));
            }
        }
        if started.elapsed() > shared.cfg.backoff_max {
            backoff = shared.cfg.backoff_min;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::until_true(&mut stop) => return,
        }
        backoff = (backoff * 2).min(shared.cfg.backoff_max);
    }
}

fn refused(ep: &RouterEndpoint, status: &tonic::Status) -> String {
    format!("router {} at {} refused the stream ({:?}): {}", ep.id, ep.uri, status.code(), status.message())
}

async fn run_stream(shared: &Arc<Shared>, ep: &RouterEndpoint, stop: &mut watch::Receiver<bool>) -> Ended {
    let cfg = &shared.cfg;
    let endpoint = match Endpoint::from_shared(ep.uri.clone()) {
        Ok(e) => e,
        Err(e) => return Ended::Failed(ClusterError::Uri { uri: ep.uri.clone(), reason: e.to_string() }.to_string()),
    };
    let endpoint = endpoint
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(cfg.ping_interval)
        .keep_alive_timeout(cfg.ping_timeout)
        .keep_alive_while_idle(true);
    let channel = tokio::select! {
        c = endpoint.connect() => match c {
            Ok(c) => c,
            Err(e) => return Ended::Failed(format!("cannot connect to router {} at {}: {}", ep.id, ep.uri, error_chain(&e))),
        },
        _ = crate::until_true(stop) => return Ended::Stopped,
    };
    let mut client = RouterServiceClient::new(channel)
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);

    let (queue_tx, queue_rx) = mpsc::channel::<Queued>(cfg.queue.max(1));
    let (body_tx, body_rx) = mpsc::channel::<pb::EdgeFrame>(1);
    let hello = Hello { edge_id: cfg.edge_id, epoch: cfg.epoch, proto_version: cfg.proto_version };
    let _ = body_tx.try_send(EdgeMsg::Hello(hello).into());
    let (stop_fwd, stop_fwd_rx) = watch::channel(false);
    let forwarder = tokio::spawn(forward(queue_rx, body_tx, stop_fwd_rx));
    let conn = Arc::new(LiveConn {
        id: ep.id.clone(),
        queue: queue_tx,
        stop_forwarder: stop_fwd,
        forwarder: tokio::sync::Mutex::new(Some(forwarder)),
        barriers: Mutex::new(Vec::new()),
        left: tokio::sync::Mutex::new(false),
    });
    let body = futures::stream::unfold(body_rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let response = tokio::select! {
        r = tokio::time::timeout(cfg.connect_timeout, client.connect(tonic::Request::new(body))) => r,
        _ = crate::until_true(stop) => {
            stop_forwarder(&conn).await;
            return Ended::Stopped;
        }
    };
    let mut inbound = match response {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => {
            stop_forwarder(&conn).await;
            let why = refused(ep, &status);
            if status.code() == tonic::Code::FailedPrecondition {
                tracing::error!(event = "router_refused_edge", router = %ep.id, error = %why);
            }
            return Ended::Failed(why);
        }
        Err(_) => {
            stop_forwarder(&conn).await;
            return Ended::Failed(format!("router {} at {} did not accept the stream in time", ep.id, ep.uri));
        }
    };
    shared.join(&conn).await;

    let mut ping = tokio::time::interval(cfg.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_frame = Instant::now();
    let mut leaving: Option<JoinHandle<()>> = None;
    let mut drained = false;
    let mut stopping = false;
    // Once we are leaving, the router gets this long to end its half of the stream.
    let mut close_deadline: Option<tokio::time::Instant> = None;
    let ended = loop {
        let close_wait = async {
            match close_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(frame)) => {
                    last_frame = Instant::now();
                    let resync = matches!(frame.frame, Some(pb::router_frame::Frame::ResyncRequest(_)));
                    if shared.handle(&ep.id, frame) && leaving.is_none() {
                        tracing::info!(event = "router_draining", router = %ep.id);
                        shared.set_status(&ep.id, |s| s.draining = true);
                        drained = true;
                        let (s, c) = (shared.clone(), conn.clone());
                        leaving = Some(tokio::spawn(async move { s.leave(&c, true).await }));
                        close_deadline = Some(tokio::time::Instant::now() + cfg.barrier_timeout * 3);
                    }
                    if resync {
                        let s = shared.clone();
                        tokio::spawn(async move { s.resync().await });
                    }
                }
                // The router ended its half: after our half-close when leaving, else a
                // router shutting down.
                Ok(None) => break None,
                Err(status) => break Some(format!("stream to router {} at {} failed: {}", ep.id, ep.uri, status.message())),
            },
            _ = ping.tick() => {
                if last_frame.elapsed() > cfg.ping_timeout {
                    break Some(format!("router {} at {} sent nothing for {:?}", ep.id, ep.uri, cfg.ping_timeout));
                }
                let seq = shared.next_req();
                let _ = conn.queue.try_send(Queued { key: 0, frame: EdgeMsg::Ping { seq }.into() });
            },
            _ = crate::until_true(stop), if leaving.is_none() => {
                stopping = true;
                let (s, c) = (shared.clone(), conn.clone());
                leaving = Some(tokio::spawn(async move { s.leave(&c, true).await }));
                close_deadline = Some(tokio::time::Instant::now() + cfg.barrier_timeout * 3);
            },
            _ = close_wait => break None,
        }
    };
    match leaving {
        Some(l) => {
            let _ = l.await;
        }
        None => shared.leave(&conn, false).await,
    }
    if stopping {
        return Ended::Stopped;
    }
    if drained {
        return Ended::Drained;
    }
    Ended::Failed(ended.unwrap_or_else(|| format!("router {} at {} closed the stream", ep.id, ep.uri)))
}

/// An error with its sources, for messages that name the real cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Counts of what the edge side holds, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeCounts {
    pub routers_up: usize,
    pub parked: usize,
    pub pending_requests: usize,
}

impl RemoteRouter {
    pub async fn counts(&self) -> EdgeCounts {
        let routing = self.shared.routing.read().await;
        EdgeCounts {
            routers_up: routing.ring.len(),
            parked: routing.parked.lock().unwrap_or_else(PoisonError::into_inner).len(),
            pending_requests: self.shared.pending().len(),
        }
    }
}
