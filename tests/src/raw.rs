//! A raw XMPP client for protocol tests: it writes exactly the bytes a test gives it and
//! parses what comes back with the project's framer, so tests can send malformed input
//! and assert exact stream and stanza errors.

use base64::Engine;
use rookery_xml::{Element, Frame, Framer, Limits};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub const HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

/// Accepts the test server's self-signed certificate but still checks handshake
/// signatures.
#[derive(Debug)]
pub struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client config trusting any server certificate (tests only).
pub fn client_config(alpn: Option<&[u8]>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    if let Some(a) = alpn {
        cfg.alpn_protocols = vec![a.to_vec()];
    }
    Arc::new(cfg)
}

pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Gone => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Header,
    Element(Element),
    /// `</stream:stream>` or EOF.
    Closed,
}

pub struct RawClient {
    pub io: Io,
    framer: Framer,
    /// The bound full JID, once bound.
    pub jid: Option<String>,
}

/// Default time to wait for an expected element.
pub const WAIT: Duration = Duration::from_secs(5);

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        RawClient {
            io: Io::Plain(s),
            framer: Framer::new(Limits { max_stanza_bytes: 1 << 24, ..Limits::default() }),
            jid: None,
        }
    }

    /// Connects to the direct-TLS port (XEP-0368) and completes the TLS handshake.
    pub async fn connect_direct_tls(addr: SocketAddr) -> RawClient {
        let s = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(client_config(Some(b"xmpp-client")))
            .connect(ServerName::try_from("localhost").unwrap(), s)
            .await
            .unwrap();
        RawClient {
            io: Io::Tls(Box::new(tls)),
            framer: Framer::new(Limits { max_stanza_bytes: 1 << 24, ..Limits::default() }),
            jid: None,
        }
    }

    pub async fn send(&mut self, s: &str) {
        self.send_bytes(s.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        // The server may already have closed; tests check what came back instead.
        let _ = self.io.write_all(b).await;
        let _ = self.io.flush().await;
    }

    /// The next thing the server sends, or None after `wait` without anything.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.framer.next_frame() {
                Ok(Some(Frame::StreamOpen(_))) => return Some(Incoming::Header),
                Ok(Some(Frame::Element(e))) => return Some(Incoming::Element(e.parse().unwrap())),
                Ok(Some(Frame::StreamClose)) => return Some(Incoming::Closed),
                Ok(Some(Frame::Whitespace)) => continue,
                Ok(None) => {}
                Err(e) => panic!("server sent bad XML: {e}"),
            }
            match tokio::time::timeout_at(deadline, self.io.read_buf(self.framer.read_buf())).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(Incoming::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next element (skipping a stream header); panics on timeout or close.
    pub async fn recv(&mut self) -> Element {
        loop {
            match self.recv_timeout(WAIT).await {
                Some(Incoming::Element(e)) => return e,
                Some(Incoming::Header) => continue,
                other => panic!("expected an element, got {other:?}"),
            }
        }
    }

    /// Waits for an element matching `pred`, skipping others.
    pub async fn recv_until(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_timeout(left).await {
                Some(Incoming::Element(e)) if pred(&e) => return e,
                Some(Incoming::Element(_)) | Some(Incoming::Header) => continue,
                other => panic!("expected a matching element, got {other:?}"),
            }
        }
    }

    /// Asserts nothing arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(x) = self.recv_timeout(wait).await {
            panic!("expected nothing, got {x:?}");
        }
    }

    /// Waits for a stream error and the end of the stream; returns the condition.
    pub async fn expect_stream_error(&mut self) -> String {
        let cond = loop {
            match self.recv_timeout(WAIT).await {
                Some(Incoming::Element(e)) if e.name == "error" && e.ns == "http://etherx.jabber.org/streams" => {
                    break e
                        .elements()
                        .find(|c| c.ns == "urn:ietf:params:xml:ns:xmpp-streams" && c.name != "text")
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                }
                Some(Incoming::Element(_)) | Some(Incoming::Header) => continue,
                other => panic!("expected a stream error, got {other:?}"),
            }
        };
        match self.recv_timeout(WAIT).await {
            Some(Incoming::Closed) | None => {}
            other => panic!("expected the stream to close after the error, got {other:?}"),
        }
        cond
    }

    /// Sends our header and reads the server's header and features.
    pub async fn open(&mut self) -> Element {
        self.send(HEADER).await;
        match self.recv_timeout(WAIT).await {
            Some(Incoming::Header) => {}
            other => panic!("expected a stream header, got {other:?}"),
        }
        let f = self.recv().await;
        assert_eq!(f.name, "features", "expected stream features, got {f:?}");
        f
    }

    pub async fn starttls(&mut self) {
        self.starttls_with("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await;
    }

    /// STARTTLS with exactly these bytes as the request (e.g. with trailing whitespace,
    /// as go-xmpp writes it): expects `<proceed/>`, then runs the TLS handshake.
    pub async fn starttls_with(&mut self, request: &str) {
        self.send(request).await;
        let p = self.recv().await;
        assert_eq!(p.name, "proceed");
        let Io::Plain(s) = std::mem::replace(&mut self.io, Io::Gone) else { panic!("already TLS") };
        let tls = tokio_rustls::TlsConnector::from(client_config(None))
            .connect(ServerName::try_from("localhost").unwrap(), s)
            .await
            .unwrap();
        self.io = Io::Tls(Box::new(tls));
        self.framer.restart();
    }

    /// SASL PLAIN; returns the success or failure element.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Element {
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>")).await;
        let r = self.recv().await;
        if r.name == "success" {
            self.framer.restart();
        }
        r
    }

    /// Restarts the stream after SASL success and binds `resource` (None: server picks).
    pub async fn bind(&mut self, resource: Option<&str>) -> String {
        self.open().await;
        let res = resource.map(|r| format!("<resource>{r}</resource>")).unwrap_or_default();
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{res}</bind></iq>"
        ))
        .await;
        let r = self.recv().await;
        let jid = r
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text_content())
            .unwrap_or_else(|| panic!("bind failed: {r:?}"));
        self.jid = Some(jid.clone());
        jid
    }

    /// Connects over STARTTLS, authenticates with PLAIN and binds.
    pub async fn login(addr: SocketAddr, user: &str, password: &str, resource: &str) -> RawClient {
        let mut c = RawClient::connect(addr).await;
        c.open().await;
        c.starttls().await;
        c.open().await;
        let r = c.auth_plain(user, password).await;
        assert_eq!(r.name, "success", "login of {user} failed: {r:?}");
        c.bind(Some(resource)).await;
        c
    }

    /// Sends initial presence and waits for its reflection.
    pub async fn available(&mut self) {
        self.send("<presence/>").await;
        let me = self.jid.clone().unwrap_or_default();
        self.recv_until(|e| e.name == "presence" && e.get_attr("from") == Some(me.as_str())).await;
    }
}
