//! A real `redis-server` for this crate's tests, the same launcher as `rookery_tests::redis`
//! (tests/src/redis.rs; a library crate cannot depend on the end-to-end test crate), plus
//! a one-node Redis Cluster owning all 16384 slots, which enforces the same same-slot
//! rules for scripts and multi-key commands as a real cluster.
//!
//! Without `redis-server` the tests print a notice and pass, unless `CI` is set.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "redis-server";

pub struct RedisServer {
    pub port: u16,
    child: Child,
    cluster: Option<PathBuf>,
}

impl RedisServer {
    /// A plain server, or None (after a notice) when `redis-server` is missing outside CI.
    pub fn try_start() -> Option<Self> {
        Self::launch(false)
    }

    /// A one-node Redis Cluster, or None like `try_start`.
    pub fn try_start_cluster() -> Option<Self> {
        Self::launch(true)
    }

    fn launch(cluster: bool) -> Option<Self> {
        if Command::new(BINARY).arg("--version").stdout(Stdio::null()).status().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{BINARY} is not installed but CI is set: install it (apt-get install redis-server)"
            );
            eprintln!("skipping: {BINARY} is not installed (apt-get install redis-server to run this test)");
            return None;
        }
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let dir = cluster.then(|| {
                let d = std::env::temp_dir().join(format!("rookery-redis-{}-{port}", std::process::id()));
                std::fs::create_dir_all(&d).unwrap();
                d
            });
            if let Some(child) = spawn(port, dir.as_ref()) {
                let s = RedisServer { port, child, cluster: dir };
                if s.cluster.is_some() {
                    s.assign_all_slots();
                }
                return Some(s);
            }
        }
        panic!("could not start {BINARY} on a free loopback port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server, losing all data, and starts a new one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn(self.port, self.cluster.as_ref()) {
                self.child = child;
                return;
            }
            assert!(Instant::now() < deadline, "could not restart {BINARY} on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn assign_all_slots(&self) {
        assert_eq!(command(self.port, "CLUSTER ADDSLOTSRANGE 0 16383"), "+OK\r\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !command(self.port, "CLUSTER INFO").contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "one-node cluster did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(d) = &self.cluster {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn spawn(port: u16, cluster_dir: Option<&PathBuf>) -> Option<Child> {
    let mut cmd = Command::new(BINARY);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    match cluster_dir {
        Some(d) => {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]).arg("--dir").arg(d);
        }
        None => {
            cmd.arg("--dir").arg(std::env::temp_dir());
        }
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        if command(port, "PING") == "+PONG\r\n" {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Sends one inline command and returns the raw reply ("" when unreachable).
fn command(port: u16, line: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("{line}\r\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Replies here are small; read until the server pauses.
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\r\n") && !out.starts_with(b"$") || out.starts_with(b"$") && bulk_complete(&out) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn bulk_complete(out: &[u8]) -> bool {
    let Some(eol) = out.windows(2).position(|w| w == b"\r\n") else { return false };
    let Ok(len) = std::str::from_utf8(&out[1..eol]).unwrap_or("").parse::<usize>() else { return true };
    out.len() >= eol + 2 + len + 2
}
