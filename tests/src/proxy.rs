//! A TCP proxy on loopback that a test can cut and heal, to partition one process from
//! the others (the cluster's network-partition test puts one in front of Redis and of each
//! router for one edge).
//!
//! Owns: forwarding bytes between an accepted connection and `target`. While cut, every
//! forwarded connection is closed and new ones are accepted and closed at once, which is
//! what the cut-off process sees when the network between it and its peers is gone and
//! comes back (connection resets, no silent hang). Must not be used outside tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut so running pumps notice and close.
    generation: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let cut = cut.clone();
            let generation = generation.clone();
            let accepted = accepted.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else { continue };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    if cut.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let mut gen_rx = generation.subscribe();
                    tokio::spawn(async move {
                        let Ok(upstream) = TcpStream::connect(target).await else { return };
                        let (mut cr, mut cw) = client.into_split();
                        let (mut ur, mut uw) = upstream.into_split();
                        tokio::select! {
                            _ = tokio::io::copy(&mut cr, &mut uw) => {}
                            _ = tokio::io::copy(&mut ur, &mut cw) => {}
                            _ = gen_rx.changed() => {}
                        }
                    });
                }
            }
        });
        Proxy { addr, cut, generation, accepted, task }
    }

    /// Drops every forwarded connection and refuses to forward new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Connections accepted so far (forwarded or refused).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}
