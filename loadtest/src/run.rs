//! Running a scenario: resolve and probe the target, start every kind of the file
//! concurrently, sample once per second (time series, server resources, live progress),
//! and assemble the [`Report`].
//!
//! Owns the orchestration and the sampler. It must not know what a kind does on the wire
//! (that is `kinds`) or how results are judged (that is `report`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

use crate::actor::{Ctx, Live};
use crate::client::{ClientSettings, ScramCache, SourcePool, parse_source_addrs};
use crate::kinds::{self, Outcome};
use crate::metrics::Hist;
use crate::procstat::ProcSampler;
use crate::report::{ConnReport, FORMAT, Report, Sample, ScenarioReport, ServerReport, ServerSample, UNSUPPORTED};
use crate::scenario::{Kind, Scenario, TlsMode};
use crate::users::Partition;

/// How to run (beyond the scenario file).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub partition: Partition,
    /// Sample this process's CPU and memory.
    pub server_pid: Option<u32>,
    /// Start the clock at this wall-clock time (aligns the time series of workers).
    pub start_at: Option<SystemTime>,
    /// Show live progress on the terminal.
    pub progress: bool,
    /// The first Ctrl-C ends the load early and still reports; the second exits.
    pub interruptible: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            partition: Partition::ALL,
            server_pid: None,
            start_at: None,
            progress: false,
            interruptible: false,
        }
    }
}

/// Why a run could not take place (as opposed to a run whose criteria failed).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot resolve target.address {addr:?}: {error}")]
    Resolve { addr: String, error: String },
    #[error("cannot connect to {addr} (target.address): {error}; is the server running and reachable?")]
    Unreachable { addr: String, error: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("--server-pid {pid}: cannot read /proc/{pid}: {error}")]
    ServerPid { pid: u32, error: std::io::Error },
    #[error("target.source_addrs: {0}")]
    Sources(String),
}

/// Resolves the target and builds the settings every connection of `scn` uses.
pub async fn client_settings(scn: &Scenario) -> Result<ClientSettings, RunError> {
    let t = &scn.file.target;
    let addr = tokio::net::lookup_host(&t.address)
        .await
        .map_err(|e| RunError::Resolve { addr: t.address.clone(), error: e.to_string() })?
        .next()
        .ok_or_else(|| RunError::Resolve { addr: t.address.clone(), error: "no address found".into() })?;
    let tls_config = crate::tls::client_config(t.tls == TlsMode::Direct).map_err(|e| RunError::Tls(e.to_string()))?;
    let sources = match &t.source_addrs {
        Some(s) => Some(SourcePool::new(parse_source_addrs(s).map_err(RunError::Sources)?)),
        None => None,
    };
    Ok(ClientSettings {
        addr,
        domain: t.domain.clone(),
        tls: t.tls,
        tls_config,
        sasl: scn.sasl.clone(),
        sources,
        stream_management: t.stream_management,
        initial_presence: t.initial_presence,
        login_timeout: t.login_timeout.0,
        keepalive: t.keepalive.0,
        ack_every: t.ack_every,
        limits: rookery_xml::Limits { max_stanza_bytes: t.max_stanza_bytes, ..rookery_xml::Limits::default() },
        scram: ScramCache::default(),
    })
}

/// Fails fast, with the address in the message, when nothing listens at the target.
pub async fn probe(settings: &ClientSettings) -> Result<(), RunError> {
    let addr = settings.addr;
    match tokio::time::timeout(settings.login_timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(RunError::Unreachable { addr: addr.to_string(), error: e.to_string() }),
        Err(_) => Err(RunError::Unreachable { addr: addr.to_string(), error: "timed out".into() }),
    }
}

/// Runs `scn` (this worker's share of it) and returns the report, criteria evaluated.
pub async fn run(scn: &Scenario, opts: &RunOptions) -> Result<Report, RunError> {
    let t = &scn.file.target;
    let settings = client_settings(scn).await?;
    probe(&settings).await?;
    let proc = match opts.server_pid {
        Some(pid) => Some(ProcSampler::new(pid).map_err(|error| RunError::ServerPid { pid, error })?),
        None => None,
    };

    if let Some(at) = opts.start_at
        && let Ok(wait) = at.duration_since(SystemTime::now())
    {
        tokio::time::sleep(wait).await;
    }
    let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let ctx = Arc::new(Ctx::new(settings, Instant::now()));
    let kinds: Vec<Kind> = scn.kinds().into_iter().filter(|k| *k != Kind::Muc).collect();
    let lives: Vec<Arc<Live>> = kinds.iter().map(|k| Arc::new(Live::new(*k))).collect();

    let progress = opts.progress.then(|| {
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(Duration::from_millis(250));
        pb
    });
    if opts.interruptible {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping the load, the report follows (Ctrl-C again to quit)");
                ctx.stop();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(i32::from(crate::EXIT_RUN_ERROR));
                }
            }
        });
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let sampler = tokio::spawn(sample_loop(ctx.clone(), lives.clone(), proc, progress.clone(), stop_rx));

    let shared = Arc::new(scn.clone());
    let mut handles = Vec::new();
    for (kind, live) in kinds.iter().zip(&lives) {
        let (ctx, scn, live, part, kind) = (ctx.clone(), shared.clone(), live.clone(), opts.partition, *kind);
        handles.push(tokio::spawn(async move {
            match kind {
                Kind::Login => kinds::login::run(ctx, &scn, part, live).await,
                Kind::Idle => kinds::idle::run(ctx, &scn, part, live).await,
                Kind::Chat => kinds::chat::run(ctx, &scn, part, live).await,
                Kind::Presence => kinds::presence::run(ctx, &scn, part, live).await,
                Kind::Mam => kinds::mam::run(ctx, &scn, part, live).await,
                Kind::Reconnect => kinds::reconnect::run(ctx, &scn, part, live).await,
                Kind::Muc => Outcome::default(),
            }
        }));
    }
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(
            h.await
                .unwrap_or_else(|e| Outcome { notes: vec![format!("scenario task failed: {e}")], load_seconds: 0.0 }),
        );
    }
    let duration_s = ctx.now().as_secs_f64();
    let _ = stop_tx.send(true);
    let (timeseries, server) = sampler.await.unwrap_or_default();
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }

    let mut scenarios = BTreeMap::new();
    for ((kind, live), outcome) in kinds.iter().zip(&lives).zip(outcomes) {
        scenarios.insert(
            kind.name().to_owned(),
            ScenarioReport {
                kind: kind.name().to_owned(),
                status: "ok".into(),
                notes: outcome.notes,
                load_seconds: outcome.load_seconds,
                counters: live.counters.snapshot(),
                latency_name: kind.latency_name().to_owned(),
                latency: Hist(live.latency.total()),
            },
        );
    }
    if scn.file.muc.is_some() {
        scenarios.insert(
            "muc".into(),
            ScenarioReport {
                kind: "muc".into(),
                status: UNSUPPORTED.into(),
                notes: vec![
                    "MUC fan-out is not implemented yet; the [muc] table is accepted so files stay valid".into(),
                ],
                load_seconds: 0.0,
                counters: BTreeMap::new(),
                latency_name: Kind::Muc.latency_name().into(),
                latency: Hist::default(),
            },
        );
    }
    let mut counters = ctx.conn.counters.snapshot();
    let peak = ctx.conn.peak_open.load(Ordering::Relaxed).max(0) as u64;
    counters.insert("peak_open".into(), peak);
    let stream_management = match ctx.sm_support() {
        _ if !t.stream_management => "disabled".to_owned(),
        Some(s) => s.label().to_owned(),
        None => "unknown".to_owned(),
    };
    let mut report = Report {
        format: FORMAT,
        tool: format!("rookery-load {}", env!("CARGO_PKG_VERSION")),
        scenario: scn.name.clone(),
        description: scn.description.clone(),
        target: t.address.clone(),
        domain: t.domain.clone(),
        workers: vec![opts.partition],
        started_unix_ms,
        duration_s,
        stream_management,
        connections: ConnReport { counters, failures: ctx.conn.failures(), phases: ctx.conn.phases() },
        scenarios,
        timeseries,
        server,
        criteria: scn.criteria.iter().map(|(k, v)| (k.name().to_owned(), v.clone())).collect(),
        verdicts: Vec::new(),
        passed: false,
        interrupted: ctx.is_stopped(),
    };
    report.derive_server();
    report.evaluate();
    Ok(report)
}

async fn sample_loop(
    ctx: Arc<Ctx>,
    lives: Vec<Arc<Live>>,
    proc: Option<ProcSampler>,
    progress: Option<ProgressBar>,
    mut stop: watch::Receiver<bool>,
) -> (Vec<Sample>, Option<ServerReport>) {
    let mut samples = Vec::new();
    let base_cpu = proc.as_ref().and_then(ProcSampler::read).map_or(0.0, |r| r.cpu_s);
    let mut server = proc.as_ref().and_then(|p| {
        let r = p.read()?;
        Some(ServerReport {
            pid: p.pid,
            clk_tck: p.clk_tck,
            samples: vec![ServerSample { t: 0, cpu_s: 0.0, rss_bytes: r.rss_bytes }],
            cpu_seconds: 0.0,
            start_rss_bytes: r.rss_bytes,
            peak_rss_bytes: r.rss_bytes,
            final_rss_bytes: r.rss_bytes,
            cpu_s_per_100k_delivered: None,
            rss_per_connection_bytes: None,
        })
    });
    let start = tokio::time::Instant::from_std(ctx.epoch) + Duration::from_secs(1);
    let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        // Ticks land just after each whole second; a final, partial second gets the next index.
        let mut t = ctx.now().as_secs_f64().round() as u32;
        if let Some(prev) = samples.last().map(|s: &Sample| s.t)
            && t <= prev
        {
            t = prev + 1;
        }
        let open = ctx.conn.open.load(Ordering::Relaxed);
        ctx.conn.peak_open.fetch_max(open, Ordering::Relaxed);
        let sample = Sample {
            t,
            open_connections: open,
            logins: ctx.conn.logins.swap(0, Ordering::Relaxed),
            scenarios: lives.iter().map(|l| (l.kind.name().to_owned(), l.sample())).collect(),
        };
        if let (Some(p), Some(s)) = (&proc, &mut server)
            && let Some(r) = p.read()
        {
            let cpu = r.cpu_s - base_cpu;
            s.samples.push(ServerSample { t, cpu_s: cpu, rss_bytes: r.rss_bytes });
            s.cpu_seconds = cpu;
            s.peak_rss_bytes = s.peak_rss_bytes.max(r.rss_bytes);
            s.final_rss_bytes = r.rss_bytes;
        }
        if let Some(pb) = &progress {
            pb.set_message(progress_line(&sample));
        }
        samples.push(sample);
        if last {
            break;
        }
    }
    (samples, server)
}

fn progress_line(s: &Sample) -> String {
    let mut line = format!("open {:>6}  logins {:>5}/s", s.open_connections, s.logins);
    for (name, ss) in &s.scenarios {
        let p99 = ss.latency.stat_ms("p99").map(|v| format!("{v:.1}ms")).unwrap_or_else(|| "-".into());
        line.push_str(&format!("  | {name} {}/{} per s p99 {p99}", ss.completed, ss.offered));
        if ss.errors > 0 {
            line.push_str(&format!(" err {}", ss.errors));
        }
    }
    line
}
