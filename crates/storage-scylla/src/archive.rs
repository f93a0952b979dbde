//! The archive query plan, independent of CQL: time buckets, which buckets a query reads
//! in which order, and the walk that turns bucket reads into one page with the exact
//! semantics of [`rookery_storage::archive::page_of`].
//!
//! Owns: bucket arithmetic ([`bucket_of`]), id ranges, [`plan_buckets`], [`run_query`]
//! and the batch chunking used by appends.
//! Must not touch: the session; reads go through [`ArchiveSource`], which the store
//! implements with prepared statements and the tests with a map.
//!
//! XEP-0313 §4.1 (`with`, `start`/`end` as id bounds), XEP-0059 §2 (RSM paging, counts).

use rookery_storage::Result;
use rookery_storage::archive::{ArchiveEntry, ArchiveId, ArchivePage, ArchiveQuery, WithFilter, matches, page_of};

/// Width of one archive partition: one week of one owner's messages. Part of the schema:
/// changing it needs a migration that rewrites the archive.
pub const ARCHIVE_BUCKET_MICROS: u64 = 7 * 24 * 60 * 60 * 1_000_000;

/// The time bucket (partition) of an id: microseconds since the epoch / one week.
pub fn bucket_of(id: ArchiveId) -> i32 {
    // id.micros() < 2^52, so the bucket is below 2^52 / 6.048e11 ≈ 7447 and fits an i32.
    i32::try_from(id.micros() / ARCHIVE_BUCKET_MICROS).unwrap_or(i32::MAX)
}

/// Inclusive id range a query covers (its exclusive `after`/`before` bounds, narrowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub lo: u64,
    pub hi: u64,
}

impl IdRange {
    pub const ALL: IdRange = IdRange { lo: 0, hi: u64::MAX };

    /// None when the bounds leave nothing (`after >= before`, `after = MAX`, `before = 0`).
    pub fn of(q: &ArchiveQuery) -> Option<IdRange> {
        let lo = match q.after {
            Some(a) => a.0.checked_add(1)?,
            None => 0,
        };
        let hi = match q.before {
            Some(b) => b.0.checked_sub(1)?,
            None => u64::MAX,
        };
        (lo <= hi).then_some(IdRange { lo, hi })
    }

    /// Ids strictly below `before`.
    pub fn below(before: ArchiveId) -> Option<IdRange> {
        before.0.checked_sub(1).map(|hi| IdRange { lo: 0, hi })
    }

    pub fn contains(&self, id: ArchiveId) -> bool {
        (self.lo..=self.hi).contains(&id.0)
    }

    /// First and last bucket the range touches.
    pub fn buckets(&self) -> (i32, i32) {
        (bucket_of(ArchiveId(self.lo)), bucket_of(ArchiveId(self.hi)))
    }
}

/// The buckets to read for `range`, in reading order: of the buckets that exist, those the
/// range touches, newest first when paging from the end, oldest first otherwise.
pub fn plan_buckets(existing: &[i32], range: IdRange, from_end: bool) -> Vec<i32> {
    let (first, last) = range.buckets();
    let mut plan: Vec<i32> = existing.iter().copied().filter(|b| (first..=last).contains(b)).collect();
    plan.sort_unstable();
    plan.dedup();
    if from_end {
        plan.reverse();
    }
    plan
}

/// Reads of one owner's archive, as the walk needs them.
pub(crate) trait ArchiveSource {
    /// Buckets holding messages (with this bare JID, when given) within `first..=last`,
    /// in any order.
    async fn buckets(&self, with: Option<&str>, first: i32, last: i32) -> Result<Vec<i32>>;
    /// Up to `limit` entries of one bucket within `range` that match `with` (bare and
    /// resource), newest first when `from_end`, oldest first otherwise.
    async fn rows(
        &self,
        bucket: i32,
        with: Option<&WithFilter>,
        range: IdRange,
        from_end: bool,
        limit: usize,
    ) -> Result<Vec<ArchiveEntry>>;
    /// How many entries of one bucket within `range` match `with`, counting at most `cap`.
    async fn count(&self, bucket: i32, with: Option<&WithFilter>, range: IdRange, cap: u64) -> Result<u64>;
    /// The entries with these ids (point lookups); unknown ids are skipped.
    async fn get(&self, ids: &[ArchiveId]) -> Result<Vec<ArchiveEntry>>;
}

/// One page of `q`, read bucket by bucket: at most `limit + 1` entries are fetched (the
/// extra one only tells whether there is more), and the count reads ids only, stopping
/// once it passes `count_cap`.
pub(crate) async fn run_query<S: ArchiveSource>(src: &S, q: &ArchiveQuery) -> Result<ArchivePage> {
    if let Some(ids) = &q.ids {
        // Point lookups, then the reference semantics on the (small) result.
        let range = IdRange::of(q);
        let mut wanted: Vec<ArchiveId> =
            ids.iter().copied().filter(|id| range.is_some_and(|r| r.contains(*id))).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut found: Vec<ArchiveEntry> = if wanted.is_empty() {
            Vec::new()
        } else {
            src.get(&wanted).await?.into_iter().filter(|e| matches(e, q)).collect()
        };
        found.sort_by_key(|e| e.id);
        found.dedup_by_key(|e| e.id);
        return Ok(page_of(found.iter(), q));
    }
    let Some(range) = IdRange::of(q) else {
        return Ok(page_of(std::iter::empty(), q));
    };
    let (first, last) = range.buckets();
    let existing = src.buckets(q.with.as_ref().map(|w| w.bare.as_str()), first, last).await?;
    let plan = plan_buckets(&existing, range, q.from_end);

    let want = q.limit.saturating_add(1);
    let mut got: Vec<ArchiveEntry> = Vec::new();
    for &bucket in &plan {
        if got.len() >= want {
            break;
        }
        let rows = src.rows(bucket, q.with.as_ref(), range, q.from_end, want - got.len()).await?;
        got.extend(rows.into_iter().filter(|e| matches(e, q)));
    }
    got.truncate(want);
    let more = got.len() > q.limit;
    got.truncate(q.limit);

    let cap = q.count_cap as u64;
    let count = if cap == 0 {
        None
    } else if !more {
        // Everything matching was read.
        let seen = got.len() as u64;
        (seen <= cap).then_some(seen)
    } else {
        let mut seen = 0u64;
        for &bucket in &plan {
            seen += src.count(bucket, q.with.as_ref(), range, cap + 1 - seen).await?;
            if seen > cap {
                break;
            }
        }
        (seen <= cap).then_some(seen)
    };
    if q.from_end {
        got.reverse();
    }
    Ok(ArchivePage { items: got, more, count })
}

/// Groups batch members so that no batch carries more than `max_bytes` of payload or
/// `max_count` statements (ScyllaDB and Cassandra reject oversized batches). A single
/// oversized member still gets a batch of its own.
pub fn chunk_by_size<T>(items: Vec<T>, size: impl Fn(&T) -> usize, max_bytes: usize, max_count: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let s = size(&item);
        if !current.is_empty() && (bytes.saturating_add(s) > max_bytes || current.len() >= max_count) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(s);
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const WEEK: u64 = ARCHIVE_BUCKET_MICROS;

    fn id_at(micros: u64, low: u64) -> ArchiveId {
        ArchiveId((micros << 12) | low)
    }

    #[test]
    fn bucket_arithmetic() {
        assert_eq!(bucket_of(ArchiveId(0)), 0);
        assert_eq!(bucket_of(id_at(WEEK - 1, 4095)), 0, "last id of week 0");
        assert_eq!(bucket_of(id_at(WEEK, 0)), 1, "first id of week 1");
        assert_eq!(bucket_of(ArchiveId::first_at(3 * WEEK)), 3);
        assert_eq!(bucket_of(ArchiveId::last_at(3 * WEEK - 1)), 2);
        // Weeks start on Thursdays at 00:00 UTC, like the epoch: 2026-01-01 is one.
        assert_eq!(bucket_of(ArchiveId::first_at(1_767_225_600_000_000)), 2922);
        assert_eq!(bucket_of(ArchiveId::last_at(1_767_225_600_000_000 - 1)), 2921);
        assert_eq!(bucket_of(ArchiveId(u64::MAX)), 7446, "the largest id still fits");
    }

    #[test]
    fn id_range_from_exclusive_bounds() {
        let q = |after: Option<u64>, before: Option<u64>| ArchiveQuery {
            after: after.map(ArchiveId),
            before: before.map(ArchiveId),
            ..ArchiveQuery::default()
        };
        assert_eq!(IdRange::of(&q(None, None)), Some(IdRange::ALL));
        assert_eq!(IdRange::of(&q(Some(10), Some(20))), Some(IdRange { lo: 11, hi: 19 }));
        assert_eq!(IdRange::of(&q(Some(10), Some(12))), Some(IdRange { lo: 11, hi: 11 }));
        assert_eq!(IdRange::of(&q(Some(10), Some(11))), None, "nothing strictly between");
        assert_eq!(IdRange::of(&q(Some(20), Some(10))), None);
        assert_eq!(IdRange::of(&q(Some(u64::MAX), None)), None);
        assert_eq!(IdRange::of(&q(None, Some(0))), None);
        assert_eq!(IdRange::below(ArchiveId(5)), Some(IdRange { lo: 0, hi: 4 }));
        assert_eq!(IdRange::below(ArchiveId(0)), None);
    }

    #[test]
    fn plan_reads_only_touched_existing_buckets_in_paging_order() {
        let existing = [7, 2, 5, 9, 5, 3];
        let range = IdRange { lo: ArchiveId::first_at(3 * WEEK).0, hi: ArchiveId::last_at(8 * WEEK - 1).0 };
        assert_eq!(range.buckets(), (3, 7));
        assert_eq!(plan_buckets(&existing, range, false), vec![3, 5, 7], "oldest first going forward");
        assert_eq!(plan_buckets(&existing, range, true), vec![7, 5, 3], "newest first from the end");
        assert_eq!(plan_buckets(&existing, IdRange::ALL, true), vec![9, 7, 5, 3, 2]);
        assert!(plan_buckets(&[], IdRange::ALL, false).is_empty());
        // A range inside one week reads that week only, if it exists.
        let one = IdRange { lo: id_at(5 * WEEK + 10, 0).0, hi: id_at(5 * WEEK + 20, 0).0 };
        assert_eq!(plan_buckets(&existing, one, false), vec![5]);
        assert!(plan_buckets(&[4, 6], one, true).is_empty());
    }

    #[test]
    fn chunking_respects_bytes_and_count() {
        let sizes = vec![10, 10, 10, 50, 100, 5, 5, 5, 5];
        let chunks = chunk_by_size(sizes.clone(), |s| *s, 60, 3);
        assert_eq!(chunks, vec![vec![10, 10, 10], vec![50], vec![100], vec![5, 5, 5], vec![5]]);
        assert_eq!(chunk_by_size(sizes.clone(), |s| *s, usize::MAX, usize::MAX), vec![sizes]);
        assert!(chunk_by_size(Vec::<usize>::new(), |s| *s, 1, 1).is_empty());
    }

    /// An archive in a map, answering the walk's reads the way the CQL statements do.
    struct MapSource {
        entries: BTreeMap<ArchiveId, ArchiveEntry>,
        rows_read: AtomicUsize,
        bucket_reads: AtomicUsize,
    }

    impl MapSource {
        fn new(entries: impl IntoIterator<Item = ArchiveEntry>) -> Self {
            MapSource {
                entries: entries.into_iter().map(|e| (e.id, e)).collect(),
                rows_read: AtomicUsize::new(0),
                bucket_reads: AtomicUsize::new(0),
            }
        }

        fn in_bucket<'a>(
            &'a self,
            bucket: i32,
            with: Option<&'a WithFilter>,
            range: IdRange,
        ) -> impl DoubleEndedIterator<Item = &'a ArchiveEntry> + 'a {
            self.entries.range(ArchiveId(range.lo)..=ArchiveId(range.hi)).map(|(_, e)| e).filter(move |e| {
                bucket_of(e.id) == bucket
                    && with
                        .is_none_or(|w| e.with == w.bare && w.resource.as_deref().is_none_or(|r| r == e.with_resource))
            })
        }
    }

    impl ArchiveSource for MapSource {
        async fn buckets(&self, with: Option<&str>, first: i32, last: i32) -> Result<Vec<i32>> {
            let mut b: Vec<i32> = self
                .entries
                .values()
                .filter(|e| with.is_none_or(|w| e.with == w))
                .map(|e| bucket_of(e.id))
                .filter(|b| (first..=last).contains(b))
                .collect();
            b.dedup();
            // Any order is allowed: hand them out shuffled-ish.
            b.reverse();
            Ok(b)
        }

        async fn rows(
            &self,
            bucket: i32,
            with: Option<&WithFilter>,
            range: IdRange,
            from_end: bool,
            limit: usize,
        ) -> Result<Vec<ArchiveEntry>> {
            self.bucket_reads.fetch_add(1, Ordering::Relaxed);
            let it = self.in_bucket(bucket, with, range);
            let rows: Vec<ArchiveEntry> =
                if from_end { it.rev().take(limit).cloned().collect() } else { it.take(limit).cloned().collect() };
            self.rows_read.fetch_add(rows.len(), Ordering::Relaxed);
            Ok(rows)
        }

        async fn count(&self, bucket: i32, with: Option<&WithFilter>, range: IdRange, cap: u64) -> Result<u64> {
            Ok(self.in_bucket(bucket, with, range).take(usize::try_from(cap).unwrap_or(usize::MAX)).count() as u64)
        }

        async fn get(&self, ids: &[ArchiveId]) -> Result<Vec<ArchiveEntry>> {
            Ok(ids.iter().filter_map(|id| self.entries.get(id).cloned()).collect())
        }
    }

    /// xorshift64*: deterministic test data without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn archive(rng: &mut Rng, n: usize) -> Vec<ArchiveEntry> {
        let start = 1_767_225_600_000_000u64;
        let mut t = start;
        (0..n)
            .map(|i| {
                // Bursts within a week, and gaps of several weeks (empty buckets).
                t += match rng.below(10) {
                    0 => 3 * WEEK + rng.below(WEEK),
                    1 => WEEK / 2,
                    _ => 1 + rng.below(60_000_000),
                };
                let with = ["a@x.example", "b@x.example", "room@muc.example"][rng.below(3) as usize];
                let res = ["", "phone", "laptop"][rng.below(3) as usize];
                ArchiveEntry {
                    id: id_at(t, rng.below(4096)),
                    with: with.to_owned(),
                    with_resource: res.to_owned(),
                    outgoing: rng.below(2) == 0,
                    stanza: Bytes::from(format!("<message n='{i}'/>")),
                }
            })
            .collect()
    }

    fn random_query(rng: &mut Rng, ids: &[ArchiveId]) -> ArchiveQuery {
        let pick = |rng: &mut Rng| {
            let id = ids[rng.below(ids.len() as u64) as usize];
            // Exactly an existing id, or just beside one.
            match rng.below(3) {
                0 => id,
                1 => ArchiveId(id.0 + 1),
                _ => ArchiveId(id.0 - 1),
            }
        };
        let with = match rng.below(4) {
            0 => Some(WithFilter { bare: "a@x.example".into(), resource: None }),
            1 => Some(WithFilter { bare: "room@muc.example".into(), resource: Some("phone".into()) }),
            2 => Some(WithFilter { bare: "nobody@x.example".into(), resource: None }),
            _ => None,
        };
        ArchiveQuery {
            with,
            after: (rng.below(3) == 0).then(|| pick(rng)),
            before: (rng.below(3) == 0).then(|| pick(rng)),
            ids: (rng.below(8) == 0).then(|| (0..rng.below(6)).map(|_| pick(rng)).collect()),
            limit: [0, 1, 2, 5, 10, 50, 1000][rng.below(7) as usize],
            from_end: rng.below(2) == 0,
            count_cap: [0, 1, 7, 100, 10_000][rng.below(5) as usize],
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn walk_matches_the_reference_semantics_on_random_queries() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let entries = archive(&mut rng, 400);
        let ids: Vec<ArchiveId> = entries.iter().map(|e| e.id).collect();
        let buckets: std::collections::BTreeSet<i32> = ids.iter().map(|id| bucket_of(*id)).collect();
        assert!(buckets.len() > 20, "the data spans many buckets ({})", buckets.len());
        let src = MapSource::new(entries.clone());
        block_on(async {
            for i in 0..3000 {
                let q = random_query(&mut rng, &ids);
                let want = page_of(src.entries.values(), &q);
                let got = run_query(&src, &q).await.unwrap();
                assert_eq!(got, want, "query #{i}: {q:?}");
            }
        });
    }

    #[test]
    fn walk_reads_at_most_limit_plus_one_rows_and_stops_early() {
        let mut rng = Rng(42);
        let entries = archive(&mut rng, 300);
        let src = MapSource::new(entries);
        block_on(async {
            let q = ArchiveQuery { limit: 10, from_end: true, ..ArchiveQuery::default() };
            let page = run_query(&src, &q).await.unwrap();
            assert_eq!(page.items.len(), 10);
            assert!(page.more);
            assert_eq!(page.count, None);
            assert!(page.items.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
            assert_eq!(page.items.last().map(|e| e.id), src.entries.keys().next_back().copied(), "newest page");
            assert_eq!(src.rows_read.load(Ordering::Relaxed), 11, "limit + 1 rows");
            let reads = src.bucket_reads.load(Ordering::Relaxed);
            assert!(reads <= 11, "stops after the page is full ({reads} bucket reads)");
        });
    }

    #[test]
    fn count_stops_past_the_cap() {
        let mut rng = Rng(7);
        let src = MapSource::new(archive(&mut rng, 200));
        block_on(async {
            let q = ArchiveQuery { limit: 5, count_cap: 50, ..ArchiveQuery::default() };
            let page = run_query(&src, &q).await.unwrap();
            assert_eq!(page.count, None, "200 > cap 50");
            let q = ArchiveQuery { limit: 5, count_cap: 200, ..ArchiveQuery::default() };
            assert_eq!(run_query(&src, &q).await.unwrap().count, Some(200));
            let q = ArchiveQuery { limit: 0, count_cap: 1000, ..ArchiveQuery::default() };
            let page = run_query(&src, &q).await.unwrap();
            assert!(page.items.is_empty());
            assert!(page.more, "limit 0 reports whether anything matches");
            assert_eq!(page.count, Some(200));
        });
    }

    #[test]
    fn empty_archive_and_empty_ranges() {
        let src = MapSource::new(Vec::new());
        block_on(async {
            let q = ArchiveQuery { limit: 10, count_cap: 10, ..ArchiveQuery::default() };
            assert_eq!(run_query(&src, &q).await.unwrap(), ArchivePage { items: vec![], more: false, count: Some(0) });
            let q = ArchiveQuery { after: Some(ArchiveId(9)), before: Some(ArchiveId(10)), limit: 3, ..q };
            assert_eq!(run_query(&src, &q).await.unwrap().count, Some(0));
        });
    }
}
