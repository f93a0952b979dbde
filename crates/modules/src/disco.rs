//! XEP-0030: Service Discovery, as answered by the server itself.
//!
//! - disco#info to the server (§3.1): the identities and host features every registered
//!   module declared, always including disco#info and disco#items, and the XEP-0128
//!   extended-information forms modules registered for that domain.
//! - disco#info to an account's bare JID (§3.1, §8): identity `account/registered` plus the
//!   account features; `service-unavailable` when the account does not exist or the
//!   requester may not see the user's presence (§8 rule 1), so the reply never tells an
//!   unauthorised entity whether an account exists.
//! - disco#items (§4.1): for the server, the services on domains of their own
//!   (components, e.g. `conference.example.org`) under it; for accounts an empty list (§8
//!   rule 2: the only account items would be available resources, which are not listed).
//! - An unknown `node` (§3.2, §4.2, §7) is `item-not-found` where the target's existence
//!   may be divulged.
//!
//! Must not touch: what other modules advertise; it only reads `ctx.features`.

use crate::util::{TargetedHandler, account_exists, may_see_presence, register_at, sender};
use async_trait::async_trait;
use rookery_core::{Ctx, IqRequest, IqResult, IqType, Module, ModuleInfo, Registrar, Support, Target, XepSupport};
use rookery_stanza::{Condition, StanzaError, ns};
use rookery_xml::Element;
use std::sync::Arc;

const MODULE: &str = "disco";

/// Answers disco#info and disco#items for the server and its accounts.
pub struct Disco;

impl Module for Disco {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            depends: &[],
            name: MODULE,
            specs: &[XepSupport {
                spec: "XEP-0030",
                version: "2.5.0",
                support: Support::Partial,
                note: "server and account info; no items are listed yet, and account \
                       resources are never listed (§8)",
            }],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.identity("server", "im", "Rookery");
        for var in [ns::DISCO_INFO, ns::DISCO_ITEMS] {
            r.host_feature(var);
            r.account_feature(var);
        }
        let targets = [Target::Host, Target::Own, Target::OtherUser];
        register_at(r, &self, "query", ns::DISCO_INFO, IqType::Get, &targets);
        register_at(r, &self, "query", ns::DISCO_ITEMS, IqType::Get, &targets);
    }
}

#[async_trait]
impl TargetedHandler for Disco {
    async fn handle_at(&self, ctx: &Ctx, req: IqRequest, target: Target) -> IqResult {
        let node = req.payload.get_attr("node").map(str::to_owned);
        if req.payload.ns == ns::DISCO_INFO {
            info(ctx, &req, target, node.as_deref()).await
        } else {
            items(ctx, &req, target, node.as_deref())
        }
    }
}

async fn info(ctx: &Ctx, req: &IqRequest, target: Target, node: Option<&str>) -> IqResult {
    match target {
        Target::Host => {
            if node.is_some() {
                return Err(StanzaError::new(Condition::ItemNotFound));
            }
            Ok(Some(host_info(ctx, req.to.domain())))
        }
        Target::Own => {
            if node.is_some() {
                return Err(StanzaError::new(Condition::ItemNotFound));
            }
            Ok(Some(account_info(ctx)))
        }
        Target::OtherUser => {
            // §8 rule 1: the same error for a missing account and an unauthorised
            // requester, checked before the node so neither leaks.
            let unavailable = || StanzaError::new(Condition::ServiceUnavailable);
            let user = req.to.to_bare();
            let requester = sender(req).map_err(|_| unavailable())?;
            if !account_exists(ctx, MODULE, &user).await? {
                return Err(unavailable());
            }
            if !may_see_presence(ctx, MODULE, &user, &requester).await? {
                return Err(unavailable());
            }
            if node.is_some() {
                return Err(StanzaError::new(Condition::ItemNotFound));
            }
            Ok(Some(account_info(ctx)))
        }
    }
}

fn items(ctx: &Ctx, req: &IqRequest, target: Target, node: Option<&str>) -> IqResult {
    match target {
        Target::Host | Target::Own if node.is_some() => Err(StanzaError::new(Condition::ItemNotFound)),
        Target::Host => {
            let host = req.to.domain();
            let mut q = Element::new("query", ns::DISCO_ITEMS);
            for (domain, name) in &ctx.features.services {
                let under = domain.strip_suffix(host).is_some_and(|rest| rest.ends_with('.'));
                if under {
                    q.push_child(
                        Element::new("item", ns::DISCO_ITEMS).attr("jid", domain.as_str()).attr("name", *name),
                    );
                }
            }
            Ok(Some(q))
        }
        // §8 rule 2: another account's items are an empty result whatever the node and
        // whether or not the account exists.
        _ => Ok(Some(Element::new("query", ns::DISCO_ITEMS))),
    }
}

fn host_info(ctx: &Ctx, domain: &str) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO);
    for id in &ctx.features.identities {
        q.push_child(
            Element::new("identity", ns::DISCO_INFO)
                .attr("category", id.category)
                .attr("type", id.kind)
                .attr("name", id.name),
        );
    }
    push_features(&mut q, &ctx.features.host);
    // XEP-0128 §2: after the features; a form for this domain, or for every domain.
    for (scope, form) in &ctx.features.host_forms {
        if scope.covers(domain) {
            q.push_child(form.clone());
        }
    }
    q
}

fn account_info(ctx: &Ctx) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO)
        .child(Element::new("identity", ns::DISCO_INFO).attr("category", "account").attr("type", "registered"));
    push_features(&mut q, &ctx.features.account);
    q
}

/// Appends `<feature/>`s, sorted and without duplicates, always including the two disco
/// namespaces (§3.1: an entity answering disco#info supports it).
fn push_features(q: &mut Element, vars: &[&'static str]) {
    let mut all: Vec<&str> = vars.to_vec();
    all.extend([ns::DISCO_INFO, ns::DISCO_ITEMS]);
    all.sort_unstable();
    all.dedup();
    for var in all {
        q.push_child(Element::new("feature", ns::DISCO_INFO).attr("var", var));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::*;

    fn vars(q: &Element) -> Vec<String> {
        q.elements().filter(|e| e.name == "feature").map(|e| e.get_attr("var").unwrap().to_owned()).collect()
    }

    #[tokio::test]
    async fn host_info_lists_identity_and_features() {
        let h = Harness::new(|r| {
            r.add(Arc::new(Disco));
            r.add(Arc::new(crate::Ping));
        });
        let q = h
            .get("alice@example.com/a", "example.com", r"<query xmlns='http://jabber.org/protocol/disco#info'/>")
            .await
            .unwrap()
            .unwrap();
        let id = q.get_child("identity", ns::DISCO_INFO).unwrap();
        assert_eq!(id.get_attr("category"), Some("server"));
        assert_eq!(id.get_attr("type"), Some("im"));
        assert_eq!(id.get_attr("name"), Some("Rookery"));
        let v = vars(&q);
        assert!(v.contains(&ns::DISCO_INFO.to_owned()));
        assert!(v.contains(&ns::DISCO_ITEMS.to_owned()));
        assert!(v.contains(&ns::PING.to_owned()));
        let mut sorted = v.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(v, sorted);
    }

    #[tokio::test]
    async fn unknown_node_is_item_not_found() {
        let h = Harness::new(|r| r.add(Arc::new(Disco)));
        for payload in [
            r"<query xmlns='http://jabber.org/protocol/disco#info' node='x'/>",
            r"<query xmlns='http://jabber.org/protocol/disco#items' node='x'/>",
        ] {
            let e = h.get("alice@example.com/a", "example.com", payload).await.unwrap_err();
            assert_eq!(e.condition, Condition::ItemNotFound);
        }
        let e = h
            .get_own("alice@example.com/a", r"<query xmlns='http://jabber.org/protocol/disco#info' node='x'/>")
            .await
            .unwrap_err();
        assert_eq!(e.condition, Condition::ItemNotFound);
    }

    #[tokio::test]
    async fn own_account_info() {
        let h = Harness::new(|r| r.add(Arc::new(Disco)));
        h.account("alice@example.com").await;
        let q = h
            .get_own("alice@example.com/a", r"<query xmlns='http://jabber.org/protocol/disco#info'/>")
            .await
            .unwrap()
            .unwrap();
        let id = q.get_child("identity", ns::DISCO_INFO).unwrap();
        assert_eq!(id.get_attr("category"), Some("account"));
        assert_eq!(id.get_attr("type"), Some("registered"));
        assert!(vars(&q).contains(&ns::DISCO_INFO.to_owned()));
    }

    #[tokio::test]
    async fn other_account_needs_existence_and_subscription() {
        let h = Harness::new(|r| r.add(Arc::new(Disco)));
        let info = r"<query xmlns='http://jabber.org/protocol/disco#info'/>";
        // No such account.
        let e = h.get("bob@example.com/b", "ghost@example.com", info).await.unwrap_err();
        assert_eq!(e.condition, Condition::ServiceUnavailable);
        // Exists, but bob has no presence subscription: same error, nothing leaks.
        h.account("alice@example.com").await;
        let e = h.get("bob@example.com/b", "alice@example.com", info).await.unwrap_err();
        assert_eq!(e.condition, Condition::ServiceUnavailable);
        // A node on a missing account is still service-unavailable.
        let e = h
            .get(
                "bob@example.com/b",
                "ghost@example.com",
                r"<query xmlns='http://jabber.org/protocol/disco#info' node='x'/>",
            )
            .await
            .unwrap_err();
        assert_eq!(e.condition, Condition::ServiceUnavailable);
        // `to` only: not enough.
        h.subscription("alice@example.com", "bob@example.com", Subscription::To).await;
        let e = h.get("bob@example.com/b", "alice@example.com", info).await.unwrap_err();
        assert_eq!(e.condition, Condition::ServiceUnavailable);
        // `from`: alice shares presence with bob.
        h.subscription("alice@example.com", "bob@example.com", Subscription::From).await;
        let q = h.get("bob@example.com/b", "alice@example.com", info).await.unwrap().unwrap();
        let id = q.get_child("identity", ns::DISCO_INFO).unwrap();
        assert_eq!(id.get_attr("category"), Some("account"));
    }

    #[tokio::test]
    async fn items_are_empty() {
        let h = Harness::new(|r| r.add(Arc::new(Disco)));
        let items = r"<query xmlns='http://jabber.org/protocol/disco#items'/>";
        let q = h.get("alice@example.com/a", "example.com", items).await.unwrap().unwrap();
        assert!(q.is("query", ns::DISCO_ITEMS));
        assert_eq!(q.elements().count(), 0);
        let q = h.get_own("alice@example.com/a", items).await.unwrap().unwrap();
        assert_eq!(q.elements().count(), 0);
        // Missing account: empty, not an error (§8 rule 2).
        let q = h.get("alice@example.com/a", "ghost@example.com", items).await.unwrap().unwrap();
        assert_eq!(q.elements().count(), 0);
    }
}
