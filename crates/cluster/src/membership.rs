//! Which routers exist: the list an edge keeps one stream open to each of.
//!
//! `StaticMembership` serves a fixed list (configuration, tests). A Kubernetes
//! implementation that follows the routers' EndpointSlices will implement the same trait
//! later (docs/cluster.md, "Membership").
//!
//! Must not touch: connections and routing decisions (`RemoteRouter` owns those).

use crate::ring::RouterId;
use std::net::SocketAddr;
use tokio::sync::watch;

/// One router: its stable id (ring key) and the address of its gRPC listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterEndpoint {
    pub id: RouterId,
    /// `http://host:port` (no TLS inside the cluster; see docs/cluster.md, "Security").
    pub uri: String,
}

impl RouterEndpoint {
    pub fn new(id: &str, uri: impl Into<String>) -> Self {
        RouterEndpoint { id: RouterId::new(id), uri: uri.into() }
    }

    pub fn from_addr(id: &str, addr: SocketAddr) -> Self {
        RouterEndpoint::new(id, format!("http://{addr}"))
    }
}

/// A source of the current router list. The receiver always holds the whole list; an
/// edge reconciles its streams whenever it changes.
pub trait Membership: Send + Sync + 'static {
    fn routers(&self) -> watch::Receiver<Vec<RouterEndpoint>>;
}

/// A list given up front. `set` replaces it (used by tests and by a configuration reload).
pub struct StaticMembership {
    tx: watch::Sender<Vec<RouterEndpoint>>,
}

impl StaticMembership {
    pub fn new(routers: Vec<RouterEndpoint>) -> Self {
        StaticMembership { tx: watch::Sender::new(routers) }
    }

    pub fn set(&self, routers: Vec<RouterEndpoint>) {
        self.tx.send_replace(routers);
    }
}

impl Membership for StaticMembership {
    fn routers(&self) -> watch::Receiver<Vec<RouterEndpoint>> {
        self.tx.subscribe()
    }
}
