//! Cross-field rules and ranges. All problems are collected so an operator fixes them in one
//! round instead of one restart per mistake.

use std::net::SocketAddr;

use crate::error::Problem;
use crate::{Config, StorageBackend};

/// RFC 6120 §13.12: a server must accept stanzas of at least 10000 bytes.
pub(crate) const MIN_STANZA_BYTES: usize = 10_000;
pub(crate) const MAX_STANZA_BYTES: usize = 16 * 1024 * 1024;
pub(crate) const DEPTH_RANGE: std::ops::RangeInclusive<usize> = 8..=256;
pub(crate) const NEGOTIATION_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=600;
pub(crate) const MIN_OUTBOUND_QUEUE: usize = 16;
pub(crate) const PASSWORD_LEN_RANGE: std::ops::RangeInclusive<usize> = 1..=1024;
pub(crate) const SCYLLA_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=600_000;
/// CQL `USING TTL` takes an i32 of seconds.
pub(crate) const SCYLLA_MAX_TTL_DAYS: u32 = (i32::MAX / 86_400) as u32;

fn problem(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem { key: key.into(), problem: problem.into(), fix: fix.into() }
}

/// Why `name` is not an acceptable domain, if it is not.
pub(crate) fn domain_error(name: &str) -> Option<&'static str> {
    if name == "localhost" {
        return None;
    }
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > 253 {
        return Some("it is longer than 253 characters");
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("it contains uppercase letters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
        return Some("it contains characters other than a-z, 0-9, '-' and '.'");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("it has an empty label (leading, trailing or doubled '.')");
        }
        if label.len() > 63 {
            return Some("a label is longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label starts or ends with '-'");
        }
    }
    None
}

/// Why `s` is not a `host:port` contact point, if it is not. Hosts are names, IPv4
/// addresses, or IPv6 addresses in brackets (`[::1]:9042`).
pub(crate) fn host_port_error(s: &str) -> Option<&'static str> {
    let port = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, port)) = rest.split_once("]:") else {
            return Some("an IPv6 address needs the form [address]:port");
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Some("the address in brackets is not an IPv6 address");
        }
        port
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Some("the port is missing (write host:port, e.g. 10.0.0.1:9042)");
        };
        if host.contains(':') {
            return Some("write IPv6 addresses in brackets, e.g. [::1]:9042");
        }
        if host.is_empty() {
            return Some("the host is empty");
        }
        if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
            return Some("the host contains characters other than letters, digits, '-', '_' and '.'");
        }
        port
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Some("the port is not a number from 1 to 65535"),
        Ok(_) => None,
    }
}

/// Why a keyspace name is refused: it must be a plain CQL identifier.
fn keyspace_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 48 {
        Some("it is longer than 48 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("it does not start with a letter")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Some("it contains characters other than letters, digits and '_'")
    } else {
        None
    }
}

fn cluster_problems(cfg: &Config, out: &mut Vec<Problem>) {
    let c = &cfg.cluster;
    for r in &c.routers {
        if let Some(why) = host_port_error(r) {
            out.push(problem(
                "cluster.routers",
                format!("{r:?} is not a router address: {why}"),
                "list routers as \"host:port\", e.g. \"10.0.0.5:7000\" or \"router-0.router:7000\"",
            ));
        }
    }
    for url in &c.redis {
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://")) {
            out.push(problem(
                "cluster.redis",
                format!("{url:?} is not a Redis URL"),
                "write redis://HOST:PORT (or rediss:// for TLS), e.g. \"redis://10.0.0.7:6379\"",
            ));
        }
    }
    if c.heartbeat_ms == 0 || c.dead_after_ms < c.heartbeat_ms.saturating_mul(2) {
        out.push(problem(
            "cluster.dead_after_ms",
            format!(
                "an edge is declared dead after {} ms but reports every {} ms",
                c.dead_after_ms, c.heartbeat_ms
            ),
            "use a heartbeat of at least 1 ms and dead_after_ms of at least twice the heartbeat (defaults 1000 and 5000)",
        ));
    }
}

fn stream_management_problems(cfg: &Config, out: &mut Vec<Problem>) {
    let sm = &cfg.stream_management;
    if sm.max_resume_timeout_secs > 72 * 3600 {
        out.push(problem(
            "stream_management.max_resume_timeout_secs",
            format!("{} is more than 72 hours", sm.max_resume_timeout_secs),
            "use at most 259200 (default 3600)",
        ));
    }
    if sm.resume_timeout_secs > sm.max_resume_timeout_secs {
        out.push(problem(
            "stream_management.resume_timeout_secs",
            format!(
                "{} is more than stream_management.max_resume_timeout_secs ({})",
                sm.resume_timeout_secs, sm.max_resume_timeout_secs
            ),
            "use at most stream_management.max_resume_timeout_secs (default 300)",
        ));
    }
}

fn csi_problems(cfg: &Config, out: &mut Vec<Problem>) {
    if cfg.csi.enabled && cfg.csi.max_held == 0 {
        out.push(problem(
            "csi.max_held",
            "0 would hold nothing back",
            "use at least 1 (default 100), or csi.enabled = false",
        ));
    }
}

fn mam_problems(cfg: &Config, out: &mut Vec<Problem>) {
    let m = &cfg.mam;
    if m.max_page == 0 {
        out.push(problem("mam.max_page", "0 would make every archive page empty", "use at least 1 (default 250)"));
    }
    if m.default_page == 0 || m.default_page > m.max_page.max(1) {
        out.push(problem(
            "mam.default_page",
            format!("{} is not between 1 and mam.max_page ({})", m.default_page, m.max_page),
            "use a page size from 1 to mam.max_page (default 50)",
        ));
    }
    if m.retention_interval_secs == 0 {
        out.push(problem(
            "mam.retention_interval_secs",
            "0 would sweep the archive without pause",
            "use a number of seconds such as 3600 (the sweep only matters when a retention is set)",
        ));
    }
    for domain in m.retention_days_by_domain.keys() {
        if !cfg.domains.iter().any(|d| d == domain) {
            out.push(problem(
                "mam.retention_days_by_domain",
                format!("{domain:?} is not one of the served domains ({})", cfg.domains.join(", ")),
                "list only domains from `domains`, or add the domain there",
            ));
        }
    }
}

fn contact_problems(cfg: &Config, out: &mut Vec<Problem>) {
    for domain in cfg.contact.domains.keys() {
        if !cfg.domains.iter().any(|d| d == domain) {
            out.push(problem(
                "contact.domains",
                format!("{domain:?} is not one of the served domains ({})", cfg.domains.join(", ")),
                "list only domains from `domains`, or add the domain there",
            ));
        }
    }
    // XEP-0157 §3: status addresses MUST be URIs, the others SHOULD be.
    let sets = std::iter::once(("contact".to_owned(), cfg.contact.default_set()))
        .chain(cfg.contact.domains.iter().map(|(d, s)| (format!("contact.domains.{d:?}"), s.clone())));
    for (at, set) in sets {
        for (role, list) in set.roles() {
            for uri in list.iter().filter(|u| !looks_like_uri(u)) {
                out.push(problem(
                    "contact",
                    format!("{at}.{role}: {uri:?} is not a URI"),
                    "write a URI with its scheme, e.g. \"mailto:abuse@example.org\" or \"xmpp:admin@example.org\"",
                ));
            }
        }
    }
}

/// `scheme:rest` with an RFC 3986 scheme.
fn looks_like_uri(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, rest)) => {
            !rest.is_empty()
                && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

fn scylla_problems(cfg: &Config, out: &mut Vec<Problem>) {
    let s = &cfg.storage.scylla;
    if cfg.storage.backend == StorageBackend::Scylla && s.nodes.is_empty() {
        out.push(problem(
            "storage.scylla.nodes",
            "storage.backend is \"scylla\" but no nodes are listed",
            "set `storage.scylla.nodes = [\"10.0.0.1:9042\"]` (or ROOKERY_SCYLLA_NODES=10.0.0.1:9042,10.0.0.2:9042) \
             to one or more nodes of the cluster",
        ));
    }
    for node in &s.nodes {
        if let Some(why) = host_port_error(node) {
            out.push(problem(
                "storage.scylla.nodes",
                format!("{node:?} is not a host:port contact point: {why}"),
                "list nodes as \"host:port\", e.g. \"10.0.0.1:9042\", \"scylla-0.scylla:9042\" or \"[fd00::1]:9042\"",
            ));
        }
    }
    if let Some(why) = keyspace_error(&s.keyspace) {
        out.push(problem(
            "storage.scylla.keyspace",
            format!("{:?} is not a valid keyspace name: {why}", s.keyspace),
            "use letters, digits and '_' starting with a letter, at most 48 characters (default \"rookery\")",
        ));
    }
    if s.replication_factor == 0 {
        out.push(problem(
            "storage.scylla.replication_factor",
            "0 would store no copy of anything",
            "use at least 1 (default 3; 1 only for a single test node)",
        ));
    }
    if let Some(dc) = &s.local_dc
        && !dc.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        out.push(problem(
            "storage.scylla.local_dc",
            format!("{dc:?} is not a data center name"),
            "write the data center name as `nodetool status` shows it (letters, digits, '-', '_', '.')",
        ));
    }
    match (&s.username, &s.password) {
        (Some(_), None) => out.push(problem(
            "storage.scylla.password",
            "storage.scylla.username is set but no password",
            "set ROOKERY_SCYLLA_PASSWORD (or `storage.scylla.password`), or remove the username",
        )),
        (None, Some(_)) => out.push(problem(
            "storage.scylla.username",
            "storage.scylla.password is set but no username",
            "set `storage.scylla.username` (ROOKERY_SCYLLA_USERNAME), or remove the password",
        )),
        _ => {}
    }
    if !SCYLLA_TIMEOUT_MS_RANGE.contains(&s.request_timeout_ms) {
        out.push(problem(
            "storage.scylla.request_timeout_ms",
            format!("{} is out of range", s.request_timeout_ms),
            format!(
                "use a value from {} to {} milliseconds (default 5000)",
                SCYLLA_TIMEOUT_MS_RANGE.start(),
                SCYLLA_TIMEOUT_MS_RANGE.end()
            ),
        ));
    }
    if s.offline_ttl_days > SCYLLA_MAX_TTL_DAYS {
        out.push(problem(
            "storage.scylla.offline_ttl_days",
            format!("{} days is longer than a CQL TTL can be", s.offline_ttl_days),
            format!("use at most {SCYLLA_MAX_TTL_DAYS} days, or 0 to keep offline messages until delivered"),
        ));
    }
}

/// Whether two listeners cannot both bind: same non-zero port and the same address, or a
/// wildcard address on either side (0.0.0.0 and [::] cover every address).
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    // Port 0 asks the OS for a free port, so such listeners never collide.
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

pub(crate) fn problems(cfg: &Config) -> Vec<Problem> {
    let mut out = Vec::new();

    if cfg.domains.is_empty() {
        out.push(problem(
            "domains",
            "no domain is configured",
            "set `domains = [\"example.org\"]` or ROOKERY_DOMAINS=example.org",
        ));
    }
    for (i, d) in cfg.domains.iter().enumerate() {
        if let Some(why) = domain_error(d) {
            out.push(problem(
                "domains",
                format!("{d:?} is not a valid domain: {why}"),
                "write the domain in lowercase ASCII such as \"example.org\" \
                 (internationalized names in their xn-- form), or \"localhost\"",
            ));
        } else if cfg.domains[..i].contains(d) {
            out.push(problem("domains", format!("{d:?} is listed twice"), "remove the duplicate entry"));
        }
    }

    if cfg.data_dir.as_os_str().is_empty() {
        out.push(problem(
            "data_dir",
            "the data directory is empty",
            "set `data_dir` to a writable directory such as \"/var/lib/rookery\"",
        ));
    }

    match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(_), None) => out.push(problem(
            "tls.key",
            "tls.cert is set but tls.key is not",
            "set `tls.key` (ROOKERY_TLS_KEY) to the PEM private key for the certificate, \
             or remove `tls.cert` to use a generated self-signed certificate",
        )),
        (None, Some(_)) => out.push(problem(
            "tls.cert",
            "tls.key is set but tls.cert is not",
            "set `tls.cert` (ROOKERY_TLS_CERT) to the PEM certificate chain for the key, \
             or remove `tls.key` to use a generated self-signed certificate",
        )),
        _ => {}
    }

    let pw = cfg.registration.min_password_len;
    if !PASSWORD_LEN_RANGE.contains(&pw) {
        out.push(problem(
            "registration.min_password_len",
            format!("{pw} is out of range"),
            format!("use a value from {} to {} (default 8)", PASSWORD_LEN_RANGE.start(), PASSWORD_LEN_RANGE.end()),
        ));
    }

    let l = &cfg.limits;
    if !(MIN_STANZA_BYTES..=MAX_STANZA_BYTES).contains(&l.max_stanza_bytes) {
        out.push(problem(
            "limits.max_stanza_bytes",
            format!("{} is out of range", l.max_stanza_bytes),
            format!(
                "use a value from {MIN_STANZA_BYTES} (the minimum RFC 6120 §13.12 requires) \
                 to {MAX_STANZA_BYTES} (16 MiB); the default is 262144"
            ),
        ));
    }
    if !DEPTH_RANGE.contains(&l.max_depth) {
        out.push(problem(
            "limits.max_depth",
            format!("{} is out of range", l.max_depth),
            format!("use a value from {} to {} (default 48)", DEPTH_RANGE.start(), DEPTH_RANGE.end()),
        ));
    }
    if !NEGOTIATION_TIMEOUT_RANGE.contains(&l.negotiation_timeout_secs) {
        out.push(problem(
            "limits.negotiation_timeout_secs",
            format!("{} is out of range", l.negotiation_timeout_secs),
            format!(
                "use a value from {} to {} seconds (default 30)",
                NEGOTIATION_TIMEOUT_RANGE.start(),
                NEGOTIATION_TIMEOUT_RANGE.end()
            ),
        ));
    }
    if l.max_connections_per_ip == 0 {
        out.push(problem(
            "limits.max_connections_per_ip",
            "0 would refuse every connection",
            "use a value of at least 1 (default 64); to stop client connections, \
             set `listen.c2s` and `listen.c2s_tls` to \"off\"",
        ));
    }
    if l.stanza_rate_per_sec == 0 {
        out.push(problem(
            "limits.stanza_rate_per_sec",
            "0 would stop every session from sending",
            "use a value greater than 0 (default 200)",
        ));
    }
    if l.outbound_queue < MIN_OUTBOUND_QUEUE {
        out.push(problem(
            "limits.outbound_queue",
            format!("{} is too small: a roster push or MUC join alone can queue more", l.outbound_queue),
            format!("use a value of at least {MIN_OUTBOUND_QUEUE} (default 4096)"),
        ));
    }

    let listeners: [(&str, Option<SocketAddr>); 3] =
        [("listen.c2s", cfg.listen.c2s), ("listen.c2s_tls", cfg.listen.c2s_tls), ("listen.http", cfg.listen.http)];
    for (i, (key_a, a)) in listeners.iter().enumerate() {
        for (key_b, b) in &listeners[i + 1..] {
            if let (Some(a), Some(b)) = (a, b)
                && overlaps(a, b)
            {
                out.push(problem(
                    *key_b,
                    format!("{b} collides with `{key_a}` = {a}"),
                    format!("give `{key_b}` a different port, or set one of them to \"off\""),
                ));
            }
        }
    }

    scylla_problems(cfg, &mut out);
    mam_problems(cfg, &mut out);
    stream_management_problems(cfg, &mut out);
    csi_problems(cfg, &mut out);
    contact_problems(cfg, &mut out);
    cluster_problems(cfg, &mut out);

    if cfg.log.level.trim().is_empty() {
        out.push(problem(
            "log.level",
            "the log filter is empty",
            "set `log.level` to a tracing filter such as \"info\" or \"info,rookery_edge=debug\"",
        ));
    }

    out
}
