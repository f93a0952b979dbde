//! The behaviour every `SessionRegistry` must show, as one reusable check run against
//! `MemoryRegistry` (below) and each shared backend (crates/storage-redis/tests).
//!
//! Owns: the contract in executable form. Must not touch: any backend's internals.
//! Covers RFC 6120 §7.7.2.2 (a new bind of a full JID replaces the old session), RFC 6121
//! §4 state kept per session, and the modules' opaque extension slots (`crate::ext`), which
//! must come back byte for byte. Panics on the first deviation, naming it.

use crate::{Location, SessionEntry, SessionRegistry};
use bytes::Bytes;
use rookery_jid::{BareJid, FullJid, Jid};

/// An extension slot key the checks set and clear.
const SLOT: &str = "carbons";

fn full(s: &str) -> FullJid {
    FullJid::parse(s).expect("test JID")
}

fn bare(s: &str) -> BareJid {
    BareJid::parse(s).expect("test JID")
}

fn entry(jid: &str, edge: u32, conn: u64) -> SessionEntry {
    SessionEntry::new(full(jid), Location { edge, conn })
}

/// Asserts that two entries agree on every field.
pub fn assert_same(got: &SessionEntry, want: &SessionEntry) {
    assert_eq!(got.jid, want.jid, "jid");
    assert_eq!(got.loc, want.loc, "loc of {}", want.jid);
    assert_eq!(got.priority, want.priority, "priority of {}", want.jid);
    assert_eq!(got.available, want.available, "available of {}", want.jid);
    assert_eq!(got.presence, want.presence, "presence of {}", want.jid);
    assert_eq!(got.directed, want.directed, "directed of {}", want.jid);
    assert_eq!(got.ext, want.ext, "extension slots of {}", want.jid);
}

fn sorted(mut v: Vec<SessionEntry>) -> Vec<(String, Location)> {
    v.sort_by(|a, b| a.jid.cmp(&b.jid));
    v.into_iter().map(|e| (e.jid.to_string(), e.loc)).collect()
}

fn at(jid: &str, edge: u32, conn: u64) -> (String, Location) {
    (jid.to_owned(), Location { edge, conn })
}

/// Runs the whole contract. `r` must start empty and is left holding a few sessions.
pub async fn check_registry(r: &dyn SessionRegistry) {
    let alice = bare("alice@example.org");
    let phone = full("alice@example.org/phone");

    // Empty.
    assert_eq!(r.count().await, 0, "a fresh registry must be empty");
    assert!(r.sessions(&alice).await.is_empty());
    assert!(r.get(&phone).await.is_none());
    assert!(!r.is_current(&phone, Location { edge: 1, conn: 1 }).await);

    // Insert; every field survives.
    let mut first = entry("alice@example.org/phone", 1, 10);
    first.priority = -3;
    first.available = true;
    first.presence = Some(Bytes::from_static(b"<presence><show>dnd</show></presence>"));
    first.ext.set_raw("roster", Some(Bytes::new()));
    first.ext.set_raw("z.binary", Some(Bytes::from_static(&[0, 255, b'\n', 1])));
    first.directed =
        vec![Jid::parse("room@muc.example.org/alice").expect("jid"), Jid::parse("bob@example.org").expect("jid")];
    assert!(r.insert(first.clone()).await.expect("insert").is_none(), "a new full JID replaces nothing");
    assert_same(&r.get(&phone).await.expect("inserted session"), &first);
    assert!(r.is_current(&phone, first.loc).await);
    assert!(!r.is_current(&phone, Location { edge: 1, conn: 11 }).await, "other conn");
    assert!(!r.is_current(&phone, Location { edge: 2, conn: 10 }).await, "other edge");
    assert_eq!(r.count().await, 1);

    // Re-binding the same full JID replaces the session and returns the old one.
    let second = entry("alice@example.org/phone", 2, 20);
    let old = r.insert(second.clone()).await.expect("insert").expect("replaced entry");
    assert_same(&old, &first);
    assert_same(&r.get(&phone).await.expect("replacement"), &second);
    assert!(!r.is_current(&phone, first.loc).await, "the replaced session is no longer current");
    assert!(r.is_current(&phone, second.loc).await);
    assert_eq!(r.count().await, 1, "a replacement is not a new session");

    // Remove only at the given location.
    assert!(r.remove(&phone, first.loc).await.is_none(), "a stale location must not remove the new session");
    assert!(r.get(&phone).await.is_some());
    assert!(r.remove(&full("alice@example.org/nope"), second.loc).await.is_none());
    assert_same(&r.remove(&phone, second.loc).await.expect("removed entry"), &second);
    assert!(r.get(&phone).await.is_none());
    assert!(r.sessions(&alice).await.is_empty());
    assert_eq!(r.count().await, 0);
    assert!(r.remove(&phone, second.loc).await.is_none(), "removing twice");

    // Several resources and users.
    for (jid, edge, conn) in [
        ("alice@example.org/phone", 1, 1),
        ("alice@example.org/laptop", 2, 2),
        ("alice@example.org/tablet", 1, 3),
        ("bob@example.org/phone", 1, 4),
        ("alice@other.example/phone", 2, 5),
    ] {
        assert!(r.insert(entry(jid, edge, conn)).await.expect("insert").is_none());
    }
    assert_eq!(r.count().await, 5);
    assert_eq!(
        sorted(r.sessions(&alice).await),
        [
            at("alice@example.org/laptop", 2, 2),
            at("alice@example.org/phone", 1, 1),
            at("alice@example.org/tablet", 1, 3)
        ]
    );
    assert_eq!(sorted(r.sessions(&bare("bob@example.org")).await), [at("bob@example.org/phone", 1, 4)]);
    assert!(r.sessions(&bare("carol@example.org")).await.is_empty());

    // Update changes the stored state; absent sessions are reported.
    let laptop = full("alice@example.org/laptop");
    let presence = Bytes::from_static(b"<presence/>");
    let p = presence.clone();
    assert!(
        r.update(&laptop, &mut |e| {
            e.available = true;
            e.priority = 5;
            e.presence = Some(p.clone());
            e.directed.push(Jid::parse("carol@example.org/x").expect("jid"));
        })
        .await
    );
    let got = r.get(&laptop).await.expect("updated session");
    assert!(got.available && got.priority == 5 && got.presence.as_ref() == Some(&presence));
    assert_eq!(got.directed, [Jid::parse("carol@example.org/x").expect("jid")]);
    assert_eq!(got.loc, Location { edge: 2, conn: 2 }, "update keeps the location");
    assert!(r.update(&laptop, &mut |e| e.directed.clear()).await);
    assert!(r.get(&laptop).await.expect("session").directed.is_empty());
    assert!(!r.update(&full("alice@example.org/gone"), &mut |e| e.ext.set_raw(SLOT, Some(Bytes::new()))).await);
    assert!(r.get(&full("alice@example.org/gone")).await.is_none(), "update must not create sessions");
    assert!(r.update(&laptop, &mut |_| {}).await, "a no-op update of a present session succeeds");

    // Extension slots: only the sessions that carry one, per user.
    let on = |e: &mut SessionEntry| e.ext.set_raw(SLOT, Some(Bytes::from_static(b"1")));
    assert!(r.sessions_with(&alice, SLOT).await.is_empty());
    assert!(r.update(&full("alice@example.org/tablet"), &mut |e| on(e)).await);
    assert!(r.update(&full("alice@example.org/phone"), &mut |e| on(e)).await);
    assert!(r.update(&full("bob@example.org/phone"), &mut |e| on(e)).await);
    assert_eq!(
        sorted(r.sessions_with(&alice, SLOT).await),
        [at("alice@example.org/phone", 1, 1), at("alice@example.org/tablet", 1, 3)]
    );
    assert!(r.update(&full("alice@example.org/phone"), &mut |e| e.ext.set_raw(SLOT, None)).await);
    assert_eq!(sorted(r.sessions_with(&alice, SLOT).await), [at("alice@example.org/tablet", 1, 3)]);
    assert!(r.sessions_with(&bare("alice@other.example"), SLOT).await.is_empty());

    // A replacement starts from the new entry's state, not the old one's.
    let fresh = entry("alice@example.org/tablet", 3, 30);
    let replaced = r.insert(fresh.clone()).await.expect("insert").expect("replaced");
    assert!(replaced.ext.contains(SLOT) && replaced.loc == Location { edge: 1, conn: 3 });
    assert_same(&r.get(&full("alice@example.org/tablet")).await.expect("session"), &fresh);
    assert!(r.sessions_with(&alice, SLOT).await.is_empty());

    // Removing the rest empties the user.
    for (jid, edge, conn) in [("alice@example.org/phone", 1, 1), ("alice@example.org/laptop", 2, 2)] {
        assert!(r.remove(&full(jid), Location { edge, conn }).await.is_some(), "{jid}");
    }
    assert!(r.remove(&full("alice@example.org/tablet"), Location { edge: 1, conn: 3 }).await.is_none());
    assert!(r.remove(&full("alice@example.org/tablet"), fresh.loc).await.is_some());
    assert!(r.sessions(&alice).await.is_empty());
    assert_eq!(r.count().await, 2);
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_registry_conforms() {
        super::check_registry(&crate::MemoryRegistry::new()).await;
    }
}
