//! Message delivery, RFC 6121 §8.5 (local users), §8.5.1 (no such user), §8.5.2 (bare
//! JID: to the non-negative resource(s) of highest priority, else offline), §8.5.3 (full
//! JID), plus XEP-0191 §3.6/§3.7 block checks. The order for one message: block checks,
//! refusing forged carbons (XEP-0280 §11), removing spoofed stanza-ids (XEP-0359 §3),
//! choosing the resources, archiving (archive.rs, written before anything is delivered),
//! delivery or offline storage, then carbon copies (carbons.rs) once it was accepted.

use crate::LocalRouter;
use crate::archive::{Inspect, Outgoing};
use rookery_core::SessionEntry;
use rookery_jid::BareJid;
use rookery_stanza::{Condition, Envelope, StanzaError};

/// RFC 6121 §5.2.2 message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MsgType {
    Normal,
    Chat,
    Groupchat,
    Headline,
    Error,
}

impl MsgType {
    pub(crate) fn of(env: &Envelope) -> MsgType {
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

/// The resources a bare-JID message goes to: the available, non-negative ones with the
/// highest priority ("most available", §8.5.2.1.1); all non-negative ones for headline.
pub(crate) fn pick_resources(sessions: &[SessionEntry], all_non_negative: bool) -> Vec<&SessionEntry> {
    let candidates = sessions.iter().filter(|s| s.available && s.priority >= 0);
    if all_non_negative {
        return candidates.collect();
    }
    let Some(top) = sessions.iter().filter(|s| s.available && s.priority >= 0).map(|s| s.priority).max() else {
        return Vec::new();
    };
    candidates.filter(|s| s.priority == top).collect()
}

/// Where a message handed to the routing comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Sent by a bound session, `from` stamped by the edge.
    Client,
    /// Queued earlier for a session that ended (`Router::undelivered`): it was already
    /// archived, stamped and copied, and only needs a new destination.
    Requeued,
}

impl LocalRouter {
    pub(crate) async fn route_message(&self, env: Envelope) {
        self.route_message_as(env, Origin::Client).await;
    }

    pub(crate) async fn route_message_as(&self, env: Envelope, origin: Origin) {
        let mtype = MsgType::of(&env);
        let to = env.to.clone();
        if !self.is_local(to.domain()) {
            // Federation is not enabled on this node yet.
            if mtype != MsgType::Error {
                self.bounce(&env, StanzaError::new(Condition::RemoteServerNotFound)).await;
            }
            return;
        }
        let Some(user) = crate::user_of(&to) else {
            // Messages to the server itself: nothing handles them (yet).
            if mtype != MsgType::Error && mtype != MsgType::Headline {
                self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable)).await;
            }
            return;
        };
        // §3.6: the sender blocked the recipient.
        if let Some(sender) = crate::user_of(&env.from)
            && mtype != MsgType::Error
            && self.blocks.blocks(&sender, &to).await
        {
            self.bounce(&env, crate::iq::blocked_error()).await;
            return;
        }
        // §3.7: the recipient blocked the sender; answered like an unknown user so the
        // block is not revealed.
        if self.blocks.blocks(&user, &env.from).await {
            if mtype != MsgType::Error && mtype != MsgType::Headline {
                self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable)).await;
            }
            return;
        }
        let mut msg = Inspect::new(&env);
        // XEP-0280 §11: carbon copies come from the server alone. One that reaches this
        // point was either made here and came back undelivered (the original went its
        // way already) or was made up by a client.
        if msg.is_carbon_copy() {
            if origin == Origin::Client && mtype != MsgType::Error {
                tracing::debug!(event = "forged_carbon_refused", from = %env.from, to = %env.to);
                self.bounce(
                    &env,
                    StanzaError::new(Condition::NotAcceptable).with_text("carbon copies are made by the server only"),
                )
                .await;
            }
            return;
        }
        if origin == Origin::Client {
            // XEP-0359 §3 rule 2 (XEP-0313 §8.3): nobody outside may speak for our ids.
            msg.strip_stanza_ids(|by| self.mints_ids_for(by));
        }
        let sessions = self.registry.sessions(&user).await;
        let exact = to.resource().and_then(|res| sessions.iter().find(|s| s.jid.resource() == res));
        if to.resource().is_some() && exact.is_none() {
            // §8.5.3.2.1
            match mtype {
                MsgType::Chat => {}
                MsgType::Error | MsgType::Headline => return,
                MsgType::Normal | MsgType::Groupchat => {
                    self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable)).await;
                    return;
                }
            }
        }
        if exact.is_none() && mtype == MsgType::Groupchat {
            self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable)).await;
            return;
        }
        let picked;
        let targets: &[&SessionEntry] = match &exact {
            // §8.5.3.1: an exact match gets it, whatever its priority.
            Some(s) => std::slice::from_ref(s),
            None => {
                picked = pick_resources(&sessions, mtype == MsgType::Headline);
                &picked
            }
        };
        if targets.is_empty() && !self.may_store(&env, &user, mtype).await {
            return;
        }
        let mut out = match origin {
            Origin::Client => self.prepare_outgoing(&mut msg, &user, mtype).await,
            Origin::Requeued => Outgoing::plain(env.wire()),
        };
        let accepted = if targets.is_empty() {
            self.store_offline(&env, &user, &mut out).await
        } else {
            // XEP-0313 §3.5: what a client sees with a stanza-id is in the archive.
            self.commit_archive(&mut out).await;
            let mut delivered = false;
            for s in targets {
                delivered |= self.send(s, out.delivered.clone());
            }
            delivered || (self.may_store(&env, &user, mtype).await && self.store_offline(&env, &user, &mut out).await)
        };
        if accepted && origin == Origin::Client {
            self.send_carbons(&mut msg, mtype, &out, &user, &sessions, targets).await;
        }
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rookery_core::Location;
    use rookery_jid::FullJid;

    fn s(res: &str, prio: i8, available: bool) -> SessionEntry {
        SessionEntry {
            jid: FullJid::parse(&format!("u@d/{res}")).unwrap(),
            loc: Location { edge: 0, conn: 0 },
            priority: prio,
            available,
            presence: None,
            interested: false,
            blocklist: false,
            directed: vec![],
            carbons: false,
        }
    }

    #[test]
    fn highest_non_negative_priority_wins() {
        let list = vec![s("a", 1, true), s("b", 5, true), s("c", 5, true), s("d", 9, false), s("e", -1, true)];
        let picked: Vec<_> = pick_resources(&list, false).iter().map(|e| e.jid.resource().to_string()).collect();
        assert_eq!(picked, vec!["b", "c"]);
        let all: Vec<_> = pick_resources(&list, true).iter().map(|e| e.jid.resource().to_string()).collect();
        assert_eq!(all, vec!["a", "b", "c"]);
    }

    #[test]
    fn negative_only_means_nobody() {
        let list = vec![s("a", -1, true), s("b", 3, false)];
        assert!(pick_resources(&list, false).is_empty());
        assert!(pick_resources(&list, true).is_empty());
    }
}
