//! `[chat]`: 1:1 messages between pairs of users at a target total rate (RFC 6121 §5).
//!
//! Pair `p` is users `2p` and `2p + 1` of the kind's block. Flow `f` is one direction of one
//! pair (`f = 2p` from the first user, `2p + 1` back when bidirectional). Arrival `k` of
//! the schedule is a message on flow `k mod flows`, with the flow's next sequence number.
//! The body carries `rl <flow> <seq> <intended µs>`; the receiver charges latency from the
//! intended time and tracks duplicates and reordering per flow. Messages go to the
//! receiver's full JID so delivery does not depend on presence priority rules.
//! After the marker the body carries a tag unique to this run: a message of an earlier run
//! that the server stored offline and delivers at login (RFC 6121 §8.5.2.2.1 allows that)
//! would otherwise count as delivered here, so messages without this run's tag are ignored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rookery_xml::{Element, escape_attr};

use super::{Member, Outcome, bring_up, dispatch, offer, parse_marker};
use crate::actor::{Action, Ctx, Handler, Live, LoginEvent};
use crate::client::Session;
use crate::metrics::charged_latency;
use crate::scenario::{Kind, Scenario};
use crate::tracker::{FlowTracker, Receipt};
use crate::users::Partition;

/// A message to send.
pub struct Send {
    pub flow: u64,
    pub seq: u64,
    pub intended: Duration,
}

struct ChatHandler {
    live: Arc<Live>,
    /// Full JID of the peer.
    peer: String,
    expected_jid: String,
    /// This run's tag, the word after the marker (see the module doc).
    tag: Arc<str>,
    padding: Arc<str>,
    ack_every: u32,
    flows: HashMap<u64, FlowTracker>,
}

impl Handler for ChatHandler {
    type Cmd = Send;

    fn on_login(&mut self, ev: &LoginEvent<'_>, s: Option<&mut Session>) {
        if let Some(s) = s
            && s.jid != self.expected_jid
        {
            tracing::warn!(event = "resource_overridden", expected = %self.expected_jid, bound = %s.jid);
        }
        let _ = ev;
    }

    fn on_stanza(&mut self, el: &Element, now: Duration, _s: &mut Session) {
        if el.name != "message" || self.live.frozen() {
            return;
        }
        if el.get_attr("type") == Some("error") {
            self.live.counters.inc("errors");
            return;
        }
        let Some(body) = el.elements().find(|c| c.name == "body") else { return };
        let Some((flow, seq, intended)) = this_run(&body.text_content(), &self.tag) else { return };
        match self.flows.entry(flow).or_default().receive(seq) {
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

    fn on_cmd(&mut self, m: Send, _now: Duration, s: &mut Session) -> Action {
        let body = format!("{} {} {}", super::marker(m.flow, m.seq, m.intended), self.tag, self.padding);
        s.stanza(
            &format!(
                "<message to='{}' type='chat' id='c{}-{}'><body>{body}</body></message>",
                escape_attr(&self.peer),
                m.flow,
                m.seq
            ),
            self.ack_every,
        );
        self.live.counters.inc("sent");
        Action::Continue
    }

    fn on_unsent(&mut self, _m: Send) {
        self.live.counters.inc("unsent");
    }

    fn on_lost(&mut self, stream_error: Option<&str>) {
        self.live.counters.inc(if stream_error.is_some() { "stream_errors" } else { "disconnects" });
    }
}

/// The marker of a body sent by this run (tagged `tag`); `None` for anything else, including
/// messages of an earlier run that the server delivers from offline storage.
fn this_run(body: &str, tag: &str) -> Option<(u64, u64, Duration)> {
    let marker = parse_marker(body)?;
    if body.split(' ').nth(4) != Some(tag) {
        tracing::debug!(event = "stale_message_ignored", flow = marker.0, seq = marker.1);
        return None;
    }
    Some(marker)
}

/// Runs the chat scenario for this worker's pairs.
pub async fn run(ctx: Arc<Ctx>, scn: &Scenario, part: Partition, live: Arc<Live>) -> Outcome {
    let mut out = Outcome::default();
    let (Some(spec), Some(sched)) = (scn.file.chat.as_ref(), scn.schedule(Kind::Chat)) else {
        return out;
    };
    let (flows, dirs) = scn.chat_flows();
    let resource = format!("{}-chat", scn.file.target.resource);
    let padding: Arc<str> = "x".repeat(spec.body_bytes).into();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let tag: Arc<str> = format!("t{:x}", nanos as u64 ^ u64::from(std::process::id())).into();
    let mut members = Vec::new();
    for p in part.units(scn.unit_count(Kind::Chat)) {
        let users = scn.unit_users(Kind::Chat, p);
        let (ia, ib) = (users.start, users.start + 1);
        let (Some(a), Some(b)) = (scn.pool.get(ia), scn.pool.get(ib)) else { continue };
        let (fa, fb) = (format!("{}/{resource}", a.jid), format!("{}/{resource}", b.jid));
        for (idx, acct, me, peer) in [(ia, a, fa.clone(), fb.clone()), (ib, b, fb, fa)] {
            let handler = ChatHandler {
                live: live.clone(),
                peer,
                expected_jid: me,
                tag: tag.clone(),
                padding: padding.clone(),
                ack_every: ctx.settings.ack_every,
                flows: HashMap::new(),
            };
            members.push(Member { idx, account: acct, resource: resource.clone(), handler });
        }
    }
    let run = &scn.file.run;
    let fleet = bring_up(&ctx, members, run.connect_rate, run.setup_timeout.0, true, &live).await;

    let start = ctx.now();
    let mut next_seq: HashMap<u64, u64> = HashMap::new();
    dispatch(&ctx, &sched, start, |k, intended| {
        let pair = scn.arrival_unit(Kind::Chat, k);
        if !part.owns(pair) {
            return;
        }
        let flow = k % flows;
        let sender = scn.unit_users(Kind::Chat, pair).start + (flow % dirs);
        let seq = next_seq.entry(flow).or_insert(0);
        let cmd = Send { flow, seq: *seq, intended };
        *seq += 1;
        offer(&fleet.senders, sender, cmd, &live);
    })
    .await;
    out.load_seconds = super::load_seconds(&ctx, start, &sched);
    let c = &live.counters;
    super::settle(run.grace.0, || c.get("delivered") >= c.get("sent")).await;
    live.freeze();
    c.set("lost", c.get("sent").saturating_sub(c.get("delivered")));
    fleet.shutdown(Duration::from_secs(10)).await;
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_messages_tagged_by_this_run_count() {
        let body = format!("{} t1a2b xxxx", super::super::marker(3, 9, Duration::from_micros(1500)));
        assert_eq!(this_run(&body, "t1a2b"), Some((3, 9, Duration::from_micros(1500))));
        assert_eq!(this_run(&body, "t99"), None, "an earlier run's message");
        assert_eq!(this_run("rl 3 9 1500 xxxx", "t1a2b"), None, "untagged");
        assert_eq!(this_run("rl 3 9 1500", "t1a2b"), None, "marker only");
        assert_eq!(this_run("hello", "t1a2b"), None);
    }
}
