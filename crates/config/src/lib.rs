//! Rookery configuration: the TOML schema, its defaults, `ROOKERY_*` environment overrides
//! and validation.
//!
//! Owns: the [`Config`] type and every section in it, the defaults a fresh install runs with,
//! the mapping from environment variables to keys ([`ENV_KEYS`]), and the rules that reject
//! a configuration before anything starts. Every error names the offending key (or variable)
//! and says how to fix it (DESIGN §6.9).
//!
//! Must not touch: no I/O besides reading the one config file in [`Config::load`], no
//! networking, no logging setup, no certificate or token generation. Paths are checked for
//! shape only; whether they exist is the caller's business when it opens them.
//!
//! Order of precedence: built-in defaults, then the TOML file, then environment variables,
//! then [`Config::validate`].
//!
//! Spec sections: RFC 6120 §13.12 (a server must accept stanzas of at least 10000 bytes),
//! XEP-0077 (in-band registration switch).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod error;
mod schema;
mod suggest;
mod validate;

#[cfg(test)]
mod tests;

pub use error::{ConfigError, Problem};
pub use schema::{ENV_KEYS, RESERVED_ENV, RESERVED_ENV_PREFIX};

/// The whole server configuration. Every field has a default, so an empty file is valid
/// (it serves `localhost` from `./rookery-data`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Domains this server hosts (the domainpart of local JIDs).
    pub domains: Vec<String>,
    /// Directory for the embedded store, generated certificate and admin token.
    pub data_dir: PathBuf,
    /// Listening sockets.
    pub listen: Listen,
    /// TLS certificate and key.
    pub tls: Tls,
    /// In-band registration (XEP-0077).
    pub registration: Registration,
    /// Resource limits that protect the server from misbehaving clients.
    pub limits: Limits,
    /// Storage backend.
    pub storage: Storage,
    /// Message archive (XEP-0313).
    pub mam: Mam,
    /// Contact addresses of the service (XEP-0157).
    pub contact: Contact,
    /// XMPP routing policies (both `rookery serve` and `rookery router`).
    pub router: Router,
    /// Stream management (XEP-0198): acks and resumption of dropped connections.
    pub stream_management: StreamManagement,
    /// Client state indication (XEP-0352): quiet inactive mobile clients.
    pub csi: Csi,
    /// Cluster mode (`rookery edge` / `rookery router`); unused by `rookery serve`.
    pub cluster: Cluster,
    /// Logging.
    pub log: Log,
    /// Admin API access.
    pub admin: Admin,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domains: vec!["localhost".to_owned()],
            data_dir: PathBuf::from("./rookery-data"),
            listen: Listen::default(),
            tls: Tls::default(),
            registration: Registration::default(),
            limits: Limits::default(),
            storage: Storage::default(),
            mam: Mam::default(),
            contact: Contact::default(),
            router: Router::default(),
            stream_management: StreamManagement::default(),
            csi: Csi::default(),
            cluster: Cluster::default(),
            log: Log::default(),
            admin: Admin::default(),
        }
    }
}

/// Listening sockets. `None` means the listener is disabled (`"off"` or `""` in TOML and
/// in the environment).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Client-to-server, STARTTLS (RFC 6120).
    #[serde(with = "listener")]
    pub c2s: Option<SocketAddr>,
    /// Client-to-server, direct TLS (XEP-0368).
    #[serde(with = "listener")]
    pub c2s_tls: Option<SocketAddr>,
    /// Admin API and health checks. Loopback by default: the admin API is not for the internet.
    #[serde(with = "listener")]
    pub http: Option<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            c2s: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5222)),
            c2s_tls: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5223)),
            http: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5280)),
        }
    }
}

/// TLS certificate and key: both or neither. With neither, the server generates a
/// self-signed certificate into `data_dir`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain.
    #[serde(with = "opt_path", skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key.
    #[serde(with = "opt_path", skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// In-band registration (XEP-0077).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registration {
    /// Let anyone create an account over XMPP. Off by default: open registration attracts spam.
    pub allow: bool,
    /// Shortest password accepted at registration or password change.
    pub min_password_len: usize,
}

impl Default for Registration {
    fn default() -> Self {
        Registration { allow: false, min_password_len: 8 }
    }
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest top-level stanza accepted, in bytes (RFC 6120 §13.12: at least 10000).
    pub max_stanza_bytes: usize,
    /// Deepest XML element nesting accepted inside a stanza.
    pub max_depth: usize,
    /// Seconds a connection may take from TCP accept to a bound resource.
    pub negotiation_timeout_secs: u64,
    /// Seconds without traffic before a session is closed; 0 means never.
    pub idle_timeout_secs: u64,
    /// Concurrent connections accepted from one IP address.
    pub max_connections_per_ip: u32,
    /// Wrong passwords for one account from one IP address before failures are answered
    /// with a growing delay (protocol errors do not count; the account's count across
    /// addresses allows ten times as many).
    pub auth_failures_before_delay: u32,
    /// Upper bound of the (growing) delay after repeated wrong passwords.
    pub auth_delay_max_secs: u64,
    /// Stanzas per second one session may send (token bucket, burst twice this).
    pub stanza_rate_per_sec: u32,
    /// Stanzas queued to one slow client before it is disconnected.
    pub outbound_queue: usize,
    /// Offline messages kept per user; further ones are bounced.
    pub offline_max_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_depth: 48,
            negotiation_timeout_secs: 30,
            idle_timeout_secs: 600,
            max_connections_per_ip: 64,
            auth_failures_before_delay: 3,
            auth_delay_max_secs: 30,
            stanza_rate_per_sec: 200,
            outbound_queue: 4096,
            offline_max_per_user: 1000,
        }
    }
}

/// Stream management (`[stream_management]`, XEP-0198).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamManagement {
    /// Offer stream management to clients.
    pub enabled: bool,
    /// Seconds a session whose connection dropped waits for its client to resume it, when
    /// the client asks for no particular time; 0: sessions are not resumable.
    pub resume_timeout_secs: u64,
    /// The longest resumption time granted, whatever the client asks (at most 72 hours).
    pub max_resume_timeout_secs: u64,
}

impl Default for StreamManagement {
    fn default() -> Self {
        StreamManagement { enabled: true, resume_timeout_secs: 300, max_resume_timeout_secs: 3600 }
    }
}

/// Client state indication (`[csi]`, XEP-0352).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Csi {
    /// Offer client state indication: while a client says it is inactive, presence updates,
    /// chat states, receipts and markers wait (coalesced) until something it needs at once.
    pub enabled: bool,
    /// Stanzas held for one inactive client before they are written anyway.
    pub max_held: usize,
}

impl Default for Csi {
    fn default() -> Self {
        Csi { enabled: true, max_held: 100 }
    }
}

/// XMPP routing policies (`[router]`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Router {
    /// Who may send an IQ get/set to another user's full JID.
    pub iq_to_full_jid: IqToFullJid,
}

/// Who may send an IQ get/set to another user's full JID (`router.iq_to_full_jid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IqToFullJid {
    /// Only someone the resource shares presence with (a `from`/`both` subscription or
    /// directed presence); others get `service-unavailable`. RFC 6121 §8.5.3.1 advises this:
    /// otherwise anyone can find out which resources of a user are online.
    #[default]
    PresenceShared,
    /// Anyone; the addressed resource answers or not. What Prosody and ejabberd do, and
    /// what some clients expect for version, ping or in-band bytestreams between
    /// non-contacts.
    Always,
}

impl IqToFullJid {
    /// Spelling in TOML and in the environment.
    pub const NAMES: &'static [&'static str] = &["presence-shared", "always"];

    /// The name as written in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            IqToFullJid::PresenceShared => "presence-shared",
            IqToFullJid::Always => "always",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "presence-shared" => Some(IqToFullJid::PresenceShared),
            "always" => Some(IqToFullJid::Always),
            _ => None,
        }
    }
}

/// Cluster mode: edges and routers as separate processes (docs/cluster.md).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// This process's number, unique among the cluster's edges (its connections are
    /// addressed by it) and among its routers (archive ids carry it). 0–1023.
    pub node_id: u32,
    /// Where a router accepts the edges' gRPC streams.
    #[serde(with = "listener")]
    pub grpc: Option<std::net::SocketAddr>,
    /// The routers an edge connects to (static membership), as "host:port".
    pub routers: Vec<String>,
    /// Redis holding the session registry: one URL, or several with `redis_cluster`.
    pub redis: Vec<String>,
    /// The URLs are seed nodes of a Redis Cluster.
    pub redis_cluster: bool,
    /// How often an edge reports that it is alive.
    pub heartbeat_ms: u64,
    /// An edge silent for this long is declared dead: its sessions are purged and their
    /// contacts get unavailable presence.
    pub dead_after_ms: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            node_id: 0,
            grpc: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 7000))),
            routers: Vec::new(),
            redis: vec!["redis://127.0.0.1:6379".to_owned()],
            redis_cluster: false,
            heartbeat_ms: 1000,
            dead_after_ms: 5000,
        }
    }
}

/// Contact addresses advertised in the server's disco#info (XEP-0157 §3): URIs such as
/// `mailto:`, `xmpp:` or `https:` per role. Empty lists are not advertised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContactAddresses {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
}

impl ContactAddresses {
    /// The roles in XEP-0157 §7.1 order, with their lists.
    pub fn roles(&self) -> [(&'static str, &[String]); 7] {
        [
            ("abuse", &self.abuse),
            ("admin", &self.admin),
            ("feedback", &self.feedback),
            ("sales", &self.sales),
            ("security", &self.security),
            ("status", &self.status),
            ("support", &self.support),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.roles().iter().all(|(_, l)| l.is_empty())
    }

    /// Sets one role's list; false when `role` is not a XEP-0157 role.
    pub fn set(&mut self, role: &str, list: Vec<String>) -> bool {
        let slot = match role {
            "abuse" => &mut self.abuse,
            "admin" => &mut self.admin,
            "feedback" => &mut self.feedback,
            "sales" => &mut self.sales,
            "security" => &mut self.security,
            "status" => &mut self.status,
            "support" => &mut self.support,
            _ => return false,
        };
        *slot = list;
        true
    }
}

/// XEP-0157 contact addresses: one set for every served domain, and whole sets per
/// domain that replace it for that domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Contact {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
    /// Per-domain sets (domain → roles); a listed domain gets only its own set.
    pub domains: std::collections::BTreeMap<String, ContactAddresses>,
}

impl Contact {
    /// The set advertised for every domain without its own.
    pub fn default_set(&self) -> ContactAddresses {
        ContactAddresses {
            abuse: self.abuse.clone(),
            admin: self.admin.clone(),
            feedback: self.feedback.clone(),
            sales: self.sales.clone(),
            security: self.security.clone(),
            status: self.status.clone(),
            support: self.support.clone(),
        }
    }

    /// What `domain` advertises.
    pub fn for_domain(&self, domain: &str) -> ContactAddresses {
        self.domains.get(domain).cloned().unwrap_or_else(|| self.default_set())
    }
}

/// Message archive (XEP-0313) settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mam {
    /// Archive 1:1 messages and answer archive queries.
    pub enabled: bool,
    /// What is archived for users who never set preferences (XEP-0441 §2.1).
    pub default_policy: ArchivePolicy,
    /// Largest page a client gets, whatever `<max/>` it asks for.
    pub max_page: usize,
    /// Page size when a query has no `<max/>`.
    pub default_page: usize,
    /// Results are counted up to this many (RSM `<count/>`); larger sets get no count.
    pub count_limit: usize,
    /// Archive queries one user may start per second (a burst of twice that); more wait.
    /// 0: no limit.
    pub queries_per_sec: u32,
    /// Messages older than this many days are deleted; 0 keeps them forever.
    pub retention_days: u32,
    /// Per-domain overrides of `retention_days` (domain → days, 0 = forever).
    pub retention_days_by_domain: std::collections::BTreeMap<String, u32>,
    /// Seconds between retention sweeps.
    pub retention_interval_secs: u64,
}

impl Default for Mam {
    fn default() -> Self {
        Mam {
            enabled: true,
            default_policy: ArchivePolicy::Always,
            max_page: 250,
            default_page: 50,
            count_limit: 2000,
            queries_per_sec: 10,
            retention_days: 0,
            retention_days_by_domain: std::collections::BTreeMap::new(),
            retention_interval_secs: 3600,
        }
    }
}

impl Mam {
    /// Days messages of `domain` are kept; 0 means forever.
    pub fn retention_for(&self, domain: &str) -> u32 {
        self.retention_days_by_domain.get(domain).copied().unwrap_or(self.retention_days)
    }
}

/// XEP-0441 default archiving policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchivePolicy {
    /// Archive every conversation.
    #[default]
    Always,
    /// Archive nothing unless the user lists a contact under `always`.
    Never,
    /// Archive conversations with roster contacts only.
    Roster,
}

impl ArchivePolicy {
    /// Spelling in TOML and in the environment.
    pub const NAMES: &'static [&'static str] = &["always", "never", "roster"];

    pub fn as_str(self) -> &'static str {
        match self {
            ArchivePolicy::Always => "always",
            ArchivePolicy::Never => "never",
            ArchivePolicy::Roster => "roster",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(ArchivePolicy::Always),
            "never" => Some(ArchivePolicy::Never),
            "roster" => Some(ArchivePolicy::Roster),
            _ => None,
        }
    }
}

/// Storage backend choice.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Which backend holds accounts, rosters, archives and offline messages.
    pub backend: StorageBackend,
    /// When a write counts as done.
    pub durability: Durability,
    /// The ScyllaDB (or Cassandra) cluster, for `backend = "scylla"`.
    pub scylla: Scylla,
    /// The SQLite database file, for `backend = "sqlite"`.
    pub sqlite: Sqlite,
}

/// Storage backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// On-disk store under `data_dir`.
    #[default]
    Embedded,
    /// Nothing survives a restart; for tests and demos.
    Memory,
    /// A ScyllaDB (or Cassandra) cluster shared by every node (`[storage.scylla]`).
    Scylla,
    /// A SQLite database shared by the processes of one host (`[storage.sqlite]`).
    Sqlite,
}

impl StorageBackend {
    /// Spelling in TOML and in the environment.
    pub const NAMES: &'static [&'static str] = &["embedded", "memory", "scylla", "sqlite"];

    /// The name as written in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageBackend::Embedded => "embedded",
            StorageBackend::Memory => "memory",
            StorageBackend::Scylla => "scylla",
            StorageBackend::Sqlite => "sqlite",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "embedded" => Some(StorageBackend::Embedded),
            "memory" => Some(StorageBackend::Memory),
            "scylla" => Some(StorageBackend::Scylla),
            "sqlite" => Some(StorageBackend::Sqlite),
            _ => None,
        }
    }
}

/// ScyllaDB (or Cassandra) connection and keyspace settings (`[storage.scylla]`).
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scylla {
    /// Contact points, `"host:port"`; the driver discovers the other nodes from them.
    pub nodes: Vec<String>,
    /// Keyspace holding all tables.
    pub keyspace: String,
    /// Replicas per data center when `rookery migrate` creates the keyspace.
    pub replication_factor: u32,
    /// The data center this node talks to (LOCAL_QUORUM); unset: one data center (QUORUM).
    #[serde(with = "opt_string", skip_serializing_if = "Option::is_none")]
    pub local_dc: Option<String>,
    /// Login for password authentication.
    #[serde(with = "opt_string", skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for `username`. Never printed: `check-config --print` output ends up in
    /// tickets and logs.
    #[serde(deserialize_with = "opt_string::deserialize", skip_serializing)]
    pub password: Option<String>,
    /// Timeout of one request to the cluster, in milliseconds.
    pub request_timeout_ms: u64,
    /// Offline messages expire after this many days; 0 keeps them until delivered.
    pub offline_ttl_days: u32,
}

impl Default for Scylla {
    fn default() -> Self {
        Scylla {
            nodes: Vec::new(),
            keyspace: "rookery".to_owned(),
            replication_factor: 3,
            local_dc: None,
            username: None,
            password: None,
            request_timeout_ms: 5000,
            offline_ttl_days: 0,
        }
    }
}

impl std::fmt::Debug for Scylla {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scylla")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication_factor", &self.replication_factor)
            .field("local_dc", &self.local_dc)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("offline_ttl_days", &self.offline_ttl_days)
            .finish()
    }
}

/// SQLite settings (`[storage.sqlite]`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sqlite {
    /// The database file; `None` means `<data_dir>/rookery.sqlite3`. Every process of a
    /// cluster on one host points at the same file.
    #[serde(with = "opt_path", skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// When the embedded store considers a write durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Handed to the OS page cache: survives a process crash, not a power loss.
    #[default]
    Os,
    /// fsync before acknowledging: survives power loss, costs latency.
    Fsync,
}

impl Durability {
    /// Spelling in TOML and in the environment.
    pub const NAMES: &'static [&'static str] = &["os", "fsync"];

    /// The name as written in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Os => "os",
            Durability::Fsync => "fsync",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "os" => Some(Durability::Os),
            "fsync" => Some(Durability::Fsync),
            _ => None,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// Filter in `tracing` EnvFilter syntax, e.g. `info` or `info,rookery_edge=debug`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".to_owned(), format: LogFormat::Text }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// Spelling in TOML and in the environment.
    pub const NAMES: &'static [&'static str] = &["text", "json"];

    /// The name as written in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Admin API access.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// File holding the admin API bearer token; `None` means `<data_dir>/admin.token`,
    /// generated at first start.
    #[serde(with = "opt_path", skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Config {
    /// Parses a TOML document. Unknown keys and wrongly typed values are rejected with the
    /// full key path, all of them at once. Does not apply the environment and does not call
    /// [`Config::validate`].
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let (cfg, errors) = Config::parse_lenient(s);
        ConfigError::from_list(errors).map_or(Ok(cfg), Err)
    }

    /// Parses what can be parsed: the configuration without the entries in error, and
    /// the errors. Lets [`Config::load`] go on to the environment and validation and report
    /// everything in one run.
    fn parse_lenient(s: &str) -> (Config, Vec<ConfigError>) {
        let mut table: toml::Table = match s.parse() {
            Ok(t) => t,
            Err(e) => {
                let e: toml::de::Error = e;
                return (Config::default(), vec![ConfigError::Syntax { message: e.to_string().trim_end().to_owned() }]);
            }
        };
        // Walking the table first gives errors with the full dotted key and a suggestion,
        // which serde's own errors do not.
        let mut errors = schema::check_table(&mut table);
        match table.try_into::<Config>() {
            Ok(cfg) => (cfg, errors),
            Err(e) => {
                errors.push(ConfigError::Deserialize { message: e.message().to_owned() });
                (Config::default(), errors)
            }
        }
    }

    /// Builds the effective configuration: defaults, then the file at `path` (if given),
    /// then `ROOKERY_*` environment variables, then [`Config::validate`]. Every problem of
    /// the file, the environment and validation is reported at once.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let mut cfg = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                let (cfg, file_errors) = Config::parse_lenient(&text);
                errors.extend(
                    file_errors.into_iter().map(|e| ConfigError::File { path: path.to_owned(), source: Box::new(e) }),
                );
                cfg
            }
            None => Config::default(),
        };
        // `std::env::vars` panics on non-UTF-8 entries; a stray one must not take the server down.
        let vars = std::env::vars_os().filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            k.starts_with(schema::ENV_PREFIX).then(|| (k, v.to_string_lossy().into_owned()))
        });
        errors.extend(schema::apply_env(&mut cfg, vars));
        if let Err(ConfigError::Invalid(mut problems)) = cfg.validate() {
            // A key already reported kept its default; a rule tripping over that default
            // would only repeat the same mistake in other words.
            let reported: Vec<String> = errors.iter().flat_map(ConfigError::keys).map(str::to_owned).collect();
            problems.retain(|p| !reported.contains(&p.key));
            if !problems.is_empty() {
                errors.push(ConfigError::Invalid(problems));
            }
        }
        ConfigError::from_list(errors).map_or(Ok(cfg), Err)
    }

    /// Applies `ROOKERY_*` overrides from `vars`. Variables without the prefix are ignored, as
    /// are the reserved ones ([`RESERVED_ENV`], and any starting with [`RESERVED_ENV_PREFIX`]).
    /// An unknown `ROOKERY_*` variable or a malformed value is an error; every one is
    /// reported, and the valid ones are applied.
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        ConfigError::from_list(schema::apply_env(self, vars)).map_or(Ok(()), Err)
    }

    /// Checks cross-field rules and ranges. Reports every problem found, each with its key
    /// and a fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = validate::problems(self);
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// Where the admin API token lives: `admin.token_file`, or `<data_dir>/admin.token`.
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin.token_file.clone().unwrap_or_else(|| self.data_dir.join("admin.token"))
    }

    /// The SQLite database file: `storage.sqlite.path`, or `<data_dir>/rookery.sqlite3`.
    pub fn sqlite_path(&self) -> PathBuf {
        self.storage.sqlite.path.clone().unwrap_or_else(|| self.data_dir.join("rookery.sqlite3"))
    }

    /// The configuration as TOML that [`Config::from_toml_str`] reads back unchanged.
    /// Disabled listeners print as `"off"`; unset optional paths are omitted.
    pub fn to_toml_string(&self) -> String {
        // Only non-UTF-8 paths can fail here; say so in the output rather than panic.
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# configuration cannot be printed as TOML: {e}\n"))
    }
}

/// A listener address in TOML: `"IP:port"`, or `"off"` / `""` for disabled.
mod listener {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn parse(s: &str) -> Result<Option<SocketAddr>, std::net::AddrParseError> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") { Ok(None) } else { s.parse().map(Some) }
    }

    pub(crate) fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid listener address {s:?}: expected IP:port such as \"0.0.0.0:5222\", or \"off\""
            ))
        })
    }
}

/// An optional string in TOML: absent or `""` means unset.
mod opt_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.as_deref().unwrap_or_default())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let v = String::deserialize(d)?;
        Ok((!v.is_empty()).then_some(v))
    }
}

/// An optional path in TOML: absent or `""` means unset.
mod opt_path {
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(p) => p.serialize(s),
            None => s.serialize_str(""),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        let p = PathBuf::deserialize(d)?;
        Ok((!p.as_os_str().is_empty()).then_some(p))
    }
}
