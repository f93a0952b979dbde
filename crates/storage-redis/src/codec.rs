//! The stored form of a `SessionEntry` (one value of the per-user hash `rk:{user}:s`).
//!
//! Owns: the versioned encoding. Must not touch: Redis connections or key names.
//!
//! Layout of version 2:
//!
//! ```text
//! 0x02 <edge decimal> ' ' <conn decimal> '\n'        -- ASCII header, read by the Lua scripts
//! i8 priority, u8 flags (available, has presence)
//! u16 len + full JID, [u32 len + presence stanza], u16 count + (u16 len + JID)* directed,
//! u16 count + (u16 len + key, u32 len + value)* extension slots
//! ```
//!
//! Version 1 had no slots but three flag bits (interested, blocklist, carbons); it is
//! still read, the bits becoming the slots `roster`, `blocklist` and `carbons`.
//!
//! The location sits in an ASCII header so the compare-and-delete scripts can match it
//! as strings: Lua 5.1 numbers are doubles and would round a `u64` connection id.
//! A decoder meeting an unknown version byte refuses the value, so a newer writer's
//! format is never misread (a rolling upgrade adds a version, then switches writers).

use bytes::Bytes;
use rookery_core::{Extensions, Location, SessionEntry};
use rookery_jid::{FullJid, Jid};

pub(crate) const VERSION: u8 = 2;
const VERSION_1: u8 = 1;

const AVAILABLE: u8 = 1;
/// Version 1 only: the flags that are extension slots now, with their slot keys.
const V1_FLAG_SLOTS: [(u8, &str); 3] = [(1 << 1, "roster"), (1 << 2, "blocklist"), (1 << 3, "carbons")];
const HAS_PRESENCE: u8 = 1 << 4;

/// Why a stored value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown session encoding version {0}")]
    Version(u8),
    #[error("truncated or malformed session value")]
    Malformed,
    #[error("invalid JID in session value: {0}")]
    Jid(String),
}

pub(crate) fn encode(e: &SessionEntry) -> Vec<u8> {
    let jid = e.jid.as_str().as_bytes();
    let presence = e.presence.as_deref();
    let directed_len: usize = e.directed.iter().map(|j| 2 + j.as_str().len()).sum();
    let mut out = Vec::with_capacity(32 + jid.len() + presence.map_or(0, |p| 4 + p.len()) + directed_len);
    out.push(VERSION);
    out.extend_from_slice(format!("{} {}\n", e.loc.edge, e.loc.conn).as_bytes());
    out.extend_from_slice(&e.priority.to_be_bytes());
    let mut flags = 0;
    for (on, bit) in [(e.available, AVAILABLE), (presence.is_some(), HAS_PRESENCE)] {
        if on {
            flags |= bit;
        }
    }
    out.push(flags);
    put_short(&mut out, jid);
    if let Some(p) = presence {
        // A stanza is bounded by the edge's size limit, far below 4 GiB.
        out.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&p[..p.len().min(u32::MAX as usize)]);
    }
    let directed = &e.directed[..e.directed.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(directed.len() as u16).to_be_bytes());
    for j in directed {
        put_short(&mut out, j.as_str().as_bytes());
    }
    let slots = e.ext.len().min(u16::MAX as usize);
    out.extend_from_slice(&(slots as u16).to_be_bytes());
    for (key, value) in e.ext.iter().take(slots) {
        put_short(&mut out, key.as_bytes());
        let len = value.len().min(u32::MAX as usize);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&value[..len]);
    }
    out
}

/// JIDs are at most 3 × 1023 bytes plus separators (RFC 7622 §3.1), so a u16 length fits.
fn put_short(out: &mut Vec<u8>, s: &[u8]) {
    let len = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&s[..len]);
}

pub(crate) fn decode(v: &[u8]) -> Result<SessionEntry, DecodeError> {
    let mut r = Reader(v);
    let version = r.u8()?;
    if version != VERSION && version != VERSION_1 {
        return Err(DecodeError::Version(version));
    }
    let header_end = r.0.iter().position(|&b| b == b'\n').ok_or(DecodeError::Malformed)?;
    let header = std::str::from_utf8(&r.0[..header_end]).map_err(|_| DecodeError::Malformed)?;
    let (edge, conn) = header.split_once(' ').ok_or(DecodeError::Malformed)?;
    let loc = Location {
        edge: edge.parse().map_err(|_| DecodeError::Malformed)?,
        conn: conn.parse().map_err(|_| DecodeError::Malformed)?,
    };
    r.0 = &r.0[header_end + 1..];
    let priority = i8::from_be_bytes([r.u8()?]);
    let flags = r.u8()?;
    let jid = FullJid::parse(r.short_str()?).map_err(|e| DecodeError::Jid(e.to_string()))?;
    let presence = if flags & HAS_PRESENCE != 0 {
        let len = u32::from_be_bytes(r.array()?) as usize;
        Some(Bytes::copy_from_slice(r.take(len)?))
    } else {
        None
    };
    let count = u16::from_be_bytes(r.array()?);
    let mut directed = Vec::with_capacity(count as usize);
    for _ in 0..count {
        directed.push(Jid::parse(r.short_str()?).map_err(|e| DecodeError::Jid(e.to_string()))?);
    }
    let mut ext = Extensions::new();
    if version == VERSION_1 {
        for (bit, key) in V1_FLAG_SLOTS {
            if flags & bit != 0 {
                ext.set_raw(key, Some(Bytes::new()));
            }
        }
    } else {
        let count = u16::from_be_bytes(r.array()?);
        for _ in 0..count {
            let key = r.short_str()?.to_owned();
            let len = u32::from_be_bytes(r.array()?) as usize;
            ext.set_raw(&key, Some(Bytes::copy_from_slice(r.take(len)?)));
        }
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Malformed);
    }
    Ok(SessionEntry { jid, loc, priority, available: flags & AVAILABLE != 0, presence, directed, ext })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Malformed)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn short_str(&mut self) -> Result<&'a str, DecodeError> {
        let len = u16::from_be_bytes(self.array()?) as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn full() -> SessionEntry {
        let mut e = SessionEntry::new(
            FullJid::parse("alice@example.org/phone").unwrap(),
            Location { edge: 4_000_000_000, conn: u64::MAX - 3 },
        );
        e.priority = -7;
        e.available = true;
        e.presence = Some(Bytes::from_static(b"<presence><show>away</show></presence>"));
        e.directed = vec![Jid::parse("room@muc.example.org/nick").unwrap(), Jid::parse("bob@example.org").unwrap()];
        e.ext.set_raw("carbons", Some(Bytes::new()));
        e.ext.set_raw("csi", Some(Bytes::from_static(&[0, b'\n', 255])));
        e
    }

    fn same(a: &SessionEntry, b: &SessionEntry) {
        assert_eq!(a.jid, b.jid);
        assert_eq!(a.loc, b.loc);
        assert_eq!(a.priority, b.priority);
        assert_eq!(a.available, b.available);
        assert_eq!(a.presence, b.presence);
        assert_eq!(a.directed, b.directed);
        assert_eq!(a.ext, b.ext);
    }

    #[test]
    fn round_trips_every_field() {
        let e = full();
        let v = encode(&e);
        assert!(v.starts_with(format!("\x02{} {}\n", e.loc.edge, e.loc.conn).as_bytes()));
        same(&decode(&v).unwrap(), &e);

        let mut bare = full();
        bare.presence = None;
        bare.directed.clear();
        bare.available = false;
        bare.ext = Extensions::new();
        bare.priority = 127;
        same(&decode(&encode(&bare)).unwrap(), &bare);
    }

    #[test]
    fn rejects_unknown_versions_and_truncation() {
        let mut v = encode(&full());
        for cut in 0..v.len() {
            assert!(decode(&v[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
        v.push(0);
        assert_eq!(decode(&v).unwrap_err(), DecodeError::Malformed);
        v[0] = 3;
        assert_eq!(decode(&v).unwrap_err(), DecodeError::Version(3));
    }

    #[test]
    fn version_1_values_are_read_with_their_flags_as_slots() {
        // A version-1 value as an older router wrote it: interested and carbons set.
        let mut v = b"\x017 9\n".to_vec();
        v.push(3u8); // priority
        v.push(1 | (1 << 1) | (1 << 3)); // available, interested, carbons
        let jid = b"alice@example.org/phone";
        v.extend_from_slice(&(jid.len() as u16).to_be_bytes());
        v.extend_from_slice(jid);
        v.extend_from_slice(&0u16.to_be_bytes()); // no directed presences
        let e = decode(&v).unwrap();
        assert_eq!((e.loc, e.priority, e.available), (Location { edge: 7, conn: 9 }, 3, true));
        let keys: Vec<_> = e.ext.iter().map(|(k, _)| k.to_owned()).collect();
        assert_eq!(keys, ["carbons", "roster"]);
    }
}
