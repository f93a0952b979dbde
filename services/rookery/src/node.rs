//! Start-up of a single node: open the store, build the router with its modules, load TLS,
//! bind listeners, serve until shutdown.

use anyhow::Context;
use rookery_config::Config;
use rookery_core::Registrar;
use rookery_core::{LocalHub, MemoryRegistry};
use rookery_edge::{Edge, EdgeConfig, ListenKind};
use rookery_router::{LocalRouter, RouterConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A running node. Dropping it does not stop it: call [`Server::shutdown`].
pub struct Server {
    pub c2s: Option<SocketAddr>,
    pub c2s_tls: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub router: Arc<LocalRouter>,
    pub admin_token: String,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Server {
    /// Closes every stream with `<system-shutdown/>`, stops the listeners and waits.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits until the node stops (it only stops through `shutdown`).
    pub async fn wait(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Reads a secret file from the data directory, creating it with fresh random bytes
/// (hex) on first use.
pub fn secret_file(path: &Path, bytes: usize) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    rookery_edge::tls::write_private(path, hex.as_bytes())?;
    Ok(hex)
}

/// The router's settings from the configuration.
pub fn router_config(cfg: &Config) -> RouterConfig {
    RouterConfig {
        domains: cfg.domains.clone(),
        allow_registration: cfg.registration.allow,
        min_password_len: cfg.registration.min_password_len,
        iq_to_full_jid: match cfg.router.iq_to_full_jid {
            rookery_config::IqToFullJid::PresenceShared => rookery_router::IqToFullJid::PresenceShared,
            rookery_config::IqToFullJid::Always => rookery_router::IqToFullJid::Always,
        },
    }
}

/// The modules a node runs, each from its own section of the configuration.
pub fn modules(cfg: &Config, node: u16) -> impl FnOnce(&mut Registrar) + use<> {
    rookery_modules::catalog::from_config(cfg, rookery_modules::catalog::NodeInfo { node })
}

/// The edge's settings from the configuration.
pub fn edge_config(cfg: &Config, fake_secret: String) -> EdgeConfig {
    let l = &cfg.limits;
    EdgeConfig {
        edge_id: 0,
        first_conn_id: 1,
        domains: cfg.domains.clone(),
        max_stanza_bytes: l.max_stanza_bytes,
        max_depth: l.max_depth,
        negotiation_timeout: Duration::from_secs(l.negotiation_timeout_secs),
        idle_timeout: Duration::from_secs(l.idle_timeout_secs),
        max_connections_per_ip: l.max_connections_per_ip,
        auth_failures_before_delay: l.auth_failures_before_delay,
        auth_delay_max: Duration::from_secs(l.auth_delay_max_secs),
        stanza_rate_per_sec: l.stanza_rate_per_sec,
        outbound_queue: l.outbound_queue,
        allow_registration: cfg.registration.allow,
        fake_secret: fake_secret.into_bytes(),
        csi_max_held: if cfg.csi.enabled { cfg.csi.max_held } else { 0 },
        sm: rookery_edge::SmConfig {
            enabled: cfg.stream_management.enabled,
            resume_timeout: Duration::from_secs(cfg.stream_management.resume_timeout_secs),
            max_resume_timeout: Duration::from_secs(cfg.stream_management.max_resume_timeout_secs),
        },
    }
}

/// Starts a node from a validated configuration.
pub async fn start(cfg: Config) -> anyhow::Result<Server> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Ports first: a busy port is the most common start-up failure, and it must not leave
    // a data directory, a certificate and an admin token behind for a server that never ran.
    let c2s = cfg.listen.c2s.map(reserve).transpose()?;
    let c2s_tls = cfg.listen.c2s_tls.map(reserve).transpose()?;
    let http = cfg.listen.http.map(reserve).transpose()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let stores = crate::stores::open_stores(&cfg).await?;
    let hub = Arc::new(LocalHub::new());
    let router = LocalRouter::new(
        router_config(&cfg),
        Arc::new(MemoryRegistry::new()),
        hub.clone(),
        stores.clone(),
        modules(&cfg, 0),
    )?;
    let tls = rookery_edge::tls::load_or_generate(
        cfg.tls.cert.as_deref(),
        cfg.tls.key.as_deref(),
        &cfg.data_dir,
        &cfg.domains,
    )?;
    let fake_secret = secret_file(&cfg.data_dir.join("server.secret"), 32)?;
    let admin_token = secret_file(&cfg.admin_token_path(), 24)?;
    let edge_cfg = edge_config(&cfg, fake_secret);
    let edge = Edge::new(edge_cfg, tls, router.clone(), hub, stores.accounts.clone());
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    if cfg.mam.enabled {
        tasks.spawn(crate::retention::run(stores.clone(), cfg.mam.clone(), cfg.domains.clone(), rx.clone()));
    }
    let c2s = c2s.map(listen).transpose()?;
    let c2s_tls = c2s_tls.map(listen).transpose()?;
    let http = http.map(listen).transpose()?;
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
        let state = crate::admin::AdminState {
            stores: stores.clone(),
            router: router.clone(),
            token: admin_token.clone(),
            min_password_len: cfg.registration.min_password_len,
            domains: cfg.domains.clone(),
            ready: crate::admin::always_ready(),
            extra_stats: None,
        };
        tasks.spawn(crate::admin::serve(l, state, rx.clone()));
    }
    tracing::info!(
        event = "started",
        domains = ?cfg.domains,
        c2s = ?c2s_addr,
        c2s_tls = ?c2s_tls_addr,
        http = ?http_addr,
        data_dir = %cfg.data_dir.display(),
    );
    Ok(Server { c2s: c2s_addr, c2s_tls: c2s_tls_addr, http: http_addr, router, admin_token, shutdown, tasks })
}

/// Binds `addr` without listening yet: the port is taken (a busy one fails here, naming the
/// address), but connections are refused until [`listen`], so a client or probe that gets
/// through finds a node that is ready.
fn reserve(addr: SocketAddr) -> anyhow::Result<(SocketAddr, TcpSocket)> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .with_context(|| format!("cannot listen on {addr}"))?;
    // As `TcpListener::bind` does: a restart must not wait for old connections' TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true).with_context(|| format!("cannot listen on {addr}"))?;
    socket.bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    Ok((addr, socket))
}

fn listen((addr, socket): (SocketAddr, TcpSocket)) -> anyhow::Result<TcpListener> {
    socket.listen(1024).with_context(|| format!("cannot listen on {addr}"))
}
