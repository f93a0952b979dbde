//! rookery-cluster: the transport between edge and router processes (docs/cluster.md).
//!
//! - Edge side: [`RemoteRouter`] implements `rookery_core::Router`. It keeps one gRPC
//!   stream (`proto/rookery/v1/cluster.proto`) open to every router of the
//!   [`Membership`], picks the router for each user by rendezvous hashing of the bare JID
//!   ([`Ring`]), and writes what routers deliver into the edge's own `EdgeLink`.
//! - Router side: [`RouterServer`] accepts those streams and calls the `LocalRouter`;
//!   [`ClusterLink`] is the router's `EdgeLink`, one bounded queue per edge.
//!
//! Owns: connections between processes, the ring, membership, backpressure between
//! processes, draining, the resync request.
//! Must not touch: XMPP rules (services/router), client sockets (services/edge), the
//! session registry (handed to the coordinator through [`ClusterEvents`]). It depends on
//! no `services/*` crate; the binary wires the pieces together.
//!
//! Specifications: RFC 6120 §10.1 (in-order processing between two entities) drives the
//! routing; §4.9.3 stream errors travel in `Close` frames; RFC 6121 §4 presence state is
//! what `SessionState` re-registers.

pub mod edge;
pub mod membership;
pub mod ring;
pub mod server;
mod session;

pub use edge::{EdgeCounts, RemoteRouter, RemoteRouterConfig, RouterStatus};
pub use membership::{Membership, RouterEndpoint, StaticMembership};
pub use ring::{Ring, RouterId};
pub use rookery_proto::{MIN_PROTO_VERSION, PROTO_VERSION};
pub use server::{ClusterEvents, ClusterLink, RouterServer, RouterServerConfig};

/// Resolves once the flag is true (or its sender is gone, which means the same: the
/// owner stopped). The borrow of the value ends here, so callers stay `Send`.
pub(crate) async fn until_true(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Errors of the transport that reach a caller (most are handled inside: reconnects).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid router address {uri:?}: {reason} (expected http://host:port)")]
    Uri { uri: String, reason: String },
    #[error("cluster gRPC server on {addr} failed: {source}")]
    Serve { addr: String, source: tonic::transport::Error },
}
