//! The harness of the core tests: identities, heartbeats and states to feed the core, and
//! `Sim`, which plays the runtime (commits writes, moves revisions) and checks invariants
//! after every step.

pub use baton_common::directive::{
    Directive, Heartbeat, LeaderRef, Member, MemberRef, Mode, ReportedRole, Role, WaitInfo,
};
pub use baton_common::{BootId, DataId, Epoch, Lsn, NodeId};
pub use baton_controller::core::{
    ClusterCore, ClusterParams, ErrorCode, Now, Observed, OpError, Write, WriteOutcome,
};
pub use baton_controller::journal::{self, Entry, Kind};
pub use baton_controller::state::{ClusterState, Control, LeaderRecord, Op, OpRecord, Phase};
pub use std::collections::BTreeMap;

pub const FT: u64 = 1000;
pub const HB: u64 = 100;
pub const LEASE: u64 = 800;
pub const SYNC_WAIT: u64 = 2000;
/// `ceil(LEASE·(1+ρ)/(1−ρ)) + HB` with ρ = 0.01: how long after the last grant to the old epoch
/// a new leader may start.
pub const WAIT: u64 = 817 + HB;
pub const TERM: u64 = 42;
pub const ADDR: &str = "c1.local:7100";
pub const UNIX0: u64 = 1_700_000_000_000;
/// The revision of the steady state every scenario starts from.
pub const REV0: u64 = 10;

// ----- identities and inputs -------------------------------------------------------------------

pub fn id(s: &str) -> NodeId {
    NodeId(s.into())
}

pub fn data(s: &str) -> DataId {
    DataId(s.bytes().map(u128::from).sum::<u128>() + 1)
}

pub fn boot(s: &str) -> BootId {
    BootId(s.bytes().map(u128::from).sum::<u128>() + 100)
}

/// The boot id of a member's second process run.
pub fn boot2(s: &str) -> BootId {
    BootId(s.bytes().map(u128::from).sum::<u128>() + 200)
}

pub fn addr(s: &str) -> String {
    format!("{s}.local:7000")
}

pub fn at(ms: u64) -> Now {
    Now {
        ms,
        unix_ms: UNIX0 + ms,
    }
}

pub fn mref(s: &str) -> MemberRef {
    MemberRef {
        id: id(s),
        data_id: data(s),
    }
}

pub fn record(s: &str) -> LeaderRecord {
    LeaderRecord {
        id: id(s),
        data_id: data(s),
        boot_id: boot(s),
    }
}

pub fn lref(s: &str, b: BootId) -> LeaderRef {
    LeaderRef {
        id: id(s),
        addr: addr(s),
        boot_id: b,
        data_id: data(s),
    }
}

pub fn member(s: &str, priority: i32) -> Member {
    Member {
        id: id(s),
        addr: addr(s),
        priority,
        no_failover: false,
    }
}

pub fn cfg() -> ClusterParams {
    ClusterParams {
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
pub fn steady() -> ClusterState {
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
pub fn follower(who: &str) -> Heartbeat {
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
        disk_full: false,
        degraded_for_ms: 0,
        on_promises: false,
        log_start_lsn: Lsn(0),
        log_bytes: 0,
        catchup: None,
    }
}

/// A follower that has had nothing from the leader for `since` ms.
pub fn lost(who: &str, since: u64) -> Heartbeat {
    Heartbeat {
        since_leader_ms: Some(since),
        ..follower(who)
    }
}

/// A member's report after it persisted `epoch` on a `fenced` directive.
pub fn fenced(who: &str, epoch: u64, end: (u64, u64)) -> Heartbeat {
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

pub fn wait_info(who: &str, since_lsn: u64, flushed: u64, last_ack_ms: u64) -> WaitInfo {
    WaitInfo {
        id: id(who),
        data_id: data(who),
        since_lsn: Lsn(since_lsn),
        flushed_lsn: Lsn(flushed),
        last_ack_ms,
        owed_ms: 0,
    }
}

/// r1 leading epoch 5 with a lease, waiting for r2 (acknowledged 5 ms ago).
pub fn leader_hb() -> Heartbeat {
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

pub fn entry(kind: &str, message: &str, epoch: u64, at_unix_ms: u64) -> Entry {
    Entry {
        seq: 0,
        at_unix_ms,
        last_unix_ms: None,
        kind: kind.into(),
        message: message.into(),
        epoch,
        inputs: serde_json::Value::Null,
        count: 1,
        reason: String::new(),
    }
}

/// The directive every declared member of the steady state gets, before role and lease.
pub fn base(epoch: u64, rev: u64, state: &ClusterState) -> Directive {
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
        promises_void: false,
        mode: state.mode,
        strict: false,
        lossy: false,
        cluster_id: 0,
    }
}

pub fn op_error(code: ErrorCode, message: &str) -> OpError {
    OpError {
        code,
        message: message.into(),
    }
}

// ----- the runtime, simulated ------------------------------------------------------------------

pub struct Sim {
    pub core: ClusterCore,
    /// etcd's revision counter.
    pub etcd_rev: u64,
    /// Who was directed to lead each epoch (I1 from the controller's side: one run per epoch).
    pub leaders: BTreeMap<Epoch, (NodeId, BootId)>,
    /// The highest epoch a directive carried (directives never go back).
    pub directed: Epoch,
}

impl Sim {
    /// An active controller (since `active_at`) that has read `state` at [`REV0`].
    pub fn active(
        cfg: ClusterParams,
        state: ClusterState,
        journal: Vec<Entry>,
        active_at: u64,
    ) -> Sim {
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
    pub fn absent(cfg: ClusterParams, active_at: u64) -> Sim {
        let mut core = ClusterCore::new(cfg);
        core.on_election(at(active_at), Some(TERM), Some(ADDR.into()));
        core.on_observed(at(active_at), Observed::Absent, vec![]);
        Sim::wrap(core)
    }

    pub fn wrap(core: ClusterCore) -> Sim {
        Sim {
            core,
            etcd_rev: REV0,
            leaders: BTreeMap::new(),
            directed: Epoch(0),
        }
    }

    pub fn observed(&self) -> Option<(ClusterState, u64)> {
        match &self.core.observed {
            Observed::Present { state, rev } => Some((state.clone(), *rev)),
            _ => None,
        }
    }

    pub fn state(&self) -> ClusterState {
        self.observed().expect("state observed").0
    }

    pub fn rev(&self) -> u64 {
        self.observed().map_or(0, |(_, r)| r)
    }

    pub fn hb(&mut self, t: u64, hb: Heartbeat) -> Directive {
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

    pub fn tick(&mut self, t: u64) -> Option<Write> {
        let w = self.core.tick(at(t));
        if let Some(w) = &w {
            self.check_write(w);
        }
        w
    }

    /// Checks a write handed out by the core against the state it was derived from.
    pub fn check_write(&self, w: &Write) {
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
    pub fn commit(&mut self, t: u64, w: &Write) -> u64 {
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

    pub fn tick_commit(&mut self, t: u64) -> Write {
        let w = self.tick(t).expect("a write");
        self.commit(t, &w);
        w
    }

    pub fn failovers(&self, t: u64) -> usize {
        self.core.failovers_in_last_hour(at(t))
    }
}

/// The entry a write adds: (kind, epoch, count).
pub fn last(w: &Write) -> (Kind, u64, u64) {
    let e = w.journal.last().expect("a journal entry");
    (e.kind.clone(), e.epoch, e.count)
}

/// The message of the entry a write adds (asserted only where the wording is the point).
pub fn says(w: &Write) -> &str {
    w.journal.last().map_or("", |e| e.message.as_str())
}

/// The entry a write adds names every one of `ids` (a refusal must say whom it concerns).
pub fn names(w: &Write, ids: &[&str]) {
    let m = says(w);
    for i in ids {
        assert!(
            m.split(|c: char| !c.is_alphanumeric() && c != '_' && c != '-')
                .any(|word| word == *i),
            "the entry does not name {i}: {m}"
        );
    }
}

/// Steady cluster, controller active since 0; at 10 000 all three report (r1 granted a lease).
pub fn steady_sim() -> Sim {
    let mut s = Sim::active(cfg(), steady(), vec![], 0);
    s.hb(10_000, leader_hb());
    s.hb(10_000, follower("r2"));
    s.hb(10_000, follower("r3"));
    s
}

/// [`steady_sim`] with `switchover --to r2` asked at 10 050 and its first write committed.
pub fn switching_to_r2() -> Sim {
    let mut s = steady_sim();
    let w = s
        .core
        .switchover(at(10_050), Some(id("r2")), 5000, "op-1".into())
        .expect("switchover");
    s.commit(10_050, &w);
    s
}

impl Sim {
    /// In a switchover to r2 ([`switching_to_r2`]): at 10 100 r1 reports its lease given up and
    /// r2 caught up; the tick's write (the new epoch) is returned, not committed.
    pub fn switchover_epoch_write(&mut self) -> Write {
        self.hb(
            10_100,
            Heartbeat {
                applied_rev: 11,
                lease_left_ms: Some(0),
                ..leader_hb()
            },
        );
        self.hb(10_100, follower("r2"));
        self.tick(10_100).expect("epoch write")
    }
}

pub const FAILED: &str = "leader r1 not heard for 1000 ms; every reporting follower lost it too; \
                      candidates reporting: r2";
