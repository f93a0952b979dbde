//! Typed hook points: where a module joins the kernel's handling of a stanza or a session
//! without the kernel knowing the module (DESIGN §3, "The kernel and its three seams").
//!
//! A hook point is a typed key (`MESSAGE_OUT`, `DELIVERY`, ...) whose event type fixes what
//! a handler sees and may change. Handlers register once, at start-up, with a named
//! priority from [`crate::prio`]; the chains are sorted then and never rebuilt per stanza.
//! [`Hooks::run`] calls them in priority order (lower first). A handler returns
//! [`Flow::Continue`] or [`Flow::Stop`]; a handler that returns an error or panics is
//! logged, counted, and the chain goes on with the next handler (ejabberd's `run_fold`
//! semantics): one broken feature never takes message delivery down with it.
//!
//! Owns: the hook points, their event types, the chains and their counters.
//! Must not touch: what a hook means for a stanza; the kernel (services/router) decides
//! where each point runs, the modules what they do there.

use crate::module::Ctx;
use crate::registry::SessionEntry;
use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_stanza::message::{MessageView, MsgType};
use rookery_stanza::{Envelope, StanzaError};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a handler tells the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next handler.
    Continue,
    /// The stanza or event is fully handled: later handlers and the kernel's own default
    /// do not run. What "handled" means is in each hook point's doc.
    Stop,
}

/// A handler's failure. It is logged and counted; the chain goes on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct HookError(pub String);

pub type HookResult = Result<Flow, HookError>;

/// A handler for events of type `E`. A module implements it once per event type it
/// handles (or registers small handler values of its own).
///
/// `quick` is the fast path: a handler that can often decide from memory (a cached list, a
/// flag on the event) answers there, and the chain skips the boxed future `handle` costs,
/// which on the message path is most of a hook's price. `None` (the default) means "wait
/// for `handle`". Where `quick` answers, the answer must be the one `handle` would give.
#[async_trait]
pub trait Handler<E: Send + 'static>: Send + Sync + 'static {
    async fn handle(&self, ctx: &Ctx, ev: &mut E) -> HookResult;

    fn quick(&self, _ctx: &Ctx, _ev: &mut E) -> Option<HookResult> {
        None
    }
}

/// Where a handler runs in its chain: lower runs first. Named in [`crate::prio`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(pub i32);

/// A typed hook point: its name (for logs and counters) and where its chain lives.
pub struct HookPoint<E: 'static> {
    pub name: &'static str,
    chain: fn(&Hooks) -> &Chain<E>,
    chain_mut: fn(&mut Hooks) -> &mut Chain<E>,
}

// Manual impls: a derive would require `E: Copy`.
impl<E> Clone for HookPoint<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for HookPoint<E> {}

struct Entry<E> {
    prio: Priority,
    module: &'static str,
    handler: Arc<dyn Handler<E>>,
}

/// The handlers of one hook point, in priority order.
pub struct Chain<E> {
    entries: Vec<Entry<E>>,
}

impl<E> Default for Chain<E> {
    fn default() -> Self {
        Chain { entries: Vec::new() }
    }
}

// ---------------------------------------------------------------------------------------
// Events

/// Where a message handed to the routing comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Sent by a bound session, `from` stamped by the edge.
    Client,
    /// Queued earlier for a session that ended (`Router::undelivered`): it was already
    /// checked, stamped and copied, and only needs a new destination.
    Requeued,
    /// Sent by a component (`ServerApi::route_from_component`), e.g. a room's message.
    Component,
}

/// A message from a local session (or requeued) to a local user, before the delivery
/// rules choose resources. `Stop` drops it; a handler that sets `reject` has the kernel
/// bounce it with that error (when the message type allows an error reply).
pub struct MessageOut {
    pub msg: MessageView,
    pub mtype: MsgType,
    pub origin: Origin,
    /// The recipient account.
    pub recipient: BareJid,
    pub reject: Option<StanzaError>,
}

/// The bytes a message goes out as, which handlers may replace (e.g. to add a
/// stanza-id), with the self-contained copies forwarded to the parties' other resources.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// What the recipient's chosen resources get.
    pub delivered: Bytes,
    /// Forwarded to the recipient's other resources; `None`: the standalone message.
    pub received_copy: Option<Bytes>,
    /// Forwarded to the sender's other resources; `None`: the standalone message.
    pub sent_copy: Option<Bytes>,
}

impl Outgoing {
    pub fn plain(bytes: Bytes) -> Self {
        Outgoing { delivered: bytes, received_copy: None, sent_copy: None }
    }
}

/// A message on its way to a local user, after the delivery rules chose its resources
/// and before anything is written (recipient side). Handlers may replace `out` (e.g. add
/// a stanza-id) or refuse the message by setting `reject` and returning `Stop`; the
/// kernel then bounces it with that error.
pub struct Delivery {
    pub msg: MessageView,
    pub mtype: MsgType,
    pub origin: Origin,
    pub recipient: BareJid,
    /// All of the recipient's sessions, as the kernel saw them.
    pub sessions: Vec<SessionEntry>,
    /// The full JIDs the message is written to (RFC 6121 §8.5).
    pub targets: Vec<FullJid>,
    /// No resource takes it: it goes to `OFFLINE` next.
    pub offline: bool,
    pub out: Outgoing,
    pub reject: Option<StanzaError>,
}

/// What became of a message that no resource took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineOutcome {
    /// No handler took it: the kernel answers `service-unavailable` (RFC 6121 §8.5.2.2.1).
    Unhandled,
    /// Stored durably for later delivery.
    Stored,
    /// Accepted but not worth keeping (e.g. only a chat state).
    Dropped,
    /// Refused with this error (e.g. the user's storage is full).
    Refused(StanzaError),
}

/// A message for a local user that no resource takes (RFC 6121 §8.5.2.2, §8.5.3.2),
/// after `DELIVERY` ran. `bytes` is what the user's resources would have got.
pub struct Offline {
    pub env: Envelope,
    pub recipient: BareJid,
    pub bytes: Bytes,
    pub outcome: OfflineOutcome,
}

/// A presence stanza. `PRESENCE_OUT`: sent by a local session, before the kernel acts on
/// it. `PRESENCE_IN`: about to reach a local user's sessions. `Stop` drops it.
pub struct PresenceEvent {
    pub env: Envelope,
}

/// A session's life: bound (RFC 6120 §7), detached (its transport went away but it may
/// be resumed), closed (gone for good).
pub struct SessionEvent {
    pub session: SessionEntry,
}

/// A stanza addressed to a domain this server does not serve. A handler that takes it
/// (federation) returns `Stop`; otherwise the kernel answers `remote-server-not-found`.
pub struct RemoteStanza {
    pub env: Envelope,
}

/// Whether `owner`'s policy lets a stanza pass between `owner` and `other`. A handler
/// that refuses sets `denied` and returns `Stop`.
pub struct PrivacyCheck {
    pub owner: BareJid,
    pub other: Jid,
    /// True when `owner` sends to `other`, false when `other` sends to `owner`.
    pub outbound: bool,
    /// The error an outbound sender gets (inbound refusals look like an absent user).
    pub denied: Option<StanzaError>,
}

/// Cached per-user data changed on another router of the cluster (`topic` is what the
/// module published with `ServerApi::publish_change`); `user: None` means every user
/// (notices may have been missed).
pub struct RemoteChange {
    pub topic: String,
    pub user: Option<BareJid>,
}

// ---------------------------------------------------------------------------------------
// The points

macro_rules! points {
    ($($(#[$doc:meta])* $konst:ident: $ev:ty => $field:ident;)*) => {
        /// Every hook point's chain, built at start-up by the `Registrar`.
        #[derive(Default)]
        pub struct Hooks {
            $($field: Chain<$ev>,)*
            stats: HookStats,
        }
        $(
            $(#[$doc])*
            pub const $konst: HookPoint<$ev> = HookPoint {
                name: stringify!($field),
                chain: |h| &h.$field,
                chain_mut: |h| &mut h.$field,
            };
        )*
        impl Hooks {
            /// (hook point, module, priority) of every registered handler, in run order.
            pub fn table(&self) -> Vec<(&'static str, &'static str, i32)> {
                let mut out = Vec::new();
                $(for e in &self.$field.entries { out.push((stringify!($field), e.module, e.prio.0)); })*
                out
            }
            fn sort(&mut self) {
                $(self.$field.entries.sort_by_key(|e| e.prio);)*
            }
        }
    };
}

points! {
    /// Sender side of a message to a local user (`MessageOut`).
    MESSAGE_OUT: MessageOut => message_out;
    /// Recipient side, with the resolved targets, before the message is written.
    DELIVERY: Delivery => delivery;
    /// Recipient side, after the message was accepted (written or stored).
    DELIVERED: Delivery => delivered;
    /// Presence sent by a local session.
    PRESENCE_OUT: PresenceEvent => presence_out;
    /// Presence about to reach a local user.
    PRESENCE_IN: PresenceEvent => presence_in;
    /// A resource was bound.
    SESSION_BOUND: SessionEvent => session_bound;
    /// A session lost its transport but may be resumed.
    SESSION_DETACHED: SessionEvent => session_detached;
    /// A session ended for good.
    SESSION_CLOSED: SessionEvent => session_closed;
    /// A session became available for messages: initial presence, or a priority that
    /// turned non-negative (RFC 6121 §8.5.2.1.1).
    SESSION_AVAILABLE: SessionEvent => session_available;
    /// A message nobody online takes.
    OFFLINE: Offline => offline;
    /// A stanza to a domain not served here.
    REMOTE_DOMAIN: RemoteStanza => remote_domain;
    /// Per-user stanza policy (blocking).
    PRIVACY: PrivacyCheck => privacy;
    /// Another router changed cached per-user data.
    REMOTE_CHANGE: RemoteChange => remote_change;
}

/// How often handlers failed, for /admin/stats.
#[derive(Debug, Default)]
pub struct HookStats {
    errors: AtomicU64,
    panics: AtomicU64,
}

impl Hooks {
    /// Adds a handler; chains are sorted by `finish`.
    pub(crate) fn add<E: Send + 'static>(
        &mut self,
        point: HookPoint<E>,
        prio: Priority,
        module: &'static str,
        handler: Arc<dyn Handler<E>>,
    ) {
        (point.chain_mut)(self).entries.push(Entry { prio, module, handler });
    }

    /// Sorts every chain by priority. Handlers of equal priority keep their registration
    /// order (the sort is stable).
    pub(crate) fn finish(&mut self) {
        self.sort();
    }

    /// Whether nobody listens at `point`: the kernel skips building the event.
    pub fn is_empty<E>(&self, point: HookPoint<E>) -> bool {
        (point.chain)(self).entries.is_empty()
    }

    /// Runs `point`'s chain over `ev`. Returns `Stop` when a handler stopped it.
    pub async fn run<E: Send + 'static>(&self, point: HookPoint<E>, ctx: &Ctx, ev: &mut E) -> Flow {
        for e in &(point.chain)(self).entries {
            // The event may be left half-changed by a handler that panicked; the next
            // handlers see it as it is, which is what a failed handler leaves anyway.
            let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| e.handler.quick(ctx, ev))) {
                Ok(Some(r)) => Ok(r),
                Ok(None) => AssertUnwindSafe(e.handler.handle(ctx, ev)).catch_unwind().await,
                Err(panic) => Err(panic),
            };
            match outcome {
                Ok(Ok(Flow::Continue)) => {}
                Ok(Ok(Flow::Stop)) => return Flow::Stop,
                Ok(Err(err)) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(event = "hook_handler_failed", hook = point.name, module = e.module, error = %err);
                }
                Err(panic) => {
                    self.stats.panics.fetch_add(1, Ordering::Relaxed);
                    let what = panic_message(panic.as_ref());
                    tracing::error!(event = "hook_handler_panicked", hook = point.name, module = e.module, panic = %what);
                }
            }
        }
        Flow::Continue
    }

    /// Runs a module's handler that is not a hook (an IQ handler, a component) the same
    /// way: a panic is logged, counted with the hook failures, and answered `None`, so it
    /// cannot take the caller's task (a session, a router lane) down.
    pub async fn guard<T>(&self, what: &'static str, fut: impl std::future::Future<Output = T>) -> Option<T> {
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(v) => Some(v),
            Err(panic) => {
                self.stats.panics.fetch_add(1, Ordering::Relaxed);
                let text = panic_message(panic.as_ref());
                tracing::error!(event = "module_handler_panicked", handler = what, panic = %text);
                None
            }
        }
    }

    /// (handler errors, handler panics) since start.
    pub fn failures(&self) -> (u64, u64) {
        (self.stats.errors.load(Ordering::Relaxed), self.stats.panics.load(Ordering::Relaxed))
    }
}

/// The message a caught panic carried (`panic!` with a literal or a formatted string).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
#[path = "hooks_tests.rs"]
mod tests;
