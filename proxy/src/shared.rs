//! The state every part of a running proxy shares: the config, the cluster view (a `watch`
//! channel, so requests held for a leader wake when it changes), each controller link's health,
//! the HTTP clients, the metrics and the count of held requests. It owns no logic beyond small
//! accessors; the view's rules live in `view.rs`.
//!
//! Every client dials through [`baton_runtime::connect::Connector`]: over TLS with the proxy's
//! own certificate (DESIGN §9), checking that the far end carries the identity it should — any
//! controller ([`any_controller`]) for the long-polls; for a request to a replica, the leader's
//! own name ([`replica_name`]) when the request goes to the leader the controllers named, any
//! member of the proxy's cluster ([`cluster_name`]) for `consistency=any` reads. In insecure mode
//! the same clients speak plain HTTP. A client's pool is keyed by host, not by identity, so
//! replica clients are kept per identity name.
//!
//! Requests to a replica go over pooled keep-alive connections, except to a replica a connection
//! to which just failed ("suspect"): a killed replica leaves idle pooled connections that look
//! usable until their close is noticed, and a request written into one can only be answered
//! `504 outcome_unknown`. For a short while such a replica gets new connections instead, which a
//! dead one refuses before anything is written — a failure that may be re-sent.

use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::view::{ClusterView, ResetRule};
use baton_runtime::connect::{Connector, Dialer};
use baton_runtime::tls::{any_controller, cluster_name, replica_name, Tls};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A pooled keep-alive HTTP/1.1 client (HTTPS with TLS configured).
pub type HttpClient = Client<Connector, Full<Bytes>>;

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

/// The two clients to replicas that must carry one identity name.
struct ReplicaClients {
    /// Pooled.
    pooled: HttpClient,
    /// To suspect replicas: a new connection per request.
    fresh: HttpClient,
}

/// Replica identities kept clients for at most (ids of members long gone are dropped then).
const REPLICA_CLIENTS_MAX: usize = 256;

/// Shared by the API handlers, the forwarder and the controller pollers.
pub struct Shared {
    pub cfg: ProxyConfig,
    /// The proxy's TLS (`None`: insecure mode).
    pub tls: Option<Arc<Tls>>,
    /// The cluster view; receivers are notified when the leader or rev changes (epoch raises
    /// from replica replies are stored without waking anyone).
    pub view: watch::Sender<ClusterView>,
    pub controllers: Vec<ControllerLink>,
    /// To replicas, by the identity name they must carry.
    replica_clients: Mutex<HashMap<String, ReplicaClients>>,
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

/// A client through `dialer` (TLS and the identity the server must carry) that gives up
/// connecting after `connect_timeout` and keeps up to `idle_per_host` idle connections per host
/// (0: a new connection per request).
pub fn http_client(dialer: Dialer, connect_timeout: Duration, idle_per_host: usize) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle_per_host)
        .pool_idle_timeout(baton_runtime::CLIENT_POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(Connector::new(dialer, Some(connect_timeout)))
}

/// The identity name a replica must carry: the member's own when its id is known, else any
/// member of `cluster`.
pub fn replica_identity(cluster: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => replica_name(cluster, id),
        None => cluster_name(cluster),
    }
}

impl Shared {
    /// `tls`: what [`baton_runtime::tls::check_security`] gave for `cfg` (`None`: insecure).
    pub fn new(cfg: ProxyConfig, tls: Option<Arc<Tls>>) -> Shared {
        let connect = Duration::from_millis(cfg.timing.connect_timeout_ms);
        let controllers = cfg
            .controller_urls()
            .into_iter()
            .map(|url| ControllerLink {
                url,
                health: Mutex::new(ControllerHealth::default()),
            })
            .collect();
        let mut view = ClusterView::new(ResetRule {
            after_ms: cfg.timing.state_reset_after_ms,
            ..ResetRule::default()
        });
        view.https = tls.is_some();
        Shared {
            view: watch::Sender::new(view),
            controllers,
            replica_clients: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            ctl_http: http_client(Dialer::new(tls.clone(), any_controller()), connect, 1024),
            tls,
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

    /// Whether requests to `base` use new connections at `now` (see the file comment).
    pub fn is_suspect(&self, base: &str, now: Instant) -> bool {
        let mut s = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        match s.get(base) {
            Some(until) if *until > now => true,
            Some(_) => {
                s.remove(base);
                false
            }
            None => false,
        }
    }

    /// The client for a request to `base`, which must carry the identity name `expect` (see
    /// [`replica_identity`]): pooled, unless `base` is suspect.
    pub fn client_for(&self, base: &str, expect: &str, now: Instant) -> HttpClient {
        let fresh = self.is_suspect(base, now);
        let mut m = self
            .replica_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if m.len() >= REPLICA_CLIENTS_MAX && !m.contains_key(expect) {
            m.clear();
        }
        let c = m.entry(expect.to_string()).or_insert_with(|| {
            let connect = Duration::from_millis(self.cfg.timing.connect_timeout_ms);
            let dialer = Dialer::new(self.tls.clone(), expect);
            ReplicaClients {
                pooled: http_client(dialer.clone(), connect, 1024),
                fresh: http_client(dialer, connect, 0),
            }
        });
        if fresh {
            c.fresh.clone()
        } else {
            c.pooled.clone()
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
            "listen = \"127.0.0.1:0\"\ncontrollers = [\"http://127.0.0.1:1\"]\ninsecure = true\n",
        )
        .expect("config");
        let sh = Shared::new(cfg, None);
        let t0 = Instant::now();
        let (a, b) = ("http://127.0.0.1:2", "http://127.0.0.1:3");
        assert!(!sh.is_suspect(a, t0));
        sh.suspect(a, t0);
        assert!(sh.is_suspect(a, t0));
        assert!(!sh.is_suspect(b, t0));
        let later = t0 + SUSPECT_FOR / 2;
        assert!(sh.is_suspect(a, later));
        // Another failure extends it.
        sh.suspect(a, later);
        assert!(sh.is_suspect(a, t0 + SUSPECT_FOR));
        assert!(!sh.is_suspect(a, later + SUSPECT_FOR));
    }

    #[test]
    fn replicas_must_carry_their_own_name_or_their_clusters() {
        assert_eq!(
            replica_identity("main", Some("r1")),
            "r1.main.replica.baton"
        );
        assert_eq!(replica_identity("main", None), "main.replica.baton");
    }
}
