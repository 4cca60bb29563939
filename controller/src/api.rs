//! The controller's HTTP API (DESIGN.md §7): the heartbeat endpoint replicas call, the cluster
//! view (with etcd's alarms and size) and the leader (long-poll on the state rev) for `batonctl`
//! and proxies, operations, the journal, and `/metrics`; and who may call what (DESIGN §9,
//! [`need`]): every request passes `baton_runtime::auth::guard` first, and a heartbeat must
//! come with the certificate of the very member it names. Every error is JSON
//! `{error, message}`.

use crate::core::{ErrorCode, Now, Observed, OpError};
use crate::runtime::{now, ClusterRt};
use crate::state::Control;
use crate::upkeep::EtcdHealth;
use axum::extract::{Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use baton_common::directive::{Directive, Heartbeat, Role};
use baton_common::NodeId;
use baton_runtime::auth::{Auth, Need, Policy, Refused};
use baton_runtime::tls::{any_proxy, cluster_name, replica_name, Peer};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Shared by all handlers.
pub struct Api {
    pub clusters: Vec<Arc<ClusterRt>>,
    pub etcd: etcd_client::Client,
    /// What `upkeep::run_etcd_upkeep` last learned of etcd (alarms, size).
    pub etcd_health: Arc<Mutex<EtcdHealth>>,
    pub id: String,
    pub addr: String,
    /// Every metric this controller exports (its own, the accept loop's, the auth refusals).
    pub registry: prometheus::Registry,
    pub metrics: Arc<crate::metrics::ControllerMetrics>,
    /// The credentials this API accepts (open in insecure mode).
    pub auth: Arc<Auth>,
}

type S = State<Arc<Api>>;

/// What each request needs (DESIGN §9):
///
/// | request | needs |
/// |---|---|
/// | `/v1/health/*` | nothing |
/// | `POST /v1/clusters/{c}/heartbeat` | a certificate of a member of `c` (and, checked by the handler, of the member the heartbeat names) |
/// | `POST …/switchover`, `failover`, `pause`, `resume`, `init`, `recover` | an `admin` token |
/// | `/v1/failpoints*` (test builds) | an `admin` token |
/// | `GET /v1/cluster`, `/v1/clusters/{c}`, `…/leader`, `…/dry-run`, `…/history`, `/metrics` | a `read` token or a proxy's certificate |
/// | `GET /ui` (the status page) | a `read` token, as a bearer or as the password of HTTP Basic credentials (what a browser sends) |
/// | any other GET | a `read` token |
/// | any other request | an `admin` token (nothing else exists: fail closed) |
pub fn need(method: &Method, path: &str) -> Need {
    let read_or_proxy = || Need::Role(baton_runtime::auth::Role::Read, vec![any_proxy()]);
    let admin = || Need::Role(baton_runtime::auth::Role::Admin, vec![]);
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = method == Method::GET || method == Method::HEAD;
    match seg.as_slice() {
        ["v1", "health", ..] => Need::Open,
        ["v1", "failpoints", ..] => admin(),
        ["v1", "clusters", c, "heartbeat"] if method == Method::POST => {
            Need::Node(vec![cluster_name(c)])
        }
        ["v1", "clusters", _, "switchover" | "failover" | "pause" | "resume" | "init" | "recover"]
            if method == Method::POST =>
        {
            admin()
        }
        ["v1", "cluster"]
        | ["v1", "clusters", _]
        | ["v1", "clusters", _, "leader" | "dry-run" | "history"]
        | ["metrics"]
            if get =>
        {
            read_or_proxy()
        }
        _ if get => Need::Role(baton_runtime::auth::Role::Read, vec![]),
        _ => admin(),
    }
}

/// 200 while the process serves (an orchestrator's liveness check; open, like every
/// `/v1/health/` path).
async fn live() -> Response {
    Json(serde_json::json!({ "live": true })).into_response()
}

/// [`need`] as the guard middleware takes it.
pub fn policy() -> Policy {
    Arc::new(need)
}

/// The API's routes (and, in failpoints builds, `/v1/failpoints/*`), every one behind the
/// guard.
pub fn router(api: Arc<Api>) -> Router {
    let guard = axum::middleware::from_fn_with_state(
        (api.auth.clone(), policy()),
        baton_runtime::auth::guard,
    );
    let router = Router::new()
        .route("/v1/cluster", get(cluster_default))
        .route("/v1/clusters/{c}", get(cluster))
        .route("/v1/clusters/{c}/heartbeat", post(heartbeat))
        .route("/v1/clusters/{c}/leader", get(leader))
        .route("/v1/clusters/{c}/switchover", post(switchover))
        .route("/v1/clusters/{c}/failover", post(failover))
        .route("/v1/clusters/{c}/pause", post(pause))
        .route("/v1/clusters/{c}/resume", post(resume))
        .route("/v1/clusters/{c}/init", post(init))
        .route("/v1/clusters/{c}/recover", post(recover))
        .route("/v1/clusters/{c}/dry-run", get(dry_run))
        .route("/v1/clusters/{c}/history", get(history))
        .route("/v1/health/live", get(live))
        .route("/metrics", get(metrics))
        .route("/ui", get(ui))
        .fallback(|| async { err(404, "not_found", "no such endpoint") })
        .with_state(api);
    #[cfg(feature = "failpoints")]
    let router = router.merge(crate::runtime::faults::router());
    router.layer(guard)
}

fn err(status: u16, code: &str, message: impl Into<String>) -> Response {
    let s = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        s,
        Json(serde_json::json!({ "error": code, "message": message.into() })),
    )
        .into_response()
}

/// The HTTP status of a refused operator request: 503 when retrying (elsewhere, or later)
/// may succeed as is, 400 when the request itself is wrong, 409 when the cluster's state stands
/// in the way.
fn status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::NotActive | ErrorCode::Busy => 503,
        ErrorCode::Ineligible | ErrorCode::AllNoFailover => 400,
        ErrorCode::NotInitialized
        | ErrorCode::StateBehind
        | ErrorCode::OperationRunning
        | ErrorCode::Phase
        | ErrorCode::NoLeader
        | ErrorCode::LeaderUnreachable
        | ErrorCode::NoCandidate
        | ErrorCode::MayLoseWrites
        | ErrorCode::Initialized
        | ErrorCode::MembersMissing
        | ErrorCode::NotEmpty
        | ErrorCode::NotBehind
        | ErrorCode::EpochOverflow => 409,
    }
}

/// A refused operator request. A standby's `not_active` also names the active controller in
/// a field of its own (`active_controller`, null when unknown), so that clients need not read
/// it out of the message.
fn op_error(e: OpError, rt: &ClusterRt) -> Response {
    if e.code != ErrorCode::NotActive {
        return err(status(e.code), e.code.as_str(), e.message);
    }
    let active = rt.lock().active_addr.clone();
    let s = StatusCode::from_u16(status(e.code)).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = serde_json::json!({
        "error": e.code.as_str(), "message": e.message, "active_controller": active,
    });
    (s, Json(body)).into_response()
}

fn find(api: &Api, c: &str) -> Result<Arc<ClusterRt>, Box<Response>> {
    api.clusters
        .iter()
        .find(|r| r.name == c)
        .cloned()
        .ok_or_else(|| {
            Box::new(err(
                404,
                "no_such_cluster",
                format!("this controller manages no cluster {c:?}"),
            ))
        })
}

/// What the replica last got from this controller (`?wait_ms=…&rev=…&term=…`): while the
/// answer would be the same, the heartbeat is held up to `wait_ms`.
#[derive(Deserialize)]
struct HeartbeatQuery {
    wait_ms: Option<u64>,
    rev: Option<u64>,
    term: Option<u64>,
}

/// The longest a heartbeat is held, whatever a replica asks.
const HOLD_MAX: Duration = Duration::from_secs(1);

/// Epochs no deployment reaches (2^48: a promotion a millisecond for 8900 years). A heartbeat
/// reporting one is refused rather than heard: promotions take the highest reported epoch
/// plus one, so one forged or corrupt report could otherwise use up the epochs for good.
pub const EPOCH_ABSURD: u64 = 1 << 48;

/// Whether `peer` may send a heartbeat naming member `id` of cluster `c`: only that member's
/// own certificate (DESIGN §9), so no other node — not even another member — can speak for
/// it (a forged heartbeat naming the leader with a new boot id would start a promotion).
fn heartbeat_identity(
    auth: &Auth,
    peer: Option<&Peer>,
    c: &str,
    id: &NodeId,
) -> Result<(), Refused> {
    if !auth.is_on() {
        return Ok(());
    }
    let Some(peer) = peer else {
        return Err(Refused::unauthorized("no connection identity".into()));
    };
    let name = replica_name(c, &id.0);
    if peer.is(&name) {
        return Ok(());
    }
    let r = Refused::forbidden(
        "wrong_identity",
        format!(
            "a heartbeat for member {id} of cluster {c:?} must come with that member's \
             certificate ({name})"
        ),
    );
    auth.note(peer, &r, &"heartbeat");
    Err(r)
}

/// A heartbeat (DESIGN.md §5 "Directives reach replicas promptly"): heard at once; answered
/// at once unless the replica asked to be held and already has this active answer (same rev
/// and term), then answered as soon as the directives may have changed (`ClusterRt::changed`)
/// or the hold runs out — computed afresh then, without hearing the heartbeat again. Only
/// active answers are held: a standby's, a refusal's, or a leader's whose lease is revoked
/// (a switchover waits for its reports) go back at once.
async fn heartbeat(
    State(api): S,
    Path(c): Path<String>,
    Query(q): Query<HeartbeatQuery>,
    peer: Option<Extension<Peer>>,
    Json(hb): Json<Heartbeat>,
) -> Response {
    if let Err(r) = heartbeat_identity(&api.auth, peer.as_ref().map(|p| &p.0), &c, &hb.id) {
        return r.into_response();
    }
    if hb.epoch.0 >= EPOCH_ABSURD || hb.log_end_epoch.0 >= EPOCH_ABSURD {
        return err(
            400,
            "bad_heartbeat",
            format!(
                "member {} reports epoch {} (log end epoch {}): no deployment gets that far; \
                 refused",
                hb.id, hb.epoch, hb.log_end_epoch
            ),
        );
    }
    let rt = match find(&api, &c) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let mut changed = rt.changed.subscribe();
    let (d, wake) = {
        let mut core = rt.lock();
        let before = core.heard().get(&hb.id).map(|h| {
            (
                h.hb.boot_id,
                h.hb.epoch,
                h.hb.role,
                h.hb.lease_left_ms == Some(0),
            )
        });
        let after = Some((hb.boot_id, hb.epoch, hb.role, hb.lease_left_ms == Some(0)));
        let d = core.on_heartbeat(now(), hb.clone());
        rt.metrics.on_answer(&rt.name, &d);
        (d, before != after)
    };
    if wake {
        // A new role, epoch or lease state: a promotion or switchover step may be due now.
        rt.wake.notify_one();
    }
    let same =
        |d: &Directive| d.active && Some(d.rev) == q.rev && Some(d.controller_term) == q.term;
    let revoked = d.role == Some(Role::Leader) && d.lease_ms == 0;
    let hold = match q.wait_ms {
        Some(w) if w > 0 && same(&d) && !revoked => Duration::from_millis(w).min(HOLD_MAX),
        _ => return Json(d).into_response(),
    };
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => {
                let d = rt.lock().answer(now(), &hb);
                if !same(&d) {
                    return Json(d).into_response();
                }
            }
            // The hold ran out (or the controller is stopping): the current answer.
            _ => return Json(rt.lock().answer(now(), &hb)).into_response(),
        }
    }
}

fn view(api: &Api, rt: &ClusterRt, n: Now) -> serde_json::Value {
    let etcd = api
        .etcd_health
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let core = rt.lock();
    let (state, rev) = match &core.observed {
        Observed::Present { state, rev } => (Some(state.clone()), *rev),
        _ => (None, 0),
    };
    let leader_hb = state
        .as_ref()
        .and_then(|s| s.leader.as_ref())
        .and_then(|l| core.heard().get(&l.id))
        .map(|h| &h.hb);
    let leader_end = leader_hb.map(|h| h.log_end_lsn.0);
    // What the leader waits for: each member's ages as the leader reports them (a stalled
    // disk shows as a growing `owed_ms` behind fresh acks).
    let waiting: Vec<serde_json::Value> = leader_hb
        .map(|h| {
            h.waiting
                .iter()
                .map(|w| serde_json::json!({"id": w.id, "last_ack_ms": w.last_ack_ms, "owed_ms": w.owed_ms}))
                .collect()
        })
        .unwrap_or_default();
    let members: Vec<serde_json::Value> = core
        .members_reached()
        .iter()
        .map(|m| {
            let h = core.heard().get(&m.id);
            let age = h.map(|h| n.ms.saturating_sub(h.at_ms));
            let healthy = age.is_some_and(|a| a < core.cfg.failure_timeout_ms);
            let in_sync = state.as_ref().is_some_and(|s| s.sync_set.iter().any(|x| x.id == m.id));
            serde_json::json!({
                "id": m.id, "addr": m.addr, "priority": m.priority, "no_failover": m.no_failover,
                "role": h.map(|h| h.hb.role), "health": if healthy { "ok" } else if h.is_some() { "unreachable" } else { "never heard" },
                "heard_ms_ago": age, "unclean": h.map(|h| h.hb.unclean), "epoch": h.map(|h| h.hb.epoch),
                "log_end_lsn": h.map(|h| h.hb.log_end_lsn), "flushed_lsn": h.map(|h| h.hb.flushed_lsn),
                "applied_lsn": h.map(|h| h.hb.applied_lsn), "sync": in_sync,
                "lag_records": match (leader_end, h) { (Some(e), Some(h)) => Some(e.saturating_sub(h.hb.flushed_lsn.0)), _ => None },
                "disk_full": h.map(|h| h.hb.disk_full), "degraded_for_ms": h.map(|h| h.hb.degraded_for_ms),
                "on_promises": h.map(|h| h.hb.on_promises), "since_leader_ms": h.and_then(|h| h.hb.since_leader_ms),
                "catchup": h.and_then(|h| h.hb.catchup.clone()),
            })
        })
        .collect();
    serde_json::json!({
        "cluster": rt.name,
        "initialized": state.is_some(),
        "epoch": state.as_ref().map(|s| s.epoch),
        "rev": rev,
        "phase": state.as_ref().map(|s| s.phase),
        "leader": state.as_ref().and_then(|s| s.leader.clone()),
        "prev_leader": state.as_ref().and_then(|s| s.prev_leader.clone()),
        "sync_set": state.as_ref().map(|s| s.sync_set.clone()),
        "adding": state.as_ref().and_then(|s| s.adding.clone()),
        "control": state.as_ref().map(|s| s.control),
        "mode": state.as_ref().map(|s| s.mode),
        "op": state.as_ref().and_then(|s| s.op.clone()),
        "members": members,
        "leader_waiting": waiting,
        // DESIGN §4/§7: the leader acknowledges alone (an empty sync set, not strict).
        "degraded": leader_hb.is_some_and(|h| h.degraded_for_ms > 0),
        // Since when this controller's etcd session has failed (keepalives, lease grants).
        "etcd_unreachable_ms": core.etcd_failing_since_ms.map(|t| n.ms.saturating_sub(t)),
        // Acting as the active controller now: elected, within its etcd lease's trusted window.
        "active": core.active_at(n),
        // The election key's create revision this controller was elected with (its term).
        "term": core.term(),
        "active_controller": core.active_addr,
        // Plain HTTP without credentials (`insecure = true`): `batonctl status` says so.
        "insecure": !api.auth.is_on(),
        "etcd": etcd,
    })
}

async fn cluster_default(State(api): S) -> Response {
    let Some(rt) = api.clusters.first() else {
        return err(404, "no_such_cluster", "no cluster configured");
    };
    Json(view(&api, rt, now())).into_response()
}

async fn cluster(State(api): S, Path(c): Path<String>) -> Response {
    match find(&api, &c) {
        Ok(rt) => Json(view(&api, &rt, now())).into_response(),
        Err(r) => *r,
    }
}

#[derive(Deserialize)]
struct LeaderQuery {
    wait_ms: Option<u64>,
    after_rev: Option<u64>,
}

async fn leader(State(api): S, Path(c): Path<String>, Query(q): Query<LeaderQuery>) -> Response {
    let rt = match find(&api, &c) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if let (Some(wait), Some(after)) = (q.wait_ms, q.after_rev) {
        let mut rx = rt.rev_tx.subscribe();
        let wait = Duration::from_millis(wait.min(60_000));
        // Any other rev wakes the poll: a state re-created or restored from a backup has a
        // lower one, and the proxy must hear of it at once.
        let _ = tokio::time::timeout(wait, rx.wait_for(|r| *r != after)).await;
    }
    let core = rt.lock();
    let (leader, epoch, rev, state_id) = match &core.observed {
        Observed::Present { state, rev } => (
            state.leader.clone(),
            Some(state.epoch),
            *rev,
            // The proxy replaces its view at once on another lineage (init, recover).
            (state.state_id != 0).then(|| format!("{:016x}", state.state_id)),
        ),
        _ => (None, None, 0, None),
    };
    let addr = leader
        .as_ref()
        .map(|l| core.member_addr(&l.id))
        .filter(|a| !a.is_empty());
    Json(serde_json::json!({
        "id": leader.map(|l| l.id), "addr": addr, "epoch": epoch, "rev": rev, "from_active": core.is_active(),
        "state_id": state_id,
    }))
    .into_response()
}

fn op_id() -> String {
    format!("op-{:08x}", rand::random::<u32>())
}

#[derive(Deserialize, Default)]
struct SwitchoverReq {
    to: Option<String>,
    timeout_ms: Option<u64>,
}

async fn run_write(
    api: &Api,
    rt: &Arc<ClusterRt>,
    w: crate::core::Write,
    op: Option<String>,
) -> Response {
    let why = w.why.clone();
    let mut etcd = api.etcd.clone();
    // Executed in its own task: a client that disconnects must not drop the write halfway
    // (the core would wait for its outcome for ever).
    let rt2 = rt.clone();
    let outcome = tokio::spawn(async move { rt2.execute(&mut etcd, w).await })
        .await
        .unwrap_or(crate::core::WriteOutcome::Unknown);
    match outcome {
        crate::core::WriteOutcome::Committed { rev } => {
            Json(serde_json::json!({ "ok": true, "message": why, "rev": rev, "op": op }))
                .into_response()
        }
        crate::core::WriteOutcome::Rejected => err(
            409,
            "conflict",
            "the cluster state changed meanwhile (or this controller lost the election); retry",
        ),
        crate::core::WriteOutcome::Unknown => err(
            504,
            "outcome_unknown",
            "etcd did not confirm the write; check `batonctl status`",
        ),
    }
}

async fn switchover(
    State(api): S,
    Path(c): Path<String>,
    body: Option<Json<SwitchoverReq>>,
) -> Response {
    let rt = match find(&api, &c) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let req = body.map(|b| b.0).unwrap_or_default();
    let to = req.to.map(NodeId);
    let id = op_id();
    let w = rt
        .lock()
        .switchover(now(), to, req.timeout_ms.unwrap_or(10_000), id.clone());
    match w {
        Ok(w) => run_write(&api, &rt, w, Some(id)).await,
        Err(e) => op_error(e, &rt),
    }
}

#[derive(Deserialize)]
struct FailoverReq {
    to: String,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    allow_data_loss: bool,
}

async fn failover(State(api): S, Path(c): Path<String>, Json(req): Json<FailoverReq>) -> Response {
    let rt = match find(&api, &c) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let id = op_id();
    let w = rt.lock().failover(
        now(),
        NodeId(req.to),
        req.force,
        req.allow_data_loss,
        id.clone(),
    );
    match w {
        Ok(w) => run_write(&api, &rt, w, Some(id)).await,
        Err(e) => op_error(e, &rt),
    }
}

async fn set_control(api: Arc<Api>, c: String, control: Control) -> Response {
    let rt = match find(&api, &c) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let w = rt.lock().set_control(now(), control);
    match w {
        Ok(w) => run_write(&api, &rt, w, None).await,
        Err(e) => op_error(e, &rt),
    }
}

async fn pause(State(api): S, Path(c): Path<String>) -> Response {
    set_control(api, c, Control::Manual).await
}

async fn resume(State(api): S, Path(c): Path<String>) -> Response {
    set_control(api, c, Control::Auto).await
}

async fn init(State(api): S, Path(c): Path<String>) -> Response {
    let rt = match find(&api, &c) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let w = rt.lock().init(now());
    match w {
        Ok(w) => run_write(&api, &rt, w, None).await,
        Err(e) => op_error(e, &rt),
    }
}

async fn recover(State(api): S, Path(c): Path<String>) -> Response {
    let rt = match find(&api, &c) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let w = rt.lock().recover(now());
    match w {
        Ok(w) => run_write(&api, &rt, w, None).await,
        Err(e) => op_error(e, &rt),
    }
}

async fn dry_run(State(api): S, Path(c): Path<String>) -> Response {
    match find(&api, &c) {
        Ok(rt) => Json(rt.lock().dry_run(now())).into_response(),
        Err(r) => *r,
    }
}

async fn history(
    State(api): S,
    Path(c): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let rt = match find(&api, &c) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(50);
    // The journal lives in etcd; read it fresh (a standby's copy may be old).
    let mut etcd = api.etcd.clone();
    let journal = match crate::runtime::read_journal(&mut etcd, &rt.keys, limit).await {
        Ok(j) => j,
        Err(e) => {
            return err(
                503,
                "etcd_unavailable",
                format!("cannot read the journal: {e}"),
            )
        }
    };
    Json(journal).into_response()
}

/// The status page (`page.rs`) of every cluster this controller serves.
async fn ui(State(api): S) -> Response {
    let n = now();
    let mut parts = Vec::new();
    for rt in &api.clusters {
        let mut v = view(&api, rt, n);
        // The journal lives in etcd (the core keeps only its newest entries): read it fresh,
        // or, when etcd does not answer in time, show what this controller holds and say so.
        let mut etcd = api.etcd.clone();
        let read = tokio::time::timeout(
            Duration::from_secs(1),
            crate::runtime::read_journal(&mut etcd, &rt.keys, crate::page::JOURNAL_READ),
        )
        .await;
        let core = rt.lock();
        let journal = match read {
            Ok(Ok(j)) => j,
            Ok(Err(e)) => {
                v["journal_note"] =
                    format!("etcd: {e}; the newest entries this controller holds").into();
                core.journal.clone()
            }
            Err(_) => {
                v["journal_note"] =
                    "etcd did not answer within 1 s; the newest entries this controller holds"
                        .into();
                core.journal.clone()
            }
        };
        parts.push((v, journal, core.leading_seen.clone()));
    }
    let pages: Vec<crate::page::ClusterPage<'_>> = parts
        .iter()
        .map(|(view, journal, leading_seen)| crate::page::ClusterPage {
            view,
            journal,
            leading_seen,
        })
        .collect();
    let html = crate::page::render(&api.id, &pages, n.unix_ms);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Nothing but its own inline style: no script, no frame, no outside resource.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response()
}

async fn metrics(State(api): S) -> Response {
    baton_runtime::metrics::response(api.metrics.render(&api.registry, &api.clusters, now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(n: Need) -> String {
        match n {
            Need::Open => "open".into(),
            Need::Role(r, names) => format!("{} {}", r.as_str(), names.join(",")),
            Need::Node(names) => format!("node {}", names.join(",")),
        }
    }

    #[test]
    fn every_route_needs_what_the_policy_table_says() {
        let (g, p, put) = (Method::GET, Method::POST, Method::PUT);
        let rows = [
            (&g, "/v1/health/live", "open"),
            (&g, "/v1/cluster", "read proxy.baton"),
            (&g, "/v1/clusters/main", "read proxy.baton"),
            (&g, "/v1/clusters/main/leader", "read proxy.baton"),
            (&g, "/v1/clusters/main/dry-run", "read proxy.baton"),
            (&g, "/v1/clusters/main/history", "read proxy.baton"),
            (&g, "/metrics", "read proxy.baton"),
            (&g, "/ui", "read "),
            (&p, "/v1/clusters/main/heartbeat", "node main.replica.baton"),
            (&p, "/v1/clusters/b/heartbeat", "node b.replica.baton"),
            (&p, "/v1/clusters/main/switchover", "admin "),
            (&p, "/v1/clusters/main/failover", "admin "),
            (&p, "/v1/clusters/main/pause", "admin "),
            (&p, "/v1/clusters/main/resume", "admin "),
            (&p, "/v1/clusters/main/init", "admin "),
            (&p, "/v1/clusters/main/recover", "admin "),
            (&put, "/v1/failpoints/x", "admin "),
            (&g, "/v1/failpoints", "admin "),
            // Unknown: a GET needs a read token, anything else admin.
            (&g, "/v1/elsewhere", "read "),
            (&g, "/v1/clusters/main/heartbeat", "read "),
            (&p, "/v1/cluster", "admin "),
            (&p, "/v1/clusters/main/other", "admin "),
        ];
        for (m, path, want) in rows {
            assert_eq!(show(need(m, path)), want, "{m} {path}");
        }
    }

    /// A peer holding the certificate of replica `id` of `cluster`.
    fn peer_of(ca: &baton_runtime::pki::Ca, cluster: &str, id: &str) -> Peer {
        use rustls::pki_types::pem::PemObject;
        let (cert, _) = ca
            .issue(
                &baton_runtime::pki::replica_names(cluster, id),
                &baton_runtime::pki::local_hosts(),
            )
            .expect("issue");
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem");
        Peer {
            addr: "127.0.0.1:1".parse().expect("addr"),
            cert: Some(Arc::new(der)),
        }
    }

    /// DESIGN §9: the controller takes a heartbeat for member r1 only from r1's certificate —
    /// not from another member's, nor one of another cluster's — and counts each refusal.
    #[test]
    fn a_heartbeat_is_heard_only_from_the_member_it_names() {
        let ca = baton_runtime::pki::Ca::new("test").expect("ca");
        let registry = prometheus::Registry::new();
        let auth = Auth::new(true, &[], &registry, "controller").expect("auth");
        let r1 = NodeId("r1".into());
        assert!(heartbeat_identity(&auth, Some(&peer_of(&ca, "main", "r1")), "main", &r1).is_ok());
        for (peer, status) in [
            (Some(peer_of(&ca, "main", "r2")), 403),
            (Some(peer_of(&ca, "other", "r1")), 403),
            (None, 401),
        ] {
            let r = heartbeat_identity(&auth, peer.as_ref(), "main", &r1).expect_err("refused");
            assert_eq!(r.status.as_u16(), status);
        }
        let text = baton_runtime::metrics::render(&registry);
        assert!(
            text.contains("baton_controller_auth_refused_total{reason=\"wrong_identity\"} 2"),
            "{text}"
        );
        // Insecure mode checks nothing.
        assert!(heartbeat_identity(
            &Auth::new(false, &[], &prometheus::Registry::new(), "t").expect("auth"),
            None,
            "main",
            &r1
        )
        .is_ok());
    }

    #[test]
    fn refusals_keep_their_status_and_code() {
        let table = [
            (ErrorCode::NotActive, 503, "not_active"),
            (ErrorCode::Busy, 503, "busy"),
            (ErrorCode::NotInitialized, 409, "not_initialized"),
            (ErrorCode::StateBehind, 409, "state_behind"),
            (ErrorCode::OperationRunning, 409, "operation_running"),
            (ErrorCode::Phase, 409, "phase"),
            (ErrorCode::NoLeader, 409, "no_leader"),
            (ErrorCode::LeaderUnreachable, 409, "leader_unreachable"),
            (ErrorCode::Ineligible, 400, "ineligible"),
            (ErrorCode::NoCandidate, 409, "no_candidate"),
            (ErrorCode::AllNoFailover, 400, "no_candidate"),
            (ErrorCode::MayLoseWrites, 409, "may_lose_writes"),
            (ErrorCode::Initialized, 409, "initialized"),
            (ErrorCode::MembersMissing, 409, "members_missing"),
            (ErrorCode::NotEmpty, 409, "not_empty"),
            (ErrorCode::NotBehind, 409, "not_behind"),
            (ErrorCode::EpochOverflow, 409, "epoch_overflow"),
        ];
        for (code, st, wire) in table {
            assert_eq!((status(code), code.as_str()), (st, wire), "{code:?}");
        }
    }
}
