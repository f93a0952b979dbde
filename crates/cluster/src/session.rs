//! The edge's own record of its live sessions: conn → full JID (to hand undeliverable
//! stanzas back, RFC 6120 §10) and the state a router needs to re-register the session
//! after the registry was reset: the RFC 6121 §4 presence state (availability, priority,
//! last broadcast presence, directed-presence targets) and the modules' extension slots.
//!
//! The presence state is observed from the presence stanzas the edge routes, without a
//! tree on the hot path: only a top-level presence without `to` (a broadcast, RFC 6121
//! §4.2, §4.4) is parsed, and only for its `<priority/>` (§4.7.2.3). The extension slots
//! are what the routers say (`SetSessionExt`), kept as opaque bytes: nothing here reads
//! IQs or knows what a module keeps.
//!
//! Must not touch: routing decisions. This mirrors, and never replaces, what the router
//! keeps in the session registry.

use bytes::Bytes;
use rookery_core::{ConnId, Extensions, MAX_DIRECTED};
use rookery_jid::{FullJid, Jid};
use rookery_proto::SessionState;
use rookery_stanza::{Envelope, Kind};

#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    pub jid: FullJid,
    /// Bind confirmed by a router; before that the session is not re-sent on resync.
    pub bound: bool,
    pub priority: i8,
    pub available: bool,
    pub presence: Option<Bytes>,
    pub directed: Vec<Jid>,
    pub ext: Extensions,
}

impl SessionInfo {
    pub fn new(jid: FullJid) -> Self {
        SessionInfo {
            jid,
            bound: false,
            priority: 0,
            available: false,
            presence: None,
            directed: Vec::new(),
            ext: Extensions::new(),
        }
    }

    pub fn state(&self, conn: ConnId) -> SessionState {
        SessionState {
            jid: self.jid.clone(),
            conn,
            priority: self.priority,
            available: self.available,
            presence: self.presence.clone(),
            directed: self.directed.clone(),
            ext: self.ext.clone(),
        }
    }

    /// Updates the record from a stanza this session sends.
    pub fn observe(&mut self, env: &Envelope) {
        if env.kind == Kind::Presence {
            self.observe_presence(env);
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
            self.priority = rookery_stanza::presence_priority(env);
            // Stored the way the router stores it: `from` stamped, no `to`.
            self.presence = Some(env.el.rewrite_attrs(&[("from", Some(self.jid.as_str())), ("to", None)]));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rookery_xml::RawElement;

    fn env(xml: &'static str, own: &str) -> Envelope {
        let el = RawElement::from_bytes(Bytes::from_static(xml.as_bytes()), rookery_stanza::ns::CLIENT).unwrap();
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
    fn iqs_are_not_looked_at() {
        // Session state of the modules arrives as extension slots from the routers; the
        // edge learns nothing from what a client asks.
        let mut s = info();
        s.observe(&env("<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>", ME));
        s.observe(&env("<iq type='set' id='3'><enable xmlns='urn:xmpp:carbons:2'/></iq>", ME));
        assert!(s.ext.is_empty());
        assert_eq!(s.state(1).ext, Extensions::new());
    }
}
