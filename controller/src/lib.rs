//! The failover controller (`baton-controller`, `batonctl`): etcd-backed election, heartbeats,
//! failure detection, promotion and fencing (DESIGN.md §5).
//!
//! Pure: the cluster state as stored in etcd (`state.rs`), the journal and failover budget
//! (`journal.rs`), the decision rules (`decide.rs`) and the per-cluster state machine
//! (`core/`). Runtime: the etcd session, election and guarded writes (`runtime.rs`), etcd
//! upkeep (`upkeep.rs`), the metrics (`metrics.rs`), the status page (`page.rs`), the HTTP API and who may call it (`api.rs`), and `run` here, the whole
//! process minus argument parsing and signals, so tests can start a controller in-process and
//! stop it by completing the `shutdown` future: it serves the API over TLS with the `[tls]`
//! files (reloaded on SIGHUP) and checks bearer tokens and node certificates (DESIGN §9), or,
//! with `insecure = true`, plain HTTP without credentials. The controller makes no HTTP calls
//! of its own (replicas call it; its only client connection is to etcd). `batonctl` is a
//! binary of this crate (`src/bin/batonctl/`).

pub mod api;
pub mod config;
pub mod core;
pub mod decide;
pub mod journal;
pub mod metrics;
pub mod page;
pub mod runtime;
pub mod state;
pub mod upkeep;

use api::Api;
use baton_runtime::auth::Auth;
use baton_runtime::metrics::ConnMetrics;
use baton_runtime::ServeOpts;
use config::ControllerConfig;
use runtime::{ClusterRt, Session};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use upkeep::EtcdHealth;

/// How long open requests (long-polls included) get to finish once the controller stops.
const DRAIN: Duration = Duration::from_secs(2);

/// Runs a controller on `cfg.listen` until `shutdown` completes.
pub async fn run(cfg: ControllerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    serve(baton_runtime::bind(cfg.listen).await?, cfg, shutdown).await
}

/// Runs a controller on an already bound `listener` (tests bind port 0) until `shutdown`
/// completes: it loads its TLS files, connects to etcd (retrying), campaigns for every
/// configured cluster, serves the API (TLS and credentials unless insecure) and, on shutdown,
/// stops granting at once, resigns every election (deletes its election keys, revokes its etcd
/// lease) so a standby takes over, and drains the API.
pub async fn serve(
    listener: TcpListener,
    cfg: ControllerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let cfg = Arc::new(cfg);
    // Read again here (the config was validated with them): a file removed since is an error.
    let file = std::path::Path::new("the controller config");
    let secrets = cfg.etcd_secrets(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tls = cfg.security(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let registry = prometheus::Registry::new();
    baton_runtime::metrics::register_process(&registry, "controller");
    let metrics = metrics::ControllerMetrics::register(&registry);
    let auth = Auth::new(!cfg.insecure, &cfg.tokens, &registry, "controller")
        .map_err(|(key, reason)| anyhow::anyhow!("{}: {key}: {reason}", file.display()))?;
    if tls.is_none() {
        tracing::warn!(
            "insecure = true: the API is plain HTTP and checks no credentials; anyone who reaches \
             it can read the cluster, run operations and send heartbeats for any member"
        );
    }
    let etcd = tokio::select! {
        c = connect(&cfg, &secrets) => c,
        _ = &mut shutdown => return Ok(()),
    };
    let local = listener.local_addr().ok();
    tracing::info!(id = %cfg.id, listen = ?local, etcd = ?cfg.etcd, tls = tls.is_some(), "controller started");
    let cancel = CancellationToken::new();
    if let Some(t) = &tls {
        baton_runtime::tls::reload_on_sighup(t.clone(), cancel.clone());
    }
    let session = Arc::new(Mutex::new(Session::default()));
    let clusters: Vec<Arc<ClusterRt>> = cfg
        .clusters
        .iter()
        .map(|c| {
            Arc::new(ClusterRt::new(
                &c.name,
                core::ClusterCore::new(cfg.cluster_cfg(c)),
                metrics.clone(),
            ))
        })
        .collect();
    let session_task = tokio::spawn(runtime::run_session(
        etcd.clone(),
        cfg.timing.election_ttl_s,
        cfg.timing.clock_drift,
        session.clone(),
        clusters.clone(),
        cancel.clone(),
    ));
    let mut tasks = Vec::new();
    for rt in &clusters {
        tasks.push(tokio::spawn(runtime::run_cluster(
            rt.clone(),
            etcd.clone(),
            cfg.clone(),
            session.clone(),
            cancel.clone(),
        )));
    }
    let etcd_health = Arc::new(Mutex::new(EtcdHealth::default()));
    tasks.push(tokio::spawn(upkeep::run_etcd_upkeep(
        etcd.clone(),
        clusters.clone(),
        etcd_health.clone(),
        cancel.clone(),
    )));
    let conn_metrics = ConnMetrics::register(&registry, "controller");
    let api = Arc::new(Api {
        clusters: clusters.clone(),
        etcd: etcd.clone(),
        etcd_health,
        id: cfg.id.clone(),
        addr: cfg.advertised(),
        registry,
        metrics,
        auth,
    });
    let router = api::router(api);
    let opts = ServeOpts::new(
        cfg.limits.connections_max,
        DRAIN,
        Duration::from_millis(cfg.limits.idle_timeout_ms),
    )
    .with_metrics(conn_metrics)
    .with_tls(tls);
    let server = tokio::spawn(baton_runtime::serve(listener, router, opts, cancel.clone()));
    shutdown.await;
    tracing::info!("stopping: resigning");
    // Stop granting at once, before the lease is revoked and a standby may take over.
    for rt in &clusters {
        rt.lock().on_election(runtime::now(), None, None);
        rt.bump();
    }
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let _ = session_task.await;
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

/// The etcd client options: timeouts, and TLS and a user from `[etcd_tls]` and `[etcd_auth]`
/// (tokens re-obtained when etcd expires them, e.g. after it restarted).
fn etcd_options(secrets: &config::EtcdSecrets) -> etcd_client::ConnectOptions {
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
    if let Some(t) = &secrets.tls {
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&t.ca));
        if let Some((cert, key)) = &t.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        if let Some(d) = &t.domain {
            tls = tls.domain_name(d.clone());
        }
        opts = opts.with_tls(tls);
    }
    if let Some((user, password)) = &secrets.auth {
        opts = opts
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    opts
}

/// An etcd client; retries until etcd answers (warning once).
async fn connect(cfg: &ControllerConfig, secrets: &config::EtcdSecrets) -> etcd_client::Client {
    let opts = etcd_options(secrets);
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
