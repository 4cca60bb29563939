//! Directives: what a standby, the active controller and an undeclared member are told; the
//! restart of the recorded leader.

use crate::harness::*;

// ----- directives ------------------------------------------------------------------------------

#[test]
fn standby_answers_inactive_without_role_or_lease_and_refuses_ops() {
    let mut core = ClusterCore::new(cfg());
    core.on_election(at(0), None, Some("c2.local:7100".into()));
    core.on_observed(
        at(0),
        Observed::Present {
            state: steady(),
            rev: REV0,
        },
        vec![],
    );
    let mut s = Sim::wrap(core);
    let d = s.hb(10_000, leader_hb());
    assert_eq!(
        d,
        Directive {
            controller_term: 0,
            active: false,
            active_controller: Some("c2.local:7100".into()),
            waited: vec![],
            ..base(5, REV0, &steady())
        }
    );
    s.hb(10_000, lost("r2", 5000));
    s.hb(10_000, lost("r3", 5000));
    for t in [10_000, 20_000] {
        assert_eq!(s.tick(t), None, "a standby decides nothing");
    }
    let not_active = op_error(
        ErrorCode::NotActive,
        "this controller is not active; the active one is c2.local:7100",
    );
    let n = at(20_000);
    assert_eq!(
        s.core.switchover(n, Some(id("r2")), 5000, "op-1".into()),
        Err(not_active.clone())
    );
    assert_eq!(
        s.core.failover(n, id("r2"), true, true, "op-1".into()),
        Err(not_active.clone())
    );
    assert_eq!(
        s.core.set_control(n, Control::Manual),
        Err(not_active.clone())
    );
    assert_eq!(s.core.init(n), Err(not_active));
    let dry = s.core.dry_run(n);
    assert!(!dry.would_fail_over);
    assert!(dry
        .blocking
        .contains(&"this controller is not active".to_string()));
}

#[test]
fn steady_state_directives_leader_followers_and_an_undeclared_member() {
    let mut s = Sim::active(cfg(), steady(), vec![], 0);
    let st = steady();
    let leader = Some(lref("r1", boot("r1")));
    assert_eq!(
        s.hb(10_000, leader_hb()),
        Directive {
            role: Some(Role::Leader),
            leader: leader.clone(),
            lease_ms: LEASE,
            start_after_ms: 0,
            ..base(5, REV0, &st)
        }
    );
    for who in ["r2", "r3"] {
        assert_eq!(
            s.hb(10_000, follower(who)),
            Directive {
                role: Some(Role::Follower),
                leader: leader.clone(),
                ..base(5, REV0, &st)
            }
        );
    }
    // Undeclared: fenced, named no leader, waited set withheld, and not counted as heard.
    assert_eq!(
        s.hb(10_000, follower("r9")),
        Directive {
            role: Some(Role::Fenced),
            waited: vec![],
            ..base(5, REV0, &st)
        }
    );
    assert_eq!(s.core.hears(at(10_000)), 3);
    assert!(!s.core.heard().contains_key(&id("r9")));
    assert_eq!(s.tick(10_000), None, "nothing to decide when all is well");
    let dry = s.core.dry_run(at(10_000));
    assert_eq!(dry.leader_health, "healthy");
    assert!(!dry.would_fail_over);
}

#[test]
fn unknown_write_outcome_withholds_roles_until_the_state_is_read_again() {
    let mut s = steady_sim();
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("failover write");
    s.core.on_write(at(11_000), &w, WriteOutcome::Unknown);
    assert_eq!(s.core.observed, Observed::Unknown);
    let d = s.hb(11_050, follower("r2"));
    assert_eq!((d.active, d.role, d.lease_ms), (false, None, 0));
    assert_eq!(s.tick(11_050), None);
    // The read shows the write did commit: the promotion goes on from there.
    let promoting = w.state.clone().expect("state");
    s.core.on_observed(
        at(11_100),
        Observed::Present {
            state: promoting,
            rev: 11,
        },
        w.journal.clone(),
    );
    let d = s.hb(11_100, follower("r2"));
    assert_eq!((d.epoch, d.role, d.rev), (Epoch(6), Some(Role::Fenced), 11));
}

// ----- restart of the leader -------------------------------------------------------------------

#[test]
fn restarted_leader_is_fenced_and_gets_a_new_epoch_in_any_mode_outside_the_budget() {
    // Paused, with the failover budget spent: a restart still gets its new epoch.
    let spent: Vec<Entry> = (1..=3)
        .map(|i| {
            entry(
                "failover",
                &format!("f{i}"),
                4,
                UNIX0 + 10_000 - i * 600_000,
            )
        })
        .collect();
    let st = ClusterState {
        control: Control::Manual,
        ..steady()
    };
    let mut s = Sim::active(cfg(), st.clone(), spent, 0);
    // The last grant to epoch 5; the old run is quiet for 300 ms before the new one speaks
    // (a new boot heard while the old one still speaks would be a second process).
    s.hb(9_800, leader_hb());
    s.hb(9_800, follower("r2"));
    s.hb(9_800, follower("r3"));
    assert_eq!(s.failovers(10_100), 3);

    // r1 comes back as a new process run: fenced, still named as the recorded leader.
    let r1b = Heartbeat {
        boot_id: boot2("r1"),
        role: ReportedRole::None,
        ..follower("r1")
    };
    assert_eq!(
        s.hb(10_100, r1b.clone()),
        Directive {
            role: Some(Role::Fenced),
            leader: Some(lref("r1", boot("r1"))),
            ..base(5, REV0, &st)
        }
    );
    let w = s.tick(10_100).expect("restart write");
    assert_eq!(w.expect_rev, REV0);
    let promoting = ClusterState {
        epoch: Epoch(6),
        leader: None,
        prev_leader: Some(record("r1")),
        phase: Phase::Promoting,
        ..st.clone()
    };
    assert_eq!(w.state, Some(promoting.clone()));
    assert_eq!(last(&w), (Kind::Restart, 6, 1));
    assert_eq!(w.journal.last().map(|e| e.at_unix_ms), Some(UNIX0 + 10_100));
    assert_eq!(s.commit(10_100, &w), 11);
    assert_eq!(
        s.failovers(10_100),
        3,
        "a restart is not counted as a failover"
    );

    // Step 2: everyone fenced at 6, no leader named.
    for hb in [r1b.clone(), follower("r2"), follower("r3")] {
        assert_eq!(
            s.hb(10_150, hb),
            Directive {
                role: Some(Role::Fenced),
                ..base(6, 11, &promoting)
            }
        );
    }
    assert_eq!(s.tick(10_150), None, "nobody has reported at epoch 6 yet");
    s.hb(
        10_200,
        Heartbeat {
            boot_id: boot2("r1"),
            ..fenced("r1", 6, (5, 100))
        },
    );
    s.hb(10_200, fenced("r2", 6, (5, 100)));
    s.hb(10_200, fenced("r3", 6, (5, 98)));
    // r1 (the previous leader, same data) and r2 (sync) tie on (5, 100): the lower id wins.
    let w = s.tick(10_200).expect("promotion");
    let promoted = ClusterState {
        leader: Some(LeaderRecord {
            boot_id: boot2("r1"),
            ..record("r1")
        }),
        phase: Phase::Steady,
        sync_set: vec![mref("r2")],
        ..promoting
    };
    assert_eq!(w.state, Some(promoted.clone()));
    assert_eq!(last(&w), (Kind::Promoted, 6, 1));
    assert_eq!(s.commit(10_200, &w), 12);

    // The old run's lease (granted at 10 000) may still be running: the new run waits it out,
    // in every directive, not only the first. It need not wait out promises: the run before led
    // epoch 5 and gave none in it (found by `baton-sim --bounds`: a leader restarted just before
    // its failover waited one promise more, seed 16).
    let r1b6 = Heartbeat {
        boot_id: boot2("r1"),
        ..fenced("r1", 6, (5, 100))
    };
    assert_eq!(
        s.hb(10_250, r1b6.clone()),
        Directive {
            role: Some(Role::Leader),
            leader: Some(lref("r1", boot2("r1"))),
            lease_ms: LEASE,
            start_after_ms: 9_800 + WAIT - 10_250,
            promises_void: true,
            ..base(6, 12, &promoted)
        }
    );
    assert_eq!(
        s.hb(10_300, r1b6.clone()).start_after_ms,
        9_800 + WAIT - 10_300
    );
    assert_eq!(s.hb(11_000, r1b6).start_after_ms, 0);
    assert_eq!(
        s.hb(10_300, fenced("r2", 6, (5, 100))),
        Directive {
            role: Some(Role::Follower),
            leader: Some(lref("r1", boot2("r1"))),
            ..base(6, 12, &promoted)
        }
    );
    assert_eq!(s.failovers(10_300), 3);
}

// ----- addresses -------------------------------------------------------------------------------

/// One source of truth for addresses (DESIGN.md §8): a member that comes back at another
/// address (a restart on another host, a container with a new IP) is reached there as soon as
/// it heartbeats: the followers' directives and the cluster view name the advertised address
/// at once, and the active controller records it in the state (one journaled write, then
/// nothing more while nothing changes).
#[test]
fn a_member_that_moved_is_reached_at_the_address_it_advertises() {
    let mut s = steady_sim();
    assert_eq!(s.tick(10_050), None, "nothing moved: nothing to write");
    let d = s.hb(10_100, follower("r2"));
    assert_eq!(d.leader.map(|l| l.addr), Some(addr("r1")));
    // r1 now advertises a host name instead of the address recorded at init.
    let moved = Heartbeat {
        addr: "r1.baton.internal:7101".into(),
        ..leader_hb()
    };
    s.hb(10_150, moved);
    let d = s.hb(10_160, follower("r2"));
    assert_eq!(
        d.leader.map(|l| l.addr).as_deref(),
        Some("r1.baton.internal:7101"),
        "followers are sent to the advertised address before any write"
    );
    assert_eq!(
        d.members
            .iter()
            .find(|m| m.id == id("r1"))
            .map(|m| m.addr.as_str()),
        Some("r1.baton.internal:7101")
    );
    assert_eq!(s.core.member_addr(&id("r1")), "r1.baton.internal:7101");
    let w = s.tick(10_200).expect("the new address is recorded");
    assert_eq!(last(&w).0, Kind::Address);
    names(&w, &["r1"]);
    assert!(
        says(&w).contains("r1.baton.internal:7101 (was r1.local:7000)"),
        "{}",
        says(&w)
    );
    let st = w.state.clone().expect("a state write");
    assert_eq!(
        st.member(&id("r1")).map(|m| m.addr.as_str()),
        Some("r1.baton.internal:7101")
    );
    assert_eq!(
        st.member(&id("r2")).map(|m| m.addr.as_str()),
        Some(addr("r2").as_str())
    );
    assert_eq!(
        (st.epoch, st.leader.clone()),
        (steady().epoch, steady().leader),
        "no new epoch"
    );
    s.commit(10_210, &w);
    assert_eq!(s.tick(10_300), None, "recorded once");
    // A standby that never heard r1 reads the recorded address from the state.
    let mut standby = ClusterCore::new(cfg());
    standby.on_election(at(0), None, Some(ADDR.into()));
    standby.on_observed(at(0), Observed::Present { state: st, rev: 99 }, vec![]);
    assert_eq!(standby.member_addr(&id("r1")), "r1.baton.internal:7101");
    // A member declared without an address and never heard has none.
    let mut bare = cfg();
    bare.members[2].addr = String::new();
    let core = ClusterCore::new(bare);
    assert_eq!(core.member_addr(&id("r3")), "");
}
