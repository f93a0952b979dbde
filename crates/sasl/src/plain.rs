//! The PLAIN mechanism message (RFC 4616 §2).
//!
//! Owns: splitting `[authzid] NUL authcid NUL passwd` into its fields. Checking the password
//! is [`crate::verify_password`]; whether PLAIN may be offered at all (only over TLS,
//! RFC 6120 §6.4.7 and §13.8) is the caller's decision.
//!
//! Must not touch: storage, I/O, the identity rules for authzid (the caller checks that the
//! authzid, if any, is a JID the authenticated user may act as, RFC 6120 §6.4.6).

use std::fmt;

use crate::SaslError;

/// A decoded PLAIN initial response.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainRequest {
    /// Authorization identity; `None` when the client sent none (empty field).
    pub authzid: Option<String>,
    /// Authentication identity (the username), as sent.
    pub authcid: String,
    /// The password, as sent; [`crate::verify_password`] prepares it.
    pub password: String,
}

impl fmt::Debug for PlainRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainRequest")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parses a PLAIN message: `[authzid] NUL authcid NUL passwd`, all UTF-8, no NUL inside a
/// field, authcid and passwd non-empty.
pub fn parse_plain(msg: &[u8]) -> Result<PlainRequest, SaslError> {
    let text = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest("PLAIN message is not UTF-8"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MalformedRequest("PLAIN message must have exactly three NUL-separated fields"));
    };
    if authcid.is_empty() {
        return Err(SaslError::MalformedRequest("PLAIN authcid is empty"));
    }
    if password.is_empty() {
        return Err(SaslError::MalformedRequest("PLAIN password is empty"));
    }
    Ok(PlainRequest {
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        authcid: authcid.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn without_authzid() {
        let r = parse_plain(b"\0tim\0tanstaaftanstaaf").unwrap();
        assert_eq!(r.authzid, None);
        assert_eq!(r.authcid, "tim");
        assert_eq!(r.password, "tanstaaftanstaaf");
    }

    #[test]
    fn with_authzid() {
        // RFC 4616 §4 example.
        let r = parse_plain(b"Ursel\0Kurt\0xipj3plmq").unwrap();
        assert_eq!(r.authzid.as_deref(), Some("Ursel"));
        assert_eq!(r.authcid, "Kurt");
        assert_eq!(r.password, "xipj3plmq");
    }

    #[test]
    fn utf8_fields() {
        let r = parse_plain("jürgen@example.com\0jürgen\0pässwörd ok".as_bytes()).unwrap();
        assert_eq!(r.authzid.as_deref(), Some("jürgen@example.com"));
        assert_eq!(r.authcid, "jürgen");
        assert_eq!(r.password, "pässwörd ok");
    }

    #[test]
    fn empty_fields() {
        for msg in [&b"\0\0pw"[..], b"az\0\0pw", b"\0user\0", b"az\0user\0", b"\0\0", b""] {
            assert!(matches!(parse_plain(msg), Err(SaslError::MalformedRequest(_))), "{msg:?}");
        }
    }

    #[test]
    fn wrong_number_of_nuls() {
        for msg in [&b"user"[..], b"\0user", b"user\0pw", b"\0user\0pw\0", b"\0us\0er\0pw", b"a\0b\0c\0d"] {
            assert!(matches!(parse_plain(msg), Err(SaslError::MalformedRequest(_))), "{msg:?}");
        }
    }

    #[test]
    fn invalid_utf8() {
        assert!(matches!(parse_plain(b"\0user\0\xff\xfe"), Err(SaslError::MalformedRequest(_))));
    }

    #[test]
    fn debug_hides_password() {
        let r = parse_plain(b"\0tim\0secret").unwrap();
        assert!(!format!("{r:?}").contains("secret"));
    }
}
