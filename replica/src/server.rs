//! The HTTP/1.1 accept loop: serves a router with hyper, caps open connections
//! (`limits.connections_max`; one more is answered 503 JSON and closed) and shuts down
//! gracefully, letting in-flight requests finish for a bounded time.

use crate::metrics::Metrics;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves until `cancel` fires, then waits up to `drain` for open requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    metrics: Option<Arc<Metrics>>,
    cancel: CancellationToken,
    drain: Duration,
) {
    let sem = Arc::new(Semaphore::new(max_connections));
    let tracker = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            if let Some(m) = &metrics {
                m.connections_rejected.inc();
            }
            tokio::spawn(reject(stream, max_connections));
            continue;
        };
        if let Some(m) = &metrics {
            m.connections.inc();
        }
        let svc = TowerToHyperService::new(router.clone());
        // Upgrades carry replication streams over the same port.
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        let metrics = metrics.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
            if let Some(m) = &metrics {
                m.connections.dec();
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!("some connections were still open at shutdown");
    }
}

async fn reject(mut stream: tokio::net::TcpStream, max: usize) {
    let body = format!(
        "{{\"error\":\"overloaded\",\"message\":\"too many open connections (limits.connections_max = {max})\"}}"
    );
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(resp.as_bytes())).await;
    let _ = stream.shutdown().await;
}
