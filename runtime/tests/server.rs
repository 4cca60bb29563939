//! The shared accept loop over real sockets: the connection cap answers one connection too many
//! with 503 `overloaded` and counts it, open connections are counted, and a cancel ends the
//! server once open connections drained (an idle keep-alive connection is closed at once).

use axum::routing::get;
use axum::Router;
use baton_runtime::metrics::ConnMetrics;
use baton_runtime::{serve, ServeOpts};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Sends one keep-alive GET and reads until the body `want` arrived.
async fn get_ok(s: &mut TcpStream, want: &str) {
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(want) {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn cap_rejects_one_too_many_and_cancel_drains() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let registry = prometheus::Registry::new();
    let m = ConnMetrics::register(&registry, "test");
    let router = Router::new().route("/", get(|| async { "hello" }));
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        router,
        ServeOpts::new(1, Duration::from_secs(2)).with_metrics(m.clone()),
        cancel.clone(),
    ));

    let mut first = TcpStream::connect(addr).await.expect("connect");
    get_ok(&mut first, "hello").await;
    assert_eq!(m.open.get(), 1);

    let mut second = TcpStream::connect(addr).await.expect("connect");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"error\":\"overloaded\""), "{answer}");
    assert!(answer.contains("limits.connections_max = 1"), "{answer}");
    assert_eq!(m.rejected.get(), 1);
    let text = baton_runtime::metrics::render(&registry);
    assert!(
        text.contains("baton_test_connections_rejected_total 1"),
        "{text}"
    );

    // The first connection is idle (keep-alive): the cancel closes it and the server returns
    // well before the drain bound.
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("server stopped within the drain")
        .expect("server task");
    let mut rest = Vec::new();
    let n = first.read_to_end(&mut rest).await.expect("read");
    assert_eq!(n, 0, "the idle connection was closed without an answer");
    assert_eq!(m.open.get(), 0);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn header_read_timeout_closes_a_slow_request_head() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/", get(|| async { "hello" }));
    let cancel = CancellationToken::new();
    let mut opts = ServeOpts::new(4, Duration::from_secs(1));
    opts.header_read_timeout = Some(Duration::from_millis(200));
    let server = tokio::spawn(serve(listener, router, opts, cancel.clone()));

    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nhost:")
        .await
        .expect("write");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest))
        .await
        .expect("closed by the header timeout, not by the test's deadline")
        .expect("read");
    assert!(!String::from_utf8_lossy(&rest).contains("hello"));

    // A prompt request on a fresh connection is still served.
    let mut fast = TcpStream::connect(addr).await.expect("connect");
    get_ok(&mut fast, "hello").await;
    cancel.cancel();
    server.await.expect("server task");
}
