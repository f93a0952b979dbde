//! XEP-0352 client state indication: while a client says it is `<inactive/>`, stanzas it
//! does not need at once are held back and coalesced, and flushed, in their order, with
//! the next one that matters (or when it says `<active/>` again). The policy (§5 leaves it
//! to the server), as Conversations and Monal expect it:
//!
//! - held: presence updates (available or unavailable; the latest per sender replaces an
//!   earlier one), and messages without a body that carry only chat states (the latest per
//!   sender replaces an earlier one), receipts or markers;
//! - flushed at once: anything else, that is messages with a body or an encrypted payload
//!   (and the carbon copies of such messages), subscription requests and answers, IQs,
//!   errors;
//! - a held queue that reaches its limit is flushed, so memory stays bounded.
//!
//! Owns: the classification and the held queue. Must not touch: sockets (the writer in
//! `c2s/session.rs` calls it), routing.

use bytes::Bytes;
use rookery_stanza::{contains_bytes as contains, ns};
use rookery_xml::RawElement;

/// What an outbound stanza is to an inactive client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Urgency {
    /// Write now (and everything held before it).
    Now,
    /// Hold; a later one of the same `key` replaces it.
    Coalesce(String),
    /// Hold, and keep.
    Hold,
}

/// Classifies a stanza by its bytes (only looked at while the client is inactive).
pub fn urgency(stanza: &Bytes) -> Urgency {
    let Ok(el) = RawElement::from_bytes(stanza.clone(), ns::CLIENT) else { return Urgency::Now };
    let from = el.from.clone().unwrap_or_default();
    match el.name.as_str() {
        "presence" => match el.kind.as_deref() {
            None | Some("unavailable") => Urgency::Coalesce(format!("p {from}")),
            // Subscription requests and answers, probes, errors.
            _ => Urgency::Now,
        },
        "message" => {
            if el.kind.as_deref() == Some("error") || contains(stanza, b"<body") || contains(stanza, b"<encrypted") {
                return Urgency::Now;
            }
            let chat_state_only = contains(stanza, ns::CHATSTATES.as_bytes())
                && !contains(stanza, ns::RECEIPTS.as_bytes())
                && !contains(stanza, ns::MARKERS.as_bytes());
            if chat_state_only { Urgency::Coalesce(format!("c {from}")) } else { Urgency::Hold }
        }
        _ => Urgency::Now,
    }
}

/// The stanzas held back from an inactive client, oldest first.
#[derive(Debug, Default)]
pub struct Held {
    items: Vec<(Option<String>, Bytes)>,
    /// Stanzas not written because a later one replaced them (for the stats).
    pub coalesced: u64,
}

impl Held {
    /// Holds `stanza` (replacing an earlier one of the same key). Returns true when the
    /// queue reached `limit` and must be flushed.
    pub fn hold(&mut self, stanza: Bytes, urgency: Urgency, limit: usize) -> bool {
        let key = match urgency {
            Urgency::Coalesce(k) => Some(k),
            _ => None,
        };
        if let Some(k) = &key
            && let Some(pos) = self.items.iter().position(|(ik, _)| ik.as_ref() == Some(k))
        {
            // The newer one goes where the newest stanzas go: order among different
            // senders stays the order of arrival.
            self.items.remove(pos);
            self.coalesced += 1;
        }
        self.items.push((key, stanza));
        self.items.len() >= limit.max(1)
    }

    /// Everything held, oldest first.
    pub fn take(&mut self) -> Vec<Bytes> {
        self.items.drain(..).map(|(_, b)| b).collect()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn what_waits_and_what_does_not() {
        assert_eq!(urgency(&b("<presence from='a@x/1'/>")), Urgency::Coalesce("p a@x/1".into()));
        assert_eq!(urgency(&b("<presence from='a@x/1' type='unavailable'/>")), Urgency::Coalesce("p a@x/1".into()));
        assert_eq!(urgency(&b("<presence from='a@x' type='subscribe'/>")), Urgency::Now);
        assert_eq!(urgency(&b("<message from='a@x/1'><body>hi</body></message>")), Urgency::Now);
        assert_eq!(
            urgency(&b("<message from='a@x/1'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")),
            Urgency::Coalesce("c a@x/1".into())
        );
        assert_eq!(
            urgency(&b("<message from='a@x/1'><received xmlns='urn:xmpp:receipts' id='1'/></message>")),
            Urgency::Hold
        );
        assert_eq!(
            urgency(&b(
                "<message from='a@x/1'><encrypted xmlns='urn:xmpp:omemo:2'><payload>x</payload></encrypted></message>"
            )),
            Urgency::Now
        );
        assert_eq!(urgency(&b("<iq from='a@x/1' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>")), Urgency::Now);
        assert_eq!(urgency(&b("<message from='a@x/1' type='error'/>")), Urgency::Now);
    }

    #[test]
    fn a_newer_presence_replaces_the_older_and_order_is_kept() {
        let mut h = Held::default();
        let p1 = b("<presence from='a@x/1'><show>away</show></presence>");
        let q = b("<presence from='b@x/1'/>");
        let p2 = b("<presence from='a@x/1'/>");
        for s in [p1, q.clone(), p2.clone()] {
            let u = urgency(&s);
            assert!(!h.hold(s, u, 10));
        }
        assert_eq!(h.take(), vec![q, p2]);
        assert_eq!(h.coalesced, 1);
        assert!(h.is_empty());
    }

    #[test]
    fn the_limit_asks_for_a_flush() {
        let mut h = Held::default();
        assert!(!h.hold(b("<presence from='a@x/1'/>"), Urgency::Coalesce("p a@x/1".into()), 2));
        assert!(h.hold(b("<presence from='b@x/1'/>"), Urgency::Coalesce("p b@x/1".into()), 2));
        assert_eq!(h.len(), 2);
    }
}
