//! One handle over a single Redis server (`ConnectionManager`) or a Redis Cluster
//! (`ClusterConnection`); both reconnect by themselves. Counts every request sent.
//!
//! Owns: connecting, running commands and scripts, the round-trip counter.
//! Must not touch: key names or encodings.

use crate::scripts::Lua;
use crate::{Error, RedisConfig};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisResult, ToRedisArgs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Clone)]
enum Backend {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

pub(crate) struct Conn {
    backend: Backend,
    ops: AtomicU64,
}

impl Conn {
    pub(crate) async fn connect(cfg: &RedisConfig) -> Result<Conn, Error> {
        let urls = cfg.urls.join(", ");
        let fail = |source| Error::Connect { urls: urls.clone(), source };
        let backend = if cfg.cluster {
            let client = redis::cluster::ClusterClient::builder(cfg.urls.iter().map(String::as_str))
                .connection_timeout(cfg.connect_timeout)
                .response_timeout(cfg.response_timeout)
                .retries(3)
                .build()
                .map_err(fail)?;
            Backend::Cluster(client.get_async_connection().await.map_err(fail)?)
        } else {
            let [url] = cfg.urls.as_slice() else {
                return Err(Error::Config(format!(
                    "redis: `urls` must name exactly one server unless `cluster = true` (got {})",
                    cfg.urls.len()
                )));
            };
            let client = redis::Client::open(url.as_str()).map_err(fail)?;
            // Few, short retries: a request waits for the reconnect, and a read during an
            // outage should fail fast (and fall back to "no sessions") rather than hang.
            let mcfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(cfg.connect_timeout))
                .set_response_timeout(Some(cfg.response_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            Backend::Single(ConnectionManager::new_with_config(client, mcfg).await.map_err(fail)?)
        };
        Ok(Conn { backend, ops: AtomicU64::new(0) })
    }

    pub(crate) fn clustered(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// Requests sent to Redis so far (a script call is one; a reload after NOSCRIPT two).
    pub(crate) fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        self.ops.fetch_add(1, Ordering::Relaxed);
        match self.backend.clone() {
            Backend::Single(mut c) => cmd.query_async(&mut c).await,
            Backend::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    /// Runs a script by its SHA1, sending the source once when the server does not have it
    /// (first use, or after a Redis restart emptied the script cache).
    pub(crate) async fn eval<T: FromRedisValue>(
        &self,
        lua: &Lua,
        keys: &[&str],
        args: impl ToRedisArgs,
    ) -> RedisResult<T> {
        let build = |name: &str, body: &str| {
            let mut c = redis::cmd(name);
            c.arg(body).arg(keys.len()).arg(keys).arg(&args);
            c
        };
        match self.query(&build("EVALSHA", lua.sha())).await {
            Err(e) if e.code() == Some("NOSCRIPT") => self.query(&build("EVAL", lua.src)).await,
            other => other,
        }
    }
}
