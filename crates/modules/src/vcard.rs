//! XEP-0054: vcard-temp, stored by the server on the user's behalf.
//!
//! - Retrieving one's vCard (§3.1): the stored one, or an empty `<vCard/>` when none.
//! - Updating one's vCard (§3.2): the whole element replaces the stored one (no partial
//!   updates exist); a set addressed to another user is `forbidden`.
//! - Viewing another user's vCard (§3.3): the stored one; `service-unavailable` both when
//!   the account does not exist and when it has no vCard, as §3.3 requires, so the answer
//!   cannot be used to harvest accounts.
//!
//! A vCard is kept as its serialised bytes (opaque to storage) and limited to
//! [`MAX_VCARD_BYTES`] so one account cannot grow the store without bound (photos belong
//! in XEP-0084 or HTTP upload). Feature `vcard-temp` (§4).

use crate::util::{TargetedHandler, account_exists, register_at, sender, store_failed};
use async_trait::async_trait;
use bytes::Bytes;
use rookery_core::{Ctx, IqRequest, IqResult, IqType, Module, ModuleInfo, Registrar, Support, Target, XepSupport};
use rookery_jid::BareJid;
use rookery_stanza::{Condition, StanzaError, ns};
use rookery_xml::Element;
use std::sync::Arc;

const MODULE: &str = "vcard";

/// Largest serialised vCard accepted.
pub const MAX_VCARD_BYTES: usize = 64 * 1024;

/// Stores and serves `vcard-temp` vCards.
pub struct Vcard;

impl Module for Vcard {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            depends: &[],
            name: MODULE,
            specs: &[XepSupport {
                spec: "XEP-0054",
                version: "1.3.0",
                support: Support::Full,
                note: "vCards up to 64 KiB",
            }],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.host_feature(ns::VCARD);
        let targets = [Target::Own, Target::OtherUser];
        register_at(r, &self, "vCard", ns::VCARD, IqType::Get, &targets);
        register_at(r, &self, "vCard", ns::VCARD, IqType::Set, &targets);
    }
}

#[async_trait]
impl TargetedHandler for Vcard {
    async fn handle_at(&self, ctx: &Ctx, req: IqRequest, target: Target) -> IqResult {
        match (req.kind, target) {
            (IqType::Get, Target::OtherUser) => {
                let user = req.to.to_bare();
                let unavailable = || StanzaError::new(Condition::ServiceUnavailable);
                if !account_exists(ctx, MODULE, &user).await? {
                    return Err(unavailable());
                }
                load(ctx, &user).await?.map(Some).ok_or_else(unavailable)
            }
            (IqType::Get, _) => {
                let user = sender(&req)?;
                Ok(Some(load(ctx, &user).await?.unwrap_or_else(|| Element::new("vCard", ns::VCARD))))
            }
            (IqType::Set, Target::Own) => {
                let user = sender(&req)?;
                // Written standalone (with its xmlns) so the bytes parse on their own.
                let bytes = req.payload.to_bytes("");
                if bytes.len() > MAX_VCARD_BYTES {
                    return Err(StanzaError::new(Condition::NotAcceptable).with_text("vCard too large"));
                }
                ctx.stores.vcard.set(&user, bytes).await.map_err(|e| store_failed(MODULE, &e))?;
                Ok(None)
            }
            // §3.2: setting someone else's vCard (the server's own has no handler here).
            (IqType::Set, _) => Err(StanzaError::new(Condition::Forbidden)),
        }
    }
}

async fn load(ctx: &Ctx, user: &BareJid) -> Result<Option<Element>, StanzaError> {
    let Some(raw) = ctx.stores.vcard.get(user).await.map_err(|e| store_failed(MODULE, &e))? else {
        return Ok(None);
    };
    parse_stored(user, &raw).map(Some)
}

fn parse_stored(user: &BareJid, raw: &Bytes) -> Result<Element, StanzaError> {
    rookery_xml::parse_element(raw, ns::VCARD).map_err(|e| {
        tracing::warn!(event = "vcard_corrupt", user = %user, error = %e);
        StanzaError::new(Condition::InternalServerError)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::*;

    const GET: &str = "<vCard xmlns='vcard-temp'/>";
    const CARD: &str = "<vCard xmlns='vcard-temp'><FN>Alice &amp; Co</FN><N><GIVEN>Alice</GIVEN></N></vCard>";

    #[tokio::test]
    async fn own_vcard_round_trip() {
        let h = Harness::new(|r| r.add(Arc::new(Vcard)));
        h.account("alice@example.com").await;
        let empty = h.get_own("alice@example.com/a", GET).await.unwrap().unwrap();
        assert!(empty.is("vCard", ns::VCARD));
        assert!(empty.children.is_empty());

        assert_eq!(h.set_own("alice@example.com/a", CARD).await.unwrap(), None);
        let got = h.get_own("alice@example.com/a", GET).await.unwrap().unwrap();
        assert_eq!(got.get_child("FN", ns::VCARD).unwrap().text_content(), "Alice & Co");
        assert_eq!(got, rookery_xml::parse_element(CARD.as_bytes(), "jabber:client").unwrap());
        assert!(h.features.host.contains(&ns::VCARD));
    }

    #[tokio::test]
    async fn other_users_vcard() {
        let h = Harness::new(|r| r.add(Arc::new(Vcard)));
        // No such account and no vCard give the same error (§3.3).
        let e = h.get("bob@example.com/b", "ghost@example.com", GET).await.unwrap_err();
        assert_eq!(e.condition, Condition::ServiceUnavailable);
        h.account("alice@example.com").await;
        let e = h.get("bob@example.com/b", "alice@example.com", GET).await.unwrap_err();
        assert_eq!(e.condition, Condition::ServiceUnavailable);

        h.set_own("alice@example.com/a", CARD).await.unwrap();
        let got = h.get("bob@example.com/b", "alice@example.com", GET).await.unwrap().unwrap();
        assert_eq!(
            got.get_child("N", ns::VCARD).unwrap().get_child("GIVEN", ns::VCARD).unwrap().text_content(),
            "Alice"
        );
    }

    #[tokio::test]
    async fn cannot_set_another_users_vcard() {
        let h = Harness::new(|r| r.add(Arc::new(Vcard)));
        h.account("alice@example.com").await;
        let e = h.set("bob@example.com/b", "alice@example.com", CARD).await.unwrap_err();
        assert_eq!(e.condition, Condition::Forbidden);
        assert!(h.ctx.stores.vcard.get(&bare("alice@example.com")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_vcard_is_refused() {
        let h = Harness::new(|r| r.add(Arc::new(Vcard)));
        let big = format!("<vCard xmlns='vcard-temp'><DESC>{}</DESC></vCard>", "x".repeat(MAX_VCARD_BYTES));
        let e = h.set_own("alice@example.com/a", &big).await.unwrap_err();
        assert_eq!(e.condition, Condition::NotAcceptable);
        assert_eq!(e.kind, rookery_stanza::ErrorType::Modify);
        assert!(h.ctx.stores.vcard.get(&bare("alice@example.com")).await.unwrap().is_none());
    }
}
