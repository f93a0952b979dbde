//! Stanzas as they travel through Rookery: a parsed header plus the raw bytes
//! (`Envelope`), and the RFC 6120 error vocabulary (stream errors §4.9, stanza errors §8.3).
//!
//! Owns: stanza kinds and types, the envelope, error conditions and their wire form,
//! small builders for the replies the server itself generates.
//! Must not touch: sockets, storage, routing decisions. Payloads are decoded on demand with
//! `rookery_xml::Element` only by the modules that need them, never on the routing path.

pub mod datetime;
pub mod error;
pub mod message;
pub mod ns;

use bytes::Bytes;
use rookery_jid::{FullJid, Jid};
use rookery_xml::RawElement;

pub use datetime::datetime;
pub use error::{Condition, ErrorType, StanzaError, StreamCondition, StreamError};

/// RFC 6120 §8.2: the three stanza kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Message,
    Presence,
    Iq,
}

impl Kind {
    pub fn from_name(name: &str) -> Option<Kind> {
        match name {
            "message" => Some(Kind::Message),
            "presence" => Some(Kind::Presence),
            "iq" => Some(Kind::Iq),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Presence => "presence",
            Kind::Iq => "iq",
        }
    }
}

/// RFC 6121 §4.7.2.3: a presence's `<priority/>`, an integer clamped to -128..=127;
/// absent (or unreadable) means 0. Parses the element only when the bytes mention it.
pub fn presence_priority(env: &Envelope) -> i8 {
    if env.el.self_closing || !env.el.raw.windows(8).any(|w| w == b"priority") {
        return 0;
    }
    env.el
        .parse()
        .ok()
        .and_then(|e| e.get_child("priority", ns::CLIENT).map(|p| p.text_content()))
        .and_then(|t| t.trim().parse::<i64>().ok())
        .map(|v| v.clamp(-128, 127) as i8)
        .unwrap_or(0)
}

/// A stanza accepted from a bound session: `from` is already stamped with the sender's
/// full JID (RFC 6120 §8.1.2.1) and `to` is resolved (absent `to` means the sender's
/// own bare JID, RFC 6120 §10.3).
#[derive(Debug, Clone)]
pub struct Envelope {
    pub kind: Kind,
    pub from: Jid,
    pub to: Jid,
    /// The element with its header attributes and raw bytes.
    pub el: RawElement,
}

impl Envelope {
    pub fn stanza_type(&self) -> Option<&str> {
        self.el.kind.as_deref()
    }
    pub fn id(&self) -> Option<&str> {
        self.el.id.as_deref()
    }
    pub fn raw(&self) -> &Bytes {
        &self.el.raw
    }
    /// Bytes of this stanza with `to` and `from` set to the envelope's values. The
    /// header is re-encoded only when they differ from what the bytes already say.
    pub fn wire(&self) -> Bytes {
        let from_ok = self.el.from.as_deref() == Some(self.from.as_str());
        let to_ok = self.el.to.as_deref() == Some(self.to.as_str());
        if from_ok && to_ok {
            return self.el.raw.clone();
        }
        self.el.rewrite_attrs(&[("from", Some(self.from.as_str())), ("to", Some(self.to.as_str()))])
    }
    /// Like [`Envelope::wire`] but addressed to a specific recipient (message to a bare
    /// JID delivered to a full JID keeps the bare `to`, RFC 6121 §8.5.2, so this is only
    /// used where the spec asks to readdress).
    pub fn wire_to(&self, to: &Jid) -> Bytes {
        self.el.rewrite_attrs(&[("from", Some(self.from.as_str())), ("to", Some(to.as_str()))])
    }
    /// An error reply to this stanza (RFC 6120 §8.3): addressed back to the sender,
    /// from the original recipient, with the same id. Returns None for stanzas that must
    /// not be answered with an error (type="error", RFC 6120 §8.3.1).
    pub fn error_reply(&self, err: &StanzaError) -> Option<Bytes> {
        if self.stanza_type() == Some("error") {
            return None;
        }
        Some(error_stanza(self.kind, Some(&self.to), &self.from, self.id(), err))
    }
}

/// Serialises an error stanza of the given kind.
pub fn error_stanza(kind: Kind, from: Option<&Jid>, to: &Jid, id: Option<&str>, err: &StanzaError) -> Bytes {
    let mut out = Vec::with_capacity(192);
    out.push(b'<');
    out.extend_from_slice(kind.name().as_bytes());
    if let Some(f) = from {
        push_attr(&mut out, "from", f.as_str());
    }
    push_attr(&mut out, "to", to.as_str());
    if let Some(id) = id {
        push_attr(&mut out, "id", id);
    }
    push_attr(&mut out, "type", "error");
    out.push(b'>');
    err.write_to(&mut out);
    out.extend_from_slice(b"</");
    out.extend_from_slice(kind.name().as_bytes());
    out.push(b'>');
    Bytes::from(out)
}

/// Whether `needle` occurs in `hay`: the byte scan the routing path uses to look into a
/// stanza without parsing it (a namespace, a child's start tag).
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Appends ` name='value'` with the value escaped.
pub fn push_attr(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"=\"");
    out.extend_from_slice(rookery_xml::escape_attr(value).as_bytes());
    out.push(b'"');
}

/// An IQ result with an optional payload element.
pub fn iq_result(from: Option<&Jid>, to: &Jid, id: &str, payload: Option<&rookery_xml::Element>) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"<iq");
    if let Some(f) = from {
        push_attr(&mut out, "from", f.as_str());
    }
    push_attr(&mut out, "to", to.as_str());
    push_attr(&mut out, "id", id);
    push_attr(&mut out, "type", "result");
    match payload {
        Some(p) => {
            out.push(b'>');
            p.write_to(&mut out, ns::CLIENT);
            out.extend_from_slice(b"</iq>");
        }
        None => out.extend_from_slice(b"/>"),
    }
    Bytes::from(out)
}

/// An IQ request (get/set) generated by the server, e.g. a roster push (RFC 6121 §2.1.6).
pub fn iq_request(kind: &str, from: Option<&Jid>, to: &FullJid, id: &str, payload: &rookery_xml::Element) -> Bytes {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"<iq");
    if let Some(f) = from {
        push_attr(&mut out, "from", f.as_str());
    }
    push_attr(&mut out, "to", to.as_str());
    push_attr(&mut out, "id", id);
    push_attr(&mut out, "type", kind);
    out.push(b'>');
    payload.write_to(&mut out, ns::CLIENT);
    out.extend_from_slice(b"</iq>");
    Bytes::from(out)
}

/// A presence stanza generated by the server (probes, unavailable on disconnect,
/// subscription state changes).
pub fn presence(from: &Jid, to: &Jid, kind: Option<&str>) -> Bytes {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"<presence");
    push_attr(&mut out, "from", from.as_str());
    push_attr(&mut out, "to", to.as_str());
    if let Some(k) = kind {
        push_attr(&mut out, "type", k);
    }
    out.extend_from_slice(b"/>");
    Bytes::from(out)
}

#[cfg(test)]
mod tests;
