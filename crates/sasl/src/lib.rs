//! rookery-sasl: the server side of SASL for XMPP.
//!
//! Owns: the SASL mechanisms the server offers — SCRAM-SHA-1, SCRAM-SHA-256, SCRAM-SHA-512,
//! their -PLUS variants with `tls-exporter` and `tls-server-end-point` channel binding, and
//! PLAIN — plus derivation of the stored SCRAM credentials (salt, iterations, StoredKey,
//! ServerKey; never the password) and the mapping of failures to RFC 6120 §6.5 conditions.
//!
//! Must not touch: I/O, sockets or TLS (channel binding data is handed in), storage (callers
//! look credentials up and persist them), XML and the base64 of the `<auth/>`/`<challenge/>`
//! elements (the stream layer does those), and authorization policy for authzids.
//!
//! Specs:
//! - RFC 5802 §3 (algorithm), §5 (exchange, example), §6 (channel binding), §7 (syntax)
//! - RFC 7677 (SCRAM-SHA-256), and the same construction for SCRAM-SHA-512
//! - RFC 5929 §4 (`tls-server-end-point`), RFC 9266 (`tls-exporter`)
//! - RFC 4616 (PLAIN), RFC 4422 (SASL framework)
//! - RFC 6120 §6.4–§6.5 (SASL in XMPP, failure conditions)
//! - RFC 8265 §4.2 (OpaqueString, replacing SASLprep for passwords)

mod cb;
mod creds;
mod plain;
mod scram;

pub use cb::{ChannelBindings, TLS_EXPORTER, TLS_SERVER_END_POINT, tls_server_end_point};
pub use creds::{DEFAULT_ITERATIONS, HashAlg, StoredCredentials, derive_credentials, new_credentials, verify_password};
pub use plain::{PlainRequest, parse_plain};
pub use scram::{ClientFirst, ScramServer};

/// A SASL mechanism this server implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// SCRAM-SHA-1 (RFC 5802).
    ScramSha1,
    /// SCRAM-SHA-1-PLUS (RFC 5802 with channel binding).
    ScramSha1Plus,
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-256-PLUS (RFC 7677 with channel binding).
    ScramSha256Plus,
    /// SCRAM-SHA-512.
    ScramSha512,
    /// SCRAM-SHA-512-PLUS.
    ScramSha512Plus,
    /// PLAIN (RFC 4616).
    Plain,
}

impl Mechanism {
    /// Every mechanism, strongest first: the order to advertise them in.
    pub const ALL: [Mechanism; 7] = [
        Mechanism::ScramSha512Plus,
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha512,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// The IANA-registered mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::ScramSha512Plus => "SCRAM-SHA-512-PLUS",
            Mechanism::Plain => "PLAIN",
        }
    }

    /// Looks a mechanism up by its exact name as sent in `<auth mechanism='...'/>`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The SCRAM hash, or `None` for PLAIN.
    pub fn hash(self) -> Option<HashAlg> {
        match self {
            Mechanism::ScramSha1 | Mechanism::ScramSha1Plus => Some(HashAlg::Sha1),
            Mechanism::ScramSha256 | Mechanism::ScramSha256Plus => Some(HashAlg::Sha256),
            Mechanism::ScramSha512 | Mechanism::ScramSha512Plus => Some(HashAlg::Sha512),
            Mechanism::Plain => None,
        }
    }

    /// Whether this is a channel-binding (-PLUS) mechanism.
    pub fn is_plus(self) -> bool {
        matches!(self, Mechanism::ScramSha1Plus | Mechanism::ScramSha256Plus | Mechanism::ScramSha512Plus)
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an authentication attempt failed. [`SaslError::condition`] gives the RFC 6120 §6.5
/// element to send; the `Display` text is for logs and never goes on the wire.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// The message does not follow the mechanism's syntax.
    #[error("malformed SASL request: {0}")]
    MalformedRequest(&'static str),
    /// Wrong credentials, unknown user, nonce mismatch or a channel binding downgrade.
    #[error("not authorized")]
    NotAuthorized,
    /// The authzid is malformed or the user may not act as it.
    #[error("invalid authzid")]
    InvalidAuthzid,
    /// The mechanism is unknown or not offered on this connection.
    #[error("invalid mechanism")]
    InvalidMechanism,
    /// The client asked for a channel binding type this connection cannot provide.
    #[error("channel binding type not supported")]
    ChannelBindingUnsupported,
    /// The client's channel binding data differs from the server's.
    #[error("channel binding data mismatch")]
    ChannelBindingMismatch,
    /// The client sent `<abort/>`.
    #[error("aborted by the client")]
    Aborted,
    /// The account exists but is disabled.
    #[error("account disabled")]
    AccountDisabled,
    /// The credentials have expired.
    #[error("credentials expired")]
    CredentialsExpired,
    /// The mechanism (e.g. PLAIN) requires an encrypted stream.
    #[error("encryption required")]
    EncryptionRequired,
    /// The `<auth/>`/`<response/>` payload was not valid base64.
    #[error("incorrect encoding")]
    IncorrectEncoding,
    /// Policy requires a stronger mechanism than the one chosen.
    #[error("mechanism too weak")]
    MechanismTooWeak,
    /// A server-side problem (random source, call order); the client may retry.
    #[error("internal SASL error: {0}")]
    Internal(&'static str),
}

impl SaslError {
    /// The RFC 6120 §6.5 defined condition for a `<failure/>` element.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslError::MalformedRequest(_) => "malformed-request",
            // RFC 6120 has no channel binding condition; RFC 5802 §7 server-error values
            // are not sent, so these collapse into not-authorized.
            SaslError::NotAuthorized | SaslError::ChannelBindingUnsupported | SaslError::ChannelBindingMismatch => {
                "not-authorized"
            }
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::InvalidMechanism => "invalid-mechanism",
            SaslError::Aborted => "aborted",
            SaslError::AccountDisabled => "account-disabled",
            SaslError::CredentialsExpired => "credentials-expired",
            SaslError::EncryptionRequired => "encryption-required",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::MechanismTooWeak => "mechanism-too-weak",
            SaslError::Internal(_) => "temporary-auth-failure",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn mechanism_names_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
            assert_eq!(m.to_string(), m.name());
            assert_eq!(m.is_plus(), m.name().ends_with("-PLUS"));
            assert_eq!(m.hash().is_none(), m == Mechanism::Plain);
        }
        assert_eq!(Mechanism::from_name("scram-sha-1"), None);
        assert_eq!(Mechanism::from_name("SCRAM-SHA-384"), None);
        assert_eq!(Mechanism::from_name(""), None);
    }

    #[test]
    fn strongest_first() {
        let names: Vec<_> = Mechanism::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "SCRAM-SHA-512-PLUS",
                "SCRAM-SHA-256-PLUS",
                "SCRAM-SHA-1-PLUS",
                "SCRAM-SHA-512",
                "SCRAM-SHA-256",
                "SCRAM-SHA-1",
                "PLAIN"
            ]
        );
        assert_eq!(Mechanism::ScramSha256Plus.hash(), Some(HashAlg::Sha256));
    }

    #[test]
    fn conditions() {
        assert_eq!(SaslError::MalformedRequest("x").condition(), "malformed-request");
        assert_eq!(SaslError::NotAuthorized.condition(), "not-authorized");
        assert_eq!(SaslError::ChannelBindingMismatch.condition(), "not-authorized");
        assert_eq!(SaslError::ChannelBindingUnsupported.condition(), "not-authorized");
        assert_eq!(SaslError::InvalidAuthzid.condition(), "invalid-authzid");
        assert_eq!(SaslError::InvalidMechanism.condition(), "invalid-mechanism");
        assert_eq!(SaslError::EncryptionRequired.condition(), "encryption-required");
        assert_eq!(SaslError::Internal("x").condition(), "temporary-auth-failure");
    }
}
