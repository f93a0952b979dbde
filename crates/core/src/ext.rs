//! Session extensions: typed, per-module slots on the one session record (DESIGN §3,
//! "session extensions"). A module declares a type implementing [`SessionExt`] and reads
//! or writes it on a `SessionEntry`; the registries (memory, Redis), the cluster protocol
//! and the edge carry the slots as opaque `(key, bytes)` pairs and never interpret them.
//! So a feature that keeps per-session state (carbons, CSI, stream management, PEP
//! `+notify`) adds a type here in its module, not a field in four places.
//!
//! Owns: the opaque container and the typed access.
//! Must not touch: any one module's encoding; keys are the modules' own.

use bytes::Bytes;

/// Per-session data of one module, stored under `KEY`.
pub trait SessionExt: Sized + Send + Sync + 'static {
    /// Unique per module; stable across versions (it is stored in Redis).
    const KEY: &'static str;
    fn encode(&self) -> Bytes;
    /// `None` when the bytes are not understood (e.g. written by a newer version): the
    /// slot then reads as absent.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// Declares a unit `SessionExt` whose presence is the whole information (a flag).
#[macro_export]
macro_rules! flag_ext {
    ($(#[$doc:meta])* $name:ident, $key:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name;
        impl $crate::ext::SessionExt for $name {
            const KEY: &'static str = $key;
            fn encode(&self) -> bytes::Bytes {
                bytes::Bytes::new()
            }
            fn decode(_: &[u8]) -> Option<Self> {
                Some($name)
            }
        }
    };
}

/// The opaque slots of one session: `(key, bytes)`, sorted by key, at most one per key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions(Vec<(String, Bytes)>);

impl Extensions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get_raw(&self, key: &str) -> Option<&Bytes> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| &self.0[i].1)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get_raw(key).is_some()
    }

    /// Sets or (with `None`) clears a slot.
    pub fn set_raw(&mut self, key: &str, value: Option<Bytes>) {
        match (self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)), value) {
            (Ok(i), Some(v)) => self.0[i].1 = v,
            (Ok(i), None) => {
                self.0.remove(i);
            }
            (Err(i), Some(v)) => self.0.insert(i, (key.to_owned(), v)),
            (Err(_), None) => {}
        }
    }

    pub fn get<T: SessionExt>(&self) -> Option<T> {
        self.get_raw(T::KEY).and_then(|b| T::decode(b))
    }

    pub fn has<T: SessionExt>(&self) -> bool {
        self.contains(T::KEY)
    }

    pub fn set<T: SessionExt>(&mut self, value: Option<T>) {
        self.set_raw(T::KEY, value.map(|v| v.encode()));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl FromIterator<(String, Bytes)> for Extensions {
    fn from_iter<I: IntoIterator<Item = (String, Bytes)>>(iter: I) -> Self {
        let mut e = Extensions::new();
        for (k, v) in iter {
            e.set_raw(&k, Some(v));
        }
        e
    }
}

crate::flag_ext!(
    /// Requested the roster: an "interested resource" that gets roster pushes (RFC 6121
    /// §2.1.6). Kept by the kernel's roster code.
    RosterInterest,
    "roster"
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Count(u8);
    impl SessionExt for Count {
        const KEY: &'static str = "count";
        fn encode(&self) -> Bytes {
            Bytes::copy_from_slice(&[self.0])
        }
        fn decode(b: &[u8]) -> Option<Self> {
            (b.len() == 1).then(|| Count(b[0]))
        }
    }

    #[test]
    fn slots_are_typed_sorted_and_cleared() {
        let mut e = Extensions::new();
        assert!(!e.has::<RosterInterest>());
        e.set(Some(Count(7)));
        e.set(Some(RosterInterest));
        e.set_raw("a-first", Some(Bytes::from_static(b"x")));
        assert_eq!(e.get::<Count>(), Some(Count(7)));
        assert!(e.has::<RosterInterest>());
        let keys: Vec<_> = e.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a-first", "count", "roster"]);
        e.set(Some(Count(9)));
        assert_eq!(e.get::<Count>(), Some(Count(9)));
        assert_eq!(e.len(), 3);
        e.set::<Count>(None);
        assert!(e.get::<Count>().is_none());
        e.set_raw("count", Some(Bytes::from_static(b"too long")));
        assert!(e.get::<Count>().is_none(), "undecodable bytes read as absent");
        let back: Extensions = e.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect();
        assert_eq!(back, e);
    }
}
