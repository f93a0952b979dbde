//! Distributed runs on one machine: `run --workers N` starts N processes of this binary,
//! each with `--worker i/N`, a shared `--start-at` so their clocks line up, and its own JSON
//! file; then merges the files. Server sampling (`--server-pid`) happens here, once, not in
//! every worker.
//!
//! Owns process spawning and collection. The partition itself is `users::Partition`; the
//! merge is `report::Report::merge`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::procstat::ProcSampler;
use crate::report::{Report, ServerReport, ServerSample};

/// What to pass to every worker.
#[derive(Debug, Clone)]
pub struct WorkerPlan {
    pub exe: PathBuf,
    pub scenario: PathBuf,
    pub overrides: Vec<String>,
    pub count: u32,
    pub server_pid: Option<u32>,
    /// Directory for the workers' JSON files.
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start worker {index}: {error}")]
    Spawn { index: u32, error: std::io::Error },
    #[error("worker {index} failed with {status}")]
    Failed { index: u32, status: std::process::ExitStatus },
    #[error("cannot read the report of worker {index} ({path}): {error}")]
    Report { index: u32, path: String, error: std::io::Error },
    #[error("--server-pid {pid}: {error}")]
    ServerPid { pid: u32, error: std::io::Error },
    #[error("{0}")]
    Io(std::io::Error),
}

/// Seconds between spawning the workers and their common start.
const START_DELAY: Duration = Duration::from_secs(3);

/// Runs the workers and returns their reports (not yet merged).
pub async fn run_local(plan: &WorkerPlan) -> Result<(Vec<Report>, Option<ServerReport>), WorkerError> {
    std::fs::create_dir_all(&plan.dir).map_err(WorkerError::Io)?;
    let start = SystemTime::now() + START_DELAY;
    let start_secs = start.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let sampler = match plan.server_pid {
        Some(pid) => Some(ProcSampler::new(pid).map_err(|error| WorkerError::ServerPid { pid, error })?),
        None => None,
    };
    let mut children = Vec::new();
    for i in 0..plan.count {
        let json = worker_json(&plan.dir, i);
        let mut cmd = tokio::process::Command::new(&plan.exe);
        cmd.arg("run").arg(&plan.scenario);
        for o in &plan.overrides {
            cmd.arg("--set").arg(o);
        }
        cmd.arg("--worker")
            .arg(format!("{i}/{}", plan.count))
            .arg("--json")
            .arg(&json)
            .arg("--quiet")
            .arg("--start-at")
            .arg(format!("{start_secs:.3}"))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        children.push(cmd.spawn().map_err(|error| WorkerError::Spawn { index: i, error })?);
    }

    // Sample the server from the common start until every worker has exited.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_all = async {
        let mut statuses = Vec::new();
        for c in &mut children {
            statuses.push(c.wait().await);
        }
        let _ = stop_tx.send(true);
        statuses
    };
    let (statuses, server) = tokio::join!(wait_all, sample_server(sampler, start, stop_rx));
    let mut reports = Vec::new();
    for (i, st) in statuses.into_iter().enumerate() {
        let index = i as u32;
        let st = st.map_err(|error| WorkerError::Spawn { index, error })?;
        // 0 and 1 both mean "report written"; criteria are judged on the merged report.
        if !matches!(st.code(), Some(0 | 1)) {
            return Err(WorkerError::Failed { index, status: st });
        }
        let path = worker_json(&plan.dir, index);
        let r = crate::read_json(&path).map_err(|error| WorkerError::Report {
            index,
            path: path.display().to_string(),
            error,
        })?;
        reports.push(r);
    }
    Ok((reports, server))
}

async fn sample_server(
    sampler: Option<ProcSampler>,
    start: SystemTime,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<ServerReport> {
    let s = sampler?;
    if let Ok(d) = start.duration_since(SystemTime::now()) {
        tokio::time::sleep(d).await;
    }
    let first = s.read()?;
    let mut rep = ServerReport {
        pid: s.pid,
        clk_tck: s.clk_tck,
        samples: vec![ServerSample { t: 0, cpu_s: 0.0, rss_bytes: first.rss_bytes }],
        cpu_seconds: 0.0,
        start_rss_bytes: first.rss_bytes,
        peak_rss_bytes: first.rss_bytes,
        final_rss_bytes: first.rss_bytes,
        cpu_s_per_100k_delivered: None,
        rss_per_connection_bytes: None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut t = 0u32;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        t += 1;
        let Some(r) = s.read() else { break };
        let cpu = r.cpu_s - first.cpu_s;
        rep.samples.push(ServerSample { t, cpu_s: cpu, rss_bytes: r.rss_bytes });
        rep.cpu_seconds = cpu;
        rep.peak_rss_bytes = rep.peak_rss_bytes.max(r.rss_bytes);
        rep.final_rss_bytes = r.rss_bytes;
        if last {
            break;
        }
    }
    Some(rep)
}

fn worker_json(dir: &Path, i: u32) -> PathBuf {
    dir.join(format!("worker-{i}.json"))
}
