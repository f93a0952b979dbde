//! Message archives: the shape of archived data every backend stores (XEP-0313 §4-§6),
//! archive ids that double as XEP-0359 stanza-ids, and archiving preferences.
//!
//! Owns: [`ArchiveStore`], [`ArchiveId`] (time-ordered 64-bit ids), [`ArchiveQuery`] (the
//! query a MAM request reduces to), [`ArchivePrefs`].
//! Must not touch: XML. Archived stanzas are opaque bytes; the MAM module decides what is
//! archived, parses forms and builds result stanzas.
//!
//! An archive belongs to an *owner* bare JID: a user (1:1 history) or, later, a MUC room
//! (groupchat history, XEP-0313 §5). Each archived message is written once per owner.
//!
//! Ids are time-ordered: the upper 52 bits are microseconds since the Unix epoch, then
//! 10 bits of node number, then a 2-bit sequence (see [`ArchiveIdGen`]). So the archive
//! order is the id order, `start`/`end` filters are id ranges, and a message's timestamp
//! is recovered from its id without storing it separately.

use crate::Result;
use async_trait::async_trait;
use bytes::Bytes;
use rookery_jid::BareJid;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Bits below the microsecond timestamp in an id.
pub const ID_TIME_SHIFT: u32 = 12;
/// Bits of node number inside an id (so up to 1024 routers mint ids without collisions).
pub const ID_NODE_BITS: u32 = 10;
const ID_SEQ_BITS: u32 = ID_TIME_SHIFT - ID_NODE_BITS;
const ID_SEQ_MAX: u64 = (1 << ID_SEQ_BITS) - 1;

/// A time-ordered archive id, also the XEP-0359 stanza-id of the archived message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArchiveId(pub u64);

impl ArchiveId {
    /// Microseconds since the Unix epoch at which the message was archived.
    pub fn micros(self) -> u64 {
        self.0 >> ID_TIME_SHIFT
    }
    /// The smallest id minted at or after `micros`.
    pub fn first_at(micros: u64) -> ArchiveId {
        ArchiveId(micros.saturating_mul(1 << ID_TIME_SHIFT))
    }
    /// The largest id minted at or before `micros`.
    pub fn last_at(micros: u64) -> ArchiveId {
        ArchiveId(micros.saturating_mul(1 << ID_TIME_SHIFT) | ((1 << ID_TIME_SHIFT) - 1))
    }
    /// The wire form: 16 lowercase hex digits, so string order is archive order.
    pub fn encode(self) -> String {
        format!("{:016x}", self.0)
    }
    /// Parses the wire form; anything else (ids are opaque to clients, who may send
    /// garbage) is `None`.
    pub fn parse(s: &str) -> Option<ArchiveId> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(ArchiveId)
    }
}

impl std::fmt::Display for ArchiveId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Mints strictly increasing ids for one node. When more than four ids are asked for in
/// one microsecond the clock part runs ahead by a microsecond; it never goes backwards,
/// even if the wall clock does.
pub struct ArchiveIdGen {
    node: u64,
    last: Mutex<(u64, u64)>,
}

impl ArchiveIdGen {
    /// `node` is this router's number in the cluster (0 on a single node); only its low
    /// [`ID_NODE_BITS`] bits are used.
    pub fn new(node: u16) -> Self {
        ArchiveIdGen { node: u64::from(node) & ((1 << ID_NODE_BITS) - 1), last: Mutex::new((0, 0)) }
    }

    pub fn next(&self) -> ArchiveId {
        self.next_at(now_micros())
    }

    /// The next id given the current time; exposed for tests.
    pub fn next_at(&self, now: u64) -> ArchiveId {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (micros, seq) = if now > last.0 {
            (now, 0)
        } else if last.1 < ID_SEQ_MAX {
            (last.0, last.1 + 1)
        } else {
            (last.0 + 1, 0)
        };
        *last = (micros, seq);
        ArchiveId((micros << ID_TIME_SHIFT) | (self.node << ID_SEQ_BITS) | seq)
    }
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One archived message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    pub id: ArchiveId,
    /// Bare JID of the other party (for a room archive: the occupant's real bare JID or
    /// the room JID itself), normalised.
    pub with: String,
    /// Resource of the other party, empty when none (XEP-0313 §4.1.1: a full JID in
    /// `with` matches this exactly).
    pub with_resource: String,
    /// True when the owner sent the message.
    pub outgoing: bool,
    /// The message stanza as it was delivered (with its stanza-id), opaque bytes.
    pub stanza: Bytes,
}

/// One row to append: an entry in one owner's archive.
#[derive(Debug, Clone)]
pub struct ArchiveRow {
    pub owner: BareJid,
    pub entry: ArchiveEntry,
}

/// Filter on the other party of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithFilter {
    /// Normalised bare JID.
    pub bare: String,
    /// When set, only this exact resource matches.
    pub resource: Option<String>,
}

/// A MAM query reduced to id ranges. `start`/`end`, `after-id`/`before-id` and the RSM
/// `after`/`before` all narrow the same exclusive bounds; the MAM module combines them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    pub with: Option<WithFilter>,
    /// Only ids strictly greater than this.
    pub after: Option<ArchiveId>,
    /// Only ids strictly smaller than this.
    pub before: Option<ArchiveId>,
    /// Only these ids (XEP-0313 `ids` field); unknown ids are skipped.
    pub ids: Option<Vec<ArchiveId>>,
    /// Page size; 0 returns no items (only `count`, XEP-0059 §2.7).
    pub limit: usize,
    /// True: the page is the *last* `limit` matching items (RSM `<before/>`, paging
    /// backwards); false: the first `limit`. Items always come back oldest first.
    pub from_end: bool,
    /// Count the whole matching set, but stop counting after this many and report no
    /// count (XEP-0059 §2.1 lets a server omit an expensive count). 0: do not count.
    pub count_cap: usize,
}

/// One page of results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchivePage {
    /// Oldest first.
    pub items: Vec<ArchiveEntry>,
    /// True when the matching set has items beyond this page in the paging direction
    /// (after the last item when paging forwards, before the first when `from_end`).
    pub more: bool,
    /// Size of the whole matching set (all pages), when counted within `count_cap`.
    pub count: Option<u64>,
}

/// XEP-0313 §5 default archiving behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ArchiveDefault {
    #[default]
    Always,
    Never,
    Roster,
}

/// XEP-0313 §5 preferences. JIDs are normalised bare or full JID strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ArchivePrefs {
    pub default: ArchiveDefault,
    pub always: Vec<String>,
    pub never: Vec<String>,
}

#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Appends rows (each to its owner's archive). When this returns Ok every row is
    /// durable. Appending an id that already exists in that owner's archive replaces it.
    async fn append(&self, rows: &[ArchiveRow]) -> Result<()>;
    /// [`append`](Self::append) for rows whose ids were just minted by an [`ArchiveIdGen`]
    /// and never appended before (the router's write path): a backend may skip the
    /// replacement bookkeeping, which costs a read per row on a log-structured store.
    /// Appending an id that exists through this call is a caller bug; the backend may then
    /// leave a stale `with` index row behind.
    async fn append_new(&self, rows: &[ArchiveRow]) -> Result<()> {
        self.append(rows).await
    }
    /// One page of the owner's archive, see [`ArchiveQuery`].
    async fn query(&self, owner: &BareJid, q: &ArchiveQuery) -> Result<ArchivePage>;
    /// First and last entry ids of the archive (XEP-0313 §6.1 metadata), None when empty.
    async fn bounds(&self, owner: &BareJid) -> Result<Option<(ArchiveId, ArchiveId)>>;
    /// Removes entries with ids strictly smaller than `before` (retention); returns how
    /// many were removed.
    async fn remove_before(&self, owner: &BareJid, before: ArchiveId) -> Result<u64>;
    /// Removes the whole archive and the preferences.
    async fn delete_all(&self, owner: &BareJid) -> Result<()>;
    /// None when the owner never set preferences.
    async fn get_prefs(&self, owner: &BareJid) -> Result<Option<ArchivePrefs>>;
    async fn set_prefs(&self, owner: &BareJid, prefs: &ArchivePrefs) -> Result<()>;
}

/// Filters a sorted slice of entries the way every backend must; the in-memory backend
/// uses it directly and the others follow the same rules with range scans.
pub fn page_of<'a, I>(matching: I, q: &ArchiveQuery) -> ArchivePage
where
    I: DoubleEndedIterator<Item = &'a ArchiveEntry>,
{
    let filtered = matching.filter(|e| matches(e, q));
    let ordered: Box<dyn Iterator<Item = &'a ArchiveEntry> + '_> =
        if q.from_end { Box::new(filtered.rev()) } else { Box::new(filtered) };
    let cap = q.count_cap as u64;
    let mut items = Vec::new();
    let mut seen = 0u64;
    let mut more = false;
    for e in ordered {
        seen += 1;
        if items.len() < q.limit {
            items.push(e.clone());
        } else {
            more = true;
        }
        if more && (cap == 0 || seen > cap) {
            break;
        }
    }
    if q.from_end {
        items.reverse();
    }
    ArchivePage { items, more, count: (cap > 0 && seen <= cap).then_some(seen) }
}

/// Whether one entry passes the query's filters (bounds, `with`, `ids`).
pub fn matches(e: &ArchiveEntry, q: &ArchiveQuery) -> bool {
    if q.after.is_some_and(|a| e.id <= a) || q.before.is_some_and(|b| e.id >= b) {
        return false;
    }
    if let Some(w) = &q.with {
        if e.with != w.bare {
            return false;
        }
        if w.resource.as_deref().is_some_and(|r| r != e.with_resource) {
            return false;
        }
    }
    if let Some(ids) = &q.ids
        && !ids.contains(&e.id)
    {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_increase_within_one_microsecond_and_when_the_clock_goes_back() {
        let g = ArchiveIdGen::new(3);
        let ids: Vec<_> = (0..10).map(|_| g.next_at(1_000)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let back = g.next_at(5);
        assert!(back > ids[9]);
        assert_eq!(ids[0].micros(), 1_000);
        // four per microsecond, then the clock part runs ahead
        assert_eq!(ids[4].micros(), 1_001);
    }

    #[test]
    fn node_bits_keep_two_nodes_apart() {
        let a = ArchiveIdGen::new(1).next_at(77);
        let b = ArchiveIdGen::new(2).next_at(77);
        assert_ne!(a, b);
        assert_eq!(a.micros(), b.micros());
    }

    #[test]
    fn wire_form_round_trips_and_rejects_junk() {
        let id = ArchiveId(0x0123_4567_89ab_cdef);
        assert_eq!(id.encode(), "0123456789abcdef");
        assert_eq!(ArchiveId::parse(&id.encode()), Some(id));
        for bad in
            ["", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdefa", "x123456789abcdef", "+123456789abcdef"]
        {
            assert_eq!(ArchiveId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn time_bounds_bracket_every_id_of_that_microsecond() {
        let g = ArchiveIdGen::new(1023);
        let id = g.next_at(42);
        assert!(ArchiveId::first_at(42) <= id && id <= ArchiveId::last_at(42));
        assert!(ArchiveId::last_at(41) < id && id < ArchiveId::first_at(43));
    }
}
