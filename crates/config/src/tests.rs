#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::*;
use crate::schema::FIELDS;

const EXAMPLE: &str = include_str!("../../../deploy/rookery.example.toml");
const DOCS: &str = include_str!("../../../docs/configuration.md");

fn addr(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn with_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut cfg = Config::default();
    cfg.apply_env(env(pairs)).map(|()| cfg)
}

fn invalid_keys(cfg: &Config) -> Vec<String> {
    match cfg.validate() {
        Err(ConfigError::Invalid(problems)) => problems.into_iter().map(|p| p.key).collect(),
        other => panic!("expected validation failure, got {other:?}"),
    }
}

// ---- defaults -------------------------------------------------------------------------

#[test]
fn defaults() {
    let c = Config::default();
    assert_eq!(c.domains, vec!["localhost"]);
    assert_eq!(c.data_dir, PathBuf::from("./rookery-data"));
    assert_eq!(c.listen.c2s, addr("0.0.0.0:5222"));
    assert_eq!(c.listen.c2s_tls, addr("0.0.0.0:5223"));
    assert_eq!(c.listen.http, addr("127.0.0.1:5280"));
    assert_eq!(c.tls, Tls { cert: None, key: None });
    assert!(!c.registration.allow);
    assert_eq!(c.registration.min_password_len, 8);
    let l = &c.limits;
    assert_eq!(l.max_stanza_bytes, 262_144);
    assert_eq!(l.max_depth, 48);
    assert_eq!(l.negotiation_timeout_secs, 30);
    assert_eq!(l.idle_timeout_secs, 600);
    assert_eq!(l.max_connections_per_ip, 64);
    assert_eq!(l.auth_failures_before_delay, 3);
    assert_eq!(l.auth_delay_max_secs, 30);
    assert_eq!(l.stanza_rate_per_sec, 200);
    assert_eq!(l.outbound_queue, 4096);
    assert_eq!(l.offline_max_per_user, 1000);
    assert_eq!(c.storage.backend, StorageBackend::Embedded);
    assert_eq!(c.storage.durability, Durability::Os);
    let sc = &c.storage.scylla;
    assert!(sc.nodes.is_empty());
    assert_eq!(sc.keyspace, "rookery");
    assert_eq!(sc.replication_factor, 3);
    assert_eq!((&sc.local_dc, &sc.username, &sc.password), (&None, &None, &None));
    assert_eq!(sc.request_timeout_ms, 5000);
    assert_eq!(sc.offline_ttl_days, 0);
    assert_eq!(c.storage.sqlite.path, None);
    assert_eq!(c.sqlite_path(), Path::new("./rookery-data").join("rookery.sqlite3"));
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.admin.token_file, None);
    assert_eq!(c.admin_token_path(), Path::new("./rookery-data").join("admin.token"));
    c.validate().unwrap();
}

#[test]
fn empty_document_is_defaults() {
    assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
    assert_eq!(Config::from_toml_str("[limits]\n").unwrap(), Config::default());
}

#[test]
fn partial_section_keeps_other_defaults() {
    let c = Config::from_toml_str("[limits]\nmax_depth = 20\n").unwrap();
    assert_eq!(c.limits.max_depth, 20);
    assert_eq!(c.limits.max_stanza_bytes, 262_144);
    assert_eq!(c.listen, Listen::default());
}

// ---- example file and round trip ----------------------------------------------------------

#[test]
fn example_file_parses_and_validates() {
    let c = Config::from_toml_str(EXAMPLE).unwrap();
    c.validate().unwrap();
    assert_eq!(c.domains, vec!["example.org"]);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/rookery"));
    assert_eq!(c.tls.cert.as_deref(), Some(Path::new("/etc/rookery/tls/fullchain.pem")));
    assert_eq!(c.tls.key.as_deref(), Some(Path::new("/etc/rookery/tls/privkey.pem")));
    assert_eq!(c.admin_token_path(), PathBuf::from("/etc/rookery/admin.token"));
    // Apart from those, the example documents the defaults.
    assert_eq!(c.listen, Listen::default());
    assert_eq!(c.registration, Registration::default());
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.storage, Storage::default());
    assert_eq!(c.log, Log::default());
    assert_eq!(c.router, crate::Router::default());
}

#[test]
fn example_file_sets_every_key() {
    let table: toml::Table = EXAMPLE.parse().unwrap();
    for f in FIELDS {
        let mut parts = f.key.split('.');
        let first = table.get(parts.next().unwrap());
        let found = parts.try_fold(first, |at, part| Some(at?.get(part))).flatten().is_some();
        assert!(found, "example file lacks `{}`", f.key);
    }
}

#[test]
fn full_non_default_file() {
    let text = r#"
domains = ["example.org", "chat.example.net", "localhost"]
data_dir = "/srv/rookery"
[listen]
c2s = "[::]:5222"
c2s_tls = "off"
http = "10.0.0.5:8080"
[tls]
cert = "/c.pem"
key = "/k.pem"
[registration]
allow = true
min_password_len = 12
[limits]
max_stanza_bytes = 65536
max_depth = 32
negotiation_timeout_secs = 10
idle_timeout_secs = 0
max_connections_per_ip = 5
auth_failures_before_delay = 1
auth_delay_max_secs = 60
stanza_rate_per_sec = 50
outbound_queue = 128
offline_max_per_user = 0
[storage]
backend = "memory"
durability = "fsync"
[storage.scylla]
nodes = ["10.0.0.1:9042", "scylla-1.scylla.svc:9042", "[fd00::1]:19042"]
keyspace = "chat_prod"
replication_factor = 5
local_dc = "eu-west-1"
username = "rookery"
password = "pw"
request_timeout_ms = 2500
offline_ttl_days = 30
[storage.sqlite]
path = "/srv/rookery/shared.sqlite3"
[router]
iq_to_full_jid = "always"
[log]
level = "debug,rookery_edge=trace"
format = "json"
[admin]
token_file = "/run/secrets/token"
"#;
    let c = Config::from_toml_str(text).unwrap();
    c.validate().unwrap();
    assert_eq!(c.domains.len(), 3);
    assert_eq!(c.listen.c2s, addr("[::]:5222"));
    assert_eq!(c.listen.c2s_tls, None);
    assert_eq!(c.listen.http, addr("10.0.0.5:8080"));
    assert!(c.registration.allow);
    assert_eq!(c.registration.min_password_len, 12);
    assert_eq!(c.limits.idle_timeout_secs, 0);
    assert_eq!(c.limits.offline_max_per_user, 0);
    assert_eq!(c.storage.backend, StorageBackend::Memory);
    assert_eq!(c.storage.durability, Durability::Fsync);
    let sc = &c.storage.scylla;
    assert_eq!(sc.nodes, ["10.0.0.1:9042", "scylla-1.scylla.svc:9042", "[fd00::1]:19042"]);
    assert_eq!((sc.keyspace.as_str(), sc.replication_factor), ("chat_prod", 5));
    assert_eq!((sc.local_dc.as_deref(), sc.username.as_deref()), (Some("eu-west-1"), Some("rookery")));
    assert_eq!((sc.request_timeout_ms, sc.offline_ttl_days), (2500, 30));
    assert_eq!(sc.password.as_deref(), Some("pw"));
    assert_eq!(c.sqlite_path(), PathBuf::from("/srv/rookery/shared.sqlite3"));
    assert_eq!(c.router.iq_to_full_jid, crate::IqToFullJid::Always);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.admin_token_path(), PathBuf::from("/run/secrets/token"));

    let printed = c.to_toml_string();
    // Everything but the password, which is never printed.
    let mut expected = c.clone();
    expected.storage.scylla.password = None;
    assert_eq!(Config::from_toml_str(&printed).unwrap(), expected, "{printed}");
}

#[test]
fn to_toml_string_round_trips_defaults() {
    let printed = Config::default().to_toml_string();
    assert!(printed.contains("[limits]"), "{printed}");
    assert!(!printed.contains("token_file"), "{printed}");
    assert_eq!(Config::from_toml_str(&printed).unwrap(), Config::default());
}

// ---- listeners ----------------------------------------------------------------------------

#[test]
fn off_disables_a_listener() {
    let c = Config::from_toml_str("[listen]\nc2s = \"off\"\nc2s_tls = \"\"\nhttp = \"OFF\"\n").unwrap();
    assert_eq!(c.listen.c2s, None);
    assert_eq!(c.listen.c2s_tls, None);
    assert_eq!(c.listen.http, None);
    c.validate().unwrap();
    let printed = c.to_toml_string();
    assert!(printed.contains(r#"c2s = "off""#), "{printed}");
    assert_eq!(Config::from_toml_str(&printed).unwrap(), c);

    let c = with_env(&[("ROOKERY_C2S", "off"), ("ROOKERY_HTTP", "")]).unwrap();
    assert_eq!(c.listen.c2s, None);
    assert_eq!(c.listen.http, None);
    assert_eq!(c.listen.c2s_tls, addr("0.0.0.0:5223"));
}

// ---- unknown keys -------------------------------------------------------------------------

#[test]
fn unknown_key_in_section_suggests() {
    let e = Config::from_toml_str("[limits]\nmax_stanza_byte = 1\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("unknown key `limits.max_stanza_byte`; did you mean `max_stanza_bytes`?"), "{msg}");
    assert!(msg.contains("valid keys in [limits]: "), "{msg}");
    assert!(msg.contains("outbound_queue"), "{msg}");
    assert_eq!(e.keys(), vec!["limits.max_stanza_byte"]);
}

#[test]
fn unknown_top_level_key_suggests() {
    let msg = Config::from_toml_str("domain = [\"a.org\"]\n").unwrap_err().to_string();
    assert!(msg.contains("unknown key `domain`; did you mean `domains`?"), "{msg}");
    let msg = Config::from_toml_str("[limit]\nmax_depth = 9\n").unwrap_err().to_string();
    assert!(msg.contains("unknown key `limit`; did you mean `limits`?"), "{msg}");
}

#[test]
fn misspelt_top_level_key_suggests() {
    // Swapped letters: the most common typo, at the top level as inside a section.
    let e = Config::from_toml_str("domian = [\"a.org\"]\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("unknown key `domian`; did you mean `domains`?"), "{msg}");
    let msg = Config::from_toml_str("dtaa_dir = \"/x\"\n").unwrap_err().to_string();
    assert!(msg.contains("did you mean `data_dir`?"), "{msg}");
    let msg = Config::from_toml_str("[lsiten]\nc2s = \"off\"\n").unwrap_err().to_string();
    assert!(msg.contains("did you mean `listen`?"), "{msg}");
}

#[test]
fn every_file_error_is_reported() {
    let text = "domian = [\"a.org\"]\n[limits]\nmax_depht = 3\nmax_stanza_bytes = \"big\"\n\
                [listen]\nc2s = \"localhost:5222\"\n";
    let e = Config::from_toml_str(text).unwrap_err();
    assert_eq!(e.keys(), vec!["domian", "limits.max_depht", "limits.max_stanza_bytes", "listen.c2s"], "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("4 configuration errors:"), "{msg}");
    assert!(msg.contains("did you mean `domains`?"), "{msg}");
    assert!(msg.contains("did you mean `max_depth`?"), "{msg}");
    assert!(msg.contains("for example `max_stanza_bytes = 262144`"), "{msg}");
    assert!(msg.contains("for example `c2s = \"0.0.0.0:5222\"`"), "{msg}");
    assert_eq!(msg.lines().count(), 5, "{msg}");
}

#[test]
fn every_env_error_is_reported() {
    let mut c = Config::default();
    let e = c
        .apply_env(env(&[
            ("ROOKERY_DOMIANS", "a.org"),
            ("ROOKERY_LIMITS_MAX_DEPTH", "deep"),
            ("ROOKERY_LOG_LEVEL", "debug"),
            ("ROOKERY_C2S", "localhost"),
        ]))
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("3 configuration errors:"), "{msg}");
    assert!(msg.contains("ROOKERY_DOMIANS; did you mean `ROOKERY_DOMAINS`?"), "{msg}");
    assert!(msg.contains("ROOKERY_LIMITS_MAX_DEPTH=\"deep\""), "{msg}");
    assert!(msg.contains("ROOKERY_C2S=\"localhost\""), "{msg}");
    // The valid override is applied all the same.
    assert_eq!(c.log.level, "debug");
}

#[test]
fn load_reports_file_and_validation_errors_together() {
    let path = std::env::temp_dir().join(format!("rookery-config-test-many-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "domian = [\"a.org\"]\n[limits]\nmax_depht = 3\nmax_depth = 1\n[tls]\ncert = \"/x.pem\"\nkey = 5\n",
    )
    .unwrap();
    let e = Config::load(Some(&path)).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let msg = e.to_string();
    // `tls.key` is reported once, as a bad value, not again by the rule that pairs it
    // with `tls.cert`.
    assert_eq!(e.keys(), vec!["domian", "limits.max_depht", "tls.key", "limits.max_depth"], "{msg}");
    assert!(msg.starts_with("4 configuration errors:"), "{msg}");
    for line in msg.lines().skip(1) {
        assert!(line.starts_with("  - "), "{msg}");
        assert!(line.contains("fix:") || line.contains("for example") || line.contains("did you mean"), "{line}");
    }
    assert_eq!(msg.matches(&*path.display().to_string()).count(), 3, "{msg}");
}

#[test]
fn key_in_wrong_section_suggests_full_path() {
    let msg = Config::from_toml_str("max_depth = 9\n").unwrap_err().to_string();
    assert!(msg.contains("did you mean `limits.max_depth`?"), "{msg}");
    let msg = Config::from_toml_str("[listen]\ncert = \"x\"\n").unwrap_err().to_string();
    assert!(msg.contains("unknown key `listen.cert`"), "{msg}");
    assert!(msg.contains("did you mean `tls.cert`?"), "{msg}");
}

#[test]
fn unknown_key_without_close_match_lists_valid_keys() {
    let e = Config::from_toml_str("[storage]\nzzzzzzzzzz = 1\n").unwrap_err();
    match &e {
        ConfigError::UnknownKey { key, suggestion, valid } => {
            assert_eq!(key, "storage.zzzzzzzzzz");
            assert_eq!(suggestion, &None);
            assert_eq!(valid, &vec!["backend", "durability", "scylla", "sqlite"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.to_string().contains("did you mean"));
}

#[test]
fn nested_unknown_table_is_unknown_key() {
    let msg = Config::from_toml_str("[limits.extra]\nx = 1\n").unwrap_err().to_string();
    assert!(msg.contains("unknown key `limits.extra`"), "{msg}");
}

// ---- bad types ----------------------------------------------------------------------------

fn bad_value(text: &str, key: &str, expected_part: &str) {
    let e = Config::from_toml_str(text).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ConfigError::BadValue { .. }), "{text}: {e:?}");
    assert_eq!(e.keys(), vec![key], "{msg}");
    assert!(msg.contains(&format!("`{key}`")), "{msg}");
    assert!(msg.contains(expected_part), "{text}: {msg}");
    assert!(msg.contains("for example `"), "{msg}");
}

#[test]
fn bad_types_name_key_and_expected_type() {
    bad_value("[limits]\nmax_depth = \"48\"\n", "limits.max_depth", "whole number");
    bad_value("[limits]\nmax_depth = -1\n", "limits.max_depth", "whole number");
    bad_value("[limits]\nmax_depth = 1.5\n", "limits.max_depth", "whole number");
    bad_value("[limits]\nstanza_rate_per_sec = 5000000000\n", "limits.stanza_rate_per_sec", "4294967295");
    bad_value("[registration]\nallow = \"yes\"\n", "registration.allow", "true or false");
    bad_value("domains = \"example.org\"\n", "domains", "array of domain name strings");
    bad_value("domains = [\"a.org\", 3]\n", "domains", "array of domain name strings");
    bad_value("data_dir = 5\n", "data_dir", "path string");
    bad_value("[tls]\ncert = true\n", "tls.cert", "path string");
    bad_value("[listen]\nc2s = 5222\n", "listen.c2s", "IP:port");
    bad_value("[listen]\nc2s = \"localhost:5222\"\n", "listen.c2s", "IP:port");
    bad_value("[listen]\nhttp = \"127.0.0.1\"\n", "listen.http", "IP:port");
    bad_value("[storage]\nbackend = \"redis\"\n", "storage.backend", "\"embedded\", \"memory\"");
    bad_value("[storage]\ndurability = \"Fsync\"\n", "storage.durability", "\"os\", \"fsync\"");
    bad_value("[storage]\nbackend = \"cassandra\"\n", "storage.backend", "\"embedded\", \"memory\", \"scylla\"");
    bad_value(
        "[storage.scylla]\nnodes = \"10.0.0.1:9042\"\n",
        "storage.scylla.nodes",
        "array of \"host:port\" strings",
    );
    bad_value("[storage.scylla]\nnodes = [9042]\n", "storage.scylla.nodes", "array of \"host:port\" strings");
    bad_value("[storage.scylla]\nreplication_factor = \"3\"\n", "storage.scylla.replication_factor", "whole number");
    bad_value("[storage.scylla]\nlocal_dc = 1\n", "storage.scylla.local_dc", "a string");
    bad_value("[storage]\nscylla = \"yes\"\n", "storage.scylla", "a table (a `[storage.scylla]` section)");
    bad_value("[log]\nformat = \"yaml\"\n", "log.format", "\"text\", \"json\"");
    bad_value("[router]\niq_to_full_jid = \"contacts\"\n", "router.iq_to_full_jid", "\"presence-shared\", \"always\"");
    bad_value("[log]\nlevel = 3\n", "log.level", "a string");
    bad_value("limits = 5\n", "limits", "a table");
}

#[test]
fn syntax_error_is_reported() {
    let e = Config::from_toml_str("[limits\nmax_depth = 3\n").unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert!(e.to_string().starts_with("invalid TOML syntax"), "{e}");
}

// ---- environment --------------------------------------------------------------------------

/// (variable, value, check) for every variable in ENV_KEYS, each value different from the
/// default so the check proves the variable took effect.
type EnvCase = (&'static str, &'static str, fn(&Config) -> bool);

const ENV_CASES: &[EnvCase] = &[
    ("ROOKERY_DOMAINS", " a.org, b.example ,,", |c| c.domains == ["a.org", "b.example"]),
    ("ROOKERY_DATA_DIR", "/data", |c| c.data_dir == Path::new("/data")),
    ("ROOKERY_C2S", "127.0.0.1:15222", |c| c.listen.c2s == addr("127.0.0.1:15222")),
    ("ROOKERY_C2S_TLS", "[::1]:15223", |c| c.listen.c2s_tls == addr("[::1]:15223")),
    ("ROOKERY_HTTP", "0.0.0.0:9000", |c| c.listen.http == addr("0.0.0.0:9000")),
    ("ROOKERY_TLS_CERT", "/c.pem", |c| c.tls.cert.as_deref() == Some(Path::new("/c.pem"))),
    ("ROOKERY_TLS_KEY", "/k.pem", |c| c.tls.key.as_deref() == Some(Path::new("/k.pem"))),
    ("ROOKERY_ALLOW_REGISTRATION", "yes", |c| c.registration.allow),
    ("ROOKERY_REGISTRATION_MIN_PASSWORD_LEN", "14", |c| c.registration.min_password_len == 14),
    ("ROOKERY_LIMITS_MAX_STANZA_BYTES", "100000", |c| c.limits.max_stanza_bytes == 100_000),
    ("ROOKERY_LIMITS_MAX_DEPTH", "16", |c| c.limits.max_depth == 16),
    ("ROOKERY_LIMITS_NEGOTIATION_TIMEOUT_SECS", "5", |c| c.limits.negotiation_timeout_secs == 5),
    ("ROOKERY_LIMITS_IDLE_TIMEOUT_SECS", "0", |c| c.limits.idle_timeout_secs == 0),
    ("ROOKERY_LIMITS_MAX_CONNECTIONS_PER_IP", "2", |c| c.limits.max_connections_per_ip == 2),
    ("ROOKERY_LIMITS_AUTH_FAILURES_BEFORE_DELAY", "7", |c| c.limits.auth_failures_before_delay == 7),
    ("ROOKERY_LIMITS_AUTH_DELAY_MAX_SECS", "9", |c| c.limits.auth_delay_max_secs == 9),
    ("ROOKERY_LIMITS_STANZA_RATE_PER_SEC", "11", |c| c.limits.stanza_rate_per_sec == 11),
    ("ROOKERY_LIMITS_OUTBOUND_QUEUE", "64", |c| c.limits.outbound_queue == 64),
    ("ROOKERY_LIMITS_OFFLINE_MAX_PER_USER", " 5 ", |c| c.limits.offline_max_per_user == 5),
    ("ROOKERY_STORAGE_BACKEND", "memory", |c| c.storage.backend == StorageBackend::Memory),
    ("ROOKERY_STORAGE_DURABILITY", "fsync", |c| c.storage.durability == Durability::Fsync),
    ("ROOKERY_SCYLLA_NODES", " 10.0.0.1:9042, ,scylla-1:9042 ", |c| {
        c.storage.scylla.nodes == ["10.0.0.1:9042", "scylla-1:9042"]
    }),
    ("ROOKERY_SCYLLA_KEYSPACE", "chat", |c| c.storage.scylla.keyspace == "chat"),
    ("ROOKERY_SCYLLA_REPLICATION_FACTOR", "1", |c| c.storage.scylla.replication_factor == 1),
    ("ROOKERY_SCYLLA_LOCAL_DC", "dc2", |c| c.storage.scylla.local_dc.as_deref() == Some("dc2")),
    ("ROOKERY_SCYLLA_USERNAME", "rk", |c| c.storage.scylla.username.as_deref() == Some("rk")),
    ("ROOKERY_SCYLLA_PASSWORD", "s3cret ", |c| c.storage.scylla.password.as_deref() == Some("s3cret ")),
    ("ROOKERY_SCYLLA_REQUEST_TIMEOUT_MS", "750", |c| c.storage.scylla.request_timeout_ms == 750),
    ("ROOKERY_SCYLLA_OFFLINE_TTL_DAYS", "14", |c| c.storage.scylla.offline_ttl_days == 14),
    ("ROOKERY_SQLITE_PATH", "/run/rookery.db", |c| c.sqlite_path() == Path::new("/run/rookery.db")),
    ("ROOKERY_STREAM_MANAGEMENT_ENABLED", "no", |c| !c.stream_management.enabled),
    ("ROOKERY_STREAM_MANAGEMENT_RESUME_TIMEOUT_SECS", "60", |c| c.stream_management.resume_timeout_secs == 60),
    ("ROOKERY_STREAM_MANAGEMENT_MAX_RESUME_TIMEOUT_SECS", "86400", |c| {
        c.stream_management.max_resume_timeout_secs == 86400
    }),
    ("ROOKERY_CSI_ENABLED", "false", |c| !c.csi.enabled),
    ("ROOKERY_CSI_MAX_HELD", "7", |c| c.csi.max_held == 7),
    ("ROOKERY_MAM_ENABLED", "no", |c| !c.mam.enabled),
    ("ROOKERY_MAM_DEFAULT_POLICY", "roster", |c| c.mam.default_policy == crate::ArchivePolicy::Roster),
    ("ROOKERY_MAM_MAX_PAGE", "100", |c| c.mam.max_page == 100),
    ("ROOKERY_MAM_DEFAULT_PAGE", "20", |c| c.mam.default_page == 20),
    ("ROOKERY_MAM_COUNT_LIMIT", "0", |c| c.mam.count_limit == 0),
    ("ROOKERY_MAM_QUERIES_PER_SEC", "0", |c| c.mam.queries_per_sec == 0),
    ("ROOKERY_MAM_RETENTION_DAYS", "30", |c| c.mam.retention_days == 30),
    ("ROOKERY_MAM_RETENTION_DAYS_BY_DOMAIN", "a.org=7, b.example = 0", |c| {
        c.mam.retention_for("a.org") == 7 && c.mam.retention_for("b.example") == 0
    }),
    ("ROOKERY_MAM_RETENTION_INTERVAL_SECS", "60", |c| c.mam.retention_interval_secs == 60),
    ("ROOKERY_CONTACT_ABUSE", "mailto:a@x.org, xmpp:a@x.org", |c| {
        c.contact.abuse == ["mailto:a@x.org", "xmpp:a@x.org"]
    }),
    ("ROOKERY_CONTACT_ADMIN", "xmpp:admin@x.org", |c| c.contact.admin == ["xmpp:admin@x.org"]),
    ("ROOKERY_CONTACT_FEEDBACK", "https://x.org/f", |c| c.contact.feedback == ["https://x.org/f"]),
    ("ROOKERY_CONTACT_SALES", "mailto:s@x.org", |c| c.contact.sales == ["mailto:s@x.org"]),
    ("ROOKERY_CONTACT_SECURITY", "mailto:sec@x.org", |c| c.contact.security == ["mailto:sec@x.org"]),
    ("ROOKERY_CONTACT_STATUS", "https://status.x.org", |c| c.contact.status == ["https://status.x.org"]),
    ("ROOKERY_CONTACT_SUPPORT", "https://x.org/help", |c| c.contact.support == ["https://x.org/help"]),
    ("ROOKERY_CONTACT_DOMAINS", "a.org/support=https://h.a.org|xmpp:h@a.org; a.org/abuse=mailto:ab@a.org", |c| {
        let a = c.contact.for_domain("a.org");
        a.support == ["https://h.a.org", "xmpp:h@a.org"] && a.abuse == ["mailto:ab@a.org"] && a.admin.is_empty()
    }),
    ("ROOKERY_ROUTER_IQ_TO_FULL_JID", "always", |c| c.router.iq_to_full_jid == crate::IqToFullJid::Always),
    ("ROOKERY_NODE_ID", "7", |c| c.cluster.node_id == 7),
    ("ROOKERY_CLUSTER_GRPC", "127.0.0.1:7100", |c| c.cluster.grpc == Some("127.0.0.1:7100".parse().unwrap())),
    ("ROOKERY_CLUSTER_ROUTERS", "r1:7000, r2:7000", |c| c.cluster.routers == ["r1:7000", "r2:7000"]),
    ("ROOKERY_REDIS", "redis://10.0.0.7:6379", |c| c.cluster.redis == ["redis://10.0.0.7:6379"]),
    ("ROOKERY_REDIS_CLUSTER", "true", |c| c.cluster.redis_cluster),
    ("ROOKERY_CLUSTER_HEARTBEAT_MS", "500", |c| c.cluster.heartbeat_ms == 500),
    ("ROOKERY_CLUSTER_DEAD_AFTER_MS", "9000", |c| c.cluster.dead_after_ms == 9000),
    ("ROOKERY_LOG_LEVEL", "debug", |c| c.log.level == "debug"),
    ("ROOKERY_LOG_FORMAT", "json", |c| c.log.format == LogFormat::Json),
    ("ROOKERY_ADMIN_TOKEN_FILE", "/t", |c| c.admin.token_file.as_deref() == Some(Path::new("/t"))),
];

#[test]
fn every_env_var_applies() {
    let vars: Vec<&str> = ENV_KEYS.iter().map(|(v, _)| *v).collect();
    let cased: Vec<&str> = ENV_CASES.iter().map(|(v, _, _)| *v).collect();
    assert_eq!(vars, cased, "ENV_CASES must cover ENV_KEYS in order");

    for (var, value, check) in ENV_CASES {
        let c = with_env(&[(var, value)]).unwrap();
        assert!(check(&c), "{var}={value} did not apply");
        assert!(!check(&Config::default()), "{var}: test value equals the default");
    }

    // All at once, over a file, and the result still validates (cert and key both set).
    let all: Vec<(&str, &str)> = ENV_CASES.iter().map(|(v, x, _)| (*v, *x)).collect();
    let mut c = Config::from_toml_str(EXAMPLE).unwrap();
    c.apply_env(env(&all)).unwrap();
    for (var, _, check) in ENV_CASES {
        assert!(check(&c), "{var} lost when applied together");
    }
    c.validate().unwrap();
}

#[test]
fn env_keys_table_matches_schema() {
    assert_eq!(ENV_KEYS.len(), FIELDS.len());
    for (var, key) in ENV_KEYS {
        assert!(var.starts_with("ROOKERY_"), "{var}");
        assert!(crate::schema::field(key).is_some(), "{key}");
        assert!(!RESERVED_ENV.contains(var) && !var.starts_with(RESERVED_ENV_PREFIX));
    }
    let required = [
        "ROOKERY_DOMAINS",
        "ROOKERY_DATA_DIR",
        "ROOKERY_C2S",
        "ROOKERY_C2S_TLS",
        "ROOKERY_HTTP",
        "ROOKERY_TLS_CERT",
        "ROOKERY_TLS_KEY",
        "ROOKERY_ALLOW_REGISTRATION",
        "ROOKERY_STORAGE_BACKEND",
        "ROOKERY_STORAGE_DURABILITY",
        "ROOKERY_LOG_LEVEL",
        "ROOKERY_LOG_FORMAT",
        "ROOKERY_ADMIN_TOKEN_FILE",
    ];
    for var in required {
        assert!(ENV_KEYS.iter().any(|(v, _)| *v == var), "{var}");
    }
    for f in FIELDS.iter().filter(|f| f.key.starts_with("limits.")) {
        let var = format!("ROOKERY_LIMITS_{}", f.key["limits.".len()..].to_uppercase());
        assert_eq!(f.env, var);
    }
}

#[test]
fn docs_and_example_cover_every_key() {
    for (var, key) in ENV_KEYS {
        assert!(DOCS.contains(&format!("`{var}`")), "docs lack {var}");
        assert!(DOCS.contains(&format!("`{key}`")), "docs lack {key}");
    }
}

#[test]
fn env_booleans() {
    for (v, want) in
        [("true", true), ("TRUE", true), ("1", true), ("yes", true), ("false", false), ("0", false), ("No", false)]
    {
        let mut c = Config::default();
        c.registration.allow = !want;
        c.apply_env(env(&[("ROOKERY_ALLOW_REGISTRATION", v)])).unwrap();
        assert_eq!(c.registration.allow, want, "{v}");
    }
}

#[test]
fn env_empty_optional_path_unsets() {
    let mut c = Config::from_toml_str(EXAMPLE).unwrap();
    c.apply_env(env(&[("ROOKERY_TLS_CERT", ""), ("ROOKERY_TLS_KEY", ""), ("ROOKERY_ADMIN_TOKEN_FILE", "")])).unwrap();
    assert_eq!(c.tls, Tls::default());
    assert_eq!(c.admin_token_path(), Path::new("/var/lib/rookery/admin.token"));
}

#[test]
fn env_ignores_reserved_and_foreign_variables() {
    let c = with_env(&[
        ("ROOKERY_CONFIG", "/etc/rookery.toml"),
        ("ROOKERY_ADMIN_URL", "http://127.0.0.1:5280"),
        ("ROOKERY_ADMIN_TOKEN", "secret"),
        ("ROOKERY_TEST_ANYTHING", "x"),
        ("PATH", "/usr/bin"),
        ("rookery_domains", "lower.case"),
    ])
    .unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn unknown_env_var_suggests() {
    let e = with_env(&[("ROOKERY_LIMITS_MAX_STANZA_BYTE", "1")]).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(
            "unknown environment variable ROOKERY_LIMITS_MAX_STANZA_BYTE; \
             did you mean `ROOKERY_LIMITS_MAX_STANZA_BYTES`?"
        ),
        "{msg}"
    );
    let msg = with_env(&[("ROOKERY_DOMAIN", "a.org")]).unwrap_err().to_string();
    assert!(msg.contains("did you mean `ROOKERY_DOMAINS`?"), "{msg}");
    let e = with_env(&[("ROOKERY_QQQQQQQQQQQQQQQQ", "1")]).unwrap_err();
    match e {
        ConfigError::UnknownEnv { suggestion, valid, .. } => {
            assert_eq!(suggestion, None);
            assert!(valid.contains(&"ROOKERY_LOG_LEVEL"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_env_values_name_variable_value_and_form() {
    for (var, value, key, form) in [
        ("ROOKERY_LIMITS_MAX_DEPTH", "deep", "limits.max_depth", "whole number"),
        ("ROOKERY_LIMITS_MAX_DEPTH", "-3", "limits.max_depth", "whole number"),
        ("ROOKERY_LIMITS_STANZA_RATE_PER_SEC", "4294967296", "limits.stanza_rate_per_sec", "4294967295"),
        ("ROOKERY_ALLOW_REGISTRATION", "maybe", "registration.allow", "true, false"),
        ("ROOKERY_C2S", "localhost:5222", "listen.c2s", "IP:port"),
        ("ROOKERY_STORAGE_BACKEND", "redis", "storage.backend", "embedded, memory, scylla"),
        ("ROOKERY_SCYLLA_REPLICATION_FACTOR", "three", "storage.scylla.replication_factor", "whole number"),
        ("ROOKERY_STORAGE_DURABILITY", "sync", "storage.durability", "os, fsync"),
        ("ROOKERY_LOG_FORMAT", "xml", "log.format", "text, json"),
        ("ROOKERY_DATA_DIR", "", "data_dir", "non-empty path"),
    ] {
        let e = with_env(&[(var, value)]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::BadEnv { .. }), "{e:?}");
        assert_eq!(e.keys(), vec![key]);
        assert!(msg.contains(var), "{msg}");
        assert!(msg.contains(&format!("{value:?}")), "{msg}");
        assert!(msg.contains(&format!("`{key}`")), "{msg}");
        assert!(msg.contains(form), "{msg}");
    }
}

#[test]
fn env_wins_over_file() {
    let mut c = Config::from_toml_str("[limits]\nmax_depth = 20\n").unwrap();
    c.apply_env(env(&[("ROOKERY_LIMITS_MAX_DEPTH", "30")])).unwrap();
    assert_eq!(c.limits.max_depth, 30);
}

// ---- validation ---------------------------------------------------------------------------

fn expect_invalid(edit: impl FnOnce(&mut Config), key: &str) {
    let mut c = Config::default();
    edit(&mut c);
    let keys = invalid_keys(&c);
    assert_eq!(keys, vec![key.to_owned()]);
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains(&format!("`{key}`")), "{msg}");
    assert!(msg.contains("fix: "), "{msg}");
}

#[test]
fn validation_failures_name_their_key() {
    expect_invalid(|c| c.domains.clear(), "domains");
    expect_invalid(|c| c.domains = vec!["Example.org".into()], "domains");
    expect_invalid(|c| c.domains = vec!["exa mple.org".into()], "domains");
    expect_invalid(|c| c.domains = vec!["example..org".into()], "domains");
    expect_invalid(|c| c.domains = vec![".example.org".into()], "domains");
    expect_invalid(|c| c.domains = vec!["-bad.org".into()], "domains");
    expect_invalid(|c| c.domains = vec!["a".repeat(64) + ".org"], "domains");
    expect_invalid(|c| c.domains = vec!["a.org".into(), "a.org".into()], "domains");
    expect_invalid(|c| c.data_dir = PathBuf::new(), "data_dir");
    expect_invalid(|c| c.tls.cert = Some("/c.pem".into()), "tls.key");
    expect_invalid(|c| c.tls.key = Some("/k.pem".into()), "tls.cert");
    expect_invalid(|c| c.registration.min_password_len = 0, "registration.min_password_len");
    expect_invalid(|c| c.limits.max_stanza_bytes = 9_999, "limits.max_stanza_bytes");
    expect_invalid(|c| c.limits.max_stanza_bytes = 16 * 1024 * 1024 + 1, "limits.max_stanza_bytes");
    expect_invalid(|c| c.limits.max_depth = 7, "limits.max_depth");
    expect_invalid(|c| c.limits.max_depth = 257, "limits.max_depth");
    expect_invalid(|c| c.limits.negotiation_timeout_secs = 0, "limits.negotiation_timeout_secs");
    expect_invalid(|c| c.limits.negotiation_timeout_secs = 601, "limits.negotiation_timeout_secs");
    expect_invalid(|c| c.limits.max_connections_per_ip = 0, "limits.max_connections_per_ip");
    expect_invalid(|c| c.limits.stanza_rate_per_sec = 0, "limits.stanza_rate_per_sec");
    expect_invalid(|c| c.limits.outbound_queue = 15, "limits.outbound_queue");
    expect_invalid(|c| c.listen.c2s_tls = c.listen.c2s, "listen.c2s_tls");
    expect_invalid(|c| c.listen.http = addr("127.0.0.1:5222"), "listen.http");
    expect_invalid(|c| c.log.level = " ".into(), "log.level");
    expect_invalid(|c| c.storage.backend = StorageBackend::Scylla, "storage.scylla.nodes");
    expect_invalid(|c| c.storage.scylla.nodes = vec!["10.0.0.1".into()], "storage.scylla.nodes");
    expect_invalid(|c| c.storage.scylla.keyspace = "rookery-prod".into(), "storage.scylla.keyspace");
    expect_invalid(|c| c.storage.scylla.keyspace = String::new(), "storage.scylla.keyspace");
    expect_invalid(|c| c.storage.scylla.keyspace = "9lives".into(), "storage.scylla.keyspace");
    expect_invalid(|c| c.storage.scylla.replication_factor = 0, "storage.scylla.replication_factor");
    expect_invalid(|c| c.storage.scylla.local_dc = Some("dc 1".into()), "storage.scylla.local_dc");
    expect_invalid(|c| c.storage.scylla.username = Some("u".into()), "storage.scylla.password");
    expect_invalid(|c| c.storage.scylla.password = Some("p".into()), "storage.scylla.username");
    expect_invalid(|c| c.storage.scylla.request_timeout_ms = 0, "storage.scylla.request_timeout_ms");
    expect_invalid(|c| c.storage.scylla.offline_ttl_days = 24_856, "storage.scylla.offline_ttl_days");
}

#[test]
fn scylla_contact_points() {
    for ok in ["10.0.0.1:9042", "scylla-0.scylla.rookery.svc:9042", "localhost:1", "[::1]:9042", "[fd00::1]:65535"] {
        assert_eq!(validate::host_port_error(ok), None, "{ok}");
    }
    for bad in ["10.0.0.1", "10.0.0.1:", ":9042", "host:0", "host:65536", "host:port", "::1:9042", "[::1]", "[x]:9042"]
    {
        assert!(validate::host_port_error(bad).is_some(), "{bad}");
    }
    for bad in ["h st:9042", "host/x:9042"] {
        assert!(validate::host_port_error(bad).is_some(), "{bad}");
    }
    let mut c = Config::default();
    c.storage.backend = StorageBackend::Scylla;
    c.storage.scylla.nodes = vec!["10.0.0.1:9042".into(), "bad".into(), "[::1]:9042".into()];
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("\"bad\" is not a host:port contact point: the port is missing"), "{msg}");
    assert!(!msg.contains("10.0.0.1:9042\" is not"), "{msg}");
    c.storage.scylla.nodes.remove(1);
    c.validate().unwrap();
    let msg = {
        let mut c = Config::default();
        c.storage.backend = StorageBackend::Scylla;
        c.validate().unwrap_err().to_string()
    };
    assert!(msg.contains("storage.backend is \"scylla\" but no nodes are listed"), "{msg}");
    assert!(msg.contains("ROOKERY_SCYLLA_NODES"), "{msg}");
}

#[test]
fn scylla_section_keys_are_checked_with_their_full_path() {
    let e = Config::from_toml_str("[storage.scylla]\nnode = [\"a:1\"]\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("unknown key `storage.scylla.node`; did you mean `nodes`?"), "{msg}");
    assert!(msg.contains("valid keys in [storage.scylla]: nodes, keyspace,"), "{msg}");
    assert_eq!(e.keys(), vec!["storage.scylla.node"]);
    let msg = Config::from_toml_str("[storage]\nkeyspace = \"x\"\n").unwrap_err().to_string();
    assert!(msg.contains("did you mean `storage.scylla.keyspace`?"), "{msg}");
    let msg = Config::from_toml_str("[storage.scylla.extra]\nx = 1\n").unwrap_err().to_string();
    assert!(msg.contains("unknown key `storage.scylla.extra`"), "{msg}");
    // Inline and dotted forms are the same table.
    let c = Config::from_toml_str("[storage]\nbackend = \"scylla\"\nscylla = { nodes = [\"n:9042\"] }\n").unwrap();
    assert_eq!(c.storage.scylla.nodes, ["n:9042"]);
    c.validate().unwrap();
    let c = Config::from_toml_str("storage.scylla.local_dc = \"\"\n").unwrap();
    assert_eq!(c.storage.scylla.local_dc, None, "an empty optional string is unset");
}

#[test]
fn sqlite_backend_and_its_path() {
    let c = Config::from_toml_str("[storage]\nbackend = \"sqlite\"\n").unwrap();
    c.validate().unwrap();
    assert_eq!(c.storage.backend, StorageBackend::Sqlite);
    assert_eq!(c.sqlite_path(), Path::new("./rookery-data/rookery.sqlite3"), "default: a file under data_dir");
    let c = Config::from_toml_str("data_dir = \"/d\"\nstorage.sqlite.path = \"\"\n").unwrap();
    assert_eq!(c.storage.sqlite.path, None, "an empty path is unset");
    assert_eq!(c.sqlite_path(), Path::new("/d/rookery.sqlite3"), "the default follows data_dir");

    let text = "[storage]\nbackend = \"sqlite\"\n[storage.sqlite]\npath = \"/srv/shared/rookery.sqlite3\"\n";
    let c = Config::from_toml_str(text).unwrap();
    assert_eq!(c.sqlite_path(), Path::new("/srv/shared/rookery.sqlite3"));
    let printed = c.to_toml_string();
    assert!(printed.contains("[storage.sqlite]") && printed.contains("backend = \"sqlite\""), "{printed}");
    assert_eq!(Config::from_toml_str(&printed).unwrap(), c);

    let mut c = with_env(&[("ROOKERY_STORAGE_BACKEND", "sqlite"), ("ROOKERY_SQLITE_PATH", "/e.db")]).unwrap();
    assert_eq!((c.storage.backend, c.sqlite_path()), (StorageBackend::Sqlite, PathBuf::from("/e.db")));
    c.apply_env(env(&[("ROOKERY_SQLITE_PATH", "")])).unwrap();
    assert_eq!(c.storage.sqlite.path, None, "an empty variable unsets the path");

    bad_value("[storage.sqlite]\npath = 5\n", "storage.sqlite.path", "path string");
    bad_value("[storage]\nsqlite = \"/x.db\"\n", "storage.sqlite", "a table (a `[storage.sqlite]` section)");
    let msg = Config::from_toml_str("[storage.sqlite]\nfile = \"x\"\n").unwrap_err().to_string();
    assert!(
        msg.contains("unknown key `storage.sqlite.file`") && msg.contains("valid keys in [storage.sqlite]: path"),
        "{msg}"
    );
}

#[test]
fn scylla_password_is_never_printed() {
    let mut c = Config::default();
    c.storage.scylla.username = Some("rookery".into());
    c.storage.scylla.password = Some("hunter2".into());
    c.validate().unwrap();
    let printed = c.to_toml_string();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("[storage.scylla]") && printed.contains("username = \"rookery\""), "{printed}");
    assert!(!format!("{c:?}").contains("hunter2"));
    let back = Config::from_toml_str(&printed).unwrap();
    assert_eq!(back.storage.scylla.password, None, "the printed form leaves the password out");
    let c = Config::from_toml_str("[storage.scylla]\nusername = \"u\"\npassword = \"p w\"\n").unwrap();
    assert_eq!(c.storage.scylla.password.as_deref(), Some("p w"), "the file may still set it");
}

#[test]
fn validation_boundaries_accepted() {
    let mut c = Config {
        domains: vec!["localhost".into(), "a.b-c.example".into(), "xn--bcher-kva.example".into(), "host1".into()],
        ..Config::default()
    };
    c.limits.max_stanza_bytes = 10_000;
    c.limits.max_depth = 8;
    c.limits.negotiation_timeout_secs = 600;
    c.limits.outbound_queue = 16;
    c.limits.idle_timeout_secs = 0;
    c.validate().unwrap();
    c.limits.max_stanza_bytes = 16 * 1024 * 1024;
    c.limits.max_depth = 256;
    c.limits.negotiation_timeout_secs = 1;
    c.validate().unwrap();
}

#[test]
fn listeners_on_port_zero_or_disabled_do_not_collide() {
    let mut c = Config::default();
    c.listen.c2s = addr("127.0.0.1:0");
    c.listen.c2s_tls = addr("127.0.0.1:0");
    c.listen.http = addr("127.0.0.1:0");
    c.validate().unwrap();
    c.listen.c2s = None;
    c.listen.c2s_tls = None;
    c.validate().unwrap();
    // Same port on two distinct specific addresses is fine.
    c.listen.c2s = addr("10.0.0.1:5222");
    c.listen.c2s_tls = addr("10.0.0.2:5222");
    c.validate().unwrap();
}

#[test]
fn validation_reports_all_problems_at_once() {
    let mut c = Config::default();
    c.domains.clear();
    c.limits.max_depth = 1;
    c.limits.outbound_queue = 1;
    let keys = invalid_keys(&c);
    assert_eq!(keys, vec!["domains", "limits.max_depth", "limits.outbound_queue"]);
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.starts_with("invalid configuration (3 problems):"), "{msg}");
}

// ---- load ---------------------------------------------------------------------------------

#[test]
fn load_missing_file_names_the_path() {
    let path = Path::new("/nonexistent/rookery-config-test/rookery.toml");
    let e = Config::load(Some(path)).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/rookery-config-test/rookery.toml"));
}

#[test]
fn load_reports_file_and_key() {
    let path = std::env::temp_dir().join(format!("rookery-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, "[limits]\nmax_depht = 3\n").unwrap();
    let e = Config::load(Some(&path)).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let msg = e.to_string();
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(msg.contains("did you mean `max_depth`?"), "{msg}");
    assert_eq!(e.keys(), vec!["limits.max_depht"]);
}

#[test]
fn docs_example_parses_and_matches_shipped_example() {
    let start = DOCS.find("```toml\n").unwrap() + "```toml\n".len();
    let len = DOCS[start..].find("```").unwrap();
    let from_docs = Config::from_toml_str(&DOCS[start..start + len]).unwrap();
    from_docs.validate().unwrap();
    assert_eq!(from_docs, Config::from_toml_str(EXAMPLE).unwrap());
}

#[test]
fn contact_section_parses_and_validates() {
    let cfg = Config::from_toml_str(
        "domains = [\"example.org\", \"students.example.org\"]\n[contact]\nabuse = [\"mailto:abuse@example.org\"]\n\
         [contact.domains.\"students.example.org\"]\nsupport = [\"https://help.example.org\"]\n",
    )
    .unwrap();
    assert!(cfg.validate().is_ok());
    assert_eq!(cfg.contact.for_domain("example.org").abuse, ["mailto:abuse@example.org"]);
    let students = cfg.contact.for_domain("students.example.org");
    assert_eq!(students.support, ["https://help.example.org"]);
    assert!(students.abuse.is_empty(), "a domain's own set replaces the default one");

    let bad =
        Config::from_toml_str("[contact.domains.\"elsewhere.org\"]\nadmin = [\"xmpp:a@elsewhere.org\"]\n").unwrap();
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("contact.domains") && err.contains("elsewhere.org"), "{err}");
    let bad = Config::from_toml_str("[contact]\nstatus = [\"status page\"]\n").unwrap();
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("not a URI") && err.contains("status"), "{err}");
    let err =
        Config::from_toml_str("[contact.domains.\"localhost\"]\npress = [\"mailto:p@x\"]\n").unwrap_err().to_string();
    assert!(err.contains("contact.domains") && err.contains("abuse, admin"), "{err}");
}

#[test]
fn mam_section_parses_and_validates() {
    let cfg = Config::from_toml_str(
        "domains = [\"example.org\", \"students.example.org\"]\n[mam]\nretention_days = 365\n\
         [mam.retention_days_by_domain]\n\"students.example.org\" = 180\n",
    )
    .unwrap();
    assert_eq!(cfg.mam.retention_for("students.example.org"), 180);
    assert_eq!(cfg.mam.retention_for("example.org"), 365);
    assert!(cfg.validate().is_ok());

    let bad = Config::from_toml_str("[mam.retention_days_by_domain]\n\"elsewhere.org\" = 1\n").unwrap();
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("mam.retention_days_by_domain") && err.contains("elsewhere.org"), "{err}");

    let err =
        Config::from_toml_str("[mam.retention_days_by_domain]\n\"example.org\" = \"long\"\n").unwrap_err().to_string();
    assert!(err.contains("mam.retention_days_by_domain"), "{err}");

    let bad = Config::from_toml_str("[mam]\nmax_page = 10\ndefault_page = 50\n").unwrap();
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("mam.default_page"), "{err}");

    assert!(ENV_KEYS.iter().any(|(v, _)| *v == "ROOKERY_MAM_RETENTION_DAYS_BY_DOMAIN"));
}

#[test]
fn cluster_section_validates_addresses_and_timing() {
    let cfg = Config::from_toml_str(
        "[cluster]\nnode_id = 3\nrouters = [\"10.0.0.5:7000\"]\nredis = [\"redis://10.0.0.7:6379\"]\n",
    )
    .unwrap();
    assert_eq!(cfg.cluster.node_id, 3);
    assert!(cfg.validate().is_ok());
    let err = Config::from_toml_str("[cluster]\nnode_id = 5000\n").unwrap_err().to_string();
    assert!(err.contains("cluster.node_id"), "{err}");
    let bad = Config::from_toml_str("[cluster]\nrouters = [\"nohost\"]\nredis = [\"10.0.0.7:6379\"]\n").unwrap();
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("cluster.routers") && err.contains("cluster.redis"), "{err}");
    let bad = Config::from_toml_str("[cluster]\nheartbeat_ms = 1000\ndead_after_ms = 1500\n").unwrap();
    assert!(bad.validate().unwrap_err().to_string().contains("cluster.dead_after_ms"));
}
