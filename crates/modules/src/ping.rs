//! XEP-0199: XMPP Ping, client-to-server (§4.2): an IQ-get `<ping/>` to the server, to
//! the sender's own bare JID or without `to` is answered with an empty result.
//! Feature `urn:xmpp:ping` (§5). Server-initiated pings (§4.1) and s2s pings (§4.3)
//! belong to the connection layer, not here.

use async_trait::async_trait;
use rookery_core::{
    Ctx, IqHandler, IqRequest, IqResult, IqType, Module, ModuleInfo, Registrar, Support, Target, XepSupport,
};
use rookery_stanza::ns;
use std::sync::Arc;

/// Answers pings addressed to the server or the sender's own account.
pub struct Ping;

impl Module for Ping {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            depends: &[],
            name: "ping",
            specs: &[XepSupport {
                spec: "XEP-0199",
                version: "2.0.1",
                support: Support::Full,
                note: "client-to-server pings (§4.2)",
            }],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.host_feature(ns::PING);
        r.iq("ping", ns::PING, IqType::Get, &[Target::Host, Target::Own], self);
    }
}

#[async_trait]
impl IqHandler for Ping {
    async fn handle(&self, _ctx: &Ctx, _req: IqRequest) -> IqResult {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::*;
    use rookery_stanza::Condition;

    const PING: &str = "<ping xmlns='urn:xmpp:ping'/>";

    #[tokio::test]
    async fn pong_from_server_and_own_account() {
        let h = Harness::new(|r| r.add(Arc::new(Ping)));
        assert_eq!(h.get("alice@example.com/a", "example.com", PING).await.unwrap(), None);
        assert_eq!(h.get_own("alice@example.com/a", PING).await.unwrap(), None);
        assert!(h.features.host.contains(&ns::PING));
    }

    #[tokio::test]
    async fn not_answered_for_other_users_or_sets() {
        let h = Harness::new(|r| r.add(Arc::new(Ping)));
        let e = h.get("alice@example.com/a", "bob@example.com", PING).await.unwrap_err();
        assert_eq!(e.condition, Condition::FeatureNotImplemented);
        let e = h.set("alice@example.com/a", "example.com", PING).await.unwrap_err();
        assert_eq!(e.condition, Condition::FeatureNotImplemented);
    }
}
