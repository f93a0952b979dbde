//! `RedisRegistry`: the `SessionRegistry` over Redis, and the edge liveness / purge
//! primitives the cluster code uses to clean up after an edge that died.
//!
//! Owns: the order of Redis operations for each registry call and the cache discipline
//! (reads fill it, every write drops the user's entry here and publishes it elsewhere).
//! Must not touch: what the router does with sessions (presence broadcast on purge etc.).
//!
//! On a single server each session write is one atomic script that also maintains the
//! edge set and the counter. On Redis Cluster those live in other slots, so the script
//! covers the user's hash only and the edge set is updated around it: the new member is
//! added before the hash is written and the old one removed after, so the edge set is
//! always a superset of that edge's sessions. A stale member is harmless: the purge
//! unbinds with `remove(jid, loc)`, which deletes only a session still at `loc`.

use crate::cache::{Cache, Sessions};
use crate::conn::Conn;
use crate::subscriber::Subscriber;
use crate::{Error, RedisConfig, codec, keys, scripts};
use futures::StreamExt;
use rookery_core::{Location, RegistryError, SessionEntry, SessionRegistry};
use rookery_jid::{BareJid, FullJid};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// How often `update` retries its compare-and-set when other writers got in between.
const UPDATE_ATTEMPTS: usize = 5;
/// Concurrent requests while re-inserting an edge's sessions after a registry reset.
const RESYNC_CONCURRENCY: usize = 32;

/// What a heartbeat learned about the edge and the registry. `Purged` wins over
/// `RegistryReset`: a purged epoch is abandoned anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Recorded; nothing happened meanwhile.
    Ok,
    /// This edge's epoch was declared dead and its sessions purged (or are about to be):
    /// its connections must be closed and the edge must continue under a new epoch.
    Purged,
    /// Redis lost its data since this registry last looked (restart without
    /// persistence, failover to an empty replica): call `resync` with the live sessions.
    RegistryReset,
}

pub struct RedisRegistry {
    listener: crate::subscriber::ChangeListener,
    reset_listener: Arc<std::sync::OnceLock<crate::subscriber::OnReset>>,
    conn: Arc<Conn>,
    cache: Arc<Cache>,
    live: watch::Receiver<bool>,
    subscriber: tokio::task::JoinHandle<()>,
    /// The `rk:gen` value seen last.
    generation: Mutex<Vec<u8>>,
    /// Per edge, the epoch whose heartbeat was last accepted.
    accepted: Mutex<HashMap<u32, u64>>,
    purge_lock: Duration,
}

impl Drop for RedisRegistry {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

enum Put {
    Written(Option<SessionEntry>),
    /// `keep_existing` found an entry and left it alone.
    Kept,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A random hex token (dataset generation, purge lock owner).
fn token() -> String {
    let mut raw = [0u8; 16];
    if getrandom::fill(&mut raw).is_err() {
        // Uniqueness, not secrecy, is what matters here.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        raw[..16].copy_from_slice(&t.as_nanos().to_be_bytes());
        raw[..4].copy_from_slice(&std::process::id().to_be_bytes());
    }
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisRegistry {
    /// Connects, reads the dataset generation and starts the invalidation subscriber
    /// (waiting up to `connect_timeout` for it; until it is up, reads bypass the cache).
    pub async fn connect(cfg: RedisConfig) -> Result<RedisRegistry, Error> {
        if cfg.urls.is_empty() {
            return Err(Error::Config("redis: `urls` is empty; name at least one redis://host:port".into()));
        }
        let conn = Conn::connect(&cfg).await?;
        let generation = Self::read_generation(&conn).await?;
        let cache = Arc::new(Cache::new(cfg.cache_capacity));
        let listener: crate::subscriber::ChangeListener = Arc::default();
        let reset_listener: Arc<std::sync::OnceLock<crate::subscriber::OnReset>> = Arc::default();
        let (tx, mut live) = watch::channel(false);
        let subscriber = tokio::spawn(
            Subscriber {
                listener: listener.clone(),
                reset_listener: reset_listener.clone(),
                urls: cfg.urls.clone(),
                cache: cache.clone(),
                timeout: cfg.connect_timeout,
                live: tx,
            }
            .run(),
        );
        if tokio::time::timeout(cfg.connect_timeout, live.wait_for(|v| *v)).await.is_err() {
            tracing::warn!(event = "registry_subscribe_pending", urls = %cfg.urls.join(", "));
        }
        Ok(RedisRegistry {
            listener,
            reset_listener,
            conn: Arc::new(conn),
            cache,
            live,
            subscriber,
            generation: Mutex::new(generation),
            accepted: Mutex::new(HashMap::new()),
            purge_lock: cfg.purge_lock,
        })
    }

    /// Redis requests sent by this registry so far (reads served from the cache send
    /// none; the invalidation subscriber's traffic is not counted).
    pub fn ops(&self) -> u64 {
        self.conn.ops()
    }

    /// Whether the invalidation subscription is up, so reads may be served locally.
    pub fn cache_live(&self) -> bool {
        *self.live.borrow() && self.cache.enabled()
    }

    /// Users whose session lists are cached right now.
    pub fn cached_users(&self) -> usize {
        self.cache.len()
    }

    /// `rk:gen`, created with a fresh random value if this dataset has none yet.
    async fn read_generation(conn: &Conn) -> Result<Vec<u8>, Error> {
        let fresh = token();
        let prev: Option<Vec<u8>> =
            conn.query(redis::cmd("SET").arg(keys::GENERATION).arg(&fresh).arg("NX").arg("GET")).await?;
        Ok(prev.unwrap_or_else(|| fresh.into_bytes()))
    }

    /// The user's sessions from the cache, or from Redis (filling the cache).
    async fn load(&self, user: &BareJid) -> Result<Sessions, Error> {
        if let Some(v) = self.cache.get(user) {
            return Ok(v);
        }
        let reservation = self.cache.reserve(user);
        let values: Vec<Vec<u8>> = self.conn.query(redis::cmd("HVALS").arg(keys::user(user))).await?;
        let list: Sessions = values.iter().filter_map(|v| decode_logged(user, v)).collect();
        if let Some(token) = reservation {
            self.cache.fill(user, token, list.clone());
        }
        Ok(list)
    }

    /// `load` for the read-only calls: failures are logged and read as "no sessions".
    async fn read(&self, user: &BareJid) -> Sessions {
        match self.load(user).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(event = "registry_read_failed", user = %user, error = %e);
                Arc::from(Vec::new())
            }
        }
    }

    /// Writes `entry`; with `keep_existing`, only if its full JID has no entry yet.
    async fn put(&self, entry: &SessionEntry, keep_existing: bool) -> Result<Put, Error> {
        let bare = entry.jid.to_bare();
        let user_key = keys::user(&bare);
        let edge_key = keys::edge_sessions(entry.loc.edge);
        let member = keys::member(&entry.jid, entry.loc.conn);
        let args = (
            entry.jid.resource(),
            codec::encode(entry),
            &member,
            bare.as_str(),
            if keep_existing { "1" } else { "0" },
            entry.jid.as_str(),
        );
        let clustered = self.conn.clustered();
        let reply: redis::RedisResult<(i64, Option<Vec<u8>>)> = if clustered {
            let sadd = self.conn.query::<i64>(redis::cmd("SADD").arg(&edge_key).arg(&member)).await;
            match sadd {
                Ok(_) => self.conn.eval(&scripts::INSERT, &[&user_key], args).await,
                Err(e) => Err(e),
            }
        } else {
            self.conn.eval(&scripts::INSERT, &[&user_key, &edge_key, keys::COUNT], args).await
        };
        // Whatever happened, this instance must not keep serving what it had cached.
        self.cache.invalidate(&bare);
        let (written, other) = reply?;
        let other = other.and_then(|v| decode_logged(&bare, &v));
        if !clustered {
            return Ok(if written == 1 { Put::Written(other) } else { Put::Kept });
        }
        // Redis Cluster: finish the edge-set and counter bookkeeping the script could not.
        let stale = match (&other, written == 1) {
            (Some(o), true) if o.loc != entry.loc => Some((o.loc, &entry.jid)),
            (Some(o), false) if o.loc != entry.loc => Some((entry.loc, &entry.jid)),
            _ => None,
        };
        if let Some((loc, jid)) = stale {
            let cmd = redis::cmd("SREM").arg(keys::edge_sessions(loc.edge)).arg(keys::member(jid, loc.conn)).clone();
            self.conn.query::<i64>(&cmd).await?;
        }
        if written == 1 && other.is_none() {
            self.conn.query::<i64>(redis::cmd("INCR").arg(keys::COUNT)).await?;
        }
        Ok(if written == 1 { Put::Written(other) } else { Put::Kept })
    }

    async fn try_remove(&self, jid: &FullJid, loc: Location) -> Result<Option<SessionEntry>, Error> {
        let bare = jid.to_bare();
        let user_key = keys::user(&bare);
        let edge_key = keys::edge_sessions(loc.edge);
        let member = keys::member(jid, loc.conn);
        let args = (jid.resource(), loc.edge, loc.conn, &member, bare.as_str());
        let clustered = self.conn.clustered();
        let reply: redis::RedisResult<Option<Vec<u8>>> = if clustered {
            self.conn.eval(&scripts::REMOVE, &[&user_key], args).await
        } else {
            self.conn.eval(&scripts::REMOVE, &[&user_key, &edge_key, keys::COUNT], args).await
        };
        self.cache.invalidate(&bare);
        let removed = reply?;
        if clustered {
            self.conn.query::<i64>(redis::cmd("SREM").arg(&edge_key).arg(&member)).await?;
            if removed.is_some() {
                self.conn.query::<i64>(redis::cmd("DECR").arg(keys::COUNT)).await?;
            }
        }
        Ok(removed.and_then(|v| decode_logged(&bare, &v)))
    }

    async fn try_update(
        &self,
        jid: &FullJid,
        f: &mut (dyn for<'e> FnMut(&'e mut SessionEntry) + Send),
    ) -> Result<bool, Error> {
        let bare = jid.to_bare();
        let user_key = keys::user(&bare);
        // Start from the cached entry when there is one (re-encoding is deterministic, so
        // it matches the stored bytes unless it is stale, which the compare-and-set
        // catches); otherwise read it.
        let cached = self.cache.get(&bare).and_then(|l| l.iter().find(|e| &e.jid == jid).map(codec::encode));
        let from_cache = cached.is_some();
        let mut current = match cached {
            Some(v) => Some(v),
            None => self.conn.query(redis::cmd("HGET").arg(&user_key).arg(jid.resource())).await?,
        };
        // The session the update is for: fixed by the first authoritative read.
        let mut session: Option<Location> = None;
        for attempt in 0..UPDATE_ATTEMPTS {
            let authoritative = attempt > 0 || !from_cache;
            let Some(old) = current else { return Ok(false) };
            let Some(mut e) = decode_logged(&bare, &old) else { return Ok(false) };
            if authoritative {
                match session {
                    Some(loc) if loc != e.loc => return Ok(false),
                    _ => session = Some(e.loc),
                }
            }
            let (jid0, loc0) = (e.jid.clone(), e.loc);
            f(&mut e);
            // An update changes a session's state, never which session it is.
            (e.jid, e.loc) = (jid0, loc0);
            let new = codec::encode(&e);
            if new == old && authoritative {
                return Ok(true);
            }
            let (done, now): (i64, Option<Vec<u8>>) =
                self.conn.eval(&scripts::UPDATE, &[&user_key], (jid.resource(), &old, &new, bare.as_str())).await?;
            if done == 1 {
                self.cache.invalidate(&bare);
                return Ok(true);
            }
            current = now;
        }
        tracing::warn!(event = "registry_update_contended", jid = %jid, attempts = UPDATE_ATTEMPTS);
        Ok(false)
    }

    /// Records that `edge` is alive under `epoch` and reports what happened meanwhile.
    ///
    /// `ttl` is how long the epoch record outlives the last heartbeat. Choose it several
    /// times the heartbeat interval and above the dead-edge timeout plus the purge scan
    /// interval: an epoch accepted before whose record has expired is reported `Purged`,
    /// since the edge was silent long enough to be purged.
    pub async fn heartbeat(&self, edge: u32, epoch: u64, ttl: Duration) -> Result<Heartbeat, Error> {
        let generation = Self::read_generation(&self.conn).await?;
        let reset = {
            let mut g = lock(&self.generation);
            let changed = *g != generation;
            *g = generation;
            changed
        };
        if reset {
            // Nothing accepted before the reset is on record any more, and cached lists
            // describe data that is gone (the subscriber normally clears them already).
            lock(&self.accepted).clear();
            self.cache.clear();
            tracing::warn!(event = "registry_reset_detected", edge);
        }
        let known = lock(&self.accepted).get(&edge) == Some(&epoch);
        let verdict: String = self
            .conn
            .eval(
                &scripts::HEARTBEAT,
                &[&keys::edge_purged(edge), &keys::edge_epoch(edge)],
                (epoch, millis(ttl), if known { "1" } else { "0" }),
            )
            .await?;
        match verdict.as_str() {
            "ok" => {}
            "purged" => {
                lock(&self.accepted).remove(&edge);
                return Ok(Heartbeat::Purged);
            }
            other => return Err(Error::Reply(format!("heartbeat script answered {other:?}"))),
        }
        self.conn.eval::<i64>(&scripts::TOUCH_EDGE, &[keys::EDGES], edge).await?;
        lock(&self.accepted).insert(edge, epoch);
        Ok(if reset { Heartbeat::RegistryReset } else { Heartbeat::Ok })
    }

    /// Whether Redis lost its data since this registry last looked (the baseline is the
    /// generation seen when it connected). Routers poll it: on a reset they ask the edges to re-send their live
    /// sessions (`ClusterLink::request_resync`), which come back through `resync`/`insert`.
    pub async fn registry_reset(&self) -> Result<bool, Error> {
        let generation = Self::read_generation(&self.conn).await?;
        let mut g = lock(&self.generation);
        let changed = *g != generation;
        *g = generation;
        drop(g);
        if changed {
            lock(&self.accepted).clear();
            self.cache.clear();
        }
        Ok(changed)
    }

    /// Whether `edge` is on record as alive or not yet purged (in the edges set). A
    /// restarted edge process waits until its previous incarnation is purged before it
    /// heartbeats, so the old connections' sessions cannot linger as ghosts.
    pub async fn is_registered(&self, edge: u32) -> Result<bool, Error> {
        let score: Option<f64> = self.conn.query(redis::cmd("ZSCORE").arg(keys::EDGES).arg(edge)).await?;
        Ok(score.is_some())
    }

    /// A cleanly stopped edge (all its sessions unbound) leaves the edges set, so nobody
    /// needs to purge it and a restart does not wait.
    pub async fn deregister(&self, edge: u32) -> Result<(), Error> {
        let _: i64 = self.conn.query(redis::cmd("ZREM").arg(keys::EDGES).arg(edge)).await?;
        Ok(())
    }

    /// Registers what to do when another router reports a change (cluster-wide cache
    /// invalidation of per-user data, `rookery_core::ChangeBus`). Set once.
    pub fn on_change(&self, f: crate::subscriber::OnChange) {
        let _ = self.listener.set(f);
    }

    /// Registers what to do when change notices may have been missed (the subscription
    /// restarted): drop every cached per-user copy. Set once.
    pub fn on_reset(&self, f: crate::subscriber::OnReset) {
        let _ = self.reset_listener.set(f);
    }

    /// Edges whose last heartbeat (by the Redis server's clock) is older than `timeout`.
    pub async fn dead_edges(&self, timeout: Duration) -> Result<Vec<u32>, Error> {
        let ids: Vec<String> = self.conn.eval(&scripts::DEAD_EDGES, &[keys::EDGES], millis(timeout)).await?;
        Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
    }

    /// Takes over the purge of a dead edge. Exactly one caller cluster-wide gets
    /// `Some((epoch, sessions))` (until `purge_lock` expires); it must unbind each
    /// session through the router (so contacts get unavailable presence, RFC 6121
    /// §4.5.2) and then call `finish_purge`. The epoch is the one the edge last sent
    /// (0 if its record expired); its next heartbeat with that epoch answers `Purged`.
    pub async fn claim_purge(&self, edge: u32) -> Result<Option<(u64, Vec<(FullJid, Location)>)>, Error> {
        let claimed: Option<(String, Vec<Vec<u8>>)> = self
            .conn
            .eval(
                &scripts::CLAIM_PURGE,
                &[
                    &keys::edge_purge_lock(edge),
                    &keys::edge_epoch(edge),
                    &keys::edge_purged(edge),
                    &keys::edge_sessions(edge),
                    &keys::edge_purging(edge),
                ],
                (token(), millis(self.purge_lock)),
            )
            .await?;
        let Some((epoch, members)) = claimed else { return Ok(None) };
        let epoch = epoch.parse().map_err(|_| Error::Reply(format!("edge {edge} epoch {epoch:?} is not a number")))?;
        let sessions = members
            .iter()
            .filter_map(|m| match keys::parse_member(m) {
                Some((jid, conn)) => Some((jid, Location { edge, conn })),
                None => {
                    tracing::warn!(event = "registry_member_corrupt", edge, member = %String::from_utf8_lossy(m));
                    None
                }
            })
            .collect();
        // The edge stays listed as dead until `finish_purge`: a caller that dies before
        // then leaves it there, and the next claim (after the lock expires) picks the same
        // sessions up again from the purging set.
        Ok(Some((epoch, sessions)))
    }

    /// Once every claimed session was unbound: forgets the edge (a restarted edge with the
    /// same id may then register), drops the purging set and releases the purge lock so a
    /// later death of the same edge id is purged without waiting for it to expire.
    pub async fn finish_purge(&self, edge: u32) -> Result<(), Error> {
        self.conn.query::<i64>(redis::cmd("ZREM").arg(keys::EDGES).arg(edge)).await?;
        self.conn
            .query::<i64>(redis::cmd("DEL").arg(keys::edge_purging(edge)).arg(keys::edge_purge_lock(edge)))
            .await?;
        Ok(())
    }

    /// Re-inserts live sessions after `Heartbeat::RegistryReset`. A full JID that was
    /// bound again meanwhile keeps its newer entry. Returns how many were inserted.
    pub async fn resync(&self, entries: impl IntoIterator<Item = SessionEntry>) -> Result<usize, Error> {
        let mut puts = futures::stream::iter(entries)
            .map(|e| async move { self.put(&e, true).await })
            .buffer_unordered(RESYNC_CONCURRENCY);
        let mut inserted = 0;
        while let Some(r) = puts.next().await {
            if let Put::Written(_) = r? {
                inserted += 1;
            }
        }
        Ok(inserted)
    }
}

fn decode_logged(user: &BareJid, v: &[u8]) -> Option<SessionEntry> {
    match codec::decode(v) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(event = "registry_entry_corrupt", user = %user, error = %e);
            None
        }
    }
}

#[async_trait::async_trait]
impl SessionRegistry for RedisRegistry {
    async fn insert(&self, entry: SessionEntry) -> Result<Option<SessionEntry>, RegistryError> {
        match self.put(&entry, false).await {
            Ok(Put::Written(old)) => Ok(old),
            Ok(Put::Kept) => Err(RegistryError("session insert was refused".into())),
            Err(e) => {
                tracing::warn!(event = "registry_write_failed", op = "insert", jid = %entry.jid, error = %e);
                Err(e.into())
            }
        }
    }

    async fn remove(&self, jid: &FullJid, loc: Location) -> Option<SessionEntry> {
        self.try_remove(jid, loc).await.unwrap_or_else(|e| {
            tracing::warn!(event = "registry_write_failed", op = "remove", jid = %jid, error = %e);
            None
        })
    }

    async fn get(&self, jid: &FullJid) -> Option<SessionEntry> {
        self.read(&jid.to_bare()).await.iter().find(|e| &e.jid == jid).cloned()
    }

    async fn is_current(&self, jid: &FullJid, loc: Location) -> bool {
        match self.load(&jid.to_bare()).await {
            Ok(list) => list.iter().any(|e| &e.jid == jid && e.loc == loc),
            // While Redis cannot answer, a bound session's stanzas are still routed: the
            // edge stamped their sender, and refusing them would drop every stanza of every
            // client for the length of the outage. Only a session replaced during the
            // outage could act once more, which RFC 6120 §7.7.2.2 tolerates less than loss.
            Err(e) => {
                tracing::warn!(event = "registry_read_failed", jid = %jid, error = %e);
                true
            }
        }
    }

    async fn sessions(&self, user: &BareJid) -> Vec<SessionEntry> {
        self.read(user).await.to_vec()
    }

    async fn sessions_with(&self, user: &BareJid, key: &str) -> Vec<SessionEntry> {
        self.read(user).await.iter().filter(|e| e.ext.contains(key)).cloned().collect()
    }

    /// From the local cache, when it holds the user.
    fn sessions_with_now(&self, user: &BareJid, key: &str) -> Option<Vec<SessionEntry>> {
        Some(self.cache.get(user)?.iter().filter(|e| e.ext.contains(key)).cloned().collect())
    }

    async fn update(&self, jid: &FullJid, f: &mut (dyn for<'e> FnMut(&'e mut SessionEntry) + Send)) -> bool {
        self.try_update(jid, f).await.unwrap_or_else(|e| {
            tracing::warn!(event = "registry_write_failed", op = "update", jid = %jid, error = %e);
            false
        })
    }

    async fn count(&self) -> usize {
        match self.conn.query::<Option<i64>>(redis::cmd("GET").arg(keys::COUNT)).await {
            Ok(n) => usize::try_from(n.unwrap_or(0)).unwrap_or(0),
            Err(e) => {
                tracing::warn!(event = "registry_read_failed", op = "count", error = %e);
                0
            }
        }
    }
}

impl rookery_core::ChangeBus for RedisRegistry {
    fn publish(&self, topic: &str, user: &BareJid) {
        // Topics are short module names; a longer one is cut rather than misframed.
        let topic = &topic.as_bytes()[..topic.len().min(u8::MAX as usize)];
        let mut payload = vec![crate::subscriber::CHANGE_MARK, topic.len() as u8];
        payload.extend_from_slice(topic);
        payload.extend_from_slice(user.as_str().as_bytes());
        let conn = self.conn.clone();
        let user = user.clone();
        // Fire and forget: a lost notice is bounded by the routers' cache lifetimes.
        tokio::spawn(async move {
            let res: Result<i64, _> = conn.query(redis::cmd("PUBLISH").arg(keys::INVALIDATE).arg(payload)).await;
            if let Err(e) = res {
                tracing::warn!(event = "change_publish_failed", user = %user, error = %e);
            }
        });
    }
}
