//! Prometheus metrics of the proxy: requests by result, held (buffered) requests, re-sends by
//! reason, leader changes, cluster states replaced, what the proxy knows (epoch, rev, reachable
//! controllers) and its client connections (open, refused over the cap, failed TLS
//! handshakes). The refused requests (`baton_proxy_auth_refused_total{reason}`) are registered
//! in the same registry by the `Auth` (`lib.rs`). Counters are updated where things happen;
//! gauges of the view are set when `/metrics` is scraped. Nothing here decides anything.

use baton_runtime::metrics::ConnMetrics;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct Metrics {
    registry: Registry,
    /// Client requests by how they were answered: `ok`, the error code of the answer
    /// (`not_found`, `not_leader`, `outcome_unknown`, …) or `http_<status>`.
    pub requests: IntCounterVec,
    pub request_seconds: Histogram,
    /// Requests held right now, waiting for a leader.
    pub buffered: IntGauge,
    /// Requests that were held at least once.
    pub buffered_total: IntCounter,
    /// Re-sends by reason (`no_leader`, `connect_failed`, `not_leader`, `stale_epoch`, …).
    pub retries: IntCounterVec,
    pub leader_changes: IntCounter,
    /// Times the controllers' cluster state was replaced by a new one (re-init, restore,
    /// `recover`) and the view followed it, lowering its rev and perhaps its epoch.
    pub state_resets: IntCounter,
    pub epoch: IntGauge,
    pub rev: IntGauge,
    pub controllers_reachable: IntGauge,
    /// `baton_proxy_connections`, `baton_proxy_connections_rejected_total` and
    /// `baton_proxy_tls_handshakes_failed_total`, kept by the accept loop.
    pub conn: ConnMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        baton_runtime::metrics::register_process(&registry, "proxy");
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registers once");
                m
            }};
        }
        let g = |n: &str, h: &str| IntGauge::new(n, h).expect("valid gauge");
        let c = |n: &str, h: &str| IntCounter::new(n, h).expect("valid counter");
        Metrics {
            requests: reg!(IntCounterVec::new(
                Opts::new("baton_proxy_requests_total", "Client requests by result"),
                &["result"]
            )
            .expect("valid")),
            request_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "baton_proxy_request_seconds",
                    "Time from a request's arrival to its answer, holding included"
                )
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18).expect("valid"))
            )
            .expect("valid")),
            // Not `baton_proxy_buffered_requests`: beside the counter below, that gauge would
            // share its OpenMetrics family name (a counter `X_total` is family `X`).
            buffered: reg!(g(
                "baton_proxy_requests_held",
                "Requests held right now, waiting for a leader"
            )),
            buffered_total: reg!(c(
                "baton_proxy_buffered_requests_total",
                "Requests that were held at least once"
            )),
            retries: reg!(IntCounterVec::new(
                Opts::new(
                    "baton_proxy_retries_total",
                    "Re-sends of requests that were not applied, by reason"
                ),
                &["reason"]
            )
            .expect("valid")),
            leader_changes: reg!(c(
                "baton_proxy_leader_changes_total",
                "Leader changes seen from the controllers"
            )),
            state_resets: reg!(c(
                "baton_proxy_state_resets_total",
                "Times a new cluster state (re-init, restore, recover) replaced the view"
            )),
            epoch: reg!(g(
                "baton_proxy_epoch",
                "Highest epoch seen (sent as Baton-Min-Epoch)"
            )),
            rev: reg!(g(
                "baton_proxy_rev",
                "Rev of the newest controller answer applied"
            )),
            controllers_reachable: reg!(g(
                "baton_proxy_controllers_reachable",
                "Controllers whose last long-poll answered"
            )),
            conn: ConnMetrics::register(&registry, "proxy"),
            registry,
        }
    }

    /// The registry everything above is in (the `Auth` registers its counter here too).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        baton_runtime::metrics::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    /// No two metric families share a name once a counter's `_total` is taken off (the
    /// OpenMetrics rule a gauge `X` beside a counter `X_total` breaks).
    #[test]
    fn family_names_do_not_clash() {
        let m = super::Metrics::new();
        let seen = baton_runtime::metrics::families(m.registry()).unwrap_or_else(|e| panic!("{e}"));
        assert!(seen.len() > 5, "{seen:?}");
    }
}
