//! The HTTP/1.1 accept loop: serves the router with hyper, caps open client connections
//! (`limits.connections_max`; one more is answered 503 `overloaded` and closed) and shuts down
//! gracefully: no new connections, idle keep-alive connections closed, open requests given
//! `timing.shutdown_drain_ms` to finish.

use crate::metrics::Metrics;
use crate::shared::Shared;
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
    sh: Arc<Shared>,
    cancel: CancellationToken,
    drain: Duration,
) {
    let max_connections = sh.cfg.limits.connections_max;
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
            sh.metrics.connections_rejected.inc();
            tokio::spawn(reject(stream, max_connections));
            continue;
        };
        sh.metrics.connections.inc();
        let svc = TowerToHyperService::new(router.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let sh = sh.clone();
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
            let m: &Metrics = &sh.metrics;
            m.connections.dec();
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!("some requests were still open at the end of timing.shutdown_drain_ms");
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
