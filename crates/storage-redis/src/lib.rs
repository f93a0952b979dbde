//! The cluster's session registry in Redis: which full JIDs are bound on which edge
//! connection, with their presence state (RFC 6121 §4), carbons flag (XEP-0280 §4) and
//! block-list interest (XEP-0191 §3.3), shared by every stateless router worker.
//!
//! Owns: `RedisRegistry` (the `rookery_core::SessionRegistry` for cluster mode), its
//! local cache kept coherent by pub/sub invalidation, and the edge liveness and
//! dead-edge purge primitives (`heartbeat`, `dead_edges`, `claim_purge`, `finish_purge`,
//! `resync`) that the cluster code drives.
//! Must not touch: XMPP routing rules (the router decides what a lookup means), gRPC,
//! durable data (accounts, rosters, archives live in the store crates).
//!
//! Data layout (docs/cluster.md, "Session registry in Redis"):
//! - `rk:{<bare jid>}:s` hash, resource → encoded `SessionEntry` (see `codec`);
//! - `rk:edge:{<edge>}:sessions` set of "<full jid>\n<conn>", a superset of the sessions
//!   on that edge, which a purge walks when the edge dies;
//! - `rk:edges` sorted set of heartbeats, `rk:edge:{<edge>}:epoch|purged|purge-lock`,
//!   `rk:gen` (dataset generation), `rk:count`, and the channel `rk:inv`.
//!
//! Consistency: reads are served from the local cache when it holds the user. A write
//! elsewhere reaches this cache as an invalidation a little later (one pub/sub hop, well
//! under a millisecond on a healthy network), so for that window a router may route to
//! a session that has just closed, or miss one that has just bound. Both are safe for
//! routing: a stanza sent to a closed connection is handed back by its edge as
//! undelivered and re-routed (RFC 6121 §8.5: other resources or offline storage), and a
//! just-bound session has not sent initial presence yet, so it is not yet eligible for
//! bare-JID messages (RFC 6121 §8.5.2.1.1); a message to its full JID in that window is
//! handled as for an unknown resource (§8.5.3.2). Writes themselves never go through the cache:
//! they are compare-and-set scripts on the authoritative copy in Redis.
//! Requires Redis ≥ 7.0 (`SET ... NX GET`).

mod cache;
mod codec;
mod conn;
mod keys;
mod registry;
mod scripts;
mod subscriber;

pub use codec::DecodeError;
pub use registry::{Heartbeat, RedisRegistry};
pub use subscriber::{OnChange, OnReset};

use std::time::Duration;

/// How to reach Redis and how to cache.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port` URLs: exactly one server, or any nodes of a Redis Cluster.
    pub urls: Vec<String>,
    /// Talk Redis Cluster protocol (slot routing, MOVED/ASK handling).
    pub cluster: bool,
    /// Users whose session lists are cached locally; 0 turns the cache off.
    pub cache_capacity: usize,
    pub connect_timeout: Duration,
    /// A request without a reply after this long fails (reads then answer "no sessions").
    pub response_timeout: Duration,
    /// How long a won purge keeps other callers from purging the same edge again.
    pub purge_lock: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            cache_capacity: 100_000,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
            purge_lock: Duration::from_secs(60),
        }
    }
}

/// Failures of the Redis registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Redis registry configuration: {0}")]
    Config(String),
    #[error("cannot connect to Redis at {urls}: {source}")]
    Connect { urls: String, source: redis::RedisError },
    #[error("Redis request failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from Redis: {0}")]
    Reply(String),
}

impl From<Error> for rookery_core::RegistryError {
    fn from(e: Error) -> Self {
        rookery_core::RegistryError(e.to_string())
    }
}
