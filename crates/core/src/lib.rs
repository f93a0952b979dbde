//! The seams of Rookery: the `Router` trait the edge talks to, the `EdgeLink` the router
//! delivers through, the session registry, and the module API (`Module`, `Registrar`,
//! IQ handlers, the `ServerApi` a module may call).
//!
//! Owns: interfaces and the in-process implementations of the session registry and
//! edge link used by the single binary.
//! Must not touch: sockets, TLS, databases. No storage backend is named here; modules see
//! only `rookery_storage` traits (DESIGN §2).

pub mod component;
pub mod ext;
pub mod hooks;
pub mod hub;
pub mod module;
pub mod prio;
pub mod registry;
/// The registry contract as a check; test code only, so production builds do not compile it.
#[cfg(any(test, feature = "test-util"))]
pub mod registry_conformance;

use async_trait::async_trait;
use bytes::Bytes;
use rookery_jid::FullJid;
use rookery_stanza::{Envelope, StreamCondition};

pub use component::{Component, ComponentEntry, Components, Placement, PlacementTable};
pub use ext::{Extensions, RosterInterest, SessionExt};
pub use hooks::{Flow, Handler, HookError, HookResult, Hooks, OfflineOutcome, Origin, Outgoing};
pub use hub::LocalHub;
pub use module::{
    Built, Ctx, Dispatch, DomainScope, Features, Identity, IqHandler, IqRequest, IqResult, IqType, Module, ModuleInfo,
    Registrar, ServerApi, SetupError, Support, Target, XepSupport,
};
pub use registry::{MAX_DIRECTED, MemoryRegistry, RegistryError, SessionEntry, SessionRegistry, pick_resources};

/// Identifies one client connection on one edge.
pub type ConnId = u64;

/// Where a session is connected: the edge process and its connection id. In the single
/// binary `edge` is always 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    pub edge: u32,
    pub conn: ConnId,
}

/// What the router asks an edge to do with a connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Write these bytes (one or more complete stanzas) to the client.
    Stanza(Bytes),
    /// Close the stream with this error (e.g. `conflict` when the resource is taken over,
    /// `policy-violation` when the client does not read fast enough).
    Close(StreamCondition),
}

/// Delivery from the router to the edge holding a connection.
pub trait EdgeLink: Send + Sync + 'static {
    /// Queues `out` for the connection. Returns false when the connection is gone; the
    /// caller treats the session as offline.
    fn deliver(&self, loc: Location, out: Outbound) -> bool;
    /// How many more stanzas the connection's queue takes right now (0 when it is gone).
    /// Bulk senders (offline flush) pace themselves with it instead of overflowing the
    /// queue, which would close the connection.
    fn free_capacity(&self, loc: Location) -> usize;
    /// A session's extension slot changed (`None`: cleared). An edge that keeps its own
    /// copy of its sessions' state (to re-register them after a registry reset) stores
    /// it, opaquely; in one process the registry is the only copy and nothing is done.
    fn session_ext(&self, _loc: Location, _key: &str, _value: Option<Bytes>) {}
}

/// Why a bind failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("resource conflict")]
    Conflict,
    #[error("too many resources")]
    ResourceConstraint,
    #[error("internal error")]
    Internal,
}

/// The edge-facing side of the router. In the single binary this is a direct call; in a
/// cluster the same calls travel over gRPC. Calls for one session are made in order from
/// that session's task, which keeps RFC 6120 §10.1 ordering without locks.
#[async_trait]
pub trait Router: Send + Sync + 'static {
    /// RFC 6120 §7: registers a bound resource. If the full JID is already bound, the
    /// older session is replaced and told `conflict` (§7.7.2.2, "override" policy).
    async fn bind(&self, jid: &FullJid, loc: Location) -> Result<(), BindError>;
    /// A stanza from the bound session at `from`, its `from` already stamped. Stanzas
    /// from a session that has been replaced (resource conflict) are dropped.
    async fn route(&self, from: Location, env: Envelope);
    /// The session ended (graceful or not): unavailable presence goes out if it was
    /// available (RFC 6121 §4.5.2, §4.6.3) and its registry entry is removed.
    async fn unbind(&self, jid: &FullJid, loc: Location);
    /// An IQ from a stream that has not authenticated yet. Only in-band registration
    /// (XEP-0077 §3.1) is allowed there; the edge filters everything else.
    async fn preauth_iq(&self, req: IqRequest) -> IqResult;
    /// Stanzas that were queued for a session but never written because it ended. They
    /// are handled as if they had arrived after the session was gone: messages go to
    /// other resources or offline storage, IQ requests are answered with an error, so
    /// nothing accepted from a sender is silently lost.
    async fn undelivered(&self, to: &FullJid, stanza: Bytes);
}

/// Tells the other routers of a cluster that a user's cached data changed, so they drop
/// their copies. `topic` is the name a module publishes and listens for (`REMOTE_CHANGE`).
/// The single binary has one router and needs none.
pub trait ChangeBus: Send + Sync + 'static {
    fn publish(&self, topic: &str, user: &rookery_jid::BareJid);
}
