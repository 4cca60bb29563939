//! `baton-controller --config FILE.toml`: connects to etcd, campaigns for every configured
//! cluster, answers heartbeats with directives, decides failovers, and serves the ops API.
//! Exits 2 on a bad config, 0 on SIGTERM/SIGINT (after resigning, so a standby takes over).

use baton_controller::api::{self, Api};
use baton_controller::config::ControllerConfig;
use baton_controller::core::ClusterCore;
use baton_controller::runtime::{self, ClusterRt, Keys, Session};
use baton_controller::upkeep::{self, EtcdHealth};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Baton failover controller.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Path to the controller's TOML config.
    #[arg(long)]
    config: PathBuf,
}

pub(crate) fn main() -> ExitCode {
    // Fault points (only in builds with the `failpoints` feature) armed by `FAILPOINTS`.
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let args = Args::parse();
    let cfg = match ControllerConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton-controller: {e}");
            return ExitCode::from(2);
        }
    };
    baton_common::logging::init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-controller: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-controller: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn connect(cfg: &ControllerConfig) -> etcd_client::Client {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
    let mut warned = false;
    loop {
        match etcd_client::Client::connect(&cfg.etcd, Some(opts.clone())).await {
            Ok(c) => return c,
            Err(e) => {
                if !warned {
                    tracing::warn!(etcd = ?cfg.etcd, error = %e, "cannot reach etcd; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn run(cfg: ControllerConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (listen): {e}", cfg.listen))?;
    let cfg = Arc::new(cfg);
    let cancel = CancellationToken::new();
    let etcd = tokio::select! {
        c = connect(&cfg) => c,
        _ = shutdown_signal() => return Ok(()),
    };
    tracing::info!(id = %cfg.id, listen = %cfg.listen, etcd = ?cfg.etcd, "controller started");
    let session = Arc::new(Mutex::new(Session::default()));
    let session_task = tokio::spawn(runtime::run_session(
        etcd.clone(),
        cfg.timing.election_ttl_s,
        cfg.timing.clock_drift,
        session.clone(),
        cancel.clone(),
    ));
    let mut clusters = Vec::new();
    let mut tasks = Vec::new();
    for c in &cfg.clusters {
        let rt = Arc::new(ClusterRt {
            name: c.name.clone(),
            keys: Keys::new(&c.name),
            core: Mutex::new(ClusterCore::new(cfg.cluster_cfg(c))),
            rev_tx: tokio::sync::watch::channel(0).0,
        });
        tasks.push(tokio::spawn(runtime::run_cluster(
            rt.clone(),
            etcd.clone(),
            cfg.clone(),
            session.clone(),
            cancel.clone(),
        )));
        clusters.push(rt);
    }
    let etcd_health = Arc::new(Mutex::new(EtcdHealth::default()));
    tasks.push(tokio::spawn(upkeep::run_etcd_upkeep(
        etcd.clone(),
        clusters.clone(),
        etcd_health.clone(),
        cancel.clone(),
    )));
    let api_clusters = clusters.clone();
    let api = Arc::new(Api {
        clusters,
        etcd: etcd.clone(),
        etcd_health,
        id: cfg.id.clone(),
        addr: cfg.advertised(),
    });
    let server_cancel = cancel.clone();
    let router = api::router(api);
    #[cfg(feature = "failpoints")]
    let router = router.merge(runtime::faults::router());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { server_cancel.cancelled().await })
            .await;
    });
    shutdown_signal().await;
    tracing::info!("stopping: resigning");
    // Stop granting at once, before the lease is revoked and a standby may take over.
    for rt in &api_clusters {
        rt.lock().on_election(runtime::now(), None, None);
    }
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let _ = session_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
