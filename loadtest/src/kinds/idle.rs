//! `[idle]`: hold many authenticated connections. Connection `j` (user `j` of the block) is
//! opened at `login_rate` per second; once the last one is scheduled, all are held for
//! `hold` with whitespace keepalives and XEP-0198 acks, then closed cleanly. What matters
//! here is the server's memory per connection (`--server-pid`) and that nothing drops:
//! `disconnects`, `stream_errors` and `open_at_end` are reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Outcome, dispatch};
use crate::actor::{ActorSpec, Ctx, KeepAlive, Live, run_actor};
use crate::scenario::{Kind, Scenario};
use crate::users::Partition;

/// Runs the idle scenario for this worker's connections.
pub async fn run(ctx: Arc<Ctx>, scn: &Scenario, part: Partition, live: Arc<Live>) -> Outcome {
    let mut out = Outcome::default();
    let (Some(spec), Some(sched)) = (scn.file.idle.as_ref(), scn.schedule(Kind::Idle)) else {
        return out;
    };
    let open = Arc::new(AtomicI64::new(0));
    let resource = format!("{}-idle", scn.file.target.resource);
    let mut tasks = JoinSet::new();
    let mut senders = Vec::new();
    let start = ctx.now();
    dispatch(&ctx, &sched, start, |k, intended| {
        let j = scn.arrival_unit(Kind::Idle, k);
        if !part.owns(j) {
            return;
        }
        let Some(account) = scn.pool.get(scn.unit_users(Kind::Idle, j).start) else { return };
        live.counters.inc("attempts");
        let (tx, rx) = mpsc::channel::<()>(1);
        let spec = ActorSpec {
            account,
            resource: resource.clone(),
            handler: KeepAlive::new(live.clone(), open.clone(), true),
            rx,
            intended,
            ready: None,
            resume: true,
        };
        tasks.spawn(run_actor(ctx.clone(), spec));
        senders.push(tx);
    })
    .await;
    ctx.sleep(spec.hold.0).await;
    let planned = sched.duration().as_secs_f64() + spec.hold.0.as_secs_f64();
    out.load_seconds =
        if ctx.is_stopped() { ctx.now().saturating_sub(start).as_secs_f64().min(planned) } else { planned };
    live.counters.set("open_at_end", open.load(Ordering::Relaxed).max(0) as u64);
    drop(senders);
    let _ = tokio::time::timeout(Duration::from_secs(30), async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    out
}
