//! Archive checks of the conformance suite (XEP-0313 §4-§6 data, XEP-0059 paging).
//!
//! Owns: the observable contract of [`ArchiveStore`](crate::ArchiveStore): id order,
//! exclusive bounds, paging in both directions, `with` and `ids` filters, capped counts,
//! owner isolation, replacement on a repeated id, retention and preferences.
//! Must not touch: backend internals. Besides explicit assertions, many checks compare a
//! backend's page with [`page_of`] (the reference semantics) over the check's own copy of
//! the data, for a grid of queries.
//!
//! Each check uses its own domains (`*-arch<check>.example`), like the rest of the suite.
#![allow(clippy::unwrap_used)]

use super::jid;
use crate::archive::page_of;
use crate::{
    ArchiveDefault, ArchiveEntry, ArchiveId, ArchiveIdGen, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveRow, Stores,
    WithFilter,
};
use bytes::Bytes;
use rookery_jid::BareJid;
use std::collections::BTreeMap;

/// 2023-11-14 in µs: ids minted by the checks look like real ones.
const T0: u64 = 1_700_000_000_000_000;

fn entry(id: ArchiveId, with: &str, resource: &str, outgoing: bool, stanza: impl Into<Bytes>) -> ArchiveEntry {
    ArchiveEntry { id, with: with.to_owned(), with_resource: resource.to_owned(), outgoing, stanza: stanza.into() }
}

fn row(owner: &BareJid, e: &ArchiveEntry) -> ArchiveRow {
    ArchiveRow { owner: owner.clone(), entry: e.clone() }
}

fn rows(owner: &BareJid, entries: &[ArchiveEntry]) -> Vec<ArchiveRow> {
    entries.iter().map(|e| row(owner, e)).collect()
}

/// `n` increasing ids from one node, a few µs apart.
fn minted(node: u16, n: usize) -> Vec<ArchiveId> {
    let g = ArchiveIdGen::new(node);
    (0..n as u64).map(|i| g.next_at(T0 + 3 * i)).collect()
}

fn ids_of(page: &ArchivePage) -> Vec<ArchiveId> {
    page.items.iter().map(|e| e.id).collect()
}

fn with(bare: &str, resource: Option<&str>) -> Option<WithFilter> {
    Some(WithFilter { bare: bare.to_owned(), resource: resource.map(str::to_owned) })
}

/// Everything, counted.
fn everything() -> ArchiveQuery {
    ArchiveQuery { limit: 1_000_000, count_cap: 1_000_000, ..Default::default() }
}

fn page(limit: usize) -> ArchiveQuery {
    ArchiveQuery { limit, ..Default::default() }
}

/// The backend's answer must equal the reference semantics over `model` (sorted by id).
async fn assert_like_model(stores: &Stores, owner: &BareJid, model: &[ArchiveEntry], q: &ArchiveQuery) {
    let got = stores.archive.query(owner, q).await.unwrap();
    let want = page_of(model.iter(), q);
    assert!(
        got == want,
        "{owner}: query {q:?}\n got ids {:?} more {} count {:?}\nwant ids {:?} more {} count {:?}",
        ids_of(&got),
        got.more,
        got.count,
        ids_of(&want),
        want.more,
        want.count
    );
}

/// Pages through the whole matching set with `limit`, forwards (`after` = last id of the
/// previous page) or backwards (`from_end`, `before` = first id of the previous page),
/// checking `more` is true exactly on the pages before the last. Returns the ids in
/// archive order and the number of pages.
async fn page_through(
    stores: &Stores,
    owner: &BareJid,
    base: &ArchiveQuery,
    backwards: bool,
) -> (Vec<ArchiveId>, usize) {
    let mut chunks: Vec<Vec<ArchiveId>> = Vec::new();
    let mut q = base.clone();
    q.from_end = backwards;
    loop {
        let p = stores.archive.query(owner, &q).await.unwrap();
        let ids = ids_of(&p);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{owner}: a page is oldest first: {ids:?}");
        if p.more {
            assert_eq!(ids.len(), q.limit, "{owner}: only the final page may be short ({q:?})");
        }
        chunks.push(ids);
        assert!(chunks.len() <= 100_000, "{owner}: paging does not terminate");
        if !p.more {
            break;
        }
        let ids = chunks.last().unwrap();
        if backwards {
            q.before = ids.first().copied();
        } else {
            q.after = ids.last().copied();
        }
    }
    let pages = chunks.len();
    if backwards {
        chunks.reverse();
    }
    (chunks.concat(), pages)
}

/// Ids appended out of order come back in id order; paging visits every item once in
/// both directions; `more` and `limit` 0.
pub async fn check_archive_ordering(stores: &Stores) {
    let a = &stores.archive;
    let alice = jid("alice@a-archord.example");

    let empty = a.query(&alice, &ArchiveQuery { limit: 10, count_cap: 100, ..Default::default() }).await.unwrap();
    assert_eq!(empty, ArchivePage { items: vec![], more: false, count: Some(0) }, "an empty archive");
    assert_eq!(a.bounds(&alice).await.unwrap(), None, "an empty archive has no bounds");

    let ids = minted(1, 40);
    let model: Vec<ArchiveEntry> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let with = if i % 3 == 0 { "bob@b-archord.example" } else { "carol@b-archord.example" };
            entry(*id, with, "res", i % 2 == 0, format!("<message n='{i}'/>"))
        })
        .collect();
    // A permutation (17 is coprime with 40) appended in calls of 1 to 5 rows.
    let order: Vec<usize> = (0..40).map(|i| (i * 17) % 40).collect();
    let (mut at, mut size) = (0, 1);
    while at < order.len() {
        let end = (at + size).min(order.len());
        let batch: Vec<ArchiveRow> = order[at..end].iter().map(|&i| row(&alice, &model[i])).collect();
        a.append(&batch).await.unwrap();
        at = end;
        size = size % 5 + 1;
    }

    let all = a.query(&alice, &everything()).await.unwrap();
    assert_eq!(ids_of(&all), ids, "items come back in id order whatever the append order");
    assert_eq!(all.items, model, "every field round-trips");
    assert!(!all.more, "a page holding everything has no more");
    assert_eq!(all.count, Some(40));
    assert_eq!(a.bounds(&alice).await.unwrap(), Some((ids[0], ids[39])));

    let (fwd, pages) = page_through(stores, &alice, &page(7), false).await;
    assert_eq!(fwd, ids, "forward paging visits every item exactly once, in order");
    assert_eq!(pages, 6, "40 items in pages of 7");
    let (back, pages) = page_through(stores, &alice, &page(7), true).await;
    assert_eq!(back, ids, "backward paging visits every item exactly once");
    assert_eq!(pages, 6);
    let (fwd, pages) = page_through(stores, &alice, &page(8), false).await;
    assert_eq!((fwd, pages), (ids.clone(), 5), "a full final page has more = false");
    let (back, pages) = page_through(stores, &alice, &page(8), true).await;
    assert_eq!((back, pages), (ids.clone(), 5));
    let (one_by_one, pages) = page_through(stores, &alice, &page(1), false).await;
    assert_eq!((one_by_one, pages), (ids.clone(), 40));

    let first = a.query(&alice, &page(7)).await.unwrap();
    assert_eq!(ids_of(&first), ids[..7].to_vec(), "the first page is the oldest items");
    assert!(first.more);
    assert_eq!(first.count, None, "count_cap 0 does not count");
    let last = a.query(&alice, &ArchiveQuery { limit: 5, from_end: true, ..Default::default() }).await.unwrap();
    assert_eq!(ids_of(&last), ids[35..].to_vec(), "from_end: the newest items, oldest first");
    assert!(last.more, "from_end: older items exist");

    let counted = a.query(&alice, &ArchiveQuery { limit: 0, count_cap: 1000, ..Default::default() }).await.unwrap();
    assert!(counted.items.is_empty(), "limit 0 returns no items");
    assert_eq!(counted.count, Some(40), "limit 0 still counts");
    assert!(counted.more, "limit 0 on a non-empty set: every item is beyond the page");
    let bare = a.query(&alice, &page(0)).await.unwrap();
    assert_eq!((bare.items.len(), bare.count), (0, None));

    let exact = a.query(&alice, &page(40)).await.unwrap();
    assert_eq!((exact.items.len(), exact.more), (40, false), "limit = size: everything, no more");
    let short = a.query(&alice, &page(39)).await.unwrap();
    assert_eq!((short.items.len(), short.more), (39, true));
    let exact_back = a.query(&alice, &ArchiveQuery { limit: 40, from_end: true, ..Default::default() }).await.unwrap();
    assert_eq!((ids_of(&exact_back), exact_back.more), (ids.clone(), false));

    for limit in [0, 1, 7, 39, 40, 41] {
        for from_end in [false, true] {
            for count_cap in [0, 1, 39, 40, 41] {
                let q = ArchiveQuery { limit, from_end, count_cap, ..Default::default() };
                assert_like_model(stores, &alice, &model, &q).await;
            }
        }
    }
}

/// Appending an id that exists replaces the message, also its `with`, and within one
/// call the later row wins.
pub async fn check_archive_replace(stores: &Stores) {
    let a = &stores.archive;
    let alice = jid("alice@a-archrepl.example");
    let ids = minted(2, 3);
    let (bob, carol) = ("bob@b-archrepl.example", "carol@b-archrepl.example");

    a.append(&[row(&alice, &entry(ids[0], bob, "", false, "<one/>"))]).await.unwrap();
    a.append(&[row(&alice, &entry(ids[1], bob, "phone", true, "<two/>"))]).await.unwrap();
    let replaced = entry(ids[1], carol, "desk", false, "<two again/>");
    a.append(&[row(&alice, &replaced)]).await.unwrap();

    let all = a.query(&alice, &everything()).await.unwrap();
    assert_eq!(all.count, Some(2), "a repeated id replaces, it does not add");
    assert_eq!(all.items[1], replaced, "the later append wins");
    let with_bob = a.query(&alice, &ArchiveQuery { with: with(bob, None), ..everything() }).await.unwrap();
    assert_eq!(ids_of(&with_bob), vec![ids[0]], "the replaced message left bob's conversation");
    let with_phone = a.query(&alice, &ArchiveQuery { with: with(bob, Some("phone")), ..everything() }).await.unwrap();
    assert_eq!(with_phone.count, Some(0));
    let with_carol = a.query(&alice, &ArchiveQuery { with: with(carol, Some("desk")), ..everything() }).await.unwrap();
    assert_eq!(with_carol.items, vec![replaced.clone()], "it joined carol's conversation");

    // Same id twice in one call: applied in order.
    let first = entry(ids[2], bob, "a", false, "<first/>");
    let second = entry(ids[2], carol, "b", true, "<second/>");
    a.append(&[row(&alice, &first), row(&alice, &second)]).await.unwrap();
    let all = a.query(&alice, &everything()).await.unwrap();
    assert_eq!(all.count, Some(3));
    assert_eq!(all.items[2], second, "within one append the later row wins");
    let with_bob = a.query(&alice, &ArchiveQuery { with: with(bob, None), ..everything() }).await.unwrap();
    assert_eq!(ids_of(&with_bob), vec![ids[0]]);
    let with_carol = a.query(&alice, &ArchiveQuery { with: with(carol, None), ..everything() }).await.unwrap();
    assert_eq!(ids_of(&with_carol), vec![ids[1], ids[2]]);

    // Same id, same conversation, other resource.
    let moved = entry(ids[0], bob, "tablet", true, "<one moved/>");
    a.append(&[row(&alice, &moved)]).await.unwrap();
    let tablet = a.query(&alice, &ArchiveQuery { with: with(bob, Some("tablet")), ..everything() }).await.unwrap();
    assert_eq!(tablet.items, vec![moved]);
    let bare = a.query(&alice, &ArchiveQuery { with: with(bob, Some("")), ..everything() }).await.unwrap();
    assert_eq!(bare.count, Some(0), "the old resource no longer matches");
}

/// Bounds are exclusive at both ends; empty and inverted ranges and bounds outside the
/// archive return empty pages, never errors.
/// `append_new` (fresh ids, several owners and conversations per call, calls interleaved
/// with `append`) reads back exactly like `append`: order, `with` index, counts, paging.
pub async fn check_archive_append_new(stores: &Stores) {
    let a = &stores.archive;
    let (alice, bob) = (jid("alice@a-archnew.example"), jid("bob@a-archnew.example"));
    let parties = [("bob@a-archnew.example", "phone"), ("carol@c-archnew.example", ""), ("bob@a-archnew.example", "")];
    let ids = minted(5, 90);
    let mut model_alice = Vec::new();
    let mut model_bob = Vec::new();
    for (call, chunk) in ids.chunks(6).enumerate() {
        let mut batch = Vec::new();
        for (i, id) in chunk.iter().enumerate() {
            let (w, r) = parties[(call + i) % parties.len()];
            let e = entry(*id, w, r, i % 2 == 0, format!("<message n='{call}-{i}'/>"));
            batch.push(row(&alice, &e));
            model_alice.push(e.clone());
            if w.starts_with("bob@") {
                let mirrored = entry(*id, alice.as_str(), "desk", i % 2 != 0, e.stanza.clone());
                batch.push(row(&bob, &mirrored));
                model_bob.push(mirrored);
            }
        }
        if call % 3 == 2 {
            a.append(&batch).await.unwrap();
        } else {
            a.append_new(&batch).await.unwrap();
        }
    }
    for (owner, model) in [(&alice, &model_alice), (&bob, &model_bob)] {
        let all = a.query(owner, &everything()).await.unwrap();
        assert_eq!(all.items, *model, "every row of {owner}, in id order");
        assert_eq!(all.count, Some(model.len() as u64));
        for w in [
            with("bob@a-archnew.example", None),
            with("bob@a-archnew.example", Some("phone")),
            with("carol@c-archnew.example", None),
            with(alice.as_str(), None),
        ] {
            assert_like_model(stores, owner, model, &ArchiveQuery { with: w.clone(), ..everything() }).await;
            assert_like_model(stores, owner, model, &ArchiveQuery { with: w, from_end: true, ..page(7) }).await;
        }
    }
    let (fwd, _) =
        page_through(stores, &alice, &ArchiveQuery { with: with("carol@c-archnew.example", None), ..page(4) }, false)
            .await;
    let carol: Vec<ArchiveId> = model_alice.iter().filter(|e| e.with.starts_with("carol@")).map(|e| e.id).collect();
    assert!(carol.len() >= 20);
    assert_eq!(fwd, carol, "paging a conversation written by append_new");
}

pub async fn check_archive_bounds(stores: &Stores) {
    let a = &stores.archive;
    let alice = jid("alice@a-archbounds.example");
    let id = |n: u64| ArchiveId(n * 1000);
    let model: Vec<ArchiveEntry> =
        (1..=10).map(|n| entry(id(n), "bob@b-archbounds.example", "", n % 2 == 0, format!("<m n='{n}'/>"))).collect();
    a.append(&rows(&alice, &model)).await.unwrap();
    let q = |after: Option<u64>, before: Option<u64>| ArchiveQuery {
        after: after.map(ArchiveId),
        before: before.map(ArchiveId),
        ..everything()
    };
    let got = async |query: ArchiveQuery| ids_of(&a.query(&alice, &query).await.unwrap());

    assert_eq!(got(q(Some(3000), None)).await.first(), Some(&id(4)), "after is exclusive");
    assert_eq!(got(q(None, Some(6000))).await.last(), Some(&id(5)), "before is exclusive");
    assert_eq!(got(q(Some(3000), Some(6000))).await, vec![id(4), id(5)]);
    assert_eq!(got(q(Some(2999), Some(6001))).await, vec![id(3), id(4), id(5), id(6)], "bounds between ids");
    let adjacent = a.query(&alice, &q(Some(3000), Some(4000))).await.unwrap();
    assert_eq!(adjacent, ArchivePage { items: vec![], more: false, count: Some(0) }, "adjacent ids: nothing between");
    for (after, before) in [(5000, 5000), (6000, 3000), (u64::MAX, 0)] {
        let p = a.query(&alice, &q(Some(after), Some(before))).await.unwrap();
        assert_eq!((p.items.len(), p.more, p.count), (0, false, Some(0)), "empty range {after}..{before}");
    }
    for (after, before) in [(Some(10_000), None), (Some(10_001), None), (Some(u64::MAX), None)] {
        assert!(got(q(after, before)).await.is_empty(), "after {after:?} at or beyond the last id");
    }
    for before in [1000, 999, 0] {
        assert!(got(q(None, Some(before))).await.is_empty(), "before {before} at or below the first id");
    }
    assert_eq!(got(q(Some(999), None)).await.len(), 10);
    assert_eq!(got(q(Some(0), Some(u64::MAX))).await.len(), 10);
    assert_eq!(got(q(None, Some(10_001))).await.len(), 10);

    let back = ArchiveQuery { before: Some(id(6)), limit: 2, from_end: true, ..Default::default() };
    let p = a.query(&alice, &back).await.unwrap();
    assert_eq!((ids_of(&p), p.more), (vec![id(4), id(5)], true), "from_end counts back from before");
    let inside =
        ArchiveQuery { after: Some(id(3)), before: Some(id(6)), limit: 5, from_end: true, ..Default::default() };
    let p = a.query(&alice, &inside).await.unwrap();
    assert_eq!((ids_of(&p), p.more), (vec![id(4), id(5)], false));

    assert_eq!(a.bounds(&alice).await.unwrap(), Some((id(1), id(10))));
    assert_eq!(a.bounds(&jid("nobody@a-archbounds.example")).await.unwrap(), None);

    let edges = [None, Some(0), Some(999), Some(1000), Some(1500), Some(3000), Some(5999), Some(6000), Some(10_000)];
    let edges = edges.into_iter().chain([Some(10_001), Some(u64::MAX)]);
    let edges: Vec<Option<u64>> = edges.collect();
    for &after in &edges {
        for &before in &edges {
            for from_end in [false, true] {
                for (limit, count_cap) in [(0, 5), (2, 0), (2, 100), (100, 3)] {
                    let q = ArchiveQuery {
                        after: after.map(ArchiveId),
                        before: before.map(ArchiveId),
                        limit,
                        from_end,
                        count_cap,
                        ..Default::default()
                    };
                    assert_like_model(stores, &alice, &model, &q).await;
                }
            }
        }
    }
}

/// `with` as a bare JID (any resource) and as a full JID (that resource only), exact
/// matches only; `ids` lookups with unknown, duplicate and out-of-bounds ids.
pub async fn check_archive_with_and_ids(stores: &Stores) {
    let a = &stores.archive;
    let alice = jid("alice@a-archwith.example");
    let bob = "bob@b-archwith.example";
    // Each of these is a string prefix of, or has as prefix, bob's JID.
    let (bo, bob_org, carol) = ("bo@b-archwith.example", "bob@b-archwith.example.org", "carol@c-archwith.example");
    let parties = [(bob, "phone"), (bob, "laptop"), (bob, ""), (bo, "phone"), (bob_org, "phone"), (carol, "")];
    let ids = minted(3, 60);
    let model: Vec<ArchiveEntry> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (w, r) = parties[(i * 5 + i / 3) % parties.len()];
            entry(*id, w, r, i % 4 == 0, format!("<message n='{i}'/>"))
        })
        .collect();
    a.append(&rows(&alice, &model)).await.unwrap();
    let of = |pred: &dyn Fn(&ArchiveEntry) -> bool| -> Vec<ArchiveId> {
        model.iter().filter(|e| pred(e)).map(|e| e.id).collect()
    };

    let bob_all = a.query(&alice, &ArchiveQuery { with: with(bob, None), ..everything() }).await.unwrap();
    let expected = of(&|e| e.with == bob);
    assert!(expected.len() >= 20, "the data mixes conversations");
    assert_eq!(ids_of(&bob_all), expected, "bare with: every resource of that JID, nothing else");
    assert_eq!(bob_all.count, Some(expected.len() as u64));
    assert!(bob_all.items.iter().all(|e| e.with == bob), "no prefix or extension of bob's JID matches");
    let phone = a.query(&alice, &ArchiveQuery { with: with(bob, Some("phone")), ..everything() }).await.unwrap();
    assert_eq!(ids_of(&phone), of(&|e| e.with == bob && e.with_resource == "phone"), "full with: that resource only");
    assert!(!phone.items.is_empty());
    for (w, r) in [("dave@d-archwith.example", None), (bob, Some("tablet")), ("b-archwith.example", None)] {
        let p = a.query(&alice, &ArchiveQuery { with: with(w, r), ..everything() }).await.unwrap();
        assert_eq!((p.items.len(), p.more, p.count), (0, false, Some(0)), "no conversation with {w} {r:?}");
    }

    let (fwd, _) =
        page_through(stores, &alice, &ArchiveQuery { with: with(bob, Some("laptop")), ..page(2) }, false).await;
    assert_eq!(fwd, of(&|e| e.with == bob && e.with_resource == "laptop"), "paging a full-JID conversation");
    let (back, _) = page_through(stores, &alice, &ArchiveQuery { with: with(bob, None), ..page(3) }, true).await;
    assert_eq!(back, expected, "paging a bare-JID conversation backwards");

    let unknown = ArchiveId(ids[7].0 + 1);
    let lookup = vec![ids[5], ids[3], unknown, ids[5], ids[50]];
    let by_ids = |extra: ArchiveQuery| ArchiveQuery { ids: Some(lookup.clone()), ..extra };
    let p = a.query(&alice, &by_ids(everything())).await.unwrap();
    assert_eq!(ids_of(&p), vec![ids[3], ids[5], ids[50]], "ids: known ones, in archive order, once each");
    assert_eq!(p.count, Some(3));
    let p = a.query(&alice, &by_ids(ArchiveQuery { after: Some(ids[4]), ..everything() })).await.unwrap();
    assert_eq!(ids_of(&p), vec![ids[5], ids[50]], "ids outside the bounds are skipped");
    let p = a.query(&alice, &by_ids(ArchiveQuery { before: Some(ids[50]), ..everything() })).await.unwrap();
    assert_eq!(ids_of(&p), vec![ids[3], ids[5]]);
    let p = a.query(&alice, &by_ids(ArchiveQuery { limit: 1, from_end: true, ..Default::default() })).await.unwrap();
    assert_eq!((ids_of(&p), p.more), (vec![ids[50]], true));
    let p = a.query(&alice, &ArchiveQuery { ids: Some(vec![unknown, ArchiveId(1)]), ..everything() }).await.unwrap();
    assert_eq!((p.items.len(), p.count), (0, Some(0)), "unknown ids only: nothing");
    let p = a.query(&alice, &ArchiveQuery { ids: Some(vec![]), ..everything() }).await.unwrap();
    assert_eq!((p.items.len(), p.count), (0, Some(0)), "an empty id list matches nothing");

    let filters =
        [None, with(bob, None), with(bob, Some("phone")), with(bob, Some("")), with(carol, None), with(bo, None)];
    let id_lists = [None, Some(lookup.clone()), Some(ids.iter().step_by(7).copied().collect::<Vec<_>>())];
    let bounds = [(None, None), (Some(ids[10]), None), (None, Some(ids[45])), (Some(ids[10]), Some(ids[45]))];
    for w in &filters {
        for id_list in &id_lists {
            for (after, before) in bounds {
                for from_end in [false, true] {
                    for (limit, count_cap) in [(0, 100), (1, 0), (4, 5), (100, 100)] {
                        let q = ArchiveQuery {
                            with: w.clone(),
                            ids: id_list.clone(),
                            after,
                            before,
                            limit,
                            from_end,
                            count_cap,
                        };
                        assert_like_model(stores, &alice, &model, &q).await;
                    }
                }
            }
        }
    }
}

/// Owners never see each other's rows, also when one owner's JID is a string prefix of
/// another's or the ids are the same.
pub async fn check_archive_isolation(stores: &Stores) {
    let a = &stores.archive;
    let owners: Vec<BareJid> = [
        "al@a-archiso.example",
        "alice@a-archiso.example",
        "alice@a-archiso.example.org",
        "a-archiso.example",
        "alice@b-archiso.example",
    ]
    .into_iter()
    .map(jid)
    .collect();
    let peer = "peer@p-archiso.example";
    let ids = minted(4, 5);
    let model_of = |o: &BareJid| -> Vec<ArchiveEntry> {
        ids.iter().map(|id| entry(*id, peer, "r", true, format!("<m owner='{o}' id='{id}'/>"))).collect()
    };
    // One call, owners interleaved.
    let mut batch = Vec::new();
    for i in 0..ids.len() {
        for o in &owners {
            batch.push(row(o, &model_of(o)[i]));
        }
    }
    a.append(&batch).await.unwrap();

    for o in &owners {
        let all = a.query(o, &everything()).await.unwrap();
        assert_eq!(all.items, model_of(o), "{o} sees exactly its own rows");
        let w = a.query(o, &ArchiveQuery { with: with(peer, Some("r")), ..everything() }).await.unwrap();
        assert_eq!(w.items, model_of(o), "{o}: with filter sees its own rows only");
        let by_id = a.query(o, &ArchiveQuery { ids: Some(vec![ids[2]]), ..everything() }).await.unwrap();
        assert_eq!(by_id.items, vec![model_of(o)[2].clone()], "{o}: an id names its own row");
        assert_eq!(a.bounds(o).await.unwrap(), Some((ids[0], ids[4])));
    }

    let (al, alice) = (&owners[0], &owners[1]);
    let extra = entry(ArchiveId(ids[4].0 + 4), peer, "r", false, "<extra/>");
    a.append(&[row(alice, &extra)]).await.unwrap();
    assert_eq!(a.bounds(alice).await.unwrap(), Some((ids[0], extra.id)));
    assert_eq!(a.query(al, &everything()).await.unwrap().count, Some(5), "another owner's append is invisible");

    assert_eq!(a.remove_before(alice, ids[3]).await.unwrap(), 3);
    assert_eq!(ids_of(&a.query(alice, &everything()).await.unwrap()), vec![ids[3], ids[4], extra.id]);
    a.delete_all(al).await.unwrap();
    assert_eq!(a.query(al, &everything()).await.unwrap().count, Some(0));
    assert_eq!(a.bounds(al).await.unwrap(), None);
    for o in &owners[2..] {
        assert_eq!(a.query(o, &everything()).await.unwrap().items, model_of(o), "{o} untouched by others' removals");
        let w = a.query(o, &ArchiveQuery { with: with(peer, None), ..everything() }).await.unwrap();
        assert_eq!(w.count, Some(5), "{o}: conversation index untouched by others' removals");
    }
    assert_eq!(a.query(alice, &everything()).await.unwrap().count, Some(3), "delete_all of al@ spares alice@");

    let prefs = ArchivePrefs { default: ArchiveDefault::Never, always: vec![peer.to_owned()], never: vec![] };
    a.set_prefs(alice, &prefs).await.unwrap();
    for o in owners.iter().filter(|o| *o != alice) {
        assert_eq!(a.get_prefs(o).await.unwrap(), None, "{o}: prefs are per owner");
    }
}

/// `count` is the size of the whole matching set within the cap, None beyond it, and
/// follows the filters; counting never changes items or `more`.
pub async fn check_archive_count(stores: &Stores) {
    let a = &stores.archive;
    let alice = jid("alice@a-archcount.example");
    let bob = "bob@b-archcount.example";
    let ids = minted(5, 30);
    let model: Vec<ArchiveEntry> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (w, r) = if i % 3 == 0 { (bob, if i % 2 == 0 { "a" } else { "b" }) } else { ("carol@c.example", "") };
            entry(*id, w, r, false, format!("<m n='{i}'/>"))
        })
        .collect();
    a.append(&rows(&alice, &model)).await.unwrap();
    let count = async |q: ArchiveQuery| a.query(&alice, &q).await.unwrap().count;

    for (cap, want) in [(30, Some(30)), (31, Some(30)), (10_000, Some(30)), (29, None), (1, None), (0, None)] {
        assert_eq!(count(ArchiveQuery { count_cap: cap, ..page(5) }).await, want, "cap {cap}");
        let back = ArchiveQuery { count_cap: cap, from_end: true, ..page(5) };
        assert_eq!(count(back).await, want, "cap {cap}, from_end");
    }
    let p = a.query(&alice, &ArchiveQuery { count_cap: 29, ..page(5) }).await.unwrap();
    assert_eq!((ids_of(&p), p.more), (ids[..5].to_vec(), true), "an exceeded cap changes neither items nor more");
    let p = a.query(&alice, &ArchiveQuery { count_cap: 100, ..page(100) }).await.unwrap();
    assert_eq!((p.items.len(), p.more, p.count), (30, false, Some(30)));

    let bob_q = |cap: usize| ArchiveQuery { with: with(bob, None), count_cap: cap, ..page(2) };
    assert_eq!(count(bob_q(10)).await, Some(10), "count follows the with filter");
    assert_eq!(count(bob_q(9)).await, None);
    let res_a = ArchiveQuery { with: with(bob, Some("a")), count_cap: 100, ..page(1) };
    assert_eq!(count(res_a).await, Some(5), "count follows the resource");
    assert_eq!(count(ArchiveQuery { after: Some(ids[9]), count_cap: 100, ..page(1) }).await, Some(20));
    assert_eq!(count(ArchiveQuery { before: Some(ids[9]), count_cap: 100, ..page(1) }).await, Some(9));
    let bounded_with = ArchiveQuery { with: with(bob, None), after: Some(ids[9]), count_cap: 100, ..page(1) };
    assert_eq!(count(bounded_with).await, Some(6), "count follows with and bounds together");
    let by_ids = ArchiveQuery { ids: Some(vec![ids[0], ids[1], ids[2], ids[3]]), count_cap: 100, ..page(1) };
    assert_eq!(count(by_ids.clone()).await, Some(4));
    let by_ids_bob = ArchiveQuery { with: with(bob, None), ..by_ids };
    assert_eq!(count(by_ids_bob).await, Some(2), "ids [0, 3] are bob's");
}

/// 8 tasks append 500 rows each to one owner, ids from one generator per task (distinct
/// node numbers): all 4,000 are stored, in strict id order, each with its own stanza.
pub async fn check_archive_concurrent(stores: &Stores) {
    const TASKS: u16 = 8;
    const PER_TASK: usize = 500;
    let alice = jid("alice@a-archconc.example");
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let archive = stores.archive.clone();
        let alice = alice.clone();
        tasks.spawn(async move {
            let ids = ArchiveIdGen::new(t + 1);
            let mut acked = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let e = entry(
                    ids.next(),
                    &format!("peer{t}@b-archconc.example"),
                    "",
                    false,
                    format!("<m t='{t}' i='{i}'/>"),
                );
                archive.append(&[row(&alice, &e)]).await.unwrap();
                acked.push(e);
            }
            acked
        });
    }
    let mut acked: BTreeMap<ArchiveId, ArchiveEntry> = BTreeMap::new();
    while let Some(res) = tasks.join_next().await {
        for e in res.expect("archive writer task panicked") {
            assert!(acked.insert(e.id, e).is_none(), "ids from distinct nodes never collide");
        }
    }
    let total = usize::from(TASKS) * PER_TASK;
    assert_eq!(acked.len(), total);

    let all = stores.archive.query(&alice, &everything()).await.unwrap();
    assert_eq!(all.count, Some(total as u64), "every acknowledged append is stored");
    let got = ids_of(&all);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "strictly increasing ids");
    let model: Vec<ArchiveEntry> = acked.into_values().collect();
    assert!(all.items == model, "each id holds its own message");
    let bounds = stores.archive.bounds(&alice).await.unwrap();
    assert_eq!(bounds, Some((model[0].id, model[total - 1].id)));
    let peer3 = ArchiveQuery { with: with("peer3@b-archconc.example", None), ..everything() };
    assert_eq!(stores.archive.query(&alice, &peer3).await.unwrap().count, Some(PER_TASK as u64));
    let (fwd, _) = page_through(stores, &alice, &page(500), false).await;
    assert_eq!(fwd, got);
}

/// remove_before removes exactly the older rows of one owner (also from conversation
/// queries) and says how many; delete_all removes the archive and the preferences.
pub async fn check_archive_retention(stores: &Stores) {
    let a = &stores.archive;
    let alice = jid("alice@a-archret.example");
    let bob = jid("bob@a-archret.example");
    let ids = minted(6, 20);
    let model_of = |o: &str, peer: &str| -> Vec<ArchiveEntry> {
        let other = "carol@c-archret.example";
        let w = |i: usize| if i.is_multiple_of(2) { peer } else { other };
        ids.iter()
            .enumerate()
            .map(|(i, id)| entry(*id, w(i), "", i % 2 == 0, format!("<m o='{o}' n='{i}'/>")))
            .collect()
    };
    let alice_model = model_of("alice", bob.as_str());
    let bob_model = model_of("bob", alice.as_str());
    a.append(&rows(&alice, &alice_model)).await.unwrap();
    a.append(&rows(&bob, &bob_model)).await.unwrap();
    let with_bob = ArchiveQuery { with: with(bob.as_str(), None), ..everything() };

    assert_eq!(a.remove_before(&jid("nobody@a-archret.example"), ids[19]).await.unwrap(), 0);
    assert_eq!(a.remove_before(&alice, ids[0]).await.unwrap(), 0, "nothing is older than the first id");
    assert_eq!(a.query(&alice, &everything()).await.unwrap().count, Some(20));

    assert_eq!(a.remove_before(&alice, ids[10]).await.unwrap(), 10, "returns how many were removed");
    assert_eq!(
        a.query(&alice, &everything()).await.unwrap().items,
        alice_model[10..].to_vec(),
        "exactly the older rows"
    );
    let rest = &alice_model[10..];
    assert_like_model(stores, &alice, rest, &with_bob).await;
    assert_eq!(a.query(&alice, &with_bob).await.unwrap().count, Some(5), "conversation queries no longer see them");
    let by_ids = ArchiveQuery { ids: Some(vec![ids[3], ids[12]]), ..everything() };
    assert_eq!(ids_of(&a.query(&alice, &by_ids).await.unwrap()), vec![ids[12]]);
    assert_eq!(a.bounds(&alice).await.unwrap(), Some((ids[10], ids[19])));
    assert_eq!(a.query(&bob, &everything()).await.unwrap().items, bob_model, "other owners keep everything");
    assert_eq!(a.bounds(&bob).await.unwrap(), Some((ids[0], ids[19])));

    assert_eq!(a.remove_before(&alice, ids[10]).await.unwrap(), 0, "a repeat removes nothing");
    assert_eq!(a.remove_before(&alice, ArchiveId(ids[12].0 + 1)).await.unwrap(), 3, "a bound between ids");
    assert_eq!(a.bounds(&alice).await.unwrap(), Some((ids[13], ids[19])));
    assert_eq!(a.remove_before(&alice, ArchiveId(u64::MAX)).await.unwrap(), 7);
    assert_eq!(a.bounds(&alice).await.unwrap(), None);
    let p = a.query(&alice, &with_bob).await.unwrap();
    assert_eq!((p.items.len(), p.count), (0, Some(0)));

    let later = entry(ArchiveId(ids[19].0 + 8), bob.as_str(), "", true, "<later/>");
    a.append(&[row(&alice, &later)]).await.unwrap();
    assert_eq!(a.query(&alice, &with_bob).await.unwrap().items, vec![later.clone()], "appends work after retention");

    let prefs = ArchivePrefs { default: ArchiveDefault::Roster, always: vec![], never: vec!["x@y.example".into()] };
    a.set_prefs(&alice, &prefs).await.unwrap();
    a.set_prefs(&bob, &prefs).await.unwrap();
    a.delete_all(&alice).await.unwrap();
    assert_eq!(a.query(&alice, &everything()).await.unwrap().count, Some(0), "delete_all empties the archive");
    assert_eq!(a.query(&alice, &with_bob).await.unwrap().count, Some(0));
    assert_eq!(a.bounds(&alice).await.unwrap(), None);
    assert_eq!(a.get_prefs(&alice).await.unwrap(), None, "delete_all removes the preferences");
    assert_eq!(a.get_prefs(&bob).await.unwrap(), Some(prefs), "another owner's prefs stay");
    assert_eq!(a.query(&bob, &everything()).await.unwrap().items, bob_model);
    a.delete_all(&alice).await.unwrap();
    a.delete_all(&jid("nobody@a-archret.example")).await.unwrap();

    a.append(&[row(&alice, &later)]).await.unwrap();
    assert_eq!(a.query(&alice, &with_bob).await.unwrap().items, vec![later], "appends work after delete_all");
}

/// Non-ASCII owners, peers, resources and bodies; a 200 KiB stanza round-trips byte-exact
/// through every read path.
pub async fn check_archive_unicode(stores: &Stores) {
    let a = &stores.archive;
    let owner = jid("ñoño@例え.jp");
    let (jurgen, yonghu) = ("jürgen@münchen.example", "用户@例え.jp");
    let big: Bytes = (0..200 * 1024u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let ids = minted(7, 4);
    let model = vec![
        entry(ids[0], jurgen, "Téléphone 📱", true, "<message><body>¡Hola, señor! 你好 🦀</body></message>"),
        entry(ids[1], yonghu, "", false, "<message><body>«quoted» — ёжик</body></message>"),
        entry(ids[2], jurgen, "Téléphone 📱", false, big.clone()),
        entry(ids[3], jurgen, "ordinateur", false, "<message><body>zoë</body></message>"),
    ];
    a.append(&rows(&owner, &model)).await.unwrap();

    let all = a.query(&owner, &everything()).await.unwrap();
    assert_eq!(all.items, model, "non-ASCII fields round-trip");
    assert!(all.items[2].stanza == big, "200 KiB stanza byte-exact");
    let phone = a.query(&owner, &ArchiveQuery { with: with(jurgen, Some("Téléphone 📱")), ..everything() }).await;
    let phone = phone.unwrap();
    assert_eq!(ids_of(&phone), vec![ids[0], ids[2]], "full-JID filter with a non-ASCII resource");
    assert!(phone.items[1].stanza == big, "large stanza through a with query");
    let bare = a.query(&owner, &ArchiveQuery { with: with(jurgen, None), ..everything() }).await.unwrap();
    assert_eq!(ids_of(&bare), vec![ids[0], ids[2], ids[3]]);
    let other = a.query(&owner, &ArchiveQuery { with: with(yonghu, None), ..everything() }).await.unwrap();
    assert_eq!(other.items, vec![model[1].clone()]);
    let by_id = a.query(&owner, &ArchiveQuery { ids: Some(vec![ids[2]]), ..everything() }).await.unwrap();
    assert!(by_id.items.len() == 1 && by_id.items[0].stanza == big, "large stanza through an ids query");
    assert_eq!(a.query(&jid("nono@例え.jp"), &everything()).await.unwrap().count, Some(0));
    assert_eq!(a.bounds(&owner).await.unwrap(), Some((ids[0], ids[3])));
}

/// 12,000 messages for one owner: pages from the middle, the ends and one conversation.
pub async fn check_archive_scale(stores: &Stores) {
    const N: usize = 12_000;
    let a = &stores.archive;
    let alice = jid("alice@a-archscale.example");
    let peers = ["p0@b-archscale.example", "p1@b-archscale.example", "p2@b-archscale.example"];
    let ids = minted(8, N);
    let model: Vec<ArchiveEntry> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| entry(*id, peers[i % 3], "r", i % 2 == 0, format!("<message n='{i}'><body>hi</body></message>")))
        .collect();
    for chunk in model.chunks(250) {
        a.append(&rows(&alice, chunk)).await.unwrap();
    }

    let mid = ArchiveQuery { after: Some(ids[6000]), ..page(50) };
    let p = a.query(&alice, &mid).await.unwrap();
    assert_eq!(p.items, model[6001..6051].to_vec(), "the 50 items after the middle id");
    assert!(p.more);
    let mid_back = ArchiveQuery { before: Some(ids[6000]), from_end: true, ..page(50) };
    let p = a.query(&alice, &mid_back).await.unwrap();
    assert_eq!(p.items, model[5950..6000].to_vec(), "the 50 items before the middle id");
    assert!(p.more);
    let last = a.query(&alice, &ArchiveQuery { from_end: true, ..page(50) }).await.unwrap();
    assert_eq!(last.items, model[N - 50..].to_vec(), "the last page");
    let first = a.query(&alice, &page(50)).await.unwrap();
    assert_eq!(first.items, model[..50].to_vec());
    let conv = ArchiveQuery { with: with(peers[1], None), after: Some(ids[6000]), ..page(50) };
    let p = a.query(&alice, &conv).await.unwrap();
    let want: Vec<ArchiveEntry> = model[6001..].iter().filter(|e| e.with == peers[1]).take(50).cloned().collect();
    assert_eq!(p.items, want, "a conversation page from the middle");
    assert_like_model(stores, &alice, &model, &ArchiveQuery { count_cap: 20_000, ..mid }).await;
    assert_like_model(stores, &alice, &model, &ArchiveQuery { count_cap: 5_000, ..conv }).await;
    assert_eq!(a.query(&alice, &ArchiveQuery { count_cap: N, ..page(1) }).await.unwrap().count, Some(N as u64));
    assert_eq!(a.query(&alice, &ArchiveQuery { count_cap: N - 1, ..page(1) }).await.unwrap().count, None);
    assert_eq!(a.bounds(&alice).await.unwrap(), Some((ids[0], ids[N - 1])));
}

/// Preferences: None before the first set, then a full round trip, replaced by later sets.
pub async fn check_archive_prefs(stores: &Stores) {
    let a = &stores.archive;
    let alice = jid("alice@a-archprefs.example");
    let bob = jid("bob@a-archprefs.example");
    assert_eq!(a.get_prefs(&alice).await.unwrap(), None, "no prefs before the first set");

    let first = ArchivePrefs {
        default: ArchiveDefault::Always,
        always: vec!["romeo@montague.example".into(), "ñoño@例え.jp".into()],
        never: vec!["tybalt@capulet.example".into(), "nurse@capulet.example/balcony".into()],
    };
    a.set_prefs(&alice, &first).await.unwrap();
    assert_eq!(a.get_prefs(&alice).await.unwrap(), Some(first.clone()), "prefs round-trip, lists in order");
    assert_eq!(a.get_prefs(&bob).await.unwrap(), None, "prefs are per owner");

    for default in [ArchiveDefault::Never, ArchiveDefault::Roster, ArchiveDefault::Always] {
        let next = ArchivePrefs { default, always: vec![], never: vec!["x@y.example".into()] };
        a.set_prefs(&alice, &next).await.unwrap();
        assert_eq!(a.get_prefs(&alice).await.unwrap(), Some(next), "set replaces ({default:?})");
    }
    a.set_prefs(&bob, &first).await.unwrap();
    a.delete_all(&alice).await.unwrap();
    assert_eq!(a.get_prefs(&alice).await.unwrap(), None);
    assert_eq!(a.get_prefs(&bob).await.unwrap(), Some(first));
}
