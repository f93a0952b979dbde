//! The load-test harness against a real node: provisions the smoke scenario's accounts
//! through the admin API with `rookery-load`'s provisioning code, runs
//! `loadtest/scenarios/smoke.toml` (logins, 1:1 chat at 200 msg/s, a presence fan-out) plus a
//! small reconnect storm through the library, and checks that nothing was lost and that
//! the JSON and HTML reports are written and read back.
//!
//! Not a timed test: it asserts counts, never latencies.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use rookery_load::provision::{ProvisionOptions, provision};
use rookery_load::scenario::ProvisionMethod;
use rookery_load::{Partition, RunOptions, Scenario};
use rookery_tests::TestServer;

fn smoke_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadtest/scenarios/smoke.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_against_a_real_node() {
    let server = TestServer::start().await;
    let overrides: Vec<String> = [
        format!("target.address={}", server.c2s),
        format!("target.domain={}", server.domain),
        // Four more accounts for a reconnect storm on top of the smoke scenario.
        "users.count=28".to_owned(),
        "reconnect.users=4".to_owned(),
        "reconnect.rate=4".to_owned(),
        "reconnect.duration=1s".to_owned(),
        // Generous: the grace period ends as soon as everything has arrived.
        "run.grace=20s".to_owned(),
    ]
    .into();
    let scn = Scenario::load(&smoke_file(), &overrides).unwrap();
    assert_eq!(scn.pool.len(), 28);

    let opts = ProvisionOptions {
        method: ProvisionMethod::Admin,
        admin_url: Some(format!("http://{}", server.http)),
        admin_token: Some(server.server.admin_token.to_string()),
        concurrency: 4,
        partition: Partition::ALL,
    };
    let p = tokio::time::timeout(Duration::from_secs(120), provision(&scn, None, &opts)).await.unwrap().unwrap();
    assert_eq!((p.created, p.existed, p.failed), (28, 0, 0), "{p:?}");
    // Provisioning again finds every account in place.
    let p = provision(&scn, None, &opts).await.unwrap();
    assert_eq!((p.created, p.existed, p.failed), (0, 28, 0), "{p:?}");

    let report = tokio::time::timeout(Duration::from_secs(180), rookery_load::run(&scn, &RunOptions::default()))
        .await
        .unwrap()
        .unwrap();

    let chat = &report.scenarios["chat"];
    let c = |k: &str| chat.counters[k];
    assert!(c("sent") > 300, "the schedule asks for about 600 messages: {:?}", chat.counters);
    assert_eq!(c("delivered"), c("sent"), "{:?}", chat.counters);
    assert_eq!((c("lost"), c("errors"), c("duplicates"), c("unsent")), (0, 0, 0, 0), "{:?}", chat.counters);
    assert_eq!(c("setup_failures"), 0);
    assert_eq!(chat.latency.0.len(), c("delivered"), "one latency sample per delivered message");

    let presence = &report.scenarios["presence"].counters;
    assert_eq!(presence["setup_failures"], 0, "{presence:?}");
    assert!(presence["sent"] > 0);
    assert_eq!(presence["expected"], presence["sent"] * 3);
    assert_eq!(
        (presence["delivered"], presence["lost"], presence["errors"]),
        (presence["expected"], 0, 0),
        "{presence:?}"
    );

    let login = &report.scenarios["login"].counters;
    assert_eq!(login["attempts"], 8, "4 logins per second for 2 s");
    assert_eq!((login["established"], login["failed"]), (8, 0), "{login:?}");

    // Rookery offers XEP-0198 with resumption: every reconnect of the storm resumes its
    // session (the generator's own SM client, written apart from the server's).
    let rc = &report.scenarios["reconnect"].counters;
    assert_eq!(rc["reconnects"], 4, "{rc:?}");
    assert_eq!((rc["resumed"], rc["fresh"], rc["failed"]), (4, 0, 0), "{rc:?}");
    assert_eq!(report.stream_management, "supported");

    let conn = &report.connections.counters;
    assert_eq!(conn["failed"], 0, "{:?}", report.connections.failures);
    assert_eq!((conn["stream_errors"], conn["disconnects"]), (0, 0));
    assert!(report.passed, "{}", report.text());
    assert!(!report.timeseries.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let (json, html) = (dir.path().join("smoke.json"), dir.path().join("smoke.html"));
    rookery_load::write_json(&report, &json).unwrap();
    rookery_load::write_html(&report, &html).unwrap();
    let back = rookery_load::read_json(&json).unwrap();
    assert_eq!(back, report);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["scenarios"]["chat"]["counters"]["delivered"], c("delivered"));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    assert!(page.matches("<svg").count() >= 3);

    server.stop().await;
}
