//! XEP-0280: Message Carbons, the enable/disable protocol.
//!
//! - `<enable xmlns='urn:xmpp:carbons:2'/>` (§4) and `<disable/>` (§5) as IQ-set from a
//!   bound resource to its own account (no `to`, or its bare JID) turn carbons on or off
//!   for that resource and are answered with an empty result. Repeating either is not an
//!   error (§10.1).
//! - A request that is not from a resource bound on this server is `not-allowed`
//!   (§4.1, §5.1). Addressing another user's account is not registered, so the router
//!   answers it `service-unavailable`.
//! - Feature `urn:xmpp:carbons:2` on the server (§3).
//!
//! Must not touch: which messages are copied and the copies themselves (§6-§9, §11); the
//! router does that on delivery. This module only flips the per-session flag through
//! `ServerApi::set_carbons`.

use async_trait::async_trait;
use rookery_core::{
    Ctx, IqHandler, IqRequest, IqResult, IqType, Module, ModuleInfo, Registrar, Support, Target, XepSupport,
};
use rookery_stanza::{Condition, StanzaError};
use std::sync::Arc;

/// `urn:xmpp:carbons:2`.
pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";

/// Turns carbons on and off per resource.
pub struct Carbons;

impl Module for Carbons {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            name: "carbons",
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
        r.host_feature(NS_CARBONS);
        r.iq("enable", NS_CARBONS, IqType::Set, &[Target::Own], self.clone());
        r.iq("disable", NS_CARBONS, IqType::Set, &[Target::Own], self);
    }
}

#[async_trait]
impl IqHandler for Carbons {
    async fn handle(&self, ctx: &Ctx, req: IqRequest) -> IqResult {
        let Some(from) = &req.from else {
            return Err(StanzaError::new(Condition::NotAllowed));
        };
        let on = req.payload.name == "enable";
        if ctx.server.set_carbons(from, on).await { Ok(None) } else { Err(StanzaError::new(Condition::NotAllowed)) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::*;

    #[tokio::test]
    async fn registered_for_own_account_only() {
        let h = Harness::new(|r| r.add(Arc::new(Carbons)));
        assert!(h.features.host.contains(&NS_CARBONS));
        // The fake server keeps no per-session flag (the trait default): refused, not
        // silently accepted.
        let e = h.set_own("alice@example.com/a", "<enable xmlns='urn:xmpp:carbons:2'/>").await.unwrap_err();
        assert_eq!(e.condition, Condition::NotAllowed);
        let e =
            h.set("alice@example.com/a", "bob@example.com", "<disable xmlns='urn:xmpp:carbons:2'/>").await.unwrap_err();
        assert_eq!(e.condition, Condition::FeatureNotImplemented, "no handler for another account");
        let e = h.get_own("alice@example.com/a", "<enable xmlns='urn:xmpp:carbons:2'/>").await.unwrap_err();
        assert_eq!(e.condition, Condition::FeatureNotImplemented, "only IQ-set");
    }
}
