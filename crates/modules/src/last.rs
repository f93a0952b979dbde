//! XEP-0012: Last Activity, answered by the server.
//!
//! - To the server (§5): `seconds` is the server's uptime, no text.
//! - To an account's bare JID (§3): only for requesters allowed to see the user's presence
//!   (a roster subscription of `from` or `both`), otherwise `forbidden` (§3, §8: no presence
//!   leak). With an available resource the answer is `seconds='0'`; otherwise the seconds
//!   since the last session ended, with the status of its unavailable presence as text, or
//!   `item-not-found` when nothing was recorded. An unknown account is
//!   `service-unavailable` (RFC 6121 §8.5.1).
//! - To one's own bare JID: the same answer without the authorisation check.
//!
//! Queries to a full JID (§4) are delivered to the client by the router and never reach
//! this module. Recording the last activity on logout is the presence code's job.

use crate::util::{TargetedHandler, account_exists, may_see_presence, register_at, sender};
use async_trait::async_trait;
use rookery_core::{Ctx, IqRequest, IqResult, IqType, Module, ModuleInfo, Registrar, Support, Target, XepSupport};
use rookery_jid::BareJid;
use rookery_stanza::{Condition, StanzaError, ns};
use rookery_xml::Element;
use std::sync::Arc;

const MODULE: &str = "last";

/// Answers `jabber:iq:last` for the server and its accounts.
pub struct LastActivity;

impl Module for LastActivity {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            depends: &[],
            name: MODULE,
            specs: &[XepSupport {
                spec: "XEP-0012",
                version: "2.0",
                support: Support::Full,
                note: "server uptime (§5) and offline users (§3); full-JID queries (§4) go to \
                       the client",
            }],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.host_feature(ns::LAST);
        r.account_feature(ns::LAST);
        let targets = [Target::Host, Target::Own, Target::OtherUser];
        register_at(r, &self, "query", ns::LAST, IqType::Get, &targets);
    }
}

#[async_trait]
impl TargetedHandler for LastActivity {
    async fn handle_at(&self, ctx: &Ctx, req: IqRequest, target: Target) -> IqResult {
        match target {
            Target::Host => Ok(Some(query(ctx.server.uptime_secs(), None))),
            Target::Own => user_last(ctx, &sender(&req)?).await,
            Target::OtherUser => {
                let user = req.to.to_bare();
                if !account_exists(ctx, MODULE, &user).await? {
                    return Err(StanzaError::new(Condition::ServiceUnavailable));
                }
                let requester = sender(&req).map_err(|_| StanzaError::new(Condition::Forbidden))?;
                if !may_see_presence(ctx, MODULE, &user, &requester).await? {
                    return Err(StanzaError::new(Condition::Forbidden));
                }
                user_last(ctx, &user).await
            }
        }
    }
}

async fn user_last(ctx: &Ctx, user: &BareJid) -> IqResult {
    if ctx.server.is_online(user).await {
        return Ok(Some(query(0, None)));
    }
    let last = ctx
        .stores
        .last
        .get(user)
        .await
        .map_err(|e| crate::util::store_failed(MODULE, &e))?
        .ok_or_else(|| StanzaError::new(Condition::ItemNotFound))?;
    let seconds = rookery_storage::now_secs().saturating_sub(last.at);
    Ok(Some(query(seconds, Some(&last.status))))
}

fn query(seconds: u64, status: Option<&str>) -> Element {
    let q = Element::new("query", ns::LAST).attr("seconds", seconds.to_string());
    match status {
        Some(s) if !s.is_empty() => q.text(s),
        _ => q,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::*;
    use rookery_storage::LastActivity as Stored;

    const Q: &str = "<query xmlns='jabber:iq:last'/>";

    fn seconds(q: &Element) -> u64 {
        q.get_attr("seconds").unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn server_uptime() {
        let h = Harness::new(|r| r.add(Arc::new(LastActivity)));
        let q = h.get("bob@example.com/b", "example.com", Q).await.unwrap().unwrap();
        assert_eq!(seconds(&q), 1234);
        assert_eq!(q.text_content(), "");
        assert!(h.features.host.contains(&ns::LAST));
        assert!(h.features.account.contains(&ns::LAST));
    }

    #[tokio::test]
    async fn unknown_user_is_service_unavailable() {
        let h = Harness::new(|r| r.add(Arc::new(LastActivity)));
        let e = h.get("bob@example.com/b", "ghost@example.com", Q).await.unwrap_err();
        assert_eq!(e.condition, Condition::ServiceUnavailable);
    }

    #[tokio::test]
    async fn requires_presence_subscription() {
        let h = Harness::new(|r| r.add(Arc::new(LastActivity)));
        h.account("alice@example.com").await;
        let at = rookery_storage::now_secs() - 100;
        h.ctx.stores.last.set(&bare("alice@example.com"), Stored { at, status: "Heading Home".into() }).await.unwrap();

        let e = h.get("bob@example.com/b", "alice@example.com", Q).await.unwrap_err();
        assert_eq!(e.condition, Condition::Forbidden);
        // alice is subscribed to bob's presence, not the other way round: still forbidden.
        h.subscription("alice@example.com", "bob@example.com", Subscription::To).await;
        let e = h.get("bob@example.com/b", "alice@example.com", Q).await.unwrap_err();
        assert_eq!(e.condition, Condition::Forbidden);

        h.subscription("alice@example.com", "bob@example.com", Subscription::Both).await;
        let q = h.get("bob@example.com/b", "alice@example.com", Q).await.unwrap().unwrap();
        assert!((100..110).contains(&seconds(&q)));
        assert_eq!(q.text_content(), "Heading Home");
    }

    #[tokio::test]
    async fn online_user_is_zero_and_never_seen_is_item_not_found() {
        let h = Harness::new(|r| r.add(Arc::new(LastActivity)));
        h.account("alice@example.com").await;
        h.subscription("alice@example.com", "bob@example.com", Subscription::From).await;
        let e = h.get("bob@example.com/b", "alice@example.com", Q).await.unwrap_err();
        assert_eq!(e.condition, Condition::ItemNotFound);

        // A connected but unavailable resource does not count (§3: available resource).
        h.server.connect("alice@example.com/x", false, false);
        let e = h.get("bob@example.com/b", "alice@example.com", Q).await.unwrap_err();
        assert_eq!(e.condition, Condition::ItemNotFound);

        h.server.connect("alice@example.com/phone", true, true);
        let q = h.get("bob@example.com/b", "alice@example.com", Q).await.unwrap().unwrap();
        assert_eq!(seconds(&q), 0);
        assert_eq!(q.text_content(), "");
    }

    #[tokio::test]
    async fn own_account_needs_no_subscription() {
        let h = Harness::new(|r| r.add(Arc::new(LastActivity)));
        h.account("alice@example.com").await;
        let at = rookery_storage::now_secs() - 5;
        h.ctx.stores.last.set(&bare("alice@example.com"), Stored { at, status: String::new() }).await.unwrap();
        let q = h.get_own("alice@example.com/a", Q).await.unwrap().unwrap();
        assert!((5..15).contains(&seconds(&q)));
        assert_eq!(q.text_content(), "");
    }
}
