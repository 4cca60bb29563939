//! Learning the leader: one loop per controller long-polls
//! `GET /v1/clusters/{c}/leader?wait_ms=…&after_rev=R` (R the view's rev) and feeds every
//! answer to [`ClusterView::on_leader_answer`](crate::view::ClusterView::on_leader_answer),
//! which keeps the newest rev and, at an equal rev, prefers an active controller's answer. A
//! controller that is down, or hangs, or is a lagging standby, delays nothing: the others'
//! answers move the view. After a new rev the loop re-reads the member list
//! (`GET /v1/clusters/{c}`, `members[].addr`) for `consistency=any` reads.
//!
//! Every loop notes its controller's health for `/v1/status`. Held requests wake through the
//! view's `watch` channel when an answer changes the leader or the rev.
//!
//! With TLS the requests go over `https://`: the controller must present a certificate naming
//! a controller of the deployment (`controller.baton`), and the proxy presents its own
//! (`{id}.proxy.baton`), which is its credential there; it sends no bearer token.

use crate::shared::Shared;
use crate::view::{Applied, LeaderAnswer, NewStateWhy};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Runs one poll loop per controller until `cancel` fires.
pub async fn run(sh: Arc<Shared>, cancel: CancellationToken) {
    let loops: Vec<_> = (0..sh.controllers.len())
        .map(|i| tokio::spawn(poll(sh.clone(), i, cancel.clone())))
        .collect();
    for l in loops {
        let _ = l.await;
    }
}

/// Why a controller request failed.
#[derive(Debug)]
enum CtlError {
    Unreachable(String),
    Timeout,
    Remote(u16, String),
    Malformed(String),
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Unreachable(e) => write!(f, "unreachable: {e}"),
            CtlError::Timeout => write!(f, "no answer in time"),
            CtlError::Remote(s, b) => write!(f, "answered {s}: {b}"),
            CtlError::Malformed(e) => write!(f, "unreadable answer: {e}"),
        }
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    sh: &Shared,
    url: &str,
    budget: Duration,
) -> Result<T, CtlError> {
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| CtlError::Unreachable(e.to_string()))?;
    let fut = async {
        let resp = sh
            .ctl_http
            .request(req)
            .await
            .map_err(|e| CtlError::Unreachable(format!("{e:?}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CtlError::Unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(CtlError::Remote(status.as_u16(), text));
        }
        serde_json::from_slice(&body).map_err(|e| CtlError::Malformed(e.to_string()))
    };
    tokio::time::timeout(budget, fut)
        .await
        .unwrap_or(Err(CtlError::Timeout))
}

/// Applies an answer to the view, waking held requests if it changed; logs leader changes and
/// (WARN) a cluster state replaced by a new one.
fn apply(sh: &Shared, from: &str, a: &LeaderAnswer) {
    let mut applied = Applied::Ignored;
    let (mut before, mut after) = (None, None);
    let now = sh.now_ms();
    sh.view.send_if_modified(|v| {
        before = v.leader.clone();
        applied = v.on_leader_answer(now, a);
        after = v.leader.clone();
        matches!(applied, Applied::Changed { .. })
    });
    let Applied::Changed {
        leader_changed,
        new_state,
        ..
    } = applied
    else {
        return;
    };
    if leader_changed {
        sh.metrics.leader_changes.inc();
    }
    if let Some(n) = new_state {
        sh.metrics.state_resets.inc();
        let why = match n.why {
            NewStateWhy::HigherEpochLowerRev => {
                "the active controller names a higher epoch at a lower rev, which no answer of \
                 the same state can (etcd re-created or restored, or `recover` run)"
                    .to_string()
            }
            NewStateWhy::OtherStateId => "the active controller names another state id".into(),
            NewStateWhy::BehindFor { ms, answers } => format!(
                "every active controller's answer was behind the view for {ms} ms ({answers} \
                 answers) and no replica showed a higher epoch (etcd emptied and the cluster \
                 initialized again, or restored from a backup)"
            ),
        };
        tracing::warn!(
            old_epoch = n.old_epoch, old_rev = n.old_rev, epoch = ?a.epoch, rev = a.rev,
            controller = from, "following a new cluster state, its epoch and revs: {why}"
        );
    }
    if before == after {
        tracing::debug!(rev = a.rev, epoch = ?a.epoch, controller = from, "newer cluster state");
        return;
    }
    match &after {
        Some(l) => tracing::info!(
            leader = %l.id, url = %l.url, epoch = ?a.epoch, rev = a.rev, controller = from,
            "leader known"
        ),
        None => tracing::info!(
            epoch = ?a.epoch, rev = a.rev, controller = from,
            "no leader recorded; holding requests until one is"
        ),
    }
}

/// Re-reads the member list from `base` when the one held is older than the view.
async fn refresh_members(sh: &Shared, base: &str) {
    let (rev, members_rev, empty) = {
        let v = sh.view.borrow();
        (v.rev, v.members_rev, v.members.is_empty())
    };
    if members_rev >= rev && !empty {
        return;
    }
    let url = format!("{base}/v1/clusters/{}", sh.cfg.cluster);
    let budget = Duration::from_millis(sh.cfg.timing.controller_timeout_ms);
    match get_json::<serde_json::Value>(sh, &url, budget).await {
        Ok(v) => {
            let rev = v["rev"].as_u64().unwrap_or(0);
            let addrs: Vec<String> = v["members"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m["addr"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if addrs.is_empty() {
                return;
            }
            let mut applied = false;
            sh.view.send_if_modified(|v| {
                applied = v.on_members(rev, &addrs);
                applied
            });
            if applied {
                tracing::debug!(rev, members = ?addrs, "member list read");
            }
        }
        Err(e) => tracing::debug!(controller = base, error = %e, "cannot read the member list"),
    }
}

async fn poll(sh: Arc<Shared>, i: usize, cancel: CancellationToken) {
    let link = &sh.controllers[i];
    let t = &sh.cfg.timing;
    let budget = Duration::from_millis(t.long_poll_ms + t.controller_timeout_ms);
    let quick = Duration::from_millis(t.controller_timeout_ms);
    let mut failures = 0u32;
    let mut answered = false;
    loop {
        // The rev this controller last answered: its long-poll returns as soon as its own
        // observation changes, in either direction (a state restored from a backup, or
        // re-created, has a lower rev than the one the view holds).
        let after = link.health().rev;
        // At start and after a failure, ask without waiting: a long-poll with nothing newer to
        // report would leave this controller's health unknown for `long_poll_ms`.
        let (url, budget) = if answered {
            let url = format!(
                "{}/v1/clusters/{}/leader?wait_ms={}&after_rev={after}",
                link.url, sh.cfg.cluster, t.long_poll_ms
            );
            (url, budget)
        } else {
            let url = format!("{}/v1/clusters/{}/leader", link.url, sh.cfg.cluster);
            (url, quick)
        };
        let waited = answered;
        let started = Instant::now();
        let res = tokio::select! {
            _ = cancel.cancelled() => return,
            r = get_json::<LeaderAnswer>(&sh, &url, budget) => r,
        };
        answered = res.is_ok();
        let pause = match res {
            Ok(a) => {
                if failures > 0 {
                    tracing::info!(controller = %link.url, "controller answers again");
                }
                failures = 0;
                {
                    let mut h = link.health();
                    h.reachable = true;
                    h.active = a.from_active;
                    h.rev = a.rev;
                    h.last_answer = Some(Instant::now());
                    h.last_error = None;
                }
                apply(&sh, &link.url, &a);
                refresh_members(&sh, &link.url).await;
                // A long-poll returns early only with another rev. An early answer with the same
                // one would make this loop spin; pause a little instead.
                (waited && a.rev == after && started.elapsed() < Duration::from_millis(50))
                    .then_some(Duration::from_millis(50))
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(controller = %link.url, error = %e, "controller does not answer; asking the others");
                }
                {
                    let mut h = link.health();
                    h.reachable = false;
                    h.active = false;
                    h.last_error = Some(e.to_string());
                }
                Some(Duration::from_millis((50u64 << failures.min(5)).min(1000)))
            }
        };
        if let Some(p) = pause {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(p) => {}
            }
        }
    }
}
