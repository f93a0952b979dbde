//! `[presence]`: roster fan-out (RFC 6121 §4.4: a user's presence broadcast reaches every
//! contact with a subscription to it).
//!
//! Group `g` is one changing user followed by its `contacts`. Before the load, each contact
//! checks its roster and, if it is not yet subscribed to the changer, subscribes (§3.1); the
//! changer's client approves. Arrival `k` makes group `k mod groups` change presence with
//! `rl <group> <seq> <intended µs>` as its status; every contact should receive it, so each
//! change is expected `contacts` times. Latency runs from the intended time of the change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rookery_xml::{Element, escape_attr};
use tokio::sync::Notify;

use super::{Member, Outcome, bring_up, dispatch, offer, parse_marker};
use crate::actor::{Action, Ctx, Handler, Live};
use crate::client::Session;
use crate::metrics::charged_latency;
use crate::scenario::{Kind, Scenario};
use crate::tracker::{FlowTracker, Receipt};
use crate::users::Partition;

const ROSTER_NS: &str = "jabber:iq:roster";

pub enum Cmd {
    /// Contacts: make sure the subscription to the changer exists.
    Subscribe,
    /// Changers: broadcast a new presence.
    Change { seq: u64, intended: Duration },
}

/// Counts contacts whose subscription is in place.
#[derive(Default)]
struct Gate {
    ready: AtomicU64,
    notify: Notify,
}

enum Role {
    Changer { group: u64, contacts: u64 },
    Contact { changer: String, tracker: FlowTracker, subscribed: bool },
}

struct PresenceHandler {
    live: Arc<Live>,
    role: Role,
    gate: Arc<Gate>,
    ack_every: u32,
}

fn bare(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(b, _)| b)
}

fn has_subscription_to(item_parent: &Element, who: &str) -> bool {
    item_parent
        .elements()
        .filter(|i| i.name == "item")
        .any(|i| i.get_attr("jid") == Some(who) && matches!(i.get_attr("subscription"), Some("to" | "both")))
}

impl PresenceHandler {
    fn mark_subscribed(&mut self) {
        if let Role::Contact { subscribed, .. } = &mut self.role
            && !*subscribed
        {
            *subscribed = true;
            self.gate.ready.fetch_add(1, Ordering::Relaxed);
            self.gate.notify.notify_one();
        }
    }
}

impl Handler for PresenceHandler {
    type Cmd = Cmd;

    fn on_stanza(&mut self, el: &Element, now: Duration, s: &mut Session) {
        let kind = el.get_attr("type");
        let from = el.get_attr("from").unwrap_or("");
        match (&mut self.role, el.name.as_str()) {
            (Role::Changer { .. }, "presence") if kind == Some("subscribe") => {
                s.stanza(&format!("<presence type='subscribed' to='{}'/>", escape_attr(bare(from))), self.ack_every);
            }
            (Role::Contact { changer, .. }, "iq") => {
                let query = el.get_child("query", ROSTER_NS);
                let changer = changer.clone();
                if el.get_attr("id") == Some("roster-check") {
                    if query.is_some_and(|q| has_subscription_to(q, &changer)) {
                        self.mark_subscribed();
                    } else {
                        s.stanza(
                            &format!("<presence type='subscribe' to='{}'/>", escape_attr(&changer)),
                            self.ack_every,
                        );
                    }
                } else if kind == Some("set") && query.is_some_and(|q| has_subscription_to(q, &changer)) {
                    self.mark_subscribed();
                }
            }
            (Role::Contact { changer, tracker, .. }, "presence") if bare(from) == changer.as_str() => match kind {
                Some("subscribed") => self.mark_subscribed(),
                Some("error") => self.live.counters.inc("errors"),
                None if !self.live.frozen() => {
                    let status = el.elements().find(|c| c.name == "status").map(|c| c.text_content());
                    if let Some((_, seq, intended)) = status.as_deref().and_then(parse_marker) {
                        match tracker.receive(seq) {
                            Receipt::Duplicate => self.live.counters.inc("duplicates"),
                            Receipt::Fresh { reordered } => {
                                self.live.counters.inc("delivered");
                                if reordered {
                                    self.live.counters.inc("reordered");
                                }
                                self.live.latency.record(charged_latency(intended, now));
                            }
                        }
                    }
                }
                _ => {}
            },
            (_, "message") if kind == Some("error") => self.live.counters.inc("errors"),
            _ => {}
        }
    }

    fn on_cmd(&mut self, cmd: Cmd, _now: Duration, s: &mut Session) -> Action {
        match (cmd, &self.role) {
            (Cmd::Subscribe, Role::Contact { .. }) => {
                s.stanza(
                    &format!("<iq type='get' id='roster-check'><query xmlns='{ROSTER_NS}'/></iq>"),
                    self.ack_every,
                );
            }
            (Cmd::Change { seq, intended }, Role::Changer { group, contacts }) => {
                s.stanza(
                    &format!("<presence><status>{}</status></presence>", super::marker(*group, seq, intended)),
                    self.ack_every,
                );
                self.live.counters.inc("sent");
                self.live.counters.add("expected", *contacts);
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_unsent(&mut self, cmd: Cmd) {
        if let Cmd::Change { .. } = cmd {
            self.live.counters.inc("unsent");
        }
    }

    fn on_lost(&mut self, stream_error: Option<&str>) {
        self.live.counters.inc(if stream_error.is_some() { "stream_errors" } else { "disconnects" });
    }
}

/// Runs the presence scenario for this worker's groups.
pub async fn run(ctx: Arc<Ctx>, scn: &Scenario, part: Partition, live: Arc<Live>) -> Outcome {
    let mut out = Outcome::default();
    let (Some(spec), Some(sched)) = (scn.file.presence.as_ref(), scn.schedule(Kind::Presence)) else {
        return out;
    };
    let k = spec.contacts;
    let resource = format!("{}-presence", scn.file.target.resource);
    let gate = Arc::new(Gate::default());
    let mut members = Vec::new();
    let mut contacts_total = 0u64;
    let changer_idx = |g: u64| scn.unit_users(Kind::Presence, g).start;
    for g in part.units(scn.unit_count(Kind::Presence)) {
        let ci = changer_idx(g);
        let Some(changer) = scn.pool.get(ci) else { continue };
        for j in 1..=k {
            let Some(acct) = scn.pool.get(ci + j) else { continue };
            let role = Role::Contact { changer: changer.jid.clone(), tracker: FlowTracker::new(), subscribed: false };
            let handler =
                PresenceHandler { live: live.clone(), role, gate: gate.clone(), ack_every: ctx.settings.ack_every };
            members.push(Member { idx: ci + j, account: acct, resource: resource.clone(), handler });
            contacts_total += 1;
        }
        let role = Role::Changer { group: g, contacts: k };
        let handler =
            PresenceHandler { live: live.clone(), role, gate: gate.clone(), ack_every: ctx.settings.ack_every };
        members.push(Member { idx: ci, account: changer, resource: resource.clone(), handler });
    }
    let run = &scn.file.run;
    let fleet = bring_up(&ctx, members, run.connect_rate, run.setup_timeout.0, true, &live).await;

    // Subscriptions: every contact checks its roster and subscribes if needed.
    let mut asked = 0u64;
    for g in part.units(scn.unit_count(Kind::Presence)) {
        let ci = changer_idx(g);
        for j in 1..=k {
            if let Some(tx) = fleet.senders.get(&(ci + j))
                && tx.try_send(Cmd::Subscribe).is_ok()
            {
                asked += 1;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + run.setup_timeout.0;
    while gate.ready.load(Ordering::Relaxed) < asked {
        if tokio::time::timeout_at(deadline, gate.notify.notified()).await.is_err() {
            break;
        }
    }
    let ready = gate.ready.load(Ordering::Relaxed);
    if ready < contacts_total {
        live.counters.add("setup_failures", asked.saturating_sub(ready));
        out.notes.push(format!("{ready} of {contacts_total} contacts subscribed before the load started"));
    }

    let start = ctx.now();
    let mut next_seq: HashMap<u64, u64> = HashMap::new();
    dispatch(&ctx, &sched, start, |n, intended| {
        let g = scn.arrival_unit(Kind::Presence, n);
        if !part.owns(g) {
            return;
        }
        let seq = next_seq.entry(g).or_insert(0);
        let cmd = Cmd::Change { seq: *seq, intended };
        *seq += 1;
        offer(&fleet.senders, changer_idx(g), cmd, &live);
    })
    .await;
    out.load_seconds = super::load_seconds(&ctx, start, &sched);
    let c = &live.counters;
    super::settle(run.grace.0, || c.get("delivered") >= c.get("expected")).await;
    live.freeze();
    c.set("lost", c.get("expected").saturating_sub(c.get("delivered")));
    fleet.shutdown(Duration::from_secs(10)).await;
    out
}
