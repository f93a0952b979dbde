//! The message archive on fjall: [`ArchiveStore`] for [`EmbeddedStore`] (XEP-0313 §4-§6
//! data, ids that are XEP-0359 stanza-ids).
//!
//! Owns: the `archive`, `archive_with` and `archive_prefs` keyspaces (layout in the crate
//! docs) and the binary encoding of an archived message.
//! Must not touch: XML (stanzas are opaque bytes), the other keyspaces, and any query
//! semantics beyond [`rookery_storage::archive::page_of`], which every answer here equals.
//!
//! # Reads are range scans
//!
//! A page costs one range scan of at most `limit + 1` keys (plus up to `count_cap` keys,
//! read key-only, when the caller asks for a count), whatever the archive size:
//! - no `with`: a scan of the owner's `archive` rows between the id bounds, forwards or
//!   backwards (`from_end`);
//! - `with`: a scan of the owner's `archive_with` rows for that bare JID between the same
//!   bounds (the value is the resource, so a full-JID filter needs no body), then one
//!   point read per returned item for its body;
//! - `ids`: one point read per requested id inside the bounds.
//!
//! Every query reads one snapshot, so an index row and its body always agree even while
//! retention deletes rows concurrently. Queries run inline like the other reads; only a
//! count grows with the archive (up to `count_cap` keys), so callers keep that cap modest.
//!
//! # Writes
//!
//! An append writes each message's body and its index row in one write batch with the
//! store's durability (one flush or fsync per call, not per row). Appending an id that
//! already exists replaces it; its old index row is deleted in the same batch when the
//! other party changed, so the index never points at the wrong conversation. The old row
//! is read under the owner's lock, which retention and `delete_all` take as well.
//! `append_new` (the router's path: ids it has just minted) skips that read and lock: on
//! an LSM tree a point read of a key that does not exist still walks the bloom filters of
//! every level, and under a sustained archive load it was the one disk read left on the
//! write path (docs/benchmarks.md, "Profiles").
//!
//! # Body encoding
//!
//! `[version = 1][flags: bit 0 = outgoing][u32 BE len][with][u32 BE len][resource][stanza]`.
//! Binary rather than JSON like the other values: the stanza is most of the row, and is
//! stored and returned as the exact bytes given.

use crate::{EmbeddedStore, Inner, backend, corrupt, decode, encode, user_prefix};
use async_trait::async_trait;
use bytes::Bytes;
use fjall::{Guard, Readable, Snapshot};
use rookery_jid::BareJid;
use rookery_storage::archive::{
    ArchiveEntry, ArchiveId, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveRow, ArchiveStore, WithFilter,
};
use rookery_storage::{Result, StoreError};
use std::collections::HashMap;
use std::ops::Bound;

const BODY_VERSION: u8 = 1;
const FLAG_OUTGOING: u8 = 1;
const ID_LEN: usize = 8;
/// Rows deleted per write batch by retention and `delete_all`, so a huge archive never
/// builds one huge batch in memory.
const DELETE_CHUNK: usize = 4096;

type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

fn id_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + ID_LEN);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn len_u32(what: &str, n: usize) -> Result<[u8; 4]> {
    u32::try_from(n)
        .map(u32::to_be_bytes)
        .map_err(|_| StoreError::Backend(format!("archive {what} of {n} bytes is too long to store")))
}

/// `owner \0 len(with) with`: the prefix of one conversation's index rows. The length
/// makes the prefix unambiguous for any bytes in `with` (no separator to collide with).
fn with_prefix(owner_prefix: &[u8], with: &str) -> Result<Vec<u8>> {
    let mut k = Vec::with_capacity(owner_prefix.len() + 4 + with.len() + ID_LEN);
    k.extend_from_slice(owner_prefix);
    k.extend_from_slice(&len_u32("with JID", with.len())?);
    k.extend_from_slice(with.as_bytes());
    Ok(k)
}

/// The id at the end of an `archive` or `archive_with` key.
fn id_of(key: &[u8]) -> Result<ArchiveId> {
    key.len()
        .checked_sub(ID_LEN)
        .and_then(|at| key.get(at..))
        .and_then(|s| <[u8; ID_LEN]>::try_from(s).ok())
        .map(|b| ArchiveId(u64::from_be_bytes(b)))
        .ok_or_else(|| corrupt("archive key", format!("no id suffix in {key:?}")))
}

/// Keys under `prefix` whose id lies strictly between the query bounds; None when no id
/// can (the bounds are exclusive, so `after >= before` or `after = MAX` is empty).
fn id_range(prefix: &[u8], after: Option<ArchiveId>, before: Option<ArchiveId>) -> Option<KeyRange> {
    if after.is_some_and(|a| a.0 == u64::MAX || before.is_some_and(|b| a >= b)) || before == Some(ArchiveId(0)) {
        return None;
    }
    let lo = after.map_or_else(|| Bound::Included(prefix.to_vec()), |a| Bound::Excluded(id_key(prefix, a.0)));
    let hi = before.map_or_else(|| Bound::Included(id_key(prefix, u64::MAX)), |b| Bound::Excluded(id_key(prefix, b.0)));
    Some((lo, hi))
}

fn encode_body(e: &ArchiveEntry) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(2 + 8 + e.with.len() + e.with_resource.len() + e.stanza.len());
    v.push(BODY_VERSION);
    v.push(if e.outgoing { FLAG_OUTGOING } else { 0 });
    v.extend_from_slice(&len_u32("with JID", e.with.len())?);
    v.extend_from_slice(e.with.as_bytes());
    v.extend_from_slice(&len_u32("resource", e.with_resource.len())?);
    v.extend_from_slice(e.with_resource.as_bytes());
    v.extend_from_slice(&e.stanza);
    Ok(v)
}

/// Reads a length-prefixed UTF-8 field at `*at`, advancing it.
fn read_field<'a>(v: &'a [u8], at: &mut usize, what: &str) -> Result<&'a str> {
    let len = v
        .get(*at..*at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("archive message", format!("truncated before the {what} length")))?;
    let start = *at + 4;
    let end = usize::try_from(len).ok().and_then(|l| start.checked_add(l)).filter(|&e| e <= v.len());
    let end = end.ok_or_else(|| corrupt("archive message", format!("truncated {what}")))?;
    *at = end;
    std::str::from_utf8(&v[start..end]).map_err(|e| corrupt("archive message", e))
}

struct BodyHeader<'a> {
    outgoing: bool,
    with: &'a str,
    resource: &'a str,
    stanza_at: usize,
}

fn decode_header(v: &[u8]) -> Result<BodyHeader<'_>> {
    match v.first() {
        Some(&BODY_VERSION) => {}
        other => return Err(corrupt("archive message", format!("unknown encoding version {other:?}"))),
    }
    let flags = *v.get(1).ok_or_else(|| corrupt("archive message", "truncated flags"))?;
    let mut at = 2;
    let with = read_field(v, &mut at, "with JID")?;
    let resource = read_field(v, &mut at, "resource")?;
    Ok(BodyHeader { outgoing: flags & FLAG_OUTGOING != 0, with, resource, stanza_at: at })
}

fn decode_entry(id: ArchiveId, v: &[u8]) -> Result<ArchiveEntry> {
    let h = decode_header(v)?;
    Ok(ArchiveEntry {
        id,
        with: h.with.to_owned(),
        with_resource: h.resource.to_owned(),
        outgoing: h.outgoing,
        stanza: Bytes::copy_from_slice(&v[h.stanza_at..]),
    })
}

fn with_matches(w: Option<&WithFilter>, e: &ArchiveEntry) -> bool {
    w.is_none_or(|w| e.with == w.bare && w.resource.as_deref().is_none_or(|r| r == e.with_resource))
}

/// Collects one page the way [`rookery_storage::archive::page_of`] does: every matching
/// row counts, the first `limit` become items, and the scan stops at the first row past
/// the page unless the caller still wants a count (up to `count_cap`, then one more to
/// know the cap was exceeded).
struct Pager {
    limit: usize,
    cap: u64,
    seen: u64,
    items: Vec<ArchiveEntry>,
    more: bool,
}

impl Pager {
    fn new(q: &ArchiveQuery) -> Self {
        Pager { limit: q.limit, cap: q.count_cap as u64, seen: 0, items: Vec::new(), more: false }
    }

    /// Whether the next matching row becomes an item (so its body must be read).
    fn wants_item(&self) -> bool {
        self.items.len() < self.limit
    }

    fn item(&mut self, e: ArchiveEntry) {
        self.seen += 1;
        self.items.push(e);
    }

    /// Records a matching row past the page; false when scanning can stop.
    fn beyond_page(&mut self) -> bool {
        self.seen += 1;
        self.more = true;
        self.cap != 0 && self.seen <= self.cap
    }

    fn finish(mut self, from_end: bool) -> ArchivePage {
        if from_end {
            self.items.reverse();
        }
        let count = (self.cap > 0 && self.seen <= self.cap).then_some(self.seen);
        ArchivePage { items: self.items, more: self.more, count }
    }
}

fn directed(iter: fjall::Iter, from_end: bool) -> Box<dyn Iterator<Item = Guard>> {
    if from_end { Box::new(iter.rev()) } else { Box::new(iter) }
}

/// A row to write, encoded outside the owner's lock.
struct Prepared {
    owner_prefix: Vec<u8>,
    id: u64,
    with: String,
    body_key: Vec<u8>,
    body: Vec<u8>,
    index_key: Vec<u8>,
    resource: Vec<u8>,
}

impl Inner {
    fn query_page(&self, prefix: &[u8], q: &ArchiveQuery) -> Result<ArchivePage> {
        let snap = self.db.snapshot();
        let mut pager = Pager::new(q);
        if let Some(ids) = &q.ids {
            self.page_by_ids(&snap, prefix, ids, q, &mut pager)?;
        } else if let Some(w) = &q.with {
            self.page_with(&snap, prefix, w, q, &mut pager)?;
        } else if let Some(range) = id_range(prefix, q.after, q.before) {
            for g in directed(snap.range(&self.archive, range), q.from_end) {
                if pager.wants_item() {
                    let (k, v) = g.into_inner().map_err(backend)?;
                    pager.item(decode_entry(id_of(&k)?, &v)?);
                } else {
                    // Key-only: rows past the page are only counted.
                    g.key().map_err(backend)?;
                    if !pager.beyond_page() {
                        break;
                    }
                }
            }
        }
        Ok(pager.finish(q.from_end))
    }

    fn page_with(
        &self,
        snap: &Snapshot,
        prefix: &[u8],
        w: &WithFilter,
        q: &ArchiveQuery,
        pager: &mut Pager,
    ) -> Result<()> {
        let Some(range) = id_range(&with_prefix(prefix, &w.bare)?, q.after, q.before) else {
            return Ok(());
        };
        for g in directed(snap.range(&self.archive_with, range), q.from_end) {
            let key = match &w.resource {
                Some(resource) => {
                    let (k, v) = g.into_inner().map_err(backend)?;
                    if *v != *resource.as_bytes() {
                        continue;
                    }
                    k
                }
                None => g.key().map_err(backend)?,
            };
            if pager.wants_item() {
                let id = id_of(&key)?;
                let body = snap
                    .get(&self.archive, id_key(prefix, id.0))
                    .map_err(backend)?
                    .ok_or_else(|| corrupt("archive index", format!("row {id} has no message")))?;
                pager.item(decode_entry(id, &body)?);
            } else if !pager.beyond_page() {
                break;
            }
        }
        Ok(())
    }

    fn page_by_ids(
        &self,
        snap: &Snapshot,
        prefix: &[u8],
        ids: &[ArchiveId],
        q: &ArchiveQuery,
        pager: &mut Pager,
    ) -> Result<()> {
        let mut ids: Vec<ArchiveId> = ids
            .iter()
            .copied()
            .filter(|id| q.after.is_none_or(|a| *id > a) && q.before.is_none_or(|b| *id < b))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if q.from_end {
            ids.reverse();
        }
        for id in ids {
            let Some(body) = snap.get(&self.archive, id_key(prefix, id.0)).map_err(backend)? else {
                continue;
            };
            let entry = decode_entry(id, &body)?;
            if !with_matches(q.with.as_ref(), &entry) {
                continue;
            }
            if pager.wants_item() {
                pager.item(entry);
            } else if !pager.beyond_page() {
                break;
            }
        }
        Ok(())
    }

    fn append_rows(&self, mut rows: Vec<Prepared>) -> Result<()> {
        // Within one call a later row replaces an earlier one with the same owner and id,
        // as if appended one after the other: only the last is written.
        let keep: Vec<bool> = {
            let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(rows.len());
            for (i, r) in rows.iter().enumerate() {
                last.insert(&r.body_key, i);
            }
            rows.iter().enumerate().map(|(i, r)| last.get(&r.body_key[..]) == Some(&i)).collect()
        };
        if keep.contains(&false) {
            let mut keep = keep.into_iter();
            rows.retain(|_| keep.next().unwrap_or(true));
        }

        let _guards = self.lock_users(rows.iter().map(|r| &r.owner_prefix[..]));
        let mut batch = self.batch();
        for r in rows {
            if let Some(old) = Self::get(&self.archive, &r.body_key)? {
                let old_with = decode_header(&old)?.with;
                if old_with != r.with {
                    let mut stale = with_prefix(&r.owner_prefix, old_with)?;
                    stale.extend_from_slice(&r.id.to_be_bytes());
                    batch.remove(&self.archive_with, stale);
                }
            }
            batch.insert(&self.archive, r.body_key, r.body);
            batch.insert(&self.archive_with, r.index_key, r.resource);
        }
        Inner::commit(batch)
    }

    /// Rows with fresh ids: no old row can exist, so nothing is read and no owner lock is
    /// taken. Retention and `delete_all` need no lock against this: they delete only rows
    /// they have read, each with the index row its body names, and a body and its index row
    /// are committed together here.
    fn append_new_rows(&self, rows: Vec<Prepared>) -> Result<()> {
        let mut batch = self.batch();
        for r in rows {
            batch.insert(&self.archive, r.body_key, r.body);
            batch.insert(&self.archive_with, r.index_key, r.resource);
        }
        Inner::commit(batch)
    }

    /// Removes the owner's rows with ids below `before` (all rows when None), body and
    /// index together; returns how many messages were removed.
    fn remove_rows(&self, prefix: &[u8], before: Option<ArchiveId>) -> Result<u64> {
        let Some(range) = id_range(prefix, None, before) else {
            return Ok(0);
        };
        let mut removed = 0u64;
        let mut batch = self.batch();
        for g in self.archive.range(range) {
            let (k, v) = g.into_inner().map_err(backend)?;
            let id = id_of(&k)?;
            let mut index_key = with_prefix(prefix, decode_header(&v)?.with)?;
            index_key.extend_from_slice(&id.0.to_be_bytes());
            batch.remove(&self.archive_with, index_key);
            batch.remove(&self.archive, k);
            removed += 1;
            if batch.len() >= 2 * DELETE_CHUNK {
                Inner::commit(std::mem::replace(&mut batch, self.batch()))?;
            }
        }
        Inner::commit(batch)?;
        Ok(removed)
    }

    /// Deletes every key under `prefix`, key-only, in bounded batches.
    fn delete_prefix_chunked(&self, ks: &fjall::Keyspace, prefix: &[u8]) -> Result<()> {
        let mut batch = self.batch();
        for g in ks.prefix(prefix) {
            batch.remove(ks, g.key().map_err(backend)?);
            if batch.len() >= DELETE_CHUNK {
                Inner::commit(std::mem::replace(&mut batch, self.batch()))?;
            }
        }
        Inner::commit(batch)
    }
}

fn prepare(row: &ArchiveRow) -> Result<Prepared> {
    let owner_prefix = user_prefix(&row.owner);
    let e = &row.entry;
    let mut index_key = with_prefix(&owner_prefix, &e.with)?;
    index_key.extend_from_slice(&e.id.0.to_be_bytes());
    Ok(Prepared {
        body_key: id_key(&owner_prefix, e.id.0),
        body: encode_body(e)?,
        index_key,
        resource: e.with_resource.as_bytes().to_vec(),
        id: e.id.0,
        with: e.with.clone(),
        owner_prefix,
    })
}

#[async_trait]
impl ArchiveStore for EmbeddedStore {
    async fn append(&self, rows: &[ArchiveRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let prepared = rows.iter().map(prepare).collect::<Result<Vec<_>>>()?;
        self.write(move |db| db.append_rows(prepared)).await
    }

    async fn append_new(&self, rows: &[ArchiveRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let prepared = rows.iter().map(prepare).collect::<Result<Vec<_>>>()?;
        self.write(move |db| db.append_new_rows(prepared)).await
    }

    async fn query(&self, owner: &BareJid, q: &ArchiveQuery) -> Result<ArchivePage> {
        self.inner.query_page(&user_prefix(owner), q)
    }

    async fn bounds(&self, owner: &BareJid) -> Result<Option<(ArchiveId, ArchiveId)>> {
        let prefix = user_prefix(owner);
        let snap = self.inner.db.snapshot();
        let first = snap.prefix(&self.inner.archive, &prefix).next();
        let last = snap.prefix(&self.inner.archive, &prefix).next_back();
        match (first, last) {
            (Some(f), Some(l)) => Ok(Some((id_of(&f.key().map_err(backend)?)?, id_of(&l.key().map_err(backend)?)?))),
            _ => Ok(None),
        }
    }

    async fn remove_before(&self, owner: &BareJid, before: ArchiveId) -> Result<u64> {
        let prefix = user_prefix(owner);
        self.write(move |db| {
            let _guard = db.lock_user(&prefix);
            db.remove_rows(&prefix, Some(before))
        })
        .await
    }

    async fn delete_all(&self, owner: &BareJid) -> Result<()> {
        let prefix = user_prefix(owner);
        self.write(move |db| {
            let _guard = db.lock_user(&prefix);
            db.delete_prefix_chunked(&db.archive, &prefix)?;
            db.delete_prefix_chunked(&db.archive_with, &prefix)?;
            let mut batch = db.batch();
            batch.remove(&db.archive_prefs, prefix);
            Inner::commit(batch)
        })
        .await
    }

    async fn get_prefs(&self, owner: &BareJid) -> Result<Option<ArchivePrefs>> {
        Inner::get(&self.inner.archive_prefs, &user_prefix(owner))?.map(|v| decode("archive prefs", &v)).transpose()
    }

    async fn set_prefs(&self, owner: &BareJid, prefs: &ArchivePrefs) -> Result<()> {
        let key = user_prefix(owner);
        let value = encode("archive prefs", prefs)?;
        self.write(move |db| {
            let mut batch = db.batch();
            batch.insert(&db.archive_prefs, key, value);
            Inner::commit(batch)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(with: &str, resource: &str, outgoing: bool, stanza: &[u8]) -> ArchiveEntry {
        ArchiveEntry {
            id: ArchiveId(7),
            with: with.into(),
            with_resource: resource.into(),
            outgoing,
            stanza: Bytes::copy_from_slice(stanza),
        }
    }

    #[test]
    fn body_round_trips_and_rejects_truncation() {
        for e in [
            entry("bob@b.example", "phone", true, b"<message/>"),
            entry("", "", false, b""),
            entry("jürgen@münchen.example", "Téléphone 📱", false, &[0, 255, 1, 254]),
        ] {
            let v = encode_body(&e).unwrap();
            assert_eq!(decode_entry(ArchiveId(7), &v).unwrap(), e);
            let h = decode_header(&v).unwrap();
            assert_eq!((h.with, h.resource, h.outgoing), (&e.with[..], &e.with_resource[..], e.outgoing));
            // Every cut inside the header is detected; cuts inside the stanza cannot be.
            for cut in 0..h.stanza_at {
                assert!(decode_entry(ArchiveId(7), &v[..cut]).is_err(), "cut at {cut} of {e:?}");
            }
        }
        let mut v = encode_body(&entry("a@b", "", false, b"x")).unwrap();
        v[0] = 9;
        assert!(matches!(decode_header(&v), Err(StoreError::Corrupt(_))), "unknown version is corruption");
    }

    #[test]
    fn with_prefixes_never_prefix_each_other() {
        let owner = b"alice@a.example\0";
        let a = with_prefix(owner, "bo@b").unwrap();
        let b = with_prefix(owner, "bob@b").unwrap();
        let c = with_prefix(owner, "bo@b\0x").unwrap();
        for (x, y) in [(&a, &b), (&b, &a), (&a, &c), (&c, &a)] {
            assert!(!y.starts_with(x), "{x:?} prefixes {y:?}");
        }
        let mut k = a.clone();
        k.extend_from_slice(&42u64.to_be_bytes());
        assert_eq!(id_of(&k).unwrap(), ArchiveId(42));
        assert!(id_of(b"short").is_err());
    }

    #[test]
    fn empty_ranges_are_recognised() {
        let p = b"o\0";
        let id = |n| Some(ArchiveId(n));
        assert!(id_range(p, id(5), id(5)).is_none());
        assert!(id_range(p, id(6), id(5)).is_none());
        assert!(id_range(p, id(u64::MAX), None).is_none());
        assert!(id_range(p, None, id(0)).is_none());
        assert!(id_range(p, id(5), id(6)).is_some(), "empty but well-formed: the scan finds nothing");
        assert!(id_range(p, None, None).is_some());
    }
}
