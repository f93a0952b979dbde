//! The module API. A module declares what it implements (`ModuleInfo`, which generates
//! docs/compliance.md) and what it needs (`depends`), and registers its IQ handlers,
//! hook handlers and disco features once, at start-up; the dispatch tables are built then
//! and never per stanza (DESIGN §3).

use async_trait::async_trait;
use bytes::Bytes;
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_stanza::StanzaError;
use rookery_storage::Stores;
use rookery_xml::Element;
use std::collections::HashMap;
use std::sync::Arc;

/// How completely a specification is implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Full,
    Partial,
}

/// One specification a module implements.
#[derive(Debug, Clone, Copy)]
pub struct XepSupport {
    /// "XEP-0199", "RFC 6121".
    pub spec: &'static str,
    pub version: &'static str,
    pub support: Support,
    pub note: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct ModuleInfo {
    pub name: &'static str,
    pub specs: &'static [XepSupport],
    /// Modules that must be registered too (by name); `Registrar::build` checks them.
    pub depends: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IqType {
    Get,
    Set,
}

/// Which addresses an IQ handler serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Addressed to a served domain (`to='example.com'`).
    Host,
    /// Addressed to the sender's own account (no `to`, or the sender's bare JID).
    Own,
    /// Addressed to another local user's bare JID; the server answers on their behalf.
    OtherUser,
}

/// An IQ get/set addressed to the server or to an account it answers for.
#[derive(Debug, Clone)]
pub struct IqRequest {
    /// The sender; `None` before authentication (in-band registration, XEP-0077).
    pub from: Option<FullJid>,
    pub to: Jid,
    pub kind: IqType,
    pub id: String,
    pub payload: Element,
}

/// What an IQ handler answers: a result payload (or empty result), or a stanza error.
pub type IqResult = Result<Option<Element>, StanzaError>;

#[async_trait]
pub trait IqHandler: Send + Sync + 'static {
    async fn handle(&self, ctx: &Ctx, req: IqRequest) -> IqResult;
}

/// What the server offers a module: sending stanzas to sessions, facts about the node.
#[async_trait]
pub trait ServerApi: Send + Sync + 'static {
    fn domains(&self) -> &[String];
    fn is_local_domain(&self, domain: &str) -> bool;
    /// Queues bytes for one bound resource; false if it is not connected.
    async fn send_to_resource(&self, to: &FullJid, bytes: Bytes) -> bool;
    /// Queues bytes for a session the caller already looked up (no registry read).
    fn send_to_session(&self, session: &crate::SessionEntry, bytes: Bytes) -> bool;
    /// How many more stanzas the session's queue takes right now; bulk senders (an
    /// offline flush) pace themselves with it instead of overflowing the queue.
    fn queue_capacity(&self, session: &crate::SessionEntry) -> usize;
    /// Full JIDs of the user's connected resources; with `ext`, only those whose session
    /// carries that extension slot (e.g. the resources that asked for pushes).
    async fn resources(&self, user: &BareJid, ext: Option<&'static str>) -> Vec<FullJid>;
    /// `resources(user, Some(ext))` when it can be answered without waiting (a hook's
    /// `quick` path); `None`: ask `resources`.
    fn resources_now(&self, _user: &BareJid, _ext: &'static str) -> Option<Vec<FullJid>> {
        None
    }
    /// The user's sessions (their records, extension slots included).
    async fn sessions(&self, user: &BareJid) -> Vec<crate::SessionEntry>;
    /// Sets or clears one extension slot of a bound resource's session, and tells its
    /// edge (which keeps a copy for re-registration). False when it is not bound here.
    async fn set_session_ext(&self, resource: &FullJid, key: &'static str, value: Option<Bytes>) -> bool;
    /// Whether the user has at least one available resource.
    async fn is_online(&self, user: &BareJid) -> bool;
    /// Seconds since the server started.
    fn uptime_secs(&self) -> u64;
    fn registration_allowed(&self) -> bool;
    fn min_password_len(&self) -> usize;
    /// Tells the other routers of a cluster that `user`'s data cached under `topic`
    /// changed; they run `REMOTE_CHANGE` for it. Nothing to do on a single node.
    fn publish_change(&self, topic: &'static str, user: &BareJid);
    /// RFC 6121 §4.5 / §4.2 towards one contact: sends `user`'s unavailable presence
    /// (`available == false`) or the current presence of each available resource to
    /// `contact` (used when a block list or similar policy changes who may see whom).
    async fn presence_to(&self, user: &BareJid, contact: &Jid, available: bool);
    /// An account was deleted (XEP-0077 cancel): close its sessions.
    async fn account_deleted(&self, user: &BareJid);
    /// A stanza a component sends (`from` a JID of its domain) to its `to`: a local user,
    /// by the RFC 6121 delivery rules, or another component.
    async fn route_from_component(&self, env: rookery_stanza::Envelope);
}

/// Passed to every handler call.
#[derive(Clone)]
pub struct Ctx {
    pub stores: Arc<Stores>,
    pub server: Arc<dyn ServerApi>,
    pub features: Arc<Features>,
}

/// Disco identity (XEP-0030 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub category: &'static str,
    pub kind: &'static str,
    pub name: &'static str,
}

/// Which served domains something registered applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainScope {
    Every,
    Only(String),
    AllBut(Vec<String>),
}

impl DomainScope {
    pub fn covers(&self, domain: &str) -> bool {
        match self {
            DomainScope::Every => true,
            DomainScope::Only(d) => d == domain,
            DomainScope::AllBut(list) => !list.iter().any(|d| d == domain),
        }
    }
}

/// What the server advertises in disco#info, collected from the registered modules.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub host: Vec<&'static str>,
    pub account: Vec<&'static str>,
    pub identities: Vec<Identity>,
    /// Services on domains of their own (components), as (domain, name) for disco#items.
    pub services: Vec<(String, &'static str)>,
    /// XEP-0128 forms added to the server's disco#info, with the domains they are for.
    pub host_forms: Vec<(DomainScope, Element)>,
    pub modules: Vec<ModuleInfo>,
}

type Entry = (&'static str, IqType, Target, Arc<dyn IqHandler>);

/// Collects handlers and features at start-up.
#[derive(Default)]
pub struct Registrar {
    handlers: HashMap<&'static str, Vec<Entry>>,
    features: Features,
    hooks: crate::hooks::Hooks,
    components: Vec<crate::component::ComponentEntry>,
    /// The module being added (handlers are attributed to it in logs and counters).
    current: &'static str,
}

/// What start-up produced: the IQ table, the advertised features, the hook chains.
pub struct Built {
    pub dispatch: Dispatch,
    pub features: Arc<Features>,
    pub hooks: Arc<crate::hooks::Hooks>,
    pub components: Arc<crate::component::Components>,
}

/// Why the registrations cannot form a server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// A module's declared dependency is not registered.
    #[error("module `{module}` needs module `{needs}`, which is not enabled")]
    SetupError { module: &'static str, needs: &'static str },
    /// Two components claim one domain.
    #[error("{0}")]
    DomainTaken(String),
}

impl Registrar {
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers a handler for IQs whose payload is `<name xmlns='ns'/>`.
    pub fn iq(
        &mut self,
        name: &'static str,
        ns: &'static str,
        kind: IqType,
        targets: &[Target],
        h: Arc<dyn IqHandler>,
    ) {
        let list = self.handlers.entry(ns).or_default();
        for t in targets {
            list.retain(|(n, k, tt, _)| !(*n == name && *k == kind && tt == t));
            list.push((name, kind, *t, h.clone()));
        }
    }
    /// Adds a handler to a hook point's chain at `prio` (named in `crate::prio`).
    pub fn hook<E: Send + 'static>(
        &mut self,
        point: crate::hooks::HookPoint<E>,
        prio: crate::hooks::Priority,
        h: Arc<dyn crate::hooks::Handler<E>>,
    ) {
        self.hooks.add(point, prio, self.current, h);
    }
    /// Serves every stanza addressed to `domain` (or a JID in it) with `handler`, placed
    /// in a cluster as `placement` says. `name`: listed in the served domains' disco#items
    /// under that name.
    pub fn component(
        &mut self,
        domain: String,
        placement: crate::component::Placement,
        name: Option<&'static str>,
        handler: Arc<dyn crate::component::Component>,
    ) {
        self.components.push(crate::component::ComponentEntry {
            domain,
            placement,
            name,
            module: self.current,
            handler,
        });
    }
    /// A disco#info feature of the server (`to='domain'`).
    pub fn host_feature(&mut self, var: &'static str) {
        if !self.features.host.contains(&var) {
            self.features.host.push(var);
        }
    }
    /// A disco#info feature of every account (`to='user@domain'`, XEP-0030 §3.1).
    pub fn account_feature(&mut self, var: &'static str) {
        if !self.features.account.contains(&var) {
            self.features.account.push(var);
        }
    }
    pub fn identity(&mut self, category: &'static str, kind: &'static str, name: &'static str) {
        self.features.identities.push(Identity { category, kind, name });
    }
    /// A XEP-0128 extended-information form of the server's disco#info for the domains
    /// in `scope`. `form` is the `<x xmlns='jabber:x:data'/>` element.
    pub fn host_info_form(&mut self, scope: DomainScope, form: Element) {
        self.features.host_forms.push((scope, form));
    }
    pub fn add<M: Module>(&mut self, m: Arc<M>) {
        let info = m.info();
        self.features.modules.push(info);
        let outer = std::mem::replace(&mut self.current, info.name);
        m.register(self);
        self.current = outer;
    }
    /// Freezes the registrations into the dispatch tables; fails when a module's
    /// declared dependency was not registered.
    pub fn finish(mut self) -> Result<Built, SetupError> {
        for m in &self.features.modules {
            for needs in m.depends {
                if !self.features.modules.iter().any(|o| o.name == *needs) {
                    return Err(SetupError::SetupError { module: m.name, needs });
                }
            }
        }
        let mut components = crate::component::Components::default();
        for c in self.components {
            if let Some(name) = c.name {
                self.features.services.push((c.domain.clone(), name));
            }
            components.add(c).map_err(SetupError::DomainTaken)?;
        }
        self.features.services.sort();
        self.features.host.sort_unstable();
        self.features.account.sort_unstable();
        self.hooks.finish();
        Ok(Built {
            dispatch: Dispatch { handlers: self.handlers },
            features: Arc::new(self.features),
            hooks: Arc::new(self.hooks),
            components: Arc::new(components),
        })
    }
    /// `finish` for callers that only want the IQ table and the features.
    pub fn build(self) -> (Dispatch, Arc<Features>) {
        match self.finish() {
            Ok(b) => (b.dispatch, b.features),
            Err(e) => panic!("{e}"),
        }
    }
}

/// The frozen IQ dispatch table.
pub struct Dispatch {
    handlers: HashMap<&'static str, Vec<Entry>>,
}

impl Dispatch {
    pub fn handler(&self, name: &str, ns: &str, kind: IqType, target: Target) -> Option<Arc<dyn IqHandler>> {
        self.handlers
            .get(ns)?
            .iter()
            .find(|(n, k, t, _)| *n == name && *k == kind && *t == target)
            .map(|(_, _, _, h)| h.clone())
    }
    /// True when some handler serves this payload for any target and type.
    pub fn knows_namespace(&self, ns: &str) -> bool {
        self.handlers.contains_key(ns)
    }
}

/// A module: declares its specs, registers handlers.
pub trait Module: Send + Sync + 'static {
    fn info(&self) -> ModuleInfo;
    fn register(self: Arc<Self>, r: &mut Registrar);
}
