//! Message delivery, RFC 6121 §8.5 (local users), §8.5.1 (no such user), §8.5.2 (bare
//! JID: to the non-negative resource(s) of highest priority, else offline), §8.5.3 (full
//! JID). The kernel's order for one message:
//!
//! 1. the sender's and the recipient's policies (`PRIVACY`);
//! 2. the sender-side hooks (`MESSAGE_OUT`), which may refuse or rewrite it;
//! 3. choosing the resources (§8.5.2, §8.5.3);
//! 4. the recipient-side hooks (`DELIVERY`), which may refuse it or change the bytes
//!    (e.g. stamp a stanza-id once the archive holds it);
//! 5. writing to the chosen resources, or `OFFLINE` when none takes it;
//! 6. once accepted, `DELIVERED` (e.g. copies to the parties' other resources).
//!
//! What each feature does at those points is in its module (crates/modules).

use crate::LocalRouter;
use bytes::Bytes;
use rookery_core::hooks::{
    DELIVERED, DELIVERY, Delivery, MESSAGE_OUT, MessageOut, OFFLINE, Offline, REMOTE_DOMAIN, RemoteStanza,
};
use rookery_core::{Ctx, Flow, OfflineOutcome, Origin, Outbound, Outgoing, pick_resources};
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_stanza::message::{MessageView, MsgType};
use rookery_stanza::{Condition, Envelope, Kind, StanzaError};
use rookery_xml::RawElement;

impl LocalRouter {
    pub(crate) async fn route_message(&self, env: Envelope) {
        self.route_message_as(env, Origin::Client).await;
    }

    pub(crate) async fn route_message_as(&self, env: Envelope, origin: Origin) {
        let mtype = MsgType::of(&env);
        let to = env.to.clone();
        if !self.is_local(to.domain()) {
            self.route_remote(env, mtype == MsgType::Error).await;
            return;
        }
        let Some(user) = crate::user_of(&to) else {
            // Messages to the server itself: nothing handles them (yet).
            if mtype != MsgType::Error && mtype != MsgType::Headline {
                self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable)).await;
            }
            return;
        };
        let Some(ctx) = self.ctx() else { return };
        // The sender's policy towards the recipient, then the recipient's towards the
        // sender; an inbound refusal is answered like an unknown user, so it is not
        // revealed.
        if let Some(sender) = crate::user_of(&env.from)
            && mtype != MsgType::Error
            && let Some(err) = self.denied_in(&ctx, &sender, &to, true).await
        {
            self.bounce(&env, err).await;
            return;
        }
        if let Some(err) = self.denied_in(&ctx, &user, &env.from, false).await {
            if mtype != MsgType::Error && mtype != MsgType::Headline {
                self.bounce(&env, err).await;
            }
            return;
        }
        let mut ev = MessageOut { msg: MessageView::new(env), mtype, origin, recipient: user, reject: None };
        if self.hooks.run(MESSAGE_OUT, &ctx, &mut ev).await == Flow::Stop {
            if let Some(err) = ev.reject {
                self.bounce(&ev.msg.env, err).await;
            }
            return;
        }
        let MessageOut { mut msg, recipient: user, .. } = ev;
        let sessions = self.registry.sessions(&user).await;
        let exact = to.resource().and_then(|res| sessions.iter().find(|s| s.jid.resource() == res));
        if to.resource().is_some() && exact.is_none() {
            // §8.5.3.2.1
            match mtype {
                MsgType::Chat => {}
                MsgType::Error | MsgType::Headline => return,
                MsgType::Normal | MsgType::Groupchat => {
                    self.bounce(&msg.env, StanzaError::new(Condition::ServiceUnavailable)).await;
                    return;
                }
            }
        }
        if exact.is_none() && mtype == MsgType::Groupchat {
            self.bounce(&msg.env, StanzaError::new(Condition::ServiceUnavailable)).await;
            return;
        }
        let targets: Vec<(FullJid, rookery_core::Location)> = match exact {
            // §8.5.3.1: an exact match gets it, whatever its priority.
            Some(s) => vec![(s.jid.clone(), s.loc)],
            None => {
                pick_resources(&sessions, mtype == MsgType::Headline).iter().map(|s| (s.jid.clone(), s.loc)).collect()
            }
        };
        if targets.is_empty() && !self.may_store(&msg.env, &user, mtype).await {
            return;
        }
        let out = Outgoing::plain(msg.wire());
        let mut ev = Delivery {
            msg,
            mtype,
            origin,
            recipient: user,
            sessions,
            offline: targets.is_empty(),
            targets: targets.iter().map(|(j, _)| j.clone()).collect(),
            out,
            reject: None,
        };
        if self.hooks.run(DELIVERY, &ctx, &mut ev).await == Flow::Stop {
            if let Some(err) = ev.reject.take() {
                self.bounce(&ev.msg.env, err).await;
            }
            return;
        }
        let mut delivered = false;
        for (_, loc) in &targets {
            delivered |= self.link.deliver(*loc, Outbound::Stanza(ev.out.delivered.clone()));
        }
        let accepted = delivered
            || ((ev.offline || self.may_store(&ev.msg.env, &ev.recipient, mtype).await)
                && self.offline(&ctx, &ev.msg.env, &ev.recipient, ev.out.delivered.clone()).await);
        if accepted && !self.hooks.is_empty(DELIVERED) {
            self.hooks.run(DELIVERED, &ctx, &mut ev).await;
        }
    }

    /// §8.5.2.2: nobody takes the message. True when it was accepted (stored, or dropped
    /// as not worth keeping); otherwise it was bounced.
    async fn offline(&self, ctx: &Ctx, env: &Envelope, user: &BareJid, bytes: Bytes) -> bool {
        let mut ev = Offline { env: env.clone(), recipient: user.clone(), bytes, outcome: OfflineOutcome::Unhandled };
        self.hooks.run(OFFLINE, ctx, &mut ev).await;
        match ev.outcome {
            OfflineOutcome::Stored | OfflineOutcome::Dropped => true,
            // §8.5.2.2.1: no offline storage.
            OfflineOutcome::Unhandled => {
                self.bounce(env, StanzaError::new(Condition::ServiceUnavailable)).await;
                false
            }
            OfflineOutcome::Refused(err) => {
                self.bounce(env, err).await;
                false
            }
        }
    }

    /// A stanza for a domain not served here: the `REMOTE_DOMAIN` hook may take it;
    /// otherwise it is answered `remote-server-not-found` (unless it is an error).
    pub(crate) async fn route_remote(&self, env: Envelope, is_error: bool) {
        let Some(ctx) = self.ctx() else { return };
        let mut ev = RemoteStanza { env };
        if self.hooks.run(REMOTE_DOMAIN, &ctx, &mut ev).await == Flow::Stop || is_error {
            return;
        }
        self.bounce(&ev.env, StanzaError::new(Condition::RemoteServerNotFound)).await;
    }

    /// §8.5.2.2 / §8.5.1: nobody to deliver to. True when the message may go to offline
    /// storage; otherwise it was bounced or dropped as the type asks.
    async fn may_store(&self, env: &Envelope, user: &BareJid, mtype: MsgType) -> bool {
        match mtype {
            MsgType::Error | MsgType::Headline => false,
            MsgType::Groupchat => {
                self.bounce(env, StanzaError::new(Condition::ServiceUnavailable)).await;
                false
            }
            MsgType::Normal | MsgType::Chat => {
                if !self.account_exists(user).await {
                    self.bounce(env, StanzaError::new(Condition::ServiceUnavailable)).await;
                    return false;
                }
                true
            }
        }
    }

    /// See `Router::undelivered`: a stanza queued for a session that ended is handled as
    /// if it had arrived after the session was gone.
    pub(crate) async fn reroute_undelivered(&self, to: &FullJid, stanza: Bytes) {
        // It reaches its recipient late: a delay stamp says since when.
        let stanza = if stanza.starts_with(b"<message") {
            rookery_stanza::message::with_delay(&stanza, to.domain(), rookery_storage::now_secs())
        } else {
            stanza
        };
        let Ok(el) = RawElement::from_bytes(stanza, rookery_stanza::ns::CLIENT) else { return };
        let Some(kind) = Kind::from_name(&el.name) else { return };
        let Some(from) = el.from.as_deref().and_then(|f| Jid::parse(f).ok()) else { return };
        let dest = el.to.as_deref().and_then(|t| Jid::parse(t).ok()).unwrap_or_else(|| to.as_jid().clone());
        let env = Envelope { kind, from, to: dest, el };
        match kind {
            Kind::Message => self.route_message_as(env, Origin::Requeued).await,
            Kind::Iq if matches!(env.stanza_type(), Some("get") | Some("set")) => {
                self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable)).await;
            }
            _ => {}
        }
    }
}
