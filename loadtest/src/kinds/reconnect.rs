//! `[reconnect]`: reconnect storms, resuming with XEP-0198 (§5) when the server offers it.
//!
//! Users log in with stream management enabled (when offered). Arrival `k` makes user
//! `k mod users` drop its TCP connection without closing the stream, as a phone losing its
//! network would, and connect again at once: `<resume/>` with the previous id when the
//! server allowed resumption, else a fresh bind. Latency runs from the intended time of the
//! drop to the resumed or bound session; `resumed` and `fresh` count the two outcomes.

use std::sync::Arc;
use std::time::Duration;

use rookery_xml::Element;

use super::{Member, Outcome, bring_up, dispatch, offer};
use crate::actor::{Action, Cause, Ctx, Handler, Live, LoginEvent};
use crate::client::{Session, SmSupport};
use crate::metrics::charged_latency;
use crate::scenario::{Kind, Scenario};
use crate::users::Partition;

pub struct Cmd {
    pub intended: Duration,
}

struct ReconnectHandler {
    live: Arc<Live>,
}

impl Handler for ReconnectHandler {
    type Cmd = Cmd;

    fn on_login(&mut self, ev: &LoginEvent<'_>, _s: Option<&mut Session>) {
        if ev.cause != Cause::Reconnect {
            return;
        }
        match ev.outcome {
            Ok(resumed) => {
                self.live.counters.inc(if resumed { "resumed" } else { "fresh" });
                self.live.latency.record(charged_latency(ev.intended, ev.now));
            }
            Err(_) => self.live.counters.inc("failed"),
        }
    }

    fn on_stanza(&mut self, el: &Element, _now: Duration, _s: &mut Session) {
        if el.get_attr("type") == Some("error") {
            self.live.counters.inc("errors");
        }
    }

    fn on_cmd(&mut self, cmd: Cmd, _now: Duration, _s: &mut Session) -> Action {
        self.live.counters.inc("reconnects");
        Action::Reconnect(cmd.intended)
    }

    fn on_unsent(&mut self, _cmd: Cmd) {
        self.live.counters.inc("unsent");
    }

    fn on_lost(&mut self, stream_error: Option<&str>) {
        self.live.counters.inc(if stream_error.is_some() { "stream_errors" } else { "disconnects" });
    }
}

/// Runs the reconnect scenario for this worker's users.
pub async fn run(ctx: Arc<Ctx>, scn: &Scenario, part: Partition, live: Arc<Live>) -> Outcome {
    let mut out = Outcome::default();
    let (Some(spec), Some(sched)) = (scn.file.reconnect.as_ref(), scn.schedule(Kind::Reconnect)) else {
        return out;
    };
    let resource = format!("{}-reconnect", scn.file.target.resource);
    let mut members = Vec::new();
    let idx = |u: u64| scn.unit_users(Kind::Reconnect, u).start;
    for u in part.units(scn.unit_count(Kind::Reconnect)) {
        let Some(acct) = scn.pool.get(idx(u)) else { continue };
        let handler = ReconnectHandler { live: live.clone() };
        members.push(Member { idx: idx(u), account: acct, resource: resource.clone(), handler });
    }
    let run = &scn.file.run;
    let fleet = bring_up(&ctx, members, run.connect_rate, run.setup_timeout.0, spec.resume, &live).await;
    match ctx.sm_support() {
        Some(SmSupport::Unsupported) => {
            out.notes.push("sm: unsupported by the server; every reconnect is a fresh login".into())
        }
        Some(SmSupport::Disabled) => out.notes.push("sm: disabled (target.stream_management = false)".into()),
        _ if !spec.resume => out.notes.push("resume = false: every reconnect is a fresh login".into()),
        _ => {}
    }

    let start = ctx.now();
    dispatch(&ctx, &sched, start, |n, intended| {
        let u = scn.arrival_unit(Kind::Reconnect, n);
        if part.owns(u) {
            offer(&fleet.senders, idx(u), Cmd { intended }, &live);
        }
    })
    .await;
    out.load_seconds = super::load_seconds(&ctx, start, &sched);
    let c = &live.counters;
    super::settle(run.grace.0, || c.get("resumed") + c.get("fresh") + c.get("failed") >= c.get("reconnects")).await;
    live.freeze();
    fleet.shutdown(Duration::from_secs(10)).await;
    out
}
