//! A loopback cluster of real processes for the cluster tests: a real `redis-server`
//! (session registry), `rookery router` and `rookery edge` processes of the binary under
//! test, and one SQLite database file shared by every process (accounts, rosters, offline
//! messages, archives). Processes can be killed with SIGKILL, restarted, and an edge can be
//! cut off from Redis and the routers through [`Proxy`]s.
//!
//! Owns: process lifecycle, per-process configuration files, readiness waits.
//! Must not be used outside tests.

use crate::proxy::Proxy;
use crate::redis::RedisServer;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Heartbeat of the test cluster's edges; short so failure tests run in seconds.
pub const HEARTBEAT_MS: u64 = 200;
/// An edge silent this long is purged.
pub const DEAD_AFTER_MS: u64 = 1500;

/// The `rookery` binary next to this test executable (target/<profile>/rookery).
pub fn rookery_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).expect("test executable is not in target/<profile>/deps");
    let bin = dir.join(format!("rookery{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`cargo build -p rookery`, or run `cargo test --workspace`)",
        bin.display()
    );
    bin
}

/// A loopback port for a child process to listen on. Taken below the kernel's ephemeral
/// range (32768 and up on Linux), where no `bind("127.0.0.1:0")` of a test running in
/// parallel can land, and handed out once per test process: a port picked with `:0` and
/// released could be taken by another test's listener before the child binds it (seen in
/// CI as "cannot listen …: Address already in use").
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Test processes started one after another begin at different places in the range.
    let _ = NEXT.compare_exchange(u32::MAX, (std::process::id() * 211) % SPAN, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        let port = u16::try_from(port).unwrap_or(20_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Router,
    Edge,
}

/// One `rookery router` or `rookery edge` child process.
pub struct Proc {
    pub role: Role,
    pub node_id: u32,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    /// Edges: the client port.
    pub c2s: Option<SocketAddr>,
    /// Routers: the gRPC port edges connect to.
    pub grpc: Option<SocketAddr>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let sub = match self.role {
            Role::Router => "router",
            Role::Edge => "edge",
        };
        let mut cmd = Command::new(rookery_bin());
        // The process reads only its config file: no ROOKERY_* variable of the test run
        // (ROOKERY_SCENARIO, ...) may leak into it.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ROOKERY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args([sub, "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn,rookery=info,rookery_cluster=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown handshake, no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to 15 s, then SIGKILL): the graceful path, where an edge
    /// closes its streams and leaves the registry and a router drains.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait().unwrap()
            {
                panic!("{:?} {} exited with {status}; log:\n{}", self.role, self.node_id, self.log_text());
            }
            if http_status(self.http, "/health/ready").await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} {} not ready within {within:?}; log:\n{}",
                self.role,
                self.node_id,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Status code of a plain `GET path` (no auth), or None when nothing answers.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await.ok()?.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Which edges get proxies in front of their peers (so they can be partitioned).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub edges: usize,
    pub routers: usize,
    pub partitionable_edges: Vec<usize>,
    /// TOML appended to every process's configuration (e.g. a `[limits]` section).
    pub extra_toml: String,
}

pub struct Cluster {
    pub redis: RedisServer,
    pub routers: Vec<Proc>,
    pub edges: Vec<Proc>,
    pub domain: String,
    /// Per edge: the proxies between it and Redis/the routers (empty when not partitionable).
    proxies: Vec<Vec<Proxy>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// 2 edges and 2 routers. None (after a notice) when redis-server is missing outside CI.
    pub async fn start() -> Option<Cluster> {
        Self::start_with(Options { edges: 2, routers: 2, ..Options::default() }).await
    }

    pub async fn start_with(opts: Options) -> Option<Cluster> {
        let redis = RedisServer::try_start()?;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("shared.sqlite3");
        let domain = "localhost".to_owned();
        let common = |data_dir: &Path| {
            format!(
                "domains = [\"{domain}\"]\ndata_dir = {data:?}\n\n[storage]\nbackend = \"sqlite\"\n\n\
                 [storage.sqlite]\npath = {db:?}\n\n[log]\nlevel = \"warn\"\n",
                data = data_dir.display().to_string(),
                db = db.display().to_string(),
            )
        };
        let mut routers = Vec::new();
        for i in 0..opts.routers {
            let node_id = 1 + i as u32;
            let data_dir = dir.path().join(format!("router-{node_id}"));
            std::fs::create_dir_all(&data_dir).unwrap();
            let (http, grpc) = (addr(free_port()), addr(free_port()));
            let cfg = format!(
                "{}\n[listen]\nc2s = \"off\"\nc2s_tls = \"off\"\nhttp = \"{http}\"\n\n[cluster]\nnode_id = {node_id}\n\
                 grpc = \"{grpc}\"\nredis = [\"{}\"]\nheartbeat_ms = {HEARTBEAT_MS}\ndead_after_ms = {DEAD_AFTER_MS}\n",
                common(&data_dir),
                redis.url()
            ) + &opts.extra_toml;
            let config = data_dir.join("rookery.toml");
            std::fs::write(&config, cfg).unwrap();
            let log = dir.path().join(format!("router-{node_id}.log"));
            routers.push(Proc {
                role: Role::Router,
                node_id,
                config,
                data_dir,
                http,
                c2s: None,
                grpc: Some(grpc),
                log,
                child: None,
            });
        }
        for r in &mut routers {
            r.spawn();
        }
        for r in &mut routers {
            r.wait_ready(Duration::from_secs(20)).await;
        }
        let redis_addr = addr(redis.port);
        let mut edges = Vec::new();
        let mut proxies = Vec::new();
        for i in 0..opts.edges {
            let node_id = 11 + i as u32;
            let data_dir = dir.path().join(format!("edge-{node_id}"));
            std::fs::create_dir_all(&data_dir).unwrap();
            let mut mine = Vec::new();
            let (redis_url, router_addrs) = if opts.partitionable_edges.contains(&i) {
                let p = Proxy::start(redis_addr).await;
                let url = format!("redis://{}", p.addr);
                mine.push(p);
                let mut list = Vec::new();
                for r in &routers {
                    let p = Proxy::start(r.grpc.unwrap()).await;
                    list.push(p.addr.to_string());
                    mine.push(p);
                }
                (url, list)
            } else {
                (redis.url(), routers.iter().map(|r| r.grpc.unwrap().to_string()).collect())
            };
            let (http, c2s) = (addr(free_port()), addr(free_port()));
            let routers_toml: Vec<String> = router_addrs.iter().map(|a| format!("\"{a}\"")).collect();
            let cfg = format!(
                "{}\n[listen]\nc2s = \"{c2s}\"\nc2s_tls = \"off\"\nhttp = \"{http}\"\n\n[cluster]\nnode_id = {node_id}\n\
                 routers = [{}]\nredis = [\"{redis_url}\"]\nheartbeat_ms = {HEARTBEAT_MS}\ndead_after_ms = {DEAD_AFTER_MS}\n",
                common(&data_dir),
                routers_toml.join(", ")
            ) + &opts.extra_toml;
            let config = data_dir.join("rookery.toml");
            std::fs::write(&config, cfg).unwrap();
            let log = dir.path().join(format!("edge-{node_id}.log"));
            let mut e = Proc {
                role: Role::Edge,
                node_id,
                config,
                data_dir,
                http,
                c2s: Some(c2s),
                grpc: None,
                log,
                child: None,
            };
            e.spawn();
            edges.push(e);
            proxies.push(mine);
        }
        for e in &mut edges {
            e.wait_ready(Duration::from_secs(20)).await;
        }
        Some(Cluster { redis, routers, edges, domain, proxies, _dir: dir })
    }

    pub fn edge_c2s(&self, i: usize) -> SocketAddr {
        self.edges[i].c2s.unwrap()
    }

    /// Creates an account through the first live router's admin API, as `rookery user add`
    /// does against a cluster.
    pub async fn add_user(&self, local: &str, password: &str) {
        let router = self.routers.iter().find(|r| r.child.is_some()).expect("no router is running");
        let token = std::fs::read_to_string(router.data_dir.join("admin.token")).unwrap();
        let body = serde_json::json!({ "jid": format!("{local}@{}", self.domain), "password": password });
        let (status, json) = rookery::admin::call(router.http, token.trim(), "POST", "/admin/users", Some(body))
            .await
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        assert_eq!(status, 201, "creating {local}: {json}");
    }

    pub fn kill_edge(&mut self, i: usize) {
        self.edges[i].kill();
    }

    pub fn kill_router(&mut self, i: usize) {
        self.routers[i].kill();
    }

    /// Starts a killed process again with the same configuration and waits until ready.
    pub async fn restart_edge(&mut self, i: usize) {
        self.edges[i].kill();
        self.edges[i].spawn();
        self.edges[i].wait_ready(Duration::from_secs(20)).await;
    }

    pub async fn restart_router(&mut self, i: usize) {
        self.routers[i].kill();
        self.routers[i].spawn();
        self.routers[i].wait_ready(Duration::from_secs(20)).await;
    }

    /// Cuts edge `i` off from Redis and every router (it must have been started
    /// partitionable).
    pub fn partition_edge(&self, i: usize) {
        assert!(!self.proxies[i].is_empty(), "edge {i} was not started partitionable");
        for p in &self.proxies[i] {
            p.cut();
        }
    }

    pub fn heal_edge(&self, i: usize) {
        for p in &self.proxies[i] {
            p.heal();
        }
    }

    /// Stops every process gracefully (edges first) and starts them again on the same
    /// data (routers first).
    pub async fn restart_all(&mut self) {
        for e in &mut self.edges {
            e.stop();
        }
        for r in &mut self.routers {
            r.stop();
        }
        for r in &mut self.routers {
            r.spawn();
        }
        for r in &mut self.routers {
            r.wait_ready(Duration::from_secs(20)).await;
        }
        for e in &mut self.edges {
            e.spawn();
        }
        for e in &mut self.edges {
            e.wait_ready(Duration::from_secs(20)).await;
        }
    }

    /// Every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.routers.iter().chain(&self.edges) {
            out.push_str(&format!("===== {:?} {} =====\n{}\n", p.role, p.node_id, p.log_text()));
        }
        out
    }
}

/// The cluster as a scenario target: clients are spread over the edges in turn, so a
/// script's conversation crosses edges and routers.
pub struct ClusterTarget {
    pub cluster: Cluster,
    next_edge: std::sync::atomic::AtomicUsize,
}

impl crate::scenario::Target for ClusterTarget {
    async fn start() -> Self {
        let cluster = Cluster::start().await.expect("redis-server is needed for cluster scenarios");
        ClusterTarget { cluster, next_edge: std::sync::atomic::AtomicUsize::new(0) }
    }

    async fn restart(&mut self) {
        self.cluster.restart_all().await;
    }

    async fn stop(mut self) {
        for e in &mut self.cluster.edges {
            e.stop();
        }
        for r in &mut self.cluster.routers {
            r.stop();
        }
    }

    fn c2s(&self, _node: usize) -> SocketAddr {
        let i = self.next_edge.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.cluster.edge_c2s(i % self.cluster.edges.len())
    }

    fn domain(&self) -> String {
        self.cluster.domain.clone()
    }

    async fn add_user(&self, local: &str, password: &str) {
        self.cluster.add_user(local, password).await;
    }
}
