//! The controller's Prometheus metrics (all labelled `cluster`): counters of what it decided
//! (failovers by trigger, promotions, refusals by reason, fenced heartbeats, every journaled
//! decision by kind), moved where the decision is committed or answered, and gauges of what it
//! sees (active, leader up, paused, promoting, blocked, degraded, sync-set size, lease left,
//! etcd unreachable, last promotion, failover budget left, and per member: up, leader, in the
//! sync set, lag in records and bytes, heard age, disk full), computed at each scrape from the
//! cluster's core by [`ClusterGauges::of`] (pure) and set by [`ControllerMetrics::refresh`].
//!
//! Every controller exports the gauges of every cluster it serves as it sees them; only the
//! active one's (`baton_controller_active == 1`) decide anything, and alert rules
//! (`deploy/prometheus/alerts.yml`) select it. Counters count on the controller that wrote.

use crate::core::{ClusterCore, Now, Observed, Write};
use crate::journal::Kind;
use crate::runtime::ClusterRt;
use crate::state::{Control, Op, Phase};
use baton_common::directive::{Directive, ReportedRole, Role};
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use std::sync::Arc;

/// Handles onto the registered metrics.
pub struct ControllerMetrics {
    /// Held from refresh to rendering, so that two scrapes at once do not see each other's
    /// half-reset gauges.
    scrape: std::sync::Mutex<()>,
    failovers: IntCounterVec,
    promotions: IntCounterVec,
    refusals: IntCounterVec,
    fenced: IntCounterVec,
    decisions: IntCounterVec,
    active: IntGaugeVec,
    members: IntGaugeVec,
    members_heard: IntGaugeVec,
    epoch: IntGaugeVec,
    leader_up: IntGaugeVec,
    paused: IntGaugeVec,
    promoting: IntGaugeVec,
    blocked: IntGaugeVec,
    degraded: IntGaugeVec,
    sync_set_size: IntGaugeVec,
    budget_remaining: IntGaugeVec,
    lease_remaining: GaugeVec,
    etcd_unreachable: GaugeVec,
    last_promotion: GaugeVec,
    member_up: IntGaugeVec,
    member_leader: IntGaugeVec,
    member_in_sync: IntGaugeVec,
    member_lag_records: IntGaugeVec,
    member_lag_bytes: IntGaugeVec,
    member_disk_full: IntGaugeVec,
    member_heard_age: GaugeVec,
}

/// What the gauges show of one cluster at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterGauges {
    pub active: bool,
    pub members: usize,
    pub members_heard: usize,
    /// None: the cluster is not initialized (or the state not read yet).
    pub epoch: Option<u64>,
    pub leader_up: bool,
    pub paused: bool,
    pub promoting: bool,
    pub blocked: bool,
    pub degraded: bool,
    pub sync_set_size: usize,
    pub budget_remaining: usize,
    pub lease_remaining_s: f64,
    pub etcd_unreachable_s: f64,
    /// Unix seconds of the newest `promoted` entry this controller knows.
    pub last_promotion_s: Option<f64>,
    pub per_member: Vec<MemberGauges>,
}

/// One member's gauges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberGauges {
    pub id: String,
    pub up: bool,
    pub leader: bool,
    pub in_sync: bool,
    /// Records the member's flushed log is behind the leader's log end (None: no leader heard,
    /// or the member never heard).
    pub lag_records: Option<u64>,
    /// `lag_records` times the leader's mean record size on disk (an estimate).
    pub lag_bytes: Option<u64>,
    pub disk_full: bool,
    pub heard_age_s: Option<f64>,
}

impl ClusterGauges {
    /// The gauges of `core` at `n`.
    pub fn of(core: &ClusterCore, n: Now) -> ClusterGauges {
        let fresh = |at_ms: u64| n.ms.saturating_sub(at_ms) < core.cfg.failure_timeout_ms;
        let state = match &core.observed {
            Observed::Present { state, .. } => Some(state),
            _ => None,
        };
        let leader_id = state.and_then(|s| s.leader.as_ref()).map(|l| l.id.clone());
        let leader = leader_id.as_ref().and_then(|id| core.heard().get(id));
        let leader_hb = leader.map(|h| &h.hb);
        let leader_end = leader_hb.map(|h| h.log_end_lsn.0);
        // The leader's mean record size on disk, when it holds any record.
        let mean_record = leader_hb.and_then(|h| {
            let records = (h.log_end_lsn.0 + 1).checked_sub(h.log_start_lsn.0.max(1))?;
            (records > 0 && h.log_bytes > 0).then(|| h.log_bytes / records)
        });
        let newest = core.journal.last();
        let per_member = core
            .members_reached()
            .iter()
            .map(|m| {
                let h = core.heard().get(&m.id);
                let lag_records = match (leader_end, h) {
                    (Some(e), Some(h)) => Some(e.saturating_sub(h.hb.flushed_lsn.0)),
                    _ => None,
                };
                MemberGauges {
                    id: m.id.to_string(),
                    up: h.is_some_and(|h| fresh(h.at_ms)),
                    leader: leader_id.as_ref() == Some(&m.id),
                    in_sync: state.is_some_and(|s| s.sync_set.iter().any(|x| x.id == m.id)),
                    lag_records,
                    lag_bytes: lag_records
                        .zip(mean_record)
                        .map(|(l, b)| l.saturating_mul(b)),
                    disk_full: h.is_some_and(|h| h.hb.disk_full),
                    heard_age_s: h.map(|h| n.ms.saturating_sub(h.at_ms) as f64 / 1000.0),
                }
            })
            .collect();
        let promoting = state.is_some_and(|s| s.phase == Phase::Promoting);
        ClusterGauges {
            active: core.active_at(n),
            members: core.members_reached().len(),
            members_heard: core.hears(n),
            epoch: state.map(|s| s.epoch.0),
            leader_up: leader.is_some_and(|h| fresh(h.at_ms) && h.hb.role == ReportedRole::Leader),
            paused: state.is_some_and(|s| s.control == Control::Manual),
            promoting,
            blocked: promoting
                && newest.is_some_and(|e| {
                    e.kind == Kind::Blocked && state.is_some_and(|s| s.epoch.0 == e.epoch)
                }),
            degraded: leader_hb.is_some_and(|h| h.degraded_for_ms > 0),
            sync_set_size: state.map_or(0, |s| s.sync_set.len()),
            budget_remaining: core
                .cfg
                .max_failovers_per_hour
                .saturating_sub(core.failovers_in_last_hour(n)),
            lease_remaining_s: core.trusted_for_ms(n) as f64 / 1000.0,
            etcd_unreachable_s: core
                .etcd_failing_since_ms
                .map_or(0.0, |t| n.ms.saturating_sub(t) as f64 / 1000.0),
            last_promotion_s: core
                .journal
                .iter()
                .rev()
                .find(|e| e.kind == Kind::Promoted)
                .map(|e| e.last_unix_ms.unwrap_or(e.at_unix_ms) as f64 / 1000.0),
            per_member,
        }
    }
}

/// What started a promotion, as `baton_controller_failovers_total` labels it; None for an
/// entry that starts none.
pub fn trigger(kind: &Kind, w: &Write) -> Option<&'static str> {
    let state = w.state.as_ref();
    match kind {
        Kind::Failover => {
            let planned = state
                .and_then(|s| s.op.as_ref())
                .is_some_and(|o| matches!(o.op, Op::Failover { planned: true, .. }));
            Some(if planned { "planned" } else { "automatic" })
        }
        Kind::ManualFailover => Some("manual"),
        Kind::Restart => Some("restart"),
        // The request (its state enters the switching phase), not the completion.
        Kind::Switchover => state
            .is_some_and(|s| s.phase == Phase::Switching)
            .then_some("switchover"),
        _ => None,
    }
}

impl ControllerMetrics {
    /// Registers every controller metric in `registry`.
    pub fn register(registry: &Registry) -> Arc<ControllerMetrics> {
        fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone()))
                .expect("metric registers once");
            m
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        let fgauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                registry,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        let c = &["cluster"];
        let cm = &["cluster", "member"];
        Arc::new(ControllerMetrics {
            scrape: std::sync::Mutex::new(()),
            failovers: counter(
                "baton_controller_failovers_total",
                "Promotions this controller started, by trigger (automatic, planned, manual, restart, switchover)",
                &["cluster", "trigger"],
            ),
            promotions: counter(
                "baton_controller_promotions_total",
                "New leaders this controller recorded",
                c,
            ),
            refusals: counter(
                "baton_controller_refusals_total",
                "Refusals and blocked promotions journaled, by kind and reason",
                &["cluster", "kind", "reason"],
            ),
            fenced: counter(
                "baton_controller_fenced_total",
                "Heartbeats this controller answered with a fence",
                c,
            ),
            decisions: counter(
                "baton_controller_decisions_total",
                "Journal entries this controller wrote, by kind",
                &["cluster", "kind"],
            ),
            active: gauge(
                "baton_controller_active",
                "1 when this controller is the active one for the cluster (elected, within its etcd lease)",
                c,
            ),
            members: gauge("baton_controller_members", "Members of the cluster", c),
            members_heard: gauge(
                "baton_controller_members_heard",
                "Members heard within the failure timeout",
                c,
            ),
            epoch: gauge("baton_controller_epoch", "Epoch of the cluster state", c),
            leader_up: gauge(
                "baton_controller_leader_up",
                "1 when the recorded leader is heard within the failure timeout and reports leading",
                c,
            ),
            paused: gauge(
                "baton_controller_paused",
                "1 when automatic failover is paused by an operator",
                c,
            ),
            promoting: gauge(
                "baton_controller_promoting",
                "1 while a promotion is under way",
                c,
            ),
            blocked: gauge(
                "baton_controller_blocked",
                "1 while a promotion under way cannot choose a leader",
                c,
            ),
            degraded: gauge(
                "baton_controller_degraded",
                "1 while the leader acknowledges writes alone (empty sync set)",
                c,
            ),
            sync_set_size: gauge(
                "baton_controller_sync_set_size",
                "Members in the sync set",
                c,
            ),
            budget_remaining: gauge(
                "baton_controller_failover_budget_remaining",
                "Automatic failovers left in the last hour's budget (max_failovers_per_hour)",
                c,
            ),
            lease_remaining: fgauge(
                "baton_controller_lease_remaining_seconds",
                "Time this controller may still act on its etcd lease without a renewal (0: not active)",
                c,
            ),
            etcd_unreachable: fgauge(
                "baton_controller_etcd_unreachable_seconds",
                "How long this controller's etcd session has been failing (0: etcd answers)",
                c,
            ),
            last_promotion: fgauge(
                "baton_controller_last_promotion_timestamp_seconds",
                "Unix time of the newest promotion in the journal",
                c,
            ),
            member_up: gauge(
                "baton_controller_member_up",
                "1 when the member was heard within the failure timeout",
                cm,
            ),
            member_leader: gauge(
                "baton_controller_member_leader",
                "1 for the recorded leader",
                cm,
            ),
            member_in_sync: gauge(
                "baton_controller_member_in_sync_set",
                "1 for a member of the sync set",
                cm,
            ),
            member_lag_records: gauge(
                "baton_controller_member_lag_records",
                "Records the member's durable log is behind the leader's log end",
                cm,
            ),
            member_lag_bytes: gauge(
                "baton_controller_member_lag_bytes",
                "The lag in records times the leader's mean record size on disk (an estimate)",
                cm,
            ),
            member_disk_full: gauge(
                "baton_controller_member_disk_full",
                "1 when the member reports its log disk full",
                cm,
            ),
            member_heard_age: fgauge(
                "baton_controller_member_heard_age_seconds",
                "Time since the member's last heartbeat reached this controller",
                cm,
            ),
        })
    }

    /// Creates `cluster`'s counters at 0 (a counter that first appears at 1 shows no
    /// `increase()` in Prometheus: the first failover would go unseen by a rule).
    pub fn init_cluster(&self, cluster: &str) {
        for t in ["automatic", "planned", "manual", "restart", "switchover"] {
            self.failovers.with_label_values(&[cluster, t]);
        }
        self.promotions.with_label_values(&[cluster]);
        self.fenced.with_label_values(&[cluster]);
    }

    /// `w` was committed for `cluster`: counts its new journal entries (a rewrite of an older
    /// entry with a higher count is not a new decision).
    pub fn on_committed(&self, cluster: &str, w: &Write) {
        for e in w.journal.iter().filter(|e| e.seq > w.journal_after) {
            self.decisions
                .with_label_values(&[cluster, e.kind.as_str()])
                .inc();
            if let Some(t) = trigger(&e.kind, w) {
                self.failovers.with_label_values(&[cluster, t]).inc();
            }
            match e.kind {
                Kind::Promoted => self.promotions.with_label_values(&[cluster]).inc(),
                Kind::Refusal | Kind::Blocked => {
                    let reason = if e.reason.is_empty() {
                        "other"
                    } else {
                        &e.reason
                    };
                    self.refusals
                        .with_label_values(&[cluster, e.kind.as_str(), reason])
                        .inc()
                }
                _ => {}
            }
        }
    }

    /// The answer `d` to a heartbeat of `cluster`: a fence is counted.
    pub fn on_answer(&self, cluster: &str, d: &Directive) {
        if d.role == Some(Role::Fenced) {
            self.fenced.with_label_values(&[cluster]).inc();
        }
    }

    /// A scrape: every gauge set from the clusters' cores, then the text exposition of
    /// `registry` (which holds these metrics and the server's own).
    pub fn render(&self, registry: &Registry, clusters: &[Arc<ClusterRt>], n: Now) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(clusters, n);
        baton_runtime::metrics::render(registry)
    }

    /// Sets every gauge from the clusters' cores. Members no longer reached lose their series.
    fn refresh(&self, clusters: &[Arc<ClusterRt>], n: Now) {
        for v in [
            &self.member_up,
            &self.member_leader,
            &self.member_in_sync,
            &self.member_lag_records,
            &self.member_lag_bytes,
            &self.member_disk_full,
        ] {
            v.reset();
        }
        self.member_heard_age.reset();
        self.epoch.reset();
        self.last_promotion.reset();
        for rt in clusters {
            let g = ClusterGauges::of(&rt.lock(), n);
            let c = rt.name.as_str();
            let set = |v: &IntGaugeVec, x: i64| v.with_label_values(&[c]).set(x);
            set(&self.active, g.active.into());
            set(&self.members, g.members as i64);
            set(&self.members_heard, g.members_heard as i64);
            if let Some(e) = g.epoch {
                set(&self.epoch, e as i64);
            }
            set(&self.leader_up, g.leader_up.into());
            set(&self.paused, g.paused.into());
            set(&self.promoting, g.promoting.into());
            set(&self.blocked, g.blocked.into());
            set(&self.degraded, g.degraded.into());
            set(&self.sync_set_size, g.sync_set_size as i64);
            set(&self.budget_remaining, g.budget_remaining as i64);
            self.lease_remaining
                .with_label_values(&[c])
                .set(g.lease_remaining_s);
            self.etcd_unreachable
                .with_label_values(&[c])
                .set(g.etcd_unreachable_s);
            if let Some(t) = g.last_promotion_s {
                self.last_promotion.with_label_values(&[c]).set(t);
            }
            for m in &g.per_member {
                let l = [c, m.id.as_str()];
                self.member_up.with_label_values(&l).set(m.up.into());
                self.member_leader
                    .with_label_values(&l)
                    .set(m.leader.into());
                self.member_in_sync
                    .with_label_values(&l)
                    .set(m.in_sync.into());
                self.member_disk_full
                    .with_label_values(&l)
                    .set(m.disk_full.into());
                if let Some(r) = m.lag_records {
                    self.member_lag_records
                        .with_label_values(&l)
                        .set(r.min(i64::MAX as u64) as i64);
                }
                if let Some(b) = m.lag_bytes {
                    self.member_lag_bytes
                        .with_label_values(&l)
                        .set(b.min(i64::MAX as u64) as i64);
                }
                if let Some(a) = m.heard_age_s {
                    self.member_heard_age.with_label_values(&l).set(a);
                }
            }
        }
    }
}
