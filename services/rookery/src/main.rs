//! `rookery`: the XMPP server binary. `serve` runs edge and router in one process on
//! embedded defaults; `user` manages accounts (through the admin API of a running server,
//! or directly in a stopped server's data directory); `check-config` validates a
//! configuration; `migrate` creates or upgrades the database schema; `compliance` prints
//! the supported-specifications table. `edge` and `router` are the two roles of cluster
//! mode (docs/cluster.md).

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use rookery_config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "rookery", version, about = "Rookery XMPP server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (edge and router in one process).
    Serve(ServeArgs),
    /// Cluster mode: terminate client connections and forward stanzas to the routers.
    Edge {
        #[command(flatten)]
        common: Common,
    },
    /// Cluster mode: apply XMPP rules for the edges, sessions in Redis ([cluster]).
    Router {
        #[command(flatten)]
        common: Common,
    },
    /// Manage accounts.
    User {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Validate a configuration file and the ROOKERY_* environment.
    CheckConfig {
        #[command(flatten)]
        common: Common,
        /// Print the effective configuration.
        #[arg(long)]
        print: bool,
    },
    /// Create or upgrade the database schema (ScyllaDB/Cassandra keyspace); run once per
    /// deploy, before the new version starts. Nothing to do for the embedded store.
    Migrate {
        #[command(flatten)]
        common: Common,
    },
    /// Print the table of supported specifications (docs/compliance.md).
    Compliance,
}

#[derive(Args, Clone)]
struct Common {
    /// Configuration file (TOML); also ROOKERY_CONFIG.
    #[arg(long, env = "ROOKERY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides the file; also ROOKERY_DATA_DIR).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// A domain to serve (repeatable).
    #[arg(long = "domain")]
    domains: Vec<String>,
    /// STARTTLS client listener address, or "off".
    #[arg(long)]
    c2s: Option<String>,
    /// Direct-TLS client listener address, or "off".
    #[arg(long)]
    c2s_tls: Option<String>,
    /// Admin API / health listener address, or "off".
    #[arg(long)]
    http: Option<String>,
    /// PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow XEP-0077 in-band registration.
    #[arg(long)]
    allow_registration: bool,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account.
    Add {
        jid: String,
        #[arg(long)]
        password: String,
    },
    /// Change an account's password.
    Passwd {
        jid: String,
        #[arg(long)]
        password: String,
    },
    /// Delete an account and all its data.
    Del { jid: String },
    /// List accounts (of one domain, or all served domains).
    List { domain: Option<String> },
    /// Delete a user's archived messages (XEP-0313), all or only older ones.
    PurgeArchive {
        jid: String,
        /// Keep messages from the last N days.
        #[arg(long)]
        older_than_days: Option<u32>,
    },
}

fn listener(v: &str, flag: &str) -> anyhow::Result<Option<SocketAddr>> {
    if v.is_empty() || v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse().map(Some).with_context(|| format!("--{flag} {v}: expected an address like 0.0.0.0:5222, or off"))
}

fn load(common: &Common) -> anyhow::Result<Config> {
    let mut cfg = Config::load(common.config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(d) = &common.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

fn init_logging(cfg: &Config) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // The store's own progress messages are noise at info level.
    let default = format!("{},fjall=warn,lsm_tree=warn", cfg.log.level);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a person at a terminal: in journald, files and pipes the escape
    // codes are noise that breaks grep.
    let ansi = std::io::stderr().is_terminal();
    // A log line that cannot be written is dropped. Reporting it would go through
    // `eprintln!`, which panics when stderr is gone (a closed pipe) and would take down
    // the task that logged, e.g. the one that turns SIGTERM into a shutdown.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    match cfg.log.format {
        rookery_config::LogFormat::Json => b.json().init(),
        rookery_config::LogFormat::Text => b.init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = load(&args.common)?;
    // What `rookery user` will see: the file and the environment, without serve's flags.
    let user_cfg = cfg.clone();
    if !args.domains.is_empty() {
        cfg.domains = args.domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    }
    if let Some(v) = &args.c2s {
        cfg.listen.c2s = listener(v, "c2s")?;
    }
    if let Some(v) = &args.c2s_tls {
        cfg.listen.c2s_tls = listener(v, "c2s-tls")?;
    }
    if let Some(v) = &args.http {
        cfg.listen.http = listener(v, "http")?;
    }
    if args.tls_cert.is_some() {
        cfg.tls.cert = args.tls_cert.clone();
        cfg.tls.key = args.tls_key.clone();
    }
    if args.allow_registration {
        cfg.registration.allow = true;
    }
    cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    init_logging(&cfg);
    let signals = StopSignals::register();
    let mut server = rookery::start(cfg.clone()).await?;
    let domains = cfg.domains.join(", ");
    eprintln!("rookery is serving {domains}");
    if let Some(a) = server.c2s {
        eprintln!("  c2s (STARTTLS)   {a}");
    }
    if let Some(a) = server.c2s_tls {
        eprintln!("  c2s (direct TLS) {a}");
    }
    if let Some(a) = server.http {
        eprintln!("  admin API/health http://{a}");
    }
    eprintln!("  data             {}", cfg.data_dir.display());
    if !has_accounts(&server, &cfg).await {
        eprintln!("{}", add_user_hint(&args.common, &cfg, &user_cfg, server.http));
    }
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!(event = "shutdown_requested");
        let _ = stop.send(true);
    });
    server.wait().await;
    tracing::info!(event = "stopped");
    Ok(())
}

/// Whether any served domain has an account. A store error counts as none: the hint it
/// leads to is harmless.
async fn has_accounts(server: &rookery::Server, cfg: &Config) -> bool {
    let accounts = &server.router.stores().accounts;
    for domain in &cfg.domains {
        if accounts.list(domain).await.is_ok_and(|users| !users.is_empty()) {
            return true;
        }
    }
    false
}

/// The command that creates a first account on this running server, spelt so that it
/// works when pasted into another terminal: this binary, the same config file and the data
/// directory (where the admin token is) as absolute paths, and the admin API's address when `rookery user`
/// would not find it from the config (a `--http` flag, port 0).
fn add_user_hint(common: &Common, cfg: &Config, user_cfg: &Config, http: Option<SocketAddr>) -> String {
    let loopback =
        |a: SocketAddr| if a.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], a.port())) } else { a };
    let mut cmd = String::new();
    if let Some(http) = http.map(loopback)
        && user_cfg.listen.http.map(loopback) != Some(http)
    {
        cmd.push_str(&format!("ROOKERY_ADMIN_URL=http://{http} "));
    }
    cmd.push_str(&sh_quote(&own_command()));
    cmd.push_str(" user");
    if let Some(config) = &common.config {
        cmd.push_str(&format!(" --config {}", sh_quote(&absolute(config))));
    }
    // Always, and absolute: the admin token is found through it, from any directory and
    // whether the data directory came from a flag, the file or the environment.
    cmd.push_str(&format!(" --data-dir {}", sh_quote(&absolute(&cfg.data_dir))));
    let domain = cfg.domains.first().map(String::as_str).unwrap_or("localhost");
    cmd.push_str(&format!(" add alice@{domain} --password secret"));
    if http.is_some() {
        format!("no accounts yet; add one (in another terminal): {cmd}")
    } else {
        format!("no accounts yet; the admin API is off, so stop the server and add one with: {cmd}")
    }
}

/// How to run this binary again: the name it was found under on `PATH`, otherwise its
/// absolute path (`cargo run` starts `target/debug/rookery`, which is not on `PATH`).
fn own_command() -> String {
    match std::env::args_os().next() {
        Some(arg0) if !arg0.is_empty() && !arg0.to_string_lossy().contains('/') => arg0.to_string_lossy().into_owned(),
        _ => std::env::current_exe().map_or_else(|_| "rookery".to_owned(), |p| p.display().to_string()),
    }
}

fn absolute(p: &std::path::Path) -> String {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

/// Quotes `s` for a POSIX shell when it holds anything but plainly safe characters.
fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Runs `rookery edge` or `rookery router` until SIGTERM/SIGINT.
async fn cluster_role(common: Common, edge: bool) -> anyhow::Result<()> {
    let cfg = load(&common)?;
    cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    init_logging(&cfg);
    let signals = StopSignals::register();
    let mut process = if edge {
        rookery::cluster::start_edge(cfg.clone()).await?
    } else {
        rookery::cluster::start_router(cfg.clone()).await?
    };
    let role = if edge { "edge" } else { "router" };
    eprintln!("rookery {role} {} is running", cfg.cluster.node_id);
    if let Some(a) = process.c2s {
        eprintln!("  c2s (STARTTLS)   {a}");
    }
    if let Some(a) = process.c2s_tls {
        eprintln!("  c2s (direct TLS) {a}");
    }
    if let Some(a) = process.grpc {
        eprintln!("  gRPC (edges)     {a}");
    }
    if let Some(a) = process.http {
        eprintln!("  http             http://{a}");
    }
    let stop = process.shutdown_handle();
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!(event = "shutdown_requested");
        let _ = stop.send(true);
    });
    process.wait().await;
    tracing::info!(event = "stopped", role);
    Ok(())
}

/// SIGTERM or Ctrl-C, registered when this is created: a signal that arrives while the
/// server is still starting (or printing its banner) is kept, not left to its default
/// action, which would end the process without a graceful shutdown.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn register() -> Self {
        StopSignals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some(mut term) = self.term {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs a user command against the running server's admin API, or, when nothing
/// listens, directly against the data directory.
async fn user(common: Common, cmd: UserCmd) -> anyhow::Result<()> {
    let cfg = load(&common)?;
    let url = std::env::var("ROOKERY_ADMIN_URL").ok();
    let addr: Option<SocketAddr> = match url {
        Some(u) => Some(
            u.trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .with_context(|| format!("ROOKERY_ADMIN_URL={u}: expected http://HOST:PORT"))?,
        ),
        None => cfg
            .listen
            .http
            .map(|a| if a.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], a.port())) } else { a }),
    };
    let token = match std::env::var("ROOKERY_ADMIN_TOKEN") {
        Ok(t) => Some(t),
        Err(_) => std::fs::read_to_string(cfg.admin_token_path()).ok().map(|t| t.trim().to_owned()),
    };
    let (method, path, body) = match &cmd {
        UserCmd::Add { jid, password } => {
            ("POST", "/admin/users".to_string(), Some(serde_json::json!({ "jid": jid, "password": password })))
        }
        UserCmd::Passwd { jid, password } => {
            ("PUT", format!("/admin/users/{}/password", encode(jid)), Some(serde_json::json!({ "password": password })))
        }
        UserCmd::Del { jid } => ("DELETE", format!("/admin/users/{}", encode(jid)), None),
        UserCmd::PurgeArchive { jid, older_than_days } => (
            "DELETE",
            match older_than_days {
                Some(d) => format!("/admin/users/{}/archive?older_than_days={d}", encode(jid)),
                None => format!("/admin/users/{}/archive", encode(jid)),
            },
            None,
        ),
        UserCmd::List { domain } => (
            "GET",
            match domain {
                Some(d) => format!("/admin/users?domain={}", encode(d)),
                None => "/admin/users".to_string(),
            },
            None,
        ),
    };
    if let (Some(addr), Some(token)) = (addr, token.as_deref()) {
        match rookery::admin::call(addr, token, method, &path, body).await {
            Ok((status, json)) => return report(&cmd, status, &json),
            Err(rookery::admin::CallError::NotRunning) => {}
            Err(rookery::admin::CallError::Other(e)) => bail!(e),
        }
    }
    offline_user(&cfg, cmd).await
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn report(cmd: &UserCmd, status: u16, json: &serde_json::Value) -> anyhow::Result<()> {
    let msg = json.get("error").and_then(|e| e.as_str()).unwrap_or("");
    match (cmd, status) {
        (UserCmd::Add { jid, .. }, 201) => println!("created {jid}"),
        (UserCmd::Passwd { jid, .. }, 204) => println!("password of {jid} changed"),
        (UserCmd::Del { jid }, 204) => println!("deleted {jid}"),
        (UserCmd::PurgeArchive { jid, .. }, 200) => {
            println!("removed {} archived messages of {jid}", json.get("removed").and_then(|n| n.as_u64()).unwrap_or(0))
        }
        (UserCmd::List { .. }, 200) => {
            for u in json.get("users").and_then(|u| u.as_array()).into_iter().flatten() {
                println!("{}", u.as_str().unwrap_or_default());
            }
        }
        (_, 401) => bail!(
            "the admin API refused the token: set ROOKERY_ADMIN_TOKEN or point --data-dir at the server's data directory"
        ),
        (_, s) => bail!("{msg} (HTTP {s})"),
    }
    Ok(())
}

/// The same operations on a stopped server's store.
async fn offline_user(cfg: &Config, cmd: UserCmd) -> anyhow::Result<()> {
    let stores = rookery::stores::open_stores(cfg).await?;
    let parse = |jid: &str| -> anyhow::Result<rookery_jid::BareJid> {
        let j = rookery_jid::BareJid::parse(jid).map_err(|e| anyhow::anyhow!("invalid JID {jid}: {e}"))?;
        if j.node().is_none() {
            bail!("{jid} has no user part (expected user@domain)");
        }
        if !cfg.domains.iter().any(|d| d == j.domain()) {
            bail!("{} is not a served domain (configured: {})", j.domain(), cfg.domains.join(", "));
        }
        Ok(j)
    };
    // The operator is trusted: only an empty password is refused here
    // (registration.min_password_len applies to in-band registration).
    let check = |p: &str| -> anyhow::Result<()> {
        if p.is_empty() {
            bail!("the password must not be empty");
        }
        Ok(())
    };
    match cmd {
        UserCmd::Add { jid, password } => {
            let j = parse(&jid)?;
            check(&password)?;
            if !rookery_modules::create_account(&stores, &j, &password).await? {
                bail!("{j} already exists");
            }
            println!("created {j}");
        }
        UserCmd::Passwd { jid, password } => {
            let j = parse(&jid)?;
            check(&password)?;
            if !rookery_modules::set_password(&stores, &j, &password).await? {
                bail!("{j} does not exist");
            }
            println!("password of {j} changed");
        }
        UserCmd::Del { jid } => {
            let j = parse(&jid)?;
            if !stores.delete_user(&j).await? {
                bail!("{j} does not exist");
            }
            println!("deleted {j}");
        }
        UserCmd::PurgeArchive { jid, older_than_days } => {
            let j = parse(&jid)?;
            let before = rookery::retention::purge_bound(older_than_days);
            let n = stores.archive.remove_before(&j, before).await?;
            println!("removed {n} archived messages of {j}");
        }
        UserCmd::List { domain } => {
            let domains = domain.map(|d| vec![d]).unwrap_or_else(|| cfg.domains.clone());
            for d in domains {
                for u in stores.accounts.list(&d).await? {
                    println!("{u}@{d}");
                }
            }
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let res: anyhow::Result<()> = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(args) => serve(args).await,
            Cmd::Edge { common } => cluster_role(common, true).await,
            Cmd::Router { common } => cluster_role(common, false).await,
            Cmd::User { common, cmd } => user(common, cmd).await,
            Cmd::CheckConfig { common, print } => {
                let cfg = load(&common)?;
                if print {
                    print!("{}", cfg.to_toml_string());
                }
                eprintln!("configuration is valid");
                Ok(())
            }
            Cmd::Migrate { common } => {
                let cfg = load(&common)?;
                init_logging(&cfg);
                println!("{}", rookery::stores::migrate(&cfg).await?);
                Ok(())
            }
            Cmd::Compliance => {
                print!("{}", rookery::compliance()?);
                Ok(())
            }
        }
    });
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
