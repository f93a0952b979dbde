//! The result of a run: its JSON form, merging reports from several workers, evaluating pass
//! criteria, and the text summary.
//!
//! Owns the report schema (versioned by `format`) and the arithmetic on finished numbers.
//! It must not touch the network or live instruments: `run` fills a [`Report`] at the end,
//! `merge` combines finished ones, and both then call [`Report::evaluate`], so a merged
//! report is judged exactly like a single-process one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::metrics::{Hist, PackedHist};
use crate::scenario::{Criterion, Kind, LATENCY_STATS, PHASES};
use crate::users::Partition;

/// Version of the JSON layout.
pub const FORMAT: u32 = 1;

/// Status of a scenario kind this build cannot run.
pub const UNSUPPORTED: &str = "unsupported by this build";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub tool: String,
    pub scenario: String,
    #[serde(default)]
    pub description: String,
    pub target: String,
    pub domain: String,
    /// The worker shares merged into this report.
    pub workers: Vec<Partition>,
    pub started_unix_ms: u64,
    pub duration_s: f64,
    /// XEP-0198 as seen by the client: `supported`, `unsupported`, `disabled` or `unknown`.
    pub stream_management: String,
    pub connections: ConnReport,
    pub scenarios: BTreeMap<String, ScenarioReport>,
    pub timeseries: Vec<Sample>,
    pub server: Option<ServerReport>,
    pub criteria: BTreeMap<String, Vec<Criterion>>,
    #[serde(default)]
    pub verdicts: Vec<Verdict>,
    #[serde(default)]
    pub passed: bool,
    /// The load was ended early (Ctrl-C); such a run never passes.
    #[serde(default)]
    pub interrupted: bool,
}

/// Connection establishment across all scenarios.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ConnReport {
    /// attempts, established, failed, closed, stream_errors, disconnects, peak_open.
    pub counters: BTreeMap<String, u64>,
    /// Failed logins by the step that failed (`connect`, `tls`, `auth`, `bind`, `timeout`, …).
    pub failures: BTreeMap<String, u64>,
    /// `connect` (TCP), `tls` (handshake, with STARTTLS from `<starttls/>`), `auth` (SASL
    /// `<auth/>` to `<success/>`, including the client's key derivation), `bind`.
    pub phases: BTreeMap<String, Hist>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub kind: String,
    /// `ok`, or why it did not run (e.g. [`UNSUPPORTED`]).
    pub status: String,
    #[serde(default)]
    pub notes: Vec<String>,
    /// Length of the load phases (the denominator of rates).
    pub load_seconds: f64,
    pub counters: BTreeMap<String, u64>,
    /// What `latency` measures (`delivery`, `broadcast`, `query`, `login`, `reconnect`).
    pub latency_name: String,
    pub latency: Hist,
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Sample {
    /// Seconds since the start of the run.
    pub t: u32,
    pub open_connections: i64,
    /// Logins completed in this second.
    pub logins: u64,
    pub scenarios: BTreeMap<String, ScenarioSample>,
}

/// What one scenario did in one second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ScenarioSample {
    /// Actions started: messages or presences sent, queries, reconnects, logins attempted.
    pub offered: u64,
    /// Actions completed: deliveries, answers, successful (re)connections.
    pub completed: u64,
    pub errors: u64,
    /// Latencies observed in this second.
    pub latency: PackedHist,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerSample {
    pub t: u32,
    /// CPU seconds (user + system) since sampling started.
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

/// Resource use of the server process (`--server-pid`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    pub pid: u32,
    pub clk_tck: u64,
    pub samples: Vec<ServerSample>,
    pub cpu_seconds: f64,
    pub start_rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub final_rss_bytes: u64,
    /// CPU seconds per 100 000 delivered messages (chat deliveries plus presence receipts).
    pub cpu_s_per_100k_delivered: Option<f64>,
    /// (peak RSS − RSS at start) / peak open connections.
    pub rss_per_connection_bytes: Option<f64>,
}

/// The outcome of one criterion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub scenario: String,
    pub criterion: String,
    pub actual: Option<f64>,
    pub passed: bool,
    #[serde(default)]
    pub note: String,
}

/// Why reports cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("nothing to merge")]
    Empty,
    #[error("report format {0} is not supported (this build reads format {FORMAT})")]
    Format(u32),
    #[error("reports are from different scenarios: {0:?} and {1:?}")]
    Scenario(String, String),
    #[error("worker {0} appears in more than one report")]
    DuplicateWorker(Partition),
    #[error("{0}")]
    Histogram(String),
}

fn add_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn add_hists(into: &mut BTreeMap<String, Hist>, from: &BTreeMap<String, Hist>) -> Result<(), MergeError> {
    for (k, h) in from {
        into.entry(k.clone()).or_default().add(h).map_err(MergeError::Histogram)?;
    }
    Ok(())
}

impl Report {
    /// Merges worker reports into one and evaluates the criteria again. Counters and
    /// histograms are added, time series are aligned on `t`; server figures come from the
    /// first report that has them (one process should sample the server).
    pub fn merge(reports: Vec<Report>) -> Result<Report, MergeError> {
        let mut it = reports.into_iter();
        let mut out = it.next().ok_or(MergeError::Empty)?;
        if out.format != FORMAT {
            return Err(MergeError::Format(out.format));
        }
        for r in it {
            if r.format != FORMAT {
                return Err(MergeError::Format(r.format));
            }
            if r.scenario != out.scenario {
                return Err(MergeError::Scenario(out.scenario.clone(), r.scenario));
            }
            for w in &r.workers {
                if out.workers.contains(w) {
                    return Err(MergeError::DuplicateWorker(*w));
                }
            }
            out.workers.extend(r.workers.iter().copied());
            out.started_unix_ms = out.started_unix_ms.min(r.started_unix_ms);
            out.duration_s = out.duration_s.max(r.duration_s);
            out.stream_management = merge_sm(&out.stream_management, &r.stream_management);
            out.interrupted |= r.interrupted;
            add_map(&mut out.connections.counters, &r.connections.counters);
            add_map(&mut out.connections.failures, &r.connections.failures);
            add_hists(&mut out.connections.phases, &r.connections.phases)?;
            for (name, s) in r.scenarios {
                match out.scenarios.get_mut(&name) {
                    None => {
                        out.scenarios.insert(name, s);
                    }
                    Some(o) => {
                        if o.status == "ok" && s.status != "ok" {
                            o.status = s.status.clone();
                        }
                        for n in s.notes {
                            if !o.notes.contains(&n) {
                                o.notes.push(n);
                            }
                        }
                        o.load_seconds = o.load_seconds.max(s.load_seconds);
                        add_map(&mut o.counters, &s.counters);
                        o.latency.add(&s.latency).map_err(MergeError::Histogram)?;
                    }
                }
            }
            for s in r.timeseries {
                match out.timeseries.iter_mut().find(|o| o.t == s.t) {
                    None => out.timeseries.push(s),
                    Some(o) => {
                        o.open_connections += s.open_connections;
                        o.logins += s.logins;
                        for (name, ss) in s.scenarios {
                            let e = o.scenarios.entry(name).or_default();
                            e.offered += ss.offered;
                            e.completed += ss.completed;
                            e.errors += ss.errors;
                            e.latency.add(&ss.latency).map_err(MergeError::Histogram)?;
                        }
                    }
                }
            }
            if out.server.is_none() {
                out.server = r.server;
            }
            for (k, v) in r.criteria {
                out.criteria.entry(k).or_insert(v);
            }
        }
        out.timeseries.sort_by_key(|s| s.t);
        out.workers.sort_by_key(|w| (w.count, w.index));
        // The per-worker peak of open connections cannot be added; take it from the series.
        let peak = out.timeseries.iter().map(|s| s.open_connections).max().unwrap_or(0).max(0) as u64;
        let c = out.connections.counters.entry("peak_open".into()).or_default();
        *c = (*c).max(peak);
        out.derive_server();
        out.evaluate();
        Ok(out)
    }

    /// Fills the server figures that depend on totals (after a run or a merge).
    pub fn derive_server(&mut self) {
        let delivered: u64 = self.scenarios.values().map(|s| s.counters.get("delivered").copied().unwrap_or(0)).sum();
        let peak_open = self.connections.counters.get("peak_open").copied().unwrap_or(0);
        if let Some(s) = &mut self.server {
            s.cpu_s_per_100k_delivered = (delivered > 0).then(|| s.cpu_seconds * 100_000.0 / delivered as f64);
            s.rss_per_connection_bytes =
                (peak_open > 0).then(|| s.peak_rss_bytes.saturating_sub(s.start_rss_bytes) as f64 / peak_open as f64);
        }
    }

    /// A metric of a scenario by criterion name.
    pub fn metric(&self, scenario: &str, metric: &str) -> Option<f64> {
        let s = self.scenarios.get(scenario)?;
        let c = |k: &str| s.counters.get(k).copied().unwrap_or(0) as f64;
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let per_s = |a: f64| if s.load_seconds > 0.0 { a / s.load_seconds } else { 0.0 };
        if let Some(v) = s.counters.get(metric) {
            return Some(*v as f64);
        }
        if let Some(stat) = metric.strip_suffix("_ms") {
            if LATENCY_STATS.contains(&stat) {
                return s.latency.stat_ms(stat);
            }
            let (phase, stat) = stat.split_once('_')?;
            if PHASES.contains(&phase) {
                return self.connections.phases.get(phase)?.stat_ms(stat);
            }
            return None;
        }
        let kind = Kind::from_name(&s.kind)?;
        Some(match (kind, metric) {
            (Kind::Mam, "loss") => c("unanswered"),
            (_, "loss") => c("lost"),
            (Kind::Presence, "loss_ratio") => ratio(c("lost"), c("expected")),
            (_, "loss_ratio") => ratio(c("lost"), c("sent")),
            (_, "delivered_rate") => per_s(c("delivered")),
            (_, "sent_rate") => per_s(c("sent")),
            (_, "answered_rate") => per_s(c("answered")),
            (_, "login_rate") => per_s(c("established")),
            (_, "failure_ratio") => ratio(c("failed"), c("attempts")),
            (_, "resumed_ratio") => ratio(c("resumed"), c("reconnects")),
            (_, "reconnect_rate") => per_s(c("resumed") + c("fresh")),
            // Declared counters that were never touched read as 0.
            (k, m) if k.counters().contains(&m) => 0.0,
            _ => return None,
        })
    }

    /// Evaluates every criterion; sets `verdicts` and `passed`.
    pub fn evaluate(&mut self) {
        let mut verdicts = Vec::new();
        for (scenario, list) in &self.criteria {
            let status = self.scenarios.get(scenario).map(|s| s.status.as_str());
            for c in list {
                let (actual, passed, note) = match status {
                    Some("ok") => {
                        let a = self.metric(scenario, &c.metric);
                        let note = if a.is_none() { "no samples".to_owned() } else { String::new() };
                        (a, a.is_some_and(|v| c.op.holds(v, c.value)), note)
                    }
                    Some(other) => (None, false, other.to_owned()),
                    None => (None, false, "scenario did not run".to_owned()),
                };
                verdicts.push(Verdict { scenario: scenario.clone(), criterion: c.to_string(), actual, passed, note });
            }
        }
        self.passed = !self.interrupted && verdicts.iter().all(|v| v.passed);
        self.verdicts = verdicts;
    }

    /// The human-readable summary printed at the end of a run.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "rookery-load report: {} against {} ({})", self.scenario, self.target, self.domain);
        if !self.description.is_empty() {
            let _ = writeln!(o, "  {}", self.description);
        }
        let workers: Vec<String> = self.workers.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            o,
            "duration {:.1} s, workers {}, stream management: {}",
            self.duration_s,
            workers.join(" "),
            sm_label(&self.stream_management)
        );
        let cc = |k: &str| self.connections.counters.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "\nconnections: {} attempts, {} established, {} failed, peak open {}, {} stream errors, {} disconnects",
            cc("attempts"),
            cc("established"),
            cc("failed"),
            cc("peak_open"),
            cc("stream_errors"),
            cc("disconnects")
        );
        if !self.connections.failures.is_empty() {
            let f: Vec<String> = self.connections.failures.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(o, "  failures by step: {}", f.join(", "));
        }
        let _ = writeln!(
            o,
            "  {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "phase", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for p in PHASES {
            if let Some(h) = self.connections.phases.get(p) {
                let _ = writeln!(o, "  {}", hist_row(p, h));
            }
        }
        for (name, s) in &self.scenarios {
            let _ = writeln!(o, "\n[{name}] {}", if s.status == "ok" { String::new() } else { s.status.clone() });
            for n in &s.notes {
                let _ = writeln!(o, "  note: {n}");
            }
            if s.status != "ok" {
                continue;
            }
            let counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(o, "  {}", counters.join(", "));
            let _ = writeln!(
                o,
                "  {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "latency", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
            );
            let _ = writeln!(o, "  {}", hist_row(&s.latency_name, &s.latency));
            if let Some(k) = Kind::from_name(&s.kind) {
                let d: Vec<String> = k
                    .derived()
                    .iter()
                    .filter_map(|m| self.metric(name, m).map(|v| format!("{m}={}", fmt_num(v))))
                    .collect();
                if !d.is_empty() {
                    let _ = writeln!(o, "  {}", d.join(", "));
                }
            }
        }
        if let Some(s) = &self.server {
            let _ = writeln!(
                o,
                "\nserver pid {}: {:.2} CPU-s, RSS start {} / peak {} / final {}",
                s.pid,
                s.cpu_seconds,
                bytes(s.start_rss_bytes),
                bytes(s.peak_rss_bytes),
                bytes(s.final_rss_bytes)
            );
            if let Some(v) = s.cpu_s_per_100k_delivered {
                let _ = writeln!(o, "  {v:.2} CPU-s per 100k delivered messages");
            }
            if let Some(v) = s.rss_per_connection_bytes {
                let _ = writeln!(o, "  {} RSS per connection", bytes(v as u64));
            }
        }
        if !self.verdicts.is_empty() {
            let _ = writeln!(o, "\npass criteria:");
            for v in &self.verdicts {
                let actual = v.actual.map(fmt_num).unwrap_or_else(|| "n/a".into());
                let note = if v.note.is_empty() { String::new() } else { format!(" ({})", v.note) };
                let _ = writeln!(
                    o,
                    "  {} [{}] {}: actual {actual}{note}",
                    if v.passed { "PASS" } else { "FAIL" },
                    v.scenario,
                    v.criterion
                );
            }
        }
        if self.interrupted {
            let _ = writeln!(o, "\nthe load was interrupted before the end of its phases");
        }
        let _ = writeln!(o, "\nresult: {}", if self.passed { "PASS" } else { "FAIL" });
        o
    }
}

fn merge_sm(a: &str, b: &str) -> String {
    for s in ["supported", "unsupported", "disabled"] {
        if a == s || b == s {
            return s.to_owned();
        }
    }
    a.to_owned()
}

/// How the stream-management state reads in a summary.
pub fn sm_label(s: &str) -> String {
    match s {
        "unsupported" => "sm: unsupported (the server does not offer XEP-0198)".into(),
        "supported" => "sm: supported".into(),
        "disabled" => "sm: disabled in the scenario".into(),
        other => format!("sm: {other}"),
    }
}

fn hist_row(name: &str, h: &Hist) -> String {
    let s = h.summary();
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    format!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        name,
        s.count,
        ms(s.p50_us),
        ms(s.p90_us),
        ms(s.p99_us),
        ms(s.p999_us),
        ms(s.max_us)
    )
}

pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.3}") }
}

pub fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / 1024.0 / 1024.0 / 1024.0)
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
