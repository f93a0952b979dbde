//! The client side of SASL for load connections: SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802
//! §3, §5, §7; RFC 7677) without channel binding, and PLAIN (RFC 4616).
//!
//! Owns message construction and verification only; it must not touch sockets or XML (the
//! connection code wraps these bytes in `<auth/>`/`<response/>`). The server's signature in
//! `server-final-message` is always verified, so a server that accepts any proof is caught.
//!
//! The PBKDF2 step is split out ([`scram_keys`]) so the caller can cache the derived keys
//! per (user, salt, iterations) and run the derivation off the I/O threads: at thousands of
//! logins per second, 4096 iterations per login would otherwise dominate the client's CPU
//! and distort the latency it measures.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A SASL mechanism this client implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    ScramSha256,
    ScramSha1,
    Plain,
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [Mechanism::ScramSha256, Mechanism::ScramSha1, Mechanism::Plain];

    /// The IANA name, as in `<mechanism/>`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The hash for SCRAM mechanisms.
    pub fn scram_hash(self) -> Option<ScramHash> {
        match self {
            Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::ScramSha1 => Some(ScramHash::Sha1),
            Mechanism::Plain => None,
        }
    }
}

/// The first mechanism of `preference` that the server offers.
pub fn choose(preference: &[Mechanism], offered: &[String]) -> Option<Mechanism> {
    preference.iter().copied().find(|m| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name())))
}

/// Why an exchange cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("server-first-message is malformed: {0}")]
    BadServerFirst(String),
    #[error("the server nonce does not extend the client nonce")]
    NonceMismatch,
    #[error("server-final-message is malformed: {0}")]
    BadServerFinal(String),
    #[error("the server reported an error: {0}")]
    ServerError(String),
    #[error("the server signature does not verify")]
    BadServerSignature,
    #[error("the exchange is out of order: {0}")]
    OutOfOrder(&'static str),
}

/// The hash a SCRAM variant is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramHash {
    fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            // HMAC accepts keys of any length (long ones are hashed), so this never fails;
            // an empty output would fail verification rather than panic.
            match <M as KeyInit>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            }
        }
        match self {
            ScramHash::Sha1 => run::<Hmac<Sha1>>(key, data),
            ScramHash::Sha256 => run::<Hmac<Sha256>>(key, data),
        }
    }
}

/// The keys derived from a password (RFC 5802 §3): what PBKDF2 buys, worth caching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// `SaltedPassword := Hi(password, salt, i)`, then `ClientKey` and `ServerKey`.
pub fn scram_keys(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
    let mut salted = vec![0u8; hash.output_len()];
    match hash {
        ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, iterations, &mut salted),
        ScramHash::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted),
    }
    ScramKeys { client_key: hash.hmac(&salted, b"Client Key"), server_key: hash.hmac(&salted, b"Server Key") }
}

/// The parsed `server-first-message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFirst {
    pub nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

/// One SCRAM exchange, client side, without channel binding (GS2 header `n,,`).
#[derive(Debug, Clone)]
pub struct ScramClient {
    hash: ScramHash,
    client_first_bare: String,
    nonce: String,
    server_signature: Option<Vec<u8>>,
}

const GS2_HEADER: &str = "n,,";

impl ScramClient {
    /// `nonce` must be printable ASCII without `,`; see [`random_nonce`].
    pub fn new(hash: ScramHash, username: &str, nonce: &str) -> Self {
        // RFC 5802 §5.1: "=" and "," in a saslname are escaped.
        let user = username.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            hash,
            client_first_bare: format!("n={user},r={nonce}"),
            nonce: nonce.to_owned(),
            server_signature: None,
        }
    }

    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// The `client-first-message` (the initial response).
    pub fn client_first(&self) -> String {
        format!("{GS2_HEADER}{}", self.client_first_bare)
    }

    /// Parses and checks the `server-first-message`.
    pub fn parse_server_first(&self, msg: &[u8]) -> Result<ServerFirst, SaslError> {
        let text = std::str::from_utf8(msg).map_err(|_| SaslError::BadServerFirst("not UTF-8".into()))?;
        if text.starts_with("m=") {
            return Err(SaslError::BadServerFirst("mandatory extension not supported".into()));
        }
        let attr = |k: &str| text.split(',').find_map(|a| a.strip_prefix(k));
        let nonce = attr("r=").ok_or_else(|| SaslError::BadServerFirst(format!("no nonce in {text:?}")))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(SaslError::NonceMismatch);
        }
        let salt = attr("s=")
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or_else(|| SaslError::BadServerFirst(format!("no valid salt in {text:?}")))?;
        let iterations = attr("i=")
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|i| *i > 0)
            .ok_or_else(|| SaslError::BadServerFirst(format!("no valid iteration count in {text:?}")))?;
        Ok(ServerFirst { nonce: nonce.to_owned(), salt, iterations })
    }

    /// The `client-final-message` for `server_first` (the raw message as received) with the
    /// keys derived from its salt and iteration count.
    pub fn client_final(&mut self, server_first: &[u8], parsed: &ServerFirst, keys: &ScramKeys) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let without_proof = format!("c={},r={}", b64.encode(GS2_HEADER), parsed.nonce);
        let auth_message =
            format!("{},{},{without_proof}", self.client_first_bare, String::from_utf8_lossy(server_first));
        let h = self.hash;
        let stored_key = h.hash(&keys.client_key);
        let client_signature = h.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = keys.client_key.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
        self.server_signature = Some(h.hmac(&keys.server_key, auth_message.as_bytes()));
        format!("{without_proof},p={}", b64.encode(proof))
    }

    /// Verifies the `server-final-message` (the additional data of `<success/>`).
    pub fn verify_server_final(&self, data: &[u8]) -> Result<(), SaslError> {
        let expected = self.server_signature.as_ref().ok_or(SaslError::OutOfOrder("success before client-final"))?;
        let text = std::str::from_utf8(data).map_err(|_| SaslError::BadServerFinal("not UTF-8".into()))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(SaslError::ServerError(e.to_owned()));
        }
        let v = text
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .ok_or_else(|| SaslError::BadServerFinal(format!("no verifier in {text:?}")))?;
        // Constant time is not needed on the client: the value is the server's to prove.
        if &v == expected { Ok(()) } else { Err(SaslError::BadServerSignature) }
    }
}

/// A fresh client nonce: 18 random bytes, base64 (24 printable characters, no comma).
pub fn random_nonce() -> String {
    let mut b = [0u8; 18];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: fall back to time and a counter. The nonce only has to be
        // unique per exchange for the server to accept it.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seed =
            format!("{:?}{}", std::time::SystemTime::now(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        b.copy_from_slice(&Sha256::digest(seed.as_bytes())[..18]);
    }
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The PLAIN message (RFC 4616 §2) with an empty authorization identity.
pub fn plain_message(authcid: &str, password: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(authcid.len() + password.len() + 2);
    m.push(0);
    m.extend_from_slice(authcid.as_bytes());
    m.push(0);
    m.extend_from_slice(password.as_bytes());
    m
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn exchange(hash: ScramHash, nonce: &str, server_first: &str, password: &str) -> (ScramClient, String) {
        let mut c = ScramClient::new(hash, "user", nonce);
        let sf = c.parse_server_first(server_first.as_bytes()).unwrap();
        let keys = scram_keys(hash, password, &sf.salt, sf.iterations);
        let last = c.client_final(server_first.as_bytes(), &sf, &keys);
        (c, last)
    }

    /// RFC 5802 §5: the SCRAM-SHA-1 example exchange.
    #[test]
    fn scram_sha1_matches_rfc5802_example() {
        let c = ScramClient::new(ScramHash::Sha1, "user", "fyko+d2lbbFgONRv9qkxdawL");
        assert_eq!(c.client_first(), "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let (c, last) = exchange(
            ScramHash::Sha1,
            "fyko+d2lbbFgONRv9qkxdawL",
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            "pencil",
        );
        assert_eq!(last, "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=");
        assert_eq!(c.verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="), Ok(()));
        assert_eq!(c.verify_server_final(b"v=smF9pqV8S7suAoZWja4dJRkFsKQ="), Err(SaslError::BadServerSignature));
    }

    /// RFC 7677 §3: the SCRAM-SHA-256 example exchange.
    #[test]
    fn scram_sha256_matches_rfc7677_example() {
        let c = ScramClient::new(ScramHash::Sha256, "user", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(c.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let (c, last) = exchange(
            ScramHash::Sha256,
            "rOprNGfwEbeRWgbNEkqO",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "pencil",
        );
        assert_eq!(
            last,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(c.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="), Ok(()));
        assert_eq!(
            c.verify_server_final(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(SaslError::BadServerSignature)
        );
        assert_eq!(c.verify_server_final(b"e=invalid-proof"), Err(SaslError::ServerError("invalid-proof".into())));
    }

    #[test]
    fn bad_server_first_messages_are_rejected() {
        let c = ScramClient::new(ScramHash::Sha256, "a,b=c", "abc");
        assert_eq!(c.client_first(), "n,,n=a=2Cb=3Dc,r=abc");
        assert_eq!(c.parse_server_first(b"r=xyz,s=c2FsdA==,i=1"), Err(SaslError::NonceMismatch));
        assert_eq!(c.parse_server_first(b"r=abc,s=c2FsdA==,i=1"), Err(SaslError::NonceMismatch), "not extended");
        assert!(matches!(c.parse_server_first(b"r=abcd,s=!!,i=1"), Err(SaslError::BadServerFirst(_))));
        assert!(matches!(c.parse_server_first(b"r=abcd,s=c2FsdA==,i=0"), Err(SaslError::BadServerFirst(_))));
        assert!(matches!(c.parse_server_first(b"m=ext,r=abcd,s=c2FsdA==,i=1"), Err(SaslError::BadServerFirst(_))));
        let sf = c.parse_server_first(b"r=abcd,s=c2FsdA==,i=2").unwrap();
        assert_eq!((sf.salt.as_slice(), sf.iterations), (b"salt".as_slice(), 2));
        assert!(matches!(c.verify_server_final(b"v=AAAA"), Err(SaslError::OutOfOrder(_))));
    }

    #[test]
    fn mechanism_choice_follows_the_preference() {
        let offered = vec!["PLAIN".to_owned(), "SCRAM-SHA-1".to_owned()];
        assert_eq!(choose(&Mechanism::ALL, &offered), Some(Mechanism::ScramSha1));
        assert_eq!(choose(&[Mechanism::Plain, Mechanism::ScramSha1], &offered), Some(Mechanism::Plain));
        assert_eq!(choose(&[Mechanism::ScramSha256], &offered), None);
        assert_eq!(Mechanism::from_name("scram-sha-256"), Some(Mechanism::ScramSha256));
        assert_eq!(plain_message("u", "p"), b"\0u\0p");
        let n = random_nonce();
        assert_eq!(n.len(), 24);
        assert!(!n.contains(',') && n != random_nonce());
    }
}
