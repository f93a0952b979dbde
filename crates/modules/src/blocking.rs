//! XEP-0191: Blocking Command, the block list management protocol.
//!
//! - Retrieve (§3.2): `<blocklist/>` with one `<item/>` per blocked JID, empty when none.
//! - Block (§3.3): at least one item (`bad-request` otherwise), each `jid` a valid JID
//!   (`jid-malformed` otherwise, nothing stored); stored in canonical form.
//! - Unblock (§3.4) the listed JIDs, or everything when no item is given (§3.5).
//! - After each change the cached list is dropped (on every router of a cluster, through
//!   `publish_change`), the presence §3.3/§3.4 require is sent (`ServerApi::presence_to`),
//!   and every resource of the user that retrieved the block list receives a
//!   `<block/>`/`<unblock/>` push with the items.
//! - Enforcement (§3.6 outbound, §3.7 inbound) answers the kernel's `PRIVACY` hook: the
//!   kernel asks whether an owner blocks an address wherever RFC 6121 delivers a stanza,
//!   and this module matches with the JID rules XEP-0191 §3 borrows from XEP-0016 §2.1
//!   (full JID, bare JID, domain/resource, domain). An outbound block is refused with
//!   `<not-acceptable/>` plus `<blocked xmlns='urn:xmpp:blocking:errors'/>` (§3.3).

use crate::util::{TargetedHandler, register_at, sender, store_failed};
use async_trait::async_trait;
use rookery_core::hooks::{PRIVACY, PrivacyCheck, REMOTE_CHANGE, RemoteChange};
use rookery_core::{
    Ctx, Flow, Handler, HookResult, IqRequest, IqResult, IqType, Module, ModuleInfo, Registrar, SessionExt, Support,
    Target, XepSupport, prio,
};
use rookery_jid::{BareJid, Jid};
use rookery_stanza::{Condition, StanzaError, ns};
use rookery_storage::BlockStore;
use rookery_xml::Element;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

const MODULE: &str = "blocking";

rookery_core::flag_ext!(
    /// The resource retrieved the block list and gets block/unblock pushes (§3.3).
    BlocklistInterest,
    "blocklist"
);

/// Block list management, pushes and enforcement.
#[derive(Default)]
pub struct Blocking {
    push_ids: AtomicU64,
    cache: BlockCache,
}

impl Blocking {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops cached lists here and on the other routers, then sends the presence
    /// changes §3.3 and §3.4 ask for.
    async fn changed(&self, ctx: &Ctx, user: &BareJid, blocked: &[String], unblocked: &[String]) {
        self.cache.invalidate(user);
        ctx.server.publish_change(MODULE, user);
        for (items, available) in [(blocked, false), (unblocked, true)] {
            for item in items {
                // Only local accounts get presence: a domain-wide item names nobody.
                if let Ok(target) = Jid::parse(item)
                    && target.node().is_some()
                {
                    ctx.server.presence_to(user, &target, available).await;
                }
            }
        }
    }
}

/// XEP-0191 §3.3: what a user gets for addressing someone they blocked.
pub fn blocked_error() -> StanzaError {
    StanzaError::new(Condition::NotAcceptable)
        .with_type(rookery_stanza::ErrorType::Cancel)
        .with_app("blocked", ns::BLOCKING_ERRORS)
}

#[async_trait]
impl Handler<PrivacyCheck> for Blocking {
    async fn handle(&self, ctx: &Ctx, ev: &mut PrivacyCheck) -> HookResult {
        let list = self.cache.list(ctx.stores.blocking.as_ref(), &ev.owner).await;
        Ok(enforce(&list, ev))
    }

    /// A cached list (the common case) is enforced without waiting.
    fn quick(&self, _ctx: &Ctx, ev: &mut PrivacyCheck) -> Option<HookResult> {
        let list = self.cache.cached(&ev.owner)?;
        Some(Ok(enforce(&list, ev)))
    }
}

/// §3.6, §3.7: whether `list` refuses the stanza `ev` describes.
fn enforce(list: &[String], ev: &mut PrivacyCheck) -> Flow {
    if !list.iter().any(|item| matches(item, &ev.other)) {
        return Flow::Continue;
    }
    ev.denied = Some(if ev.outbound { blocked_error() } else { StanzaError::new(Condition::ServiceUnavailable) });
    Flow::Stop
}

#[async_trait]
impl Handler<RemoteChange> for Blocking {
    async fn handle(&self, _ctx: &Ctx, ev: &mut RemoteChange) -> HookResult {
        match (&ev.user, ev.topic.as_str()) {
            (None, _) => self.cache.clear(),
            (Some(user), MODULE) => self.cache.invalidate(user),
            _ => {}
        }
        Ok(Flow::Continue)
    }
}

impl Module for Blocking {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            depends: &[],
            name: MODULE,
            specs: &[XepSupport {
                spec: "XEP-0191",
                version: "1.3",
                support: Support::Full,
                note: "block list protocol (§3), pushes to resources that requested the list, enforcement on \
                       messages, presence and IQs (§3.6, §3.7)",
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
        r.hook(PRIVACY, prio::BLOCKING, self.clone());
        r.hook(REMOTE_CHANGE, prio::DEFAULT, self);
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
                    ctx.server.set_session_ext(from, BlocklistInterest::KEY, Some(BlocklistInterest.encode())).await;
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
                self.changed(ctx, &user, &added, &[]).await;
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
                self.changed(ctx, &user, &[], &removed).await;
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
        for full in ctx.server.resources(user, Some(BlocklistInterest::KEY)).await {
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

/// Block lists cached per user; invalidated whenever the blocking module changes one.
#[derive(Default)]
pub struct BlockCache {
    cache: RwLock<HashMap<BareJid, Arc<Vec<String>>>>,
    /// Bumped by every invalidation; a list read from the store is cached only if no
    /// invalidation happened meanwhile (else a stale list could outlive a block).
    generation: AtomicU64,
}

impl BlockCache {
    /// Drops every cached list (change notices may have been missed).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
    }

    pub fn invalidate(&self, user: &BareJid) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut c) = self.cache.write() {
            c.remove(user);
        }
    }

    /// `user`'s list when it is cached.
    fn cached(&self, user: &BareJid) -> Option<Arc<Vec<String>>> {
        self.cache.read().ok().and_then(|c| c.get(user).cloned())
    }

    async fn list(&self, store: &dyn BlockStore, user: &BareJid) -> Arc<Vec<String>> {
        if let Some(l) = self.cached(user) {
            return l;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let list = match store.list(user).await {
            Ok(l) => Arc::new(l),
            Err(e) => {
                // Fail closed would drop legitimate traffic on a storage hiccup; we fail
                // open but log loudly and do not cache.
                tracing::warn!(event = "blocklist_read_failed", user = %user, error = %e);
                return Arc::new(Vec::new());
            }
        };
        // Bound the cache: a node serving many users drops it wholesale rather than
        // growing without limit; entries reload lazily.
        if let Ok(mut c) = self.cache.write() {
            if self.generation.load(Ordering::SeqCst) != generation {
                return list;
            }
            if c.len() > 100_000 {
                c.clear();
            }
            c.insert(user.clone(), list.clone());
        }
        list
    }
}

/// XEP-0016 §2.1 JID matching of a block-list item against an address.
pub fn matches(item: &str, jid: &Jid) -> bool {
    let Ok(item) = Jid::parse(item) else { return false };
    match (item.node(), item.resource()) {
        (Some(_), Some(_)) => item.as_str() == jid.as_str(),
        (Some(_), None) => item.as_str() == jid.bare_str(),
        (None, Some(r)) => item.domain() == jid.domain() && jid.resource() == Some(r) && jid.node().is_none(),
        (None, None) => item.domain() == jid.domain(),
    }
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
            h.server.set_session_ext(&full, BlocklistInterest::KEY, Some(BlocklistInterest.encode())).await;
        }
        h
    }

    #[tokio::test]
    async fn requesting_the_list_subscribes_to_pushes() {
        let h = harness().await;
        let bot = FullJid::parse("juliet@example.com/bot").unwrap();
        let juliet = bare("juliet@example.com");
        assert!(!h.server.resources(&juliet, Some(BlocklistInterest::KEY)).await.contains(&bot));
        h.get_own("juliet@example.com/bot", LIST).await.unwrap().unwrap();
        assert!(h.server.resources(&juliet, Some(BlocklistInterest::KEY)).await.contains(&bot));
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

        // §3.3: each newly blocked contact is told juliet went unavailable; the cached
        // list is dropped on every router.
        let juliet = bare("juliet@example.com");
        let calls = h.server.presence_calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                (juliet.clone(), "romeo@montague.net".to_owned(), false),
                (juliet.clone(), "iago@example.com".to_owned(), false)
            ]
        );
        assert_eq!(h.server.published.lock().unwrap().clone(), [("blocking", juliet.clone())]);

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
        assert_eq!(h.server.presence_calls.lock().unwrap().len(), 2, "nothing newly blocked");
        assert_eq!(h.server.published.lock().unwrap().len(), 2);
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
        assert!(h.server.presence_calls.lock().unwrap().is_empty());
        assert!(h.server.published.lock().unwrap().is_empty());
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
        let juliet_b = (juliet.clone(), "b@example.com".to_owned(), true);
        assert_eq!(h.server.presence_calls.lock().unwrap().clone(), std::slice::from_ref(&juliet_b));
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
        assert_eq!(
            h.server.presence_calls.lock().unwrap().clone(),
            [
                juliet_b,
                (juliet.clone(), "a@example.com".to_owned(), true),
                (juliet.clone(), "c@example.com".to_owned(), true)
            ]
        );
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

    #[test]
    fn xep0016_matching() {
        let j = Jid::parse("juliet@example.com/balcony").unwrap();
        assert!(matches("juliet@example.com/balcony", &j));
        assert!(!matches("juliet@example.com/chamber", &j));
        assert!(matches("juliet@example.com", &j));
        assert!(matches("example.com", &j));
        assert!(!matches("example.org", &j));
        assert!(!matches("romeo@example.com", &j));
        let d = Jid::parse("example.com/res").unwrap();
        assert!(matches("example.com/res", &d));
        assert!(!matches("example.com/res", &j));
    }
}
