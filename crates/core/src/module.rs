//! The module API. A module declares what it implements (`ModuleInfo`, which generates
//! docs/compliance.md) and registers its IQ handlers and disco features once, at
//! start-up; the dispatch table is built then and never per stanza (DESIGN §3).

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
    /// Full JIDs of the user's connected resources that have `interest`.
    async fn resources(&self, user: &BareJid, interest: Interest) -> Vec<FullJid>;
    /// Records that a resource asked for something it must now get pushes of.
    async fn mark_interest(&self, resource: &FullJid, interest: Interest);
    /// Whether the user has at least one available resource.
    async fn is_online(&self, user: &BareJid) -> bool;
    /// Seconds since the server started.
    fn uptime_secs(&self) -> u64;
    fn registration_allowed(&self) -> bool;
    fn min_password_len(&self) -> usize;
    /// The block list changed (XEP-0191 §3.3/§3.4): refresh caches and send the presence
    /// changes the spec asks for.
    async fn blocklist_changed(&self, user: &BareJid, blocked: &[String], unblocked: &[String]);
    /// An account was deleted (XEP-0077 cancel): close its sessions.
    async fn account_deleted(&self, user: &BareJid);
    /// The user's archiving preferences changed (XEP-0313 §5): drop cached copies.
    fn archive_prefs_changed(&self, user: &BareJid);
    /// Turns XEP-0280 carbons on or off for one bound resource (§4, §5). Returns false
    /// when the resource is not bound here; a server without per-session state keeps
    /// this default and never enables carbons.
    async fn set_carbons(&self, _resource: &FullJid, _on: bool) -> bool {
        false
    }
}

/// What a resource asked to be kept informed about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Every connected resource.
    Any,
    /// Requested the roster: gets roster pushes (RFC 6121 §2.1.6).
    Roster,
    /// Requested the block list: gets block/unblock pushes (XEP-0191 §3.3, §3.4).
    Blocklist,
}

/// Passed to every handler call.
#[derive(Clone)]
pub struct Ctx {
    pub stores: Stores,
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

/// What the server advertises in disco#info, collected from the registered modules.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub host: Vec<&'static str>,
    pub account: Vec<&'static str>,
    pub identities: Vec<Identity>,
    pub modules: Vec<ModuleInfo>,
}

type Entry = (&'static str, IqType, Target, Arc<dyn IqHandler>);

/// Collects handlers and features at start-up.
#[derive(Default)]
pub struct Registrar {
    handlers: HashMap<&'static str, Vec<Entry>>,
    features: Features,
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
    pub fn add<M: Module>(&mut self, m: Arc<M>) {
        self.features.modules.push(m.info());
        m.register(self);
    }
    /// Freezes the registrations into the dispatch table.
    pub fn build(mut self) -> (Dispatch, Arc<Features>) {
        self.features.host.sort_unstable();
        self.features.account.sort_unstable();
        (Dispatch { handlers: self.handlers }, Arc::new(self.features))
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
