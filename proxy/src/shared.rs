//! The state every part of a running proxy shares: the config, the cluster view (a `watch`
//! channel, so requests held for a leader wake when it changes), each controller link's health,
//! the HTTP clients, the metrics and the count of held requests. It owns no logic beyond small
//! accessors; the view's rules live in `view.rs`.
//!
//! Requests to a replica go over pooled keep-alive connections, except to a replica a connection
//! to which just failed ("suspect"): a killed replica leaves idle pooled connections that look
//! usable until their close is noticed, and a request written into one can only be answered
//! `504 outcome_unknown`. For a short while such a replica gets new connections instead, which a
//! dead one refuses before anything is written — a failure that may be re-sent.

use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::view::{ClusterView, ResetRule};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A pooled keep-alive HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What the proxy last learned about one controller from its own long-poll.
#[derive(Clone, Debug, Default)]
pub struct ControllerHealth {
    /// The last request to it got an answer.
    pub reachable: bool,
    /// Its last answer said it is the active controller.
    pub active: bool,
    /// The rev of its last answer.
    pub rev: u64,
    /// When it last answered.
    pub last_answer: Option<Instant>,
    /// Why the last request to it failed, if it did.
    pub last_error: Option<String>,
}

/// One controller the proxy polls.
pub struct ControllerLink {
    /// Base URL without a trailing slash.
    pub url: String,
    health: Mutex<ControllerHealth>,
}

impl ControllerLink {
    pub fn health(&self) -> MutexGuard<'_, ControllerHealth> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Shared by the API handlers, the forwarder and the controller pollers.
pub struct Shared {
    pub cfg: ProxyConfig,
    /// The cluster view; receivers are notified when the leader or rev changes (epoch raises
    /// from replica replies are stored without waking anyone).
    pub view: watch::Sender<ClusterView>,
    pub controllers: Vec<ControllerLink>,
    /// To replicas, pooled.
    pub http: HttpClient,
    /// To suspect replicas: a new connection per request.
    pub fresh_http: HttpClient,
    /// Replicas (base URLs) to use new connections for, until the instant given.
    suspects: Mutex<HashMap<String, Instant>>,
    /// To controllers (long-polls hold connections; kept apart from the data path's pool).
    pub ctl_http: HttpClient,
    pub metrics: Metrics,
    /// Requests held right now.
    buffered: AtomicUsize,
    /// Round-robin turn of `consistency=any` reads.
    any_turn: AtomicUsize,
    /// The origin of [`Shared::now_ms`], the view's clock.
    started: Instant,
}

/// How long a replica stays suspect after a connection to it failed (each failure extends it).
pub const SUSPECT_FOR: Duration = Duration::from_secs(1);

/// A client that gives up connecting after `connect_timeout` and keeps up to `idle_per_host`
/// idle connections per replica (0: a new connection per request).
pub fn http_client(connect_timeout: Duration, idle_per_host: usize) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle_per_host)
        .pool_idle_timeout(baton_runtime::CLIENT_POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(conn)
}

impl Shared {
    pub fn new(cfg: ProxyConfig) -> Shared {
        let connect = Duration::from_millis(cfg.timing.connect_timeout_ms);
        let controllers = cfg
            .controller_urls()
            .into_iter()
            .map(|url| ControllerLink {
                url,
                health: Mutex::new(ControllerHealth::default()),
            })
            .collect();
        Shared {
            view: watch::Sender::new(ClusterView::new(ResetRule {
                after_ms: cfg.timing.state_reset_after_ms,
                ..ResetRule::default()
            })),
            controllers,
            http: http_client(connect, 1024),
            fresh_http: http_client(connect, 0),
            suspects: Mutex::new(HashMap::new()),
            ctl_http: http_client(connect, 1024),
            metrics: Metrics::new(),
            buffered: AtomicUsize::new(0),
            any_turn: AtomicUsize::new(0),
            started: Instant::now(),
            cfg,
        }
    }

    /// Milliseconds since the proxy started, on a monotonic clock: the time the view's rules
    /// are given.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Notes an epoch from a replica's reply without waking held requests: a higher epoch alone
    /// names no new leader.
    pub fn raise_epoch(&self, epoch: u64) {
        let now = self.now_ms();
        self.view.send_if_modified(|v| {
            v.on_replica_epoch(now, epoch);
            false
        });
    }

    /// The client for a request to `base`: pooled, unless `base` is suspect.
    pub fn client_for(&self, base: &str, now: Instant) -> &HttpClient {
        let mut s = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        match s.get(base) {
            Some(until) if *until > now => &self.fresh_http,
            Some(_) => {
                s.remove(base);
                &self.http
            }
            None => &self.http,
        }
    }

    /// A connection to `base` failed: use new connections to it for [`SUSPECT_FOR`].
    pub fn suspect(&self, base: &str, now: Instant) {
        self.suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(base.to_string(), now + SUSPECT_FOR);
    }

    /// Requests held right now.
    pub fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Counts a request as held until the guard drops, unless `limits.buffered_max` requests
    /// are held already.
    pub fn try_hold(&self) -> Option<HoldGuard<'_>> {
        let max = self.cfg.limits.buffered_max;
        self.buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.metrics.buffered.inc();
        self.metrics.buffered_total.inc();
        Some(HoldGuard { shared: self })
    }

    /// The next `consistency=any` turn.
    pub fn next_any_turn(&self) -> usize {
        self.any_turn.fetch_add(1, Ordering::Relaxed)
    }

    /// Controllers whose last request answered.
    pub fn controllers_reachable(&self) -> usize {
        self.controllers
            .iter()
            .filter(|c| c.health().reachable)
            .count()
    }
}

/// A held request; dropping it releases its place.
pub struct HoldGuard<'a> {
    shared: &'a Shared,
}

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        self.shared.buffered.fetch_sub(1, Ordering::AcqRel);
        self.shared.metrics.buffered.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_is_suspect_for_a_while_after_a_failed_connection() {
        let cfg = ProxyConfig::parse(
            std::path::Path::new("p.toml"),
            "listen = \"127.0.0.1:0\"\ncontrollers = [\"http://127.0.0.1:1\"]\n",
        )
        .expect("config");
        let sh = Shared::new(cfg);
        let t0 = Instant::now();
        let (a, b) = ("http://127.0.0.1:2", "http://127.0.0.1:3");
        assert!(std::ptr::eq(sh.client_for(a, t0), &sh.http));
        sh.suspect(a, t0);
        assert!(std::ptr::eq(sh.client_for(a, t0), &sh.fresh_http));
        assert!(std::ptr::eq(sh.client_for(b, t0), &sh.http));
        let later = t0 + SUSPECT_FOR / 2;
        assert!(std::ptr::eq(sh.client_for(a, later), &sh.fresh_http));
        // Another failure extends it.
        sh.suspect(a, later);
        assert!(std::ptr::eq(
            sh.client_for(a, t0 + SUSPECT_FOR),
            &sh.fresh_http
        ));
        assert!(std::ptr::eq(
            sh.client_for(a, later + SUSPECT_FOR),
            &sh.http
        ));
    }
}
