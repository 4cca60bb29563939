//! The proxy in-process with TLS and tokens (DESIGN §9), against a scripted controller and
//! scripted replicas that serve TLS with certificates of one test CA: a request without a token,
//! or with an unknown one, gets 401, one with too small a role 403, and neither reaches a
//! replica; health checks are open; a request that passes is forwarded over TLS with the
//! client's Authorization unchanged and the proxy's own certificate; the leader must present
//! its own name (a replica with another member's certificate gets nothing), while a
//! `consistency=any` read takes any member of the cluster; plain HTTP to the proxy is refused
//! and counted.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use baton_proxy::config::ProxyConfig;
use baton_runtime::auth::hash_token;
use baton_runtime::connect::{Connector, Dialer};
use baton_runtime::pki::{self, Ca};
use baton_runtime::tls::{any_proxy, proxy_name, Peer, Tls, TlsFiles};
use baton_runtime::ServeOpts;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const READ_TOKEN: &str = "read-token-0123456789";
const WRITE_TOKEN: &str = "write-token-0123456789";

/// A test deployment's CA and the files of its nodes.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().expect("tempdir"),
            ca: Ca::new("proxy test CA").expect("CA"),
        }
    }

    fn node(&self, file: &str, names: &[String]) -> TlsFiles {
        self.ca
            .write_node(self.dir.path(), file, names, &pki::local_hosts())
            .expect("certificate")
            .as_tls()
    }

    fn ca_file(&self) -> PathBuf {
        self.ca.write_ca(self.dir.path()).expect("CA file")
    }
}

/// Serves `app` over TLS with `files` on a loopback port until `cancel`.
async fn serve_tls(app: Router, files: &TlsFiles, cancel: &CancellationToken) -> SocketAddr {
    let tls = Tls::server(files).expect("TLS files");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let opts =
        ServeOpts::new(64, Duration::from_secs(1), Duration::from_secs(15)).with_tls(Some(tls));
    tokio::spawn(baton_runtime::serve(l, app, opts, cancel.clone()));
    addr
}

/// Whether a request came over a connection with the proxy's certificate.
fn from_proxy(req: &Request) -> bool {
    req.extensions()
        .get::<Peer>()
        .is_some_and(|p| p.is(&proxy_name("proxy")))
}

// ----- a scripted controller -------------------------------------------------------------------

#[derive(Clone, Default)]
struct Ctl {
    /// (leader id, leader addr, rev).
    leader: Arc<Mutex<(String, String, u64)>>,
    members: Arc<Mutex<Vec<String>>>,
    /// Every request carried the proxy's certificate.
    saw_proxy: Arc<Mutex<Vec<bool>>>,
}

async fn ctl_leader(State(c): State<Ctl>, req: Request) -> Response {
    c.saw_proxy.lock().expect("lock").push(from_proxy(&req));
    // Long-polls are answered at once: the proxy then asks again after a short pause.
    let (id, addr, rev) = c.leader.lock().expect("lock").clone();
    Json(serde_json::json!({
        "id": id, "addr": addr, "epoch": 1, "rev": rev, "from_active": true,
    }))
    .into_response()
}

async fn ctl_view(State(c): State<Ctl>, req: Request) -> Response {
    c.saw_proxy.lock().expect("lock").push(from_proxy(&req));
    let rev = c.leader.lock().expect("lock").2;
    let members: Vec<serde_json::Value> = c
        .members
        .lock()
        .expect("lock")
        .iter()
        .map(|a| serde_json::json!({ "addr": a }))
        .collect();
    Json(serde_json::json!({ "rev": rev, "members": members })).into_response()
}

async fn start_ctl(pki: &Pki, cancel: &CancellationToken) -> (Ctl, SocketAddr) {
    let c = Ctl::default();
    let app = Router::new()
        .route("/v1/clusters/main/leader", get(ctl_leader))
        .route("/v1/clusters/main", get(ctl_view))
        .with_state(c.clone());
    let files = pki.node("c1", &pki::controller_names("c1"));
    (c.clone(), serve_tls(app, &files, cancel).await)
}

// ----- a scripted replica ----------------------------------------------------------------------

/// What a scripted replica saw of each request: its `Authorization` and whether it came with
/// the proxy's certificate.
#[derive(Clone, Default)]
struct Replica {
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// One request's `Authorization`, and whether it came with the proxy's certificate.
type Seen = (Option<String>, bool);

async fn replica_kv(State(r): State<Replica>, req: Request) -> Response {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    r.seen.lock().expect("lock").push((auth, from_proxy(&req)));
    let mut resp = (StatusCode::OK, "value").into_response();
    resp.headers_mut()
        .insert("baton-epoch", "1".parse().expect("digits"));
    resp
}

/// A replica presenting the certificate of member `cert_id` of cluster `main`.
async fn start_replica(
    pki: &Pki,
    cert_id: &str,
    cancel: &CancellationToken,
) -> (Replica, SocketAddr) {
    let r = Replica::default();
    let app = Router::new()
        .route("/v1/kv/{*key}", any(replica_kv))
        .with_state(r.clone());
    let files = pki.node(cert_id, &pki::replica_names("main", cert_id));
    (r.clone(), serve_tls(app, &files, cancel).await)
}

// ----- the proxy and a client ------------------------------------------------------------------

struct Proxy {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_proxy(pki: &Pki, ctl: SocketAddr, timing: &str) -> Proxy {
    let files = pki.node("proxy", &pki::proxy_names("proxy"));
    let text = format!(
        "listen = \"127.0.0.1:0\"\ncontrollers = [\"https://{ctl}\"]\n\
         [tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n\
         [[tokens]]\nname = \"reader\"\nrole = \"read\"\nsha256 = \"{}\"\n\
         [[tokens]]\nname = \"writer\"\nrole = \"write\"\nsha256 = \"{}\"\n\
         [timing]\n{timing}\n",
        files.ca_file,
        files.cert_file,
        files.key_file,
        hash_token(READ_TOKEN),
        hash_token(WRITE_TOKEN),
    );
    let cfg = ProxyConfig::parse(std::path::Path::new("test.toml"), &text).expect("config");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", l.local_addr().expect("addr"));
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

/// A client trusting the test CA, presenting no certificate, checking it talks to a proxy.
fn client(pki: &Pki) -> hyper_util::client::legacy::Client<Connector, Full<Bytes>> {
    let tls = Tls::client_only(&pki.ca_file()).expect("CA");
    let conn = Connector::new(
        Dialer::new(Some(tls), any_proxy()),
        Some(Duration::from_secs(2)),
    );
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(conn)
}

async fn call(
    pki: &Pki,
    method: &str,
    url: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value, axum::http::HeaderMap) {
    let mut b = hyper::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = b
        .body(Full::new(Bytes::from_static(b"value")))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), client(pki).request(req))
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
async fn tokens_and_roles_are_checked_and_the_credential_reaches_the_replica() {
    let pki = Pki::new();
    let cancel = CancellationToken::new();
    let (ctl, ctl_addr) = start_ctl(&pki, &cancel).await;
    let (r1, r1_addr) = start_replica(&pki, "r1", &cancel).await;
    *ctl.leader.lock().expect("lock") = ("r1".into(), r1_addr.to_string(), 1);
    let p = start_proxy(&pki, ctl_addr, "failover_buffer_ms = 3000").await;
    let kv = format!("{}/v1/kv/k", p.url);

    // No token, an unknown token, too small a role: refused, and nothing reaches the replica.
    let (status, body, headers) = call(&pki, "GET", &kv, None).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &"unauthorized".into()),
        "{body}"
    );
    assert!(headers.contains_key("www-authenticate"));
    let (status, body, _) = call(&pki, "GET", &kv, Some("not-a-token")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body, _) = call(&pki, "PUT", &kv, Some(READ_TOKEN)).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &"forbidden".into()),
        "{body}"
    );
    let (status, _, _) = call(&pki, "GET", &format!("{}/v1/status", p.url), None).await;
    assert_eq!(status, 401);
    let (status, _, _) = call(&pki, "GET", &format!("{}/metrics", p.url), None).await;
    assert_eq!(status, 401);
    assert!(r1.seen.lock().expect("lock").is_empty());
    // Health checks are open: no token needed.
    let (status, _, _) = call(&pki, "GET", &format!("{}/v1/health/live", p.url), None).await;
    assert_eq!(status, 200);

    // The right roles pass, over TLS, with the client's credential and the proxy's certificate.
    let (status, body, _) = call(&pki, "PUT", &kv, Some(WRITE_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = call(&pki, "GET", &kv, Some(READ_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = call(&pki, "GET", &kv, Some(WRITE_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        *r1.seen.lock().expect("lock"),
        vec![
            (Some(format!("Bearer {WRITE_TOKEN}")), true),
            (Some(format!("Bearer {READ_TOKEN}")), true),
            (Some(format!("Bearer {WRITE_TOKEN}")), true),
        ]
    );
    let saw = ctl.saw_proxy.lock().expect("lock").clone();
    assert!(!saw.is_empty() && saw.iter().all(|s| *s), "{saw:?}");

    // The proxy's own endpoints with a read token.
    let (status, st, _) = call(
        &pki,
        "GET",
        &format!("{}/v1/status", p.url),
        Some(READ_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(
        (&st["insecure"], &st["id"]),
        (&false.into(), &"proxy".into()),
        "{st}"
    );
    assert_eq!(st["controllers_reachable"], 1, "{st}");

    // Plain HTTP on the TLS port is refused and counted.
    let plain = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let plain_url = p.url.replace("https://", "http://") + "/v1/status";
    let req = hyper::Request::get(plain_url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = tokio::time::timeout(Duration::from_secs(20), plain.request(req))
        .await
        .expect("the proxy closes");
    assert!(
        r.is_err(),
        "plain HTTP answered: {:?}",
        r.map(|r| r.status())
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, m, _) = call(&pki, "GET", &format!("{}/metrics", p.url), Some(READ_TOKEN)).await;
    assert_eq!(status, 200);
    let m = m.as_str().unwrap_or_default().to_string();
    for line in [
        "baton_proxy_auth_refused_total{reason=\"no_credentials\"} 3",
        "baton_proxy_auth_refused_total{reason=\"bad_token\"} 1",
        "baton_proxy_auth_refused_total{reason=\"wrong_role\"} 1",
        "baton_proxy_tls_handshakes_failed_total 1",
        "baton_proxy_requests_total{result=\"ok\"} 3",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    p.stop().await;
    cancel.cancel();
}

#[tokio::test]
async fn the_leader_must_present_its_own_name_and_any_reads_any_members() {
    let pki = Pki::new();
    let cancel = CancellationToken::new();
    let (ctl, ctl_addr) = start_ctl(&pki, &cancel).await;
    // The controllers name r1 at an address where r2 answers.
    let (r2, r2_addr) = start_replica(&pki, "r2", &cancel).await;
    *ctl.leader.lock().expect("lock") = ("r1".into(), r2_addr.to_string(), 1);
    *ctl.members.lock().expect("lock") = vec![r2_addr.to_string()];
    let p = start_proxy(&pki, ctl_addr, "failover_buffer_ms = 600").await;
    let kv = format!("{}/v1/kv/k", p.url);
    let (status, body, _) = call(&pki, "PUT", &kv, Some(WRITE_TOKEN)).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &"not_leader".into()),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap_or_default().contains("TLS"),
        "{body}"
    );
    assert!(
        r2.seen.lock().expect("lock").is_empty(),
        "nothing reached r2"
    );
    // Any member of the cluster may answer a consistency=any read.
    let (status, body, _) = call(
        &pki,
        "GET",
        &format!("{kv}?consistency=any"),
        Some(READ_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(r2.seen.lock().expect("lock").len(), 1);
    p.stop().await;
    cancel.cancel();
}
