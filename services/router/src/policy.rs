//! Per-user stanza policy as the kernel asks for it: wherever RFC 6121 delivers a stanza
//! between a local user and another address, the `PRIVACY` hook is asked whether the
//! user's policy lets it pass (RFC 6121 §8.5 leaves such policies to the server; a
//! blocking module answers it). No handler means everything passes.
//!
//! Owns: running the hook at the kernel's check points. Must not touch: what a policy
//! contains or how it matches (the modules).

use crate::LocalRouter;
use rookery_core::hooks::{PRIVACY, PrivacyCheck};
use rookery_core::{Ctx, Flow};
use rookery_jid::{BareJid, Jid};
use rookery_stanza::{Condition, StanzaError};

impl LocalRouter {
    /// Whether `owner`'s policy refuses stanzas between `owner` and `other`. `outbound`:
    /// `owner` is the sender. Returns the error the sender gets.
    pub(crate) async fn denied(&self, owner: &BareJid, other: &Jid, outbound: bool) -> Option<StanzaError> {
        if self.hooks.is_empty(PRIVACY) {
            return None;
        }
        self.denied_in(&self.ctx()?, owner, other, outbound).await
    }

    /// `denied` with the caller's context (a stanza's path builds it once).
    pub(crate) async fn denied_in(
        &self,
        ctx: &Ctx,
        owner: &BareJid,
        other: &Jid,
        outbound: bool,
    ) -> Option<StanzaError> {
        if self.hooks.is_empty(PRIVACY) {
            return None;
        }
        let mut ev = PrivacyCheck { owner: owner.clone(), other: other.clone(), outbound, denied: None };
        let flow = self.hooks.run(PRIVACY, ctx, &mut ev).await;
        // A handler that refused without saying how is answered like an absent user.
        ev.denied.or_else(|| (flow == Flow::Stop).then(|| StanzaError::new(Condition::ServiceUnavailable)))
    }

    /// Whether `owner`'s policy refuses stanzas between `owner` and `other`, either way.
    pub(crate) async fn blocked(&self, owner: &BareJid, other: &Jid) -> bool {
        self.denied(owner, other, false).await.is_some()
    }
}
