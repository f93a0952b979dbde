//! The key schema: every leaf key with its type, example and environment variable. One table
//! drives the TOML key walk, the environment overrides and [`ENV_KEYS`], so they cannot
//! drift apart.

use std::path::PathBuf;

use crate::error::ConfigError;
use crate::{ArchivePolicy, Config, Durability, IqToFullJid, LogFormat, StorageBackend, listener, suggest};

pub(crate) const ENV_PREFIX: &str = "ROOKERY_";

/// Variables with the `ROOKERY_` prefix that belong to the command line tool and tests;
/// [`Config::apply_env`] skips them.
pub const RESERVED_ENV: &[&str] = &["ROOKERY_CONFIG", "ROOKERY_ADMIN_URL", "ROOKERY_ADMIN_TOKEN"];

/// Prefix of variables reserved for tests; [`Config::apply_env`] skips them.
pub const RESERVED_ENV_PREFIX: &str = "ROOKERY_TEST_";

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Domains,
    Path,
    OptPath,
    Listener,
    Bool,
    UInt {
        max: u64,
    },
    Enum(&'static [&'static str]),
    Str,
    /// Optional string: absent or empty means unset.
    OptStr,
    /// `"host:port"` strings (format checked by validation); comma-separated in the environment.
    HostPorts,
    /// A table of domain name → whole number of days.
    DomainDays,
    /// An array of strings (URLs).
    Strings,
    /// A table of domain name → table of XEP-0157 role → array of URIs.
    DomainContacts,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    /// Full dotted key.
    pub(crate) key: &'static str,
    pub(crate) env: &'static str,
    pub(crate) kind: Kind,
    /// A valid TOML right-hand side, shown in error messages.
    pub(crate) example: &'static str,
}

const USIZE: Kind = Kind::UInt { max: usize::MAX as u64 };
const U64: Kind = Kind::UInt {
    // TOML integers are i64.
    max: i64::MAX as u64,
};
const U32: Kind = Kind::UInt { max: u32::MAX as u64 };

const fn f(key: &'static str, env: &'static str, kind: Kind, example: &'static str) -> Field {
    Field { key, env, kind, example }
}

pub(crate) const FIELDS: &[Field] = &[
    f("domains", "ROOKERY_DOMAINS", Kind::Domains, r#"["example.org"]"#),
    f("data_dir", "ROOKERY_DATA_DIR", Kind::Path, r#""/var/lib/rookery""#),
    f("listen.c2s", "ROOKERY_C2S", Kind::Listener, r#""0.0.0.0:5222""#),
    f("listen.c2s_tls", "ROOKERY_C2S_TLS", Kind::Listener, r#""0.0.0.0:5223""#),
    f("listen.http", "ROOKERY_HTTP", Kind::Listener, r#""127.0.0.1:5280""#),
    f("tls.cert", "ROOKERY_TLS_CERT", Kind::OptPath, r#""/etc/rookery/fullchain.pem""#),
    f("tls.key", "ROOKERY_TLS_KEY", Kind::OptPath, r#""/etc/rookery/privkey.pem""#),
    f("registration.allow", "ROOKERY_ALLOW_REGISTRATION", Kind::Bool, "false"),
    f("registration.min_password_len", "ROOKERY_REGISTRATION_MIN_PASSWORD_LEN", USIZE, "8"),
    f("limits.max_stanza_bytes", "ROOKERY_LIMITS_MAX_STANZA_BYTES", USIZE, "262144"),
    f("limits.max_depth", "ROOKERY_LIMITS_MAX_DEPTH", USIZE, "48"),
    f("limits.negotiation_timeout_secs", "ROOKERY_LIMITS_NEGOTIATION_TIMEOUT_SECS", U64, "30"),
    f("limits.idle_timeout_secs", "ROOKERY_LIMITS_IDLE_TIMEOUT_SECS", U64, "600"),
    f("limits.max_connections_per_ip", "ROOKERY_LIMITS_MAX_CONNECTIONS_PER_IP", U32, "64"),
    f("limits.auth_failures_before_delay", "ROOKERY_LIMITS_AUTH_FAILURES_BEFORE_DELAY", U32, "3"),
    f("limits.auth_delay_max_secs", "ROOKERY_LIMITS_AUTH_DELAY_MAX_SECS", U64, "30"),
    f("limits.stanza_rate_per_sec", "ROOKERY_LIMITS_STANZA_RATE_PER_SEC", U32, "200"),
    f("limits.outbound_queue", "ROOKERY_LIMITS_OUTBOUND_QUEUE", USIZE, "4096"),
    f("limits.offline_max_per_user", "ROOKERY_LIMITS_OFFLINE_MAX_PER_USER", USIZE, "1000"),
    f("storage.backend", "ROOKERY_STORAGE_BACKEND", Kind::Enum(StorageBackend::NAMES), r#""embedded""#),
    f("storage.durability", "ROOKERY_STORAGE_DURABILITY", Kind::Enum(Durability::NAMES), r#""os""#),
    f("storage.scylla.nodes", "ROOKERY_SCYLLA_NODES", Kind::HostPorts, r#"["10.0.0.1:9042", "10.0.0.2:9042"]"#),
    f("storage.scylla.keyspace", "ROOKERY_SCYLLA_KEYSPACE", Kind::Str, r#""rookery""#),
    f("storage.scylla.replication_factor", "ROOKERY_SCYLLA_REPLICATION_FACTOR", U32, "3"),
    f("storage.scylla.local_dc", "ROOKERY_SCYLLA_LOCAL_DC", Kind::OptStr, r#""dc1""#),
    f("storage.scylla.username", "ROOKERY_SCYLLA_USERNAME", Kind::OptStr, r#""rookery""#),
    f("storage.scylla.password", "ROOKERY_SCYLLA_PASSWORD", Kind::OptStr, r#""(prefer ROOKERY_SCYLLA_PASSWORD)""#),
    f("storage.scylla.request_timeout_ms", "ROOKERY_SCYLLA_REQUEST_TIMEOUT_MS", U64, "5000"),
    f("storage.scylla.offline_ttl_days", "ROOKERY_SCYLLA_OFFLINE_TTL_DAYS", U32, "0"),
    f("storage.sqlite.path", "ROOKERY_SQLITE_PATH", Kind::OptPath, r#""/var/lib/rookery/rookery.sqlite3""#),
    f("stream_management.enabled", "ROOKERY_STREAM_MANAGEMENT_ENABLED", Kind::Bool, "true"),
    f("stream_management.resume_timeout_secs", "ROOKERY_STREAM_MANAGEMENT_RESUME_TIMEOUT_SECS", U64, "300"),
    f("stream_management.max_resume_timeout_secs", "ROOKERY_STREAM_MANAGEMENT_MAX_RESUME_TIMEOUT_SECS", U64, "3600"),
    f("csi.enabled", "ROOKERY_CSI_ENABLED", Kind::Bool, "true"),
    f("csi.max_held", "ROOKERY_CSI_MAX_HELD", USIZE, "100"),
    f("mam.enabled", "ROOKERY_MAM_ENABLED", Kind::Bool, "true"),
    f("mam.default_policy", "ROOKERY_MAM_DEFAULT_POLICY", Kind::Enum(ArchivePolicy::NAMES), r#""always""#),
    f("mam.max_page", "ROOKERY_MAM_MAX_PAGE", USIZE, "250"),
    f("mam.default_page", "ROOKERY_MAM_DEFAULT_PAGE", USIZE, "50"),
    f("mam.count_limit", "ROOKERY_MAM_COUNT_LIMIT", USIZE, "2000"),
    f("mam.queries_per_sec", "ROOKERY_MAM_QUERIES_PER_SEC", U32, "10"),
    f("mam.retention_days", "ROOKERY_MAM_RETENTION_DAYS", U32, "365"),
    f(
        "mam.retention_days_by_domain",
        "ROOKERY_MAM_RETENTION_DAYS_BY_DOMAIN",
        Kind::DomainDays,
        r#"{ "students.example.org" = 180 }"#,
    ),
    f("mam.retention_interval_secs", "ROOKERY_MAM_RETENTION_INTERVAL_SECS", U64, "3600"),
    f("contact.abuse", "ROOKERY_CONTACT_ABUSE", Kind::Strings, r#"["mailto:abuse@example.org"]"#),
    f("contact.admin", "ROOKERY_CONTACT_ADMIN", Kind::Strings, r#"["xmpp:admin@example.org"]"#),
    f("contact.feedback", "ROOKERY_CONTACT_FEEDBACK", Kind::Strings, r#"["https://example.org/feedback"]"#),
    f("contact.sales", "ROOKERY_CONTACT_SALES", Kind::Strings, r#"["mailto:sales@example.org"]"#),
    f("contact.security", "ROOKERY_CONTACT_SECURITY", Kind::Strings, r#"["mailto:security@example.org"]"#),
    f("contact.status", "ROOKERY_CONTACT_STATUS", Kind::Strings, r#"["https://status.example.org"]"#),
    f("contact.support", "ROOKERY_CONTACT_SUPPORT", Kind::Strings, r#"["https://example.org/support"]"#),
    f(
        "contact.domains",
        "ROOKERY_CONTACT_DOMAINS",
        Kind::DomainContacts,
        r#"{ "students.example.org" = { support = ["https://help.example.org"] } }"#,
    ),
    f("router.iq_to_full_jid", "ROOKERY_ROUTER_IQ_TO_FULL_JID", Kind::Enum(IqToFullJid::NAMES), r#""presence-shared""#),
    f("cluster.node_id", "ROOKERY_NODE_ID", Kind::UInt { max: 1023 }, "1"),
    f("cluster.grpc", "ROOKERY_CLUSTER_GRPC", Kind::Listener, r#""0.0.0.0:7000""#),
    f(
        "cluster.routers",
        "ROOKERY_CLUSTER_ROUTERS",
        Kind::HostPorts,
        r#"["router-0.router:7000", "router-1.router:7000"]"#,
    ),
    f("cluster.redis", "ROOKERY_REDIS", Kind::Strings, r#"["redis://127.0.0.1:6379"]"#),
    f("cluster.redis_cluster", "ROOKERY_REDIS_CLUSTER", Kind::Bool, "false"),
    f("cluster.heartbeat_ms", "ROOKERY_CLUSTER_HEARTBEAT_MS", U64, "1000"),
    f("cluster.dead_after_ms", "ROOKERY_CLUSTER_DEAD_AFTER_MS", U64, "5000"),
    f("log.level", "ROOKERY_LOG_LEVEL", Kind::Str, r#""info""#),
    f("log.format", "ROOKERY_LOG_FORMAT", Kind::Enum(LogFormat::NAMES), r#""text""#),
    f("admin.token_file", "ROOKERY_ADMIN_TOKEN_FILE", Kind::OptPath, r#""/etc/rookery/admin.token""#),
];

const ENV_TABLE: [(&str, &str); FIELDS.len()] = {
    let mut out = [("", ""); FIELDS.len()];
    let mut i = 0;
    while i < FIELDS.len() {
        out[i] = (FIELDS[i].env, FIELDS[i].key);
        i += 1;
    }
    out
};

/// Every environment variable [`Config::apply_env`] reads, with the config key it sets.
pub const ENV_KEYS: &[(&str, &str)] = &ENV_TABLE;

pub(crate) fn field(key: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.key == key)
}

fn leaf(key: &str) -> &str {
    key.rsplit_once('.').map_or(key, |(_, leaf)| leaf)
}

/// Section names (`listen`, `limits`, ...) in schema order.
fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for f in FIELDS {
        if let Some((section, _)) = f.key.split_once('.')
            && !out.contains(&section)
        {
            out.push(section);
        }
    }
    out
}

/// Keys valid directly inside `section` (`""` for the top level).
fn valid_keys(section: &str) -> Vec<&'static str> {
    if section.is_empty() {
        let mut out: Vec<&'static str> = FIELDS.iter().map(|f| f.key).filter(|k| !k.contains('.')).collect();
        out.extend(sections());
        out
    } else {
        let mut out: Vec<&'static str> = Vec::new();
        for f in FIELDS {
            if let Some(rest) = f.key.strip_prefix(section).and_then(|r| r.strip_prefix('.')) {
                // A nested section (`storage.scylla`) shows up once, under its own name.
                let next = rest.split_once('.').map_or(rest, |(s, _)| s);
                if !out.contains(&next) {
                    out.push(next);
                }
            }
        }
        out
    }
}

/// Whether `key` names a section (a table of keys) rather than a value.
fn is_section(key: &str) -> bool {
    FIELDS.iter().any(|f| f.key.strip_prefix(key).is_some_and(|rest| rest.starts_with('.')))
}

fn unknown_key(section: &str, name: &str) -> ConfigError {
    let valid = valid_keys(section);
    let key = if section.is_empty() { name.to_owned() } else { format!("{section}.{name}") };
    // A near miss in the same table first; otherwise the same name in another section
    // (e.g. `max_depth` written at the top level instead of under [limits]).
    let suggestion = suggest::closest(name, valid.iter().copied())
        .map(str::to_owned)
        .or_else(|| FIELDS.iter().find(|f| f.key != key && leaf(f.key) == name).map(|f| f.key.to_owned()));
    ConfigError::UnknownKey { key, suggestion, valid }
}

fn describe(v: &toml::Value) -> String {
    let mut s = match v {
        toml::Value::Table(_) => "a table".to_owned(),
        other => other.to_string(),
    };
    if s.chars().count() > 60 {
        s = s.chars().take(57).collect::<String>() + "...";
    }
    s
}

impl Kind {
    fn toml_expected(self) -> String {
        match self {
            Kind::Domains => "an array of domain name strings".to_owned(),
            Kind::Path => "a path string".to_owned(),
            Kind::OptPath => "a path string (or leave the key out)".to_owned(),
            Kind::Listener => "a string \"IP:port\" such as \"0.0.0.0:5222\" or \"[::]:5222\" \
                 (host names are not accepted), or \"off\" to disable the listener"
                .to_owned(),
            Kind::Bool => "true or false (without quotes)".to_owned(),
            Kind::UInt { max } => format!("{} (without quotes)", uint_range(max)),
            Kind::Enum(names) => {
                format!("one of {}", names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", "))
            }
            Kind::Str => "a string".to_owned(),
            Kind::OptStr => "a string (or leave the key out)".to_owned(),
            Kind::HostPorts => "an array of \"host:port\" strings such as [\"10.0.0.1:9042\"]".to_owned(),
            Kind::DomainDays => "a table of domain = days, e.g. { \"example.org\" = 365 }".to_owned(),
            Kind::Strings => "an array of strings".to_owned(),
            Kind::DomainContacts => format!(
                "a table of domain = {{ role = [\"uri\", ...] }}, with roles among {}",
                CONTACT_ROLES.join(", ")
            ),
        }
    }

    fn env_expected(self) -> String {
        match self {
            Kind::Domains => "comma-separated domain names, e.g. example.org,chat.example.org".to_owned(),
            Kind::Path => "a non-empty path".to_owned(),
            Kind::OptPath => "a path, or an empty value to unset".to_owned(),
            Kind::Listener => "IP:port such as 0.0.0.0:5222 or [::]:5222, or `off` (or empty) to disable".to_owned(),
            Kind::Bool => "one of true, false, 1, 0, yes, no".to_owned(),
            Kind::UInt { max } => uint_range(max),
            Kind::Enum(names) => format!("one of {}", names.join(", ")),
            Kind::Str => "a string".to_owned(),
            Kind::OptStr => "a string, or an empty value to unset".to_owned(),
            Kind::HostPorts => "comma-separated host:port pairs, e.g. 10.0.0.1:9042,10.0.0.2:9042".to_owned(),
            Kind::Strings => "comma-separated values".to_owned(),
            Kind::DomainDays => {
                "comma-separated domain=days pairs, e.g. example.org=365,students.example.org=180".to_owned()
            }
            Kind::DomainContacts => "semicolon-separated domain/role=uri|uri entries, \
                e.g. students.example.org/support=https://help.example.org|xmpp:help@example.org"
                .to_owned(),
        }
    }

    fn accepts(self, v: &toml::Value) -> bool {
        use toml::Value as V;
        match (self, v) {
            (Kind::Domains | Kind::HostPorts | Kind::Strings, V::Array(items)) => {
                items.iter().all(|i| matches!(i, V::String(_)))
            }
            (Kind::Path | Kind::OptPath | Kind::Str | Kind::OptStr, V::String(_)) => true,
            (Kind::Listener, V::String(s)) => listener::parse(s).is_ok(),
            (Kind::Bool, V::Boolean(_)) => true,
            (Kind::UInt { max }, V::Integer(i)) => u64::try_from(*i).is_ok_and(|i| i <= max),
            (Kind::Enum(names), V::String(s)) => names.contains(&s.as_str()),
            (Kind::DomainDays, V::Table(t)) => {
                t.values().all(|v| matches!(v, V::Integer(i) if u32::try_from(*i).is_ok()))
            }
            (Kind::DomainContacts, V::Table(t)) => t.values().all(|roles| {
                matches!(roles, V::Table(r) if r.iter().all(|(role, list)| {
                    CONTACT_ROLES.contains(&role.as_str())
                        && matches!(list, V::Array(items) if items.iter().all(|i| matches!(i, V::String(_))))
                }))
            }),
            _ => false,
        }
    }
}

fn uint_range(max: u64) -> String {
    if max >= i64::MAX as u64 {
        "a whole number, 0 or more".to_owned()
    } else {
        format!("a whole number from 0 to {max}")
    }
}

fn check_value(field: &Field, v: &toml::Value) -> Result<(), ConfigError> {
    if field.kind.accepts(v) {
        return Ok(());
    }
    Err(ConfigError::BadValue {
        key: field.key.to_owned(),
        found: describe(v),
        expected: field.kind.toml_expected(),
        example: format!("{} = {}", leaf(field.key), field.example),
    })
}

/// Walks a parsed document against the schema: unknown keys and wrongly typed values are
/// reported with their full dotted path before serde sees the document. Every offending
/// entry is reported and removed from `table`, so the rest still deserializes and later
/// checks (environment, validation) can report their own problems in the same run.
pub(crate) fn check_table(table: &mut toml::Table) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    check_level("", table, &mut errors);
    errors
}

fn check_level(prefix: &str, table: &mut toml::Table, errors: &mut Vec<ConfigError>) {
    let mut bad = Vec::new();
    for (name, value) in table.iter_mut() {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        if let Some(f) = field(&key) {
            if let Err(e) = check_value(f, value) {
                errors.push(e);
                bad.push(name.clone());
            }
        } else if is_section(&key) {
            if let Some(inner) = value.as_table_mut() {
                check_level(&key, inner, errors);
            } else {
                errors.push(ConfigError::BadValue {
                    found: describe(value),
                    expected: format!("a table (a `[{key}]` section)"),
                    example: format!("[{key}]"),
                    key,
                });
                bad.push(name.clone());
            }
        } else {
            errors.push(unknown_key(prefix, name));
            bad.push(name.clone());
        }
    }
    for name in bad {
        table.remove(&name);
    }
}

/// Applies every valid override and reports every bad variable, in the order given.
pub(crate) fn apply_env(cfg: &mut Config, vars: impl IntoIterator<Item = (String, String)>) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (var, value) in vars {
        if !var.starts_with(ENV_PREFIX) || RESERVED_ENV.contains(&var.as_str()) || var.starts_with(RESERVED_ENV_PREFIX)
        {
            continue;
        }
        let Some(field) = FIELDS.iter().find(|f| f.env == var) else {
            let valid: Vec<&'static str> = FIELDS.iter().map(|f| f.env).collect();
            errors.push(ConfigError::UnknownEnv {
                suggestion: suggest::closest(&var, valid.iter().copied()).map(str::to_owned),
                var,
                valid,
            });
            continue;
        };
        if set(cfg, field.key, &value).is_err() {
            errors.push(ConfigError::BadEnv { var, value, key: field.key, expected: field.kind.env_expected() });
        }
    }
    errors
}

struct Malformed;

fn uint<T: TryFrom<u64>>(s: &str) -> Result<T, Malformed> {
    let n: u64 = s.trim().parse().map_err(|_| Malformed)?;
    T::try_from(n).map_err(|_| Malformed)
}

fn boolean(s: &str) -> Result<bool, Malformed> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(Malformed),
    }
}

fn path(s: &str) -> Result<PathBuf, Malformed> {
    if s.is_empty() { Err(Malformed) } else { Ok(PathBuf::from(s)) }
}

fn opt_path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn opt_string(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|d| !d.is_empty()).map(str::to_owned).collect()
}

/// XEP-0157 §7.1 roles (`<role>-addresses`).
const CONTACT_ROLES: &[&str] = &["abuse", "admin", "feedback", "sales", "security", "status", "support"];

/// `domain/role=uri|uri;...` from the environment.
fn domain_contacts(s: &str) -> Result<std::collections::BTreeMap<String, crate::ContactAddresses>, Malformed> {
    let mut out: std::collections::BTreeMap<String, crate::ContactAddresses> = std::collections::BTreeMap::new();
    for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (target, uris) = entry.split_once('=').ok_or(Malformed)?;
        let (domain, role) = target.trim().split_once('/').ok_or(Malformed)?;
        if domain.is_empty() {
            return Err(Malformed);
        }
        let list = uris.split('|').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        if !out.entry(domain.to_owned()).or_default().set(role, list) {
            return Err(Malformed);
        }
    }
    Ok(out)
}

fn domain_days(s: &str) -> Result<std::collections::BTreeMap<String, u32>, Malformed> {
    let mut out = std::collections::BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (domain, days) = pair.split_once('=').ok_or(Malformed)?;
        let domain = domain.trim();
        if domain.is_empty() {
            return Err(Malformed);
        }
        out.insert(domain.to_owned(), uint(days)?);
    }
    Ok(out)
}

/// Sets one key from its environment-variable spelling.
fn set(cfg: &mut Config, key: &str, raw: &str) -> Result<(), Malformed> {
    let l = &mut cfg.limits;
    match key {
        "domains" => {
            cfg.domains = raw.split(',').map(str::trim).filter(|d| !d.is_empty()).map(str::to_owned).collect();
        }
        "data_dir" => cfg.data_dir = path(raw)?,
        "listen.c2s" => cfg.listen.c2s = listener::parse(raw).map_err(|_| Malformed)?,
        "listen.c2s_tls" => cfg.listen.c2s_tls = listener::parse(raw).map_err(|_| Malformed)?,
        "listen.http" => cfg.listen.http = listener::parse(raw).map_err(|_| Malformed)?,
        "tls.cert" => cfg.tls.cert = opt_path(raw),
        "tls.key" => cfg.tls.key = opt_path(raw),
        "registration.allow" => cfg.registration.allow = boolean(raw)?,
        "registration.min_password_len" => cfg.registration.min_password_len = uint(raw)?,
        "limits.max_stanza_bytes" => l.max_stanza_bytes = uint(raw)?,
        "limits.max_depth" => l.max_depth = uint(raw)?,
        "limits.negotiation_timeout_secs" => l.negotiation_timeout_secs = uint(raw)?,
        "limits.idle_timeout_secs" => l.idle_timeout_secs = uint(raw)?,
        "limits.max_connections_per_ip" => l.max_connections_per_ip = uint(raw)?,
        "limits.auth_failures_before_delay" => l.auth_failures_before_delay = uint(raw)?,
        "limits.auth_delay_max_secs" => l.auth_delay_max_secs = uint(raw)?,
        "limits.stanza_rate_per_sec" => l.stanza_rate_per_sec = uint(raw)?,
        "limits.outbound_queue" => l.outbound_queue = uint(raw)?,
        "limits.offline_max_per_user" => l.offline_max_per_user = uint(raw)?,
        "storage.backend" => {
            cfg.storage.backend = StorageBackend::parse(raw.trim()).ok_or(Malformed)?;
        }
        "storage.durability" => {
            cfg.storage.durability = Durability::parse(raw.trim()).ok_or(Malformed)?;
        }
        "router.iq_to_full_jid" => cfg.router.iq_to_full_jid = IqToFullJid::parse(raw.trim()).ok_or(Malformed)?,
        "cluster.node_id" => cfg.cluster.node_id = uint::<u32>(raw).ok().filter(|n| *n <= 1023).ok_or(Malformed)?,
        "cluster.grpc" => cfg.cluster.grpc = listener::parse(raw).map_err(|_| Malformed)?,
        "cluster.routers" => cfg.cluster.routers = list(raw),
        "cluster.redis" => cfg.cluster.redis = list(raw),
        "contact.abuse" => cfg.contact.abuse = list(raw),
        "contact.admin" => cfg.contact.admin = list(raw),
        "contact.feedback" => cfg.contact.feedback = list(raw),
        "contact.sales" => cfg.contact.sales = list(raw),
        "contact.security" => cfg.contact.security = list(raw),
        "contact.status" => cfg.contact.status = list(raw),
        "contact.support" => cfg.contact.support = list(raw),
        "contact.domains" => cfg.contact.domains = domain_contacts(raw)?,
        "cluster.redis_cluster" => cfg.cluster.redis_cluster = boolean(raw)?,
        "cluster.heartbeat_ms" => cfg.cluster.heartbeat_ms = uint(raw)?,
        "cluster.dead_after_ms" => cfg.cluster.dead_after_ms = uint(raw)?,
        "stream_management.enabled" => cfg.stream_management.enabled = boolean(raw)?,
        "stream_management.resume_timeout_secs" => cfg.stream_management.resume_timeout_secs = uint(raw)?,
        "stream_management.max_resume_timeout_secs" => cfg.stream_management.max_resume_timeout_secs = uint(raw)?,
        "csi.enabled" => cfg.csi.enabled = boolean(raw)?,
        "csi.max_held" => cfg.csi.max_held = uint(raw)?,
        "mam.enabled" => cfg.mam.enabled = boolean(raw)?,
        "mam.default_policy" => cfg.mam.default_policy = ArchivePolicy::parse(raw.trim()).ok_or(Malformed)?,
        "mam.max_page" => cfg.mam.max_page = uint(raw)?,
        "mam.default_page" => cfg.mam.default_page = uint(raw)?,
        "mam.count_limit" => cfg.mam.count_limit = uint(raw)?,
        "mam.queries_per_sec" => cfg.mam.queries_per_sec = uint(raw)?,
        "mam.retention_days" => cfg.mam.retention_days = uint(raw)?,
        "mam.retention_days_by_domain" => cfg.mam.retention_days_by_domain = domain_days(raw)?,
        "mam.retention_interval_secs" => cfg.mam.retention_interval_secs = uint(raw)?,
        "storage.scylla.nodes" => cfg.storage.scylla.nodes = list(raw),
        "storage.scylla.keyspace" => cfg.storage.scylla.keyspace = raw.trim().to_owned(),
        "storage.scylla.replication_factor" => cfg.storage.scylla.replication_factor = uint(raw)?,
        "storage.scylla.local_dc" => cfg.storage.scylla.local_dc = opt_string(raw),
        "storage.scylla.username" => cfg.storage.scylla.username = opt_string(raw),
        // Not trimmed: a password may end in a space.
        "storage.scylla.password" => cfg.storage.scylla.password = (!raw.is_empty()).then(|| raw.to_owned()),
        "storage.scylla.request_timeout_ms" => cfg.storage.scylla.request_timeout_ms = uint(raw)?,
        "storage.scylla.offline_ttl_days" => cfg.storage.scylla.offline_ttl_days = uint(raw)?,
        "storage.sqlite.path" => cfg.storage.sqlite.path = opt_path(raw),
        "log.level" => cfg.log.level = raw.trim().to_owned(),
        "log.format" => cfg.log.format = LogFormat::parse(raw.trim()).ok_or(Malformed)?,
        "admin.token_file" => cfg.admin.token_file = opt_path(raw),
        // Every FIELDS key has an arm; a unit test keeps it that way.
        _ => return Err(Malformed),
    }
    Ok(())
}
