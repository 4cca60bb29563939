//! Regressions of the review fixes and of the correctness findings (issue 10).

use crate::harness::*;

// ----- regressions of the review fixes ---------------------------------------------------------

/// A member's report with an empty log (before `init`).
fn empty_log(who: &str) -> Heartbeat {
    Heartbeat {
        epoch: Epoch(0),
        role: ReportedRole::None,
        log_end_epoch: Epoch(0),
        log_end_lsn: Lsn(0),
        flushed_lsn: Lsn(0),
        applied_lsn: Lsn(0),
        commit_lsn: Lsn(0),
        applied_rev: 0,
        since_leader_ms: None,
        ..follower(who)
    }
}

fn not_active_here() -> OpError {
    op_error(
        ErrorCode::NotActive,
        "this controller is not active; the active one is c1.local:7100",
    )
}

/// Regression: a controller whose etcd lease may have expired (past `valid_until`) still
/// granted leases and decided, although another controller may already be active.
#[test]
fn past_valid_until_the_controller_answers_as_a_standby() {
    let mut s = steady_sim();
    s.core.set_valid_until(11_000);
    // Before it: unchanged.
    assert_eq!(
        s.hb(10_999, leader_hb()),
        Directive {
            role: Some(Role::Leader),
            leader: Some(lref("r1", boot("r1"))),
            lease_ms: LEASE,
            ..base(5, REV0, &steady())
        }
    );
    assert_eq!(s.hb(10_999, follower("r2")).role, Some(Role::Follower));
    // From it on: no role and no lease, though the term is still set.
    assert!(s.core.is_active());
    assert!(!s.core.active_at(at(11_000)));
    let inactive = Directive {
        active: false,
        waited: vec![],
        ..base(5, REV0, &steady())
    };
    assert_eq!(s.hb(11_000, leader_hb()), inactive);
    assert_eq!(s.hb(11_000, follower("r2")), inactive);
    assert_eq!(s.hb(12_000, follower("r3")), inactive);
    assert_eq!(s.tick(11_000), None);
    assert_eq!(s.tick(12_000), None);
}

#[test]
fn past_valid_until_nothing_is_decided_and_operations_are_refused() {
    let mut s = steady_sim();
    s.core.set_valid_until(11_000);
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let n = at(11_000);
    assert_eq!(s.core.tick(n), None, "no failover past valid_until");
    assert_eq!(
        s.core.switchover(n, Some(id("r2")), 5000, "op-1".into()),
        Err(not_active_here())
    );
    assert_eq!(
        s.core.set_control(n, Control::Manual),
        Err(not_active_here())
    );
    assert_eq!(
        s.core.failover(n, id("r2"), false, false, "op-1".into()),
        Err(not_active_here())
    );
    let dry = s.core.dry_run(n);
    assert!(!dry.would_fail_over);
    assert!(dry
        .blocking
        .contains(&"this controller is not active".to_string()));
    assert!(s.core.journal.is_empty());
    // The lease is renewed: the same inputs decide the failover.
    s.core.set_valid_until(11_001);
    let w = s.tick(11_000).expect("failover");
    assert_eq!(last(&w), (Kind::Failover, 6, 1));

    // `init` on an uninitialized cluster, likewise.
    let mut s = Sim::absent(cfg(), 0);
    s.core.set_valid_until(1_000);
    for who in ["r1", "r2", "r3"] {
        let d = s.hb(999, empty_log(who));
        assert!(d.active, "active before valid_until");
    }
    for who in ["r1", "r2", "r3"] {
        let d = s.hb(1_000, empty_log(who));
        assert_eq!((d.active, d.controller_term), (false, TERM));
    }
    assert_eq!(s.core.init(at(1_000)), Err(not_active_here()));
    s.core.set_valid_until(2_000);
    let w = s
        .core
        .init(at(1_000))
        .expect("init once the lease is valid");
    assert_eq!(last(&w).0, Kind::Init);
}

/// Issue 10 item 9: a term is trusted only within the window of the etcd lease it was won
/// under. The session lost lease 7 and re-granted lease 8 with a fresh window; until a
/// campaign under lease 8 confirms a term, the old term (whose election key may still be alive
/// under lease 7, or already gone) grants nothing and decides nothing. Before the fix the new
/// window was applied to the old term: active for another whole TTL.
#[test]
fn term_is_trusted_only_within_the_window_of_its_own_lease() {
    let mut core = ClusterCore::new(cfg());
    core.set_session(Some(7), 1_000);
    core.on_election(at(0), Some(TERM), Some(ADDR.into()));
    core.on_observed(
        at(0),
        Observed::Present {
            state: ClusterState {
                strict: Some(true),
                ..steady()
            },
            rev: REV0,
        },
        vec![],
    );
    let mut s = Sim::wrap(core);
    assert!(s.core.active_at(at(999)));
    assert!(
        s.hb(999, follower("r2")).active,
        "active within lease 7 window"
    );
    // Lease 7 lost; lease 8 granted, trusted until 5_000.
    s.core.set_session(Some(8), 5_000);
    assert!(
        !s.core.active_at(at(1_500)),
        "the old term does not get lease 8's window"
    );
    let d = s.hb(1_500, follower("r2"));
    assert_eq!((d.active, d.role, d.lease_ms), (false, None, 0));
    assert_eq!(s.core.init(at(1_500)), Err(not_active_here()));
    // A campaign under lease 8 that wins a new term makes it active again.
    s.core
        .on_election(at(1_600), Some(TERM + 5), Some(ADDR.into()));
    assert!(s.core.active_at(at(1_600)));
    // No session at all: nothing is trusted.
    s.core.set_session(None, 9_000);
    assert!(!s.core.active_at(at(1_700)));
}

/// Regression: an entry heard before the takeover (as a standby) showing another boot of the
/// recorded leader was taken as a restart at once.
#[test]
fn restart_is_taken_only_from_a_heartbeat_received_while_active() {
    let mut core = ClusterCore::new(cfg());
    core.on_election(at(0), None, Some("c2.local:7100".into()));
    let mut s = Sim::wrap(core);
    let r1b = Heartbeat {
        boot_id: boot2("r1"),
        role: ReportedRole::None,
        ..follower("r1")
    };
    s.hb(5_000, r1b.clone());
    s.core
        .on_election(at(10_000), Some(TERM), Some(ADDR.into()));
    s.core.on_observed(
        at(10_000),
        Observed::Present {
            state: steady(),
            rev: REV0,
        },
        vec![],
    );
    s.hb(10_000, follower("r2"));
    s.hb(10_000, follower("r3"));
    assert_eq!(s.tick(10_000), None, "the old entry is no restart");
    assert_eq!(
        s.core.dry_run(at(10_000)).leader_health,
        "observing (controller recently became active)"
    );
    // Past the observation period it still is not: the leader is merely not heard.
    s.hb(11_000, follower("r2"));
    s.hb(11_000, follower("r3"));
    let w = s.tick(11_000).expect("refusal");
    assert_eq!(last(&w), (Kind::Refusal, 5, 1));
    names(&w, &["r2", "r3"]);
    s.commit(11_000, &w);
    // The new boot heard while active is.
    assert_eq!(s.hb(11_100, r1b).role, Some(Role::Fenced));
    let w = s.tick(11_100).expect("restart");
    assert_eq!(
        w.state,
        Some(ClusterState {
            epoch: Epoch(6),
            leader: None,
            prev_leader: Some(record("r1")),
            phase: Phase::Promoting,
            ..steady()
        })
    );
    assert_eq!(last(&w), (Kind::Restart, 6, 1));
}

/// Regression: a takeover moved every old heartbeat's time forward, so members last heard
/// long before it counted as heard (and `init` went ahead on their stale reports).
#[test]
fn takeover_does_not_refresh_old_heartbeats() {
    let mut core = ClusterCore::new(cfg());
    core.on_election(at(0), None, Some("c2.local:7100".into()));
    let mut s = Sim::wrap(core);
    for who in ["r1", "r2", "r3"] {
        s.hb(1_000, empty_log(who));
    }
    assert_eq!(s.core.hears(at(1_000)), 3);
    s.core
        .on_election(at(20_000), Some(TERM), Some(ADDR.into()));
    s.core.on_observed(at(20_000), Observed::Absent, vec![]);
    assert_eq!(s.core.hears(at(20_000)), 0);
    assert_eq!(s.core.heard()[&id("r1")].at_ms, 1_000);
    assert_eq!(
        s.core.init(at(20_000)),
        Err(op_error(
            ErrorCode::MembersMissing,
            "waiting for members to report: r1, r2, r3"
        ))
    );
}

/// Regression: with no dead sync member, a member being added that could not catch up stayed
/// `adding` forever, the leader waiting for it.
#[test]
fn add_that_does_not_catch_up_within_sync_wait_is_abandoned_and_retried_after_a_backoff() {
    let mut c = cfg();
    c.sync_size = 2;
    let mut s = Sim::active(c, steady(), vec![], 0);
    let r3 = |flushed: u64| Heartbeat {
        log_end_lsn: Lsn(flushed),
        flushed_lsn: Lsn(flushed),
        ..follower("r3")
    };
    let l = |rev: u64, r3_flushed: u64| Heartbeat {
        applied_rev: rev,
        log_end_lsn: Lsn(131),
        flushed_lsn: Lsn(131),
        waiting: vec![
            wait_info("r2", 90, 131, 5),
            wait_info("r3", 130, r3_flushed, 3),
        ],
        ..leader_hb()
    };
    s.hb(10_000, l(REV0, 120));
    s.hb(10_000, follower("r2"));
    s.hb(10_000, r3(120));
    let w = s.tick(10_000).expect("add");
    let adding = ClusterState {
        adding: Some(mref("r3")),
        ..steady()
    };
    assert_eq!(w.state, Some(adding));
    assert_eq!(last(&w), (Kind::SyncAdd, 5, 1));
    assert_eq!(s.commit(10_000, &w), 11);
    let t = 10_000 + SYNC_WAIT;
    for now in [11_000, t - 1] {
        s.hb(now, l(11, 125));
        s.hb(now, follower("r2"));
        s.hb(now, r3(125));
        assert_eq!(s.tick(now), None, "within sync_wait_ms ({now})");
    }
    s.hb(t, l(11, 129));
    s.hb(t, follower("r2"));
    s.hb(t, r3(129));
    let w = s.tick(t).expect("abandon");
    assert_eq!(w.state, Some(steady()), "the healthy sync set is kept");
    assert_eq!(last(&w), (Kind::SyncDrop, 5, 1));
    names(&w, &["r3"]);
    assert_eq!(s.commit(t, &w), 12);
    // Not re-added before 10 × sync_wait_ms.
    let retry = t + 10 * SYNC_WAIT;
    for now in [t, t + SYNC_WAIT, retry - 1] {
        s.hb(now, l(12, 129));
        s.hb(now, follower("r2"));
        s.hb(now, r3(129));
        assert_eq!(s.tick(now), None, "backing off ({now})");
    }
    s.hb(retry, l(12, 129));
    s.hb(retry, follower("r2"));
    s.hb(retry, r3(129));
    let w = s.tick(retry).expect("retry");
    assert_eq!(last(&w), (Kind::SyncAdd, 5, 1));
}

/// Regression: a follower far behind was added, and the leader stalled waiting for it.
#[test]
fn follower_further_behind_than_max_lag_is_not_added() {
    let st = ClusterState {
        sync_set: vec![],
        ..steady()
    };
    let mut s = Sim::active(cfg(), st.clone(), vec![], 0);
    let f = |who: &str, flushed: u64| Heartbeat {
        log_end_lsn: Lsn(flushed),
        flushed_lsn: Lsn(flushed),
        ..follower(who)
    };
    let l = Heartbeat {
        log_end_lsn: Lsn(300),
        flushed_lsn: Lsn(300),
        waiting: vec![],
        ..leader_hb()
    };
    s.hb(10_000, l.clone());
    s.hb(10_000, f("r2", 199)); // 101 behind, max_lag_on_failover = 100
    s.hb(10_000, f("r3", 150));
    assert_eq!(s.tick(10_000), None, "nobody close enough to add");
    s.hb(10_100, l);
    s.hb(10_100, f("r2", 200));
    let w = s.tick(10_100).expect("add");
    assert_eq!(
        w.state,
        Some(ClusterState {
            adding: Some(mref("r2")),
            ..st
        })
    );
    assert_eq!(last(&w), (Kind::SyncAdd, 5, 1));
}

/// A switchover recorded in the state with its op, running until well after the tests end.
fn switching(to: &str, op_id: &str) -> ClusterState {
    ClusterState {
        phase: Phase::Switching,
        op: Some(OpRecord {
            id: op_id.into(),
            op: Op::Switchover { to: id(to) },
            deadline_unix_ms: UNIX0 + 100_000,
            timeout_ms: None,
        }),
        ..steady()
    }
}

/// Regression: a controller that took over in `switching` carried the switchover on (it
/// cannot know whether the old leader gave its lease up); one it starts itself runs normally.
#[test]
fn takeover_in_switching_aborts_it_and_a_later_switchover_runs() {
    let mut s = Sim::active(cfg(), switching("r2", "op-1"), vec![], 10_000);
    s.hb(10_000, leader_hb());
    s.hb(10_000, follower("r2"));
    s.hb(10_000, follower("r3"));
    let w = s.tick(10_000).expect("abort");
    assert_eq!(w.state, Some(steady()));
    assert_eq!(last(&w), (Kind::Abort, 5, 1));
    assert_eq!(s.commit(10_000, &w), 11);
    assert_eq!(s.tick(10_050), None);

    // A switchover this controller starts in the same term is carried out.
    let w = s
        .core
        .switchover(at(10_100), Some(id("r2")), 5000, "op-2".into())
        .expect("switchover");
    s.check_write(&w);
    assert_eq!(s.commit(10_100, &w), 12);
    s.hb(10_150, leader_hb());
    s.hb(10_150, follower("r2"));
    assert_eq!(s.tick(10_150), None, "not aborted: waiting for the leader");
    s.hb(
        10_200,
        Heartbeat {
            applied_rev: 12,
            lease_left_ms: Some(0),
            ..leader_hb()
        },
    );
    s.hb(10_200, follower("r2"));
    let w = s.tick(10_200).expect("epoch write");
    assert_eq!(last(&w), (Kind::Switchover, 6, 1));
}

/// A re-election with a new term while in `switching` (this controller's own switchover
/// included) aborts it too.
#[test]
fn new_term_during_own_switchover_aborts_it() {
    let mut s = switching_to_r2();
    s.hb(10_100, leader_hb());
    s.hb(10_100, follower("r2"));
    assert_eq!(s.tick(10_100), None);
    // Lost and won the election again: a new term, the state re-read.
    let st = s.state();
    s.core
        .on_election(at(10_200), Some(TERM + 1), Some(ADDR.into()));
    assert_eq!(s.core.observed, Observed::Unknown);
    let j = s.core.journal.clone();
    s.core
        .on_observed(at(10_200), Observed::Present { state: st, rev: 11 }, j);
    let w = s.core.tick(at(10_200)).expect("abort");
    assert_eq!(
        w.journal
            .last()
            .map(|e| (e.kind.as_str(), e.message.as_str())),
        Some((
            "abort",
            "switchover op-1 aborted: the active controller changed during the switchover"
        ))
    );
}

#[test]
fn leader_failing_during_a_switchover_aborts_it() {
    let mut s = switching_to_r2();
    // r1 (last heard at 10 000) falls silent.
    s.hb(10_999, lost("r2", 999));
    s.hb(10_999, lost("r3", 999));
    assert_eq!(s.tick(10_999), None, "not failed yet");
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("abort");
    assert_eq!(w.state, Some(steady()));
    assert_eq!(last(&w), (Kind::Abort, 5, 1));
    names(&w, &["r1"]);
    s.commit(11_000, &w);
    // Normal detection takes over.
    let w = s.tick(11_000).expect("failover");
    assert_eq!(last(&w).0, Kind::Failover);
}

#[test]
fn leader_restarting_during_a_switchover_aborts_it() {
    let mut s = switching_to_r2();
    let r1b = Heartbeat {
        boot_id: boot2("r1"),
        role: ReportedRole::None,
        ..follower("r1")
    };
    // The old run went quiet (a restart, not a second process claiming r1): heard from 250 ms
    // after its last heartbeat.
    assert!(!s.hb(10_100, r1b.clone()).active, "old run still speaking");
    assert_eq!(s.hb(10_300, r1b).role, Some(Role::Fenced));
    s.hb(10_300, follower("r2"));
    let w = s.tick(10_300).expect("abort");
    assert_eq!(w.state, Some(steady()));
    assert_eq!(last(&w), (Kind::Abort, 5, 1));
    s.commit(10_300, &w);
    let w = s.tick(10_300).expect("restart");
    assert_eq!(last(&w).0, Kind::Restart);
}

/// Regression: an epoch write of unknown outcome kept the no-wait flag, so if it had in fact
/// committed the new leader started at once, though nothing showed its predecessor gave up.
#[test]
fn unknown_switchover_write_lets_nobody_skip_the_wait() {
    let mut s = switching_to_r2();
    let w = s.switchover_epoch_write();
    s.core.on_write(at(10_100), &w, WriteOutcome::Unknown);
    assert_eq!(s.core.observed, Observed::Unknown);
    // The re-read shows it committed.
    let switched = w.state.clone().expect("state");
    assert_eq!(
        (switched.epoch, switched.leader.clone()),
        (Epoch(6), Some(record("r2")))
    );
    s.core.on_observed(
        at(10_150),
        Observed::Present {
            state: switched.clone(),
            rev: 12,
        },
        w.journal.clone(),
    );
    s.etcd_rev = 12;
    // The last grant with a lease to epoch 5 was at 10 000.
    assert_eq!(
        s.hb(10_200, follower("r2")),
        Directive {
            role: Some(Role::Leader),
            leader: Some(lref("r2", boot("r2"))),
            lease_ms: LEASE,
            start_after_ms: 10_000 + WAIT - 10_200,
            ..base(6, 12, &switched)
        }
    );
}

/// Regression: a follower joined the new leader's sync set on its appended log end, though
/// part of it was not flushed (and would not survive its own crash).
#[test]
fn promotion_sync_set_needs_the_new_leaders_end_flushed() {
    let mut s = steady_sim();
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    s.tick_commit(11_000);
    s.hb(11_100, fenced("r2", 6, (5, 100)));
    s.hb(
        11_100,
        Heartbeat {
            log_end_lsn: Lsn(105),
            flushed_lsn: Lsn(99),
            ..fenced("r3", 6, (5, 105))
        },
    );
    let w = s.tick(11_100).expect("promotion");
    let st = w.state.clone().expect("state");
    assert_eq!((st.leader, st.sync_set), (Some(record("r2")), vec![]));
    assert_eq!(last(&w), (Kind::Promoted, 6, 1));
}

/// Regression: `now + timeout_ms` overflowed for a huge timeout.
#[test]
fn switchover_deadline_is_capped_at_a_minute() {
    let mut s = steady_sim();
    let w = s
        .core
        .switchover(at(10_050), Some(id("r2")), u64::MAX, "op-1".into())
        .expect("switchover");
    s.check_write(&w);
    let deadline = w
        .state
        .as_ref()
        .and_then(|s| s.op.as_ref())
        .map(|o| o.deadline_unix_ms);
    assert_eq!(deadline, Some(UNIX0 + 10_050 + 60_000));
    s.commit(10_050, &w);
    let end = 10_050 + 60_000;
    s.hb(
        end,
        Heartbeat {
            applied_rev: 11,
            lease_left_ms: Some(0),
            log_end_lsn: Lsn(130),
            ..leader_hb()
        },
    );
    s.hb(end, follower("r2")); // stuck at 100
    assert_eq!(s.tick(end), None);
    let w = s.tick(end + 1).expect("abort");
    assert_eq!(last(&w).0, Kind::Abort);
    assert_eq!(w.state, Some(steady()));
}

// ----- issue 10: correctness findings -----------------------------------------------------------

/// Item 1: a recorded leader that stopped leading without an epoch change (a directive without a
/// role, or a higher epoch seen on its stream) can never lead that epoch again; it used to be
/// called healthy for ever while writes answered 503. Now, after a failure timeout of reporting
/// no role, it gets a new epoch — in manual mode and past the budget too, like a restart.
#[test]
fn recorded_leader_that_does_not_lead_gets_a_new_epoch_outside_the_budget() {
    let st = ClusterState {
        control: Control::Manual,
        ..steady()
    };
    let mut s = Sim::active(cfg(), st, vec![], 0);
    let off = Heartbeat {
        role: ReportedRole::None,
        lease_left_ms: None,
        ..leader_hb()
    };
    for t in (10_000..=10_900).step_by(100) {
        s.hb(t, off.clone());
        s.hb(t, follower("r2"));
        s.hb(t, follower("r3"));
        assert_eq!(s.tick(t), None, "not yet a failure timeout ({t})");
    }
    s.hb(11_000, off.clone());
    let w = s.tick(11_000).expect("new epoch");
    assert_eq!(
        w.state.as_ref().map(|s| (s.epoch, s.phase)),
        Some((Epoch(6), Phase::Promoting))
    );
    assert_eq!(last(&w), (Kind::Restart, 6, 1));
}

/// Item 1: the same for a leader that reports no lease (its grants do not reach it).
#[test]
fn recorded_leader_without_a_lease_gets_a_new_epoch() {
    let mut s = steady_sim();
    let no_lease = Heartbeat {
        lease_left_ms: Some(0),
        ..leader_hb()
    };
    s.hb(10_100, no_lease.clone());
    assert_eq!(s.tick(10_600), None);
    s.hb(11_100, no_lease);
    s.hb(11_100, follower("r2"));
    let w = s.tick(11_100).expect("new epoch");
    assert_eq!(last(&w).0, Kind::Restart);
    assert!(
        says(&w).starts_with("leader r1 reports no lease for 1000 ms"),
        "{}",
        says(&w)
    );
}

/// Item 1: a state the replicas moved past is answered as a standby would (inactive): an
/// active answer without a role made the recorded leader step down at its own (epoch, rev).
#[test]
fn state_behind_answers_inactive_so_the_leader_is_never_stripped_at_its_own_epoch() {
    let mut s = steady_sim();
    s.hb(
        10_500,
        Heartbeat {
            applied_rev: REV0 + 3,
            ..follower("r2")
        },
    );
    let d = s.hb(10_500, leader_hb());
    assert!(!d.active, "inactive, not a role-less active answer: {d:?}");
}

/// Items 1 and 7: a declared member started on a data directory of another deployment (same
/// cluster name, higher epoch) is refused and journaled once; it changes nothing else (before,
/// its epoch made the state "behind" and halted the cluster).
#[test]
fn foreign_data_directory_is_refused_journaled_once_and_changes_nothing() {
    let st = ClusterState {
        cluster_id: 7,
        ..steady()
    };
    let mut s = Sim::active(cfg(), st, vec![], 0);
    let foreign = Heartbeat {
        cluster_id: 9,
        epoch: Epoch(50),
        log_end_epoch: Epoch(50),
        data_id: DataId(4242),
        ..follower("r3")
    };
    for t in [10_000, 10_100, 10_200] {
        let mine = Heartbeat {
            cluster_id: 7,
            ..leader_hb()
        };
        let d = s.hb(t, mine);
        assert_eq!(
            (d.role, d.lease_ms),
            (Some(Role::Leader), LEASE),
            "the leader keeps its lease"
        );
        s.hb(
            t,
            Heartbeat {
                cluster_id: 7,
                ..follower("r2")
            },
        );
        let d = s.hb(t, foreign.clone());
        assert!(
            !d.active && d.role.is_none(),
            "the stranger gets nothing: {d:?}"
        );
    }
    let w = s.tick(10_200).expect("journaled");
    assert_eq!(w.state, None);
    assert!(
        says(&w).starts_with("member r3 (data 00000000000000000000000000001092, at r3.local:7000) reports a data directory of another deployment"),
        "{}",
        says(&w)
    );
    s.commit(10_200, &w);
    assert_eq!(
        s.tick(10_300),
        None,
        "once per episode; not 'etcd state behind replicas'"
    );
}

/// Item 9: two processes claiming one member id (here the leader's) — the second is refused and
/// journaled; no "restart" promotion, no write gap.
#[test]
fn two_processes_claiming_the_leaders_id_do_not_move_the_epoch() {
    let mut s = steady_sim();
    let twin = Heartbeat {
        boot_id: boot2("r1"),
        role: ReportedRole::None,
        addr: "10.0.0.9:7000".into(),
        ..follower("r1")
    };
    let mut journaled = Vec::new();
    for t in (10_050..=11_500).step_by(50) {
        if t % 100 == 0 {
            let d = s.hb(t, leader_hb());
            assert_eq!(
                d.role,
                Some(Role::Leader),
                "the incumbent keeps leading ({t})"
            );
            s.hb(t, follower("r2"));
            s.hb(t, follower("r3"));
        } else {
            let d = s.hb(t, twin.clone());
            assert!(!d.active && d.role.is_none(), "the twin gets nothing ({t})");
        }
        if let Some(w) = s.tick(t) {
            assert_eq!(w.state, None, "no state change: {}", w.why);
            journaled.push(says(&w).to_string());
            s.commit(t, &w);
        }
    }
    assert_eq!(journaled.len(), 1, "{journaled:?}");
    assert!(
        journaled[0].starts_with("two processes claim member r1"),
        "{journaled:?}"
    );
}

/// Item 3: while the state is behind, every operation is refused (a pause or resume used to move
/// the state's revision past what the replicas applied and lift the refusal for good, and
/// `failover --to` without force was accepted against the stale sync set); `recover` writes a
/// new epoch, leaderless, with an empty sync set, and `failover --to` then states the loss.
#[test]
fn operations_refused_while_behind_and_recover_is_the_way_out() {
    let mut s = steady_sim();
    let ahead = Heartbeat {
        applied_rev: REV0 + 3,
        ..follower("r2")
    };
    s.hb(10_500, ahead.clone());
    let n = at(10_500);
    for r in [
        s.core.failover(n, id("r2"), false, false, "op-1".into()),
        s.core.set_control(n, Control::Manual),
        s.core.switchover(n, Some(id("r2")), 5000, "op-2".into()),
    ] {
        assert_eq!(
            r.map(|_| ()).map_err(|e| e.code),
            Err(ErrorCode::StateBehind)
        );
    }
    assert_eq!(
        s.core.recover(at(10_500)).map(|_| ()).map_err(|e| e.code),
        Ok(()),
        "recover is allowed"
    );
    // (recover handed out a write; build it again through the harness)
    let mut s = steady_sim();
    s.hb(10_500, ahead);
    s.hb(10_500, leader_hb());
    s.hb(10_500, follower("r3"));
    let w = s.core.recover(at(10_500)).expect("recover");
    s.check_write(&w);
    let st = w.state.clone().expect("a state");
    assert_eq!(
        (
            st.epoch,
            st.leader.clone(),
            st.phase,
            st.sync_set.clone(),
            st.prev_leader.clone()
        ),
        (Epoch(6), None, Phase::Promoting, vec![], None)
    );
    assert_eq!(last(&w).0, Kind::Recover);
    s.commit(10_500, &w);
    assert_eq!(
        s.core
            .failover(at(10_600), id("r2"), false, false, "op-3".into())
            .map(|_| ())
            .map_err(|e| e.code),
        Err(ErrorCode::MayLoseWrites),
        "without force the possible loss is stated"
    );
    // The state is no longer behind: it is not recover's business any more.
    assert_eq!(
        s.core.recover(at(10_600)).map(|_| ()).map_err(|e| e.code),
        Err(ErrorCode::NotBehind)
    );
}

/// Item 8: a follower that reports but does not stream from the leader is not a candidate for
/// the sync set (it would stall writes for sync_wait_ms each time it is tried).
#[test]
fn follower_not_streaming_from_the_leader_is_not_added() {
    let mut s = Sim::active(cfg(), steady(), vec![], 0);
    s.hb(10_000, follower("r2"));
    let cut_off = Heartbeat {
        since_leader_ms: None,
        ..follower("r3")
    };
    for t in [10_000, 10_500, 11_000] {
        s.hb(
            t,
            Heartbeat {
                waiting: vec![wait_info("r2", 90, 100, t - 10_000)],
                ..leader_hb()
            },
        );
        s.hb(t, cut_off.clone());
    }
    let w = s.tick(11_000).expect("drop");
    assert_eq!(last(&w).0, Kind::SyncDrop, "r3 is not added: {}", says(&w));
}

/// Item 9: an operation's timeout counts on the controller's monotonic clock, not the wall
/// clock: a wall-clock step of an hour does not expire a switchover.
#[test]
fn operation_timeout_ignores_wall_clock_steps() {
    let mut s = switching_to_r2();
    let jumped = Now {
        ms: 10_100,
        unix_ms: UNIX0 + 10_100 + 3_600_000,
    };
    s.core.on_heartbeat(jumped, leader_hb());
    assert_eq!(
        s.core.tick(jumped),
        None,
        "not expired by a wall-clock step"
    );
}

/// Items 1 and 7, found by the simulation (`baton-sim --seed 372`, `foreign`): a controller that
/// became active while etcd was down heard a member on another deployment's directory before
/// it knew the state's cluster id; once the state was read, that member's epoch made the state
/// "behind" (remembered for its rev) and the cluster never decided again. What was heard from
/// another deployment before the state was known is forgotten when the state is read.
#[test]
fn foreign_directory_heard_before_the_state_is_read_is_forgotten_when_it_is() {
    let st = ClusterState {
        cluster_id: 7,
        strict: Some(false),
        ..steady()
    };
    let mut core = ClusterCore::new(cfg());
    core.on_election(at(0), Some(TERM), Some(ADDR.into()));
    let mut s = Sim::wrap(core);
    let foreign = Heartbeat {
        cluster_id: 9,
        epoch: Epoch(50),
        log_end_epoch: Epoch(50),
        data_id: DataId(4242),
        ..follower("r3")
    };
    let d = s.hb(5_000, foreign.clone());
    assert!(d.role.is_none(), "nothing known yet: {d:?}");
    s.core.on_observed(
        at(9_000),
        Observed::Present {
            state: st,
            rev: REV0,
        },
        vec![],
    );
    for t in [10_000, 10_100, 10_200] {
        let d = s.hb(
            t,
            Heartbeat {
                cluster_id: 7,
                ..leader_hb()
            },
        );
        assert_eq!(
            (d.role, d.lease_ms),
            (Some(Role::Leader), LEASE),
            "the leader keeps its lease ({t})"
        );
        s.hb(
            t,
            Heartbeat {
                cluster_id: 7,
                ..follower("r2")
            },
        );
        let d = s.hb(t, foreign.clone());
        assert!(!d.active && d.role.is_none(), "the stranger gets nothing");
        if let Some(w) = s.tick(t) {
            assert_eq!(w.state, None, "{}", w.why);
            assert!(!says(&w).contains("behind"), "{}", says(&w));
            s.commit(t, &w);
        }
    }
}

/// Item 9, found by the simulation (`baton-sim --seed 54`, `dup-id`): a twin of the leader was
/// refused as a second process, then the leader went quiet for a moment (a partition shorter
/// than the failure timeout) and the twin was taken for a restart of r1: a "restart" promotion
/// moved the epoch, and a later `failover --to r1` promoted the twin's empty directory. A run
/// refused as a second claimant stays refused while the run it was refused against is
/// remembered (a real restart comes with a new boot).
#[test]
fn a_twin_refused_once_is_not_taken_for_a_restart_when_the_leader_goes_quiet() {
    let mut s = steady_sim();
    let twin = Heartbeat {
        boot_id: boot2("r1"),
        role: ReportedRole::None,
        addr: "10.0.0.9:7000".into(),
        ..follower("r1")
    };
    let mut journaled = Vec::new();
    // Both alive: the twin is refused and journaled.
    for t in (10_050..=10_600).step_by(50) {
        if t % 100 == 0 {
            s.hb(t, leader_hb());
        } else {
            s.hb(t, twin.clone());
        }
        s.hb(t, follower("r2"));
        s.hb(t, follower("r3"));
        if let Some(w) = s.tick(t) {
            assert_eq!(w.state, None, "no state change: {}", w.why);
            journaled.push(says(&w).to_string());
            s.commit(t, &w);
        }
    }
    assert_eq!(journaled.len(), 1, "{journaled:?}");
    // The leader is cut from the controller for less than the failure timeout: only the twin
    // speaks for r1. It still gets nothing, and the epoch does not move.
    for t in (10_650..10_600 + FT - 100).step_by(50) {
        let d = s.hb(t, twin.clone());
        assert!(!d.active && d.role.is_none(), "the twin gets nothing ({t})");
        s.hb(t, follower("r2"));
        s.hb(t, follower("r3"));
        if let Some(w) = s.tick(t) {
            assert_eq!(w.state, None, "no state change at {t}: {}", w.why);
            s.commit(t, &w);
        }
    }
    // The leader is back and keeps leading at its epoch.
    let t = 10_600 + FT - 50;
    let d = s.hb(t, leader_hb());
    assert_eq!(d.role, Some(Role::Leader));
    assert_eq!(d.epoch, s.state().epoch);
}

/// Issue 10 item 2, found by the simulation (`baton-sim --seed 10232 --faults all,forced`): a
/// forced leader (epoch 5, lossy) died before writing its lossy leader-start; the next promotion
/// picked it again as the replaced leader and wrote epoch 6 *not* lossy, so the holders of the
/// records the forced failover cut refused to truncate them for ever. The lossy flag carries
/// into the next epoch while the new leader's log has nothing of the lossy epoch.
#[test]
fn a_lossy_epoch_whose_leader_never_wrote_its_start_makes_the_next_one_lossy() {
    let st = ClusterState {
        lossy: true,
        ..steady()
    };
    let mut s = Sim::active(cfg(), st.clone(), vec![], 0);
    s.hb(9_800, leader_hb());
    s.hb(9_800, follower("r2"));
    // r1 comes back as a new run that never wrote epoch 5's leader-start (its log ends at 4).
    let r1b = Heartbeat {
        boot_id: boot2("r1"),
        role: ReportedRole::None,
        log_end_epoch: Epoch(4),
        log_end_lsn: Lsn(90),
        ..follower("r1")
    };
    s.hb(10_100, r1b.clone());
    let w = s.tick(10_100).expect("restart write");
    assert_eq!(last(&w).0, Kind::Restart);
    s.commit(10_100, &w);
    s.hb(
        10_200,
        Heartbeat {
            boot_id: boot2("r1"),
            ..fenced("r1", 6, (4, 90))
        },
    );
    let mut promoted = None;
    for t in (10_200..12_000).step_by(100) {
        s.hb(
            t,
            Heartbeat {
                boot_id: boot2("r1"),
                ..fenced("r1", 6, (4, 90))
            },
        );
        if let Some(w) = s.tick(t) {
            let kind = last(&w).0;
            s.commit(t, &w);
            if kind == Kind::Promoted {
                promoted = w.state;
                break;
            }
        }
    }
    let promoted = promoted.expect("r1 promoted at epoch 6");
    assert_eq!(
        (
            promoted.epoch,
            promoted.leader.as_ref().map(|l| l.id.clone())
        ),
        (Epoch(6), Some(NodeId("r1".into())))
    );
    assert!(promoted.lossy, "epoch 6 must be lossy: {promoted:?}");
}

/// The carried flag ends once a leader's log holds the lossy epoch's start: a candidate at the
/// lossy epoch is promoted without it.
#[test]
fn a_lossy_epoch_whose_start_the_new_leader_holds_is_not_carried() {
    let st = ClusterState {
        lossy: true,
        ..steady()
    };
    let mut s = Sim::active(cfg(), st.clone(), vec![], 0);
    s.hb(9_800, leader_hb());
    s.hb(9_800, follower("r2"));
    let r1b = Heartbeat {
        boot_id: boot2("r1"),
        role: ReportedRole::None,
        ..follower("r1")
    };
    s.hb(10_100, r1b.clone());
    let w = s.tick(10_100).expect("restart write");
    s.commit(10_100, &w);
    let mut promoted = None;
    for t in (10_200..12_000).step_by(100) {
        s.hb(
            t,
            Heartbeat {
                boot_id: boot2("r1"),
                ..fenced("r1", 6, (5, 100))
            },
        );
        s.hb(t, fenced("r2", 6, (5, 100)));
        if let Some(w) = s.tick(t) {
            let kind = last(&w).0;
            s.commit(t, &w);
            if kind == Kind::Promoted {
                promoted = w.state;
                break;
            }
        }
    }
    let promoted = promoted.expect("promoted at epoch 6");
    assert!(!promoted.lossy, "{promoted:?}");
}
