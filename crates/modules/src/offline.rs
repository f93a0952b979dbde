//! XEP-0160: Best Practices for Handling Offline Messages. A chat or normal message with
//! content for a user with no available resource is stored durably (before the sender's
//! stanza counts as handled) and delivered with a XEP-0203 `<delay/>` (§3) when the user
//! next becomes available with non-negative priority (RFC 6121 §8.5.2.1.1).
//!
//! - `OFFLINE`: stores the message, or drops one that is not worth keeping (only chat
//!   states, or a XEP-0334 `no-store`/`no-permanent-store` hint, §4.1, §4.2); a `<store/>`
//!   hint (§4.4) makes any message worth keeping.
//! - `DELIVERY` (before the archive): a message for a user whose storage is full is
//!   refused with `service-unavailable`, so the archive never holds it.
//! - `SESSION_AVAILABLE`: flushes the stored messages to the session, paced by its
//!   queue, then removes them. Stores and flushes of one user are serialised, so two
//!   resources never get the same stored message.
//! - Feature `msgoffline` on the server (XEP-0160 §5).
//!
//! Must not touch: which resources take a message (the kernel, RFC 6121 §8.5), the
//! archive (MAM).

use async_trait::async_trait;
use rookery_core::hooks::{DELIVERY, Delivery, OFFLINE, Offline, SESSION_AVAILABLE, SessionEvent};
use rookery_core::{
    Ctx, Flow, Handler, HookResult, Module, ModuleInfo, OfflineOutcome, Registrar, SessionEntry, Support, XepSupport,
    pick_resources, prio,
};
use rookery_jid::BareJid;
use rookery_stanza::message::with_delay;
use rookery_stanza::{Condition, Envelope, StanzaError, ns};
use std::sync::Arc;
use std::time::Duration;

/// Offline flushes wait at most this long for a slow client's queue.
const FLUSH_PATIENCE: Duration = Duration::from_secs(10);
/// Queue slots left free for live traffic during a flush.
const QUEUE_HEADROOM: usize = 8;
/// Per-user serialisation, striped.
const LOCK_STRIPES: usize = 64;

/// Offline storage settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineConfig {
    /// Messages kept per user; more are refused (`service-unavailable`).
    pub max_per_user: usize,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig { max_per_user: 1000 }
    }
}

/// Offline storage and delivery.
pub struct OfflineStore {
    cfg: OfflineConfig,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl OfflineStore {
    pub fn new(cfg: OfflineConfig) -> Self {
        OfflineStore { cfg, locks: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect() }
    }

    async fn lock(&self, user: &BareJid) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        self.locks[(h.finish() as usize) % LOCK_STRIPES].lock().await
    }

    /// Whether the user's storage takes one more message. A failed count lets it
    /// through: the store write that follows reports its own failure.
    async fn has_room(&self, ctx: &Ctx, user: &BareJid) -> bool {
        match ctx.stores.offline.count(user).await {
            Ok(n) => n < self.cfg.max_per_user,
            Err(e) => {
                tracing::warn!(event = "offline_count_failed", user = %user, error = %e);
                true
            }
        }
    }

    /// The flush itself; the caller holds the user's lock.
    async fn flush_locked(&self, ctx: &Ctx, entry: &SessionEntry) {
        let user = entry.jid.to_bare();
        let msgs = match ctx.stores.offline.list(&user).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(event = "offline_read_failed", user = %user, error = %e);
                return;
            }
        };
        let mut last = None;
        let deadline = tokio::time::Instant::now() + FLUSH_PATIENCE;
        for m in msgs {
            // Pace with the connection's queue: overflowing it would close the stream.
            while ctx.server.queue_capacity(entry) <= QUEUE_HEADROOM {
                if tokio::time::Instant::now() >= deadline {
                    tracing::info!(event = "offline_flush_paused", user = %user);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if ctx.server.queue_capacity(entry) <= QUEUE_HEADROOM || !ctx.server.send_to_session(entry, m.stanza) {
                break;
            }
            last = Some(m.seq);
        }
        if let Some(seq) = last
            && let Err(e) = ctx.stores.offline.remove_up_to(&user, seq).await
        {
            tracing::warn!(event = "offline_remove_failed", user = %user, error = %e);
        }
    }
}

/// Whether a message is worth storing: it has a child other than chat states, and no
/// storage-forbidding hint.
fn worth_storing(env: &Envelope) -> bool {
    if env.el.self_closing {
        return false;
    }
    let Ok(el) = env.el.parse() else { return false };
    let mut content = false;
    for c in el.elements() {
        if c.ns == ns::HINTS && (c.name == "no-store" || c.name == "no-permanent-store") {
            return false;
        }
        if (c.ns != ns::CHATSTATES && c.ns != ns::HINTS) || (c.ns == ns::HINTS && c.name == "store") {
            content = true;
        }
    }
    content
}

impl Module for OfflineStore {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            name: "offline",
            depends: &[],
            specs: &[
                XepSupport {
                    spec: "XEP-0160",
                    version: "1.0.1",
                    support: Support::Full,
                    note: "offline messages, delivered on next available presence with XEP-0203 delay",
                },
                XepSupport {
                    spec: "XEP-0203",
                    version: "2.0",
                    support: Support::Full,
                    note: "delay stamp on offline messages",
                },
            ],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.host_feature(ns::OFFLINE);
        r.hook(DELIVERY, prio::OFFLINE_QUOTA, Arc::new(Quota(self.clone())));
        r.hook(SESSION_AVAILABLE, prio::DEFAULT, Arc::new(Flush(self.clone())));
        r.hook(OFFLINE, prio::DEFAULT, self);
    }
}

#[async_trait]
impl Handler<Offline> for OfflineStore {
    /// Stores a message nobody took. When this returns `Stored`, the message is durable.
    async fn handle(&self, ctx: &Ctx, ev: &mut Offline) -> HookResult {
        let user = ev.recipient.clone();
        if !worth_storing(&ev.env) {
            ev.outcome = OfflineOutcome::Dropped;
            return Ok(Flow::Stop);
        }
        let _serial = self.lock(&user).await;
        if !self.has_room(ctx, &user).await {
            ev.outcome = OfflineOutcome::Refused(full());
            return Ok(Flow::Stop);
        }
        // A message coming back from a session that ended already has its stamp.
        let bytes = if rookery_stanza::contains_bytes(&ev.bytes, ns::DELAY.as_bytes()) {
            ev.bytes.clone()
        } else {
            with_delay(&ev.bytes, user.domain(), rookery_storage::now_secs())
        };
        if let Err(e) = ctx.stores.offline.push(&user, bytes).await {
            tracing::warn!(event = "offline_write_failed", user = %user, error = %e);
            ev.outcome = OfflineOutcome::Refused(StanzaError::new(Condition::InternalServerError));
            return Ok(Flow::Stop);
        }
        ev.outcome = OfflineOutcome::Stored;
        // The user may have come online while this message was on its way here; its
        // flush has then already run, so deliver now rather than at the next login.
        let sessions = ctx.server.sessions(&user).await;
        if let Some(s) = pick_resources(&sessions, false).first() {
            self.flush_locked(ctx, s).await;
        }
        Ok(Flow::Stop)
    }
}

fn full() -> StanzaError {
    StanzaError::new(Condition::ServiceUnavailable).with_text("offline storage is full")
}

/// Refuses, before the archive writes it, a message the store would refuse.
struct Quota(Arc<OfflineStore>);

#[async_trait]
impl Handler<Delivery> for Quota {
    async fn handle(&self, ctx: &Ctx, ev: &mut Delivery) -> HookResult {
        if !ev.offline || !worth_storing(&ev.msg.env) || self.0.has_room(ctx, &ev.recipient).await {
            return Ok(Flow::Continue);
        }
        ev.reject = Some(full());
        Ok(Flow::Stop)
    }

    /// A message that goes to an online resource is not counted against the quota.
    fn quick(&self, _ctx: &Ctx, ev: &mut Delivery) -> Option<HookResult> {
        (!ev.offline || !worth_storing(&ev.msg.env)).then_some(Ok(Flow::Continue))
    }
}

/// Delivers stored messages to a session that just became available.
struct Flush(Arc<OfflineStore>);

#[async_trait]
impl Handler<SessionEvent> for Flush {
    async fn handle(&self, ctx: &Ctx, ev: &mut SessionEvent) -> HookResult {
        let _serial = self.0.lock(&ev.session.jid.to_bare()).await;
        self.0.flush_locked(ctx, &ev.session).await;
        Ok(Flow::Continue)
    }
}
