//! The router: XMPP semantics for stanzas coming from the edge (RFC 6120 §8, §10;
//! RFC 6121 §2-§4, §8.5), the IQ dispatch to modules, and delivery through the
//! `EdgeLink`. It holds no connection state of its own: sessions live in the
//! `SessionRegistry`, durable data in the `Stores`, so the same code runs in one process or
//! as stateless cluster workers.
//!
//! Owns: delivery rules (RFC 6121 §8.5), presence broadcast/probes/directed presence
//! (RFC 6121 §4), subscriptions (RFC 6121 §3, Appendix A), the roster protocol (RFC 6121 §2
//! with XEP-0237 versioning), offline storage (XEP-0160), block-list enforcement (XEP-0191
//! §3.6-§3.7), writing user message archives with XEP-0359 stanza-ids (XEP-0313 §3.5,
//! §6.1.1; XEP-0334 hints), and message carbons on delivery (XEP-0280 §6-§9, §11).
//! Must not touch: sockets, TLS, SASL, XML framing; the storage backend is only seen
//! through traits.

mod archive;
mod blocking;
mod carbons;
mod iq;
mod message;
mod offline;
mod presence;
mod roster;

use async_trait::async_trait;
use bytes::Bytes;
use rookery_core::{
    BindError, Ctx, Dispatch, EdgeLink, Features, Location, Module, ModuleInfo, Outbound, Registrar, Router, ServerApi,
    SessionEntry, SessionRegistry, Support, XepSupport,
};
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_stanza::{Envelope, Kind, StreamCondition};
use rookery_storage::Stores;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub use archive::{ARCHIVE_TIMEOUT, ArchiveSettings, NS_SID, PREFS_TTL};
pub use blocking::BlockCache;
pub use iq::IqToFullJid;

/// Router settings taken from the configuration.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub domains: Vec<String>,
    pub allow_registration: bool,
    pub min_password_len: usize,
    pub offline_max_per_user: usize,
    /// Archiving of 1:1 messages (XEP-0313).
    pub archive: ArchiveSettings,
    /// Who may send an IQ get/set to another user's full JID (RFC 6121 §8.5.3.1).
    pub iq_to_full_jid: IqToFullJid,
}

/// Everything the router needs, shared by all sessions.
pub struct LocalRouter {
    cfg: RouterConfig,
    registry: Arc<dyn SessionRegistry>,
    link: Arc<dyn EdgeLink>,
    stores: Stores,
    dispatch: Dispatch,
    features: Arc<Features>,
    blocks: BlockCache,
    started: Instant,
    push_ids: AtomicU64,
    /// Mints the archive ids that are also the stanza-ids (XEP-0359).
    archive_ids: rookery_storage::ArchiveIdGen,
    /// Archiving preferences by user (see archive.rs).
    prefs: archive::PrefsCache,
    me: OnceLock<std::sync::Weak<LocalRouter>>,
    /// Cluster mode: tells the other routers when cached per-user data changes.
    bus: OnceLock<Arc<dyn rookery_core::ChangeBus>>,
    /// Serialises offline store/flush per user (striped).
    offline_locks: Vec<tokio::sync::Mutex<()>>,
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
pub struct CoreSpecs {
    /// Archiving is on: accounts advertise `urn:xmpp:sid:0` (XEP-0359 §5).
    pub archiving: bool,
}

impl Module for CoreSpecs {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            name: "router",
            specs: &[
                XepSupport {
                    spec: "RFC 6121",
                    version: "2011",
                    support: Support::Full,
                    note: "roster, subscriptions incl. pre-approval, presence, delivery rules §8.5",
                },
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
                XepSupport {
                    spec: "XEP-0237",
                    version: "1.3",
                    support: Support::Partial,
                    note: "roster `ver`; a changed roster is sent whole instead of as pushes",
                },
                XepSupport {
                    spec: "XEP-0191",
                    version: "1.3",
                    support: Support::Full,
                    note: "enforcement on delivery (the IQ side is the blocking module)",
                },
                XepSupport {
                    spec: "XEP-0280",
                    version: "1.0.1",
                    support: Support::Partial,
                    note: "copies on delivery (§6-§9), forged copies refused (§11); error messages are not copied",
                },
                XepSupport {
                    spec: "XEP-0313",
                    version: "1.1.3",
                    support: Support::Partial,
                    note: "archiving 1:1 chat/normal messages of local users on delivery (§3.5, §6.1.1), \
                           XEP-0441 preferences applied; queries are the mam module",
                },
                XepSupport {
                    spec: "XEP-0334",
                    version: "1.0.0",
                    support: Support::Full,
                    note: "store, no-store, no-permanent-store (archive and offline), no-copy (carbons)",
                },
                XepSupport {
                    spec: "XEP-0359",
                    version: "0.7.0",
                    support: Support::Full,
                    note: "stanza-id of archived messages; spoofed ids by our accounts or domains removed (§3)",
                },
            ],
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
        r.host_feature(rookery_stanza::ns::OFFLINE);
        r.host_feature(rookery_stanza::ns::ROSTER_VER);
        r.host_feature(rookery_stanza::ns::PRE_APPROVAL);
        if self.archiving {
            r.account_feature(archive::NS_SID);
        }
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
    ) -> Arc<Self> {
        let mut r = Registrar::new();
        r.add(Arc::new(CoreSpecs { archiving: cfg.archive.enabled }));
        register_modules(&mut r);
        let (dispatch, features) = r.build();
        let blocks = BlockCache::new(stores.blocking.clone());
        let archive_ids = rookery_storage::ArchiveIdGen::new(cfg.archive.node);
        let router = Arc::new(LocalRouter {
            cfg,
            registry,
            link,
            stores,
            dispatch,
            features,
            blocks,
            started: Instant::now(),
            push_ids: AtomicU64::new(1),
            archive_ids,
            prefs: archive::PrefsCache::default(),
            me: OnceLock::new(),
            bus: OnceLock::new(),
            offline_locks: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            roster_locks: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        });
        let _ = router.me.set(Arc::downgrade(&router));
        router
    }

    /// In a cluster: how this router tells the others that cached per-user data changed.
    pub fn set_change_bus(&self, bus: Arc<dyn rookery_core::ChangeBus>) {
        let _ = self.bus.set(bus);
    }

    /// Another router changed `user`'s data: drop the cached copy (nothing is re-published).
    pub fn remote_change(&self, change: rookery_core::Change, user: &BareJid) {
        match change {
            rookery_core::Change::Blocklist => self.blocks.invalidate(user),
            rookery_core::Change::ArchivePrefs => self.prefs.invalidate(user),
        }
    }

    /// Change notices from other routers may have been missed: drop every cached copy.
    pub fn remote_reset(&self) {
        self.blocks.clear();
        self.prefs.clear();
    }

    fn publish_change(&self, change: rookery_core::Change, user: &BareJid) {
        if let Some(bus) = self.bus.get() {
            bus.publish(change, user);
        }
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

    pub(crate) async fn offline_lock(&self, user: &BareJid) -> tokio::sync::MutexGuard<'_, ()> {
        self.offline_locks[stripe(user)].lock().await
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
        let entry = SessionEntry {
            jid: jid.clone(),
            loc,
            priority: 0,
            available: false,
            presence: None,
            interested: false,
            blocklist: false,
            directed: Vec::new(),
            carbons: false,
        };
        let replaced = self.registry.insert(entry).await.map_err(|e| {
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
            (Some(h), Some(ctx)) => h.handle(&ctx, req).await,
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
    async fn resources(&self, user: &BareJid, interest: rookery_core::Interest) -> Vec<FullJid> {
        use rookery_core::Interest;
        self.registry
            .sessions(user)
            .await
            .into_iter()
            .filter(|e| match interest {
                Interest::Any => true,
                Interest::Roster => e.interested,
                Interest::Blocklist => e.blocklist,
            })
            .map(|e| e.jid)
            .collect()
    }
    async fn mark_interest(&self, resource: &FullJid, interest: rookery_core::Interest) {
        use rookery_core::Interest;
        self.registry
            .update(resource, &mut |e| match interest {
                Interest::Any => {}
                Interest::Roster => e.interested = true,
                Interest::Blocklist => e.blocklist = true,
            })
            .await;
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
    async fn blocklist_changed(&self, user: &BareJid, blocked: &[String], unblocked: &[String]) {
        self.blocks.invalidate(user);
        self.publish_change(rookery_core::Change::Blocklist, user);
        self.on_blocklist_change(user, blocked, unblocked).await;
    }
    fn archive_prefs_changed(&self, user: &BareJid) {
        self.prefs.invalidate(user);
        self.publish_change(rookery_core::Change::ArchivePrefs, user);
    }
    async fn set_carbons(&self, resource: &FullJid, on: bool) -> bool {
        self.registry.update(resource, &mut |e| e.carbons = on).await
    }
    async fn account_deleted(&self, user: &BareJid) {
        self.blocks.invalidate(user);
        // XEP-0077 §3.2: the client first gets the result of its <remove/>, which the
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

/// The bare JID of a JID that is known to be a local user (has a node).
pub(crate) fn user_of(j: &Jid) -> Option<BareJid> {
    j.node()?;
    Some(j.to_bare())
}

#[cfg(test)]
mod tests;
