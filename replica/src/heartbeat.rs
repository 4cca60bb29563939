//! The replica's side of the controller protocol: one loop per configured controller sends
//! heartbeats and feeds each answer to the engine (`Core::on_directive`) through the driver.
//! When the engine asks for the directive's epoch and rev to be persisted first, they are
//! stored off the executor and reported back.
//!
//! Directives arrive promptly (DESIGN.md §5): a heartbeat carries what this replica last got
//! from that controller (`?wait_ms=…&rev=…&term=…`), and an active controller holds it until its
//! directive for this replica changes (a new state rev or term) or the hold runs out, so a new
//! role reaches the replica one round trip after the controller decided it. A heartbeat is sent
//! at most every `heartbeat_interval_ms` (a held one paces itself), and at once when the answer
//! changed the directive (rev, term, role, epoch, waited set), when the node asks for one
//! (`Node::heartbeat_soon`: a client showed a newer epoch, the disk filled), abandoning a held
//! one. A leader whose lease was revoked (a switchover) reports every
//! [`REVOKED_PERIOD`] and is not held, so the controller sees its successor catch up at once.
//!
//! Answers are handled one at a time (a lock around the driver step), so two directives never
//! race.

use crate::node::Node;
use baton_common::clock;
use baton_common::directive::{Directive, Role};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type HttpClient = Client<baton_runtime::connect::Connector, Full<Bytes>>;

/// How often a leader whose lease was revoked (a switchover waits for its successor to catch
/// up) reports to the controller that revoked it.
pub const REVOKED_PERIOD: Duration = Duration::from_millis(10);

/// The least time between two heartbeats to one controller when one is asked for early.
pub const EARLY_GAP: Duration = Duration::from_millis(10);

/// Runs until `cancel` fires.
pub async fn run(node: Arc<Node>, cancel: CancellationToken) {
    // Only a controller's certificate is believed (directives come back in the answers), and
    // this replica presents its own, which the controller checks against the member id.
    let dialer =
        baton_runtime::connect::Dialer::new(node.tls.clone(), baton_runtime::tls::any_controller());
    let connect_timeout = Duration::from_millis(node.cfg.timing.heartbeat_timeout_ms);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(baton_runtime::CLIENT_POOL_IDLE)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(baton_runtime::connect::Connector::new(
            dialer,
            Some(connect_timeout),
        ));
    let handling = Arc::new(tokio::sync::Mutex::new(()));
    let loops: Vec<_> = node
        .cfg
        .controllers
        .iter()
        .map(|base| {
            tokio::spawn(controller_loop(
                node.clone(),
                client.clone(),
                base.clone(),
                handling.clone(),
                cancel.clone(),
            ))
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
}

/// What this replica last got from one controller: the hold is asked only while this is what
/// the controller would answer again.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Known {
    rev: u64,
    term: u64,
    /// The answer revoked a leader's lease (`lease_ms` 0): report often, do not ask to be held.
    revoked: bool,
}

/// Heartbeats to the controller at `base`, until `cancel` fires.
async fn controller_loop(
    node: Arc<Node>,
    client: HttpClient,
    base: String,
    handling: Arc<tokio::sync::Mutex<()>>,
    cancel: CancellationToken,
) {
    let period = Duration::from_millis(node.cfg.timing.heartbeat_interval_ms);
    let timeout = Duration::from_millis(node.cfg.timing.heartbeat_timeout_ms);
    let url = format!(
        "{}/v1/clusters/{}/heartbeat",
        base.trim_end_matches('/'),
        node.cfg.cluster
    );
    let mut soon = node.heartbeat_now.subscribe();
    let mut known: Option<Known> = None;
    let mut reachable: Option<bool> = None;
    let mut next = Instant::now();
    let mut seq = 0u64;
    let mut last_sent: Option<Instant> = None;
    loop {
        let early = tokio::select! {
            _ = tokio::time::sleep_until(next) => false,
            _ = soon.changed() => true,
            _ = cancel.cancelled() => break,
        };
        // Heartbeats asked for early (a role change, or a request carrying a higher
        // `Baton-Min-Epoch`, which anyone can send) go out at most once per EARLY_GAP: a flood
        // of such requests costs the controllers 1/EARLY_GAP heartbeats a second, not one each.
        if let Some(at) = last_sent
            .map(|t| t + EARLY_GAP)
            .filter(|at| early && *at > Instant::now())
        {
            tokio::select! {
                _ = tokio::time::sleep_until(at.min(next)) => {}
                _ = cancel.cancelled() => break,
            }
        }
        soon.borrow_and_update();
        seq += 1;
        let sent = Instant::now();
        last_sent = Some(sent);
        let sent_at = clock::now_ms();
        let mut hb = node.lock().core().heartbeat(sent_at, seq);
        hb.log_bytes = node.log_bytes();
        hb.catchup = node.catchup();
        let body = Bytes::from(serde_json::to_vec(&hb).expect("heartbeat serializes"));
        // Held only while nothing else is expected: the controller answers at once otherwise.
        let hold = known.filter(|k| !k.revoked).map(|_| period);
        let target = match (hold, known) {
            (Some(h), Some(k)) => format!(
                "{url}?wait_ms={}&rev={}&term={}",
                h.as_millis(),
                k.rev,
                k.term
            ),
            _ => url.clone(),
        };
        next = sent
            + if known.is_some_and(|k| k.revoked) {
                REVOKED_PERIOD
            } else {
                period
            };
        let limit = timeout + hold.unwrap_or_default();
        let res = tokio::select! {
            r = tokio::time::timeout(limit, post(&client, &target, body)) => match r {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
            },
            // The node wants a fresh report now: abandon the held request and send again.
            _ = soon.changed() => {
                next = Instant::now();
                continue;
            }
            _ = cancel.cancelled() => break,
        };
        match (&res, reachable) {
            (Err(e), Some(true) | None) => {
                tracing::warn!(controller = %base, error = %e, "controller unreachable")
            }
            (Ok(_), Some(false)) => {
                tracing::info!(controller = %base, "controller reachable again")
            }
            _ => {}
        }
        reachable = Some(res.is_ok());
        let Ok(d) = res else {
            known = None;
            continue;
        };
        if d.seq != seq {
            continue;
        }
        let k = Known {
            rev: d.rev,
            term: d.controller_term,
            revoked: d.active && d.role == Some(Role::Leader) && d.lease_ms == 0,
        };
        let directive_moved =
            d.active && known.is_some_and(|was| (was.rev, was.term) != (k.rev, k.term));
        known = d.active.then_some(k);
        let changed = {
            let _one_at_a_time = handling.lock().await;
            handle(&node, sent_at, d).await
        };
        if changed || directive_moved {
            // Report the new epoch, role or waited set at once: a promotion waits for these
            // reports (DESIGN.md §5).
            next = Instant::now();
        }
    }
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

/// What a directive may change that the controller waits to hear about.
fn reported(node: &Node) -> impl PartialEq {
    let g = node.lock();
    let hb = g.core().heartbeat(clock::now_ms(), 0);
    let waiting: Vec<_> = hb.waiting.iter().map(|w| w.id.clone()).collect();
    (hb.epoch, hb.role, hb.lease_left_ms == Some(0), waiting)
}

/// Feeds one controller answer to the engine; persists what it asks for, then reports it.
/// Returns whether it changed this replica's epoch, role, waited set or lease revocation.
pub async fn handle(node: &Arc<Node>, sent_at: u64, d: Directive) -> bool {
    let before = reported(node);
    let mut out = {
        let mut g = node.lock();
        let fx = g.core_mut().on_directive(clock::now_ms(), sent_at, &d);
        node.step(g, fx)
    };
    if let Some(p) = out.persist.take() {
        if !node.persist_epoch(p).await {
            return false;
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
        return false;
    }
    before != reported(node)
}
