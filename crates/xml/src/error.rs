//! Errors of the XML layer. Each variant names the RFC 6120 stream error condition the
//! caller must send; the mapping to XML happens in the stanza crate, never here, and the
//! `&'static str` details are for logs only (internal error text never goes on the wire).

/// Why a stream (or an element) was rejected.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// XML 1.0 or Namespaces well-formedness violated: `<not-well-formed/>`.
    #[error("not well-formed: {0}")]
    NotWellFormed(&'static str),
    /// A construct RFC 6120 §11.1 forbids (comments, PIs, DTDs, entity references other
    /// than the five predefined ones): `<restricted-xml/>`.
    #[error("restricted XML: {0}")]
    Restricted(&'static str),
    /// Element over `max_stanza_bytes` or stream header over `max_header_bytes`:
    /// `<policy-violation/>`.
    #[error("element or header too large")]
    TooLarge,
    /// Nesting deeper than `max_depth`: `<policy-violation/>`.
    #[error("elements nested too deeply")]
    TooDeep,
    /// More than `max_attrs` attributes on one start tag: `<policy-violation/>`.
    #[error("too many attributes")]
    TooManyAttributes,
    /// An element or attribute prefix with no namespace declaration in scope:
    /// `<not-well-formed/>` (RFC 6120 §11.2 requires namespace well-formedness).
    #[error("undeclared namespace prefix")]
    UndeclaredPrefix,
    /// Invalid UTF-8, or an XML declaration naming another encoding:
    /// `<not-well-formed/>` or `<unsupported-encoding/>` (RFC 6120 §11.6).
    #[error("bad character encoding")]
    BadEncoding,
}
