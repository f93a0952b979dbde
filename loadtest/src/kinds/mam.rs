//! `[mam]`: XEP-0313 archive queries (§4 querying, §5.1 RSM paging, §4.2 `<fin/>`).
//!
//! Optionally each user first sends `seed_messages` chat messages to a neighbour so the
//! archives are not empty. Arrival `k` makes user `k mod users` ask for the last page
//! (`<max>page_size</max><before/>`). Latency runs from the intended time of the query to
//! the IQ result carrying `<fin/>`; each `<result/>` message in between is counted. Queries
//! without an answer when the grace period ends are `unanswered`.
//!
//! With `pagers = N`, the first N users of the block also page through their whole archive
//! in a closed loop while the load phases last: oldest page first (`<max>page_size</max>`,
//! then `<after>` the last id of each page), and from the start again after the page whose
//! `<fin/>` says `complete`. This is the heavy reader of the isolation benchmark
//! (loadtest/isolation.sh): one user reading a large archive must not slow other users'
//! chat. Each page's latency (sent to `<fin/>`) is recorded with the queries; answered pages
//! count in `pages`, full passes through the archive in `passes`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rookery_xml::{Element, escape_attr};

use super::{Member, Outcome, bring_up, dispatch, offer};
use crate::actor::{Action, Ctx, Handler, Live};
use crate::client::Session;
use crate::metrics::charged_latency;
use crate::scenario::{Kind, Scenario};
use crate::users::Partition;

pub const MAM_NS: &str = "urn:xmpp:mam:2";
const RSM_NS: &str = "http://jabber.org/protocol/rsm";

pub enum Cmd {
    Seed {
        to: String,
        count: u32,
    },
    Query {
        intended: Duration,
    },
    /// Start paging through the own archive in a closed loop (until `paging` turns false).
    Page,
}

struct MamHandler {
    live: Arc<Live>,
    page_size: u32,
    ack_every: u32,
    next_id: u64,
    pending: HashMap<String, Duration>,
    seeded: Arc<AtomicU64>,
    /// The pager's loop runs while this is true.
    paging: Arc<AtomicBool>,
    /// The pager's outstanding page: its id and when it was sent.
    page: Option<(String, Duration)>,
}

impl MamHandler {
    /// Asks for the page after `after` (the first page when `None`).
    fn next_page(&mut self, after: Option<&str>, now: Duration, s: &mut Session) {
        self.next_id += 1;
        let id = format!("page{}", self.next_id);
        let after = match after {
            Some(a) => format!("<after>{}</after>", rookery_xml::escape_text(a)),
            None => String::new(),
        };
        s.stanza(
            &format!(
                "<iq type='set' id='{id}'><query xmlns='{MAM_NS}' queryid='{id}'>\
                 <set xmlns='{RSM_NS}'><max>{}</max>{after}</set></query></iq>",
                self.page_size
            ),
            self.ack_every,
        );
        self.page = Some((id, now));
    }

    /// The answer to the pager's page: record it and ask for the next one.
    fn on_page(&mut self, el: &Element, sent: Duration, now: Duration, s: &mut Session) {
        let fin = el.get_child("fin", MAM_NS);
        let Some(fin) = fin.filter(|_| el.get_attr("type") == Some("result")) else {
            self.live.counters.inc("errors");
            return;
        };
        if !self.live.frozen() {
            self.live.counters.inc("pages");
            self.live.latency.record(now.saturating_sub(sent));
        }
        let last =
            fin.get_child("set", RSM_NS).and_then(|set| set.get_child("last", RSM_NS)).map(Element::text_content);
        let after = match (fin.get_attr("complete"), last) {
            (Some("true" | "1"), _) | (_, None) => {
                self.live.counters.inc("passes");
                None
            }
            (_, Some(last)) => Some(last),
        };
        if self.paging.load(Ordering::Relaxed) {
            self.next_page(after.as_deref(), now, s);
        }
    }
}

impl Handler for MamHandler {
    type Cmd = Cmd;

    fn on_stanza(&mut self, el: &Element, now: Duration, s: &mut Session) {
        if el.name == "iq"
            && let Some((id, sent)) = self.page.take_if(|(id, _)| el.get_attr("id") == Some(id.as_str()))
        {
            let _ = id;
            self.on_page(el, sent, now, s);
            return;
        }
        match el.name.as_str() {
            "message" if el.get_child("result", MAM_NS).is_some() => self.live.counters.inc("results"),
            "message" if el.get_attr("type") == Some("error") => self.live.counters.inc("errors"),
            "iq" => {
                let Some(intended) = el.get_attr("id").and_then(|id| self.pending.remove(id)) else { return };
                if self.live.frozen() {
                    // Too late to count; it stays unanswered.
                    self.live.counters.inc("unanswered");
                    return;
                }
                if el.get_attr("type") == Some("result") && el.get_child("fin", MAM_NS).is_some() {
                    self.live.counters.inc("answered");
                    self.live.latency.record(charged_latency(intended, now));
                } else {
                    self.live.counters.inc("errors");
                }
            }
            _ => {}
        }
    }

    fn on_cmd(&mut self, cmd: Cmd, now: Duration, s: &mut Session) -> Action {
        match cmd {
            Cmd::Seed { to, count } => {
                for i in 0..count {
                    s.stanza(
                        &format!(
                            "<message to='{}' type='chat' id='seed{i}'><body>archive seed {i}</body></message>",
                            escape_attr(&to)
                        ),
                        self.ack_every,
                    );
                }
                self.seeded.fetch_add(1, Ordering::Relaxed);
            }
            Cmd::Query { intended } => {
                self.next_id += 1;
                let id = format!("mam{}", self.next_id);
                s.stanza(
                    &format!(
                        "<iq type='set' id='{id}'><query xmlns='{MAM_NS}' queryid='{id}'>\
                         <set xmlns='{RSM_NS}'><max>{}</max><before/></set></query></iq>",
                        self.page_size
                    ),
                    self.ack_every,
                );
                self.pending.insert(id, intended);
                self.live.counters.inc("queries");
            }
            Cmd::Page => {
                if self.page.is_none() {
                    self.next_page(None, now, s);
                }
            }
        }
        Action::Continue
    }

    fn on_unsent(&mut self, cmd: Cmd) {
        if let Cmd::Query { .. } = cmd {
            self.live.counters.inc("unsent");
        }
    }

    fn on_lost(&mut self, stream_error: Option<&str>) {
        self.live.counters.inc(if stream_error.is_some() { "stream_errors" } else { "disconnects" });
        // Answers to queries on the lost connection will not come.
        self.live.counters.add("unanswered", self.pending.len() as u64);
        self.pending.clear();
        // A page lost with the connection: the loop starts over when asked again.
        self.page = None;
    }

    fn on_end(&mut self) {
        self.live.counters.add("unanswered", self.pending.len() as u64);
        self.pending.clear();
    }
}

/// Runs the archive-query scenario for this worker's users.
pub async fn run(ctx: Arc<Ctx>, scn: &Scenario, part: Partition, live: Arc<Live>) -> Outcome {
    let mut out = Outcome::default();
    let (Some(spec), Some(sched)) = (scn.file.mam.as_ref(), scn.schedule(Kind::Mam)) else {
        return out;
    };
    let resource = format!("{}-mam", scn.file.target.resource);
    let seeded = Arc::new(AtomicU64::new(0));
    let paging = Arc::new(AtomicBool::new(true));
    let mut members = Vec::new();
    let idx = |u: u64| scn.unit_users(Kind::Mam, u).start;
    for u in part.units(scn.unit_count(Kind::Mam)) {
        let Some(acct) = scn.pool.get(idx(u)) else { continue };
        let handler = MamHandler {
            live: live.clone(),
            page_size: spec.page_size,
            ack_every: ctx.settings.ack_every,
            next_id: 0,
            pending: HashMap::new(),
            seeded: seeded.clone(),
            paging: paging.clone(),
            page: None,
        };
        members.push(Member { idx: idx(u), account: acct, resource: resource.clone(), handler });
    }
    let run = &scn.file.run;
    let fleet = bring_up(&ctx, members, run.connect_rate, run.setup_timeout.0, true, &live).await;

    if spec.seed_messages > 0 {
        let mut asked = 0;
        for u in part.units(spec.users) {
            // One way: only even users send, to the next one, which only reads (two clients
            // that both write without reading can fill each other's server-side queue).
            if spec.seed_one_way && (u % 2 == 1 || u + 1 >= spec.users) {
                continue;
            }
            // The neighbour in the block (the last user writes to the one before it).
            let peer = if u + 1 < spec.users { u + 1 } else { u.saturating_sub(1) };
            let Some(to) = scn.pool.get(idx(peer)) else { continue };
            if let Some(tx) = fleet.senders.get(&idx(u))
                && tx.try_send(Cmd::Seed { to: to.jid, count: spec.seed_messages }).is_ok()
            {
                asked += 1;
            }
        }
        let deadline = tokio::time::Instant::now() + run.setup_timeout.0;
        while seeded.load(Ordering::Relaxed) < asked && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Give the server a moment to archive what was just sent.
        tokio::time::sleep(Duration::from_secs(1)).await;
        out.notes.push(format!("{} users sent {} seed messages each", asked, spec.seed_messages));
    }

    let pagers: Vec<u64> = part.units(spec.users).filter(|u| *u < spec.pagers).collect();
    for u in &pagers {
        if let Some(tx) = fleet.senders.get(&idx(*u)) {
            let _ = tx.try_send(Cmd::Page);
        }
    }
    if !pagers.is_empty() {
        out.notes.push(format!("{} user(s) paging through their archive, {} per page", pagers.len(), spec.page_size));
    }
    let start = ctx.now();
    let mut offered = 0u64;
    dispatch(&ctx, &sched, start, |n, intended| {
        let u = scn.arrival_unit(Kind::Mam, n);
        if part.owns(u) {
            offer(&fleet.senders, idx(u), Cmd::Query { intended }, &live);
            offered += 1;
        }
    })
    .await;
    out.load_seconds = super::load_seconds(&ctx, start, &sched);
    paging.store(false, Ordering::Relaxed);
    let c = &live.counters;
    // Counted against what was offered, not `queries`: a query still waiting in a busy
    // connection's command queue (behind its seed messages) is not sent yet.
    super::settle(run.grace.0, || {
        c.get("answered") + c.get("errors") + c.get("unanswered") + c.get("unsent") >= offered
    })
    .await;
    live.freeze();
    fleet.shutdown(Duration::from_secs(10)).await;
    out
}
