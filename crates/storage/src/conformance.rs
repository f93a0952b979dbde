//! Conformance suite every storage backend must pass.
//!
//! Owns: the observable contract of the store traits, written once as executable checks.
//! Must not touch: backend internals (no downcasting, no peeking at files or keyspaces);
//! durability across restarts and crashes depends on how a backend is opened, so each
//! durable backend tests that in its own crate.
//!
//! Each `check_*` function takes a [`Stores`], panics with a message naming the broken
//! rule, and uses users under its own domains (`alice@a-<check>.example`, ...), so all of
//! them can run one after the other on the same backend ([`run_all`]) or each on a fresh
//! one (one `#[tokio::test]` per check, which pinpoints failures).
//!
//! Contract details the trait docs leave implicit and all backends agree on:
//! roster items are returned sorted by contact JID, block lists sorted and deduplicated,
//! offline seqs strictly increasing per user for the life of the store, even after
//! `remove_up_to` or `delete_all`. Archive rules are in [`archive`]'s checks.
#![allow(clippy::unwrap_used)]

mod archive;

pub use archive::{
    check_archive_append_new, check_archive_bounds, check_archive_concurrent, check_archive_count,
    check_archive_isolation, check_archive_ordering, check_archive_prefs, check_archive_replace,
    check_archive_retention, check_archive_scale, check_archive_unicode, check_archive_with_and_ids,
};

use crate::{
    Account, ArchiveDefault, ArchiveEntry, ArchiveId, ArchivePrefs, ArchiveQuery, ArchiveRow, LastActivity,
    OfflineMessage, Roster, RosterItem, Stores, Subscription,
};
use bytes::Bytes;
use rookery_jid::BareJid;
use rookery_sasl::StoredCredentials;
use std::collections::BTreeSet;

/// One `#[tokio::test]` per check of this suite, each on a fresh store, for a backend's
/// test file: `rookery_storage::conformance_tests!(open());` where `open()` returns
/// `(guard, Stores)` and the guard (a temporary directory, a keyspace) lives as long as the
/// test. Concurrency checks run on a multi-thread runtime. A new check is added here once
/// and every backend runs it.
#[macro_export]
macro_rules! conformance_tests {
    ($open:expr) => {
        $crate::conformance_tests!(@each $open; tokio::test;
            (accounts, check_accounts),
            (account_isolation, check_account_isolation),
            (roster_basic, check_roster_basic),
            (roster_versions, check_roster_versions),
            (roster_isolation, check_roster_isolation),
            (roster_unicode_and_groups, check_roster_unicode_and_groups),
            (offline_basic, check_offline_basic),
            (offline_remove_up_to, check_offline_remove_up_to),
            (offline_delete_all, check_offline_delete_all),
            (offline_large_stanza, check_offline_large_stanza),
            (offline_many, check_offline_many),
            (vcard, check_vcard),
            (blocking, check_blocking),
            (last_activity, check_last_activity),
            (delete_user, check_delete_user),
            (archive_ordering, check_archive_ordering),
            (archive_replace, check_archive_replace),
            (archive_append_new, check_archive_append_new),
            (archive_bounds, check_archive_bounds),
            (archive_with_and_ids, check_archive_with_and_ids),
            (archive_isolation, check_archive_isolation),
            (archive_count, check_archive_count),
            (archive_retention, check_archive_retention),
            (archive_unicode, check_archive_unicode),
            (archive_scale, check_archive_scale),
            (archive_prefs, check_archive_prefs)
        );
        $crate::conformance_tests!(@each $open; tokio::test(flavor = "multi_thread", worker_threads = 4);
            (concurrent_offline, check_concurrent_offline),
            (concurrent_roster, check_concurrent_roster),
            (archive_concurrent, check_archive_concurrent),
            (run_all_on_one_store, run_all)
        );
    };
    (@each $open:expr; $attr:meta; $(($name:ident, $check:ident)),* $(,)?) => {
        $(
            #[$attr]
            async fn $name() {
                let (_guard, stores) = $open;
                $crate::conformance::$check(&stores).await;
            }
        )*
    };
}

/// Runs every check, in order, on one set of stores.
pub async fn run_all(stores: &Stores) {
    check_accounts(stores).await;
    check_account_isolation(stores).await;
    check_roster_basic(stores).await;
    check_roster_versions(stores).await;
    check_roster_isolation(stores).await;
    check_roster_unicode_and_groups(stores).await;
    check_offline_basic(stores).await;
    check_offline_remove_up_to(stores).await;
    check_offline_delete_all(stores).await;
    check_offline_large_stanza(stores).await;
    check_offline_many(stores).await;
    check_vcard(stores).await;
    check_blocking(stores).await;
    check_last_activity(stores).await;
    check_delete_user(stores).await;
    check_concurrent_offline(stores).await;
    check_concurrent_roster(stores).await;
    check_archive_ordering(stores).await;
    check_archive_replace(stores).await;
    check_archive_append_new(stores).await;
    check_archive_bounds(stores).await;
    check_archive_with_and_ids(stores).await;
    check_archive_isolation(stores).await;
    check_archive_count(stores).await;
    check_archive_concurrent(stores).await;
    check_archive_retention(stores).await;
    check_archive_unicode(stores).await;
    check_archive_scale(stores).await;
    check_archive_prefs(stores).await;
}

fn jid(s: &str) -> BareJid {
    BareJid::parse(s).unwrap_or_else(|e| panic!("test JID {s:?} must parse: {e:?}"))
}

/// Credentials distinguishable by `tag`; the suite only needs them to round-trip.
fn sample_credentials(tag: u8) -> Vec<StoredCredentials> {
    vec![
        StoredCredentials {
            alg: rookery_sasl::HashAlg::Sha256,
            salt: vec![tag; 16],
            iterations: 4096,
            stored_key: vec![tag.wrapping_add(1); 32],
            server_key: vec![tag.wrapping_add(2); 32],
        },
        StoredCredentials {
            alg: rookery_sasl::HashAlg::Sha1,
            salt: vec![tag; 16],
            iterations: 4096,
            stored_key: vec![tag.wrapping_add(3); 20],
            server_key: vec![tag.wrapping_add(4); 20],
        },
    ]
}

fn account(tag: u8) -> Account {
    Account { credentials: sample_credentials(tag), created_at: 1_700_000_000 + u64::from(tag) }
}

fn item(contact: &str) -> RosterItem {
    RosterItem {
        jid: contact.to_owned(),
        name: None,
        subscription: Subscription::None,
        ask: false,
        pending_in: None,
        approved: false,
        groups: Vec::new(),
        hidden: false,
    }
}

fn sorted_items(roster: &Roster) -> Vec<RosterItem> {
    let mut items = roster.items.clone();
    items.sort_by(|a, b| a.jid.cmp(&b.jid));
    items
}

fn seqs(messages: &[OfflineMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn assert_strictly_increasing(seqs: &[u64], what: &str) {
    for w in seqs.windows(2) {
        assert!(w[0] < w[1], "{what}: seqs must be strictly increasing, got {} then {}", w[0], w[1]);
    }
}

/// create / duplicate create / get / set_credentials / delete / list.
pub async fn check_accounts(stores: &Stores) {
    let a = &stores.accounts;
    let alice = jid("alice@a-accounts.example");
    let bob = jid("bob@a-accounts.example");
    let carol = jid("carol@a-accounts.example");

    assert_eq!(a.get(&alice).await.unwrap(), None, "no account before create");
    assert!(a.create(&alice, account(1)).await.unwrap(), "first create must return true");
    assert_eq!(a.get(&alice).await.unwrap(), Some(account(1)));
    assert!(!a.create(&alice, account(2)).await.unwrap(), "duplicate create must return false");
    assert_eq!(a.get(&alice).await.unwrap(), Some(account(1)), "duplicate create must not change the stored account");

    assert!(
        a.set_credentials(&alice, sample_credentials(7)).await.unwrap(),
        "set_credentials on an existing account must return true"
    );
    let got = a.get(&alice).await.unwrap().unwrap();
    assert_eq!(got.credentials, sample_credentials(7), "credentials replaced");
    assert_eq!(got.created_at, account(1).created_at, "set_credentials keeps created_at");
    assert!(
        !a.set_credentials(&bob, sample_credentials(7)).await.unwrap(),
        "set_credentials on a missing account must return false"
    );
    assert_eq!(a.get(&bob).await.unwrap(), None, "set_credentials must not create an account");

    // Created out of order: list must sort.
    assert!(a.create(&carol, account(3)).await.unwrap());
    assert!(a.create(&bob, account(2)).await.unwrap());
    assert_eq!(
        a.list("a-accounts.example").await.unwrap(),
        vec!["alice", "bob", "carol"],
        "list returns sorted local parts"
    );

    assert!(a.delete(&bob).await.unwrap(), "delete of an existing account returns true");
    assert!(!a.delete(&bob).await.unwrap(), "delete of a missing account returns false");
    assert_eq!(a.get(&bob).await.unwrap(), None, "deleted account is gone");
    assert_eq!(a.list("a-accounts.example").await.unwrap(), vec!["alice", "carol"]);
    assert_eq!(a.get(&alice).await.unwrap().unwrap().credentials, sample_credentials(7));
}

/// Accounts of different domains and users never see each other.
pub async fn check_account_isolation(stores: &Stores) {
    let a = &stores.accounts;
    let alice_a = jid("alice@a-acciso.example");
    let bob_a = jid("bob@a-acciso.example");
    let alice_b = jid("alice@b-acciso.example");
    // A domain that is a string prefix of another must not leak into it.
    let alice_ab = jid("alice@a-acciso.example.org");

    assert!(a.create(&alice_a, account(1)).await.unwrap());
    assert!(a.create(&alice_b, account(2)).await.unwrap(), "same local part on another domain is another account");
    assert!(a.create(&alice_ab, account(3)).await.unwrap());
    assert!(a.create(&bob_a, account(4)).await.unwrap());

    assert_eq!(a.get(&alice_a).await.unwrap(), Some(account(1)));
    assert_eq!(a.get(&alice_b).await.unwrap(), Some(account(2)));
    assert_eq!(a.get(&alice_ab).await.unwrap(), Some(account(3)));
    assert_eq!(a.list("a-acciso.example").await.unwrap(), vec!["alice", "bob"]);
    assert_eq!(a.list("b-acciso.example").await.unwrap(), vec!["alice"]);
    assert_eq!(a.list("a-acciso.example.org").await.unwrap(), vec!["alice"]);
    assert!(a.list("nobody-acciso.example").await.unwrap().is_empty(), "unknown domain lists nothing");
    assert!(a.list("acciso.example").await.unwrap().is_empty(), "a domain suffix must not match");

    assert!(a.delete(&alice_a).await.unwrap());
    assert_eq!(a.get(&alice_b).await.unwrap(), Some(account(2)), "deleting alice@a must not touch alice@b");
    assert_eq!(a.get(&bob_a).await.unwrap(), Some(account(4)));
}

/// put / get / get_item / remove.
pub async fn check_roster_basic(stores: &Stores) {
    let r = &stores.roster;
    let alice = jid("alice@a-roster.example");

    let empty = r.get(&alice).await.unwrap();
    assert!(empty.items.is_empty(), "new user has an empty roster");
    assert_eq!(r.get_item(&alice, "bob@a-roster.example").await.unwrap(), None);

    let mut bob = item("bob@a-roster.example");
    bob.name = Some("Bob".into());
    bob.subscription = Subscription::Both;
    bob.groups = vec!["Friends".into()];
    let mut carol = item("carol@b-roster.example");
    carol.subscription = Subscription::From;
    carol.ask = true;
    carol.approved = true;
    carol.pending_in = Some(b"<presence type='subscribe'/>".to_vec());
    // Hidden items are stored and returned like any other; hiding them is the caller's job.
    carol.hidden = true;

    r.put_item(&alice, carol.clone()).await.unwrap();
    r.put_item(&alice, bob.clone()).await.unwrap();
    assert_eq!(r.get_item(&alice, "bob@a-roster.example").await.unwrap(), Some(bob.clone()));
    assert_eq!(
        r.get_item(&alice, "carol@b-roster.example").await.unwrap(),
        Some(carol.clone()),
        "every field round-trips"
    );
    let roster = r.get(&alice).await.unwrap();
    assert_eq!(roster.items, vec![bob.clone(), carol.clone()], "items come back sorted by contact JID");

    // Replace.
    let mut bob2 = bob.clone();
    bob2.name = None;
    bob2.subscription = Subscription::To;
    bob2.groups.clear();
    r.put_item(&alice, bob2.clone()).await.unwrap();
    assert_eq!(
        r.get_item(&alice, "bob@a-roster.example").await.unwrap(),
        Some(bob2.clone()),
        "put_item replaces the whole item"
    );
    assert_eq!(r.get(&alice).await.unwrap().items.len(), 2, "replace adds no item");

    assert!(r.remove_item(&alice, "bob@a-roster.example").await.unwrap().is_some());
    assert_eq!(r.get_item(&alice, "bob@a-roster.example").await.unwrap(), None);
    assert_eq!(r.get(&alice).await.unwrap().items, vec![carol]);

    r.delete_all(&alice).await.unwrap();
    assert!(r.get(&alice).await.unwrap().items.is_empty(), "delete_all empties the roster");
    assert_eq!(r.get_item(&alice, "carol@b-roster.example").await.unwrap(), None);
}

/// Version strictly increases on every change, never on reads or no-op removes.
pub async fn check_roster_versions(stores: &Stores) {
    let r = &stores.roster;
    let alice = jid("alice@a-rosterver.example");

    let v0 = r.get(&alice).await.unwrap().version;
    let v1 = r.put_item(&alice, item("bob@a-rosterver.example")).await.unwrap();
    assert!(v1 > v0, "put_item must bump the version ({v0} -> {v1})");
    assert_eq!(r.get(&alice).await.unwrap().version, v1, "get reports the returned version");

    // Reads do not bump.
    r.get(&alice).await.unwrap();
    r.get_item(&alice, "bob@a-rosterver.example").await.unwrap();
    r.get_item(&alice, "nobody@a-rosterver.example").await.unwrap();
    assert_eq!(r.get(&alice).await.unwrap().version, v1, "reads must not bump the version");

    let v2 = r.put_item(&alice, item("carol@a-rosterver.example")).await.unwrap();
    assert!(v2 > v1, "second put must bump ({v1} -> {v2})");
    let mut bob = item("bob@a-rosterver.example");
    bob.subscription = Subscription::Both;
    let v3 = r.put_item(&alice, bob).await.unwrap();
    assert!(v3 > v2, "replacing an item must bump ({v2} -> {v3})");

    assert_eq!(
        r.remove_item(&alice, "nobody@a-rosterver.example").await.unwrap(),
        None,
        "removing a missing item returns None"
    );
    assert_eq!(r.get(&alice).await.unwrap().version, v3, "removing a missing item must not bump");

    let v4 = r
        .remove_item(&alice, "carol@a-rosterver.example")
        .await
        .unwrap()
        .expect("removing an existing item returns Some(version)");
    assert!(v4 > v3, "remove must bump ({v3} -> {v4})");
    assert_eq!(r.get(&alice).await.unwrap().version, v4);
    assert_eq!(
        r.remove_item(&alice, "carol@a-rosterver.example").await.unwrap(),
        None,
        "second remove of the same item returns None"
    );
    assert_eq!(r.get(&alice).await.unwrap().version, v4);

    let bob_user = jid("bob@a-rosterver.example");
    assert_eq!(
        r.remove_item(&bob_user, "alice@a-rosterver.example").await.unwrap(),
        None,
        "remove on a user without a roster returns None"
    );
}

/// Rosters of different users (same local part, other domain; same domain) are separate.
pub async fn check_roster_isolation(stores: &Stores) {
    let r = &stores.roster;
    let alice_a = jid("alice@a-rosteriso.example");
    let bob_a = jid("bob@a-rosteriso.example");
    let alice_b = jid("alice@b-rosteriso.example");
    let alice_ab = jid("alice@a-rosteriso.example.org");

    r.put_item(&alice_a, item("x@c.example")).await.unwrap();
    r.put_item(&alice_a, item("y@c.example")).await.unwrap();
    let bob_v = r.put_item(&bob_a, item("x@c.example")).await.unwrap();
    r.put_item(&alice_b, item("z@c.example")).await.unwrap();
    r.put_item(&alice_ab, item("w@c.example")).await.unwrap();

    let contacts = |roster: Roster| -> Vec<String> { sorted_items(&roster).into_iter().map(|i| i.jid).collect() };
    assert_eq!(contacts(r.get(&alice_a).await.unwrap()), vec!["x@c.example", "y@c.example"]);
    assert_eq!(contacts(r.get(&bob_a).await.unwrap()), vec!["x@c.example"]);
    assert_eq!(contacts(r.get(&alice_b).await.unwrap()), vec!["z@c.example"]);
    assert_eq!(contacts(r.get(&alice_ab).await.unwrap()), vec!["w@c.example"]);
    assert_eq!(r.get_item(&alice_b, "x@c.example").await.unwrap(), None);

    r.remove_item(&alice_a, "x@c.example").await.unwrap();
    assert_eq!(
        r.get_item(&bob_a, "x@c.example").await.unwrap(),
        Some(item("x@c.example")),
        "removing from alice's roster must not touch bob's"
    );
    assert_eq!(r.get(&bob_a).await.unwrap().version, bob_v, "alice's changes must not bump bob's version");

    r.delete_all(&alice_a).await.unwrap();
    assert!(r.get(&alice_a).await.unwrap().items.is_empty());
    assert_eq!(contacts(r.get(&bob_a).await.unwrap()), vec!["x@c.example"]);
    assert_eq!(contacts(r.get(&alice_b).await.unwrap()), vec!["z@c.example"]);
    assert_eq!(contacts(r.get(&alice_ab).await.unwrap()), vec!["w@c.example"]);
}

/// Non-ASCII JIDs and names round-trip; groups keep their order.
pub async fn check_roster_unicode_and_groups(stores: &Stores) {
    let r = &stores.roster;
    let owner = jid("zoë@a-rosteruni.example");
    let contacts = ["ёжик@b.example", "用户@c.example", "jürgen@münchen.example"];

    for (i, c) in contacts.iter().enumerate() {
        let mut it = item(c);
        it.name = Some(format!("Ñame {i} 🦀 — «quoted» <&>"));
        it.groups = vec!["Zeta".into(), "Ålpha".into(), "друзья".into(), "a".into()];
        r.put_item(&owner, it).await.unwrap();
    }
    for (i, c) in contacts.iter().enumerate() {
        let got = r.get_item(&owner, c).await.unwrap().unwrap_or_else(|| panic!("unicode contact {c} must be found"));
        assert_eq!(got.jid, *c);
        assert_eq!(got.name.as_deref(), Some(format!("Ñame {i} 🦀 — «quoted» <&>").as_str()));
        assert_eq!(got.groups, vec!["Zeta", "Ålpha", "друзья", "a"], "groups keep their given order");
    }
    let roster = r.get(&owner).await.unwrap();
    let mut expected: Vec<&str> = contacts.to_vec();
    expected.sort_unstable();
    let got: Vec<String> = roster.items.iter().map(|i| i.jid.clone()).collect();
    assert_eq!(got, expected, "items sorted by contact JID");

    assert!(r.remove_item(&owner, "用户@c.example").await.unwrap().is_some());
    assert_eq!(r.get(&owner).await.unwrap().items.len(), 2);
}

/// push / list / count on a few messages.
pub async fn check_offline_basic(stores: &Stores) {
    let o = &stores.offline;
    let alice = jid("alice@a-offline.example");
    let bob = jid("bob@a-offline.example");

    assert!(o.list(&alice).await.unwrap().is_empty());
    assert_eq!(o.count(&alice).await.unwrap(), 0);

    let s1 = o.push(&alice, Bytes::from_static(b"<message id='1'/>")).await.unwrap();
    let b1 = o.push(&bob, Bytes::from_static(b"<message id='b1'/>")).await.unwrap();
    let s2 = o.push(&alice, Bytes::from_static(b"<message id='2'/>")).await.unwrap();
    let s3 = o.push(&alice, Bytes::new()).await.unwrap();
    assert!(s1 < s2 && s2 < s3, "push seqs strictly increase per user: {s1}, {s2}, {s3}");

    let list = o.list(&alice).await.unwrap();
    assert_eq!(
        list,
        vec![
            OfflineMessage { seq: s1, stanza: Bytes::from_static(b"<message id='1'/>") },
            OfflineMessage { seq: s2, stanza: Bytes::from_static(b"<message id='2'/>") },
            OfflineMessage { seq: s3, stanza: Bytes::new() },
        ],
        "list returns all messages oldest first, empty stanza included"
    );
    assert_eq!(o.count(&alice).await.unwrap(), 3);
    assert_eq!(
        o.list(&bob).await.unwrap(),
        vec![OfflineMessage { seq: b1, stanza: Bytes::from_static(b"<message id='b1'/>") }]
    );
    assert_eq!(o.count(&bob).await.unwrap(), 1);
}

/// remove_up_to removes exactly the messages with seq <= the bound.
pub async fn check_offline_remove_up_to(stores: &Stores) {
    let o = &stores.offline;
    let alice = jid("alice@a-offrm.example");
    let alice_b = jid("alice@b-offrm.example");

    let mut pushed = Vec::new();
    for i in 0..6 {
        pushed.push(o.push(&alice, Bytes::from(format!("<m n='{i}'/>"))).await.unwrap());
    }
    let other = o.push(&alice_b, Bytes::from_static(b"<other/>")).await.unwrap();

    o.remove_up_to(&alice, 0).await.unwrap();
    assert_eq!(o.count(&alice).await.unwrap(), 6, "remove_up_to(0) removes nothing");

    o.remove_up_to(&alice, pushed[2]).await.unwrap();
    assert_eq!(
        seqs(&o.list(&alice).await.unwrap()),
        pushed[3..].to_vec(),
        "remove_up_to(seq) removes exactly the messages with seq <= bound"
    );
    assert_eq!(o.count(&alice).await.unwrap(), 3);
    assert_eq!(seqs(&o.list(&alice_b).await.unwrap()), vec![other], "remove_up_to must not touch another user");

    // A bound between two seqs.
    if pushed[4] > pushed[3] + 1 {
        o.remove_up_to(&alice, pushed[4] - 1).await.unwrap();
        assert_eq!(seqs(&o.list(&alice).await.unwrap()), pushed[4..].to_vec());
    }
    // Removing again is a no-op.
    o.remove_up_to(&alice, pushed[2]).await.unwrap();
    assert_eq!(o.list(&alice).await.unwrap().last().map(|m| m.seq), Some(pushed[5]));

    let next = o.push(&alice, Bytes::from_static(b"<later/>")).await.unwrap();
    assert!(next > pushed[5], "seqs keep increasing after remove_up_to");

    o.remove_up_to(&alice, u64::MAX).await.unwrap();
    assert!(o.list(&alice).await.unwrap().is_empty(), "remove_up_to(MAX) removes all");
    assert_eq!(o.count(&alice).await.unwrap(), 0);
    assert_eq!(o.count(&alice_b).await.unwrap(), 1);

    let after = o.push(&alice, Bytes::from_static(b"<again/>")).await.unwrap();
    assert!(after > next, "seqs keep increasing after the queue emptied");
}

/// delete_all empties one user's queue only; seqs keep increasing afterwards.
pub async fn check_offline_delete_all(stores: &Stores) {
    let o = &stores.offline;
    let alice = jid("alice@a-offdel.example");
    let bob = jid("bob@a-offdel.example");

    let mut last = 0;
    for i in 0..5 {
        last = o.push(&alice, Bytes::from(format!("<m n='{i}'/>"))).await.unwrap();
    }
    o.push(&bob, Bytes::from_static(b"<bob/>")).await.unwrap();

    o.delete_all(&alice).await.unwrap();
    assert!(o.list(&alice).await.unwrap().is_empty());
    assert_eq!(o.count(&alice).await.unwrap(), 0);
    assert_eq!(o.count(&bob).await.unwrap(), 1, "delete_all must not touch another user");
    o.delete_all(&alice).await.unwrap();

    let next = o.push(&alice, Bytes::from_static(b"<new/>")).await.unwrap();
    assert!(next > last, "seqs keep increasing after delete_all ({last} -> {next})");
    assert_eq!(seqs(&o.list(&alice).await.unwrap()), vec![next]);
}

/// A 200 KiB stanza round-trips byte for byte.
pub async fn check_offline_large_stanza(stores: &Stores) {
    let o = &stores.offline;
    let alice = jid("alice@a-offbig.example");
    let big: Vec<u8> = (0..200 * 1024u32).map(|i| (i % 251) as u8).collect();
    let big = Bytes::from(big);

    let seq = o.push(&alice, big.clone()).await.unwrap();
    let small = o.push(&alice, Bytes::from_static(b"<small/>")).await.unwrap();
    let list = o.list(&alice).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].seq, seq);
    assert_eq!(list[0].stanza.len(), big.len(), "large stanza length preserved");
    assert!(list[0].stanza == big, "large stanza bytes preserved");
    assert_eq!(list[1].seq, small);
}

/// 1,000 messages come back in push order.
pub async fn check_offline_many(stores: &Stores) {
    let o = &stores.offline;
    let alice = jid("alice@a-offmany.example");
    let mut pushed = Vec::with_capacity(1000);
    for i in 0..1000 {
        pushed.push(o.push(&alice, Bytes::from(format!("<message n='{i}'/>"))).await.unwrap());
    }
    assert_strictly_increasing(&pushed, "1,000 pushes");
    let list = o.list(&alice).await.unwrap();
    assert_eq!(list.len(), 1000);
    assert_eq!(o.count(&alice).await.unwrap(), 1000);
    for (i, m) in list.iter().enumerate() {
        assert_eq!(m.seq, pushed[i], "message {i} has the seq push returned");
        assert_eq!(m.stanza, Bytes::from(format!("<message n='{i}'/>")), "message {i} is in push order");
    }
    o.remove_up_to(&alice, pushed[499]).await.unwrap();
    let rest = o.list(&alice).await.unwrap();
    assert_eq!(seqs(&rest), pushed[500..].to_vec());
}

/// vCard set / get / replace / delete, per user.
pub async fn check_vcard(stores: &Stores) {
    let v = &stores.vcard;
    let alice = jid("alice@a-vcard.example");
    let bob = jid("bob@a-vcard.example");

    assert_eq!(v.get(&alice).await.unwrap(), None);
    v.delete(&alice).await.unwrap();

    let card1 = Bytes::from_static("<vCard xmlns='vcard-temp'><FN>Alice Ä</FN></vCard>".as_bytes());
    let card2 = Bytes::from_static(b"<vCard xmlns='vcard-temp'><FN>Alice 2</FN></vCard>");
    v.set(&alice, card1.clone()).await.unwrap();
    assert_eq!(v.get(&alice).await.unwrap(), Some(card1));
    assert_eq!(v.get(&bob).await.unwrap(), None, "vcards are per user");

    v.set(&alice, card2.clone()).await.unwrap();
    assert_eq!(v.get(&alice).await.unwrap(), Some(card2.clone()), "set replaces");

    v.set(&bob, Bytes::from_static(b"<vCard/>")).await.unwrap();
    v.delete(&alice).await.unwrap();
    assert_eq!(v.get(&alice).await.unwrap(), None, "delete removes");
    assert_eq!(v.get(&bob).await.unwrap(), Some(Bytes::from_static(b"<vCard/>")));
}

/// block is idempotent and sorted; unblock and unblock_all.
pub async fn check_blocking(stores: &Stores) {
    let b = &stores.blocking;
    let alice = jid("alice@a-block.example");
    let bob = jid("bob@a-block.example");
    let s = |v: &[&str]| -> Vec<String> { v.iter().map(|x| (*x).to_owned()).collect() };

    assert!(b.list(&alice).await.unwrap().is_empty());
    b.block(&alice, &[]).await.unwrap();
    assert!(b.list(&alice).await.unwrap().is_empty(), "blocking nothing stores nothing");

    b.block(&alice, &s(&["mallory@evil.example", "eve@evil.example", "evil.example", "eve@evil.example"]))
        .await
        .unwrap();
    assert_eq!(
        b.list(&alice).await.unwrap(),
        s(&["eve@evil.example", "evil.example", "mallory@evil.example"]),
        "list is sorted with no duplicates"
    );
    b.block(&alice, &s(&["eve@evil.example", "trudy@x.example/phone"])).await.unwrap();
    assert_eq!(
        b.list(&alice).await.unwrap(),
        s(&["eve@evil.example", "evil.example", "mallory@evil.example", "trudy@x.example/phone"]),
        "blocking again is idempotent; full JIDs are kept as given"
    );

    b.block(&bob, &s(&["eve@evil.example"])).await.unwrap();

    b.unblock(&alice, &s(&["evil.example", "not-blocked@x.example"])).await.unwrap();
    assert_eq!(
        b.list(&alice).await.unwrap(),
        s(&["eve@evil.example", "mallory@evil.example", "trudy@x.example/phone"]),
        "unblock removes the given JIDs and ignores unknown ones"
    );
    b.unblock(&alice, &[]).await.unwrap();
    assert_eq!(b.list(&alice).await.unwrap().len(), 3, "unblock of nothing changes nothing");

    b.unblock_all(&alice).await.unwrap();
    assert!(b.list(&alice).await.unwrap().is_empty(), "unblock_all clears the list");
    assert_eq!(
        b.list(&bob).await.unwrap(),
        s(&["eve@evil.example"]),
        "alice's block list changes must not touch bob's"
    );
    b.unblock_all(&alice).await.unwrap();
}

/// Last activity set / get / delete.
pub async fn check_last_activity(stores: &Stores) {
    let l = &stores.last;
    let alice = jid("alice@a-last.example");
    let bob = jid("bob@a-last.example");

    assert_eq!(l.get(&alice).await.unwrap(), None);
    let first = LastActivity { at: 1_700_000_000, status: "Gone fishing 🎣".into() };
    let second = LastActivity { at: 1_700_000_100, status: String::new() };
    l.set(&alice, first.clone()).await.unwrap();
    assert_eq!(l.get(&alice).await.unwrap(), Some(first));
    assert_eq!(l.get(&bob).await.unwrap(), None);
    l.set(&alice, second.clone()).await.unwrap();
    assert_eq!(l.get(&alice).await.unwrap(), Some(second.clone()), "set replaces");
    l.set(&bob, second.clone()).await.unwrap();
    l.delete(&alice).await.unwrap();
    assert_eq!(l.get(&alice).await.unwrap(), None);
    assert_eq!(l.get(&bob).await.unwrap(), Some(second));
    l.delete(&alice).await.unwrap();
}

async fn populate(stores: &Stores, user: &BareJid, tag: u8) {
    assert!(stores.accounts.create(user, account(tag)).await.unwrap());
    stores.roster.put_item(user, item("friend@c-deluser.example")).await.unwrap();
    stores.offline.push(user, Bytes::from(format!("<m tag='{tag}'/>"))).await.unwrap();
    stores.vcard.set(user, Bytes::from(format!("<vCard tag='{tag}'/>"))).await.unwrap();
    stores.blocking.block(user, &["spam@c-deluser.example".to_owned()]).await.unwrap();
    stores.last.set(user, LastActivity { at: u64::from(tag), status: "away".into() }).await.unwrap();
    stores.archive.append(&[ArchiveRow { owner: user.clone(), entry: archived(tag) }]).await.unwrap();
    stores.archive.set_prefs(user, &archive_prefs(tag)).await.unwrap();
}

fn archived(tag: u8) -> ArchiveEntry {
    ArchiveEntry {
        id: ArchiveId(1 << 40 | u64::from(tag)),
        with: "friend@c-deluser.example".into(),
        with_resource: String::new(),
        outgoing: true,
        stanza: Bytes::from(format!("<message tag='{tag}'/>")),
    }
}

fn archive_prefs(tag: u8) -> ArchivePrefs {
    ArchivePrefs { default: ArchiveDefault::Roster, always: vec![format!("x{tag}@c-deluser.example")], never: vec![] }
}

fn whole_archive() -> ArchiveQuery {
    ArchiveQuery { limit: 100, count_cap: 100, ..Default::default() }
}

async fn assert_populated(stores: &Stores, user: &BareJid, tag: u8) {
    let who = user.as_str();
    assert_eq!(stores.accounts.get(user).await.unwrap(), Some(account(tag)), "{who}: account kept");
    assert_eq!(
        stores.roster.get(user).await.unwrap().items,
        vec![item("friend@c-deluser.example")],
        "{who}: roster kept"
    );
    assert_eq!(stores.offline.count(user).await.unwrap(), 1, "{who}: offline kept");
    assert_eq!(
        stores.vcard.get(user).await.unwrap(),
        Some(Bytes::from(format!("<vCard tag='{tag}'/>"))),
        "{who}: vcard kept"
    );
    assert_eq!(
        stores.blocking.list(user).await.unwrap(),
        vec!["spam@c-deluser.example".to_owned()],
        "{who}: block list kept"
    );
    assert_eq!(stores.last.get(user).await.unwrap().map(|l| l.at), Some(u64::from(tag)), "{who}: last activity kept");
    assert_eq!(
        stores.archive.query(user, &whole_archive()).await.unwrap().items,
        vec![archived(tag)],
        "{who}: archive kept"
    );
    assert_eq!(stores.archive.get_prefs(user).await.unwrap(), Some(archive_prefs(tag)), "{who}: archive prefs kept");
}

/// Stores::delete_user removes everything of one user and nothing of any other.
pub async fn check_delete_user(stores: &Stores) {
    let alice = jid("alice@a-deluser.example");
    let bob = jid("bob@a-deluser.example");
    let alice_b = jid("alice@b-deluser.example");
    populate(stores, &alice, 1).await;
    populate(stores, &bob, 2).await;
    populate(stores, &alice_b, 3).await;

    assert!(stores.delete_user(&alice).await.unwrap(), "delete_user of an existing account returns true");

    assert_eq!(stores.accounts.get(&alice).await.unwrap(), None, "account deleted");
    assert!(stores.roster.get(&alice).await.unwrap().items.is_empty(), "roster deleted");
    assert_eq!(stores.roster.get_item(&alice, "friend@c-deluser.example").await.unwrap(), None);
    assert!(stores.offline.list(&alice).await.unwrap().is_empty(), "offline deleted");
    assert_eq!(stores.offline.count(&alice).await.unwrap(), 0);
    assert_eq!(stores.vcard.get(&alice).await.unwrap(), None, "vcard deleted");
    assert!(stores.blocking.list(&alice).await.unwrap().is_empty(), "block list deleted");
    assert_eq!(stores.last.get(&alice).await.unwrap(), None, "last activity deleted");
    assert_eq!(stores.archive.query(&alice, &whole_archive()).await.unwrap().count, Some(0), "archive deleted");
    let with_friend = ArchiveQuery {
        with: Some(crate::WithFilter { bare: "friend@c-deluser.example".into(), resource: None }),
        ..whole_archive()
    };
    assert_eq!(stores.archive.query(&alice, &with_friend).await.unwrap().count, Some(0), "archive index deleted");
    assert_eq!(stores.archive.bounds(&alice).await.unwrap(), None);
    assert_eq!(stores.archive.get_prefs(&alice).await.unwrap(), None, "archive prefs deleted");
    assert_eq!(stores.accounts.list("a-deluser.example").await.unwrap(), vec!["bob"]);

    assert_populated(stores, &bob, 2).await;
    assert_populated(stores, &alice_b, 3).await;

    assert!(!stores.delete_user(&alice).await.unwrap(), "second delete_user returns false");
    // Data without an account is purged too.
    let ghost = jid("ghost@a-deluser.example");
    stores.offline.push(&ghost, Bytes::from_static(b"<m/>")).await.unwrap();
    assert!(!stores.delete_user(&ghost).await.unwrap());
    assert_eq!(stores.offline.count(&ghost).await.unwrap(), 0);
}

/// 8 tasks push 200 messages each to one user: 1,600 distinct seqs, all listed in order.
pub async fn check_concurrent_offline(stores: &Stores) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 200;
    let alice = jid("alice@a-offconc.example");
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let offline = stores.offline.clone();
        let alice = alice.clone();
        tasks.spawn(async move {
            let mut got = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let seq = offline.push(&alice, Bytes::from(format!("<m t='{t}' i='{i}'/>"))).await.unwrap();
                got.push((seq, t, i));
            }
            got
        });
    }
    let mut all = Vec::with_capacity(TASKS * PER_TASK);
    while let Some(res) = tasks.join_next().await {
        let got = res.expect("writer task panicked");
        let own: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_strictly_increasing(&own, "one writer's own pushes");
        all.extend(got);
    }
    let distinct: BTreeSet<u64> = all.iter().map(|g| g.0).collect();
    assert_eq!(distinct.len(), TASKS * PER_TASK, "every concurrent push gets a distinct seq");

    let list = o_list(stores, &alice).await;
    assert_eq!(list.len(), TASKS * PER_TASK, "every acknowledged push is listed");
    let listed = seqs(&list);
    assert_strictly_increasing(&listed, "list after concurrent pushes");
    assert_eq!(listed, distinct.iter().copied().collect::<Vec<_>>(), "listed seqs are exactly the acknowledged seqs");
    all.sort_unstable();
    for (m, (seq, t, i)) in list.iter().zip(&all) {
        assert_eq!(m.seq, *seq);
        assert_eq!(m.stanza, Bytes::from(format!("<m t='{t}' i='{i}'/>")), "seq {seq} holds its own stanza");
    }
    assert_eq!(stores.offline.count(&alice).await.unwrap(), TASKS * PER_TASK);
}

async fn o_list(stores: &Stores, user: &BareJid) -> Vec<OfflineMessage> {
    stores.offline.list(user).await.unwrap()
}

/// Concurrent roster puts each get a distinct version; none is lost.
pub async fn check_concurrent_roster(stores: &Stores) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 25;
    let alice = jid("alice@a-rosterconc.example");
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let roster = stores.roster.clone();
        let alice = alice.clone();
        tasks.spawn(async move {
            let mut versions = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                versions.push(roster.put_item(&alice, item(&format!("c{t}-{i}@c-rosterconc.example"))).await.unwrap());
            }
            versions
        });
    }
    let mut all = Vec::new();
    while let Some(res) = tasks.join_next().await {
        let versions = res.expect("roster writer task panicked");
        assert_strictly_increasing(&versions, "one writer's own roster versions");
        all.extend(versions);
    }
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), TASKS * PER_TASK, "every concurrent put gets a distinct version");
    let roster = stores.roster.get(&alice).await.unwrap();
    assert_eq!(roster.items.len(), TASKS * PER_TASK, "no concurrent put is lost");
    let max = distinct.last().copied().unwrap_or_default();
    assert_eq!(roster.version, max, "the roster reports the last version handed out");
}
