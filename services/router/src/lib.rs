//! The router: XMPP semantics for stanzas coming from the edge (RFC 6120 §8, §10;
//! RFC 6121 §2-§4, §8.5), the IQ dispatch to modules, and delivery through the
//! `EdgeLink`. It holds no connection state of its own: sessions live in the
//! `SessionRegistry`, durable data in the `Stores`, so the same code runs in one process or
//! as stateless cluster workers.
//!
//! The router is the kernel (DESIGN §3): it runs the RFC rules and the hook points
//! (`rookery_core::hooks`) where modules join in; a feature's own logic lives in its
//! module in crates/modules, which never sees `LocalRouter`.
//!
//! Owns: delivery rules (RFC 6121 §8.5), presence broadcast/probes/directed presence
//! (RFC 6121 §4), subscriptions (RFC 6121 §3, Appendix A), the roster protocol (RFC 6121 §2
//! with roster versioning), the IQ dispatch, and running the hook points where the RFC
//! rules leave room for features (`rookery_core::hooks`).
//! Must not touch: sockets, TLS, SASL, XML framing; the storage backend is only seen
//! through traits.

mod iq;
mod message;
mod policy;
mod presence;
mod roster;

use async_trait::async_trait;
use bytes::Bytes;
use rookery_core::hooks::{REMOTE_CHANGE, RemoteChange, SESSION_BOUND, SESSION_CLOSED, SessionEvent};
use rookery_core::{
    BindError, Ctx, Dispatch, EdgeLink, Features, Hooks, Location, Module, ModuleInfo, Outbound, Registrar, Router,
    ServerApi, SessionEntry, SessionRegistry, SetupError, Support, XepSupport,
};
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_stanza::{Envelope, Kind, StreamCondition};
use rookery_storage::Stores;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub use iq::IqToFullJid;

/// Published when an account is deleted: every cache of that user's data is dropped.
pub const ACCOUNT_TOPIC: &str = "account";

/// Router settings taken from the configuration.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub domains: Vec<String>,
    pub allow_registration: bool,
    pub min_password_len: usize,
    /// Who may send an IQ get/set to another user's full JID (RFC 6121 §8.5.3.1).
    pub iq_to_full_jid: IqToFullJid,
}

/// Everything the router needs, shared by all sessions.
pub struct LocalRouter {
    cfg: RouterConfig,
    registry: Arc<dyn SessionRegistry>,
    link: Arc<dyn EdgeLink>,
    /// Shared with every `Ctx` (one reference count per stanza, not one per store).
    stores: Arc<Stores>,
    dispatch: Dispatch,
    features: Arc<Features>,
    hooks: Arc<Hooks>,
    components: Arc<rookery_core::Components>,
    started: Instant,
    push_ids: AtomicU64,
    me: OnceLock<std::sync::Weak<LocalRouter>>,
    /// Cluster mode: tells the other routers when cached per-user data changes.
    bus: OnceLock<Arc<dyn rookery_core::ChangeBus>>,
    /// Serialises roster read-modify-write per user (striped); never held across a
    /// call that takes another user's lock.
    roster_locks: Vec<tokio::sync::Mutex<()>>,
}

const LOCK_STRIPES: usize = 64;

fn stripe(user: &BareJid) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    user.hash(&mut h);
    (h.finish() as usize) % LOCK_STRIPES
}

/// The specs implemented by the router itself (not by a module); they are listed in
/// docs/compliance.md together with the modules'.
pub struct CoreSpecs;

impl Module for CoreSpecs {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            depends: &[],
            name: "router",
            specs: &[XepSupport {
                spec: "RFC 6121",
                version: "2011",
                support: Support::Full,
                note: "roster, subscriptions incl. pre-approval, presence, delivery rules §8.5; roster \
                           versioning §2.6: an unchanged roster gets an empty result, a \
                           changed one is sent whole (§2.6.3 allows it) rather than as the missed pushes",
            }],
        }
    }
    fn register(self: Arc<Self>, r: &mut Registrar) {
        // RFC 3921 session establishment: advertised as optional (RFC 6121 Appendix E);
        // clients that still send it after binding get an empty result.
        r.iq(
            "session",
            rookery_stanza::ns::SESSION,
            rookery_core::IqType::Set,
            &[rookery_core::Target::Host, rookery_core::Target::Own],
            Arc::new(SessionNoop),
        );
        r.host_feature(rookery_stanza::ns::ROSTER_VER);
        r.host_feature(rookery_stanza::ns::PRE_APPROVAL);
    }
}

/// Answers the legacy session request.
struct SessionNoop;

#[async_trait]
impl rookery_core::IqHandler for SessionNoop {
    async fn handle(&self, _ctx: &Ctx, _req: rookery_core::IqRequest) -> rookery_core::IqResult {
        Ok(None)
    }
}

impl LocalRouter {
    /// Builds the router with the given modules registered.
    pub fn new(
        cfg: RouterConfig,
        registry: Arc<dyn SessionRegistry>,
        link: Arc<dyn EdgeLink>,
        stores: Stores,
        register_modules: impl FnOnce(&mut Registrar),
    ) -> Result<Arc<Self>, SetupError> {
        let mut r = Registrar::new();
        r.add(Arc::new(CoreSpecs));
        register_modules(&mut r);
        let built = r.finish()?;
        let (dispatch, features, hooks, components) = (built.dispatch, built.features, built.hooks, built.components);
        let router = Arc::new(LocalRouter {
            cfg,
            registry,
            link,
            stores: Arc::new(stores),
            dispatch,
            features,
            hooks,
            components,
            started: Instant::now(),
            push_ids: AtomicU64::new(1),
            me: OnceLock::new(),
            bus: OnceLock::new(),
            roster_locks: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        });
        let _ = router.me.set(Arc::downgrade(&router));
        Ok(router)
    }

    /// In a cluster: how this router tells the others that cached per-user data changed.
    pub fn set_change_bus(&self, bus: Arc<dyn rookery_core::ChangeBus>) {
        let _ = self.bus.set(bus);
    }

    /// Another router changed `user`'s data cached under `topic`: drop the cached copy
    /// (nothing is re-published).
    pub fn remote_change(&self, topic: &str, user: &BareJid) {
        self.spawn_change(topic, Some(user.clone()));
    }

    /// Change notices from other routers may have been missed: drop every cached copy.
    pub fn remote_reset(&self) {
        self.spawn_change("", None);
    }

    /// Runs `REMOTE_CHANGE` without holding up the caller (a Redis subscriber callback).
    fn spawn_change(&self, topic: &str, user: Option<BareJid>) {
        if self.hooks.is_empty(REMOTE_CHANGE) {
            return;
        }
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else { return };
        let topic = topic.to_owned();
        tokio::spawn(async move { me.run_change(&topic, user).await });
    }

    /// Runs `REMOTE_CHANGE` for `topic` (`user: None`: every user) and waits for it.
    pub async fn run_change(&self, topic: &str, user: Option<BareJid>) {
        let Some(ctx) = self.ctx() else { return };
        let mut ev = RemoteChange { topic: topic.to_owned(), user };
        self.hooks.run(REMOTE_CHANGE, &ctx, &mut ev).await;
    }

    /// Handler failures since start: (errors, panics).
    pub fn hook_failures(&self) -> (u64, u64) {
        self.hooks.failures()
    }

    pub fn hooks(&self) -> &Arc<Hooks> {
        &self.hooks
    }

    /// Domain → placement of the registered components, for the edges of a cluster.
    pub fn placements(&self) -> rookery_core::PlacementTable {
        self.components.placements()
    }

    pub fn features(&self) -> &Arc<Features> {
        &self.features
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    pub fn registry(&self) -> &Arc<dyn SessionRegistry> {
        &self.registry
    }

    /// The context handed to module handlers.
    pub fn ctx(&self) -> Option<Ctx> {
        let me = self.me.get()?.upgrade()?;
        Some(Ctx { stores: self.stores.clone(), server: me, features: self.features.clone() })
    }

    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    pub(crate) fn is_local(&self, domain: &str) -> bool {
        self.cfg.domains.iter().any(|d| d == domain)
    }

    pub(crate) async fn roster_lock(&self, user: &BareJid) -> tokio::sync::MutexGuard<'_, ()> {
        self.roster_locks[stripe(user)].lock().await
    }

    pub(crate) fn next_push_id(&self) -> String {
        format!("push{}", self.push_ids.fetch_add(1, Ordering::Relaxed))
    }

    /// Sends bytes to one session; false when it is gone.
    pub(crate) fn send(&self, entry: &SessionEntry, bytes: Bytes) -> bool {
        self.link.deliver(entry.loc, Outbound::Stanza(bytes))
    }

    /// Sends bytes to a local full JID if bound.
    pub(crate) async fn send_full(&self, to: &FullJid, bytes: Bytes) -> bool {
        match self.registry.get(to).await {
            Some(e) => self.send(&e, bytes),
            None => false,
        }
    }

    /// Replies to the sender of `env` with a stanza error.
    pub(crate) async fn bounce(&self, env: &Envelope, err: rookery_stanza::StanzaError) {
        if let Some(reply) = env.error_reply(&err)
            && let Ok(full) = FullJid::try_from(env.from.clone())
        {
            self.send_full(&full, reply).await;
        }
    }

    pub(crate) async fn account_exists(&self, user: &BareJid) -> bool {
        // A bound session proves the account exists without a store read.
        if !self.registry.sessions(user).await.is_empty() {
            return true;
        }
        match self.stores.accounts.get(user).await {
            Ok(a) => a.is_some(),
            Err(e) => {
                tracing::warn!(event = "account_lookup_failed", user = %user, error = %e);
                false
            }
        }
    }
}

#[async_trait]
impl Router for LocalRouter {
    async fn bind(&self, jid: &FullJid, loc: Location) -> Result<(), BindError> {
        let entry = SessionEntry::new(jid.clone(), loc);
        let replaced = self.registry.insert(entry.clone()).await.map_err(|e| {
            tracing::warn!(event = "bind_registry_failed", jid = %jid, error = %e);
            BindError::Internal
        })?;
        if let Some(old) = replaced {
            // RFC 6120 §7.7.2.2: the new session wins; the old one is told why it ends.
            tracing::info!(event = "resource_conflict", jid = %jid);
            self.link.deliver(old.loc, Outbound::Close(StreamCondition::Conflict));
            // Its later unbind finds the new entry and does nothing, so whoever saw the
            // old session available hears it went away now (RFC 6121 §4.5, §4.6.3).
            if old.available || !old.directed.is_empty() {
                self.broadcast_unavailable(&old, None).await;
            }
        }
        self.session_event(SESSION_BOUND, entry).await;
        Ok(())
    }

    async fn route(&self, from: Location, env: Envelope) {
        // RFC 6120 §7.7.2.2: a session replaced by a newer one with the same full JID
        // may still have stanzas in flight; they must not act for the new session.
        let current = match FullJid::try_from(env.from.clone()) {
            Ok(f) => self.registry.is_current(&f, from).await,
            Err(_) => false,
        };
        if !current {
            tracing::debug!(event = "stanza_from_replaced_session", from = %env.from);
            return;
        }
        // A component's domain: its module takes the stanza (presence first goes through
        // the presence rules, which remember directed presence and then hand it over).
        if env.kind != Kind::Presence
            && let Some(c) = self.components.get(env.to.domain())
        {
            let handler = c.handler.clone();
            if let Some(ctx) = self.ctx() {
                self.hooks.guard("component", handler.handle(&ctx, env)).await;
            }
            return;
        }
        match env.kind {
            Kind::Message => self.route_message(env).await,
            Kind::Presence => self.route_presence(env).await,
            Kind::Iq => self.route_iq(env).await,
        }
    }

    async fn preauth_iq(&self, req: rookery_core::IqRequest) -> rookery_core::IqResult {
        let name = req.payload.name.clone();
        let ns = req.payload.ns.clone();
        match (self.dispatch.handler(&name, &ns, req.kind, rookery_core::Target::Host), self.ctx()) {
            (Some(h), Some(ctx)) => self.hooks.guard("preauth_iq", h.handle(&ctx, req)).await.unwrap_or_else(|| {
                Err(rookery_stanza::StanzaError::new(rookery_stanza::Condition::InternalServerError))
            }),
            _ => Err(rookery_stanza::StanzaError::new(rookery_stanza::Condition::ServiceUnavailable)),
        }
    }

    async fn undelivered(&self, to: &FullJid, stanza: Bytes) {
        self.reroute_undelivered(to, stanza).await;
    }

    async fn unbind(&self, jid: &FullJid, loc: Location) {
        let Some(entry) = self.registry.remove(jid, loc).await else { return };
        // RFC 6121 §4.6.3: directed-presence targets hear about it even if the
        // session never sent broadcast presence.
        if entry.available || !entry.directed.is_empty() {
            self.broadcast_unavailable(&entry, None).await;
        }
        if self.registry.sessions(&jid.to_bare()).await.is_empty() {
            let status = entry.presence.as_ref().map(presence::status_text).unwrap_or_default();
            let last = rookery_storage::LastActivity { at: rookery_storage::now_secs(), status };
            if let Err(e) = self.stores.last.set(&jid.to_bare(), last).await {
                tracing::warn!(event = "last_activity_write_failed", user = %jid.to_bare(), error = %e);
            }
        }
        self.session_event(SESSION_CLOSED, entry).await;
    }
}

#[async_trait]
impl ServerApi for LocalRouter {
    fn domains(&self) -> &[String] {
        &self.cfg.domains
    }
    fn is_local_domain(&self, domain: &str) -> bool {
        self.is_local(domain)
    }
    async fn send_to_resource(&self, to: &FullJid, bytes: Bytes) -> bool {
        self.send_full(to, bytes).await
    }
    fn send_to_session(&self, session: &SessionEntry, bytes: Bytes) -> bool {
        self.send(session, bytes)
    }
    fn queue_capacity(&self, session: &SessionEntry) -> usize {
        self.link.free_capacity(session.loc)
    }
    async fn resources(&self, user: &BareJid, ext: Option<&'static str>) -> Vec<FullJid> {
        let sessions = match ext {
            Some(key) => self.registry.sessions_with(user, key).await,
            None => self.registry.sessions(user).await,
        };
        sessions.into_iter().map(|e| e.jid).collect()
    }
    fn resources_now(&self, user: &BareJid, ext: &'static str) -> Option<Vec<FullJid>> {
        Some(self.registry.sessions_with_now(user, ext)?.into_iter().map(|e| e.jid).collect())
    }
    async fn sessions(&self, user: &BareJid) -> Vec<SessionEntry> {
        self.registry.sessions(user).await
    }
    async fn set_session_ext(&self, resource: &FullJid, key: &'static str, value: Option<Bytes>) -> bool {
        let mut loc = None;
        let found = self
            .registry
            .update(resource, &mut |e| {
                e.ext.set_raw(key, value.clone());
                loc = Some(e.loc);
            })
            .await;
        if let Some(loc) = loc {
            // The edge keeps a copy of the slots to re-register the session after a
            // registry reset (cluster mode).
            self.link.session_ext(loc, key, value);
        }
        found
    }
    async fn is_online(&self, user: &BareJid) -> bool {
        self.registry.sessions(user).await.iter().any(|e| e.available)
    }
    fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
    fn registration_allowed(&self) -> bool {
        self.cfg.allow_registration
    }
    fn min_password_len(&self) -> usize {
        self.cfg.min_password_len
    }
    fn publish_change(&self, topic: &'static str, user: &BareJid) {
        if let Some(bus) = self.bus.get() {
            bus.publish(topic, user);
        }
    }
    async fn presence_to(&self, user: &BareJid, contact: &Jid, available: bool) {
        self.presence_to_contact(user, contact, available).await;
    }
    async fn route_from_component(&self, env: Envelope) {
        self.deliver_from_component(env).await;
    }
    async fn account_deleted(&self, user: &BareJid) {
        // Every cache of the user's data, here and on the other routers. The local run
        // is awaited, so nothing cached outlives the account.
        self.run_change(ACCOUNT_TOPIC, Some(user.clone())).await;
        self.publish_change(ACCOUNT_TOPIC, user);
        // The client first gets the result of the request that removed the account, which the
        // caller sends after this returns; close the sessions a moment later so the
        // result is written before the stream error.
        let sessions = self.registry.sessions(user).await;
        let link = self.link.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            for e in sessions {
                link.deliver(e.loc, Outbound::Close(StreamCondition::NotAuthorized));
            }
        });
    }
}

impl LocalRouter {
    /// A stanza a component sends to its `to` (a local user, or another component).
    async fn deliver_from_component(&self, env: Envelope) {
        if let Some(c) = self.components.get(env.to.domain()) {
            let handler = c.handler.clone();
            if let Some(ctx) = self.ctx() {
                self.hooks.guard("component", handler.handle(&ctx, env)).await;
            }
            return;
        }
        match env.kind {
            Kind::Message => self.route_message_as(env, rookery_core::Origin::Component).await,
            Kind::Presence => {
                let (from, to) = (env.from.clone(), env.to.clone());
                self.deliver_presence_from(&from, &to, env.wire()).await;
            }
            Kind::Iq => match FullJid::try_from(env.to.clone()) {
                Ok(to) => {
                    if !self.send_full(&to, env.wire()).await && matches!(env.stanza_type(), Some("get") | Some("set"))
                    {
                        self.bounce(
                            &env,
                            rookery_stanza::StanzaError::new(rookery_stanza::Condition::ServiceUnavailable),
                        )
                        .await;
                    }
                }
                // Requests to a user's bare JID are answered on the user's behalf.
                Err(_) => self.route_iq(env).await,
            },
        }
    }

    /// The component serving `domain`, if any.
    pub(crate) fn component(&self, domain: &str) -> Option<Arc<dyn rookery_core::Component>> {
        self.components.get(domain).map(|c| c.handler.clone())
    }

    pub(crate) async fn session_event(
        &self,
        point: rookery_core::hooks::HookPoint<SessionEvent>,
        session: SessionEntry,
    ) {
        if self.hooks.is_empty(point) {
            return;
        }
        let Some(ctx) = self.ctx() else { return };
        self.hooks.run(point, &ctx, &mut SessionEvent { session }).await;
    }
}

/// The bare JID of a JID that is known to be a local user (has a node).
pub(crate) fn user_of(j: &Jid) -> Option<BareJid> {
    j.node()?;
    Some(j.to_bare())
}

#[cfg(test)]
mod tests;
