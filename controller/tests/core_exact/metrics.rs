//! The controller's metrics as the core's steps move them: the gauges a scrape computes
//! (`ClusterGauges::of`) and the counters a committed write moves (`on_committed`), plus the
//! rule that no two metric families clash.

use super::harness::*;
use baton_controller::metrics::{ClusterGauges, ControllerMetrics};

/// The line of `name{labels}` in `text`, parsed.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_steady_cluster_shows_its_leader_sync_set_and_lag_in_records_and_bytes() {
    let mut s = steady_sim();
    // r1's log holds records 1..=100 in 10 000 bytes (100 bytes each); r3 has 60 of them.
    s.hb(
        10_050,
        Heartbeat {
            log_start_lsn: Lsn(1),
            log_bytes: 10_000,
            ..leader_hb()
        },
    );
    s.hb(
        10_050,
        Heartbeat {
            flushed_lsn: Lsn(60),
            ..follower("r3")
        },
    );
    let g = ClusterGauges::of(&s.core, at(10_100));
    assert!(g.leader_up && !g.paused && !g.promoting && !g.blocked && !g.degraded);
    assert_eq!((g.members, g.members_heard), (3, 3));
    assert_eq!(g.epoch, Some(5));
    assert_eq!(g.sync_set_size, 1);
    assert_eq!(g.budget_remaining, 3);
    let r3 = g.per_member.iter().find(|m| m.id == "r3").expect("r3");
    assert_eq!((r3.lag_records, r3.lag_bytes), (Some(40), Some(4000)));
    assert!(r3.up && !r3.leader && !r3.in_sync);
    let r2 = g.per_member.iter().find(|m| m.id == "r2").expect("r2");
    assert_eq!((r2.lag_records, r2.in_sync), (Some(0), true));
    assert!(g.per_member.iter().any(|m| m.id == "r1" && m.leader));

    // The leader silent past the failure timeout: not up, and its members' heard age says so.
    let g = ClusterGauges::of(&s.core, at(11_100));
    assert!(!g.leader_up);
    assert_eq!(g.members_heard, 0);
    let r1 = g.per_member.iter().find(|m| m.id == "r1").expect("r1");
    assert_eq!(r1.heard_age_s, Some(1.05));
}

#[test]
fn a_failover_counts_its_trigger_decisions_and_promotion() {
    let registry = prometheus::Registry::new();
    let m = ControllerMetrics::register(&registry);
    m.init_cluster("main");
    let text = baton_runtime::metrics::render(&registry);
    assert_eq!(
        value(
            &text,
            r#"baton_controller_failovers_total{cluster="main",trigger="automatic"}"#
        ),
        Some(0.0),
        "counters start at 0, so that the first failover is an increase"
    );
    let mut s = steady_sim();
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("failover write");
    s.commit(11_000, &w);
    m.on_committed("main", &w);
    let text = baton_runtime::metrics::render(&registry);
    assert_eq!(
        value(
            &text,
            r#"baton_controller_failovers_total{cluster="main",trigger="automatic"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"baton_controller_decisions_total{cluster="main",kind="failover"}"#
        ),
        Some(1.0)
    );
    // The promoting state shows as such.
    let g = ClusterGauges::of(&s.core, at(11_000));
    assert!(g.promoting && !g.blocked);
    assert_eq!(g.budget_remaining, 2);
    // A write that only rewrites an older entry (a higher count) is no new decision.
    let rewrite = Write {
        journal_after: w.journal.last().map_or(0, |e| e.seq),
        ..w.clone()
    };
    m.on_committed("main", &rewrite);
    let text = baton_runtime::metrics::render(&registry);
    assert_eq!(
        value(
            &text,
            r#"baton_controller_failovers_total{cluster="main",trigger="automatic"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn a_refusal_is_counted_once_by_its_reason() {
    let registry = prometheus::Registry::new();
    let m = ControllerMetrics::register(&registry);
    let st = ClusterState {
        control: Control::Manual,
        ..steady()
    };
    let mut s = Sim::active(cfg(), st, vec![], 0);
    s.hb(10_000, leader_hb());
    for t in [11_000, 11_100, 11_200] {
        s.hb(t, lost("r2", t - 10_000));
        s.hb(t, lost("r3", t - 10_000));
        if let Some(w) = s.tick(t) {
            assert_eq!(w.journal.last().map(|e| e.reason.as_str()), Some("paused"));
            s.commit(t, &w);
            m.on_committed("main", &w);
        }
    }
    let text = baton_runtime::metrics::render(&registry);
    assert_eq!(
        value(
            &text,
            r#"baton_controller_refusals_total{cluster="main",kind="refusal",reason="paused"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(ClusterGauges::of(&s.core, at(11_200)).paused);
}

/// No two metric families share a name once a counter's `_total` is taken off (OpenMetrics).
#[test]
fn controller_metric_families_do_not_clash() {
    let registry = prometheus::Registry::new();
    baton_runtime::metrics::register_process(&registry, "controller");
    let _m = ControllerMetrics::register(&registry);
    let _c = baton_runtime::metrics::ConnMetrics::register(&registry, "controller");
    let seen = baton_runtime::metrics::families(&registry).unwrap_or_else(|e| panic!("{e}"));
    assert!(seen.contains("baton_build_info"), "{seen:?}");
}
