//! Sync-set maintenance: add, replace, drop, abandoned adds.

use crate::harness::*;

// ----- sync-set maintenance --------------------------------------------------------------------

/// r2 (sync) stops reporting after 10 000; r1 (and r3 when `r3_reports`) go on until 11 000,
/// when r2 has been silent, and unacknowledged, for a failure timeout.
fn sync_member_lost(cfg: ClusterParams, r3_reports: bool) -> Sim {
    let mut s = Sim::active(cfg, steady(), vec![], 0);
    s.hb(10_000, follower("r2"));
    for t in [10_000, 10_500, 11_000] {
        s.hb(
            t,
            Heartbeat {
                waiting: vec![wait_info("r2", 90, 100, t - 10_000)],
                ..leader_hb()
            },
        );
        if r3_reports {
            s.hb(t, follower("r3"));
        }
        if t == 10_500 {
            assert_eq!(s.tick(t), None, "r2 was heard 500 ms ago");
        }
    }
    s
}

#[test]
fn dead_sync_member_is_replaced_add_then_drop() {
    let mut s = sync_member_lost(cfg(), true);
    let w = s.tick(11_000).expect("add");
    let adding = ClusterState {
        adding: Some(mref("r3")),
        ..steady()
    };
    assert_eq!(w.state, Some(adding.clone()));
    assert_eq!(last(&w), (Kind::SyncAdd, 5, 1));
    assert_eq!(s.commit(11_000, &w), 11);
    // The leader waits for both from now on.
    assert_eq!(
        s.hb(11_050, leader_hb()),
        Directive {
            role: Some(Role::Leader),
            leader: Some(lref("r1", boot("r1"))),
            waited: vec![mref("r2"), mref("r3")],
            lease_ms: LEASE,
            ..base(5, 11, &adding)
        }
    );
    let l = |rev: u64, flushed: u64| Heartbeat {
        applied_rev: rev,
        log_end_lsn: Lsn(131),
        waiting: vec![
            wait_info("r2", 90, 100, 1100),
            wait_info("r3", 130, flushed, 3),
        ],
        ..leader_hb()
    };
    s.hb(11_100, follower("r3"));
    // r3 has the since LSN, but the leader has not echoed rev 11 yet.
    s.hb(11_100, l(REV0, 131));
    assert_eq!(s.tick(11_100), None);
    s.hb(11_150, l(11, 129));
    assert_eq!(s.tick(11_150), None, "r3 has not flushed since_lsn 130");
    s.hb(11_200, l(11, 130));
    let w = s.tick(11_200).expect("move");
    let replaced = ClusterState {
        sync_set: vec![mref("r3")],
        ..steady()
    };
    assert_eq!(w.state, Some(replaced.clone()));
    assert_eq!(last(&w), (Kind::SyncAdd, 5, 1));
    assert_eq!(s.commit(11_200, &w), 12);
    assert_eq!(s.hb(11_250, l(11, 130)).waited, vec![mref("r3")]);
    assert_eq!(s.tick(11_250), None);
}

#[test]
fn sync_member_not_acknowledging_is_replaced_too() {
    let mut s = steady_sim();
    s.hb(10_500, follower("r2"));
    s.hb(10_500, follower("r3"));
    s.hb(
        10_500,
        Heartbeat {
            waiting: vec![wait_info("r2", 90, 100, FT)],
            ..leader_hb()
        },
    );
    let w = s.tick(10_500).expect("add");
    assert_eq!(says(&w), "replacing r2 in the sync set: adding r3 first");
}

#[test]
fn dead_sync_member_is_dropped_when_nobody_can_replace_it() {
    for (strict, tail) in [
        (false, " (not strict: the leader runs degraded)"),
        (true, " (strict: writes block)"),
    ] {
        let mut c = cfg();
        c.strict = strict;
        let mut s = sync_member_lost(c, false);
        let w = s.tick(11_000).expect("drop");
        assert_eq!(
            w.state,
            Some(ClusterState {
                sync_set: vec![],
                strict: Some(strict),
                ..steady()
            })
        );
        assert_eq!(last(&w), (Kind::SyncDrop, 5, 1));
        names(&w, &["r2"]);
        assert!(
            says(&w).ends_with(tail),
            "strict or not is said: {}",
            says(&w)
        );
        s.commit(11_000, &w);
        assert_eq!(s.hb(11_050, leader_hb()).waited, vec![]);
    }
}

#[test]
fn replacement_not_done_within_sync_wait_drops_the_dead_member() {
    let mut s = sync_member_lost(cfg(), true);
    s.tick_commit(11_000); // adding r3
    let t = 11_000 + SYNC_WAIT;
    s.hb(t - 1, follower("r3"));
    s.hb(t - 1, leader_hb());
    assert_eq!(s.tick(t - 1), None);
    let w = s.tick(t).expect("drop");
    assert_eq!(
        w.state,
        Some(ClusterState {
            sync_set: vec![],
            adding: Some(mref("r3")),
            ..steady()
        })
    );
    assert_eq!(last(&w), (Kind::SyncDrop, 5, 1));
    names(&w, &["r2"]);
}

#[test]
fn sync_set_below_its_size_gets_a_member_and_a_silent_one_being_added_is_dropped() {
    let st = ClusterState {
        sync_set: vec![],
        ..steady()
    };
    let mut s = Sim::active(cfg(), st.clone(), vec![], 0);
    s.hb(10_000, leader_hb());
    s.hb(10_000, follower("r2"));
    s.hb(10_000, follower("r3"));
    let w = s.tick(10_000).expect("add");
    assert_eq!(
        w.state,
        Some(ClusterState {
            adding: Some(mref("r2")),
            ..st.clone()
        })
    );
    assert_eq!(last(&w), (Kind::SyncAdd, 5, 1));
    s.commit(10_000, &w);
    s.hb(11_000, leader_hb());
    let w = s.tick(11_000).expect("drop");
    assert_eq!(w.state, Some(st));
    assert_eq!(last(&w), (Kind::SyncDrop, 5, 1));
    names(&w, &["r2"]);
}
