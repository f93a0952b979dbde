//! The edge: accepts client connections, terminates TLS, frames the XML stream,
//! negotiates it (STARTTLS, SASL, resource binding) and forwards stanzas to a `Router`;
//! writes what the router delivers. It keeps no XMPP state beyond the connection.
//!
//! Owns: sockets, TLS (RFC 6120 §5, XEP-0368), stream negotiation (RFC 6120 §4, §6, §7),
//! stream errors (§4.9), `from` stamping (§8.1.2.1), per-connection limits and the per-IP
//! protections.
//! Must not touch: routing decisions, rosters, presence, storage other than reading
//! account credentials for SASL.

pub mod c2s;
pub mod throttle;
pub mod tls;
pub mod transport;

use rookery_core::{LocalHub, Router};
use rookery_storage::AccountStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Edge settings taken from the configuration.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub domains: Vec<String>,
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub negotiation_timeout: Duration,
    /// Zero disables it.
    pub idle_timeout: Duration,
    pub max_connections_per_ip: u32,
    pub auth_failures_before_delay: u32,
    pub auth_delay_max: Duration,
    pub stanza_rate_per_sec: u32,
    pub outbound_queue: usize,
    pub allow_registration: bool,
    /// Secret for fake SCRAM salts of unknown users (stable across restarts so they
    /// cannot be told apart from real accounts).
    pub fake_secret: Vec<u8>,
}

/// Shared state of all connections of this edge.
pub struct Edge {
    pub cfg: EdgeConfig,
    pub tls: tls::TlsMaterial,
    pub router: Arc<dyn Router>,
    pub hub: Arc<LocalHub>,
    pub accounts: Arc<dyn AccountStore>,
    pub conn_limiter: throttle::ConnLimiter,
    pub auth_throttle: throttle::AuthThrottle,
    next_conn: AtomicU64,
    /// Edge id in the cluster (0 in the single binary).
    pub edge_id: u32,
}

/// Which kind of listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenKind {
    /// Port 5222: plaintext stream, STARTTLS mandatory.
    StartTls,
    /// Port 5223: TLS from the first byte (XEP-0368).
    DirectTls,
}

impl Edge {
    pub fn new(
        cfg: EdgeConfig,
        tls: tls::TlsMaterial,
        router: Arc<dyn Router>,
        hub: Arc<LocalHub>,
        accounts: Arc<dyn AccountStore>,
    ) -> Arc<Edge> {
        let conn_limiter = throttle::ConnLimiter::new(cfg.max_connections_per_ip);
        let auth_throttle = throttle::AuthThrottle::new(cfg.auth_failures_before_delay, cfg.auth_delay_max);
        Arc::new(Edge {
            cfg,
            tls,
            router,
            hub,
            accounts,
            conn_limiter,
            auth_throttle,
            next_conn: AtomicU64::new(1),
            edge_id: 0,
        })
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Accepts connections until `shutdown` turns true, then closes every open stream
    /// with `<system-shutdown/>` and waits for them.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, kind: ListenKind, mut shutdown: watch::Receiver<bool>) {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((sock, peer)) => {
                        let edge = self.clone();
                        let sd = shutdown.clone();
                        conns.spawn(async move { c2s::handle(edge, sock, peer, kind, sd).await });
                    }
                    Err(e) => {
                        tracing::warn!(event = "accept_failed", error = %e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
            conns.abort_all();
        }
    }
}

/// Binds a TCP listener with a clear error naming the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
