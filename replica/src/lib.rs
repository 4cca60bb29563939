//! `baton-replica`: a durable log (WAL), a key-value state machine, and the client API; it takes
//! its role (leader, follower, fenced) only from the active controller's directives.
//!
//! `run` is the whole process minus argument parsing and signal handling, so tests can start a
//! replica in-process and stop it by completing the `shutdown` future. The accept loop (with
//! `limits.connections_max` and the drain) is `baton_runtime::serve`.

pub mod api;
pub mod config;
pub mod core;
pub mod driver;
pub mod faults;
pub mod heartbeat;
pub mod logthread;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod repl;
pub mod snapshot;
pub mod state;
pub mod tail;
pub mod wal;

use baton_runtime::ServeOpts;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs a replica until `shutdown` completes (clean stop) or a fatal error (returned as `Err`).
pub async fn run(
    cfg: config::ReplicaConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = baton_runtime::bind(cfg.listen).await?;
    let (node, report) = tokio::task::spawn_blocking(move || node::Node::open(cfg)).await??;
    tracing::info!(
        id = %node.id,
        data_dir = %node.data_dir().display(),
        created = report.created,
        snapshot_lsn = %report.snapshot_lsn,
        replayed = report.records_replayed,
        torn_bytes_truncated = report.torn_bytes,
        ms = report.elapsed.as_millis() as u64,
        log_open_ms = report.log_open.as_millis() as u64,
        snapshot_load_ms = report.snapshot_load.as_millis() as u64,
        replay_ms = report.replay.as_millis() as u64,
        "replica opened"
    );
    let cancel = CancellationToken::new();
    let hb = tokio::spawn(heartbeat::run(node.clone(), cancel.child_token()));
    let follower = tokio::spawn(repl::follower::run(node.clone(), cancel.child_token()));
    let ticker = {
        let node = node.clone();
        let cancel = cancel.child_token();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(5));
            loop {
                tokio::select! {
                    _ = iv.tick() => node.tick(),
                    _ = cancel.cancelled() => break,
                }
            }
        })
    };
    let server_cancel = CancellationToken::new();
    let conn_metrics = baton_runtime::metrics::ConnMetrics {
        open: node.metrics.connections.clone(),
        rejected: node.metrics.connections_rejected.clone(),
        tls_failed: node.metrics.tls_failed.clone(),
    };
    if let Some(tls) = &node.tls {
        baton_runtime::tls::reload_on_sighup(tls.clone(), server_cancel.clone());
    }
    let server = tokio::spawn(baton_runtime::serve(
        listener,
        api::router(node.clone()),
        ServeOpts::new(
            node.cfg.limits.connections_max,
            Duration::from_secs(2),
            Duration::from_millis(node.cfg.limits.idle_timeout_ms),
        )
        .with_metrics(conn_metrics)
        .with_tls(node.tls.clone()),
        server_cancel.clone(),
    ));
    tracing::info!(listen = %node.cfg.listen, boot_id = %node.boot_id, "serving");
    if node.fatal().is_none() {
        tokio::select! {
            _ = shutdown => tracing::info!("stopping"),
            _ = node.fatal_notify.notified() => {}
        }
    }
    node.shutdown().await;
    cancel.cancel();
    server_cancel.cancel();
    let _ = tokio::join!(hb, ticker, server, follower);
    if let Some(f) = node.fatal() {
        anyhow::bail!("fatal: {}", f.0);
    }
    tracing::info!("stopped");
    Ok(())
}
