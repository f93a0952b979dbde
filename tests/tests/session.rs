//! The life of a bound client session, end to end: whitespace keepalives, server-chosen
//! resources, graceful close, resource conflicts, the rules before binding, the idle
//! timeout, the stanza rate limit, `tls-server-end-point` channel binding with a
//! hand-written SCRAM client, and durability of acknowledged messages across a `kill -9`
//! of the real `rookery` binary.
//!
//! Every test is bounded by [`within`] so none can hang.
#![allow(clippy::unwrap_used)]

use rookery_tests::TestServer;
use rookery_tests::raw::{Incoming, RawClient, WAIT};
use rookery_tests::sasl_client::{ClientMechanism, Hash, SaslConn, Scram};
use rookery_xml::Element;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use xmpp_parsers::sha2::{Digest, Sha256};

const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const BIND_NS: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const STANZAS_NS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// Every test finishes within this or fails.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(19), f).await.expect("test took longer than 19 s")
}

/// Pings the server and asserts a result.
async fn ping(c: &mut RawClient, id: &str) {
    c.send(&format!("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
    let r = c.recv_until(|e| e.name == "iq" && e.get_attr("id") == Some(id)).await;
    assert_eq!(r.get_attr("type"), Some("result"), "ping {id}: {r:?}");
}

/// Asserts that not a single byte (not even whitespace) arrives within `wait`.
async fn expect_no_bytes(c: &mut RawClient, wait: Duration) {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(wait, c.io.read(&mut buf)).await {
        Err(_) => {}
        Ok(Ok(0)) => panic!("the server closed the connection"),
        Ok(Ok(n)) => panic!("expected no output, got {:?}", String::from_utf8_lossy(&buf[..n])),
        Ok(Err(e)) => panic!("read failed: {e}"),
    }
}

fn stanza_error_condition(e: &Element) -> Option<String> {
    e.get_child("error", "jabber:client")
        .and_then(|err| err.elements().find(|c| c.ns == STANZAS_NS && c.name != "text"))
        .map(|c| c.name.clone())
}

fn body(e: &Element) -> Option<String> {
    e.get_child("body", "jabber:client").map(|b| b.text_content())
}

/// STARTTLS and PLAIN authentication; the stream still has to be restarted.
async fn authenticated(addr: SocketAddr, user: &str, password: &str) -> RawClient {
    let mut c = RawClient::connect(addr).await;
    c.open().await;
    c.starttls().await;
    c.open().await;
    let r = c.auth_plain(user, password).await;
    assert_eq!(r.name, "success", "login of {user}: {r:?}");
    c
}

// ---------------------------------------------------------------------------------------
// 1. Whitespace keepalives

#[tokio::test]
async fn whitespace_keepalives_keep_the_session_and_are_not_answered() {
    within(async {
        let srv = TestServer::start().await;
        srv.add_user("alice", "alice-pw").await;
        let mut alice = RawClient::login(srv.c2s, "alice", "alice-pw", "ws").await;
        ping(&mut alice, "p1").await;

        alice.send(" \n ").await;
        expect_no_bytes(&mut alice, Duration::from_millis(400)).await;
        ping(&mut alice, "p2").await;

        // Keepalives right before and after a stanza in the same write.
        alice.send(" \n <iq type='get' id='p3' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq> \n ").await;
        let r = alice.recv_until(|e| e.name == "iq" && e.get_attr("id") == Some("p3")).await;
        assert_eq!(r.get_attr("type"), Some("result"), "{r:?}");
        for _ in 0..5 {
            alice.send(" \n ").await;
        }
        expect_no_bytes(&mut alice, Duration::from_millis(400)).await;
        ping(&mut alice, "p4").await;
        drop(alice);
        srv.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 2. Server-generated resource

#[tokio::test]
async fn bind_without_resource_gets_a_unique_server_resource() {
    within(async {
        let srv = TestServer::start().await;
        srv.add_user("alice", "alice-pw").await;
        srv.add_user("bob", "bob-pw").await;

        let mut a1 = authenticated(srv.c2s, "alice", "alice-pw").await;
        let j1 = a1.bind(None).await;
        let mut a2 = authenticated(srv.c2s, "alice", "alice-pw").await;
        let j2 = a2.bind(None).await;
        for j in [&j1, &j2] {
            let res = j.strip_prefix("alice@localhost/").unwrap_or_else(|| panic!("not a full JID of alice: {j}"));
            assert!(!res.is_empty(), "empty resource in {j}");
        }
        assert_ne!(j1, j2, "two binds without a resource got the same JID");

        let mut bob = RawClient::login(srv.c2s, "bob", "bob-pw", "b").await;
        for (i, j) in [&j1, &j2].into_iter().enumerate() {
            bob.send(&format!("<message to='{j}' type='chat' id='m{i}'><body>to {j}</body></message>")).await;
        }
        let m = a1.recv_until(|e| e.name == "message").await;
        assert_eq!(m.get_attr("id"), Some("m0"), "{m:?}");
        assert_eq!(m.get_attr("from"), Some("bob@localhost/b"));
        assert_eq!(body(&m), Some(format!("to {j1}")));
        let m = a2.recv_until(|e| e.name == "message").await;
        assert_eq!(m.get_attr("id"), Some("m1"), "{m:?}");
        assert_eq!(body(&m), Some(format!("to {j2}")));
        // Each message went only to its own resource.
        ping(&mut a1, "a1").await;
        ping(&mut a2, "a2").await;
        drop((a1, a2, bob));
        srv.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 3. Client-initiated graceful close

#[tokio::test]
async fn client_close_is_answered_and_other_resources_see_unavailable() {
    within(async {
        let srv = TestServer::start().await;
        srv.add_user("alice", "alice-pw").await;
        let mut one = RawClient::login(srv.c2s, "alice", "alice-pw", "one").await;
        one.available().await;
        let mut two = RawClient::login(srv.c2s, "alice", "alice-pw", "two").await;
        two.available().await;
        // Both see each other's availability first.
        two.recv_until(|e| {
            e.name == "presence" && e.get_attr("from") == Some("alice@localhost/one") && e.get_attr("type").is_none()
        })
        .await;

        one.send("</stream:stream>").await;
        let closed = loop {
            match one.recv_timeout(WAIT).await {
                Some(Incoming::Element(e)) if e.name == "error" => panic!("a stream error instead of a close: {e:?}"),
                Some(Incoming::Element(_)) => continue,
                other => break other,
            }
        };
        assert_eq!(closed, Some(Incoming::Closed), "the server must answer </stream:stream>");
        // After its closing tag the server closes the TCP connection.
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, one.io.read(&mut buf)).await.expect("socket not closed").unwrap_or(0);
        assert_eq!(n, 0, "bytes after the closing tag: {:?}", String::from_utf8_lossy(&buf[..n]));

        let p = two.recv_until(|e| e.name == "presence" && e.get_attr("from") == Some("alice@localhost/one")).await;
        assert_eq!(p.get_attr("type"), Some("unavailable"), "{p:?}");
        ping(&mut two, "still-here").await;
        drop(two);
        srv.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 4. Resource conflict

#[tokio::test]
async fn resource_conflict_disconnects_the_old_session() {
    within(async {
        let srv = TestServer::start().await;
        srv.add_user("alice", "alice-pw").await;
        let mut first = RawClient::login(srv.c2s, "alice", "alice-pw", "same").await;
        ping(&mut first, "first").await;
        let mut second = RawClient::login(srv.c2s, "alice", "alice-pw", "same").await;
        assert_eq!(second.jid.as_deref(), Some("alice@localhost/same"));
        assert_eq!(first.expect_stream_error().await, "conflict");
        ping(&mut second, "second").await;
        drop(second);
        srv.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 5. Before binding

async fn send_bind(c: &mut RawClient, id: &str, resource: &str) -> Element {
    c.send(&format!("<iq type='set' id='{id}'><bind xmlns='{BIND_NS}'><resource>{resource}</resource></bind></iq>"))
        .await;
    c.recv_until(|e| e.name == "iq" && e.get_attr("id") == Some(id)).await
}

#[tokio::test]
async fn iq_result_before_bind_is_not_answered() {
    within(async {
        let srv = TestServer::start().await;
        srv.add_user("alice", "alice-pw").await;
        let mut c = authenticated(srv.c2s, "alice", "alice-pw").await;
        let f = c.open().await;
        assert!(f.get_child("bind", BIND_NS).is_some(), "{f:?}");

        // RFC 6120 §8.3.1: results and errors are never answered.
        c.send("<iq type='result' id='x'/>").await;
        expect_no_bytes(&mut c, Duration::from_millis(400)).await;
        c.send("<iq type='error' id='y'><error type='cancel'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>").await;
        expect_no_bytes(&mut c, Duration::from_millis(400)).await;

        let r = send_bind(&mut c, "b1", "late").await;
        assert_eq!(r.get_attr("type"), Some("result"), "{r:?}");
        let jid = r.get_child("bind", BIND_NS).and_then(|b| b.get_child("jid", BIND_NS)).map(|j| j.text_content());
        assert_eq!(jid.as_deref(), Some("alice@localhost/late"));
        ping(&mut c, "bound").await;
        drop(c);
        srv.stop().await;
    })
    .await;
}

#[tokio::test]
async fn too_many_refused_requests_before_bind_is_a_policy_violation() {
    within(async {
        let srv = TestServer::start().await;
        srv.add_user("alice", "alice-pw").await;

        let mut c = authenticated(srv.c2s, "alice", "alice-pw").await;
        c.open().await;
        for n in 1..=5 {
            let id = format!("n{n}");
            c.send(&format!("<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
            let r = c.recv_until(|e| e.name == "iq").await;
            assert_eq!(r.get_attr("id"), Some(id.as_str()), "{r:?}");
            assert_eq!(r.get_attr("type"), Some("error"), "{r:?}");
            assert_eq!(stanza_error_condition(&r).as_deref(), Some("not-authorized"), "{r:?}");
        }
        // Results do not count and are not answered.
        c.send("<iq type='result' id='r'/>").await;
        expect_no_bytes(&mut c, Duration::from_millis(300)).await;
        c.send("<iq type='get' id='n6'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        assert_eq!(c.expect_stream_error().await, "policy-violation");

        // Fewer refusals than the limit still allow binding.
        let mut c = authenticated(srv.c2s, "alice", "alice-pw").await;
        c.open().await;
        for n in 1..=4 {
            let id = format!("m{n}");
            c.send(&format!("<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
            let r = c.recv_until(|e| e.name == "iq").await;
            assert_eq!((r.get_attr("id"), r.get_attr("type")), (Some(id.as_str()), Some("error")), "{r:?}");
        }
        let r = send_bind(&mut c, "b", "after-refusals").await;
        assert_eq!(r.get_attr("type"), Some("result"), "{r:?}");
        ping(&mut c, "ok").await;
        drop(c);
        srv.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 6. Idle timeout

#[tokio::test]
async fn idle_session_times_out_but_keepalives_prevent_it() {
    within(async {
        let srv = TestServer::start_with(|cfg| cfg.limits.idle_timeout_secs = 1).await;
        srv.add_user("alice", "alice-pw").await;

        let mut idle = RawClient::login(srv.c2s, "alice", "alice-pw", "idle").await;
        let started = Instant::now();
        assert_eq!(idle.expect_stream_error().await, "connection-timeout");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(800), "timed out too early: {took:?}");

        let mut busy = RawClient::login(srv.c2s, "alice", "alice-pw", "busy").await;
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            busy.send(" ").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        ping(&mut busy, "alive").await;
        drop(busy);
        srv.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 7. Stanza rate limit

#[tokio::test]
async fn stanza_rate_limit_slows_but_does_not_disconnect() {
    within(async {
        let srv = TestServer::start_with(|cfg| cfg.limits.stanza_rate_per_sec = 20).await;
        srv.add_user("alice", "alice-pw").await;
        let mut alice = RawClient::login(srv.c2s, "alice", "alice-pw", "fast").await;

        let all: String = (0..100)
            .map(|i| format!("<iq type='get' id='r{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"))
            .collect();
        let started = Instant::now();
        alice.send(&all).await;
        let mut next = 0;
        let deadline = Instant::now() + Duration::from_secs(12);
        while next < 100 {
            let left = deadline.saturating_duration_since(Instant::now());
            match alice.recv_timeout(left).await {
                Some(Incoming::Element(e)) if e.name == "iq" => {
                    let id = format!("r{next}");
                    assert_eq!(e.get_attr("id"), Some(id.as_str()), "answers out of order: {e:?}");
                    assert_eq!(e.get_attr("type"), Some("result"), "{e:?}");
                    next += 1;
                }
                Some(Incoming::Element(e)) => panic!("unexpected {e:?}"),
                other => panic!("after {next} answers: {other:?}"),
            }
        }
        let took = started.elapsed();
        // Burst 40, then 20 per second: (100 - 40) / 20 = 3 s.
        assert!(took >= Duration::from_secs(2), "100 stanzas at 20/s with burst 40 took only {took:?}");
        ping(&mut alice, "after").await;
        drop(alice);
        srv.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 8. tls-server-end-point channel binding with the harness's independent SCRAM-SHA-256-PLUS client

/// SCRAM-SHA-256-PLUS with `tls-server-end-point` binding data `cb` (RFC 5802 §3, §7;
/// RFC 5929 §4), written independently of the server.
fn scram_sha256_plus_end_point(user: &str, password: &str, cb: Vec<u8>) -> Scram {
    Scram::new(Hash::Sha256, user, password, Some(("tls-server-end-point", cb)))
}

#[tokio::test]
async fn scram_sha256_plus_with_tls_server_end_point() {
    within(async {
        let srv = TestServer::start().await;
        srv.add_user("alice", "alice-pw").await;

        let (mut c, f) = SaslConn::starttls(srv.c2s).await;
        let mechs: Vec<String> = f
            .get_child("mechanisms", SASL_NS)
            .map(|m| m.elements().map(|e| e.text_content()).collect())
            .unwrap_or_default();
        assert!(mechs.iter().any(|m| m == "SCRAM-SHA-256-PLUS"), "{mechs:?}");
        let types: Vec<&str> = f
            .get_child("sasl-channel-binding", "urn:xmpp:sasl-cb:0")
            .map(|s| s.elements().filter_map(|t| t.get_attr("type")).collect())
            .unwrap_or_default();
        assert!(types.contains(&"tls-server-end-point"), "XEP-0440 advertisement: {types:?}");

        // RFC 5929 §4.1: the hash of the certificate (its signature uses SHA-256).
        let cb = Sha256::digest(c.server_cert()).to_vec();
        let mut m = scram_sha256_plus_end_point("alice", "alice-pw", cb);
        assert_eq!(m.name(), "SCRAM-SHA-256-PLUS");
        c.authenticate(&mut m).await.unwrap();
        assert_eq!(c.bind_and_ping("cb").await, "alice@localhost/cb");
        drop(c);

        // One flipped byte in the binding data.
        let (mut c, _) = SaslConn::starttls(srv.c2s).await;
        let mut cb = Sha256::digest(c.server_cert()).to_vec();
        cb[7] ^= 0x20;
        let res = c.authenticate(&mut scram_sha256_plus_end_point("alice", "alice-pw", cb)).await;
        assert_eq!(res, Err("not-authorized".to_owned()));
        drop(c);
        srv.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 9. kill -9 does not lose an acknowledged message

/// The `rookery` binary next to this test executable (target/<profile>/rookery).
fn rookery_bin() -> PathBuf {
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

fn free_port() -> u16 {
    rookery_tests::cluster::free_port()
}

/// A `rookery serve` child process, killed with SIGKILL when dropped.
struct Node {
    child: Child,
    c2s: SocketAddr,
    http: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Node {
    async fn start(data_dir: &Path, log: &Path) -> Node {
        let c2s: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(rookery_bin())
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--c2s", &c2s.to_string(), "--c2s-tls", "off", "--http", &http.to_string()])
            .env_remove("ROOKERY_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut node = Node { child, c2s, http, data_dir: data_dir.to_path_buf(), log: log.to_path_buf() };
        node.wait_listening().await;
        node
    }

    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(8);
        for addr in [self.c2s, self.http] {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("rookery exited with {status}; log:\n{}", self.log_text());
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                assert!(Instant::now() < deadline, "rookery does not listen on {addr}; log:\n{}", self.log_text());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn add_user(&self, jid: &str, password: &str) {
        let out = tokio::process::Command::new(rookery_bin())
            .args(["user", "--data-dir"])
            .arg(&self.data_dir)
            .args(["add", jid, "--password", password])
            .env("ROOKERY_ADMIN_URL", format!("http://{}", self.http))
            .env_remove("ROOKERY_CONFIG")
            .env_remove("ROOKERY_ADMIN_TOKEN")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "rookery user add {jid}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL on Unix: no shutdown code runs.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "rookery was not killed by SIGKILL: {status}");
        }
        #[cfg(not(unix))]
        let _ = status;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9() {
    let bin = rookery_bin();
    assert!(bin.is_file(), "{} is not a file", bin.display());
    within(async {
        let data = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("rookery.log");

        let mut node = Node::start(data.path(), &log).await;
        node.add_user("alice@localhost", "alice-pw").await;
        node.add_user("bob@localhost", "bob-pw").await;

        let mut alice = RawClient::login(node.c2s, "alice", "alice-pw", "a").await;
        alice.available().await;
        let all: String = (0..20)
            .map(|i| format!("<message to='bob@localhost' type='chat' id='k{i}'><body>message {i}</body></message>"))
            .collect();
        alice.send(&all).await;
        // Stanzas of one session are handled in order: the answer to this ping means all
        // 20 messages have been handled (stored for offline bob).
        ping(&mut alice, "ack").await;
        node.kill();
        drop(alice);

        let node = Node::start(data.path(), &log).await;
        let mut bob = RawClient::login(node.c2s, "bob", "bob-pw", "b").await;
        bob.send("<presence/>").await;
        for i in 0..20 {
            let m = bob.recv_until(|e| e.name == "message").await;
            assert_eq!(m.get_attr("id"), Some(format!("k{i}").as_str()), "message {i} lost or out of order: {m:?}");
            assert_eq!(m.get_attr("from"), Some("alice@localhost/a"), "{m:?}");
            assert_eq!(body(&m), Some(format!("message {i}")), "{m:?}");
            assert!(m.get_child("delay", "urn:xmpp:delay").is_some(), "offline delivery carries a delay: {m:?}");
        }
        // Nothing else (no duplicate) follows.
        while let Some(x) = bob.recv_timeout(Duration::from_millis(500)).await {
            match x {
                Incoming::Element(e) if e.name == "message" => panic!("unexpected extra message: {e:?}"),
                Incoming::Closed => panic!("bob was disconnected"),
                _ => {}
            }
        }
        drop(bob);
        drop(node);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// 10. A slow client cannot grow the server's memory

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_nothing_is_lost() {
    // Reading back ~9 MiB of stanzas through the test client's parser takes a while in a
    // debug build: a wider bound than `within`.
    let bounded = |f| async { tokio::time::timeout(Duration::from_secs(90), f).await.expect("took longer than 90 s") };
    bounded(async {
        // A small queue so the test floods it quickly; the rate limit is raised so alice's
        // flood is not slowed down.
        let srv = TestServer::start_with(|c| {
            c.limits.outbound_queue = 16;
            c.limits.stanza_rate_per_sec = 100_000;
        })
        .await;
        srv.add_user("alice", "pw-alice").await;
        srv.add_user("bob", "pw-bob").await;
        let mut bob = RawClient::login(srv.c2s, "bob", "pw-bob", "slow").await;
        bob.available().await;
        let mut alice = RawClient::login(srv.c2s, "alice", "pw-alice", "fast").await;
        // Bob stops reading. 150 messages of 64 KiB are far more than the socket buffers
        // and the 16-stanza queue hold.
        let body = "x".repeat(64 * 1024);
        let total = 150;
        for i in 0..total {
            alice.send(&format!("<message to='bob@localhost' type='chat'><body>{i} {body}</body></message>")).await;
        }
        ping(&mut alice, "flooded").await;
        // Now bob reads: the messages that were queued, then the stream error that ended
        // his session when the queue overflowed.
        let mut live = std::collections::BTreeSet::new();
        let cond = loop {
            match bob.recv_timeout(Duration::from_secs(5)).await {
                Some(Incoming::Element(e)) if e.name == "message" => {
                    let text = e.get_child("body", "jabber:client").map(|b| b.text_content()).unwrap_or_default();
                    live.insert(text.split(' ').next().unwrap().parse::<u32>().unwrap());
                }
                Some(Incoming::Element(e)) if e.name == "error" => {
                    break e.elements().next().map(|c| c.name.clone()).unwrap_or_default();
                }
                Some(Incoming::Element(_)) | Some(Incoming::Header) => {}
                // The writer gave up on the unread socket (write timeout) before bob
                // read again: disconnected as well, only without the error element.
                Some(Incoming::Closed) => break "closed".to_owned(),
                None => panic!("bob's stream neither delivered nor ended"),
            }
        };
        assert!(cond == "policy-violation" || cond == "closed", "unexpected end: {cond}");
        assert!(live.len() < total as usize, "the queue limit never applied ({} delivered live)", live.len());
        // Everything bob did not get live waits in offline storage.
        let mut bob = RawClient::login(srv.c2s, "bob", "pw-bob", "again").await;
        bob.send("<presence/>").await;
        let mut all = live.clone();
        while let Some(Incoming::Element(e)) = bob.recv_timeout(Duration::from_secs(2)).await {
            if e.name == "message"
                && let Some(b) = e.get_child("body", "jabber:client")
            {
                all.insert(b.text_content().split(' ').next().unwrap().parse::<u32>().unwrap());
            }
        }
        let missing: Vec<u32> = (0..total).filter(|i| !all.contains(i)).collect();
        assert!(missing.is_empty(), "lost messages: {missing:?}");
        srv.stop().await;
    })
    .await;
}
