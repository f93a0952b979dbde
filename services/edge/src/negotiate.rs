//! Stream negotiation as a sans-I/O state machine: from the first stream header to a
//! bound resource.
//!
//! Owns: checking the stream header and answering it with ours and the stream features
//! (RFC 6120 §4.3.2, §4.7, §4.8), stream restarts (§4.3.3), STARTTLS (§5.4: `<starttls/>`,
//! `<proceed/>`; no XML data may follow `<starttls/>` in the clear, §5.4.3.1 rule 1), SASL (§6.4, §6.5 failure conditions) with SCRAM-SHA-*(-PLUS) and PLAIN from
//! `rookery_sasl`, the XEP-0440 channel-binding advertisement, in-band registration
//! before authentication (XEP-0077 §3.1, forwarded), resource binding (§7, §7.7.2.1
//! attempt limit) with the no-op RFC 3921 session request, the per-stream attempt
//! limits (§6.4.5), and the stream errors of negotiation (§4.9).
//!
//! It consumes [`Input`]s (a framed element, TLS established with its channel-binding
//! data, the answer to a lookup it asked for) and returns [`Action`]s in the order they
//! must be carried out (bytes to write, start TLS, look credentials up, verify a password,
//! forward an IQ, account a failure, end the stream, done with a JID).
//!
//! Must not touch: sockets, TLS state, timers, storage, the router or the login throttle:
//! it does no I/O and never awaits, so TCP, direct TLS, WebSocket, BOSH, s2s and component
//! connections can all drive it. The stream's content namespace (`jabber:client`,
//! `jabber:server`, `jabber:component:accept`) is a parameter ([`Settings::stream_ns`]):
//! the header it expects and writes, and the namespace of the elements it accepts, follow
//! it.

use rookery_core::{IqRequest, IqType};
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_sasl::{ChannelBindings, Mechanism, SaslError, ScramServer, StoredCredentials};
use rookery_stanza::{Condition, StanzaError, StreamCondition, StreamError, ns};
use rookery_xml::{Element, Frame, RawElement};

#[cfg(test)]
mod tests;

/// Attempts before the stream is closed (RFC 6120 §6.4.5 asks for 2..=5 retries).
pub const MAX_AUTH_ATTEMPTS: u32 = 5;
/// Refused requests before binding after which the stream is closed (§7.7.2.1 says
/// 5 to 10).
pub const MAX_BIND_ATTEMPTS: u32 = 5;

/// What every negotiation on one listener shares.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The stream's content namespace (`jabber:client`, `jabber:server`, ...).
    pub stream_ns: &'static str,
    /// Domains served; the first is the default when the client names none.
    pub domains: Vec<String>,
    /// Offer XEP-0077 registration before authentication.
    pub allow_registration: bool,
    /// Secret for fake SCRAM salts of unknown users.
    pub fake_secret: Vec<u8>,
    /// RFC 5929 `tls-server-end-point` data of our certificate, if any.
    pub tls_server_end_point: Option<Vec<u8>>,
    /// Offer XEP-0198 stream management (and take `<resume/>` instead of binding).
    pub stream_management: bool,
    /// Offer XEP-0352 client state indication.
    pub client_state_indication: bool,
}

/// How the transport starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// In the clear: STARTTLS is offered and required (RFC 6120 §5.3.1).
    Plain,
    /// TLS from the first byte (XEP-0368), with its RFC 9266 exporter if TLS 1.3.
    Tls { exporter: Option<Vec<u8>> },
}

/// The answer to [`Action::LookupCredentials`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// The account exists with these stored credentials.
    Found(Vec<StoredCredentials>),
    /// No such account.
    Unknown,
    /// The store could not be asked.
    Failed,
}

/// What the machine is fed.
#[derive(Debug)]
pub enum Input {
    /// The next frame from the stream framer.
    Frame(Frame),
    /// The TLS handshake asked for by [`Action::StartTls`] completed; RFC 9266 exporter
    /// data if TLS 1.3.
    TlsEstablished { exporter: Option<Vec<u8>> },
    /// The answer to [`Action::LookupCredentials`].
    Credentials(Credentials),
    /// The answer to [`Action::VerifyPassword`].
    PasswordChecked(bool),
    /// The answer to [`Action::PreauthIq`].
    PreauthIqResult(rookery_core::IqResult),
}

/// Why a negotiation was given up without a stream error on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// Something other than whitespace followed `<starttls/>` in the clear
    /// (CVE-2011-0411 class: it would be taken as sent over TLS).
    DataAfterStartTls,
    /// An input the current state cannot take (a driver error).
    UnexpectedInput,
}

impl AbortReason {
    /// A stable name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            AbortReason::DataAfterStartTls => "data_after_starttls",
            AbortReason::UnexpectedInput => "unexpected_input",
        }
    }
}

/// How an authentication attempt ended, for the login throttle and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Authenticated.
    Success { user: BareJid },
    /// Credentials were checked and found wrong (a wrong password, or an unknown user
    /// after a complete exchange): what a password guesser produces. The throttle counts
    /// these and its delay applies before the failure is written.
    WrongCredentials { user: Option<BareJid>, condition: &'static str },
    /// The attempt failed before any password was checked (malformed request, unknown
    /// mechanism, channel-binding mismatch, abort, ...): not counted by the throttle.
    Refused { condition: &'static str },
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Write these bytes to the peer.
    Write(Vec<u8>),
    /// `<proceed/>` was written: feed the frames still buffered in the clear (anything but
    /// whitespace aborts) and refuse a partial one, run the TLS handshake, restart the
    /// framer (§5.4.3.3), then feed [`Input::TlsEstablished`].
    StartTls,
    /// The stream restarts (RFC 6120 §4.3.3, after TLS or SASL success): the framer must
    /// expect a new stream header.
    RestartStream,
    /// Look up the account's stored credentials; answer with [`Input::Credentials`].
    LookupCredentials { user: BareJid },
    /// Check a PLAIN password against stored credentials (slow on purpose: off the I/O
    /// threads); answer with [`Input::PasswordChecked`].
    VerifyPassword { creds: Box<StoredCredentials>, password: String },
    /// Forward an IQ allowed before authentication (XEP-0077); answer with
    /// [`Input::PreauthIqResult`].
    PreauthIq(Box<IqRequest>),
    /// An authentication attempt ended; a failure element, if any, follows as a `Write`.
    Auth(AuthOutcome),
    /// Send this stream error (after our header if not sent yet), then close.
    Close(StreamError),
    /// The client closed the stream: answer in kind.
    ClientClosed,
    /// Close the connection without writing anything more.
    Abort(AbortReason),
    /// Negotiation is done: register `jid`, then write `reply` (the bind result), in that
    /// order, so nothing is delivered before the client knows its JID.
    Bound { jid: FullJid, reply: Vec<u8> },
    /// XEP-0198 §5: the authenticated `user` asks to resume stream `previd`, having
    /// handled `h` stanzas of it. The driver takes the session over and writes
    /// `<resumed/>`, or writes `<failed/>` and goes on feeding frames: the machine still
    /// accepts a bind (§5: the client may bind instead).
    Resume { user: BareJid, previd: String, h: u32 },
}

/// What the next stream header leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Tls,
    Auth,
    Bind,
}

enum State {
    /// Waiting for a stream header.
    Header(Stage),
    /// Features offered STARTTLS.
    StartTls,
    /// `<proceed/>` sent; waiting for the handshake.
    TlsPending,
    /// Features offered SASL.
    Auth,
    /// Empty challenge sent for a mechanism without an initial response (§6.4.2).
    Initial(Option<Box<ScramServer>>),
    ScramCreds(Box<ScramServer>, Option<BareJid>, Option<String>),
    ScramFinal(Box<ScramServer>, Option<BareJid>, Option<String>),
    PlainCreds(BareJid, String),
    PlainVerify(BareJid),
    Preauth(String),
    /// Features offered binding.
    Bind,
    /// Nothing more is accepted.
    Done,
}

/// The machine. See the module documentation.
pub struct Negotiator {
    settings: std::sync::Arc<Settings>,
    state: State,
    /// Our header was written on the current stream (a stream error needs one first).
    header_sent: bool,
    domain: String,
    bindings: ChannelBindings,
    auth_failures: u32,
    bind_refused: u32,
    user: Option<BareJid>,
}

impl std::fmt::Debug for Negotiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Negotiator").field("domain", &self.domain).field("user", &self.user).finish_non_exhaustive()
    }
}

fn stream_err(c: StreamCondition) -> Action {
    Action::Close(StreamError::new(c))
}

impl Negotiator {
    pub fn new(settings: std::sync::Arc<Settings>, security: Security) -> Self {
        let domain = settings.domains.first().cloned().unwrap_or_default();
        let (stage, exporter) = match security {
            Security::Plain => (Stage::Tls, None),
            Security::Tls { exporter } => (Stage::Auth, Some(exporter)),
        };
        let mut n = Negotiator {
            state: State::Header(stage),
            header_sent: false,
            domain,
            bindings: ChannelBindings::default(),
            auth_failures: 0,
            bind_refused: 0,
            user: None,
            settings,
        };
        if let Some(exporter) = exporter {
            n.secure(exporter);
        }
        n
    }

    /// Whether our header has been written on the current stream.
    pub fn header_sent(&self) -> bool {
        self.header_sent
    }

    /// The domain the client asked for (or the default one).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The stream error for ending now: our header first if it was not written yet.
    pub fn error_bytes(&self, err: &StreamError) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.header_sent {
            out.extend_from_slice(&self.header(None));
        }
        out.extend_from_slice(&err.to_bytes());
        out.extend_from_slice(b"</stream:stream>");
        out
    }

    fn secure(&mut self, exporter: Option<Vec<u8>>) {
        self.bindings = ChannelBindings {
            tls_exporter: exporter,
            tls_server_end_point: self.settings.tls_server_end_point.clone(),
        };
    }

    /// Feeds one input; returns what to do, in order.
    pub fn handle(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        self.step(input, &mut out);
        if out.iter().any(|a| matches!(a, Action::Close(_) | Action::Abort(_) | Action::ClientClosed)) {
            self.state = State::Done;
        }
        out
    }

    fn step(&mut self, input: Input, out: &mut Vec<Action>) {
        let frame = match input {
            Input::Frame(f) => f,
            Input::TlsEstablished { exporter } if matches!(self.state, State::TlsPending) => {
                self.secure(exporter);
                self.header_sent = false;
                self.state = State::Header(Stage::Auth);
                return;
            }
            Input::Credentials(c) => return self.on_credentials(c, out),
            Input::PasswordChecked(ok) => return self.on_password(ok, out),
            Input::PreauthIqResult(r) => return self.on_preauth(r, out),
            Input::TlsEstablished { .. } => return out.push(Action::Abort(AbortReason::UnexpectedInput)),
        };
        match (&self.state, frame) {
            (State::Done, _) => {}
            // §5.3.3 forbids even whitespace here, but go-xmpp writes a newline after
            // <starttls/>; whitespace carries no data, so dropping it smuggles nothing.
            (State::TlsPending, Frame::Whitespace) => {}
            // §5.4.3.1 rule 1: no XML data until TLS is up; anything sent in the clear
            // now would be read as if it had come over TLS (CVE-2011-0411 class).
            (State::TlsPending, _) => out.push(Action::Abort(AbortReason::DataAfterStartTls)),
            (State::Header(stage), Frame::StreamOpen(h)) => {
                let stage = *stage;
                self.open(&h, stage, out);
            }
            (State::Header(_), Frame::Whitespace) => {}
            (State::Header(_), _) => out.push(stream_err(StreamCondition::NotWellFormed)),
            (_, Frame::Whitespace) => {}
            (_, Frame::StreamClose) => out.push(Action::ClientClosed),
            (_, Frame::StreamOpen(_)) => out.push(stream_err(StreamCondition::NotWellFormed)),
            (_, Frame::Element(el)) => self.element(el, out),
        }
    }

    /// Our stream header (RFC 6120 §4.7).
    fn header(&self, to: Option<&str>) -> Vec<u8> {
        let mut id = [0u8; 12];
        let _ = getrandom::fill(&mut id);
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
        out.extend_from_slice(rookery_xml::escape_attr(self.settings.stream_ns).as_bytes());
        out.extend_from_slice(b"' xmlns:stream='http://etherx.jabber.org/streams'");
        rookery_stanza::push_attr(&mut out, "id", &id);
        rookery_stanza::push_attr(&mut out, "from", &self.domain);
        if let Some(to) = to {
            rookery_stanza::push_attr(&mut out, "to", to);
        }
        out.extend_from_slice(b" version='1.0' xml:lang='en'>");
        out
    }

    /// Checks a stream header (RFC 6120 §4.7), answers with ours and the features.
    fn open(&mut self, h: &rookery_xml::StreamHeader, stage: Stage, out: &mut Vec<Action>) {
        if let Some(to) = &h.to {
            match Jid::parse(to) {
                Ok(j)
                    if j.node().is_none()
                        && j.resource().is_none()
                        && self.settings.domains.iter().any(|d| d == j.domain()) =>
                {
                    self.domain = j.domain().to_owned();
                }
                _ => return out.push(stream_err(StreamCondition::HostUnknown)),
            }
        }
        // §4.8.1, §4.8.2: the stream namespace, and the content namespace of this stream.
        if h.local_name != "stream" || h.ns.as_deref() != Some(ns::STREAM) {
            return out.push(stream_err(StreamCondition::InvalidNamespace));
        }
        if h.default_ns.as_deref() != Some(self.settings.stream_ns) {
            return out.push(stream_err(StreamCondition::InvalidNamespace));
        }
        // §4.7.5: no version means a pre-1.0 client we cannot serve.
        match h.version.as_deref().and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok()) {
            Some(major) if major >= 1 => {}
            _ => return out.push(stream_err(StreamCondition::UnsupportedVersion)),
        }
        let client_from = h.from.as_deref().and_then(|f| Jid::parse(f).ok()).map(|j| j.to_string());
        let mut bytes = self.header(client_from.as_deref());
        self.header_sent = true;
        bytes.extend_from_slice(&self.features(stage));
        out.push(Action::Write(bytes));
        self.state = match stage {
            Stage::Tls => State::StartTls,
            Stage::Auth => State::Auth,
            Stage::Bind => State::Bind,
        };
    }

    /// §4.3.2 stream features for the stage.
    fn features(&self, stage: Stage) -> Vec<u8> {
        let mut f = String::from("<stream:features>");
        match stage {
            Stage::Tls => {
                f.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>");
            }
            Stage::Auth => {
                let types = self.bindings.types();
                f.push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
                for m in Mechanism::ALL {
                    if m.is_plus() && types.is_empty() {
                        continue;
                    }
                    f.push_str("<mechanism>");
                    f.push_str(m.name());
                    f.push_str("</mechanism>");
                }
                f.push_str("</mechanisms>");
                // XEP-0440: which channel-binding types the -PLUS mechanisms accept.
                if !types.is_empty() {
                    f.push_str("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>");
                    for t in types {
                        f.push_str("<channel-binding type='");
                        f.push_str(t);
                        f.push_str("'/>");
                    }
                    f.push_str("</sasl-channel-binding>");
                }
                if self.settings.allow_registration {
                    f.push_str("<register xmlns='http://jabber.org/features/iq-register'/>");
                }
            }
            Stage::Bind => {
                f.push_str("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>");
                // RFC 3921 session establishment, kept optional for old clients.
                f.push_str("<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>");
                f.push_str("<ver xmlns='urn:xmpp:features:rosterver'/>");
                if self.settings.stream_management {
                    f.push_str("<sm xmlns='urn:xmpp:sm:3'/>");
                }
                if self.settings.client_state_indication {
                    f.push_str("<csi xmlns='urn:xmpp:csi:0'/>");
                }
                f.push_str("<sub xmlns='urn:xmpp:features:pre-approval'/>");
            }
        }
        f.push_str("</stream:features>");
        f.into_bytes()
    }

    fn element(&mut self, el: RawElement, out: &mut Vec<Action>) {
        match &self.state {
            State::StartTls => {
                if el.name != "starttls" || el.ns != ns::TLS {
                    // §5.3.1: TLS is mandatory here.
                    return out.push(Action::Close(
                        StreamError::new(StreamCondition::PolicyViolation).with_text("STARTTLS is required"),
                    ));
                }
                out.push(Action::Write(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".to_vec()));
                out.push(Action::StartTls);
                self.state = State::TlsPending;
            }
            State::Auth => self.auth_element(el, out),
            State::Initial(..) => {
                let State::Initial(scram) = std::mem::replace(&mut self.state, State::Auth) else { return };
                match sasl_response(&el) {
                    Err(end) => out.push(end),
                    Ok(Err(cond)) => self.fail(AuthOutcome::Refused { condition: cond }, out),
                    Ok(Ok(data)) => match scram {
                        Some(s) => self.scram_first(s, &data, out),
                        None => self.plain(&data, out),
                    },
                }
            }
            State::ScramFinal(..) => {
                let State::ScramFinal(scram, user, authzid) = std::mem::replace(&mut self.state, State::Auth) else {
                    return;
                };
                match sasl_response(&el) {
                    Err(end) => out.push(end),
                    Ok(Err(cond)) => self.fail(AuthOutcome::Refused { condition: cond }, out),
                    Ok(Ok(data)) => self.scram_final(scram, user, authzid, &data, out),
                }
            }
            State::Bind => self.bind_element(el, out),
            // Waiting for an answer to a request: the driver must not feed frames now.
            State::ScramCreds(..) | State::PlainCreds(..) | State::PlainVerify(_) | State::Preauth(_) => {
                out.push(Action::Abort(AbortReason::UnexpectedInput));
            }
            State::Header(_) | State::TlsPending | State::Done => {}
        }
    }

    /// RFC 6120 §6: `<auth/>`, or an IQ allowed before authentication.
    fn auth_element(&mut self, el: RawElement, out: &mut Vec<Action>) {
        if el.ns == self.settings.stream_ns && el.name == "iq" {
            return self.preauth_iq(el, out);
        }
        if el.ns != ns::SASL {
            return out
                .push(Action::Close(StreamError::new(StreamCondition::NotAuthorized).with_text("authenticate first")));
        }
        if el.name != "auth" {
            return out.push(Action::Write(sasl_failure("malformed-request")));
        }
        let Ok(tree) = el.parse() else {
            return self.fail(AuthOutcome::Refused { condition: "malformed-request" }, out);
        };
        let Some(mech) = tree.get_attr("mechanism").and_then(Mechanism::from_name) else {
            return self.fail(AuthOutcome::Refused { condition: "invalid-mechanism" }, out);
        };
        let plus_advertised = !self.bindings.types().is_empty();
        if mech.is_plus() && !plus_advertised {
            return self.fail(AuthOutcome::Refused { condition: "invalid-mechanism" }, out);
        }
        let text = tree.text_content();
        let initial = if text.trim().is_empty() {
            None
        } else {
            match unb64(&text) {
                Some(d) => Some(d),
                None => return self.fail(AuthOutcome::Refused { condition: "incorrect-encoding" }, out),
            }
        };
        let scram = if mech == Mechanism::Plain {
            None
        } else {
            match ScramServer::new(mech, self.bindings.clone(), plus_advertised) {
                Ok(s) => Some(Box::new(s)),
                Err(e) => return self.fail(AuthOutcome::Refused { condition: e.condition() }, out),
            }
        };
        match (initial, scram) {
            (None, scram) => {
                // §6.4.2: no initial response, so an empty challenge asks for it.
                out.push(Action::Write(b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".to_vec()));
                self.state = State::Initial(scram);
            }
            (Some(data), Some(s)) => self.scram_first(s, &data, out),
            (Some(data), None) => self.plain(&data, out),
        }
    }

    fn scram_first(&mut self, mut scram: Box<ScramServer>, data: &[u8], out: &mut Vec<Action>) {
        let cf = match scram.client_first(data) {
            Ok(cf) => cf,
            Err(e) => return self.fail(AuthOutcome::Refused { condition: e.condition() }, out),
        };
        let user = BareJid::from_parts(Some(&cf.username), &self.domain).ok();
        match &user {
            Some(u) => {
                out.push(Action::LookupCredentials { user: u.clone() });
                self.state = State::ScramCreds(scram, user, cf.authzid);
            }
            // Not a valid JID localpart: go on with fake credentials, fail at the end.
            None => self.scram_challenge(scram, None, cf.authzid, None, out),
        }
    }

    fn scram_challenge(
        &mut self,
        mut scram: Box<ScramServer>,
        user: Option<BareJid>,
        authzid: Option<String>,
        creds: Option<StoredCredentials>,
        out: &mut Vec<Action>,
    ) {
        let sf = scram.server_first(creds, &self.settings.fake_secret);
        out.push(Action::Write(format!("<challenge xmlns='{}'>{}</challenge>", ns::SASL, b64(&sf)).into_bytes()));
        self.state = State::ScramFinal(scram, user, authzid);
    }

    fn scram_final(
        &mut self,
        mut scram: Box<ScramServer>,
        user: Option<BareJid>,
        authzid: Option<String>,
        data: &[u8],
        out: &mut Vec<Action>,
    ) {
        let server_final = match scram.client_final(data) {
            Ok(v) => v,
            // The proof was checked against the stored (or, for an unknown user, fake)
            // keys and found wrong.
            Err(SaslError::NotAuthorized) => {
                return self.fail(AuthOutcome::WrongCredentials { user, condition: "not-authorized" }, out);
            }
            Err(e) => return self.fail(AuthOutcome::Refused { condition: e.condition() }, out),
        };
        let Some(user) = user else {
            return self.fail(AuthOutcome::WrongCredentials { user: None, condition: "not-authorized" }, out);
        };
        if let Some(authz) = &authzid
            && !authzid_ok(authz, &user)
        {
            return self.fail(AuthOutcome::Refused { condition: SaslError::InvalidAuthzid.condition() }, out);
        }
        out.push(Action::Write(format!("<success xmlns='{}'>{}</success>", ns::SASL, b64(&server_final)).into_bytes()));
        self.succeed(user, out);
    }

    /// RFC 4616; this stage is only reached over TLS.
    fn plain(&mut self, data: &[u8], out: &mut Vec<Action>) {
        let req = match rookery_sasl::parse_plain(data) {
            Ok(r) => r,
            Err(e) => return self.fail(AuthOutcome::Refused { condition: e.condition() }, out),
        };
        let Ok(user) = BareJid::from_parts(Some(&req.authcid), &self.domain) else {
            return self.fail(AuthOutcome::WrongCredentials { user: None, condition: "not-authorized" }, out);
        };
        if let Some(authz) = &req.authzid
            && !authzid_ok(authz, &user)
        {
            return self.fail(AuthOutcome::Refused { condition: "invalid-authzid" }, out);
        }
        out.push(Action::LookupCredentials { user: user.clone() });
        self.state = State::PlainCreds(user, req.password);
    }

    fn on_credentials(&mut self, c: Credentials, out: &mut Vec<Action>) {
        match std::mem::replace(&mut self.state, State::Auth) {
            State::ScramCreds(scram, user, authzid) => {
                let mech = scram.mechanism();
                let creds = match c {
                    Credentials::Found(list) => list.into_iter().find(|c| Some(c.alg) == mech.hash()),
                    Credentials::Unknown => None,
                    Credentials::Failed => {
                        return self.fail(AuthOutcome::Refused { condition: "temporary-auth-failure" }, out);
                    }
                };
                self.scram_challenge(scram, user, authzid, creds, out);
            }
            State::PlainCreds(user, password) => {
                let creds = match c {
                    Credentials::Found(list) => list.into_iter().max_by_key(|c| c.stored_key.len()),
                    Credentials::Unknown => None,
                    Credentials::Failed => {
                        return self.fail(AuthOutcome::Refused { condition: "temporary-auth-failure" }, out);
                    }
                };
                let Some(creds) = creds else {
                    return self
                        .fail(AuthOutcome::WrongCredentials { user: Some(user), condition: "not-authorized" }, out);
                };
                out.push(Action::VerifyPassword { creds: Box::new(creds), password });
                self.state = State::PlainVerify(user);
            }
            other => {
                self.state = other;
                out.push(Action::Abort(AbortReason::UnexpectedInput));
            }
        }
    }

    fn on_password(&mut self, ok: bool, out: &mut Vec<Action>) {
        match std::mem::replace(&mut self.state, State::Auth) {
            State::PlainVerify(user) if ok => {
                out.push(Action::Write(format!("<success xmlns='{}'/>", ns::SASL).into_bytes()));
                self.succeed(user, out);
            }
            State::PlainVerify(user) => {
                self.fail(AuthOutcome::WrongCredentials { user: Some(user), condition: "not-authorized" }, out);
            }
            other => {
                self.state = other;
                out.push(Action::Abort(AbortReason::UnexpectedInput));
            }
        }
    }

    fn succeed(&mut self, user: BareJid, out: &mut Vec<Action>) {
        out.push(Action::Auth(AuthOutcome::Success { user: user.clone() }));
        out.push(Action::RestartStream);
        self.user = Some(user);
        self.header_sent = false;
        self.state = State::Header(Stage::Bind);
    }

    /// A failed attempt: account it, write the `<failure/>`, and end the stream after too
    /// many (§6.4.5).
    fn fail(&mut self, outcome: AuthOutcome, out: &mut Vec<Action>) {
        let cond = match &outcome {
            AuthOutcome::WrongCredentials { condition, .. } | AuthOutcome::Refused { condition } => *condition,
            AuthOutcome::Success { .. } => "not-authorized",
        };
        self.auth_failures += 1;
        self.state = State::Auth;
        out.push(Action::Auth(outcome));
        out.push(Action::Write(sasl_failure(cond)));
        if self.auth_failures >= MAX_AUTH_ATTEMPTS {
            out.push(Action::Close(
                StreamError::new(StreamCondition::PolicyViolation).with_text("too many failed authentication attempts"),
            ));
        }
    }

    /// XEP-0077 §3.1 before authentication; everything else is refused.
    fn preauth_iq(&mut self, el: RawElement, out: &mut Vec<Action>) {
        let id = el.id.clone().unwrap_or_default();
        let kind = match el.kind.as_deref() {
            Some("get") => IqType::Get,
            Some("set") => IqType::Set,
            _ => return out.push(stream_err(StreamCondition::NotAuthorized)),
        };
        let payload = el.parse().ok().and_then(|e| e.elements().next().cloned());
        match payload {
            Some(p) if p.is("query", ns::REGISTER) && self.settings.allow_registration => {
                let Ok(to) = Jid::parse(&self.domain) else {
                    return out.push(stream_err(StreamCondition::InternalServerError));
                };
                out.push(Action::PreauthIq(Box::new(IqRequest { from: None, to, kind, id: id.clone(), payload: p })));
                self.state = State::Preauth(id);
            }
            Some(p) if p.is("query", ns::REGISTER) => {
                out.push(Action::Write(iq_error(&id, &StanzaError::new(Condition::ServiceUnavailable))));
            }
            _ => out.push(stream_err(StreamCondition::NotAuthorized)),
        }
    }

    fn on_preauth(&mut self, result: rookery_core::IqResult, out: &mut Vec<Action>) {
        let id = match std::mem::replace(&mut self.state, State::Auth) {
            State::Preauth(id) => id,
            other => {
                self.state = other;
                return out.push(Action::Abort(AbortReason::UnexpectedInput));
            }
        };
        let bytes = match result {
            Ok(p) => {
                let mut b = Vec::new();
                b.extend_from_slice(b"<iq");
                rookery_stanza::push_attr(&mut b, "id", &id);
                rookery_stanza::push_attr(&mut b, "type", "result");
                match p {
                    Some(p) => {
                        b.push(b'>');
                        p.write_to(&mut b, self.settings.stream_ns);
                        b.extend_from_slice(b"</iq>");
                    }
                    None => b.extend_from_slice(b"/>"),
                }
                b
            }
            Err(e) => iq_error(&id, &e),
        };
        out.push(Action::Write(bytes));
    }

    /// RFC 6120 §7: resource binding (and the no-op RFC 3921 session request).
    fn bind_element(&mut self, el: RawElement, out: &mut Vec<Action>) {
        let Some(user) = self.user.clone() else {
            return out.push(stream_err(StreamCondition::InternalServerError));
        };
        if el.ns == ns::SM {
            return self.sm_before_bind(user, &el, out);
        }
        if el.ns != self.settings.stream_ns || el.name != "iq" {
            return out.push(stream_err(StreamCondition::NotAuthorized));
        }
        // §8.3.1: results and errors are never answered.
        if matches!(el.kind.as_deref(), Some("result") | Some("error")) {
            return;
        }
        // §7.7.2.1: a client that keeps asking for unusable resources is cut off.
        if self.bind_refused >= MAX_BIND_ATTEMPTS {
            return out.push(Action::Close(
                StreamError::new(StreamCondition::PolicyViolation).with_text("too many failed bind attempts"),
            ));
        }
        let id = el.id.clone().unwrap_or_default();
        let Ok(tree) = el.parse() else { return out.push(stream_err(StreamCondition::NotWellFormed)) };
        let is_set = el.kind.as_deref() == Some("set");
        if tree.get_child("session", ns::SESSION).is_some() && is_set {
            let reply = format!("<iq id='{}' type='result'/>", rookery_xml::escape_attr(&id));
            return out.push(Action::Write(reply.into_bytes()));
        }
        let Some(b) = tree.get_child("bind", ns::BIND).filter(|_| is_set) else {
            // §7.2: stanzas before binding are not allowed.
            self.bind_refused += 1;
            return out.push(Action::Write(iq_error(&id, &StanzaError::new(Condition::NotAuthorized))));
        };
        let requested = b.get_child("resource", ns::BIND).map(Element::text_content).filter(|r| !r.trim().is_empty());
        let full = match requested {
            Some(r) => match user.with_resource(&r) {
                Ok(f) => f,
                Err(_) => {
                    self.bind_refused += 1;
                    return out.push(Action::Write(iq_error(&id, &StanzaError::new(Condition::BadRequest))));
                }
            },
            None => match user.with_resource(&random_resource()) {
                Ok(f) => f,
                Err(_) => return out.push(stream_err(StreamCondition::InternalServerError)),
            },
        };
        let reply = format!(
            "<iq id='{}' type='result'><bind xmlns='{}'><jid>{}</jid></bind></iq>",
            rookery_xml::escape_attr(&id),
            ns::BIND,
            rookery_xml::escape_text(full.as_str())
        );
        self.state = State::Done;
        out.push(Action::Bound { jid: full, reply: reply.into_bytes() });
    }
}

impl Negotiator {
    /// XEP-0198 elements after authentication and before a resource is bound: `<resume/>`
    /// (§5) goes to the driver; `<enable/>` is refused, it must follow binding (§3); acks
    /// have nothing to count yet and are ignored.
    fn sm_before_bind(&mut self, user: BareJid, el: &RawElement, out: &mut Vec<Action>) {
        match el.name.as_str() {
            "resume" if !self.settings.stream_management => {
                out.push(Action::Write(crate::sm::failed("feature-not-implemented", None)));
            }
            "resume" => {
                let tree = el.parse().ok();
                let attr = |n: &str| tree.as_ref().and_then(|t| t.get_attr(n)).map(str::to_owned);
                match (attr("previd").filter(|p| !p.is_empty()), crate::sm::parse_h(attr("h").as_deref())) {
                    (Some(previd), Some(h)) => out.push(Action::Resume { user, previd, h }),
                    _ => out.push(Action::Write(crate::sm::failed("bad-request", None))),
                }
            }
            "enable" => out.push(Action::Write(crate::sm::failed("unexpected-request", None))),
            _ => {}
        }
    }
}

/// The client's `<response/>` (§6.4.2): outer error ends the stream, inner error is the
/// failure condition.
fn sasl_response(el: &RawElement) -> Result<Result<Vec<u8>, &'static str>, Action> {
    if el.ns != ns::SASL {
        return Err(stream_err(StreamCondition::NotAuthorized));
    }
    match el.name.as_str() {
        "abort" => Ok(Err("aborted")),
        "response" => {
            let text = el.parse().map(|e| e.text_content()).unwrap_or_default();
            // §6.4.2 / §6.5.2: data that is not base64.
            Ok(unb64(&text).ok_or("incorrect-encoding"))
        }
        _ => Ok(Err("malformed-request")),
    }
}

/// §6.3.8 / RFC 4422: an authorization identity must be the authenticated account itself
/// (no proxy authorization).
fn authzid_ok(authz: &str, user: &BareJid) -> bool {
    match Jid::parse(authz) {
        Ok(j) => j.is_bare() && j.as_str() == user.as_str(),
        Err(_) => false,
    }
}

/// An IQ error to a stream that has no bound JID yet (no `to` to address it to).
fn iq_error(id: &str, err: &StanzaError) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"<iq");
    rookery_stanza::push_attr(&mut out, "id", id);
    rookery_stanza::push_attr(&mut out, "type", "error");
    out.push(b'>');
    err.write_to(&mut out);
    out.extend_from_slice(b"</iq>");
    out
}

/// A `<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>` with the condition.
fn sasl_failure(cond: &str) -> Vec<u8> {
    format!("<failure xmlns='{}'><{cond}/></failure>", ns::SASL).into_bytes()
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let t = text.trim();
    if t == "=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(t).ok()
}

fn random_resource() -> String {
    let mut r = [0u8; 6];
    let _ = getrandom::fill(&mut r);
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("rookery-{hex}")
}
