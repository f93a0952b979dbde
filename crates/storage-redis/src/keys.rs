//! Redis key and channel names. Every key of one user, or of one edge, carries the same
//! hash tag (`{...}`), so the scripts that touch them run on one Redis Cluster slot.
//!
//! Owns: the naming scheme. The Lua scripts in `scripts.rs` build the old edge's set name
//! (`rk:edge:{<id>}:sessions`) themselves in standalone mode; keep the two in step.

use rookery_jid::{BareJid, FullJid};

/// Pub/sub channel carrying the bare JID of every user whose sessions changed.
pub(crate) const INVALIDATE: &str = "rk:inv";
/// Sorted set: edge id → time of its last heartbeat (Redis server clock, ms).
pub(crate) const EDGES: &str = "rk:edges";
/// Random value created once per Redis dataset; a new value means the data was lost.
pub(crate) const GENERATION: &str = "rk:gen";
/// Number of registered sessions, cluster-wide.
pub(crate) const COUNT: &str = "rk:count";

/// Hash: resource → encoded `SessionEntry`.
pub(crate) fn user(bare: &BareJid) -> String {
    format!("rk:{{{}}}:s", bare.as_str())
}

/// Set of "<full jid>\n<conn>" for the sessions on one edge.
pub(crate) fn edge_sessions(edge: u32) -> String {
    format!("rk:edge:{{{edge}}}:sessions")
}

/// The sessions a purge took over from `edge_sessions`, until `finish_purge`.
pub(crate) fn edge_purging(edge: u32) -> String {
    format!("rk:edge:{{{edge}}}:purging")
}

/// The epoch the edge sent with its last heartbeat (expires after the heartbeat's ttl).
pub(crate) fn edge_epoch(edge: u32) -> String {
    format!("rk:edge:{{{edge}}}:epoch")
}

/// The epoch whose sessions a purge removed.
pub(crate) fn edge_purged(edge: u32) -> String {
    format!("rk:edge:{{{edge}}}:purged")
}

/// Lock making one purge of an edge win cluster-wide.
pub(crate) fn edge_purge_lock(edge: u32) -> String {
    format!("rk:edge:{{{edge}}}:purge-lock")
}

pub(crate) fn member(jid: &FullJid, conn: u64) -> String {
    format!("{}\n{conn}", jid.as_str())
}

/// Splits an edge-set member back into the full JID and connection id.
pub(crate) fn parse_member(m: &[u8]) -> Option<(FullJid, u64)> {
    let s = std::str::from_utf8(m).ok()?;
    let (jid, conn) = s.rsplit_once('\n')?;
    Some((FullJid::parse(jid).ok()?, conn.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn user_keys_share_the_user_hash_tag_and_members_round_trip() {
        let b = BareJid::parse("alice@example.org").unwrap();
        assert_eq!(user(&b), "rk:{alice@example.org}:s");
        assert_eq!(edge_sessions(7), "rk:edge:{7}:sessions");
        let j = FullJid::parse("alice@example.org/a b").unwrap();
        let m = member(&j, 42);
        assert_eq!(parse_member(m.as_bytes()), Some((j, 42)));
        assert_eq!(parse_member(b"alice@example.org/x\nnot-a-number"), None);
    }
}
