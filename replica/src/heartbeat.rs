//! The replica's side of the controller protocol: every `heartbeat_interval_ms` it sends a
//! heartbeat to every configured controller, and feeds each answer to the engine
//! (`Core::on_directive`) through the driver. When the engine asks for the directive's epoch
//! and rev to be persisted first, they are stored off the executor and reported back.
//!
//! Answers are handled one at a time by a single task, so two directives never race.

use crate::node::Node;
use baton_common::clock;
use baton_common::directive::Directive;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Runs until `cancel` fires.
pub async fn run(node: Arc<Node>, cancel: CancellationToken) {
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let (dtx, mut drx) = mpsc::channel::<(String, u64, Directive)>(256);
    let handler_node = node.clone();
    let handler = tokio::spawn(async move {
        while let Some((_url, sent_at, d)) = drx.recv().await {
            handle(&handler_node, sent_at, d).await;
        }
    });
    let period = Duration::from_millis(node.cfg.timing.heartbeat_interval_ms);
    let timeout = Duration::from_millis(node.cfg.timing.heartbeat_timeout_ms);
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reach: Arc<std::sync::Mutex<HashMap<String, bool>>> = Default::default();
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = node.heartbeat_now.notified() => {}
            _ = cancel.cancelled() => break,
        }
        seq += 1;
        let sent_at = clock::now_ms();
        let hb = node.lock().core().heartbeat(sent_at, seq);
        let body = Bytes::from(serde_json::to_vec(&hb).expect("heartbeat serializes"));
        for base in &node.cfg.controllers {
            let url = format!(
                "{}/v1/clusters/{}/heartbeat",
                base.trim_end_matches('/'),
                node.cfg.cluster
            );
            let (client, body, dtx, reach, base) = (
                client.clone(),
                body.clone(),
                dtx.clone(),
                reach.clone(),
                base.clone(),
            );
            tokio::spawn(async move {
                let res = tokio::time::timeout(timeout, post(&client, &url, body)).await;
                let res = match res {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                };
                let ok = res.is_ok();
                {
                    let mut r = reach.lock().unwrap_or_else(|p| p.into_inner());
                    let was = r.insert(base.clone(), ok);
                    match (&res, was) {
                        (Err(e), Some(true) | None) => {
                            tracing::warn!(controller = %base, error = %e, "controller unreachable")
                        }
                        (Ok(_), Some(false)) => {
                            tracing::info!(controller = %base, "controller reachable again")
                        }
                        _ => {}
                    }
                }
                if let Ok(d) = res {
                    if d.seq == seq {
                        let _ = dtx.send((base, sent_at, d)).await;
                    }
                }
            });
        }
    }
    drop(dtx);
    handler.abort();
}

async fn post(client: &HttpClient, url: &str, body: Bytes) -> Result<Directive, String> {
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("malformed directive: {e}"))
}

/// Feeds one controller answer to the engine; persists what it asks for, then reports it.
pub async fn handle(node: &Arc<Node>, sent_at: u64, d: Directive) {
    let (before, mut out) = {
        let mut g = node.lock();
        let before = (g.core().epoch(), g.core().role());
        let fx = g.core_mut().on_directive(clock::now_ms(), sent_at, &d);
        (before, node.step(g, fx))
    };
    if let Some(p) = out.persist.take() {
        if !node.persist_epoch(p).await {
            return;
        }
        out = {
            let mut g = node.lock();
            let fx = g
                .core_mut()
                .on_directive_persisted(clock::now_ms(), sent_at, &d);
            node.step(g, fx)
        };
    }
    if let Some(reason) = out.ignored {
        if d.active && d.cluster_id != 0 && d.cluster_id != node.lock().core().cluster_id() {
            // A controller of another deployment (a wrong address, or this data directory
            // belongs elsewhere): loud (once per 10 s), and nothing changes.
            static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let now = clock::now_ms();
            let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
            if last == 0 || now.saturating_sub(last) >= 10_000 {
                LAST.store(now.max(1), std::sync::atomic::Ordering::Relaxed);
                tracing::error!(epoch = %d.epoch, %reason, "directive from another deployment ignored");
            }
        } else {
            tracing::debug!(epoch = %d.epoch, rev = d.rev, %reason, "directive ignored");
        }
        return;
    }
    let after = {
        let g = node.lock();
        (g.core().epoch(), g.core().role())
    };
    if before != after {
        // Report the new epoch and role at once: a promotion waits for these reports.
        node.heartbeat_now.notify_one();
    }
}
