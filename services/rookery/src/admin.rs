//! The local admin HTTP API (docs/admin-api.md) and health endpoints. Bound to loopback by
//! default; every `/admin` call needs `Authorization: Bearer <token>` where the token is
//! the content of the admin token file in the data directory.
//!
//! Also a small HTTP/1.1 client used by `rookery user …` to call a running server.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use rookery_core::ServerApi;
use rookery_jid::BareJid;
use rookery_router::LocalRouter;
use rookery_storage::Stores;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone)]
pub struct AdminState {
    pub stores: Stores,
    pub router: Arc<LocalRouter>,
    pub token: String,
    pub min_password_len: usize,
    pub domains: Vec<String>,
    pub ready: Readiness,
    /// Counters of the process's backends (e.g. Redis requests), merged into `/admin/stats`.
    pub extra_stats: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
}

/// Whether the process can do its job now (its dependencies answer): `/health/ready`.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Readiness of a process without outside dependencies.
pub fn always_ready() -> Readiness {
    Arc::new(|| true)
}

async fn ready(State(ready): State<Readiness>) -> Response {
    if ready() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// The health endpoints alone, for processes without an admin API (edges).
pub fn health_app(r: Readiness) -> Router {
    Router::new().route("/health/live", get(|| async { "ok" })).route("/health/ready", get(ready)).with_state(r)
}

/// Serves `app` until shutdown.
pub async fn serve_app(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = res {
        tracing::warn!(event = "http_failed", error = %e);
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NewUser {
    pub jid: String,
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NewPassword {
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub domain: Option<String>,
}

/// An error answer: status and a message for the operator.
pub struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

fn err(status: StatusCode, msg: impl Into<String>) -> Fail {
    Fail(status, msg.into())
}

/// Compares in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(st: &AdminState, headers: &HeaderMap) -> Result<(), Fail> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.as_bytes(), st.token.as_bytes()) {
        Ok(())
    } else {
        Err(err(StatusCode::UNAUTHORIZED, "missing or wrong admin token"))
    }
}

fn user_jid(st: &AdminState, jid: &str) -> Result<BareJid, Fail> {
    let j = BareJid::parse(jid).map_err(|e| err(StatusCode::BAD_REQUEST, format!("invalid JID {jid}: {e}")))?;
    if j.node().is_none() {
        return Err(err(StatusCode::BAD_REQUEST, format!("{jid} has no user part")));
    }
    if !st.domains.iter().any(|d| d == j.domain()) {
        return Err(err(StatusCode::BAD_REQUEST, format!("{} is not a domain this server serves", j.domain())));
    }
    Ok(j)
}

/// The operator is trusted with password policy; only an empty password is refused
/// (`registration.min_password_len` applies to in-band registration).
fn check_password(_st: &AdminState, p: &str) -> Result<(), Fail> {
    if p.is_empty() {
        return Err(err(StatusCode::BAD_REQUEST, "the password must not be empty"));
    }
    Ok(())
}

type Answer = Result<Response, Fail>;

async fn add_user(State(st): State<AdminState>, headers: HeaderMap, Json(body): Json<NewUser>) -> Answer {
    authorized(&st, &headers)?;
    let jid = user_jid(&st, &body.jid)?;
    check_password(&st, &body.password)?;
    match rookery_modules::create_account(&st.stores, &jid, &body.password).await {
        Ok(true) => Ok((StatusCode::CREATED, Json(serde_json::json!({ "jid": jid.as_str() }))).into_response()),
        Ok(false) => Err(err(StatusCode::CONFLICT, format!("{jid} already exists"))),
        Err(e) => Err(err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn set_password(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(jid): Path<String>,
    Json(body): Json<NewPassword>,
) -> Answer {
    authorized(&st, &headers)?;
    let jid = user_jid(&st, &jid)?;
    check_password(&st, &body.password)?;
    match rookery_modules::set_password(&st.stores, &jid, &body.password).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(err(StatusCode::NOT_FOUND, format!("{jid} does not exist"))),
        Err(e) => Err(err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn delete_user(State(st): State<AdminState>, headers: HeaderMap, Path(jid): Path<String>) -> Answer {
    authorized(&st, &headers)?;
    let jid = user_jid(&st, &jid)?;
    match st.stores.delete_user(&jid).await {
        Ok(true) => {
            st.router.account_deleted(&jid).await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Ok(false) => Err(err(StatusCode::NOT_FOUND, format!("{jid} does not exist"))),
        Err(e) => Err(err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

#[derive(serde::Deserialize)]
struct PurgeQuery {
    older_than_days: Option<u32>,
}

/// Deletes a user's archived messages (all, or those older than `older_than_days`); the
/// archiving preferences stay.
async fn purge_archive(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(jid): Path<String>,
    Query(q): Query<PurgeQuery>,
) -> Answer {
    authorized(&st, &headers)?;
    let jid = user_jid(&st, &jid)?;
    let before = crate::retention::purge_bound(q.older_than_days);
    match st.stores.archive.remove_before(&jid, before).await {
        Ok(n) => Ok(Json(serde_json::json!({ "removed": n })).into_response()),
        Err(e) => Err(err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn list_users(State(st): State<AdminState>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Answer {
    authorized(&st, &headers)?;
    let domains: Vec<String> = match q.domain {
        Some(d) => vec![d],
        None => st.domains.clone(),
    };
    let mut users = Vec::new();
    for d in domains {
        let list =
            st.stores.accounts.list(&d).await.map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        users.extend(list.into_iter().map(|u| format!("{u}@{d}")));
    }
    Ok(Json(serde_json::json!({ "users": users })).into_response())
}

async fn stats(State(st): State<AdminState>, headers: HeaderMap) -> Answer {
    authorized(&st, &headers)?;
    let (hook_errors, handler_panics) = st.router.hook_failures();
    let mut body = serde_json::json!({
        "sessions": st.router.registry().count().await,
        "uptime_secs": st.router.uptime_secs(),
        "module_handler_errors": hook_errors,
        "module_handler_panics": handler_panics,
    });
    if let (Some(extra), Some(obj)) = (&st.extra_stats, body.as_object_mut())
        && let serde_json::Value::Object(more) = extra()
    {
        obj.extend(more);
    }
    Ok(Json(body).into_response())
}

pub fn app(st: AdminState) -> Router {
    let health = health_app(st.ready.clone());
    Router::new()
        .route("/admin/users", get(list_users).post(add_user))
        .route("/admin/users/{jid}", axum::routing::delete(delete_user))
        .route("/admin/users/{jid}/password", put(set_password))
        .route("/admin/users/{jid}/archive", axum::routing::delete(purge_archive))
        .route("/admin/stats", get(stats))
        .with_state(st)
        .merge(health)
}

pub async fn serve(listener: TcpListener, st: AdminState, shutdown: watch::Receiver<bool>) {
    serve_app(listener, app(st), shutdown).await;
}

/// Outcome of an admin call made by the CLI.
#[derive(Debug)]
pub enum CallError {
    /// Nothing listens there: the server is not running.
    NotRunning,
    Other(String),
}

/// A minimal HTTP/1.1 request to the local admin API (the CLI needs nothing more).
pub async fn call(
    addr: std::net::SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value), CallError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(CallError::NotRunning),
        Err(e) => return Err(CallError::Other(format!("cannot reach the admin API at {addr}: {e}"))),
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.map_err(|e| CallError::Other(e.to_string()))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(|e| CallError::Other(e.to_string()))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| CallError::Other("malformed HTTP response".into()))?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}
