//! Exact tests of follower promises (`replica/src/core/promise.rs`, DESIGN.md §5 "Leader
//! lease"): a leader whose controller grant ran out serves on promises from every other member,
//! counted from its own send time and shortened by the drift; one member that stops acknowledging
//! ends it, a revoked lease is not replaced by promises, and a follower directed to lead first
//! outwaits its own promise (and a restarted one its start) unless the old leader persisted the
//! new epoch. The interleavings pinned here are the ones where a promise-holding leader and a
//! promotion could otherwise overlap.

use super::*;
use baton_common::directive::Member;

/// The promise length every replica gives in these tests.
const PROMISE_MS: u64 = 800;
/// How long a promise binds the follower: promise·(1+ρ), rounded up (ρ = 0.01).
const BINDS_MS: u64 = 808;
/// How long the leader counts it: promise·(1−ρ), rounded down.
const COUNTS_MS: u64 = 792;

/// Members `of` as the controller's directive lists them.
fn members(of: &[usize]) -> Vec<Member> {
    of.iter()
        .map(|i| Member {
            id: id(*i),
            addr: addr(*i),
            priority: 0,
            no_failover: false,
        })
        .collect()
}

impl Net {
    /// Turns promises on in every replica at `now` (the process start).
    fn promises_on(&mut self, now: u64) {
        for r in &mut self.r {
            r.core.set_promises(PROMISE_MS, now);
        }
        self.check("set_promises");
    }

    /// A directive naming `i` leader of `epoch` with the full member list.
    fn lead_all(&self, i: usize, epoch: u64, rev: u64, waited: &[usize]) -> Directive {
        let mut d = self.lead_d(i, epoch, rev, waited);
        d.members = members(&[A, B, C]);
        d
    }

    /// The follower received a message the leader sent at `sent_ms` on the follower's stream
    /// `fstream`, and acknowledges: its promise is recorded, then the leader takes the ack and
    /// the promise on its stream `lstream`. Returns what the follower sent.
    fn ack_promised(
        &mut self,
        leader: usize,
        follower: usize,
        now: u64,
        (lstream, fstream): (u64, u64),
        sent_ms: u64,
    ) -> AckOut {
        let f = &mut self.r[follower].core;
        f.follower_note_sent(fstream, sent_ms);
        let out = f
            .follower_ack(now, fstream)
            .expect("the follower's stream is current");
        let fx =
            self.r[leader]
                .core
                .leader_on_ack(now, &id(follower), lstream, out.epoch, out.flushed);
        self.apply(leader, &fx);
        self.r[leader].core.leader_on_promise(
            now,
            &id(follower),
            lstream,
            out.echo_ms,
            out.promise_ms,
        );
        self.check("ack_promised");
        out
    }

    fn lease_left(&self, i: usize, now: u64) -> u64 {
        self.core(i).status(now).lease_left_ms
    }
}

fn no_lease(i: usize, epoch: u64) -> WriteReject {
    WriteReject::NotLeader {
        reason: "the leader holds no lease (no recent grant from the active controller, and not \
                 every follower's promise)"
            .into(),
        leader: hint(i, epoch),
    }
}

/// A leads epoch 1 from t=1000 (grant until 1990), B and C stream from it and have acknowledged
/// its leader-start with promises at t=1010 (sent at 1005). Returns the (leader, follower)
/// stream ids of B and C.
fn leading_with_promises() -> (Net, (u64, u64), (u64, u64)) {
    let mut net = Net::new(3);
    net.promises_on(0);
    let d = net.lead_all(A, 1, 1, &[B, C]);
    let start1 = start_rec(1, 1, A, false);
    assert_eq!(net.offer(A, 1000, &d), vec![Action::Append(start1)]);
    assert_eq!(net.direct_follow(B, 1000, A, 1, 1), vec![]);
    assert_eq!(net.direct_follow(C, 1000, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 1001, 1), vec![]);
    let (lb, fb, _) = net.attach(A, B, 1002);
    let (lc, fc, _) = net.attach(A, C, 1002);
    for (f, fs) in [(B, fb), (C, fc)] {
        assert_eq!(net.ship(A, f, 1005, fs, 1, 1).map(|fx| fx.len()), Ok(1));
        assert_eq!(net.flush(f, 1008, 1), vec![]);
    }
    let out = net.ack_promised(A, B, 1010, (lb, fb), 1005);
    assert_eq!(
        out,
        AckOut {
            epoch: Epoch(1),
            flushed: Lsn(1),
            promise_ms: PROMISE_MS,
            echo_ms: 1005,
        }
    );
    net.ack_promised(A, C, 1010, (lc, fc), 1005);
    assert_eq!(net.pos(A), pos((1, 1), 1, 1, 1));
    (net, (lb, fb), (lc, fc))
}

#[test]
fn a_leader_serves_on_promises_from_every_other_member_after_its_grant_ran_out() {
    let (mut net, b, c) = leading_with_promises();
    // The grant (until 1990) is the longer of the two now; the promises run to 1005 + 792.
    assert_eq!(net.lease_left(A, 1500), 490);
    assert!(!net.core(A).on_promises_only(1500));
    // Keepalives sent every 100 ms are acknowledged: the promises move on with them.
    for t in (1100..=1900).step_by(100) {
        net.ack_promised(A, B, t + 5, b, t);
        net.ack_promised(A, C, t + 5, c, t);
    }
    assert_eq!(net.lease_left(A, 1995), 1900 + COUNTS_MS - 1995);
    assert!(
        net.core(A).on_promises_only(1995),
        "the grant ended at 1990"
    );
    assert!(net.core(A).status(1995).on_promises);
    let w = net.propose(A, 1995, "k", "v").expect("served on promises");
    assert_eq!(w, put_rec(1, 2, "k", "v"));
    // B keeps acknowledging; C's last promise (sent at 1900) ends the lease at 2692.
    for t in (2000..=2700).step_by(100) {
        net.ack_promised(A, B, t + 5, b, t);
    }
    assert_eq!(net.lease_left(A, 2600), 2692 - 2600, "the smallest promise");
    assert!(net.propose(A, 2691, "k", "v2").is_ok());
    assert_eq!(net.propose(A, 2692, "k", "v3"), Err(no_lease(A, 1)));
    assert_eq!(net.lease_left(A, 2692), 0);
    assert!(!net.core(A).status(2692).on_promises);
    // C acknowledges again: the lease is back at once.
    net.ack_promised(A, C, 2800, c, 2790);
    assert!(net.propose(A, 2800, "k", "v4").is_ok());
}

#[test]
fn a_promise_counts_from_the_leaders_send_time_and_a_send_time_not_yet_reached_counts_as_now() {
    let (mut net, b, c) = leading_with_promises();
    // Acknowledged late (t=1500) for a keepalive sent at 1100: counted from 1100.
    net.ack_promised(A, B, 1500, b, 1100);
    net.ack_promised(A, C, 1500, c, 1100);
    assert_eq!(net.lease_left(A, 1995), 0, "1100 + 792 is before 1995");
    // An echo from the future (a confused or hostile follower) counts from the arrival.
    net.ack_promised(A, B, 2000, b, 90_000);
    net.ack_promised(A, C, 2000, c, 1950);
    assert_eq!(net.lease_left(A, 2000), 1950 + COUNTS_MS - 2000);
    net.ack_promised(A, C, 2000, c, 90_000);
    assert_eq!(net.lease_left(A, 2000), COUNTS_MS);
    // Never past the send time: a promise on another (stale) stream is ignored.
    net.r[A]
        .core
        .leader_on_promise(2100, &id(C), c.0 + 7, 2100, PROMISE_MS);
    assert_eq!(net.lease_left(A, 2100), COUNTS_MS - 100);
}

#[test]
fn a_member_that_never_promised_leaves_the_leader_on_its_grant_alone() {
    let mut net = Net::new(3);
    net.promises_on(0);
    let d = net.lead_all(A, 1, 1, &[B]);
    assert_eq!(net.offer(A, 1000, &d).len(), 1);
    assert_eq!(net.direct_follow(B, 1000, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 1001, 1), vec![]);
    let (lb, fb, _) = net.attach(A, B, 1002);
    assert_eq!(net.ship(A, B, 1005, fb, 1, 1).map(|fx| fx.len()), Ok(1));
    assert_eq!(net.flush(B, 1008, 1), vec![]);
    for t in (1100..=2000).step_by(100) {
        net.ack_promised(A, B, t + 5, (lb, fb), t);
    }
    // C is a member but never streamed: no promise lease past the grant (1990).
    assert!(net.propose(A, 1989, "k", "v").is_ok());
    assert_eq!(net.propose(A, 1990, "k", "v"), Err(no_lease(A, 1)));
    assert!(!net.core(A).on_promises_only(1990));
}

#[test]
fn a_revoked_lease_is_not_replaced_by_promises_until_the_next_grant() {
    let (mut net, b, c) = leading_with_promises();
    // A switchover stops writes with a directive of lease 0 at the same epoch.
    let mut stop = net.lead_all(A, 1, 2, &[B, C]);
    stop.lease_ms = 0;
    net.offer(A, 1200, &stop);
    net.ack_promised(A, B, 1205, b, 1200);
    net.ack_promised(A, C, 1205, c, 1200);
    assert_eq!(net.propose(A, 1210, "k", "v"), Err(no_lease(A, 1)));
    assert_eq!(net.lease_left(A, 1210), 0);
    // The switchover aborted: the next grant lifts it, and promises count again after it.
    let go = net.lead_all(A, 1, 3, &[B, C]);
    net.offer(A, 1300, &go);
    assert!(net.propose(A, 1300, "k", "v").is_ok());
    assert_eq!(net.lease_left(A, 1300), 990);
    net.ack_promised(A, B, 2200, b, 2195);
    net.ack_promised(A, C, 2200, c, 2195);
    assert!(
        net.propose(A, 2300, "k", "v2").is_ok(),
        "grant over, promises hold"
    );
}

#[test]
fn a_follower_directed_to_lead_outwaits_its_own_promise_and_the_old_leader_stops_first() {
    let (mut net, b, c) = leading_with_promises();
    for t in (1100..=2000).step_by(100) {
        net.ack_promised(A, B, t + 10, b, t);
        net.ack_promised(A, C, t + 10, c, t);
    }
    // B's last promise binds it until 2010 + 808.
    assert_eq!(net.core(B).no_lead_before(), 2010 + BINDS_MS);
    // The controller promotes B (epoch 2) at 2100 while A still serves on promises.
    let d = net.lead_all(B, 2, 2, &[C]);
    assert_eq!(net.offer(B, 2100, &d), vec![]);
    assert!(
        net.r[B].core.follower_ack(2100, b.1).is_none(),
        "B no longer acknowledges A's stream, so it promises no more"
    );
    // A serves until its smallest promise ends (2000 + 792) and not an instant later.
    assert!(net.propose(A, 2791, "k", "a").is_ok());
    assert_eq!(net.propose(A, 2792, "k", "a"), Err(no_lease(A, 1)));
    // B starts its epoch only once its own promise ran out, after A's last serving instant.
    let b_start = net.core(B).no_lead_before();
    assert!(b_start > 2791);
    let tick_b = |net: &mut Net, t: u64| {
        let fx = net.r[B].core.tick(t);
        net.apply(B, &fx);
        net.check("tick");
        fx
    };
    assert_eq!(tick_b(&mut net, b_start - 1), vec![]);
    let start = start_rec(2, net.core(B).log_end().1 .0 + 1, B, false);
    assert_eq!(tick_b(&mut net, b_start), vec![Action::Append(start)]);
}

#[test]
fn a_follower_whose_old_leader_persisted_the_new_epoch_leads_at_once() {
    let (mut net, b, c) = leading_with_promises();
    net.ack_promised(A, B, 1110, b, 1100);
    net.ack_promised(A, C, 1110, c, 1100);
    // A switchover: A persisted epoch 2 and follows, so B's promises to it are void.
    let mut d = net.lead_all(B, 2, 2, &[C]);
    d.promises_void = true;
    let start = start_rec(2, net.core(B).log_end().1 .0 + 1, B, false);
    assert_eq!(net.offer(B, 1200, &d), vec![Action::Append(start)]);
}

#[test]
fn a_restarted_replica_leads_nothing_within_one_promise_of_its_start() {
    let (mut net, _, _) = leading_with_promises();
    net.restart(B);
    net.r[B].core.set_promises(PROMISE_MS, 5000);
    assert_eq!(net.core(B).no_lead_before(), 5000 + BINDS_MS);
    let d = net.lead_all(B, 2, 2, &[C]);
    assert_eq!(net.offer(B, 5100, &d), vec![]);
    let fx = net.r[B].core.tick(5000 + BINDS_MS - 1);
    assert_eq!(fx, vec![]);
    let fx = net.r[B].core.tick(5000 + BINDS_MS);
    assert_eq!(fx.len(), 1, "the leader-start: {fx:?}");
    net.apply(B, &fx);
    net.check("tick");
}

#[test]
fn promises_off_give_no_promise_lease_and_no_start_wait() {
    let mut net = Net::new(2);
    let mut d = net.lead_d(A, 1, 1, &[B]);
    d.members = members(&[A, B]);
    assert_eq!(net.offer(A, 1000, &d).len(), 1);
    assert_eq!(net.direct_follow(B, 1000, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 1001, 1), vec![]);
    let (lb, fb, _) = net.attach(A, B, 1002);
    assert_eq!(net.ship(A, B, 1005, fb, 1, 1).map(|fx| fx.len()), Ok(1));
    assert_eq!(net.flush(B, 1008, 1), vec![]);
    let out = net.ack_promised(A, B, 1900, (lb, fb), 1895);
    assert_eq!(out.promise_ms, 0);
    assert_eq!(net.core(B).no_lead_before(), 0);
    assert_eq!(net.propose(A, 1990, "k", "v"), Err(no_lease(A, 1)));
}
