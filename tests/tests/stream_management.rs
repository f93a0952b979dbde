//! XEP-0198 stream management against the real single-node server, with a raw client:
//! enabling (§3), acks in both directions (§4), resumption after a dropped connection
//! with what arrived meanwhile and what was unacknowledged delivered exactly once (§5),
//! the `<failed/>` cases with their `h`, and the errors bad input gets (§6).
//!
//! Every test is bounded by [`within`] so none can hang.
#![allow(clippy::unwrap_used)]

use rookery_tests::TestServer;
use rookery_tests::raw::{Incoming, RawClient, WAIT};
use rookery_xml::Element;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

const SM: &str = "urn:xmpp:sm:3";
const STANZAS_NS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(25), f).await.expect("test took longer than 25 s")
}

async fn server() -> TestServer {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "mallory"] {
        s.add_user(u, "secret-pw").await;
    }
    s
}

/// Logs in, binds `resource` and enables stream management with resumption; returns the
/// client and the session id.
async fn sm_login(addr: SocketAddr, user: &str, resource: &str) -> (RawClient, String) {
    let mut c = RawClient::login(addr, user, "secret-pw", resource).await;
    c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
    let e = c.recv().await;
    assert_eq!((e.name.as_str(), e.ns.as_str()), ("enabled", SM), "{e:?}");
    assert_eq!(e.get_attr("resume"), Some("true"));
    let id = e.get_attr("id").unwrap().to_owned();
    (c, id)
}

/// Up to the point where a client would bind: TLS, PLAIN, the restarted stream's features.
async fn authenticated(addr: SocketAddr, user: &str) -> (RawClient, Element) {
    let mut c = RawClient::connect(addr).await;
    c.open().await;
    c.starttls().await;
    c.open().await;
    let r = c.auth_plain(user, "secret-pw").await;
    assert_eq!(r.name, "success");
    let features = c.open().await;
    (c, features)
}

/// Binds on a stream whose features were already read (after `authenticated`).
async fn bind_now(c: &mut RawClient, resource: &str) {
    c.send(&format!(
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
    ))
    .await;
    let r = c.recv_until(|e| e.get_attr("id") == Some("bind1")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r:?}");
}

/// Directed presence from `a` to bob's resource, so bob learns when `a`'s session ends.
async fn present_to_bob(a: &mut RawClient, b: &mut RawClient) {
    a.send("<presence to='bob@localhost/desk'/>").await;
    let p = b.recv_until(|e| e.name == "presence").await;
    assert_eq!(p.get_attr("type"), None, "{p:?}");
}

fn body(e: &Element) -> Option<String> {
    e.get_child("body", "jabber:client").map(|b| b.text_content())
}

fn condition(e: &Element) -> Option<String> {
    e.elements().find(|c| c.ns == STANZAS_NS).map(|c| c.name.clone())
}

async fn send_chat(c: &mut RawClient, to: &str, text: &str) {
    c.send(&format!("<message type='chat' to='{to}' id='{text}'><body>{text}</body></message>")).await;
}

/// Bodies of the messages that arrive within `wait`, answering the server's `<r/>`
/// with `h` = `handled` + what arrived (when `ack` is set).
async fn collect(c: &mut RawClient, wait: Duration, handled: &mut u32, ack: bool) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(x) = c.recv_timeout(wait).await {
        match x {
            Incoming::Element(e) if e.name == "message" => {
                *handled += 1;
                got.push(body(&e).unwrap_or_default());
            }
            Incoming::Element(e) if e.name == "r" && e.ns == SM && ack => {
                c.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{handled}'/>")).await;
            }
            Incoming::Element(e) if e.name == "presence" || e.name == "iq" => *handled += 1,
            Incoming::Closed => break,
            _ => {}
        }
    }
    got
}

#[tokio::test]
async fn features_enable_and_acks_count_both_ways() {
    within(async {
        let s = server().await;
        let (_c, features) = authenticated(s.c2s, "alice").await;
        assert!(features.get_child("sm", SM).is_some(), "features after authentication offer SM: {features:?}");

        let (mut a, _) = sm_login(s.c2s, "alice", "phone").await;
        let mut b = RawClient::login(s.c2s, "bob", "secret-pw", "desk").await;
        // §4: three stanzas handled, then <r/>.
        for i in 0..3 {
            a.send(&format!("<iq type='get' id='p{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
        }
        a.send("<r xmlns='urn:xmpp:sm:3'/>").await;
        // The server counts what it sends and asks for acks (once, until answered).
        send_chat(&mut b, "alice@localhost/phone", "one").await;
        let (mut h, mut requests, mut message) = (None, 0, None);
        while h.is_none() || message.is_none() || requests == 0 {
            let e = a.recv().await;
            match e.name.as_str() {
                "a" => h = e.get_attr("h").map(str::to_owned),
                "r" if e.ns == SM => requests += 1,
                "message" => message = body(&e),
                _ => {}
            }
        }
        assert_eq!(h.as_deref(), Some("3"));
        assert_eq!(message.as_deref(), Some("one"));
        // Three pong results and the message: h = 4 is right, 5 is too high (§6).
        a.send("<a xmlns='urn:xmpp:sm:3' h='4'/>").await;
        a.send("<a xmlns='urn:xmpp:sm:3' h='5'/>").await;
        let err = loop {
            match a.recv_timeout(WAIT).await {
                Some(Incoming::Element(e)) if e.name == "error" => break e,
                Some(_) => continue,
                None => panic!("no stream error"),
            }
        };
        let too_high = err.get_child("handled-count-too-high", SM).unwrap_or_else(|| panic!("{err:?}"));
        assert_eq!((too_high.get_attr("h"), too_high.get_attr("send-count")), (Some("5"), Some("4")));
        assert!(err.get_child("undefined-condition", "urn:ietf:params:xml:ns:xmpp-streams").is_some());
        // Other sessions are unaffected.
        b.send("<iq type='get' id='still' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        let pong = b.recv_until(|e| e.get_attr("id") == Some("still")).await;
        assert_eq!(pong.get_attr("type"), Some("result"));
    })
    .await;
}

/// Switched off in the configuration: not offered, and an `<enable/>` anyway is answered
/// `<failed/>` with `feature-not-implemented` (§3), not taken as a stanza.
#[tokio::test]
async fn switched_off_it_is_not_offered_and_enable_fails() {
    within(async {
        let s = TestServer::start_with(|c| c.stream_management.enabled = false).await;
        s.add_user("alice", "secret-pw").await;
        let (mut c, features) = authenticated(s.c2s, "alice").await;
        assert!(features.get_child("sm", SM).is_none(), "{features:?}");
        bind_now(&mut c, "r").await;
        c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
        let f = c.recv().await;
        assert_eq!((f.name.as_str(), condition(&f).as_deref()), ("failed", Some("feature-not-implemented")));
        c.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        let pong = c.recv_until(|e| e.get_attr("id") == Some("p")).await;
        assert_eq!(pong.get_attr("type"), Some("result"));
    })
    .await;
}

#[tokio::test]
async fn enable_before_bind_and_twice_is_refused() {
    within(async {
        let s = server().await;
        let (mut c, _) = authenticated(s.c2s, "alice").await;
        c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
        let f = c.recv().await;
        assert_eq!((f.name.as_str(), condition(&f).as_deref()), ("failed", Some("unexpected-request")));
        // Binding still works, and then enabling does, once.
        bind_now(&mut c, "r").await;
        c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
        let e = c.recv().await;
        assert_eq!(e.name, "enabled");
        assert_eq!(e.get_attr("resume"), None, "not asked for");
        c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
        let f = c.recv().await;
        assert_eq!((f.name.as_str(), condition(&f).as_deref()), ("failed", Some("unexpected-request")));
    })
    .await;
}

/// §5 after the connection dropped: what was sent to the client and not acknowledged,
/// and what arrived while it was away, each arrive once after the resume; the peer never
/// saw the client go offline; the counters carry over.
#[tokio::test]
async fn resume_after_a_drop_delivers_everything_once() {
    within(async {
        let s = server().await;
        let mut b = RawClient::login(s.c2s, "bob", "secret-pw", "desk").await;
        b.available().await;
        let (mut a, id) = sm_login(s.c2s, "alice", "phone").await;
        a.available().await;
        present_to_bob(&mut a, &mut b).await;
        let mut handled = 1; // alice's own presence reflection
        send_chat(&mut b, "alice@localhost", "m1").await;
        send_chat(&mut b, "alice@localhost", "m2").await;
        // Alice receives both, acknowledges only the first, and the connection drops.
        let got = collect(&mut a, Duration::from_millis(500), &mut handled, false).await;
        assert_eq!(got, ["m1", "m2"]);
        a.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", handled - 1)).await;
        a.send("<message type='chat' to='bob@localhost' id='x'><body>from alice</body></message>").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(a);
        // While alice is away.
        send_chat(&mut b, "alice@localhost", "m3").await;
        let seen = collect(&mut b, Duration::from_millis(700), &mut 0, false).await;
        assert_eq!(seen, ["from alice"]);

        // Resume on a new connection.
        let (mut a, features) = authenticated(s.c2s, "alice").await;
        assert!(features.get_child("sm", SM).is_some());
        a.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='{}'/>", handled - 1)).await;
        let r = a.recv().await;
        assert_eq!(r.name, "resumed", "{r:?}");
        assert_eq!(r.get_attr("previd"), Some(id.as_str()));
        // Alice sent three stanzas (presence, directed presence, message; an ack is no
        // stanza), and the server handled them all.
        assert_eq!(r.get_attr("h"), Some("3"));
        let mut h2 = handled - 1;
        let got = collect(&mut a, Duration::from_millis(700), &mut h2, true).await;
        assert_eq!(got, ["m2", "m3"], "the unacknowledged one again, then the one that waited");
        // Bob never saw alice unavailable.
        b.expect_silence(Duration::from_millis(300)).await;
        // The resumed session works both ways.
        send_chat(&mut a, "bob@localhost", "back").await;
        let m = b.recv_until(|e| e.name == "message").await;
        assert_eq!(body(&m).as_deref(), Some("back"));
    })
    .await;
}

/// §5: resuming a session that is still connected closes the old stream with `conflict`.
#[tokio::test]
async fn resume_takes_over_a_live_stream() {
    within(async {
        let s = server().await;
        let (mut old, id) = sm_login(s.c2s, "alice", "phone").await;
        let (mut a, _) = authenticated(s.c2s, "alice").await;
        a.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>")).await;
        let r = a.recv().await;
        assert_eq!(r.name, "resumed", "{r:?}");
        assert_eq!(old.expect_stream_error().await, "conflict");
        a.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        let pong = a.recv_until(|e| e.get_attr("id") == Some("p")).await;
        assert_eq!(pong.get_attr("type"), Some("result"));
    })
    .await;
}

/// Someone else's session id is unknown to them, and says nothing about the session.
#[tokio::test]
async fn resume_of_someone_elses_session_fails_like_an_unknown_one() {
    within(async {
        let s = server().await;
        let (mut alice, id) = sm_login(s.c2s, "alice", "phone").await;
        let (mut m, _) = authenticated(s.c2s, "mallory").await;
        m.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>")).await;
        let f = m.recv().await;
        assert_eq!((f.name.as_str(), condition(&f).as_deref()), ("failed", Some("item-not-found")));
        assert_eq!(f.get_attr("h"), None);
        // Mallory may bind instead; alice's stream is untouched.
        bind_now(&mut m, "x").await;
        alice.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        let pong = alice.recv_until(|e| e.get_attr("id") == Some("p")).await;
        assert_eq!(pong.get_attr("type"), Some("result"));
    })
    .await;
}

/// After the resumption time the session ends: what was not acknowledged goes to
/// offline storage with a delay stamp, a late resume gets `<failed h='…'/>` with the true
/// count, and the peer sees the client go offline.
#[tokio::test]
async fn after_expiry_resume_fails_with_h_and_nothing_is_lost() {
    within(async {
        let s = server().await;
        let mut b = RawClient::login(s.c2s, "bob", "secret-pw", "desk").await;
        b.available().await;
        let mut a = RawClient::login(s.c2s, "alice", "secret-pw", "phone").await;
        a.send("<enable xmlns='urn:xmpp:sm:3' resume='true' max='1'/>").await;
        let e = a.recv().await;
        assert_eq!(e.get_attr("max"), Some("1"), "the client's max is granted: {e:?}");
        let id = e.get_attr("id").unwrap().to_owned();
        a.available().await;
        present_to_bob(&mut a, &mut b).await;
        send_chat(&mut a, "bob@localhost", "hello").await;
        b.recv_until(|e| e.name == "message").await;
        send_chat(&mut b, "alice@localhost", "unacked").await;
        a.recv_until(|e| e.name == "message").await;
        drop(a);
        // Alice's presence ends once the session does (about a second later).
        let gone = b.recv_until(|e| e.name == "presence").await;
        assert_eq!(gone.get_attr("type"), Some("unavailable"));
        // The unacknowledged message is handed back right after the session leaves; give
        // it that moment, so the order below is the order of sending.
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_chat(&mut b, "alice@localhost", "while-offline").await;

        let (mut a, _) = authenticated(s.c2s, "alice").await;
        a.send(&format!("<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>")).await;
        let f = a.recv().await;
        assert_eq!((f.name.as_str(), condition(&f).as_deref()), ("failed", Some("item-not-found")));
        assert_eq!(f.get_attr("h"), Some("3"), "both presences and the message were handled: {f:?}");
        bind_now(&mut a, "phone").await;
        a.send("<presence/>").await;
        let mut offline = Vec::new();
        while let Some(Incoming::Element(e)) = a.recv_timeout(Duration::from_millis(700)).await {
            if e.name == "message" {
                assert!(e.get_child("delay", "urn:xmpp:delay").is_some(), "delay-stamped: {e:?}");
                offline.push(body(&e).unwrap_or_default());
            }
        }
        assert_eq!(offline, ["unacked", "while-offline"]);
    })
    .await;
}

/// A client that ends its stream with unacknowledged stanzas does not lose them.
#[tokio::test]
async fn a_clean_close_hands_unacknowledged_stanzas_to_offline_storage() {
    within(async {
        let s = server().await;
        let mut b = RawClient::login(s.c2s, "bob", "secret-pw", "desk").await;
        let (mut a, _) = sm_login(s.c2s, "alice", "phone").await;
        send_chat(&mut b, "alice@localhost/phone", "never-acked").await;
        a.recv_until(|e| e.name == "message").await;
        a.send("</stream:stream>").await;
        loop {
            match a.recv_timeout(WAIT).await {
                Some(Incoming::Closed) | None => break,
                Some(_) => {}
            }
        }
        let mut a = RawClient::login(s.c2s, "alice", "secret-pw", "phone").await;
        a.send("<presence/>").await;
        let m = a.recv_until(|e| e.name == "message").await;
        assert_eq!(body(&m).as_deref(), Some("never-acked"));
    })
    .await;
}

/// A flood of `<r/>` is slowed by the stanza rate limit, answered, and harms nobody else.
#[tokio::test]
async fn a_flood_of_ack_requests_is_answered_and_harms_no_one() {
    within(async {
        let s = TestServer::start_with(|c| c.limits.stanza_rate_per_sec = 100).await;
        s.add_user("alice", "secret-pw").await;
        s.add_user("bob", "secret-pw").await;
        let (mut a, _) = sm_login(s.c2s, "alice", "phone").await;
        let mut b = RawClient::login(s.c2s, "bob", "secret-pw", "desk").await;
        let flood = "<r xmlns='urn:xmpp:sm:3'/>".repeat(300);
        a.send(&flood).await;
        b.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        let pong = b.recv_until(|e| e.get_attr("id") == Some("p")).await;
        assert_eq!(pong.get_attr("type"), Some("result"));
        let mut answers = 0;
        while answers < 300 {
            let e = a.recv().await;
            if e.name == "a" {
                assert_eq!(e.get_attr("h"), Some("0"));
                answers += 1;
            }
        }
    })
    .await;
}
