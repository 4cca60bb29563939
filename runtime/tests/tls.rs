//! TLS and credentials on the shared accept loop over real sockets: the guard answers 401
//! without credentials, 403 with the wrong role or identity, and lets the right ones through;
//! a refused client that sends its whole body first still reads the 401; a client expecting
//! another identity gets no session; and SIGHUP reloads the certificate files for new
//! connections while open ones keep working.

use axum::routing::{get, put};
use axum::Router;
use baton_runtime::auth::{hash_token, Auth, Need, Policy, Role, TokenConfig};
use baton_runtime::connect::{Connector, Dialer};
use baton_runtime::pki::{self, Ca};
use baton_runtime::tls::{self, Tls};
use baton_runtime::{serve, ServeOpts};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

type HttpClient = Client<Connector, Full<Bytes>>;

fn client(dialer: Dialer) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .build(Connector::new(dialer, Some(Duration::from_secs(2))))
}

async fn call(
    c: &HttpClient,
    method: &str,
    url: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let mut b = hyper::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let r = c
        .request(
            b.body(Full::new(Bytes::from_static(b"v")))
                .expect("request"),
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    let body = r
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

struct Server {
    url: String,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    ca: Ca,
    tls: Arc<Tls>,
    registry: prometheus::Registry,
    _cancel: tokio_util::sync::DropGuard,
}

/// A server as node "n1" (a controller identity) with a read and a write token; `/kv` needs
/// read for GET and write for PUT, `/node` a member certificate of cluster "main".
async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA").expect("ca");
    let files = ca
        .write_node(
            dir.path(),
            "n1",
            &pki::controller_names("n1"),
            &pki::local_hosts(),
        )
        .expect("files");
    let tls = Tls::server(&files.as_tls()).expect("tls");
    let registry = prometheus::Registry::new();
    let tokens = vec![
        TokenConfig {
            name: "reader".into(),
            role: Role::Read,
            sha256: hash_token("r-token"),
        },
        TokenConfig {
            name: "writer".into(),
            role: Role::Write,
            sha256: hash_token("w-token"),
        },
    ];
    let auth = Auth::new(true, &tokens, &registry, "test").expect("auth");
    let policy: Policy = Arc::new(
        |m: &axum::http::Method, path: &str| match (m.as_str(), path) {
            (_, "/node") => Need::Node(vec![tls::cluster_name("main")]),
            ("GET", _) => Need::Role(Role::Read, vec![]),
            _ => Need::Role(Role::Write, vec![]),
        },
    );
    let router = Router::new()
        .route("/kv", get(|| async { "value" }).put(|| async { "stored" }))
        .route("/node", put(|| async { "hello member" }))
        .layer(axum::middleware::from_fn_with_state(
            (auth, policy),
            baton_runtime::auth::guard,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    tls::reload_on_sighup(tls.clone(), cancel.clone());
    tokio::spawn(serve(
        listener,
        router,
        ServeOpts::new(64, Duration::from_secs(1), Duration::from_secs(5))
            .with_tls(Some(tls.clone())),
        cancel.clone(),
    ));
    Server {
        url: format!("https://127.0.0.1:{}", addr.port()),
        addr,
        dir,
        ca,
        tls,
        registry,
        _cancel: cancel.drop_guard(),
    }
}

fn refused(registry: &prometheus::Registry, reason: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "baton_test_auth_refused_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_label().iter().any(|l| l.value() == reason))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_identities_are_checked_and_refusals_counted() {
    let s = start().await;
    let ca_file = s.dir.path().join("ca.pem");
    let plain = client(Dialer::new(
        Some(Tls::client_only(&ca_file).expect("ca")),
        "",
    ));
    let kv = format!("{}/kv", s.url);
    assert_eq!(call(&plain, "GET", &kv, None).await.expect("call").0, 401);
    assert_eq!(
        call(&plain, "GET", &kv, Some("nope"))
            .await
            .expect("call")
            .0,
        401
    );
    assert_eq!(
        call(&plain, "GET", &kv, Some("r-token"))
            .await
            .expect("call"),
        (200, "value".into())
    );
    let (st, body) = call(&plain, "PUT", &kv, Some("r-token"))
        .await
        .expect("call");
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("write role"), "{body}");
    assert_eq!(
        call(&plain, "PUT", &kv, Some("w-token"))
            .await
            .expect("call"),
        (200, "stored".into())
    );
    // /node: a token is not a certificate; a member of another cluster is not one of ours.
    let node = format!("{}/node", s.url);
    assert_eq!(
        call(&plain, "PUT", &node, Some("w-token"))
            .await
            .expect("call")
            .0,
        403
    );
    let member = |cluster: &str, id: &str| {
        let f =
            s.ca.write_node(
                s.dir.path(),
                &format!("{cluster}-{id}"),
                &pki::replica_names(cluster, id),
                &pki::local_hosts(),
            )
            .expect("member files");
        client(Dialer::new(
            Some(Tls::server(&f.as_tls()).expect("member tls")),
            "",
        ))
    };
    assert_eq!(
        call(&member("main", "r1"), "PUT", &node, None)
            .await
            .expect("call"),
        (200, "hello member".into())
    );
    assert_eq!(
        call(&member("other", "r1"), "PUT", &node, None)
            .await
            .expect("call")
            .0,
        403
    );
    assert!(refused(&s.registry, "no_credentials") >= 1);
    assert!(refused(&s.registry, "bad_token") >= 1);
    assert!(refused(&s.registry, "wrong_role") >= 1);
    assert!(refused(&s.registry, "wrong_identity") >= 2);
    // A client expecting another node's identity gets no session at all.
    let wrong = client(Dialer::new(
        Some(Tls::client_only(&ca_file).expect("ca")),
        tls::any_proxy(),
    ));
    assert!(call(&wrong, "GET", &kv, Some("r-token")).await.is_err());
    let right = client(Dialer::new(
        Some(Tls::client_only(&ca_file).expect("ca")),
        tls::controller_name("n1"),
    ));
    assert_eq!(
        call(&right, "GET", &kv, Some("r-token"))
            .await
            .expect("call")
            .0,
        200
    );
    // Plain HTTP to an https URL is refused by the client before anything is sent.
    let insecure = client(Dialer::new(None, ""));
    assert!(call(&insecure, "GET", &kv, None).await.is_err());
}

/// A stranger that sends a 512 KiB body before reading anything reads the 401, not a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_that_sends_its_whole_body_first_reads_the_401() {
    let s = start().await;
    let ca_file = s.dir.path().join("ca.pem");
    let mut conn = Dialer::new(Some(Tls::client_only(&ca_file).expect("ca")), "")
        .dial(&s.addr.to_string(), Duration::from_secs(2))
        .await
        .expect("dial");
    let body = vec![b'x'; 512 << 10];
    conn.write_all(
        format!(
            "PUT /kv HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("head");
    conn.write_all(&body).await.expect("body");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}

/// SIGHUP: new connections get the new certificate, an open keep-alive connection keeps
/// working on the old one, and a reload that fails keeps the old files in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_without_dropping_connections() {
    let s = start().await;
    let ca_file = s.dir.path().join("ca.pem");
    let ca = || Some(Tls::client_only(&ca_file).expect("ca"));
    let old = client(Dialer::new(ca(), tls::controller_name("n1")));
    let kv = format!("{}/kv", s.url);
    assert_eq!(
        call(&old, "GET", &kv, Some("r-token"))
            .await
            .expect("call")
            .0,
        200
    );
    // The node is renamed n2: same files, new certificate.
    s.ca.write_node(
        s.dir.path(),
        "n1",
        &pki::controller_names("n2"),
        &pki::local_hosts(),
    )
    .expect("rewrite");
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = client(Dialer::new(ca(), tls::controller_name("n2")));
        if matches!(
            call(&fresh, "GET", &kv, Some("r-token")).await,
            Ok((200, _))
        ) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New connections expecting n1 fail now; the open one still serves.
    let fresh_old = client(Dialer::new(ca(), tls::controller_name("n1")));
    assert!(call(&fresh_old, "GET", &kv, Some("r-token")).await.is_err());
    assert_eq!(
        call(&old, "GET", &kv, Some("r-token"))
            .await
            .expect("the open connection")
            .0,
        200
    );
    // A broken key file: the reload fails and the files in use stay.
    std::fs::write(s.dir.path().join("n1-key.pem"), "garbage").expect("break");
    assert!(s.tls.reload().is_err());
    let again = client(Dialer::new(ca(), tls::controller_name("n2")));
    assert_eq!(
        call(&again, "GET", &kv, Some("r-token"))
            .await
            .expect("call")
            .0,
        200
    );
}
