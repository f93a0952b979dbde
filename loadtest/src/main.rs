//! The `rookery-load` command line: `run`, `provision`, `merge` and `check`. Thin: every
//! subcommand is a call into the library; this file maps errors to exit codes
//! (0 pass, 1 criteria failed, 2 usage or scenario error, 3 run error).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use rookery_load::provision::{ProvisionOptions, provision, resolve_token};
use rookery_load::scenario::{Kind, ProvisionMethod, Scenario};
use rookery_load::workers::{WorkerPlan, run_local};
use rookery_load::{EXIT_CRITERIA_FAILED, EXIT_PASS, EXIT_RUN_ERROR, EXIT_USAGE, Partition, Report, RunOptions};

const AFTER_HELP: &str = "\
Exit status: 0 every pass criterion held; 1 a pass criterion failed; 2 bad command line or
scenario file; 3 the run could not take place (target unreachable, worker failed, I/O error).

Examples:
  rookery-load provision loadtest/scenarios/chat-1to1.toml --admin-token-file /var/lib/rookery/admin.token
  rookery-load run loadtest/scenarios/chat-1to1.toml --set chat.rate=20000 --json out.json --html out.html
  rookery-load run loadtest/scenarios/idle-50k.toml --workers 4 --server-pid $(pidof rookery)
  rookery-load merge w0.json w1.json w2.json w3.json --html merged.html

The manual is docs/loadtest.md.";

/// Scenario-driven XMPP load generator: open-loop load against any standards-compliant
/// server, latency measured from the intended send time (coordinated-omission-correct).
#[derive(Parser, Debug)]
#[command(name = "rookery-load", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a scenario file and report (text on stdout, optional JSON and HTML).
    Run(RunArgs),
    /// Create the scenario's accounts (admin API or XEP-0077 in-band registration).
    Provision(ProvisionArgs),
    /// Merge JSON reports of workers into one report and judge it again.
    Merge(MergeArgs),
    /// Validate a scenario file and show what it would do, without connecting.
    Check(CheckArgs),
}

#[derive(Args, Debug)]
struct ScenarioArgs {
    /// The scenario file (TOML).
    scenario: PathBuf,
    /// Override a scenario key, e.g. `--set chat.rate=20000` or
    /// `--set target.address=10.0.0.5:5222`; repeatable. Array items by index:
    /// `--set chat.phases.1.duration=5m`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Write the full report as JSON (histograms included, mergeable).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report with plots.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// No live progress (also off when stdout is not a terminal).
    #[arg(long, short)]
    quiet: bool,
    /// Sample CPU and RSS of this server process every second (Linux /proc).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Run only worker INDEX of COUNT (0-based), e.g. `--worker 2/4` for the third quarter
    /// of the users and load; in Kubernetes: `--worker $JOB_COMPLETION_INDEX/$COUNT`.
    #[arg(long, value_name = "INDEX/COUNT", conflicts_with = "workers")]
    worker: Option<String>,
    /// Start N local worker processes (`--worker i/N` each) and merge their reports.
    #[arg(long, value_name = "N")]
    workers: Option<u32>,
    /// Start the load at this Unix time (seconds, decimals allowed), so workers on several
    /// machines share a time axis.
    #[arg(long, value_name = "UNIX_SECONDS")]
    start_at: Option<f64>,
}

#[derive(Args, Debug)]
struct ProvisionArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// `admin` (Rookery's admin API) or `ibr` (XEP-0077); default from [provision].
    #[arg(long, value_parser = ["admin", "ibr"])]
    method: Option<String>,
    /// Base URL of the admin API, e.g. http://127.0.0.1:5280.
    #[arg(long, env = "ROOKERY_ADMIN_URL", value_name = "URL")]
    admin_url: Option<String>,
    /// Admin API bearer token.
    #[arg(long, env = "ROOKERY_ADMIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin API token (e.g. <data_dir>/admin.token).
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Accounts created in parallel (default from [provision], else 32).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Create only this worker's share of the accounts.
    #[arg(long, value_name = "INDEX/COUNT")]
    worker: Option<String>,
}

#[derive(Args, Debug)]
struct MergeArgs {
    /// JSON reports written by `run --json`.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Write the merged report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the merged report as HTML.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUN_ERROR);
        }
    };
    let code = rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => cmd_run(a).await,
            Cmd::Provision(a) => cmd_provision(a).await,
            Cmd::Merge(a) => cmd_merge(a),
            Cmd::Check(a) => cmd_check(a),
        }
    });
    ExitCode::from(code)
}

fn load(a: &ScenarioArgs) -> Result<Scenario, u8> {
    Scenario::load(&a.scenario, &a.set).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_USAGE
    })
}

fn partition(s: Option<&str>) -> Result<Partition, u8> {
    match s {
        None => Ok(Partition::ALL),
        Some(s) => Partition::parse(s).map_err(|e| {
            eprintln!("error: --worker: {e}");
            EXIT_USAGE
        }),
    }
}

/// Prints the summary, writes the outputs, and returns the exit code for `report`.
fn finish(report: &Report, json: Option<&PathBuf>, html: Option<&PathBuf>) -> u8 {
    print!("{}", report.text());
    if let Some(p) = json
        && let Err(e) = rookery_load::write_json(report, p)
    {
        eprintln!("error: cannot write {}: {e}", p.display());
        return EXIT_RUN_ERROR;
    }
    if let Some(p) = html
        && let Err(e) = rookery_load::write_html(report, p)
    {
        eprintln!("error: cannot write {}: {e}", p.display());
        return EXIT_RUN_ERROR;
    }
    if report.passed { EXIT_PASS } else { EXIT_CRITERIA_FAILED }
}

async fn cmd_run(a: RunArgs) -> u8 {
    let scn = match load(&a.scenario) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let part = match partition(a.worker.as_deref()) {
        Ok(p) => p,
        Err(c) => return c,
    };
    match rookery_load::raise_nofile_limit() {
        Ok(n) => tracing::debug!(event = "nofile_limit", limit = n),
        Err(e) => tracing::warn!(event = "nofile_limit_failed", error = %e),
    }

    if let Some(n) = a.workers {
        if n == 0 {
            eprintln!("error: --workers must be at least 1");
            return EXIT_USAGE;
        }
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: cannot find this program's path to start workers: {e}");
                return EXIT_RUN_ERROR;
            }
        };
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let plan = WorkerPlan {
            exe,
            scenario: a.scenario.scenario.clone(),
            overrides: a.scenario.set.clone(),
            count: n,
            server_pid: a.server_pid,
            dir: std::env::temp_dir().join(format!("rookery-load-{}-{stamp}", std::process::id())),
        };
        if !a.quiet {
            eprintln!("starting {n} workers (reports in {})", plan.dir.display());
        }
        // Ctrl-C reaches the workers too (same process group): they stop their load and
        // write their reports, which are merged as usual.
        tokio::spawn(async {
            while tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: waiting for the workers to report");
            }
        });
        let (reports, server) = match run_local(&plan).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_RUN_ERROR;
            }
        };
        let mut merged = match Report::merge(reports) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_RUN_ERROR;
            }
        };
        if server.is_some() {
            merged.server = server;
            merged.derive_server();
            merged.evaluate();
        }
        // Everything the worker files held is in the merged report now.
        let _ = std::fs::remove_dir_all(&plan.dir);
        return finish(&merged, a.json.as_ref(), a.html.as_ref());
    }

    let start_at = a.start_at.map(|s| UNIX_EPOCH + Duration::from_secs_f64(s.max(0.0)));
    let opts = RunOptions {
        partition: part,
        server_pid: a.server_pid,
        start_at,
        progress: !a.quiet && std::io::stdout().is_terminal(),
        interruptible: true,
    };
    match rookery_load::run(&scn, &opts).await {
        Ok(report) => finish(&report, a.json.as_ref(), a.html.as_ref()),
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_RUN_ERROR
        }
    }
}

async fn cmd_provision(a: ProvisionArgs) -> u8 {
    let scn = match load(&a.scenario) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let part = match partition(a.worker.as_deref()) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let method = match a.method.as_deref() {
        Some("ibr") => ProvisionMethod::Ibr,
        Some(_) => ProvisionMethod::Admin,
        None => scn.file.provision.method,
    };
    let token = match &a.admin_token_file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                eprintln!("error: cannot read --admin-token-file {}: {e}", f.display());
                return EXIT_USAGE;
            }
        },
        None => a.admin_token.clone(),
    };
    let token = match resolve_token(&scn, token) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let settings = if method == ProvisionMethod::Ibr {
        match rookery_load::run::client_settings(&scn).await {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_RUN_ERROR;
            }
        }
    } else {
        None
    };
    let opts = ProvisionOptions {
        method,
        admin_url: a.admin_url.clone().or_else(|| scn.file.provision.admin_url.clone()),
        admin_token: token,
        concurrency: a.concurrency.or(scn.file.provision.concurrency).unwrap_or(32),
        partition: part,
    };
    match provision(&scn, settings, &opts).await {
        Ok(s) => {
            println!(
                "provisioned {} accounts: {} created, {} already existed, {} failed",
                s.created + s.existed + s.failed,
                s.created,
                s.existed,
                s.failed
            );
            if let Some(e) = &s.first_error {
                eprintln!("first failure: {e}");
            }
            if s.failed > 0 { EXIT_RUN_ERROR } else { EXIT_PASS }
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_RUN_ERROR
        }
    }
}

fn cmd_merge(a: MergeArgs) -> u8 {
    let mut reports = Vec::new();
    for p in &a.reports {
        match rookery_load::read_json(p) {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", p.display());
                return EXIT_RUN_ERROR;
            }
        }
    }
    match Report::merge(reports) {
        Ok(m) => finish(&m, a.json.as_ref(), a.html.as_ref()),
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_RUN_ERROR
        }
    }
}

fn cmd_check(a: CheckArgs) -> u8 {
    let scn = match load(&a.scenario) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let t = &scn.file.target;
    println!("scenario {}: {}", scn.name, scn.description);
    let tls = match t.tls {
        rookery_load::scenario::TlsMode::Starttls => "starttls",
        rookery_load::scenario::TlsMode::Direct => "direct",
        rookery_load::scenario::TlsMode::None => "none",
    };
    println!("target {} (domain {}), tls {tls}, sasl {}", t.address, t.domain, t.sasl.join(" > "));
    println!("user pool: {} accounts", scn.pool.len());
    for k in scn.kinds() {
        let users = scn.blocks.get(&k).map(|r| format!("users {}..{}", r.start, r.end)).unwrap_or_default();
        let sched = scn
            .schedule(k)
            .filter(|_| k != Kind::Muc)
            .map(|s| format!(", {:.0} events over {:.1} s", s.expected().ceil(), s.duration().as_secs_f64()))
            .unwrap_or_default();
        let crit: Vec<String> =
            scn.criteria.get(&k).map(|v| v.iter().map(ToString::to_string).collect()).unwrap_or_default();
        let status = if k == Kind::Muc { " (unsupported by this build)" } else { "" };
        println!(
            "[{}]{status} {users}{sched}; pass: {}",
            k.name(),
            if crit.is_empty() { "-".into() } else { crit.join(", ") }
        );
    }
    EXIT_PASS
}
