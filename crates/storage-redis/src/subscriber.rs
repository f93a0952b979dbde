//! The invalidation subscriber: one dedicated pub/sub connection per registry, listening
//! on `rk:inv` and dropping the named user's cached sessions.
//!
//! Owns: the subscriber task and when the cache may serve. Must not touch: the command
//! connection.
//!
//! The cache serves only while the subscription is up. On every (re)subscribe the cache
//! is emptied first-thing after the SUBSCRIBE is confirmed, because messages published
//! while we were away are lost (Redis pub/sub is fire-and-forget). A periodic PING
//! catches a connection that died silently. On Redis Cluster a plain PUBLISH reaches
//! every node, so one connection to any node suffices; the task rotates through the
//! configured URLs when one fails.

use crate::cache::Cache;
use crate::keys;
use futures::StreamExt;
use rookery_jid::BareJid;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const PING_EVERY: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Called for other routers' change notices (see `RedisRegistry::on_change`).
pub(crate) type ChangeListener = Arc<std::sync::OnceLock<OnChange>>;

/// What a router does with another router's change notice.
pub type OnChange = Arc<dyn Fn(&str, &BareJid) + Send + Sync>;

/// First byte of a change notice on the invalidation channel; no JID contains it (PRECIS
/// forbids control characters), so notices and session invalidations cannot be confused.
pub(crate) const CHANGE_MARK: u8 = 0x01;

/// Called when the subscription (re)starts: every cached per-user copy may be stale.
pub type OnReset = Arc<dyn Fn() + Send + Sync>;

pub(crate) struct Subscriber {
    pub(crate) listener: ChangeListener,
    pub(crate) reset_listener: Arc<std::sync::OnceLock<OnReset>>,
    pub(crate) urls: Vec<String>,
    pub(crate) cache: Arc<Cache>,
    pub(crate) timeout: Duration,
    /// True while the subscription is live (and the cache serves).
    pub(crate) live: watch::Sender<bool>,
}

impl Subscriber {
    pub(crate) async fn run(self) {
        let mut backoff = Duration::from_millis(50);
        for url in self.urls.iter().cycle() {
            match self.session(url).await {
                // We were subscribed: the outage may be short, retry quickly.
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(event = "registry_subscribe_failed", url = %url, error = %e);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            tokio::time::sleep(backoff).await;
        }
    }

    /// One subscription, until the connection fails. Err when it never got going.
    async fn session(&self, url: &str) -> Result<(), redis::RedisError> {
        let client = redis::Client::open(url)?;
        let pubsub = tokio::time::timeout(self.timeout, client.get_async_pubsub())
            .await
            .map_err(|_| timeout_error("connect"))??;
        let (mut sink, mut stream) = pubsub.split();
        tokio::time::timeout(self.timeout, sink.subscribe(keys::INVALIDATE))
            .await
            .map_err(|_| timeout_error("subscribe"))??;
        self.cache.reset(true);
        // Notices published while this subscription was down are lost: whoever caches
        // per-user data must drop all of it.
        if let Some(f) = self.reset_listener.get() {
            f();
        }
        self.live.send_replace(true);
        tracing::debug!(event = "registry_subscribed", url = %url);

        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let why = loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.invalidate(msg.get_payload_bytes()),
                    None => break "connection closed",
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(self.timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break "ping failed";
                    }
                }
            }
        };
        self.live.send_replace(false);
        self.cache.reset(false);
        tracing::warn!(event = "registry_invalidation_lost", url = %url, reason = why);
        Ok(())
    }

    fn invalidate(&self, payload: &[u8]) {
        if let [CHANGE_MARK, len, rest @ ..] = payload {
            // CHANGE_MARK, topic length, topic, user (see `RedisRegistry::publish`).
            let (topic, user) = rest.split_at((*len as usize).min(rest.len()));
            let topic = std::str::from_utf8(topic).ok();
            let user = std::str::from_utf8(user).ok().and_then(|s| BareJid::parse(s).ok());
            if let (Some(topic), Some(user), Some(f)) = (topic, user, self.listener.get()) {
                f(topic, &user);
            }
            return;
        }
        match std::str::from_utf8(payload).ok().and_then(|s| BareJid::parse(s).ok()) {
            Some(user) => self.cache.invalidate(&user),
            // Not from us, or garbled: forgetting everything is always safe.
            None => self.cache.reset(true),
        }
    }
}

fn timeout_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}
