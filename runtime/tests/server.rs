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
        ServeOpts::new(1, Duration::from_secs(2), Duration::from_secs(15)).with_metrics(m.clone()),
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
    let mut opts = ServeOpts::new(4, Duration::from_secs(1), Duration::from_secs(15));
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

/// An idle keep-alive connection (and one that never sends anything) is closed after the idle
/// timeout, freeing its slot under the connection cap.
#[tokio::test]
async fn idle_connections_are_closed_and_free_their_slot() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/", get(|| async { "hello" }));
    let cancel = CancellationToken::new();
    let mut opts = ServeOpts::new(1, Duration::from_secs(1), Duration::from_secs(15));
    opts.header_read_timeout = Some(Duration::from_millis(300));
    let server = tokio::spawn(serve(listener, router, opts, cancel.clone()));

    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
        .await
        .expect("a silent connection is closed by the idle timeout")
        .expect("read");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // The one slot is free again: a keep-alive request is served, then the connection idles
    // and is closed too.
    let mut c = TcpStream::connect(addr).await.expect("connect");
    get_ok(&mut c, "hello").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("the idle keep-alive connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    cancel.cancel();
    server.await.expect("server task");
}

/// A client that sends its whole oversized body before reading (Python's `urllib` does) reads
/// the 413, not a connection reset: the body is drained before the answer.
#[tokio::test]
async fn an_oversized_body_sent_whole_gets_the_413() {
    use axum::body::Body;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use baton_runtime::body::{closing, content_length, read_limited, BodyError};
    async fn put(headers: HeaderMap, body: Body) -> axum::response::Response {
        match read_limited(body, content_length(&headers), 1024).await {
            Ok(b) => format!("got {}", b.len()).into_response(),
            Err(BodyError::TooLarge { announced }) => closing(
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("too large {announced:?}"),
                )
                    .into_response(),
            ),
            Err(BodyError::Read(m)) => (StatusCode::BAD_REQUEST, m).into_response(),
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/", axum::routing::put(put));
    let cancel = CancellationToken::new();
    let opts = ServeOpts::new(8, Duration::from_secs(1), Duration::from_secs(15));
    let server = tokio::spawn(serve(listener, router, opts, cancel.clone()));

    let big = vec![b'x'; 8 << 20];
    // With a Content-Length, and chunked (no length announced).
    for chunked in [false, true] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut req = Vec::new();
        if chunked {
            req.extend_from_slice(
                b"PUT / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            for part in big.chunks(64 << 10) {
                req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                req.extend_from_slice(part);
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"0\r\n\r\n");
        } else {
            req.extend_from_slice(
                format!(
                    "PUT / HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
                    big.len()
                )
                .as_bytes(),
            );
            req.extend_from_slice(&big);
        }
        tokio::time::timeout(Duration::from_secs(10), s.write_all(&req))
            .await
            .expect("the whole body is taken in time")
            .expect("the whole body is taken, no reset");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .expect("answered in time")
            .expect("read the answer, no reset");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "chunked={chunked}: {text}"
        );
        let want = if chunked {
            "too large None".to_string()
        } else {
            format!("too large Some({})", big.len())
        };
        assert!(text.contains(&want), "{text}");
    }
    // A body within the limit is read whole.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"PUT / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.expect("read");
    assert!(String::from_utf8_lossy(&answer).contains("got 5"));
    cancel.cancel();
    server.await.expect("server task");
}
