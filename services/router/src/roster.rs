//! The roster (RFC 6121 §2, versioned per §2.6) and the subscription state machine
//! (RFC 6121 §3 and Appendix A, including pre-approval §3.4). Every change is stored, then
//! pushed to the user's interested resources (§2.1.6).

use crate::LocalRouter;
use bytes::Bytes;
use rookery_core::{IqType, RosterInterest, ServerApi, SessionEntry, SessionExt};
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_stanza::{Condition, StanzaError, ns};
use rookery_storage::{RosterItem, Subscription};
use rookery_xml::Element;

fn sub_name(s: Subscription) -> &'static str {
    match s {
        Subscription::None => "none",
        Subscription::To => "to",
        Subscription::From => "from",
        Subscription::Both => "both",
    }
}

/// The `<item/>` element of a roster result or push.
pub(crate) fn item_element(item: &RosterItem) -> Element {
    let mut e = Element::new("item", ns::ROSTER).attr("jid", item.jid.clone());
    if let Some(n) = &item.name {
        e.set_attr("name", n.clone());
    }
    e.set_attr("subscription", sub_name(item.subscription));
    if item.ask {
        e.set_attr("ask", "subscribe");
    }
    if item.approved {
        e.set_attr("approved", "true");
    }
    for g in &item.groups {
        e.push_child(Element::new("group", ns::ROSTER).text(g.clone()));
    }
    e
}

fn new_item(jid: &BareJid) -> RosterItem {
    RosterItem {
        jid: jid.as_str().to_owned(),
        name: None,
        subscription: Subscription::None,
        ask: false,
        pending_in: None,
        approved: false,
        groups: Vec::new(),
        hidden: true,
    }
}

/// Roster limits (RFC 6121 §2.3.3 lets a server refuse over-long names and full rosters).
const MAX_ROSTER_ITEMS: usize = 2000;
const MAX_GROUPS: usize = 64;
/// Bytes in an item name or a group name.
const MAX_TEXT: usize = 1023;

/// Appendix A state changes, named after what the user gains or loses.
fn gain_to(s: Subscription) -> Subscription {
    match s {
        Subscription::None => Subscription::To,
        Subscription::From => Subscription::Both,
        s => s,
    }
}
fn gain_from(s: Subscription) -> Subscription {
    match s {
        Subscription::None => Subscription::From,
        Subscription::To => Subscription::Both,
        s => s,
    }
}
fn lose_to(s: Subscription) -> Subscription {
    match s {
        Subscription::To => Subscription::None,
        Subscription::Both => Subscription::From,
        s => s,
    }
}
fn lose_from(s: Subscription) -> Subscription {
    match s {
        Subscription::From => Subscription::None,
        Subscription::Both => Subscription::To,
        s => s,
    }
}

/// A hidden item that no longer remembers anything can go.
fn is_empty(item: &RosterItem) -> bool {
    item.hidden && item.subscription == Subscription::None && !item.ask && item.pending_in.is_none() && !item.approved
}

impl LocalRouter {
    async fn get_item(&self, user: &BareJid, contact: &BareJid) -> Option<RosterItem> {
        match self.stores.roster.get_item(user, contact.as_str()).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(event = "roster_read_failed", user = %user, error = %e);
                None
            }
        }
    }

    /// Stores the item (or removes it when it is empty and hidden) and pushes visible
    /// changes. `was_visible` tells whether a removal must be pushed.
    async fn save_item(&self, user: &BareJid, item: RosterItem, was_visible: bool) {
        if is_empty(&item) {
            match self.stores.roster.remove_item(user, &item.jid).await {
                Ok(Some(ver)) if was_visible => self.push_item(user, &item, ver, true).await,
                Ok(_) => {}
                Err(e) => tracing::warn!(event = "roster_write_failed", user = %user, error = %e),
            }
            return;
        }
        let visible = !item.hidden;
        match self.stores.roster.put_item(user, item.clone()).await {
            Ok(ver) if visible => self.push_item(user, &item, ver, false).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(event = "roster_write_failed", user = %user, error = %e),
        }
    }

    /// §2.1.6 roster push to every interested resource.
    async fn push_item(&self, user: &BareJid, item: &RosterItem, ver: u64, removed: bool) {
        let mut el = item_element(item);
        if removed {
            el.set_attr("subscription", "remove");
            el.remove_attr("ask");
            el.remove_attr("approved");
        }
        let query = Element::new("query", ns::ROSTER).attr("ver", ver.to_string()).child(el);
        for s in self.registry.sessions_with(user, RosterInterest::KEY).await.iter() {
            let bytes = rookery_stanza::iq_request("set", None, &s.jid, &self.next_push_id(), &query);
            self.send(s, bytes);
        }
    }

    /// Sends `bytes` to every available resource of a local user.
    async fn to_available(&self, user: &BareJid, bytes: &Bytes) {
        for s in self.registry.sessions(user).await.iter().filter(|s| s.available) {
            self.send(s, bytes.clone());
        }
    }

    /// A presence of type `kind` from `from`'s bare JID to `to`.
    fn sub_stanza(from: &BareJid, to: &BareJid, kind: &str) -> Bytes {
        rookery_stanza::presence(from.as_jid(), to.as_jid(), Some(kind))
    }

    /// Outbound subscription stanza from `user` to `contact` (Appendix A.2), then its
    /// inbound processing at the contact (A.3) when the contact is local.
    pub(crate) async fn subscription_out(&self, user: &BareJid, contact: &BareJid, kind: &str, stanza: Bytes) {
        let guard = self.roster_lock(user).await;
        let existing = self.get_item(user, contact).await;
        let was_visible = existing.as_ref().is_some_and(|i| !i.hidden);
        let mut item = existing.clone().unwrap_or_else(|| new_item(contact));
        let mut route = true;
        match kind {
            "subscribe" => {
                // A.2.1: None/From gain ask; To/Both are unchanged but still routed.
                if matches!(item.subscription, Subscription::None | Subscription::From) && !item.ask {
                    item.ask = true;
                    item.hidden = false;
                    self.save_item(user, item, was_visible).await;
                }
            }
            "unsubscribe" => {
                // A.2.2
                let before = item.clone();
                item.subscription = lose_to(item.subscription);
                item.ask = false;
                if existing.is_some() && item != before {
                    self.save_item(user, item, was_visible).await;
                }
            }
            "subscribed" => {
                // A.2.3: approve a pending request, or pre-approve (§3.4).
                if item.pending_in.is_some() {
                    item.subscription = gain_from(item.subscription);
                    item.pending_in = None;
                    item.approved = false;
                    item.hidden = false;
                    self.save_item(user, item, was_visible).await;
                } else if item.subscription.contact_sees_presence() {
                    route = false;
                } else {
                    if !item.approved {
                        item.approved = true;
                        item.hidden = false;
                        self.save_item(user, item, was_visible).await;
                    }
                    route = false;
                }
            }
            "unsubscribed" => {
                // A.2.4: cancel or deny the contact's subscription.
                let had_from = item.subscription.contact_sees_presence();
                let before = item.clone();
                item.subscription = lose_from(item.subscription);
                item.pending_in = None;
                item.approved = false;
                if existing.is_some() && item != before {
                    self.save_item(user, item, was_visible).await;
                }
                if had_from {
                    // §3.2.2: the contact stops seeing the user.
                    for s in self.registry.sessions(user).await.iter().filter(|s| s.available) {
                        let p = rookery_stanza::presence(s.jid.as_jid(), contact.as_jid(), Some("unavailable"));
                        self.deliver_presence_from(s.jid.as_jid(), contact.as_jid(), p).await;
                    }
                }
            }
            _ => return,
        }
        // Never hold one user's roster lock while taking another's.
        drop(guard);
        if !route || !self.is_local(contact.domain()) || contact.node().is_none() {
            return;
        }
        Box::pin(self.subscription_in(contact, user, kind, stanza)).await;
    }

    /// Inbound subscription stanza for local `contact` from `user` (Appendix A.3).
    async fn subscription_in(&self, contact: &BareJid, user: &BareJid, kind: &str, stanza: Bytes) {
        // §8.5.1: for an unknown account, silently ignore.
        if !self.account_exists(contact).await {
            return;
        }
        if self.blocked(contact, user.as_jid()).await {
            return;
        }
        let guard = self.roster_lock(contact).await;
        let existing = self.get_item(contact, user).await;
        let was_visible = existing.as_ref().is_some_and(|i| !i.hidden);
        let mut item = existing.clone().unwrap_or_else(|| new_item(user));
        // An automatic `subscribed` answer, sent once this roster's lock is released.
        let mut auto_reply = None;
        match kind {
            "subscribe" => {
                if item.subscription.contact_sees_presence() {
                    // §3.1.3: already subscribed: the server answers for the contact.
                    auto_reply = Some(Self::sub_stanza(contact, user, "subscribed"));
                } else if item.approved {
                    // §3.4: pre-approved.
                    item.subscription = gain_from(item.subscription);
                    item.approved = false;
                    item.hidden = false;
                    self.save_item(contact, item, was_visible).await;
                    auto_reply = Some(Self::sub_stanza(contact, user, "subscribed"));
                } else {
                    item.pending_in = Some(stanza.to_vec());
                    self.save_item(contact, item, was_visible).await;
                    self.to_available(contact, &stanza).await;
                }
            }
            "subscribed"
                // A.3.3: only meaningful when we asked.
                if item.ask => {
                    item.subscription = gain_to(item.subscription);
                    item.ask = false;
                    self.save_item(contact, item, was_visible).await;
                    self.to_available(contact, &stanza).await;
                    // §3.1.6: the approver's presence follows.
                    self.send_current_presence(user, contact).await;
                }
            "unsubscribe" => {
                // A.3.2
                let had_from = item.subscription.contact_sees_presence();
                let before = item.clone();
                item.subscription = lose_from(item.subscription);
                item.pending_in = None;
                if existing.is_some() && item != before {
                    self.save_item(contact, item, was_visible).await;
                    self.to_available(contact, &stanza).await;
                }
                if had_from {
                    // §3.3.3: the user no longer sees the contact.
                    for s in self.registry.sessions(contact).await.iter().filter(|s| s.available) {
                        let p = rookery_stanza::presence(s.jid.as_jid(), user.as_jid(), Some("unavailable"));
                        self.deliver_presence_from(s.jid.as_jid(), user.as_jid(), p).await;
                    }
                }
            }
            "unsubscribed" => {
                // A.3.4
                let before = item.clone();
                item.subscription = lose_to(item.subscription);
                item.ask = false;
                if existing.is_some() && item != before {
                    self.save_item(contact, item, was_visible).await;
                    self.to_available(contact, &stanza).await;
                }
            }
            _ => {}
        }
        drop(guard);
        if let Some(reply) = auto_reply {
            Box::pin(self.subscription_in_as_reply(user, contact, "subscribed", reply)).await;
        }
    }

    /// A subscription stanza the server generates on behalf of `from` for `to`.
    async fn subscription_in_as_reply(&self, to: &BareJid, from: &BareJid, kind: &str, stanza: Bytes) {
        if self.is_local(to.domain()) {
            Box::pin(self.subscription_in(to, from, kind, stanza)).await;
        }
    }

    /// §3.1.5: after approving, the contact gets the user's current presence.
    async fn send_current_presence(&self, user: &BareJid, to: &BareJid) {
        for s in self.registry.sessions(user).await.iter().filter(|s| s.available) {
            if let Some(p) = &s.presence {
                let bytes = crate::presence::readdress(p, to.as_jid());
                self.deliver_presence_from(s.jid.as_jid(), to.as_jid(), bytes).await;
            }
        }
    }

    /// §3.1.3: pending requests are delivered again when the user comes online.
    pub(crate) async fn redeliver_pending_subscriptions(&self, entry: &SessionEntry) {
        let user = entry.jid.to_bare();
        let Ok(roster) = self.stores.roster.get(&user).await else { return };
        for item in roster.items {
            let Some(p) = item.pending_in else { continue };
            // Nothing from a JID the user's policy refuses since.
            if let Ok(from) = Jid::parse(&item.jid)
                && self.blocked(&user, &from).await
            {
                continue;
            }
            self.send(entry, Bytes::from(p));
        }
    }

    /// Roster get/set (§2.1.3, §2.1.5, §2.5) from a bound resource.
    pub(crate) async fn roster_iq(
        &self,
        from: &FullJid,
        kind: IqType,
        payload: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let user = from.to_bare();
        match kind {
            IqType::Get => {
                // §2.1.6: from now on this resource gets roster pushes.
                self.set_session_ext(from, RosterInterest::KEY, Some(RosterInterest.encode())).await;
                let roster = self.stores.roster.get(&user).await.map_err(|e| {
                    tracing::warn!(event = "roster_read_failed", user = %user, error = %e);
                    StanzaError::new(Condition::InternalServerError)
                })?;
                let ver = roster.version.to_string();
                // RFC 6121 §2.6.3: an unchanged roster is answered with an empty result.
                if payload.get_attr("ver") == Some(ver.as_str()) {
                    return Ok(None);
                }
                let mut q = Element::new("query", ns::ROSTER).attr("ver", ver);
                for item in roster.items.iter().filter(|i| !i.hidden) {
                    q.push_child(item_element(item));
                }
                Ok(Some(q))
            }
            IqType::Set => {
                let items: Vec<&Element> = payload.elements().filter(|e| e.is("item", ns::ROSTER)).collect();
                // §2.3.3: exactly one item.
                let [item_el] = items.as_slice() else {
                    return Err(
                        StanzaError::new(Condition::BadRequest).with_text("a roster set carries exactly one item")
                    );
                };
                let jid_attr = item_el.get_attr("jid").ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
                let contact = Jid::parse(jid_attr).map_err(|_| StanzaError::new(Condition::JidMalformed))?.to_bare();
                if item_el.get_attr("subscription") == Some("remove") {
                    return self.roster_remove(&user, &contact).await;
                }
                let mut groups: Vec<String> = Vec::new();
                for g in item_el.elements().filter(|e| e.is("group", ns::ROSTER)) {
                    let name = g.text_content();
                    if name.is_empty() {
                        return Err(StanzaError::new(Condition::NotAcceptable).with_text("empty group name"));
                    }
                    if name.len() > MAX_TEXT || groups.len() >= MAX_GROUPS {
                        return Err(
                            StanzaError::new(Condition::NotAcceptable).with_text("group name or count over the limit")
                        );
                    }
                    if groups.contains(&name) {
                        return Err(StanzaError::new(Condition::BadRequest).with_text("duplicate group"));
                    }
                    groups.push(name);
                }
                if item_el.get_attr("name").is_some_and(|n| n.len() > MAX_TEXT) {
                    return Err(StanzaError::new(Condition::NotAcceptable).with_text("name over the limit"));
                }
                let _serial = self.roster_lock(&user).await;
                let existing = self.get_item(&user, &contact).await;
                if existing.as_ref().is_none_or(|i| i.hidden) {
                    // §2.3.3: a roster has a size limit.
                    let size = self.stores.roster.get(&user).await.map(|r| r.items.len()).unwrap_or(0);
                    if size >= MAX_ROSTER_ITEMS {
                        return Err(StanzaError::new(Condition::NotAllowed).with_text("the roster is full"));
                    }
                }
                let mut item = existing.unwrap_or_else(|| new_item(&contact));
                // §2.1.2.5: the client cannot set subscription or ask.
                item.name = item_el.get_attr("name").filter(|n| !n.is_empty()).map(str::to_owned);
                item.groups = groups;
                item.hidden = false;
                match self.stores.roster.put_item(&user, item.clone()).await {
                    Ok(ver) => self.push_item(&user, &item, ver, false).await,
                    Err(e) => {
                        tracing::warn!(event = "roster_write_failed", user = %user, error = %e);
                        return Err(StanzaError::new(Condition::InternalServerError));
                    }
                }
                Ok(None)
            }
        }
    }

    /// §2.5.2: removing an item cancels subscriptions both ways.
    async fn roster_remove(&self, user: &BareJid, contact: &BareJid) -> Result<Option<Element>, StanzaError> {
        let Some(item) = self.get_item(user, contact).await.filter(|i| !i.hidden) else {
            return Err(StanzaError::new(Condition::ItemNotFound));
        };
        let local = self.is_local(contact.domain()) && contact.node().is_some();
        let had_from = item.subscription.contact_sees_presence();
        if had_from {
            // Only a contact that saw the user's presence is told it ends (§11: a
            // pending requester must not learn the user's resources).
            for s in self.registry.sessions(user).await.iter().filter(|s| s.available) {
                let p = rookery_stanza::presence(s.jid.as_jid(), contact.as_jid(), Some("unavailable"));
                self.deliver_presence_from(s.jid.as_jid(), contact.as_jid(), p).await;
            }
        }
        if (had_from || item.pending_in.is_some()) && local {
            let st = Self::sub_stanza(user, contact, "unsubscribed");
            self.subscription_in(contact, user, "unsubscribed", st).await;
        }
        if (matches!(item.subscription, Subscription::To | Subscription::Both) || item.ask) && local {
            let st = Self::sub_stanza(user, contact, "unsubscribe");
            self.subscription_in(contact, user, "unsubscribe", st).await;
        }
        let _serial = self.roster_lock(user).await;
        match self.stores.roster.remove_item(user, contact.as_str()).await {
            Ok(Some(ver)) => self.push_item(user, &item, ver, true).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(event = "roster_write_failed", user = %user, error = %e);
                return Err(StanzaError::new(Condition::InternalServerError));
            }
        }
        Ok(None)
    }
}
