//! Exact-action tests of [`ClusterCore`], the controller's pure per-cluster state machine
//! (DESIGN.md §3–5, §7): explicit `Now` values, heartbeats in, directives and guarded etcd
//! writes out, asserted field by field (state, journal kind and message).
//!
//! The harness plays the runtime: it hands the core the state as etcd returns it, commits the
//! writes the core hands out (`on_write(Committed { rev })`, the state key's mod revision moving
//! only when a state is written), and checks invariants after every step. It does not test the
//! decision tables of `decide.rs` row by row (those live in `src/decide/tests.rs`), nor etcd,
//! HTTP or the replica.

use baton_common::directive::{
    Directive, Heartbeat, LeaderRef, Member, MemberRef, Mode, ReportedRole, Role, WaitInfo,
};
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId};
use baton_controller::core::{
    ClusterCfg, ClusterCore, Now, Observed, OpError, Write, WriteOutcome,
};
use baton_controller::journal::{self, Entry};
use baton_controller::state::{ClusterState, Control, LeaderRecord, OpRecord, Phase};
use std::collections::BTreeMap;

const FT: u64 = 1000;
const HB: u64 = 100;
const LEASE: u64 = 800;
const SYNC_WAIT: u64 = 2000;
/// `ceil(LEASE·(1+ρ)/(1−ρ)) + HB` with ρ = 0.01: how long after the last grant to the old epoch
/// a new leader may start.
const WAIT: u64 = 817 + HB;
const TERM: u64 = 42;
const ADDR: &str = "c1.local:7100";
const UNIX0: u64 = 1_700_000_000_000;
/// The revision of the steady state every scenario starts from.
const REV0: u64 = 10;

// ----- identities and inputs -------------------------------------------------------------------

fn id(s: &str) -> NodeId {
    NodeId(s.into())
}

fn data(s: &str) -> DataId {
    DataId(s.bytes().map(u128::from).sum::<u128>() + 1)
}

fn boot(s: &str) -> BootId {
    BootId(s.bytes().map(u128::from).sum::<u128>() + 100)
}

/// The boot id of a member's second process run.
fn boot2(s: &str) -> BootId {
    BootId(s.bytes().map(u128::from).sum::<u128>() + 200)
}

fn addr(s: &str) -> String {
    format!("{s}.local:7000")
}

fn at(ms: u64) -> Now {
    Now {
        ms,
        unix_ms: UNIX0 + ms,
    }
}

fn mref(s: &str) -> MemberRef {
    MemberRef {
        id: id(s),
        data_id: data(s),
    }
}

fn record(s: &str) -> LeaderRecord {
    LeaderRecord {
        id: id(s),
        data_id: data(s),
        boot_id: boot(s),
    }
}

fn lref(s: &str, b: BootId) -> LeaderRef {
    LeaderRef {
        id: id(s),
        addr: addr(s),
        boot_id: b,
        data_id: data(s),
    }
}

fn member(s: &str, priority: i32) -> Member {
    Member {
        id: id(s),
        addr: addr(s),
        priority,
        no_failover: false,
    }
}

fn cfg() -> ClusterCfg {
    ClusterCfg {
        name: "main".into(),
        members: vec![member("r1", 0), member("r2", 0), member("r3", 0)],
        mode: Mode::SemiSync,
        sync_size: 1,
        strict: false,
        heartbeat_interval_ms: HB,
        failure_timeout_ms: FT,
        lease_ms: LEASE,
        sync_wait_ms: SYNC_WAIT,
        drift: 0.01,
        max_lag_on_failover: 100,
        max_failovers_per_hour: 3,
    }
}

/// Epoch 5, r1 leads, sync set {r2}, r3 a plain follower.
fn steady() -> ClusterState {
    ClusterState {
        epoch: Epoch(5),
        leader: Some(record("r1")),
        prev_leader: None,
        phase: Phase::Steady,
        members: cfg().members,
        sync_set: vec![mref("r2")],
        adding: None,
        control: Control::Auto,
        mode: Mode::SemiSync,
        op: None,
        lossy: false,
        cluster_id: 0,
        state_id: 0,
        strict: Some(false),
    }
}

/// A follower of r1 at epoch 5, log end (5, 100), that heard from the leader 10 ms ago.
fn follower(who: &str) -> Heartbeat {
    Heartbeat {
        seq: 1,
        cluster: "main".into(),
        cluster_id: 0,
        id: id(who),
        data_id: data(who),
        boot_id: boot(who),
        unclean: false,
        addr: addr(who),
        epoch: Epoch(5),
        role: ReportedRole::Follower,
        log_end_epoch: Epoch(5),
        log_end_lsn: Lsn(100),
        flushed_lsn: Lsn(100),
        applied_lsn: Lsn(100),
        commit_lsn: Lsn(100),
        applied_rev: REV0,
        max_term: 0,
        since_leader_ms: Some(10),
        oldest_unflushed_ms: None,
        last_sync_ack_ms: None,
        lease_left_ms: None,
        waiting: vec![],
        last_cut: None,
        refused_peer: None,
    }
}

/// A follower that has had nothing from the leader for `since` ms.
fn lost(who: &str, since: u64) -> Heartbeat {
    Heartbeat {
        since_leader_ms: Some(since),
        ..follower(who)
    }
}

/// A member's report after it persisted `epoch` on a `fenced` directive.
fn fenced(who: &str, epoch: u64, end: (u64, u64)) -> Heartbeat {
    Heartbeat {
        epoch: Epoch(epoch),
        role: ReportedRole::Fenced,
        log_end_epoch: Epoch(end.0),
        log_end_lsn: Lsn(end.1),
        flushed_lsn: Lsn(end.1),
        since_leader_ms: None,
        ..follower(who)
    }
}

fn wait_info(who: &str, since_lsn: u64, flushed: u64, last_ack_ms: u64) -> WaitInfo {
    WaitInfo {
        id: id(who),
        data_id: data(who),
        since_lsn: Lsn(since_lsn),
        flushed_lsn: Lsn(flushed),
        last_ack_ms,
    }
}

/// r1 leading epoch 5 with a lease, waiting for r2 (acknowledged 5 ms ago).
fn leader_hb() -> Heartbeat {
    Heartbeat {
        role: ReportedRole::Leader,
        since_leader_ms: None,
        oldest_unflushed_ms: Some(0),
        last_sync_ack_ms: Some(5),
        lease_left_ms: Some(600),
        waiting: vec![wait_info("r2", 90, 100, 5)],
        ..follower("r1")
    }
}

fn entry(kind: &str, message: &str, epoch: u64, at_unix_ms: u64) -> Entry {
    Entry {
        seq: 0,
        at_unix_ms,
        last_unix_ms: None,
        kind: kind.into(),
        message: message.into(),
        epoch,
        inputs: serde_json::Value::Null,
        count: 1,
    }
}

/// The directive every declared member of the steady state gets, before role and lease.
fn base(epoch: u64, rev: u64, state: &ClusterState) -> Directive {
    Directive {
        seq: 1,
        rev,
        controller_term: TERM,
        active: true,
        active_controller: Some(ADDR.into()),
        epoch: Epoch(epoch),
        role: None,
        leader: None,
        members: state.members.clone(),
        waited: state.waited(),
        lease_ms: 0,
        start_after_ms: 0,
        mode: state.mode,
        strict: false,
        lossy: false,
        cluster_id: 0,
    }
}

fn op_error(status: u16, error: &str, message: &str) -> OpError {
    OpError {
        status,
        error: error.into(),
        message: message.into(),
    }
}

// ----- the runtime, simulated ------------------------------------------------------------------

struct Sim {
    core: ClusterCore,
    /// etcd's revision counter.
    etcd_rev: u64,
    /// Who was directed to lead each epoch (I1 from the controller's side: one run per epoch).
    leaders: BTreeMap<Epoch, (NodeId, BootId)>,
    /// The highest epoch a directive carried (directives never go back).
    directed: Epoch,
}

impl Sim {
    /// An active controller (since `active_at`) that has read `state` at [`REV0`].
    fn active(cfg: ClusterCfg, state: ClusterState, journal: Vec<Entry>, active_at: u64) -> Sim {
        // The state carries the configured `strict` (else the first tick writes it).
        let state = ClusterState {
            strict: Some(cfg.strict),
            ..state
        };
        let mut core = ClusterCore::new(cfg);
        core.on_election(at(active_at), Some(TERM), Some(ADDR.into()));
        core.on_observed(
            at(active_at),
            Observed::Present { state, rev: REV0 },
            journal,
        );
        Sim::wrap(core)
    }

    /// An active controller that read no state key (the cluster is not initialized).
    fn absent(cfg: ClusterCfg, active_at: u64) -> Sim {
        let mut core = ClusterCore::new(cfg);
        core.on_election(at(active_at), Some(TERM), Some(ADDR.into()));
        core.on_observed(at(active_at), Observed::Absent, vec![]);
        Sim::wrap(core)
    }

    fn wrap(core: ClusterCore) -> Sim {
        Sim {
            core,
            etcd_rev: REV0,
            leaders: BTreeMap::new(),
            directed: Epoch(0),
        }
    }

    fn observed(&self) -> Option<(ClusterState, u64)> {
        match &self.core.observed {
            Observed::Present { state, rev } => Some((state.clone(), *rev)),
            _ => None,
        }
    }

    fn state(&self) -> ClusterState {
        self.observed().expect("state observed").0
    }

    fn rev(&self) -> u64 {
        self.observed().map_or(0, |(_, r)| r)
    }

    fn hb(&mut self, t: u64, hb: Heartbeat) -> Directive {
        let d = self.core.on_heartbeat(at(t), hb.clone());
        assert_eq!(d.seq, hb.seq, "a directive echoes the heartbeat's seq");
        if !d.active {
            assert_eq!(d.role, None, "a standby's answer carries no role: {d:?}");
            assert_eq!((d.lease_ms, d.start_after_ms), (0, 0), "nor a lease: {d:?}");
        }
        if d.role != Some(Role::Leader) {
            assert_eq!(d.lease_ms, 0, "only a leader gets a lease: {d:?}");
        } else {
            let l = d
                .leader
                .as_ref()
                .expect("a leader directive names the leader");
            assert_eq!(
                (&l.id, l.boot_id),
                (&hb.id, hb.boot_id),
                "leads under its own boot"
            );
            let who = (hb.id.clone(), hb.boot_id);
            let prev = self.leaders.entry(d.epoch).or_insert_with(|| who.clone());
            assert_eq!(*prev, who, "two runs directed to lead epoch {}", d.epoch);
        }
        if d.active && d.role.is_some() {
            assert!(d.epoch >= self.directed, "directive epochs go back: {d:?}");
            self.directed = d.epoch;
            assert_eq!(
                d.rev,
                self.rev(),
                "a directive is a function of the state at its rev"
            );
        }
        d
    }

    fn tick(&mut self, t: u64) -> Option<Write> {
        let w = self.core.tick(at(t));
        if let Some(w) = &w {
            self.check_write(w);
        }
        w
    }

    /// Checks a write handed out by the core against the state it was derived from.
    fn check_write(&self, w: &Write) {
        let cur = self.observed();
        assert_eq!(
            w.expect_rev,
            self.rev(),
            "guarded by the observed rev: {}",
            w.why
        );
        let old_last = self.core.journal.last();
        assert_eq!(w.journal_after, old_last.map_or(0, |e| e.seq));
        let new = w.journal.last().expect("a journal entry");
        assert!(
            (w.journal.len() <= 2 && new.seq == w.journal_after + 1)
                || (w.journal.len() == 1
                    && new.seq == w.journal_after
                    && Some(new.count) > old_last.map(|e| e.count)),
            "one journal entry per write (or a coalesced one): {}",
            w.why
        );
        let Some(s) = &w.state else { return };
        if let Some((c, _)) = &cur {
            assert!(s.epoch >= c.epoch, "the epoch goes back: {}", w.why);
        }
        if s.leader.is_some() {
            assert_ne!(
                s.phase,
                Phase::Promoting,
                "a leader is recorded when steady"
            );
        } else {
            assert_ne!(s.phase, Phase::Switching);
        }
        for m in s.sync_set.iter().chain(s.adding.iter()) {
            assert!(s.member(&m.id).is_some(), "{} is not a member", m.id);
            assert!(
                s.leader.as_ref().is_none_or(|l| l.id != m.id),
                "the leader waits for itself"
            );
        }
        let mut ids: Vec<&NodeId> = s.sync_set.iter().map(|m| &m.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), s.sync_set.len(), "duplicate sync member");
    }

    /// The runtime committed `w`: etcd's revision moves; the state key's only when a state is
    /// written (a journal-only write leaves the guard revision as it was).
    fn commit(&mut self, t: u64, w: &Write) -> u64 {
        self.etcd_rev += 1;
        let rev = if w.state.is_some() {
            self.etcd_rev
        } else {
            w.expect_rev
        };
        self.core
            .on_write(at(t), w, WriteOutcome::Committed { rev });
        assert_eq!(self.core.journal.last(), w.journal.last());
        assert!(self.core.journal.len() <= journal::RING);
        if let Some(s) = &w.state {
            assert_eq!(self.observed(), Some((s.clone(), rev)));
        }
        rev
    }

    fn tick_commit(&mut self, t: u64) -> Write {
        let w = self.tick(t).expect("a write");
        self.commit(t, &w);
        w
    }

    fn failovers(&self, t: u64) -> usize {
        self.core.failovers_in_last_hour(at(t))
    }
}

/// The entry a write adds: (kind, message, epoch, count).
fn last(w: &Write) -> (&str, &str, u64, u64) {
    let e = w.journal.last().expect("a journal entry");
    (e.kind.as_str(), e.message.as_str(), e.epoch, e.count)
}

/// Steady cluster, controller active since 0; at 10 000 all three report (r1 granted a lease).
fn steady_sim() -> Sim {
    let mut s = Sim::active(cfg(), steady(), vec![], 0);
    s.hb(10_000, leader_hb());
    s.hb(10_000, follower("r2"));
    s.hb(10_000, follower("r3"));
    s
}

const FAILED: &str = "leader r1 not heard for 1000 ms; every reporting follower lost it too; \
                      candidates reporting: r2";

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
        503,
        "not_active",
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
    assert_eq!(
        last(&w),
        (
            "restart",
            "leader r1 restarted (new boot or data directory): a new epoch is needed; promoting at epoch 6",
            6,
            1
        )
    );
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
    assert_eq!(
        last(&w),
        (
            "promoted",
            "promoted r1 at epoch 6 (log end 5/100); sync set [r2]",
            6,
            1
        )
    );
    assert_eq!(s.commit(10_200, &w), 12);

    // The old run's lease (granted at 10 000) may still be running: the new run waits it out,
    // in every directive, not only the first.
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

// ----- automatic failover ----------------------------------------------------------------------

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
    assert_eq!(
        last(&w),
        (
            "failover",
            format!("{FAILED}; promoting at epoch 6").as_str(),
            6,
            1
        )
    );
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
    assert_eq!(
        last(&w),
        (
            "promoted",
            "promoted r2 at epoch 6 (log end 5/100); sync set [r3]",
            6,
            1
        )
    );
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
        last(&w).1,
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
    assert_eq!(last(&w).0, "failover");
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
            assert_eq!(
                last(&w),
                (
                    "refusal",
                    format!("paused: automatic failover is off ({FAILED})").as_str(),
                    5,
                    1
                )
            );
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
    let msg = format!(
        "failover budget exhausted: 3 automatic failovers in the last hour (max_failovers_per_hour = 3); \
         automatic failover pauses ({FAILED})"
    );
    assert_eq!(last(&w), ("refusal", msg.as_str(), 5, 1));
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
    assert_eq!(last(&w).0, "failover");
    s.commit(11_000, &w);
    assert_eq!(s.failovers(11_000), 3);
}

#[test]
fn leader_unreachable_from_controller_while_followers_see_it() {
    let mut s = steady_sim();
    s.hb(11_000, lost("r2", 20));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("refusal");
    let msg = "leader unreachable from controller: followers r2 still receive from it";
    assert_eq!(last(&w), ("refusal", msg, 5, 1));
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
    assert_eq!(last(&w), ("refusal", msg, 5, 2));
    assert_eq!(w.journal[0].last_unix_ms, Some(UNIX0 + 12_200));
    s.commit(12_200, &w);
    assert_eq!(s.tick(12_300), None);
}

#[test]
fn no_failover_without_a_reporting_follower_or_when_a_standby_hears_more() {
    let mut s = steady_sim();
    // Only the (silent) leader's peers are silent too: this controller may be the isolated one.
    let w = s.tick(11_000).expect("refusal");
    assert_eq!(
        last(&w),
        (
            "refusal",
            "no follower reports: the failure cannot be told from this controller's own isolation",
            5,
            1
        )
    );
    s.commit(11_000, &w);
    s.hb(11_100, lost("r2", 1100));
    s.hb(11_100, lost("r3", 1100));
    s.core.standby_hears = 3;
    let w = s.tick(11_100).expect("refusal");
    assert_eq!(
        last(&w),
        (
            "refusal",
            "this controller hears 2 members, a standby hears 3: not deciding a failover",
            5,
            1
        )
    );
    s.commit(11_100, &w);
    assert_eq!(s.tick(11_200), None);
}

#[test]
fn no_eligible_candidate_reports_refuses_before_fencing() {
    let mut s = steady_sim();
    // The only sync member is silent; r3 reports but may lack acknowledged writes.
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("refusal");
    assert_eq!(
        last(&w),
        (
            "refusal",
            "no eligible candidate reports (blocked: waiting for a sync member or the old leader)",
            5,
            1
        )
    );
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
    assert_eq!(
        last(&w),
        (
            "refusal",
            "etcd state behind replicas: the state says epoch 5 but r3 persisted epoch 7; \
             refusing to act (restore the state or run recovery)",
            5,
            1
        )
    );
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
        last(&w).1,
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
            assert_ne!(last(&w).0, "sync_drop", "at {t}: {w:?}");
            assert_ne!(last(&w).0, "sync_add", "at {t}: {w:?}");
            s.commit(t, &w);
        }
    }
    // A standby that hears more members also holds the active one back.
    let mut s = steady_sim();
    s.core.standby_hears = 3;
    s.hb(12_000, leader_hb());
    if let Some(w) = s.tick(12_000) {
        assert_ne!(last(&w).0, "sync_drop", "{w:?}");
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
    assert_eq!(
        last(&w),
        (
            "blocked",
            "blocked: no member of the recorded sync set (nor the previous leader) reports after fencing",
            6,
            1
        )
    );
    assert_eq!(s.commit(11_100, &w), 11);
    for t in [11_200, 11_300, 12_000] {
        assert_eq!(s.tick(t), None, "journaled once ({t})");
    }

    // `failover --to` continues it at the same epoch, within the rules.
    let n = at(12_000);
    assert_eq!(
        s.core.failover(n, id("r2"), true, false, "op-9".into()),
        Err(op_error(
            400,
            "ineligible",
            "r2 is unclean: it may lack acknowledged writes; only allow_data_loss promotes it"
        ))
    );
    assert_eq!(
        s.core.failover(n, id("r3"), false, false, "op-9".into()),
        Err(op_error(
            409,
            "may_lose_writes",
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
                kind: "failover:r3:1:0".into(),
                deadline_ms: UNIX0 + 12_000 + 60_000,
                timeout_ms: Some(60_000),
            }),
            ..st.clone()
        })
    );
    assert_eq!(
        last(&w),
        (
            "manual_failover",
            "failover op-9 to r3 requested (continuing the promotion at epoch 6)",
            6,
            1
        )
    );
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
    assert_eq!(
        last(&w),
        (
            "promoted",
            "promoted r3 at epoch 6 (log end 5/100, lossy); sync set [r2]",
            6,
            1
        )
    );
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
    assert_eq!(
        last(&w),
        (
            "blocked",
            "blocked: no member has reported its log at the new epoch",
            6,
            1
        )
    );
    s.commit(12_000, &w);
    assert_eq!(s.tick(12_500), None);
}

// ----- switchover ------------------------------------------------------------------------------

#[test]
fn switchover_refusals() {
    let mut s = steady_sim();
    let n = at(10_050);
    let sw = |s: &mut Sim, to: Option<&str>| s.core.switchover(n, to.map(id), 5000, "op-1".into());
    assert_eq!(
        sw(&mut s, Some("r3")),
        Err(op_error(
            400,
            "ineligible",
            "r3 is not in the sync set, so it may lack acknowledged writes; switch over to a \
             sync member, or use `failover --to r3 --force` and accept the possible loss"
        ))
    );
    assert_eq!(
        sw(&mut s, Some("r1")),
        Err(op_error(400, "ineligible", "r1 already leads"))
    );
    assert_eq!(
        sw(&mut s, Some("r9")),
        Err(op_error(400, "ineligible", "r9 is not a member"))
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
        Err(op_error(400, "ineligible", "r2 is unclean"))
    );
    assert_eq!(
        sw(&mut s, None),
        Err(op_error(
            409,
            "no_candidate",
            "no member can take over without losing writes"
        ))
    );
    // r2 stops reporting.
    let late = at(11_050);
    s.hb(11_000, leader_hb());
    assert_eq!(
        s.core.switchover(late, Some(id("r2")), 5000, "op-1".into()),
        Err(op_error(400, "ineligible", "r2 is not reporting"))
    );
    // The leader stops reporting: a failover is needed, not a switchover.
    assert_eq!(
        s.core
            .switchover(at(12_000), Some(id("r2")), 5000, "op-1".into()),
        Err(op_error(
            409,
            "leader_unreachable",
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
            kind: "switchover:r2".into(),
            deadline_ms: UNIX0 + 10_050 + 5000,
            timeout_ms: Some(5000),
        }),
        ..steady()
    };
    assert_eq!(w.state, Some(switching.clone()));
    assert_eq!(
        last(&w),
        (
            "switchover",
            "switchover op-1 to r2 requested: r1 stops writes until r2 holds its final LSN",
            5,
            1
        )
    );
    assert_eq!(s.commit(10_050, &w), 11);

    // A second operation meets the running one.
    let running = op_error(
        409,
        "operation_running",
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
    assert_eq!(
        last(&w),
        (
            "switchover",
            "switchover op-1: r2 leads epoch 6 (it holds the old leader's final LSN 121)",
            6,
            1
        )
    );
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
    let mut s = steady_sim();
    let w = s
        .core
        .switchover(at(10_050), Some(id("r2")), 5000, "op-1".into())
        .expect("switchover");
    s.commit(10_050, &w);
    s.hb(
        10_100,
        Heartbeat {
            applied_rev: 11,
            lease_left_ms: Some(0),
            ..leader_hb()
        },
    );
    s.hb(10_100, follower("r2"));
    let w = s.tick(10_100).expect("epoch write");
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
    let mut s = steady_sim();
    let w = s
        .core
        .switchover(at(10_050), Some(id("r2")), 5000, "op-1".into())
        .expect("switchover");
    s.commit(10_050, &w);
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
    assert_eq!(
        last(&w),
        (
            "abort",
            "switchover op-1 aborted: the target did not catch up before the deadline; the leader keeps leading",
            5,
            1
        )
    );
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
        Err(op_error(400, "ineligible", "r9 is not a member"))
    );
    assert_eq!(
        s.core.failover(n, id("r2"), true, false, "op-1".into()),
        Err(op_error(
            400,
            "ineligible",
            "r2 is unclean: it may lack acknowledged writes; only allow_data_loss promotes it"
        ))
    );
    assert_eq!(
        s.core.failover(n, id("r3"), false, false, "op-1".into()),
        Err(op_error(
            409,
            "may_lose_writes",
            "r3 is not in the sync set and may lack acknowledged writes: the loss is unknown (it is not reporting); pass force to accept"
        ))
    );
    s.hb(10_040, follower("r3"));
    assert_eq!(
        s.core.failover(n, id("r3"), false, false, "op-1".into()),
        Err(op_error(
            409,
            "may_lose_writes",
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
        w.state.and_then(|s| s.op).map(|o| o.kind),
        Some("failover:r2:0:1".into())
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
            kind: "failover:r3:1:0".into(),
            deadline_ms: UNIX0 + 10_050 + 60_000,
            timeout_ms: Some(60_000),
        }),
        ..steady()
    };
    assert_eq!(w.state, Some(promoting.clone()));
    assert_eq!(
        last(&w),
        (
            "manual_failover",
            "manual failover op-2 to r3; promoting at epoch 6",
            6,
            1
        )
    );
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
    assert_eq!(
        last(&w),
        (
            "promoted",
            "promoted r3 at epoch 6 (log end 5/90, lossy); sync set [r2]",
            6,
            1
        )
    );
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
    assert_eq!(
        last(&w).1,
        "manual failover op-1 to r2; promoting at epoch 6"
    );
    s.commit(10_050, &w);
    let d = s.hb(10_100, leader_hb());
    assert_eq!((d.role, d.leader), (Some(Role::Fenced), None));
    s.hb(10_150, fenced("r1", 6, (5, 105)));
    s.hb(10_150, fenced("r2", 6, (5, 100)));
    s.hb(10_150, fenced("r3", 6, (5, 100)));
    let w = s.tick(10_150).expect("promotion");
    let st = w.state.clone().expect("state");
    // The old leader holds all of r2's log (same last epoch, longer): it joins the sync set
    // (DESIGN.md §4's post-promotion rule) and will cut its unacknowledged tail when following.
    assert_eq!(
        (
            st.leader,
            st.sync_set
                .iter()
                .map(|m| m.id.0.as_str())
                .collect::<Vec<_>>()
        ),
        (Some(record("r2")), vec!["r1"])
    );
    assert_eq!(
        last(&w),
        (
            "promoted",
            "promoted r2 at epoch 6 (log end 5/100); sync set [r1]",
            6,
            1
        )
    );
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
    assert_eq!(
        last(&w),
        (
            "blocked",
            "blocked: failover target r3 has not reported at the new epoch",
            6,
            1
        )
    );
    s.commit(10_450, &w);
    assert_eq!(
        s.core
            .failover(at(10_500), id("r2"), false, false, "op-4".into()),
        Err(op_error(
            409,
            "operation_running",
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
    assert_eq!(
        last(&w),
        (
            "abort",
            "operation op-3 (failover:r3:1:0) expired before its target was promoted; \
             the promotion at epoch 6 continues under the automatic rules",
            6,
            1
        )
    );
    s.commit(deadline + 1, &w);
    // The automatic rules: r1 (previous leader, same data) and r2 (sync) tie; lower id.
    let w = s.tick(deadline + 1).expect("promotion");
    assert_eq!(
        last(&w).1,
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
    assert_eq!(
        last(&w),
        (
            "pause",
            "automatic failover paused: failover is manual only",
            5,
            1
        )
    );
    assert_eq!(
        s.core.set_control(at(10_100), Control::Auto),
        Err(op_error(
            503,
            "busy",
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
    assert_eq!(last(&w), ("resume", "automatic failover resumed", 5, 1));
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

#[test]
fn init_waits_for_every_member_and_empty_logs() {
    let mut c = cfg();
    c.members = vec![member("r1", 0), member("r2", 5), member("r3", 5)];
    let mut s = Sim::absent(c.clone(), 0);
    let empty = |who: &str, epoch: u64| Heartbeat {
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
    };
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
            409,
            "members_missing",
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
            409,
            "not_empty",
            "members with data refuse a fresh init: r2"
        ))
    );
    s.hb(1_100, empty("r2", 2));
    s.hb(1_100, empty("r3", 0));
    // r1 last reported at 1 000: missing again at 2 000 (a failure timeout later).
    assert_eq!(
        s.core.init(at(2_000)),
        Err(op_error(
            409,
            "members_missing",
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
            409,
            "initialized",
            "the cluster already has a state"
        ))
    );
}

// ----- sync-set maintenance --------------------------------------------------------------------

/// r2 (sync) stops reporting after 10 000; r1 (and r3 when `r3_reports`) go on until 11 000,
/// when r2 has been silent, and unacknowledged, for a failure timeout.
fn sync_member_lost(cfg: ClusterCfg, r3_reports: bool) -> Sim {
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
    assert_eq!(
        last(&w),
        (
            "sync_add",
            "replacing r2 in the sync set: adding r3 first",
            5,
            1
        )
    );
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
    assert_eq!(
        last(&w),
        ("sync_add", "r3 joins the sync set, replacing r2", 5, 1)
    );
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
    assert_eq!(last(&w).1, "replacing r2 in the sync set: adding r3 first");
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
        let msg = format!(
            "dropping r2 from the sync set: unreachable and no follower can replace it{tail}"
        );
        assert_eq!(last(&w), ("sync_drop", msg.as_str(), 5, 1));
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
    assert_eq!(
        last(&w),
        (
            "sync_drop",
            "dropping r2 from the sync set: unreachable and not replaced within sync_wait_ms",
            5,
            1
        )
    );
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
    assert_eq!(last(&w), ("sync_add", "adding r2 to the sync set", 5, 1));
    s.commit(10_000, &w);
    s.hb(11_000, leader_hb());
    let w = s.tick(11_000).expect("drop");
    assert_eq!(w.state, Some(st));
    assert_eq!(
        last(&w),
        ("sync_drop", "r2 stopped reporting while being added", 5, 1)
    );
}

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
        503,
        "not_active",
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
    assert_eq!(
        last(&w),
        (
            "failover",
            format!("{FAILED}; promoting at epoch 6").as_str(),
            6,
            1
        )
    );

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
    assert_eq!(last(&w).0, "init");
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
    assert_eq!(
        last(&w),
        (
            "refusal",
            "leader unreachable from controller: followers r2, r3 still receive from it",
            5,
            1
        )
    );
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
    assert_eq!(
        last(&w),
        (
            "restart",
            "leader r1 restarted (new boot or data directory): a new epoch is needed; promoting at epoch 6",
            6,
            1
        )
    );
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
            409,
            "members_missing",
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
    assert_eq!(last(&w), ("sync_add", "adding r3 to the sync set", 5, 1));
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
    assert_eq!(
        last(&w),
        (
            "sync_drop",
            "r3 did not catch up within sync_wait_ms; adding it is retried later",
            5,
            1
        )
    );
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
    assert_eq!(last(&w), ("sync_add", "adding r3 to the sync set", 5, 1));
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
    assert_eq!(last(&w), ("sync_add", "adding r2 to the sync set", 5, 1));
}

/// A switchover recorded in the state with its op, running until well after the tests end.
fn switching(to: &str, op_id: &str) -> ClusterState {
    ClusterState {
        phase: Phase::Switching,
        op: Some(OpRecord {
            id: op_id.into(),
            kind: format!("switchover:{to}"),
            deadline_ms: UNIX0 + 100_000,
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
    assert_eq!(
        last(&w),
        (
            "abort",
            "switchover op-1 aborted: the active controller changed during the switchover",
            5,
            1
        )
    );
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
    assert_eq!(
        last(&w),
        (
            "switchover",
            "switchover op-2: r2 leads epoch 6 (it holds the old leader's final LSN 100)",
            6,
            1
        )
    );
}

/// A re-election with a new term while in `switching` (this controller's own switchover
/// included) aborts it too.
#[test]
fn new_term_during_own_switchover_aborts_it() {
    let mut s = steady_sim();
    let w = s
        .core
        .switchover(at(10_050), Some(id("r2")), 5000, "op-1".into())
        .expect("switchover");
    s.commit(10_050, &w);
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
    let mut s = steady_sim();
    let w = s
        .core
        .switchover(at(10_050), Some(id("r2")), 5000, "op-1".into())
        .expect("switchover");
    s.commit(10_050, &w);
    // r1 (last heard at 10 000) falls silent.
    s.hb(10_999, lost("r2", 999));
    s.hb(10_999, lost("r3", 999));
    assert_eq!(s.tick(10_999), None, "not failed yet");
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("abort");
    assert_eq!(w.state, Some(steady()));
    let msg =
        format!("switchover op-1 aborted: the leader failed during the switchover ({FAILED})");
    assert_eq!(last(&w), ("abort", msg.as_str(), 5, 1));
    s.commit(11_000, &w);
    // Normal detection takes over.
    let w = s.tick(11_000).expect("failover");
    assert_eq!(last(&w).0, "failover");
}

#[test]
fn leader_restarting_during_a_switchover_aborts_it() {
    let mut s = steady_sim();
    let w = s
        .core
        .switchover(at(10_050), Some(id("r2")), 5000, "op-1".into())
        .expect("switchover");
    s.commit(10_050, &w);
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
    assert_eq!(
        last(&w),
        (
            "abort",
            "switchover op-1 aborted: the leader restarted during the switchover",
            5,
            1
        )
    );
    s.commit(10_300, &w);
    let w = s.tick(10_300).expect("restart");
    assert_eq!(last(&w).0, "restart");
}

/// Regression: an epoch write of unknown outcome kept the no-wait flag, so if it had in fact
/// committed the new leader started at once, though nothing showed its predecessor gave up.
#[test]
fn unknown_switchover_write_lets_nobody_skip_the_wait() {
    let mut s = steady_sim();
    let w = s
        .core
        .switchover(at(10_050), Some(id("r2")), 5000, "op-1".into())
        .expect("switchover");
    s.commit(10_050, &w);
    s.hb(
        10_100,
        Heartbeat {
            applied_rev: 11,
            lease_left_ms: Some(0),
            ..leader_hb()
        },
    );
    s.hb(10_100, follower("r2"));
    let w = s.tick(10_100).expect("epoch write");
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
    assert_eq!(
        last(&w),
        (
            "promoted",
            "promoted r2 at epoch 6 (log end 5/100); sync set []",
            6,
            1
        )
    );
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
        .map(|o| o.deadline_ms);
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
    assert_eq!(last(&w).0, "abort");
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
    assert_eq!(
        last(&w),
        (
            "restart",
            "leader r1 reports role none for 1000 ms: a new epoch is needed; promoting at epoch 6",
            6,
            1
        )
    );
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
    assert_eq!(last(&w).0, "restart");
    assert!(
        last(&w)
            .1
            .starts_with("leader r1 reports no lease for 1000 ms"),
        "{}",
        last(&w).1
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
        last(&w).1.starts_with("member r3 (data 00000000000000000000000000001092, at r3.local:7000) reports a data directory of another deployment"),
        "{}",
        last(&w).1
    );
    s.commit(10_200, &w);
    assert_eq!(
        s.tick(10_300),
        None,
        "once per episode; not 'etcd state behind replicas'"
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
            assert!(!last(&w).1.contains("behind"), "{}", last(&w).1);
            s.commit(t, &w);
        }
    }
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
            journaled.push(last(&w).1.to_string());
            s.commit(t, &w);
        }
    }
    assert_eq!(journaled.len(), 1, "{journaled:?}");
    assert!(
        journaled[0].starts_with("two processes claim member r1"),
        "{journaled:?}"
    );
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
            journaled.push(last(&w).1.to_string());
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
            r.map(|_| ()).map_err(|e| e.error),
            Err("state_behind".to_string())
        );
    }
    assert_eq!(
        s.core.recover(at(10_500)).map(|_| ()).map_err(|e| e.error),
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
    assert_eq!(last(&w).0, "recover");
    s.commit(10_500, &w);
    assert_eq!(
        s.core
            .failover(at(10_600), id("r2"), false, false, "op-3".into())
            .map(|_| ())
            .map_err(|e| e.error),
        Err("may_lose_writes".to_string()),
        "without force the possible loss is stated"
    );
    // The state is no longer behind: it is not recover's business any more.
    assert_eq!(
        s.core.recover(at(10_600)).map(|_| ()).map_err(|e| e.error),
        Err("not_behind".to_string())
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
    assert_eq!(last(&w).0, "sync_drop", "r3 is not added: {}", last(&w).1);
}

/// Item 9: an operation's timeout counts on the controller's monotonic clock, not the wall
/// clock: a wall-clock step of an hour does not expire a switchover.
#[test]
fn operation_timeout_ignores_wall_clock_steps() {
    let mut s = steady_sim();
    let w = s
        .core
        .switchover(at(10_050), Some(id("r2")), 5000, "op-1".into())
        .expect("switchover");
    s.commit(10_050, &w);
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

// ----- the journal's writes and the budget key ---------------------------------------------------

/// A refusal that keeps coming back rewrites its entry at most once per
/// `journal::COALESCE_WRITE_MS`; repeats in between are counted in memory and written with the
/// next entry (etcd must not take a write per repeat).
#[test]
fn repeated_refusal_rewrites_its_entry_at_most_every_10_s_and_the_next_entry_flushes_the_count() {
    let msg = "leader unreachable from controller: followers r2 still receive from it";
    let mut s = steady_sim();
    // The leader (and both followers) heard at `h`, then the refusal is back at `h + 1000`.
    let cycle = |s: &mut Sim, h: u64| {
        for hb in [leader_hb(), follower("r2"), follower("r3")] {
            s.hb(h, hb);
        }
        assert_eq!(s.tick(h), None);
        s.hb(h + 1000, lost("r2", 20));
        s.hb(h + 1000, lost("r3", 1000));
        s.tick(h + 1000)
    };
    s.hb(11_000, lost("r2", 20));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("the refusal");
    assert_eq!(
        (w.journal.len(), w.journal[0].seq, w.journal_after),
        (1, 1, 0)
    );
    s.commit(11_000, &w);
    // The first repeat rewrites entry 1.
    let w = cycle(&mut s, 11_200).expect("a rewrite");
    assert_eq!(last(&w), ("refusal", msg, 5, 2));
    assert_eq!(
        (w.journal.len(), w.journal[0].seq, w.journal_after),
        (1, 1, 1)
    );
    s.commit(12_200, &w);
    // Within 10 s of that rewrite: counted, not written.
    assert_eq!(cycle(&mut s, 12_300), None);
    assert_eq!(cycle(&mut s, 13_400), None);
    // 10 s after the rewrite: written again, with the repeats counted meanwhile.
    let w = cycle(&mut s, 21_300).expect("a rewrite");
    assert_eq!(w.journal.len(), 1);
    assert_eq!(last(&w), ("refusal", msg, 5, 5));
    assert_eq!(w.journal[0].last_unix_ms, Some(UNIX0 + 22_300));
    s.commit(22_300, &w);
    assert_eq!(cycle(&mut s, 22_400), None);
    // The next entry carries the count of entry 1 along.
    let w = s
        .core
        .set_control(at(23_500), Control::Manual)
        .expect("pause");
    s.check_write(&w);
    let got: Vec<(u64, &str, u64)> = w
        .journal
        .iter()
        .map(|e| (e.seq, e.kind.as_str(), e.count))
        .collect();
    assert_eq!(got, vec![(1, "refusal", 6), (2, "pause", 1)]);
    assert_eq!(w.journal_after, 1);
    s.commit(23_500, &w);
    assert_eq!(s.core.journal.last().map(|e| e.seq), Some(2));
}

/// The anti-flapping budget counts the failovers key the runtime read, not the journal's tail,
/// and an automatic failover writes the key with itself added and the expired ones dropped.
#[test]
fn failover_budget_comes_from_its_own_key_and_a_failover_rewrites_it() {
    let mut s = steady_sim();
    let recent = vec![UNIX0 + 5_000, UNIX0 + 6_000, UNIX0 + 7_000];
    s.core.on_observed(
        at(10_500),
        Observed::Present {
            state: steady(),
            rev: REV0,
        },
        journal::Tail {
            entries: vec![],
            failovers: recent,
        },
    );
    assert_eq!(s.failovers(10_500), 3);
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("refusal");
    assert!(
        last(&w).1.starts_with("failover budget exhausted: 3 "),
        "{}",
        last(&w).1
    );
    assert_eq!(w.failovers, None, "a refusal leaves the key alone");

    // One failover older than an hour and one recent: room for one more.
    let mut s = steady_sim();
    let old = UNIX0 + 10_500 - journal::HOUR_MS;
    s.core.on_observed(
        at(10_500),
        Observed::Present {
            state: steady(),
            rev: REV0,
        },
        journal::Tail {
            entries: vec![],
            failovers: vec![old, UNIX0 + 7_000],
        },
    );
    assert_eq!(s.failovers(10_500), 1);
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("failover");
    assert_eq!(last(&w).0, "failover");
    assert_eq!(w.failovers, Some(vec![UNIX0 + 7_000, UNIX0 + 11_000]));
    s.commit(11_000, &w);
    assert_eq!(s.failovers(11_000), 2);
    // The next step of the promotion leaves the key alone.
    assert_eq!(
        s.tick(11_050).and_then(|w| w.failovers),
        None,
        "only the failover write touches the key"
    );
}
