//! One lean XMPP client connection: TCP (optionally from a pool of source addresses), TLS
//! (STARTTLS or direct), SASL, resource binding, XEP-0198 stream management with
//! resumption, and a read path that keeps almost nothing allocated while the connection is
//! idle.
//!
//! Owns the wire protocol of a single connection and the timings of its negotiation. It must
//! not know about scenarios, schedules or shared metrics: `actor` drives a [`Session`] and
//! decides what a stanza means.
//!
//! Specifications: RFC 6120 §4.3 (stream negotiation and restarts), §4.6.1 (whitespace
//! keepalive), §5.4 (STARTTLS), §6.4 (SASL), §7 (resource binding), §4.9 (stream errors);
//! RFC 3921 §3 (legacy session establishment, sent only when not marked optional);
//! XEP-0368 (direct TLS, ALPN `xmpp-client`); XEP-0198 §3 (enable), §4 (acks), §5 (resume).
//!
//! Memory: the XML framer owns an 8 KiB read buffer. An established connection drops its
//! framer whenever every received byte has been consumed, and waits for socket readiness
//! without holding any buffer; when data arrives a fresh framer is primed with a synthetic
//! copy of the server's stream header (the namespace context is all that survives between
//! top-level elements). An idle connection therefore costs the socket, the TLS state and a
//! few hundred bytes of session state.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::FutureExt;
use rookery_xml::{Element, Frame, Framer, Limits, StreamHeader, escape_attr, escape_text};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::sasl::{self, Mechanism, ScramClient, ScramHash, ScramKeys};
use crate::scenario::TlsMode;
use crate::users::Account;

pub const STREAM_NS: &str = "http://etherx.jabber.org/streams";
pub const TLS_NS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND_NS: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const SESSION_NS: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const SM_NS: &str = "urn:xmpp:sm:3";
pub const CLIENT_NS: &str = "jabber:client";

// ---------------------------------------------------------------------------------------
// Settings shared by every connection of a run
// ---------------------------------------------------------------------------------------

/// Round-robin pool of local source addresses.
#[derive(Debug)]
pub struct SourcePool {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourcePool {
    pub fn new(addrs: Vec<IpAddr>) -> Self {
        SourcePool { addrs, next: AtomicUsize::new(0) }
    }

    pub fn next(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        self.addrs.get(i).copied()
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// Parses `127.0.0.1-127.0.0.20`, `10.0.0.5, 10.0.0.6` or a mix (IPv4 ranges, any single
/// address).
pub fn parse_source_addrs(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr =
                a.trim().parse().map_err(|_| format!("{a:?} is not an IPv4 address (ranges are IPv4 only)"))?;
            let b: std::net::Ipv4Addr =
                b.trim().parse().map_err(|_| format!("{b:?} is not an IPv4 address (ranges are IPv4 only)"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a >= 65_536 {
                return Err(format!("range {part:?} is empty or longer than 65536 addresses"));
            }
            out.extend((a..=b).map(|x| IpAddr::V4(x.into())));
        } else {
            out.push(part.parse().map_err(|_| format!("{part:?} is not an IP address"))?);
        }
    }
    if out.is_empty() {
        return Err("no address given".into());
    }
    Ok(out)
}

/// Derived SCRAM keys by (user, hash, salt, iterations): a user who logs in again skips the
/// PBKDF2 work, as a real client that stores its keys would.
#[derive(Default)]
pub struct ScramCache {
    map: Mutex<HashMap<ScramKey, ScramKeys>>,
}

/// (bare JID, hash, salt, iterations).
type ScramKey = (String, ScramHash, Vec<u8>, u32);

/// Entries kept before the cache starts over (about 150 bytes each).
const SCRAM_CACHE_MAX: usize = 500_000;

impl ScramCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ScramKey, ScramKeys>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keys for this exchange; PBKDF2 runs on the blocking pool so the I/O threads keep
    /// serving other connections (and their latency measurements) meanwhile.
    pub async fn keys(&self, acct: &Account, hash: ScramHash, salt: &[u8], iterations: u32) -> ScramKeys {
        let key = (acct.jid.clone(), hash, salt.to_vec(), iterations);
        if let Some(k) = self.lock().get(&key) {
            return k.clone();
        }
        let (pw, s) = (acct.password.clone(), salt.to_vec());
        let keys = match tokio::task::spawn_blocking(move || sasl::scram_keys(hash, &pw, &s, iterations)).await {
            Ok(k) => k,
            // The blocking pool is gone (runtime shutting down): derive inline.
            Err(_) => sasl::scram_keys(hash, &acct.password, salt, iterations),
        };
        let mut m = self.lock();
        if m.len() >= SCRAM_CACHE_MAX {
            m.clear();
        }
        m.insert(key, keys.clone());
        keys
    }
}

/// How every connection of a run connects and negotiates.
pub struct ClientSettings {
    pub addr: SocketAddr,
    pub domain: String,
    pub tls: TlsMode,
    pub tls_config: Arc<rustls::ClientConfig>,
    pub sasl: Vec<Mechanism>,
    pub sources: Option<SourcePool>,
    pub stream_management: bool,
    pub initial_presence: bool,
    pub login_timeout: Duration,
    pub keepalive: Duration,
    pub ack_every: u32,
    pub limits: Limits,
    pub scram: ScramCache,
}

// ---------------------------------------------------------------------------------------
// Transport
// ---------------------------------------------------------------------------------------

/// The byte stream under the XML stream.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The lean reader
// ---------------------------------------------------------------------------------------

/// A framer that can be dropped between elements and rebuilt on demand.
pub struct XmlReader {
    framer: Option<Box<Framer>>,
    limits: Limits,
    /// The namespace context of the current stream, as a start tag.
    synthetic: Option<Box<str>>,
}

impl XmlReader {
    pub fn new(limits: Limits) -> Self {
        XmlReader { framer: Some(Box::new(Framer::new(limits))), limits, synthetic: None }
    }

    /// The framer, rebuilt (and primed with the stream context) if it was dropped.
    pub fn framer(&mut self) -> &mut Framer {
        let limits = self.limits;
        let synthetic = self.synthetic.as_deref();
        self.framer.get_or_insert_with(|| {
            let mut f = Framer::new(limits);
            if let Some(h) = synthetic {
                f.read_buf().extend_from_slice(h.as_bytes());
                // The header was produced from a header this framer accepted before.
                let _ = f.next_frame();
            }
            Box::new(f)
        })
    }

    /// A stream restart (RFC 6120 §4.3.3): a new header comes next.
    pub fn restart(&mut self) {
        self.synthetic = None;
        self.framer().restart();
    }

    /// Records the stream header so the framer can be rebuilt later.
    pub fn on_header(&mut self, h: &StreamHeader) {
        self.synthetic = Some(synthetic_header(h).into_boxed_str());
    }

    /// Drops the framer when nothing is buffered (only once a stream header is known).
    pub fn shed(&mut self) {
        if self.synthetic.is_some() && self.framer.as_ref().is_some_and(|f| f.buffered_len() == 0) {
            self.framer = None;
        }
    }

    pub fn is_shed(&self) -> bool {
        self.framer.is_none()
    }
}

/// A start tag equivalent to `h` for everything that matters after it: the element name and
/// every namespace declaration.
pub fn synthetic_header(h: &StreamHeader) -> String {
    let mut s = String::from("<");
    if let Some(p) = &h.prefix {
        s.push_str(p);
        s.push(':');
    }
    s.push_str(&h.local_name);
    if let Some(d) = &h.default_ns {
        s.push_str(&format!(" xmlns='{}'", escape_attr(d)));
    }
    for (p, uri) in &h.ns_decls {
        s.push_str(&format!(" xmlns:{p}='{}'", escape_attr(uri)));
    }
    s.push('>');
    s
}

// ---------------------------------------------------------------------------------------
// Session
// ---------------------------------------------------------------------------------------

/// XEP-0198 state of a session.
#[derive(Debug, Clone, Default)]
pub struct Sm {
    pub enabled: bool,
    /// Resumption id, when the server allows resuming.
    pub id: Option<String>,
    /// Stanzas received (our `h`).
    pub inbound: u32,
    /// Stanzas sent.
    pub outbound: u32,
    /// Last `h` the server acknowledged.
    pub acked: u32,
    since_request: u32,
}

/// What is needed to resume a session on a new connection (XEP-0198 §5).
#[derive(Debug, Clone)]
pub struct ResumeToken {
    pub id: String,
    pub jid: String,
    pub inbound: u32,
    pub outbound: u32,
}

/// What the stream-management negotiation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmSupport {
    /// The server offered XEP-0198.
    Supported,
    /// The server did not offer it.
    Unsupported,
    /// The scenario turned it off.
    Disabled,
}

impl SmSupport {
    pub fn label(self) -> &'static str {
        match self {
            SmSupport::Supported => "supported",
            SmSupport::Unsupported => "unsupported",
            SmSupport::Disabled => "disabled",
        }
    }
}

/// Something that arrived on an established session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Stanza(Element),
    /// `<stream:error/>` with its condition.
    StreamError(String),
    /// The server closed the stream or the connection.
    Closed,
    /// Unreadable input or an I/O error.
    Failed(String),
}

/// Decrements the open-connection gauge when the session goes away.
pub struct OpenGuard(Arc<AtomicI64>);

impl OpenGuard {
    pub fn new(gauge: Arc<AtomicI64>) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        OpenGuard(gauge)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An XML stream over a connection.
pub struct Session {
    io: Io,
    reader: XmlReader,
    /// The bound full JID.
    pub jid: String,
    pub sm: Sm,
    out: Vec<u8>,
    /// Stanzas read during negotiation that belong to the session.
    pending: Vec<Element>,
    guard: Option<OpenGuard>,
}

/// Why a login failed; `step()` names the phase for the failure counters.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("TCP connect to {addr} failed: {error}")]
    Connect { addr: SocketAddr, error: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("resource binding: {0}")]
    Bind(String),
    #[error("login did not finish within {0:?}")]
    Timeout(Duration),
}

impl LoginError {
    pub fn step(&self) -> &'static str {
        match self {
            LoginError::Connect { .. } => "connect",
            LoginError::Tls(_) => "tls",
            LoginError::Stream(_) => "stream",
            LoginError::Auth(_) => "auth",
            LoginError::Bind(_) => "bind",
            LoginError::Timeout(_) => "timeout",
        }
    }
}

/// How long each step of a login took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub connect: Duration,
    pub tls: Option<Duration>,
    pub auth: Duration,
    /// `None` when the session was resumed instead.
    pub bind: Option<Duration>,
}

/// A successful login.
pub struct Login {
    pub session: Session,
    pub timings: Timings,
    pub sm: SmSupport,
    pub resumed: bool,
}

fn io_err(e: std::io::Error) -> LoginError {
    LoginError::Stream(format!("connection error: {e}"))
}

impl Session {
    fn new(io: Io, limits: Limits) -> Self {
        Session {
            io,
            reader: XmlReader::new(limits),
            jid: String::new(),
            sm: Sm::default(),
            out: Vec::new(),
            pending: Vec::new(),
            guard: None,
        }
    }

    /// Ties the session to an open-connection gauge.
    pub fn set_guard(&mut self, g: OpenGuard) {
        self.guard = Some(g);
    }

    /// Queues a stanza (counted for XEP-0198, with an ack request every `ack_every`).
    pub fn stanza(&mut self, s: &str, ack_every: u32) {
        self.out.extend_from_slice(s.as_bytes());
        if self.sm.enabled {
            self.sm.outbound = self.sm.outbound.wrapping_add(1);
            self.sm.since_request += 1;
            if self.sm.since_request >= ack_every {
                self.sm.since_request = 0;
                self.out.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
            }
        }
    }

    /// Queues bytes that are not stanzas (keepalives, nonzas).
    pub fn raw(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        self.out.clear();
        // An idle connection keeps no write buffer to speak of.
        if self.out.capacity() > 512 {
            self.out = Vec::new();
        }
        Ok(())
    }

    async fn send_now(&mut self, s: &str) -> Result<(), LoginError> {
        self.raw(s);
        self.flush().await.map_err(io_err)
    }

    /// Waits until the socket has data (without holding a read buffer).
    pub async fn readable(&self) -> std::io::Result<()> {
        self.io.tcp().readable().await
    }

    /// Reads whatever is available without waiting and turns it into events; answers ack
    /// requests (queued: call [`Session::flush`] afterwards).
    pub fn drain(&mut self, events: &mut Vec<Event>) {
        events.extend(self.pending.drain(..).map(Event::Stanza));
        loop {
            if !self.frames(events) {
                return;
            }
            let framer = self.reader.framer();
            match self.io.read_buf(framer.read_buf()).now_or_never() {
                None => break,
                Some(Ok(0)) => {
                    // Elements completed by the last bytes were handled above.
                    events.push(Event::Closed);
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    events.push(Event::Failed(format!("read: {e}")));
                    return;
                }
            }
        }
        self.reader.shed();
    }

    /// Handles the complete frames buffered; false once the stream has ended.
    fn frames(&mut self, events: &mut Vec<Event>) -> bool {
        if self.reader.is_shed() {
            return true;
        }
        loop {
            match self.reader.framer().next_frame() {
                Ok(None) => return true,
                Ok(Some(Frame::Whitespace)) => {}
                Ok(Some(Frame::StreamOpen(_))) => {
                    events.push(Event::Failed("unexpected stream header".into()));
                    return false;
                }
                Ok(Some(Frame::StreamClose)) => {
                    events.push(Event::Closed);
                    return false;
                }
                Ok(Some(Frame::Element(raw))) => {
                    if raw.ns == SM_NS {
                        self.sm_nonza(&raw.name, &raw);
                        continue;
                    }
                    if raw.ns == STREAM_NS && raw.name == "error" {
                        let cond = raw.parse().ok().map(|e| stream_error_condition(&e)).unwrap_or_default();
                        events.push(Event::StreamError(cond));
                        return false;
                    }
                    if matches!(raw.name.as_str(), "message" | "presence" | "iq") {
                        self.sm.inbound = self.sm.inbound.wrapping_add(1);
                    }
                    match raw.parse() {
                        Ok(e) => events.push(Event::Stanza(e)),
                        Err(e) => {
                            events.push(Event::Failed(format!("bad element from the server: {e}")));
                            return false;
                        }
                    }
                }
                Err(e) => {
                    events.push(Event::Failed(format!("bad XML from the server: {e}")));
                    return false;
                }
            }
        }
    }

    fn sm_nonza(&mut self, name: &str, raw: &rookery_xml::RawElement) {
        match name {
            "r" => {
                let a = format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", self.sm.inbound);
                self.raw(&a);
            }
            "a" => {
                if let Some(h) = raw.parse().ok().and_then(|e| e.get_attr("h").and_then(|h| h.parse().ok())) {
                    self.sm.acked = h;
                }
            }
            _ => {}
        }
    }

    /// The token to resume this session later, if the server allowed resumption.
    pub fn resume_token(&self) -> Option<ResumeToken> {
        let id = self.sm.id.clone()?;
        Some(ResumeToken { id, jid: self.jid.clone(), inbound: self.sm.inbound, outbound: self.sm.outbound })
    }

    /// Ends the stream cleanly (RFC 6120 §4.4) and waits up to `wait` for the server's close.
    pub async fn close(mut self, wait: Duration) {
        self.raw("</stream:stream>");
        if self.flush().await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            if tokio::time::timeout_at(deadline, self.readable()).await.is_err() {
                break;
            }
            self.drain(&mut events);
            if events.iter().any(|e| !matches!(e, Event::Stanza(_))) {
                break;
            }
            events.clear();
        }
        let _ = self.io.shutdown().await;
    }

    // -- negotiation helpers (framer kept) -------------------------------------------------

    /// The next element during negotiation; stream headers are recorded and skipped.
    async fn next_element(&mut self) -> Result<Element, LoginError> {
        loop {
            match self.reader.framer().next_frame() {
                Ok(Some(Frame::StreamOpen(h))) => self.reader.on_header(&h),
                Ok(Some(Frame::Whitespace)) => {}
                Ok(Some(Frame::StreamClose)) => return Err(LoginError::Stream("the server closed the stream".into())),
                Ok(Some(Frame::Element(raw))) => {
                    let e = raw.parse().map_err(|e| LoginError::Stream(format!("bad element: {e}")))?;
                    if e.is("error", STREAM_NS) {
                        return Err(LoginError::Stream(format!("stream error <{}/>", stream_error_condition(&e))));
                    }
                    if raw.ns == SM_NS && raw.name == "r" {
                        self.sm_nonza("r", &raw);
                        continue;
                    }
                    return Ok(e);
                }
                Ok(None) => {
                    let framer = self.reader.framer();
                    match self.io.read_buf(framer.read_buf()).await {
                        Ok(0) => return Err(LoginError::Stream("the server closed the connection".into())),
                        Ok(_) => {}
                        Err(e) => return Err(io_err(e)),
                    }
                }
                Err(e) => return Err(LoginError::Stream(format!("bad XML: {e}"))),
            }
        }
    }

    /// Opens a stream (RFC 6120 §4.2) and returns the features.
    async fn open_stream(&mut self, domain: &str) -> Result<Element, LoginError> {
        self.reader.restart();
        self.send_now(&format!(
            "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xmlns='jabber:client' xmlns:stream='{STREAM_NS}'>",
            escape_attr(domain)
        ))
        .await?;
        let f = self.next_element().await?;
        if !f.is("features", STREAM_NS) {
            return Err(LoginError::Stream(format!("expected <stream:features/>, got <{}/>", f.name)));
        }
        Ok(f)
    }

    async fn authenticate(&mut self, mech: Mechanism, acct: &Account, cache: &ScramCache) -> Result<(), LoginError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let Some(hash) = mech.scram_hash() else {
            let msg = b64.encode(sasl::plain_message(acct.local(), &acct.password));
            self.send_now(&format!("<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{msg}</auth>")).await?;
            let e = self.next_element().await?;
            return match e.name.as_str() {
                "success" => Ok(()),
                _ => Err(LoginError::Auth(sasl_failure(&e))),
            };
        };
        let mut client = ScramClient::new(hash, acct.local(), &sasl::random_nonce());
        self.send_now(&format!(
            "<auth xmlns='{SASL_NS}' mechanism='{}'>{}</auth>",
            mech.name(),
            b64.encode(client.client_first())
        ))
        .await?;
        let e = self.next_element().await?;
        if e.name != "challenge" {
            return Err(LoginError::Auth(sasl_failure(&e)));
        }
        let server_first =
            b64.decode(e.text_content().trim()).map_err(|_| LoginError::Auth("challenge is not base64".into()))?;
        let sf = client.parse_server_first(&server_first).map_err(|e| LoginError::Auth(e.to_string()))?;
        let keys = cache.keys(acct, hash, &sf.salt, sf.iterations).await;
        let last = client.client_final(&server_first, &sf, &keys);
        self.send_now(&format!("<response xmlns='{SASL_NS}'>{}</response>", b64.encode(last))).await?;
        let mut e = self.next_element().await?;
        if e.name == "challenge" {
            // Some servers send server-final-message as a challenge (RFC 6120 §6.4.6 allows
            // both): verify it and answer with an empty response.
            let data = b64.decode(e.text_content().trim()).map_err(|_| LoginError::Auth("bad base64".into()))?;
            client.verify_server_final(&data).map_err(|e| LoginError::Auth(e.to_string()))?;
            self.send_now(&format!("<response xmlns='{SASL_NS}'/>")).await?;
            e = self.next_element().await?;
            return if e.name == "success" { Ok(()) } else { Err(LoginError::Auth(sasl_failure(&e))) };
        }
        if e.name != "success" {
            return Err(LoginError::Auth(sasl_failure(&e)));
        }
        let text = e.text_content();
        let data = b64.decode(text.trim()).map_err(|_| LoginError::Auth("success data is not base64".into()))?;
        client.verify_server_final(&data).map_err(|e| LoginError::Auth(e.to_string()))
    }

    /// Waits for the reply to the IQ `id`; other stanzas are kept for the session.
    async fn iq_reply(&mut self, id: &str) -> Result<Element, LoginError> {
        loop {
            let e = self.next_element().await?;
            if e.name == "iq" && e.get_attr("id") == Some(id) {
                return Ok(e);
            }
            self.sm.inbound = self.sm.inbound.wrapping_add(u32::from(is_stanza(&e)));
            self.pending.push(e);
        }
    }

    /// Waits for an element in `ns`; stanzas in between are kept for the session.
    async fn nonza(&mut self, ns: &str) -> Result<Element, LoginError> {
        loop {
            let e = self.next_element().await?;
            if e.ns == ns {
                return Ok(e);
            }
            self.sm.inbound = self.sm.inbound.wrapping_add(u32::from(is_stanza(&e)));
            self.pending.push(e);
        }
    }
}

fn is_stanza(e: &Element) -> bool {
    matches!(e.name.as_str(), "message" | "presence" | "iq")
}

fn stream_error_condition(e: &Element) -> String {
    e.elements().find(|c| c.name != "text").map(|c| c.name.clone()).unwrap_or_else(|| "undefined-condition".into())
}

fn sasl_failure(e: &Element) -> String {
    if e.name == "failure" {
        let cond = e.elements().find(|c| c.name != "text").map(|c| c.name.clone()).unwrap_or_default();
        format!("<failure/> <{cond}/>")
    } else {
        format!("unexpected <{}/>", e.name)
    }
}

async fn connect_tcp(set: &ClientSettings) -> std::io::Result<TcpStream> {
    let stream = match set.sources.as_ref().and_then(SourcePool::next) {
        None => TcpStream::connect(set.addr).await?,
        Some(ip) => {
            let sock = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(set.addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn tls_handshake(set: &ClientSettings, tcp: TcpStream) -> Result<Io, LoginError> {
    let name = ServerName::try_from(set.domain.clone())
        .map_err(|_| LoginError::Tls(format!("{:?} is not a valid TLS server name", set.domain)))?;
    let s = tokio_rustls::TlsConnector::from(set.tls_config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| LoginError::Tls(e.to_string()))?;
    Ok(Io::Tls(Box::new(s)))
}

/// Logs in `acct` with `resource`: resumes `resume` when given and possible, else binds.
pub async fn login(
    set: &ClientSettings,
    acct: &Account,
    resource: &str,
    resume: Option<&ResumeToken>,
) -> Result<Login, LoginError> {
    match tokio::time::timeout(set.login_timeout, login_steps(set, acct, resource, resume)).await {
        Ok(r) => r,
        Err(_) => Err(LoginError::Timeout(set.login_timeout)),
    }
}

/// TCP, TLS as configured, and a stream whose features are returned.
async fn secure_stream(set: &ClientSettings) -> Result<(Session, Element, Timings), LoginError> {
    let mut timings = Timings::default();
    let t = Instant::now();
    let tcp = connect_tcp(set).await.map_err(|error| LoginError::Connect { addr: set.addr, error })?;
    timings.connect = t.elapsed();
    let io = if set.tls == TlsMode::Direct {
        let t = Instant::now();
        let io = tls_handshake(set, tcp).await?;
        timings.tls = Some(t.elapsed());
        io
    } else {
        Io::Plain(tcp)
    };
    let mut s = Session::new(io, set.limits);
    let mut features = s.open_stream(&set.domain).await?;

    let starttls = features.get_child("starttls", TLS_NS);
    match set.tls {
        TlsMode::Starttls => {
            if starttls.is_none() {
                return Err(LoginError::Tls("the server does not offer STARTTLS".into()));
            }
            let t = Instant::now();
            s.send_now(&format!("<starttls xmlns='{TLS_NS}'/>")).await?;
            let e = s.next_element().await?;
            if e.name != "proceed" {
                return Err(LoginError::Tls(format!("STARTTLS refused with <{}/>", e.name)));
            }
            let Io::Plain(tcp) = s.io else {
                return Err(LoginError::Tls("STARTTLS on a TLS connection".into()));
            };
            s = Session::new(tls_handshake(set, tcp).await?, set.limits);
            timings.tls = Some(t.elapsed());
            features = s.open_stream(&set.domain).await?;
        }
        TlsMode::None if starttls.is_some_and(|st| st.get_child("required", TLS_NS).is_some()) => {
            return Err(LoginError::Tls("the server requires STARTTLS but target.tls = \"none\"".into()));
        }
        _ => {}
    }
    Ok((s, features, timings))
}

/// The result of an in-band registration attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    Created,
    /// The account exists already (`<conflict/>`).
    Exists,
    /// The server refused: registration is not allowed, or the request was rejected.
    Refused(String),
}

pub const REGISTER_NS: &str = "jabber:iq:register";

/// Creates `acct` with XEP-0077 §3.1 in-band registration on a fresh stream.
pub async fn register(set: &ClientSettings, acct: &Account) -> Result<Registration, LoginError> {
    let steps = async {
        let (mut s, _features, _) = secure_stream(set).await?;
        s.send_now(&format!(
            "<iq type='set' id='reg'><query xmlns='{REGISTER_NS}'><username>{}</username><password>{}</password></query></iq>",
            escape_text(acct.local()),
            escape_text(&acct.password)
        ))
        .await?;
        let r = s.iq_reply("reg").await?;
        let outcome = match r.get_attr("type") {
            Some("result") => Registration::Created,
            _ if error_condition(&r) == "<conflict/>" => Registration::Exists,
            _ => Registration::Refused(error_condition(&r)),
        };
        s.close(Duration::from_millis(500)).await;
        Ok(outcome)
    };
    match tokio::time::timeout(set.login_timeout, steps).await {
        Ok(r) => r,
        Err(_) => Err(LoginError::Timeout(set.login_timeout)),
    }
}

async fn login_steps(
    set: &ClientSettings,
    acct: &Account,
    resource: &str,
    resume: Option<&ResumeToken>,
) -> Result<Login, LoginError> {
    let (mut s, mut features, mut timings) = secure_stream(set).await?;

    let offered: Vec<String> = features
        .get_child("mechanisms", SASL_NS)
        .map(|m| m.elements().filter(|c| c.name == "mechanism").map(|c| c.text_content().trim().to_owned()).collect())
        .unwrap_or_default();
    let mech = sasl::choose(&set.sasl, &offered).ok_or_else(|| {
        LoginError::Auth(format!("no mechanism in common: the server offers [{}]", offered.join(", ")))
    })?;
    let t = Instant::now();
    s.authenticate(mech, acct, &set.scram).await?;
    timings.auth = t.elapsed();
    features = s.open_stream(&set.domain).await?;

    let sm_offered = features.get_child("sm", SM_NS).is_some();
    let sm = match (set.stream_management, sm_offered) {
        (false, _) => SmSupport::Disabled,
        (true, true) => SmSupport::Supported,
        (true, false) => SmSupport::Unsupported,
    };

    if let Some(tok) = resume.filter(|_| sm == SmSupport::Supported) {
        s.send_now(&format!("<resume xmlns='{SM_NS}' previd='{}' h='{}'/>", escape_attr(&tok.id), tok.inbound)).await?;
        let e = s.nonza(SM_NS).await?;
        if e.name == "resumed" {
            let acked = e.get_attr("h").and_then(|h| h.parse().ok()).unwrap_or(tok.outbound);
            s.jid = tok.jid.clone();
            s.sm = Sm {
                enabled: true,
                id: Some(tok.id.clone()),
                inbound: tok.inbound,
                outbound: tok.outbound,
                acked,
                since_request: 0,
            };
            return Ok(Login { session: s, timings, sm, resumed: true });
        }
        // <failed/>: the old session is gone; bind a new one on this stream (XEP-0198 §5).
    }

    let t = Instant::now();
    s.send_now(&format!(
        "<iq type='set' id='bind'><bind xmlns='{BIND_NS}'><resource>{}</resource></bind></iq>",
        escape_text(resource)
    ))
    .await?;
    let r = s.iq_reply("bind").await?;
    if r.get_attr("type") != Some("result") {
        return Err(LoginError::Bind(format!("the server answered {}", error_condition(&r))));
    }
    s.jid = r
        .get_child("bind", BIND_NS)
        .and_then(|b| b.get_child("jid", BIND_NS))
        .map(|j| j.text_content().trim().to_owned())
        .filter(|j| !j.is_empty())
        .ok_or_else(|| LoginError::Bind("no <jid/> in the bind result".into()))?;
    timings.bind = Some(t.elapsed());

    // RFC 3921 §3 session establishment, only when the server does not mark it optional.
    if features.get_child("session", SESSION_NS).is_some_and(|x| x.get_child("optional", SESSION_NS).is_none()) {
        s.send_now(&format!("<iq type='set' id='sess'><session xmlns='{SESSION_NS}'/></iq>")).await?;
        let r = s.iq_reply("sess").await?;
        if r.get_attr("type") != Some("result") {
            return Err(LoginError::Bind(format!("session establishment failed: {}", error_condition(&r))));
        }
    }

    if sm == SmSupport::Supported {
        s.send_now(&format!("<enable xmlns='{SM_NS}' resume='true'/>")).await?;
        let e = s.nonza(SM_NS).await?;
        if e.name == "enabled" {
            s.sm.enabled = true;
            let resumable = matches!(e.get_attr("resume"), Some("true" | "1"));
            s.sm.id = e.get_attr("id").filter(|_| resumable).map(str::to_owned);
            // Stanzas received before <enabled/> are not counted (XEP-0198 §4).
            s.sm.inbound = 0;
        }
    }

    if set.initial_presence {
        s.stanza("<presence/>", set.ack_every);
        s.flush().await.map_err(io_err)?;
    }
    Ok(Login { session: s, timings, sm, resumed: false })
}

/// Answers what every client must answer: an IQ get or set (RFC 6120 §8.2.3) gets a result
/// for a ping (XEP-0199 §4.2, servers use them to detect dead clients) or a roster push
/// (RFC 6121 §2.1.6), and `<service-unavailable/>` otherwise. Returns whether it answered.
pub fn answer_iq(el: &Element, s: &mut Session, ack_every: u32) -> bool {
    if el.name != "iq" || !matches!(el.get_attr("type"), Some("get" | "set")) {
        return false;
    }
    let id = escape_attr(el.get_attr("id").unwrap_or(""));
    let to = el.get_attr("from").map(|f| format!(" to='{}'", escape_attr(f))).unwrap_or_default();
    let known = el.get_child("ping", "urn:xmpp:ping").is_some()
        || (el.get_attr("type") == Some("set") && el.get_child("query", "jabber:iq:roster").is_some());
    if known {
        s.stanza(&format!("<iq type='result' id='{id}'{to}/>"), ack_every);
    } else {
        s.stanza(
            &format!(
                "<iq type='error' id='{id}'{to}><error type='cancel'>\
                 <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            ),
            ack_every,
        );
    }
    true
}

/// The condition of a stanza error, for messages.
pub fn error_condition(e: &Element) -> String {
    e.elements()
        .find(|c| c.name == "error")
        .and_then(|err| err.elements().find(|c| c.name != "text").map(|c| format!("<{}/>", c.name)))
        .unwrap_or_else(|| format!("type={:?}", e.get_attr("type").unwrap_or("")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn source_address_ranges() {
        let v = parse_source_addrs("127.0.0.1-127.0.0.3, ::1").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert!(parse_source_addrs("127.0.0.3-127.0.0.1").is_err());
        assert!(parse_source_addrs("localhost").is_err());
        assert!(parse_source_addrs(" , ").is_err());
        let pool = SourcePool::new(v);
        let picks: Vec<_> = (0..5).map(|_| pool.next().unwrap()).collect();
        assert_eq!(picks[0], picks[4], "round robin wraps");
        assert_ne!(picks[0], picks[1]);
    }

    #[test]
    fn a_rebuilt_framer_parses_like_the_original() {
        let header = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
                      xmlns:x='urn:example:x' from='example.org' id='abc' version='1.0'>";
        let mut r = XmlReader::new(Limits::default());
        r.framer().read_buf().extend_from_slice(header.as_bytes());
        let Some(Frame::StreamOpen(h)) = r.framer().next_frame().unwrap() else { panic!("no header") };
        r.on_header(&h);
        let body = b"<message from='a@example.org'><body>hi</body><x:y/></message><stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>";
        // Whole stream in one framer.
        r.framer().read_buf().extend_from_slice(body);
        let mut direct = Vec::new();
        while let Some(f) = r.framer().next_frame().unwrap() {
            direct.push(f);
        }
        // The same bytes after dropping the framer at an element boundary.
        r.shed();
        assert!(r.is_shed());
        r.framer().read_buf().extend_from_slice(body);
        let mut rebuilt = Vec::new();
        while let Some(f) = r.framer().next_frame().unwrap() {
            rebuilt.push(f);
        }
        let parse = |v: &[Frame]| -> Vec<Element> {
            v.iter().filter_map(|f| if let Frame::Element(e) = f { Some(e.parse().unwrap()) } else { None }).collect()
        };
        assert_eq!(parse(&direct), parse(&rebuilt));
        let els = parse(&rebuilt);
        assert_eq!(els.len(), 2);
        assert!(els[0].is("message", "jabber:client"));
        assert!(els[0].get_child("y", "urn:example:x").is_some(), "prefix from the header still resolves");
        assert!(els[1].is("error", STREAM_NS));
    }

    #[test]
    fn errors_name_their_step() {
        assert_eq!(LoginError::Auth("x".into()).step(), "auth");
        assert_eq!(LoginError::Timeout(Duration::from_secs(1)).step(), "timeout");
        let e = rookery_xml::parse_element(
            b"<iq type='error' id='b'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
            "jabber:client",
        )
        .unwrap();
        assert_eq!(error_condition(&e), "<conflict/>");
    }
}
