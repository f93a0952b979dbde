//! One client-to-server connection: stream negotiation (RFC 6120 §4.3: STARTTLS §5,
//! SASL §6 with SCRAM-*-PLUS and XEP-0440 channel-binding advertisement, resource binding
//! §7 with the "override" conflict policy of §7.7.2.2), then the bound session that stamps
//! `from` (§8.1.2.1) and forwards stanzas to the router. Stream errors follow §4.9: our
//! header is always sent before an error, and the stream is closed after it.
//! In-band registration before authentication (XEP-0077 §3.1) is forwarded to the router.

use crate::transport::Transport;
use crate::{Edge, ListenKind};
use bytes::{Bytes, BytesMut};
use rookery_core::hub::{ConnQueues, control_lane};
use rookery_core::{IqRequest, IqType, Location, Outbound};
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_sasl::{ChannelBindings, Mechanism, SaslError, ScramServer};
use rookery_stanza::{Condition, Envelope, Kind, StanzaError, StreamCondition, StreamError, ns};
use rookery_xml::{Frame, Framer, Limits, RawElement, XmlError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

/// Attempts before the stream is closed (RFC 6120 §6.4.5 asks for 2..=5 retries).
const MAX_AUTH_ATTEMPTS: u32 = 5;
/// Refused requests before binding after which the stream is closed (§7.7.2.1 says
/// 5 to 10).
const MAX_BIND_ATTEMPTS: u32 = 5;
/// The end of a stream; on the control queue it asks the writer for a plain close.
const CLOSE_TAG: &[u8] = b"</stream:stream>";
/// A client that does not take written bytes for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// Send this stream error, then close.
    Stream(StreamError),
    /// The client closed the stream (`</stream:stream>`): answer in kind.
    ClientClosed,
    /// The socket is gone; nothing more can be written.
    Io,
}

impl From<XmlError> for End {
    fn from(e: XmlError) -> End {
        let err = match e {
            XmlError::NotWellFormed(_) | XmlError::UndeclaredPrefix => StreamError::new(StreamCondition::NotWellFormed),
            // RFC 6120 §11.6: anything but UTF-8 (declared or found) is unsupported.
            XmlError::BadEncoding => StreamError::new(StreamCondition::UnsupportedEncoding),
            XmlError::Restricted(_) => StreamError::new(StreamCondition::RestrictedXml),
            XmlError::TooLarge => StreamError::new(StreamCondition::PolicyViolation).with_text("stanza too large"),
            XmlError::TooDeep => {
                StreamError::new(StreamCondition::PolicyViolation).with_text("elements nested too deeply")
            }
            XmlError::TooManyAttributes => {
                StreamError::new(StreamCondition::PolicyViolation).with_text("too many attributes")
            }
        };
        End::Stream(err)
    }
}

fn stream_err(c: StreamCondition) -> End {
    End::Stream(StreamError::new(c))
}

/// Negotiation progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Negotiation progress: what the stream needs next.
enum Phase {
    Tls,
    Auth,
    Bind,
}

struct Conn {
    edge: Arc<Edge>,
    transport: Option<Transport>,
    framer: Framer,
    peer: SocketAddr,
    header_sent: bool,
    domain: String,
    auth_failures: u32,
    user: Option<BareJid>,
    pending_bind_result: Option<Vec<u8>>,
}

/// Entry point for an accepted socket.
pub async fn handle(
    edge: Arc<Edge>,
    sock: TcpStream,
    peer: SocketAddr,
    kind: ListenKind,
    shutdown: watch::Receiver<bool>,
) {
    let _ = sock.set_nodelay(true);
    let Some(_slot) = edge.conn_limiter.acquire(peer.ip()) else {
        tracing::info!(event = "conn_limit_per_ip", peer = %peer);
        let mut sock = sock;
        let domain = edge.cfg.domains.first().cloned().unwrap_or_default();
        let mut out = header_bytes(&domain, None);
        out.extend_from_slice(
            &StreamError::new(StreamCondition::PolicyViolation)
                .with_text("too many connections from your address")
                .to_bytes(),
        );
        out.extend_from_slice(b"</stream:stream>");
        let _ = tokio::time::timeout(Duration::from_secs(2), sock.write_all(&out)).await;
        return;
    };
    let limits =
        Limits { max_stanza_bytes: edge.cfg.max_stanza_bytes, max_depth: edge.cfg.max_depth, ..Limits::default() };
    // Boxed, like the negotiation below: a future stores an owned `self` in its own state
    // (twice, as the upvar and the local), so passing the ~1 KiB connection by value put it
    // into this task's future several times over.
    let mut conn = Box::new(Conn {
        domain: edge.cfg.domains.first().cloned().unwrap_or_default(),
        edge: edge.clone(),
        transport: None,
        framer: Framer::new(limits),
        peer,
        header_sent: false,
        auth_failures: 0,
        user: None,
        pending_bind_result: None,
    });
    let mut shutdown = shutdown;
    // Boxed: the TLS handshake and SASL states are large and only live until the session is
    // bound; inline they would size this task's future for its whole life (docs/benchmarks.md,
    // memory per connection).
    let negotiated = tokio::select! {
        r = tokio::time::timeout(edge.cfg.negotiation_timeout, Box::pin(conn.negotiate(sock, kind))) => r,
        _ = shutdown.changed() => Ok(Err(End::Stream(StreamError::new(StreamCondition::SystemShutdown)))),
    };
    let bound = match negotiated {
        Ok(Ok(b)) => b,
        Ok(Err(end)) => {
            conn.finish(end).await;
            return;
        }
        Err(_) => {
            tracing::debug!(event = "negotiation_timeout", peer = %peer);
            conn.finish(End::Stream(
                StreamError::new(StreamCondition::ConnectionTimeout).with_text("stream negotiation took too long"),
            ))
            .await;
            return;
        }
    };
    conn.session(bound, shutdown).await;
}

/// Our stream header (RFC 6120 §4.7).
fn header_bytes(domain: &str, to: Option<&str>) -> Vec<u8> {
    let mut id = [0u8; 12];
    let _ = getrandom::fill(&mut id);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'",
    );
    rookery_stanza::push_attr(&mut out, "id", &id);
    rookery_stanza::push_attr(&mut out, "from", domain);
    if let Some(to) = to {
        rookery_stanza::push_attr(&mut out, "to", to);
    }
    out.extend_from_slice(b" version='1.0' xml:lang='en'>");
    out
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

impl Conn {
    fn io(&mut self) -> Result<&mut Transport, End> {
        self.transport.as_mut().ok_or(End::Io)
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), End> {
        let t = self.io()?;
        t.write_all(data).await.map_err(|_| End::Io)?;
        t.flush().await.map_err(|_| End::Io)
    }

    async fn read_frame(&mut self) -> Result<Frame, End> {
        loop {
            if let Some(f) = self.framer.next_frame()? {
                return Ok(f);
            }
            let Some(t) = self.transport.as_mut() else { return Err(End::Io) };
            match t.read_buf(self.framer.read_buf()).await {
                Ok(0) | Err(_) => return Err(End::Io),
                Ok(_) => {}
            }
        }
    }

    /// Writes the stream error (after our header if it was not sent yet) and closes.
    async fn finish(&mut self, end: End) {
        let mut out = Vec::new();
        match end {
            End::Io => {}
            End::ClientClosed => out.extend_from_slice(b"</stream:stream>"),
            End::Stream(e) => {
                tracing::debug!(event = "stream_error", peer = %self.peer, condition = e.condition.name());
                if !self.header_sent {
                    out.extend_from_slice(&header_bytes(&self.domain, None));
                }
                out.extend_from_slice(&e.to_bytes());
                out.extend_from_slice(b"</stream:stream>");
            }
        }
        if let Some(t) = self.transport.as_mut() {
            if !out.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(5), t.write_all(&out)).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), t.shutdown()).await;
        }
    }

    /// Reads and checks a stream header, then answers with ours and the features.
    async fn open_stream(&mut self, phase: Phase) -> Result<(), End> {
        let h = loop {
            match self.read_frame().await? {
                Frame::StreamOpen(h) => break h,
                Frame::Whitespace => continue,
                _ => return Err(stream_err(StreamCondition::NotWellFormed)),
            }
        };
        if let Some(to) = &h.to {
            match Jid::parse(to) {
                Ok(j)
                    if j.node().is_none()
                        && j.resource().is_none()
                        && self.edge.cfg.domains.iter().any(|d| d == j.domain()) =>
                {
                    self.domain = j.domain().to_owned();
                }
                _ => return Err(stream_err(StreamCondition::HostUnknown)),
            }
        }
        if h.local_name != "stream" || h.ns.as_deref() != Some(ns::STREAM) {
            return Err(stream_err(StreamCondition::InvalidNamespace));
        }
        if h.default_ns.as_deref() != Some(ns::CLIENT) {
            return Err(stream_err(StreamCondition::InvalidNamespace));
        }
        // RFC 6120 §4.7.5: no version means a pre-1.0 client we cannot serve.
        match h.version.as_deref().and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok()) {
            Some(major) if major >= 1 => {}
            _ => return Err(stream_err(StreamCondition::UnsupportedVersion)),
        }
        let client_from = h.from.as_deref().and_then(|f| Jid::parse(f).ok()).map(|j| j.to_string());
        let mut out = header_bytes(&self.domain, client_from.as_deref());
        self.header_sent = true;
        out.extend_from_slice(&self.features(phase));
        self.write(&out).await
    }

    fn features(&self, phase: Phase) -> Vec<u8> {
        let mut f = String::from("<stream:features>");
        match phase {
            Phase::Tls => {
                f.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>");
            }
            Phase::Auth => {
                let cb = self.bindings();
                f.push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
                for m in Mechanism::ALL {
                    if m.is_plus() && cb.types().is_empty() {
                        continue;
                    }
                    f.push_str("<mechanism>");
                    f.push_str(m.name());
                    f.push_str("</mechanism>");
                }
                f.push_str("</mechanisms>");
                // XEP-0440: which channel-binding types the -PLUS mechanisms accept.
                let types = cb.types();
                if !types.is_empty() {
                    f.push_str("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>");
                    for t in types {
                        f.push_str("<channel-binding type='");
                        f.push_str(t);
                        f.push_str("'/>");
                    }
                    f.push_str("</sasl-channel-binding>");
                }
                if self.edge.cfg.allow_registration {
                    f.push_str("<register xmlns='http://jabber.org/features/iq-register'/>");
                }
            }
            Phase::Bind => {
                f.push_str("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>");
                // RFC 3921 session establishment, kept optional for old clients.
                f.push_str("<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>");
                f.push_str("<ver xmlns='urn:xmpp:features:rosterver'/>");
                f.push_str("<sub xmlns='urn:xmpp:features:pre-approval'/>");
            }
        }
        f.push_str("</stream:features>");
        f.into_bytes()
    }

    fn bindings(&self) -> ChannelBindings {
        let Some(t) = self.transport.as_ref().filter(|t| t.is_tls()) else { return ChannelBindings::default() };
        ChannelBindings { tls_exporter: t.tls_exporter(), tls_server_end_point: self.edge.tls.end_point.clone() }
    }

    /// Runs negotiation up to a bound resource.
    async fn negotiate(&mut self, sock: TcpStream, kind: ListenKind) -> Result<FullJid, End> {
        let mut phase = match kind {
            ListenKind::StartTls => {
                self.transport = Some(Transport::Plain(sock));
                Phase::Tls
            }
            ListenKind::DirectTls => {
                let acceptor = tokio_rustls::TlsAcceptor::from(self.edge.tls.direct.clone());
                let tls = acceptor.accept(sock).await.map_err(|e| {
                    tracing::debug!(event = "tls_handshake_failed", peer = %self.peer, error = %e);
                    End::Io
                })?;
                self.transport = Some(Transport::Tls(Box::new(tls)));
                Phase::Auth
            }
        };
        loop {
            self.open_stream(phase).await?;
            match phase {
                Phase::Tls => {
                    self.starttls().await?;
                    phase = Phase::Auth;
                }
                Phase::Auth => {
                    self.authenticate().await?;
                    phase = Phase::Bind;
                }
                Phase::Bind => return self.bind().await,
            }
            self.framer.restart();
            self.header_sent = false;
        }
    }

    async fn next_element(&mut self) -> Result<RawElement, End> {
        loop {
            match self.read_frame().await? {
                Frame::Element(e) => return Ok(e),
                Frame::Whitespace => continue,
                Frame::StreamClose => return Err(End::ClientClosed),
                Frame::StreamOpen(_) => return Err(stream_err(StreamCondition::NotWellFormed)),
            }
        }
    }

    /// RFC 6120 §5.4.2: `<starttls/>`, `<proceed/>`, TLS handshake.
    async fn starttls(&mut self) -> Result<(), End> {
        let el = self.next_element().await?;
        if el.name != "starttls" || el.ns != ns::TLS {
            // §5.3.1: TLS is mandatory here.
            return Err(End::Stream(
                StreamError::new(StreamCondition::PolicyViolation).with_text("STARTTLS is required"),
            ));
        }
        self.write(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await?;
        // Bytes pipelined after <starttls/> would be plaintext injected into the TLS
        // stream (CVE-2011-0411 class): refuse.
        if self.framer.buffered_len() > 0 {
            return Err(End::Io);
        }
        let Some(Transport::Plain(tcp)) = self.transport.take() else { return Err(End::Io) };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.edge.tls.config.clone());
        let tls = acceptor.accept(tcp).await.map_err(|e| {
            tracing::debug!(event = "tls_handshake_failed", peer = %self.peer, error = %e);
            End::Io
        })?;
        self.transport = Some(Transport::Tls(Box::new(tls)));
        Ok(())
    }

    /// RFC 6120 §6: SASL until success; in-band registration is served meanwhile.
    async fn authenticate(&mut self) -> Result<(), End> {
        loop {
            let el = self.next_element().await?;
            if el.ns == ns::CLIENT && el.name == "iq" {
                self.preauth_iq(el).await?;
                continue;
            }
            if el.ns != ns::SASL {
                return Err(End::Stream(
                    StreamError::new(StreamCondition::NotAuthorized).with_text("authenticate first"),
                ));
            }
            if el.name != "auth" {
                self.write(&sasl_failure("malformed-request")).await?;
                continue;
            }
            match self.sasl_exchange(&el).await? {
                Ok(user) => {
                    self.edge.auth_throttle.succeeded(self.peer.ip());
                    tracing::info!(event = "auth_ok", user = %user, peer = %self.peer);
                    self.user = Some(user);
                    return Ok(());
                }
                Err(cond) => {
                    self.auth_failures += 1;
                    let delay = self.edge.auth_throttle.failed(self.peer.ip());
                    tracing::info!(event = "auth_failed", peer = %self.peer, condition = cond, delay_ms = delay.as_millis() as u64);
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    self.write(&sasl_failure(cond)).await?;
                    if self.auth_failures >= MAX_AUTH_ATTEMPTS {
                        return Err(End::Stream(
                            StreamError::new(StreamCondition::PolicyViolation)
                                .with_text("too many failed authentication attempts"),
                        ));
                    }
                }
            }
        }
    }

    /// One SASL exchange. Outer error: the stream ends; inner error: a `<failure/>`.
    async fn sasl_exchange(&mut self, auth: &RawElement) -> Result<Result<BareJid, &'static str>, End> {
        let Ok(el) = auth.parse() else { return Ok(Err("malformed-request")) };
        let Some(mech) = el.get_attr("mechanism").and_then(Mechanism::from_name) else {
            return Ok(Err("invalid-mechanism"));
        };
        let bindings = self.bindings();
        let plus_advertised = !bindings.types().is_empty();
        if mech.is_plus() && !plus_advertised {
            return Ok(Err("invalid-mechanism"));
        }
        let text = el.text_content();
        let initial = if text.trim().is_empty() { None } else { Some(text) };
        let initial = match initial.as_deref().map(unb64) {
            None => None,
            Some(Some(d)) => Some(d),
            Some(None) => return Ok(Err("incorrect-encoding")),
        };
        if mech == Mechanism::Plain {
            let data = match self.initial_response(initial).await? {
                Ok(d) => d,
                Err(cond) => return Ok(Err(cond)),
            };
            return self.plain(&data).await;
        }
        let mut scram = match ScramServer::new(mech, bindings, plus_advertised) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e.condition())),
        };
        let first = match self.initial_response(initial).await? {
            Ok(d) => d,
            Err(cond) => return Ok(Err(cond)),
        };
        let cf = match scram.client_first(&first) {
            Ok(cf) => cf,
            Err(e) => return Ok(Err(e.condition())),
        };
        let user = BareJid::from_parts(Some(&cf.username), &self.domain).ok();
        let creds = match &user {
            Some(u) => match self.edge.accounts.get(u).await {
                Ok(Some(acc)) => acc.credentials.into_iter().find(|c| Some(c.alg) == mech.hash()),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(event = "account_lookup_failed", error = %e);
                    return Ok(Err("temporary-auth-failure"));
                }
            },
            None => None,
        };
        let sf = scram.server_first(creds, &self.edge.cfg.fake_secret);
        self.write(format!("<challenge xmlns='{}'>{}</challenge>", ns::SASL, b64(&sf)).as_bytes()).await?;
        let fin = match self.sasl_response().await? {
            Ok(d) => d,
            Err(cond) => return Ok(Err(cond)),
        };
        let server_final = match scram.client_final(&fin) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.condition())),
        };
        let Some(user) = user else { return Ok(Err("not-authorized")) };
        if let Some(authz) = &cf.authzid
            && !authzid_ok(authz, &user)
        {
            return Ok(Err(SaslError::InvalidAuthzid.condition()));
        }
        self.write(format!("<success xmlns='{}'>{}</success>", ns::SASL, b64(&server_final)).as_bytes()).await?;
        Ok(Ok(user))
    }

    /// The initial response, or (RFC 6120 §6.4.2 without one) an empty challenge and the
    /// client's answer to it; the inner error is the failure condition to send.
    async fn initial_response(&mut self, initial: Option<Vec<u8>>) -> Result<Result<Vec<u8>, &'static str>, End> {
        if let Some(d) = initial {
            return Ok(Ok(d));
        }
        self.write(b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>").await?;
        self.sasl_response().await
    }

    /// Waits for `<response/>`; the inner error is the failure condition to send.
    async fn sasl_response(&mut self) -> Result<Result<Vec<u8>, &'static str>, End> {
        let el = self.next_element().await?;
        if el.ns != ns::SASL {
            return Err(stream_err(StreamCondition::NotAuthorized));
        }
        match el.name.as_str() {
            "abort" => Ok(Err("aborted")),
            "response" => {
                let text = el.parse().map(|e| e.text_content()).unwrap_or_default();
                // RFC 6120 §6.4.2 / §6.5.2: data that is not base64.
                Ok(unb64(&text).ok_or("incorrect-encoding"))
            }
            _ => Ok(Err("malformed-request")),
        }
    }

    /// RFC 4616 over TLS only (this phase is only reached after TLS).
    async fn plain(&mut self, data: &[u8]) -> Result<Result<BareJid, &'static str>, End> {
        let req = match rookery_sasl::parse_plain(data) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.condition())),
        };
        let Ok(user) = BareJid::from_parts(Some(&req.authcid), &self.domain) else {
            return Ok(Err("not-authorized"));
        };
        if let Some(authz) = &req.authzid
            && !authzid_ok(authz, &user)
        {
            return Ok(Err("invalid-authzid"));
        }
        let creds = match self.edge.accounts.get(&user).await {
            Ok(Some(acc)) => acc.credentials,
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(event = "account_lookup_failed", error = %e);
                return Ok(Err("temporary-auth-failure"));
            }
        };
        let Some(c) = creds.into_iter().max_by_key(|c| c.stored_key.len()) else {
            return Ok(Err("not-authorized"));
        };
        let password = req.password;
        // PBKDF2 is deliberately slow: keep it off the I/O threads.
        let ok =
            tokio::task::spawn_blocking(move || rookery_sasl::verify_password(&c, &password)).await.unwrap_or(false);
        if !ok {
            return Ok(Err("not-authorized"));
        }
        self.write(format!("<success xmlns='{}'/>", ns::SASL).as_bytes()).await?;
        Ok(Ok(user))
    }

    /// XEP-0077 §3.1 before authentication; everything else is refused.
    async fn preauth_iq(&mut self, el: RawElement) -> Result<(), End> {
        let id = el.id.clone().unwrap_or_default();
        let kind = match el.kind.as_deref() {
            Some("get") => IqType::Get,
            Some("set") => IqType::Set,
            _ => return Err(stream_err(StreamCondition::NotAuthorized)),
        };
        let payload = el.parse().ok().and_then(|e| e.elements().next().cloned());
        let result = match payload {
            Some(p) if p.is("query", ns::REGISTER) && self.edge.cfg.allow_registration => {
                let Ok(to) = Jid::parse(&self.domain) else { return Err(End::Io) };
                let req = IqRequest { from: None, to, kind, id: id.clone(), payload: p };
                self.edge.router.preauth_iq(req).await
            }
            Some(p) if p.is("query", ns::REGISTER) => Err(StanzaError::new(Condition::ServiceUnavailable)),
            _ => return Err(stream_err(StreamCondition::NotAuthorized)),
        };
        let mut out = Vec::new();
        out.extend_from_slice(b"<iq");
        rookery_stanza::push_attr(&mut out, "id", &id);
        match result {
            Ok(p) => {
                rookery_stanza::push_attr(&mut out, "type", "result");
                match p {
                    Some(p) => {
                        out.push(b'>');
                        p.write_to(&mut out, ns::CLIENT);
                        out.extend_from_slice(b"</iq>");
                    }
                    None => out.extend_from_slice(b"/>"),
                }
            }
            Err(e) => out = iq_error(&id, &e),
        }
        self.write(&out).await
    }

    /// RFC 6120 §7: resource binding (and the no-op RFC 3921 session request).
    async fn bind(&mut self) -> Result<FullJid, End> {
        let Some(user) = self.user.clone() else { return Err(End::Io) };
        let mut refused = 0u32;
        loop {
            let el = self.next_element().await?;
            if el.ns != ns::CLIENT || el.name != "iq" {
                return Err(stream_err(StreamCondition::NotAuthorized));
            }
            // RFC 6120 §8.3.1: results and errors are never answered.
            if matches!(el.kind.as_deref(), Some("result") | Some("error")) {
                continue;
            }
            // §7.7.2.1: a client that keeps asking for unusable resources is cut off.
            if refused >= MAX_BIND_ATTEMPTS {
                return Err(End::Stream(
                    StreamError::new(StreamCondition::PolicyViolation).with_text("too many failed bind attempts"),
                ));
            }
            let id = el.id.clone().unwrap_or_default();
            let Ok(tree) = el.parse() else { return Err(stream_err(StreamCondition::NotWellFormed)) };
            let reply_err = |e: StanzaError| iq_error(&id, &e);
            if tree.get_child("session", ns::SESSION).is_some() && el.kind.as_deref() == Some("set") {
                let out = format!("<iq id='{}' type='result'/>", rookery_xml::escape_attr(&id));
                self.write(out.as_bytes()).await?;
                continue;
            }
            let Some(b) = tree.get_child("bind", ns::BIND).filter(|_| el.kind.as_deref() == Some("set")) else {
                // §7.2: stanzas before binding are not allowed.
                let out = reply_err(StanzaError::new(Condition::NotAuthorized));
                self.write(&out).await?;
                refused += 1;
                continue;
            };
            let requested =
                b.get_child("resource", ns::BIND).map(|r| r.text_content()).filter(|r| !r.trim().is_empty());
            let full = match requested {
                Some(r) => match user.with_resource(&r) {
                    Ok(f) => f,
                    Err(_) => {
                        // §7.7.2.1
                        let out = reply_err(StanzaError::new(Condition::BadRequest));
                        self.write(&out).await?;
                        refused += 1;
                        continue;
                    }
                },
                None => match user.with_resource(&random_resource()) {
                    Ok(f) => f,
                    Err(_) => return Err(End::Io),
                },
            };
            let out = format!(
                "<iq id='{}' type='result'><bind xmlns='{}'><jid>{}</jid></bind></iq>",
                rookery_xml::escape_attr(&id),
                ns::BIND,
                rookery_xml::escape_text(full.as_str())
            );
            // Registration with the router happens in `session`, right before the
            // result is written, so nothing can be delivered before the client knows
            // its JID.
            self.pending_bind_result = Some(out.into_bytes());
            return Ok(full);
        }
    }
}

/// RFC 6120 §6.3.8 / RFC 4422: an authorization identity must be the authenticated
/// account itself (no proxy authorization).
fn authzid_ok(authz: &str, user: &BareJid) -> bool {
    match Jid::parse(authz) {
        Ok(j) => j.is_bare() && j.as_str() == user.as_str(),
        Err(_) => false,
    }
}

/// Token bucket limiting stanzas per second; a client over the rate is slowed, not
/// disconnected.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec.max(1));
        RateLimit { rate, burst: rate * 2.0, tokens: rate * 2.0, last: Instant::now() }
    }
    /// How long to wait before the next stanza may be processed.
    fn take(&mut self) -> Duration {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.tokens / self.rate) }
    }
}

impl Conn {
    /// The bound session: a writer task drains the outbound queues; this task reads,
    /// checks and routes.
    async fn session(mut self: Box<Self>, jid: FullJid, mut shutdown: watch::Receiver<bool>) {
        let edge = self.edge.clone();
        let conn_id = edge.next_conn_id();
        let loc = Location { edge: edge.edge_id, conn: conn_id };
        let (data_tx, data_rx) = mpsc::channel(edge.cfg.outbound_queue.max(16));
        let (ctl_tx, ctl_rx) = control_lane();
        edge.hub.register(conn_id, ConnQueues { data: data_tx.clone(), control: ctl_tx.clone() });
        if edge.router.bind(&jid, loc).await.is_err() {
            edge.hub.unregister(conn_id);
            self.finish(stream_err(StreamCondition::InternalServerError)).await;
            return;
        }
        if let Some(res) = self.pending_bind_result.take()
            && self.write(&res).await.is_err()
        {
            edge.router.unbind(&jid, loc).await;
            edge.hub.unregister(conn_id);
            return;
        }
        tracing::debug!(event = "session_bound", jid = %jid, conn = conn_id);
        let Some(transport) = self.transport.take() else { return };
        let (mut rd, wr) = tokio::io::split(transport);
        let (done_tx, mut done_rx) = oneshot::channel::<()>();
        let writer = tokio::spawn(writer(wr, data_rx, ctl_rx, done_tx));
        let mut rate = RateLimit::new(edge.cfg.stanza_rate_per_sec);
        let idle = edge.cfg.idle_timeout;
        let end: Option<End> = loop {
            let frame = loop {
                match self.framer.next_frame() {
                    Ok(Some(f)) => break Ok(f),
                    Ok(None) => {}
                    Err(e) => break Err(End::from(e)),
                }
                let read = rd.read_buf(self.framer.read_buf());
                let res = tokio::select! {
                    r = async {
                        if idle.is_zero() { Ok(read.await) } else { tokio::time::timeout(idle, read).await }
                    } => r,
                    _ = &mut done_rx => break Err(End::Io),
                    _ = shutdown.changed() => break Err(End::Stream(StreamError::new(StreamCondition::SystemShutdown))),
                };
                match res {
                    Err(_) => break Err(End::Stream(StreamError::new(StreamCondition::ConnectionTimeout))),
                    Ok(Ok(0)) | Ok(Err(_)) => break Err(End::Io),
                    Ok(Ok(_)) => {}
                }
            };
            let el = match frame {
                Err(e) => break Some(e),
                Ok(Frame::Whitespace) => continue,
                Ok(Frame::StreamClose) => break Some(End::ClientClosed),
                Ok(Frame::StreamOpen(_)) => break Some(stream_err(StreamCondition::NotWellFormed)),
                Ok(Frame::Element(el)) => el,
            };
            let wait = rate.take();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            match check_stanza(&jid, el) {
                Ok(env) => edge.router.route(loc, env).await,
                Err(Checked::Reply(bytes)) => {
                    if data_tx.send(Outbound::Stanza(bytes)).await.is_err() {
                        break Some(End::Io);
                    }
                }
                Err(Checked::Drop) => {}
                Err(Checked::End(e)) => break Some(e),
            }
        };
        // Unregister first so nothing new is queued, then say goodbye.
        edge.router.unbind(&jid, loc).await;
        edge.hub.unregister(conn_id);
        let close = match end {
            Some(End::Stream(e)) => Some(Outbound::Close(e.condition)),
            Some(End::ClientClosed) => Some(Outbound::Stanza(Bytes::from_static(CLOSE_TAG))),
            _ => None,
        };
        if let Some(c) = close {
            let _ = ctl_tx.send(c);
        }
        drop(ctl_tx);
        drop(data_tx);
        let undelivered = match tokio::time::timeout(WRITE_TIMEOUT + Duration::from_secs(5), writer).await {
            Ok(Ok(list)) => list,
            _ => Vec::new(),
        };
        // Queued but never written: the router treats them as arriving after this
        // session ended (other resources, offline storage, or an error to the sender).
        for stanza in undelivered {
            edge.router.undelivered(&jid, stanza).await;
        }
        tracing::debug!(event = "session_closed", jid = %jid, conn = conn_id);
    }
}

enum Checked {
    /// A stanza error to send back to the client.
    Reply(Bytes),
    /// Ignore silently.
    Drop,
    /// A stream-level violation.
    End(End),
}

/// RFC 6120 §8.1: stanza kind, `from` stamping (§8.1.2.1), `to` validation (§8.1.1).
fn check_stanza(jid: &FullJid, el: RawElement) -> Result<Envelope, Checked> {
    let kind = if el.ns == ns::CLIENT { Kind::from_name(&el.name) } else { None };
    let Some(kind) = kind else {
        return Err(Checked::End(stream_err(StreamCondition::UnsupportedStanzaType)));
    };
    if let Some(f) = el.from.as_deref() {
        let ok = f == jid.as_str()
            || f == jid.bare_str()
            || Jid::parse(f).is_ok_and(|j| j.as_str() == jid.as_str() || (j.is_bare() && j.as_str() == jid.bare_str()));
        if !ok {
            return Err(Checked::End(stream_err(StreamCondition::InvalidFrom)));
        }
    }
    let to = match el.to.as_deref() {
        None => jid.to_bare().into(),
        Some(t) => match Jid::parse(t) {
            Ok(j) => j,
            Err(_) => {
                if el.kind.as_deref() == Some("error") {
                    return Err(Checked::Drop);
                }
                let err = StanzaError::new(Condition::JidMalformed);
                let id = el.id.as_deref();
                return Err(Checked::Reply(rookery_stanza::error_stanza(kind, None, jid.as_jid(), id, &err)));
            }
        },
    };
    Ok(Envelope { kind, from: jid.clone().into(), to, el })
}

/// Drains the outbound queues into the socket, batching what is queued. A close first
/// writes everything queued before it. Returns the stanzas that were never written (or
/// whose write failed) so the session can hand them back to the router.
async fn writer(
    mut wr: tokio::io::WriteHalf<Transport>,
    mut data: mpsc::Receiver<Outbound>,
    mut ctl: oneshot::Receiver<Outbound>,
    _done: oneshot::Sender<()>,
) -> Vec<Bytes> {
    let mut batch: Vec<Bytes> = Vec::new();
    let mut undelivered = Vec::new();
    let mut ctl_done = false;
    loop {
        // A oneshot must not be polled after it fired: `ctl_done` (every control message
        // the edge sends ends the loop anyway).
        let first = tokio::select! {
            biased;
            c = &mut ctl, if !ctl_done => {
                ctl_done = true;
                c.ok()
            }
            d = data.recv() => d,
        };
        let Some(first) = first else { break };
        // Some(extra): write `extra` (a stream error, or nothing for a plain close) and
        // `</stream:stream>` after everything queued, then stop.
        let mut closing = None;
        match first {
            Outbound::Stanza(b) if &b[..] == CLOSE_TAG => closing = Some(Vec::new()),
            Outbound::Stanza(b) => batch.push(b),
            Outbound::Close(c) => closing = Some(StreamError::new(c).to_bytes()),
        }
        // Batch what else is queued (up to 64 KiB); when closing, everything queued.
        let mut size: usize = batch.iter().map(Bytes::len).sum();
        while closing.is_some() || size < 65536 {
            match data.try_recv() {
                Ok(Outbound::Stanza(b)) => {
                    size += b.len();
                    batch.push(b);
                }
                Ok(Outbound::Close(c)) => closing = Some(StreamError::new(c).to_bytes()),
                Err(_) => break,
            }
        }
        let ends = closing.is_some();
        // One stanza goes out as it is; several are joined so TLS seals them in one record.
        // Nothing is kept between batches: an idle connection holds no write buffer.
        let out = match (&batch[..], closing) {
            ([one], None) => one.clone(),
            (_, closing) => {
                let extra = closing.as_ref().map_or(0, |e| e.len() + CLOSE_TAG.len());
                let mut buf = BytesMut::with_capacity(size + extra);
                for b in &batch {
                    buf.extend_from_slice(b);
                }
                if let Some(err) = closing {
                    buf.extend_from_slice(&err);
                    buf.extend_from_slice(CLOSE_TAG);
                }
                buf.freeze()
            }
        };
        let ok = tokio::time::timeout(WRITE_TIMEOUT, async {
            wr.write_all(&out).await?;
            wr.flush().await
        })
        .await
        .is_ok_and(|r| r.is_ok());
        drop(out);
        if !ok {
            // Part of it may have reached the client; handing it back risks a duplicate,
            // never a loss.
            undelivered.append(&mut batch);
            break;
        }
        batch.clear();
        if ends {
            break;
        }
    }
    data.close();
    while let Ok(o) = data.try_recv() {
        if let Outbound::Stanza(b) = o {
            undelivered.push(b);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), wr.shutdown()).await;
    undelivered
}
