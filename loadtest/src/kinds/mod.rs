//! Scenario kinds: one module per kind, plus what they share here (bringing connections
//! up at a paced rate, the open-loop dispatcher, the marker that carries sequence numbers
//! and intended times in stanzas).
//!
//! Owns the meaning of traffic for each kind; it must not touch the report layout (it fills
//! [`Live`] instruments and returns an [`Outcome`]) or parse command lines.

pub mod chat;
pub mod idle;
pub mod login;
pub mod mam;
pub mod presence;
pub mod reconnect;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::actor::{ActorSpec, Ctx, Handler, Live, run_actor};
use crate::schedule::{Pacer, Process, RatePhase, Schedule};
use crate::users::Account;

/// What a kind reports besides its instruments.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub notes: Vec<String>,
    /// Length of the load phases.
    pub load_seconds: f64,
}

/// Capacity of a connection's command queue: commands wait here while the connection is
/// busy or reconnecting (their delay is charged, since latency runs from intended times).
pub const QUEUE: usize = 4096;

/// One connection to bring up.
pub struct Member<H: Handler> {
    /// Pool index of the account.
    pub idx: u64,
    pub account: Account,
    pub resource: String,
    pub handler: H,
}

/// Connections of a kind: command senders by pool index, and the tasks.
pub struct Fleet<C> {
    pub senders: HashMap<u64, mpsc::Sender<C>>,
    pub tasks: JoinSet<()>,
}

impl<C> Fleet<C> {
    /// Closes every command channel and waits for the connections to end.
    pub async fn shutdown(mut self, wait: Duration) {
        self.senders.clear();
        let _ = tokio::time::timeout(wait, async { while self.tasks.join_next().await.is_some() {} }).await;
        self.tasks.abort_all();
    }
}

/// Logs `members` in at `rate` per second and waits (up to `timeout`) until each login
/// has succeeded or failed. Failed members are counted in `setup_failures` and left out.
pub async fn bring_up<H: Handler>(
    ctx: &Arc<Ctx>,
    members: Vec<Member<H>>,
    rate: f64,
    timeout: Duration,
    resume: bool,
    live: &Live,
) -> Fleet<H::Cmd> {
    let mut tasks = JoinSet::new();
    let mut pending = Vec::with_capacity(members.len());
    let sched = Schedule::new(
        vec![RatePhase::steady(Duration::from_secs_f64(members.len() as f64 / rate), rate)],
        Process::Constant,
    );
    let start = ctx.now();
    let mut arrivals = sched.arrivals();
    for m in members {
        let at = start + arrivals.next().unwrap_or_default();
        tokio::time::sleep_until((ctx.epoch + at).into()).await;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (rtx, rrx) = oneshot::channel();
        let spec = ActorSpec {
            account: m.account,
            resource: m.resource,
            handler: m.handler,
            rx,
            intended: at,
            ready: Some(rtx),
            resume,
        };
        tasks.spawn(run_actor(ctx.clone(), spec));
        pending.push((m.idx, tx, rrx));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut senders = HashMap::with_capacity(pending.len());
    for (idx, tx, rrx) in pending {
        match tokio::time::timeout_at(deadline, rrx).await {
            Ok(Ok(true)) => {
                senders.insert(idx, tx);
            }
            _ => live.counters.inc("setup_failures"),
        }
    }
    Fleet { senders, tasks }
}

/// Plays `sched` (offsets from `start`, itself an offset from the epoch) open loop:
/// `f(k, intended)` is called for every arrival `k` in order, immediately once it is due,
/// never waiting for the effects of earlier ones. A dispatcher that falls behind calls `f`
/// for all overdue arrivals at once, with their original intended times.
pub async fn dispatch(ctx: &Ctx, sched: &Schedule, start: Duration, mut f: impl FnMut(u64, Duration)) {
    let mut pacer = Pacer::new(sched.arrivals());
    let mut k = 0u64;
    while let Some(next) = pacer.next_due() {
        if ctx.is_stopped() {
            break;
        }
        let now = ctx.now().saturating_sub(start);
        if next > now {
            tokio::select! {
                _ = tokio::time::sleep_until((ctx.epoch + start + next).into()) => {}
                _ = ctx.stopped() => break,
            }
            continue;
        }
        for t in pacer.take_due(now, 4096) {
            f(k, start + t);
            k += 1;
        }
        tokio::task::yield_now().await;
    }
}

/// Length of the load phases for rates: the schedule's, or the time actually spent when the
/// load was stopped early.
pub fn load_seconds(ctx: &Ctx, start: Duration, sched: &Schedule) -> f64 {
    let planned = sched.duration().as_secs_f64();
    if ctx.is_stopped() { ctx.now().saturating_sub(start).as_secs_f64().min(planned) } else { planned }
}

/// Waits until `done()` holds or `grace` has passed: the grace period after the load, cut
/// short once everything outstanding has arrived (which changes no count).
pub async fn settle(grace: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + grace;
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The marker in a body or status: `rl <flow> <seq> <intended µs since the epoch>`.
pub fn marker(flow: u64, seq: u64, intended: Duration) -> String {
    format!("rl {flow} {seq} {}", intended.as_micros())
}

/// Parses a marker at the start of `text`.
pub fn parse_marker(text: &str) -> Option<(u64, u64, Duration)> {
    let mut it = text.strip_prefix("rl ")?.split(' ');
    let flow = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    let us: u64 = it.next()?.parse().ok()?;
    Some((flow, seq, Duration::from_micros(us)))
}

/// Sends a command without waiting; counts `unsent` when the connection cannot take it.
pub fn offer<C>(senders: &HashMap<u64, mpsc::Sender<C>>, idx: u64, cmd: C, live: &Live) -> bool {
    match senders.get(&idx) {
        Some(tx) if tx.try_send(cmd).is_ok() => true,
        _ => {
            live.counters.inc("unsent");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn markers_round_trip() {
        let m = marker(7, 42, Duration::from_micros(1_234_567));
        assert_eq!(m, "rl 7 42 1234567");
        assert_eq!(parse_marker(&format!("{m} xxxx")), Some((7, 42, Duration::from_micros(1_234_567))));
        assert_eq!(parse_marker("hello"), None);
        assert_eq!(parse_marker("rl 1 x 3"), None);
    }
}
