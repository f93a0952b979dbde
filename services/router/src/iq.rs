//! IQ routing (RFC 6120 §8.2.3, RFC 6121 §8.5): requests to the server or to an account
//! are answered here or by a module; requests to a full JID are delivered; results and
//! errors go back to the requesting resource. Every get/set gets exactly one reply.

use crate::LocalRouter;
use rookery_core::{IqRequest, IqType, Target};
use rookery_jid::FullJid;
use rookery_stanza::{Condition, Envelope, StanzaError, ns};

/// Who may send an IQ get/set to another user's full JID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IqToFullJid {
    /// Only someone the resource shares presence with (RFC 6121 §8.5.3.1, the default).
    #[default]
    PresenceShared,
    /// Anyone, as Prosody and ejabberd do; reveals which resources are online.
    Always,
}

impl LocalRouter {
    pub(crate) async fn route_iq(&self, env: Envelope) {
        let Ok(from) = FullJid::try_from(env.from.clone()) else { return };
        let kind = match env.stanza_type() {
            Some("get") => IqType::Get,
            Some("set") => IqType::Set,
            Some("result") | Some("error") => {
                self.route_iq_response(env).await;
                return;
            }
            _ => {
                self.bounce(
                    &env,
                    StanzaError::new(Condition::BadRequest).with_text("iq type must be get, set, result or error"),
                )
                .await;
                return;
            }
        };
        // RFC 6120 §8.1.3: an IQ get/set needs an id.
        let Some(id) = env.id().map(str::to_owned) else {
            self.bounce(&env, StanzaError::new(Condition::BadRequest).with_text("iq without id")).await;
            return;
        };
        let to = env.to.clone();
        if !self.is_local(to.domain()) {
            self.route_remote(env, false).await;
            return;
        }
        let sender = from.to_bare();
        if to.resource().is_some() && to.node().is_some() {
            return self.iq_to_full(&env, &from).await;
        }
        let target = if to.node().is_none() {
            if to.resource().is_some() {
                self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable)).await;
                return;
            }
            Target::Host
        } else if to.bare_str() == sender.as_str() {
            Target::Own
        } else {
            Target::OtherUser
        };
        if target == Target::OtherUser {
            let Some(user) = crate::user_of(&to) else { return };
            // The sender's own policy refuses the addressee.
            if let Some(err) = self.denied(&sender, &to, true).await {
                self.bounce(&env, err).await;
                return;
            }
            if self.blocked(&user, &env.from).await || !self.account_exists(&user).await {
                self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable)).await;
                return;
            }
        }
        // RFC 6120 §8.2.3: exactly one payload child.
        let payload = match env.el.parse() {
            Ok(el) => {
                let mut children = el.elements();
                match (children.next(), children.next()) {
                    (Some(p), None) => p.clone(),
                    _ => {
                        self.bounce(
                            &env,
                            StanzaError::new(Condition::BadRequest)
                                .with_text("an iq get/set carries exactly one payload"),
                        )
                        .await;
                        return;
                    }
                }
            }
            Err(_) => {
                self.bounce(&env, StanzaError::new(Condition::BadRequest)).await;
                return;
            }
        };
        let result = if payload.is("query", ns::ROSTER) {
            if target == Target::Own {
                self.roster_iq(&from, kind, &payload).await
            } else {
                // RFC 6121 §2.1.5: only the user's own roster.
                Err(StanzaError::new(Condition::Forbidden))
            }
        } else {
            match (self.dispatch.handler(&payload.name, &payload.ns, kind, target), self.ctx()) {
                (Some(h), Some(ctx)) => {
                    let req = IqRequest { from: Some(from.clone()), to: to.clone(), kind, id: id.clone(), payload };
                    // A panicking handler is answered like a failing one.
                    self.hooks
                        .guard("iq", h.handle(&ctx, req))
                        .await
                        .unwrap_or_else(|| Err(StanzaError::new(Condition::InternalServerError)))
                }
                // RFC 6120 §8.4: an unsupported namespace is service-unavailable.
                _ => Err(StanzaError::new(Condition::ServiceUnavailable)),
            }
        };
        let reply = match result {
            Ok(p) => {
                let from_attr = if target == Target::Own && env.el.to.is_none() { None } else { Some(&to) };
                rookery_stanza::iq_result(from_attr, from.as_jid(), &id, p.as_ref())
            }
            Err(err) => match env.error_reply(&err) {
                Some(b) => b,
                None => return,
            },
        };
        self.send_full(&from, reply).await;
    }

    /// §8.5.3: deliver to the exact resource, or answer service-unavailable.
    async fn iq_to_full(&self, env: &Envelope, from: &FullJid) {
        let Ok(to) = FullJid::try_from(env.to.clone()) else { return };
        let user = to.to_bare();
        if self.blocked(&user, &env.from).await {
            self.bounce(env, StanzaError::new(Condition::ServiceUnavailable)).await;
            return;
        }
        if user != from.to_bare()
            && let Some(err) = self.denied(&from.to_bare(), &env.to, true).await
        {
            self.bounce(env, err).await;
            return;
        }
        // RFC 6121 §8.5.3.1: a get/set reaches a resource only from someone it shares
        // presence with (subscription from/both, or directed presence); otherwise it
        // would reveal which resources are online. An operator may trade that for
        // reachability between non-contacts (`router.iq_to_full_jid = "always"`).
        if self.cfg.iq_to_full_jid == IqToFullJid::PresenceShared
            && user != from.to_bare()
            && !self.shares_presence(&to, from).await
        {
            self.bounce(env, StanzaError::new(Condition::ServiceUnavailable)).await;
            return;
        }
        if !self.send_full(&to, env.wire()).await {
            self.bounce(env, StanzaError::new(Condition::ServiceUnavailable)).await;
        }
    }

    /// Whether the session `to` shares presence with `from` (RFC 6121 §8.5.3.1).
    async fn shares_presence(&self, to: &FullJid, from: &FullJid) -> bool {
        let directed =
            self.registry.get(to).await.is_some_and(|e| {
                e.directed.iter().any(|d| d.as_str() == from.as_str() || d.as_str() == from.bare_str())
            });
        directed || self.contact_sees_presence(&to.to_bare(), &from.to_bare()).await
    }

    /// Results and errors: to a full JID they are delivered; to the server or a bare JID
    /// they answer server-generated requests (roster pushes) and end here.
    async fn route_iq_response(&self, env: Envelope) {
        if let Ok(to) = FullJid::try_from(env.to.clone())
            && self.is_local(to.domain())
        {
            if self.blocked(&to.to_bare(), &env.from).await {
                return;
            }
            self.send_full(&to, env.wire()).await;
        }
    }
}
