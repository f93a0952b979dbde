//! Bad input at the client port: each test attacks a node and then checks that the
//! bystanders are unharmed: two sessions logged in before the attack still answer a ping
//! and exchange messages, and a message stored for an offline user before the attack is
//! still delivered to her afterwards.
#![allow(clippy::unwrap_used)]

use rookery_config::Config;
use rookery_tests::TestServer;
use rookery_tests::raw::{HEADER, Incoming, RawClient, WAIT};
use rookery_xml::Element;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const STANZAS_NS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const QUIET: Duration = Duration::from_millis(300);

/// Every test finishes within this or fails.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("test took longer than 20 s")
}

/// A node with two logged-in, available bystanders (alice and bob, resource
/// `bystander`), a message from alice stored for offline carol, and an account for the
/// attacker (mallory).
struct Scene {
    srv: TestServer,
    alice: RawClient,
    bob: RawClient,
}

async fn scene(adjust: impl FnOnce(&mut Config)) -> Scene {
    let srv = TestServer::start_with(adjust).await;
    for u in ["alice", "bob", "carol", "mallory"] {
        srv.add_user(u, &format!("{u}-pw")).await;
    }
    let mut alice = RawClient::login(srv.c2s, "alice", "alice-pw", "bystander").await;
    alice.available().await;
    let mut bob = RawClient::login(srv.c2s, "bob", "bob-pw", "bystander").await;
    bob.available().await;
    alice
        .send("<message to='carol@localhost' type='chat' id='stored-1'><body>sent before the attack</body></message>")
        .await;
    // Stanzas of one session are handled in order: once the ping is answered, the
    // message has been stored (or bounced, which the check below would see).
    ping(&mut alice, "before").await;
    Scene { srv, alice, bob }
}

/// Pings the server and asserts a result.
async fn ping(c: &mut RawClient, id: &str) {
    c.send(&format!("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
    let r = c.recv_until(|e| e.name == "iq" && e.get_attr("id") == Some(id)).await;
    assert_eq!(r.get_attr("type"), Some("result"), "ping {id}: {r:?}");
}

fn stanza_error_condition(e: &Element) -> Option<String> {
    e.get_child("error", "jabber:client")
        .and_then(|err| err.elements().find(|c| c.ns == STANZAS_NS && c.name != "text"))
        .map(|c| c.name.clone())
}

/// A plain connection whose stream header has been answered with features.
async fn opened(addr: SocketAddr) -> RawClient {
    let mut c = RawClient::connect(addr).await;
    c.open().await;
    c
}

/// A connection at the authentication step (after STARTTLS).
async fn at_auth(addr: SocketAddr) -> RawClient {
    let mut c = opened(addr).await;
    c.starttls().await;
    c.open().await;
    c
}

async fn mallory(srv: &TestServer) -> RawClient {
    RawClient::login(srv.c2s, "mallory", "mallory-pw", "attack").await
}

/// Logs in, retrying while the server refuses the connection (a connection slot freed
/// by a just-closed socket may take a moment to be released).
async fn login_when_possible(addr: SocketAddr, user: &str, password: &str, resource: &str) -> RawClient {
    for _ in 0..50 {
        let mut c = RawClient::connect(addr).await;
        c.send(HEADER).await;
        let features = loop {
            match c.recv_timeout(WAIT).await {
                Some(Incoming::Header) => continue,
                Some(Incoming::Element(e)) => break e.name == "features",
                _ => break false,
            }
        };
        if features {
            c.starttls().await;
            c.open().await;
            let r = c.auth_plain(user, password).await;
            assert_eq!(r.name, "success", "login of {user}: {r:?}");
            c.bind(Some(resource)).await;
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{user} could not connect");
}

impl Scene {
    /// The bystanders still work and the stored message is delivered.
    async fn survives(mut self) {
        ping(&mut self.alice, "after").await;
        self.alice
            .send("<message to='bob@localhost/bystander' type='chat' id='after-1'><body>still here?</body></message>")
            .await;
        let m = self.bob.recv_until(|e| e.name == "message" && e.get_attr("id") == Some("after-1")).await;
        assert_eq!(m.get_attr("from"), Some("alice@localhost/bystander"));
        assert_eq!(m.get_child("body", "jabber:client").map(|b| b.text_content()).as_deref(), Some("still here?"));
        self.bob.send("<message to='alice@localhost' type='chat' id='after-2'><body>yes</body></message>").await;
        let m = self.alice.recv_until(|e| e.name == "message" && e.get_attr("id") == Some("after-2")).await;
        assert_eq!(m.get_attr("from"), Some("bob@localhost/bystander"));

        let mut carol = login_when_possible(self.srv.c2s, "carol", "carol-pw", "late").await;
        carol.send("<presence/>").await;
        let m = carol.recv_until(|e| e.name == "message" && e.get_attr("id") == Some("stored-1")).await;
        assert_eq!(m.get_attr("from"), Some("alice@localhost/bystander"));
        assert_eq!(
            m.get_child("body", "jabber:client").map(|b| b.text_content()).as_deref(),
            Some("sent before the attack")
        );
        assert!(m.get_child("delay", "urn:xmpp:delay").is_some(), "offline delivery carries a delay: {m:?}");
        self.srv.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// XML-level attacks inside a bound session

async fn session_stream_error(input: &str, adjust: impl FnOnce(&mut Config)) -> (Scene, String) {
    let s = scene(adjust).await;
    let mut m = mallory(&s.srv).await;
    m.send(input).await;
    let cond = m.expect_stream_error().await;
    (s, cond)
}

#[tokio::test]
async fn malformed_xml_is_not_well_formed() {
    within(async {
        let (s, cond) = session_stream_error("<message to='bob@localhost'><body>x</message>", |_| {}).await;
        assert_eq!(cond, "not-well-formed");
        // Before authentication too.
        let mut c = opened(s.srv.c2s).await;
        c.send("<<starttls/>").await;
        assert_eq!(c.expect_stream_error().await, "not-well-formed");
        let mut c = opened(s.srv.c2s).await;
        c.send("<a b='1' b='2'/>").await;
        assert_eq!(c.expect_stream_error().await, "not-well-formed");
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn doctype_is_restricted() {
    within(async {
        let (s, cond) = session_stream_error("<!DOCTYPE message>", |_| {}).await;
        assert_eq!(cond, "restricted-xml");
        // In the prolog, before our stream header.
        let mut c = RawClient::connect(s.srv.c2s).await;
        c.send(&HEADER.replacen("<stream:stream", "<!DOCTYPE stream:stream><stream:stream", 1)).await;
        assert_eq!(c.expect_stream_error().await, "restricted-xml");
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn processing_instruction_is_restricted() {
    within(async {
        let (s, cond) =
            session_stream_error("<message to='bob@localhost'><?evil data?><body>x</body></message>", |_| {}).await;
        assert_eq!(cond, "restricted-xml");
        let mut c = opened(s.srv.c2s).await;
        c.send("<?php echo 1; ?>").await;
        assert_eq!(c.expect_stream_error().await, "restricted-xml");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

#[tokio::test]
async fn entity_declaration_is_restricted() {
    within(async {
        let (s, cond) = session_stream_error("<!ENTITY lol 'lol'>", |_| {}).await;
        assert_eq!(cond, "restricted-xml");
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn comment_is_restricted() {
    within(async {
        let (s, cond) =
            session_stream_error("<message to='bob@localhost'><!-- hidden --><body>x</body></message>", |_| {}).await;
        assert_eq!(cond, "restricted-xml");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

#[tokio::test]
async fn undeclared_entity_reference_is_restricted() {
    within(async {
        let (s, cond) = session_stream_error("<message to='bob@localhost'><body>&lol;</body></message>", |_| {}).await;
        assert_eq!(cond, "restricted-xml");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

impl Scene {
    async fn bob_got_nothing(mut self) -> Scene {
        self.bob.expect_silence(QUIET).await;
        self
    }
}

#[tokio::test]
async fn oversized_stanza_is_policy_violation() {
    within(async {
        let s = scene(|cfg| cfg.limits.max_stanza_bytes = 10_000).await;
        let mut s = s;
        let mut m = mallory(&s.srv).await;
        // Below the limit: delivered.
        let fits = "a".repeat(5_000);
        m.send(&format!("<message to='bob@localhost' type='chat' id='fits'><body>{fits}</body></message>")).await;
        let got = s.bob.recv_until(|e| e.get_attr("id") == Some("fits")).await;
        assert_eq!(got.get_child("body", "jabber:client").unwrap().text_content().len(), 5_000);
        // Twice the limit: the stream ends.
        let big = "a".repeat(20_000);
        m.send(&format!("<message to='bob@localhost' type='chat' id='big'><body>{big}</body></message>")).await;
        assert_eq!(m.expect_stream_error().await, "policy-violation");
        // A stanza that never ends is cut off once it passes the limit, not buffered.
        let mut m = mallory(&s.srv).await;
        m.send(&format!("<message to='bob@localhost' type='chat' id='endless'><body>{big}")).await;
        assert_eq!(m.expect_stream_error().await, "policy-violation");
        // Before authentication too.
        let mut c = opened(s.srv.c2s).await;
        c.send(&format!("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>{big}")).await;
        assert_eq!(c.expect_stream_error().await, "policy-violation");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

#[tokio::test]
async fn oversized_stream_header_is_policy_violation() {
    within(async {
        let s = scene(|_| {}).await;
        let mut c = RawClient::connect(s.srv.c2s).await;
        let pad = "p".repeat(20_000);
        c.send(&HEADER.replace(" version='1.0'>", &format!(" version='1.0' xmlns:pad='urn:{pad}'>"))).await;
        assert_eq!(c.expect_stream_error().await, "policy-violation");
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn too_many_attributes_is_policy_violation() {
    within(async {
        let attrs: String = (0..200).map(|i| format!(" a{i}='{i}'")).collect();
        let (s, cond) =
            session_stream_error(&format!("<message to='bob@localhost'{attrs}><body>x</body></message>"), |_| {}).await;
        assert_eq!(cond, "policy-violation");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

#[tokio::test]
async fn deep_nesting_is_policy_violation() {
    within(async {
        let mut s = scene(|cfg| cfg.limits.max_depth = 16).await;
        let mut m = mallory(&s.srv).await;
        let nest = |n: usize| format!("{}{}", "<x xmlns='urn:example:nest'>".repeat(n), "</x>".repeat(n));
        // Modest nesting passes.
        m.send(&format!("<message to='bob@localhost' type='chat' id='shallow'>{}</message>", nest(6))).await;
        s.bob.recv_until(|e| e.get_attr("id") == Some("shallow")).await;
        m.send(&format!("<message to='bob@localhost' type='chat' id='deep'>{}</message>", nest(100))).await;
        assert_eq!(m.expect_stream_error().await, "policy-violation");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_top_level_element_is_unsupported_stanza_type() {
    within(async {
        let (s, cond) = session_stream_error("<foo xmlns='jabber:client'/>", |_| {}).await;
        assert_eq!(cond, "unsupported-stanza-type");
        // (Stream management elements are not stanzas but have their own handling:
        // tests/tests/stream_management.rs.) A stanza name in a foreign namespace is not a stanza either.
        let mut m = mallory(&s.srv).await;
        m.send("<message xmlns='urn:example:other' to='bob@localhost'><body>x</body></message>").await;
        assert_eq!(m.expect_stream_error().await, "unsupported-stanza-type");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

#[tokio::test]
async fn spoofed_from_is_invalid_from() {
    within(async {
        // Another resource of the sender's own account.
        let (s, cond) = session_stream_error(
            "<message from='mallory@localhost/x' to='bob@localhost' type='chat'><body>spoof</body></message>",
            |_| {},
        )
        .await;
        assert_eq!(cond, "invalid-from");
        // Somebody else entirely.
        let mut m = mallory(&s.srv).await;
        m.send("<message from='alice@localhost/bystander' to='bob@localhost' type='chat'><body>spoof</body></message>")
            .await;
        assert_eq!(m.expect_stream_error().await, "invalid-from");
        // The server's own address.
        let mut m = mallory(&s.srv).await;
        m.send("<presence from='localhost' to='bob@localhost'/>").await;
        assert_eq!(m.expect_stream_error().await, "invalid-from");
        // Not a JID at all.
        let mut m = mallory(&s.srv).await;
        m.send("<iq type='get' id='x' from='@@' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        assert_eq!(m.expect_stream_error().await, "invalid-from");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

#[tokio::test]
async fn own_bare_from_is_stamped_with_the_full_jid() {
    within(async {
        let mut s = scene(|_| {}).await;
        let mut m = mallory(&s.srv).await;
        m.send("<message from='mallory@localhost' to='bob@localhost' type='chat' id='bare'><body>me</body></message>")
            .await;
        let got = s.bob.recv_until(|e| e.get_attr("id") == Some("bare")).await;
        assert_eq!(got.get_attr("from"), Some("mallory@localhost/attack"));
        m.send("<message from='mallory@localhost/attack' to='bob@localhost' type='chat' id='full'><body>me</body></message>")
            .await;
        let got = s.bob.recv_until(|e| e.get_attr("id") == Some("full")).await;
        assert_eq!(got.get_attr("from"), Some("mallory@localhost/attack"));
        // The same address in another case is the same JID (RFC 7622 enforcement).
        m.send("<message from='Mallory@LOCALHOST' to='bob@localhost' type='chat' id='case'><body>me</body></message>")
            .await;
        let got = s.bob.recv_until(|e| e.get_attr("id") == Some("case")).await;
        assert_eq!(got.get_attr("from"), Some("mallory@localhost/attack"));
        ping(&mut m, "mallory-ok").await;
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn bad_to_jid_is_jid_malformed_and_the_stream_stays_up() {
    within(async {
        let mut s = scene(|_| {}).await;
        let mut m = mallory(&s.srv).await;
        for (i, to) in ["@localhost", "bob@", "bob@localhost/", "a@b@c"].iter().enumerate() {
            let id = format!("bad-{i}");
            m.send(&format!("<message to='{to}' type='chat' id='{id}'><body>x</body></message>")).await;
            let r = m.recv_until(|e| e.get_attr("id") == Some(id.as_str())).await;
            assert_eq!(r.name, "message");
            assert_eq!(r.get_attr("type"), Some("error"), "to={to}: {r:?}");
            assert_eq!(stanza_error_condition(&r).as_deref(), Some("jid-malformed"), "to={to}: {r:?}");
        }
        // iq and presence too.
        m.send("<iq type='get' id='bad-iq' to='@localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        let r = m.recv_until(|e| e.get_attr("id") == Some("bad-iq")).await;
        assert_eq!((r.name.as_str(), r.get_attr("type")), ("iq", Some("error")), "{r:?}");
        assert_eq!(stanza_error_condition(&r).as_deref(), Some("jid-malformed"), "{r:?}");
        m.send("<presence to='bob@localhost/' id='bad-pres'/>").await;
        let r = m.recv_until(|e| e.get_attr("id") == Some("bad-pres")).await;
        assert_eq!((r.name.as_str(), r.get_attr("type")), ("presence", Some("error")), "{r:?}");
        assert_eq!(stanza_error_condition(&r).as_deref(), Some("jid-malformed"), "{r:?}");
        // An error stanza with a bad address is dropped, never answered (no loops).
        m.send("<message to='@localhost' type='error' id='bad-err'/>").await;
        ping(&mut m, "still-up").await;
        m.expect_silence(QUIET).await;
        s.bob.expect_silence(QUIET).await;
        s.survives().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Stream negotiation

#[tokio::test]
async fn unfinished_negotiation_is_connection_timeout() {
    within(async {
        let s = scene(|cfg| cfg.limits.negotiation_timeout_secs = 1).await;
        let mut c = opened(s.srv.c2s).await;
        let started = Instant::now();
        assert_eq!(c.expect_stream_error().await, "connection-timeout");
        assert!(started.elapsed() >= Duration::from_millis(500), "closed too early: {:?}", started.elapsed());
        // A connection that sends nothing at all is closed the same way.
        let mut c = RawClient::connect(s.srv.c2s).await;
        assert_eq!(c.expect_stream_error().await, "connection-timeout");
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn wrong_stream_namespace_is_invalid_namespace() {
    within(async {
        let s = scene(|_| {}).await;
        let mut c = RawClient::connect(s.srv.c2s).await;
        c.send(&HEADER.replace("http://etherx.jabber.org/streams", "urn:example:not-streams")).await;
        assert_eq!(c.expect_stream_error().await, "invalid-namespace");
        let mut c = RawClient::connect(s.srv.c2s).await;
        c.send(&HEADER.replace("xmlns='jabber:client'", "xmlns='jabber:server'")).await;
        assert_eq!(c.expect_stream_error().await, "invalid-namespace");
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_host_is_host_unknown() {
    within(async {
        let s = scene(|_| {}).await;
        let mut c = RawClient::connect(s.srv.c2s).await;
        c.send(&HEADER.replace("to='localhost'", "to='unknown.example'")).await;
        assert_eq!(c.expect_stream_error().await, "host-unknown");
        // A user's address is not a host either.
        let mut c = RawClient::connect(s.srv.c2s).await;
        c.send(&HEADER.replace("to='localhost'", "to='alice@localhost'")).await;
        assert_eq!(c.expect_stream_error().await, "host-unknown");
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn missing_version_is_unsupported_version() {
    within(async {
        let s = scene(|_| {}).await;
        let mut c = RawClient::connect(s.srv.c2s).await;
        c.send(&HEADER.replace(" version='1.0'>", ">")).await;
        assert_eq!(c.expect_stream_error().await, "unsupported-version");
        // A pre-1.0 version is refused the same way.
        let mut c = RawClient::connect(s.srv.c2s).await;
        c.send(&HEADER.replace(" version='1.0'>", " version='0.9'>")).await;
        assert_eq!(c.expect_stream_error().await, "unsupported-version");
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn stanza_before_starttls_is_policy_violation() {
    within(async {
        let s = scene(|_| {}).await;
        let mut c = opened(s.srv.c2s).await;
        c.send("<message to='bob@localhost' type='chat'><body>plaintext</body></message>").await;
        assert_eq!(c.expect_stream_error().await, "policy-violation");
        // SASL before TLS is refused the same way.
        let mut c = opened(s.srv.c2s).await;
        c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAGFsaWNlLXB3</auth>").await;
        assert_eq!(c.expect_stream_error().await, "policy-violation");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

#[tokio::test]
async fn stanza_before_auth_is_not_authorized() {
    within(async {
        let s = scene(|_| {}).await;
        let mut c = at_auth(s.srv.c2s).await;
        c.send("<message to='bob@localhost' type='chat'><body>anonymous</body></message>").await;
        assert_eq!(c.expect_stream_error().await, "not-authorized");
        // An iq other than registration too.
        let mut c = at_auth(s.srv.c2s).await;
        c.send("<iq type='get' id='r1' to='localhost'><query xmlns='jabber:iq:roster'/></iq>").await;
        assert_eq!(c.expect_stream_error().await, "not-authorized");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

#[tokio::test]
async fn repeated_auth_failures_are_slowed_down() {
    within(async {
        let s = scene(|cfg| {
            cfg.limits.auth_failures_before_delay = 1;
            cfg.limits.auth_delay_max_secs = 2;
        })
        .await;
        let mut c = at_auth(s.srv.c2s).await;
        let mut took = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let r = c.auth_plain("mallory", "wrong-password").await;
            took.push(t.elapsed());
            assert_eq!(r.name, "failure", "{r:?}");
            assert!(r.get_child("not-authorized", "urn:ietf:params:xml:ns:xmpp-sasl").is_some(), "{r:?}");
        }
        assert!(took[2] >= Duration::from_millis(900), "third failure answered after {:?}", took[2]);
        assert!(took[2] >= took[0] + Duration::from_millis(900), "failures answered after {took:?}");
        // A correct password still works afterwards (no lockout), on the same stream.
        let r = c.auth_plain("mallory", "mallory-pw").await;
        assert_eq!(r.name, "success", "{r:?}");
        drop(c);
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn too_many_connections_from_one_address_is_policy_violation() {
    within(async {
        let s = scene(|cfg| cfg.limits.max_connections_per_ip = 3).await;
        // alice and bob hold two slots.
        let mut third = opened(s.srv.c2s).await;
        let mut fourth = RawClient::connect(s.srv.c2s).await;
        fourth.send(HEADER).await;
        assert_eq!(fourth.expect_stream_error().await, "policy-violation");
        // The third connection is unaffected.
        third.send("</stream:stream>").await;
        loop {
            match third.recv_timeout(WAIT).await {
                Some(Incoming::Closed) => break,
                Some(_) => continue,
                None => panic!("the third connection was not closed after ours"),
            }
        }
        drop(third);
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn invalid_bind_resource_is_bad_request() {
    within(async {
        let s = scene(|_| {}).await;
        let mut c = at_auth(s.srv.c2s).await;
        let r = c.auth_plain("mallory", "mallory-pw").await;
        assert_eq!(r.name, "success");
        c.open().await;
        let long = "r".repeat(2000);
        for (id, res) in [("b1", long.as_str()), ("b2", "tab&#9;inside"), ("b3", "bell&#x85;here")] {
            c.send(&format!(
                "<iq type='set' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{res}</resource></bind></iq>"
            ))
            .await;
            let r = c.recv_until(|e| e.get_attr("id") == Some(id)).await;
            assert_eq!(r.get_attr("type"), Some("error"), "{id}: {r:?}");
            assert_eq!(stanza_error_condition(&r).as_deref(), Some("bad-request"), "{id}: {r:?}");
        }
        // The stream is still usable: a valid resource binds.
        c.send("<iq type='set' id='b4'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>fine</resource></bind></iq>")
            .await;
        let r = c.recv_until(|e| e.get_attr("id") == Some("b4")).await;
        assert_eq!(r.get_attr("type"), Some("result"), "{r:?}");
        ping(&mut c, "bound").await;
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn invalid_localpart_in_sasl_is_refused() {
    within(async {
        let s = scene(|_| {}).await;
        let mut c = at_auth(s.srv.c2s).await;
        for user in ["mal@lory", "mal<lory", "", "mallory@localhost"] {
            let r = c.auth_plain(user, "mallory-pw").await;
            assert_eq!(r.name, "failure", "authcid {user:?}: {r:?}");
        }
        drop(c);
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn plain_is_not_offered_before_tls() {
    within(async {
        let s = scene(|_| {}).await;
        let mut c = RawClient::connect(s.srv.c2s).await;
        let features = c.open().await;
        let names: Vec<(&str, &str)> = features.elements().map(|e| (e.name.as_str(), e.ns.as_str())).collect();
        assert_eq!(names, vec![("starttls", "urn:ietf:params:xml:ns:xmpp-tls")], "{features:?}");
        let tls = features.get_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls").unwrap();
        assert!(tls.get_child("required", "urn:ietf:params:xml:ns:xmpp-tls").is_some(), "{features:?}");
        // After TLS, PLAIN is there.
        c.starttls().await;
        let features = c.open().await;
        let mechs: Vec<String> = features
            .get_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
            .map(|m| m.elements().map(|x| x.text_content()).collect())
            .unwrap_or_default();
        assert!(mechs.iter().any(|m| m == "PLAIN"), "{features:?}");
        drop(c);
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_refused() {
    within(async {
        let s = scene(|_| {}).await;
        // CVE-2011-0411 class: bytes sent in the clear after <starttls/> must not be
        // treated as if they came over TLS.
        let mut c = opened(s.srv.c2s).await;
        c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message to='bob@localhost' type='chat'><body>injected</body></message>")
            .await;
        let mut saw_close = false;
        while let Some(x) = c.recv_timeout(WAIT).await {
            match x {
                Incoming::Closed => {
                    saw_close = true;
                    break;
                }
                Incoming::Element(e) if e.name == "proceed" => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(saw_close, "the connection was not closed");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

#[tokio::test]
async fn starttls_followed_by_a_newline_completes_tls_and_sasl() {
    within(async {
        let s = scene(|_| {}).await;
        // go-xmpp (go-sendxmpp) writes a newline after <starttls/>. Whitespace between
        // elements is not data (RFC 6120 §4.6.1), so TLS and SASL must go on.
        let mut c = opened(s.srv.c2s).await;
        c.starttls_with("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\n").await;
        c.open().await;
        let r = c.auth_plain("mallory", "mallory-pw").await;
        assert_eq!(r.name, "success", "{r:?}");
        c.bind(Some("go-xmpp")).await;
        ping(&mut c, "after-newline").await;
        drop(c);
        s.survives().await;
    })
    .await;
}

/// slixmpp 1.8's first attempt: SCRAM-SHA-512-PLUS with the `n` GS2 flag (no channel
/// binding), which is a malformed request (RFC 5802 §6).
fn plus_without_binding(user: &str) -> String {
    use base64::Engine;
    let first = base64::engine::general_purpose::STANDARD.encode(format!("n,,n={user},r=slixmppNonce0123456789"));
    format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-512-PLUS'>{first}</auth>")
}

#[tokio::test]
async fn protocol_errors_do_not_throttle_concurrent_logins_from_one_address() {
    within(async {
        // Default limits: three free failures, then a growing delay up to 30 s.
        let s = scene(|_| {}).await;
        let users: Vec<String> = (0..8).map(|i| format!("nat{i}")).collect();
        for u in &users {
            s.srv.add_user(u, &format!("{u}-pw")).await;
        }
        let started = Instant::now();
        let logins: Vec<_> = users
            .iter()
            .map(|u| {
                let (addr, u) = (s.srv.c2s, u.clone());
                tokio::spawn(async move {
                    let mut c = at_auth(addr).await;
                    c.send(&plus_without_binding(&u)).await;
                    let r = c.recv().await;
                    assert_eq!(r.name, "failure", "{u}: {r:?}");
                    assert!(r.get_child("malformed-request", "urn:ietf:params:xml:ns:xmpp-sasl").is_some(), "{r:?}");
                    let r = c.auth_plain(&u, &format!("{u}-pw")).await;
                    assert_eq!(r.name, "success", "{u}: {r:?}");
                    c.bind(Some("slixmpp")).await;
                    c
                })
            })
            .collect();
        let mut clients = Vec::new();
        for l in logins {
            clients.push(l.await.unwrap());
        }
        // Counted, the eight malformed requests delayed the last ones by 1, 2, 4, 8 and
        // 16 s; uncounted, all eight finish long before the first of those 16 s.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "8 logins from one address took {took:?}");
        drop(clients);
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn wrong_passwords_slow_that_account_not_others_from_the_same_address() {
    within(async {
        let s = scene(|cfg| {
            cfg.limits.auth_failures_before_delay = 1;
            cfg.limits.auth_delay_max_secs = 8;
        })
        .await;
        s.srv.add_user("dave", "dave-pw").await;
        let mut m = at_auth(s.srv.c2s).await;
        let mut took = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let r = m.auth_plain("mallory", "wrong-password").await;
            took.push(t.elapsed());
            assert!(r.get_child("not-authorized", "urn:ietf:params:xml:ns:xmpp-sasl").is_some(), "{r:?}");
        }
        assert!(took[2] >= Duration::from_millis(900), "third failure answered after {:?}", took[2]);
        // Someone else behind the same address mistypes once: answered at once, and
        // the right password works.
        let mut d = at_auth(s.srv.c2s).await;
        let t = Instant::now();
        let r = d.auth_plain("dave", "typo").await;
        let dave_took = t.elapsed();
        assert!(r.get_child("not-authorized", "urn:ietf:params:xml:ns:xmpp-sasl").is_some(), "{r:?}");
        // Counted per address, it would be the fourth failure and wait 4 s.
        assert!(dave_took < Duration::from_secs(2), "dave's first failure answered after {dave_took:?}");
        let r = d.auth_plain("dave", "dave-pw").await;
        assert_eq!(r.name, "success", "{r:?}");
        // The attacked account stays slowed on a new connection.
        // (The fourth failure waits 4 s: more than `recv`'s patience on a slow machine.)
        let mut m2 = at_auth(s.srv.c2s).await;
        let t = Instant::now();
        let cred = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode("\0mallory\0still-wrong")
        };
        m2.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>")).await;
        let r = match m2.recv_timeout(Duration::from_secs(15)).await {
            Some(Incoming::Element(e)) => e,
            other => panic!("expected a failure, got {other:?}"),
        };
        assert!(r.get_child("not-authorized", "urn:ietf:params:xml:ns:xmpp-sasl").is_some(), "{r:?}");
        assert!(t.elapsed() >= Duration::from_millis(900), "mallory's next failure answered after {:?}", t.elapsed());
        drop((m, m2, d));
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn non_utf8_encoding_is_unsupported_encoding() {
    within(async {
        let s = scene(|_| {}).await;
        // RFC 6120 §11.6: another encoding gets a stream error that SHOULD be
        // <unsupported-encoding/>.
        let mut c = RawClient::connect(s.srv.c2s).await;
        c.send(&HEADER.replace("<?xml version='1.0'?>", "<?xml version='1.0' encoding='ISO-8859-1'?>")).await;
        assert_eq!(c.expect_stream_error().await, "unsupported-encoding");
        s.survives().await;
    })
    .await;
}

#[tokio::test]
async fn invalid_utf8_ends_the_stream() {
    within(async {
        let s = scene(|_| {}).await;
        let mut m = mallory(&s.srv).await;
        m.send_bytes(b"<message to='bob@localhost' type='chat'><body>\xff\xfe</body></message>").await;
        let cond = m.expect_stream_error().await;
        assert!(cond == "not-well-formed" || cond == "unsupported-encoding", "{cond}");
        s.bob_got_nothing().await.survives().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_streams_still_negotiating() {
    within(async {
        let srv = TestServer::start().await;
        srv.add_user("alice", "alice-pw").await;
        let mut bound = RawClient::login(srv.c2s, "alice", "alice-pw", "r").await;
        let mut before_tls = opened(srv.c2s).await;
        let mut before_auth = at_auth(srv.c2s).await;
        let (_, a, b, c) =
            tokio::join!(srv.stop(), stream_end(&mut bound), stream_end(&mut before_tls), stream_end(&mut before_auth));
        assert_eq!(
            [a.as_str(), b.as_str(), c.as_str()],
            ["system-shutdown"; 3],
            "bound session, before STARTTLS, before authentication"
        );
    })
    .await;
}

/// How a stream ends: the stream error condition, or what happened instead.
async fn stream_end(c: &mut RawClient) -> String {
    loop {
        match c.recv_timeout(WAIT).await {
            Some(Incoming::Element(e)) if e.name == "error" && e.ns == "http://etherx.jabber.org/streams" => {
                return e
                    .elements()
                    .find(|x| x.ns == "urn:ietf:params:xml:ns:xmpp-streams" && x.name != "text")
                    .map(|x| x.name.clone())
                    .unwrap_or_default();
            }
            Some(Incoming::Element(_)) | Some(Incoming::Header) => continue,
            Some(Incoming::Closed) => return "closed without a stream error".into(),
            None => return format!("nothing within {WAIT:?}"),
        }
    }
}

/// XEP-0077 §3.1: with registration enabled, a new account can be created before
/// authentication and used right away; the stream feature is advertised.
#[tokio::test]
async fn in_band_registration_creates_a_usable_account() {
    within(async {
        let srv = TestServer::start_with(|c| c.registration.allow = true).await;
        let mut c = RawClient::connect(srv.c2s).await;
        c.open().await;
        c.starttls().await;
        let f = c.open().await;
        assert!(f.get_child("register", "http://jabber.org/features/iq-register").is_some(), "{f:?}");
        c.send("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>").await;
        let form = c.recv().await;
        assert_eq!(form.get_attr("type"), Some("result"), "{form:?}");
        let q = form.get_child("query", "jabber:iq:register").unwrap();
        assert!(q.get_child("username", "jabber:iq:register").is_some());
        assert!(q.get_child("password", "jabber:iq:register").is_some());
        // Too short for registration.min_password_len.
        c.send("<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>erin</username><password>x</password></query></iq>").await;
        let r = c.recv().await;
        assert_eq!(r.get_attr("type"), Some("error"), "{r:?}");
        c.send("<iq type='set' id='r3'><query xmlns='jabber:iq:register'><username>erin</username><password>erin-secret</password></query></iq>").await;
        let r = c.recv().await;
        assert_eq!(r.get_attr("type"), Some("result"), "{r:?}");
        // Taken now.
        c.send("<iq type='set' id='r4'><query xmlns='jabber:iq:register'><username>erin</username><password>erin-secret</password></query></iq>").await;
        let r = c.recv().await;
        let err = r.get_child("error", "jabber:client").unwrap();
        assert!(err.get_child("conflict", "urn:ietf:params:xml:ns:xmpp-stanzas").is_some(), "{r:?}");
        let ok = c.auth_plain("erin", "erin-secret").await;
        assert_eq!(ok.name, "success");
        let jid = c.bind(Some("phone")).await;
        assert_eq!(jid, "erin@localhost/phone");
        // The legacy session request after binding is answered, not refused.
        c.send("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>").await;
        let r = c.recv_until(|e| e.get_attr("id") == Some("s1")).await;
        assert_eq!(r.get_attr("type"), Some("result"), "{r:?}");
    })
    .await;
}

/// Registration is off by default: no feature, and the request is refused.
#[tokio::test]
async fn in_band_registration_is_off_by_default() {
    within(async {
        let srv = TestServer::start().await;
        let mut c = RawClient::connect(srv.c2s).await;
        c.open().await;
        c.starttls().await;
        let f = c.open().await;
        assert!(f.get_child("register", "http://jabber.org/features/iq-register").is_none(), "{f:?}");
        c.send("<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>erin</username><password>erin-secret</password></query></iq>").await;
        let r = c.recv().await;
        assert_eq!(r.get_attr("type"), Some("error"), "{r:?}");
        let ok = c.auth_plain("erin", "erin-secret").await;
        assert_eq!(ok.name, "failure");
    })
    .await;
}
