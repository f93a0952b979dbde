//! Archiving on delivery (XEP-0313 §3.5, §6.1.1, XEP-0441 preferences, XEP-0334 hints,
//! XEP-0359 stanza-ids) and message carbons (XEP-0280), against the real router with
//! memory stores.

use super::*;
use rookery_storage::{
    ArchiveDefault, ArchiveEntry, ArchiveId, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveRow, ArchiveStore,
    MemoryStore, RosterItem, StoreError,
};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const EVE: &str = "eve@example.com";

/// The memory archive, counting every call, optionally failing appends.
struct TestArchive {
    inner: MemoryStore,
    calls: AtomicUsize,
    fail_append: bool,
}

impl TestArchive {
    fn new(fail_append: bool) -> Arc<Self> {
        Arc::new(TestArchive { inner: MemoryStore::new(), calls: AtomicUsize::new(0), fail_append })
    }
    fn calls(&self) -> usize {
        self.calls.load(AtomicOrdering::SeqCst)
    }
    fn count(&self) {
        self.calls.fetch_add(1, AtomicOrdering::SeqCst);
    }
}

#[async_trait]
impl ArchiveStore for TestArchive {
    async fn append(&self, rows: &[ArchiveRow]) -> rookery_storage::Result<()> {
        self.count();
        if self.fail_append {
            return Err(StoreError::Backend("disk full".into()));
        }
        self.inner.append(rows).await
    }
    async fn query(&self, owner: &BareJid, q: &ArchiveQuery) -> rookery_storage::Result<ArchivePage> {
        self.count();
        self.inner.query(owner, q).await
    }
    async fn bounds(&self, owner: &BareJid) -> rookery_storage::Result<Option<(ArchiveId, ArchiveId)>> {
        self.count();
        self.inner.bounds(owner).await
    }
    async fn remove_before(&self, owner: &BareJid, before: ArchiveId) -> rookery_storage::Result<u64> {
        self.count();
        self.inner.remove_before(owner, before).await
    }
    async fn delete_all(&self, owner: &BareJid) -> rookery_storage::Result<()> {
        self.count();
        self.inner.delete_all(owner).await
    }
    async fn get_prefs(&self, owner: &BareJid) -> rookery_storage::Result<Option<ArchivePrefs>> {
        self.count();
        self.inner.get_prefs(owner).await
    }
    async fn set_prefs(&self, owner: &BareJid, prefs: &ArchivePrefs) -> rookery_storage::Result<()> {
        self.count();
        self.inner.set_prefs(owner, prefs).await
    }
}

fn bare(s: &str) -> BareJid {
    BareJid::parse(s).unwrap()
}

/// (by, id) of every `<stanza-id/>` that is a direct child of the message.
fn stanza_ids(stanza: &str) -> Vec<(String, String)> {
    let el = rookery_xml::parse_element(stanza.as_bytes(), "jabber:client").unwrap();
    el.elements()
        .filter(|c| c.is("stanza-id", NS_SID))
        .map(|c| (c.get_attr("by").unwrap().to_owned(), c.get_attr("id").unwrap().to_owned()))
        .collect()
}

fn text(b: &bytes::Bytes) -> String {
    String::from_utf8(b.to_vec()).unwrap().replace('\'', "\"")
}

impl World {
    /// Binds and sends available presence with `prio`, then forgets what it was sent.
    pub(super) async fn online(&self, jid: &str, conn: u64, prio: i8) {
        self.bind(jid, conn).await;
        self.send(jid, &format!("<presence><priority>{prio}</priority></presence>")).await;
        self.cap.take(conn);
    }
    async fn archive(&self, owner: &str) -> Vec<ArchiveEntry> {
        let q = ArchiveQuery { limit: 1000, ..ArchiveQuery::default() };
        self.router.stores().archive.query(&bare(owner), &q).await.unwrap().items
    }
    fn messages(&self, conn: u64) -> Vec<String> {
        self.cap.take(conn).into_iter().filter(|s| s.starts_with("<message")).collect()
    }
    async fn carbons(&self, jid: &str, conn: u64, on: bool) {
        let verb = if on { "enable" } else { "disable" };
        self.send(jid, &format!("<iq type='set' id='c'><{verb} xmlns='urn:xmpp:carbons:2'/></iq>")).await;
        let r: Vec<_> = self.cap.take(conn).into_iter().filter(|s| s.starts_with("<iq")).collect();
        assert!(r.len() == 1 && r[0].contains("type=\"result\"") && r[0].contains("id=\"c\""), "{r:?}");
    }
    async fn prefs(&self, owner: &str, prefs: ArchivePrefs) {
        self.router.stores().archive.set_prefs(&bare(owner), &prefs).await.unwrap();
        // As the MAM module publishes it when a client sets preferences.
        self.router.run_change(rookery_modules::mam::PREFS_TOPIC, Some(bare(owner))).await;
    }
}

#[tokio::test]
async fn both_sides_archived_and_the_delivered_copy_carries_its_id() {
    let w = world(&[ALICE, BOB]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("bob@example.com/b", 2, 0).await;
    w.send("alice@example.com/a", "<message to='bob@example.com' id='m1' type='chat'><body>hi</body><origin-id xmlns='urn:xmpp:sid:0' id='o1'/></message>").await;
    let b = w.messages(2);
    assert_eq!(b.len(), 1, "{b:?}");
    let ids = stanza_ids(&b[0]);
    assert_eq!(ids.len(), 1, "exactly one stanza-id: {b:?}");
    assert_eq!(ids[0].0, BOB, "by the recipient's bare JID");
    assert!(b[0].contains("<origin-id xmlns=\"urn:xmpp:sid:0\" id=\"o1\"/>"), "origin-id untouched: {b:?}");

    let bob = w.archive(BOB).await;
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0].id.encode(), ids[0].1, "the delivered id is the archive id");
    assert_eq!((bob[0].with.as_str(), bob[0].with_resource.as_str(), bob[0].outgoing), (ALICE, "a", false));
    assert_eq!(text(&bob[0].stanza), b[0], "the archive holds what was delivered");

    let alice = w.archive(ALICE).await;
    assert_eq!(alice.len(), 1);
    assert_eq!((alice[0].with.as_str(), alice[0].with_resource.as_str(), alice[0].outgoing), (BOB, "", true));
    assert_ne!(alice[0].id, bob[0].id);
    let own = stanza_ids(&text(&alice[0].stanza));
    assert_eq!(own, vec![(ALICE.to_owned(), alice[0].id.encode())], "the sender's copy has the sender's id");

    // Self-contained: namespace and stamped addresses on the stored root.
    for e in [&alice[0], &bob[0]] {
        let el = rookery_xml::RawElement::from_bytes(e.stanza.clone(), "").unwrap();
        assert_eq!(el.ns, "jabber:client");
        assert_eq!(el.from.as_deref(), Some("alice@example.com/a"));
        assert_eq!(el.to.as_deref(), Some(BOB));
    }
    assert!(w.cap.take(1).is_empty(), "the sender gets nothing back");
}

#[tokio::test]
async fn full_jid_recipient_is_kept_as_the_resource_of_the_sender_row() {
    let w = world(&[ALICE, BOB]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("bob@example.com/b", 2, 0).await;
    w.send("alice@example.com/a", "<message to='bob@example.com/b'><body>direct</body></message>").await;
    assert_eq!(stanza_ids(&w.messages(2)[0]).len(), 1, "type normal with a body is archived");
    let alice = w.archive(ALICE).await;
    assert_eq!((alice[0].with.as_str(), alice[0].with_resource.as_str()), (BOB, "b"));
}

#[tokio::test]
async fn a_message_between_two_resources_of_one_account_is_archived_once() {
    let w = world(&[ALICE]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("alice@example.com/b", 2, 0).await;
    w.carbons("alice@example.com/a", 1, true).await;
    w.send("alice@example.com/a", "<message to='alice@example.com/b' type='chat'><body>note</body></message>").await;
    let b = w.messages(2);
    assert_eq!(stanza_ids(&b[0]).len(), 1, "{b:?}");
    let rows = w.archive(ALICE).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].with.as_str(), rows[0].with_resource.as_str(), rows[0].outgoing), (ALICE, "a", false));
    assert!(w.messages(1).is_empty(), "the sending resource gets no copy of its own message");
}

#[tokio::test]
async fn spoofed_stanza_ids_are_removed_and_third_party_ones_kept() {
    for enabled in [true, false] {
        let w = world_with(&[ALICE, BOB], ArchiveSettings { enabled, ..ArchiveSettings::default() }, None).await;
        w.online("alice@example.com/a", 1, 0).await;
        w.online("bob@example.com/b", 2, 0).await;
        w.send(
            "alice@example.com/a",
            "<message to='bob@example.com' type='chat'><body>x</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@example.com' id='fake1'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='example.com' id='fake2'/>\
             <s:stanza-id xmlns:s='urn:xmpp:sid:0' by='alice@example.com' id='fake3'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='room@chat.elsewhere.example' id='keep'/></message>",
        )
        .await;
        let b = w.messages(2);
        assert_eq!(b.len(), 1);
        assert!(!b[0].contains("fake"), "enabled={enabled}: {b:?}");
        let ids = stanza_ids(&b[0]);
        assert!(ids.contains(&("room@chat.elsewhere.example".to_owned(), "keep".to_owned())), "{ids:?}");
        assert_eq!(ids.iter().filter(|(by, _)| by == BOB).count(), usize::from(enabled), "{ids:?}");
        assert_eq!(ids.len(), 1 + usize::from(enabled));
        if enabled {
            let stored = text(&w.archive(BOB).await[0].stanza);
            assert!(!stored.contains("fake") && stored.contains("keep"), "{stored}");
        }
    }
}

#[tokio::test]
async fn messages_that_must_not_be_archived() {
    let w = world(&[ALICE, BOB]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("bob@example.com/b", 2, 0).await;
    let cases = [
        "<message to='bob@example.com' type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>",
        "<message to='bob@example.com' type='chat'><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>",
        "<message to='bob@example.com' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        "<message to='bob@example.com' type='chat'><received xmlns='urn:xmpp:receipts' id='m1'/></message>",
        "<message to='bob@example.com' type='error'><body>x</body><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        "<message to='bob@example.com' type='headline'><body>news</body></message>",
        "<message to='bob@example.com/b' type='groupchat'><body>room talk</body></message>",
        "<message to='bob@example.com'><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>x</body></html></message>",
        "<message to='bob@example.com'><result xmlns='urn:xmpp:mam:2' id='1'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>old</body></message></forwarded></result></message>",
    ];
    for xml in cases {
        w.send("alice@example.com/a", xml).await;
        let b = w.messages(2);
        assert_eq!(b.len(), 1, "delivered: {xml}");
        assert!(stanza_ids(&b[0]).is_empty(), "no stanza-id: {b:?}");
    }
    assert!(w.archive(BOB).await.is_empty());
    assert!(w.archive(ALICE).await.is_empty());
}

#[tokio::test]
async fn store_hint_and_encryption_archive_body_less_messages() {
    let w = world(&[ALICE, BOB]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("bob@example.com/b", 2, 0).await;
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><store xmlns='urn:xmpp:hints'/><x xmlns='urn:example:app'/></message>").await;
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'><payload>AA==</payload></encrypted></message>").await;
    let b = w.messages(2);
    assert!(b.iter().all(|m| stanza_ids(m).len() == 1), "{b:?}");
    assert_eq!(w.archive(BOB).await.len(), 2);
    assert_eq!(w.archive(ALICE).await.len(), 2);
}

#[tokio::test]
async fn preferences_decide_each_side() {
    let w = world(&[ALICE, BOB, EVE]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("bob@example.com/b", 2, 0).await;
    w.online("eve@example.com/e", 3, 0).await;
    let msg = "<message to='bob@example.com' type='chat'><body>x</body></message>";

    // never: bob's side is not archived (and gets no id), alice's still is.
    w.prefs(BOB, ArchivePrefs { default: ArchiveDefault::Never, ..ArchivePrefs::default() }).await;
    w.send("alice@example.com/a", msg).await;
    assert!(stanza_ids(&w.messages(2)[0]).is_empty());
    assert!(w.archive(BOB).await.is_empty());
    assert_eq!(w.archive(ALICE).await.len(), 1);

    // always list beats the default; never list beats the always list.
    w.prefs(BOB, ArchivePrefs { default: ArchiveDefault::Never, always: vec![ALICE.into()], never: vec![] }).await;
    w.send("alice@example.com/a", msg).await;
    assert_eq!(w.archive(BOB).await.len(), 1);
    w.prefs(
        BOB,
        ArchivePrefs { default: ArchiveDefault::Always, always: vec![ALICE.into()], never: vec![ALICE.into()] },
    )
    .await;
    w.send("alice@example.com/a", msg).await;
    assert_eq!(w.archive(BOB).await.len(), 1);
    w.messages(2);

    // roster: the contact in bob's roster is archived, the stranger is not.
    w.prefs(BOB, ArchivePrefs { default: ArchiveDefault::Roster, ..ArchivePrefs::default() }).await;
    let item = RosterItem {
        jid: ALICE.into(),
        name: None,
        subscription: Subscription::None,
        ask: false,
        pending_in: None,
        approved: false,
        groups: vec![],
        hidden: false,
    };
    w.router.stores().roster.put_item(&bare(BOB), item).await.unwrap();
    w.send("alice@example.com/a", msg).await;
    w.send("eve@example.com/e", msg).await;
    let b = w.messages(2);
    assert_eq!(b.len(), 2);
    assert_eq!(stanza_ids(&b[0]).len(), 1, "contact: {b:?}");
    assert!(stanza_ids(&b[1]).is_empty(), "stranger: {b:?}");
    let bob = w.archive(BOB).await;
    assert_eq!(bob.len(), 2);
    assert_eq!(bob[1].with, ALICE);
    assert_eq!(w.archive(EVE).await.len(), 1, "eve archives her own side by her default");
}

#[tokio::test]
async fn a_prefs_change_applies_once_reported() {
    let w = world(&[ALICE, BOB]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("bob@example.com/b", 2, 0).await;
    let msg = "<message to='bob@example.com' type='chat'><body>x</body></message>";
    w.send("alice@example.com/a", msg).await;
    assert_eq!(w.archive(BOB).await.len(), 1);
    let never = ArchivePrefs { default: ArchiveDefault::Never, ..ArchivePrefs::default() };
    w.router.stores().archive.set_prefs(&bare(BOB), &never).await.unwrap();
    w.send("alice@example.com/a", msg).await;
    assert_eq!(w.archive(BOB).await.len(), 2, "the cached preference holds until the change is reported");
    w.router.run_change(rookery_modules::mam::PREFS_TOPIC, Some(bare(BOB))).await;
    w.send("alice@example.com/a", msg).await;
    assert_eq!(w.archive(BOB).await.len(), 2, "after the report the new preference applies");
    assert_eq!(w.archive(ALICE).await.len(), 3);
}

#[tokio::test]
async fn disabled_archiving_and_unarchivable_messages_never_touch_the_store() {
    let store = TestArchive::new(false);
    let off = ArchiveSettings { enabled: false, ..ArchiveSettings::default() };
    let w = world_with(&[ALICE, BOB], off, Some(store.clone())).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("bob@example.com/b", 2, 0).await;
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><body>x</body></message>").await;
    assert_eq!(w.messages(2).len(), 1);
    assert_eq!(store.calls(), 0);

    let store = TestArchive::new(false);
    let w = world_with(&[ALICE, BOB], ArchiveSettings::default(), Some(store.clone())).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("bob@example.com/b", 2, 0).await;
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'/>").await;
    assert_eq!(w.messages(2).len(), 2);
    assert_eq!(store.calls(), 0, "chat states are not archived and cost no store call");
}

#[tokio::test]
async fn offline_message_is_archived_once_and_delivered_with_its_id() {
    let w = world(&[ALICE, BOB]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><body>later</body></message>").await;
    assert!(w.cap.take(1).is_empty());
    let bob = w.archive(BOB).await;
    assert_eq!(bob.len(), 1);
    assert_eq!(w.archive(ALICE).await.len(), 1);
    w.bind("bob@example.com/b", 2).await;
    w.send("bob@example.com/b", "<presence/>").await;
    let b = w.messages(2);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].contains("<body>later</body>") && b[0].contains("urn:xmpp:delay"));
    assert_eq!(stanza_ids(&b[0]), vec![(BOB.to_owned(), bob[0].id.encode())]);
    assert_eq!(w.archive(BOB).await.len(), 1, "archived once");
}

#[tokio::test]
async fn unknown_or_refused_recipients_leave_no_archive_entry() {
    let w = world(&[ALICE, BOB]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.send("alice@example.com/a", "<message to='nobody@example.com' type='chat'><body>x</body></message>").await;
    for i in 0..4 {
        w.send("alice@example.com/a", &format!("<message to='bob@example.com' type='chat'><body>{i}</body></message>"))
            .await;
    }
    let a = w.cap.take(1);
    assert_eq!(a.iter().filter(|s| s.contains("service-unavailable")).count(), 2, "{a:?}");
    assert_eq!(w.archive(BOB).await.len(), 3, "the message refused by the full offline store is not archived");
    assert_eq!(w.archive(ALICE).await.len(), 3);
}

#[tokio::test]
async fn a_failing_archive_never_costs_a_message() {
    let store = TestArchive::new(true);
    let w = world_with(&[ALICE, BOB], ArchiveSettings::default(), Some(store.clone())).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("bob@example.com/b", 2, 0).await;
    w.carbons("bob@example.com/b", 2, true).await;
    w.online("bob@example.com/other", 3, -1).await;
    w.carbons("bob@example.com/other", 3, true).await;
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><body>still here</body></message>").await;
    let b = w.messages(2);
    assert_eq!(b.len(), 1);
    assert!(b[0].contains("still here") && stanza_ids(&b[0]).is_empty(), "no id that was not stored: {b:?}");
    let c = w.messages(3);
    assert_eq!(c.len(), 1);
    assert!(c[0].contains("<received") && !c[0].contains("stanza-id"), "{c:?}");
    assert!(w.cap.take(1).is_empty(), "no error to the sender");
    assert!(store.calls() > 0);
    // And to an offline user: stored for later, without an id.
    w.send("bob@example.com/b", "<presence type='unavailable'/>").await;
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><body>offline</body></message>").await;
    let stored = w.router.stores().offline.list(&bare(BOB)).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!text(&stored[0].stanza).contains("stanza-id"));
}

#[tokio::test]
async fn carbons_go_where_sections_7_and_8_say() {
    let w = world(&[ALICE, BOB]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("alice@example.com/b", 2, 0).await;
    w.online("alice@example.com/c", 3, 0).await;
    w.online("bob@example.com/x", 4, 5).await;
    w.online("bob@example.com/y", 5, 0).await;
    w.carbons("alice@example.com/b", 2, true).await;
    w.carbons("bob@example.com/y", 5, true).await;
    w.send("alice@example.com/a", "<message to='bob@example.com' id='m1' type='chat'><body>hi</body></message>").await;

    let x = w.messages(4);
    assert_eq!(x.len(), 1, "the highest priority resource gets the original");
    assert!(!x[0].contains("urn:xmpp:carbons:2"));
    let delivered_id = stanza_ids(&x[0]);

    let y = w.messages(5);
    assert_eq!(y.len(), 1, "{y:?}");
    let wrapper = rookery_xml::parse_element(y[0].as_bytes(), "jabber:client").unwrap();
    assert_eq!(wrapper.get_attr("from"), Some(BOB));
    assert_eq!(wrapper.get_attr("to"), Some("bob@example.com/y"));
    assert_eq!(wrapper.get_attr("type"), Some("chat"));
    let fwd = wrapper
        .get_child("received", "urn:xmpp:carbons:2")
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .expect("received/forwarded/message");
    assert_eq!(fwd.get_attr("from"), Some("alice@example.com/a"));
    assert_eq!(fwd.get_child("body", "jabber:client").unwrap().text_content(), "hi");
    let fwd_id = fwd.get_child("stanza-id", NS_SID).unwrap();
    assert_eq!(
        (fwd_id.get_attr("by").unwrap().to_owned(), fwd_id.get_attr("id").unwrap().to_owned()),
        delivered_id[0],
        "the carbon carries the delivered copy's stanza-id"
    );

    let b = w.messages(2);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].contains("<sent xmlns=\"urn:xmpp:carbons:2\">") && b[0].contains("from=\"alice@example.com\""));
    assert!(b[0].contains("to=\"alice@example.com/b\"") && b[0].contains("<body>hi</body>"));
    let alice_row = w.archive(ALICE).await;
    assert!(b[0].contains(&alice_row[0].id.encode()), "the sent copy carries the sender's archive id");
    assert!(w.messages(1).is_empty(), "not to the sending resource");
    assert!(w.messages(3).is_empty(), "not to a resource without carbons");

    // Addressed to the carbons-enabled resource itself: no copy to it.
    w.send("alice@example.com/a", "<message to='bob@example.com/y' type='chat'><body>direct</body></message>").await;
    let y = w.messages(5);
    assert_eq!(y.len(), 1);
    assert!(!y[0].contains("urn:xmpp:carbons:2"));
    assert!(w.messages(4).is_empty(), "bob/x has carbons off");

    // Chat states are copied too (§6.1: any chat message).
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    assert!(w.messages(5)[0].contains("<received"));
    assert!(w.messages(2)[0].contains("<sent"));
    w.messages(4);

    // A normal message without body or IM payload is not.
    w.send("alice@example.com/a", "<message to='bob@example.com'><x xmlns='jabber:x:oob'><url>u</url></x></message>")
        .await;
    assert_eq!(w.messages(4).len(), 1);
    assert!(w.messages(5).is_empty() && w.messages(2).is_empty());
}

#[tokio::test]
async fn private_and_no_copy_opt_out_and_disable_stops_copies() {
    let w = world(&[ALICE, BOB]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("alice@example.com/b", 2, 0).await;
    w.online("bob@example.com/x", 4, 5).await;
    w.online("bob@example.com/y", 5, 0).await;
    w.carbons("alice@example.com/b", 2, true).await;
    w.carbons("bob@example.com/y", 5, true).await;
    for opt_out in
        ["<private xmlns='urn:xmpp:carbons:2'/><no-copy xmlns='urn:xmpp:hints'/>", "<no-copy xmlns='urn:xmpp:hints'/>"]
    {
        w.send(
            "alice@example.com/a",
            &format!("<message to='bob@example.com/x' type='chat'><body>p</body>{opt_out}</message>"),
        )
        .await;
        assert_eq!(w.messages(4).len(), 1);
        assert!(w.messages(5).is_empty(), "no received copy for {opt_out}");
        assert!(w.messages(2).is_empty(), "no sent copy for {opt_out}");
    }
    w.carbons("bob@example.com/y", 5, false).await;
    w.carbons("alice@example.com/b", 2, false).await;
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><body>after</body></message>").await;
    assert_eq!(w.messages(4).len(), 1);
    assert!(w.messages(5).is_empty() && w.messages(2).is_empty());
}

#[tokio::test]
async fn forged_carbons_are_refused() {
    let w = world(&[ALICE, BOB, EVE]).await;
    w.online("bob@example.com/x", 4, 0).await;
    w.carbons("bob@example.com/x", 4, true).await;
    w.online("eve@example.com/e", 6, 0).await;
    let forged = "<message to='bob@example.com' type='chat' id='f'><received xmlns='urn:xmpp:carbons:2'>\
                  <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@example.com/a' \
                  to='bob@example.com/x' type='chat'><body>meet me</body></message></forwarded></received></message>";
    w.send("eve@example.com/e", forged).await;
    assert!(w.messages(4).is_empty(), "bob never sees it");
    let e = w.cap.take(6);
    assert!(e.iter().any(|s| s.contains("id=\"f\"") && s.contains("not-acceptable")), "{e:?}");
    // Hidden behind a prefix and a character reference: still recognised.
    let sneaky = "<message to='bob@example.com' type='chat'><c:sent xmlns:c='urn:xmpp:carbons&#x3a;2'>\
                  <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>x</body></message>\
                  </forwarded></c:sent></message>";
    w.send("eve@example.com/e", sneaky).await;
    assert!(w.messages(4).is_empty());
    assert!(w.archive(BOB).await.is_empty() && w.archive(EVE).await.is_empty());
    // A copy the server made that came back undelivered is dropped, not re-routed.
    let own = bytes::Bytes::from_static(
        b"<message from='bob@example.com' to='bob@example.com/gone' type='chat'><received xmlns='urn:xmpp:carbons:2'>\
          <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>x</body></message></forwarded>\
          </received></message>",
    );
    w.router.undelivered(&FullJid::parse("bob@example.com/gone").unwrap(), own).await;
    assert!(w.messages(4).is_empty());
    assert!(w.router.stores().offline.list(&bare(BOB)).await.unwrap().is_empty());
}

#[tokio::test]
async fn requeued_message_is_not_archived_again() {
    let w = world(&[ALICE, BOB]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("bob@example.com/b", 2, 0).await;
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><body>once</body></message>").await;
    let b = w.messages(2);
    // The session ends before writing it: the queued copy comes back to the router.
    w.router.unbind(&FullJid::parse("bob@example.com/b").unwrap(), Location { edge: 0, conn: 2 }).await;
    let queued = bytes::Bytes::from(b[0].clone());
    w.router.undelivered(&FullJid::parse("bob@example.com/b").unwrap(), queued).await;
    assert_eq!(w.archive(BOB).await.len(), 1);
    let stored = w.router.stores().offline.list(&bare(BOB)).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stanza_ids(&text(&stored[0].stanza)), stanza_ids(&b[0]), "same id as first delivered");
}

#[tokio::test]
async fn stanza_id_feature_follows_the_setting() {
    let w = world(&[ALICE]).await;
    assert!(w.router.features().account.contains(&NS_SID));
    assert!(w.router.features().host.contains(&"urn:xmpp:carbons:2"));
    let off = world_with(&[ALICE], ArchiveSettings { enabled: false, ..ArchiveSettings::default() }, None).await;
    assert!(!off.router.features().account.contains(&NS_SID));
}
