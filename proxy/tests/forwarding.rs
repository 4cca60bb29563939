//! The proxy in-process against a scripted controller and scripted replicas on loopback: what it
//! re-sends and what it never re-sends, counted at the replicas. A refused connection, a 503 and
//! "no leader" are held and re-sent to the next leader; a connection cut after the request was
//! read, a timeout and a replica's 504 are answered 504 and reach the replica exactly once.
//! Also: `Baton-Min-Epoch` carries the highest epoch seen, `any` reads rotate over the members,
//! and a request held past `failover_buffer_ms` gets 503 `not_leader`. All in insecure mode
//! (plain HTTP); TLS and tokens are `security.rs`.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use baton_proxy::config::ProxyConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

// ----- a scripted controller -------------------------------------------------------------------

#[derive(Clone)]
struct Ctl {
    /// (leader addr, epoch); the rev is the watch's version count.
    state: Arc<watch::Sender<(Option<String>, u64, u64)>>,
    members: Arc<Mutex<Vec<String>>>,
    /// The `state_id` its answers carry (the lineage: new on init and recover).
    state_id: Arc<Mutex<Option<String>>>,
}

impl Ctl {
    fn set_leader(&self, addr: Option<SocketAddr>, epoch: u64) {
        self.state.send_modify(|(a, e, rev)| {
            *a = addr.map(|x| x.to_string());
            *e = epoch;
            *rev += 1;
        });
    }

    /// Replaces the state with one at the given rev, which may be lower than the one before: etcd
    /// emptied and the cluster initialized again, restored from a backup, or `recover`ed.
    fn set_state(&self, addr: Option<SocketAddr>, epoch: u64, rev: u64) {
        self.state.send_modify(|(a, e, r)| {
            *a = addr.map(|x| x.to_string());
            *e = epoch;
            *r = rev;
        });
    }
}

async fn ctl_leader(State(c): State<Ctl>, Query(q): Query<HashMap<String, u64>>) -> Response {
    if let (Some(wait), Some(after)) = (q.get("wait_ms"), q.get("after_rev")) {
        let mut rx = c.state.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(*wait), rx.wait_for(|s| s.2 != *after))
            .await;
    }
    let (addr, epoch, rev) = c.state.borrow().clone();
    let state_id = c.state_id.lock().expect("lock").clone();
    Json(serde_json::json!({
        "id": addr.as_ref().map(|a| format!("r-{a}")), "addr": addr, "epoch": epoch,
        "rev": rev, "from_active": true, "state_id": state_id,
    }))
    .into_response()
}

async fn ctl_view(State(c): State<Ctl>) -> Response {
    let rev = c.state.borrow().2;
    let members: Vec<serde_json::Value> = c
        .members
        .lock()
        .expect("lock")
        .iter()
        .map(|a| serde_json::json!({ "id": a, "addr": a }))
        .collect();
    Json(serde_json::json!({ "rev": rev, "members": members })).into_response()
}

async fn start_ctl() -> (Ctl, SocketAddr) {
    let c = Ctl {
        state: Arc::new(watch::Sender::new((None, 0, 0))),
        members: Arc::default(),
        state_id: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/clusters/main/leader", get(ctl_leader))
        .route("/v1/clusters/main", get(ctl_view))
        .with_state(c.clone());
    (c, serve(app).await)
}

// ----- scripted replicas -----------------------------------------------------------------------

/// How a scripted replica answers `/v1/kv/*`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Ok,
    NotLeader,
    OutcomeUnknown,
    /// Waits far longer than the proxy's request timeout.
    Hang,
}

#[derive(Clone)]
struct Replica {
    behaviour: Arc<Mutex<Behaviour>>,
    epoch: u64,
    hits: Arc<AtomicUsize>,
    /// `Baton-Min-Epoch` of every request seen.
    min_epochs: Arc<Mutex<Vec<u64>>>,
}

async fn replica_kv(State(r): State<Replica>, headers: HeaderMap, body: Bytes) -> Response {
    r.hits.fetch_add(1, Ordering::SeqCst);
    let min = headers
        .get("baton-min-epoch")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    r.min_epochs.lock().expect("lock").push(min);
    let b = *r.behaviour.lock().expect("lock");
    let json = |s: StatusCode, v: serde_json::Value| (s, Json(v)).into_response();
    match b {
        Behaviour::Ok => {
            let mut resp = (StatusCode::OK, body).into_response();
            resp.headers_mut()
                .insert("baton-epoch", r.epoch.to_string().parse().expect("digits"));
            resp
        }
        Behaviour::NotLeader => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "not_leader", "message": "not the leader" }),
        ),
        Behaviour::OutcomeUnknown => json(
            StatusCode::GATEWAY_TIMEOUT,
            serde_json::json!({ "error": "outcome_unknown", "message": "lease lost" }),
        ),
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
    }
}

async fn start_replica(b: Behaviour, epoch: u64) -> (Replica, SocketAddr) {
    let r = Replica {
        behaviour: Arc::new(Mutex::new(b)),
        epoch,
        hits: Arc::default(),
        min_epochs: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/kv/{*key}", any(replica_kv))
        .with_state(r.clone());
    (r, serve(app).await)
}

/// A "replica" that reads a whole request and closes the connection without answering: the
/// request reached it, the outcome is unknown. Counts the requests it read.
async fn start_cutter() -> (Arc<AtomicUsize>, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let _ = s.shutdown().await;
            });
        }
    });
    (hits, addr)
}

/// A loopback port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

async fn serve(app: Router) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

// ----- the proxy and a client ------------------------------------------------------------------

struct Proxy {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_proxy(ctl: SocketAddr, timing: &str) -> Proxy {
    let text =
        format!("listen = \"127.0.0.1:0\"\ncontrollers = [\"http://{ctl}\"]\ninsecure = true\n[timing]\n{timing}\n");
    let cfg = ProxyConfig::parse(std::path::Path::new("test.toml"), &text).expect("config");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(baton_proxy::serve(l, cfg, async move {
        let _ = rx.await;
    }));
    Proxy {
        url,
        stop: Some(tx),
        task,
    }
}

impl Proxy {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the proxy stops");
        r.expect("join").expect("clean stop");
    }
}

async fn call(method: &str, url: &str) -> (u16, serde_json::Value, HeaderMap) {
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(b"value")))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), c.request(req))
        .await
        .expect("the proxy answers")
        .expect("reply");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    (status, json, headers)
}

// ----- the cases -------------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_leader_is_replaced_and_the_request_resent_with_the_new_epoch() {
    let (ctl, ctl_addr) = start_ctl().await;
    let dead = closed_port().await;
    ctl.set_leader(Some(dead), 3);
    let (r2, r2_addr) = start_replica(Behaviour::Ok, 4).await;
    let p = start_proxy(ctl_addr, "failover_buffer_ms = 5000").await;
    let url = format!("{}/v1/kv/k", p.url);
    let put = tokio::spawn(async move { call("PUT", &url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!put.is_finished(), "the request is held");
    ctl.set_leader(Some(r2_addr), 4);
    let (status, body, headers) = put.await.expect("join");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::Value::String("value".into()));
    assert_eq!(
        headers.get("baton-epoch").map(|v| v.as_bytes()),
        Some(&b"4"[..])
    );
    assert_eq!(r2.hits.load(Ordering::SeqCst), 1);
    assert_eq!(*r2.min_epochs.lock().expect("lock"), vec![4]);
    p.stop().await;
}

#[tokio::test]
async fn a_503_is_held_and_resent_to_the_next_leader() {
    let (ctl, ctl_addr) = start_ctl().await;
    let (r1, r1_addr) = start_replica(Behaviour::NotLeader, 1).await;
    let (r2, r2_addr) = start_replica(Behaviour::Ok, 2).await;
    ctl.set_leader(Some(r1_addr), 1);
    let p = start_proxy(ctl_addr, "failover_buffer_ms = 5000").await;
    let url = format!("{}/v1/kv/k", p.url);
    let put = tokio::spawn(async move { call("PUT", &url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r1.hits.load(Ordering::SeqCst) >= 2, "re-sent while held");
    ctl.set_leader(Some(r2_addr), 2);
    let (status, body, _) = put.await.expect("join");
    assert_eq!(status, 200, "{body}");
    assert_eq!(r2.hits.load(Ordering::SeqCst), 1);
    assert!(r1.min_epochs.lock().expect("lock").iter().all(|e| *e == 1));
    let (_, st, _) = call("GET", &format!("{}/v1/status", p.url)).await;
    assert_eq!(st["epoch"], 2, "{st}");
    assert_eq!(st["leader_changes"], 1, "{st}");
    assert_eq!(st["controllers_reachable"], 1, "{st}");
    let (_, m, _) = call("GET", &format!("{}/metrics", p.url)).await;
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(
        m.contains("baton_proxy_retries_total{reason=\"not_leader\"}"),
        "{m}"
    );
    assert!(
        m.contains("baton_proxy_requests_total{result=\"ok\"} 1"),
        "{m}"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_request_that_may_have_reached_the_leader_is_answered_504_and_never_resent() {
    let (ctl, ctl_addr) = start_ctl().await;
    let (cut_hits, cut_addr) = start_cutter().await;
    let (r504, r504_addr) = start_replica(Behaviour::OutcomeUnknown, 1).await;
    let (hang, hang_addr) = start_replica(Behaviour::Hang, 1).await;
    let (ok, ok_addr) = start_replica(Behaviour::Ok, 1).await;
    let p = start_proxy(
        ctl_addr,
        "failover_buffer_ms = 5000\nrequest_timeout_ms = 600\nconnect_timeout_ms = 200",
    )
    .await;
    let url = format!("{}/v1/kv/k", p.url);
    // Each row: the leader, and its hit counter; a healthy replica waits as the next leader.
    let rows: Vec<(&str, SocketAddr, Arc<AtomicUsize>)> = vec![
        ("cut after the request was read", cut_addr, cut_hits),
        ("the replica's own 504", r504_addr, r504.hits.clone()),
        ("no reply in time", hang_addr, hang.hits.clone()),
    ];
    for (i, (what, addr, hits)) in rows.into_iter().enumerate() {
        ctl.set_leader(Some(addr), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body, _) = call("PUT", &url).await;
        assert_eq!(status, 504, "{what}: {body}");
        assert_eq!(body["error"], "outcome_unknown", "{what}: {body}");
        // A new leader is known at once; the request must still not be replayed there.
        ctl.set_leader(Some(ok_addr), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(hits.load(Ordering::SeqCst), 1, "{what}: reached it once");
        assert_eq!(ok.hits.load(Ordering::SeqCst), i, "{what}: not replayed");
        let (status, _, _) = call("PUT", &url).await;
        assert_eq!(status, 200, "{what}");
    }
    p.stop().await;
}

#[tokio::test]
async fn a_request_held_past_the_buffer_gets_503_not_leader() {
    let (_ctl, ctl_addr) = start_ctl().await;
    let p = start_proxy(ctl_addr, "failover_buffer_ms = 400").await;
    let t0 = Instant::now();
    let (status, body, _) = call("PUT", &format!("{}/v1/kv/k", p.url)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "not_leader", "{body}");
    assert!(t0.elapsed() >= Duration::from_millis(400));
    // Limits are the proxy's own.
    let long = "k".repeat(1025);
    let (status, body, _) = call("GET", &format!("{}/v1/kv/{long}", p.url)).await;
    assert_eq!(
        (status, &body["error"]),
        (413, &"too_large".into()),
        "{body}"
    );
    let (status, body, _) = call("POST", &format!("{}/v1/kv/k", p.url)).await;
    assert_eq!(status, 405, "{body}");
    p.stop().await;
}

#[tokio::test]
async fn any_reads_rotate_over_the_members() {
    let (ctl, ctl_addr) = start_ctl().await;
    let (r1, a1) = start_replica(Behaviour::Ok, 1).await;
    let (r2, a2) = start_replica(Behaviour::Ok, 1).await;
    let dead = closed_port().await;
    *ctl.members.lock().expect("lock") = vec![a1.to_string(), a2.to_string(), dead.to_string()];
    ctl.set_leader(Some(a1), 1);
    let p = start_proxy(ctl_addr, "").await;
    // Wait until the member list is known.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, st, _) = call("GET", &format!("{}/v1/status", p.url)).await;
        if st["members"].as_array().map_or(0, Vec::len) == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..6 {
        let (status, body, _) = call("GET", &format!("{}/v1/kv/k?consistency=any", p.url)).await;
        assert_eq!(status, 200, "{body}");
    }
    // The dead member's turns went to the next member at once.
    let (h1, h2) = (
        r1.hits.load(Ordering::SeqCst),
        r2.hits.load(Ordering::SeqCst),
    );
    assert_eq!(h1 + h2, 6);
    assert!(h1 >= 2 && h2 >= 2, "{h1} {h2}");
    p.stop().await;
}

/// Issue 10 item 9: after etcd was emptied and the cluster initialized again (fresh replicas,
/// epoch 1, etcd revisions from the start), the proxy kept the old rev and epoch, ignored every
/// answer as older, and sent `Baton-Min-Epoch: 5` that no replica could meet. Once the active
/// controller has said so for a grace period, it follows the new state, epoch included.
#[tokio::test]
async fn a_reinitialized_cluster_with_lower_revs_and_epochs_is_followed_after_a_grace_period() {
    let (ctl, ctl_addr) = start_ctl().await;
    let (r1, a1) = start_replica(Behaviour::Ok, 5).await;
    ctl.set_state(Some(a1), 5, 40);
    let p = start_proxy(
        ctl_addr,
        "failover_buffer_ms = 8000\nlong_poll_ms = 100\nstate_reset_after_ms = 300",
    )
    .await;
    let url = format!("{}/v1/kv/k", p.url);
    let (status, body, _) = call("PUT", &url).await;
    assert_eq!(status, 200, "{body}");
    // The old replicas are gone (wiped): what answers at r1's address now is not the leader.
    *r1.behaviour.lock().expect("lock") = Behaviour::NotLeader;
    let (r2, a2) = start_replica(Behaviour::Ok, 1).await;
    ctl.set_state(Some(a2), 1, 3);
    let (status, body, headers) = call("PUT", &url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers.get("baton-epoch").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(*r2.min_epochs.lock().expect("lock"), vec![1]);
    let (_, st, _) = call("GET", &format!("{}/v1/status", p.url)).await;
    assert_eq!(
        (st["epoch"].as_u64(), st["rev"].as_u64()),
        (Some(1), Some(3)),
        "{st}"
    );
    assert_eq!(st["state_resets"], 1, "{st}");
    p.stop().await;
}

/// Issue 10 item 9: the controller names each state's lineage (`state_id`, new on `init` and
/// `recover`). A re-initialized cluster (lower epoch, lower rev) under another lineage is
/// followed at once, without the grace period an answer without lineage needs.
#[tokio::test]
async fn a_state_of_another_lineage_is_followed_at_once() {
    let (ctl, ctl_addr) = start_ctl().await;
    let (r1, a1) = start_replica(Behaviour::Ok, 5).await;
    *ctl.state_id.lock().expect("lock") = Some("00000000000000aa".into());
    ctl.set_state(Some(a1), 5, 40);
    let p = start_proxy(
        ctl_addr,
        "failover_buffer_ms = 3000\nlong_poll_ms = 5000\nstate_reset_after_ms = 60000",
    )
    .await;
    let url = format!("{}/v1/kv/k", p.url);
    let (status, body, _) = call("PUT", &url).await;
    assert_eq!(status, 200, "{body}");
    *r1.behaviour.lock().expect("lock") = Behaviour::NotLeader;
    let (r2, a2) = start_replica(Behaviour::Ok, 1).await;
    *ctl.state_id.lock().expect("lock") = Some("00000000000000bb".into());
    ctl.set_state(Some(a2), 1, 3);
    // The long poll (5 s) wakes on the lower rev; the other lineage replaces the view at once
    // (the 60 s grace period would otherwise outlast the 3 s failover buffer).
    let (status, body, _) = call("PUT", &url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(*r2.min_epochs.lock().expect("lock"), vec![1]);
    let (_, st, _) = call("GET", &format!("{}/v1/status", p.url)).await;
    assert_eq!(
        (
            st["epoch"].as_u64(),
            st["rev"].as_u64(),
            st["state_resets"].as_u64()
        ),
        (Some(1), Some(3), Some(1)),
        "{st}"
    );
    p.stop().await;
}

/// Issue 10 item 9: etcd restored from a backup and `recover` run: the new state has a higher
/// epoch than any the proxy saw, at a lower rev. That cannot be an old answer of the same state
/// (within one state the epoch only grows with the rev), so it is followed at once.
#[tokio::test]
async fn a_recovered_state_with_a_higher_epoch_and_a_lower_rev_is_followed() {
    let (ctl, ctl_addr) = start_ctl().await;
    let (r1, a1) = start_replica(Behaviour::Ok, 5).await;
    ctl.set_state(Some(a1), 5, 40);
    let p = start_proxy(ctl_addr, "failover_buffer_ms = 8000\nlong_poll_ms = 100").await;
    let url = format!("{}/v1/kv/k", p.url);
    let (status, body, _) = call("PUT", &url).await;
    assert_eq!(status, 200, "{body}");
    *r1.behaviour.lock().expect("lock") = Behaviour::NotLeader;
    let (r2, a2) = start_replica(Behaviour::Ok, 6).await;
    ctl.set_state(Some(a2), 6, 12);
    let (status, body, _) = call("PUT", &url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(*r2.min_epochs.lock().expect("lock"), vec![6]);
    let (_, st, _) = call("GET", &format!("{}/v1/status", p.url)).await;
    assert_eq!(
        (st["epoch"].as_u64(), st["rev"].as_u64()),
        (Some(6), Some(12)),
        "{st}"
    );
    p.stop().await;
}

/// Regression: a controller that starts after the proxy, and has nothing newer than the view,
/// was reported unreachable for a whole `long_poll_ms` (the first request that reached it was a
/// long-poll with nothing to report). It is asked without waiting first.
#[tokio::test]
async fn a_controller_that_starts_late_is_reported_reachable_at_once() {
    let (ctl, ctl_addr) = start_ctl().await;
    let (_r1, a1) = start_replica(Behaviour::Ok, 1).await;
    ctl.set_leader(Some(a1), 1);
    let late = closed_port().await;
    let text = format!(
        "listen = \"127.0.0.1:0\"\ncontrollers = [\"http://{ctl_addr}\", \"http://{late}\"]\n\
         insecure = true\n[timing]\nlong_poll_ms = 30000\n"
    );
    let cfg = ProxyConfig::parse(std::path::Path::new("test.toml"), &text).expect("config");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(baton_proxy::serve(l, cfg, async move {
        let _ = rx.await;
    }));
    let p = Proxy {
        url,
        stop: Some(tx),
        task,
    };
    let (status, _, _) = call("PUT", &format!("{}/v1/kv/k", p.url)).await;
    assert_eq!(status, 200);
    // Now the late controller comes up, at the same rev as the view.
    let app = Router::new()
        .route("/v1/clusters/main/leader", get(ctl_leader))
        .route("/v1/clusters/main", get(ctl_view))
        .with_state(ctl.clone());
    let l2 = TcpListener::bind(late).await.expect("the released port");
    tokio::spawn(async move {
        let _ = axum::serve(l2, app).await;
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, st, _) = call("GET", &format!("{}/v1/status", p.url)).await;
        if st["controllers_reachable"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.stop().await;
}
