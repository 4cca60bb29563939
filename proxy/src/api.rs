//! The proxy's HTTP API on axum/hyper: `/v1/kv/{key}` (checked against the limits, then handed
//! to `forward.rs`), the proxy's own `GET /v1/status`, its health checks `GET
//! /v1/health/{live,ready}` and `GET /metrics`. Every error is a JSON
//! [`ErrorBody`](baton_common::api::ErrorBody), as the replicas answer.
//!
//! Every request first passes `baton_runtime::auth::guard` with [`policy`] (DESIGN §9): a
//! bearer token with the `read` role for GETs (keys, status, metrics, and anything unknown,
//! which then gets its 404), `write` for PUT and DELETE of keys; health checks are open. 401
//! without a token or with an unknown one, 403 with too small a role; the proxy's own limits
//! (413, 405, 400) apply after it. In insecure mode nothing is checked.

use crate::forward::{self, Outgoing, MIN_EPOCH};
use crate::shared::Shared;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use baton_common::api::ErrorCode;
use baton_runtime::auth::{Auth, Need, Policy, Role};
use baton_runtime::body::BodyError;
use std::sync::Arc;
use std::time::Instant;

type S = State<Arc<Shared>>;

/// The router of one proxy: every route and the 404 fallback behind the guard.
pub fn router(sh: Arc<Shared>, auth: Arc<Auth>) -> Router {
    let policy: Policy = Arc::new(policy);
    Router::new()
        .route("/v1/kv/{*key}", any(kv))
        .route("/v1/kv/", any(empty_key))
        .route("/v1/status", get(status))
        .route("/v1/health/live", get(live))
        .route("/v1/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(sh)
        .layer(axum::middleware::from_fn_with_state(
            (auth, policy),
            baton_runtime::auth::guard,
        ))
}

/// What a request needs, from its method and path (see the file comment). No node
/// certificate stands in for a token here: the proxy's clients are applications.
pub fn policy(method: &Method, path: &str) -> Need {
    if path.starts_with("/v1/health/") {
        return Need::Open;
    }
    if path.starts_with("/v1/kv/") && !matches!(*method, Method::GET | Method::HEAD) {
        return Need::Role(Role::Write, vec![]);
    }
    // Reads of keys, /v1/status, /metrics, and GETs of paths that are none of these (404).
    if matches!(*method, Method::GET | Method::HEAD) {
        return Need::Role(Role::Read, vec![]);
    }
    // Anything else names no route today: fail closed, so a route added later is not open
    // to the read role by accident.
    Need::Role(Role::Admin, vec![])
}

async fn not_found(State(sh): S, uri: Uri) -> Response {
    forward::reject(
        &sh,
        ErrorCode::NotFound,
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn empty_key(State(sh): S) -> Response {
    forward::reject(
        &sh,
        ErrorCode::BadRequest,
        "the key is empty: use /v1/kv/{key}",
    )
}

fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn kv(State(sh): S, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let limits = &sh.cfg.limits;
    let raw = parts.uri.path().strip_prefix("/v1/kv/").unwrap_or_default();
    let key_len = percent_encoding::percent_decode_str(raw).count();
    if key_len == 0 {
        return forward::reject(&sh, ErrorCode::BadRequest, "the key is empty");
    }
    if key_len > limits.key_bytes_max {
        return forward::reject(
            &sh,
            ErrorCode::TooLarge,
            format!(
                "the key is {key_len} bytes; the limit is {} (limits.key_bytes_max)",
                limits.key_bytes_max
            ),
        );
    }
    if !matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    ) {
        let mut r = forward::reject(
            &sh,
            ErrorCode::BadRequest,
            format!(
                "method {} is not supported on /v1/kv; use GET, PUT or DELETE",
                parts.method
            ),
        );
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return r;
    }
    let client_min_epoch = match parts.headers.get(MIN_EPOCH) {
        None => 0,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(e) => e,
            None => {
                return forward::reject(
                    &sh,
                    ErrorCode::BadRequest,
                    "Baton-Min-Epoch must be an unsigned integer",
                )
            }
        },
    };
    let max = limits.body_bytes_max;
    let len = baton_runtime::body::content_length(&parts.headers);
    let body = match baton_runtime::body::read_limited(body, len, max).await {
        Ok(b) => b,
        Err(BodyError::TooLarge { announced }) => {
            let msg = match announced {
                Some(len) => {
                    format!("the body is {len} bytes; the limit is {max} (limits.body_bytes_max)")
                }
                None => format!("the body exceeds {max} bytes (limits.body_bytes_max)"),
            };
            return baton_runtime::body::closing(forward::reject(&sh, ErrorCode::TooLarge, msg));
        }
        Err(BodyError::Read(msg)) => {
            return forward::reject(
                &sh,
                ErrorCode::BadRequest,
                format!("cannot read the request body: {msg}"),
            );
        }
    };
    let any_read = matches!(parts.method, Method::GET | Method::HEAD)
        && query_param(&parts.uri, "consistency") == Some("any");
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let out = Outgoing {
        method: parts.method,
        path_and_query,
        headers: forward::end_to_end(&parts.headers, &[MIN_EPOCH]),
        body,
        any_read,
        client_min_epoch,
    };
    forward::forward(&sh, out).await
}

/// 200 while the process serves (an orchestrator's liveness check; open).
async fn live() -> Response {
    axum::Json(serde_json::json!({ "live": true })).into_response()
}

/// 200 once the proxy knows a leader to send writes to, else 503 with what it lacks (a load
/// balancer's or orchestrator's readiness check; open). A failover in progress makes it 503
/// for its duration, while requests are held rather than refused.
async fn ready(State(sh): S) -> Response {
    let v = sh.view.borrow().clone();
    let leader = v.leader.as_ref().map(|l| l.id.to_string());
    let reachable = sh.controllers_reachable();
    let ok = leader.is_some() && reachable > 0;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ok, "leader": leader, "epoch": v.epoch, "controllers_reachable": reachable,
    });
    (status, axum::Json(body)).into_response()
}

async fn status(State(sh): S) -> Response {
    let v = sh.view.borrow().clone();
    let now = Instant::now();
    let controllers: Vec<serde_json::Value> = sh
        .controllers
        .iter()
        .map(|c| {
            let h = c.health().clone();
            serde_json::json!({
                "url": c.url,
                "reachable": h.reachable,
                "active": h.active,
                "rev": h.rev,
                "last_answer_ms_ago": h.last_answer.map(|t| now.duration_since(t).as_millis() as u64),
                "last_error": h.last_error,
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "id": sh.cfg.id,
        "insecure": sh.cfg.insecure,
        "cluster": sh.cfg.cluster,
        "leader": v.leader.as_ref().map(|l| serde_json::json!({ "id": l.id, "url": l.url })),
        "epoch": v.epoch,
        "rev": v.rev,
        "from_active": v.from_active,
        "members": v.members,
        "leader_changes": v.leader_changes,
        "state_resets": v.state_resets,
        "controllers": controllers,
        "controllers_reachable": sh.controllers_reachable(),
        "buffered": sh.buffered(),
    }))
    .into_response()
}

async fn metrics(State(sh): S) -> Response {
    {
        let v = sh.view.borrow();
        sh.metrics.epoch.set(v.epoch as i64);
        sh.metrics.rev.set(v.rev as i64);
    }
    sh.metrics
        .controllers_reachable
        .set(sh.controllers_reachable() as i64);
    baton_runtime::metrics::response(sh.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row a case: method, path, and the role needed (`None`: open).
    #[test]
    fn the_policy_asks_read_for_reads_write_for_changes_and_admin_for_the_unknown() {
        let rows: &[(Method, &str, Option<Role>)] = &[
            (Method::GET, "/v1/kv/k", Some(Role::Read)),
            (Method::HEAD, "/v1/kv/k", Some(Role::Read)),
            (Method::GET, "/v1/kv/a/b", Some(Role::Read)),
            (Method::PUT, "/v1/kv/k", Some(Role::Write)),
            (Method::DELETE, "/v1/kv/k", Some(Role::Write)),
            (Method::POST, "/v1/kv/k", Some(Role::Write)),
            (Method::PATCH, "/v1/kv/", Some(Role::Write)),
            (Method::GET, "/v1/status", Some(Role::Read)),
            (Method::GET, "/metrics", Some(Role::Read)),
            (Method::GET, "/v1/health/live", None),
            (Method::GET, "/v1/nothing", Some(Role::Read)),
            // No such route: fail closed.
            (Method::PUT, "/v1/status", Some(Role::Admin)),
            (Method::PUT, "/v1/kvx", Some(Role::Admin)),
            (Method::POST, "/v1/anything", Some(Role::Admin)),
        ];
        for (m, path, want) in rows {
            let got = match policy(m, path) {
                Need::Open => None,
                Need::Role(r, names) => {
                    assert!(names.is_empty(), "{m} {path}: {names:?}");
                    Some(r)
                }
                Need::Node(n) => panic!("{m} {path}: a node-only route {n:?}"),
            };
            assert_eq!(got, *want, "{m} {path}");
        }
    }
}
