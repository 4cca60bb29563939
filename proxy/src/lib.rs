//! `baton-proxy`: the client entry point (DESIGN.md §7). It forwards `/v1/kv/*` to the leader
//! the controllers name (and `consistency=any` reads to any member), sending the highest epoch
//! it has seen as `Baton-Min-Epoch`; during a failover it holds requests up to
//! `timing.failover_buffer_ms` and re-sends them to the new leader — but only requests that
//! were certainly not applied (`retry.rs`); anything else is answered `504 outcome_unknown`.
//!
//! It holds no durable state and decides nothing about leadership: fencing stays the replicas'
//! job (the epoch precondition), the proxy only narrows the windows. `run` is the whole process
//! minus argument parsing and signals, so tests can run a proxy in-process.
//!
//! Layout: `view.rs` and `retry.rs` are pure (the cluster view, the re-send decision table);
//! `controllers.rs` (leader long-polls), `forward.rs` (attempts and holding), `api.rs` and
//! `metrics.rs` are the runtime around them; the accept loop (`limits.connections_max`, the
//! drain) is `baton_runtime::serve`.

pub mod api;
pub mod config;
pub mod controllers;
pub mod forward;
pub mod metrics;
pub mod retry;
pub mod shared;
pub mod view;

use baton_runtime::ServeOpts;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs a proxy on `cfg.listen` until `shutdown` completes.
pub async fn run(
    cfg: config::ProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve(baton_runtime::bind(cfg.listen).await?, cfg, shutdown).await
}

/// Runs a proxy on an already bound `listener` (tests bind port 0) until `shutdown` completes:
/// then it stops accepting, lets open requests finish for `timing.shutdown_drain_ms`, and stops
/// polling the controllers.
pub async fn serve(
    listener: TcpListener,
    cfg: config::ProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let local = listener.local_addr().ok();
    let drain = Duration::from_millis(cfg.timing.shutdown_drain_ms);
    let sh = Arc::new(shared::Shared::new(cfg));
    let poll_cancel = CancellationToken::new();
    let poller = tokio::spawn(controllers::run(sh.clone(), poll_cancel.clone()));
    let server_cancel = CancellationToken::new();
    let conn_metrics = baton_runtime::metrics::ConnMetrics {
        open: sh.metrics.connections.clone(),
        rejected: sh.metrics.connections_rejected.clone(),
    };
    let opts = ServeOpts::new(
        sh.cfg.limits.connections_max,
        drain,
        Duration::from_millis(sh.cfg.limits.idle_timeout_ms),
    )
    .with_metrics(conn_metrics);
    let server = tokio::spawn(baton_runtime::serve(
        listener,
        api::router(sh.clone()),
        opts,
        server_cancel.clone(),
    ));
    tracing::info!(listen = ?local, controllers = ?sh.cfg.controllers, cluster = %sh.cfg.cluster, "serving");
    shutdown.await;
    tracing::info!("stopping");
    server_cancel.cancel();
    // Held requests still need the pollers to learn a leader while they drain.
    let _ = server.await;
    poll_cancel.cancel();
    let _ = poller.await;
    tracing::info!("stopped");
    Ok(())
}
