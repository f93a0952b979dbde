//! XEP-0359: Unique and Stable Stanza IDs, the rule every server applies whether or not
//! it archives (§3 rule 2, XEP-0313 §8.3): a `<stanza-id/>` whose `by` is one of this
//! server's accounts or domains can only have been minted here, so one arriving from a
//! client is a spoof and is removed before the message is stored, copied or delivered.
//! Stanza-ids of other entities (a remote room, another server) are kept.
//!
//! Minting and stamping ids is the archive's business (the MAM module), which also
//! advertises `urn:xmpp:sid:0` on accounts when it runs.
//! Must not touch: anything but the removal.

use async_trait::async_trait;
use rookery_core::hooks::{MESSAGE_OUT, MessageOut};
use rookery_core::{Ctx, Flow, Handler, HookResult, Module, ModuleInfo, Origin, Registrar, Support, XepSupport, prio};
use rookery_jid::Jid;
use std::sync::Arc;

/// Removes spoofed stanza-ids.
pub struct StanzaIds;

impl Module for StanzaIds {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            name: "stanza-id",
            depends: &[],
            specs: &[XepSupport {
                spec: "XEP-0359",
                version: "0.7.0",
                support: Support::Full,
                note: "stanza-id of archived messages (the mam module); spoofed ids by our accounts or domains \
                       removed (§3)",
            }],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.hook(MESSAGE_OUT, prio::STANZA_ID_SPOOF, self);
    }
}

#[async_trait]
impl Handler<MessageOut> for StanzaIds {
    async fn handle(&self, ctx: &Ctx, ev: &mut MessageOut) -> HookResult {
        self.quick(ctx, ev).unwrap_or(Ok(Flow::Continue))
    }

    /// Nothing here waits: always answered on the fast path.
    fn quick(&self, ctx: &Ctx, ev: &mut MessageOut) -> Option<HookResult> {
        if ev.origin == Origin::Client {
            let ours = |by: &str| Jid::parse(by).is_ok_and(|j| ctx.server.is_local_domain(j.domain()));
            ev.msg.strip_stanza_ids(ours);
        }
        Some(Ok(Flow::Continue))
    }
}
