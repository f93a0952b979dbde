//! One client-to-server connection: the transport driver around the negotiation machine
//! ([`crate::negotiate`]), then the bound session that stamps `from` (RFC 6120 §8.1.2.1)
//! and forwards stanzas to the router.
//!
//! Owns: the socket and its TLS upgrade (STARTTLS §5.4.3.3, direct TLS XEP-0368), reading
//! frames into the machine and carrying out what it asks (writes, the TLS handshake, the
//! credential lookup, password checks off the I/O threads, the XEP-0077 forward, the login
//! throttle's delay), the negotiation timeout, and the bound session loop with its writer
//! task. Stream errors follow §4.9: our header is always sent before an error, and the
//! stream is closed after it.
//! Must not touch: negotiation rules (features, SASL, binding: `negotiate.rs`), routing.

mod session;

pub use session::{Bound, Takeover};

use crate::negotiate::{AbortReason, Action, AuthOutcome, Credentials, Input, Negotiator, Security};
use crate::transport::Transport;
use crate::{Edge, ListenKind};
use bytes::Bytes;
use rookery_core::Location;
use rookery_core::hub::{ConnQueues, control_lane};
use rookery_jid::{FullJid, Jid};
use rookery_stanza::{Condition, Envelope, Kind, StanzaError, StreamCondition, StreamError, ns};
use rookery_xml::{Frame, Framer, Limits, RawElement, XmlError};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

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
    /// Negotiation was given up for this reason (a stable name for logs); nothing more
    /// is written.
    Aborted(&'static str),
    /// The socket is gone; nothing more can be written.
    Io,
    /// Write these bytes (a stream error with application content), then close.
    Raw(Vec<u8>),
}

/// Where negotiation leads.
enum Ready {
    /// A resource was bound.
    Bound(FullJid),
    /// XEP-0198 §5: a session was taken over; the client handled `h` of its stanzas.
    Resumed { bound: Box<Bound>, h: u32 },
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

struct Conn {
    edge: Arc<Edge>,
    transport: Option<Transport>,
    framer: Framer,
    peer: SocketAddr,
    /// Until the session is bound; dropped then, so a bound connection keeps none of it.
    machine: Option<Box<Negotiator>>,
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
        let err =
            StreamError::new(StreamCondition::PolicyViolation).with_text("too many connections from your address");
        let out = Negotiator::new(edge.negotiation.clone(), Security::Plain).error_bytes(&err);
        let _ = tokio::time::timeout(Duration::from_secs(2), sock.write_all(&out)).await;
        return;
    };
    let limits =
        Limits { max_stanza_bytes: edge.cfg.max_stanza_bytes, max_depth: edge.cfg.max_depth, ..Limits::default() };
    // Boxed, like the negotiation below: a future stores an owned `self` in its own state
    // (twice, as the upvar and the local), so passing the ~1 KiB connection by value put it
    // into this task's future several times over.
    let mut conn = Box::new(Conn {
        edge: edge.clone(),
        transport: None,
        framer: Framer::new(limits),
        peer,
        machine: Some(Box::new(Negotiator::new(edge.negotiation.clone(), Security::Plain))),
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
            // The other ends log in `finish` (stream_error, negotiation_aborted).
            if matches!(end, End::Io) {
                tracing::debug!(event = "negotiation_aborted", peer = %peer, reason = "connection_closed");
            }
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
    match bound {
        Ready::Bound(jid) => conn.session(jid, shutdown).await,
        Ready::Resumed { bound, h } => conn.resumed(bound, h, shutdown).await,
    }
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
            End::Aborted(reason) => {
                tracing::debug!(event = "negotiation_aborted", peer = %self.peer, reason);
            }
            End::ClientClosed => out.extend_from_slice(b"</stream:stream>"),
            // Only a bound stream ends this way: our header went out long ago.
            End::Raw(bytes) => out = [&bytes[..], CLOSE_TAG].concat(),
            End::Stream(e) => {
                tracing::debug!(event = "stream_error", peer = %self.peer, condition = e.condition.name());
                out = match self.machine.as_deref() {
                    Some(m) => m.error_bytes(&e),
                    // Bound: our header went out long ago.
                    None => [&e.to_bytes()[..], CLOSE_TAG].concat(),
                };
            }
        }
        if let Some(t) = self.transport.as_mut() {
            if !out.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(5), t.write_all(&out)).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), t.shutdown()).await;
        }
    }

    fn feed(&mut self, input: Input) -> Vec<Action> {
        match self.machine.as_mut() {
            Some(m) => m.handle(input),
            None => vec![Action::Abort(AbortReason::UnexpectedInput)],
        }
    }

    /// Runs negotiation up to a bound resource: feeds frames to the machine and carries
    /// out its actions in order.
    async fn negotiate(&mut self, sock: TcpStream, kind: ListenKind) -> Result<Ready, End> {
        match kind {
            ListenKind::StartTls => self.transport = Some(Transport::Plain(sock)),
            ListenKind::DirectTls => {
                let acceptor = tokio_rustls::TlsAcceptor::from(self.edge.tls.direct.clone());
                let tls = acceptor.accept(sock).await.map_err(|e| {
                    tracing::debug!(event = "tls_handshake_failed", peer = %self.peer, error = %e);
                    End::Aborted("tls_handshake_failed")
                })?;
                let t = Transport::Tls(Box::new(tls));
                let exporter = t.tls_exporter();
                self.transport = Some(t);
                self.machine =
                    Some(Box::new(Negotiator::new(self.edge.negotiation.clone(), Security::Tls { exporter })));
            }
        }
        let mut queue: VecDeque<Action> = VecDeque::new();
        loop {
            let Some(action) = queue.pop_front() else {
                let frame = self.read_frame().await?;
                queue.extend(self.feed(Input::Frame(frame)));
                continue;
            };
            match action {
                Action::Write(bytes) => self.write(&bytes).await?,
                Action::StartTls => {
                    let exporter = self.starttls().await?;
                    queue.extend(self.feed(Input::TlsEstablished { exporter }));
                }
                Action::RestartStream => self.framer.restart(),
                Action::LookupCredentials { user } => {
                    let c = match self.edge.accounts.get(&user).await {
                        Ok(Some(acc)) => Credentials::Found(acc.credentials),
                        Ok(None) => Credentials::Unknown,
                        Err(e) => {
                            tracing::warn!(event = "account_lookup_failed", error = %e);
                            Credentials::Failed
                        }
                    };
                    queue.extend(self.feed(Input::Credentials(c)));
                }
                Action::VerifyPassword { creds, password } => {
                    // PBKDF2 is deliberately slow: keep it off the I/O threads.
                    let ok = tokio::task::spawn_blocking(move || rookery_sasl::verify_password(&creds, &password))
                        .await
                        .unwrap_or(false);
                    queue.extend(self.feed(Input::PasswordChecked(ok)));
                }
                Action::PreauthIq(req) => {
                    let r = self.edge.router.preauth_iq(*req).await;
                    queue.extend(self.feed(Input::PreauthIqResult(r)));
                }
                Action::Auth(outcome) => self.auth_outcome(outcome).await,
                Action::Resume { user, previd, h } => {
                    if let Some(bound) = self.take_over(&user, &previd).await {
                        return Ok(Ready::Resumed { bound, h });
                    }
                    // §5: unknown, expired, or someone else's; the `h` it reached when it
                    // ended recently, so the client re-sends nothing twice. Binding is
                    // still possible.
                    let gone = match self.edge.resumable.lookup(&previd, &user) {
                        Err(crate::resume::NotFound::Unknown { h }) => h,
                        Ok(_) => None,
                    };
                    tracing::debug!(event = "sm_resume_failed", user = %user, known = gone.is_some());
                    self.write(&crate::sm::failed("item-not-found", gone)).await?;
                }
                Action::Close(e) => return Err(End::Stream(e)),
                Action::ClientClosed => return Err(End::ClientClosed),
                Action::Abort(reason) => return Err(End::Aborted(reason.name())),
                Action::Bound { jid, reply } => {
                    // Registration with the router happens in `session`, right before the
                    // result is written, so nothing can be delivered before the client
                    // knows its JID.
                    self.pending_bind_result = Some(reply);
                    return Ok(Ready::Bound(jid));
                }
            }
        }
    }

    /// RFC 6120 §5.4.2.3, §5.4.3: `<proceed/>` is written; the TLS handshake follows, then
    /// the stream restarts (§5.3.2). Bytes still buffered in the clear would be taken as
    /// sent over TLS (CVE-2011-0411 class; §5.4.3.1 rule 1), so anything but whitespace
    /// there ends the connection. Whitespace, which §5.3.3 also forbids but go-xmpp sends
    /// (a newline after `<starttls/>`), carries no data and is dropped.
    async fn starttls(&mut self) -> Result<Option<Vec<u8>>, End> {
        const DATA: &str = AbortReason::DataAfterStartTls.name();
        loop {
            match self.framer.next_frame() {
                Ok(Some(f)) => {
                    if let Some(a) = self.feed(Input::Frame(f)).into_iter().next() {
                        let reason = match a {
                            Action::Abort(r) => r.name(),
                            _ => DATA,
                        };
                        return Err(End::Aborted(reason));
                    }
                }
                Ok(None) => break,
                Err(_) => return Err(End::Aborted(DATA)),
            }
        }
        // Whitespace is consumed as it is framed: what is left is the start of an element.
        if self.framer.buffered_len() > 0 {
            return Err(End::Aborted(DATA));
        }
        let Some(Transport::Plain(tcp)) = self.transport.take() else { return Err(End::Io) };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.edge.tls.config.clone());
        let tls = acceptor.accept(tcp).await.map_err(|e| {
            tracing::debug!(event = "tls_handshake_failed", peer = %self.peer, error = %e);
            End::Aborted("tls_handshake_failed")
        })?;
        let t = Transport::Tls(Box::new(tls));
        let exporter = t.tls_exporter();
        self.transport = Some(t);
        self.framer.restart();
        Ok(exporter)
    }

    /// Accounts an authentication attempt with the login throttle; wrong credentials are
    /// answered after its delay.
    async fn auth_outcome(&mut self, outcome: AuthOutcome) {
        let ip = self.peer.ip();
        match outcome {
            AuthOutcome::Success { user } => {
                self.edge.auth_throttle.succeeded(user.as_str(), ip);
                tracing::info!(event = "auth_ok", user = %user, peer = %self.peer);
            }
            AuthOutcome::WrongCredentials { user, condition } => {
                let delay = self.edge.auth_throttle.failed(user.as_ref().map(|u| u.as_str()), ip);
                tracing::info!(
                    event = "auth_failed",
                    peer = %self.peer,
                    user = user.as_ref().map(|u| u.as_str()).unwrap_or_default(),
                    condition,
                    counted = true,
                    delay_ms = delay.as_millis() as u64
                );
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            AuthOutcome::Refused { condition } => {
                tracing::info!(event = "auth_failed", peer = %self.peer, condition, counted = false, delay_ms = 0u64);
            }
        }
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
    /// A freshly bound session: registers it (hub, then router), writes the bind result,
    /// and runs it.
    async fn session(mut self: Box<Self>, jid: FullJid, shutdown: watch::Receiver<bool>) {
        self.machine = None;
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
        let b = Box::new(Bound {
            jid,
            loc,
            data_tx,
            data_rx: Some(data_rx),
            ctl_tx,
            ctl_rx: Some(ctl_rx),
            sm: None,
            csi: Default::default(),
        });
        session::run(self, b, shutdown, Vec::new()).await;
    }

    /// XEP-0198 §5: the session `b` was taken over for this connection; the client
    /// handled `h` of the stanzas it was sent. Answers `<resumed/>`, then re-sends what it
    /// did not handle and goes on with the session.
    async fn resumed(mut self: Box<Self>, mut b: Box<Bound>, h: u32, shutdown: watch::Receiver<bool>) {
        self.machine = None;
        let Some(m) = b.sm.as_mut() else { return };
        let (acked, inbound, resend) = {
            let mut s = m.lock();
            let acked = s.ack(h);
            let resend = if acked.is_ok() { s.take_unacked() } else { Vec::new() };
            (acked, s.inbound, resend)
        };
        if let Err(too_high) = acked {
            // §6, before anything is re-sent; the session stays detached for a resume
            // with a true count.
            tracing::info!(event = "sm_handled_count_too_high", jid = %b.jid, h, sent = too_high.sent);
            let out = [&too_high.stream_error()[..], CLOSE_TAG].concat();
            let _ = self.write(&out).await;
            self.transport = None;
        } else {
            let reply = format!("<resumed xmlns='{}' previd='{}' h='{inbound}'/>", rookery_stanza::ns::SM, m.id);
            if self.write(reply.as_bytes()).await.is_err() {
                self.transport = None;
            }
            tracing::debug!(event = "session_resumed", jid = %b.jid, conn = b.loc.conn, resent = resend.len());
        }
        session::run(self, b, shutdown, resend).await;
    }

    /// Asks the holder of session `previd` (live on another connection, or detached) to
    /// hand it over.
    async fn take_over(&self, user: &rookery_jid::BareJid, previd: &str) -> Option<Box<Bound>> {
        let tx = self.edge.resumable.lookup(previd, user).ok()?;
        let (reply, rx) = oneshot::channel();
        tokio::time::timeout(Duration::from_secs(5), tx.send(Takeover { reply })).await.ok()?.ok()?;
        tokio::time::timeout(Duration::from_secs(10), rx).await.ok()?.ok()
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
