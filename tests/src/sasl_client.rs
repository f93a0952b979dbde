//! A SASL client for end-to-end tests: a connection whose SASL exchange and stream
//! restarts are under the test's control ([`SaslConn`]), the client-mechanism interface it
//! drives ([`ClientMechanism`]), and a SCRAM client written from RFC 5802 §3 ([`Scram`])
//! that shares no code with the server, so a misreading of the RFC in the server's SCRAM
//! implementation cannot be mirrored here.
//!
//! Owns: test-only SASL plumbing and primitives (HMAC, Hi) built by hand on a hash function.

use crate::raw::{self, Io, RawClient, WAIT};
use base64::Engine;
use rookery_xml::{Element, Frame, Framer, Limits};
use sha2::{Digest, Sha256, Sha512};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const BIND_NS: &str = "urn:ietf:params:xml:ns:xmpp-bind";

// ---------------------------------------------------------------------------------------
// The connection
// ---------------------------------------------------------------------------------------

/// A connection driven by the test itself: TLS from the harness, the project's framer on
/// top, so the SASL exchange and the stream restarts are under the test's control.
pub struct SaslConn {
    io: Io,
    framer: Framer,
}

impl SaslConn {
    /// TCP, STARTTLS, then a fresh stream whose features are returned.
    pub async fn starttls(addr: SocketAddr) -> (SaslConn, Element) {
        let mut raw = RawClient::connect(addr).await;
        raw.open().await;
        raw.starttls().await;
        Self::from_raw(raw).await
    }

    /// The direct-TLS port (XEP-0368).
    pub async fn direct_tls(addr: SocketAddr) -> (SaslConn, Element) {
        Self::from_raw(RawClient::connect_direct_tls(addr).await).await
    }

    /// Takes over the transport of `raw` and opens a fresh stream on it; returns the
    /// stream features.
    pub async fn from_raw(mut raw: RawClient) -> (SaslConn, Element) {
        let io = std::mem::replace(&mut raw.io, Io::Gone);
        let mut c = SaslConn { io, framer: Framer::new(Limits::default()) };
        let f = c.open().await;
        (c, f)
    }

    /// The TLS client connection (for channel-binding data).
    pub fn tls(&self) -> &rustls::ClientConnection {
        match &self.io {
            Io::Tls(s) => s.get_ref().1,
            _ => panic!("not a TLS connection"),
        }
    }

    /// The DER of the server's end-entity certificate, as this connection saw it.
    pub fn server_cert(&self) -> Vec<u8> {
        self.tls().peer_certificates().expect("no server certificate")[0].as_ref().to_vec()
    }

    pub async fn send(&mut self, s: &str) {
        self.io.write_all(s.as_bytes()).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next element; panics on a timeout, a closed stream or a closed connection.
    pub async fn recv(&mut self) -> Element {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.framer.next_frame().unwrap() {
                Some(Frame::Element(e)) => return e.parse().unwrap(),
                Some(Frame::StreamOpen(_)) | Some(Frame::Whitespace) => continue,
                Some(Frame::StreamClose) => panic!("stream closed by the server"),
                None => {}
            }
            match tokio::time::timeout_at(deadline, self.io.read_buf(self.framer.read_buf())).await {
                Err(_) => panic!("timed out waiting for an element"),
                Ok(Ok(0)) | Ok(Err(_)) => panic!("connection closed by the server"),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Sends a stream header (RFC 6120 §4.3.3 after a restart) and returns the features.
    pub async fn open(&mut self) -> Element {
        self.framer.restart();
        self.send(raw::HEADER).await;
        let f = self.recv().await;
        assert_eq!(f.name, "features", "expected stream features, got {f:?}");
        f
    }

    /// Runs a SASL exchange (RFC 6120 §6.4): Ok after a `<success/>` whose additional
    /// data the mechanism verified (panics if it does not verify), Err(condition) on
    /// `<failure/>`, Err(reason) if the mechanism rejects a challenge.
    pub async fn authenticate(&mut self, mech: &mut dyn ClientMechanism) -> Result<(), String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let initial = mech.initial();
        let data = if initial.is_empty() { "=".to_owned() } else { b64.encode(&initial) };
        self.send(&format!("<auth xmlns='{SASL_NS}' mechanism='{}'>{data}</auth>", mech.name())).await;
        loop {
            let e = self.recv().await;
            assert_eq!(e.ns, SASL_NS, "unexpected element during SASL: {e:?}");
            let payload = b64.decode(e.text_content().trim()).unwrap();
            match e.name.as_str() {
                "challenge" => {
                    let r = mech.response(&payload).map_err(|e| format!("client rejected the challenge: {e}"))?;
                    self.send(&format!("<response xmlns='{SASL_NS}'>{}</response>", b64.encode(r))).await;
                }
                "success" => {
                    mech.success(&payload).map_err(|e| format!("server's success did not verify: {e}")).unwrap();
                    return Ok(());
                }
                "failure" => {
                    let cond = e.elements().find(|c| c.name != "text").map(|c| c.name.clone()).unwrap_or_default();
                    return Err(cond);
                }
                other => panic!("unexpected SASL element {other}"),
            }
        }
    }

    /// After SASL success: restart, bind `resource`, check the session answers an IQ;
    /// returns the bound JID.
    pub async fn bind_and_ping(&mut self, resource: &str) -> String {
        let f = self.open().await;
        assert!(f.get_child("bind", BIND_NS).is_some(), "no bind feature: {f:?}");
        self.send(&format!(
            "<iq type='set' id='bind'><bind xmlns='{BIND_NS}'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let r = self.recv().await;
        assert_eq!(r.get_attr("type"), Some("result"), "bind failed: {r:?}");
        let jid =
            r.get_child("bind", BIND_NS).and_then(|b| b.get_child("jid", BIND_NS)).map(|j| j.text_content()).unwrap();
        self.send("<iq type='get' id='ping' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        let r = self.recv().await;
        assert_eq!((r.get_attr("id"), r.get_attr("type")), (Some("ping"), Some("result")), "ping: {r:?}");
        jid
    }
}

/// The client side of a SASL mechanism, as [`SaslConn::authenticate`] drives it.
pub trait ClientMechanism {
    /// The mechanism name sent in `<auth mechanism='…'/>`.
    fn name(&self) -> String;
    /// The initial response (empty for none).
    fn initial(&mut self) -> Vec<u8>;
    /// The response to a server challenge, or why the challenge is unacceptable.
    fn response(&mut self, challenge: &[u8]) -> Result<Vec<u8>, String>;
    /// Verifies the additional data of `<success/>`.
    fn success(&mut self, data: &[u8]) -> Result<(), String>;
}

// ---------------------------------------------------------------------------------------
// Primitives
// ---------------------------------------------------------------------------------------

/// The hash function a SCRAM variant is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    /// The name as it appears in a SCRAM mechanism name (RFC 5802 §4, RFC 7677).
    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha256 => "SHA-256",
            Hash::Sha512 => "SHA-512",
        }
    }

    /// The input block size B of RFC 2104 §2, in bytes.
    fn block_len(self) -> usize {
        match self {
            Hash::Sha256 => 64,
            Hash::Sha512 => 128,
        }
    }

    /// H(parts[0] || parts[1] || …).
    fn digest_parts(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha256 => run::<Sha256>(parts),
            Hash::Sha512 => run::<Sha512>(parts),
        }
    }

    /// H(data).
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        self.digest_parts(&[data])
    }

    /// HMAC (RFC 2104 §2): H(K XOR opad, H(K XOR ipad, text)), a key longer than the
    /// block being hashed first.
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let block = self.block_len();
        let mut k = if key.len() > block { self.digest(key) } else { key.to_vec() };
        k.resize(block, 0);
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = self.digest_parts(&[&ipad, data]);
        self.digest_parts(&[&opad, &inner])
    }

    /// SCRAM's Hi() (RFC 5802 §2.2): PBKDF2 (RFC 8018 §5.2) with this HMAC as the PRF,
    /// one output block.
    pub fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut u = self.hmac(password, &[salt, &1u32.to_be_bytes()].concat());
        let mut out = u.clone();
        for _ in 1..iterations {
            u = self.hmac(password, &u);
            out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
        }
        out
    }
}

/// Bytewise XOR of two equally long strings.
pub fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// SCRAM
// ---------------------------------------------------------------------------------------

/// A SCRAM-SHA-256/512(-PLUS) client written from RFC 5802 §3 (with channel binding,
/// RFC 5802 §6; RFC 5929; RFC 9266).
pub struct Scram {
    hash: Hash,
    user: String,
    password: String,
    /// Channel-binding type name and data; `None` for the non-PLUS variant.
    cb: Option<(&'static str, Vec<u8>)>,
    nonce: String,
    /// Set by `initial`.
    client_first_bare: Option<String>,
    /// Set by `response`: what the server must prove it knows.
    server_signature: Option<Vec<u8>>,
}

impl Scram {
    /// `cb` is `Some((type name, binding data))` for SCRAM-*-PLUS, e.g.
    /// `("tls-exporter", exporter_bytes)`.
    pub fn new(hash: Hash, user: &str, password: &str, cb: Option<(&'static str, Vec<u8>)>) -> Self {
        // Uniqueness per exchange is all a test needs; the server adds its own nonce part.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = format!(
            "{:?}{:?}{}",
            std::time::SystemTime::now(),
            std::thread::current().id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let nonce = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&hash.digest(seed.as_bytes())[..18]);
        Scram {
            hash,
            user: user.to_owned(),
            password: password.to_owned(),
            cb,
            nonce,
            client_first_bare: None,
            server_signature: None,
        }
    }

    /// Replaces the client nonce (for checking against published example exchanges).
    pub fn with_nonce(mut self, nonce: &str) -> Self {
        self.nonce = nonce.to_owned();
        self
    }

    /// The GS2 header (RFC 5802 §7): `p=<type>,,` with channel binding, else `n,,`.
    fn gs2_header(&self) -> String {
        match &self.cb {
            Some((kind, _)) => format!("p={kind},,"),
            None => "n,,".to_owned(),
        }
    }
}

impl ClientMechanism for Scram {
    fn name(&self) -> String {
        format!("SCRAM-{}{}", self.hash.name(), if self.cb.is_some() { "-PLUS" } else { "" })
    }

    fn initial(&mut self) -> Vec<u8> {
        // RFC 5802 §5.1: "=" and "," in a saslname are escaped.
        let user = self.user.replace('=', "=3D").replace(',', "=2C");
        let bare = format!("n={user},r={}", self.nonce);
        let first = format!("{}{bare}", self.gs2_header());
        self.client_first_bare = Some(bare);
        self.server_signature = None;
        first.into_bytes()
    }

    fn response(&mut self, challenge: &[u8]) -> Result<Vec<u8>, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let client_first_bare = self.client_first_bare.clone().ok_or("challenge before the initial message")?;
        if self.server_signature.is_some() {
            return Err("a second challenge".to_owned());
        }
        let server_first = std::str::from_utf8(challenge).map_err(|_| "server-first-message is not UTF-8")?;
        let attr = |k: &str| server_first.split(',').find_map(|a| a.strip_prefix(k)).map(str::to_owned);
        let nonce = attr("r=").ok_or_else(|| format!("no nonce in {server_first}"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(format!("the server nonce does not extend the client's: {server_first}"));
        }
        let salt =
            attr("s=").and_then(|s| b64.decode(s).ok()).ok_or_else(|| format!("no valid salt in {server_first}"))?;
        let iterations: u32 = attr("i=")
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| format!("no valid iteration count in {server_first}"))?;

        let mut cbind_input = self.gs2_header().into_bytes();
        if let Some((_, data)) = &self.cb {
            cbind_input.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={nonce}", b64.encode(&cbind_input));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");

        let h = self.hash;
        let salted = h.hi(self.password.as_bytes(), &salt, iterations);
        let client_key = h.hmac(&salted, b"Client Key");
        let stored_key = h.digest(&client_key);
        let client_signature = h.hmac(&stored_key, auth_message.as_bytes());
        let proof = xor(&client_key, &client_signature);
        let server_key = h.hmac(&salted, b"Server Key");
        self.server_signature = Some(h.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", b64.encode(proof)).into_bytes())
    }

    fn success(&mut self, data: &[u8]) -> Result<(), String> {
        let expected = self.server_signature.as_ref().ok_or("success before the client-final-message")?;
        let v = std::str::from_utf8(data)
            .ok()
            .and_then(|s| s.strip_prefix("v="))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .ok_or_else(|| format!("no verifier in {:?}", String::from_utf8_lossy(data)))?;
        if &v == expected { Ok(()) } else { Err("the server's signature does not verify".to_owned()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_helpers_match_published_vectors() {
        let h = Hash::Sha256;
        // RFC 4231 §4.3 (test case 2).
        assert_eq!(
            hex(&h.hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // RFC 4231 §4.7 (test case 6): a key longer than the block is hashed first.
        assert_eq!(
            hex(&h.hmac(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        // RFC 4231 §4.8 (test case 7).
        assert_eq!(
            hex(&h.hmac(
                &[0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm."
            )),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"
        );
        // RFC 7914 §11: PBKDF2-HMAC-SHA256, P="passwd", S="salt", c=1 (first block).
        assert_eq!(
            hex(&h.hi(b"passwd", b"salt", 1)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        // PBKDF2-HMAC-SHA256, P="password", S="salt", c=2 (exercises the iteration).
        assert_eq!(
            hex(&h.hi(b"password", b"salt", 2)),
            "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"
        );
    }

    #[test]
    fn sha512_helpers_match_published_vectors() {
        let h = Hash::Sha512;
        // RFC 4231 §4.3 (test case 2).
        assert_eq!(
            hex(&h.hmac(b"Jefe", b"what do ya want for nothing?")),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
        // RFC 4231 §4.7 (test case 6): a key longer than the block is hashed first.
        assert_eq!(
            hex(&h.hmac(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598"
        );
        // RFC 4231 §4.8 (test case 7).
        assert_eq!(
            hex(&h.hmac(
                &[0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm."
            )),
            "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58"
        );
        // PBKDF2-HMAC-SHA512, P="password", S="salt".
        assert_eq!(
            hex(&h.hi(b"password", b"salt", 1)),
            "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce"
        );
        assert_eq!(
            hex(&h.hi(b"password", b"salt", 2)),
            "e1d9c16aa681708a45f5c7c4e215ceb66e011a2e9f0040713f18aefdb866d53cf76cab2868a39b9f7840edce4fef5a82be67335c77a6068e04112754f27ccf4e"
        );
    }

    /// The example exchange of RFC 7677 §3 (SCRAM-SHA-256, no channel binding).
    #[test]
    fn scram_sha256_matches_rfc7677_example() {
        let mut m = Scram::new(Hash::Sha256, "user", "pencil", None).with_nonce("rOprNGfwEbeRWgbNEkqO");
        assert_eq!(m.name(), "SCRAM-SHA-256");
        assert_eq!(m.initial(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            String::from_utf8(m.response(server_first).unwrap()).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(m.success(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="), Ok(()));
        assert!(m.success(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").is_err());
    }

    #[test]
    fn scram_rejects_bad_server_messages_and_builds_plus_headers() {
        let mut m = Scram::new(Hash::Sha512, "a,b=c", "pw", Some(("tls-exporter", vec![1, 2, 3])));
        assert_eq!(m.name(), "SCRAM-SHA-512-PLUS");
        let first = String::from_utf8(m.initial()).unwrap();
        let nonce = first.strip_prefix("p=tls-exporter,,n=a=2Cb=3Dc,r=").unwrap().to_owned();
        // The server must extend the client nonce, not replace or merely repeat it.
        assert!(m.response(format!("r={nonce},s=c2FsdA==,i=1").as_bytes()).is_err());
        assert!(m.response(b"r=other-nonce,s=c2FsdA==,i=1").is_err());
        assert!(m.success(b"v=AAAA").is_err(), "success before any proof was sent");
        let last = String::from_utf8(m.response(format!("r={nonce}xyz,s=c2FsdA==,i=1").as_bytes()).unwrap()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let c = b64.encode([b"p=tls-exporter,,".as_slice(), &[1, 2, 3]].concat());
        assert!(last.starts_with(&format!("c={c},r={nonce}xyz,p=")), "{last}");

        let mut m = Scram::new(Hash::Sha256, "u", "pw", Some(("tls-server-end-point", vec![9])));
        assert_eq!(m.name(), "SCRAM-SHA-256-PLUS");
        assert!(m.initial().starts_with(b"p=tls-server-end-point,,n=u,r="));
    }
}
