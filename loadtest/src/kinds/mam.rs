//! `[mam]`: XEP-0313 archive queries (§4 querying, §5.1 RSM paging, §4.2 `<fin/>`).
//!
//! Optionally each user first sends `seed_messages` chat messages to a neighbour so the
//! archives are not empty. Arrival `k` makes user `k mod users` ask for the last page
//! (`<max>page_size</max><before/>`). Latency runs from the intended time of the query to
//! the IQ result carrying `<fin/>`; each `<result/>` message in between is counted. Queries
//! without an answer when the grace period ends are `unanswered`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    Seed { to: String, count: u32 },
    Query { intended: Duration },
}

struct MamHandler {
    live: Arc<Live>,
    page_size: u32,
    ack_every: u32,
    next_id: u64,
    pending: HashMap<String, Duration>,
    seeded: Arc<AtomicU64>,
}

impl Handler for MamHandler {
    type Cmd = Cmd;

    fn on_stanza(&mut self, el: &Element, now: Duration, _s: &mut Session) {
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

    fn on_cmd(&mut self, cmd: Cmd, _now: Duration, s: &mut Session) -> Action {
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
        };
        members.push(Member { idx: idx(u), account: acct, resource: resource.clone(), handler });
    }
    let run = &scn.file.run;
    let fleet = bring_up(&ctx, members, run.connect_rate, run.setup_timeout.0, true, &live).await;

    if spec.seed_messages > 0 {
        let mut asked = 0;
        for u in part.units(spec.users) {
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

    let start = ctx.now();
    dispatch(&ctx, &sched, start, |n, intended| {
        let u = scn.arrival_unit(Kind::Mam, n);
        if part.owns(u) {
            offer(&fleet.senders, idx(u), Cmd::Query { intended }, &live);
        }
    })
    .await;
    out.load_seconds = super::load_seconds(&ctx, start, &sched);
    let c = &live.counters;
    super::settle(run.grace.0, || c.get("answered") + c.get("errors") >= c.get("queries")).await;
    live.freeze();
    fleet.shutdown(Duration::from_secs(10)).await;
    out
}
