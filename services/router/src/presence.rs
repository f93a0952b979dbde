//! Presence, RFC 6121 §4: initial presence and probes (§4.2, §4.3), broadcast and
//! unavailable (§4.4, §4.5), directed presence (§4.6), and the subscription stanzas of
//! §3 (the state machine of Appendix A lives in `roster.rs`).

use crate::LocalRouter;
use bytes::Bytes;
use rookery_core::hooks::{PRESENCE_IN, PRESENCE_OUT, PresenceEvent};
use rookery_core::{Flow, MAX_DIRECTED, SessionEntry};
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_stanza::{Condition, Envelope, StanzaError};
use rookery_storage::Subscription;

/// The `<status/>` text of a presence stanza, if any.
pub(crate) fn status_text(p: &Bytes) -> String {
    rookery_xml::parse_element(p, rookery_stanza::ns::CLIENT)
        .ok()
        .and_then(|e| e.get_child("status", rookery_stanza::ns::CLIENT).map(|s| s.text_content()))
        .unwrap_or_default()
}

/// A stored presence (`<presence from='full' …>`, no `to`) addressed to `to`.
pub(crate) fn readdress(p: &Bytes, to: &Jid) -> Bytes {
    const OPEN: &[u8] = b"<presence";
    if !p.starts_with(OPEN) {
        return p.clone();
    }
    let mut out = Vec::with_capacity(p.len() + to.as_str().len() + 8);
    out.extend_from_slice(OPEN);
    rookery_stanza::push_attr(&mut out, "to", to.as_str());
    out.extend_from_slice(&p[OPEN.len()..]);
    Bytes::from(out)
}

impl LocalRouter {
    pub(crate) async fn route_presence(&self, mut env: Envelope) {
        let Ok(from) = FullJid::try_from(env.from.clone()) else { return };
        if !self.hooks.is_empty(PRESENCE_OUT) {
            let Some(ctx) = self.ctx() else { return };
            let mut ev = PresenceEvent { env };
            if self.hooks.run(PRESENCE_OUT, &ctx, &mut ev).await == Flow::Stop {
                return;
            }
            env = ev.env;
        }
        let ptype = env.stanza_type().map(str::to_owned);
        match ptype.as_deref() {
            None | Some("unavailable") if env.el.to.is_none() => self.broadcast(&from, env).await,
            None | Some("unavailable") | Some("error") => self.directed(&from, env).await,
            Some("subscribe") | Some("subscribed") | Some("unsubscribe") | Some("unsubscribed") => {
                self.outbound_subscription(&from, env).await
            }
            // Probes are the server's business (RFC 6121 §4.3); a client's is ignored.
            Some("probe") => {}
            Some(_) => self.bounce(&env, StanzaError::new(Condition::BadRequest)).await,
        }
    }

    /// Contacts of `user` whose roster subscription matches `pred`.
    pub(crate) async fn contacts(&self, user: &BareJid, pred: impl Fn(Subscription) -> bool) -> Vec<Jid> {
        match self.stores.roster.get(user).await {
            Ok(r) => {
                r.items.into_iter().filter(|i| pred(i.subscription)).filter_map(|i| Jid::parse(&i.jid).ok()).collect()
            }
            Err(e) => {
                tracing::warn!(event = "roster_read_failed", user = %user, error = %e);
                Vec::new()
            }
        }
    }

    /// Whether `contact` is subscribed to `user`'s presence (subscription from/both).
    pub(crate) async fn contact_sees_presence(&self, user: &BareJid, contact: &BareJid) -> bool {
        rookery_storage::sees_presence(self.stores.roster.as_ref(), user, contact.as_str()).await.unwrap_or(false)
    }

    /// `user`'s presence towards one contact after a policy change (e.g. a block list
    /// edit): unavailable from every available resource, or each one's current
    /// presence again. Only a contact that may see the user's presence (§4.3, a `from`
    /// or `both` subscription) hears anything.
    pub(crate) async fn presence_to_contact(&self, user: &BareJid, target: &Jid, available: bool) {
        let Some(contact) = crate::user_of(target) else { return };
        if !self.contact_sees_presence(user, &contact).await {
            return;
        }
        for s in self.registry.sessions(user).await.iter().filter(|s| s.available) {
            let bytes = if available {
                let Some(p) = &s.presence else { continue };
                readdress(p, target)
            } else {
                rookery_stanza::presence(s.jid.as_jid(), target, Some("unavailable"))
            };
            self.deliver_presence_from(s.jid.as_jid(), target, bytes).await;
        }
    }

    /// Inbound presence (no type, unavailable, error) for `to`, §8.5.2.1.2 / §8.5.3.
    pub(crate) async fn deliver_presence_from(&self, from: &Jid, to: &Jid, bytes: Bytes) {
        if let Some(component) = self.component(to.domain()) {
            // Directed presence to a component JID (joining or leaving a room).
            let Ok(el) = rookery_xml::RawElement::from_bytes(bytes, rookery_stanza::ns::CLIENT) else { return };
            let Some(ctx) = self.ctx() else { return };
            let env = Envelope { kind: rookery_stanza::Kind::Presence, from: from.clone(), to: to.clone(), el };
            self.hooks.guard("component", component.handle(&ctx, env)).await;
            return;
        }
        if !self.is_local(to.domain()) {
            return;
        }
        let Some(user) = crate::user_of(to) else { return };
        if self.blocked(&user, from).await {
            return;
        }
        let mut bytes = bytes;
        if !self.hooks.is_empty(PRESENCE_IN) {
            let Ok(el) = rookery_xml::RawElement::from_bytes(bytes, rookery_stanza::ns::CLIENT) else { return };
            let Some(ctx) = self.ctx() else { return };
            let env = Envelope { kind: rookery_stanza::Kind::Presence, from: from.clone(), to: to.clone(), el };
            let mut ev = PresenceEvent { env };
            if self.hooks.run(PRESENCE_IN, &ctx, &mut ev).await == Flow::Stop {
                return;
            }
            bytes = ev.env.wire();
        }
        let sessions = self.registry.sessions(&user).await;
        match to.resource() {
            Some(res) => {
                if let Some(s) = sessions.iter().find(|s| s.jid.resource() == res) {
                    self.send(s, bytes);
                }
            }
            None => {
                for s in sessions.iter().filter(|s| s.available) {
                    self.send(s, bytes.clone());
                }
            }
        }
    }

    async fn broadcast(&self, from: &FullJid, env: Envelope) {
        let user = from.to_bare();
        let stored = env.el.rewrite_attrs(&[("from", Some(from.as_str())), ("to", None)]);
        if env.stanza_type() == Some("unavailable") {
            let mut before = None;
            self.registry
                .update(from, &mut |e| {
                    before = Some(e.clone());
                    e.available = false;
                    e.presence = None;
                    e.directed.clear();
                })
                .await;
            if let Some(entry) = before
                && (entry.available || !entry.directed.is_empty())
            {
                self.broadcast_unavailable(&entry, Some(stored)).await;
            }
            return;
        }
        let priority = rookery_stanza::presence_priority(&env);
        let mut was_available = false;
        let mut old_priority = 0;
        let mut snapshot = None;
        self.registry
            .update(from, &mut |e| {
                was_available = e.available;
                old_priority = e.priority;
                e.available = true;
                e.priority = priority;
                e.presence = Some(stored.clone());
                snapshot = Some(e.clone());
            })
            .await;
        let Some(entry) = snapshot else { return };
        // §4.2.2 / §4.4.2: to subscribed contacts, and to all of the user's own
        // available resources including this one.
        for contact in self.contacts(&user, Subscription::contact_sees_presence).await {
            if self.blocked(&user, &contact).await {
                continue;
            }
            self.deliver_presence_from(from.as_jid(), &contact, readdress(&stored, &contact)).await;
        }
        let own = self.registry.sessions(&user).await;
        for s in own.iter().filter(|s| s.available) {
            self.send(s, readdress(&stored, s.jid.as_jid()));
        }
        if was_available {
            // RFC 6121 §8.5.2.1.1: only now may messages to the bare JID reach it.
            if old_priority < 0 && priority >= 0 {
                self.session_event(rookery_core::hooks::SESSION_AVAILABLE, entry).await;
            }
            return;
        }
        // Initial presence (§4.2): probes, other resources' presence, pending
        // subscription requests, then whatever waits for the session (SESSION_AVAILABLE).
        self.answer_probes(&entry).await;
        for s in own.iter().filter(|s| s.available && s.jid != *from) {
            if let Some(p) = &s.presence {
                self.send(&entry, readdress(p, from.as_jid()));
            }
        }
        self.redeliver_pending_subscriptions(&entry).await;
        if priority >= 0 {
            self.session_event(rookery_core::hooks::SESSION_AVAILABLE, entry).await;
        }
    }

    /// §4.3.2: the server answers the probe of a new resource on behalf of local contacts
    /// the user is subscribed to.
    async fn answer_probes(&self, entry: &SessionEntry) {
        let user = entry.jid.to_bare();
        for contact in self.contacts(&user, |s| matches!(s, Subscription::To | Subscription::Both)).await {
            if !self.is_local(contact.domain()) {
                continue;
            }
            let Some(cbare) = crate::user_of(&contact) else { continue };
            if self.blocked(&cbare, entry.jid.as_jid()).await || self.blocked(&user, &contact).await {
                continue;
            }
            // Only if the contact really has us as from/both (rosters can disagree
            // after a crash; the contact's side is authoritative for its presence).
            if !self.contact_sees_presence(&cbare, &user).await {
                continue;
            }
            for s in self.registry.sessions(&cbare).await.iter().filter(|s| s.available) {
                if let Some(p) = &s.presence {
                    self.send(entry, readdress(p, entry.jid.as_jid()));
                }
            }
        }
    }

    /// Sends unavailable presence for a resource that went offline to everyone that saw
    /// it: subscribed contacts, the user's other resources, directed-presence targets.
    pub(crate) async fn broadcast_unavailable(&self, entry: &SessionEntry, stanza: Option<Bytes>) {
        let user = entry.jid.to_bare();
        let stored = stanza.unwrap_or_else(|| {
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(b"<presence");
            rookery_stanza::push_attr(&mut out, "from", entry.jid.as_str());
            rookery_stanza::push_attr(&mut out, "type", "unavailable");
            out.extend_from_slice(b"/>");
            Bytes::from(out)
        });
        let mut sent: Vec<Jid> = Vec::new();
        if entry.available {
            for contact in self.contacts(&user, Subscription::contact_sees_presence).await {
                // Nothing goes to a contact the user's policy refuses.
                if self.blocked(&user, &contact).await {
                    continue;
                }
                self.deliver_presence_from(entry.jid.as_jid(), &contact, readdress(&stored, &contact)).await;
                sent.push(contact);
            }
            for s in self.registry.sessions(&user).await.iter().filter(|s| s.available && s.jid != entry.jid) {
                self.send(s, readdress(&stored, s.jid.as_jid()));
            }
            // The resource itself, if still connected (explicit unavailable).
            if let Some(me) = self.registry.get(&entry.jid).await.filter(|m| m.loc == entry.loc) {
                self.send(&me, readdress(&stored, entry.jid.as_jid()));
            }
        }
        for target in &entry.directed {
            if sent.iter().any(|s| s.as_str() == target.as_str()) || self.blocked(&user, target).await {
                continue;
            }
            self.deliver_presence_from(entry.jid.as_jid(), target, readdress(&stored, target)).await;
        }
    }

    /// §4.6: presence sent to a specific entity.
    async fn directed(&self, from: &FullJid, env: Envelope) {
        let to = env.to.clone();
        let user = from.to_bare();
        if !self.is_local(to.domain()) && self.component(to.domain()).is_none() {
            let is_error = env.stanza_type() == Some("error");
            self.route_remote(env, is_error).await;
            return;
        }
        if self.blocked(&user, &to).await {
            return;
        }
        let unavailable = env.stanza_type() == Some("unavailable");
        if env.stanza_type() != Some("error") {
            let target = to.clone();
            self.registry
                .update(from, &mut |e| {
                    e.directed.retain(|d| d != &target);
                    if !unavailable {
                        if e.directed.len() >= MAX_DIRECTED {
                            e.directed.remove(0);
                        }
                        e.directed.push(target.clone());
                    }
                })
                .await;
        }
        self.deliver_presence_from(from.as_jid(), &to, env.wire()).await;
    }

    /// A presence of a subscription type from the user's client: stamp bare from/to
    /// (§3.1.2, §3.2.2, §3.3.2), update the user's roster, then process it at the
    /// contact.
    async fn outbound_subscription(&self, from: &FullJid, env: Envelope) {
        let user = from.to_bare();
        let contact = env.to.to_bare();
        if contact == user {
            return;
        }
        if self.blocked(&user, contact.as_jid()).await {
            return;
        }
        // Without a REMOTE_DOMAIN handler (federation) this is answered
        // remote-server-not-found instead of recording a request that can never be
        // answered.
        if !self.is_local(contact.domain()) {
            self.route_remote(env, false).await;
            return;
        }
        let kind = env.stanza_type().unwrap_or_default().to_owned();
        // The stanza as the contact sees it: from the user's bare JID.
        let stanza = env.el.rewrite_attrs(&[("from", Some(user.as_str())), ("to", Some(contact.as_str()))]);
        self.subscription_out(&user, &contact, &kind, stanza).await;
    }
}
