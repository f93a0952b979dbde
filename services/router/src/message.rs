//! Message delivery, RFC 6121 §8.5 (local users), §8.5.1 (no such user), §8.5.2 (bare
//! JID: to the non-negative resource(s) of highest priority, else offline), §8.5.3 (full
//! JID), plus XEP-0191 §3.6/§3.7 block checks.

use crate::LocalRouter;
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

impl LocalRouter {
    pub(crate) async fn route_message(&self, env: Envelope) {
        let mtype = MsgType::of(&env);
        let to = env.to.clone();
        if !self.is_local(to.domain()) {
            // Federation is not enabled on this node yet.
            if mtype != MsgType::Error {
                self.bounce(&env, StanzaError::new(Condition::RemoteServerNotFound));
            }
            return;
        }
        let Some(user) = crate::user_of(&to) else {
            // Messages to the server itself: nothing handles them (yet).
            if mtype != MsgType::Error && mtype != MsgType::Headline {
                self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable));
            }
            return;
        };
        // §3.6: the sender blocked the recipient.
        if let Some(sender) = crate::user_of(&env.from)
            && mtype != MsgType::Error
            && self.blocks.blocks(&sender, &to).await
        {
            self.bounce(&env, crate::iq::blocked_error());
            return;
        }
        // §3.7: the recipient blocked the sender; answered like an unknown user so the
        // block is not revealed.
        if self.blocks.blocks(&user, &env.from).await {
            if mtype != MsgType::Error && mtype != MsgType::Headline {
                self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable));
            }
            return;
        }
        let sessions = self.registry.sessions(&user);
        if let Some(res) = to.resource() {
            if let Some(s) = sessions.iter().find(|s| s.jid.resource() == res) {
                // §8.5.3.1: an exact match gets it, whatever its priority.
                if !self.send(s, env.wire()) {
                    self.undeliverable(&env, &user, mtype).await;
                }
                return;
            }
            // §8.5.3.2.1
            match mtype {
                MsgType::Chat => {}
                MsgType::Error | MsgType::Headline => return,
                MsgType::Normal | MsgType::Groupchat => {
                    self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable));
                    return;
                }
            }
        }
        if mtype == MsgType::Groupchat {
            self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable));
            return;
        }
        let targets = pick_resources(&sessions, mtype == MsgType::Headline);
        if targets.is_empty() {
            self.undeliverable(&env, &user, mtype).await;
            return;
        }
        let bytes = env.wire();
        let mut delivered = false;
        for s in targets {
            delivered |= self.send(s, bytes.clone());
        }
        if !delivered {
            self.undeliverable(&env, &user, mtype).await;
        }
    }

    /// §8.5.2.2 / §8.5.1: nobody to deliver to.
    async fn undeliverable(&self, env: &Envelope, user: &BareJid, mtype: MsgType) {
        match mtype {
            MsgType::Error | MsgType::Headline => {}
            MsgType::Groupchat => self.bounce(env, StanzaError::new(Condition::ServiceUnavailable)),
            MsgType::Normal | MsgType::Chat => {
                if !self.account_exists(user).await {
                    self.bounce(env, StanzaError::new(Condition::ServiceUnavailable));
                    return;
                }
                self.store_offline(env, user).await;
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
