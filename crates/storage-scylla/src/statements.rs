//! Every CQL statement the store runs, prepared once per session.
//!
//! Owns: the statement texts and their per-statement settings (idempotence, page size).
//! Must not touch: migrations (DDL lives in `migrations/`), row decoding.
//!
//! Rules kept here: no `ALLOW FILTERING`, every read names its partition key in full, and
//! every statement is qualified with the keyspace (validated as a plain identifier before
//! it is spliced in), so the session needs no `USE`.

use scylla::client::session::Session;
use scylla::errors::PrepareError;
use scylla::statement::prepared::PreparedStatement;

/// Rows per page for reads that may return many rows.
const PAGE_SIZE: i32 = 1000;

macro_rules! statements {
    ($( $(#[$doc:meta])* $name:ident: $idempotent:literal => $cql:literal ),* $(,)?) => {
        /// The prepared statements, one field per statement.
        pub struct Statements {
            $( $(#[$doc])* pub $name: PreparedStatement, )*
        }

        /// Statement texts for `keyspace`, by field name, for the unit tests.
        #[cfg(test)]
        pub fn texts(keyspace: &str) -> Vec<(&'static str, bool, String)> {
            vec![$( (stringify!($name), $idempotent, $cql.replace("{ks}", keyspace)) ),*]
        }

        impl Statements {
            /// Prepares every statement (the tables must exist).
            pub async fn prepare(session: &Session, keyspace: &str) -> Result<Statements, (String, PrepareError)> {
                Ok(Statements {
                    $( $name: prepare_one(session, $cql.replace("{ks}", keyspace), $idempotent).await?, )*
                })
            }
        }
    };
}

async fn prepare_one(
    session: &Session,
    cql: String,
    idempotent: bool,
) -> Result<PreparedStatement, (String, PrepareError)> {
    let mut p = session.prepare(cql.as_str()).await.map_err(|e| (cql, e))?;
    // Idempotent statements may be retried and speculatively executed by the driver;
    // conditional (LWT) statements and appends to counters never are.
    p.set_is_idempotent(idempotent);
    p.set_page_size(PAGE_SIZE);
    Ok(p)
}

statements! {
    // ---- accounts: every write is a lightweight transaction ----
    account_insert: false => "INSERT INTO {ks}.accounts (domain, bucket, localpart, credentials, created_at) \
        VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
    account_get: true => "SELECT credentials, created_at FROM {ks}.accounts \
        WHERE domain = ? AND bucket = ? AND localpart = ?",
    account_set_credentials: false => "UPDATE {ks}.accounts SET credentials = ? \
        WHERE domain = ? AND bucket = ? AND localpart = ? IF EXISTS",
    account_delete: false => "DELETE FROM {ks}.accounts WHERE domain = ? AND bucket = ? AND localpart = ? IF EXISTS",
    account_list: true => "SELECT localpart FROM {ks}.accounts WHERE domain = ? AND bucket = ?",

    // ---- rosters: the version cell is compare-and-set in a conditional batch ----
    roster_get: true => "SELECT contact, item, version FROM {ks}.roster WHERE owner = ?",
    roster_get_item: true => "SELECT item FROM {ks}.roster WHERE owner = ? AND contact = ?",
    roster_version: true => "SELECT version FROM {ks}.roster WHERE owner = ? LIMIT 1",
    /// Condition of every roster change; `IF version = null` matches a roster never written.
    roster_cas_version: false => "UPDATE {ks}.roster SET version = ? WHERE owner = ? IF version = ?",
    roster_put: true => "INSERT INTO {ks}.roster (owner, contact, item) VALUES (?, ?, ?)",
    roster_remove: true => "DELETE FROM {ks}.roster WHERE owner = ? AND contact = ?",
    roster_delete_all: true => "DELETE FROM {ks}.roster WHERE owner = ?",

    // ---- offline messages ----
    /// `USING TTL 0` means no expiry, so one statement serves both settings.
    offline_insert: true => "INSERT INTO {ks}.offline (owner, seq, stanza) VALUES (?, ?, ?) USING TTL ?",
    offline_list: true => "SELECT seq, stanza FROM {ks}.offline WHERE owner = ?",
    offline_count: true => "SELECT COUNT(*) FROM {ks}.offline WHERE owner = ?",
    offline_remove_up_to: true => "DELETE FROM {ks}.offline WHERE owner = ? AND seq <= ?",
    offline_delete_all: true => "DELETE FROM {ks}.offline WHERE owner = ?",

    // ---- vCards, block lists, last activity ----
    vcard_get: true => "SELECT vcard FROM {ks}.vcard WHERE owner = ?",
    vcard_set: true => "INSERT INTO {ks}.vcard (owner, vcard) VALUES (?, ?)",
    vcard_delete: true => "DELETE FROM {ks}.vcard WHERE owner = ?",
    block_list: true => "SELECT jid FROM {ks}.blocklist WHERE owner = ?",
    block_add: true => "INSERT INTO {ks}.blocklist (owner, jid) VALUES (?, ?)",
    block_remove: true => "DELETE FROM {ks}.blocklist WHERE owner = ? AND jid = ?",
    block_remove_all: true => "DELETE FROM {ks}.blocklist WHERE owner = ?",
    last_get: true => "SELECT at, status FROM {ks}.last_activity WHERE owner = ?",
    last_set: true => "INSERT INTO {ks}.last_activity (owner, at, status) VALUES (?, ?, ?)",
    last_delete: true => "DELETE FROM {ks}.last_activity WHERE owner = ?",

    // ---- archive ----
    archive_insert: true => "INSERT INTO {ks}.archive (owner, bucket, id, with_jid, with_resource, outgoing, stanza) \
        VALUES (?, ?, ?, ?, ?, ?, ?)",
    archive_with_insert: true => "INSERT INTO {ks}.archive_with (owner, with_jid, bucket, id, with_resource) \
        VALUES (?, ?, ?, ?, ?)",
    archive_bucket_insert: true => "INSERT INTO {ks}.archive_buckets (owner, with_jid, bucket) VALUES (?, ?, ?)",
    archive_buckets_range: true => "SELECT bucket FROM {ks}.archive_buckets \
        WHERE owner = ? AND with_jid = ? AND bucket >= ? AND bucket <= ?",
    archive_buckets_all: true => "SELECT with_jid, bucket FROM {ks}.archive_buckets WHERE owner = ?",
    archive_rows_asc: true => "SELECT id, with_jid, with_resource, outgoing, stanza FROM {ks}.archive \
        WHERE owner = ? AND bucket = ? AND id >= ? AND id <= ? ORDER BY id ASC LIMIT ?",
    archive_rows_desc: true => "SELECT id, with_jid, with_resource, outgoing, stanza FROM {ks}.archive \
        WHERE owner = ? AND bucket = ? AND id >= ? AND id <= ? ORDER BY id DESC LIMIT ?",
    archive_ids: true => "SELECT id FROM {ks}.archive WHERE owner = ? AND bucket = ? AND id >= ? AND id <= ? LIMIT ?",
    archive_get: true => "SELECT id, with_jid, with_resource, outgoing, stanza FROM {ks}.archive \
        WHERE owner = ? AND bucket = ? AND id = ?",
    archive_first_id: true => "SELECT id FROM {ks}.archive WHERE owner = ? AND bucket = ? ORDER BY id ASC LIMIT 1",
    archive_last_id: true => "SELECT id FROM {ks}.archive WHERE owner = ? AND bucket = ? ORDER BY id DESC LIMIT 1",
    archive_with_asc: true => "SELECT id, with_resource FROM {ks}.archive_with \
        WHERE owner = ? AND with_jid = ? AND bucket = ? AND id >= ? AND id <= ? ORDER BY id ASC LIMIT ?",
    archive_with_desc: true => "SELECT id, with_resource FROM {ks}.archive_with \
        WHERE owner = ? AND with_jid = ? AND bucket = ? AND id >= ? AND id <= ? ORDER BY id DESC LIMIT ?",
    archive_delete_bucket: true => "DELETE FROM {ks}.archive WHERE owner = ? AND bucket = ?",
    archive_delete_before: true => "DELETE FROM {ks}.archive WHERE owner = ? AND bucket = ? AND id < ?",
    archive_with_delete_bucket: true => "DELETE FROM {ks}.archive_with WHERE owner = ? AND with_jid = ? AND bucket = ?",
    archive_with_delete_before: true => "DELETE FROM {ks}.archive_with \
        WHERE owner = ? AND with_jid = ? AND bucket = ? AND id < ?",
    archive_with_delete_one: true => "DELETE FROM {ks}.archive_with \
        WHERE owner = ? AND with_jid = ? AND bucket = ? AND id = ?",
    archive_bucket_delete: true => "DELETE FROM {ks}.archive_buckets WHERE owner = ? AND with_jid = ? AND bucket = ?",
    archive_buckets_delete_all: true => "DELETE FROM {ks}.archive_buckets WHERE owner = ?",
    archive_prefs_get: true => "SELECT prefs FROM {ks}.archive_prefs WHERE owner = ?",
    archive_prefs_set: true => "INSERT INTO {ks}.archive_prefs (owner, prefs) VALUES (?, ?)",
    archive_prefs_delete: true => "DELETE FROM {ks}.archive_prefs WHERE owner = ?",
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn statements_are_qualified_unfiltered_and_lwt_ones_are_not_idempotent() {
        let all = texts("ks1");
        assert!(all.len() > 40);
        for (name, idempotent, cql) in &all {
            assert!(cql.contains(" ks1."), "{name}: unqualified table in {cql}");
            assert!(!cql.contains("{ks}"), "{name}");
            assert!(!cql.to_ascii_uppercase().contains("ALLOW FILTERING"), "{name}");
            let lwt = cql.contains(" IF ");
            assert_eq!(!lwt, *idempotent, "{name}: conditional statements must not be marked idempotent");
            if cql.starts_with("SELECT") {
                assert!(cql.contains(" WHERE "), "{name}: a read must name its partition");
            }
        }
        let lwt: Vec<&str> = all.iter().filter(|(_, i, _)| !i).map(|(n, _, _)| *n).collect();
        assert_eq!(
            lwt,
            ["account_insert", "account_set_credentials", "account_delete", "roster_cas_version"],
            "the only lightweight transactions (documented in docs/storage.md)"
        );
    }

    #[test]
    fn selects_on_partitioned_tables_name_the_whole_partition_key() {
        // (table, partition key columns)
        let keys: &[(&str, &[&str])] = &[
            ("accounts", &["domain", "bucket"]),
            ("roster", &["owner"]),
            ("offline", &["owner"]),
            ("vcard", &["owner"]),
            ("blocklist", &["owner"]),
            ("last_activity", &["owner"]),
            ("archive", &["owner", "bucket"]),
            ("archive_with", &["owner", "with_jid", "bucket"]),
            ("archive_buckets", &["owner"]),
            ("archive_prefs", &["owner"]),
        ];
        for (name, _, cql) in texts("k") {
            if !(cql.starts_with("SELECT") || cql.starts_with("DELETE") || cql.starts_with("UPDATE")) {
                continue;
            }
            let table = cql.split(" k.").nth(1).unwrap().split(' ').next().unwrap();
            let (_, cols) = keys.iter().find(|(t, _)| *t == table).unwrap_or_else(|| panic!("{name}: {table}"));
            let where_clause = cql.split(" WHERE ").nth(1).unwrap();
            for col in *cols {
                assert!(where_clause.contains(&format!("{col} = ?")), "{name}: partition key {col} missing in {cql}");
            }
        }
    }
}
