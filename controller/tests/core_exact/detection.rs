//! Automatic failover on positive evidence, and the refusals (paused, budget, unproven) that
//! are journaled once per change.

use crate::harness::*;

// ----- automatic failover ----------------------------------------------------------------------

/// The runtime's cluster loop looks again exactly when the leader's failure would be proven
/// (not up to a poll later): the leader last heard at 10 000, followers reporting how long they
/// have been without its stream. Nothing is due while the leader was heard lately.
#[test]
fn the_failure_deadline_is_when_detection_would_prove_it() {
    let mut s = steady_sim();
    assert_eq!(s.core.failure_due_at(at(10_150)), None, "heard 150 ms ago");
    s.hb(10_250, lost("r2", 250));
    s.hb(10_280, lost("r3", 200));
    // The leader silent until 11 000; r3's stream gone since 10 080, so 11 080.
    assert_eq!(s.core.failure_due_at(at(10_300)), Some(11_080));
    s.hb(10_380, lost("r3", 380));
    assert_eq!(s.core.failure_due_at(at(10_400)), Some(11_000));
    // Nothing more heard: at the deadline the failover is decided.
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    assert!(s.tick(11_000).is_some(), "failed over at the deadline");
}

#[test]
fn automatic_failover_end_to_end() {
    let mut s = steady_sim();
    // Not before the failure timeout has passed since the leader was last heard.
    s.hb(10_999, lost("r2", 999));
    s.hb(10_999, lost("r3", 999));
    assert_eq!(s.tick(10_999), None);
    assert!(s.core.journal.is_empty());

    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let dry = s.core.dry_run(at(11_000));
    assert_eq!(dry.leader_health, format!("failed: {FAILED}"));
    assert!(dry.would_fail_over);
    assert_eq!(dry.candidate, Some(id("r2")));
    assert_eq!(dry.expected_loss_records, Some(0));
    assert!(dry.blocking.is_empty());

    let w = s.tick(11_000).expect("failover write");
    assert_eq!(w.expect_rev, REV0);
    let promoting = ClusterState {
        epoch: Epoch(6),
        leader: None,
        prev_leader: Some(record("r1")),
        phase: Phase::Promoting,
        ..steady()
    };
    assert_eq!(w.state, Some(promoting.clone()));
    assert_eq!(last(&w), (Kind::Failover, 6, 1));
    assert_eq!(
        w.journal[0].inputs["heard"].as_array().map(Vec::len),
        Some(3),
        "the inputs say who was heard when"
    );
    assert_eq!(s.tick(11_000), None, "one write in flight at a time");
    assert_eq!(s.commit(11_000, &w), 11);
    assert_eq!(s.failovers(11_000), 1);

    // Step 2: fenced at 6.
    assert_eq!(
        s.hb(11_050, lost("r2", 1050)),
        Directive {
            role: Some(Role::Fenced),
            ..base(6, 11, &promoting)
        }
    );
    assert_eq!(s.tick(11_050), None);
    s.hb(11_100, fenced("r2", 6, (5, 100)));
    assert_eq!(
        s.tick(11_100),
        None,
        "r3 is reachable and has not reported yet"
    );
    s.hb(11_150, fenced("r3", 6, (5, 100)));

    // Steps 3-4: the best sync member, and the follower at the same end joins its sync set.
    let w = s.tick(11_150).expect("promotion");
    let promoted = ClusterState {
        leader: Some(record("r2")),
        phase: Phase::Steady,
        sync_set: vec![mref("r3")],
        ..promoting
    };
    assert_eq!(w.state, Some(promoted.clone()));
    assert_eq!(last(&w), (Kind::Promoted, 6, 1));
    assert_eq!(s.commit(11_150, &w), 12);

    // The last grant to epoch 5 was at 10 000; the wait is over by now.
    assert_eq!(
        s.hb(11_200, fenced("r2", 6, (5, 100))),
        Directive {
            role: Some(Role::Leader),
            leader: Some(lref("r2", boot("r2"))),
            lease_ms: LEASE,
            start_after_ms: (10_000 + WAIT).saturating_sub(11_200),
            ..base(6, 12, &promoted)
        }
    );
    assert_eq!(
        s.hb(11_200, fenced("r3", 6, (5, 100))),
        Directive {
            role: Some(Role::Follower),
            leader: Some(lref("r2", boot("r2"))),
            ..base(6, 12, &promoted)
        }
    );
    // The old leader comes back: directed to follow at epoch 6 (it truncates its divergence).
    assert_eq!(
        s.hb(11_300, leader_hb()),
        Directive {
            role: Some(Role::Follower),
            leader: Some(lref("r2", boot("r2"))),
            ..base(6, 12, &promoted)
        }
    );
    assert_eq!(s.failovers(11_300), 1);
}

#[test]
fn promotion_goes_on_without_a_straggler_after_four_heartbeat_intervals() {
    let mut s = steady_sim();
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    s.tick_commit(11_000);
    s.hb(11_100, fenced("r2", 6, (5, 100)));
    s.hb(11_300, lost("r3", 1300)); // reachable, but never reports at epoch 6
    assert_eq!(s.tick(11_399), None);
    let w = s.tick(11_400).expect("promotion");
    let st = w.state.clone().expect("state");
    assert_eq!(
        (st.leader, st.sync_set),
        (Some(record("r2")), vec![]),
        "only fenced reports qualify for the sync set"
    );
    assert_eq!(
        says(&w),
        "promoted r2 at epoch 6 (log end 5/100); sync set []"
    );
}

#[test]
fn fresh_controller_decides_nothing_before_a_failure_timeout() {
    let mut core = ClusterCore::new(cfg());
    // Heard as a standby: the leader long ago, the followers recently.
    core.on_election(at(0), None, Some("c2.local:7100".into()));
    core.on_heartbeat(at(1_000), leader_hb());
    let mut s = Sim::wrap(core);
    s.hb(19_900, lost("r2", 18_900));
    s.hb(19_900, lost("r3", 18_900));
    s.core
        .on_election(at(20_000), Some(TERM), Some(ADDR.into()));
    assert_eq!(s.tick(20_000), None, "the state is not read yet");
    s.core.on_observed(
        at(20_000),
        Observed::Present {
            state: steady(),
            rev: REV0,
        },
        vec![],
    );
    for t in [20_000, 20_500, 20_999] {
        s.hb(t, lost("r2", t - 1_000));
        s.hb(t, lost("r3", t - 1_000));
        assert_eq!(s.tick(t), None, "observing at {t}");
    }
    // The leader is treated as unheard until it reports after the takeover (decisions wait a failure timeout); past that, the
    // controller is still observing.
    assert_eq!(
        s.core.dry_run(at(20_999)).leader_health,
        "observing (controller recently became active)"
    );
    assert!(s.core.journal.is_empty(), "not even a refusal is journaled");
    s.hb(21_000, lost("r2", 20_000));
    s.hb(21_000, lost("r3", 20_000));
    let w = s
        .tick(21_000)
        .expect("failover after observing for a failure timeout");
    assert_eq!(last(&w).0, Kind::Failover);
    assert_eq!(
        w.state.map(|s| (s.epoch, s.phase)),
        Some((Epoch(6), Phase::Promoting))
    );
}

// ----- refusals --------------------------------------------------------------------------------

#[test]
fn paused_refuses_and_journals_once() {
    let st = ClusterState {
        control: Control::Manual,
        ..steady()
    };
    let mut s = Sim::active(cfg(), st, vec![], 0);
    s.hb(10_000, leader_hb());
    for t in [11_000, 11_100, 11_200] {
        s.hb(t, lost("r2", t - 10_000));
        s.hb(t, lost("r3", t - 10_000));
        let w = s.tick(t);
        if t == 11_000 {
            let w = w.expect("refusal");
            assert_eq!(w.state, None, "a refusal changes no state");
            assert_eq!(w.expect_rev, REV0);
            assert_eq!(last(&w), (Kind::Refusal, 5, 1));
            assert_eq!(s.commit(t, &w), REV0);
        } else {
            assert_eq!(w, None, "journaled once, not at every tick ({t})");
        }
    }
    let dry = s.core.dry_run(at(11_200));
    assert!(!dry.would_fail_over);
    assert_eq!(dry.candidate, Some(id("r2")));
    assert_eq!(
        dry.blocking,
        vec!["paused: automatic failover is off".to_string()]
    );
    assert_eq!(s.core.journal.len(), 1);
}

#[test]
fn failover_budget_exhausted_refuses() {
    let spent: Vec<Entry> = (1..=3)
        .map(|i| {
            entry(
                "failover",
                &format!("f{i}"),
                4,
                UNIX0 + 11_000 - i * 1_000_000,
            )
        })
        .collect();
    let mut s = Sim::active(cfg(), steady(), spent, 0);
    s.hb(10_000, leader_hb());
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("refusal");
    assert_eq!(w.state, None);
    assert_eq!(last(&w), (Kind::Refusal, 5, 1));
    assert!(
        says(&w).starts_with("failover budget exhausted: 3 automatic failovers"),
        "{}",
        says(&w)
    );
    s.commit(11_000, &w);
    assert_eq!(s.tick(11_100), None);
    assert_eq!(
        s.core.dry_run(at(11_100)).blocking,
        vec!["failover budget exhausted (3 in the last hour)".to_string()]
    );
}

#[test]
fn failover_budget_counts_automatic_failovers_of_the_last_hour_only() {
    // One failover older than an hour, two recent ones, and manual failovers (not automatic).
    let j = vec![
        entry("failover", "old", 4, UNIX0 + 11_000 - 3_600_000),
        entry("failover", "f1", 4, UNIX0 + 11_000 - 600_000),
        entry("manual_failover", "m1", 4, UNIX0 + 11_000 - 500_000),
        entry("failover", "f2", 4, UNIX0 + 11_000 - 400_000),
        entry("manual_failover", "m2", 4, UNIX0 + 11_000 - 300_000),
    ];
    let mut s = Sim::active(cfg(), steady(), j, 0);
    s.hb(10_000, leader_hb());
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("failover");
    assert_eq!(last(&w).0, Kind::Failover);
    s.commit(11_000, &w);
    assert_eq!(s.failovers(11_000), 3);
}

#[test]
fn leader_unreachable_from_controller_while_followers_see_it() {
    let mut s = steady_sim();
    s.hb(11_000, lost("r2", 20));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("refusal");
    assert_eq!(last(&w), (Kind::Refusal, 5, 1));
    names(&w, &["r2"]);
    assert_eq!(w.state, None);
    s.commit(11_000, &w);
    assert_eq!(s.tick(11_100), None, "journaled once per change");
    assert_eq!(s.tick(11_150), None);
    // The leader is heard again; later the same refusal comes back: journaled again, and
    // coalesced with the first entry since nothing came between.
    s.hb(11_200, leader_hb());
    assert_eq!(s.tick(11_200), None);
    s.hb(12_200, lost("r2", 20));
    s.hb(12_200, lost("r3", 1000));
    let w = s.tick(12_200).expect("the refusal is back");
    assert_eq!(w.journal.len(), 1);
    assert_eq!(last(&w), (Kind::Refusal, 5, 2));
    assert_eq!(w.journal[0].last_unix_ms, Some(UNIX0 + 12_200));
    s.commit(12_200, &w);
    assert_eq!(s.tick(12_300), None);
}

#[test]
fn no_failover_without_a_reporting_follower_or_when_a_standby_hears_more() {
    let mut s = steady_sim();
    // Only the (silent) leader's peers are silent too: this controller may be the isolated one.
    let w = s.tick(11_000).expect("refusal");
    assert_eq!(last(&w), (Kind::Refusal, 5, 1));
    s.commit(11_000, &w);
    s.hb(11_100, lost("r2", 1100));
    s.hb(11_100, lost("r3", 1100));
    s.core.standby_hears = 3;
    let w = s.tick(11_100).expect("refusal");
    assert_eq!(last(&w), (Kind::Refusal, 5, 1));
    s.commit(11_100, &w);
    assert_eq!(s.tick(11_200), None);
}

#[test]
fn no_eligible_candidate_reports_refuses_before_fencing() {
    let mut s = steady_sim();
    // The only sync member is silent; r3 reports but may lack acknowledged writes.
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("refusal");
    assert_eq!(last(&w), (Kind::Refusal, 5, 1));
    s.commit(11_000, &w);
    // The sync member reports unclean: still nobody.
    s.hb(
        11_100,
        Heartbeat {
            unclean: true,
            ..lost("r2", 1100)
        },
    );
    s.hb(11_100, lost("r3", 1100));
    assert_eq!(s.tick(11_100), None, "same reason, not journaled again");
    let dry = s.core.dry_run(at(11_100));
    assert_eq!(
        dry.leader_health,
        "not proven failed: no eligible candidate reports (blocked: waiting for a sync member or the old leader)"
    );
    assert!(!dry.would_fail_over);
    assert_eq!(dry.candidate, None);
    assert_eq!(
        dry.blocking,
        vec![
            "no member of the recorded sync set (nor the previous leader) reports after fencing"
                .to_string()
        ]
    );
}

#[test]
fn etcd_state_behind_replicas_refuses_to_act() {
    let mut s = steady_sim();
    s.hb(
        10_500,
        Heartbeat {
            epoch: Epoch(7),
            ..follower("r3")
        },
    );
    let w = s.tick(10_500).expect("refusal");
    assert_eq!(w.state, None);
    assert_eq!(last(&w), (Kind::Refusal, 5, 1));
    names(&w, &["r3"]);
    s.commit(10_500, &w);
    // Even a failed leader is not replaced.
    s.hb(11_000, lost("r2", 1000));
    s.hb(
        11_000,
        Heartbeat {
            epoch: Epoch(7),
            ..lost("r3", 1000)
        },
    );
    for t in [11_000, 11_500, 12_000] {
        assert_eq!(s.tick(t), None, "journaled once, no failover ({t})");
    }
    assert_eq!(s.core.journal.len(), 1);
}

/// Found by the simulation (etcd restored from a backup taken during a promotion): the state
/// still showed epoch 2 being promoted while a leader of epoch 2 had been chosen and had
/// written; the controller finished the promotion again and started a second leader of the
/// same epoch. A replica that applied a later rev of the epoch, or holds records of an epoch
/// still "being promoted", now shows the state is behind: no decision, no role, no lease.
#[test]
fn etcd_state_behind_at_the_same_epoch_grants_nothing() {
    let mut s = steady_sim();
    // r2 applied a rev of epoch 5 that the (restored) state does not have yet.
    let d = s.hb(
        10_500,
        Heartbeat {
            applied_rev: REV0 + 3,
            ..follower("r2")
        },
    );
    assert_eq!(d.role, None, "no role from a state the replicas moved past");
    let d = s.hb(10_500, leader_hb());
    assert_eq!(
        (d.role, d.lease_ms),
        (None, 0),
        "no lease for the leader either"
    );
    let w = s.tick(10_500).expect("refusal");
    assert_eq!(w.state, None);
    assert_eq!(
        says(&w),
        format!(
            "etcd state behind replicas: the state is at rev {REV0} of epoch 5 but r2 applied rev {} of it; \
             refusing to act (restore the state or run recovery)",
            REV0 + 3
        )
    );
}

/// Found by the chaos runs: an active controller cut off from every replica went on judging
/// the sync set from the leader's last (stale) heartbeat and dropped healthy members, leaving
/// the leader acknowledging alone after the heal. Without a fresh leader report (or while a
/// standby hears more members) the sync set is left alone.
#[test]
fn controller_cut_from_the_replicas_keeps_the_sync_set() {
    let mut s = steady_sim();
    for t in [10_500, 11_200, 12_000, 13_000, 15_000] {
        if let Some(w) = s.tick(t) {
            assert_ne!(last(&w).0, Kind::SyncDrop, "at {t}: {w:?}");
            assert_ne!(last(&w).0, Kind::SyncAdd, "at {t}: {w:?}");
            s.commit(t, &w);
        }
    }
    // A standby that hears more members also holds the active one back.
    let mut s = steady_sim();
    s.core.standby_hears = 3;
    s.hb(12_000, leader_hb());
    if let Some(w) = s.tick(12_000) {
        assert_ne!(last(&w).0, Kind::SyncDrop, "{w:?}");
    }
}

#[test]
fn blocked_promotion_is_journaled_once_and_failover_to_continues_it() {
    let mut s = steady_sim();
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    s.tick_commit(11_000);
    // After fencing, the sync member reports unclean: nobody may be promoted.
    s.hb(
        11_100,
        Heartbeat {
            unclean: true,
            ..fenced("r2", 6, (5, 100))
        },
    );
    s.hb(11_100, fenced("r3", 6, (5, 100)));
    let w = s.tick(11_100).expect("blocked");
    assert_eq!(w.state, None);
    assert_eq!(last(&w), (Kind::Blocked, 6, 1));
    assert_eq!(s.commit(11_100, &w), 11);
    for t in [11_200, 11_300, 12_000] {
        assert_eq!(s.tick(t), None, "journaled once ({t})");
    }

    // `failover --to` continues it at the same epoch, within the rules.
    let n = at(12_000);
    assert_eq!(
        s.core.failover(n, id("r2"), true, false, "op-9".into()),
        Err(op_error(
            ErrorCode::Ineligible,
            "r2 is unclean: it may lack acknowledged writes; only allow_data_loss promotes it"
        ))
    );
    assert_eq!(
        s.core.failover(n, id("r3"), false, false, "op-9".into()),
        Err(op_error(ErrorCode::MayLoseWrites,
            "r3 is not in the sync set and may lack acknowledged writes: it would lose at least 0 records; pass force to accept"
        )),
        "r3 lacks nothing another reporting member holds, but the unclean sync member may have held more"
    );
    let w = s
        .core
        .failover(n, id("r3"), true, false, "op-9".into())
        .expect("forced");
    s.check_write(&w);
    let st = s.state();
    assert_eq!(
        w.state,
        Some(ClusterState {
            op: Some(OpRecord {
                id: "op-9".into(),
                op: Op::Failover {
                    to: id("r3"),
                    force: true,
                    allow_data_loss: false,
                    planned: false,
                },
                deadline_unix_ms: UNIX0 + 12_000 + 60_000,
                timeout_ms: Some(60_000),
            }),
            ..st.clone()
        })
    );
    assert_eq!(last(&w), (Kind::ManualFailover, 6, 1));
    s.commit(12_000, &w);
    s.hb(12_050, fenced("r3", 6, (5, 100)));
    let w = s.tick(12_050).expect("promotion");
    assert_eq!(
        w.state,
        Some(ClusterState {
            leader: Some(record("r3")),
            phase: Phase::Steady,
            sync_set: vec![mref("r2")],
            op: None,
            lossy: true,
            ..st
        })
    );
    assert_eq!(last(&w), (Kind::Promoted, 6, 1));
    s.commit(12_050, &w);
    assert_eq!(s.failovers(12_050), 1, "only the automatic one counts");
}

#[test]
fn promotion_with_no_report_at_the_new_epoch_is_blocked_after_a_failure_timeout() {
    let mut s = steady_sim();
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    s.tick_commit(11_000);
    assert_eq!(s.tick(11_999), None);
    let w = s.tick(12_000).expect("blocked");
    assert_eq!(last(&w), (Kind::Blocked, 6, 1));
    s.commit(12_000, &w);
    assert_eq!(s.tick(12_500), None);
}
