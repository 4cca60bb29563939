//! Operator requests: switchover, `failover --to`, pause, resume, init.

use crate::harness::*;

// ----- switchover ------------------------------------------------------------------------------

#[test]
fn switchover_refusals() {
    let mut s = steady_sim();
    let n = at(10_050);
    let sw = |s: &mut Sim, to: Option<&str>| s.core.switchover(n, to.map(id), 5000, "op-1".into());
    assert_eq!(
        sw(&mut s, Some("r3")),
        Err(op_error(
            ErrorCode::Ineligible,
            "r3 is not in the sync set, so it may lack acknowledged writes; switch over to a \
             sync member, or use `failover --to r3 --force` and accept the possible loss"
        ))
    );
    assert_eq!(
        sw(&mut s, Some("r1")),
        Err(op_error(ErrorCode::Ineligible, "r1 already leads"))
    );
    assert_eq!(
        sw(&mut s, Some("r9")),
        Err(op_error(ErrorCode::Ineligible, "r9 is not a member"))
    );
    s.hb(
        10_050,
        Heartbeat {
            unclean: true,
            ..follower("r2")
        },
    );
    assert_eq!(
        sw(&mut s, Some("r2")),
        Err(op_error(ErrorCode::Ineligible, "r2 is unclean"))
    );
    assert_eq!(
        sw(&mut s, None),
        Err(op_error(
            ErrorCode::NoCandidate,
            "no member can take over without losing writes"
        ))
    );
    // r2 stops reporting.
    let late = at(11_050);
    s.hb(11_000, leader_hb());
    assert_eq!(
        s.core.switchover(late, Some(id("r2")), 5000, "op-1".into()),
        Err(op_error(ErrorCode::Ineligible, "r2 is not reporting"))
    );
    // The leader stops reporting: a failover is needed, not a switchover.
    assert_eq!(
        s.core
            .switchover(at(12_000), Some(id("r2")), 5000, "op-1".into()),
        Err(op_error(
            ErrorCode::LeaderUnreachable,
            "leader r1 is not reporting; use failover"
        ))
    );
    assert!(s.core.journal.is_empty(), "refused requests change nothing");
}

#[test]
fn switchover_moves_leadership_with_no_wait() {
    let mut s = Sim::active(cfg(), steady(), vec![], 0);
    let l = |lsn: u64, rev: u64, lease_left: u64| Heartbeat {
        log_end_lsn: Lsn(lsn),
        flushed_lsn: Lsn(lsn),
        applied_rev: rev,
        lease_left_ms: Some(lease_left),
        ..leader_hb()
    };
    let f2 = |lsn: u64| Heartbeat {
        log_end_lsn: Lsn(lsn),
        flushed_lsn: Lsn(lsn),
        ..follower("r2")
    };
    s.hb(10_000, l(120, REV0, 600)); // granted 800 ms
    s.hb(10_000, f2(118));
    s.hb(10_000, follower("r3"));
    let w = s
        .core
        .switchover(at(10_050), None, 5000, "op-1".into())
        .expect("switchover");
    s.check_write(&w);
    let switching = ClusterState {
        phase: Phase::Switching,
        op: Some(OpRecord {
            id: "op-1".into(),
            op: Op::Switchover { to: id("r2") },
            deadline_unix_ms: UNIX0 + 10_050 + 5000,
            timeout_ms: Some(5000),
        }),
        ..steady()
    };
    assert_eq!(w.state, Some(switching.clone()));
    assert_eq!(last(&w), (Kind::Switchover, 5, 1));
    assert_eq!(s.commit(10_050, &w), 11);

    // A second operation meets the running one.
    let running = op_error(
        ErrorCode::OperationRunning,
        "operation op-1 (switchover:r2) is running",
    );
    assert_eq!(
        s.core
            .switchover(at(10_060), Some(id("r2")), 5000, "op-2".into()),
        Err(running.clone())
    );
    assert_eq!(
        s.core
            .failover(at(10_060), id("r2"), true, false, "op-2".into()),
        Err(running)
    );

    // The leader keeps its role with no lease.
    assert_eq!(
        s.hb(10_100, l(121, REV0, 500)),
        Directive {
            role: Some(Role::Leader),
            leader: Some(lref("r1", boot("r1"))),
            lease_ms: 0,
            ..base(5, 11, &switching)
        }
    );
    s.hb(10_100, f2(121));
    assert_eq!(
        s.tick(10_100),
        None,
        "the leader has not given its lease up yet"
    );
    s.hb(10_150, l(121, 11, 0));
    s.hb(10_150, f2(120));
    assert_eq!(s.tick(10_150), None, "r2 lacks the final LSN 121");
    s.hb(10_200, f2(121));
    let w = s.tick(10_200).expect("epoch write");
    let switched = ClusterState {
        epoch: Epoch(6),
        leader: Some(record("r2")),
        prev_leader: Some(record("r1")),
        phase: Phase::Steady,
        sync_set: vec![mref("r1")],
        op: None,
        ..switching
    };
    assert_eq!(w.state, Some(switched.clone()));
    assert_eq!(last(&w), (Kind::Switchover, 6, 1));
    assert_eq!(s.commit(10_200, &w), 12);
    // The old leader gave its lease up: the new one starts at once, though r1 was granted
    // 800 ms at 10 000 and has not reported epoch 6 yet.
    assert_eq!(
        s.hb(10_250, f2(121)),
        Directive {
            role: Some(Role::Leader),
            leader: Some(lref("r2", boot("r2"))),
            lease_ms: LEASE,
            start_after_ms: 0,
            // Nor do its promises to r1 hold it back.
            promises_void: true,
            ..base(6, 12, &switched)
        }
    );
    assert_eq!(
        s.hb(10_250, l(121, 11, 0)),
        Directive {
            role: Some(Role::Follower),
            leader: Some(lref("r2", boot("r2"))),
            ..base(6, 12, &switched)
        }
    );
    assert_eq!(s.failovers(10_250), 0);
}

/// Regression: a switchover epoch write that was rejected still let the leader of that epoch
/// number start at once, whoever made the epoch and whether or not its predecessor gave up
/// its lease.
#[test]
fn rejected_switchover_write_lets_nobody_skip_the_wait() {
    let mut s = switching_to_r2();
    let w = s.switchover_epoch_write();
    s.core.on_write(at(10_100), &w, WriteOutcome::Rejected);
    assert_eq!(s.core.observed, Observed::Unknown);
    // Someone else made epoch 6, with r3 leading and r1 not known to have stopped.
    let other = ClusterState {
        epoch: Epoch(6),
        leader: Some(record("r3")),
        prev_leader: Some(record("r1")),
        sync_set: vec![mref("r2")],
        ..steady()
    };
    s.core.on_observed(
        at(10_150),
        Observed::Present {
            state: other,
            rev: 13,
        },
        w.journal[..w.journal.len() - 1].to_vec(),
    );
    // The last grant with a lease to epoch 5 was at 10 000 (the switching ones carried none).
    assert_eq!(
        s.hb(10_200, fenced("r3", 6, (5, 100))).start_after_ms,
        10_000 + WAIT - 10_200
    );
}

#[test]
fn switchover_past_its_deadline_is_aborted() {
    let mut s = switching_to_r2();
    for t in [11_000, 15_050] {
        s.hb(
            t,
            Heartbeat {
                applied_rev: 11,
                lease_left_ms: Some(0),
                log_end_lsn: Lsn(130),
                ..leader_hb()
            },
        );
        s.hb(t, follower("r2")); // stuck at 100
        assert_eq!(s.tick(t), None, "before the deadline ({t})");
    }
    let w = s.tick(15_051).expect("abort");
    assert_eq!(w.state, Some(steady()));
    assert_eq!(last(&w), (Kind::Abort, 5, 1));
    s.commit(15_051, &w);
    assert_eq!(
        s.hb(15_100, leader_hb()).lease_ms,
        LEASE,
        "the leader gets its lease back"
    );
}

// ----- failover --to ---------------------------------------------------------------------------

#[test]
fn failover_to_refusals() {
    let mut s = Sim::active(cfg(), steady(), vec![], 0);
    s.hb(
        10_000,
        Heartbeat {
            flushed_lsn: Lsn(120),
            log_end_lsn: Lsn(120),
            ..leader_hb()
        },
    );
    s.hb(
        10_000,
        Heartbeat {
            unclean: true,
            ..follower("r2")
        },
    );
    let n = at(10_050);
    assert_eq!(
        s.core.failover(n, id("r9"), true, true, "op-1".into()),
        Err(op_error(ErrorCode::Ineligible, "r9 is not a member"))
    );
    assert_eq!(
        s.core.failover(n, id("r2"), true, false, "op-1".into()),
        Err(op_error(
            ErrorCode::Ineligible,
            "r2 is unclean: it may lack acknowledged writes; only allow_data_loss promotes it"
        ))
    );
    assert_eq!(
        s.core.failover(n, id("r3"), false, false, "op-1".into()),
        Err(op_error(ErrorCode::MayLoseWrites,
            "r3 is not in the sync set and may lack acknowledged writes: the loss is unknown (it is not reporting); pass force to accept"
        ))
    );
    s.hb(10_040, follower("r3"));
    assert_eq!(
        s.core.failover(n, id("r3"), false, false, "op-1".into()),
        Err(op_error(ErrorCode::MayLoseWrites,
            "r3 is not in the sync set and may lack acknowledged writes: it would lose at least 20 records; pass force to accept"
        ))
    );
    assert!(s.core.journal.is_empty());
    // An unclean sync member with allow_data_loss is accepted.
    let w = s
        .core
        .failover(n, id("r2"), false, true, "op-1".into())
        .expect("allow_data_loss");
    s.check_write(&w);
    assert_eq!(
        w.state.and_then(|s| s.op).map(|o| o.op),
        Some(Op::Failover {
            to: id("r2"),
            force: false,
            allow_data_loss: true,
            planned: false,
        })
    );
}

#[test]
fn failover_to_with_force_promotes_a_lagging_non_sync_member() {
    let mut s = steady_sim();
    let w = s
        .core
        .failover(at(10_050), id("r3"), true, false, "op-2".into())
        .expect("forced");
    s.check_write(&w);
    let promoting = ClusterState {
        epoch: Epoch(6),
        leader: None,
        prev_leader: Some(record("r1")),
        phase: Phase::Promoting,
        op: Some(OpRecord {
            id: "op-2".into(),
            op: Op::Failover {
                to: id("r3"),
                force: true,
                allow_data_loss: false,
                planned: false,
            },
            deadline_unix_ms: UNIX0 + 10_050 + 60_000,
            timeout_ms: Some(60_000),
        }),
        ..steady()
    };
    assert_eq!(w.state, Some(promoting.clone()));
    assert_eq!(last(&w), (Kind::ManualFailover, 6, 1));
    s.commit(10_050, &w);
    s.hb(10_100, fenced("r1", 6, (5, 100)));
    s.hb(10_100, fenced("r2", 6, (5, 100)));
    s.hb(10_100, fenced("r3", 6, (5, 90)));
    let w = s.tick(10_100).expect("promotion");
    assert_eq!(
        w.state,
        Some(ClusterState {
            leader: Some(record("r3")),
            phase: Phase::Steady,
            sync_set: vec![mref("r2")],
            op: None,
            lossy: true,
            ..promoting
        })
    );
    assert_eq!(last(&w), (Kind::Promoted, 6, 1));
    s.commit(10_100, &w);
    // r1 persisted epoch 6 (it reported it fenced): no wait.
    assert_eq!(s.hb(10_150, fenced("r3", 6, (5, 90))).start_after_ms, 0);
    assert_eq!(
        s.failovers(10_150),
        0,
        "a manual failover is not an automatic one"
    );
}

/// Regression: a forced failover to a sync member was blocked forever ("lacks records another
/// member holds") when the live old leader held an unacknowledged tail, with the op holding
/// the cluster leaderless.
#[test]
fn failover_to_a_sync_member_behind_the_old_leaders_unacknowledged_tail() {
    let mut s = steady_sim();
    let w = s
        .core
        .failover(at(10_050), id("r2"), false, false, "op-1".into())
        .expect("failover to a sync member needs no force");
    assert_eq!(says(&w), "manual failover op-1 to r2; promoting at epoch 6");
    s.commit(10_050, &w);
    let d = s.hb(10_100, leader_hb());
    assert_eq!((d.role, d.leader), (Some(Role::Fenced), None));
    s.hb(10_150, fenced("r1", 6, (5, 105)));
    s.hb(10_150, fenced("r2", 6, (5, 100)));
    s.hb(10_150, fenced("r3", 6, (5, 100)));
    let w = s.tick(10_150).expect("promotion");
    let st = w.state.clone().expect("state");
    // The old leader holds all of r2's log (same last epoch, longer) and may join the sync set
    // (DESIGN.md §4's post-promotion rule), but r3 holds it too without a tail to cut first:
    // the old leader's followers go first (`promotion_sync_set`).
    assert_eq!(
        (
            st.leader,
            st.sync_set
                .iter()
                .map(|m| m.id.0.as_str())
                .collect::<Vec<_>>()
        ),
        (Some(record("r2")), vec!["r3"])
    );
    assert_eq!(last(&w), (Kind::Promoted, 6, 1));
    s.commit(10_150, &w);
    // The old leader reported that it persisted epoch 6: the new one starts at once.
    assert_eq!(s.hb(10_200, fenced("r2", 6, (5, 100))).start_after_ms, 0);
}

/// Regression: the new leader's first directive recorded its own grant before computing its
/// wait, which then counted from the controller's takeover instead of the old epoch's last grant.
#[test]
fn forced_failover_from_a_leader_that_dies_waits_out_its_last_grant() {
    let mut s = steady_sim();
    let w = s
        .core
        .failover(at(10_050), id("r2"), false, false, "op-1".into())
        .expect("failover");
    s.commit(10_050, &w);
    // r1 (granted 800 ms at 10 000) is never heard again; r2 and r3 report at epoch 6.
    s.hb(10_100, fenced("r2", 6, (5, 100)));
    s.hb(10_100, fenced("r3", 6, (5, 100)));
    assert_eq!(s.tick(10_449), None, "r1 still counts as reachable");
    let w = s
        .tick(10_450)
        .expect("promotion after four heartbeat intervals");
    assert_eq!(
        w.state.as_ref().and_then(|s| s.leader.clone()),
        Some(record("r2"))
    );
    s.commit(10_450, &w);
    let promoted = w.state.expect("state");
    assert_eq!(
        s.hb(10_460, fenced("r2", 6, (5, 100))),
        Directive {
            role: Some(Role::Leader),
            leader: Some(lref("r2", boot("r2"))),
            lease_ms: LEASE,
            start_after_ms: 10_000 + WAIT - 10_460,
            ..base(6, 12, &promoted)
        }
    );
    assert_eq!(
        s.hb(10_500, fenced("r2", 6, (5, 100))).start_after_ms,
        10_000 + WAIT - 10_500
    );
    // The old leader shows up having persisted epoch 6: no wait left.
    s.hb(10_600, fenced("r1", 6, (5, 100)));
    assert_eq!(s.hb(10_600, fenced("r2", 6, (5, 100))).start_after_ms, 0);
}

/// Regression: a `failover --to` whose target never reported at the new epoch held the
/// promotion (and every further operation) forever.
#[test]
fn forced_failover_that_cannot_complete_expires_and_the_promotion_goes_on() {
    let mut s = steady_sim();
    let w = s
        .core
        .failover(at(10_050), id("r3"), true, false, "op-3".into())
        .expect("forced");
    s.commit(10_050, &w);
    s.hb(10_100, fenced("r1", 6, (5, 100)));
    s.hb(10_100, fenced("r2", 6, (5, 100)));
    let w = s.tick(10_450).expect("blocked");
    assert_eq!(last(&w), (Kind::Blocked, 6, 1));
    names(&w, &["r3"]);
    s.commit(10_450, &w);
    assert_eq!(
        s.core
            .failover(at(10_500), id("r2"), false, false, "op-4".into()),
        Err(op_error(
            ErrorCode::OperationRunning,
            "operation op-3 (failover:r3:1:0) is running"
        ))
    );
    let deadline = 10_050 + 60_000;
    s.hb(deadline, fenced("r1", 6, (5, 100)));
    s.hb(deadline, fenced("r2", 6, (5, 100)));
    assert_eq!(s.tick(deadline), None);
    let w = s.tick(deadline + 1).expect("expiry");
    let st = s.state();
    assert_eq!(w.state, Some(ClusterState { op: None, ..st }));
    assert_eq!(last(&w), (Kind::Abort, 6, 1));
    names(&w, &["r3"]);
    s.commit(deadline + 1, &w);
    // The automatic rules: r1 (previous leader, same data) and r2 (sync) tie; lower id.
    let w = s.tick(deadline + 1).expect("promotion");
    assert_eq!(
        says(&w),
        "promoted r1 at epoch 6 (log end 5/100); sync set [r2]"
    );
}

// ----- pause, resume, init ---------------------------------------------------------------------

#[test]
fn pause_and_resume_write_the_control() {
    let mut s = steady_sim();
    let w = s
        .core
        .set_control(at(10_100), Control::Manual)
        .expect("pause");
    s.check_write(&w);
    let paused = ClusterState {
        control: Control::Manual,
        ..steady()
    };
    assert_eq!(w.state, Some(paused));
    assert_eq!(last(&w), (Kind::Pause, 5, 1));
    assert_eq!(
        s.core.set_control(at(10_100), Control::Auto),
        Err(op_error(
            ErrorCode::Busy,
            "a state change is being written; retry"
        )),
        "one write in flight"
    );
    s.commit(10_100, &w);
    let w = s
        .core
        .set_control(at(10_200), Control::Auto)
        .expect("resume");
    assert_eq!(w.state, Some(steady()));
    assert_eq!(last(&w), (Kind::Resume, 5, 1));
    s.commit(10_200, &w);
    // Pausing while an operation runs is allowed (the op goes on).
    let w = s
        .core
        .switchover(at(10_300), Some(id("r2")), 5000, "op-1".into())
        .expect("switchover");
    s.commit(10_300, &w);
    let w = s
        .core
        .set_control(at(10_400), Control::Manual)
        .expect("pause");
    let st = w.state.expect("state");
    assert_eq!((st.control, st.phase), (Control::Manual, Phase::Switching));
}

/// The heartbeat of a member with an empty log and no role, at `epoch` (what init waits for).
fn empty(who: &str, epoch: u64) -> Heartbeat {
    Heartbeat {
        epoch: Epoch(epoch),
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

#[test]
fn init_waits_for_every_member_and_empty_logs() {
    let mut c = cfg();
    c.members = vec![member("r1", 0), member("r2", 5), member("r3", 5)];
    let mut s = Sim::absent(c.clone(), 0);
    // No state yet: active, but no role.
    assert_eq!(
        s.hb(1_000, empty("r1", 0)),
        Directive {
            seq: 1,
            rev: 0,
            controller_term: TERM,
            active: true,
            active_controller: Some(ADDR.into()),
            epoch: Epoch(0),
            role: None,
            leader: None,
            members: c.members.clone(),
            waited: vec![],
            lease_ms: 0,
            start_after_ms: 0,
            promises_void: false,
            mode: Mode::SemiSync,
            strict: false,
            lossy: false,
            cluster_id: 0,
        }
    );
    assert_eq!(s.tick(1_000), None, "nothing is decided without a state");
    assert_eq!(
        s.core.init(at(1_000)),
        Err(op_error(
            ErrorCode::MembersMissing,
            "waiting for members to report: r2, r3"
        ))
    );
    s.hb(
        1_000,
        Heartbeat {
            log_end_lsn: Lsn(5),
            ..empty("r2", 2)
        },
    );
    s.hb(1_000, empty("r3", 0));
    assert_eq!(
        s.core.init(at(1_000)),
        Err(op_error(
            ErrorCode::NotEmpty,
            "members with data refuse a fresh init: r2"
        ))
    );
    s.hb(1_100, empty("r2", 2));
    s.hb(1_100, empty("r3", 0));
    // r1 last reported at 1 000: missing again at 2 000 (a failure timeout later).
    assert_eq!(
        s.core.init(at(2_000)),
        Err(op_error(
            ErrorCode::MembersMissing,
            "waiting for members to report: r1"
        ))
    );
    s.hb(2_000, empty("r1", 0));
    let w = s.core.init(at(2_000)).expect("init");
    s.check_write(&w);
    assert_eq!(w.expect_rev, 0, "guarded on the state key not existing");
    let init = ClusterState {
        epoch: Epoch(3),
        leader: Some(record("r2")),
        prev_leader: None,
        phase: Phase::Steady,
        members: c.members.clone(),
        sync_set: vec![mref("r3")],
        adding: None,
        control: Control::Auto,
        mode: Mode::SemiSync,
        op: None,
        lossy: false,
        cluster_id: w.state.as_ref().map_or(0, |s| s.cluster_id),
        state_id: w.state.as_ref().map_or(0, |s| s.state_id),
        strict: Some(false),
    };
    assert_ne!(init.cluster_id, 0, "init makes a deployment id");
    assert_eq!(w.state, Some(init.clone()));
    assert_eq!(
        w.journal,
        vec![Entry {
            seq: 1,
            inputs: w.journal[0].inputs.clone(),
            ..entry(
                "init",
                "initialized: r2 leads epoch 3, sync set [r3]",
                3,
                UNIX0 + 2_000
            )
        }]
    );
    assert_eq!(s.commit(2_000, &w), 11);
    assert_eq!(
        s.hb(2_050, empty("r2", 2)),
        Directive {
            role: Some(Role::Leader),
            leader: Some(lref("r2", boot("r2"))),
            lease_ms: LEASE,
            start_after_ms: 0,
            cluster_id: init.cluster_id,
            ..base(3, 11, &init)
        }
    );
    assert_eq!(
        s.core.init(at(2_050)),
        Err(op_error(
            ErrorCode::Initialized,
            "the cluster already has a state"
        ))
    );
}

/// A member reporting the highest epoch there is (a forged heartbeat, or a corrupted meta file)
/// makes init refuse instead of wrapping the new epoch to 0 in release builds (issue 13).
#[test]
fn init_refuses_when_epochs_are_exhausted() {
    let mut c = cfg();
    c.members = vec![member("r1", 0), member("r2", 0), member("r3", 0)];
    let mut s = Sim::absent(c, 0);
    for (who, epoch) in [("r1", 0), ("r2", u64::MAX), ("r3", 0)] {
        s.hb(1_000, empty(who, epoch));
    }
    let e = s.core.init(at(1_000)).expect_err("no epoch after u64::MAX");
    assert_eq!(e.code, ErrorCode::Ineligible);
    assert!(e.message.contains("epochs are exhausted"), "{}", e.message);
}
