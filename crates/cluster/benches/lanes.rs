//! Router-side dispatch throughput over a real loopback gRPC stream: an edge (a raw
//! client sending pre-encoded frames) and a `RouterServer` whose `Router` does nothing, so
//! what is measured is the transport plus the dispatch (shards, lanes, catch_unwind).
//!
//! `cargo bench -p rookery-cluster --bench lanes` (plain timing, no criterion: each case
//! sends N `Route` frames and a `Ping`, and the clock stops at the `Pong`, i.e. when all
//! were handled; the median of several rounds is printed).
//!
//! Cases: `distinct` (every frame from another user: one message per frame, a lane
//! created and ended per frame), `few` (8 users, long lanes), `yielding` (distinct users,
//! and the router call waits once, so every call is parked and woken).

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use bytes::Bytes;
use rookery_cluster::{ClusterEvents, ClusterLink, RouterServer, RouterServerConfig};
use rookery_core::{BindError, IqRequest, IqResult, Location, Router, SessionEntry};
use rookery_jid::{FullJid, Jid};
use rookery_proto::pb::router_service_client::RouterServiceClient;
use rookery_proto::{EdgeMsg, Hello, PROTO_VERSION, RouterMsg, pb};
use rookery_stanza::{Envelope, Kind};
use rookery_xml::RawElement;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

struct Nop {
    yielding: AtomicBool,
}

#[async_trait]
impl Router for Nop {
    async fn bind(&self, _jid: &FullJid, _loc: Location) -> Result<(), BindError> {
        Ok(())
    }
    async fn route(&self, _from: Location, _env: Envelope) {
        if self.yielding.load(Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
    }
    async fn unbind(&self, _jid: &FullJid, _loc: Location) {}
    async fn preauth_iq(&self, _req: IqRequest) -> IqResult {
        Ok(None)
    }
    async fn undelivered(&self, _to: &FullJid, _stanza: Bytes) {}
}

struct NoEvents;

#[async_trait]
impl ClusterEvents for NoEvents {
    async fn session_state(&self, _entry: SessionEntry) {}
}

fn route(from: &str, id: u64) -> pb::EdgeFrame {
    let xml = format!("<message to='sink@example.com' id='m{id}' type='chat'><body>hello there</body></message>");
    let el = RawElement::from_bytes(Bytes::from(xml), "jabber:client").unwrap();
    let to = Jid::parse("sink@example.com").unwrap();
    let env = Envelope { kind: Kind::Message, from: Jid::parse(from).unwrap(), to, el };
    EdgeMsg::Route { conn: 1, env }.into()
}

async fn round(
    tx: &mpsc::Sender<pb::EdgeFrame>,
    rx: &mut mpsc::UnboundedReceiver<RouterMsg>,
    frames: &[pb::EdgeFrame],
    seq: u64,
) -> Duration {
    let start = Instant::now();
    for f in frames {
        tx.send(f.clone()).await.unwrap();
    }
    tx.send(EdgeMsg::Ping { seq }.into()).await.unwrap();
    loop {
        if let Some(RouterMsg::Pong { seq: s }) = rx.recv().await
            && s == seq
        {
            return start.elapsed();
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let router = Arc::new(Nop { yielding: AtomicBool::new(false) });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = RouterServer::new(
            router.clone(),
            ClusterLink::new(4096),
            Arc::new(NoEvents),
            RouterServerConfig::default(),
        );
        let (_shutdown, stop) = watch::channel(false);
        tokio::spawn(async move { server.serve(listener, stop).await.unwrap() });

        let (tx, out) = mpsc::channel::<pb::EdgeFrame>(4096);
        tx.send(EdgeMsg::Hello(Hello { edge_id: 1, epoch: 1, proto_version: PROTO_VERSION }).into()).await.unwrap();
        let outbound = futures::stream::unfold(out, |mut out| async move { out.recv().await.map(|f| (f, out)) });
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut inbound = RouterServiceClient::new(channel).connect(outbound).await.unwrap().into_inner();
        let (frames_tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(f)) = inbound.message().await {
                let _ = frames_tx.send(RouterMsg::try_from(f).unwrap());
            }
        });

        let n: u64 = std::env::var("LANES_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
        let rounds: usize = std::env::var("LANES_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
        let distinct: Vec<_> = (0..n).map(|i| route(&format!("user{i}@example.com/r"), i)).collect();
        let few: Vec<_> = (0..n).map(|i| route(&format!("user{}@example.com/r", i % 8), i)).collect();
        let mut seq = 0;
        for (name, frames, yielding) in
            [("distinct", &distinct, false), ("few", &few, false), ("yielding", &distinct, true)]
        {
            router.yielding.store(yielding, Ordering::Relaxed);
            // Warm-up round, then the measured ones.
            seq += 1;
            round(&tx, &mut rx, frames, seq).await;
            let mut times = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                seq += 1;
                times.push(round(&tx, &mut rx, frames, seq).await);
            }
            times.sort();
            let median = times[rounds / 2];
            println!(
                "lanes/{name:<9} {n} frames: median {:>7.1} ms, {:>9.0} frames/s (min {:.1} ms, max {:.1} ms)",
                median.as_secs_f64() * 1e3,
                n as f64 / median.as_secs_f64(),
                times[0].as_secs_f64() * 1e3,
                times[rounds - 1].as_secs_f64() * 1e3,
            );
        }
    });
}
