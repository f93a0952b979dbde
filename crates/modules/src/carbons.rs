//! XEP-0280: Message Carbons.
//!
//! - `<enable xmlns='urn:xmpp:carbons:2'/>` (§4) and `<disable/>` (§5) as IQ-set from a
//!   bound resource to its own account (no `to`, or its bare JID) turn carbons on or off
//!   for that resource and are answered with an empty result. Repeating either is not an
//!   error (§10.1). The flag is the session extension [`CarbonsOn`].
//! - A request that is not from a resource bound on this server is `not-allowed`
//!   (§4.1, §5.1). Addressing another user's account is not registered, so the router
//!   answers it `service-unavailable`.
//! - Feature `urn:xmpp:carbons:2` on the server (§3).
//! - On `MESSAGE_OUT`: a carbons wrapper that did not come from the server is refused
//!   (§11). On `DELIVERED`: which messages are copied (§6.1), received copies to the
//!   recipient's other carbons-enabled resources (§7), sent copies to the sender's other
//!   carbons-enabled resources (§8), the `<private/>` and `<no-copy/>` opt-out (§9, XEP-0334
//!   §4.3). Copies are XEP-0297 forwards of the self-contained original; an archived
//!   message is forwarded with its stanza-id (XEP-0313 §3.5), the bytes the archive holds.
//!
//! Must not touch: delivery of the original (the kernel), archiving (MAM).
//!
//! Not done: error messages are never copied (§6.1 copies an error answering an eligible
//! message, which would need tracking what was sent); MUC private messages are recognised
//! only by their `muc#user` payload. Messages between two resources of one account get
//! received copies only (the sender's other resources are the recipients).

use async_trait::async_trait;
use bytes::Bytes;
use rookery_core::hooks::{DELIVERED, Delivery, MESSAGE_OUT, MessageOut};
use rookery_core::{
    Ctx, Flow, Handler, HookResult, IqHandler, IqRequest, IqResult, IqType, Module, ModuleInfo, Origin, Registrar,
    SessionExt, Support, Target, XepSupport, prio,
};
use rookery_jid::{BareJid, FullJid};
use rookery_stanza::message::{MessageView, MsgType, Scan};
use rookery_stanza::{Condition, StanzaError, ns};
use std::sync::Arc;

rookery_core::flag_ext!(
    /// The resource enabled carbons (§4); cleared by `<disable/>` (§5).
    CarbonsOn,
    "carbons"
);

/// Carbons: the enable/disable protocol and the copies.
pub struct Carbons;

impl Module for Carbons {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            name: "carbons",
            depends: &[],
            specs: &[XepSupport {
                spec: "XEP-0280",
                version: "1.0.1",
                support: Support::Partial,
                note: "enable/disable (§4, §5); copies of chat, normal-with-body and IM-payload messages (§6-§8), \
                       <private/> and <no-copy/> (§9), forged copies refused (§11); error messages are not copied",
            }],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.host_feature(ns::CARBONS);
        r.iq("enable", ns::CARBONS, IqType::Set, &[Target::Own], self.clone());
        r.iq("disable", ns::CARBONS, IqType::Set, &[Target::Own], self.clone());
        r.hook(MESSAGE_OUT, prio::CARBONS_FORGERY, Arc::new(RefuseForged));
        r.hook(DELIVERED, prio::CARBONS, self);
    }
}

#[async_trait]
impl IqHandler for Carbons {
    async fn handle(&self, ctx: &Ctx, req: IqRequest) -> IqResult {
        let Some(from) = &req.from else {
            return Err(StanzaError::new(Condition::NotAllowed));
        };
        let on = (req.payload.name == "enable").then(|| CarbonsOn.encode());
        if ctx.server.set_session_ext(from, CarbonsOn::KEY, on).await {
            Ok(None)
        } else {
            Err(StanzaError::new(Condition::NotAllowed))
        }
    }
}

/// §11: carbon copies come from the server alone. One that reaches the routing was
/// either made here and came back undelivered (the original went its way already) or
/// was made up by a client.
struct RefuseForged;

#[async_trait]
impl Handler<MessageOut> for RefuseForged {
    async fn handle(&self, _ctx: &Ctx, ev: &mut MessageOut) -> HookResult {
        if !(ev.msg.scan.maybe(Scan::CARBONS) && ev.msg.facts().carbon) {
            return Ok(Flow::Continue);
        }
        if ev.origin == Origin::Client && ev.mtype != MsgType::Error {
            tracing::debug!(event = "forged_carbon_refused", from = %ev.msg.env.from, to = %ev.msg.env.to);
            ev.reject =
                Some(StanzaError::new(Condition::NotAcceptable).with_text("carbon copies are made by the server only"));
        }
        Ok(Flow::Stop)
    }
}

#[async_trait]
impl Handler<Delivery> for Carbons {
    /// Sends the copies of a message the kernel accepted (delivered or stored).
    async fn handle(&self, ctx: &Ctx, ev: &mut Delivery) -> HookResult {
        if ev.origin != Origin::Client {
            return Ok(Flow::Continue);
        }
        let env = &ev.msg.env;
        let recipient = &ev.recipient;
        let sender = env.from.node().map(|_| env.from.to_bare()).filter(|s| ctx.server.is_local_domain(s.domain()));
        let own = sender.as_ref() == Some(recipient);
        let received: Vec<FullJid> = ev
            .sessions
            .iter()
            .filter(|s| s.ext.has::<CarbonsOn>() && s.jid.as_str() != env.from.as_str())
            .filter(|s| !ev.targets.contains(&s.jid))
            .map(|s| s.jid.clone())
            .collect();
        let sent = match &sender {
            Some(s) if !own => {
                let mut list = ctx.server.resources(s, Some(CarbonsOn::KEY)).await;
                list.retain(|j| j.as_str() != env.from.as_str());
                list
            }
            _ => Vec::new(),
        };
        if (received.is_empty() && sent.is_empty()) || !eligible(&mut ev.msg, ev.mtype) {
            return Ok(Flow::Continue);
        }
        let stanza_type = ev.msg.env.stanza_type().map(str::to_owned);
        let stanza_type = stanza_type.as_deref();
        // §6.1: a private message from a room occupant is already copied by the room.
        let from_room = !received.is_empty() && ev.msg.scan.maybe(Scan::MUC) && ev.msg.facts().muc_pm;
        if !received.is_empty() && !from_room {
            let original = ev.out.received_copy.clone().unwrap_or_else(|| ev.msg.standalone());
            for jid in &received {
                ctx.server.send_to_resource(jid, wrap("received", recipient, jid, stanza_type, &original)).await;
            }
        }
        if let Some(sender) = sender.filter(|_| !sent.is_empty()) {
            let original = ev.out.sent_copy.clone().unwrap_or_else(|| ev.msg.standalone());
            for jid in &sent {
                ctx.server.send_to_resource(jid, wrap("sent", &sender, jid, stanza_type, &original)).await;
            }
        }
        Ok(Flow::Continue)
    }

    /// Most messages have nobody to copy to (no other resource asked for carbons): that is
    /// known without waiting when the sender's sessions are at hand.
    fn quick(&self, ctx: &Ctx, ev: &mut Delivery) -> Option<HookResult> {
        if ev.origin != Origin::Client {
            return Some(Ok(Flow::Continue));
        }
        let from = &ev.msg.env.from;
        let received = ev
            .sessions
            .iter()
            .any(|s| s.ext.has::<CarbonsOn>() && s.jid.as_str() != from.as_str() && !ev.targets.contains(&s.jid));
        if received {
            return None;
        }
        if from.node().is_some()
            && ctx.server.is_local_domain(from.domain())
            && from.bare_str() != ev.recipient.as_str()
        {
            let sent = ctx.server.resources_now(&from.to_bare(), CarbonsOn::KEY)?;
            if sent.iter().any(|j| j.as_str() != from.as_str()) {
                return None;
            }
        }
        Some(Ok(Flow::Continue))
    }
}

/// §6.1: whether the message is copied at all.
fn eligible(msg: &mut MessageView, mtype: MsgType) -> bool {
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
    rookery_stanza::push_attr(&mut out, "xmlns", ns::CARBONS);
    out.extend_from_slice(b"><forwarded");
    rookery_stanza::push_attr(&mut out, "xmlns", ns::FORWARD);
    out.push(b'>');
    out.extend_from_slice(original);
    out.extend_from_slice(b"</forwarded></");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"></message>");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::*;

    #[tokio::test]
    async fn registered_for_own_account_only() {
        let h = Harness::new(|r| r.add(Arc::new(Carbons)));
        assert!(h.features.host.contains(&ns::CARBONS));
        // Not bound on this server: refused, not silently accepted.
        let e = h.set_own("alice@example.com/a", "<enable xmlns='urn:xmpp:carbons:2'/>").await.unwrap_err();
        assert_eq!(e.condition, Condition::NotAllowed);
        let e =
            h.set("alice@example.com/a", "bob@example.com", "<disable xmlns='urn:xmpp:carbons:2'/>").await.unwrap_err();
        assert_eq!(e.condition, Condition::FeatureNotImplemented, "no handler for another account");
        let e = h.get_own("alice@example.com/a", "<enable xmlns='urn:xmpp:carbons:2'/>").await.unwrap_err();
        assert_eq!(e.condition, Condition::FeatureNotImplemented, "only IQ-set");
    }

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
