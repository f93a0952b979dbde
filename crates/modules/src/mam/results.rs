//! The wire form of MAM answers: one `<message/>` per archived item (XEP-0313 §4.2,
//! wrapping the stored stanza in a XEP-0297 `<forwarded/>` with a XEP-0203 `<delay/>`),
//! the closing `<fin/>` with its RSM `<set/>` (XEP-0313 §4.3, XEP-0059 §2), and archive
//! metadata (XEP-0313 §5).
//!
//! Owns: byte-level assembly of result stanzas. The stored stanza is copied as bytes (no
//! tree is built from it); only its start tag may gain `xmlns='jabber:client'`.
//! Must not touch: query parsing, the store.

use super::query::{RSM, format_micros};
use bytes::Bytes;
use rookery_jid::{BareJid, FullJid};
use rookery_stanza::{ns, push_attr};
use rookery_storage::{ArchiveEntry, ArchiveId};
use rookery_xml::{Element, RawElement};

use rookery_stanza::ns::FORWARD;

/// The stored stanza ready to sit inside `<forwarded/>`, or None when the bytes are not
/// one well-formed element.
///
/// XEP-0297 §3 rule 3: the forwarded stanza keeps its namespace. Stanzas are stored as the
/// client sent them, usually without `xmlns` (the stream supplied `jabber:client`); inside
/// `<forwarded xmlns='urn:xmpp:forward:0'>` that would put them in the forward namespace,
/// so a root without its own default namespace gets `xmlns='jabber:client'`.
pub(super) fn forwardable(stanza: &Bytes) -> Option<Bytes> {
    // Framed with no namespace in scope, so a root without its own declaration shows up
    // as namespace "".
    let raw = RawElement::from_bytes(stanza.clone(), "").ok()?;
    if raw.prefix.is_none() && raw.ns.is_empty() {
        return Some(raw.rewrite_attrs(&[("xmlns", Some(ns::CLIENT))]));
    }
    Some(raw.raw)
}

/// One result message (§4.2). `stanza` is None when the stored copy is unusable: §3.2
/// lets the server omit the message from `<forwarded/>`, keeping id and timestamp.
pub(super) fn result_message(
    to: &FullJid,
    from: &BareJid,
    msg_id: &str,
    query_ns: &str,
    queryid: Option<&str>,
    entry: &ArchiveEntry,
    stanza: Option<&[u8]>,
) -> Bytes {
    let mut out = Vec::with_capacity(entry.stanza.len() + 320);
    out.extend_from_slice(b"<message");
    push_attr(&mut out, "to", to.as_str());
    push_attr(&mut out, "from", from.as_str());
    push_attr(&mut out, "id", msg_id);
    out.extend_from_slice(b"><result");
    push_attr(&mut out, "xmlns", query_ns);
    if let Some(q) = queryid {
        push_attr(&mut out, "queryid", q);
    }
    push_attr(&mut out, "id", &entry.id.encode());
    out.extend_from_slice(b"><forwarded");
    push_attr(&mut out, "xmlns", FORWARD);
    out.extend_from_slice(b"><delay");
    push_attr(&mut out, "xmlns", ns::DELAY);
    push_attr(&mut out, "stamp", &format_micros(entry.id.micros()));
    out.extend_from_slice(b"/>");
    if let Some(s) = stanza {
        out.extend_from_slice(s);
    }
    out.extend_from_slice(b"</forwarded></result></message>");
    Bytes::from(out)
}

/// What the `<fin/>` reports about the page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Fin {
    pub complete: bool,
    /// Oldest and newest id of the page, None for an empty page (XEP-0059 §2.2).
    pub first_last: Option<(ArchiveId, ArchiveId)>,
    /// Position of the first item in the full result set, when known exactly.
    pub index: Option<u64>,
    /// Size of the full result set, when counted.
    pub count: Option<u64>,
}

/// `<fin complete=''><set xmlns=rsm>...</set></fin>` (§4.3; the same shape in mam:1).
pub(super) fn fin(query_ns: &str, f: &Fin) -> Element {
    let mut set = Element::new("set", RSM);
    if let Some((first, last)) = f.first_last {
        let mut el = Element::new("first", RSM).text(first.encode());
        if let Some(i) = f.index {
            el.set_attr("index", i.to_string());
        }
        set.push_child(el);
        set.push_child(Element::new("last", RSM).text(last.encode()));
    }
    if let Some(c) = f.count {
        set.push_child(Element::new("count", RSM).text(c.to_string()));
    }
    Element::new("fin", query_ns).attr("complete", if f.complete { "true" } else { "false" }).child(set)
}

/// §5: `<metadata/>` with the first and last archived message, empty for an empty archive.
pub(super) fn metadata(query_ns: &str, bounds: Option<(ArchiveId, ArchiveId)>) -> Element {
    let mut el = Element::new("metadata", query_ns);
    if let Some((first, last)) = bounds {
        for (name, id) in [("start", first), ("end", last)] {
            el.push_child(
                Element::new(name, query_ns).attr("id", id.encode()).attr("timestamp", format_micros(id.micros())),
            );
        }
    }
    el
}
