//! XEP-0191: Blocking Command, the block list management protocol.
//!
//! - Retrieve (§3.2): `<blocklist/>` with one `<item/>` per blocked JID, empty when none.
//! - Block (§3.3): at least one item (`bad-request` otherwise), each `jid` a valid JID
//!   (`jid-malformed` otherwise, nothing stored); stored in canonical form.
//! - Unblock (§3.4) the listed JIDs, or everything when no item is given (§3.5).
//! - After each change the server is told (`ServerApi::blocklist_changed`) so it refreshes
//!   its caches and sends the presence §3.3/§3.4 require, and every resource of the user
//!   that retrieved the block list receives a `<block/>`/`<unblock/>` push with the items.
//!
//! Matching blocked JIDs against stanzas (§3.3 inbound/outbound rules, §6) is the router's
//! job.

use crate::util::{TargetedHandler, register_at, sender, store_failed};
use async_trait::async_trait;
use rookery_core::{
    Ctx, Interest, IqRequest, IqResult, IqType, Module, ModuleInfo, Registrar, Support, Target, XepSupport,
};
use rookery_jid::{BareJid, Jid};
use rookery_stanza::{Condition, StanzaError, ns};
use rookery_xml::Element;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const MODULE: &str = "blocking";

/// Block list management and pushes.
#[derive(Default)]
pub struct Blocking {
    push_ids: AtomicU64,
}

impl Blocking {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Module for Blocking {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            name: MODULE,
            specs: &[XepSupport {
                spec: "XEP-0191",
                version: "1.3",
                support: Support::Full,
                note: "block list protocol (§3), pushes to resources that requested the list; enforcement is in the router",
            }],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.host_feature(ns::BLOCKING);
        r.account_feature(ns::BLOCKING);
        let own = [Target::Own];
        register_at(r, &self, "blocklist", ns::BLOCKING, IqType::Get, &own);
        register_at(r, &self, "block", ns::BLOCKING, IqType::Set, &own);
        register_at(r, &self, "unblock", ns::BLOCKING, IqType::Set, &own);
    }
}

#[async_trait]
impl TargetedHandler for Blocking {
    async fn handle_at(&self, ctx: &Ctx, req: IqRequest, _target: Target) -> IqResult {
        let user = sender(&req)?;
        let store = |e| store_failed(MODULE, &e);
        match req.payload.name.as_str() {
            "blocklist" => {
                let list = ctx.stores.blocking.list(&user).await.map_err(store)?;
                // §3.3: from now on this resource gets the pushes.
                if let Some(from) = &req.from {
                    ctx.server.mark_interest(from, Interest::Blocklist).await;
                }
                Ok(Some(with_items("blocklist", &list)))
            }
            "block" => {
                let jids = items(&req.payload)?;
                if jids.is_empty() {
                    return Err(StanzaError::new(Condition::BadRequest));
                }
                let before = ctx.stores.blocking.list(&user).await.map_err(store)?;
                ctx.stores.blocking.block(&user, &jids).await.map_err(store)?;
                let added: Vec<String> = jids.iter().filter(|j| !before.contains(j)).cloned().collect();
                ctx.server.blocklist_changed(&user, &added, &[]).await;
                self.push(ctx, &user, &with_items("block", &jids)).await;
                Ok(None)
            }
            _ => {
                let jids = items(&req.payload)?;
                let before = ctx.stores.blocking.list(&user).await.map_err(store)?;
                let removed = if jids.is_empty() {
                    ctx.stores.blocking.unblock_all(&user).await.map_err(store)?;
                    before
                } else {
                    ctx.stores.blocking.unblock(&user, &jids).await.map_err(store)?;
                    jids.iter().filter(|j| before.contains(j)).cloned().collect()
                };
                ctx.server.blocklist_changed(&user, &[], &removed).await;
                self.push(ctx, &user, &with_items("unblock", &jids)).await;
                Ok(None)
            }
        }
    }
}

impl Blocking {
    /// Sends `payload` as an IQ-set to each resource of `user` that requested the block
    /// list (§3.3–§3.5).
    async fn push(&self, ctx: &Ctx, user: &BareJid, payload: &Element) {
        for full in ctx.server.resources(user, Interest::Blocklist).await {
            let id = format!("push-{}", self.push_ids.fetch_add(1, Ordering::Relaxed) + 1);
            let bytes = rookery_stanza::iq_request("set", None, &full, &id, payload);
            if !ctx.server.send_to_resource(&full, bytes).await {
                tracing::debug!(event = "block_push_undelivered", to = %full);
            }
        }
    }
}

/// The canonical JIDs of the `<item/>` children, deduplicated in order.
fn items(el: &Element) -> Result<Vec<String>, StanzaError> {
    let mut out: Vec<String> = Vec::new();
    for item in el.elements().filter(|e| e.is("item", ns::BLOCKING)) {
        let jid = item
            .get_attr("jid")
            .and_then(|j| Jid::parse(j).ok())
            .ok_or_else(|| StanzaError::new(Condition::JidMalformed))?;
        let jid = jid.as_str().to_owned();
        if !out.contains(&jid) {
            out.push(jid);
        }
    }
    Ok(out)
}

fn with_items(name: &str, jids: &[String]) -> Element {
    let mut el = Element::new(name, ns::BLOCKING);
    for j in jids {
        el.push_child(Element::new("item", ns::BLOCKING).attr("jid", j.as_str()));
    }
    el
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::*;
    use rookery_core::ServerApi;
    use rookery_jid::FullJid;

    const LIST: &str = "<blocklist xmlns='urn:xmpp:blocking'/>";

    fn jids(el: &Element) -> Vec<String> {
        el.elements().map(|e| e.get_attr("jid").unwrap().to_owned()).collect()
    }

    async fn harness() -> Harness {
        let h = Harness::new(|r| r.add(Arc::new(Blocking::new())));
        // Two resources asked for the block list (so they get pushes), one did not.
        h.server.connect("juliet@example.com/chamber", true, true);
        h.server.connect("juliet@example.com/balcony", false, true);
        h.server.connect("juliet@example.com/bot", true, true);
        for r in ["chamber", "balcony"] {
            let full = FullJid::parse(&format!("juliet@example.com/{r}")).unwrap();
            h.server.mark_interest(&full, Interest::Blocklist).await;
        }
        h
    }

    #[tokio::test]
    async fn requesting_the_list_subscribes_to_pushes() {
        let h = harness().await;
        let bot = FullJid::parse("juliet@example.com/bot").unwrap();
        let juliet = bare("juliet@example.com");
        assert!(!h.server.resources(&juliet, Interest::Blocklist).await.contains(&bot));
        h.get_own("juliet@example.com/bot", LIST).await.unwrap().unwrap();
        assert!(h.server.resources(&juliet, Interest::Blocklist).await.contains(&bot));
    }

    #[tokio::test]
    async fn empty_list_then_block_and_push() {
        let h = harness().await;
        let l = h.get_own("juliet@example.com/chamber", LIST).await.unwrap().unwrap();
        assert!(l.is("blocklist", ns::BLOCKING));
        assert_eq!(l.elements().count(), 0);

        let block =
            "<block xmlns='urn:xmpp:blocking'><item jid='Romeo@Montague.net'/><item jid='iago@example.com'/></block>";
        assert_eq!(h.set_own("juliet@example.com/chamber", block).await.unwrap(), None);
        let l = h.get_own("juliet@example.com/chamber", LIST).await.unwrap().unwrap();
        assert_eq!(jids(&l), ["iago@example.com", "romeo@montague.net"]);

        let changes = h.server.blocklist_changes.lock().unwrap().clone();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, bare("juliet@example.com"));
        assert_eq!(changes[0].1, ["romeo@montague.net", "iago@example.com"]);

        let sent = h.server.sent();
        let to: Vec<&str> = sent.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(to, ["juliet@example.com/chamber", "juliet@example.com/balcony"]);
        for (to, xml) in &sent {
            let iq = rookery_xml::parse_element(xml.as_bytes(), "jabber:client").unwrap();
            assert_eq!(iq.get_attr("type"), Some("set"));
            assert_eq!(iq.get_attr("to"), Some(to.as_str()));
            assert!(iq.get_attr("id").unwrap().starts_with("push-"));
            let b = iq.get_child("block", ns::BLOCKING).unwrap();
            assert_eq!(jids(b), ["romeo@montague.net", "iago@example.com"]);
        }
        assert_ne!(sent[0].1, sent[1].1, "push ids differ");

        // Blocking an already blocked JID reports nothing newly added.
        h.set_own(
            "juliet@example.com/chamber",
            "<block xmlns='urn:xmpp:blocking'><item jid='iago@example.com'/></block>",
        )
        .await
        .unwrap();
        assert!(h.server.blocklist_changes.lock().unwrap()[1].1.is_empty());
        assert!(h.features.host.contains(&ns::BLOCKING));
        assert!(h.features.account.contains(&ns::BLOCKING));
    }

    #[tokio::test]
    async fn block_errors() {
        let h = harness().await;
        let e = h.set_own("juliet@example.com/chamber", "<block xmlns='urn:xmpp:blocking'/>").await.unwrap_err();
        assert_eq!(e.condition, Condition::BadRequest);
        let e = h
            .set_own(
                "juliet@example.com/chamber",
                "<block xmlns='urn:xmpp:blocking'><item jid='ok@example.com'/><item jid='@bad'/></block>",
            )
            .await
            .unwrap_err();
        assert_eq!(e.condition, Condition::JidMalformed);
        let e = h
            .set_own("juliet@example.com/chamber", "<block xmlns='urn:xmpp:blocking'><item/></block>")
            .await
            .unwrap_err();
        assert_eq!(e.condition, Condition::JidMalformed);
        // Nothing was stored, nobody was told.
        assert!(h.ctx.stores.blocking.list(&bare("juliet@example.com")).await.unwrap().is_empty());
        assert!(h.server.sent().is_empty());
        assert!(h.server.blocklist_changes.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn unblock_some_and_all() {
        let h = harness().await;
        let juliet = bare("juliet@example.com");
        let all = ["a@example.com".to_owned(), "b@example.com".to_owned(), "c@example.com".to_owned()];
        h.ctx.stores.blocking.block(&juliet, &all).await.unwrap();

        let unblock =
            "<unblock xmlns='urn:xmpp:blocking'><item jid='b@example.com'/><item jid='z@example.com'/></unblock>";
        assert_eq!(h.set_own("juliet@example.com/balcony", unblock).await.unwrap(), None);
        assert_eq!(h.ctx.stores.blocking.list(&juliet).await.unwrap(), ["a@example.com", "c@example.com"]);
        assert_eq!(h.server.blocklist_changes.lock().unwrap()[0].2, ["b@example.com"]);
        let sent = h.server.sent();
        assert_eq!(sent.len(), 2);
        let iq = rookery_xml::parse_element(sent[0].1.as_bytes(), "jabber:client").unwrap();
        assert_eq!(jids(iq.get_child("unblock", ns::BLOCKING).unwrap()), ["b@example.com", "z@example.com"]);

        let e = h
            .set_own("juliet@example.com/balcony", "<unblock xmlns='urn:xmpp:blocking'><item jid='a@'/></unblock>")
            .await
            .unwrap_err();
        assert_eq!(e.condition, Condition::JidMalformed);

        assert_eq!(
            h.set_own("juliet@example.com/balcony", "<unblock xmlns='urn:xmpp:blocking'/>").await.unwrap(),
            None
        );
        assert!(h.ctx.stores.blocking.list(&juliet).await.unwrap().is_empty());
        assert_eq!(h.server.blocklist_changes.lock().unwrap()[1].2, ["a@example.com", "c@example.com"]);
        let sent = h.server.sent();
        assert_eq!(sent.len(), 4);
        for (_, xml) in &sent[2..] {
            let iq = rookery_xml::parse_element(xml.as_bytes(), "jabber:client").unwrap();
            let u = iq.get_child("unblock", ns::BLOCKING).unwrap();
            assert_eq!(u.elements().count(), 0);
        }
    }

    #[tokio::test]
    async fn only_own_list() {
        let h = harness().await;
        let e = h.get("romeo@example.com/r", "juliet@example.com", LIST).await.unwrap_err();
        assert_eq!(e.condition, Condition::FeatureNotImplemented);
    }
}
