//! Test harness for Rookery's end-to-end tests: starts a real node (the same `start`
//! function `rookery serve` runs) on free loopback ports with a temporary data directory,
//! and a raw XMPP client for protocol-level checks (bad input, exact stanza shapes).
//!
//! Owns: test-only helpers. Must not be used by the server itself.
#![allow(clippy::unwrap_used)]

pub mod cluster;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod sasl_client;
pub mod scenario;

use rookery_config::{Config, StorageBackend};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The Python interpreter for the interop tests (slixmpp): `ROOKERY_TEST_PYTHON`, which
/// `tests/run` points at the virtualenv it installs slixmpp into, or else `python3`.
/// (`ROOKERY_TEST_*` because the server's configuration rejects every other unknown
/// `ROOKERY_*` variable, and cluster tests start `rookery` processes with this environment.)
pub fn python() -> String {
    std::env::var("ROOKERY_TEST_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".to_owned())
}

/// Whether [`python`] can import slixmpp.
pub fn slixmpp_available() -> bool {
    std::process::Command::new(python()).args(["-c", "import slixmpp"]).output().is_ok_and(|o| o.status.success())
}

/// A running node for a test; shut it down with [`TestServer::stop`].
pub struct TestServer {
    pub server: rookery::Server,
    pub c2s: SocketAddr,
    pub c2s_tls: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub domain: String,
    _tmp: Option<tempfile::TempDir>,
}

/// A configuration for tests: domain `localhost`, loopback ports picked by the OS,
/// embedded store in `data_dir`.
pub fn test_config(data_dir: &Path) -> Config {
    let mut cfg = Config { domains: vec!["localhost".into()], data_dir: data_dir.to_path_buf(), ..Config::default() };
    cfg.listen.c2s = Some("127.0.0.1:0".parse().unwrap());
    cfg.listen.c2s_tls = Some("127.0.0.1:0".parse().unwrap());
    cfg.listen.http = Some("127.0.0.1:0".parse().unwrap());
    cfg.storage.backend = StorageBackend::Embedded;
    cfg.log.level = "warn".into();
    cfg
}

impl TestServer {
    /// Starts a node on a fresh temporary data directory.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a node after letting the test adjust the configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = test_config(tmp.path());
        adjust(&mut cfg);
        let mut s = Self::start_cfg(cfg).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a node with exactly this configuration (e.g. to restart on the same
    /// data directory).
    pub async fn start_cfg(cfg: Config) -> TestServer {
        let data_dir = cfg.data_dir.clone();
        let domain = cfg.domains[0].clone();
        let server = rookery::start(cfg).await.unwrap();
        TestServer {
            c2s: server.c2s.unwrap(),
            c2s_tls: server.c2s_tls.unwrap(),
            http: server.http.unwrap(),
            server,
            data_dir,
            domain,
            _tmp: None,
        }
    }

    /// Stops the node; returns the temporary directory (if it owned one) so a test can
    /// restart on the same data.
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        self.server.shutdown().await;
        self._tmp
    }

    /// Creates an account through the admin API, as `rookery user add` does.
    pub async fn add_user(&self, local: &str, password: &str) {
        let body = serde_json::json!({ "jid": self.jid(local), "password": password });
        let (status, _) = rookery::admin::call(self.http, &self.server.admin_token, "POST", "/admin/users", Some(body))
            .await
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        assert_eq!(status, 201, "creating {local}");
    }

    pub fn jid(&self, local: &str) -> String {
        format!("{local}@{}", self.domain)
    }
}
