//! Scenario files: the TOML schema, `--set` overrides, validation with errors that name the
//! key, the allocation of users to scenario kinds, and pass criteria.
//!
//! Owns the description of a run; it must not touch the network or clocks. The orchestration
//! in `run` turns a validated [`Scenario`] into connections and schedules.
//!
//! Every table rejects unknown keys (`deny_unknown_fields`), so a typo is an error that
//! names the key instead of a silently ignored setting. docs/loadtest.md lists every key.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::sasl::Mechanism;
use crate::schedule::{Process, RatePhase, Schedule};
use crate::users::{UserPool, UsersError};

/// A problem with a scenario file or an override.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("--set {arg}: {message}")]
    Override { arg: String, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid { path: String, key: String, message: String },
    #[error(transparent)]
    Users(#[from] UsersError),
}

/// A duration written as `"500ms"`, `"10s"`, `"2m"`, `"1h"` (decimals allowed) or a whole
/// number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let v: f64 =
            num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. \"10s\", \"500ms\", \"2m\""))?;
        let mult = match unit.trim() {
            "ms" => 0.001,
            "s" | "" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("invalid duration {s:?}: unknown unit {u:?} (use ms, s, m or h)")),
        };
        let secs = v * mult;
        if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
            return Err(format!("invalid duration {s:?}"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"10s\", \"500ms\", \"2m\" or a number of seconds")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_secs(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|v| Dur(Duration::from_secs(v)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Dur, E> {
                Dur::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// How the client secures the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// RFC 6120 §5: plain TCP, then `<starttls/>`.
    #[default]
    Starttls,
    /// XEP-0368: TLS from the first byte.
    Direct,
    /// No TLS at all (only for servers that allow it, e.g. behind a TLS terminator).
    None,
}

/// `[target]`: the server under test and how to talk to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// `host:port` to connect to (resolved once at start).
    pub address: String,
    /// The XMPP domain (`to` of the stream header, domain of generated JIDs).
    pub domain: String,
    #[serde(default)]
    pub tls: TlsMode,
    /// Mechanisms in order of preference.
    #[serde(default = "default_sasl")]
    pub sasl: Vec<String>,
    #[serde(default = "default_resource")]
    pub resource: String,
    /// Local source addresses, `"127.0.0.1-127.0.0.20"` and/or a comma-separated list.
    #[serde(default)]
    pub source_addrs: Option<String>,
    /// Try XEP-0198 (enable with resume) when the server offers it.
    #[serde(default = "yes")]
    pub stream_management: bool,
    /// Send initial presence after binding.
    #[serde(default = "yes")]
    pub initial_presence: bool,
    /// Whitespace keepalive interval on idle connections (RFC 6120 §4.6.1); 0 disables.
    #[serde(default = "default_keepalive")]
    pub keepalive: Dur,
    /// Limit for one login (TCP connect to bound resource).
    #[serde(default = "default_login_timeout")]
    pub login_timeout: Dur,
    /// With stream management, request an ack after this many outbound stanzas.
    #[serde(default = "default_ack_every")]
    pub ack_every: u32,
    /// Largest element accepted from the server.
    #[serde(default = "default_max_stanza")]
    pub max_stanza_bytes: usize,
}

fn yes() -> bool {
    true
}
fn default_sasl() -> Vec<String> {
    Mechanism::ALL.iter().map(|m| m.name().to_owned()).collect()
}
fn default_resource() -> String {
    "load".into()
}
fn default_keepalive() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_login_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_ack_every() -> u32 {
    25
}
fn default_max_stanza() -> usize {
    1 << 20
}

/// `[users]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersSpec {
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "one")]
    pub first: u64,
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub password: Option<String>,
    /// `jid,password` file; replaces prefix/first/count/password. Relative to the scenario.
    #[serde(default)]
    pub csv: Option<PathBuf>,
}

fn default_prefix() -> String {
    "load".into()
}
fn one() -> u64 {
    1
}

/// How `provision` creates accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProvisionMethod {
    /// Rookery's admin API, `POST /admin/users`.
    #[default]
    Admin,
    /// XEP-0077 in-band registration.
    Ibr,
}

/// `[provision]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProvisionSpec {
    #[serde(default)]
    pub method: ProvisionMethod,
    /// Base URL of the admin API, e.g. `http://127.0.0.1:5280`.
    #[serde(default)]
    pub admin_url: Option<String>,
    #[serde(default)]
    pub admin_token: Option<String>,
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    #[serde(default)]
    pub concurrency: Option<usize>,
}

/// `[run]`: settings shared by all scenario kinds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Seed for Poisson arrivals (the same in every worker).
    #[serde(default = "one")]
    pub seed: u64,
    /// Wait after the last load phase before counting undelivered messages as lost.
    #[serde(default = "default_grace")]
    pub grace: Dur,
    /// Logins per second while bringing up the connections a scenario needs before its
    /// load starts (chat, presence, mam, reconnect).
    #[serde(default = "default_connect_rate")]
    pub connect_rate: f64,
    /// Longest wait for that set-up (logins, subscriptions, archive seeding).
    #[serde(default = "default_setup_timeout")]
    pub setup_timeout: Dur,
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            seed: 1,
            grace: default_grace(),
            connect_rate: default_connect_rate(),
            setup_timeout: default_setup_timeout(),
        }
    }
}

fn default_grace() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_connect_rate() -> f64 {
    200.0
}
fn default_setup_timeout() -> Dur {
    Dur(Duration::from_secs(120))
}

/// Arrival process name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalKind {
    #[default]
    Constant,
    Poisson,
}

/// Which part of the envelope a phase is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseKind {
    /// Linear from `from` (default 0) to `to` (default the scenario's `rate`).
    Ramp,
    /// Constant at `rate` (default the scenario's `rate`).
    Steady,
    /// Linear from `from` (default the scenario's `rate`) to `to` (default 0).
    Cooldown,
}

/// One entry of `phases = [...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    pub phase: PhaseKind,
    pub duration: Dur,
    #[serde(default)]
    pub from: Option<f64>,
    #[serde(default)]
    pub to: Option<f64>,
    #[serde(default)]
    pub rate: Option<f64>,
}

/// The load envelope shared by every kind with arrivals (the `rate`, `arrival`, `phases`
/// and `duration` keys of each table).
#[derive(Debug, Clone, Default)]
pub struct Load {
    /// Target rate (events per second) for steady phases and ramp ends.
    pub rate: f64,
    pub arrival: ArrivalKind,
    /// Explicit phases; without them, one steady phase of `duration`.
    pub phases: Vec<PhaseSpec>,
    pub duration: Option<Dur>,
}

/// `[login]`: a login storm.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginSpec {
    /// Distinct accounts the arrivals cycle through.
    pub users: u64,
    #[serde(default)]
    pub user_offset: Option<u64>,
    /// How long each login stays connected before a clean close.
    #[serde(default)]
    pub hold: Dur,
    /// Target rate (events per second) for steady phases and ramp ends.
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub arrival: ArrivalKind,
    /// Explicit phases; without them, one steady phase of `duration`.
    #[serde(default)]
    pub phases: Vec<PhaseSpec>,
    #[serde(default)]
    pub duration: Option<Dur>,
    #[serde(default)]
    pub pass: Vec<String>,
}

/// `[idle]`: hold many authenticated connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleSpec {
    pub connections: u64,
    #[serde(default)]
    pub user_offset: Option<u64>,
    /// Connections opened per second until all are up.
    #[serde(default = "default_login_rate")]
    pub login_rate: f64,
    /// How long to hold them once the last login was scheduled.
    pub hold: Dur,
    #[serde(default)]
    pub pass: Vec<String>,
}

fn default_login_rate() -> f64 {
    500.0
}

/// `[chat]`: 1:1 messages between pairs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSpec {
    pub pairs: u64,
    #[serde(default)]
    pub user_offset: Option<u64>,
    /// Both members of a pair send (two flows per pair).
    #[serde(default = "yes")]
    pub bidirectional: bool,
    /// Size of the padding added to each body.
    #[serde(default = "default_body_bytes")]
    pub body_bytes: usize,
    /// Target rate (events per second) for steady phases and ramp ends.
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub arrival: ArrivalKind,
    /// Explicit phases; without them, one steady phase of `duration`.
    #[serde(default)]
    pub phases: Vec<PhaseSpec>,
    #[serde(default)]
    pub duration: Option<Dur>,
    #[serde(default)]
    pub pass: Vec<String>,
}

fn default_body_bytes() -> usize {
    32
}

/// `[presence]`: roster fan-out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSpec {
    /// Users who change presence; each has its own `contacts`.
    pub groups: u64,
    /// Contacts subscribed to each changing user (the fan-out K).
    pub contacts: u64,
    #[serde(default)]
    pub user_offset: Option<u64>,
    /// Target rate (events per second) for steady phases and ramp ends.
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub arrival: ArrivalKind,
    /// Explicit phases; without them, one steady phase of `duration`.
    #[serde(default)]
    pub phases: Vec<PhaseSpec>,
    #[serde(default)]
    pub duration: Option<Dur>,
    #[serde(default)]
    pub pass: Vec<String>,
}

/// `[mam]`: XEP-0313 page queries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MamSpec {
    pub users: u64,
    #[serde(default)]
    pub user_offset: Option<u64>,
    /// `<max/>` of each RSM page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Messages each user sends to its neighbour before queries start, to fill archives.
    #[serde(default)]
    pub seed_messages: u32,
    /// Only even users of the block seed, each to the next user (which then only reads).
    #[serde(default)]
    pub seed_one_way: bool,
    /// The first `pagers` users of the block page through their whole archive in a closed
    /// loop while the phases last (the isolation benchmark's heavy reader).
    #[serde(default)]
    pub pagers: u64,
    /// Target rate (events per second) for steady phases and ramp ends.
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub arrival: ArrivalKind,
    /// Explicit phases; without them, one steady phase of `duration`.
    #[serde(default)]
    pub phases: Vec<PhaseSpec>,
    #[serde(default)]
    pub duration: Option<Dur>,
    #[serde(default)]
    pub pass: Vec<String>,
}

fn default_page_size() -> u32 {
    20
}

/// `[reconnect]`: connections dropped and re-established, resuming with XEP-0198 when
/// the server supports it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectSpec {
    pub users: u64,
    #[serde(default)]
    pub user_offset: Option<u64>,
    #[serde(default = "yes")]
    pub resume: bool,
    /// Target rate (events per second) for steady phases and ramp ends.
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub arrival: ArrivalKind,
    /// Explicit phases; without them, one steady phase of `duration`.
    #[serde(default)]
    pub phases: Vec<PhaseSpec>,
    #[serde(default)]
    pub duration: Option<Dur>,
    #[serde(default)]
    pub pass: Vec<String>,
}

macro_rules! has_load {
    ($($t:ty),*) => {$(
        impl $t {
            /// The load envelope of this table.
            pub fn load(&self) -> Load {
                Load { rate: self.rate, arrival: self.arrival, phases: self.phases.clone(), duration: self.duration }
            }
        }
    )*};
}
has_load!(LoginSpec, ChatSpec, PresenceSpec, MamSpec, ReconnectSpec, MucSpec);

/// `[muc]`: accepted so scenario files are ready, reported as unsupported by this build.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MucSpec {
    #[serde(default)]
    pub rooms: u64,
    #[serde(default)]
    pub occupants: u64,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub user_offset: Option<u64>,
    /// Target rate (events per second) for steady phases and ramp ends.
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub arrival: ArrivalKind,
    /// Explicit phases; without them, one steady phase of `duration`.
    #[serde(default)]
    pub phases: Vec<PhaseSpec>,
    #[serde(default)]
    pub duration: Option<Dur>,
    #[serde(default)]
    pub pass: Vec<String>,
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub target: TargetSpec,
    pub users: UsersSpec,
    #[serde(default)]
    pub provision: ProvisionSpec,
    #[serde(default)]
    pub run: RunSpec,
    pub login: Option<LoginSpec>,
    pub idle: Option<IdleSpec>,
    pub chat: Option<ChatSpec>,
    pub presence: Option<PresenceSpec>,
    pub mam: Option<MamSpec>,
    pub reconnect: Option<ReconnectSpec>,
    pub muc: Option<MucSpec>,
}

/// Scenario kinds, in the order users are allocated to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Login,
    Idle,
    Chat,
    Presence,
    Mam,
    Reconnect,
    Muc,
}

impl Kind {
    pub const ALL: [Kind; 7] =
        [Kind::Login, Kind::Idle, Kind::Chat, Kind::Presence, Kind::Mam, Kind::Reconnect, Kind::Muc];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Idle => "idle",
            Kind::Chat => "chat",
            Kind::Presence => "presence",
            Kind::Mam => "mam",
            Kind::Reconnect => "reconnect",
            Kind::Muc => "muc",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Counters a scenario of this kind reports (all usable in pass criteria).
    pub fn counters(self) -> &'static [&'static str] {
        match self {
            Kind::Login => &["attempts", "established", "failed", "errors", "stream_errors", "disconnects"],
            Kind::Idle => {
                &["attempts", "established", "failed", "open_at_end", "errors", "stream_errors", "disconnects"]
            }
            Kind::Chat => &[
                "sent",
                "delivered",
                "lost",
                "duplicates",
                "reordered",
                "unsent",
                "errors",
                "stream_errors",
                "disconnects",
                "setup_failures",
            ],
            Kind::Presence => &[
                "sent",
                "expected",
                "delivered",
                "lost",
                "duplicates",
                "reordered",
                "unsent",
                "errors",
                "stream_errors",
                "disconnects",
                "setup_failures",
            ],
            Kind::Mam => &[
                "queries",
                "answered",
                "pages",
                "passes",
                "unanswered",
                "results",
                "unsent",
                "errors",
                "stream_errors",
                "disconnects",
                "setup_failures",
            ],
            Kind::Reconnect => &[
                "reconnects",
                "resumed",
                "fresh",
                "failed",
                "unsent",
                "errors",
                "stream_errors",
                "disconnects",
                "setup_failures",
            ],
            Kind::Muc => &["errors"],
        }
    }

    /// Derived metrics (ratios and rates) usable in pass criteria.
    pub fn derived(self) -> &'static [&'static str] {
        match self {
            Kind::Login => &["login_rate", "failure_ratio"],
            Kind::Idle => &["failure_ratio"],
            Kind::Chat | Kind::Presence => &["loss", "loss_ratio", "delivered_rate", "sent_rate"],
            Kind::Mam => &["answered_rate", "loss"],
            Kind::Reconnect => &["resumed_ratio", "reconnect_rate"],
            Kind::Muc => &[],
        }
    }

    /// What the scenario's main latency histogram measures.
    pub fn latency_name(self) -> &'static str {
        match self {
            Kind::Login | Kind::Idle => "login",
            Kind::Chat => "delivery",
            Kind::Presence => "broadcast",
            Kind::Mam => "query",
            Kind::Reconnect => "reconnect",
            Kind::Muc => "delivery",
        }
    }
}

/// Statistics of a latency histogram usable in criteria, with a `_ms` suffix.
pub const LATENCY_STATS: [&str; 9] = ["min", "mean", "p50", "p75", "p90", "p95", "p99", "p999", "max"];
/// Connection phases with their own histograms, usable as `<phase>_<stat>_ms`.
pub const PHASES: [&str; 4] = ["connect", "tls", "auth", "bind"];

/// A comparison in a pass criterion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

/// One pass criterion, e.g. `p99_ms < 50`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Criterion {
    pub metric: String,
    pub op: Op,
    pub value: f64,
}

impl std::fmt::Display for Criterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op.symbol(), self.value)
    }
}

impl Criterion {
    /// Parses `metric op number` and checks the metric exists for `kind`.
    pub fn parse(text: &str, kind: Kind) -> Result<Criterion, String> {
        let ops = [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("!=", Op::Ne), ("<", Op::Lt), (">", Op::Gt)];
        let (pos, sym, op) = ops
            .iter()
            .filter_map(|(s, o)| text.find(s).map(|p| (p, *s, *o)))
            .min_by_key(|(p, s, _)| (*p, std::cmp::Reverse(s.len())))
            .ok_or_else(|| format!("{text:?} has no comparison; write e.g. \"p99_ms < 50\""))?;
        let metric = text[..pos].trim();
        let value = text[pos + sym.len()..].trim();
        let value: f64 =
            value.parse().map_err(|_| format!("{text:?}: {value:?} is not a number; write e.g. \"p99_ms < 50\""))?;
        if !is_metric(metric, kind) {
            return Err(format!(
                "unknown metric `{metric}` in {text:?} for [{}]; known: {}",
                kind.name(),
                metric_names(kind).join(", ")
            ));
        }
        Ok(Criterion { metric: metric.to_owned(), op, value })
    }
}

/// Every metric name a criterion of `kind` may use.
pub fn metric_names(kind: Kind) -> Vec<String> {
    let mut v: Vec<String> = kind.counters().iter().chain(kind.derived()).map(|s| (*s).to_owned()).collect();
    v.extend(LATENCY_STATS.iter().map(|s| format!("{s}_ms")));
    v.extend(PHASES.iter().flat_map(|p| LATENCY_STATS.iter().map(move |s| format!("{p}_{s}_ms"))));
    v
}

fn is_metric(m: &str, kind: Kind) -> bool {
    metric_names(kind).iter().any(|n| n == m)
}

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub file: ScenarioFile,
    pub pool: UserPool,
    pub sasl: Vec<Mechanism>,
    /// Pool indexes each kind uses.
    pub blocks: BTreeMap<Kind, Range<u64>>,
    pub criteria: BTreeMap<Kind, Vec<Criterion>>,
    /// Directory of the scenario file (for relative paths).
    pub dir: PathBuf,
}

impl Scenario {
    /// Reads a file and applies `overrides` (`key.path=value`).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ScenarioError::Read { path: path.display().to_string(), error })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &path.display().to_string(), &dir, overrides)
    }

    /// Parses scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, dir: &Path, overrides: &[String]) -> Result<Scenario, ScenarioError> {
        let perr = |message: String| ScenarioError::Parse { path: origin.to_owned(), message };
        let file: ScenarioFile = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| perr(e.to_string()))?
        } else {
            let mut table: toml::Table = toml::from_str(text).map_err(|e| perr(e.to_string()))?;
            for o in overrides {
                apply_override(&mut table, o)?;
            }
            // Going through text again keeps toml's error messages, which quote the key.
            let again = toml::to_string(&table).map_err(|e| perr(e.to_string()))?;
            toml::from_str(&again).map_err(|e| perr(format!("after --set overrides: {e}")))?
        };
        Self::validate(file, origin, dir)
    }

    fn validate(file: ScenarioFile, origin: &str, dir: &Path) -> Result<Scenario, ScenarioError> {
        let invalid = |key: &str, message: String| ScenarioError::Invalid {
            path: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        let t = &file.target;
        if t.address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(invalid("target.address", format!("{:?} is not host:port", t.address)));
        }
        if t.domain.is_empty() || t.domain.contains(['@', '/', ' ']) {
            return Err(invalid("target.domain", format!("{:?} is not a domain", t.domain)));
        }
        let mut sasl = Vec::new();
        for (i, m) in t.sasl.iter().enumerate() {
            let mech = Mechanism::from_name(m).ok_or_else(|| {
                invalid(
                    &format!("target.sasl[{i}]"),
                    format!("unknown mechanism {m:?}; known: SCRAM-SHA-256, SCRAM-SHA-1, PLAIN"),
                )
            })?;
            sasl.push(mech);
        }
        if sasl.is_empty() {
            return Err(invalid("target.sasl", "at least one mechanism is needed".into()));
        }
        if t.resource.is_empty() || t.resource.contains(['<', '>', '&', '\'', '"']) {
            return Err(invalid("target.resource", format!("{:?} is not a usable resource", t.resource)));
        }
        if let Some(s) = &t.source_addrs {
            crate::client::parse_source_addrs(s).map_err(|e| invalid("target.source_addrs", e))?;
        }
        if t.login_timeout.0.is_zero() {
            return Err(invalid("target.login_timeout", "must be more than 0".into()));
        }
        if t.ack_every == 0 {
            return Err(invalid("target.ack_every", "must be at least 1".into()));
        }

        let pool = match &file.users.csv {
            Some(csv) => {
                let p = if csv.is_absolute() { csv.clone() } else { dir.join(csv) };
                UserPool::from_csv(&p)?
            }
            None => {
                let u = &file.users;
                if u.count == 0 {
                    return Err(invalid("users.count", "must be at least 1 (or set users.csv)".into()));
                }
                if u.prefix.is_empty() || u.prefix.contains(['@', '/', ' ', '<', '>', '&', '\'', '"']) {
                    return Err(invalid("users.prefix", format!("{:?} cannot start a JID local part", u.prefix)));
                }
                let password = u
                    .password
                    .clone()
                    .ok_or_else(|| invalid("users.password", "is required without users.csv".into()))?;
                if password.is_empty() {
                    return Err(invalid("users.password", "must not be empty".into()));
                }
                UserPool::Pattern {
                    prefix: u.prefix.clone(),
                    first: u.first,
                    count: u.count,
                    domain: t.domain.clone(),
                    password,
                }
            }
        };

        let r = &file.run;
        if !(r.connect_rate > 0.0 && r.connect_rate.is_finite()) {
            return Err(invalid("run.connect_rate", "must be more than 0".into()));
        }
        if let Some(c) = file.provision.concurrency
            && c == 0
        {
            return Err(invalid("provision.concurrency", "must be at least 1".into()));
        }

        // Users needed per kind, and the load envelope of each.
        let mut needs: Vec<(Kind, u64, Option<u64>)> = Vec::new();
        let mut criteria = BTreeMap::new();
        let mut crit = |kind: Kind, list: &[String]| -> Result<(), ScenarioError> {
            let mut v = Vec::new();
            for (i, c) in list.iter().enumerate() {
                v.push(Criterion::parse(c, kind).map_err(|m| invalid(&format!("{}.pass[{i}]", kind.name()), m))?);
            }
            criteria.insert(kind, v);
            Ok(())
        };
        if let Some(s) = &file.login {
            positive(s.users, "login.users", &invalid)?;
            check_load(&s.load(), "login", &invalid)?;
            crit(Kind::Login, &s.pass)?;
            needs.push((Kind::Login, s.users, s.user_offset));
        }
        if let Some(s) = &file.idle {
            positive(s.connections, "idle.connections", &invalid)?;
            if !(s.login_rate > 0.0 && s.login_rate.is_finite()) {
                return Err(invalid("idle.login_rate", "must be more than 0".into()));
            }
            crit(Kind::Idle, &s.pass)?;
            needs.push((Kind::Idle, s.connections, s.user_offset));
        }
        if let Some(s) = &file.chat {
            positive(s.pairs, "chat.pairs", &invalid)?;
            check_load(&s.load(), "chat", &invalid)?;
            crit(Kind::Chat, &s.pass)?;
            needs.push((Kind::Chat, s.pairs * 2, s.user_offset));
        }
        if let Some(s) = &file.presence {
            positive(s.groups, "presence.groups", &invalid)?;
            positive(s.contacts, "presence.contacts", &invalid)?;
            check_load(&s.load(), "presence", &invalid)?;
            crit(Kind::Presence, &s.pass)?;
            needs.push((Kind::Presence, s.groups * (1 + s.contacts), s.user_offset));
        }
        if let Some(s) = &file.mam {
            positive(s.users, "mam.users", &invalid)?;
            if s.page_size == 0 {
                return Err(invalid("mam.page_size", "must be at least 1".into()));
            }
            if s.pagers > s.users {
                return Err(invalid("mam.pagers", format!("is {}, more than mam.users ({})", s.pagers, s.users)));
            }
            check_load(&s.load(), "mam", &invalid)?;
            crit(Kind::Mam, &s.pass)?;
            needs.push((Kind::Mam, s.users, s.user_offset));
        }
        if let Some(s) = &file.reconnect {
            positive(s.users, "reconnect.users", &invalid)?;
            check_load(&s.load(), "reconnect", &invalid)?;
            crit(Kind::Reconnect, &s.pass)?;
            needs.push((Kind::Reconnect, s.users, s.user_offset));
        }
        if let Some(s) = &file.muc {
            crit(Kind::Muc, &s.pass)?;
        }
        if needs.is_empty() && file.muc.is_none() {
            return Err(invalid(
                "(scenario)",
                "no scenario table: add at least one of [login], [idle], [chat], [presence], [mam], [reconnect]".into(),
            ));
        }

        let mut blocks = BTreeMap::new();
        let mut cursor = 0u64;
        for (kind, n, offset) in needs {
            let start = offset.unwrap_or(cursor);
            let end = start + n;
            if end > pool.len() {
                let key = match offset {
                    Some(_) => format!("{}.user_offset", kind.name()),
                    None => format!("{} users", kind.name()),
                };
                return Err(invalid(
                    &key,
                    format!(
                        "[{}] needs users {start}..{end} of the pool, but [users] provides {} (raise users.count)",
                        kind.name(),
                        pool.len()
                    ),
                ));
            }
            blocks.insert(kind, start..end);
            cursor = cursor.max(end);
        }

        let name = file.name.clone().unwrap_or_else(|| {
            Path::new(origin).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "scenario".into())
        });
        let description = file.description.clone().unwrap_or_default();
        Ok(Scenario { name, description, file, pool, sasl, blocks, criteria, dir: dir.to_path_buf() })
    }

    /// The arrival schedule of a kind with a load envelope.
    pub fn schedule(&self, kind: Kind) -> Option<Schedule> {
        let load = match kind {
            Kind::Login => self.file.login.as_ref()?.load(),
            Kind::Chat => self.file.chat.as_ref()?.load(),
            Kind::Presence => self.file.presence.as_ref()?.load(),
            Kind::Mam => self.file.mam.as_ref()?.load(),
            Kind::Reconnect => self.file.reconnect.as_ref()?.load(),
            Kind::Muc => self.file.muc.as_ref()?.load(),
            Kind::Idle => {
                let s = self.file.idle.as_ref()?;
                let ramp = Duration::from_secs_f64(s.connections as f64 / s.login_rate);
                return Some(Schedule::new(vec![RatePhase::steady(ramp, s.login_rate)], Process::Constant));
            }
        };
        Some(build_schedule(&load, self.file.run.seed.wrapping_add(kind as u64)))
    }

    /// Number of partition units of a kind: users (login, mam, reconnect), connections
    /// (idle), pairs (chat), groups (presence). See `users` for the partition rule.
    pub fn unit_count(&self, kind: Kind) -> u64 {
        let f = &self.file;
        match kind {
            Kind::Login => f.login.as_ref().map_or(0, |s| s.users),
            Kind::Idle => f.idle.as_ref().map_or(0, |s| s.connections),
            Kind::Chat => f.chat.as_ref().map_or(0, |s| s.pairs),
            Kind::Presence => f.presence.as_ref().map_or(0, |s| s.groups),
            Kind::Mam => f.mam.as_ref().map_or(0, |s| s.users),
            Kind::Reconnect => f.reconnect.as_ref().map_or(0, |s| s.users),
            Kind::Muc => 0,
        }
    }

    /// Pool indexes of the users that make up `unit` of `kind`.
    pub fn unit_users(&self, kind: Kind, unit: u64) -> Range<u64> {
        let start = self.blocks.get(&kind).map_or(0, |b| b.start);
        let size = match kind {
            Kind::Chat => 2,
            Kind::Presence => 1 + self.file.presence.as_ref().map_or(0, |s| s.contacts),
            _ => 1,
        };
        start + unit * size..start + (unit + 1) * size
    }

    /// Number of chat flows (directions of pairs) and flows per pair.
    pub fn chat_flows(&self) -> (u64, u64) {
        self.file.chat.as_ref().map_or((0, 1), |s| {
            let dirs = if s.bidirectional { 2 } else { 1 };
            (s.pairs * dirs, dirs)
        })
    }

    /// The unit that arrival `k` of `kind`'s schedule acts on.
    pub fn arrival_unit(&self, kind: Kind, k: u64) -> u64 {
        let n = self.unit_count(kind).max(1);
        match kind {
            Kind::Chat => {
                let (flows, dirs) = self.chat_flows();
                (k % flows.max(1)) / dirs
            }
            Kind::Idle => k,
            _ => k % n,
        }
    }

    /// Pool indexes of every user worker `part` connects for `kind`.
    pub fn worker_users(&self, kind: Kind, part: crate::users::Partition) -> Vec<u64> {
        part.units(self.unit_count(kind)).flat_map(|u| self.unit_users(kind, u)).collect()
    }

    /// Kinds present in the file, in allocation order.
    pub fn kinds(&self) -> Vec<Kind> {
        let f = &self.file;
        let present = [
            f.login.is_some(),
            f.idle.is_some(),
            f.chat.is_some(),
            f.presence.is_some(),
            f.mam.is_some(),
            f.reconnect.is_some(),
            f.muc.is_some(),
        ];
        Kind::ALL.into_iter().zip(present).filter(|(_, p)| *p).map(|(k, _)| k).collect()
    }
}

fn positive(n: u64, key: &str, invalid: &impl Fn(&str, String) -> ScenarioError) -> Result<(), ScenarioError> {
    if n == 0 { Err(invalid(key, "must be at least 1".into())) } else { Ok(()) }
}

fn check_load(load: &Load, kind: &str, invalid: &impl Fn(&str, String) -> ScenarioError) -> Result<(), ScenarioError> {
    let ok = |x: f64| x.is_finite() && x >= 0.0;
    if !ok(load.rate) {
        return Err(invalid(&format!("{kind}.rate"), "must be 0 or more".into()));
    }
    if load.phases.is_empty() && load.duration.is_none() {
        return Err(invalid(&format!("{kind}.phases"), "set `phases = [...]` or `duration = \"60s\"`".into()));
    }
    if !load.phases.is_empty() && load.duration.is_some() {
        return Err(invalid(&format!("{kind}.duration"), "use either `duration` or `phases`, not both".into()));
    }
    for (i, p) in load.phases.iter().enumerate() {
        for (name, v) in [("from", p.from), ("to", p.to), ("rate", p.rate)] {
            if let Some(v) = v
                && !ok(v)
            {
                return Err(invalid(&format!("{kind}.phases[{i}].{name}"), "must be 0 or more".into()));
            }
        }
        if p.phase == PhaseKind::Steady && (p.from.is_some() || p.to.is_some()) {
            return Err(invalid(&format!("{kind}.phases[{i}]"), "a steady phase takes `rate`, not `from`/`to`".into()));
        }
        if p.phase != PhaseKind::Steady && p.rate.is_some() {
            return Err(invalid(&format!("{kind}.phases[{i}].rate"), "ramp and cooldown take `from`/`to`".into()));
        }
    }
    let sched = build_schedule(load, 0);
    if sched.expected() <= 0.0 {
        return Err(invalid(&format!("{kind}.rate"), "the phases produce no events (is `rate` 0?)".into()));
    }
    Ok(())
}

fn build_schedule(load: &Load, seed: u64) -> Schedule {
    let phases = if load.phases.is_empty() {
        vec![RatePhase::steady(load.duration.unwrap_or_default().0, load.rate)]
    } else {
        load.phases
            .iter()
            .map(|p| match p.phase {
                PhaseKind::Ramp => RatePhase::ramp(p.duration.0, p.from.unwrap_or(0.0), p.to.unwrap_or(load.rate)),
                PhaseKind::Steady => RatePhase::steady(p.duration.0, p.rate.unwrap_or(load.rate)),
                PhaseKind::Cooldown => RatePhase::ramp(p.duration.0, p.from.unwrap_or(load.rate), p.to.unwrap_or(0.0)),
            })
            .collect()
    };
    let process = match load.arrival {
        ArrivalKind::Constant => Process::Constant,
        ArrivalKind::Poisson => Process::Poisson { seed },
    };
    Schedule::new(phases, process)
}

/// Applies one `key.path=value` override. A number component indexes an array
/// (`chat.phases.1.duration=30s`). The value is read as TOML (`20000`, `true`, `"x"`,
/// `[1, 2]`) and taken as a plain string when it is not valid TOML (`30s`).
pub fn apply_override(table: &mut toml::Table, arg: &str) -> Result<(), ScenarioError> {
    let err = |message: String| ScenarioError::Override { arg: arg.to_owned(), message };
    let (path, raw) = arg.split_once('=').ok_or_else(|| err("expected KEY=VALUE, e.g. chat.rate=20000".into()))?;
    let path: Vec<&str> = path.trim().split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(err("empty key component".into()));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_owned()));
    let mut root = toml::Value::Table(std::mem::take(table));
    let result = set_path(&mut root, &path, value).map_err(err);
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    result
}

fn set_path(root: &mut toml::Value, path: &[&str], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or_else(|| "empty key".to_owned())?;
    let mut cur = root;
    for (i, comp) in parents.iter().enumerate() {
        let here = path[..=i].join(".");
        cur = match cur {
            toml::Value::Table(t) => {
                t.entry((*comp).to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()))
            }
            toml::Value::Array(a) => {
                let idx: usize = comp.parse().map_err(|_| format!("`{here}`: an array needs a numeric index"))?;
                let len = a.len();
                a.get_mut(idx).ok_or_else(|| format!("`{here}`: index {idx} is out of range (length {len})"))?
            }
            _ => return Err(format!("`{}` is not a table", path[..i].join("."))),
        };
    }
    match cur {
        toml::Value::Table(t) => {
            t.insert((*last).to_owned(), value);
        }
        toml::Value::Array(a) => {
            let idx: usize = last.parse().map_err(|_| "an array needs a numeric index".to_owned())?;
            let len = a.len();
            *a.get_mut(idx).ok_or_else(|| format!("index {idx} is out of range (length {len})"))? = value;
        }
        _ => return Err(format!("`{}` is not a table", parents.join("."))),
    }
    Ok(())
}

#[cfg(test)]
#[path = "scenario_tests.rs"]
mod tests;
