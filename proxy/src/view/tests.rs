//! Unit tests of [`ClusterView`] (`view.rs`): answers applied in rev order with epochs that
//! never go back, leader addresses and `any`-read targets, and when a new cluster state (lower
//! rev, another epoch or state id) replaces the view.

use super::*;

fn ans(id: Option<&str>, epoch: u64, rev: u64, active: bool) -> LeaderAnswer {
    LeaderAnswer {
        id: id.map(str::to_string),
        addr: id.map(|i| format!("127.0.0.1:71{:02}", i.len())),
        epoch: Some(epoch),
        rev,
        from_active: active,
        state_id: None,
    }
}

fn ch(rev_moved: bool, leader_changed: bool) -> Applied {
    Applied::Changed {
        rev_moved,
        leader_changed,
        new_state: None,
    }
}

#[test]
fn answers_apply_in_rev_order_and_epochs_never_go_back() {
    let mut v = ClusterView::default();
    let steps: Vec<(LeaderAnswer, Applied, Option<&str>, u64, u64)> = vec![
        // (answer, result, leader id after, epoch after, rev after)
        (
            ans(Some("r1"), 3, 10, true),
            ch(true, false),
            Some("r1"),
            3,
            10,
        ),
        // An older answer (a lagging standby) changes nothing.
        (
            ans(Some("r2"), 2, 9, false),
            Applied::Ignored,
            Some("r1"),
            3,
            10,
        ),
        // The same rev again: nothing new.
        (
            ans(Some("r1"), 3, 10, true),
            Applied::Ignored,
            Some("r1"),
            3,
            10,
        ),
        // Promoting: epoch N+1, no leader yet.
        (ans(None, 4, 11, true), ch(true, false), None, 4, 11),
        // The new leader: a change from r1, though "none" came in between.
        (
            ans(Some("r2"), 4, 12, false),
            ch(true, true),
            Some("r2"),
            4,
            12,
        ),
        // The active controller's answer at the same rev replaces the standby's.
        (
            ans(Some("r2"), 4, 12, true),
            ch(false, false),
            Some("r2"),
            4,
            12,
        ),
        // ...but a standby's never replaces the active one's at the same rev.
        (
            ans(Some("r3"), 4, 12, false),
            Applied::Ignored,
            Some("r2"),
            4,
            12,
        ),
    ];
    for (i, (a, want, leader, epoch, rev)) in steps.into_iter().enumerate() {
        assert_eq!(v.on_leader_answer(0, &a), want, "step {i}");
        v.check_invariants();
        assert_eq!(v.leader.as_ref().map(|l| l.id.as_str()), leader, "step {i}");
        assert_eq!((v.epoch, v.rev), (epoch, rev), "step {i}");
    }
    assert_eq!(v.leader_changes, 1);
    // A replica's reply may carry a higher epoch than the controllers told so far.
    assert!(v.raise_epoch(5));
    assert!(!v.raise_epoch(4));
    assert_eq!(v.epoch, 5);
    // A controller answer with a lower epoch does not lower it.
    v.on_leader_answer(0, &ans(Some("r2"), 4, 13, true));
    assert_eq!(v.epoch, 5);
}

#[test]
fn a_leader_without_an_address_is_no_target() {
    let mut v = ClusterView::default();
    let a = LeaderAnswer {
        id: Some("r1".into()),
        addr: None,
        epoch: Some(1),
        rev: 5,
        from_active: true,
        state_id: None,
    };
    assert!(matches!(v.on_leader_answer(0, &a), Applied::Changed { .. }));
    assert_eq!(v.leader, None);
    v.check_invariants();
}

#[test]
fn any_reads_rotate_over_members_and_fall_back_to_the_leader() {
    let mut v = ClusterView::default();
    assert_eq!(v.any_target(0), None);
    v.on_leader_answer(
        0,
        &LeaderAnswer {
            id: Some("r1".into()),
            addr: Some("127.0.0.1:7101".into()),
            epoch: Some(1),
            rev: 5,
            from_active: true,
            state_id: None,
        },
    );
    assert_eq!(v.any_target(7), Some("http://127.0.0.1:7101"));
    let m = vec!["127.0.0.1:7101".to_string(), "127.0.0.1:7102".to_string()];
    assert!(v.on_members(5, &m));
    assert_eq!(v.any_target(0), Some("http://127.0.0.1:7101"));
    assert_eq!(v.any_target(1), Some("http://127.0.0.1:7102"));
    assert_eq!(v.any_target(2), Some("http://127.0.0.1:7101"));
    // An older member list does not replace a newer one.
    assert!(!v.on_members(4, &m[..1]));
    assert_eq!(v.members.len(), 2);
    assert!(v.on_members(6, &m[..1]));
    assert_eq!(v.members, vec!["http://127.0.0.1:7101"]);
}

#[test]
fn base_urls() {
    assert_eq!(base_url("127.0.0.1:1", false), "http://127.0.0.1:1");
    assert_eq!(base_url("http://h:1/", false), "http://h:1");
    // The proxy's own scheme wins: TLS to every node or to none.
    assert_eq!(base_url("127.0.0.1:1", true), "https://127.0.0.1:1");
    assert_eq!(base_url("http://h:1/", true), "https://h:1");
    assert_eq!(base_url("https://h:1", false), "http://h:1");
    assert_eq!(addr_of("https://h:1"), "h:1");
    assert_eq!(addr_of("h:1"), "h:1");
}

#[test]
fn over_tls_leaders_and_members_get_https_urls() {
    let mut v = ClusterView {
        https: true,
        ..ClusterView::default()
    };
    let a = LeaderAnswer {
        id: Some("r1".into()),
        addr: Some("10.0.0.1:7101".into()),
        epoch: Some(1),
        rev: 1,
        from_active: true,
        state_id: None,
    };
    assert!(matches!(v.on_leader_answer(0, &a), Applied::Changed { .. }));
    assert_eq!(v.leader_url(), Some("https://10.0.0.1:7101"));
    assert!(v.on_members(1, &["10.0.0.2:7101".to_string()]));
    assert_eq!(v.members, vec!["https://10.0.0.2:7101"]);
}

fn at(v: &mut ClusterView, now: u64, a: LeaderAnswer) -> Applied {
    let r = v.on_leader_answer(now, &a);
    v.check_invariants();
    r
}

fn new_state(leader_changed: bool, why: NewStateWhy, old: (u64, u64)) -> Applied {
    Applied::Changed {
        rev_moved: true,
        leader_changed,
        new_state: Some(NewState {
            why,
            old_epoch: old.0,
            old_rev: old.1,
        }),
    }
}

fn rule() -> ResetRule {
    ResetRule {
        after_ms: 1000,
        answers: 3,
    }
}

/// Issue 10 item 9: etcd restored and `recover` run, the new state at a lower rev with a
/// higher epoch. No answer of the old state can look like that: followed at once.
#[test]
fn a_new_state_with_a_higher_epoch_at_a_lower_rev_is_followed_at_once() {
    let mut v = ClusterView::new(rule());
    assert_eq!(at(&mut v, 0, ans(Some("r1"), 5, 40, true)), ch(true, false));
    // A standby's word is not enough.
    assert_eq!(
        at(&mut v, 10, ans(Some("r2"), 6, 12, false)),
        Applied::Ignored
    );
    assert_eq!(
        at(&mut v, 20, ans(Some("r2"), 6, 12, true)),
        new_state(true, NewStateWhy::HigherEpochLowerRev, (5, 40))
    );
    assert_eq!((v.epoch, v.state_epoch, v.rev), (6, 6, 12));
    assert_eq!(
        (v.retired, v.state_resets, v.members_rev),
        (Some((40, 5)), 1, 0)
    );
    // A standby still reading the old state is a straggler, not a newer rev.
    assert_eq!(
        at(&mut v, 30, ans(Some("r1"), 5, 40, false)),
        Applied::Ignored
    );
    assert_eq!(v.leader_url(), Some("http://127.0.0.1:7102"));
    // The new state moves on as usual, from standbys too, and once its rev passes the old
    // range nothing is remembered of it.
    assert_eq!(
        at(&mut v, 40, ans(Some("r2"), 6, 13, false)),
        ch(true, false)
    );
    assert_eq!(
        at(&mut v, 50, ans(Some("r2"), 6, 41, true)),
        ch(true, false)
    );
    assert_eq!(v.retired, None);
    assert_eq!(
        at(&mut v, 60, ans(Some("r1"), 5, 40, false)),
        Applied::Ignored
    );
    // The same epoch at a lower rev is no proof (a late answer of the same state could be
    // that): it counts towards the slow rule only.
    assert_eq!(at(&mut v, 70, ans(None, 6, 30, true)), Applied::Ignored);
    assert_eq!(v.behind.as_ref().map(|b| b.answers), Some(1));
}

/// Issue 10 item 9: etcd emptied and the cluster initialized again with fresh replicas: a
/// lower rev *and* a lower epoch. Followed once every active answer has said so for the grace
/// period and enough answers; the epoch sent goes down with it.
#[test]
fn a_lower_state_is_followed_once_the_active_controllers_said_so_for_the_grace_period() {
    let mut v = ClusterView::new(rule());
    at(&mut v, 0, ans(Some("r1"), 7, 40, true));
    let lower = || ans(Some("r2"), 1, 3, true);
    type Row = (u64, LeaderAnswer, Applied, Option<(u64, u32)>);
    let rows: Vec<Row> = vec![
        // (now, answer, result, behind (since, answers) after)
        (100, lower(), Applied::Ignored, Some((100, 1))),
        // Standbys do not count either way.
        (
            600,
            ans(Some("r2"), 1, 3, false),
            Applied::Ignored,
            Some((100, 1)),
        ),
        (
            650,
            ans(Some("r1"), 7, 40, false),
            Applied::Ignored,
            Some((100, 1)),
        ),
        // An active controller that still reads the old state: start again.
        (700, ans(Some("r1"), 7, 40, true), Applied::Ignored, None),
        // No state at all (etcd emptied, not yet initialized) says nothing.
        (750, ans(None, 0, 0, true), Applied::Ignored, None),
        (800, lower(), Applied::Ignored, Some((800, 1))),
        (1300, lower(), Applied::Ignored, Some((800, 2))),
        (1700, lower(), Applied::Ignored, Some((800, 3))),
        (
            1800,
            lower(),
            new_state(
                true,
                NewStateWhy::BehindFor {
                    ms: 1000,
                    answers: 4,
                },
                (7, 40),
            ),
            None,
        ),
        // A straggler of the old state from a standby is ignored...
        (1900, ans(Some("r1"), 7, 40, false), Applied::Ignored, None),
        // ...while the new state moves on (a failover in it).
        (2000, ans(Some("r3"), 2, 5, true), ch(true, true), None),
    ];
    for (i, (now, a, want, behind)) in rows.into_iter().enumerate() {
        assert_eq!(at(&mut v, now, a), want, "row {i}");
        let b = v.behind.as_ref().map(|b| (b.since_ms, b.answers));
        assert_eq!(b, behind, "row {i}");
    }
    assert_eq!((v.epoch, v.rev, v.retired), (2, 5, Some((40, 7))));
    assert_eq!((v.leader_changes, v.state_resets), (2, 1));
}

/// etcd restored from an old backup, before `recover`: the controllers name an older state
/// while the replicas, and perhaps the old leader, run ahead of it. A replica reply showing
/// an epoch above the controllers' holds the reset off; without one it happens.
#[test]
fn a_replica_ahead_of_the_controllers_holds_off_a_reset() {
    let mut v = ClusterView::new(rule());
    at(&mut v, 0, ans(Some("r1"), 7, 40, true));
    let stale = || ans(Some("r2"), 5, 20, true);
    let mut t = 100;
    while t < 5000 {
        assert_eq!(at(&mut v, t, stale()), Applied::Ignored, "at {t}");
        // A reply at the controllers' epoch or below is no sign of anything.
        assert!(!v.on_replica_epoch(t + 100, 5));
        assert!(!v.on_replica_epoch(t + 250, 7));
        t += 500;
    }
    assert_eq!((v.epoch, v.rev), (7, 40));
    assert_eq!(
        v.behind.as_ref().map(|b| (b.since_ms, b.answers)),
        Some((4850, 0))
    );
    assert_eq!(at(&mut v, 5100, stale()), Applied::Ignored);
    assert_eq!(at(&mut v, 5600, stale()), Applied::Ignored);
    assert_eq!(
        at(&mut v, 6100, stale()),
        new_state(
            true,
            NewStateWhy::BehindFor {
                ms: 1250,
                answers: 3
            },
            (7, 40)
        )
    );
    assert_eq!((v.epoch, v.rev), (5, 20));
}

/// A new state whose revs overtook the old view's is taken by the rev rule, but its lower
/// epoch would stay behind the one the view holds; the slow rule brings the epoch down.
#[test]
fn a_new_state_at_a_higher_rev_but_a_lower_epoch_lowers_the_epoch_after_the_grace_period() {
    let mut v = ClusterView::new(rule());
    at(&mut v, 0, ans(Some("r1"), 7, 12, true));
    assert_eq!(
        at(&mut v, 100, ans(Some("r2"), 1, 13, true)),
        ch(true, true)
    );
    assert_eq!((v.epoch, v.state_epoch), (7, 1));
    assert_eq!(
        at(&mut v, 600, ans(Some("r2"), 1, 13, true)),
        Applied::Ignored
    );
    assert_eq!(
        at(&mut v, 1100, ans(Some("r2"), 1, 13, true)),
        new_state(
            false,
            NewStateWhy::BehindFor {
                ms: 1000,
                answers: 3
            },
            (7, 13)
        )
    );
    assert_eq!((v.epoch, v.rev, v.retired), (1, 13, Some((13, 7))));
    // An answer at the same place now agrees.
    assert_eq!(
        at(&mut v, 1600, ans(Some("r2"), 1, 13, true)),
        Applied::Ignored
    );
    assert_eq!(v.behind, None);
}

/// With a `state_id` in the answers (a controller change this proxy is ready for), revs are
/// compared only within one identity and the active controller's new identity is taken at
/// once, epoch included.
#[test]
fn answers_with_another_state_id_replace_the_view_when_active() {
    let with_id = |id: &str, leader: &str, epoch: u64, rev: u64, active: bool| LeaderAnswer {
        state_id: Some(id.into()),
        ..ans(Some(leader), epoch, rev, active)
    };
    let mut v = ClusterView::new(rule());
    assert_eq!(
        at(&mut v, 0, with_id("a", "r1", 7, 40, true)),
        ch(true, false)
    );
    assert_eq!(
        at(&mut v, 10, with_id("b", "r2", 1, 3, false)),
        Applied::Ignored
    );
    // Even a higher rev of another identity from a standby.
    assert_eq!(
        at(&mut v, 20, with_id("b", "r2", 1, 50, false)),
        Applied::Ignored
    );
    assert_eq!(
        at(&mut v, 30, with_id("b", "r2", 1, 3, true)),
        new_state(true, NewStateWhy::OtherStateId, (7, 40))
    );
    assert_eq!((v.epoch, v.rev, v.state_id.as_deref()), (1, 3, Some("b")));
    // The old identity, even from an active controller, is not followed back.
    assert_eq!(
        at(&mut v, 40, with_id("a", "r1", 7, 41, false)),
        Applied::Ignored
    );
    // Within an identity, rev order as always.
    assert_eq!(
        at(&mut v, 50, with_id("b", "r2", 1, 2, true)),
        Applied::Ignored
    );
    assert_eq!(
        at(&mut v, 60, with_id("b", "r3", 2, 4, true)),
        ch(true, true)
    );
}
