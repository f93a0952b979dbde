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
pub mod csi;
pub mod negotiate;
pub mod resume;
pub mod sm;
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

/// The specifications the edge implements (listed in docs/compliance.md).
pub const SPECS: rookery_core::ModuleInfo = rookery_core::ModuleInfo {
    depends: &[],
    name: "edge",
    specs: &[
        rookery_core::XepSupport {
            spec: "RFC 6120",
            version: "2011",
            support: rookery_core::Support::Full,
            note: "c2s: STARTTLS (mandatory), SASL, resource binding with override on conflict, stream and stanza errors; s2s not yet",
        },
        rookery_core::XepSupport {
            spec: "RFC 7590",
            version: "2015",
            support: rookery_core::Support::Full,
            note: "TLS 1.2/1.3 only (rustls)",
        },
        rookery_core::XepSupport {
            spec: "RFC 7622",
            version: "2015",
            support: rookery_core::Support::Full,
            note: "PRECIS JIDs; `jid-malformed` for bad addresses",
        },
        rookery_core::XepSupport {
            spec: "RFC 5802",
            version: "2010",
            support: rookery_core::Support::Full,
            note: "SCRAM-SHA-1(-PLUS); stored keys only",
        },
        rookery_core::XepSupport {
            spec: "RFC 7677",
            version: "2015",
            support: rookery_core::Support::Full,
            note: "SCRAM-SHA-256(-PLUS); SCRAM-SHA-512(-PLUS) likewise",
        },
        rookery_core::XepSupport {
            spec: "RFC 9266",
            version: "2022",
            support: rookery_core::Support::Full,
            note: "tls-exporter channel binding (TLS 1.3)",
        },
        rookery_core::XepSupport {
            spec: "RFC 5929",
            version: "2010",
            support: rookery_core::Support::Partial,
            note: "tls-server-end-point only (tls-unique is not offered)",
        },
        rookery_core::XepSupport {
            spec: "RFC 4616",
            version: "2006",
            support: rookery_core::Support::Full,
            note: "PLAIN, only after TLS",
        },
        rookery_core::XepSupport {
            spec: "XEP-0368",
            version: "1.1.0",
            support: rookery_core::Support::Full,
            note: "direct TLS listener with ALPN xmpp-client",
        },
        rookery_core::XepSupport {
            spec: "XEP-0440",
            version: "1.0.0",
            support: rookery_core::Support::Full,
            note: "channel-binding types advertised in stream features",
        },
        rookery_core::XepSupport {
            spec: "XEP-0198",
            version: "1.6.2",
            support: rookery_core::Support::Partial,
            note: "enable, acks both ways (h modulo 2^32), resumption on the same edge with <failed h/> after the end, \
                   unacknowledged stanzas rerouted with a delay; not yet: resumption on another edge of a cluster",
        },
        rookery_core::XepSupport {
            spec: "XEP-0352",
            version: "1.0.0",
            support: rookery_core::Support::Full,
            note: "presence, chat states, receipts and markers held and coalesced while inactive; messages with a \
                   body or encrypted payload flush at once",
        },
    ],
};

/// Edge settings taken from the configuration.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// This edge's number in the cluster (`Location::edge` of its connections); 0 in the
    /// single binary.
    pub edge_id: u32,
    /// First connection id handed out (ids must not repeat across an edge id's restarts
    /// in a cluster); 1 in the single binary.
    pub first_conn_id: u64,
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
    /// XEP-0198 stream management.
    pub sm: SmConfig,
    /// XEP-0352: stanzas held back for an inactive client before they are flushed anyway;
    /// 0 switches client state indication off.
    pub csi_max_held: usize,
}

/// XEP-0198 settings.
#[derive(Debug, Clone)]
pub struct SmConfig {
    /// Offer stream management.
    pub enabled: bool,
    /// How long a detached session waits for its client when the client names no `max`;
    /// zero: sessions are not resumable.
    pub resume_timeout: Duration,
    /// The longest resumption time granted, whatever the client asks.
    pub max_resume_timeout: Duration,
}

impl Default for SmConfig {
    fn default() -> Self {
        SmConfig {
            enabled: true,
            resume_timeout: Duration::from_secs(300),
            max_resume_timeout: Duration::from_secs(3600),
        }
    }
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
    /// What every client negotiation shares (namespace `jabber:client`).
    pub negotiation: Arc<negotiate::Settings>,
    next_conn: AtomicU64,
    /// Edge id in the cluster (0 in the single binary).
    pub edge_id: u32,
    /// XEP-0198 sessions that can be resumed here.
    pub resumable: resume::Resumable,
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
        let negotiation = Arc::new(negotiate::Settings {
            stream_ns: rookery_stanza::ns::CLIENT,
            domains: cfg.domains.clone(),
            allow_registration: cfg.allow_registration,
            fake_secret: cfg.fake_secret.clone(),
            tls_server_end_point: tls.end_point.clone(),
            stream_management: cfg.sm.enabled,
            client_state_indication: cfg.csi_max_held > 0,
        });
        // A late resume learns the `h` it reached for as long as it could have resumed,
        // and at least ten minutes.
        let resumable = resume::Resumable::new(cfg.sm.max_resume_timeout.max(Duration::from_secs(600)));
        Arc::new(Edge {
            negotiation,
            tls,
            router,
            hub,
            accounts,
            conn_limiter,
            auth_throttle,
            next_conn: AtomicU64::new(cfg.first_conn_id.max(1)),
            edge_id: cfg.edge_id,
            resumable,
            cfg,
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
    TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
