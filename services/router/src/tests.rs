//! Router tests: the kernel with the standard feature modules (carbons, blocking,
//! offline storage, the archive) registered, memory stores and a capturing edge link.
#![allow(clippy::unwrap_used)]

use super::*;
use rookery_storage::Subscription;
use rookery_storage::memory::memory_stores;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
struct Capture {
    out: Mutex<HashMap<u64, Vec<String>>>,
}

impl EdgeLink for Capture {
    fn free_capacity(&self, _loc: Location) -> usize {
        // The capture never fills up.
        usize::MAX
    }
    fn deliver(&self, loc: Location, out: Outbound) -> bool {
        let s = match out {
            // Quote style is the sender's; normalise it so assertions stay simple.
            Outbound::Stanza(b) => String::from_utf8(b.to_vec()).unwrap().replace('\'', "\""),
            Outbound::Close(c) => format!("CLOSE {}", c.name()),
        };
        self.out.lock().unwrap().entry(loc.conn).or_default().push(s);
        true
    }
}

impl Capture {
    fn take(&self, conn: u64) -> Vec<String> {
        self.out.lock().unwrap().remove(&conn).unwrap_or_default()
    }
}

struct World {
    router: Arc<LocalRouter>,
    cap: Arc<Capture>,
    /// The test component at `echo.example.com`.
    echo: Arc<components::Echo>,
}

/// How the world archives (the MAM module, when enabled).
#[derive(Debug, Clone, Copy)]
struct ArchiveSettings {
    enabled: bool,
    default: rookery_storage::ArchiveDefault,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        ArchiveSettings { enabled: true, default: rookery_storage::ArchiveDefault::Always }
    }
}

/// XEP-0359.
const NS_SID: &str = rookery_stanza::ns::SID;

fn parse_one(xml: &str) -> rookery_xml::RawElement {
    let mut f = rookery_xml::Framer::new(rookery_xml::Limits::default());
    f.read_buf().extend_from_slice(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
    );
    f.read_buf().extend_from_slice(xml.as_bytes());
    loop {
        match f.next_frame().unwrap().unwrap() {
            rookery_xml::Frame::Element(e) => return e,
            _ => continue,
        }
    }
}

async fn world(users: &[&str]) -> World {
    world_with(users, ArchiveSettings::default(), None).await
}

/// A world with chosen archive settings and, optionally, another archive store.
async fn world_with(
    users: &[&str],
    archive: ArchiveSettings,
    archive_store: Option<Arc<dyn rookery_storage::ArchiveStore>>,
) -> World {
    let mut stores = memory_stores();
    if let Some(a) = archive_store {
        stores.archive = a;
    }
    for u in users {
        let creds = rookery_sasl::new_credentials("secret", 64).unwrap();
        stores
            .accounts
            .create(&BareJid::parse(u).unwrap(), rookery_storage::Account { credentials: creds, created_at: 0 })
            .await
            .unwrap();
    }
    let cap = Arc::new(Capture::default());
    let echo = Arc::new(components::Echo::default());
    let cfg = RouterConfig {
        domains: vec!["example.com".into()],
        allow_registration: false,
        min_password_len: 8,
        iq_to_full_jid: crate::IqToFullJid::default(),
    };
    let router = LocalRouter::new(cfg, Arc::new(rookery_core::MemoryRegistry::new()), cap.clone(), stores, |r| {
        r.add(Arc::new(rookery_modules::Disco));
        r.add(echo.clone());
        r.add(Arc::new(components::Panicky));
        r.add(Arc::new(rookery_modules::Carbons));
        r.add(Arc::new(rookery_modules::Blocking::new()));
        r.add(Arc::new(rookery_modules::StanzaIds));
        r.add(Arc::new(rookery_modules::OfflineStore::new(rookery_modules::offline::OfflineConfig {
            max_per_user: 3,
        })));
        if archive.enabled {
            r.add(Arc::new(rookery_modules::Mam::new(rookery_modules::MamConfig {
                default_policy: archive.default,
                ..Default::default()
            })));
        }
    })
    .unwrap();
    World { router, cap, echo }
}

impl World {
    async fn bind(&self, jid: &str, conn: u64) {
        self.router.bind(&FullJid::parse(jid).unwrap(), Location { edge: 0, conn }).await.unwrap();
    }
    async fn send(&self, from: &str, xml: &str) {
        let el = parse_one(xml);
        let from = Jid::parse(from).unwrap();
        let to = match &el.to {
            Some(t) => Jid::parse(t).unwrap(),
            None => from.to_bare().into(),
        };
        let kind = Kind::from_name(&el.name).unwrap();
        let loc = self.router.registry().get(&FullJid::try_from(from.clone()).unwrap()).await.unwrap().loc;
        self.router.route(loc, Envelope { kind, from, to, el }).await;
    }
}

#[tokio::test]
async fn subscription_handshake_gives_both_and_presence() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.bind("bob@example.com/b", 2).await;
    w.send("alice@example.com/a", "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>").await;
    w.send("bob@example.com/b", "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>").await;
    w.send("alice@example.com/a", "<presence/>").await;
    w.send("bob@example.com/b", "<presence/>").await;
    w.cap.take(1);
    w.cap.take(2);
    w.send("alice@example.com/a", "<presence to='bob@example.com' type='subscribe'/>").await;
    let a = w.cap.take(1);
    assert!(a.iter().any(|s| s.contains("ask=\"subscribe\"")), "alice gets a push with ask: {a:?}");
    let b = w.cap.take(2);
    assert!(
        b.iter().any(|s| s.contains("type=\"subscribe\"") && s.contains("from=\"alice@example.com\"")),
        "bob gets the request from alice's bare JID: {b:?}"
    );
    w.send("bob@example.com/b", "<presence to='alice@example.com' type='subscribed'/>").await;
    let a = w.cap.take(1);
    assert!(a.iter().any(|s| s.contains("subscription=\"to\"")), "{a:?}");
    assert!(
        a.iter()
            .any(|s| s.starts_with("<presence") && s.contains("from=\"bob@example.com/b\"") && !s.contains("type=")),
        "alice sees bob: {a:?}"
    );
    let b = w.cap.take(2);
    assert!(b.iter().any(|s| s.contains("subscription=\"from\"")), "{b:?}");
    let item = w
        .router
        .stores()
        .roster
        .get_item(&BareJid::parse("alice@example.com").unwrap(), "bob@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(item.subscription, Subscription::To);
    assert!(!item.ask);
}

#[tokio::test]
async fn pre_approval_auto_accepts() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.bind("bob@example.com/b", 2).await;
    w.send("bob@example.com/b", "<presence to='alice@example.com' type='subscribed'/>").await;
    let bob = BareJid::parse("bob@example.com").unwrap();
    let item = w.router.stores().roster.get_item(&bob, "alice@example.com").await.unwrap().unwrap();
    assert!(item.approved);
    w.send("alice@example.com/a", "<presence to='bob@example.com' type='subscribe'/>").await;
    let item = w.router.stores().roster.get_item(&bob, "alice@example.com").await.unwrap().unwrap();
    assert_eq!(item.subscription, Subscription::From);
    assert!(!item.approved);
    assert!(w.cap.take(2).iter().all(|s| !s.contains("type=\"subscribe\"")), "no request shown to bob");
}

#[tokio::test]
async fn message_to_unknown_user_is_service_unavailable() {
    let w = world(&["alice@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.send("alice@example.com/a", "<message to='nobody@example.com' id='x' type='chat'><body>hi</body></message>")
        .await;
    let a = w.cap.take(1);
    assert_eq!(a.len(), 1, "{a:?}");
    assert!(a[0].contains("service-unavailable") && a[0].contains("type=\"error\""), "{a:?}");
}

#[tokio::test]
async fn offline_then_delivered_on_initial_presence() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.send("alice@example.com/a", "<message to='bob@example.com' id='m1' type='chat'><body>one</body></message>").await;
    w.send("alice@example.com/a", "<message to='bob@example.com' id='m2' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    assert!(w.cap.take(1).is_empty(), "no error to the sender");
    w.bind("bob@example.com/b", 2).await;
    w.send("bob@example.com/b", "<presence/>").await;
    let b = w.cap.take(2);
    let msgs: Vec<_> = b.iter().filter(|s| s.starts_with("<message")).collect();
    assert_eq!(msgs.len(), 1, "only the message with a body was stored: {b:?}");
    assert!(msgs[0].contains("<body>one</body>") && msgs[0].contains("urn:xmpp:delay"));
    let bob = BareJid::parse("bob@example.com").unwrap();
    assert_eq!(w.router.stores().offline.count(&bob).await.unwrap(), 0);
}

#[tokio::test]
async fn offline_quota_bounces() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    for i in 0..4 {
        w.send("alice@example.com/a", &format!("<message to='bob@example.com' id='m{i}'><body>{i}</body></message>"))
            .await;
    }
    let a = w.cap.take(1);
    assert_eq!(a.len(), 1, "{a:?}");
    assert!(a[0].contains("id=\"m3\"") && a[0].contains("service-unavailable"));
}

#[tokio::test]
async fn bare_message_goes_to_highest_priority_and_full_to_exact() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.bind("bob@example.com/low", 2).await;
    w.bind("bob@example.com/high", 3).await;
    w.send("bob@example.com/low", "<presence><priority>1</priority></presence>").await;
    w.send("bob@example.com/high", "<presence><priority>10</priority></presence>").await;
    w.cap.take(2);
    w.cap.take(3);
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><body>x</body></message>").await;
    assert!(w.cap.take(2).is_empty());
    let h = w.cap.take(3);
    assert_eq!(h.len(), 1);
    assert!(h[0].contains("to=\"bob@example.com\""), "to is not rewritten: {h:?}");
    w.send("alice@example.com/a", "<message to='bob@example.com/low' type='chat'><body>y</body></message>").await;
    assert_eq!(w.cap.take(2).len(), 1);
    assert!(w.cap.take(3).is_empty());
}

#[tokio::test]
async fn conflict_replaces_old_session() {
    let w = world(&["alice@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.bind("alice@example.com/a", 2).await;
    assert_eq!(w.cap.take(1), vec!["CLOSE conflict".to_string()]);
    // The old session's late unbind does not remove the new one.
    w.router.unbind(&FullJid::parse("alice@example.com/a").unwrap(), Location { edge: 0, conn: 1 }).await;
    assert_eq!(w.router.registry().count().await, 1);
}

#[tokio::test]
async fn roster_versioning_and_remove() {
    let w = world(&["alice@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.send("alice@example.com/a", "<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>").await;
    let r = w.cap.take(1);
    assert!(r[0].contains("ver=\"0\""), "{r:?}");
    w.send("alice@example.com/a", "<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='carol@example.com' name='C'><group>Friends</group></item></query></iq>").await;
    let r = w.cap.take(1);
    assert!(
        r.iter().any(|s| s.contains("type=\"set\"") && s.contains("ver=\"1\"") && s.contains("<group>Friends</group>")),
        "push: {r:?}"
    );
    assert!(r.iter().any(|s| s.contains("id=\"s\"") && s.contains("type=\"result\"")), "result: {r:?}");
    w.send("alice@example.com/a", "<iq type='get' id='g2'><query xmlns='jabber:iq:roster' ver='1'/></iq>").await;
    let r = w.cap.take(1);
    assert_eq!(r.len(), 1);
    assert!(r[0].ends_with("/>") && r[0].contains("type=\"result\""), "unchanged roster gives empty result: {r:?}");
    w.send("alice@example.com/a", "<iq type='set' id='d'><query xmlns='jabber:iq:roster'><item jid='carol@example.com' subscription='remove'/></query></iq>").await;
    let r = w.cap.take(1);
    assert!(r.iter().any(|s| s.contains("subscription=\"remove\"")), "{r:?}");
    w.send("alice@example.com/a", "<iq type='set' id='d2'><query xmlns='jabber:iq:roster'><item jid='carol@example.com' subscription='remove'/></query></iq>").await;
    let r = w.cap.take(1);
    assert!(r[0].contains("item-not-found"), "{r:?}");
    w.send("alice@example.com/a", "<iq type='set' id='two'><query xmlns='jabber:iq:roster'><item jid='x@example.com'/><item jid='y@example.com'/></query></iq>").await;
    assert!(w.cap.take(1)[0].contains("bad-request"));
}

#[tokio::test]
async fn unavailable_on_unbind_reaches_contacts() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.bind("bob@example.com/b", 2).await;
    w.send("alice@example.com/a", "<presence to='bob@example.com' type='subscribe'/>").await;
    w.send("bob@example.com/b", "<presence to='alice@example.com' type='subscribed'/>").await;
    w.send("alice@example.com/a", "<presence/>").await;
    w.send("bob@example.com/b", "<presence/>").await;
    w.cap.take(1);
    w.router.unbind(&FullJid::parse("bob@example.com/b").unwrap(), Location { edge: 0, conn: 2 }).await;
    let a = w.cap.take(1);
    assert!(a.iter().any(|s| s.contains("type=\"unavailable\"") && s.contains("from=\"bob@example.com/b\"")), "{a:?}");
}

async fn subscribed_pair(w: &World) {
    w.send("alice@example.com/a", "<presence to='bob@example.com' type='subscribe'/>").await;
    w.send("bob@example.com/b", "<presence to='alice@example.com' type='subscribed'/>").await;
    w.send("bob@example.com/b", "<presence to='alice@example.com' type='subscribe'/>").await;
    w.send("alice@example.com/a", "<presence to='bob@example.com' type='subscribed'/>").await;
}

#[tokio::test]
async fn offline_flushed_when_priority_turns_non_negative() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.bind("bob@example.com/b", 2).await;
    w.send("bob@example.com/b", "<presence><priority>-1</priority></presence>").await;
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat'><body>later</body></message>").await;
    assert!(w.cap.take(2).iter().all(|s| !s.contains("later")), "not to a negative-priority resource");
    w.send("bob@example.com/b", "<presence><priority>3</priority></presence>").await;
    assert!(w.cap.take(2).iter().any(|s| s.contains("<body>later</body>")), "delivered once non-negative");
    let bob = BareJid::parse("bob@example.com").unwrap();
    assert_eq!(w.router.stores().offline.count(&bob).await.unwrap(), 0);
}

#[tokio::test]
async fn directed_presence_only_session_sends_unavailable_on_unbind() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.bind("bob@example.com/b", 2).await;
    w.send("bob@example.com/b", "<presence/>").await;
    w.cap.take(2);
    w.send("alice@example.com/a", "<presence to='bob@example.com'/>").await;
    assert_eq!(w.cap.take(2).len(), 1);
    w.router.unbind(&FullJid::parse("alice@example.com/a").unwrap(), Location { edge: 0, conn: 1 }).await;
    let b = w.cap.take(2);
    assert!(
        b.iter().any(|s| s.contains("type=\"unavailable\"") && s.contains("from=\"alice@example.com/a\"")),
        "{b:?}"
    );
}

#[tokio::test]
async fn iq_to_full_jid_needs_shared_presence() {
    let w = world(&["alice@example.com", "bob@example.com", "eve@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.bind("bob@example.com/b", 2).await;
    w.bind("eve@example.com/e", 3).await;
    subscribed_pair(&w).await;
    w.cap.take(1);
    w.cap.take(2);
    w.send("eve@example.com/e", "<iq type='get' id='probe' to='bob@example.com/b'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert!(w.cap.take(2).is_empty(), "a stranger's IQ must not reach bob's resource");
    let e = w.cap.take(3);
    assert!(e.iter().any(|s| s.contains("id=\"probe\"") && s.contains("service-unavailable")), "{e:?}");
    w.send("alice@example.com/a", "<iq type='get' id='ok' to='bob@example.com/b'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert!(w.cap.take(2).iter().any(|s| s.contains("id=\"ok\"")), "a subscriber's IQ is delivered");
    // Directed presence opens the way too.
    w.send("bob@example.com/b", "<presence to='eve@example.com'/>").await;
    w.send("eve@example.com/e", "<iq type='get' id='now' to='bob@example.com/b'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert!(w.cap.take(2).iter().any(|s| s.contains("id=\"now\"")));
}

#[tokio::test]
async fn removing_a_pending_requester_leaks_no_presence() {
    let w = world(&["alice@example.com", "mallory@example.com"]).await;
    w.bind("alice@example.com/secret", 1).await;
    w.bind("mallory@example.com/m", 2).await;
    w.send("alice@example.com/secret", "<presence/>").await;
    w.send("mallory@example.com/m", "<presence/>").await;
    w.send("mallory@example.com/m", "<presence to='alice@example.com' type='subscribe'/>").await;
    w.send(
        "alice@example.com/secret",
        "<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='mallory@example.com'/></query></iq>",
    )
    .await;
    w.cap.take(2);
    w.send("alice@example.com/secret", "<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='mallory@example.com' subscription='remove'/></query></iq>").await;
    let m = w.cap.take(2);
    assert!(m.iter().all(|s| !s.contains("alice@example.com/secret")), "resource leaked: {m:?}");
    assert!(m.iter().any(|s| s.contains("type=\"unsubscribed\"")), "the request is denied: {m:?}");
}

#[tokio::test]
async fn blocked_contact_gets_no_presence_and_blocked_iq_is_refused() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.bind("bob@example.com/b", 2).await;
    subscribed_pair(&w).await;
    w.send("alice@example.com/a", "<presence/>").await;
    w.send("bob@example.com/b", "<presence/>").await;
    w.cap.take(1);
    w.cap.take(2);
    w.send(
        "alice@example.com/a",
        "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='bob@example.com'/></block></iq>",
    )
    .await;
    assert!(w.cap.take(1).iter().any(|s| s.contains("id=\"b\"") && s.contains("type=\"result\"")));
    // XEP-0191 §3.3: the newly blocked contact sees alice go unavailable.
    let b = w.cap.take(2);
    assert!(
        b.iter().any(|s| s.starts_with("<presence") && s.contains("alice@example.com/a") && s.contains("unavailable")),
        "{b:?}"
    );
    w.send("alice@example.com/a", "<presence type='unavailable'><status>away until May</status></presence>").await;
    assert!(w.cap.take(2).iter().all(|s| !s.contains("away until May")), "status reached a blocked contact");
    w.send("alice@example.com/a", "<iq type='get' id='v' to='bob@example.com'><vCard xmlns='vcard-temp'/></iq>").await;
    let a = w.cap.take(1);
    assert!(
        a.iter()
            .any(|s| s.contains("id=\"v\"") && s.contains("not-acceptable") && s.contains("urn:xmpp:blocking:errors")),
        "{a:?}"
    );
}

#[tokio::test]
async fn stanzas_from_a_replaced_session_are_dropped() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.bind("bob@example.com/b", 2).await;
    w.send("bob@example.com/b", "<presence/>").await;
    // A second connection takes over the resource.
    w.bind("alice@example.com/a", 3).await;
    let el = parse_one("<message to='bob@example.com' type='chat'><body>stale</body></message>");
    let from = Jid::parse("alice@example.com/a").unwrap();
    let to = Jid::parse("bob@example.com").unwrap();
    w.router.route(Location { edge: 0, conn: 1 }, Envelope { kind: Kind::Message, from, to, el }).await;
    assert!(w.cap.take(2).iter().all(|s| !s.contains("stale")));
}

#[tokio::test]
async fn undelivered_messages_go_back_to_offline_storage() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    let bob = BareJid::parse("bob@example.com").unwrap();
    let stanza = bytes::Bytes::from_static(
        b"<message from='alice@example.com/a' to='bob@example.com' type='chat' id='q'><body>queued</body></message>",
    );
    w.router.undelivered(&FullJid::parse("bob@example.com/gone").unwrap(), stanza).await;
    let stored = w.router.stores().offline.list(&bob).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(String::from_utf8_lossy(&stored[0].stanza).contains("queued"));
    // An IQ request that never reached the client gets an error back.
    let iq = bytes::Bytes::from_static(b"<iq from='alice@example.com/a' to='bob@example.com/gone' type='get' id='i'><ping xmlns='urn:xmpp:ping'/></iq>");
    w.router.undelivered(&FullJid::parse("bob@example.com/gone").unwrap(), iq).await;
    assert!(w.cap.take(1).iter().any(|s| s.contains("id=\"i\"") && s.contains("service-unavailable")));
}

#[tokio::test]
async fn subscription_to_a_remote_domain_is_refused() {
    let w = world(&["alice@example.com"]).await;
    w.bind("alice@example.com/a", 1).await;
    w.send("alice@example.com/a", "<presence to='someone@elsewhere.example' type='subscribe' id='x'/>").await;
    let a = w.cap.take(1);
    assert!(a.iter().any(|s| s.contains("remote-server-not-found")), "{a:?}");
    let alice = BareJid::parse("alice@example.com").unwrap();
    assert!(w.router.stores().roster.get(&alice).await.unwrap().items.is_empty());
}

mod archiving;
mod components;
