//! The client HTTP API of DESIGN.md §7 on axum/hyper: `PUT/GET/DELETE /v1/kv/{key}`,
//! `GET /v1/status`, the health checks `GET /v1/health/{live,ready,leader,replica}` (open to
//! load balancers and orchestrators, like Patroni's), `GET /metrics`. Every error is a JSON [`ErrorBody`]; limits are checked
//! before anything reaches the core. Request parsing lives here; decisions live in the core.

use crate::core::{Consistency, WriteReject, WriteReq};
use crate::node::{Node, WriteError};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use baton_common::api::{ErrorBody, ErrorCode, LeaderHint};
use baton_common::clock;
use baton_common::ids::Expect;
use baton_runtime::body::BodyError;
use bytes::Bytes;
use std::sync::Arc;

/// The router for one replica (with `/v1/failpoints` in builds with fault points).
pub fn router(node: Arc<Node>) -> Router {
    let guard = (node.auth.clone(), policy(&node.cfg.cluster));
    let r = routes(node);
    #[cfg(feature = "failpoints")]
    let r = r.merge(crate::faults::router());
    guarded(r, guard)
}

/// What each request needs (DESIGN §9): keys are read with the `read` role and written with
/// `write`; the replication stream is for members of this cluster only (and its Hello must
/// match the certificate, see `repl/leader.rs`); status, rollbacks and metrics need `read`;
/// fault points (test builds) and any other request need `admin`.
pub fn policy(cluster: &str) -> baton_runtime::auth::Policy {
    use baton_runtime::auth::{Need, Role};
    let members = vec![baton_runtime::tls::cluster_name(cluster)];
    Arc::new(move |method: &Method, path: &str| {
        if path == "/v1/replicate" {
            Need::Node(members.clone())
        } else if path.starts_with("/v1/kv/") {
            match *method {
                Method::GET | Method::HEAD => Need::Role(Role::Read, vec![]),
                _ => Need::Role(Role::Write, vec![]),
            }
        } else if path.starts_with("/v1/health/") {
            Need::Open
        } else if matches!(*method, Method::GET | Method::HEAD)
            && !path.starts_with("/v1/failpoints")
        {
            Need::Role(Role::Read, vec![])
        } else {
            // Fault points (test builds), and whatever names no route today: fail closed.
            Need::Role(Role::Admin, vec![])
        }
    })
}

fn routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/kv/{*key}", any(kv))
        .route("/v1/kv/", any(empty_key))
        .route("/v1/status", get(status))
        .route("/v1/health/{check}", get(health))
        .route("/v1/replicate", axum::routing::post(replicate))
        .route("/v1/rollbacks", get(rollbacks))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::map_response_with_state(
            node.clone(),
            close_when_stopping,
        ))
        .with_state(node)
}

/// Every route behind the guard (the fault points included).
fn guarded(
    r: Router,
    guard: (Arc<baton_runtime::auth::Auth>, baton_runtime::auth::Policy),
) -> Router {
    r.layer(axum::middleware::from_fn_with_state(
        guard,
        baton_runtime::auth::guard,
    ))
}

/// While the replica stops, every reply asks the client to close its connection, so that no
/// request is sent on a connection the replica is about to close.
async fn close_when_stopping(State(node): State<Arc<Node>>, mut resp: Response) -> Response {
    if node.lock().core().is_shutting_down() {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    resp
}

/// A JSON error reply.
pub fn error(code: ErrorCode, message: impl Into<String>, leader: Option<LeaderHint>) -> Response {
    let status = StatusCode::from_u16(code.http_status()).expect("valid status");
    let body = ErrorBody {
        error: code,
        message: message.into(),
        leader,
    };
    (status, axum::Json(body)).into_response()
}

async fn not_found(uri: Uri) -> Response {
    error(
        ErrorCode::NotFound,
        format!("no such endpoint: {}", uri.path()),
        None,
    )
}

async fn empty_key() -> Response {
    error(
        ErrorCode::BadRequest,
        "the key is empty: use /v1/kv/{key}",
        None,
    )
}

/// A follower opens its replication stream: `POST /v1/replicate` upgraded to the stream protocol.
async fn replicate(State(node): State<Arc<Node>>, mut req: axum::http::Request<Body>) -> Response {
    let wants = req
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(crate::repl::wire::PROTOCOL));
    if !wants {
        return error(
            ErrorCode::BadRequest,
            format!(
                "replication needs `Upgrade: {}`",
                crate::repl::wire::PROTOCOL
            ),
            None,
        );
    }
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return error(
            ErrorCode::BadRequest,
            "this connection cannot be upgraded",
            None,
        );
    };
    // Counted before the upgrade: an upgraded stream leaves the connection cap.
    let Ok(permit) = node.repl_streams.clone().try_acquire_owned() else {
        node.metrics.repl_streams_rejected.inc();
        return error(
            ErrorCode::Overloaded,
            format!(
                "too many replication streams (limits.replication_streams_max = {})",
                node.cfg.limits.replication_streams_max
            ),
            None,
        );
    };
    let peer = req.extensions().get::<baton_runtime::tls::Peer>().cloned();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => crate::repl::leader::serve(node, io, peer).await,
            Err(e) => tracing::debug!(%e, "replication upgrade failed"),
        }
        drop(permit);
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    r.headers_mut().insert(
        axum::http::header::UPGRADE,
        HeaderValue::from_static(crate::repl::wire::PROTOCOL),
    );
    r
}

/// The rollback files of this replica (records cut from its log because they diverged from
/// the leader's, DESIGN.md G3): `[{file, epoch, from_lsn, to_lsn, bytes}]`, oldest first.
async fn rollbacks(State(node): State<Arc<Node>>) -> Response {
    let dir = node.data_dir().join("rollback");
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".rollback") else {
                continue;
            };
            // epoch-{E}-lsn-{FROM}-{TO}.{stamp}
            let parts: Vec<&str> = stem.split(['-', '.']).collect();
            let num = |i: usize| parts.get(i).and_then(|p| p.parse::<u64>().ok());
            let bytes = ent.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(serde_json::json!({
                "file": ent.path().display().to_string(),
                "epoch": num(1), "from_lsn": num(3), "to_lsn": num(4), "at_unix_ms": num(5), "bytes": bytes,
            }));
        }
    }
    out.sort_by_key(|v| v["at_unix_ms"].as_u64());
    axum::Json(out).into_response()
}

/// The health checks of DESIGN §7, for load balancers and orchestrators (no credentials: they
/// say only what role this replica plays). 200 or 503 with a small JSON body saying why:
/// - `live`: the process serves;
/// - `ready`: recovery finished and a role was applied (not fatal);
/// - `leader`: the leader holding its lease with its leader-start applied (writes go here);
/// - `replica?max_lag_records=N`: a follower streaming from its leader within N records
///   (any lag without N).
async fn health(
    State(node): State<Arc<Node>>,
    axum::extract::Path(check): axum::extract::Path<String>,
    uri: Uri,
) -> Response {
    let st = node.lock().core().status(clock::now_ms());
    let (ok, why) = match check.as_str() {
        "live" => (true, "serving".to_string()),
        "ready" => match st.health.as_str() {
            "fatal" => (false, "a fatal error stopped this replica".into()),
            "no_role" => (false, "no role applied yet".into()),
            _ => (true, format!("{:?}", st.role).to_lowercase()),
        },
        "leader" => match (st.role, st.health.as_str()) {
            (baton_common::directive::ReportedRole::Leader, "ok") => (true, "leader".into()),
            (baton_common::directive::ReportedRole::Leader, h) => {
                (false, format!("leader, but {h}"))
            }
            (r, _) => (false, format!("{r:?}").to_lowercase()),
        },
        "replica" => {
            let max = match query_param(&uri, "max_lag_records").map(str::parse::<u64>) {
                None => u64::MAX,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    return error(
                        ErrorCode::BadRequest,
                        "max_lag_records must be a number of records",
                        None,
                    )
                }
            };
            match (&st.role, &st.upstream) {
                (baton_common::directive::ReportedRole::Follower, Some(u))
                    if u.phase == "streaming" && u.records_behind <= max =>
                {
                    (
                        true,
                        format!(
                            "streaming from {}, {} records behind",
                            u.leader, u.records_behind
                        ),
                    )
                }
                (baton_common::directive::ReportedRole::Follower, Some(u)) => (
                    false,
                    format!(
                        "{} from {}, {} records behind",
                        u.phase, u.leader, u.records_behind
                    ),
                ),
                (r, _) => (false, format!("{r:?}").to_lowercase()),
            }
        }
        other => {
            return error(
                ErrorCode::NotFound,
                format!("no health check {other:?} (live, ready, leader, replica)"),
                None,
            )
        }
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "check": check,
        "ok": ok,
        "why": why,
        "id": st.id,
        "epoch": st.epoch,
    });
    (status, axum::Json(body)).into_response()
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    let mut st = node.lock().core().status(clock::now_ms());
    st.catchup = node.catchup();
    let mut v = serde_json::to_value(st).unwrap_or_default();
    // Said in every status (DESIGN §9): plain HTTP with nothing checked.
    v["insecure"] = serde_json::Value::Bool(!node.auth.is_on());
    axum::Json(v).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    node.refresh_gauges();
    let mut r = node.metrics.render().into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn kv(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limits = &node.cfg.limits;
    let raw = uri.path().strip_prefix("/v1/kv/").unwrap_or_default();
    let key: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    if key.is_empty() {
        return error(ErrorCode::BadRequest, "the key is empty", None);
    }
    if key.len() > limits.key_bytes_max {
        return error(
            ErrorCode::TooLarge,
            format!(
                "the key is {} bytes; the limit is {} (limits.key_bytes_max)",
                key.len(),
                limits.key_bytes_max
            ),
            None,
        );
    }
    if let Some(v) = headers.get("baton-min-epoch") {
        let Some(min) = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) else {
            return error(
                ErrorCode::BadRequest,
                "Baton-Min-Epoch must be an unsigned integer",
                None,
            );
        };
        let epoch = node.lock().core().epoch();
        if epoch.0 < min {
            node.heartbeat_soon();
            return error(
                ErrorCode::StaleEpoch,
                format!(
                    "this replica is at epoch {epoch}, the request requires epoch {min} or later"
                ),
                None,
            );
        }
    }
    let expect = match headers.get("if-match") {
        None => None,
        Some(v) => match v.to_str().ok().map(str::parse::<Expect>) {
            Some(Ok(e)) => Some(e),
            Some(Err(e)) => return error(ErrorCode::BadRequest, format!("If-Match: {e}"), None),
            None => return error(ErrorCode::BadRequest, "If-Match is not valid text", None),
        },
    };
    let key = Bytes::from(key);
    match method {
        Method::GET | Method::HEAD => {
            if expect.is_some() {
                return error(
                    ErrorCode::BadRequest,
                    "If-Match applies to PUT and DELETE only",
                    None,
                );
            }
            get_key(&node, &uri, key)
        }
        Method::PUT => {
            let max = limits.value_bytes_max;
            let len = baton_runtime::body::content_length(&headers);
            let value = match baton_runtime::body::read_limited(body, len, max).await {
                Ok(b) => b,
                Err(BodyError::TooLarge {
                    announced: Some(len),
                }) => return baton_runtime::body::closing(too_large_value(len, max)),
                Err(BodyError::TooLarge { announced: None }) => {
                    return baton_runtime::body::closing(error(
                        ErrorCode::TooLarge,
                        format!("the value exceeds {max} bytes (limits.value_bytes_max)"),
                        None,
                    ))
                }
                Err(BodyError::Read(msg)) => {
                    return error(
                        ErrorCode::BadRequest,
                        format!("cannot read the request body: {msg}"),
                        None,
                    )
                }
            };
            write(
                &node,
                WriteReq {
                    key,
                    value: Some(value),
                    expect,
                },
            )
            .await
        }
        Method::DELETE => {
            write(
                &node,
                WriteReq {
                    key,
                    value: None,
                    expect,
                },
            )
            .await
        }
        m => {
            let mut r = error(
                ErrorCode::BadRequest,
                format!("method {m} is not supported on /v1/kv; use GET, PUT or DELETE"),
                None,
            );
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r
        }
    }
}

fn too_large_value(len: u64, max: usize) -> Response {
    error(
        ErrorCode::TooLarge,
        format!("the value is {len} bytes; the limit is {max} (limits.value_bytes_max)"),
        None,
    )
}

fn get_key(node: &Arc<Node>, uri: &Uri, key: Bytes) -> Response {
    let consistency = match query_param(uri, "consistency") {
        None | Some("leader") => Consistency::Leader,
        Some("any") => Consistency::Any,
        Some("linearizable") => return error(
            ErrorCode::BadRequest,
            "consistency=linearizable is not available yet; use consistency=leader (the default)",
            None,
        ),
        Some(other) => {
            return error(
                ErrorCode::BadRequest,
                format!("consistency={other:?} is unknown; use leader or any"),
                None,
            )
        }
    };
    let res = node.lock().core().read(clock::now_ms(), &key, consistency);
    match res {
        Err(reject) => reject_response(reject),
        Ok(r) => {
            let mut resp = match &r.entry {
                Some(e) => {
                    let mut resp = (StatusCode::OK, e.value.clone()).into_response();
                    resp.headers_mut()
                        .insert("baton-version", hv(e.version.to_string()));
                    resp.headers_mut().insert(
                        "content-type",
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    resp
                }
                None => error(ErrorCode::NotFound, "no such key", None),
            };
            let h = resp.headers_mut();
            h.insert("baton-lsn", hv(r.applied.to_string()));
            h.insert("baton-epoch", hv(r.epoch.to_string()));
            if consistency == Consistency::Any {
                let st = r
                    .staleness_ms
                    .map_or_else(|| "unknown".to_string(), |ms| ms.to_string());
                h.insert("baton-staleness-ms", hv(st));
                h.insert("baton-lag-records", hv(r.lag_records.to_string()));
            }
            resp
        }
    }
}

fn hv(s: String) -> HeaderValue {
    HeaderValue::from_str(&s).expect("digits and dots are a valid header value")
}

async fn write(node: &Arc<Node>, req: WriteReq) -> Response {
    match node.write(req).await {
        Ok(reply) => axum::Json(reply).into_response(),
        Err(WriteError::Rejected(r)) => {
            node.metrics
                .writes
                .with_label_values(&[reject_label(&r)])
                .inc();
            reject_response(r)
        }
        Err(WriteError::OutcomeUnknown(reason)) => {
            node.metrics
                .writes
                .with_label_values(&["outcome_unknown"])
                .inc();
            error(
                ErrorCode::OutcomeUnknown,
                format!("the write was appended but its outcome is unknown: {reason}"),
                None,
            )
        }
    }
}

fn reject_label(r: &WriteReject) -> &'static str {
    match r {
        WriteReject::NotLeader { .. } => "not_leader",
        WriteReject::PreconditionFailed { .. } => "precondition_failed",
        WriteReject::NotFound => "not_found",
        WriteReject::ShuttingDown => "shutting_down",
        WriteReject::Overloaded(_) => "overloaded",
        WriteReject::InsufficientStorage(_) => "insufficient_storage",
        WriteReject::Fatal(_) => "fatal",
    }
}

fn reject_response(r: WriteReject) -> Response {
    match r {
        WriteReject::NotLeader { reason, leader } => error(ErrorCode::NotLeader, reason, leader),
        WriteReject::PreconditionFailed { current } => {
            let msg = match current {
                Some(v) => format!("If-Match failed: the key's current version is {v}"),
                None => "If-Match failed: the key does not exist".to_string(),
            };
            error(ErrorCode::PreconditionFailed, msg, None)
        }
        WriteReject::NotFound => error(ErrorCode::NotFound, "no such key", None),
        WriteReject::ShuttingDown => error(
            ErrorCode::ShuttingDown,
            "the replica is shutting down",
            None,
        ),
        WriteReject::Overloaded(reason) => error(ErrorCode::Overloaded, reason, None),
        WriteReject::InsufficientStorage(reason) => {
            error(ErrorCode::InsufficientStorage, reason, None)
        }
        WriteReject::Fatal(reason) => error(
            ErrorCode::Fatal,
            format!("the replica stopped: {reason}"),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_runtime::auth::{Need, Role};

    /// What a route needs, as a row says it.
    #[derive(Debug, PartialEq)]
    enum Want {
        Open,
        Role(Role),
        Member,
    }

    /// One row a case: method, path, what it needs. Replication is for members of this
    /// cluster only; keys read/write; everything unknown that is not a GET needs admin.
    #[test]
    fn the_policy_of_every_route() {
        let p = policy("main");
        let rows: &[(Method, &str, Want)] = &[
            (Method::GET, "/v1/kv/k", Want::Role(Role::Read)),
            (Method::HEAD, "/v1/kv/k", Want::Role(Role::Read)),
            (Method::PUT, "/v1/kv/k", Want::Role(Role::Write)),
            (Method::DELETE, "/v1/kv/k", Want::Role(Role::Write)),
            (Method::POST, "/v1/kv/k", Want::Role(Role::Write)),
            (Method::GET, "/v1/status", Want::Role(Role::Read)),
            (Method::GET, "/v1/rollbacks", Want::Role(Role::Read)),
            (Method::GET, "/metrics", Want::Role(Role::Read)),
            (Method::POST, "/v1/replicate", Want::Member),
            (Method::GET, "/v1/failpoints", Want::Role(Role::Admin)),
            (
                Method::PUT,
                "/v1/failpoints/wal.before_fsync",
                Want::Role(Role::Admin),
            ),
            (Method::PUT, "/v1/status", Want::Role(Role::Admin)),
            (Method::POST, "/v1/anything", Want::Role(Role::Admin)),
            (Method::GET, "/v1/health/live", Want::Open),
        ];
        for (m, path, want) in rows {
            let got = match p(m, path) {
                Need::Open => Want::Open,
                Need::Role(r, names) => {
                    assert!(names.is_empty(), "{m} {path}: {names:?}");
                    Want::Role(r)
                }
                Need::Node(names) => {
                    assert_eq!(names, vec!["main.replica.baton".to_string()], "{m} {path}");
                    Want::Member
                }
            };
            assert_eq!(got, *want, "{m} {path}");
        }
    }
}
