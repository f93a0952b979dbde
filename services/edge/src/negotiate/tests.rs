//! The negotiation machine driven directly, without sockets: bytes go through the real
//! framer, actions are carried out by hand.
#![allow(clippy::unwrap_used)]

use super::*;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rookery_sasl::{HashAlg, derive_credentials};
use rookery_xml::{Framer, Limits};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' \
                      xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const EXPORTER: [u8; 32] = [7; 32];

fn settings(stream_ns: &'static str) -> Arc<Settings> {
    Arc::new(Settings {
        stream_ns,
        domains: vec!["localhost".into()],
        allow_registration: true,
        fake_secret: b"fake-secret".to_vec(),
        tls_server_end_point: None,
        stream_management: true,
        client_state_indication: true,
    })
}

/// A driver stand-in: frames bytes, feeds the machine, restarts the framer when asked.
struct Harness {
    m: Negotiator,
    framer: Framer,
}

impl Harness {
    fn new(stream_ns: &'static str, security: Security) -> Self {
        Harness { m: Negotiator::new(settings(stream_ns), security), framer: Framer::new(Limits::default()) }
    }

    fn client() -> Self {
        Harness::new(ns::CLIENT, Security::Plain)
    }

    fn after(&mut self, actions: &[Action]) {
        if actions.iter().any(|a| matches!(a, Action::RestartStream)) {
            self.framer.restart();
        }
    }

    /// Feeds `bytes`; frames are fed until the machine asks for something (a lookup, TLS)
    /// that must be answered first. Returns the actions.
    fn send(&mut self, bytes: &str) -> Vec<Action> {
        self.framer.read_buf().extend_from_slice(bytes.as_bytes());
        self.drain()
    }

    /// Feeds the frames already buffered.
    fn drain(&mut self) -> Vec<Action> {
        let mut all = Vec::new();
        while let Some(f) = self.framer.next_frame().unwrap() {
            let acts = self.m.handle(Input::Frame(f));
            let wait = acts.iter().any(|a| {
                matches!(
                    a,
                    Action::StartTls
                        | Action::LookupCredentials { .. }
                        | Action::VerifyPassword { .. }
                        | Action::PreauthIq(_)
                        | Action::Bound { .. }
                )
            });
            self.after(&acts);
            all.extend(acts);
            if wait {
                break;
            }
        }
        all
    }

    /// The handshake asked for by `StartTls` completed: the stream restarts (§5.4.3.3).
    fn tls_done(&mut self, exporter: Option<Vec<u8>>) -> Vec<Action> {
        self.framer.restart();
        self.input(Input::TlsEstablished { exporter })
    }

    fn input(&mut self, i: Input) -> Vec<Action> {
        let acts = self.m.handle(i);
        self.after(&acts);
        acts
    }

    /// Opens a stream and completes STARTTLS (TLS 1.3 with an exporter).
    fn secured() -> Self {
        let mut h = Harness::client();
        let acts = h.send(HEADER);
        assert!(written(&acts).contains("<required/>"), "{acts:?}");
        let acts = h.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert!(written(&acts).contains("<proceed"), "{acts:?}");
        assert!(matches!(acts.last(), Some(Action::StartTls)), "{acts:?}");
        assert!(h.drain().is_empty());
        assert!(h.tls_done(Some(EXPORTER.to_vec())).is_empty());
        h
    }
}

fn written(acts: &[Action]) -> String {
    acts.iter()
        .filter_map(|a| match a {
            Action::Write(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

fn outcome(acts: &[Action]) -> Option<&AuthOutcome> {
    acts.iter().find_map(|a| match a {
        Action::Auth(o) => Some(o),
        _ => None,
    })
}

fn closed_with(acts: &[Action]) -> Option<StreamCondition> {
    acts.iter().find_map(|a| match a {
        Action::Close(e) => Some(e.condition),
        _ => None,
    })
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// A SCRAM-SHA-256 client (RFC 5802 §3) for one exchange, without channel binding.
struct Client {
    password: &'static str,
    first_bare: String,
    auth_message: String,
    salted: Vec<u8>,
}

impl Client {
    fn new(user: &str, password: &'static str) -> Self {
        Client {
            password,
            first_bare: format!("n={user},r=clientNonce0123"),
            auth_message: String::new(),
            salted: Vec::new(),
        }
    }

    fn auth(&self) -> String {
        let first = B64.encode(format!("n,,{}", self.first_bare));
        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{first}</auth>")
    }

    fn response(&mut self, challenge: &str) -> String {
        let start = challenge.find('>').unwrap() + 1;
        let end = challenge.rfind('<').unwrap();
        let server_first = String::from_utf8(B64.decode(&challenge[start..end]).unwrap()).unwrap();
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for part in server_first.split(',') {
            match part.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = B64.decode(v).unwrap(),
                ("i=", v) => iterations = v.parse().unwrap(),
                _ => {}
            }
        }
        let mut salted = vec![0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(self.password.as_bytes(), &salt, iterations, &mut salted);
        let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
        self.auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let signature = hmac(&stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        self.salted = salted;
        let fin = B64.encode(format!("{without_proof},p={}", B64.encode(proof)));
        format!("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{fin}</response>")
    }

    fn server_signature(&self) -> String {
        let server_key = hmac(&self.salted, b"Server Key");
        format!("v={}", B64.encode(hmac(&server_key, self.auth_message.as_bytes())))
    }
}

fn alice_creds() -> Credentials {
    Credentials::Found(vec![derive_credentials(HashAlg::Sha256, "pencil", b"saltsaltsalt", 4096).unwrap()])
}

/// SCRAM-SHA-256 for alice with `password`, up to the machine's verdict.
fn scram(h: &mut Harness, password: &'static str) -> (Client, Vec<Action>) {
    let mut c = Client::new("alice", password);
    let acts = h.send(&c.auth());
    match &acts[..] {
        [Action::LookupCredentials { user }] => assert_eq!(user.as_str(), "alice@localhost"),
        other => panic!("expected a credential lookup, got {other:?}"),
    }
    let acts = h.input(Input::Credentials(alice_creds()));
    let challenge = written(&acts);
    assert!(challenge.starts_with("<challenge"), "{acts:?}");
    let response = c.response(&challenge);
    let acts = h.send(&response);
    (c, acts)
}

#[test]
fn starttls_then_scram_then_bind() {
    let mut h = Harness::secured();
    let acts = h.send(HEADER);
    let out = written(&acts);
    assert!(out.contains("xmlns='jabber:client'"), "{out}");
    assert!(out.contains("<mechanism>SCRAM-SHA-256-PLUS</mechanism>"), "{out}");
    assert!(out.contains("<channel-binding type='tls-exporter'/>"), "{out}");
    assert!(!out.contains("starttls"), "{out}");

    let (client, acts) = scram(&mut h, "pencil");
    let out = written(&acts);
    let data = out.strip_prefix("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>").unwrap();
    let data = String::from_utf8(B64.decode(data.strip_suffix("</success>").unwrap()).unwrap()).unwrap();
    assert_eq!(data, client.server_signature(), "server-final-message proves the server knows the key");
    assert!(matches!(outcome(&acts), Some(AuthOutcome::Success { user }) if user.as_str() == "alice@localhost"));
    assert!(acts.iter().any(|a| matches!(a, Action::RestartStream)));

    let acts = h.send(HEADER);
    assert!(written(&acts).contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"), "{acts:?}");
    // The optional RFC 3921 session request is answered before binding.
    let acts = h.send("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>");
    assert!(written(&acts).contains("type='result'"), "{acts:?}");
    let acts = h.send(
        "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>",
    );
    match &acts[..] {
        [Action::Bound { jid, reply }] => {
            assert_eq!(jid.as_str(), "alice@localhost/phone");
            let reply = String::from_utf8_lossy(reply);
            assert!(reply.contains("<jid>alice@localhost/phone</jid>") && reply.contains("id='b1'"), "{reply}");
        }
        other => panic!("expected Bound, got {other:?}"),
    }
}

/// XEP-0198 §3, §5: before binding, `<enable/>` is refused, `<resume/>` goes to the
/// driver (for the authenticated account only), and a bind still works afterwards.
#[test]
fn stream_management_before_bind() {
    let mut h = Harness::secured();
    h.send(HEADER);
    let (_, acts) = scram(&mut h, "pencil");
    assert!(matches!(outcome(&acts), Some(AuthOutcome::Success { .. })));
    let acts = h.send(HEADER);
    assert!(written(&acts).contains("<sm xmlns='urn:xmpp:sm:3'/>"), "{acts:?}");
    let acts = h.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
    assert_eq!(
        written(&acts),
        "<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    );
    let acts = h.send("<resume xmlns='urn:xmpp:sm:3' previd='abc'/>");
    assert!(written(&acts).contains("<bad-request"), "no h: {acts:?}");
    let acts = h.send("<resume xmlns='urn:xmpp:sm:3' previd='abc' h='4294967295'/>");
    match &acts[..] {
        [Action::Resume { user, previd, h }] => {
            assert_eq!((user.as_str(), previd.as_str(), *h), ("alice@localhost", "abc", u32::MAX));
        }
        other => panic!("expected Resume, got {other:?}"),
    }
    let acts = h.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    assert!(matches!(&acts[..], [Action::Bound { .. }]), "{acts:?}");
}

#[test]
fn wrong_password_is_counted_protocol_errors_are_not() {
    let mut h = Harness::secured();
    h.send(HEADER);
    let (_, acts) = scram(&mut h, "not-pencil");
    match outcome(&acts) {
        Some(AuthOutcome::WrongCredentials { user, condition }) => {
            assert_eq!(user.as_ref().map(|u| u.as_str()), Some("alice@localhost"));
            assert_eq!(*condition, "not-authorized");
        }
        other => panic!("expected wrong credentials, got {other:?}"),
    }
    assert!(written(&acts).contains("<not-authorized/>"), "{acts:?}");

    // slixmpp 1.8: SCRAM-SHA-512-PLUS with the `n` GS2 flag is malformed, not a guess.
    let first = B64.encode("n,,n=alice,r=abcdef");
    let acts = h
        .send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-512-PLUS'>{first}</auth>"));
    assert_eq!(outcome(&acts), Some(&AuthOutcome::Refused { condition: "malformed-request" }));
    assert!(written(&acts).contains("<malformed-request/>"), "{acts:?}");

    // PLAIN: the password is checked by the driver; a wrong one counts.
    let plain = B64.encode("\0alice\0wrong");
    let acts = h.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"));
    assert!(matches!(&acts[..], [Action::LookupCredentials { .. }]), "{acts:?}");
    let acts = h.input(Input::Credentials(alice_creds()));
    assert!(matches!(&acts[..], [Action::VerifyPassword { password, .. }] if password == "wrong"), "{acts:?}");
    let acts = h.input(Input::PasswordChecked(false));
    assert!(matches!(outcome(&acts), Some(AuthOutcome::WrongCredentials { .. })), "{acts:?}");

    // An unknown user after a complete exchange looks like a wrong password.
    let plain = B64.encode("\0nobody\0pw");
    h.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"));
    let acts = h.input(Input::Credentials(Credentials::Unknown));
    assert!(matches!(outcome(&acts), Some(AuthOutcome::WrongCredentials { .. })), "{acts:?}");
    assert!(written(&acts).contains("<not-authorized/>"), "{acts:?}");
}

#[test]
fn too_many_attempts_end_the_stream() {
    let mut h = Harness::new(ns::CLIENT, Security::Tls { exporter: None });
    let acts = h.send(HEADER);
    let out = written(&acts);
    assert!(out.contains("<mechanism>PLAIN</mechanism>") && !out.contains("-PLUS"), "{out}");
    for i in 1..=MAX_AUTH_ATTEMPTS {
        let acts = h.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='BOGUS'/>");
        assert!(written(&acts).contains("<invalid-mechanism/>"), "{acts:?}");
        let closed = closed_with(&acts);
        if i < MAX_AUTH_ATTEMPTS {
            assert_eq!(closed, None, "attempt {i}");
        } else {
            assert_eq!(closed, Some(StreamCondition::PolicyViolation), "attempt {i}");
        }
    }
    // Nothing is taken after the end.
    assert!(h.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>").is_empty());
}

#[test]
fn too_many_refused_bind_requests_end_the_stream() {
    let mut h = Harness::secured();
    h.send(HEADER);
    let (_, acts) = scram(&mut h, "pencil");
    assert!(matches!(outcome(&acts), Some(AuthOutcome::Success { .. })));
    h.send(HEADER);
    for _ in 0..MAX_BIND_ATTEMPTS {
        let acts = h.send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>");
        assert!(written(&acts).contains("not-authorized"), "{acts:?}");
    }
    let acts = h.send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>");
    assert_eq!(closed_with(&acts), Some(StreamCondition::PolicyViolation));
}

#[test]
fn data_after_starttls_aborts_whitespace_does_not() {
    let mut h = Harness::client();
    h.send(HEADER);
    let acts = h.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message><body>injected</body></message>");
    assert!(matches!(acts.last(), Some(Action::StartTls)), "{acts:?}");
    // The driver feeds what is still buffered in the clear before the handshake.
    let acts = h.drain();
    assert!(matches!(&acts[..], [Action::Abort(AbortReason::DataAfterStartTls)]), "{acts:?}");
    assert_eq!(AbortReason::DataAfterStartTls.name(), "data_after_starttls");

    // go-xmpp: a newline after <starttls/> is whitespace, not data.
    let mut h = Harness::client();
    h.send(HEADER);
    let acts = h.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\n\r\n  ");
    assert!(matches!(acts.last(), Some(Action::StartTls)), "{acts:?}");
    assert!(h.drain().is_empty());
    assert!(h.tls_done(None).is_empty());
    assert!(written(&h.send(HEADER)).contains("<mechanisms"));
}

#[test]
fn stanzas_before_starttls_and_auth_are_refused() {
    let mut h = Harness::client();
    h.send(HEADER);
    let acts = h.send("<message to='bob@localhost'><body>hi</body></message>");
    assert_eq!(closed_with(&acts), Some(StreamCondition::PolicyViolation));

    let mut h = Harness::secured();
    h.send(HEADER);
    let acts = h.send("<message to='bob@localhost'><body>hi</body></message>");
    assert_eq!(closed_with(&acts), Some(StreamCondition::NotAuthorized));
}

#[test]
fn registration_is_forwarded_before_auth() {
    let mut h = Harness::secured();
    assert!(written(&h.send(HEADER)).contains("iq-register"));
    let acts = h.send("<iq type='get' id='reg1'><query xmlns='jabber:iq:register'/></iq>");
    match &acts[..] {
        [Action::PreauthIq(req)] => {
            assert_eq!(req.id, "reg1");
            assert!(req.from.is_none());
            assert_eq!(req.to.as_str(), "localhost");
        }
        other => panic!("expected a forwarded IQ, got {other:?}"),
    }
    let acts = h.input(Input::PreauthIqResult(Ok(None)));
    assert_eq!(written(&acts), "<iq id=\"reg1\" type=\"result\"/>");
}

#[test]
fn the_stream_namespace_is_a_parameter() {
    let server_header = HEADER.replace("xmlns='jabber:client'", "xmlns='jabber:server'");
    let mut h = Harness::new(ns::SERVER, Security::Tls { exporter: None });
    let out = written(&h.send(&server_header));
    assert!(out.contains("<stream:stream xmlns='jabber:server'"), "{out}");
    assert!(!out.contains("jabber:client"), "{out}");
    assert!(out.contains("<mechanisms"), "{out}");

    // A client stream on a server listener is the wrong namespace (RFC 6120 §4.8.2).
    let mut h = Harness::new(ns::SERVER, Security::Tls { exporter: None });
    let acts = h.send(HEADER);
    assert_eq!(closed_with(&acts), Some(StreamCondition::InvalidNamespace));
    // And the error goes out after our header, which names the listener's namespace.
    let bytes = String::from_utf8(h.m.error_bytes(&StreamError::new(StreamCondition::InvalidNamespace))).unwrap();
    assert!(bytes.contains("xmlns='jabber:server'") && bytes.ends_with("</stream:stream>"), "{bytes}");
}

#[test]
fn header_errors() {
    let cases = [
        (HEADER.replace("to='localhost'", "to='elsewhere.example'"), StreamCondition::HostUnknown),
        (HEADER.replace(" version='1.0'", ""), StreamCondition::UnsupportedVersion),
        (HEADER.replace("http://etherx.jabber.org/streams", "urn:other"), StreamCondition::InvalidNamespace),
    ];
    for (header, cond) in cases {
        let mut h = Harness::client();
        assert_eq!(closed_with(&h.send(&header)), Some(cond), "{header}");
    }
    let mut h = Harness::client();
    h.send(HEADER);
    assert!(matches!(&h.send("</stream:stream>")[..], [Action::ClientClosed]));
}

#[test]
fn inputs_out_of_order_abort_instead_of_panicking() {
    let mut h = Harness::client();
    assert!(matches!(&h.input(Input::PasswordChecked(true))[..], [Action::Abort(AbortReason::UnexpectedInput)]));
    let mut h = Harness::client();
    assert!(matches!(&h.input(Input::Credentials(alice_creds()))[..], [Action::Abort(_)]));
    let mut h = Harness::client();
    assert!(matches!(&h.input(Input::TlsEstablished { exporter: None })[..], [Action::Abort(_)]));
    // A frame while a lookup is outstanding.
    let mut h = Harness::secured();
    h.send(HEADER);
    let c = Client::new("alice", "pencil");
    h.send(&c.auth());
    let acts = h.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>");
    assert!(matches!(&acts[..], [Action::Abort(AbortReason::UnexpectedInput)]), "{acts:?}");
}
