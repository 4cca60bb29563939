//! The HTTP/1.1 accept loop every server uses: serves an axum router with hyper (upgrades
//! allowed, so the replica's replication streams share its port), caps open connections (one
//! more is answered 503 `overloaded` JSON naming `limits.connections_max`, and closed) and
//! shuts down gracefully: on cancel it stops accepting, closes idle keep-alive connections and
//! gives open requests `drain` to finish. With TLS it completes each handshake in the
//! connection's own task (bounded by the idle timeout, so a silent or plain-HTTP client costs
//! one slot for that long at most) and puts the connection's [`Peer`] — address and client
//! certificate — in every request's extensions for `auth::guard` and the handlers.
//!
//! It owns no routes and no protocol; what a server does on shutdown before or after the drain
//! (refusing new writes, resigning) stays in that server's `run`.

use crate::metrics::ConnMetrics;
use crate::tls::{Peer, Tls};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How one server is served.
#[derive(Clone)]
pub struct ServeOpts {
    /// Most connections open at once (`limits.connections_max`, validated positive).
    pub connections_max: usize,
    /// After cancel, how long open requests may take to finish before they are dropped.
    pub drain: Duration,
    /// Closes a connection whose request head has not fully arrived this long after hyper began
    /// waiting for it (`limits.idle_timeout_ms`). The wait includes an idle keep-alive
    /// connection waiting for its next request, so this is also the idle timeout: a client
    /// that trickles a head byte by byte (slowloris) or opens connections and sends nothing
    /// holds a slot of `connections_max` this long at most. Baton's own pooled clients keep idle
    /// connections for less ([`CLIENT_POOL_IDLE`]), so they never reuse one the server is
    /// closing. `None` leaves hyper without a timer (tests only).
    pub header_read_timeout: Option<Duration>,
    /// Open and refused connections, when the server keeps metrics.
    pub metrics: Option<ConnMetrics>,
    /// `None`: plain HTTP (insecure mode).
    pub tls: Option<Arc<Tls>>,
}

/// How long Baton's own HTTP clients (heartbeats, the proxy, `batonctl`, the tests) keep an
/// idle pooled connection: under the servers' smallest idle timeout (5 s is the least
/// `limits.idle_timeout_ms` accepts; 15 s is the default), so a client never sends a request
/// on a connection the server is closing for idleness.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(4);

/// The default `limits.idle_timeout_ms` of every server.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 15_000;

/// Checks a configured `limits.idle_timeout_ms`: between 5 s and 10 min.
pub fn check_idle_timeout_ms(ms: u64) -> Result<(), String> {
    if !(5_000..=600_000).contains(&ms) {
        return Err(format!(
            "must be between 5000 and 600000 (5 s to 10 min), not {ms}"
        ));
    }
    Ok(())
}

impl ServeOpts {
    /// A cap, a drain and the idle (header-read) timeout; no metrics.
    pub fn new(connections_max: usize, drain: Duration, idle_timeout: Duration) -> ServeOpts {
        ServeOpts {
            connections_max,
            drain,
            header_read_timeout: Some(idle_timeout),
            metrics: None,
            tls: None,
        }
    }

    pub fn with_tls(mut self, tls: Option<Arc<Tls>>) -> ServeOpts {
        self.tls = tls;
        self
    }

    pub fn with_metrics(mut self, m: ConnMetrics) -> ServeOpts {
        self.metrics = Some(m);
        self
    }
}

/// Binds a server's `listen` address; the error names the config key.
pub async fn bind(listen: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (listen): {e}"))
}

/// Serves `router` on `listener` until `cancel` fires, then drains (see the file header).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    opts: ServeOpts,
    cancel: CancellationToken,
) {
    let max = opts.connections_max;
    let sem = Arc::new(Semaphore::new(max));
    let tracker = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    if let Some(t) = opts.header_read_timeout {
        builder.timer(TokioTimer::new()).header_read_timeout(t);
    }
    loop {
        let (stream, addr) = tokio::select! {
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
            if let Some(m) = &opts.metrics {
                m.rejected.inc();
            }
            match opts.tls.as_ref().and_then(|t| t.server_config()) {
                None => tokio::spawn(reject(stream, max)),
                // Over TLS the refusal needs a session to be read at all: a short handshake
                // (bounded on its own, outside the cap) and then the same 503.
                Some(cfg) => tokio::spawn(async move {
                    let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
                    if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), accept).await {
                        reject(s, max).await
                    }
                }),
            };
            continue;
        };
        if let Some(m) = &opts.metrics {
            m.open.inc();
        }
        let metrics = opts.metrics.clone();
        let cancel = cancel.clone();
        let router = router.clone();
        let builder = builder.clone();
        let tls = match &opts.tls {
            None => None,
            Some(t) => match t.server_config() {
                Some(c) => Some(c),
                // A TLS without this node's certificate (a client's) never serves plain HTTP
                // in its place: the connection is dropped.
                None => {
                    tracing::error!(
                        "TLS is configured without a server certificate: connection dropped"
                    );
                    continue;
                }
            },
        };
        let handshake_timeout = opts.header_read_timeout.unwrap_or(Duration::from_secs(10));
        tracker.spawn(async move {
            match tls {
                None => {
                    let peer = Peer { addr, cert: None };
                    serve_conn(&builder, TokioIo::new(stream), router, peer, &cancel).await
                }
                Some(cfg) => {
                    let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
                    let shake = tokio::select! {
                        r = tokio::time::timeout(handshake_timeout, accept) => Some(r),
                        _ = cancel.cancelled() => None,
                    };
                    match shake {
                        Some(Ok(Ok(s))) => {
                            let cert = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| Arc::new(c.clone().into_owned()));
                            let peer = Peer { addr, cert };
                            serve_conn(&builder, TokioIo::new(s), router, peer, &cancel).await
                        }
                        Some(Ok(Err(e))) => {
                            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                            if let Some(m) = &metrics {
                                m.tls_failed.inc();
                            }
                        }
                        Some(Err(_)) => {
                            tracing::debug!(peer = %addr, "TLS handshake did not finish in time");
                            if let Some(m) = &metrics {
                                m.tls_failed.inc();
                            }
                        }
                        None => {}
                    }
                }
            }
            drop(permit);
            if let Some(m) = &metrics {
                m.open.dec();
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(opts.drain, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_ms = opts.drain.as_millis() as u64,
            "some requests were still open at the end of the shutdown drain"
        );
    }
}

/// Serves one connection's requests (each carrying `peer`) until it closes, or, on cancel,
/// until its open requests finish.
async fn serve_conn<I>(
    builder: &hyper::server::conn::http1::Builder,
    io: TokioIo<I>,
    router: Router,
    peer: Peer,
    cancel: &CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let svc = router.map_request(move |mut r: hyper::Request<hyper::body::Incoming>| {
        r.extensions_mut().insert(peer.clone());
        r
    });
    let conn = builder
        .serve_connection(io, TowerToHyperService::new(svc))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The answer to one connection over the cap: 503 `overloaded`, then close.
async fn reject<S: tokio::io::AsyncWrite + Unpin>(mut stream: S, max: usize) {
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
