//! The two cluster roles (docs/cluster.md): `rookery router` runs the XMPP rules and the
//! modules over the shared store, with sessions in the Redis registry and the edges'
//! gRPC streams as its `EdgeLink`; `rookery edge` terminates client connections and
//! forwards their stanzas to the routers (`RemoteRouter`, consistent hash of the bare
//! JID). The same `LocalRouter` and the same `Edge` run in `rookery serve`.
//!
//! Owns: wiring the roles, the routers' dead-edge purge and registry-reset watch, the
//! edges' heartbeat (liveness, partition and purge detection), health readiness.
//! Must not touch: XMPP rules (router), the stream protocol (edge), the wire format
//! (crates/proto), the registry's data layout (crates/storage-redis).

use crate::admin::Readiness;
use crate::node::{modules, router_config, secret_file};
use anyhow::Context;
use async_trait::async_trait;
use rookery_cluster::{
    ClusterEvents, ClusterLink, RemoteRouter, RemoteRouterConfig, RouterEndpoint, RouterServer, RouterServerConfig,
    StaticMembership,
};
use rookery_config::Config;
use rookery_core::{LocalHub, Router, SessionEntry, SessionRegistry};
use rookery_edge::{Edge, ListenKind};
use rookery_router::LocalRouter;
use rookery_stanza::StreamCondition;
use rookery_storage_redis::{Heartbeat, RedisConfig, RedisRegistry};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A running cluster process. Dropping it does not stop it: call [`Process::shutdown`].
pub struct Process {
    pub c2s: Option<SocketAddr>,
    pub c2s_tls: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Process {
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    pub async fn wait(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

fn redis_config(cfg: &Config) -> RedisConfig {
    RedisConfig { urls: cfg.cluster.redis.clone(), cluster: cfg.cluster.redis_cluster, ..RedisConfig::default() }
}

async fn connect_registry(cfg: &Config) -> anyhow::Result<Arc<RedisRegistry>> {
    let urls = cfg.cluster.redis.join(", ");
    // Boxed: the driver's futures nest deep (see stores.rs).
    let connect: std::pin::Pin<Box<dyn Future<Output = _> + Send>> =
        Box::pin(RedisRegistry::connect(redis_config(cfg)));
    let r = connect.await.with_context(|| format!("cluster.redis ({urls})"))?;
    Ok(Arc::new(r))
}

async fn bind(addr: Option<SocketAddr>) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match addr {
        Some(a) => Ok(Some(rookery_edge::bind(a).await?)),
        None => Ok(None),
    }
}

/// Re-inserts the sessions edges re-send after a registry reset.
struct RegistryEvents {
    registry: Arc<RedisRegistry>,
}

#[async_trait]
impl ClusterEvents for RegistryEvents {
    async fn session_state(&self, entry: SessionEntry) {
        let jid = entry.jid.clone();
        if let Err(e) = self.registry.insert(entry).await {
            tracing::warn!(event = "resync_insert_failed", jid = %jid, error = %e);
        }
    }
}

/// Starts a router: XMPP rules over the shared store, sessions in Redis, edges over gRPC.
pub async fn start_router(cfg: Config) -> anyhow::Result<Process> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let Some(grpc_addr) = cfg.cluster.grpc else {
        anyhow::bail!("cluster.grpc is off: a router needs an address for the edges to connect to");
    };
    if cfg.limits.outbound_queue <= cfg.limits.offline_max_per_user {
        // docs/cluster.md, Backpressure: a router cannot pace an offline flush by the
        // edge's per-connection queue.
        tracing::warn!(
            event = "offline_backlog_may_exceed_queue",
            outbound_queue = cfg.limits.outbound_queue,
            offline_max_per_user = cfg.limits.offline_max_per_user
        );
    }
    let stores = crate::stores::open_stores(&cfg).await?;
    let registry = connect_registry(&cfg).await?;
    // One queue per edge, shared by all of that edge's connections.
    let link = ClusterLink::new(cfg.limits.outbound_queue.saturating_mul(16).max(65_536));
    // Cluster routers get distinct numbers, which are part of the archive ids they mint.
    let node = u16::try_from(cfg.cluster.node_id).unwrap_or(0);
    let router =
        LocalRouter::new(router_config(&cfg), registry.clone(), link.clone(), stores.clone(), modules(&cfg, node))?;
    // Modules cache per-user data (block lists, archiving preferences) per router: a change
    // made through one router must reach the others' caches.
    router.set_change_bus(registry.clone());
    {
        let weak = Arc::downgrade(&router);
        registry.on_change(Arc::new(move |topic, user| {
            if let Some(r) = weak.upgrade() {
                r.remote_change(topic, user);
            }
        }));
        let weak = Arc::downgrade(&router);
        registry.on_reset(Arc::new(move || {
            if let Some(r) = weak.upgrade() {
                r.remote_reset();
            }
        }));
    }
    let events = Arc::new(RegistryEvents { registry: registry.clone() });
    let server_cfg = RouterServerConfig { placements: router.placements(), ..RouterServerConfig::default() };
    let server = RouterServer::new(router.clone(), link.clone(), events, server_cfg);

    // `shutdown` is what the operator pulls; `rx` stops the serving tasks once the edges
    // were told to move this router's users elsewhere (Drain), so no stanza is cut off.
    let (shutdown, mut requested) = watch::channel(false);
    let (stop, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    {
        let server = server.clone();
        tasks.spawn(async move {
            let _ = requested.changed().await;
            server.drain(Duration::from_secs(5)).await;
            let _ = stop.send(true);
        });
    }
    let grpc = bind(Some(grpc_addr)).await?.context("binding cluster.grpc")?;
    let grpc_local = grpc.local_addr().ok();
    {
        let server = server.clone();
        let rx = rx.clone();
        tasks.spawn(async move {
            if let Err(e) = server.serve(grpc, rx).await {
                tracing::error!(event = "grpc_server_failed", error = %e);
            }
        });
    }
    // Not ready until the first registry check succeeded.
    let healthy = Arc::new(AtomicBool::new(false));
    tasks.spawn(watch_registry(
        registry.clone(),
        router.clone(),
        link.clone(),
        Duration::from_millis(cfg.cluster.heartbeat_ms),
        Duration::from_millis(cfg.cluster.dead_after_ms),
        healthy.clone(),
        rx.clone(),
    ));
    if cfg.mam.enabled {
        tasks.spawn(crate::retention::run(stores.clone(), cfg.mam.clone(), cfg.domains.clone(), rx.clone()));
    }
    let http = bind(cfg.listen.http).await?;
    let http_local = http.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(l) = http {
        let admin_token = secret_file(&cfg.admin_token_path(), 24)?;
        let ready: Readiness = {
            let healthy = healthy.clone();
            Arc::new(move || healthy.load(Ordering::Relaxed))
        };
        let state = crate::admin::AdminState {
            stores: stores.clone(),
            router: router.clone(),
            token: admin_token,
            min_password_len: cfg.registration.min_password_len,
            domains: cfg.domains.clone(),
            ready,
            extra_stats: Some({
                let registry = registry.clone();
                let server = server.clone();
                Arc::new(move || {
                    serde_json::json!({
                        "redis_requests": registry.ops(),
                        "router_call_panics": server.router_call_panics(),
                    })
                })
            }),
        };
        tasks.spawn(crate::admin::serve(l, state, rx.clone()));
    }
    tracing::info!(event = "router_started", node = cfg.cluster.node_id, grpc = ?grpc_local, http = ?http_local);
    Ok(Process { c2s: None, c2s_tls: None, http: http_local, grpc: grpc_local, shutdown, tasks })
}

/// The router's periodic duties: notice a registry that lost its data (ask the edges to
/// re-send their sessions) and purge edges that stopped heartbeating (their sessions are
/// unbound through the router, so contacts get unavailable presence, RFC 6121 §4.5.2).
/// Any router may do it; `claim_purge` lets exactly one win per dead edge.
async fn watch_registry(
    registry: Arc<RedisRegistry>,
    router: Arc<LocalRouter>,
    link: Arc<ClusterLink>,
    every: Duration,
    dead_after: Duration,
    healthy: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
        first = false;
        let ok = match registry.registry_reset().await {
            Ok(reset) => {
                if reset {
                    let asked = link.request_resync().await;
                    tracing::info!(event = "registry_resync_requested", edges = asked);
                }
                true
            }
            Err(e) => {
                tracing::warn!(event = "registry_unreachable", error = %e);
                false
            }
        };
        healthy.store(ok, Ordering::Relaxed);
        if !ok {
            continue;
        }
        let dead = match registry.dead_edges(dead_after).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(event = "dead_edge_scan_failed", error = %e);
                continue;
            }
        };
        for edge in dead {
            match registry.claim_purge(edge).await {
                Ok(Some((epoch, sessions))) => {
                    tracing::warn!(event = "edge_purged", edge, epoch, sessions = sessions.len());
                    for (jid, loc) in sessions {
                        router.unbind(&jid, loc).await;
                    }
                    if let Err(e) = registry.finish_purge(edge).await {
                        tracing::warn!(event = "edge_purge_finish_failed", edge, error = %e);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(event = "edge_purge_failed", edge, error = %e),
            }
        }
    }
}

/// Starts an edge: client listeners, stanzas forwarded to the routers.
pub async fn start_edge(cfg: Config) -> anyhow::Result<Process> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    if cfg.cluster.routers.is_empty() {
        anyhow::bail!("cluster.routers is empty: an edge needs at least one router to forward to");
    }
    // Accounts are read for SASL at the edge (it holds the TLS state channel binding needs).
    let stores = crate::stores::open_stores(&cfg).await?;
    let registry = connect_registry(&cfg).await?;
    let edge_id = cfg.cluster.node_id;
    let every = Duration::from_millis(cfg.cluster.heartbeat_ms);
    let dead_after = Duration::from_millis(cfg.cluster.dead_after_ms);

    // A restarted edge waits until the routers purged its previous incarnation, so that
    // one's sessions cannot outlive it under the same edge id.
    let waited = Instant::now();
    loop {
        match registry.is_registered(edge_id).await {
            Ok(false) => break,
            Ok(true) => {
                if waited.elapsed() > dead_after * 4 {
                    anyhow::bail!(
                        "edge {edge_id}'s previous incarnation is still registered: are two edges using cluster.node_id = {edge_id}?"
                    );
                }
                tracing::info!(event = "waiting_for_previous_incarnation_purge", edge = edge_id);
                tokio::time::sleep(every).await;
            }
            Err(e) => anyhow::bail!("cluster.redis: {e}"),
        }
    }

    let hub = Arc::new(LocalHub::new());
    let routers: Vec<RouterEndpoint> =
        cfg.cluster.routers.iter().map(|r| RouterEndpoint::new(r, format!("http://{r}"))).collect();
    let membership = StaticMembership::new(routers);
    let rcfg = RemoteRouterConfig { edge_id, placements: placements(&cfg)?, ..RemoteRouterConfig::default() };
    let mut epoch = rcfg.epoch;
    let remote = RemoteRouter::start(rcfg, &membership, hub.clone());

    let tls = rookery_edge::tls::load_or_generate(
        cfg.tls.cert.as_deref(),
        cfg.tls.key.as_deref(),
        &cfg.data_dir,
        &cfg.domains,
    )?;
    let fake_secret = secret_file(&cfg.data_dir.join("server.secret"), 32)?;
    let mut edge_cfg = crate::node::edge_config(&cfg, fake_secret);
    edge_cfg.edge_id = edge_id;
    // Connection ids must not repeat across this edge id's incarnations.
    edge_cfg.first_conn_id = epoch_conn_base();
    let edge = Edge::new(edge_cfg, tls, remote.clone() as Arc<dyn Router>, hub.clone(), stores.accounts.clone());

    let (shutdown, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let beating = Arc::new(AtomicBool::new(false));
    // First heartbeat before accepting clients.
    match registry.heartbeat(edge_id, epoch, dead_after * 3).await {
        Ok(_) => beating.store(true, Ordering::Relaxed),
        Err(e) => anyhow::bail!("cluster.redis: first heartbeat failed: {e}"),
    }
    {
        let registry = registry.clone();
        let hub = hub.clone();
        let beating = beating.clone();
        let remote = remote.clone();
        let mut rx = rx.clone();
        tasks.spawn(async move {
            let mut last_ok = Instant::now();
            let mut cut_off = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = rx.changed() => break,
                }
                match registry.heartbeat(edge_id, epoch, dead_after * 3).await {
                    Ok(verdict @ (Heartbeat::Ok | Heartbeat::RegistryReset)) => {
                        // Routers notice a reset and ask for a resync; the edge re-sends
                        // too, for routers that started after the reset and so never saw
                        // the old generation. Re-inserting a live session is idempotent.
                        if verdict == Heartbeat::RegistryReset {
                            remote.resync().await;
                        }
                        last_ok = Instant::now();
                        cut_off = false;
                        beating.store(true, Ordering::Relaxed);
                    }
                    Ok(Heartbeat::Purged) => {
                        // Declared dead while cut off: these sessions are gone for the
                        // cluster, so their clients must reconnect; continue as a new
                        // incarnation.
                        let closed = hub.close_all(StreamCondition::SystemShutdown);
                        tracing::warn!(event = "edge_was_purged", edge = edge_id, closed);
                        epoch = epoch.wrapping_add(1);
                        last_ok = Instant::now();
                        cut_off = false;
                    }
                    Err(e) => {
                        tracing::warn!(event = "heartbeat_failed", edge = edge_id, error = %e);
                        beating.store(false, Ordering::Relaxed);
                        if !cut_off && last_ok.elapsed() >= dead_after && !remote.ready() {
                            // Neither Redis nor any router answers: this edge is cut off,
                            // and the cluster is about to purge (or purged) its sessions.
                            // End them here too rather than serve clients nobody can
                            // reach. (Redis alone being down is not that: sessions stay,
                            // and a purge, if one happened, is answered `Purged` later.)
                            let closed = hub.close_all(StreamCondition::SystemShutdown);
                            tracing::warn!(event = "edge_cut_off", edge = edge_id, closed);
                            cut_off = true;
                        }
                    }
                }
            }
            let _ = registry.deregister(edge_id).await;
        });
    }

    let c2s = bind(cfg.listen.c2s).await?;
    let c2s_tls = bind(cfg.listen.c2s_tls).await?;
    let http = bind(cfg.listen.http).await?;
    let c2s_addr = c2s.as_ref().and_then(|l| l.local_addr().ok());
    let c2s_tls_addr = c2s_tls.as_ref().and_then(|l| l.local_addr().ok());
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(l) = c2s {
        tasks.spawn(edge.clone().serve(l, ListenKind::StartTls, rx.clone()));
    }
    if let Some(l) = c2s_tls {
        tasks.spawn(edge.clone().serve(l, ListenKind::DirectTls, rx.clone()));
    }
    if let Some(l) = http {
        let ready: Readiness = {
            let remote = remote.clone();
            let beating = beating.clone();
            Arc::new(move || remote.ready() && beating.load(Ordering::Relaxed))
        };
        tasks.spawn(crate::admin::serve_app(l, crate::admin::health_app(ready), rx.clone()));
    }
    {
        let remote = remote.clone();
        let mut rx = rx.clone();
        tasks.spawn(async move {
            // The membership feeds the remote router's view of the routers for as long as
            // the edge runs; dropping it would empty the ring.
            let _membership = membership;
            let _ = rx.changed().await;
            // Give the sessions' unbinds a moment to reach the routers.
            tokio::time::sleep(Duration::from_millis(500)).await;
            remote.shutdown().await;
        });
    }
    tracing::info!(event = "edge_started", node = edge_id, c2s = ?c2s_addr, c2s_tls = ?c2s_tls_addr, http = ?http_addr);
    Ok(Process { c2s: c2s_addr, c2s_tls: c2s_tls_addr, http: http_addr, grpc: None, shutdown, tasks })
}

/// Connection ids of this incarnation start here: microseconds since the epoch, shifted
/// so consecutive starts never overlap (2^16 connections per microsecond of uptime gap).
fn epoch_conn_base() -> u64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(0))
        .unwrap_or(0);
    micros << 8
}

/// Where the components the routers run want their stanzas: the same modules the routers
/// register (same configuration), read without starting them.
fn placements(cfg: &Config) -> anyhow::Result<rookery_core::PlacementTable> {
    let mut r = rookery_core::Registrar::new();
    modules(cfg, 0)(&mut r);
    Ok(r.finish()?.components.placements())
}
