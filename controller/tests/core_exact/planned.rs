//! Planned failovers (DESIGN.md §5): a leader that is alive but cut from its followers, stuck
//! flushing or out of disk is replaced by a promotion naming a member that holds every
//! acknowledged write — never by swapping sync members it cannot reach either.

use crate::harness::*;

/// r1 leads, cut from r2 (sync) and r3 from 10 000 on: it still reports to this controller and
/// so do they, saying they receive nothing from it. Heartbeats every 100 ms up to `until`.
fn cut_from_followers(s: &mut Sim, until: u64) {
    let mut t = 10_000;
    while t <= until {
        cut_round(s, t);
        t += HB;
    }
}

/// One round of [`cut_from_followers`]'s heartbeats, at `t`..`t + 60`.
fn cut_round(s: &mut Sim, t: u64) {
    let gone = t - 10_000;
    s.hb(
        t,
        Heartbeat {
            log_end_lsn: Lsn(130),
            waiting: vec![wait_info("r2", 90, 100, gone)],
            last_sync_ack_ms: Some(gone),
            ..leader_hb()
        },
    );
    s.hb(t + 30, lost("r2", gone + 30));
    s.hb(t + 60, lost("r3", gone + 60));
}

#[test]
fn leader_cut_from_every_follower_fails_over_to_its_sync_member() {
    let mut s = steady_sim();
    cut_from_followers(&mut s, 10_900);
    assert_eq!(s.tick(10_960), None, "no sync ack for 900 ms only");
    cut_from_followers(&mut s, 11_000);
    // The dry run says so first (batonctl dry-run; status shows the running operation).
    let dry = s.core.dry_run(at(11_060));
    assert_eq!(
        (
            dry.would_fail_over,
            dry.candidate.clone(),
            dry.expected_loss_records
        ),
        (true, Some(id("r2")), Some(0))
    );
    let planned = dry.planned.expect("a planned failover");
    assert!(
        planned.starts_with("leader unreachable from followers")
            && planned.ends_with(": planned failover to r2"),
        "{planned}"
    );
    let w = s.tick(11_060).expect("planned failover");
    // Not a swap of r2 for r3 (the leader cannot reach r3 either), nor a drop of r2 that would
    // leave the cut-off leader acknowledging alone.
    let st = w.state.clone().expect("a state");
    assert_eq!(
        (st.epoch, st.phase, st.leader.clone()),
        (Epoch(6), Phase::Promoting, None)
    );
    assert_eq!(st.sync_set, vec![mref("r2")], "the sync set is kept");
    assert_eq!(
        st.op.as_ref().map(|o| o.op.clone()),
        Some(Op::Failover {
            to: id("r2"),
            force: false,
            allow_data_loss: false,
            planned: true,
        })
    );
    assert_eq!(last(&w), (Kind::Failover, 6, 1));
    names(&w, &["r2"]);
    assert!(
        says(&w).contains("unreachable from followers"),
        "{}",
        says(&w)
    );
    s.commit(11_060, &w);
    assert_eq!(
        s.failovers(11_060),
        1,
        "counted by the anti-flapping budget"
    );
    // Everyone is fenced; r1's log is the longest (its unacknowledged tail), but r2 is named.
    s.hb(11_100, fenced("r1", 6, (5, 130)));
    s.hb(11_100, fenced("r2", 6, (5, 100)));
    s.hb(11_100, fenced("r3", 6, (5, 100)));
    let w = s.tick(11_100).expect("promotion");
    let st = w.state.clone().expect("a state");
    assert_eq!(st.leader, Some(record("r2")));
    // Its sync member is r3, not r1: the old leader is cut from its followers and must first
    // cut its unreplicated tail (found by `baton-sim --bounds`, seed 20: r2 waited ~1 s for r1
    // until the sync set was repaired).
    assert_eq!(st.sync_set, vec![mref("r3")]);
    assert_eq!(
        (st.phase, st.op.clone(), st.lossy),
        (Phase::Steady, None, false)
    );
    assert_eq!(last(&w), (Kind::Promoted, 6, 1));
    s.commit(11_100, &w);
    // r1 persisted epoch 6: r2 starts at once.
    assert_eq!(s.hb(11_120, fenced("r2", 6, (5, 100))).start_after_ms, 0);
}

/// The same cut, but r3 is behind r2 when fenced: no follower but the old leader holds the new
/// leader's log. The old leader is still no sync member of a planned failover's successor (it
/// is the one cut off; r2 would wait a failure timeout for it before it was replaced: found by
/// `baton-bench partial` leader-cut-from-followers, 1.8 s gaps where the others took 1.2 s).
/// The sync set starts empty and r2 holds writes while r3 is added.
#[test]
fn a_planned_failovers_old_leader_is_not_its_successors_sync_member() {
    let mut s = steady_sim();
    cut_from_followers(&mut s, 11_000);
    let w = s.tick(11_060).expect("planned failover");
    s.commit(11_060, &w);
    s.hb(11_100, fenced("r1", 6, (5, 130)));
    s.hb(11_100, fenced("r2", 6, (5, 100)));
    s.hb(11_100, fenced("r3", 6, (5, 90)));
    let w = s.tick(11_100).expect("promotion");
    let st = w.state.clone().expect("a state");
    assert_eq!(st.leader, Some(record("r2")));
    assert_eq!(st.sync_set, vec![], "not r1, the leader that was cut off");
    assert_eq!(last(&w), (Kind::Promoted, 6, 1));
}

#[test]
fn one_follower_still_receiving_means_the_sync_member_is_replaced_instead() {
    let mut s = steady_sim();
    let mut t = 10_000;
    while t <= 11_000 {
        let gone = t - 10_000;
        s.hb(
            t,
            Heartbeat {
                waiting: vec![wait_info("r2", 90, 100, gone)],
                ..leader_hb()
            },
        );
        s.hb(t, lost("r2", gone));
        s.hb(t, follower("r3"));
        t += HB;
    }
    let w = s.tick(11_000).expect("sync-set upkeep");
    assert_eq!(last(&w), (Kind::SyncAdd, 5, 1));
    assert_eq!(w.state.and_then(|s| s.adding), Some(mref("r3")));
}

#[test]
fn paused_cluster_refuses_the_planned_failover_and_says_why() {
    let mut s = Sim::active(
        cfg(),
        ClusterState {
            control: Control::Manual,
            ..steady()
        },
        vec![],
        0,
    );
    cut_from_followers(&mut s, 11_000);
    let w = s.tick(11_060).expect("refusal");
    assert_eq!(last(&w), (Kind::Refusal, 5, 1));
    assert!(
        says(&w).starts_with("paused: planned failover is off"),
        "{}",
        says(&w)
    );
    assert_eq!(w.state, None);
}

/// Found across containers (issue 14): the reason a planned failover is refused names how
/// long the leader has been cut off, a number that grows every tick; the refusal must still
/// be journaled once while it holds, not written to etcd at every tick.
#[test]
fn a_refused_planned_failover_is_journaled_once_while_the_cut_lasts() {
    // Strict: the unreachable sync member stays (writes block), so the cut keeps the
    // planned failover due, and refused, for as long as it lasts.
    let mut s = Sim::active(
        ClusterParams {
            strict: true,
            ..cfg()
        },
        ClusterState {
            control: Control::Manual,
            strict: Some(true),
            ..steady()
        },
        vec![],
        0,
    );
    cut_from_followers(&mut s, 11_000);
    let w = s.tick(11_060).expect("refusal");
    assert_eq!(last(&w), (Kind::Refusal, 5, 1));
    s.commit(11_070, &w);
    for t in (11_100..=13_000).step_by(HB as usize) {
        // The cut goes on: each round of heartbeats reports it a little longer.
        cut_round(&mut s, t);
        if let Some(w) = s.tick(t + 70) {
            assert_ne!(
                last(&w).0,
                Kind::Refusal,
                "refusal journaled again at {t}: {}",
                says(&w)
            );
            s.commit(t + 5, &w);
        }
    }
}

#[test]
fn flush_pending_for_a_failure_timeout_fails_over() {
    let mut s = steady_sim();
    for t in (10_100..=11_000).step_by(HB as usize) {
        s.hb(
            t,
            Heartbeat {
                oldest_unflushed_ms: Some(t - 10_000),
                ..leader_hb()
            },
        );
        s.hb(t, follower("r2"));
        s.hb(t, follower("r3"));
        if t < 11_000 {
            assert_eq!(s.tick(t), None, "pending {} ms only", t - 10_000);
        }
    }
    let w = s.tick(11_000).expect("planned failover");
    assert_eq!(last(&w), (Kind::Failover, 6, 1));
    assert!(
        says(&w).contains("flush pending for 1000 ms"),
        "{}",
        says(&w)
    );
    assert_eq!(
        w.state.and_then(|s| s.op).map(|o| o.op.to().clone()),
        Some(id("r2"))
    );
}

#[test]
fn leader_with_a_full_disk_fails_over_to_a_sync_member() {
    let mut s = steady_sim();
    s.hb(
        10_100,
        Heartbeat {
            disk_full: true,
            ..leader_hb()
        },
    );
    let w = s.tick(10_100).expect("planned failover");
    assert_eq!(last(&w), (Kind::Failover, 6, 1));
    assert!(says(&w).contains("disk full on the leader"), "{}", says(&w));
}

#[test]
fn no_eligible_target_is_a_refusal_not_a_promotion() {
    let mut s = steady_sim();
    // r2, the only sync member, is unclean (re-fetching after corruption).
    s.hb(
        10_100,
        Heartbeat {
            unclean: true,
            ..follower("r2")
        },
    );
    s.hb(
        10_100,
        Heartbeat {
            disk_full: true,
            ..leader_hb()
        },
    );
    let w = s.tick(10_100).expect("refusal");
    assert_eq!(last(&w), (Kind::Refusal, 5, 1));
    assert!(says(&w).starts_with("no planned failover"), "{}", says(&w));
    assert_eq!(w.state, None);
    s.commit(10_100, &w);
    // Not journaled again: the sync set's upkeep goes on and replaces the unclean r2 (it no
    // longer holds every acknowledged write), which makes r3 a target once it joined.
    let w = s.tick(10_200).expect("r2 replaced");
    assert_eq!(last(&w).0, Kind::SyncAdd);
    assert!(says(&w).contains("replacing r2"), "{}", says(&w));
}

#[test]
fn sync_member_out_of_disk_is_neither_evidence_nor_target() {
    let mut s = steady_sim();
    let mut t = 10_000;
    while t <= 11_000 {
        let gone = t - 10_000;
        s.hb(
            t,
            Heartbeat {
                waiting: vec![wait_info("r2", 90, 100, gone)],
                ..leader_hb()
            },
        );
        // r2 dropped its stream because its disk is full; r3 is cut from the leader.
        s.hb(
            t,
            Heartbeat {
                since_leader_ms: None,
                disk_full: true,
                ..follower("r2")
            },
        );
        s.hb(t, lost("r3", gone));
        t += HB;
    }
    assert_eq!(s.core.planned_trigger(at(11_000), &s.state()), None);
}
