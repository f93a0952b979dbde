//! The message archive on ScyllaDB: appends, the reads behind [`crate::archive::run_query`],
//! bounds, retention and deletion.
//!
//! Owns: the mapping of archive operations onto `archive` (bodies, one partition per
//! owner and week), `archive_with` (body-less `with` index), `archive_buckets` (which
//! weeks exist, per owner and per owner+with) and `archive_prefs`.
//! Must not touch: query semantics (they live in `archive.rs` and are shared with the
//! reference implementation), XML.
//!
//! XEP-0313 §4-§6, XEP-0359 (archive ids are stanza-ids).

use crate::archive::{ArchiveSource, IdRange, bucket_of, chunk_by_size, run_query};
use crate::codec::{from_cql, from_json, to_cql, to_json};
use crate::statements::Statements;
use crate::{ScyllaStore, backend};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rookery_jid::BareJid;
use rookery_storage::Result;
use rookery_storage::archive::{
    ArchiveEntry, ArchiveId, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveRow, ArchiveStore, WithFilter,
};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use std::collections::{BTreeMap, BTreeSet};

/// Payload bytes per append batch: well below the batch size limits of ScyllaDB
/// (`batch_size_fail_threshold_in_kb`, 1 MiB) and Cassandra (50 KiB for multi-partition
/// batches; ours are single-partition).
const BATCH_BYTES: usize = 48 * 1024;
const BATCH_STATEMENTS: usize = 100;
/// Concurrent requests of one append, deletion or lookup fan-out.
const FAN_OUT: usize = 16;
/// Reads of one `with` partition while stale index rows are being removed.
const INDEX_REPAIR_ROUNDS: usize = 3;
/// Bucket-list key of the owner's whole archive. Real `with` values are bare JIDs, which
/// `*` never is; an empty string would do too, but empty clustering values are a corner
/// some CQL servers handle differently.
const ALL: &str = "*";

type ArchiveCqlRow = (i64, Option<String>, Option<String>, Option<bool>, Option<Bytes>);

fn entry(row: ArchiveCqlRow) -> ArchiveEntry {
    let (id, with, resource, outgoing, stanza) = row;
    ArchiveEntry {
        id: ArchiveId(from_cql(id)),
        with: with.unwrap_or_default(),
        with_resource: resource.unwrap_or_default(),
        outgoing: outgoing.unwrap_or(false),
        stanza: stanza.unwrap_or_default(),
    }
}

fn limit_value(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX).max(1)
}

/// One owner's archive as the query walk sees it.
struct OwnerArchive<'a> {
    store: &'a ScyllaStore,
    st: &'a Statements,
    owner: &'a str,
}

impl OwnerArchive<'_> {
    /// Index rows (id, resource) of one `with` partition, resource filter applied, at most
    /// `limit`, streamed so a selective resource filter does not load the partition.
    async fn with_ids(
        &self,
        bucket: i32,
        with: &WithFilter,
        range: IdRange,
        from_end: bool,
        limit: u64,
    ) -> Result<Vec<ArchiveId>> {
        let stmt = if from_end { &self.st.archive_with_desc } else { &self.st.archive_with_asc };
        // Without a resource filter every index row counts, so the server can stop early.
        let server_limit = if with.resource.is_some() { i32::MAX } else { limit_value(limit) };
        let values = (self.owner, with.bare.as_str(), bucket, to_cql(range.lo), to_cql(range.hi), server_limit);
        let pager =
            self.store.session.execute_iter(stmt.clone(), values).await.map_err(backend("reading with index"))?;
        let mut rows = pager.rows_stream::<(i64, Option<String>)>().map_err(backend("reading with index"))?;
        let mut out = Vec::new();
        while (out.len() as u64) < limit {
            let Some((id, resource)) = rows.try_next().await.map_err(backend("reading with index"))? else { break };
            if with.resource.as_deref().is_none_or(|r| r == resource.as_deref().unwrap_or_default()) {
                out.push(ArchiveId(from_cql(id)));
            }
        }
        Ok(out)
    }

    /// Removes an index row whose message was replaced by one with another `with` (an
    /// append with an existing id): appends never read, so the stale row is found and
    /// dropped here, by the first query that reads it.
    async fn repair_index(&self, with: &WithFilter, bucket: i32, id: ArchiveId) {
        let values = (self.owner, with.bare.as_str(), bucket, to_cql(id.0));
        if let Err(e) = self.store.exec("repairing with index", &self.st.archive_with_delete_one, values).await {
            tracing::warn!(event = "archive_index_repair_failed", owner = self.owner, id = %id, error = %e);
        }
    }

    async fn get_one(&self, id: ArchiveId) -> Result<Option<ArchiveEntry>> {
        let row: Option<ArchiveCqlRow> = self
            .store
            .first("reading archive entry", &self.st.archive_get, (self.owner, bucket_of(id), to_cql(id.0)))
            .await?;
        Ok(row.map(entry))
    }
}

impl ArchiveSource for OwnerArchive<'_> {
    async fn buckets(&self, with: Option<&str>, first: i32, last: i32) -> Result<Vec<i32>> {
        let rows: Vec<(i32,)> = self
            .store
            .rows(
                "reading archive buckets",
                &self.st.archive_buckets_range,
                (self.owner, with.unwrap_or(ALL), first, last),
            )
            .await?;
        Ok(rows.into_iter().map(|(b,)| b).collect())
    }

    async fn rows(
        &self,
        bucket: i32,
        with: Option<&WithFilter>,
        range: IdRange,
        from_end: bool,
        limit: usize,
    ) -> Result<Vec<ArchiveEntry>> {
        let limit = limit as u64;
        match with {
            None => {
                let stmt = if from_end { &self.st.archive_rows_desc } else { &self.st.archive_rows_asc };
                let rows: Vec<ArchiveCqlRow> = self
                    .store
                    .rows(
                        "reading archive",
                        stmt,
                        (self.owner, bucket, to_cql(range.lo), to_cql(range.hi), limit_value(limit)),
                    )
                    .await?;
                Ok(rows.into_iter().map(entry).collect())
            }
            Some(w) => {
                // Bodies live only in `archive`: one point read each, in index order. An
                // index row without a body (its append is still in flight, or it was
                // deleted concurrently) is skipped. A stale row (its id was re-appended
                // with another `with`) is removed and the bucket read again, so the page
                // never skips a message that sat behind it.
                let mut out = Vec::new();
                for _ in 0..INDEX_REPAIR_ROUNDS {
                    let ids = self.with_ids(bucket, w, range, from_end, limit).await?;
                    let found: Vec<Option<ArchiveEntry>> =
                        futures::stream::iter(ids).map(|id| self.get_one(id)).buffered(FAN_OUT).try_collect().await?;
                    let (good, stale): (Vec<ArchiveEntry>, Vec<ArchiveEntry>) =
                        found.into_iter().flatten().partition(|e| e.with == w.bare);
                    out = good;
                    if stale.is_empty() {
                        break;
                    }
                    for e in stale {
                        self.repair_index(w, bucket, e.id).await;
                    }
                }
                Ok(out)
            }
        }
    }

    async fn count(&self, bucket: i32, with: Option<&WithFilter>, range: IdRange, cap: u64) -> Result<u64> {
        match with {
            None => {
                let values = (self.owner, bucket, to_cql(range.lo), to_cql(range.hi), limit_value(cap));
                let pager = self
                    .store
                    .session
                    .execute_iter(self.st.archive_ids.clone(), values)
                    .await
                    .map_err(backend("counting archive"))?;
                let mut ids = pager.rows_stream::<(i64,)>().map_err(backend("counting archive"))?;
                let mut n = 0u64;
                while n < cap && ids.try_next().await.map_err(backend("counting archive"))?.is_some() {
                    n += 1;
                }
                Ok(n)
            }
            // Ascending or descending does not matter for a count.
            Some(w) => Ok(self.with_ids(bucket, w, range, false, cap).await?.len() as u64),
        }
    }

    async fn get(&self, ids: &[ArchiveId]) -> Result<Vec<ArchiveEntry>> {
        let found: Vec<Option<ArchiveEntry>> = futures::stream::iter(ids.iter().copied())
            .map(|id| self.get_one(id))
            .buffer_unordered(FAN_OUT)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }
}

/// One write of an append: all members target one partition.
enum Write<'a> {
    Bodies(Vec<&'a ArchiveRow>),
    Index(Vec<&'a ArchiveRow>),
    Buckets(&'a str, Vec<(&'a str, i32)>),
}

impl ScyllaStore {
    /// A single statement alone, several as an unlogged batch: every batch built here
    /// stays inside one partition, where a batch is one mutation applied atomically by the
    /// replicas. Writes to different partitions run as concurrent requests instead: a
    /// logged multi-partition batch would go through the batch log (an extra write round
    /// on other nodes) and an unlogged one would only make its coordinator the bottleneck.
    async fn write_partition<V>(&self, stmt: &PreparedStatement, mut values: Vec<V>) -> Result<()>
    where
        V: scylla::serialize::row::SerializeRow,
    {
        if values.len() == 1 {
            let Some(v) = values.pop() else { return Ok(()) };
            return self.exec("archiving", stmt, v).await;
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in &values {
            batch.append_statement(stmt.clone());
        }
        self.session.batch(&batch, values).await.map(|_| ()).map_err(backend("archiving"))
    }

    async fn run_write(&self, st: &Statements, w: Write<'_>) -> Result<()> {
        match w {
            Write::Bodies(rows) => {
                let values: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        let e = &r.entry;
                        (
                            r.owner.as_str(),
                            bucket_of(e.id),
                            to_cql(e.id.0),
                            e.with.as_str(),
                            e.with_resource.as_str(),
                            e.outgoing,
                            e.stanza.clone(),
                        )
                    })
                    .collect();
                self.write_partition(&st.archive_insert, values).await
            }
            Write::Index(rows) => {
                let values: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        let e = &r.entry;
                        (r.owner.as_str(), e.with.as_str(), bucket_of(e.id), to_cql(e.id.0), e.with_resource.as_str())
                    })
                    .collect();
                self.write_partition(&st.archive_with_insert, values).await
            }
            Write::Buckets(owner, keys) => {
                let values: Vec<_> = keys.into_iter().map(|(with, bucket)| (owner, with, bucket)).collect();
                self.write_partition(&st.archive_bucket_insert, values).await
            }
        }
    }

    /// Deletes one week of the archive (`with` = [`ALL`]) or of a `with` index: the whole
    /// partition, or only the ids below `cut` when given.
    async fn remove_week(&self, st: &Statements, owner: &str, with: &str, bucket: i32, cut: Option<i64>) -> Result<()> {
        match (with, cut) {
            (ALL, None) => self.exec("removing archive week", &st.archive_delete_bucket, (owner, bucket)).await,
            (ALL, Some(cut)) => {
                self.exec("removing archive range", &st.archive_delete_before, (owner, bucket, cut)).await
            }
            (w, None) => {
                self.exec("removing with index week", &st.archive_with_delete_bucket, (owner, w, bucket)).await
            }
            (w, Some(cut)) => {
                self.exec("removing with index range", &st.archive_with_delete_before, (owner, w, bucket, cut)).await
            }
        }
    }

    /// Every (with_jid, bucket) entry of an owner's bucket list.
    async fn bucket_list(&self, st: &Statements, owner: &str) -> Result<Vec<(String, i32)>> {
        self.rows("reading archive buckets", &st.archive_buckets_all, (owner,)).await
    }
}

#[async_trait]
impl ArchiveStore for ScyllaStore {
    async fn append(&self, rows: &[ArchiveRow]) -> Result<()> {
        let st = self.stmts()?;
        // The last row wins when one id comes twice, as with sequential appends.
        let mut latest: BTreeMap<(&str, ArchiveId), &ArchiveRow> = BTreeMap::new();
        for r in rows {
            latest.insert((r.owner.as_str(), r.entry.id), r);
        }
        let mut bodies: BTreeMap<(&str, i32), Vec<&ArchiveRow>> = BTreeMap::new();
        let mut index: BTreeMap<(&str, &str, i32), Vec<&ArchiveRow>> = BTreeMap::new();
        let mut buckets: BTreeMap<&str, BTreeSet<(&str, i32)>> = BTreeMap::new();
        for r in latest.into_values() {
            let (owner, b) = (r.owner.as_str(), bucket_of(r.entry.id));
            bodies.entry((owner, b)).or_default().push(r);
            index.entry((owner, r.entry.with.as_str(), b)).or_default().push(r);
            let list = buckets.entry(owner).or_default();
            list.insert((ALL, b));
            list.insert((r.entry.with.as_str(), b));
        }
        let size = |r: &&ArchiveRow| r.entry.stanza.len() + r.entry.with.len() + r.entry.with_resource.len() + 64;
        let mut writes: Vec<Write<'_>> = Vec::new();
        for group in bodies.into_values() {
            writes.extend(chunk_by_size(group, size, BATCH_BYTES, BATCH_STATEMENTS).into_iter().map(Write::Bodies));
        }
        for group in index.into_values() {
            writes.extend(chunk_by_size(group, size, BATCH_BYTES, BATCH_STATEMENTS).into_iter().map(Write::Index));
        }
        for (owner, keys) in buckets {
            let keys: Vec<(&str, i32)> = keys.into_iter().collect();
            for chunk in keys.chunks(BATCH_STATEMENTS) {
                writes.push(Write::Buckets(owner, chunk.to_vec()));
            }
        }
        // Readers tolerate any order: a bucket entry without rows reads as empty, and rows
        // become visible once their bucket entry is written, before append returns.
        let writes: Vec<_> = writes.into_iter().map(|w| self.run_write(st, w)).collect();
        futures::stream::iter(writes).buffer_unordered(FAN_OUT).try_collect::<()>().await
    }

    async fn query(&self, owner: &BareJid, q: &ArchiveQuery) -> Result<ArchivePage> {
        let st = self.stmts()?;
        run_query(&OwnerArchive { store: self, st, owner: owner.as_str() }, q).await
    }

    async fn bounds(&self, owner: &BareJid) -> Result<Option<(ArchiveId, ArchiveId)>> {
        let st = self.stmts()?;
        let src = OwnerArchive { store: self, st, owner: owner.as_str() };
        let mut buckets = src.buckets(None, i32::MIN, i32::MAX).await?;
        buckets.sort_unstable();
        // A bucket entry may outlive its rows (retention in the boundary week), so look on.
        let mut first = None;
        for &b in &buckets {
            let row: Option<(i64,)> =
                self.first("reading archive bounds", &st.archive_first_id, (src.owner, b)).await?;
            if let Some((id,)) = row {
                first = Some(ArchiveId(from_cql(id)));
                break;
            }
        }
        let Some(first) = first else { return Ok(None) };
        for &b in buckets.iter().rev() {
            let row: Option<(i64,)> = self.first("reading archive bounds", &st.archive_last_id, (src.owner, b)).await?;
            if let Some((id,)) = row {
                return Ok(Some((first, ArchiveId(from_cql(id)))));
            }
        }
        Ok(None)
    }

    async fn remove_before(&self, owner: &BareJid, before: ArchiveId) -> Result<u64> {
        let st = self.stmts()?;
        let Some(range) = IdRange::below(before) else { return Ok(0) };
        let owner = owner.as_str();
        let src = OwnerArchive { store: self, st, owner };
        let boundary = bucket_of(before);
        let list: Vec<(String, i32)> =
            self.bucket_list(st, owner).await?.into_iter().filter(|(_, b)| *b <= boundary).collect();

        // Count first (the count is the return value), then delete: whole partitions for
        // weeks entirely before the cut, a clustering range in the week that holds it.
        let mut removed = 0u64;
        for (_, b) in list.iter().filter(|(w, _)| w == ALL) {
            removed += src.count(*b, None, range, u64::MAX).await?;
        }
        let cut = to_cql(before.0);
        let deletes: Vec<_> = list
            .iter()
            .map(|(with, b)| self.remove_week(st, owner, with, *b, (*b == boundary).then_some(cut)))
            .collect();
        futures::stream::iter(deletes).buffer_unordered(FAN_OUT).try_collect::<()>().await?;
        // Bucket entries last: an interrupted run leaves entries of empty weeks, which
        // readers skip and the next run removes.
        let entries: Vec<_> = list
            .iter()
            .filter(|(_, b)| *b < boundary)
            .map(|(with, b)| {
                self.exec("removing archive bucket entry", &st.archive_bucket_delete, (owner, with.as_str(), *b))
            })
            .collect();
        futures::stream::iter(entries).buffer_unordered(FAN_OUT).try_collect::<()>().await?;
        Ok(removed)
    }

    async fn delete_all(&self, owner: &BareJid) -> Result<()> {
        let st = self.stmts()?;
        let owner = owner.as_str();
        let list = self.bucket_list(st, owner).await?;
        let deletes: Vec<_> = list.iter().map(|(with, b)| self.remove_week(st, owner, with, *b, None)).collect();
        futures::stream::iter(deletes).buffer_unordered(FAN_OUT).try_collect::<()>().await?;
        self.exec("deleting archive bucket list", &st.archive_buckets_delete_all, (owner,)).await?;
        self.exec("deleting archive preferences", &st.archive_prefs_delete, (owner,)).await
    }

    async fn get_prefs(&self, owner: &BareJid) -> Result<Option<ArchivePrefs>> {
        let st = self.stmts()?;
        let row: Option<(Option<String>,)> =
            self.first("reading archive preferences", &st.archive_prefs_get, (owner.as_str(),)).await?;
        row.and_then(|r| r.0).map(|p| from_json("archive preferences", &p)).transpose()
    }

    async fn set_prefs(&self, owner: &BareJid, prefs: &ArchivePrefs) -> Result<()> {
        let st = self.stmts()?;
        let json = to_json("archive preferences", prefs)?;
        self.exec("storing archive preferences", &st.archive_prefs_set, (owner.as_str(), json)).await
    }
}
