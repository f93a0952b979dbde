//! The write side of user message archives: which 1:1 messages are archived (XEP-0313
//! §6.1.1 with the XEP-0334 hints §4), per-owner preferences (XEP-0441 §2.1, §2.3), the
//! XEP-0359 stanza-id that tells the recipient where its copy is stored (XEP-0313 §3.5,
//! XEP-0359 §3), and the spoof protection that goes with it.
//!
//! Hooks: `DELIVERY` archives and stamps (before anything is written, after the offline
//! quota so a refused message is not archived; spoofed stanza-ids were removed by the
//! stanza-id module on `MESSAGE_OUT`); `REMOTE_CHANGE` drops cached preferences another
//! router changed.
//!
//! Owns: the archiving decision, minting archive ids, stamping `<stanza-id/>`, writing
//! both parties' rows in one `ArchiveStore::append` before delivery, the prefs cache.
//! Must not touch: reading archives (mam.rs), delivery rules (the kernel).
//!
//! What is archived: a message of type `chat` or `normal` between a local sender and a
//! local recipient account that carries a `<body/>`, an end-to-end encrypted payload
//! (OMEMO, legacy or `urn:xmpp:omemo:2`, or OpenPGP for XMPP) or a `<store/>` hint, and has
//! no `<no-store/>`/`<no-permanent-store/>` hint. Never: error, headline and groupchat
//! messages, MAM results, carbon copies. Each side is archived according to its owner's
//! preferences: the `never` list beats the `always` list beats the default; a listed JID
//! with a resource matches the other party's full JID, a bare one its bare JID; the
//! `roster` default archives when the other party's bare JID is in the owner's roster
//! (XEP-0441 §2.1.1; any roster item counts, whatever its subscription).
//!
//! Keeping the routing path light (DESIGN §6.2): the decision starts from the parsed
//! header (type, addresses), then from the byte scan of `rookery_stanza::message`, so
//! chat states, receipts and markers are never parsed for archiving.
//!
//! Stored stanzas are self-contained: `xmlns='jabber:client'` on the root and the stamped
//! `from`/`to`. The recipient's row holds exactly the bytes its resources get, with the
//! stanza-id; the sender's row holds the message with the sender's own stanza-id, the copy
//! its other resources see in a sent carbon (XEP-0313 §3.5). A message between two
//! resources of one account is archived once (§6.1.1).
//!
//! Failure handling: the prefs/roster reads and the append are bounded by
//! [`ARCHIVE_TIMEOUT`]. A failed or late append is logged (`archive_write_failed`) and the
//! message goes out without the stanza-id that was not stored: a failing archive never
//! drops or bounces a message.
//!
//! The prefs cache is per router, bounded, and entries expire after [`PREFS_TTL`]: a prefs
//! change reported to another router of a cluster reaches this one within that time.

use async_trait::async_trait;
use bytes::Bytes;
use rookery_core::hooks::{Delivery, RemoteChange};
use rookery_core::{Ctx, Flow, Handler, HookResult, Origin, Outgoing};
use rookery_jid::{BareJid, Jid};
use rookery_stanza::message::{MessageView, MsgType, Scan, insert_child};
use rookery_storage::{ArchiveDefault, ArchiveEntry, ArchiveId, ArchiveIdGen, ArchivePrefs, ArchiveRow};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The topic under which preference changes are published to the other routers.
pub const PREFS_TOPIC: &str = "mam-prefs";
/// Published by the kernel when an account is deleted.
const ACCOUNT_TOPIC: &str = "account";

/// Bound on each archive store call made while routing a message.
pub const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cached preference is trusted without a change notice.
pub const PREFS_TTL: Duration = Duration::from_secs(60);
/// Users whose preferences are cached at most.
const PREFS_CACHE_CAP: usize = 4096;

/// `<stanza-id xmlns='urn:xmpp:sid:0' id=… by=…/>` (XEP-0359 §3).
pub(crate) fn stanza_id(id: ArchiveId, by: &BareJid) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"<stanza-id xmlns=\"urn:xmpp:sid:0\"");
    rookery_stanza::push_attr(&mut out, "id", &id.encode());
    rookery_stanza::push_attr(&mut out, "by", by.as_str());
    out.extend_from_slice(b"/>");
    out
}

/// A message ready to go out (the bytes for the recipient and the copies the parties'
/// other resources get), plus the archive rows still to write.
struct Pending {
    pub out: Outgoing,
    pending: Vec<ArchiveRow>,
    /// What goes out instead when the rows cannot be written.
    fallback: Option<Bytes>,
}

impl Pending {
    pub fn plain(bytes: Bytes) -> Self {
        Pending { out: Outgoing::plain(bytes), pending: Vec::new(), fallback: None }
    }
}

/// The prefs cache; see the module doc.
#[derive(Default)]
pub(crate) struct PrefsCache {
    map: Mutex<HashMap<BareJid, (Instant, Arc<ArchivePrefs>)>>,
    /// Bumped on every invalidation, so a read that raced with a change is not cached.
    generation: AtomicU64,
}

impl PrefsCache {
    fn get(&self, user: &BareJid) -> Option<Arc<ArchivePrefs>> {
        let m = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(user).filter(|(at, _)| at.elapsed() < PREFS_TTL).map(|(_, p)| p.clone())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn insert(&self, user: &BareJid, prefs: Arc<ArchivePrefs>, read_at_generation: u64) {
        let mut m = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.generation() != read_at_generation {
            return;
        }
        if m.len() >= PREFS_CACHE_CAP && !m.contains_key(user) {
            m.retain(|_, (at, _)| at.elapsed() < PREFS_TTL);
            if m.len() >= PREFS_CACHE_CAP
                && let Some(k) = m.keys().next().cloned()
            {
                m.remove(&k);
            }
        }
        m.insert(user.clone(), (Instant::now(), prefs));
    }

    /// Drops every cached entry (change notices may have been missed).
    pub fn clear(&self) {
        let mut m = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        m.clear();
    }

    pub fn invalidate(&self, user: &BareJid) {
        let mut m = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        m.remove(user);
    }
}

/// XEP-0441 §2.3: the `never` list, then the `always` list; None when neither matches.
fn listed(prefs: &ArchivePrefs, other: &Jid) -> Option<bool> {
    let hit = |j: &String| if j.contains('/') { j == other.as_str() } else { j == other.bare_str() };
    if prefs.never.iter().any(hit) {
        Some(false)
    } else if prefs.always.iter().any(hit) {
        Some(true)
    } else {
        None
    }
}

/// The write side: ids, preferences, rows.
pub(crate) struct Writer {
    ids: ArchiveIdGen,
    prefs: PrefsCache,
    default: ArchiveDefault,
}

impl Writer {
    pub fn new(node: u16, default: ArchiveDefault) -> Self {
        Writer { ids: ArchiveIdGen::new(node), prefs: PrefsCache::default(), default }
    }

    /// This node's own change: forget the cached copy here and on the other routers.
    pub fn prefs_changed(&self, ctx: &Ctx, owner: &BareJid) {
        self.prefs.invalidate(owner);
        ctx.server.publish_change(PREFS_TOPIC, owner);
    }

    /// Everything archiving needs before delivery: the decision, the ids, the stamped
    /// bytes. The rows are written by [`Writer::commit_archive`].
    async fn prepare_outgoing(&self, ctx: &Ctx, msg: &mut MessageView, recipient: &BareJid, mtype: MsgType) -> Pending {
        let Some(sender) = archiving_sender(ctx, msg, mtype) else { return Pending::plain(msg.wire()) };
        let env = &msg.env;
        let own = sender == *recipient;
        let (from, to) = (env.from.clone(), env.to.clone());
        let keep_recipient = self.archives_with(ctx, recipient, &from).await;
        let keep_sender = !own && self.archives_with(ctx, &sender, &to).await;
        if !keep_recipient && !keep_sender {
            return Pending::plain(msg.wire());
        }
        let base = msg.standalone();
        let mut rows = Vec::with_capacity(2);
        let (delivered, received_copy) = if keep_recipient {
            let id = self.ids.next();
            let b = insert_child(&base, &stanza_id(id, recipient));
            rows.push(row(recipient, id, &from, false, b.clone()));
            (b.clone(), Some(b))
        } else {
            (msg.wire(), Some(base.clone()))
        };
        let sent_copy = if keep_sender {
            let id = self.ids.next();
            let b = insert_child(&base, &stanza_id(id, &sender));
            rows.push(row(&sender, id, &to, true, b.clone()));
            Some(b)
        } else {
            Some(base)
        };
        Pending { out: Outgoing { delivered, received_copy, sent_copy }, pending: rows, fallback: Some(msg.wire()) }
    }

    /// The sender's account when the message is of a kind that is archived.
    async fn commit_archive(&self, ctx: &Ctx, out: &mut Pending) {
        if out.pending.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut out.pending);
        let error = match tokio::time::timeout(ARCHIVE_TIMEOUT, ctx.stores.archive.append_new(&rows)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        for r in &rows {
            tracing::warn!(event = "archive_write_failed", user = %r.owner, error = %error);
        }
        if let Some(plain) = out.fallback.take() {
            out.out.delivered = plain;
        }
        out.out.received_copy = None;
        out.out.sent_copy = None;
    }

    /// Whether `owner` archives messages with `other` (XEP-0441 §2.1, §2.3).
    async fn archives_with(&self, ctx: &Ctx, owner: &BareJid, other: &Jid) -> bool {
        let Some(prefs) = self.archive_prefs(ctx, owner).await else { return false };
        if let Some(decision) = listed(&prefs, other) {
            return decision;
        }
        match prefs.default {
            ArchiveDefault::Always => true,
            ArchiveDefault::Never => false,
            ArchiveDefault::Roster => in_roster(ctx, owner, other).await,
        }
    }

    async fn archive_prefs(&self, ctx: &Ctx, owner: &BareJid) -> Option<Arc<ArchivePrefs>> {
        if let Some(p) = self.prefs.get(owner) {
            return Some(p);
        }
        let generation = self.prefs.generation();
        let error = match tokio::time::timeout(ARCHIVE_TIMEOUT, ctx.stores.archive.get_prefs(owner)).await {
            Ok(Ok(p)) => {
                let p =
                    Arc::new(p.unwrap_or_else(|| ArchivePrefs { default: self.default, ..ArchivePrefs::default() }));
                self.prefs.insert(owner, p.clone(), generation);
                return Some(p);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        // Without the owner's preferences nothing is archived for them: archiving
        // against a `never` would be worse than a gap.
        tracing::warn!(event = "archive_prefs_read_failed", user = %owner, error = %error);
        None
    }
}

/// The local sender of an archivable message, if it is one (see the module doc).
fn archiving_sender(ctx: &Ctx, msg: &mut MessageView, mtype: MsgType) -> Option<BareJid> {
    if !matches!(mtype, MsgType::Chat | MsgType::Normal) {
        return None;
    }
    if !ctx.server.is_local_domain(msg.env.from.domain()) || !msg.scan.maybe(Scan::BODY | Scan::E2E | Scan::HINTS) {
        return None;
    }
    if !msg.facts().archivable() {
        return None;
    }
    msg.env.from.node()?;
    Some(msg.env.from.to_bare())
}

async fn in_roster(ctx: &Ctx, owner: &BareJid, other: &Jid) -> bool {
    if owner.as_str() == other.bare_str() {
        return true;
    }
    match tokio::time::timeout(ARCHIVE_TIMEOUT, ctx.stores.roster.get_item(owner, other.bare_str())).await {
        Ok(Ok(item)) => item.is_some_and(|i| !i.hidden),
        Ok(Err(e)) => {
            tracing::warn!(event = "archive_roster_read_failed", user = %owner, error = %e);
            false
        }
        Err(_) => {
            tracing::warn!(event = "archive_roster_read_failed", user = %owner, error = "timed out");
            false
        }
    }
}

#[async_trait]
impl Handler<Delivery> for Writer {
    /// Archives both sides and stamps the stanza-ids before anything is written. A
    /// message coming back from a session that ended was archived the first time.
    async fn handle(&self, ctx: &Ctx, ev: &mut Delivery) -> HookResult {
        if ev.origin != Origin::Client {
            return Ok(Flow::Continue);
        }
        let mut pending = self.prepare_outgoing(ctx, &mut ev.msg, &ev.recipient, ev.mtype).await;
        self.commit_archive(ctx, &mut pending).await;
        ev.out = pending.out;
        Ok(Flow::Continue)
    }
}

#[async_trait]
impl Handler<RemoteChange> for Writer {
    async fn handle(&self, _ctx: &Ctx, ev: &mut RemoteChange) -> HookResult {
        match (&ev.user, ev.topic.as_str()) {
            (None, _) => self.prefs.clear(),
            (Some(user), PREFS_TOPIC | ACCOUNT_TOPIC) => self.prefs.invalidate(user),
            _ => {}
        }
        Ok(Flow::Continue)
    }
}

fn row(owner: &BareJid, id: ArchiveId, other: &Jid, outgoing: bool, stanza: Bytes) -> ArchiveRow {
    ArchiveRow {
        owner: owner.clone(),
        entry: ArchiveEntry {
            id,
            with: other.bare_str().to_owned(),
            with_resource: other.resource().unwrap_or_default().to_owned(),
            outgoing,
            stanza,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn never_beats_always_and_resources_match_exactly() {
        let prefs = ArchivePrefs {
            default: ArchiveDefault::Always,
            always: vec!["a@x".into(), "c@x/home".into()],
            never: vec!["a@x".into(), "b@x".into()],
        };
        let j = |s: &str| Jid::parse(s).unwrap();
        assert_eq!(listed(&prefs, &j("a@x/r")), Some(false));
        assert_eq!(listed(&prefs, &j("b@x")), Some(false));
        assert_eq!(listed(&prefs, &j("c@x/home")), Some(true));
        assert_eq!(listed(&prefs, &j("c@x/work")), None);
        assert_eq!(listed(&prefs, &j("c@x")), None);
    }

    #[test]
    fn prefs_cache_ignores_reads_that_raced_with_a_change() {
        let c = PrefsCache::default();
        let u = BareJid::parse("u@x").unwrap();
        let g = c.generation();
        c.invalidate(&u);
        c.insert(&u, Arc::new(ArchivePrefs::default()), g);
        assert!(c.get(&u).is_none());
        let g = c.generation();
        c.insert(&u, Arc::new(ArchivePrefs::default()), g);
        assert!(c.get(&u).is_some());
        c.invalidate(&u);
        assert!(c.get(&u).is_none());
    }
}
