//! Runs every conversation script in `tests/scenarios/` against a fresh single node, and
//! again against a fresh loopback cluster (2 edges, 2 routers, redis-server, shared SQLite
//! store; clients spread over both edges). Scripts run concurrently, each on its own node
//! or cluster; a failure is reported with the scenario's file name and step.
//! `ROOKERY_SCENARIO=<file stem>` runs only that script.
#![allow(clippy::unwrap_used)]

use futures::FutureExt;
use rookery_tests::cluster::ClusterTarget;
use rookery_tests::scenario::{self, SingleNode, Target};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upper bound for one script; a script that waits longer is reported, not left hanging.
const PER_SCENARIO: Duration = Duration::from_secs(20);

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// The scripts to run: those marked `ignore` when `ignored`, the others otherwise, and
/// only `ROOKERY_SCENARIO` when set.
fn selected(ignored: bool) -> Vec<PathBuf> {
    let only = std::env::var("ROOKERY_SCENARIO").ok();
    scenario::files_in(&scenario_dir())
        .into_iter()
        .filter(|p| only.as_deref().is_none_or(|o| p.file_stem().is_some_and(|s| s == o)))
        .filter(|p| {
            let marked = scenario::load(p).map(|sc| sc.ignore.is_some()).unwrap_or(false);
            marked == ignored
        })
        .collect()
}

async fn run_all<T: Target>(files: Vec<PathBuf>, limit: Duration, at_once: usize) {
    let mut results = Vec::new();
    for chunk in files.chunks(at_once.max(1)) {
        results.extend(futures::future::join_all(chunk.iter().cloned().map(|f| run_one::<T>(f, limit))).await);
    }
    let mut failures = Vec::new();
    for (name, res) in &results {
        match res {
            Ok(()) => eprintln!("scenario {name}: ok"),
            Err(e) => {
                eprintln!("scenario {name}: FAILED: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} scenarios failed:\n{}", failures.len(), results.len(), failures.join("\n"));
}

async fn run_one<T: Target>(path: PathBuf, limit: Duration) -> (String, Result<(), String>) {
    let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
    let fut = AssertUnwindSafe(scenario::run_file::<T>(&path)).catch_unwind();
    let res = match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(format!("did not finish within {limit:?}")),
        Ok(Err(p)) => Err(format!("panicked: {}", panic_text(p.as_ref()))),
        Ok(Ok(r)) => r,
    };
    (stem, res)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_scenarios() {
    let files = selected(false);
    if std::env::var("ROOKERY_SCENARIO").is_err() {
        assert!(!files.is_empty(), "no scenarios found in {}", scenario_dir().display());
    }
    run_all::<SingleNode>(files, PER_SCENARIO, usize::MAX).await;
}

/// The same scripts against the loopback cluster: what a user sees must not depend on
/// how the server is deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_scenarios_on_the_cluster() {
    if rookery_tests::redis::RedisServer::try_start().is_none() {
        return;
    }
    // Each cluster is five processes: a few at a time on a 2-core machine.
    run_all::<ClusterTarget>(selected(false), PER_SCENARIO * 3, 3).await;
}

/// Scripts marked `ignore = "..."` (known server bugs); run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "scripts marked ignore: known server bugs, see each script's `ignore`"]
async fn ignored_scenarios() {
    run_all::<SingleNode>(selected(true), PER_SCENARIO, usize::MAX).await;
}

/// Every script parses and passes the static checks (names, one action per step).
#[test]
fn scripts_are_valid() {
    let files = scenario::files_in(&scenario_dir());
    assert!(!files.is_empty());
    for f in files {
        let sc = scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !sc.name.is_empty() && !sc.description.is_empty(),
            "{}: name and description are required",
            f.display()
        );
        assert!(!sc.steps.is_empty(), "{}: no steps", f.display());
    }
}

const BROKEN: &str = r#"
name = "broken"
description = "Expects a message nobody sends."
[[user]]
local = "alice"
password = "pw"
[[client]]
name = "a"
user = "alice"
resource = "r"
[[step]]
connect = { client = "a" }
[[step]]
expect = { client = "a", ms = 300, match = { name = "message" } }
"#;

/// The runner reports a missing stanza as a failure naming the scenario and step.
#[tokio::test]
async fn runner_reports_a_missing_stanza() {
    let sc = scenario::parse(BROKEN).unwrap();
    let mut node = <SingleNode as scenario::Target>::start().await;
    let err = scenario::run(&sc, &mut node).await.unwrap_err();
    assert!(err.contains("\"broken\", step 2") && err.contains("timed out"), "{err}");
    scenario::Target::stop(node).await;
}

/// The runner reports an unexpected stanza in `expect_none`.
#[tokio::test]
async fn runner_reports_an_unexpected_stanza() {
    let text = BROKEN.replace(
        "expect = { client = \"a\", ms = 300, match = { name = \"message\" } }",
        "send = { client = \"a\", xml = \"<message to='${a}'><body>x</body></message>\" }\n[[step]]\nexpect_none = { client = \"a\" }",
    );
    let sc = scenario::parse(&text).unwrap();
    let mut node = <SingleNode as scenario::Target>::start().await;
    let err = scenario::run(&sc, &mut node).await.unwrap_err();
    assert!(err.contains("step 3") && err.contains("expected nothing"), "{err}");
    scenario::Target::stop(node).await;
}

/// Static checks catch a step with two actions and an undeclared client.
#[test]
fn bad_scripts_are_rejected() {
    let two = BROKEN.replace("connect = { client = \"a\" }", "connect = { client = \"a\" }\nrestart = true");
    assert!(scenario::parse(&two).unwrap_err().contains("exactly one action"));
    let undeclared = BROKEN.replace("connect = { client = \"a\" }", "connect = { client = \"z\" }");
    assert!(scenario::parse(&undeclared).unwrap_err().contains("undeclared client"));
}

/// Alice and Bob share no presence (no subscription, no directed presence). Alice sends a
/// version request to Bob's full JID; the policy decides the rest. `${policy_steps}` is
/// replaced per policy.
const IQ_TO_STRANGER: &str = r#"
name = "iq_to_stranger"
description = "An iq get to the full JID of someone who shares no presence with the sender."
[[user]]
local = "alice"
password = "alice-pw"
[[user]]
local = "bob"
password = "bob-pw"
[[client]]
name = "a"
user = "alice"
resource = "laptop"
[[client]]
name = "b"
user = "bob"
resource = "phone"
[[step]]
connect = { client = "a" }
[[step]]
connect = { client = "b" }
[[step]]
send = { client = "a", xml = "<iq type='get' id='v1' to='${b}'><query xmlns='jabber:iq:version'/></iq>" }
POLICY_STEPS
[[step]]
note = "a resource that is not online gets service-unavailable under every policy"
send = { client = "a", xml = "<iq type='get' id='v2' to='${b.bare}/elsewhere'><ping xmlns='urn:xmpp:ping'/></iq>" }
[[step]]
expect = { client = "a", match = { name = "iq", type = "error", id = "v2", child = "error/service-unavailable" } }
"#;

async fn run_iq_to_stranger(policy: rookery_config::IqToFullJid, steps: &str) {
    let sc = scenario::parse(&IQ_TO_STRANGER.replace("POLICY_STEPS", steps)).unwrap();
    let mut node = SingleNode::start_with(|cfg| cfg.router.iq_to_full_jid = policy).await;
    let res = scenario::run(&sc, &mut node).await;
    scenario::Target::stop(node).await;
    res.unwrap();
}

/// `router.iq_to_full_jid = "presence-shared"` (the default, RFC 6121 §8.5.3.1): refused
/// with service-unavailable, and Bob never sees it.
#[tokio::test]
async fn iq_to_full_jid_presence_shared_refuses_non_contacts() {
    assert_eq!(rookery_config::Config::default().router.iq_to_full_jid, rookery_config::IqToFullJid::PresenceShared);
    run_iq_to_stranger(
        rookery_config::IqToFullJid::PresenceShared,
        r#"
[[step]]
expect = { client = "a", match = { name = "iq", type = "error", id = "v1", from = "${b}", child = "error/service-unavailable", child_ns = "urn:ietf:params:xml:ns:xmpp-stanzas" } }
[[step]]
expect_none = { client = "b", ms = 300, match = { name = "iq" } }
"#,
    )
    .await;
}

/// `router.iq_to_full_jid = "always"`: delivered to Bob's resource, and his result goes back.
#[tokio::test]
async fn iq_to_full_jid_always_delivers_to_non_contacts() {
    run_iq_to_stranger(
        rookery_config::IqToFullJid::Always,
        r#"
[[step]]
expect = { client = "b", match = { name = "iq", type = "get", id = "v1", from = "${a}", to = "${b}", child = "query", child_ns = "jabber:iq:version" } }
[[step]]
send = { client = "b", xml = "<iq type='result' id='v1' to='${a}'><query xmlns='jabber:iq:version'><name>raw</name></query></iq>" }
[[step]]
expect = { client = "a", match = { name = "iq", type = "result", id = "v1", from = "${b}", child = "query/name", text = "raw" } }
"#,
    )
    .await;
}
