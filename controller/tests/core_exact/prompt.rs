//! Prompt directive delivery and the switchover's catch-up evidence (DESIGN.md §5): a held
//! (long-polled) heartbeat is answered afresh with [`ClusterCore::answer`], which computes the
//! directive from the current state without hearing the heartbeat again; a switchover takes
//! the leader's report of a flush its target acknowledged as the target being caught up.

use crate::harness::*;

#[test]
fn a_held_heartbeat_is_answered_from_the_current_state_without_being_heard_again() {
    let mut s = steady_sim();
    let hb = follower("r3");
    s.hb(10_000, hb.clone());
    // The state moves on (a promotion starts) while r3's heartbeat is held.
    let promoting = ClusterState {
        epoch: Epoch(6),
        leader: None,
        prev_leader: Some(record("r1")),
        phase: Phase::Promoting,
        ..steady()
    };
    s.core.on_observed(
        at(10_050),
        Observed::Present {
            state: ClusterState {
                strict: Some(false),
                ..promoting.clone()
            },
            rev: REV0 + 1,
        },
        s.core.journal.clone(),
    );
    let d = s.core.answer(at(10_050), &hb);
    assert_eq!(
        (d.active, d.rev, d.epoch, d.role),
        (true, REV0 + 1, Epoch(6), Some(Role::Fenced)),
        "{d:?}"
    );
    assert_eq!(d.seq, hb.seq, "it still echoes the heartbeat's seq");
    assert_eq!(
        s.core.heard()[&id("r3")].at_ms,
        10_000,
        "answering again does not count as hearing r3 again"
    );
}

#[test]
fn a_held_leader_heartbeat_is_granted_at_the_time_of_the_answer_and_not_outside_the_window() {
    let mut s = steady_sim();
    let hb = leader_hb();
    let d = s.core.answer(at(10_080), &hb);
    assert_eq!((d.role, d.lease_ms), (Some(Role::Leader), LEASE));
    // Past the trusted window of its etcd lease the controller answers as a standby.
    s.core.set_valid_until(10_090);
    let d = s.core.answer(at(10_090), &hb);
    assert_eq!((d.active, d.role, d.lease_ms), (false, None, 0), "{d:?}");
}

#[test]
fn switchover_takes_the_leaders_acknowledged_view_of_the_target() {
    let mut s = switching_to_r2();
    // r1 gave up its lease at log end 130; r2 itself last reported 120 (its next heartbeat is
    // up to an interval away), but r1 reports r2's acknowledged flush at 130.
    s.hb(
        10_100,
        Heartbeat {
            applied_rev: 11,
            lease_left_ms: Some(0),
            log_end_lsn: Lsn(130),
            flushed_lsn: Lsn(130),
            waiting: vec![wait_info("r2", 90, 130, 1)],
            ..leader_hb()
        },
    );
    s.hb(
        10_100,
        Heartbeat {
            log_end_lsn: Lsn(120),
            flushed_lsn: Lsn(120),
            ..follower("r2")
        },
    );
    let w = s.tick(10_100).expect("the epoch write");
    let st = w.state.as_ref().expect("a state");
    assert_eq!(
        (st.epoch, st.leader.as_ref().map(|l| l.id.clone())),
        (Epoch(6), Some(id("r2")))
    );
    assert_eq!(last(&w), (Kind::Switchover, 6, 1));
}

#[test]
fn switchover_does_not_take_an_acknowledgement_short_of_the_end_or_from_another_directory() {
    for waiting in [
        // Acknowledged short of the leader's final end.
        wait_info("r2", 90, 129, 1),
        // From another data directory of r2 than the one reporting.
        WaitInfo {
            data_id: data("other"),
            ..wait_info("r2", 90, 130, 1)
        },
    ] {
        let mut s = switching_to_r2();
        s.hb(
            10_100,
            Heartbeat {
                applied_rev: 11,
                lease_left_ms: Some(0),
                log_end_lsn: Lsn(130),
                flushed_lsn: Lsn(130),
                waiting: vec![waiting.clone()],
                ..leader_hb()
            },
        );
        s.hb(
            10_100,
            Heartbeat {
                log_end_lsn: Lsn(120),
                flushed_lsn: Lsn(120),
                ..follower("r2")
            },
        );
        assert_eq!(s.tick(10_100), None, "not caught up: {waiting:?}");
    }
}
