//! Schema migrations: the numbered CQL files compiled into the binary, how they are split
//! into statements, keyspace creation, and the rules that decide whether a keyspace's
//! schema is usable by this binary.
//!
//! Owns: the `schema_version` bookkeeping table and the mapping from applied versions to
//! "current / run `rookery migrate` / upgrade the binary".
//! Must not touch: the data tables' rows (migrations only create or alter tables).
//!
//! Every migration statement is idempotent (`CREATE ... IF NOT EXISTS`, unit-tested below),
//! and a version is recorded in `schema_version` only after all its statements succeeded,
//! so an interrupted `rookery migrate` is fixed by running it again.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One numbered migration file from `src/migrations/`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    /// File stem, e.g. `0001_initial`.
    pub name: &'static str,
    pub cql: &'static str,
}

macro_rules! migration {
    ($version:expr, $name:literal) => {
        Migration { version: $version, name: $name, cql: include_str!(concat!("migrations/", $name, ".cql")) }
    };
}

/// Every migration, in order. Add new files at the end; never edit an applied one.
pub const MIGRATIONS: &[Migration] = &[migration!(1, "0001_initial")];

/// The schema version this binary needs: the last migration's.
pub const SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Partition key of the one `schema_version` partition.
pub const SCHEMA_COMPONENT: &str = "rookery";

/// The bookkeeping table, created by `migrate` before any migration runs.
pub fn schema_version_table(keyspace: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.schema_version (\
         component text, version int, name text, applied_at timestamp, \
         PRIMARY KEY (component, version))"
    )
}

/// Why a keyspace name or data-center name is refused before it goes into CQL text.
pub fn identifier_error(name: &str) -> Option<&'static str> {
    // CQL unquoted identifiers; Scylla and Cassandra cap keyspace names at 48 characters.
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > 48 {
        return Some("it is longer than 48 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Some("it must start with a letter");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Some("only letters, digits and '_' are allowed");
    }
    None
}

/// Why a data-center name is refused (it is written into the replication map literal).
pub fn datacenter_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        return Some("only letters, digits, '_', '-' and '.' are allowed");
    }
    None
}

/// Keyspace replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// One data center (or a test node): `SimpleStrategy` with this replication factor.
    Simple(u32),
    /// `NetworkTopologyStrategy`: replication factor per data center.
    Network(BTreeMap<String, u32>),
}

impl Replication {
    /// The CQL map literal for `WITH replication = ...`.
    pub fn cql(&self) -> String {
        match self {
            Replication::Simple(rf) => format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"),
            Replication::Network(dcs) => {
                let mut s = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, rf) in dcs {
                    // Names are checked by `datacenter_error`; doubling quotes keeps the
                    // literal well-formed even if that check is ever bypassed.
                    let _ = write!(s, ", '{}': {rf}", dc.replace('\'', "''"));
                }
                s.push('}');
                s
            }
        }
    }
}

/// `CREATE KEYSPACE IF NOT EXISTS`. `disable_tablets` adds ScyllaDB's
/// `tablets = {'enabled': false}`: lightweight transactions (which accounts and rosters
/// need) are not available on tablet keyspaces in the ScyllaDB releases that enable
/// tablets by default. Cassandra does not know the option, so it is only added when the
/// cluster is known to be ScyllaDB with tablets.
pub fn create_keyspace(keyspace: &str, replication: &Replication, disable_tablets: bool) -> String {
    let mut s = format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}", replication.cql());
    s.push_str(" AND durable_writes = true");
    if disable_tablets {
        s.push_str(" AND tablets = {'enabled': false}");
    }
    s
}

/// Splits a migration file into statements: `--` comments removed, split on `;` outside
/// string literals, `{keyspace}` replaced, blank statements dropped.
pub fn statements(cql: &str, keyspace: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in cql.lines() {
        let mut in_string = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    in_string = !in_string;
                    current.push(c);
                }
                '-' if !in_string && chars.peek() == Some(&'-') => break,
                ';' if !in_string => {
                    push_statement(&mut out, &current, keyspace);
                    current.clear();
                }
                _ => current.push(c),
            }
        }
        current.push('\n');
    }
    push_statement(&mut out, &current, keyspace);
    out
}

fn push_statement(out: &mut Vec<String>, text: &str, keyspace: &str) {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if !collapsed.is_empty() {
        out.push(collapsed.replace("{keyspace}", keyspace));
    }
}

/// What the cluster holds, as far as this binary is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// The keyspace does not exist.
    NoKeyspace,
    /// The keyspace exists but `schema_version` does not (never migrated).
    NoVersionTable,
    /// These versions are recorded as applied.
    Applied(Vec<u32>),
}

/// Why the schema is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaProblem {
    #[error("keyspace {0} does not exist: run `rookery migrate`")]
    NoKeyspace(String),
    #[error("keyspace {0} has no schema_version table: run `rookery migrate`")]
    NoVersionTable(String),
    #[error("schema version {found} is older than {expected}: run `rookery migrate`")]
    Older { found: u32, expected: u32 },
    #[error(
        "schema version {found} is newer than {expected}, the newest this binary knows: \
         upgrade rookery (or point it at another keyspace)"
    )]
    Newer { found: u32, expected: u32 },
    #[error("schema versions {missing:?} were never applied although {found} was: run `rookery migrate`")]
    Gap { found: u32, missing: Vec<u32> },
}

/// Decides whether the schema in `state` is the one this binary expects.
pub fn check(keyspace: &str, state: &SchemaState) -> Result<(), SchemaProblem> {
    let applied = match state {
        SchemaState::NoKeyspace => return Err(SchemaProblem::NoKeyspace(keyspace.to_owned())),
        SchemaState::NoVersionTable => return Err(SchemaProblem::NoVersionTable(keyspace.to_owned())),
        SchemaState::Applied(v) => v,
    };
    let found = applied.iter().copied().max().unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(SchemaProblem::Newer { found, expected: SCHEMA_VERSION });
    }
    let missing: Vec<u32> =
        MIGRATIONS.iter().map(|m| m.version).filter(|v| *v < found && !applied.contains(v)).collect();
    if !missing.is_empty() {
        return Err(SchemaProblem::Gap { found, missing });
    }
    if found < SCHEMA_VERSION {
        return Err(SchemaProblem::Older { found, expected: SCHEMA_VERSION });
    }
    Ok(())
}

/// Migrations not yet applied, in order. Refuses a keyspace migrated by a newer binary.
pub fn pending(applied: &[u32]) -> Result<Vec<&'static Migration>, SchemaProblem> {
    let found = applied.iter().copied().max().unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(SchemaProblem::Newer { found, expected: SCHEMA_VERSION });
    }
    Ok(MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps_and_match_their_file_names() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
            let (num, rest) = m.name.split_once('_').unwrap();
            assert_eq!(num.len(), 4, "{}: four-digit prefix", m.name);
            assert_eq!(num.parse::<u32>().unwrap(), m.version, "{}: prefix is the version", m.name);
            assert!(!rest.is_empty());
        }
        assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as u32);
    }

    #[test]
    fn every_migration_statement_is_idempotent_and_keyspace_qualified() {
        for m in MIGRATIONS {
            let stmts = statements(m.cql, "ks_x");
            assert!(!stmts.is_empty(), "{}", m.name);
            for s in &stmts {
                assert!(
                    s.starts_with("CREATE TABLE IF NOT EXISTS ks_x.")
                        || s.starts_with("CREATE TYPE IF NOT EXISTS ks_x."),
                    "{}: not an idempotent, qualified CREATE: {s}",
                    m.name
                );
                assert!(!s.contains("{keyspace}"), "{s}");
                assert!(!s.contains("--"), "comment left in {s}");
                assert!(!s.to_ascii_uppercase().contains("ALLOW FILTERING"), "{s}");
            }
        }
    }

    #[test]
    fn initial_migration_creates_every_table_the_store_uses() {
        let stmts = statements(MIGRATIONS[0].cql, "k");
        let tables: Vec<&str> = stmts
            .iter()
            .map(|s| s.trim_start_matches("CREATE TABLE IF NOT EXISTS k.").split([' ', '(']).next().unwrap())
            .collect();
        assert_eq!(
            tables,
            [
                "accounts",
                "roster",
                "offline",
                "vcard",
                "blocklist",
                "last_activity",
                "archive",
                "archive_with",
                "archive_buckets",
                "archive_prefs"
            ]
        );
        let archive = stmts.iter().find(|s| s.starts_with("CREATE TABLE IF NOT EXISTS k.archive ")).unwrap();
        assert!(archive.contains("PRIMARY KEY ((owner, bucket), id)"), "{archive}");
        assert!(archive.ends_with("WITH CLUSTERING ORDER BY (id DESC)"), "{archive}");
    }

    #[test]
    fn splitting_handles_comments_strings_and_missing_final_semicolon() {
        let cql = "-- heading; with a semicolon\nCREATE TABLE IF NOT EXISTS {keyspace}.a (x text); -- trailing\n\
                   INSERT INTO {keyspace}.b (s) VALUES ('semi;colon -- not a comment')\n;\n\n  \
                   CREATE TABLE IF NOT EXISTS {keyspace}.c (y int)";
        assert_eq!(
            statements(cql, "ks"),
            [
                "CREATE TABLE IF NOT EXISTS ks.a (x text)",
                "INSERT INTO ks.b (s) VALUES ('semi;colon -- not a comment')",
                "CREATE TABLE IF NOT EXISTS ks.c (y int)",
            ]
        );
        assert!(statements("-- only a comment\n\n;;\n", "ks").is_empty());
    }

    #[test]
    fn schema_check_names_the_fix() {
        let ks = "rookery";
        let e = check(ks, &SchemaState::NoKeyspace).unwrap_err().to_string();
        assert_eq!(e, "keyspace rookery does not exist: run `rookery migrate`");
        let e = check(ks, &SchemaState::NoVersionTable).unwrap_err().to_string();
        assert!(e.contains("run `rookery migrate`"), "{e}");
        let e = check(ks, &SchemaState::Applied(vec![])).unwrap_err();
        assert_eq!(e, SchemaProblem::Older { found: 0, expected: SCHEMA_VERSION });
        assert_eq!(
            SchemaProblem::Older { found: 1, expected: 2 }.to_string(),
            "schema version 1 is older than 2: run `rookery migrate`"
        );
        let all: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        check(ks, &SchemaState::Applied(all.clone())).unwrap();
        let mut newer = all.clone();
        newer.push(SCHEMA_VERSION + 1);
        let e = check(ks, &SchemaState::Applied(newer.clone())).unwrap_err();
        assert!(matches!(e, SchemaProblem::Newer { .. }), "{e}");
        assert!(e.to_string().contains("upgrade rookery"), "{e}");
        assert!(pending(&newer).is_err(), "a newer schema is never migrated down");
    }

    #[test]
    fn pending_lists_unapplied_migrations_in_order() {
        let p: Vec<u32> = pending(&[]).unwrap().iter().map(|m| m.version).collect();
        assert_eq!(p, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        let all: Vec<u32> = (1..=SCHEMA_VERSION).collect();
        assert!(pending(&all).unwrap().is_empty());
    }

    #[test]
    fn keyspace_ddl_for_both_strategies() {
        assert_eq!(
            create_keyspace("rookery", &Replication::Simple(3), false),
            "CREATE KEYSPACE IF NOT EXISTS rookery WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 3} AND durable_writes = true"
        );
        let dcs = BTreeMap::from([("eu-west".to_owned(), 3), ("us_east".to_owned(), 2)]);
        assert_eq!(
            create_keyspace("r", &Replication::Network(dcs), true),
            "CREATE KEYSPACE IF NOT EXISTS r WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'eu-west': 3, 'us_east': 2} AND durable_writes = true \
             AND tablets = {'enabled': false}"
        );
        let odd = BTreeMap::from([("x'y".to_owned(), 1)]);
        assert!(Replication::Network(odd).cql().contains("'x''y': 1"));
    }

    #[test]
    fn identifiers_are_checked_before_they_reach_cql() {
        for ok in ["rookery", "rookery_test_0a1b", "R2"] {
            assert_eq!(identifier_error(ok), None, "{ok}");
        }
        for bad in ["", "1abc", "_x", "a-b", "a.b", "ks; DROP KEYSPACE x", "a b", &"k".repeat(49)] {
            assert!(identifier_error(bad).is_some(), "{bad:?}");
        }
        assert_eq!(datacenter_error("eu-west-1.a_b"), None);
        assert!(datacenter_error("dc'1").is_some());
        assert!(datacenter_error("").is_some());
    }
}
