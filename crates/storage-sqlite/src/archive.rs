//! Message archives on SQLite (XEP-0313 §4-§6 data, XEP-0059 paging), with the semantics
//! of [`rookery_storage::archive::page_of`].
//!
//! Owns: the `archive` table, its `archive_with (owner, with_bare, id)` index and
//! `archive_prefs`, and how an [`ArchiveQuery`] becomes SQL.
//! Must not touch: XML (stanzas are opaque bytes), which messages are archived (the MAM
//! module decides).
//!
//! # Ids
//!
//! Archive ids are u64 and SQLite integers i64. Ids are stored with the top bit flipped
//! ([`id_to_sql`]), which maps u64 order onto i64 order over the whole range: ids are
//! microseconds << 12 and pass `i64::MAX` in 2041, and `ArchiveId(u64::MAX)` is a valid
//! "everything" bound. A plain cast would sort those before every older id.
//!
//! # Queries
//!
//! - A page is one range scan: `owner = ? [AND id > after] [AND id < before]`, plus
//!   `with_bare = ? [AND with_res = ?]` for a conversation, `ORDER BY id` ascending (or
//!   descending for `from_end`), `LIMIT limit + 1`: the extra row only tells whether there
//!   is more. Without `with` the scan walks the primary key; with `with` it walks the
//!   `archive_with` index, whose rows are `(owner, with_bare, id)` in order, and reads the
//!   bodies of the rows it returns.
//! - The count, when asked for, is `SELECT count(*) FROM (SELECT 1 ... LIMIT cap + 1)`, so it
//!   stops one row past the cap; when the page already holds the whole matching set (no
//!   more), the page is the count.
//! - `ids` queries (XEP-0313 `ids` field) are point reads of the primary key, one per id
//!   inside the bounds, and paged in memory like [`page_of`].
//! - An append is one `BEGIN IMMEDIATE` transaction of upserts, rows applied in order, so
//!   a repeated id (also within one call) ends with the last row, and no other process can
//!   see half of a call.

use crate::{SqliteStore, db, decode, encode};
use async_trait::async_trait;
use bytes::Bytes;
use rookery_jid::BareJid;
use rookery_storage::archive::page_of;
use rookery_storage::{
    ArchiveEntry, ArchiveId, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveRow, ArchiveStore, Result,
};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Row, Transaction, params, params_from_iter};

const SIGN: u64 = 1 << 63;

/// u64 id → i64 with the same order (top bit flipped).
pub fn id_to_sql(id: ArchiveId) -> i64 {
    i64::from_ne_bytes((id.0 ^ SIGN).to_ne_bytes())
}

/// Inverse of [`id_to_sql`].
pub fn id_from_sql(v: i64) -> ArchiveId {
    ArchiveId(u64::from_ne_bytes(v.to_ne_bytes()) ^ SIGN)
}

/// A row count as an SQL `LIMIT`: anything past i64::MAX is no limit.
fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const COLUMNS: &str = "id, with_bare, with_res, outgoing, stanza";

fn entry_of(r: &Row<'_>) -> rusqlite::Result<ArchiveEntry> {
    Ok(ArchiveEntry {
        id: id_from_sql(r.get(0)?),
        with: r.get(1)?,
        with_resource: r.get(2)?,
        outgoing: r.get(3)?,
        stanza: Bytes::from(r.get::<_, Vec<u8>>(4)?),
    })
}

/// The `WHERE` clause of a query without its `ids`, with its parameters in order.
pub(crate) fn filter(owner: &str, q: &ArchiveQuery) -> (String, Vec<Value>) {
    let mut sql = String::from("owner = ?");
    let mut params = vec![Value::Text(owner.to_owned())];
    if let Some(after) = q.after {
        sql.push_str(" AND id > ?");
        params.push(Value::Integer(id_to_sql(after)));
    }
    if let Some(before) = q.before {
        sql.push_str(" AND id < ?");
        params.push(Value::Integer(id_to_sql(before)));
    }
    if let Some(w) = &q.with {
        sql.push_str(" AND with_bare = ?");
        params.push(Value::Text(w.bare.clone()));
        if let Some(r) = &w.resource {
            sql.push_str(" AND with_res = ?");
            params.push(Value::Text(r.clone()));
        }
    }
    (sql, params)
}

/// The table to scan. For a conversation the index is named: left to itself, SQLite's
/// planner prefers the primary key because it yields `ORDER BY id` without a sort, and
/// then reads the owner's whole archive to find one conversation's rows.
fn source(q: &ArchiveQuery) -> &'static str {
    if q.with.is_some() { "archive INDEXED BY archive_with" } else { "archive" }
}

/// The SQL of one page scan (see the module docs); the limit is the last parameter.
pub(crate) fn page_sql(q: &ArchiveQuery, where_clause: &str) -> String {
    let order = if q.from_end { "DESC" } else { "ASC" };
    format!("SELECT {COLUMNS} FROM {} WHERE {where_clause} ORDER BY id {order} LIMIT ?", source(q))
}

/// The SQL of a capped count; the cap + 1 is the last parameter.
pub(crate) fn count_sql(q: &ArchiveQuery, where_clause: &str) -> String {
    format!("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {where_clause} LIMIT ?)", source(q))
}

fn query_page(tx: &Transaction<'_>, owner: &str, q: &ArchiveQuery) -> Result<ArchivePage> {
    if let Some(ids) = &q.ids {
        return query_ids(tx, owner, ids, q);
    }
    let (where_clause, mut params) = filter(owner, q);
    let mut fetch_params = params.clone();
    fetch_params.push(Value::Integer(sql_limit(q.limit.saturating_add(1))));
    let mut items = tx
        .prepare_cached(&page_sql(q, &where_clause))
        .and_then(|mut s| s.query_map(params_from_iter(fetch_params), entry_of)?.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(db)?;
    let more = items.len() > q.limit;
    items.truncate(q.limit);
    if q.from_end {
        items.reverse();
    }
    let count = if q.count_cap == 0 {
        None
    } else if !more {
        // The page is the whole matching set.
        Some(items.len() as u64).filter(|n| *n <= q.count_cap as u64)
    } else {
        params.push(Value::Integer(sql_limit(q.count_cap.saturating_add(1))));
        let n: i64 = tx
            .prepare_cached(&count_sql(q, &where_clause))
            .and_then(|mut s| s.query_row(params_from_iter(params), |r| r.get(0)))
            .map_err(db)?;
        u64::try_from(n).ok().filter(|n| *n <= q.count_cap as u64)
    };
    Ok(ArchivePage { items, more, count })
}

/// `ids` queries: point reads of the ids inside the bounds, then the reference paging.
fn query_ids(tx: &Transaction<'_>, owner: &str, ids: &[ArchiveId], q: &ArchiveQuery) -> Result<ArchivePage> {
    let mut wanted: Vec<ArchiveId> =
        ids.iter().copied().filter(|id| q.after.is_none_or(|a| *id > a) && q.before.is_none_or(|b| *id < b)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut s =
        tx.prepare_cached(&format!("SELECT {COLUMNS} FROM archive WHERE owner = ?1 AND id = ?2")).map_err(db)?;
    let mut found = Vec::with_capacity(wanted.len());
    for id in wanted {
        if let Some(e) = s.query_row(params![owner, id_to_sql(id)], entry_of).optional().map_err(db)? {
            found.push(e);
        }
    }
    // `page_of` applies the `with` filter and the paging rules.
    Ok(page_of(found.iter(), q))
}

#[async_trait]
impl ArchiveStore for SqliteStore {
    async fn append(&self, rows: &[ArchiveRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = rows.to_vec();
        self.write(move |tx| {
            let mut s = tx
                .prepare_cached(
                    "INSERT INTO archive (owner, id, with_bare, with_res, outgoing, stanza)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (owner, id) DO UPDATE SET with_bare = excluded.with_bare,
                         with_res = excluded.with_res, outgoing = excluded.outgoing, stanza = excluded.stanza",
                )
                .map_err(db)?;
            for row in &rows {
                let e = &row.entry;
                s.execute(params![
                    row.owner.as_str(),
                    id_to_sql(e.id),
                    e.with,
                    e.with_resource,
                    e.outgoing,
                    &e.stanza[..]
                ])
                .map_err(db)?;
            }
            Ok(())
        })
        .await
    }

    async fn query(&self, owner: &BareJid, q: &ArchiveQuery) -> Result<ArchivePage> {
        let (owner, q) = (owner.as_str().to_owned(), q.clone());
        self.read(move |tx| query_page(tx, &owner, &q)).await
    }

    async fn bounds(&self, owner: &BareJid) -> Result<Option<(ArchiveId, ArchiveId)>> {
        let owner = owner.as_str().to_owned();
        let (lo, hi): (Option<i64>, Option<i64>) = self
            .read(move |tx| {
                tx.prepare_cached("SELECT min(id), max(id) FROM archive WHERE owner = ?1")
                    .and_then(|mut s| s.query_row(params![owner], |r| Ok((r.get(0)?, r.get(1)?))))
                    .map_err(db)
            })
            .await?;
        Ok(lo.zip(hi).map(|(lo, hi)| (id_from_sql(lo), id_from_sql(hi))))
    }

    async fn remove_before(&self, owner: &BareJid, before: ArchiveId) -> Result<u64> {
        let owner = owner.as_str().to_owned();
        self.write(move |tx| {
            let n = tx
                .prepare_cached("DELETE FROM archive WHERE owner = ?1 AND id < ?2")
                .and_then(|mut s| s.execute(params![owner, id_to_sql(before)]))
                .map_err(db)?;
            Ok(n as u64)
        })
        .await
    }

    async fn delete_all(&self, owner: &BareJid) -> Result<()> {
        let owner = owner.as_str().to_owned();
        self.write(move |tx| {
            tx.execute("DELETE FROM archive WHERE owner = ?1", params![owner]).map_err(db)?;
            tx.execute("DELETE FROM archive_prefs WHERE owner = ?1", params![owner]).map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn get_prefs(&self, owner: &BareJid) -> Result<Option<ArchivePrefs>> {
        let owner = owner.as_str().to_owned();
        let prefs: Option<String> = self
            .read(move |tx| {
                tx.prepare_cached("SELECT prefs FROM archive_prefs WHERE owner = ?1")
                    .and_then(|mut s| s.query_row(params![owner], |r| r.get(0)).optional())
                    .map_err(db)
            })
            .await?;
        prefs.map(|p| decode("archive prefs", &p)).transpose()
    }

    async fn set_prefs(&self, owner: &BareJid, prefs: &ArchivePrefs) -> Result<()> {
        let owner = owner.as_str().to_owned();
        let prefs = encode("archive prefs", prefs)?;
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO archive_prefs (owner, prefs) VALUES (?1, ?2)
                 ON CONFLICT (owner) DO UPDATE SET prefs = excluded.prefs",
            )
            .and_then(|mut s| s.execute(params![owner, prefs]))
            .map_err(db)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Durability;
    use rookery_storage::WithFilter;

    #[test]
    fn flipped_ids_keep_u64_order_over_the_whole_range() {
        let ids = [0, 1, 1 << 40, i64::MAX as u64 - 1, i64::MAX as u64, 1 << 63, (1 << 63) + 1, u64::MAX - 1, u64::MAX];
        for w in ids.windows(2) {
            assert!(id_to_sql(ArchiveId(w[0])) < id_to_sql(ArchiveId(w[1])), "{} < {}", w[0], w[1]);
        }
        for id in ids {
            assert_eq!(id_from_sql(id_to_sql(ArchiveId(id))), ArchiveId(id));
        }
        assert_eq!(id_to_sql(ArchiveId(0)), i64::MIN);
        assert_eq!(id_to_sql(ArchiveId(u64::MAX)), i64::MAX);
    }

    /// Page scans and counts are range scans of the primary key or the `with` index that
    /// use every bound, never a full scan or a sort.
    #[test]
    fn page_queries_use_the_key_or_the_with_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::schema::connect(&dir.path().join("plan.sqlite3"), Durability::Os).unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let with = |resource: Option<&str>| {
            Some(WithFilter { bare: "bob@b.example".into(), resource: resource.map(str::to_owned) })
        };
        let bounded = ArchiveQuery { after: Some(ArchiveId(5)), before: Some(ArchiveId(9)), ..Default::default() };
        let phone = ArchiveQuery { with: with(Some("phone")), after: Some(ArchiveId(5)), ..Default::default() };
        // (query, page plan, count plan); an unbounded count may walk the smaller index.
        let cases = [
            (ArchiveQuery::default(), "USING PRIMARY KEY (owner=?)", "(owner=?)"),
            (bounded, "USING PRIMARY KEY (owner=? AND id>? AND id<?)", "USING PRIMARY KEY (owner=? AND id>? AND id<?)"),
            (
                ArchiveQuery { with: with(None), ..Default::default() },
                "INDEX archive_with (owner=? AND with_bare=?)",
                "INDEX archive_with (owner=? AND with_bare=?)",
            ),
            (
                phone,
                "INDEX archive_with (owner=? AND with_bare=? AND id>?)",
                "INDEX archive_with (owner=? AND with_bare=? AND id>?)",
            ),
        ];
        for (q, page_plan, count_plan) in cases {
            for from_end in [false, true] {
                let q = ArchiveQuery { from_end, ..q.clone() };
                let (where_clause, mut params) = filter("alice@a.example", &q);
                params.push(Value::Integer(10));
                for (sql, want) in
                    [(page_sql(&q, &where_clause), page_plan), (count_sql(&q, &where_clause), count_plan)]
                {
                    let mut s = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
                    let plan: Vec<String> =
                        s.query_map(params_from_iter(&params), |r| r.get(3)).unwrap().map(|r| r.unwrap()).collect();
                    let plan = plan.join(" | ");
                    assert!(plan.contains("SEARCH archive USING") && plan.contains(want), "{sql}: {plan}");
                    assert!(!plan.contains("TEMP B-TREE"), "{sql} sorts: {plan}");
                }
            }
        }
    }
}
