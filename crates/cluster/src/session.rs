//! The edge's own record of its live sessions: conn → full JID (to hand undeliverable
//! stanzas back, RFC 6120 §10) and the presence state a router needs to re-register the
//! session after the registry was reset (RFC 6121 §4: availability, priority, last
//! broadcast presence, directed-presence targets; roster and block-list interest, RFC 6121
//! §2.1.6 and XEP-0191 §3.3; XEP-0280 carbons §4, §5).
//!
//! The state is observed from the stanzas the edge routes, without a tree on the hot path:
//! only a top-level presence without `to` (a broadcast, RFC 6121 §4.2, §4.4) is parsed, and
//! only for its `<priority/>` (§4.7.2.3). An IQ get/set to the user's own account has the
//! name and `xmlns` of its first child read from at most 512 bytes after the start tag;
//! messages are not looked at.
//!
//! Must not touch: routing decisions. This mirrors, and never replaces, what the router
//! keeps in the session registry.

use bytes::Bytes;
use rookery_core::ConnId;
use rookery_jid::{FullJid, Jid};
use rookery_proto::SessionState;
use rookery_stanza::{Envelope, Kind, ns};

/// Same bound as the router's (`services/router/src/presence.rs`).
const MAX_DIRECTED: usize = 1000;
/// How far into an IQ the first child's start tag is looked for.
const CHILD_SCAN_LIMIT: usize = 512;
const CARBONS: &str = "urn:xmpp:carbons:2";

#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    pub jid: FullJid,
    /// Bind confirmed by a router; before that the session is not re-sent on resync.
    pub bound: bool,
    pub priority: i8,
    pub available: bool,
    pub presence: Option<Bytes>,
    pub interested: bool,
    pub blocklist: bool,
    pub carbons: bool,
    pub directed: Vec<Jid>,
}

impl SessionInfo {
    pub fn new(jid: FullJid) -> Self {
        SessionInfo {
            jid,
            bound: false,
            priority: 0,
            available: false,
            presence: None,
            interested: false,
            blocklist: false,
            carbons: false,
            directed: Vec::new(),
        }
    }

    pub fn state(&self, conn: ConnId) -> SessionState {
        SessionState {
            jid: self.jid.clone(),
            conn,
            priority: self.priority,
            available: self.available,
            presence: self.presence.clone(),
            interested: self.interested,
            blocklist: self.blocklist,
            carbons: self.carbons,
            directed: self.directed.clone(),
        }
    }

    /// Updates the record from a stanza this session sends.
    pub fn observe(&mut self, env: &Envelope) {
        match env.kind {
            Kind::Presence => self.observe_presence(env),
            Kind::Iq => self.observe_iq(env),
            Kind::Message => {}
        }
    }

    fn observe_presence(&mut self, env: &Envelope) {
        let unavailable = match env.stanza_type() {
            None => false,
            Some("unavailable") => true,
            _ => return,
        };
        if env.el.to.is_some() {
            // RFC 6121 §4.6: directed presence.
            self.directed.retain(|d| d != &env.to);
            if !unavailable {
                if self.directed.len() >= MAX_DIRECTED {
                    self.directed.remove(0);
                }
                self.directed.push(env.to.clone());
            }
            return;
        }
        if unavailable {
            self.available = false;
            self.presence = None;
            self.directed.clear();
        } else {
            self.available = true;
            self.priority = priority_of(env);
            // Stored the way the router stores it: `from` stamped, no `to`.
            self.presence = Some(env.el.rewrite_attrs(&[("from", Some(self.jid.as_str())), ("to", None)]));
        }
    }

    fn observe_iq(&mut self, env: &Envelope) {
        let kind = env.stanza_type();
        if !matches!(kind, Some("get" | "set")) {
            return;
        }
        let own = match env.el.to.as_deref() {
            None => true,
            Some(_) => env.to.is_bare() && (env.to.as_str() == self.jid.bare_str() || env.to.node().is_none()),
        };
        if !own {
            return;
        }
        let Some((name, xmlns)) = first_child(&env.el.raw[..], env.el.start_tag_len) else { return };
        match (kind, name, xmlns) {
            (Some("get"), "query", ns::ROSTER) => self.interested = true,
            (Some("get"), "blocklist", ns::BLOCKING) => self.blocklist = true,
            (Some("set"), "enable", CARBONS) => self.carbons = true,
            (Some("set"), "disable", CARBONS) => self.carbons = false,
            _ => {}
        }
    }
}

/// RFC 6121 §4.7.2.3: the `<priority/>` child, clamped to -128..=127, default 0.
fn priority_of(env: &Envelope) -> i8 {
    if !contains_bytes(&env.el.raw, b"priority") {
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

fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Name and `xmlns` of the first child element, read from its start tag only. `None`
/// when there is no child, it is prefixed, it has no `xmlns`, or the tag is longer than
/// the scan limit.
fn first_child(raw: &[u8], start_tag_len: usize) -> Option<(&str, &str)> {
    let end = raw.len().min(start_tag_len.saturating_add(CHILD_SCAN_LIMIT));
    let s = raw.get(start_tag_len..end)?;
    let mut i = s.iter().position(|c| !c.is_ascii_whitespace())?;
    if s.get(i) != Some(&b'<') {
        return None;
    }
    i += 1;
    let name_start = i;
    while s.get(i).is_some_and(|&c| !c.is_ascii_whitespace() && c != b'/' && c != b'>') {
        i += 1;
    }
    let name = std::str::from_utf8(s.get(name_start..i)?).ok()?;
    if name.is_empty() || name.contains(':') || name.starts_with('/') {
        return None;
    }
    loop {
        while s.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        match *s.get(i)? {
            b'/' | b'>' => return None,
            _ => {}
        }
        let attr_start = i;
        while s.get(i).is_some_and(|&c| c != b'=' && !c.is_ascii_whitespace()) {
            i += 1;
        }
        let attr = s.get(attr_start..i)?;
        while s.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if s.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        while s.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let quote = *s.get(i)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        i += 1;
        let value_start = i;
        while s.get(i).is_some_and(|&c| c != quote) {
            i += 1;
        }
        if s.get(i) != Some(&quote) {
            return None;
        }
        let value = s.get(value_start..i)?;
        i += 1;
        if attr == b"xmlns" {
            // A namespace written with references is not one we look for.
            if value.contains(&b'&') {
                return None;
            }
            return Some((name, std::str::from_utf8(value).ok()?));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rookery_xml::RawElement;

    fn env(xml: &'static str, own: &str) -> Envelope {
        let el = RawElement::from_bytes(Bytes::from_static(xml.as_bytes()), ns::CLIENT).unwrap();
        let kind = Kind::from_name(&el.name).unwrap();
        let to = match &el.to {
            Some(t) => Jid::parse(t).unwrap(),
            None => FullJid::parse(own).unwrap().to_bare().into_jid(),
        };
        Envelope { kind, from: Jid::parse(own).unwrap(), to, el }
    }

    const ME: &str = "juliet@example.com/balcony";

    fn info() -> SessionInfo {
        SessionInfo::new(FullJid::parse(ME).unwrap())
    }

    #[test]
    fn broadcast_presence_sets_availability_priority_and_stored_stanza() {
        let mut s = info();
        s.observe(&env("<presence><show>away</show><priority>-3</priority></presence>", ME));
        assert!(s.available);
        assert_eq!(s.priority, -3);
        let stored = s.presence.clone().unwrap();
        assert!(std::str::from_utf8(&stored).unwrap().starts_with("<presence from=\"juliet@example.com/balcony\">"));
        s.observe(&env("<presence><priority>900</priority></presence>", ME));
        assert_eq!(s.priority, 127);
        s.observe(&env("<presence/>", ME));
        assert_eq!(s.priority, 0);
        s.observe(&env("<presence type='unavailable'/>", ME));
        assert!(!s.available);
        assert!(s.presence.is_none());
    }

    #[test]
    fn directed_presence_is_remembered_and_forgotten() {
        let mut s = info();
        s.observe(&env("<presence to='room@muc.example.com/nick'/>", ME));
        s.observe(&env("<presence to='romeo@example.net'/>", ME));
        assert!(!s.available, "directed presence is not a broadcast");
        assert_eq!(s.directed.len(), 2);
        s.observe(&env("<presence to='romeo@example.net' type='unavailable'/>", ME));
        assert_eq!(s.directed, [Jid::parse("room@muc.example.com/nick").unwrap()]);
        s.observe(&env("<presence to='x@y' type='subscribe'/>", ME));
        assert_eq!(s.directed.len(), 1);
        s.observe(&env("<presence type='unavailable'/>", ME));
        assert!(s.directed.is_empty());
    }

    #[test]
    fn interests_come_from_own_account_iqs() {
        let mut s = info();
        s.observe(&env("<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>", ME));
        assert!(s.interested);
        s.observe(&env("<iq type='get' id='2'>\n  <blocklist xmlns=\"urn:xmpp:blocking\"/></iq>", ME));
        assert!(s.blocklist);
        s.observe(&env("<iq type='set' id='3'><enable xmlns='urn:xmpp:carbons:2'/></iq>", ME));
        assert!(s.carbons);
        s.observe(&env("<iq type='set' id='4' to='juliet@example.com'><disable xmlns='urn:xmpp:carbons:2'/></iq>", ME));
        assert!(!s.carbons);
    }

    #[test]
    fn iqs_to_others_or_of_other_types_do_not_count() {
        let mut s = info();
        s.observe(&env("<iq type='get' id='1' to='romeo@example.net'><query xmlns='jabber:iq:roster'/></iq>", ME));
        s.observe(&env("<iq type='result' id='2'><query xmlns='jabber:iq:roster'/></iq>", ME));
        s.observe(&env("<iq type='set' id='3'><query xmlns='jabber:iq:roster'/></iq>", ME));
        s.observe(&env("<iq type='get' id='4'><r:query xmlns:r='jabber:iq:roster'/></iq>", ME));
        assert!(!s.interested);
        s.observe(&env("<iq type='get' id='5' to='example.com'><query xmlns='jabber:iq:roster'/></iq>", ME));
        assert!(s.interested, "the server's own domain is the user's account too");
    }

    #[test]
    fn first_child_scan_is_defensive() {
        assert_eq!(first_child(b"<iq/>", 5), None);
        assert_eq!(first_child(b"<iq>text</iq>", 4), None);
        assert_eq!(first_child(b"<iq><a b='1' xmlns='x'/></iq>", 4), Some(("a", "x")));
        assert_eq!(first_child(b"<iq><a b=1 xmlns='x'/></iq>", 4), None);
        assert_eq!(first_child(b"<iq><a xmlns='x&amp;'/></iq>", 4), None);
        assert_eq!(first_child(b"<iq><a xmlns='unterminated", 4), None);
        assert_eq!(first_child(b"<iq>", 400), None);
    }
}
