//! `rookery-load provision`: creates the scenario's accounts before a run, with bounded
//! concurrency, either through Rookery's admin API (`POST /admin/users`, docs/admin-api.md)
//! or through XEP-0077 in-band registration (§3.1) on servers that allow it.
//!
//! Owns account creation only; existing accounts count as success, so provisioning can be
//! repeated. It must not run load. With `--worker I/N` only that worker's share of the pool
//! is created (the same partition as `run`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::client::{self, ClientSettings, Registration};
use crate::http::{HttpClient, HttpError, Url};
use crate::scenario::{ProvisionMethod, Scenario};
use crate::users::Partition;

/// Where and how to create accounts (command line over scenario file).
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    pub method: ProvisionMethod,
    /// Base URL of the admin API (`http://127.0.0.1:5280`), for `admin`.
    pub admin_url: Option<String>,
    pub admin_token: Option<String>,
    pub concurrency: usize,
    pub partition: Partition,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProvisionSummary {
    pub created: u64,
    pub existed: u64,
    pub failed: u64,
    /// The first failure, for the error message.
    pub first_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("provision.admin_url is not set (or pass --admin-url), e.g. http://127.0.0.1:5280")]
    NoUrl,
    #[error("no admin token: pass --admin-token, set ROOKERY_ADMIN_TOKEN, or set provision.admin_token_file")]
    NoToken,
    #[error("cannot read the admin token file {path}: {error}")]
    TokenFile { path: String, error: std::io::Error },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the admin API at {0} refused the token (HTTP 401)")]
    Unauthorized(String),
    #[error("in-band registration is refused by the server: {0}")]
    Refused(String),
    #[error("{0}")]
    Setup(String),
}

/// The admin token: explicit value, else the scenario's token, else its token file.
pub fn resolve_token(scn: &Scenario, cli: Option<String>) -> Result<Option<String>, ProvisionError> {
    if let Some(t) = cli.or_else(|| scn.file.provision.admin_token.clone()) {
        return Ok(Some(t.trim().to_owned()));
    }
    match &scn.file.provision.admin_token_file {
        Some(p) => {
            let path = if p.is_absolute() { p.clone() } else { scn.dir.join(p) };
            let t = std::fs::read_to_string(&path)
                .map_err(|error| ProvisionError::TokenFile { path: path.display().to_string(), error })?;
            Ok(Some(t.trim().to_owned()))
        }
        None => Ok(None),
    }
}

/// The users endpoint for a base URL: `…/admin/users`, or `…/users` when the URL already
/// ends in `/admin`.
pub fn users_path(url: &Url) -> String {
    if url.path.ends_with("/admin") { format!("{}/users", url.path) } else { format!("{}/admin/users", url.path) }
}

/// Creates every account of the pool that this worker owns.
pub async fn provision(
    scn: &Scenario,
    settings: Option<Arc<ClientSettings>>,
    opts: &ProvisionOptions,
) -> Result<ProvisionSummary, ProvisionError> {
    let total = scn.pool.len();
    let indexes: Arc<Vec<u64>> = Arc::new(opts.partition.units(total).collect());
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicU64::new(0));
    let existed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let fatal: Arc<std::sync::Mutex<Option<ProvisionError>>> = Arc::default();
    let pool = Arc::new(scn.pool.clone());

    let mut tasks = tokio::task::JoinSet::new();
    match opts.method {
        ProvisionMethod::Admin => {
            let url = Url::parse(opts.admin_url.as_deref().ok_or(ProvisionError::NoUrl)?)?;
            let token = opts.admin_token.clone().ok_or(ProvisionError::NoToken)?;
            let path = users_path(&url);
            for _ in 0..opts.concurrency.max(1) {
                let mut http = HttpClient::new(&url, Duration::from_secs(30)).await?;
                let (indexes, next, stop, pool, path, token) =
                    (indexes.clone(), next.clone(), stop.clone(), pool.clone(), path.clone(), token.clone());
                let (created, existed, failed, first_error, fatal) =
                    (created.clone(), existed.clone(), failed.clone(), first_error.clone(), fatal.clone());
                let base = format!("http://{}:{}", url.host, url.port);
                tasks.spawn(async move {
                    let auth = format!("Bearer {token}");
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(acct) = indexes.get(i).and_then(|u| pool.get(*u)) else { break };
                        let body = serde_json::json!({ "jid": acct.jid, "password": acct.password }).to_string();
                        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                        match http.request("POST", &path, &headers, Some(body.as_bytes())).await {
                            Ok((201, _)) => {
                                created.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((409, _)) => {
                                existed.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((401, _)) => {
                                stop.store(true, Ordering::Relaxed);
                                *fatal.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(ProvisionError::Unauthorized(base.clone()));
                            }
                            Ok((status, body)) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let msg = format!("{}: HTTP {status} {}", acct.jid, String::from_utf8_lossy(&body));
                                first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(msg);
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                first_error
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get_or_insert(format!("{}: {e}", acct.jid));
                            }
                        }
                    }
                });
            }
        }
        ProvisionMethod::Ibr => {
            let settings =
                settings.ok_or_else(|| ProvisionError::Setup("no client settings for in-band registration".into()))?;
            for _ in 0..opts.concurrency.max(1) {
                let (indexes, next, stop, pool, settings) =
                    (indexes.clone(), next.clone(), stop.clone(), pool.clone(), settings.clone());
                let (created, existed, failed, first_error, fatal) =
                    (created.clone(), existed.clone(), failed.clone(), first_error.clone(), fatal.clone());
                tasks.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(acct) = indexes.get(i).and_then(|u| pool.get(*u)) else { break };
                        match client::register(&settings, &acct).await {
                            Ok(Registration::Created) => {
                                created.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Registration::Exists) => {
                                existed.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Registration::Refused(cond))
                                if matches!(
                                    cond.as_str(),
                                    "<not-allowed/>"
                                        | "<forbidden/>"
                                        | "<service-unavailable/>"
                                        | "<feature-not-implemented/>"
                                ) =>
                            {
                                stop.store(true, Ordering::Relaxed);
                                *fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(ProvisionError::Refused(cond));
                            }
                            Ok(Registration::Refused(cond)) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                first_error
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get_or_insert(format!("{}: {cond}", acct.jid));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                first_error
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get_or_insert(format!("{}: {e}", acct.jid));
                            }
                        }
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    if let Some(e) = fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    let first_error = first_error.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(ProvisionSummary {
        created: created.load(Ordering::Relaxed),
        existed: existed.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        first_error,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn users_endpoint() {
        assert_eq!(users_path(&Url::parse("http://127.0.0.1:5280").unwrap()), "/admin/users");
        assert_eq!(users_path(&Url::parse("http://h/admin").unwrap()), "/admin/users");
        assert_eq!(users_path(&Url::parse("http://h/proxy/").unwrap()), "/proxy/admin/users");
    }
}
