//! XEP-0313: Message Archive Management: writing each user's archive as messages are
//! delivered (archive.rs, XEP-0313 §3.5, §6.1.1 with XEP-0359 stanza-ids and the XEP-0334
//! hints), reading it, and its archiving preferences (XEP-0441).
//!
//! - Queries (§4) in `urn:xmpp:mam:2` and the older `urn:xmpp:mam:1`, to the user's own
//!   bare JID (§3.3.1): data form filters `with`, `start`, `end` (§4.1.1, §4.1.2) and, for
//!   mam:2, `after-id`, `before-id`, `ids` (§4.1.3); RSM paging with `max`, `after`,
//!   `before` and empty `before` for the last page (§4.3, XEP-0059 §2); `<flip-page/>`
//!   (§4.3.4). Each match goes to the requesting resource as a `<result/>` message with
//!   the stored stanza forwarded (§4.2), then the IQ result carries `<fin/>` with
//!   `complete`, first/last ids, `count` and the first item's `index` where known.
//! - Form retrieval (§4.1.5), archive metadata (§5), preferences get/set (XEP-0441 §2.1).
//! - Another user's archive is `forbidden` (§8.1).
//! - Features `urn:xmpp:mam:2`, `urn:xmpp:mam:2#extended` and `urn:xmpp:mam:1` on the
//!   account's bare JID, the archiving JID §7 names (not on the server domain).
//!
//! Not supported: the `include-groupchat` field (§4.1.4; the store does not tell groupchat
//! entries apart, so the field is refused like any unknown one), RSM `<index/>`, MUC and
//! pubsub archives.
//!
//! Queries are paced per user (`MamConfig::queries_per_sec`, a token bucket; a query over
//! the budget waits in its user's own session), and a page's result messages yield to the
//! runtime every few results, so one client paging through a huge archive cannot take the
//! CPU other users' chat needs.
//!
//! Must not touch: delivery (the kernel), retention (services/rookery's sweep).
//! Store calls are bounded by [`MamConfig::store_timeout`]; failures and timeouts are
//! logged and answered `internal-server-error`, never with internal text.

mod archive;
mod prefs;
mod query;
mod results;
#[cfg(test)]
mod tests;

use crate::forms::{DataForm, Field, FieldType, FormKind};
use crate::util::{TargetedHandler, register_at, sender};
pub use archive::{ARCHIVE_TIMEOUT, PREFS_TOPIC, PREFS_TTL};
use async_trait::async_trait;
use query::Request;
use rookery_core::hooks::{DELIVERY, REMOTE_CHANGE};
use rookery_core::{
    Ctx, IqRequest, IqResult, IqType, Module, ModuleInfo, Registrar, Support, Target, XepSupport, prio,
};
use rookery_jid::{BareJid, FullJid};
use rookery_stanza::{Condition, StanzaError};
use rookery_storage::{ArchiveId, ArchivePage, ArchiveQuery};
use rookery_xml::Element;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const MODULE: &str = "mam";

use rookery_stanza::ns::{MAM1 as NS_MAM1, MAM2 as NS_MAM2, MAM2_EXTENDED as NS_MAM2_EXTENDED, XDATA_VALIDATE};

/// Limits of the MAM module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MamConfig {
    /// Largest page sent for one query; a larger RSM `<max/>` is clamped (§4.3.1).
    pub max_page: usize,
    /// Page size when the query has no `<max/>`.
    pub default_page: usize,
    /// `<count/>` is reported only for result sets up to this size (XEP-0059 §2.1 lets
    /// the server omit a count that is expensive); 0 never counts.
    pub count_cap: usize,
    /// Bound on each store call.
    pub store_timeout: Duration,
    /// What the server archives for users who never set preferences (`mam.default_policy`);
    /// a prefs get reports it, so clients see what is really applied (XEP-0441 §2.1).
    pub default_policy: rookery_storage::ArchiveDefault,
    /// This router's number in the cluster, part of every archive id (0 on one node).
    pub node: u16,
    /// Queries one user may start per second (bursts of twice that); more wait. 0: no limit.
    pub queries_per_sec: u32,
}

impl Default for MamConfig {
    fn default() -> Self {
        MamConfig {
            max_page: 250,
            default_page: 50,
            count_cap: 10_000,
            store_timeout: Duration::from_secs(10),
            default_policy: rookery_storage::ArchiveDefault::Always,
            node: 0,
            queries_per_sec: 0,
        }
    }
}

/// The query namespace a request used; answers use the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn of(ns: &str) -> Option<Version> {
        match ns {
            NS_MAM2 => Some(Version::V2),
            NS_MAM1 => Some(Version::V1),
            _ => None,
        }
    }
    fn ns(self) -> &'static str {
        match self {
            Version::V2 => NS_MAM2,
            Version::V1 => NS_MAM1,
        }
    }
}

/// Serves MAM queries, form retrieval, metadata and preferences.
pub struct Mam {
    config: MamConfig,
    /// Ids of result messages: a counter seeded from the clock, so ids do not repeat
    /// across restarts.
    msg_ids: AtomicU64,
    writer: Arc<archive::Writer>,
    pacer: Pacer,
}

impl Mam {
    pub fn new(config: MamConfig) -> Self {
        let writer = Arc::new(archive::Writer::new(config.node, config.default_policy));
        let pacer = Pacer::new(config.queries_per_sec);
        Mam { config, msg_ids: AtomicU64::new(rookery_storage::archive::now_micros()), writer, pacer }
    }
}

/// Result messages built between two yields to the runtime.
const RESULTS_BETWEEN_YIELDS: usize = 8;

/// Per-user token bucket for archive queries: `rate` per second, bursts of `2 × rate`. A
/// query over the budget waits in its user's own session (or cluster lane), so a client
/// paging through a huge archive in a loop cannot take the CPU other users' chat needs.
struct Pacer {
    rate: f64,
    burst: f64,
    users: std::sync::Mutex<std::collections::HashMap<BareJid, (f64, tokio::time::Instant)>>,
}

/// Users tracked at most; past it the idle ones (full buckets) are forgotten.
const PACER_CAP: usize = 100_000;

impl Pacer {
    fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec);
        Pacer { rate, burst: 2.0 * rate, users: Default::default() }
    }

    /// How long `user`'s query started at `now` waits for its turn.
    fn delay(&self, user: &BareJid, now: tokio::time::Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let mut users = self.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if users.len() >= PACER_CAP && !users.contains_key(user) {
            let (rate, burst) = (self.rate, self.burst);
            users.retain(|_, (t, at)| *t + now.saturating_duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = users.entry(user.clone()).or_insert((self.burst, now));
        let refilled = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *tokens = refilled - 1.0;
        *at = now;
        if *tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-*tokens / self.rate) }
    }
}

impl Module for Mam {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            depends: &["stanza-id"],
            name: MODULE,
            specs: &[
                XepSupport {
                    spec: "XEP-0313",
                    version: "1.1.3",
                    support: Support::Full,
                    note: "user archives: 1:1 chat/normal messages of local users archived on delivery \
                           (§3.5, §6.1.1) with XEP-0441 preferences applied; mam:2 and mam:1 queries: \
                           with/start/end, #extended (after-id, before-id, ids, flip-page, metadata), RSM \
                           paging; no include-groupchat field",
                },
                XepSupport {
                    spec: "XEP-0441",
                    version: "0.2.0",
                    support: Support::Full,
                    note: "preferences get/set in mam:2 and mam:1",
                },
                XepSupport {
                    spec: "XEP-0334",
                    version: "1.0.0",
                    support: Support::Full,
                    note: "store, no-store, no-permanent-store (archive and offline), no-copy (carbons)",
                },
                XepSupport {
                    spec: "XEP-0059",
                    version: "1.0",
                    support: Support::Partial,
                    note: "in MAM: max, after, before (incl. last page), count, first index; \
                           no paging by index",
                },
                XepSupport {
                    spec: "XEP-0004",
                    version: "2.13.2",
                    support: Support::Partial,
                    note: "forms in MAM: submitted query forms and the offered query form",
                },
            ],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.account_feature(rookery_stanza::ns::SID);
        r.hook(DELIVERY, prio::MAM_ARCHIVE, self.writer.clone());
        r.hook(REMOTE_CHANGE, prio::DEFAULT, self.writer.clone());
        r.account_feature(NS_MAM2);
        r.account_feature(NS_MAM2_EXTENDED);
        r.account_feature(NS_MAM1);
        let targets = [Target::Own, Target::OtherUser];
        for ns in [NS_MAM2, NS_MAM1] {
            register_at(r, &self, "query", ns, IqType::Set, &targets);
            register_at(r, &self, "query", ns, IqType::Get, &targets);
            register_at(r, &self, "prefs", ns, IqType::Get, &targets);
            register_at(r, &self, "prefs", ns, IqType::Set, &targets);
        }
        register_at(r, &self, "metadata", NS_MAM2, IqType::Get, &targets);
    }
}

#[async_trait]
impl TargetedHandler for Mam {
    async fn handle_at(&self, ctx: &Ctx, req: IqRequest, target: Target) -> IqResult {
        // §8.1: a user archive is the user's alone.
        if target != Target::Own {
            return Err(StanzaError::new(Condition::Forbidden).with_text("only your own archive can be accessed"));
        }
        let owner = sender(&req)?;
        let version = Version::of(&req.payload.ns).ok_or_else(|| StanzaError::new(Condition::FeatureNotImplemented))?;
        match (req.payload.name.as_str(), req.kind) {
            ("query", IqType::Set) => {
                let requester = req.from.clone().ok_or_else(|| StanzaError::new(Condition::NotAuthorized))?;
                self.query(ctx, &owner, &requester, &req.payload, version).await
            }
            ("query", IqType::Get) => Ok(Some(query_form(version))),
            ("prefs", IqType::Get) => {
                let stored = self.store(&owner, "get_prefs", ctx.stores.archive.get_prefs(&owner)).await?;
                let prefs = stored.unwrap_or_else(|| rookery_storage::ArchivePrefs {
                    default: self.config.default_policy,
                    ..Default::default()
                });
                Ok(Some(prefs::to_element(version.ns(), &prefs)))
            }
            ("prefs", IqType::Set) => {
                let wanted = prefs::parse(&req.payload)?;
                self.store(&owner, "set_prefs", ctx.stores.archive.set_prefs(&owner, &wanted)).await?;
                self.writer.prefs_changed(ctx, &owner);
                Ok(Some(prefs::to_element(version.ns(), &wanted)))
            }
            ("metadata", IqType::Get) => {
                let bounds = self.store(&owner, "bounds", ctx.stores.archive.bounds(&owner)).await?;
                Ok(Some(results::metadata(version.ns(), bounds)))
            }
            _ => Err(StanzaError::new(Condition::FeatureNotImplemented)),
        }
    }
}

impl Mam {
    /// Runs one store call under the timeout; errors become `internal-server-error`.
    async fn store<T>(
        &self,
        owner: &BareJid,
        op: &'static str,
        fut: impl Future<Output = rookery_storage::Result<T>>,
    ) -> Result<T, StanzaError> {
        match tokio::time::timeout(self.config.store_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(event = "mam_store_failed", user = %owner, op, error = %e);
                Err(StanzaError::new(Condition::InternalServerError))
            }
            Err(_) => {
                tracing::warn!(
                    event = "mam_store_timeout",
                    user = %owner,
                    op,
                    timeout_ms = u64::try_from(self.config.store_timeout.as_millis()).unwrap_or(u64::MAX)
                );
                Err(StanzaError::new(Condition::InternalServerError))
            }
        }
    }

    /// §4: checks the named ids exist, fetches one page, sends it, answers with `<fin/>`.
    async fn query(
        &self,
        ctx: &Ctx,
        owner: &BareJid,
        requester: &FullJid,
        payload: &Element,
        version: Version,
    ) -> IqResult {
        let req = query::parse(payload, version)?;
        let wait = self.pacer.delay(owner, tokio::time::Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        self.check_ids_exist(ctx, owner, &req).await?;

        let limit = req.max.unwrap_or(self.config.default_page).min(self.config.max_page);
        let filter = ArchiveQuery {
            with: req.with.clone(),
            after: req.after,
            before: req.before,
            ids: req.ids.clone(),
            limit,
            from_end: false,
            count_cap: self.config.count_cap,
        };
        // RSM ids page within the result set the form defines (§9): they narrow the same
        // bounds, and `before` pages backwards from the end of what remains.
        let rsm_before = req.rsm_before.flatten();
        let page_query = ArchiveQuery {
            after: bound(filter.after, req.rsm_after, Ord::max),
            before: bound(filter.before, rsm_before, Ord::min),
            from_end: req.rsm_before.is_some(),
            ..filter.clone()
        };
        let page = self.store(owner, "query", ctx.stores.archive.query(owner, &page_query)).await?;
        // With RSM ids the page's count covers only the window they leave; the full set
        // needs its own count.
        let paged_by_id = req.rsm_after.is_some() || rsm_before.is_some();
        let total = if !paged_by_id {
            page.count
        } else if self.config.count_cap > 0 {
            let count_query = ArchiveQuery { limit: 0, ..filter };
            self.store(owner, "count", ctx.stores.archive.query(owner, &count_query)).await?.count
        } else {
            None
        };

        self.send_page(ctx, owner, requester, &req, version, &page).await;
        let fin = results::Fin {
            complete: !page.more,
            first_last: page.items.first().zip(page.items.last()).map(|(f, l)| (f.id, l.id)),
            index: first_index(&req, &page, total),
            count: total,
        };
        Ok(Some(results::fin(version.ns(), &fin)))
    }

    /// §4.1.3, §4.3.2: every id the client named must be in the archive.
    async fn check_ids_exist(&self, ctx: &Ctx, owner: &BareJid, req: &Request) -> Result<(), StanzaError> {
        if req.must_exist.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<ArchiveId> = req.must_exist.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        let q = ArchiveQuery { limit: ids.len(), ids: Some(ids), ..ArchiveQuery::default() };
        let found = self.store(owner, "lookup_ids", ctx.stores.archive.query(owner, &q)).await?;
        match req.must_exist.iter().find(|(id, _)| !found.items.iter().any(|e| e.id == *id)) {
            Some((_, field)) => Err(field.not_found()),
            None => Ok(()),
        }
    }

    /// Sends the page's items to the requester (§4.2), oldest first unless flipped.
    async fn send_page(
        &self,
        ctx: &Ctx,
        owner: &BareJid,
        requester: &FullJid,
        req: &Request,
        version: Version,
        page: &ArchivePage,
    ) {
        let mut items: Vec<&rookery_storage::ArchiveEntry> = page.items.iter().collect();
        if req.flip {
            items.reverse();
        }
        for (i, entry) in items.into_iter().enumerate() {
            // A page is up to `max_page` results, each re-encoded: let other sessions' work
            // run between every few, so one user's paging does not hold up everybody's chat
            // on a busy core.
            if i % RESULTS_BETWEEN_YIELDS == RESULTS_BETWEEN_YIELDS - 1 {
                tokio::task::yield_now().await;
            }
            let stanza = results::forwardable(&entry.stanza);
            if stanza.is_none() {
                tracing::warn!(event = "mam_stored_stanza_unreadable", user = %owner, id = %entry.id);
            }
            let msg_id = format!("mam-{:x}", self.msg_ids.fetch_add(1, Ordering::Relaxed));
            let bytes = results::result_message(
                requester,
                owner,
                &msg_id,
                version.ns(),
                req.queryid.as_deref(),
                entry,
                stanza.as_deref(),
            );
            if !ctx.server.send_to_resource(requester, bytes).await {
                tracing::debug!(event = "mam_requester_gone", to = %requester);
                return;
            }
        }
    }
}

/// Narrows an optional bound with another optional one.
fn bound(a: Option<ArchiveId>, b: Option<ArchiveId>, pick: fn(ArchiveId, ArchiveId) -> ArchiveId) -> Option<ArchiveId> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

/// XEP-0059 §2.2: position of the page's first item in the full result set, given only
/// when it follows exactly from what the store reported.
fn first_index(req: &Request, page: &ArchivePage, total: Option<u64>) -> Option<u64> {
    if page.items.is_empty() {
        return None;
    }
    let n = page.items.len() as u64;
    match (req.rsm_after, req.rsm_before) {
        // The first page forwards starts the set.
        (None, None) => Some(0),
        // Forwards after an id: the page's count is the window after it.
        (Some(_), None) => total?.checked_sub(page.count?),
        // Backwards (the window ends at `before` or at the end of the set): the page is
        // the window's tail.
        (None, Some(_)) => page.count?.checked_sub(n),
        // Both: the window's start is unknown.
        (Some(_), Some(_)) => None,
    }
}

/// §4.1.5: the fields a query may use; mam:2 adds the #extended ones (§7), with the
/// XEP-0122 `<validate/>` that marks `ids` as open.
fn query_form(version: Version) -> Element {
    let mut form = DataForm::with_form_type(FormKind::Form, version.ns())
        .field(Field::new("with", FieldType::JidSingle))
        .field(Field::new("start", FieldType::TextSingle))
        .field(Field::new("end", FieldType::TextSingle));
    if version == Version::V2 {
        let validate = Element::new("validate", XDATA_VALIDATE)
            .attr("datatype", "xs:string")
            .child(Element::new("open", XDATA_VALIDATE));
        form = form
            .field(Field::new("before-id", FieldType::TextSingle))
            .field(Field::new("after-id", FieldType::TextSingle))
            .field(Field::new("ids", FieldType::ListMulti).child(validate));
    }
    Element::new("query", version.ns()).child(form.to_element())
}

#[cfg(test)]
mod index_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use rookery_storage::ArchiveEntry;

    fn page(ids: &[u64], count: Option<u64>) -> ArchivePage {
        let items = ids
            .iter()
            .map(|&i| ArchiveEntry {
                id: ArchiveId(i),
                with: "a@b".into(),
                with_resource: String::new(),
                outgoing: false,
                stanza: Bytes::new(),
            })
            .collect();
        ArchivePage { items, more: true, count }
    }

    #[test]
    fn index_only_when_exact() {
        let fwd = Request::default();
        assert_eq!(first_index(&fwd, &page(&[1, 2], None), None), Some(0));
        assert_eq!(first_index(&fwd, &page(&[], Some(0)), Some(0)), None);

        let after = Request { rsm_after: Some(ArchiveId(9)), ..Request::default() };
        assert_eq!(first_index(&after, &page(&[10, 11], Some(30)), Some(100)), Some(70));
        assert_eq!(first_index(&after, &page(&[10, 11], None), Some(100)), None);
        assert_eq!(first_index(&after, &page(&[10, 11], Some(30)), None), None);

        let last = Request { rsm_before: Some(None), ..Request::default() };
        assert_eq!(first_index(&last, &page(&[5, 6, 7], Some(100)), Some(100)), Some(97));
        let before = Request { rsm_before: Some(Some(ArchiveId(50))), ..Request::default() };
        assert_eq!(first_index(&before, &page(&[40, 41], Some(20)), Some(100)), Some(18));
        assert_eq!(first_index(&before, &page(&[40, 41], None), Some(100)), None);

        let both =
            Request { rsm_after: Some(ArchiveId(1)), rsm_before: Some(Some(ArchiveId(50))), ..Request::default() };
        assert_eq!(first_index(&both, &page(&[40, 41], Some(20)), Some(100)), None);
    }
}
