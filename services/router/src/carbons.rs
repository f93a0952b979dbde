//! XEP-0280 Message Carbons on delivery: which messages are copied (§6.1), received
//! copies to the recipient's other carbons-enabled resources (§7), sent copies to the
//! sender's other carbons-enabled resources (§8), the `<private/>` and `<no-copy/>` opt-out
//! (§9, XEP-0334 §4.3), and refusing carbons wrappers that did not come from the server
//! (§11). Copies are XEP-0297 forwards of the self-contained original; an archived
//! message is forwarded with its stanza-id (XEP-0313 §3.5), the same bytes the archive
//! holds.
//!
//! Owns: eligibility, wrapping, sending the copies. The per-session flag is set through
//! `ServerApi::set_carbons` by the carbons module (crates/modules).
//! Must not touch: delivery of the original (message.rs), archiving (archive.rs).
//!
//! Not done: error messages are never copied (§6.1 copies an error answering an eligible
//! message, which would need tracking what was sent); MUC private messages are recognised
//! only by their `muc#user` payload. Messages between two resources of one account get
//! received copies only (the sender's other resources are the recipients).

use crate::LocalRouter;
use crate::archive::{Inspect, NS_CARBONS, NS_FORWARD, Outgoing, Scan};
use crate::message::MsgType;
use bytes::Bytes;
use rookery_core::SessionEntry;
use rookery_jid::{BareJid, FullJid};

/// §6.1: whether the message is copied at all.
fn eligible(msg: &mut Inspect<'_>, mtype: MsgType) -> bool {
    match mtype {
        MsgType::Groupchat | MsgType::Error => false,
        MsgType::Chat => {
            if !msg.scan.maybe(Scan::CARBONS | Scan::HINTS) {
                return true;
            }
            let f = msg.facts();
            !f.private && !f.no_copy
        }
        MsgType::Normal | MsgType::Headline => {
            if !msg.scan.maybe(Scan::BODY | Scan::IM) {
                return false;
            }
            let f = msg.facts();
            ((f.body && mtype == MsgType::Normal) || f.im) && !f.private && !f.no_copy
        }
    }
}

/// `<message from=user to=resource type=…><sent|received xmlns=carbons><forwarded>…`.
fn wrap(kind: &str, user: &BareJid, to: &FullJid, mtype: Option<&str>, original: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(original.len() + 256);
    out.extend_from_slice(b"<message");
    rookery_stanza::push_attr(&mut out, "from", user.as_str());
    rookery_stanza::push_attr(&mut out, "to", to.as_str());
    if let Some(t) = mtype {
        rookery_stanza::push_attr(&mut out, "type", t);
    }
    out.extend_from_slice(b"><");
    out.extend_from_slice(kind.as_bytes());
    rookery_stanza::push_attr(&mut out, "xmlns", NS_CARBONS);
    out.extend_from_slice(b"><forwarded");
    rookery_stanza::push_attr(&mut out, "xmlns", NS_FORWARD);
    out.push(b'>');
    out.extend_from_slice(original);
    out.extend_from_slice(b"</forwarded></");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"></message>");
    Bytes::from(out)
}

impl LocalRouter {
    /// Sends the carbon copies of a message that was accepted (delivered or stored).
    /// `recipient_sessions` are the recipient's sessions, `got_original` those the
    /// delivery rules chose.
    pub(crate) async fn send_carbons(
        &self,
        msg: &mut Inspect<'_>,
        mtype: MsgType,
        out: &Outgoing,
        recipient: &BareJid,
        recipient_sessions: &[SessionEntry],
        got_original: &[&SessionEntry],
    ) {
        let env = msg.env;
        let sender = crate::user_of(&env.from).filter(|s| self.is_local(s.domain()));
        let own = sender.as_ref() == Some(recipient);
        let received: Vec<&SessionEntry> = recipient_sessions
            .iter()
            .filter(|s| s.carbons && s.jid.as_str() != env.from.as_str())
            .filter(|s| !got_original.iter().any(|g| g.jid == s.jid))
            .collect();
        let sent = match &sender {
            Some(s) if !own => {
                let mut list = self.registry.carbons_sessions(s).await;
                list.retain(|e| e.jid.as_str() != env.from.as_str());
                list
            }
            _ => Vec::new(),
        };
        if (received.is_empty() && sent.is_empty()) || !eligible(msg, mtype) {
            return;
        }
        // §6.1: a private message from a room occupant is already copied by the room.
        let from_room = !received.is_empty() && msg.scan.maybe(Scan::MUC) && msg.facts().muc_pm;
        if !received.is_empty() && !from_room {
            let original = out.received_copy.clone().unwrap_or_else(|| msg.standalone());
            for s in received {
                self.send(s, wrap("received", recipient, &s.jid, env.stanza_type(), &original));
            }
        }
        if let Some(sender) = sender.filter(|_| !sent.is_empty()) {
            let original = out.sent_copy.clone().unwrap_or_else(|| msg.standalone());
            for s in &sent {
                self.send(s, wrap("sent", &sender, &s.jid, env.stanza_type(), &original));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wrapper_keeps_type_and_namespaces() {
        let out = wrap(
            "sent",
            &BareJid::parse("a@x").unwrap(),
            &FullJid::parse("a@x/r").unwrap(),
            Some("chat"),
            b"<message xmlns=\"jabber:client\"/>",
        );
        assert_eq!(
            &out[..],
            &b"<message from=\"a@x\" to=\"a@x/r\" type=\"chat\"><sent xmlns=\"urn:xmpp:carbons:2\">\
<forwarded xmlns=\"urn:xmpp:forward:0\"><message xmlns=\"jabber:client\"/></forwarded></sent></message>"[..]
        );
    }
}
