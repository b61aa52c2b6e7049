//! The admin HTTP API (axum) on `admin.listen`: `GET /health`,
//! `GET /status`, `GET /metrics`, `POST /failover`, `POST /reload`. When
//! `admin.token` is set, POST endpoints need `Authorization: Bearer
//! <token>`; the GET endpoints stay open (they reveal no secret).

pub mod client;
mod status;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::state::State;

pub use status::{NodeStatus, PoolStatus, RuleStatus, Status};

/// What the handlers share.
#[derive(Clone)]
pub struct Admin {
    /// The proxy's state.
    pub state: Arc<State>,
    /// The file `POST /reload` re-reads.
    pub config_path: Option<PathBuf>,
}

/// Serves the API on `listener` until the proxy shuts down.
pub async fn serve(listener: TcpListener, admin: Admin) {
    let shutdown = admin.state.shutdown.clone();
    let app = Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/reload", post(reload))
        .route("/failover", post(failover))
        .route("/explain", post(explain))
        .with_state(admin);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin API stopped");
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (status, axum::Json(value)).into_response()
}

async fn health(AxumState(admin): AxumState<Admin>) -> Response {
    let topology = admin.state.topology.load();
    let primary = topology.primary();
    if primary.health.is_up() {
        json(
            StatusCode::OK,
            serde_json::json!({ "status": "ok", "primary": &*primary.name }),
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "no primary", "primary": &*primary.name }),
        )
    }
}

async fn status(AxumState(admin): AxumState<Admin>) -> Response {
    (StatusCode::OK, axum::Json(Status::collect(&admin.state))).into_response()
}

async fn metrics(AxumState(admin): AxumState<Admin>) -> Response {
    let counts = admin.state.pools.counts();
    for node in &admin.state.topology.load().nodes {
        let c = counts.get(&node.name).copied().unwrap_or_default();
        node.metrics.set_pool(c.active, c.idle);
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        admin.state.metrics.encode(),
    )
        .into_response()
}

/// Checks the bearer token of a POST; `None` when allowed.
fn refuse_unauthorized(admin: &Admin, headers: &HeaderMap) -> Option<Response> {
    let config = admin.state.config.load();
    let token = config
        .admin
        .as_ref()?
        .token
        .as_deref()
        .filter(|t| !t.is_empty())?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if crate::auth::client::constant_time_eq(given.as_bytes(), token.as_bytes()) {
        None
    } else {
        Some(json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "missing or wrong bearer token" }),
        ))
    }
}

/// The JSON body of an authorized POST, or the answer refusing it (401
/// for the token, 400 for the body).
fn authorized_body<T: serde::de::DeserializeOwned>(
    admin: &Admin,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Box<Response>> {
    if let Some(refusal) = refuse_unauthorized(admin, headers) {
        return Err(Box::new(refusal));
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": format!("bad request body: {e}") }),
        ))
    })
}

async fn reload(AxumState(admin): AxumState<Admin>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refuse_unauthorized(&admin, &headers) {
        return refusal;
    }
    let Some(path) = &admin.config_path else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "this proxy was not started from a file" }),
        );
    };
    match admin.state.reload(path) {
        Ok(()) => json(StatusCode::OK, serde_json::json!({ "result": "ok" })),
        Err(e) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "result": "error", "error": e.to_string() }),
        ),
    }
}

/// Body of `POST /failover`.
/// (unknown keys are refused: a typo of `check` must not run a real
/// switchover)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    /// Node to promote; the most advanced replica when absent (force only).
    #[serde(default)]
    pub to: Option<String>,
    /// The old primary is gone: promote without its final position.
    #[serde(default)]
    pub force: bool,
    /// Drill: check and describe, change nothing.
    #[serde(default)]
    pub check: bool,
}

async fn failover(
    AxumState(admin): AxumState<Admin>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: FailoverRequest = match authorized_body(&admin, &headers, &body) {
        Ok(r) => r,
        Err(refusal) => return *refusal,
    };
    let report =
        crate::failover::run(&admin.state, &request.to, request.force, request.check).await;
    let code = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    (code, axum::Json(report)).into_response()
}

/// Body of `POST /explain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The statement (or several, as one query string).
    pub sql: String,
    /// The session's user, for the route rule it would match.
    #[serde(default)]
    pub user: Option<String>,
    /// The session's database, for the route rule it would match.
    #[serde(default)]
    pub database: Option<String>,
}

/// The route the running proxy gives a statement, and the facts behind it.
async fn explain(
    AxumState(admin): AxumState<Admin>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: ExplainRequest = match authorized_body(&admin, &headers, &body) {
        Ok(r) => r,
        Err(refusal) => return *refusal,
    };
    let mut explanation = admin.state.router.load().explain(&request.sql);
    explanation.rule = explain_rule(&admin.state.config.load(), &request);
    (StatusCode::OK, axum::Json(explanation)).into_response()
}

/// The route rule a session of the request's user and database matches.
pub fn explain_rule(config: &crate::config::Config, request: &ExplainRequest) -> Option<String> {
    let user = request.user.as_deref()?;
    let database = request.database.as_deref().unwrap_or(user);
    crate::config::first_match(&config.routing.rules, user, database, "").map(|r| r.name.clone())
}
