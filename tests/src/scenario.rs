//! Protocol scenarios as data (DESIGN §6.8): a conversation script says who sends what and
//! who must receive what, and the same script runs against any [`Target`]: the single
//! node here ([`SingleNode`]) and the loopback cluster of `rookery` processes
//! (`crate::cluster::ClusterTarget`).
//!
//! # Script format (TOML)
//!
//! ```toml
//! name = "chat"
//! description = "Two users exchange a chat message."
//! # ignore = "server bug: ..."  # optional: run only with the ignored tests
//!
//! [[user]]                      # accounts created before the first step
//! local = "alice"
//! password = "secret"
//!
//! [[client]]                    # connections; all start disconnected
//! name = "a"                    # how steps and ${a} refer to it
//! user = "alice"                # a [[user]] local part
//! resource = "phone"            # bound resource (full JID: alice@domain/phone)
//! node = 0                      # optional: which node of a cluster it connects to
//!
//! [[step]]
//! connect = { client = "a", roster = true, presence = true, priority = 5 }
//! [[step]]
//! send = { client = "a", xml = "<message to='${b}' type='chat'><body>hi</body></message>" }
//! [[step]]
//! expect = { client = "b", match = { name = "message", type = "chat", from = "${a}", child = "body", text = "hi" } }
//! [[step]]
//! expect_none = { client = "b", ms = 300 }
//! [[step]]
//! disconnect = { client = "a" }
//! [[step]]
//! restart = true
//! ```
//!
//! Each `[[step]]` holds exactly one action (plus an optional `note`):
//!
//! - `connect = { client, roster?, presence?, priority? }`: STARTTLS, SASL PLAIN, bind the
//!   client's resource. `roster = true` then fetches the roster (so the session receives
//!   roster pushes); `presence = true` (implied by `priority`) sends initial presence and
//!   waits for its reflection.
//! - `send = { client, xml }`: writes the bytes as they are.
//! - `expect = { client, match, ms?, capture? }`: waits (default 5000 ms) for a stanza that
//!   satisfies `match`. Stanzas that arrive meanwhile and do not match are kept in the
//!   client's inbox, in order, for later steps, so independent stanzas (a roster push and a
//!   presence, say) may be expected in any order. `capture = { var, child?, child_ns?,
//!   attr? }` stores an attribute (or the text when `attr` is absent) of the matched stanza
//!   or of its `child` path in `${var}` for later steps.
//! - `expect_none = { client, ms?, match? }`: waits `ms` (default 300) and fails if a stanza
//!   is in the inbox or arrives; with `match`, only matching stanzas count and the others
//!   stay in the inbox.
//! - `expect_closed = { client, ms? }`: the server closes the stream (a stream error, if
//!   any, must be expected first with `expect`).
//! - `disconnect = { client }`: sends `</stream:stream>` and waits for the server's close.
//! - `restart = true`: restarts the target on the same data; connected clients must see
//!   `<system-shutdown/>` and are disconnected (connect them again afterwards).
//!
//! `match` keys: `name` (element name), `ns` (its namespace), `child` (a `/`-separated path
//! of child element names, e.g. `"error/service-unavailable"` or `"query/item"`),
//! `child_ns` (namespace of the last element of the path), `child_attrs` (attributes the
//! element at the end of the path must have), `text` (text of the path's end, or of the
//! stanza itself without `child`), `empty = true` (no child elements at all). Every other
//! key is an attribute the stanza must carry with exactly that value (`type`, `from`, `to`,
//! `id`, ...). When several elements fit the path, any one satisfying the conditions will do.
//! `and = [{ child = ..., ... }, ...]` adds further matches the same stanza must satisfy,
//! e.g. a second child path.
//!
//! Expansion in `xml` and in every `match`/`capture` value: `${a}` is client `a`'s full
//! JID, `${a.bare}` its bare JID, `${a.resource}` its resource, `${domain}` the served
//! domain, `${var}` a captured value. Expanded values are inserted verbatim (no escaping).

use crate::TestServer;
use crate::raw::{Incoming, RawClient};
use rookery_config::Config;
use rookery_xml::Element;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const STREAMS_NS: &str = "http://etherx.jabber.org/streams";
const STREAM_ERRORS_NS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
const DEFAULT_EXPECT_MS: u64 = 5000;
const DEFAULT_NONE_MS: u64 = 300;

/// What a scenario runs against: one node, or a cluster whose nodes share the domain.
// Scenario futures are driven by the test's own task, so no `Send` bound is needed.
#[allow(async_fn_in_trait)]
pub trait Target {
    /// Starts a fresh target with empty storage.
    async fn start() -> Self
    where
        Self: Sized;
    /// Stops and starts again on the same data (addresses may change).
    async fn restart(&mut self);
    /// Stops for good.
    async fn stop(self);
    /// The plain (STARTTLS) client port of node `node`; single-node targets have one.
    fn c2s(&self, node: usize) -> SocketAddr;
    /// The domain users live on.
    fn domain(&self) -> String;
    /// Creates an account.
    async fn add_user(&self, local: &str, password: &str);
}

/// One node on a temporary data directory, restartable with the same configuration.
pub struct SingleNode {
    server: Option<TestServer>,
    cfg: Config,
    _tmp: tempfile::TempDir,
}

impl SingleNode {
    /// Starts a node after letting the caller adjust the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> SingleNode {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = crate::test_config(tmp.path());
        adjust(&mut cfg);
        let server = TestServer::start_cfg(cfg.clone()).await;
        SingleNode { server: Some(server), cfg, _tmp: tmp }
    }

    pub fn server(&self) -> &TestServer {
        self.server.as_ref().unwrap()
    }
}

impl Target for SingleNode {
    async fn start() -> Self {
        SingleNode::start_with(|_| {}).await
    }

    async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        // The store's directory lock is released when the last handle drops; give
        // lingering handles a moment rather than failing on the first attempt.
        let mut last_err = String::new();
        for _ in 0..50 {
            match rookery::start(self.cfg.clone()).await {
                Ok(server) => {
                    self.server = Some(TestServer {
                        c2s: server.c2s.unwrap(),
                        c2s_tls: server.c2s_tls.unwrap(),
                        http: server.http.unwrap(),
                        server,
                        data_dir: self.cfg.data_dir.clone(),
                        domain: self.cfg.domains[0].clone(),
                        _tmp: None,
                    });
                    return;
                }
                Err(e) => last_err = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("restarting the node failed: {last_err}");
    }

    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    fn c2s(&self, _node: usize) -> SocketAddr {
        self.server().c2s
    }

    fn domain(&self) -> String {
        self.server().domain.clone()
    }

    async fn add_user(&self, local: &str, password: &str) {
        self.server().add_user(local, password).await;
    }
}

/// A conversation script.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Set to the reason (e.g. `"server bug: ..."`) to keep the script out of the normal
    /// run; it runs with the ignored tests.
    pub ignore: Option<String>,
    #[serde(default, rename = "user")]
    pub users: Vec<UserDef>,
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientDef>,
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDef {
    pub local: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientDef {
    pub name: String,
    pub user: String,
    pub resource: String,
    #[serde(default)]
    pub node: usize,
}

/// One step: exactly one action is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub note: Option<String>,
    pub connect: Option<Connect>,
    pub disconnect: Option<ClientRef>,
    pub send: Option<SendStep>,
    pub expect: Option<Expect>,
    pub expect_none: Option<ExpectNone>,
    pub expect_closed: Option<ExpectClosed>,
    pub restart: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRef {
    pub client: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connect {
    pub client: String,
    #[serde(default)]
    pub roster: bool,
    #[serde(default)]
    pub presence: bool,
    pub priority: Option<i8>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendStep {
    pub client: String,
    pub xml: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub client: String,
    #[serde(rename = "match")]
    pub matches: Match,
    pub ms: Option<u64>,
    pub capture: Option<Capture>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectNone {
    pub client: String,
    pub ms: Option<u64>,
    #[serde(rename = "match")]
    pub matches: Option<Match>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectClosed {
    pub client: String,
    pub ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    pub var: String,
    pub child: Option<String>,
    pub child_ns: Option<String>,
    pub attr: Option<String>,
}

/// What a received stanza must look like; see the module documentation.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Match {
    pub name: Option<String>,
    pub ns: Option<String>,
    pub child: Option<String>,
    pub child_ns: Option<String>,
    #[serde(default)]
    pub child_attrs: BTreeMap<String, String>,
    pub text: Option<String>,
    pub empty: Option<bool>,
    /// Further conditions on the same stanza (e.g. a second child path).
    #[serde(default, rename = "and")]
    pub and: Vec<Match>,
    /// Every other key: an attribute of the stanza.
    #[serde(flatten)]
    pub attrs: BTreeMap<String, String>,
}

impl Match {
    /// A copy with every value expanded.
    fn expand(&self, ex: &impl Fn(&str) -> Result<String, String>) -> Result<Match, String> {
        let opt = |v: &Option<String>| v.as_deref().map(ex).transpose();
        let map = |m: &BTreeMap<String, String>| -> Result<BTreeMap<String, String>, String> {
            m.iter().map(|(k, v)| Ok((k.clone(), ex(v)?))).collect()
        };
        Ok(Match {
            name: opt(&self.name)?,
            ns: opt(&self.ns)?,
            child: opt(&self.child)?,
            child_ns: opt(&self.child_ns)?,
            child_attrs: map(&self.child_attrs)?,
            text: opt(&self.text)?,
            empty: self.empty,
            and: self.and.iter().map(|m| m.expand(ex)).collect::<Result<_, _>>()?,
            attrs: map(&self.attrs)?,
        })
    }

    /// Whether `e` satisfies every condition.
    pub fn matches(&self, e: &Element) -> bool {
        if self.name.as_deref().is_some_and(|n| n != e.name) || self.ns.as_deref().is_some_and(|n| n != e.ns) {
            return false;
        }
        if self.attrs.iter().any(|(k, v)| e.get_attr(k) != Some(v.as_str())) {
            return false;
        }
        if self.empty == Some(true) && e.elements().next().is_some() {
            return false;
        }
        if !self.and.iter().all(|m| m.matches(e)) {
            return false;
        }
        let ends = match &self.child {
            Some(path) => descendants(e, path, self.child_ns.as_deref()),
            None => vec![e],
        };
        ends.into_iter().any(|end| {
            (self.child.is_none() || self.child_attrs.iter().all(|(k, v)| end.get_attr(k) == Some(v.as_str())))
                && self.text.as_deref().is_none_or(|t| end.text_content() == t)
        })
    }
}

/// The elements at the end of `path` (child names separated by `/`) below `e`; the last
/// one must be in `last_ns` when given.
fn descendants<'e>(e: &'e Element, path: &str, last_ns: Option<&str>) -> Vec<&'e Element> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut level = vec![e];
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        level = level
            .into_iter()
            .flat_map(|el| el.elements())
            .filter(|c| c.name == *part && (!last || last_ns.is_none_or(|ns| c.ns == ns)))
            .collect();
    }
    level
}

/// Reads a scenario file.
pub fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses and checks a scenario.
pub fn parse(text: &str) -> Result<Scenario, String> {
    let sc: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
    sc.check()?;
    Ok(sc)
}

/// Every `*.toml` file of a directory, sorted by name.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

impl Step {
    fn client(&self) -> Option<&str> {
        [
            self.connect.as_ref().map(|c| c.client.as_str()),
            self.disconnect.as_ref().map(|c| c.client.as_str()),
            self.send.as_ref().map(|c| c.client.as_str()),
            self.expect.as_ref().map(|c| c.client.as_str()),
            self.expect_none.as_ref().map(|c| c.client.as_str()),
            self.expect_closed.as_ref().map(|c| c.client.as_str()),
        ]
        .into_iter()
        .flatten()
        .next()
    }

    fn actions(&self) -> usize {
        [
            self.connect.is_some(),
            self.disconnect.is_some(),
            self.send.is_some(),
            self.expect.is_some(),
            self.expect_none.is_some(),
            self.expect_closed.is_some(),
            self.restart.is_some(),
        ]
        .into_iter()
        .filter(|x| *x)
        .count()
    }
}

impl Scenario {
    /// Static checks: names refer to declared users and clients, one action per step.
    pub fn check(&self) -> Result<(), String> {
        for c in &self.clients {
            if !self.users.iter().any(|u| u.local == c.user) {
                return Err(format!("client {:?} uses undeclared user {:?}", c.name, c.user));
            }
            if self.clients.iter().filter(|o| o.name == c.name).count() > 1 {
                return Err(format!("client {:?} declared twice", c.name));
            }
            if c.name == "domain" || c.name.contains('.') {
                return Err(format!("client name {:?} is reserved or contains '.'", c.name));
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            let n = i + 1;
            if s.actions() != 1 {
                return Err(format!("step {n} must have exactly one action, has {}", s.actions()));
            }
            if let Some(c) = s.client()
                && !self.clients.iter().any(|d| d.name == c)
            {
                return Err(format!("step {n} names undeclared client {c:?}"));
            }
            if s.restart == Some(false) {
                return Err(format!("step {n}: `restart = false` does nothing; remove it"));
            }
        }
        Ok(())
    }
}

/// A connected client and the stanzas it received that no step consumed yet.
struct Conn {
    raw: RawClient,
    inbox: VecDeque<Element>,
    closed: bool,
}

impl Conn {
    /// Reads one more thing into the inbox; false on timeout or when the stream is
    /// closed.
    async fn pull(&mut self, until: tokio::time::Instant) -> bool {
        if self.closed {
            return false;
        }
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match self.raw.recv_timeout(left).await {
            Some(Incoming::Element(e)) => {
                self.inbox.push_back(e);
                true
            }
            Some(Incoming::Header) => true,
            Some(Incoming::Closed) => {
                self.closed = true;
                false
            }
            None => false,
        }
    }

    fn describe_inbox(&self) -> String {
        if self.inbox.is_empty() {
            return "inbox empty".into();
        }
        let items: Vec<String> =
            self.inbox.iter().map(|e| String::from_utf8_lossy(&e.to_bytes("jabber:client")).into_owned()).collect();
        format!("inbox: [{}]", items.join(", "))
    }
}

struct Runner<'a, T: Target> {
    target: &'a mut T,
    sc: &'a Scenario,
    domain: String,
    conns: HashMap<String, Conn>,
    vars: HashMap<String, String>,
}

/// Runs the steps of `sc` against a started target: creates the users, then plays the
/// steps in order. The error names the failing step.
pub async fn run<T: Target>(sc: &Scenario, target: &mut T) -> Result<(), String> {
    sc.check()?;
    for u in &sc.users {
        target.add_user(&u.local, &u.password).await;
    }
    let domain = target.domain();
    let mut r = Runner { target, sc, domain, conns: HashMap::new(), vars: HashMap::new() };
    for (i, step) in sc.steps.iter().enumerate() {
        r.step(step).await.map_err(|e| {
            let note = step.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
            format!("scenario {:?}, step {}{note}: {e}", sc.name, i + 1)
        })?;
    }
    for c in r.conns.values_mut() {
        if !c.closed {
            c.raw.send("</stream:stream>").await;
        }
    }
    Ok(())
}

/// Loads a script, starts a fresh target, runs it and stops the target.
pub async fn run_file<T: Target>(path: &Path) -> Result<(), String> {
    let sc = load(path)?;
    let mut target = T::start().await;
    let res = run(&sc, &mut target).await;
    target.stop().await;
    res
}

impl<T: Target> Runner<'_, T> {
    fn def(&self, client: &str) -> Result<&ClientDef, String> {
        self.sc.clients.iter().find(|c| c.name == client).ok_or_else(|| format!("unknown client {client:?}"))
    }

    fn bare(&self, d: &ClientDef) -> String {
        format!("{}@{}", d.user, self.domain)
    }

    /// Replaces every `${...}` in `s`.
    fn expand(&self, s: &str) -> Result<String, String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
            let key = &after[..end];
            out.push_str(&self.lookup(key)?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn lookup(&self, key: &str) -> Result<String, String> {
        if key == "domain" {
            return Ok(self.domain.clone());
        }
        if let Some(v) = self.vars.get(key) {
            return Ok(v.clone());
        }
        let (client, part) = key.split_once('.').unwrap_or((key, ""));
        let d = self.def(client).map_err(|_| format!("unknown variable ${{{key}}}"))?;
        match part {
            "" => Ok(format!("{}/{}", self.bare(d), d.resource)),
            "bare" => Ok(self.bare(d)),
            "resource" => Ok(d.resource.clone()),
            other => Err(format!("unknown client property {other:?} in ${{{key}}}")),
        }
    }

    fn conn(&mut self, client: &str) -> Result<&mut Conn, String> {
        self.conns.get_mut(client).ok_or_else(|| format!("client {client:?} is not connected"))
    }

    async fn step(&mut self, step: &Step) -> Result<(), String> {
        if let Some(c) = &step.connect {
            return self.connect(c).await;
        }
        if let Some(c) = &step.disconnect {
            return self.disconnect(&c.client).await;
        }
        if let Some(s) = &step.send {
            let xml = self.expand(&s.xml)?;
            let conn = self.conn(&s.client)?;
            if conn.closed {
                return Err(format!("cannot send as {:?}: its stream is closed", s.client));
            }
            conn.raw.send(&xml).await;
            return Ok(());
        }
        if let Some(e) = &step.expect {
            return self.expect(e).await;
        }
        if let Some(e) = &step.expect_none {
            return self.expect_none(e).await;
        }
        if let Some(e) = &step.expect_closed {
            let until = tokio::time::Instant::now() + Duration::from_millis(e.ms.unwrap_or(DEFAULT_EXPECT_MS));
            let conn = self.conn(&e.client)?;
            while conn.pull(until).await {}
            if !conn.closed {
                return Err(format!("stream of {:?} still open; {}", e.client, conn.describe_inbox()));
            }
            return Ok(());
        }
        if step.restart == Some(true) {
            return self.restart().await;
        }
        Err("step without an action".into())
    }

    async fn connect(&mut self, c: &Connect) -> Result<(), String> {
        let d = self.def(&c.client)?.clone();
        if self.conns.get(&c.client).is_some_and(|x| !x.closed) {
            return Err(format!("client {:?} is already connected", c.client));
        }
        let password = self
            .sc
            .users
            .iter()
            .find(|u| u.local == d.user)
            .map(|u| u.password.clone())
            .ok_or_else(|| format!("unknown user {:?}", d.user))?;
        let addr = self.target.c2s(d.node);
        let raw = RawClient::login(addr, &d.user, &password, &d.resource).await;
        let expected = format!("{}/{}", self.bare(&d), d.resource);
        if raw.jid.as_deref() != Some(expected.as_str()) {
            return Err(format!("{:?} bound {:?}, expected {expected:?}", c.client, raw.jid));
        }
        self.conns.insert(c.client.clone(), Conn { raw, inbox: VecDeque::new(), closed: false });
        let until = || tokio::time::Instant::now() + Duration::from_millis(DEFAULT_EXPECT_MS);
        if c.roster {
            let conn = self.conn(&c.client)?;
            conn.raw.send("<iq type='get' id='connect-roster'><query xmlns='jabber:iq:roster'/></iq>").await;
            let m = Match {
                name: Some("iq".into()),
                attrs: [("id".into(), "connect-roster".into()), ("type".into(), "result".into())].into(),
                ..Match::default()
            };
            wait_for(conn, &m, until()).await.map_err(|e| format!("roster get of {:?}: {e}", c.client))?;
        }
        if c.presence || c.priority.is_some() {
            let xml = match c.priority {
                Some(p) => format!("<presence><priority>{p}</priority></presence>"),
                None => "<presence/>".into(),
            };
            let conn = self.conn(&c.client)?;
            conn.raw.send(&xml).await;
            let m = Match {
                name: Some("presence".into()),
                attrs: [("from".into(), expected.clone())].into(),
                ..Match::default()
            };
            wait_for(conn, &m, until()).await.map_err(|e| format!("initial presence of {:?}: {e}", c.client))?;
        }
        Ok(())
    }

    async fn disconnect(&mut self, client: &str) -> Result<(), String> {
        let mut conn = self.conns.remove(client).ok_or_else(|| format!("client {client:?} is not connected"))?;
        if conn.closed {
            return Ok(());
        }
        conn.raw.send("</stream:stream>").await;
        let until = tokio::time::Instant::now() + Duration::from_millis(DEFAULT_EXPECT_MS);
        while conn.pull(until).await {}
        if !conn.closed {
            return Err(format!("the server did not close the stream of {client:?} after ours"));
        }
        Ok(())
    }

    async fn expect(&mut self, e: &Expect) -> Result<(), String> {
        let m = e.matches.expand(&|s| self.expand(s))?;
        let until = tokio::time::Instant::now() + Duration::from_millis(e.ms.unwrap_or(DEFAULT_EXPECT_MS));
        let conn = self.conn(&e.client)?;
        let got = wait_for(conn, &m, until).await.map_err(|err| format!("{:?} expected {m:?}: {err}", e.client))?;
        if let Some(cap) = &e.capture {
            let child_ns = cap.child_ns.as_deref().map(|s| self.expand(s)).transpose()?;
            let el = match &cap.child {
                Some(path) => descendants(&got, &self.expand(path)?, child_ns.as_deref()).into_iter().next().cloned(),
                None => Some(got.clone()),
            }
            .ok_or_else(|| format!("capture {:?}: no {:?} in the matched stanza", cap.var, cap.child))?;
            let value = match &cap.attr {
                Some(a) => el
                    .get_attr(a)
                    .map(str::to_owned)
                    .ok_or_else(|| format!("capture {:?}: no attribute {a:?}", cap.var))?,
                None => el.text_content(),
            };
            self.vars.insert(cap.var.clone(), value);
        }
        Ok(())
    }

    async fn expect_none(&mut self, e: &ExpectNone) -> Result<(), String> {
        let m = e.matches.as_ref().map(|m| m.expand(&|s| self.expand(s))).transpose()?;
        let until = tokio::time::Instant::now() + Duration::from_millis(e.ms.unwrap_or(DEFAULT_NONE_MS));
        let conn = self.conn(&e.client)?;
        let hit = |conn: &Conn| match &m {
            Some(m) => conn.inbox.iter().find(|x| m.matches(x)).cloned(),
            None => conn.inbox.front().cloned(),
        };
        loop {
            if let Some(x) = hit(conn) {
                let text = String::from_utf8_lossy(&x.to_bytes("jabber:client")).into_owned();
                return Err(format!("{:?} expected nothing, got {text}", e.client));
            }
            if !conn.pull(until).await {
                if conn.closed {
                    return Err(format!("the stream of {:?} was closed", e.client));
                }
                return Ok(());
            }
        }
    }

    async fn restart(&mut self) -> Result<(), String> {
        self.target.restart().await;
        let until = tokio::time::Instant::now() + Duration::from_millis(DEFAULT_EXPECT_MS);
        let mut names: Vec<String> = self.conns.keys().cloned().collect();
        names.sort();
        for name in names {
            let Some(mut conn) = self.conns.remove(&name) else {
                continue;
            };
            if conn.closed {
                continue;
            }
            while conn.pull(until).await {}
            if !conn.closed {
                return Err(format!("{name:?} was not disconnected by the restart"));
            }
            let shutdown = conn
                .inbox
                .iter()
                .any(|e| e.is("error", STREAMS_NS) && e.elements().any(|c| c.is("system-shutdown", STREAM_ERRORS_NS)));
            if !shutdown {
                return Err(format!("{name:?} was disconnected without <system-shutdown/>; {}", conn.describe_inbox()));
            }
        }
        Ok(())
    }
}

/// Waits until a stanza matching `m` is in the inbox, removes and returns it.
async fn wait_for(conn: &mut Conn, m: &Match, until: tokio::time::Instant) -> Result<Element, String> {
    loop {
        if let Some(pos) = conn.inbox.iter().position(|x| m.matches(x)) {
            return Ok(conn.inbox.remove(pos).unwrap());
        }
        if !conn.pull(until).await {
            let why = if conn.closed { "stream closed" } else { "timed out" };
            return Err(format!("{why}; {}", conn.describe_inbox()));
        }
    }
}
