//! The write side of user message archives: which 1:1 messages are archived (XEP-0313
//! §6.1.1 with the XEP-0334 hints §4), per-owner preferences (XEP-0441 §2.1, §2.3), the
//! XEP-0359 stanza-id that tells the recipient where its copy is stored (XEP-0313 §3.5,
//! XEP-0359 §3), and the spoof protection that goes with it.
//!
//! Owns: the archiving decision, minting archive ids, stamping `<stanza-id/>`, writing
//! both parties' rows in one `ArchiveStore::append` before delivery, the prefs cache.
//! Must not touch: reading archives or setting preferences (the MAM module), delivery
//! rules (message.rs).
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
//! header (type, addresses). Only then one pass over the raw bytes looks for `<body` and
//! for the few namespaces that matter (hints, encryption, stanza-ids, carbons, IM
//! payloads), without allocating. The element is parsed into a tree only when that pass
//! found something to confirm, since a marker in the bytes may sit deeper than a direct
//! child. So chat states, receipts and markers are never parsed for archiving. A
//! namespace written with a character reference, or declared on the stream header, is
//! treated as "maybe" so it cannot slip past the security checks.
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

use crate::LocalRouter;
use crate::message::MsgType;
use bytes::Bytes;
use rookery_jid::{BareJid, Jid};
use rookery_stanza::{Envelope, ns};
use rookery_storage::{ArchiveDefault, ArchiveEntry, ArchiveId, ArchivePrefs, ArchiveRow};
use rookery_xml::{Element, Node};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// XEP-0359.
pub const NS_SID: &str = "urn:xmpp:sid:0";
pub(crate) const NS_HINTS: &str = "urn:xmpp:hints";
pub(crate) const NS_CARBONS: &str = "urn:xmpp:carbons:2";
pub(crate) const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_OMEMO_LEGACY: &str = "eu.siacs.conversations.axolotl";
const NS_OMEMO: &str = "urn:xmpp:omemo:2";
const NS_OPENPGP: &str = "urn:xmpp:openpgp:0";
const NS_RECEIPTS: &str = "urn:xmpp:receipts";
const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const NS_MARKERS: &str = "urn:xmpp:chat-markers:0";
const NS_CONFERENCE: &str = "jabber:x:conference";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const MAM_PREFIX: &str = "urn:xmpp:mam:";

/// Bound on each archive store call made while routing a message.
pub const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cached preference is trusted without a change notice.
pub const PREFS_TTL: Duration = Duration::from_secs(60);
/// Users whose preferences are cached at most.
const PREFS_CACHE_CAP: usize = 4096;

/// Archiving settings of the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSettings {
    /// Off: nothing is archived and no stanza-id is minted.
    pub enabled: bool,
    /// Default for users who never set preferences (XEP-0441 §2.1.1).
    pub default: ArchiveDefault,
    /// This router's number in the cluster, part of every archive id.
    pub node: u16,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        ArchiveSettings { enabled: true, default: ArchiveDefault::Always, node: 0 }
    }
}

/// What one pass over the raw bytes saw. It may report things that turn out not to be
/// direct children; it does not miss any (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Scan(u16);

impl Scan {
    pub const BODY: u16 = 1;
    pub const HINTS: u16 = 1 << 1;
    pub const E2E: u16 = 1 << 2;
    pub const SID: u16 = 1 << 3;
    pub const CARBONS: u16 = 1 << 4;
    pub const IM: u16 = 1 << 5;
    pub const MUC: u16 = 1 << 6;
    /// A namespace the pass cannot judge (written with a reference): parse to know.
    pub const UNSURE: u16 = 1 << 7;

    /// True when any of `bits` (or `UNSURE`) was seen.
    pub fn maybe(self, bits: u16) -> bool {
        self.0 & (bits | Self::UNSURE) != 0
    }

    fn of(el: &rookery_xml::RawElement) -> Scan {
        let mut flags = 0;
        for (_, uri) in el.inherited_ns.iter() {
            flags |= ns_flag(uri.as_bytes());
        }
        if el.self_closing {
            return Scan(flags);
        }
        let raw = &el.raw[..];
        let mut i = el.start_tag_len.min(raw.len());
        // The root's own declarations count too (a prefix declared there).
        flags |= scan_decls(&raw[..i]);
        while i < raw.len() {
            match raw[i] {
                b'<' if raw[i..].starts_with(b"<body") => {
                    if matches!(raw.get(i + 5), Some(b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/')) {
                        flags |= Scan::BODY;
                    }
                    i += 5;
                }
                b'x' if raw[i..].starts_with(b"xmlns") => {
                    let (f, next) = decl_at(raw, i);
                    flags |= f;
                    i = next;
                }
                _ => i += 1,
            }
        }
        Scan(flags)
    }
}

fn scan_decls(tag: &[u8]) -> u16 {
    let mut flags = 0;
    let mut i = 0;
    while i < tag.len() {
        if tag[i..].starts_with(b"xmlns") {
            let (f, next) = decl_at(tag, i);
            flags |= f;
            i = next;
        } else {
            i += 1;
        }
    }
    flags
}

/// Reads `xmlns[:p] = 'uri'` at `i`; returns the flag of the uri and where to go on.
fn decl_at(raw: &[u8], i: usize) -> (u16, usize) {
    let mut j = i + 5;
    if raw.get(j) == Some(&b':') {
        j += 1;
        while raw.get(j).is_some_and(|c| !matches!(c, b'=' | b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/')) {
            j += 1;
        }
    }
    while raw.get(j).is_some_and(|c| c.is_ascii_whitespace()) {
        j += 1;
    }
    if raw.get(j) != Some(&b'=') {
        return (0, j.max(i + 1));
    }
    j += 1;
    while raw.get(j).is_some_and(|c| c.is_ascii_whitespace()) {
        j += 1;
    }
    let Some(&q) = raw.get(j).filter(|&&q| q == b'"' || q == b'\'') else { return (0, j) };
    let start = j + 1;
    let Some(len) = raw.get(start..).and_then(|r| r.iter().position(|&c| c == q)) else { return (0, raw.len()) };
    (ns_flag(&raw[start..start + len]), start + len + 1)
}

fn ns_flag(uri: &[u8]) -> u16 {
    if uri.contains(&b'&') {
        return Scan::UNSURE;
    }
    match uri {
        u if u == NS_HINTS.as_bytes() => Scan::HINTS,
        u if u == NS_OMEMO_LEGACY.as_bytes() || u == NS_OMEMO.as_bytes() || u == NS_OPENPGP.as_bytes() => Scan::E2E,
        u if u == NS_SID.as_bytes() => Scan::SID,
        u if u == NS_CARBONS.as_bytes() => Scan::CARBONS,
        u if u == NS_MUC_USER.as_bytes() => Scan::MUC | Scan::IM,
        u if u == NS_RECEIPTS.as_bytes()
            || u == NS_CHATSTATES.as_bytes()
            || u == NS_MARKERS.as_bytes()
            || u == NS_CONFERENCE.as_bytes() =>
        {
            Scan::IM
        }
        _ => 0,
    }
}

/// What the direct children of a message say, from the parsed tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    pub body: bool,
    pub e2e: bool,
    pub store: bool,
    pub no_store: bool,
    pub no_permanent_store: bool,
    pub no_copy: bool,
    /// XEP-0280 §9 `<private/>`.
    pub private: bool,
    /// A `<sent/>` or `<received/>` carbons wrapper (XEP-0280 §7, §8).
    pub carbon: bool,
    /// A MAM `<result/>` (XEP-0313 §4.2).
    pub mam_result: bool,
    /// Payloads XEP-0280 §6.1 counts as instant messaging (receipts, chat states, markers,
    /// MUC invitations).
    pub im: bool,
    /// MUC user data without an invitation: a private message from a room occupant.
    pub muc_pm: bool,
}

impl Facts {
    fn of(el: &Element) -> Facts {
        let mut f = Facts::default();
        for c in el.elements() {
            match (c.ns.as_str(), c.name.as_str()) {
                (ns::CLIENT, "body") => f.body = true,
                (NS_OMEMO_LEGACY | NS_OMEMO, "encrypted") | (NS_OPENPGP, "openpgp") => f.e2e = true,
                (NS_HINTS, "store") => f.store = true,
                (NS_HINTS, "no-store") => f.no_store = true,
                (NS_HINTS, "no-permanent-store") => f.no_permanent_store = true,
                (NS_HINTS, "no-copy") => f.no_copy = true,
                (NS_CARBONS, "private") => f.private = true,
                (NS_CARBONS, "sent" | "received") => f.carbon = true,
                (NS_RECEIPTS | NS_CHATSTATES | NS_MARKERS, _) | (NS_CONFERENCE, "x") => f.im = true,
                (NS_MUC_USER, "x") => {
                    if c.get_child("invite", NS_MUC_USER).is_some() {
                        f.im = true;
                    } else {
                        f.muc_pm = true;
                    }
                }
                (n, "result") if n.starts_with(MAM_PREFIX) => f.mam_result = true,
                _ => {}
            }
        }
        f
    }

    /// XEP-0313 §6.1.1 with XEP-0334 §4.1, §4.2, §4.4.
    pub fn archivable(&self) -> bool {
        (self.body || self.e2e || self.store)
            && !self.no_store
            && !self.no_permanent_store
            && !self.mam_result
            && !self.carbon
    }
}

/// A message on its way through the router: the envelope, what the byte scan saw, and
/// the tree, parsed at most once and only when asked for.
pub(crate) struct Inspect<'e> {
    pub env: &'e Envelope,
    pub scan: Scan,
    tree: Option<Option<Element>>,
    facts: Option<Facts>,
    /// The tree was changed (spoofed stanza-ids removed): bytes come from it.
    rebuilt: bool,
    standalone: Option<Bytes>,
}

impl<'e> Inspect<'e> {
    pub fn new(env: &'e Envelope) -> Self {
        Inspect { env, scan: Scan::of(&env.el), tree: None, facts: None, rebuilt: false, standalone: None }
    }

    fn tree(&mut self) -> Option<&mut Element> {
        if self.tree.is_none() {
            let parsed = if self.env.el.self_closing { None } else { self.env.el.parse().ok() };
            self.tree = Some(parsed);
        }
        self.tree.as_mut().and_then(Option::as_mut)
    }

    /// The direct-children facts; parses the element on first use.
    pub fn facts(&mut self) -> Facts {
        if let Some(f) = self.facts {
            return f;
        }
        let f = self.tree().map(|t| Facts::of(t)).unwrap_or_default();
        self.facts = Some(f);
        f
    }

    /// Whether the message carries a carbons `<sent/>`/`<received/>` wrapper.
    pub fn is_carbon_copy(&mut self) -> bool {
        self.scan.maybe(Scan::CARBONS) && self.facts().carbon
    }

    /// XEP-0359 §3 rule 2: removes direct-child `<stanza-id/>`s whose `by` is an address
    /// this server mints ids for; returns how many went.
    pub fn strip_stanza_ids(&mut self, ours: impl Fn(&str) -> bool) -> usize {
        if !self.scan.maybe(Scan::SID) {
            return 0;
        }
        let Some(tree) = self.tree() else { return 0 };
        let before = tree.children.len();
        tree.children.retain(|n| match n {
            Node::Element(c) if c.is("stanza-id", NS_SID) => !c.get_attr("by").is_some_and(&ours),
            _ => true,
        });
        let removed = before - tree.children.len();
        if removed > 0 {
            self.rebuilt = true;
            self.standalone = None;
        }
        removed
    }

    /// The message as it is routed, self-contained: stamped `from`/`to` and
    /// `xmlns='jabber:client'` on the root, so it can be stored or forwarded as is.
    pub fn standalone(&mut self) -> Bytes {
        if let Some(b) = &self.standalone {
            return b.clone();
        }
        let env = self.env;
        let b = if self.rebuilt || uses_stream_prefixes(&env.el) {
            let (from, to) = (env.from.as_str().to_owned(), env.to.as_str().to_owned());
            match self.tree() {
                Some(t) => {
                    t.set_attr("from", from);
                    t.set_attr("to", to);
                    t.to_bytes("")
                }
                None => client_ns(env),
            }
        } else {
            client_ns(env)
        };
        self.standalone = Some(b.clone());
        b
    }

    /// Bytes to deliver when nothing is added to the message.
    pub fn wire(&mut self) -> Bytes {
        if self.rebuilt { self.standalone() } else { self.env.wire() }
    }
}

fn client_ns(env: &Envelope) -> Bytes {
    env.el.rewrite_attrs(&[
        ("from", Some(env.from.as_str())),
        ("to", Some(env.to.as_str())),
        ("xmlns", Some(ns::CLIENT)),
    ])
}

/// Whether the element relies on prefixes declared on the stream header (its own name,
/// or a `p:` matching an inherited prefix), which a byte copy would leave undeclared.
fn uses_stream_prefixes(el: &rookery_xml::RawElement) -> bool {
    if el.prefix.is_some() {
        return true;
    }
    let raw = &el.raw[..];
    el.inherited_ns.iter().filter(|(p, _)| !p.is_empty()).any(|(p, _)| {
        let p = p.as_bytes();
        raw.windows(p.len() + 1).any(|w| &w[..p.len()] == p && w[p.len()] == b':')
    })
}

/// `stanza` with `child` appended as the root's last child.
pub(crate) fn insert_child(stanza: &[u8], child: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(stanza.len() + child.len() + 16);
    if let Some(head) = stanza.strip_suffix(b"/>") {
        // Self-closing root: open it and close it after the child.
        let name_len = stanza[1..]
            .iter()
            .position(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>'))
            .unwrap_or(stanza.len() - 1);
        out.extend_from_slice(head);
        out.push(b'>');
        out.extend_from_slice(child);
        out.extend_from_slice(b"</");
        out.extend_from_slice(&stanza[1..1 + name_len]);
        out.push(b'>');
        return Bytes::from(out);
    }
    let Some(close) = stanza.iter().rposition(|&b| b == b'<') else { return Bytes::copy_from_slice(stanza) };
    out.extend_from_slice(&stanza[..close]);
    out.extend_from_slice(child);
    out.extend_from_slice(&stanza[close..]);
    Bytes::from(out)
}

/// `<stanza-id xmlns='urn:xmpp:sid:0' id=… by=…/>`.
pub(crate) fn stanza_id(id: ArchiveId, by: &BareJid) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"<stanza-id xmlns=\"urn:xmpp:sid:0\"");
    rookery_stanza::push_attr(&mut out, "id", &id.encode());
    rookery_stanza::push_attr(&mut out, "by", by.as_str());
    out.extend_from_slice(b"/>");
    out
}

/// A message ready to go out: the bytes for the recipient and the copies carbons forward,
/// plus the archive rows still to write.
pub(crate) struct Outgoing {
    /// What the recipient's resources (or offline storage) get.
    pub delivered: Bytes,
    /// The recipient's copy as forwarded in received carbons, when already built.
    pub received_copy: Option<Bytes>,
    /// The sender's copy as forwarded in sent carbons, when already built.
    pub sent_copy: Option<Bytes>,
    pending: Vec<ArchiveRow>,
    /// What goes out instead when the rows cannot be written.
    fallback: Option<Bytes>,
}

impl Outgoing {
    pub fn plain(bytes: Bytes) -> Self {
        Outgoing { delivered: bytes, received_copy: None, sent_copy: None, pending: Vec::new(), fallback: None }
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

impl LocalRouter {
    /// Everything archiving needs before delivery: the decision, the ids, the stamped
    /// bytes. The rows are written by [`LocalRouter::commit_archive`].
    pub(crate) async fn prepare_outgoing(
        &self,
        msg: &mut Inspect<'_>,
        recipient: &BareJid,
        mtype: MsgType,
    ) -> Outgoing {
        let env = msg.env;
        let Some(sender) = self.archiving_sender(msg, mtype) else { return Outgoing::plain(msg.wire()) };
        let own = sender == *recipient;
        let keep_recipient = self.archives_with(recipient, &env.from).await;
        let keep_sender = !own && self.archives_with(&sender, &env.to).await;
        if !keep_recipient && !keep_sender {
            return Outgoing::plain(msg.wire());
        }
        let base = msg.standalone();
        let mut rows = Vec::with_capacity(2);
        let (delivered, received_copy) = if keep_recipient {
            let id = self.archive_ids.next();
            let b = insert_child(&base, &stanza_id(id, recipient));
            rows.push(row(recipient, id, &env.from, false, b.clone()));
            (b.clone(), Some(b))
        } else {
            (msg.wire(), Some(base.clone()))
        };
        let sent_copy = if keep_sender {
            let id = self.archive_ids.next();
            let b = insert_child(&base, &stanza_id(id, &sender));
            rows.push(row(&sender, id, &env.to, true, b.clone()));
            Some(b)
        } else {
            Some(base)
        };
        Outgoing { delivered, received_copy, sent_copy, pending: rows, fallback: Some(msg.wire()) }
    }

    /// The sender's account when the message is of a kind that is archived.
    fn archiving_sender(&self, msg: &mut Inspect<'_>, mtype: MsgType) -> Option<BareJid> {
        if !self.cfg.archive.enabled || !matches!(mtype, MsgType::Chat | MsgType::Normal) {
            return None;
        }
        let env = msg.env;
        if !self.is_local(env.from.domain()) || !msg.scan.maybe(Scan::BODY | Scan::E2E | Scan::HINTS) {
            return None;
        }
        if !msg.facts().archivable() {
            return None;
        }
        crate::user_of(&env.from)
    }

    /// Writes the pending rows (one append, bounded). On failure the message goes out
    /// without the stanza-ids that were not stored.
    pub(crate) async fn commit_archive(&self, out: &mut Outgoing) {
        if out.pending.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut out.pending);
        let error = match tokio::time::timeout(ARCHIVE_TIMEOUT, self.stores.archive.append_new(&rows)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        for r in &rows {
            tracing::warn!(event = "archive_write_failed", user = %r.owner, error = %error);
        }
        if let Some(plain) = out.fallback.take() {
            out.delivered = plain;
        }
        out.received_copy = None;
        out.sent_copy = None;
    }

    /// Whether `owner` archives messages with `other` (XEP-0441 §2.1, §2.3).
    async fn archives_with(&self, owner: &BareJid, other: &Jid) -> bool {
        let Some(prefs) = self.archive_prefs(owner).await else { return false };
        if let Some(decision) = listed(&prefs, other) {
            return decision;
        }
        match prefs.default {
            ArchiveDefault::Always => true,
            ArchiveDefault::Never => false,
            ArchiveDefault::Roster => self.in_roster(owner, other).await,
        }
    }

    async fn archive_prefs(&self, owner: &BareJid) -> Option<Arc<ArchivePrefs>> {
        if let Some(p) = self.prefs.get(owner) {
            return Some(p);
        }
        let generation = self.prefs.generation();
        let error = match tokio::time::timeout(ARCHIVE_TIMEOUT, self.stores.archive.get_prefs(owner)).await {
            Ok(Ok(p)) => {
                let p =
                    Arc::new(p.unwrap_or_else(|| ArchivePrefs {
                        default: self.cfg.archive.default,
                        ..ArchivePrefs::default()
                    }));
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

    async fn in_roster(&self, owner: &BareJid, other: &Jid) -> bool {
        if owner.as_str() == other.bare_str() {
            return true;
        }
        match tokio::time::timeout(ARCHIVE_TIMEOUT, self.stores.roster.get_item(owner, other.bare_str())).await {
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

    /// XEP-0359 §3 rule 2: ids this server would mint carry `by` = one of its accounts
    /// or domains, so any such `by` arriving from outside is a spoof.
    pub(crate) fn mints_ids_for(&self, by: &str) -> bool {
        Jid::parse(by).is_ok_and(|j| self.is_local(j.domain()))
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

    fn raw(xml: &str) -> rookery_xml::RawElement {
        rookery_xml::RawElement::from_bytes(Bytes::copy_from_slice(xml.as_bytes()), ns::CLIENT).unwrap()
    }

    #[test]
    fn scan_sees_bodies_and_namespaces_without_parsing() {
        let s = Scan::of(&raw("<message><body>hi</body></message>"));
        assert_eq!(s, Scan(Scan::BODY));
        let s = Scan::of(&raw("<message><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"));
        assert_eq!(s, Scan(Scan::IM));
        assert!(!s.maybe(Scan::BODY | Scan::E2E | Scan::HINTS));
        let s = Scan::of(&raw("<message><bodyx/><x xmlns = \"urn:xmpp:hints\"/></message>"));
        assert_eq!(s, Scan(Scan::HINTS));
        let s = Scan::of(&raw("<message xmlns:c='urn:xmpp:carbons:2'><c:private/></message>"));
        assert!(s.maybe(Scan::CARBONS));
        let s = Scan::of(&raw("<message><stanza-id xmlns='urn:xmpp:sid&#x3a;0' by='x' id='y'/></message>"));
        assert!(s.maybe(Scan::SID), "a reference makes the scan unsure");
        assert_eq!(Scan::of(&raw("<message/>")), Scan(0));
    }

    #[test]
    fn facts_look_at_direct_children_only() {
        let f = |xml: &str| Facts::of(&raw(xml).parse().unwrap());
        assert!(f("<message><body>x</body></message>").archivable());
        assert!(!f("<message><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>").archivable());
        assert!(!f("<message><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>").archivable());
        assert!(f("<message><store xmlns='urn:xmpp:hints'/></message>").archivable());
        assert!(f("<message><encrypted xmlns='urn:xmpp:omemo:2'/></message>").archivable());
        assert!(f("<message><openpgp xmlns='urn:xmpp:openpgp:0'>x</openpgp></message>").archivable());
        let nested = "<message><result xmlns='urn:xmpp:mam:2'><forwarded xmlns='urn:xmpp:forward:0'>\
                      <message xmlns='jabber:client'><body>x</body></message></forwarded></result></message>";
        assert!(!f(nested).body && f(nested).mam_result && !f(nested).archivable());
        let carbon = "<message><received xmlns='urn:xmpp:carbons:2'/></message>";
        assert!(f(carbon).carbon);
        let html = "<message><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'/></html></message>";
        assert!(!f(html).archivable(), "an XHTML body is not the message body");
        let invite = "<message><x xmlns='http://jabber.org/protocol/muc#user'><invite to='a@b'/></x></message>";
        assert!(f(invite).im && !f(invite).muc_pm);
        assert!(f("<message><x xmlns='http://jabber.org/protocol/muc#user'/></message>").muc_pm);
    }

    #[test]
    fn child_goes_last_also_into_self_closing_roots() {
        assert_eq!(
            &insert_child(b"<message a='1'><body/></message>", b"<x/>")[..],
            b"<message a='1'><body/><x/></message>"
        );
        assert_eq!(&insert_child(b"<message a='1'/>", b"<x/>")[..], b"<message a='1'><x/></message>");
        assert_eq!(&insert_child(b"<message/>", b"<x/>")[..], b"<message><x/></message>");
    }

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
