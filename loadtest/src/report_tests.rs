#![allow(clippy::unwrap_used)]

use super::*;
use crate::metrics::PackedHist;
use crate::scenario::Op;

fn hist(values: &[u64]) -> Hist {
    let mut h = Hist::default();
    for v in values {
        h.0.record(*v).unwrap();
    }
    h
}

fn crit(metric: &str, op: Op, value: f64) -> Criterion {
    Criterion { metric: metric.into(), op, value }
}

/// A worker report with chat numbers; latencies are `lat` µs.
fn worker(index: u32, count: u32, sent: u64, delivered: u64, lat: &[u64]) -> Report {
    let counters: BTreeMap<String, u64> =
        [("sent", sent), ("delivered", delivered), ("lost", sent - delivered), ("duplicates", 0), ("errors", 0)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    let mut scenarios = BTreeMap::new();
    scenarios.insert(
        "chat".to_owned(),
        ScenarioReport {
            kind: "chat".into(),
            status: "ok".into(),
            notes: vec![],
            load_seconds: 10.0,
            counters,
            latency_name: "delivery".into(),
            latency: hist(lat),
        },
    );
    let mut phases = BTreeMap::new();
    phases.insert("auth".to_owned(), hist(&[2_000, 3_000]));
    let timeseries = (0..3u32)
        .map(|t| Sample {
            t,
            open_connections: 10,
            logins: if t == 0 { 10 } else { 0 },
            scenarios: [(
                "chat".to_owned(),
                ScenarioSample {
                    offered: sent / 3,
                    completed: delivered / 3,
                    errors: 0,
                    latency: PackedHist::pack(&hist(lat).0),
                },
            )]
            .into_iter()
            .collect(),
        })
        .collect();
    let mut criteria = BTreeMap::new();
    criteria.insert(
        "chat".to_owned(),
        vec![crit("loss", Op::Eq, 0.0), crit("p99_ms", Op::Lt, 50.0), crit("delivered_rate", Op::Ge, 100.0)],
    );
    let mut r = Report {
        format: FORMAT,
        tool: "rookery-load test".into(),
        scenario: "chat-1to1".into(),
        description: String::new(),
        target: "127.0.0.1:5222".into(),
        domain: "localhost".into(),
        workers: vec![Partition { index, count }],
        started_unix_ms: 1_000 + u64::from(index),
        duration_s: 12.0 + f64::from(index),
        stream_management: "unsupported".into(),
        connections: ConnReport {
            counters: [("attempts", 10u64), ("established", 10), ("peak_open", 10)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            failures: BTreeMap::new(),
            phases,
        },
        scenarios,
        timeseries,
        server: None,
        criteria,
        verdicts: vec![],
        passed: false,
        interrupted: false,
    };
    r.evaluate();
    r
}

#[test]
fn json_round_trip() {
    let mut r = worker(0, 1, 3000, 3000, &[1_000, 2_000, 40_000]);
    r.server = Some(ServerReport {
        pid: 42,
        clk_tck: 100,
        samples: vec![
            ServerSample { t: 0, cpu_s: 0.0, rss_bytes: 10 << 20 },
            ServerSample { t: 1, cpu_s: 0.5, rss_bytes: 12 << 20 },
        ],
        cpu_seconds: 0.5,
        start_rss_bytes: 10 << 20,
        peak_rss_bytes: 12 << 20,
        final_rss_bytes: 12 << 20,
        cpu_s_per_100k_delivered: None,
        rss_per_connection_bytes: None,
    });
    // Floats that do not survive a naive decimal round trip.
    r.duration_s = 3.765128944123457;
    r.scenarios.get_mut("chat").unwrap().load_seconds = 0.1 + 0.2;
    r.derive_server();
    r.evaluate();
    let text = serde_json::to_string_pretty(&r).unwrap();
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back, r);
    // The histogram summaries are there for people reading the file.
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["scenarios"]["chat"]["latency"]["count"], 3);
    assert_eq!(v["passed"], true);
    // Every f64 survives (serde_json's `float_roundtrip`); without it some values come back
    // one unit in the last place off.
    let mut rng = crate::schedule::SplitMix64::new(5);
    for _ in 0..10_000 {
        let x = rng.unit() * 10f64.powi((rng.next_u64() % 12) as i32);
        let y: f64 = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
        assert_eq!(x.to_bits(), y.to_bits(), "{x}");
    }
    let s = back.server.unwrap();
    assert_eq!(s.rss_per_connection_bytes, Some((2u64 << 20) as f64 / 10.0));
    assert!((s.cpu_s_per_100k_delivered.unwrap() - 0.5 * 100_000.0 / 3000.0).abs() < 1e-9);
}

#[test]
fn evaluation() {
    let r = worker(0, 1, 3000, 3000, &[1_000, 2_000, 40_000]);
    assert!(r.passed, "{:#?}", r.verdicts);
    assert_eq!(r.metric("chat", "delivered_rate"), Some(300.0));
    assert_eq!(r.metric("chat", "loss_ratio"), Some(0.0));
    assert_eq!(r.metric("chat", "auth_p50_ms"), Some(2.0));
    assert_eq!(r.metric("chat", "reordered"), Some(0.0), "declared but absent counters read as 0");
    assert_eq!(r.metric("chat", "nonsense"), None);

    let r = worker(0, 1, 3000, 2990, &[1_000, 2_000, 90_000]);
    assert!(!r.passed);
    let failed: Vec<&str> = r.verdicts.iter().filter(|v| !v.passed).map(|v| v.criterion.as_str()).collect();
    assert_eq!(failed, ["loss == 0", "p99_ms < 50"]);
    assert_eq!(r.verdicts[0].actual, Some(10.0));

    // Nothing delivered: a latency criterion cannot pass.
    let r = worker(0, 1, 10, 0, &[]);
    let v = r.verdicts.iter().find(|v| v.criterion.starts_with("p99_ms")).unwrap();
    assert!(!v.passed && v.actual.is_none() && v.note == "no samples");

    // A kind this build cannot run fails its criteria instead of passing silently.
    let mut r = worker(0, 1, 10, 10, &[1_000]);
    r.scenarios.insert(
        "muc".into(),
        ScenarioReport {
            kind: "muc".into(),
            status: UNSUPPORTED.into(),
            notes: vec![],
            load_seconds: 0.0,
            counters: BTreeMap::new(),
            latency_name: "delivery".into(),
            latency: Hist::default(),
        },
    );
    r.criteria.insert("muc".into(), vec![crit("errors", Op::Eq, 0.0)]);
    r.evaluate();
    let v = r.verdicts.iter().find(|v| v.scenario == "muc").unwrap();
    assert!(!v.passed && v.note == UNSUPPORTED);
    assert!(r.text().contains("[muc] unsupported by this build"));

    // An interrupted run never passes, even when its numbers look good.
    let mut r = worker(0, 1, 3000, 3000, &[1_000]);
    assert!(r.passed);
    r.interrupted = true;
    r.evaluate();
    assert!(!r.passed && r.verdicts.iter().all(|v| v.passed));
    assert!(r.text().contains("interrupted"));
}

#[test]
fn merge_adds_everything_and_judges_again() {
    let lat_a = [1_000u64, 2_000, 3_000, 70_000];
    let lat_b = [1_500u64, 2_500, 45_000];
    let a = worker(0, 2, 2000, 2000, &lat_a);
    let b = worker(1, 2, 1000, 1000, &lat_b);
    let m = Report::merge(vec![b.clone(), a.clone()]).unwrap();
    let all: Vec<u64> = lat_a.iter().chain(&lat_b).copied().collect();
    let chat = &m.scenarios["chat"];
    assert_eq!(chat.latency, hist(&all), "merged histogram = one histogram fed every sample");
    assert_eq!(chat.counters["sent"], 3000);
    assert_eq!(chat.counters["delivered"], 3000);
    assert_eq!(m.metric("chat", "delivered_rate"), Some(300.0));
    assert_eq!(m.connections.counters["attempts"], 20);
    assert_eq!(m.connections.phases["auth"].0.len(), 4);
    assert_eq!(m.workers, vec![Partition { index: 0, count: 2 }, Partition { index: 1, count: 2 }]);
    assert_eq!((m.started_unix_ms, m.duration_s), (1_000, 13.0));
    assert_eq!(m.timeseries.len(), 3);
    assert_eq!(m.timeseries[1].open_connections, 20);
    assert_eq!(m.timeseries[1].scenarios["chat"].latency.summary.count, 7);
    assert_eq!(m.connections.counters["peak_open"], 20);
    // One worker alone has p99 = 70 ms and fails; the merged p99 is judged on all samples.
    assert!(!a.passed);
    assert_eq!(m.passed, hist(&all).stat_ms("p99").unwrap() < 50.0);
    assert_eq!(m.verdicts.len(), 3);

    // Merging is associative with a JSON round trip in between (as `merge` reads files).
    let back: Vec<Report> =
        [&a, &b].iter().map(|r| serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap()).collect();
    assert_eq!(Report::merge(back).unwrap().scenarios["chat"].latency, chat.latency);

    assert!(matches!(Report::merge(vec![a.clone(), a.clone()]), Err(MergeError::DuplicateWorker(_))));
    let mut other = b.clone();
    other.scenario = "other".into();
    assert!(matches!(Report::merge(vec![a.clone(), other]), Err(MergeError::Scenario(..))));
    assert!(matches!(Report::merge(vec![]), Err(MergeError::Empty)));
    let mut old = b;
    old.format = 99;
    assert!(matches!(Report::merge(vec![a, old]), Err(MergeError::Format(99))));
}

#[test]
fn text_summary() {
    let r = worker(0, 1, 3000, 3000, &[1_000, 2_000, 40_000]);
    let t = r.text();
    assert!(t.contains("sm: unsupported"), "{t}");
    assert!(t.contains("[chat]"));
    assert!(t.contains("PASS [chat] loss == 0: actual 0"), "{t}");
    assert!(t.contains("result: PASS"));
    assert!(t.contains("delivered_rate=300"), "{t}");
}

#[test]
fn html_page() {
    let mut r = worker(0, 1, 3000, 3000, &[1_000, 2_000, 40_000]);
    r.description = "<script>".into();
    let page = crate::html::render(&r);
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_eq!(page.matches("<svg").count(), 3, "latency, throughput and connection plots");
    assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"), "text is escaped, no scripts");
    assert!(page.contains("Latency percentiles per second"));
    assert!(!page.contains("could not be drawn"));
}
