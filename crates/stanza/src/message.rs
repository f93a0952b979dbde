//! A message on the routing path, looked at without building a tree unless needed:
//! the RFC 6121 §5.2.2 type, one pass over the raw bytes for the few namespaces the
//! server's rules care about (`Scan`), the direct-children facts (`Facts`, parsed at most
//! once), and the self-contained form used for storing and forwarding
//! (`MessageView::standalone`).
//!
//! Owns: inspection of message payloads (XEP-0334 hints §4, XEP-0280 §6.1 and §9
//! markers, XEP-0359 §3 stanza-ids, end-to-end encryption markers), and the byte-level
//! edits shared by every feature: adding a child (`insert_child`, `with_delay` for
//! XEP-0203 §3).
//! Must not touch: decisions. Which messages are archived, copied or stored is the
//! business of the modules that read these facts.
//!
//! Keeping the routing path light (DESIGN §6.2): one pass over the raw bytes looks for
//! `<body` and for the namespaces that matter, without allocating. The element is parsed
//! into a tree only when that pass found something to confirm, since a marker in the
//! bytes may sit deeper than a direct child. So chat states, receipts and markers are
//! never parsed. A namespace written with a character reference, or declared on the
//! stream header, is treated as "maybe" so it cannot slip past a security check.

use crate::{Envelope, ns};
use bytes::Bytes;
use rookery_xml::{Element, Node};

/// RFC 6121 §5.2.2 message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    Normal,
    Chat,
    Groupchat,
    Headline,
    Error,
}

impl MsgType {
    pub fn of(env: &Envelope) -> MsgType {
        match env.stanza_type() {
            Some("chat") => MsgType::Chat,
            Some("groupchat") => MsgType::Groupchat,
            Some("headline") => MsgType::Headline,
            Some("error") => MsgType::Error,
            // Unknown types are treated as normal (RFC 6121 §5.2.2).
            _ => MsgType::Normal,
        }
    }
}

/// What one pass over the raw bytes saw. It may report things that turn out not to be
/// direct children; it does not miss any (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scan(u16);

impl Scan {
    pub const BODY: u16 = 1;
    pub const HINTS: u16 = 1 << 1;
    pub const E2E: u16 = 1 << 2;
    pub const SID: u16 = 1 << 3;
    pub const CARBONS: u16 = 1 << 4;
    pub const IM: u16 = 1 << 5;
    pub const MUC: u16 = 1 << 6;
    /// A namespace the pass cannot judge (written with a reference): parse to know.
    pub const UNSURE: u16 = 1 << 7;

    /// True when any of `bits` (or `UNSURE`) was seen.
    pub fn maybe(self, bits: u16) -> bool {
        self.0 & (bits | Self::UNSURE) != 0
    }

    pub fn of(el: &rookery_xml::RawElement) -> Scan {
        let mut flags = 0;
        for (_, uri) in el.inherited_ns.iter() {
            flags |= ns_flag(uri.as_bytes());
        }
        if el.self_closing {
            return Scan(flags);
        }
        let raw = &el.raw[..];
        let mut i = el.start_tag_len.min(raw.len());
        // The root's own declarations count too (a prefix declared there).
        flags |= scan_decls(&raw[..i]);
        while i < raw.len() {
            match raw[i] {
                b'<' if raw[i..].starts_with(b"<body") => {
                    if matches!(raw.get(i + 5), Some(b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/')) {
                        flags |= Scan::BODY;
                    }
                    i += 5;
                }
                b'x' if raw[i..].starts_with(b"xmlns") => {
                    let (f, next) = decl_at(raw, i);
                    flags |= f;
                    i = next;
                }
                _ => i += 1,
            }
        }
        Scan(flags)
    }
}

fn scan_decls(tag: &[u8]) -> u16 {
    let mut flags = 0;
    let mut i = 0;
    while i < tag.len() {
        if tag[i..].starts_with(b"xmlns") {
            let (f, next) = decl_at(tag, i);
            flags |= f;
            i = next;
        } else {
            i += 1;
        }
    }
    flags
}

/// Reads `xmlns[:p] = 'uri'` at `i`; returns the flag of the uri and where to go on.
fn decl_at(raw: &[u8], i: usize) -> (u16, usize) {
    let mut j = i + 5;
    if raw.get(j) == Some(&b':') {
        j += 1;
        while raw.get(j).is_some_and(|c| !matches!(c, b'=' | b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/')) {
            j += 1;
        }
    }
    while raw.get(j).is_some_and(|c| c.is_ascii_whitespace()) {
        j += 1;
    }
    if raw.get(j) != Some(&b'=') {
        return (0, j.max(i + 1));
    }
    j += 1;
    while raw.get(j).is_some_and(|c| c.is_ascii_whitespace()) {
        j += 1;
    }
    let Some(&q) = raw.get(j).filter(|&&q| q == b'"' || q == b'\'') else { return (0, j) };
    let start = j + 1;
    let Some(len) = raw.get(start..).and_then(|r| r.iter().position(|&c| c == q)) else { return (0, raw.len()) };
    (ns_flag(&raw[start..start + len]), start + len + 1)
}

fn ns_flag(uri: &[u8]) -> u16 {
    if uri.contains(&b'&') {
        return Scan::UNSURE;
    }
    match uri {
        u if u == ns::HINTS.as_bytes() => Scan::HINTS,
        u if u == ns::OMEMO_LEGACY.as_bytes() || u == ns::OMEMO.as_bytes() || u == ns::OPENPGP.as_bytes() => Scan::E2E,
        u if u == ns::SID.as_bytes() => Scan::SID,
        u if u == ns::CARBONS.as_bytes() => Scan::CARBONS,
        u if u == ns::MUC_USER.as_bytes() => Scan::MUC | Scan::IM,
        u if u == ns::RECEIPTS.as_bytes()
            || u == ns::CHATSTATES.as_bytes()
            || u == ns::MARKERS.as_bytes()
            || u == ns::CONFERENCE.as_bytes() =>
        {
            Scan::IM
        }
        _ => 0,
    }
}

/// What the direct children of a message say, from the parsed tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    pub body: bool,
    pub e2e: bool,
    pub store: bool,
    pub no_store: bool,
    pub no_permanent_store: bool,
    pub no_copy: bool,
    /// XEP-0280 §9 `<private/>`.
    pub private: bool,
    /// A `<sent/>` or `<received/>` carbons wrapper (XEP-0280 §7, §8).
    pub carbon: bool,
    /// A MAM `<result/>` (XEP-0313 §4.2).
    pub mam_result: bool,
    /// Payloads XEP-0280 §6.1 counts as instant messaging (receipts, chat states, markers,
    /// MUC invitations).
    pub im: bool,
    /// MUC user data without an invitation: a private message from a room occupant.
    pub muc_pm: bool,
}

impl Facts {
    pub fn of(el: &Element) -> Facts {
        let mut f = Facts::default();
        for c in el.elements() {
            match (c.ns.as_str(), c.name.as_str()) {
                (ns::CLIENT, "body") => f.body = true,
                (ns::OMEMO_LEGACY | ns::OMEMO, "encrypted") | (ns::OPENPGP, "openpgp") => f.e2e = true,
                (ns::HINTS, "store") => f.store = true,
                (ns::HINTS, "no-store") => f.no_store = true,
                (ns::HINTS, "no-permanent-store") => f.no_permanent_store = true,
                (ns::HINTS, "no-copy") => f.no_copy = true,
                (ns::CARBONS, "private") => f.private = true,
                (ns::CARBONS, "sent" | "received") => f.carbon = true,
                (ns::RECEIPTS | ns::CHATSTATES | ns::MARKERS, _) | (ns::CONFERENCE, "x") => f.im = true,
                (ns::MUC_USER, "x") => {
                    if c.get_child("invite", ns::MUC_USER).is_some() {
                        f.im = true;
                    } else {
                        f.muc_pm = true;
                    }
                }
                (n, "result") if n.starts_with(ns::MAM_PREFIX) => f.mam_result = true,
                _ => {}
            }
        }
        f
    }

    /// XEP-0313 §6.1.1 with XEP-0334 §4.1, §4.2, §4.4.
    pub fn archivable(&self) -> bool {
        (self.body || self.e2e || self.store)
            && !self.no_store
            && !self.no_permanent_store
            && !self.mam_result
            && !self.carbon
    }
}

/// A message on its way through the router: the envelope, what the byte scan saw, and
/// the tree, parsed at most once and only when asked for.
pub struct MessageView {
    /// Boxed: an envelope is some 300 bytes, and a view moves several times on its way
    /// through the hook events.
    pub env: Box<Envelope>,
    pub scan: Scan,
    tree: Option<Option<Element>>,
    facts: Option<Facts>,
    /// The tree was changed (spoofed stanza-ids removed): bytes come from it.
    rebuilt: bool,
    standalone: Option<Bytes>,
}

impl MessageView {
    pub fn new(env: Envelope) -> Self {
        let scan = Scan::of(&env.el);
        MessageView { env: Box::new(env), scan, tree: None, facts: None, rebuilt: false, standalone: None }
    }

    fn tree(&mut self) -> Option<&mut Element> {
        if self.tree.is_none() {
            let parsed = if self.env.el.self_closing { None } else { self.env.el.parse().ok() };
            self.tree = Some(parsed);
        }
        self.tree.as_mut().and_then(Option::as_mut)
    }

    /// The direct-children facts; parses the element on first use.
    pub fn facts(&mut self) -> Facts {
        if let Some(f) = self.facts {
            return f;
        }
        let f = self.tree().map(|t| Facts::of(t)).unwrap_or_default();
        self.facts = Some(f);
        f
    }

    /// Whether the message carries a carbons `<sent/>`/`<received/>` wrapper.
    pub fn is_carbon_copy(&mut self) -> bool {
        self.scan.maybe(Scan::CARBONS) && self.facts().carbon
    }

    /// XEP-0359 §3 rule 2: removes direct-child `<stanza-id/>`s whose `by` is an address
    /// this server mints ids for; returns how many went.
    pub fn strip_stanza_ids(&mut self, ours: impl Fn(&str) -> bool) -> usize {
        if !self.scan.maybe(Scan::SID) {
            return 0;
        }
        let Some(tree) = self.tree() else { return 0 };
        let before = tree.children.len();
        tree.children.retain(|n| match n {
            Node::Element(c) if c.is("stanza-id", ns::SID) => !c.get_attr("by").is_some_and(&ours),
            _ => true,
        });
        let removed = before - tree.children.len();
        if removed > 0 {
            self.rebuilt = true;
            self.standalone = None;
        }
        removed
    }

    /// The message as it is routed, self-contained: stamped `from`/`to` and
    /// `xmlns='jabber:client'` on the root, so it can be stored or forwarded as is.
    pub fn standalone(&mut self) -> Bytes {
        if let Some(b) = &self.standalone {
            return b.clone();
        }
        let b = if self.rebuilt || uses_stream_prefixes(&self.env.el) {
            let (from, to) = (self.env.from.as_str().to_owned(), self.env.to.as_str().to_owned());
            match self.tree() {
                Some(t) => {
                    t.set_attr("from", from);
                    t.set_attr("to", to);
                    t.to_bytes("")
                }
                None => client_ns(&self.env),
            }
        } else {
            client_ns(&self.env)
        };
        self.standalone = Some(b.clone());
        b
    }

    /// Bytes to deliver when nothing is added to the message.
    pub fn wire(&mut self) -> Bytes {
        if self.rebuilt { self.standalone() } else { self.env.wire() }
    }
}

fn client_ns(env: &Envelope) -> Bytes {
    env.el.rewrite_attrs(&[
        ("from", Some(env.from.as_str())),
        ("to", Some(env.to.as_str())),
        ("xmlns", Some(ns::CLIENT)),
    ])
}

/// Whether the element relies on prefixes declared on the stream header (its own name,
/// or a `p:` matching an inherited prefix), which a byte copy would leave undeclared.
fn uses_stream_prefixes(el: &rookery_xml::RawElement) -> bool {
    if el.prefix.is_some() {
        return true;
    }
    let raw = &el.raw[..];
    el.inherited_ns.iter().filter(|(p, _)| !p.is_empty()).any(|(p, _)| {
        let p = p.as_bytes();
        raw.windows(p.len() + 1).any(|w| &w[..p.len()] == p && w[p.len()] == b':')
    })
}

/// `stanza` with `child` appended as the root's last child.
pub fn insert_child(stanza: &[u8], child: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(stanza.len() + child.len() + 16);
    if let Some(head) = stanza.strip_suffix(b"/>") {
        // Self-closing root: open it and close it after the child.
        let name_len = stanza[1..]
            .iter()
            .position(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>'))
            .unwrap_or(stanza.len() - 1);
        out.extend_from_slice(head);
        out.push(b'>');
        out.extend_from_slice(child);
        out.extend_from_slice(b"</");
        out.extend_from_slice(&stanza[1..1 + name_len]);
        out.push(b'>');
        return Bytes::from(out);
    }
    let Some(close) = stanza.iter().rposition(|&b| b == b'<') else { return Bytes::copy_from_slice(stanza) };
    out.extend_from_slice(&stanza[..close]);
    out.extend_from_slice(child);
    out.extend_from_slice(&stanza[close..]);
    Bytes::from(out)
}

/// Inserts `<delay xmlns='urn:xmpp:delay' from=… stamp=…/>` (XEP-0203 §3) as the last
/// child, unless the stanza already carries one of ours from `from` (a message that was
/// requeued and then stored keeps the first, earlier stamp).
pub fn with_delay(stanza: &[u8], from: &str, stamp_secs: u64) -> Bytes {
    let mut delay = Vec::with_capacity(96);
    delay.extend_from_slice(b"<delay xmlns=\"urn:xmpp:delay\"");
    crate::push_attr(&mut delay, "from", from);
    if crate::contains_bytes(stanza, &delay) {
        return Bytes::copy_from_slice(stanza);
    }
    crate::push_attr(&mut delay, "stamp", &crate::datetime(stamp_secs));
    delay.extend_from_slice(b"/>");
    insert_child(stanza, &delay)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn raw(xml: &str) -> rookery_xml::RawElement {
        rookery_xml::RawElement::from_bytes(Bytes::copy_from_slice(xml.as_bytes()), ns::CLIENT).unwrap()
    }

    #[test]
    fn a_second_delay_from_the_same_server_is_not_added() {
        let once = with_delay(b"<message><body>hi</body></message>", "localhost", 0);
        let twice = with_delay(&once, "localhost", 60);
        assert_eq!(once, twice);
        let s = String::from_utf8(twice.to_vec()).unwrap();
        assert_eq!(s.matches("<delay").count(), 1, "{s}");
        // Another server's stamp does not stop ours.
        let other = with_delay(&once, "example.org", 60);
        assert_eq!(String::from_utf8(other.to_vec()).unwrap().matches("<delay").count(), 2);
    }

    #[test]
    fn scan_sees_bodies_and_namespaces_without_parsing() {
        let s = Scan::of(&raw("<message><body>hi</body></message>"));
        assert_eq!(s, Scan(Scan::BODY));
        let s = Scan::of(&raw("<message><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"));
        assert_eq!(s, Scan(Scan::IM));
        assert!(!s.maybe(Scan::BODY | Scan::E2E | Scan::HINTS));
        let s = Scan::of(&raw("<message><bodyx/><x xmlns = \"urn:xmpp:hints\"/></message>"));
        assert_eq!(s, Scan(Scan::HINTS));
        let s = Scan::of(&raw("<message xmlns:c='urn:xmpp:carbons:2'><c:private/></message>"));
        assert!(s.maybe(Scan::CARBONS));
        let s = Scan::of(&raw("<message><stanza-id xmlns='urn:xmpp:sid&#x3a;0' by='x' id='y'/></message>"));
        assert!(s.maybe(Scan::SID), "a reference makes the scan unsure");
        assert_eq!(Scan::of(&raw("<message/>")), Scan(0));
    }

    #[test]
    fn facts_look_at_direct_children_only() {
        let f = |xml: &str| Facts::of(&raw(xml).parse().unwrap());
        assert!(f("<message><body>x</body></message>").archivable());
        assert!(!f("<message><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>").archivable());
        assert!(!f("<message><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>").archivable());
        assert!(f("<message><store xmlns='urn:xmpp:hints'/></message>").archivable());
        assert!(f("<message><encrypted xmlns='urn:xmpp:omemo:2'/></message>").archivable());
        assert!(f("<message><openpgp xmlns='urn:xmpp:openpgp:0'>x</openpgp></message>").archivable());
        let nested = "<message><result xmlns='urn:xmpp:mam:2'><forwarded xmlns='urn:xmpp:forward:0'>\
                      <message xmlns='jabber:client'><body>x</body></message></forwarded></result></message>";
        assert!(!f(nested).body && f(nested).mam_result && !f(nested).archivable());
        let carbon = "<message><received xmlns='urn:xmpp:carbons:2'/></message>";
        assert!(f(carbon).carbon);
        let html = "<message><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'/></html></message>";
        assert!(!f(html).archivable(), "an XHTML body is not the message body");
        let invite = "<message><x xmlns='http://jabber.org/protocol/muc#user'><invite to='a@b'/></x></message>";
        assert!(f(invite).im && !f(invite).muc_pm);
        assert!(f("<message><x xmlns='http://jabber.org/protocol/muc#user'/></message>").muc_pm);
    }

    #[test]
    fn child_goes_last_also_into_self_closing_roots() {
        assert_eq!(
            &insert_child(b"<message a='1'><body/></message>", b"<x/>")[..],
            b"<message a='1'><body/><x/></message>"
        );
        assert_eq!(&insert_child(b"<message a='1'/>", b"<x/>")[..], b"<message a='1'><x/></message>");
        assert_eq!(&insert_child(b"<message/>", b"<x/>")[..], b"<message><x/></message>");
    }

    #[test]
    fn delay_goes_before_closing_tag() {
        let out = with_delay(b"<message to=\"a@b\"><body>x</body></message>", "b", 0);
        assert_eq!(
            &out[..],
            &b"<message to=\"a@b\"><body>x</body><delay xmlns=\"urn:xmpp:delay\" from=\"b\" stamp=\"1970-01-01T00:00:00Z\"/></message>"[..]
        );
        let out = with_delay(b"<message to=\"a@b\"/>", "b", 0);
        assert_eq!(
            &out[..],
            &b"<message to=\"a@b\"><delay xmlns=\"urn:xmpp:delay\" from=\"b\" stamp=\"1970-01-01T00:00:00Z\"/></message>"[..]
        );
    }
}
