//! `[login]`: a login storm. Arrival `k` is a complete login (TCP, TLS, SASL, bind, optional
//! initial presence) of user `k mod users` with its own resource, started at its intended
//! time whatever happened to earlier ones. The login latency runs from that intended time to
//! the bound session; the connection phases go to the run-wide histograms. A login stays
//! connected for `hold`, then closes its stream cleanly.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::{Outcome, dispatch};
use crate::actor::{ActorSpec, Ctx, KeepAlive, Live, run_actor};
use crate::scenario::{Kind, Scenario};
use crate::users::Partition;

/// Runs the login storm for this worker's users.
pub async fn run(ctx: Arc<Ctx>, scn: &Scenario, part: Partition, live: Arc<Live>) -> Outcome {
    let mut out = Outcome::default();
    let (Some(spec), Some(sched)) = (scn.file.login.as_ref(), scn.schedule(Kind::Login)) else {
        return out;
    };
    let open = Arc::new(AtomicI64::new(0));
    let hold = spec.hold.0;
    let mut tasks = JoinSet::new();
    let start = ctx.now();
    dispatch(&ctx, &sched, start, |k, intended| {
        let u = scn.arrival_unit(Kind::Login, k);
        if !part.owns(u) {
            return;
        }
        let Some(account) = scn.pool.get(scn.unit_users(Kind::Login, u).start) else { return };
        live.counters.inc("attempts");
        let (tx, rx) = mpsc::channel::<()>(1);
        let (rtx, rrx) = oneshot::channel();
        let spec = ActorSpec {
            account,
            resource: format!("{}-login-{k}", scn.file.target.resource),
            handler: KeepAlive::new(live.clone(), open.clone(), true),
            rx,
            intended,
            ready: Some(rtx),
            resume: false,
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let actor = tokio::spawn(run_actor(ctx.clone(), spec));
            if let Ok(true) = rrx.await {
                ctx.sleep(hold).await;
            }
            drop(tx);
            let _ = actor.await;
        });
    })
    .await;
    out.load_seconds = super::load_seconds(&ctx, start, &sched);
    let wait = scn.file.target.login_timeout.0 + hold + Duration::from_secs(10);
    let _ = tokio::time::timeout(wait, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    out
}
