//! Server side of SCRAM (RFC 5802) and its -PLUS variants, as a sans-IO state machine.
//!
//! Owns: parsing the GS2 header and client messages (RFC 5802 §7), the channel binding
//! rules (RFC 5802 §6, with `tls-exporter` RFC 9266 and `tls-server-end-point` RFC 5929
//! §4), building server-first and server-final messages, and verifying the client proof
//! (RFC 5802 §3) in constant time. Unknown users get deterministic fake parameters so the
//! exchange looks the same until the final step (RFC 5802 §5.1, "the server SHOULD ...").
//!
//! Must not touch: I/O, storage, XML or base64 of the `<auth/>`/`<response/>` payloads
//! (the caller decodes those), and authorization of the authzid.
//!
//! Flow: [`ScramServer::new`] → [`ScramServer::client_first`] (look up the user) →
//! [`ScramServer::server_first`] → [`ScramServer::client_final`]. Any error ends the
//! exchange; later calls fail.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use subtle::{Choice, ConstantTimeEq};

use crate::cb::ChannelBindings;
use crate::creds::{DEFAULT_ITERATIONS, HashAlg, SALT_LEN, StoredCredentials};
use crate::{Mechanism, SaslError};

/// Random bytes in the server nonce (base64-encoded on the wire).
const SERVER_NONCE_BYTES: usize = 24;

/// What the client said in client-first-message that the caller needs for the lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The `n=` username with `=2C`/`=3D` unescaped; no further preparation is applied.
    pub username: String,
    /// The GS2 `a=` authorization identity, unescaped; `None` when absent.
    pub authzid: Option<String>,
}

enum State {
    Start,
    GotClientFirst {
        /// gs2-header followed by the channel binding data: what `c=` must decode to.
        expected_cbind: Vec<u8>,
        client_first_bare: String,
        client_nonce: String,
        username: String,
    },
    SentServerFirst {
        expected_cbind: Vec<u8>,
        /// `client-first-message-bare "," server-first-message ","`
        auth_prefix: String,
        nonce: String,
        creds: StoredCredentials,
        fake: bool,
    },
    Done,
    Failed,
}

/// One SCRAM exchange on the server side.
pub struct ScramServer {
    mech: Mechanism,
    alg: HashAlg,
    bindings: ChannelBindings,
    plus_advertised: bool,
    server_nonce: String,
    state: State,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Start => "start",
            State::GotClientFirst { .. } => "got-client-first",
            State::SentServerFirst { .. } => "sent-server-first",
            State::Done => "done",
            State::Failed => "failed",
        };
        f.debug_struct("ScramServer")
            .field("mech", &self.mech)
            .field("plus_advertised", &self.plus_advertised)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The GS2 channel binding flag (RFC 5802 §7 `gs2-cbind-flag`).
enum CbFlag<'a> {
    /// `n`: client does not support channel binding.
    No,
    /// `y`: client supports it but thinks the server does not.
    ClientOnly,
    /// `p=name`: client requires channel binding of this type.
    Type(&'a str),
}

fn malformed(what: &'static str) -> SaslError {
    SaslError::MalformedRequest(what)
}

/// Decodes a `saslname` (RFC 5802 §7): `=2C` → `,`, `=3D` → `=`, any other `=` is an error.
fn unescape_saslname(s: &str) -> Result<String, SaslError> {
    if s.is_empty() {
        return Err(malformed("empty saslname"));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(['=', '\0']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(r) = tail.strip_prefix("=2C") {
            out.push(',');
            rest = r;
        } else if let Some(r) = tail.strip_prefix("=3D") {
            out.push('=');
            rest = r;
        } else if tail.starts_with('\0') {
            return Err(malformed("NUL in saslname"));
        } else {
            return Err(malformed("bad '=' escape in saslname"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `printable = %x21-2B / %x2D-7E` (no comma), at least one character.
fn valid_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, 0x21..=0x2B | 0x2D..=0x7E))
}

/// `cb-name = 1*(ALPHA / DIGIT / "." / "-")`.
fn valid_cb_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// `attr-val = ALPHA "=" value`, for extensions this server ignores.
fn valid_extension(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b'=' && !s.contains('\0')
}

fn decode_b64(s: &str, what: &'static str) -> Result<Vec<u8>, SaslError> {
    B64.decode(s).map_err(|_| malformed(what))
}

/// Parameters for a user that does not exist (or has no credentials for this hash).
///
/// The salt depends only on `fake_secret`, the hash and the username, so repeated probes
/// for the same name see the same salt, as they would for a real account.
fn fake_credentials(alg: HashAlg, username: &str, fake_secret: &[u8]) -> StoredCredentials {
    let label = |what: &[u8]| -> Vec<u8> {
        let name: &[u8] = match alg {
            HashAlg::Sha1 => b"SHA-1",
            HashAlg::Sha256 => b"SHA-256",
            HashAlg::Sha512 => b"SHA-512",
        };
        // SHA-256 for the salt keeps its derivation independent of the mechanism's hash.
        HashAlg::Sha256.hmac(fake_secret, &[b"rookery-sasl fake ", what, b"\0", name, b"\0", username.as_bytes()])
    };
    let mut salt = label(b"salt");
    salt.truncate(SALT_LEN);
    let key_seed = label(b"keys");
    StoredCredentials {
        alg,
        salt,
        iterations: DEFAULT_ITERATIONS,
        stored_key: alg.hmac(&key_seed, &[b"stored"]),
        server_key: alg.hmac(&key_seed, &[b"server"]),
    }
}

impl ScramServer {
    /// Starts an exchange for a SCRAM mechanism.
    ///
    /// `plus_advertised`: whether the server offered any -PLUS mechanism on this connection
    /// (needed for the GS2 `y` downgrade check, RFC 5802 §6). Fails with `InvalidMechanism`
    /// for PLAIN, and for a -PLUS mechanism when `bindings` holds no data at all.
    pub fn new(mech: Mechanism, bindings: ChannelBindings, plus_advertised: bool) -> Result<Self, SaslError> {
        let alg = mech.hash().ok_or(SaslError::InvalidMechanism)?;
        if mech.is_plus() && !bindings.any() {
            return Err(SaslError::InvalidMechanism);
        }
        let mut raw = [0u8; SERVER_NONCE_BYTES];
        getrandom::fill(&mut raw).map_err(|_| SaslError::Internal("random source failed"))?;
        Ok(Self { mech, alg, bindings, plus_advertised, server_nonce: B64.encode(raw), state: State::Start })
    }

    /// The mechanism this exchange runs.
    pub fn mechanism(&self) -> Mechanism {
        self.mech
    }

    /// Whether [`ScramServer::client_final`] has succeeded.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Replaces the random server nonce; only for reproducing published test vectors.
    #[doc(hidden)]
    pub fn set_server_nonce_for_test(&mut self, nonce: &str) {
        self.server_nonce = nonce.to_owned();
    }

    /// Parses client-first-message (GS2 header plus client-first-message-bare) and applies
    /// the channel binding rules. Returns the identities for the credential lookup.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<ClientFirst, SaslError> {
        if !matches!(self.state, State::Start) {
            self.state = State::Failed;
            return Err(SaslError::Internal("client-first-message out of order"));
        }
        match self.parse_client_first(msg) {
            Ok((first, state)) => {
                self.state = state;
                Ok(first)
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    fn parse_client_first(&self, msg: &[u8]) -> Result<(ClientFirst, State), SaslError> {
        let text = std::str::from_utf8(msg).map_err(|_| malformed("client-first-message is not UTF-8"))?;

        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = text.split_once(',').ok_or(malformed("missing GS2 header"))?;
        let flag = match flag {
            "n" => CbFlag::No,
            "y" => CbFlag::ClientOnly,
            _ => match flag.strip_prefix("p=") {
                Some(name) if valid_cb_name(name) => CbFlag::Type(name),
                _ => return Err(malformed("bad GS2 channel binding flag")),
            },
        };
        let (authz, bare) = rest.split_once(',').ok_or(malformed("incomplete GS2 header"))?;
        let authzid = if authz.is_empty() {
            None
        } else {
            let a = authz.strip_prefix("a=").ok_or(malformed("bad GS2 authzid"))?;
            Some(unescape_saslname(a)?)
        };
        let gs2_header = &text[..text.len() - bare.len()];

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut attrs = bare.split(',');
        let user_attr = attrs.next().unwrap_or_default();
        if user_attr.starts_with("m=") {
            return Err(malformed("mandatory extension not supported"));
        }
        let username = unescape_saslname(user_attr.strip_prefix("n=").ok_or(malformed("missing username"))?)?;
        let client_nonce = attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(malformed("missing client nonce"))?;
        if !valid_nonce(client_nonce) {
            return Err(malformed("bad client nonce"));
        }
        if !attrs.all(valid_extension) {
            return Err(malformed("bad extension in client-first-message"));
        }

        // Channel binding policy, RFC 5802 §6.
        let cbind_data: &[u8] = match flag {
            CbFlag::Type(_) if !self.mech.is_plus() => {
                return Err(malformed("channel binding requested with a non-PLUS mechanism"));
            }
            CbFlag::No | CbFlag::ClientOnly if self.mech.is_plus() => {
                return Err(malformed("-PLUS mechanism used without channel binding"));
            }
            // The client could have bound the channel but believed we could not: an
            // attacker stripped the -PLUS mechanisms from our feature list.
            CbFlag::ClientOnly if self.plus_advertised => return Err(SaslError::NotAuthorized),
            CbFlag::No | CbFlag::ClientOnly => &[],
            CbFlag::Type(name) => match self.bindings.lookup(name) {
                Ok(Some(data)) => data,
                Ok(None) | Err(()) => return Err(SaslError::ChannelBindingUnsupported),
            },
        };

        let mut expected_cbind = Vec::with_capacity(gs2_header.len() + cbind_data.len());
        expected_cbind.extend_from_slice(gs2_header.as_bytes());
        expected_cbind.extend_from_slice(cbind_data);

        let first = ClientFirst { username: username.clone(), authzid };
        let state = State::GotClientFirst {
            expected_cbind,
            client_first_bare: bare.to_owned(),
            client_nonce: client_nonce.to_owned(),
            username,
        };
        Ok((first, state))
    }

    /// Produces server-first-message.
    ///
    /// `creds` `None` (unknown user), with another hash than the mechanism's, or
    /// inconsistent: the exchange continues with deterministic fake credentials derived
    /// from `fake_secret` and the username, and fails at [`ScramServer::client_final`] with
    /// `NotAuthorized`, so a client cannot tell whether the account exists.
    ///
    /// Called out of order, it returns an empty message and the exchange fails.
    pub fn server_first(&mut self, creds: Option<StoredCredentials>, fake_secret: &[u8]) -> Vec<u8> {
        let State::GotClientFirst { expected_cbind, client_first_bare, client_nonce, username } =
            std::mem::replace(&mut self.state, State::Failed)
        else {
            return Vec::new();
        };
        let (creds, fake) = match creds {
            Some(c) if c.alg == self.alg && c.is_usable() => (c, false),
            _ => (fake_credentials(self.alg, &username, fake_secret), true),
        };
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&creds.salt), creds.iterations);
        self.state = State::SentServerFirst {
            expected_cbind,
            auth_prefix: format!("{client_first_bare},{server_first},"),
            nonce,
            creds,
            fake,
        };
        server_first.into_bytes()
    }

    /// Verifies client-final-message: channel binding data, nonce and proof. Returns
    /// server-final-message (`v=...`) on success.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let State::SentServerFirst { expected_cbind, auth_prefix, nonce, creds, fake } =
            std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(SaslError::Internal("client-final-message out of order"));
        };
        let text = std::str::from_utf8(msg).map_err(|_| malformed("client-final-message is not UTF-8"))?;

        // client-final-message = client-final-message-without-proof "," proof
        let (without_proof, proof_b64) = text.rsplit_once(",p=").ok_or(malformed("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind_b64 =
            attrs.next().and_then(|a| a.strip_prefix("c=")).ok_or(malformed("missing channel binding attribute"))?;
        let final_nonce = attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(malformed("missing nonce"))?;
        if !attrs.all(valid_extension) {
            return Err(malformed("bad extension in client-final-message"));
        }
        let cbind = decode_b64(cbind_b64, "bad base64 in channel binding attribute")?;
        let proof = decode_b64(proof_b64, "bad base64 in proof")?;

        if !bool::from(cbind.ct_eq(&expected_cbind)) {
            return Err(SaslError::ChannelBindingMismatch);
        }
        if final_nonce != nonce {
            return Err(SaslError::NotAuthorized);
        }
        if proof.len() != self.alg.output_len() {
            return Err(malformed("proof has the wrong length"));
        }

        let auth_message = [auth_prefix.as_bytes(), without_proof.as_bytes()].concat();
        let client_signature = self.alg.hmac(&creds.stored_key, &[&auth_message]);
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(p, s)| p ^ s).collect();
        let computed = self.alg.hash(&client_key);
        let ok = computed.ct_eq(&creds.stored_key) & !Choice::from(u8::from(fake));
        if !bool::from(ok) {
            return Err(SaslError::NotAuthorized);
        }

        let server_signature = self.alg.hmac(&creds.server_key, &[&auth_message]);
        self.state = State::Done;
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests;
