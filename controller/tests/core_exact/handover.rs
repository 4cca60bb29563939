//! Controller handover (DESIGN.md §5, `core/handover.rs`): an active controller that hears
//! fewer members than a standby has published, continuously for a failure timeout, resigns
//! (a `handover` journal entry whose write also deletes the election key) and campaigns again
//! only after a back-off; a count that recovers restarts the clock; equal counts never resign.

use crate::harness::*;
use baton_controller::core::{HANDOVER_BACKOFF_FTS, HEARS_PUBLISH_EVERY_MS};

/// Ticks at `t`, commits whatever the core writes, and checks it is not a resignation.
fn tick_no_handover(s: &mut Sim, t: u64) {
    if let Some(w) = s.tick(t) {
        assert!(!w.resign, "resigned at {t}: {}", w.why);
        s.commit(t, &w);
    }
}

/// Every member reports to this controller at `t` (r1 leading).
fn all_heard(s: &mut Sim, t: u64) {
    s.hb(t, leader_hb());
    s.hb(t, follower("r2"));
    s.hb(t, follower("r3"));
}

/// [`steady_sim`] with standby c2 publishing that it hears all three members.
fn with_standby_hearing_3() -> Sim {
    let mut s = steady_sim();
    s.core.standby_hears = 3;
    s.core.standby_id = Some("c2".into());
    s
}

#[test]
fn hearing_fewer_than_a_standby_for_a_failure_timeout_resigns() {
    let mut s = with_standby_hearing_3();
    tick_no_handover(&mut s, 10_500);
    // Nothing heard since 10 000: from 11 000 this controller hears nobody.
    tick_no_handover(&mut s, 11_000);
    tick_no_handover(&mut s, 11_500);
    tick_no_handover(&mut s, 11_999);
    let w = s.tick(12_000).expect("the handover");
    assert!(w.resign, "the write resigns the election");
    assert_eq!(w.state, None, "a handover changes no cluster state");
    assert_eq!(last(&w), (Kind::Handover, 5, 1));
    assert_eq!(
        says(&w),
        "this controller hears 0 members, standby c2 hears 3 for 1.0 s: resigning"
    );
    s.commit(12_000, &w);
    assert!(!s.core.is_active(), "standby once resigned");
    assert!(!s.core.active_at(at(12_000)));
    let d = s.hb(12_010, follower("r2"));
    assert!(
        !d.active,
        "a resigned controller answers as a standby: {d:?}"
    );
    assert_eq!(s.tick(12_100), None, "a standby decides nothing");
}

#[test]
fn a_count_that_recovers_restarts_the_clock() {
    let mut s = with_standby_hearing_3();
    tick_no_handover(&mut s, 11_000);
    tick_no_handover(&mut s, 11_900);
    // Everyone heard again just before the failure timeout ran out: the clock restarts.
    all_heard(&mut s, 11_950);
    tick_no_handover(&mut s, 11_950);
    tick_no_handover(&mut s, 12_000);
    // Silent again from 12 950 on: a full failure timeout from there.
    tick_no_handover(&mut s, 12_950);
    tick_no_handover(&mut s, 13_500);
    tick_no_handover(&mut s, 13_949);
    let w = s.tick(13_950).expect("the handover");
    assert!(w.resign);
    assert_eq!(
        says(&w),
        "this controller hears 0 members, standby c2 hears 3 for 1.0 s: resigning"
    );
}

#[test]
fn a_count_seen_recovered_by_one_tick_restarts_the_clock() {
    // Two members heard (fewer than 3), then all three at one tick, then two again.
    let mut s = with_standby_hearing_3();
    let mut t = 10_000;
    while t < 13_000 {
        s.hb(t, leader_hb());
        s.hb(t, follower("r2"));
        if t == 11_500 {
            s.hb(t, follower("r3"));
        }
        tick_no_handover(&mut s, t);
        t += 100;
    }
    // r3 last heard at 11 500: fresh until 12 500, so fewer since 12 500 only.
    tick_no_handover(&mut s, 13_499);
    let w = s.tick(13_500).expect("the handover");
    assert!(w.resign);
    assert_eq!(
        says(&w),
        "this controller hears 2 members, standby c2 hears 3 for 1.0 s: resigning"
    );
}

#[test]
fn equal_counts_never_resign() {
    let mut s = steady_sim();
    // r3 is cut from both controllers: each hears two.
    s.core.standby_hears = 2;
    s.core.standby_id = Some("c2".into());
    let mut t = 10_000;
    while t <= 20_000 {
        s.hb(t, leader_hb());
        s.hb(t, follower("r2"));
        tick_no_handover(&mut s, t);
        t += 100;
    }
    assert!(s.core.active_at(at(20_000)));
    // And hearing more than the standby never resigns either.
    s.core.standby_hears = 1;
    tick_no_handover(&mut s, 20_100);
}

#[test]
fn the_back_off_holds_campaigns_and_publishes_zero() {
    let mut s = with_standby_hearing_3();
    tick_no_handover(&mut s, 11_000);
    let w = s.tick(12_000).expect("the handover");
    assert!(
        s.core.may_campaign(at(12_000)),
        "no back-off before the resign ends"
    );
    s.commit(12_000, &w);
    let back_off = HANDOVER_BACKOFF_FTS * FT;
    assert!(!s.core.may_campaign(at(12_000)));
    assert!(!s.core.may_campaign(at(12_000 + back_off - 1)));
    assert!(s.core.may_campaign(at(12_000 + back_off)));
    // While backing off it publishes 0 members heard, whatever it hears: it neither draws a
    // handover to itself nor holds back the active controller's failover decisions.
    all_heard(&mut s, 12_500);
    assert_eq!(s.core.hears(at(12_500)), 3);
    assert_eq!(s.core.published_hears(at(12_500)), 0);
    all_heard(&mut s, 12_000 + back_off);
    assert_eq!(s.core.published_hears(at(12_000 + back_off)), 3);
    // Elected again after the back-off: it observes for a failure timeout like any new term.
    s.core
        .on_election(at(12_000 + back_off), Some(TERM + 7), Some(ADDR.into()));
    assert!(s.core.active_at(at(12_000 + back_off)));
}

#[test]
fn a_resign_with_an_unknown_outcome_backs_off_and_a_rejected_one_does_not() {
    // Unknown: the key may be gone; the controller stops acting and backs off. If the key is
    // still its own, the runtime's look finds its term again.
    let mut s = with_standby_hearing_3();
    tick_no_handover(&mut s, 11_000);
    let w = s.tick(12_000).expect("the handover");
    s.core.on_write(at(12_000), &w, WriteOutcome::Unknown);
    assert!(!s.core.is_active());
    assert!(!s.core.may_campaign(at(12_100)));
    s.core
        .on_election(at(12_100), Some(TERM), Some(ADDR.into()));
    assert!(s.core.active_at(at(12_100)), "its own key: still its term");

    // Rejected: the guard failed (the state moved, or the election was lost), nothing was
    // deleted; no back-off, the decision is taken again once the state is re-read.
    let mut s = with_standby_hearing_3();
    tick_no_handover(&mut s, 11_000);
    let w = s.tick(12_000).expect("the handover");
    s.core.on_write(at(12_000), &w, WriteOutcome::Rejected);
    assert!(s.core.is_active());
    assert!(s.core.may_campaign(at(12_000)));
    assert_eq!(s.tick(12_050), None, "nothing before the state is re-read");
    let state = steady();
    s.core.on_observed(
        at(12_100),
        Observed::Present {
            state: ClusterState {
                strict: Some(false),
                ..state
            },
            rev: REV0,
        },
        s.core.journal.clone(),
    );
    let w = s.tick(12_100).expect("the handover again");
    assert!(w.resign);
}

#[test]
fn no_handover_while_a_write_is_in_flight_nor_without_a_state() {
    let mut s = with_standby_hearing_3();
    // The refusal of 11 000 ("a standby hears 3: not deciding a failover") is handed out and
    // its outcome not known by 12 000: one write at a time.
    let refusal = s.tick(11_000).expect("a refusal");
    assert!(!refusal.resign);
    assert_eq!(s.tick(12_000), None, "a write is in flight");
    s.commit(12_000, &refusal);
    let w = s.tick(12_000).expect("the handover, once the write ended");
    assert!(w.resign);

    // A controller whose state read is unknown does not resign (its journal entry needs the
    // state's revision as a guard).
    let mut s = with_standby_hearing_3();
    let w = s.tick(11_000).expect("a refusal");
    s.core.on_write(at(11_000), &w, WriteOutcome::Unknown);
    assert_eq!(s.tick(12_500), None, "no state observed: no handover");
    assert!(s.core.active_at(at(12_500)));
}

/// A member that went silent (a killed leader) leaves the published count before this
/// controller's own count drops it: a standby's count, published with a lag, must not hold
/// back the failover the active controller can prove (`baton-bench failover` found promotions
/// ~190 ms late: "this controller hears 2 members, a standby hears 3").
#[test]
fn a_member_going_silent_leaves_the_published_count_first() {
    let mut s = Sim::active(cfg(), steady(), vec![], 0);
    s.hb(10_000, leader_hb());
    s.hb(10_000, follower("r2"));
    s.hb(10_000, follower("r3"));
    // r2 and r3 keep reporting; r1 is silent from 10 000 on.
    let lag = HEARS_PUBLISH_EVERY_MS + 2 * HB + 50;
    for t in (10_100..=10_000 + FT).step_by(100) {
        s.hb(t, follower("r2"));
        s.hb(t, follower("r3"));
    }
    let quiet = 10_000 + FT - lag;
    assert_eq!(s.core.published_hears(at(quiet - 1)), 3);
    assert_eq!(
        s.core.published_hears(at(quiet)),
        2,
        "r1 leaves the published count"
    );
    assert_eq!(
        s.core.hears(at(quiet)),
        3,
        "but is still within the failure timeout here"
    );
    assert_eq!(s.core.hears(at(10_000 + FT)), 2);
}
