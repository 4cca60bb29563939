//! `baton-proxy`: the client entry point (DESIGN.md §7). It forwards `/v1/kv/*` to the leader
//! the controllers name (and `consistency=any` reads to any member), sending the highest epoch
//! it has seen as `Baton-Min-Epoch`; during a failover it holds requests up to
//! `timing.failover_buffer_ms` and re-sends them to the new leader — but only requests that
//! were certainly not applied (`retry.rs`); anything else is answered `504 outcome_unknown`.
//!
//! It holds no durable state and decides nothing about leadership: fencing stays the replicas'
//! job (the epoch precondition), the proxy only narrows the windows. `run` is the whole process
//! minus argument parsing and signals (SIGHUP, which reloads the TLS files, excepted), so tests
//! can run a proxy in-process.
//!
//! Security (DESIGN §9): unless `insecure = true`, the client API is served over TLS, every
//! request needs a bearer token of the right role (`api::policy`), and controllers and replicas
//! are reached over TLS with the proxy's own certificate, each checked for the identity it
//! should carry (`shared.rs`); the client's Authorization is forwarded to the replica, which
//! checks it too.
//!
//! Layout: `view.rs` and `retry.rs` are pure (the cluster view, the re-send decision table);
//! `controllers.rs` (leader long-polls), `forward.rs` (attempts and holding), `api.rs` and
//! `metrics.rs` are the runtime around them; the accept loop (`limits.connections_max`, the
//! drain, TLS handshakes) is `baton_runtime::serve`, tokens and the guard `baton_runtime::auth`.

pub mod api;
pub mod config;
pub mod controllers;
pub mod forward;
pub mod metrics;
pub mod retry;
pub mod shared;
pub mod view;

use baton_runtime::auth::Auth;
use baton_runtime::tls::{check_security, proxy_name, reload_on_sighup, Peer, TlsFiles};
use baton_runtime::ServeOpts;
use std::future::Future;
use std::net::SocketAddr;
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
    // Loaded again (validation loaded them once): the files may have changed since.
    let tls = check_security(cfg.insecure, cfg.tls.as_ref(), &cfg.tokens)
        .map_err(|(key, reason)| anyhow::anyhow!("{key}: {reason}"))?;
    if let (Some(files), false) = (&cfg.tls, cfg.insecure) {
        if let Some(w) = identity_warning(files, &cfg.id) {
            tracing::warn!("{w}");
        }
    }
    let sh = Arc::new(shared::Shared::new(cfg, tls.clone()));
    let auth = Auth::new(
        !sh.cfg.insecure,
        &sh.cfg.tokens,
        sh.metrics.registry(),
        "proxy",
    )
    .map_err(|(key, reason)| anyhow::anyhow!("{key}: {reason}"))?;
    // Cancelled last, once nothing needs the TLS files any more.
    let poll_cancel = CancellationToken::new();
    if let Some(t) = &tls {
        reload_on_sighup(t.clone(), poll_cancel.clone());
    }
    let poller = tokio::spawn(controllers::run(sh.clone(), poll_cancel.clone()));
    let server_cancel = CancellationToken::new();
    let opts = ServeOpts::new(
        sh.cfg.limits.connections_max,
        drain,
        Duration::from_millis(sh.cfg.limits.idle_timeout_ms),
    )
    .with_metrics(sh.metrics.conn.clone())
    .with_tls(tls.clone());
    let server = tokio::spawn(baton_runtime::serve(
        listener,
        api::router(sh.clone(), auth),
        opts,
        server_cancel.clone(),
    ));
    tracing::info!(
        listen = ?local, id = %sh.cfg.id, tls = tls.is_some(), tokens = sh.cfg.tokens.len(),
        controllers = ?sh.cfg.controllers, cluster = %sh.cfg.cluster, "serving"
    );
    if tls.is_none() {
        tracing::warn!(
            "insecure = true: serving and connecting over plain HTTP, no credentials checked"
        );
    } else if sh.cfg.tokens.is_empty() {
        tracing::warn!("no [[tokens]]: every client request but health checks is refused (401)");
    }
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

/// A warning when the proxy's own certificate does not carry its identity name
/// (`{id}.proxy.baton`): nodes that check who the proxy is would not recognize it.
fn identity_warning(files: &TlsFiles, id: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bytes = std::fs::read(&files.cert_file).ok()?;
    let cert = CertificateDer::pem_slice_iter(&bytes).next()?.ok()?;
    let me = Peer {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        cert: Some(Arc::new(cert)),
    };
    let name = proxy_name(id);
    (!me.is(&name)).then(|| {
        format!(
            "tls.cert_file {} does not name this proxy: it lacks {name:?} (id = {id:?}); \
             controllers and replicas that check the proxy's identity will not recognize it",
            files.cert_file.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_runtime::pki;

    #[test]
    fn a_certificate_that_does_not_name_the_proxy_is_warned_about() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = pki::Ca::new("test CA").expect("CA");
        let files = ca
            .write_node(
                dir.path(),
                "proxy",
                &pki::proxy_names("p1"),
                &pki::local_hosts(),
            )
            .expect("certificate")
            .as_tls();
        assert_eq!(identity_warning(&files, "p1"), None);
        let w = identity_warning(&files, "p2").expect("a warning");
        assert!(w.contains("p2.proxy.baton"), "{w}");
    }
}
