//! Prometheus metrics of a replica. Counters and histograms are updated where things happen;
//! position gauges are refreshed from the core when `/metrics` is scraped.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub writes: IntCounterVec,
    pub write_seconds: Histogram,
    pub fsync_seconds: Histogram,
    pub batch_records: Histogram,
    pub connections: IntGauge,
    pub connections_rejected: IntCounter,
    pub tls_failed: IntCounter,
    pub repl_streams_rejected: IntCounter,
    pub snapshots: IntCounterVec,
    pub snapshot_seconds: Histogram,
    pub epoch: IntGauge,
    pub is_leader: IntGauge,
    pub degraded: IntGauge,
    pub degraded_for_seconds: prometheus::Gauge,
    pub degraded_seconds: prometheus::Gauge,
    pub disk_full: IntGauge,
    pub log_end_lsn: IntGauge,
    pub flushed_lsn: IntGauge,
    pub commit_lsn: IntGauge,
    pub applied_lsn: IntGauge,
    pub keys: IntGauge,
    pub log_bytes: IntGauge,
    pub repl_records_sent: IntCounter,
    pub repl_records_received: IntCounter,
    pub repl_truncations: IntCounter,
    pub repl_snapshots_received: IntCounter,
    /// A follower's catch-up in progress (0 when none): records and (estimated) bytes left,
    /// the rate, and the ETA at that rate.
    pub catchup_records_remaining: IntGauge,
    pub catchup_bytes_remaining: IntGauge,
    pub catchup_bytes_per_second: IntGauge,
    pub catchup_eta_seconds: prometheus::Gauge,
}

fn buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.00005, 2.0, 18).expect("valid buckets")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        baton_runtime::metrics::register_process(&registry, "replica");
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
        Metrics {
            writes: reg!(IntCounterVec::new(
                Opts::new("baton_replica_writes_total", "Client writes by result"),
                &["result"]
            )
            .expect("valid")),
            write_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "baton_replica_write_seconds",
                    "Write latency from request to acknowledgement"
                )
                .buckets(buckets())
            )
            .expect("valid")),
            fsync_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "baton_replica_log_sync_seconds",
                    "Append + fdatasync time per group commit"
                )
                .buckets(buckets())
            )
            .expect("valid")),
            batch_records: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "baton_replica_log_batch_records",
                    "Records per group commit"
                )
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 14).expect("valid"))
            )
            .expect("valid")),
            connections: reg!(g("baton_replica_connections", "Open client connections")),
            connections_rejected: reg!(IntCounter::new(
                "baton_replica_connections_rejected_total",
                "Connections refused over limits.connections_max"
            )
            .expect("valid")),
            tls_failed: reg!(IntCounter::new(
                "baton_replica_tls_handshakes_failed_total",
                "Connections closed because their TLS handshake failed or timed out"
            )
            .expect("valid")),
            repl_streams_rejected: reg!(IntCounter::new(
                "baton_replica_replication_streams_rejected_total",
                "Replication streams refused over limits.replication_streams_max"
            )
            .expect("valid")),
            snapshots: reg!(IntCounterVec::new(
                Opts::new("baton_replica_snapshots_total", "Snapshots by result"),
                &["result"]
            )
            .expect("valid")),
            snapshot_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new("baton_replica_snapshot_seconds", "Time to write a snapshot")
                    .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid"))
            )
            .expect("valid")),
            epoch: reg!(g("baton_replica_epoch", "Highest epoch persisted")),
            is_leader: reg!(g(
                "baton_replica_is_leader",
                "1 when this replica leads and holds a lease"
            )),
            degraded: reg!(g(
                "baton_replica_degraded",
                "1 when leading with an empty sync set"
            )),
            degraded_for_seconds: reg!(prometheus::Gauge::with_opts(Opts::new(
                "baton_replica_degraded_for_seconds",
                "How long the current degraded period (leading alone) has lasted; 0 when not"
            ))
            .expect("valid")),
            degraded_seconds: reg!(prometheus::Gauge::with_opts(Opts::new(
                "baton_replica_degraded_seconds",
                "Every degraded period (leading alone: one disk holds acknowledged writes) of \
                 this process together, the current one included"
            ))
            .expect("valid")),
            disk_full: reg!(g(
                "baton_replica_disk_full",
                "1 while the log cannot be written for lack of space (writes get 507)"
            )),
            log_end_lsn: reg!(g(
                "baton_replica_log_end_lsn",
                "LSN of the last record appended"
            )),
            flushed_lsn: reg!(g(
                "baton_replica_flushed_lsn",
                "LSN up to which the log is durable"
            )),
            commit_lsn: reg!(g("baton_replica_commit_lsn", "Commit LSN")),
            applied_lsn: reg!(g("baton_replica_applied_lsn", "Applied LSN")),
            keys: reg!(g("baton_replica_keys", "Keys in the applied state")),
            log_bytes: reg!(g("baton_replica_log_bytes", "Bytes of log on disk")),
            catchup_records_remaining: reg!(g(
                "baton_replica_catchup_records_remaining",
                "Records a catching-up follower still lacks (0: not catching up)"
            )),
            catchup_bytes_remaining: reg!(g(
                "baton_replica_catchup_bytes_remaining",
                "Bytes a catching-up follower or snapshot install still lacks (log: an estimate)"
            )),
            catchup_bytes_per_second: reg!(g(
                "baton_replica_catchup_bytes_per_second",
                "Rate of the catch-up or snapshot install in progress"
            )),
            catchup_eta_seconds: reg!(prometheus::Gauge::with_opts(Opts::new(
                "baton_replica_catchup_eta_seconds",
                "Time the catch-up in progress should still take at its rate (0: none or no rate yet)"
            ))
            .expect("valid gauge")),
            repl_records_sent: reg!(IntCounter::new(
                "baton_replica_repl_records_sent_total",
                "Records sent to followers"
            )
            .expect("valid")),
            repl_records_received: reg!(IntCounter::new(
                "baton_replica_repl_records_received_total",
                "Records received from the leader"
            )
            .expect("valid")),
            repl_truncations: reg!(IntCounter::new(
                "baton_replica_repl_truncations_total",
                "Divergent log suffixes cut and archived"
            )
            .expect("valid")),
            repl_snapshots_received: reg!(IntCounter::new(
                "baton_replica_repl_snapshots_received_total",
                "Snapshots installed from the leader"
            )
            .expect("valid")),
            registry,
        }
    }

    /// The registry, for metrics kept elsewhere (the auth refusals).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
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
        assert!(seen.contains("baton_build_info"), "{seen:?}");
        assert!(seen.contains("process_cpu_seconds"), "{seen:?}");
    }
}
