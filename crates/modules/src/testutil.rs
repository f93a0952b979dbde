//! Test harness shared by the module tests: a registrar built from chosen modules, the
//! in-memory stores, and a fake `ServerApi` that records what modules ask of the server.
#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use bytes::Bytes;
use rookery_core::{
    Ctx, Dispatch, Extensions, Features, IqRequest, IqResult, IqType, Location, Registrar, RosterInterest, ServerApi,
    SessionEntry, Target,
};
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_stanza::{Condition, StanzaError};
pub(crate) use rookery_storage::Subscription;
use rookery_storage::{Account, RosterItem};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One connected resource of the fake server.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub jid: FullJid,
    /// Sent available presence.
    pub available: bool,
    /// The modules' session extension slots.
    pub ext: Extensions,
}

/// (user, contact, available) as passed to `presence_to`.
pub(crate) type PresenceCall = (BareJid, String, bool);

pub(crate) struct FakeServer {
    pub domains: Vec<String>,
    pub registration: AtomicBool,
    pub min_password: usize,
    pub uptime: u64,
    pub sessions: Mutex<Vec<Session>>,
    pub sent: Mutex<Vec<(FullJid, Bytes)>>,
    pub presence_calls: Mutex<Vec<PresenceCall>>,
    /// (topic, user) as passed to `publish_change`.
    pub published: Mutex<Vec<(&'static str, BareJid)>>,
    pub deleted: Mutex<Vec<BareJid>>,
}

impl Default for FakeServer {
    fn default() -> Self {
        FakeServer {
            domains: vec!["example.com".to_owned()],
            registration: AtomicBool::new(true),
            min_password: 4,
            uptime: 1234,
            sessions: Mutex::default(),
            sent: Mutex::default(),
            presence_calls: Mutex::default(),
            published: Mutex::default(),
            deleted: Mutex::default(),
        }
    }
}

impl FakeServer {
    pub fn connect(&self, jid: &str, interested: bool, available: bool) {
        let mut ext = Extensions::new();
        if interested {
            ext.set(Some(RosterInterest));
        }
        self.sessions.lock().unwrap().push(Session { jid: FullJid::parse(jid).unwrap(), available, ext });
    }
    /// The users whose data was published as changed under `topic`.
    pub fn published_for(&self, topic: &str) -> Vec<BareJid> {
        self.published.lock().unwrap().iter().filter(|(t, _)| *t == topic).map(|(_, u)| u.clone()).collect()
    }
    /// What was sent, as (recipient, UTF-8 stanza).
    pub fn sent(&self) -> Vec<(String, String)> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|(to, b)| (to.to_string(), String::from_utf8(b.to_vec()).unwrap()))
            .collect()
    }
}

#[async_trait]
impl ServerApi for FakeServer {
    fn domains(&self) -> &[String] {
        &self.domains
    }
    fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }
    async fn send_to_resource(&self, to: &FullJid, bytes: Bytes) -> bool {
        let connected = self.sessions.lock().unwrap().iter().any(|s| &s.jid == to);
        if connected {
            self.sent.lock().unwrap().push((to.clone(), bytes));
        }
        connected
    }
    async fn resources(&self, user: &BareJid, ext: Option<&'static str>) -> Vec<FullJid> {
        self.sessions
            .lock()
            .unwrap()
            .iter()
            .filter(|s| &s.jid.to_bare() == user)
            .filter(|s| ext.is_none_or(|k| s.ext.contains(k)))
            .map(|s| s.jid.clone())
            .collect()
    }
    fn send_to_session(&self, session: &SessionEntry, bytes: Bytes) -> bool {
        let connected = self.sessions.lock().unwrap().iter().any(|s| s.jid == session.jid);
        if connected {
            self.sent.lock().unwrap().push((session.jid.clone(), bytes));
        }
        connected
    }
    fn queue_capacity(&self, _session: &SessionEntry) -> usize {
        usize::MAX
    }
    async fn sessions(&self, user: &BareJid) -> Vec<SessionEntry> {
        self.sessions
            .lock()
            .unwrap()
            .iter()
            .filter(|s| &s.jid.to_bare() == user)
            .map(|s| {
                let mut e = SessionEntry::new(s.jid.clone(), Location { edge: 0, conn: 0 });
                e.available = s.available;
                e.ext = s.ext.clone();
                e
            })
            .collect()
    }
    async fn set_session_ext(&self, resource: &FullJid, key: &'static str, value: Option<Bytes>) -> bool {
        let mut found = false;
        for s in self.sessions.lock().unwrap().iter_mut().filter(|s| &s.jid == resource) {
            s.ext.set_raw(key, value.clone());
            found = true;
        }
        found
    }
    async fn is_online(&self, user: &BareJid) -> bool {
        self.sessions.lock().unwrap().iter().any(|s| &s.jid.to_bare() == user && s.available)
    }
    fn uptime_secs(&self) -> u64 {
        self.uptime
    }
    fn registration_allowed(&self) -> bool {
        self.registration.load(Ordering::SeqCst)
    }
    fn min_password_len(&self) -> usize {
        self.min_password
    }
    fn publish_change(&self, topic: &'static str, user: &BareJid) {
        self.published.lock().unwrap().push((topic, user.clone()));
    }
    async fn presence_to(&self, user: &BareJid, contact: &Jid, available: bool) {
        self.presence_calls.lock().unwrap().push((user.clone(), contact.to_string(), available));
    }
    async fn route_from_component(&self, env: rookery_stanza::Envelope) {
        if let Ok(to) = FullJid::try_from(env.to.clone()) {
            self.send_to_resource(&to, env.wire()).await;
        }
    }
    async fn account_deleted(&self, user: &BareJid) {
        self.deleted.lock().unwrap().push(user.clone());
        self.sessions.lock().unwrap().retain(|s| &s.jid.to_bare() != user);
    }
}

pub(crate) struct Harness {
    pub dispatch: Dispatch,
    pub ctx: Ctx,
    pub server: Arc<FakeServer>,
    pub features: Arc<Features>,
}

impl Harness {
    pub fn new(f: impl FnOnce(&mut Registrar)) -> Self {
        Self::with_server(FakeServer::default(), f)
    }

    pub fn with_server(server: FakeServer, f: impl FnOnce(&mut Registrar)) -> Self {
        let mut r = Registrar::new();
        f(&mut r);
        let (dispatch, features) = r.build();
        let server = Arc::new(server);
        let ctx = Ctx {
            stores: Arc::new(rookery_storage::memory::memory_stores()),
            server: server.clone(),
            features: features.clone(),
        };
        Harness { dispatch, ctx, server, features }
    }

    /// Dispatches like the router would; an unregistered (payload, type, target) is
    /// answered `feature-not-implemented` so tests can assert on it.
    pub async fn call(&self, from: Option<&str>, to: &str, kind: IqType, target: Target, payload: &str) -> IqResult {
        let payload = rookery_xml::parse_element(payload.as_bytes(), "jabber:client").unwrap();
        let Some(h) = self.dispatch.handler(&payload.name, &payload.ns, kind, target) else {
            return Err(StanzaError::new(Condition::FeatureNotImplemented));
        };
        let req = IqRequest {
            from: from.map(|f| FullJid::parse(f).unwrap()),
            to: Jid::parse(to).unwrap(),
            kind,
            id: "t1".to_owned(),
            payload,
        };
        h.handle(&self.ctx, req).await
    }

    fn target(from: &str, to: &str) -> Target {
        let to = Jid::parse(to).unwrap();
        if to.node().is_none() {
            Target::Host
        } else if FullJid::parse(from).unwrap().to_bare() == to.to_bare() {
            Target::Own
        } else {
            Target::OtherUser
        }
    }

    pub async fn get(&self, from: &str, to: &str, payload: &str) -> IqResult {
        self.call(Some(from), to, IqType::Get, Self::target(from, to), payload).await
    }

    pub async fn set(&self, from: &str, to: &str, payload: &str) -> IqResult {
        self.call(Some(from), to, IqType::Set, Self::target(from, to), payload).await
    }

    /// An IQ without `to` from a bound resource: addressed to its own account.
    pub async fn get_own(&self, from: &str, payload: &str) -> IqResult {
        let to = FullJid::parse(from).unwrap().to_bare();
        self.call(Some(from), to.as_str(), IqType::Get, Target::Own, payload).await
    }

    pub async fn set_own(&self, from: &str, payload: &str) -> IqResult {
        let to = FullJid::parse(from).unwrap().to_bare();
        self.call(Some(from), to.as_str(), IqType::Set, Target::Own, payload).await
    }

    /// Creates an account without paying for key derivation.
    pub async fn account(&self, jid: &str) {
        let created = self
            .ctx
            .stores
            .accounts
            .create(&BareJid::parse(jid).unwrap(), Account { credentials: Vec::new(), created_at: 0 })
            .await
            .unwrap();
        assert!(created);
    }

    /// Sets `user`'s roster item for `contact` to the given subscription.
    pub async fn subscription(&self, user: &str, contact: &str, subscription: Subscription) {
        let item = RosterItem {
            jid: contact.to_owned(),
            name: None,
            subscription,
            ask: false,
            pending_in: None,
            approved: false,
            groups: Vec::new(),
            hidden: false,
        };
        self.ctx.stores.roster.put_item(&BareJid::parse(user).unwrap(), item).await.unwrap();
    }
}

pub(crate) fn bare(s: &str) -> BareJid {
    BareJid::parse(s).unwrap()
}
