//! A real `redis-server` for tests: started on a free loopback port without persistence,
//! killed on drop. Used by the cluster tests (Redis session registry).
//!
//! Owns: launching and stopping the server. Must not be used outside tests.
//! When `redis-server` is not installed, [`RedisServer::try_start`] prints a notice and
//! returns `None` so the test can skip, unless `CI` is set: CI installs it, so its absence
//! there is a failure. crates/storage-redis/tests/common carries an equivalent launcher
//! (crates cannot depend on this one).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "redis-server";

pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts a server; panics when `redis-server` is missing.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|| panic!("{BINARY} is not installed (apt-get install redis-server)"))
    }

    /// Starts a server, or returns `None` (after printing why) when `redis-server` is not
    /// installed and `CI` is not set.
    pub fn try_start() -> Option<Self> {
        if Command::new(BINARY).arg("--version").stdout(Stdio::null()).status().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{BINARY} is not installed but CI is set: install it (apt-get install redis-server)"
            );
            eprintln!("skipping: {BINARY} is not installed (apt-get install redis-server to run this test)");
            return None;
        }
        // The port is free when checked; another process may take it before Redis binds,
        // so try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if let Some(child) = spawn(port) {
                return Some(RedisServer { port, child });
            }
        }
        panic!("could not start {BINARY} on a free loopback port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (losing all data: there is no persistence) and starts a new one
    /// on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn(self.port) {
                self.child = child;
                return;
            }
            assert!(Instant::now() < deadline, "could not restart {BINARY} on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server without starting a new one (until `restart`).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `redis-server` on `port` and waits until it answers PING; None if it exited
/// (port taken) or never answered.
fn spawn(port: u16) -> Option<Child> {
    let mut child = Command::new(BINARY)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        if ping(port) {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(port: u16, line: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn restart_keeps_the_port_and_loses_the_data() {
        let Some(mut server) = RedisServer::try_start() else { return };
        assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port));
        assert_eq!(command(server.port, "SET k v"), "+OK\r\n");
        assert_eq!(command(server.port, "GET k"), "$1\r\nv\r\n");
        server.restart();
        assert_eq!(command(server.port, "GET k"), "$-1\r\n");
        let port = server.port;
        drop(server);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "stopped on drop");
    }
}
