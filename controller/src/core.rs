//! The controller's state machine for one cluster, pure: inputs are heartbeats, etcd
//! observations (state + journal, election), ticks and operator requests, each with `now`;
//! outputs are directives (answers to heartbeats), guarded etcd writes, and refusals.
//! The runtime (`runtime.rs`) executes the writes as etcd transactions guarded by the
//! state's revision and this controller's election key, and feeds the outcome back.
//!
//! One write is in flight at a time; an unknown outcome is resolved by re-reading the state
//! before anything else is decided. Nothing here reads a clock or touches the network.

use crate::decide::{self, Choice, Fenced, Heard, LeaderHealth};
use crate::journal::{self, Entry};
use crate::state::{ClusterState, Control, LeaderRecord, OpRecord, Phase};
use baton_common::directive::{
    Directive, Heartbeat, LeaderRef, Member, MemberRef, Mode, ReportedRole, Role,
};
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId};
use serde::Serialize;
use std::collections::BTreeMap;

/// Tunables of one cluster (from the controller's config).
#[derive(Clone, Debug)]
pub struct ClusterCfg {
    pub name: String,
    pub members: Vec<Member>,
    pub mode: Mode,
    pub sync_size: usize,
    pub strict: bool,
    pub heartbeat_interval_ms: u64,
    pub failure_timeout_ms: u64,
    pub lease_ms: u64,
    pub sync_wait_ms: u64,
    pub drift: f64,
    pub max_lag_on_failover: u64,
    pub max_failovers_per_hour: usize,
}

/// Clock readings that come with every input.
#[derive(Clone, Copy, Debug, Default)]
pub struct Now {
    /// Monotonic (CLOCK_BOOTTIME) milliseconds: all timing.
    pub ms: u64,
    /// Wall clock, for journal timestamps only.
    pub unix_ms: u64,
}

/// A write for the runtime: the new state (None: unchanged) and the journal entries that explain
/// it, in one transaction guarded by `expect_rev` (0: the state key must not exist), the
/// election, and `journal_after`.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub expect_rev: u64,
    pub state: Option<ClusterState>,
    /// Journal entries to write, each under its own key (its `seq`), oldest first: the new entry,
    /// or the last one rewritten with a higher count (preceded by the last one when repeats of
    /// it were counted in memory).
    pub journal: Vec<Entry>,
    /// The newest journal seq known when the write was made: the transaction also requires that
    /// no entry above it exists, so nobody's entry is overwritten.
    pub journal_after: u64,
    /// The new anti-flapping budget key (Unix ms of the automatic failovers of the last hour),
    /// when this write starts an automatic failover.
    pub failovers: Option<Vec<u64>>,
    /// What the write is for (logs).
    pub why: String,
}

/// How a write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed at this revision of the state key.
    Committed { rev: u64 },
    /// The guard failed (someone else wrote, or this controller lost the election).
    Rejected,
    /// Unknown (timeout, connection loss): re-read before deciding anything.
    Unknown,
}

/// Why an operator request was refused; `status` is the HTTP status to answer with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpError {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    pub message: String,
}

fn op_err(status: u16, error: &str, message: impl Into<String>) -> OpError {
    OpError {
        status,
        error: error.into(),
        message: message.into(),
    }
}

/// What the cluster state looks like from here.
// One value lives per cluster; boxing the state would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// Not read yet (or being re-read after an unknown outcome).
    Unknown,
    /// No state key: the cluster was never initialized.
    Absent,
    Present {
        state: ClusterState,
        rev: u64,
    },
}

/// An automatic-failover dry run (DESIGN.md §7 `dry-run`).
#[derive(Clone, Debug, Serialize)]
pub struct DryRun {
    pub leader_health: String,
    pub would_fail_over: bool,
    pub candidate: Option<NodeId>,
    pub expected_loss_records: Option<u64>,
    pub blocking: Vec<String>,
}

/// The per-cluster controller core.
pub struct ClusterCore {
    pub cfg: ClusterCfg,
    /// `Some(term)` while this controller is active (term: its election key's create revision).
    term: Option<u64>,
    /// CLOCK_BOOTTIME ms until which this controller's etcd lease is certainly alive; past it
    /// the controller acts as a standby (no role, no lease granted), whatever `term` says.
    valid_until_ms: u64,
    /// The etcd lease of the runtime's session (`None`: no session or a runtime that does not
    /// say; then any term counts as its own).
    session_lease: Option<i64>,
    /// The session lease `term` was won under. A term is trusted only within the window of
    /// that lease: once the session holds another lease (the old one lost and re-granted), the
    /// old term is not trusted until a campaign under the new lease confirms one.
    term_lease: Option<i64>,
    active_since_ms: u64,
    /// The active controller's address, as far as known.
    pub active_addr: Option<String>,
    pub observed: Observed,
    /// The newest journal entries known, oldest first: as read, plus this controller's writes.
    pub journal: Vec<Entry>,
    /// The automatic failovers of the last hour (the budget key), on this controller's clock.
    budget: journal::Budget,
    /// The last entry with repeats counted in memory but not written yet (rate limit).
    unflushed: Option<Entry>,
    /// When a repeat last rewrote the last entry.
    coalesced_at_ms: Option<u64>,
    heard: BTreeMap<NodeId, Heard>,
    inflight: bool,
    /// The most members any standby reports hearing.
    pub standby_hears: usize,
    /// Last lease grant sent to a leader: (its epoch, controller time).
    last_grant: Option<(Epoch, u64)>,
    /// The last grant sent to a leader of an epoch below `last_grant`'s: once the new leader
    /// has been granted its own lease, its `start_after_ms` still counts from this one.
    grant_before: Option<(Epoch, u64)>,
    promoting_since_ms: Option<u64>,
    /// Revision at which `adding` was first seen (the add protocol's R).
    adding_rev: Option<u64>,
    adding_since_ms: Option<u64>,
    /// A new leader whose predecessor gave up its lease (switchover): no wait to start.
    no_wait_epoch: Option<Epoch>,
    /// Set at takeover; a `switching` phase found then is aborted.
    switch_takeover: bool,
    /// Members whose add was abandoned (too far behind), and until when not to retry them.
    add_backoff: BTreeMap<NodeId, u64>,
    /// Abandoned adds in a row per member: the back-off doubles with each.
    add_failures: BTreeMap<NodeId, u32>,
    /// The last refusal journaled, to journal only changes.
    last_refusal: Option<String>,
    /// The recorded leader's run and when it was first heard not leading (a role other than
    /// leader, or no lease) in the steady phase; cleared when it reports leading again.
    leader_off: Option<(BootId, u64)>,
    /// Every process run heard per member id: (boot, data, addr, first heard, last heard).
    runs: BTreeMap<NodeId, Vec<Run>>,
    /// Notices (foreign data directories, duplicated ids) seen and not journaled yet, and the
    /// ones journaled while their condition lasts (journaled once per episode).
    notices: Vec<(String, String)>,
    noticed: BTreeMap<String, u64>,
    /// The state at this rev was found behind the replicas, and why: it stays so until the
    /// state changes (`recover`), even if the replica that showed it stops reporting.
    behind: Option<(u64, String)>,
    /// The operation in the state and when this controller first saw it (monotonic): its
    /// timeout counts from there, not from a wall-clock deadline.
    op_seen: Option<(String, u64)>,
}

/// One process run of a member, as heard by this controller.
#[derive(Clone, Debug)]
struct Run {
    boot: BootId,
    data: DataId,
    addr: String,
    first_ms: u64,
    last_ms: u64,
    /// The run this one was refused against as a second claimant of the id, if it was.
    refused_against: Option<(BootId, DataId)>,
}

impl ClusterCore {
    pub fn new(cfg: ClusterCfg) -> ClusterCore {
        ClusterCore {
            cfg,
            term: None,
            valid_until_ms: u64::MAX,
            session_lease: None,
            term_lease: None,
            active_since_ms: 0,
            active_addr: None,
            observed: Observed::Unknown,
            journal: Vec::new(),
            budget: journal::Budget::default(),
            unflushed: None,
            coalesced_at_ms: None,
            heard: BTreeMap::new(),
            inflight: false,
            standby_hears: 0,
            last_grant: None,
            grant_before: None,
            promoting_since_ms: None,
            adding_rev: None,
            adding_since_ms: None,
            no_wait_epoch: None,
            add_backoff: BTreeMap::new(),
            add_failures: BTreeMap::new(),
            switch_takeover: false,
            last_refusal: None,
            leader_off: None,
            runs: BTreeMap::new(),
            notices: Vec::new(),
            noticed: BTreeMap::new(),
            behind: None,
            op_seen: None,
        }
    }

    /// Active per the election (for display); decisions use [`Self::active_at`].
    pub fn is_active(&self) -> bool {
        self.term.is_some()
    }

    /// Active, and still within the trusted window of the etcd lease its term was won under.
    pub fn active_at(&self, now: Now) -> bool {
        self.term.is_some() && self.term_lease == self.session_lease && now.ms < self.valid_until_ms
    }

    /// The runtime's session: the lease may be trusted until `ms` (CLOCK_BOOTTIME).
    pub fn set_valid_until(&mut self, ms: u64) {
        self.valid_until_ms = ms
    }

    /// The runtime's session: etcd lease `lease`, certainly alive until `valid_until_ms`
    /// (CLOCK_BOOTTIME). A term won under another lease is not trusted within this window.
    pub fn set_session(&mut self, lease: Option<i64>, valid_until_ms: u64) {
        self.session_lease = lease;
        self.valid_until_ms = if lease.is_some() { valid_until_ms } else { 0 };
    }

    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// Members heard within the failure timeout.
    pub fn hears(&self, now: Now) -> usize {
        self.heard
            .values()
            .filter(|h| now.ms.saturating_sub(h.at_ms) < self.cfg.failure_timeout_ms)
            .count()
    }

    pub fn heard(&self) -> &BTreeMap<NodeId, Heard> {
        &self.heard
    }

    /// The election changed: active with `term`, or standby (`None`).
    pub fn on_election(&mut self, now: Now, term: Option<u64>, active_addr: Option<String>) {
        if term.is_some() && self.term != term {
            // A freshly active controller decides nothing automatically before observing for a
            // failure timeout (assess_leader's Observing), and takes a restart only from a
            // heartbeat received while active (an old entry may show an old boot).
            self.active_since_ms = now.ms;
            self.switch_takeover = true;
            self.last_grant = None;
            self.grant_before = None;
            // Only a switchover this controller wrote in this term lets a leader start at once.
            self.no_wait_epoch = None;
            self.promoting_since_ms = None;
            self.adding_rev = None;
            self.last_refusal = None;
            self.inflight = false;
            self.observed = Observed::Unknown;
            self.leader_off = None;
            self.behind = None;
            self.op_seen = None;
        }
        // The campaign ran under the current session's lease.
        self.term_lease = term.and(self.session_lease);
        self.term = term;
        self.active_addr = active_addr;
    }

    /// The runtime read the state key and, with it, the journal's tail and the budget key.
    pub fn on_observed(&mut self, now: Now, observed: Observed, journal: impl Into<journal::Tail>) {
        let journal = journal.into();
        // A read that started before this controller's own write committed may arrive after it:
        // revisions only grow, so an older one is ignored.
        if let (Observed::Present { rev: new, .. }, Observed::Present { rev: cur, .. }) =
            (&observed, &self.observed)
        {
            if new < cur {
                return;
            }
        }
        if let Observed::Present { state, rev } = &observed {
            // What was heard from another deployment's directory before the state (and its
            // cluster id) was known is forgotten: `admit` refuses it from now on, and its epoch
            // must not make this state look behind.
            if state.cluster_id != 0 {
                self.heard
                    .retain(|_, h| h.hb.cluster_id == 0 || h.hb.cluster_id == state.cluster_id);
            }
            match (&state.adding, self.adding_rev) {
                (Some(_), None) => {
                    self.adding_rev = Some(*rev);
                    self.adding_since_ms = Some(now.ms);
                }
                (None, _) => {
                    self.adding_rev = None;
                    self.adding_since_ms = None;
                }
                _ => {}
            }
            if state.phase == Phase::Promoting && self.promoting_since_ms.is_none() {
                self.promoting_since_ms = Some(now.ms);
            }
            if state.phase != Phase::Promoting {
                self.promoting_since_ms = None;
            }
            if state.phase != Phase::Switching {
                self.switch_takeover = false;
            }
            match &state.op {
                Some(op) if self.op_seen.as_ref().is_none_or(|(id, _)| *id != op.id) => {
                    self.op_seen = Some((op.id.clone(), now.ms));
                }
                Some(_) => {}
                None => self.op_seen = None,
            }
        }
        self.observed = observed;
        self.budget.observe(now.ms, now.unix_ms, &journal.failovers);
        self.journal = journal.entries;
    }

    /// The outcome of the write handed out last.
    pub fn on_write(&mut self, now: Now, w: &Write, outcome: WriteOutcome) {
        self.inflight = false;
        match outcome {
            WriteOutcome::Committed { rev } => {
                let mut entries = std::mem::take(&mut self.journal);
                journal::apply(&mut entries, &w.journal);
                let failovers = w.failovers.clone().unwrap_or_else(|| self.budget.stored());
                let tail = journal::Tail { entries, failovers };
                match &w.state {
                    Some(s) => self.on_observed(
                        now,
                        Observed::Present {
                            state: s.clone(),
                            rev,
                        },
                        tail,
                    ),
                    None => self.journal = tail.entries,
                }
            }
            // Re-read before deciding anything: the runtime refreshes `observed`.
            WriteOutcome::Rejected | WriteOutcome::Unknown => {
                // A switchover epoch write that is not known to have happened lets nobody skip
                // the wait (if it did happen, the new leader merely waits out the old lease).
                if w.state.as_ref().map(|s| s.epoch) == self.no_wait_epoch {
                    self.no_wait_epoch = None;
                }
                self.observed = Observed::Unknown;
            }
        }
    }

    fn state(&self) -> Option<(&ClusterState, u64)> {
        match &self.observed {
            Observed::Present { state, rev } => Some((state, *rev)),
            _ => None,
        }
    }

    fn entry(
        &self,
        now: Now,
        kind: &str,
        epoch: Epoch,
        message: String,
        inputs: serde_json::Value,
    ) -> Entry {
        Entry {
            seq: 0,
            at_unix_ms: now.unix_ms,
            last_unix_ms: None,
            kind: kind.into(),
            message,
            epoch: epoch.0,
            inputs,
            count: 1,
        }
    }

    fn write(
        &mut self,
        now: Now,
        state: Option<ClusterState>,
        kind: &str,
        message: String,
        inputs: serde_json::Value,
    ) -> Option<Write> {
        let (cur, rev) = self
            .state()
            .map(|(s, r)| (s.clone(), r))
            .map_or((None, 0), |(s, r)| (Some(s), r));
        let epoch = state
            .as_ref()
            .or(cur.as_ref())
            .map_or(Epoch(0), |s| s.epoch);
        let mut j = self.journal.clone();
        let after = j.last().map_or(0, |e| e.seq);
        // Repeats counted in memory belong to the last entry, if it is still the newest.
        let unflushed = self.unflushed.take().filter(|u| u.seq == after);
        if let (Some(u), Some(last)) = (&unflushed, j.last_mut()) {
            *last = u.clone();
        }
        let e = self.entry(now, kind, epoch, message.clone(), inputs);
        let repeat = journal::repeats(j.last(), &e);
        if repeat
            && state.is_none()
            && self
                .coalesced_at_ms
                .is_some_and(|t| now.ms.saturating_sub(t) < journal::COALESCE_WRITE_MS)
        {
            // A repeat soon after the last rewrite: counted here, written later.
            journal::push(&mut j, e);
            self.unflushed = j.pop();
            return None;
        }
        let mut puts: Vec<Entry> = unflushed.into_iter().filter(|_| !repeat).collect();
        journal::push(&mut j, e);
        puts.extend(j.pop());
        if repeat {
            self.coalesced_at_ms = Some(now.ms);
        }
        let failovers =
            (kind == "failover").then(|| self.budget.with_failover(now.ms, now.unix_ms));
        self.inflight = true;
        if kind != "refusal" && kind != "blocked" {
            self.last_refusal = None;
        }
        Some(Write {
            expect_rev: rev,
            state,
            journal: puts,
            journal_after: after,
            failovers,
            why: message,
        })
    }

    /// Automatic failovers in the last hour (the anti-flapping budget).
    pub fn failovers_in_last_hour(&self, now: Now) -> usize {
        self.budget.count(now.ms)
    }

    /// A refusal or a blocked decision: journaled once per change of reason.
    fn refuse(&mut self, now: Now, kind: &str, message: String) -> Option<Write> {
        if self.last_refusal.as_deref() == Some(message.as_str()) || self.state().is_none() {
            return None;
        }
        self.last_refusal = Some(message.clone());
        self.write(now, None, kind, message, serde_json::Value::Null)
    }

    fn inputs(&self, now: Now) -> serde_json::Value {
        let heard: Vec<serde_json::Value> = self
            .heard
            .iter()
            .map(|(id, h)| {
                serde_json::json!({
                    "id": id, "heard_ms_ago": now.ms.saturating_sub(h.at_ms), "epoch": h.hb.epoch,
                    "role": h.hb.role, "log_end": [h.hb.log_end_epoch, h.hb.log_end_lsn],
                    "since_leader_ms": h.hb.since_leader_ms, "unclean": h.hb.unclean,
                })
            })
            .collect();
        serde_json::json!({ "heard": heard })
    }

    // ----- heartbeats and directives -------------------------------------------------------

    /// A heartbeat arrived; returns the answer.
    pub fn on_heartbeat(&mut self, now: Now, hb: Heartbeat) -> Directive {
        let id = hb.id.clone();
        let seq = hb.seq;
        let declared = self.cfg.members.iter().any(|m| m.id == id);
        let refused = if declared { self.admit(now, &hb) } else { None };
        if declared && refused.is_none() {
            self.heard.insert(
                id.clone(),
                Heard {
                    at_ms: now.ms,
                    hb: hb.clone(),
                },
            );
            self.note_leader_run(now, &hb);
            if let Some(r) = &hb.refused_peer {
                let msg = format!("{id} refused a replication peer: {r}");
                self.notice(now, format!("peer:{id}:{r}"), msg);
            }
        }
        let mut d = Directive {
            seq,
            rev: 0,
            controller_term: self.term.unwrap_or(0),
            active: self.active_at(now),
            active_controller: self.active_addr.clone(),
            epoch: Epoch(0),
            role: None,
            leader: None,
            members: self.cfg.members.clone(),
            waited: Vec::new(),
            lease_ms: 0,
            start_after_ms: 0,
            mode: self.cfg.mode,
            strict: self.cfg.strict,
            lossy: false,
            cluster_id: 0,
        };
        if refused.is_some() {
            // A foreign data directory or a second process claiming a member's id: it gets
            // nothing from this controller (an inactive answer changes nothing on a replica).
            d.active = false;
            return d;
        }
        let Some((state, rev)) = self.state().map(|(s, r)| (s.clone(), r)) else {
            // A standby, or the state is not known (yet): no role, no lease.
            if let Some((s, _)) = self.state() {
                d.epoch = s.epoch;
            }
            d.active = d.active && matches!(self.observed, Observed::Absent);
            return d;
        };
        d.epoch = state.epoch;
        d.rev = rev;
        d.members = state.members.clone();
        d.mode = state.mode;
        d.cluster_id = state.cluster_id;
        d.lossy = state.lossy || state.mode == Mode::Async;
        d.strict = state.strict.unwrap_or(self.cfg.strict);
        if !self.active_at(now) {
            return d;
        }
        if !declared {
            d.role = Some(Role::Fenced);
            return d;
        }
        if self.check_behind(&state, rev).is_some() {
            // No role and no lease from a state the replicas have moved past. The answer is an
            // inactive one: an active answer without a role would make the recorded leader
            // step down at its own (epoch, rev), and it could not lead that epoch again.
            d.active = false;
            return d;
        }
        d.waited = state.waited();
        let leader_ref = state.leader.as_ref().map(|l| LeaderRef {
            id: l.id.clone(),
            addr: state
                .member(&l.id)
                .map(|m| m.addr.clone())
                .unwrap_or_default(),
            boot_id: l.boot_id,
            data_id: l.data_id,
        });
        d.leader = leader_ref;
        if state.phase == Phase::Promoting {
            // Step 2: everyone reachable is fenced at the new epoch and reports its log end.
            d.role = Some(Role::Fenced);
            d.leader = None;
            return d;
        }
        let Some(leader) = &state.leader else {
            return d;
        };
        if leader.id == id && leader.boot_id == hb.boot_id && leader.data_id == hb.data_id {
            d.role = Some(Role::Leader);
            if state.phase == Phase::Switching {
                d.lease_ms = 0;
            } else {
                d.lease_ms = self.cfg.lease_ms;
                self.note_grant(state.epoch, now.ms);
            }
            d.start_after_ms = self.start_after(now, &state);
        } else if leader.id == id {
            // Another run or disk of the recorded leader: it waits for the new epoch.
            d.role = Some(Role::Fenced);
        } else {
            d.role = Some(Role::Follower);
        }
        d
    }

    /// Whether a declared member's heartbeat may be heard, or why not: a data directory of
    /// another deployment, or a second process claiming the id of one that is still alive.
    /// Refusals are journaled once per episode (by `tick`) and change nothing else.
    fn admit(&mut self, now: Now, hb: &Heartbeat) -> Option<String> {
        let state_id = self.state().map_or(0, |(s, _)| s.cluster_id);
        if hb.cluster != self.cfg.name {
            let msg = format!(
                "member {} reports cluster {:?} to cluster {:?}: refused (wrong cluster name in its config?)",
                hb.id, hb.cluster, self.cfg.name
            );
            return Some(self.notice(now, format!("cluster:{}:{}", hb.id, hb.cluster), msg));
        }
        if state_id != 0 && hb.cluster_id != 0 && hb.cluster_id != state_id {
            let msg = format!(
                "member {} (data {}, at {}) reports a data directory of another deployment \
                 (cluster id {:016x}, this one is {state_id:016x}): refused; it changes nothing",
                hb.id, hb.data_id, hb.addr, hb.cluster_id
            );
            return Some(self.notice(now, format!("foreign:{}:{}", hb.id, hb.data_id), msg));
        }
        // Process runs of this id: a new boot is heard only once the previous one went quiet
        // (a restart); the previous one speaking again means two processes claim the id.
        let quiet = 2 * self.cfg.heartbeat_interval_ms + 50;
        let ft = self.cfg.failure_timeout_ms;
        let runs = self.runs.entry(hb.id.clone()).or_default();
        runs.retain(|r| now.ms.saturating_sub(r.last_ms) < 10 * ft);
        let pos = match runs
            .iter()
            .position(|r| r.boot == hb.boot_id && r.data == hb.data_id)
        {
            Some(i) => {
                runs[i].last_ms = now.ms;
                runs[i].addr = hb.addr.clone();
                i
            }
            None => {
                runs.push(Run {
                    boot: hb.boot_id,
                    data: hb.data_id,
                    addr: hb.addr.clone(),
                    first_ms: now.ms,
                    last_ms: now.ms,
                    refused_against: None,
                });
                runs.len() - 1
            }
        };
        let me = runs[pos].clone();
        // A run once refused as a second claimant stays refused while the run it was refused
        // against is remembered: that one going quiet for a moment (a partition, a pause) does
        // not hand it the id. A real restart comes with a new boot.
        if let Some((ab, ad)) = me.refused_against {
            if let Some(a) = runs.iter().find(|r| r.boot == ab && r.data == ad) {
                let msg = format!(
                    "two processes claim member {}: boot {ab} at {} (heard) and boot {} at {} (refused); \
                     stop the wrong one",
                    hb.id, a.addr, me.boot, me.addr
                );
                return Some(self.notice(now, format!("dup:{}:{}", hb.id, me.boot), msg));
            }
        }
        // The run currently heard for this id (the incumbent), if another one.
        let cur = self
            .heard
            .get(&hb.id)
            .map(|h| (h.hb.boot_id, h.hb.data_id, h.at_ms))
            .filter(|(b, d, _)| (*b, *d) != (me.boot, me.data));
        let (cb, cd, cat) = cur?;
        if now.ms.saturating_sub(cat) >= quiet {
            // The incumbent went quiet: this is a restart (or a replaced disk).
            return None;
        }
        let inc = runs.iter().find(|r| r.boot == cb && r.data == cd).cloned();
        // Two runs alive at once: the incumbent was heard well after this one first spoke.
        let dup = inc
            .as_ref()
            .is_some_and(|i| i.last_ms >= me.first_ms + quiet);
        if dup {
            if let Some(r) = self.runs.get_mut(&hb.id).and_then(|runs| {
                runs.iter_mut()
                    .find(|r| r.boot == me.boot && r.data == me.data)
            }) {
                r.refused_against = Some((cb, cd));
            }
            let msg = format!(
                "two processes claim member {}: boot {} at {} (heard) and boot {} at {} (refused); \
                 stop the wrong one",
                hb.id,
                cb,
                inc.as_ref().map_or("?", |i| i.addr.as_str()),
                me.boot,
                me.addr
            );
            return Some(self.notice(now, format!("dup:{}:{}", hb.id, me.boot), msg));
        }
        Some(format!(
            "{} boot {} waits until boot {cb} is quiet",
            hb.id, me.boot
        ))
    }

    /// Queues a journal notice once per episode (`key`); returns the message.
    fn notice(&mut self, now: Now, key: String, msg: String) -> String {
        if !self.noticed.contains_key(&key) {
            self.notices.push((key.clone(), msg.clone()));
        }
        self.noticed.insert(key, now.ms);
        msg
    }

    /// Tracks whether the recorded leader's run reports leading with a lease.
    fn note_leader_run(&mut self, now: Now, hb: &Heartbeat) {
        let Some((state, _)) = self.state() else {
            return;
        };
        let Some(l) = &state.leader else {
            self.leader_off = None;
            return;
        };
        if l.id != hb.id || l.boot_id != hb.boot_id || l.data_id != hb.data_id {
            if l.id == hb.id {
                self.leader_off = None;
            }
            return;
        }
        let leading = hb.role == ReportedRole::Leader
            && (hb.lease_left_ms != Some(0) || state.phase != Phase::Steady)
            && hb.epoch == state.epoch;
        if leading {
            self.leader_off = None;
        } else if self.leader_off.is_none_or(|(b, _)| b != hb.boot_id) {
            self.leader_off = Some((hb.boot_id, now.ms));
        }
    }

    /// [`Self::state_behind`], remembered for the state's rev: the refusal is lifted only by a
    /// new state (`recover`, or another writer), not by the replica that showed it going away.
    fn check_behind(&mut self, state: &ClusterState, rev: u64) -> Option<String> {
        if let Some((r, why)) = &self.behind {
            if *r == rev {
                return Some(why.clone());
            }
        }
        let why = self.state_behind(state, rev)?;
        self.behind = Some((rev, why.clone()));
        Some(why)
    }

    /// [`Self::check_behind`] without remembering (for `&self` callers): the remembered verdict
    /// for this rev, or the one the heartbeats show now.
    fn behind_now(&self, state: &ClusterState, rev: u64) -> Option<String> {
        match &self.behind {
            Some((r, why)) if *r == rev => Some(why.clone()),
            _ => self.state_behind(state, rev),
        }
    }

    /// Why the state read from etcd is older than what the replicas already acted on (etcd
    /// restored from an old backup, or emptied and re-created), if it is. Acting on it could
    /// move epochs back or pick a second leader for the same epoch (I1), so the controller
    /// then neither decides nor grants a role or a lease.
    fn state_behind(&self, state: &ClusterState, rev: u64) -> Option<String> {
        const FIX: &str = "refusing to act (restore the state or run recovery)";
        let top = self.heard.values().max_by_key(|h| h.hb.epoch)?;
        if top.hb.epoch > state.epoch {
            return Some(format!(
                "etcd state behind replicas: the state says epoch {} but {} persisted epoch {}; {FIX}",
                state.epoch, top.hb.id, top.hb.epoch
            ));
        }
        // A replica saw a controller term above this one at the current epoch: the election
        // revisions went back (etcd restored); its directives would be ignored anyway.
        if let (Some(term), Some(h)) = (
            self.term,
            self.heard
                .values()
                .filter(|h| h.hb.epoch == state.epoch)
                .max_by_key(|h| h.hb.max_term),
        ) {
            if h.hb.max_term > term {
                return Some(format!(
                    "etcd state behind replicas: {} saw controller term {} at epoch {} but this \
                     controller's term is {term}; {FIX}",
                    h.hb.id, h.hb.max_term, state.epoch
                ));
            }
        }
        // Still the current epoch, but a replica applied a later rev of it: the decisions of
        // those revs were made already.
        if let Some(h) = self
            .heard
            .values()
            .filter(|h| h.hb.epoch == state.epoch && h.hb.applied_rev > rev)
            .max_by_key(|h| h.hb.applied_rev)
        {
            return Some(format!(
                "etcd state behind replicas: the state is at rev {rev} of epoch {} but {} applied rev {} of it; {FIX}",
                state.epoch, h.hb.id, h.hb.applied_rev
            ));
        }
        // A leader is directed only once the promotion is recorded as done: records of an epoch
        // still being promoted show it was done.
        if state.phase == Phase::Promoting {
            if let Some(h) = self
                .heard
                .values()
                .find(|h| h.hb.log_end_epoch >= state.epoch)
            {
                return Some(format!(
                    "etcd state behind replicas: the state says epoch {} is still being promoted but {} holds records of epoch {}; {FIX}",
                    state.epoch, h.hb.id, h.hb.log_end_epoch
                ));
            }
        }
        None
    }

    fn note_grant(&mut self, epoch: Epoch, at_ms: u64) {
        if let Some(g) = self.last_grant.filter(|(e, _)| *e < epoch) {
            self.grant_before = Some(g);
        }
        self.last_grant = Some((epoch, at_ms));
    }

    /// How long a new leader waits before starting its epoch (DESIGN.md §5).
    fn start_after(&self, now: Now, state: &ClusterState) -> u64 {
        if self.no_wait_epoch == Some(state.epoch) {
            return 0;
        }
        if let Some(prev) = &state.prev_leader {
            let persisted = self
                .heard
                .get(&prev.id)
                .is_some_and(|h| h.hb.boot_id == prev.boot_id && h.hb.epoch >= state.epoch);
            if persisted {
                return 0;
            }
        } else {
            return 0;
        }
        let rho = self.cfg.drift;
        let wait = (self.cfg.lease_ms as f64 * (1.0 + rho) / (1.0 - rho)).ceil() as u64
            + self.cfg.heartbeat_interval_ms;
        // The last grant to an older epoch (not the new leader's own, which the directive that
        // carries this value has just recorded); after a takeover, the takeover.
        let since = [self.last_grant, self.grant_before]
            .into_iter()
            .flatten()
            .filter(|(e, _)| *e < state.epoch)
            .map(|(_, t)| t)
            .max()
            .unwrap_or(self.active_since_ms);
        (since + wait).saturating_sub(now.ms)
    }

    // ----- decisions -------------------------------------------------------------------------

    /// Time passes; returns at most one write to execute.
    pub fn tick(&mut self, now: Now) -> Option<Write> {
        self.forget_old(now);
        if !self.active_at(now) || self.inflight {
            return None;
        }
        if self.state().is_some() && !self.notices.is_empty() {
            let (_, msg) = self.notices.remove(0);
            return self.write(now, None, "refusal", msg, self.inputs(now));
        }
        let (state, rev) = self.state().map(|(s, r)| (s.clone(), r))?;
        if let Some(why) = self.check_behind(&state, rev) {
            return self.refuse(now, "refusal", why);
        }
        if let Some(op) = &state.op {
            // The operation's timeout counts from when this controller first saw it (see
            // `on_observed`), on its own monotonic clock: a wall-clock deadline would move with
            // clock steps.
            let seen = self.op_seen.as_ref().map_or(now.ms, |(_, t)| *t);
            let timeout = op.timeout_ms.unwrap_or(60_000).min(60_000);
            let expired = now.ms.saturating_sub(seen) > timeout;
            if expired && state.phase == Phase::Switching {
                let mut s = state.clone();
                s.phase = Phase::Steady;
                s.op = None;
                let msg = format!("switchover {} aborted: the target did not catch up before the deadline; the leader keeps leading", op.id);
                return self.write(now, Some(s), "abort", msg, self.inputs(now));
            }
            if expired && state.phase == Phase::Promoting {
                // A forced failover whose target could not be promoted in time releases the
                // promotion: it goes on under the automatic rules, and the operator may issue
                // another `failover --to` (otherwise the op would hold the cluster leaderless).
                let mut s = state.clone();
                s.op = None;
                let msg = format!(
                    "operation {} ({}) expired before its target was promoted; the promotion at epoch {} continues under the automatic rules",
                    op.id, op.kind, state.epoch
                );
                return self.write(now, Some(s), "abort", msg, self.inputs(now));
            }
        }
        if state.phase != Phase::Switching {
            // Only a switchover found at takeover is aborted; later ones run normally.
            self.switch_takeover = false;
        }
        match state.phase {
            Phase::Promoting => self.step_promotion(now, &state),
            Phase::Switching => self.step_switchover(now, &state),
            Phase::Steady => {
                let _ = rev;
                self.step_steady(now, &state)
            }
        }
    }

    /// Drops what is too old to mean anything: heartbeats of members not heard for ten
    /// failure timeouts (a replica that went away no longer weighs on any decision), and
    /// notices whose condition has not been seen for as long (journaled again if it returns).
    fn forget_old(&mut self, now: Now) {
        let horizon = 10 * self.cfg.failure_timeout_ms;
        self.heard
            .retain(|_, h| now.ms.saturating_sub(h.at_ms) < horizon);
        self.noticed
            .retain(|_, t| now.ms.saturating_sub(*t) < horizon);
        self.runs.retain(|_, r| {
            r.retain(|x| now.ms.saturating_sub(x.last_ms) < horizon);
            !r.is_empty()
        });
    }

    fn step_steady(&mut self, now: Now, state: &ClusterState) -> Option<Write> {
        if state.strict != Some(self.cfg.strict) {
            let mut s = state.clone();
            s.strict = Some(self.cfg.strict);
            let msg = format!(
                "strict = {} from this controller's config (the state said {})",
                self.cfg.strict,
                state
                    .strict
                    .map_or("nothing".to_string(), |b| b.to_string())
            );
            return self.write(now, Some(s), "config", msg, serde_json::Value::Null);
        }
        if let (Some(l), Some((boot, since))) = (&state.leader, self.leader_off) {
            // The recorded leader is alive but does not lead (it stepped down without an epoch
            // change, or holds no lease): it cannot lead this epoch again, so it gets a new one,
            // in any mode and outside the anti-flapping budget, like a restart.
            let ft = self.cfg.failure_timeout_ms;
            let fresh = self
                .heard
                .get(&l.id)
                .is_some_and(|h| h.hb.boot_id == boot && now.ms.saturating_sub(h.at_ms) < ft);
            if boot == l.boot_id && fresh && now.ms.saturating_sub(since) >= ft {
                let h = &self.heard[&l.id].hb;
                let what = if h.role != ReportedRole::Leader {
                    format!("reports role {:?}", h.role).to_lowercase()
                } else if h.epoch != state.epoch {
                    format!("reports epoch {}", h.epoch)
                } else {
                    "reports no lease".to_string()
                };
                let msg = format!(
                    "leader {} {what} for {} ms: a new epoch is needed",
                    l.id,
                    now.ms.saturating_sub(since)
                );
                self.leader_off = None;
                return self.start_promotion(now, state, "restart", msg, None);
            }
        }
        let heard: Vec<(NodeId, Option<Heard>)> = state
            .members
            .iter()
            .map(|m| (m.id.clone(), self.heard.get(&m.id).cloned()))
            .collect();
        let t = decide::Timing {
            failure_timeout_ms: self.cfg.failure_timeout_ms,
        };
        match decide::assess_leader(
            now.ms,
            self.active_since_ms,
            state,
            &heard,
            self.standby_hears,
            t,
        ) {
            LeaderHealth::Restarted => {
                let msg = format!(
                    "leader {} restarted (new boot or data directory): a new epoch is needed",
                    state
                        .leader
                        .as_ref()
                        .map_or_else(String::new, |l| l.id.to_string())
                );
                return self.start_promotion(now, state, "restart", msg, None);
            }
            LeaderHealth::Failed(why) => {
                if state.control == Control::Manual {
                    return self.refuse(
                        now,
                        "refusal",
                        format!("paused: automatic failover is off ({why})"),
                    );
                }
                let used = self.failovers_in_last_hour(now);
                if used >= self.cfg.max_failovers_per_hour {
                    return self.refuse(now, "refusal", format!(
                        "failover budget exhausted: {used} automatic failovers in the last hour (max_failovers_per_hour = {}); \
                         automatic failover pauses ({why})", self.cfg.max_failovers_per_hour));
                }
                return self.start_promotion(now, state, "failover", why, None);
            }
            LeaderHealth::Unproven(why) => {
                if let Some(w) = self.refuse(now, "refusal", why) {
                    return Some(w);
                }
            }
            // The refusal (if any) no longer holds: journal it again when it comes back.
            LeaderHealth::Healthy => self.last_refusal = None,
            LeaderHealth::NoLeader | LeaderHealth::Observing => {}
        }
        if state.mode == Mode::SemiSync
            && now.ms.saturating_sub(self.active_since_ms) >= self.cfg.failure_timeout_ms
        {
            return self.step_sync_set(now, state);
        }
        None
    }

    /// An add of `id` was abandoned: do not try it again for 10 × sync_wait_ms, doubling with
    /// every abandoned add in a row (at most 5 minutes).
    fn back_off(&mut self, now: Now, id: &NodeId) {
        let n = self.add_failures.entry(id.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let ms = (10 * self.cfg.sync_wait_ms)
            .saturating_mul(1u64 << (*n - 1).min(16))
            .min(300_000);
        self.add_backoff
            .insert(id.clone(), now.ms.saturating_add(ms));
    }

    fn member_ok(&self, now: Now, m: &MemberRef) -> bool {
        self.heard.get(&m.id).is_some_and(|h| {
            h.hb.data_id == m.data_id
                && now.ms.saturating_sub(h.at_ms) < self.cfg.failure_timeout_ms
        })
    }

    /// Sync-set maintenance: add through `adding`, replace add-then-drop, drop etcd-first.
    fn step_sync_set(&mut self, now: Now, state: &ClusterState) -> Option<Write> {
        let leader = state.leader.as_ref()?;
        let lh = self.heard.get(&leader.id)?.hb.clone();
        if lh.boot_id != leader.boot_id {
            return None;
        }
        let ft = self.cfg.failure_timeout_ms;
        // Judge the sync set only from a fresh view: the leader heard within the failure
        // timeout, and no standby hearing more members than this controller. A controller
        // cut off from the replicas would otherwise drop healthy members on stale reports
        // and leave the leader acknowledging alone (found by the chaos runs).
        let fresh = self
            .heard
            .get(&leader.id)
            .is_some_and(|h| now.ms.saturating_sub(h.at_ms) < ft);
        if !fresh || self.hears(now) < self.standby_hears {
            return None;
        }
        let lagging = |m: &MemberRef| {
            lh.waiting
                .iter()
                .any(|w| w.id == m.id && w.data_id == m.data_id && w.last_ack_ms >= ft)
        };
        let dead: Vec<MemberRef> = state
            .sync_set
            .iter()
            .filter(|m| !self.member_ok(now, m) || lagging(m))
            .cloned()
            .collect();
        // Complete an add: the leader applied the rev, waits for M since since_lsn, M has it.
        if let Some(a) = &state.adding {
            let ready = self.adding_rev.is_some_and(|r| lh.applied_rev >= r)
                && lh.waiting.iter().any(|w| {
                    w.id == a.id && w.data_id == a.data_id && w.flushed_lsn >= w.since_lsn
                });
            if ready {
                let mut s = state.clone();
                s.sync_set.retain(|m| !dead.contains(m));
                if !s.sync_set.contains(a) {
                    s.sync_set.push(a.clone());
                }
                s.adding = None;
                self.add_failures.remove(&a.id);
                let msg = format!(
                    "{} joins the sync set{}",
                    a.id,
                    if dead.is_empty() {
                        String::new()
                    } else {
                        format!(", replacing {}", names(&dead))
                    }
                );
                return self.write(now, Some(s), "sync_add", msg, self.inputs(now));
            }
            let stuck = !self.member_ok(now, a)
                || self
                    .adding_since_ms
                    .is_some_and(|t| now.ms.saturating_sub(t) >= self.cfg.sync_wait_ms);
            if !dead.is_empty() && stuck {
                // The replacement did not make it within sync_wait_ms: drop the dead member
                // (etcd first), and `strict` decides whether writes go on without it.
                let mut s = state.clone();
                s.sync_set.retain(|m| !dead.contains(m));
                if !self.member_ok(now, a) {
                    s.adding = None;
                }
                let msg = format!("dropping {} from the sync set: unreachable and not replaced within sync_wait_ms", names(&dead));
                return self.write(now, Some(s), "sync_drop", msg, self.inputs(now));
            }
            if !self.member_ok(now, a) {
                let mut s = state.clone();
                s.adding = None;
                self.back_off(now, &a.id);
                return self.write(
                    now,
                    Some(s),
                    "sync_drop",
                    format!("{} stopped reporting while being added", a.id),
                    self.inputs(now),
                );
            }
            if self
                .adding_since_ms
                .is_some_and(|t| now.ms.saturating_sub(t) >= self.cfg.sync_wait_ms)
            {
                // The leader waits for the member being added: one that cannot catch up within
                // sync_wait_ms would stall writes, so the add is abandoned and retried later.
                let mut s = state.clone();
                s.adding = None;
                self.back_off(now, &a.id);
                let msg = format!(
                    "{} did not catch up within sync_wait_ms; adding it is retried later",
                    a.id
                );
                return self.write(now, Some(s), "sync_drop", msg, self.inputs(now));
            }
            return None;
        }
        let want = self
            .cfg
            .sync_size
            .min(state.members.len().saturating_sub(1));
        let healthy_count = state.sync_set.len() - dead.len();
        if !dead.is_empty() || healthy_count < want {
            // Find a follower to add: heard, caught up enough to report, promotable, not in the set.
            let cand = state
                .members
                .iter()
                .filter(|m| m.id != leader.id && !m.no_failover)
                .filter(|m| !state.sync_set.iter().any(|s| s.id == m.id))
                .filter_map(|m| self.heard.get(&m.id).map(|h| (m, h)))
                // Only a follower streaming from this leader: one that is cut off or stuck would
                // be waited for in vain and stall writes for sync_wait_ms each time.
                .filter(|(_, h)| {
                    let age = now.ms.saturating_sub(h.at_ms);
                    age < ft
                        && h.hb.role == ReportedRole::Follower
                        && h.hb.epoch == state.epoch
                        && h.hb
                            .since_leader_ms
                            .is_some_and(|s| s.saturating_add(age) < ft)
                })
                // Only a follower close behind: the leader waits for it as soon as it is added.
                .filter(|(_, h)| {
                    lh.log_end_lsn.0.saturating_sub(h.hb.flushed_lsn.0)
                        <= self.cfg.max_lag_on_failover
                })
                .filter(|(m, _)| {
                    self.add_backoff
                        .get(&m.id)
                        .is_none_or(|until| now.ms >= *until)
                })
                .max_by_key(|(m, h)| {
                    (
                        h.hb.flushed_lsn,
                        m.priority,
                        std::cmp::Reverse(m.id.clone()),
                    )
                })
                .map(|(m, h)| MemberRef {
                    id: m.id.clone(),
                    data_id: h.hb.data_id,
                });
            match cand {
                Some(c) => {
                    let mut s = state.clone();
                    s.adding = Some(c.clone());
                    let msg = if dead.is_empty() {
                        format!("adding {} to the sync set", c.id)
                    } else {
                        format!(
                            "replacing {} in the sync set: adding {} first",
                            names(&dead),
                            c.id
                        )
                    };
                    return self.write(now, Some(s), "sync_add", msg, self.inputs(now));
                }
                None if !dead.is_empty() => {
                    let mut s = state.clone();
                    s.sync_set.retain(|m| !dead.contains(m));
                    let msg = format!("dropping {} from the sync set: unreachable and no follower can replace it{}", names(&dead),
                        if self.cfg.strict { " (strict: writes block)" } else { " (not strict: the leader runs degraded)" });
                    return self.write(now, Some(s), "sync_drop", msg, self.inputs(now));
                }
                None => {}
            }
        }
        None
    }

    fn start_promotion(
        &mut self,
        now: Now,
        state: &ClusterState,
        kind: &str,
        why: String,
        op: Option<OpRecord>,
    ) -> Option<Write> {
        let max_reported = self
            .heard
            .values()
            .map(|h| h.hb.epoch)
            .max()
            .unwrap_or(Epoch(0));
        let Some(next) = state.epoch.max(max_reported).0.checked_add(1) else {
            return self.refuse(
                now,
                "refusal",
                format!("epochs are exhausted (a member reports epoch {max_reported}); {why}"),
            );
        };
        let mut s = state.clone();
        s.epoch = Epoch(next);
        if state.leader.is_some() {
            s.prev_leader = state.leader.clone();
        }
        s.leader = None;
        s.phase = Phase::Promoting;
        s.op = op;
        s.lossy = false;
        let msg = format!("{why}; promoting at epoch {}", s.epoch);
        self.write(now, Some(s), kind, msg, self.inputs(now))
    }

    fn fenced(&self, state: &ClusterState) -> Vec<Fenced> {
        let since = self.promoting_since_ms.unwrap_or(0);
        self.heard
            .iter()
            .filter(|(_, h)| {
                h.hb.epoch >= state.epoch && h.at_ms >= since && h.hb.role == ReportedRole::Fenced
            })
            .map(|(id, h)| Fenced {
                id: id.clone(),
                hb: h.hb.clone(),
            })
            .collect()
    }

    fn step_promotion(&mut self, now: Now, state: &ClusterState) -> Option<Write> {
        let fenced = self.fenced(state);
        let reachable: Vec<&NodeId> = self
            .heard
            .iter()
            .filter(|(_, h)| now.ms.saturating_sub(h.at_ms) < self.cfg.failure_timeout_ms)
            .map(|(id, _)| id)
            .collect();
        let all_in = reachable
            .iter()
            .all(|id| fenced.iter().any(|f| &f.id == *id));
        let waited = self
            .promoting_since_ms
            .map_or(0, |t| now.ms.saturating_sub(t));
        if !(all_in || waited >= 4 * self.cfg.heartbeat_interval_ms) || fenced.is_empty() {
            if fenced.is_empty() && waited >= self.cfg.failure_timeout_ms {
                return self.refuse(
                    now,
                    "blocked",
                    "blocked: no member has reported its log at the new epoch".into(),
                );
            }
            return None;
        }
        let forced = state.op.as_ref().filter(|o| o.kind.starts_with("failover"));
        let choice = match forced {
            Some(op) => match self.forced_choice(state, &fenced, op) {
                Ok(c) => c,
                Err(why) => {
                    // Waiting cannot make this target eligible (it reported, and it is unclean
                    // or not a holder of every acknowledged write without `force`): holding the
                    // promotion for it until the deadline would only keep the cluster leaderless.
                    let mut s = state.clone();
                    s.op = None;
                    let msg = format!(
                        "operation {} ({}) released: {why}; the promotion at epoch {} continues under the automatic rules",
                        op.id, op.kind, state.epoch
                    );
                    return self.write(now, Some(s), "abort", msg, self.inputs(now));
                }
            },
            None => decide::choose(
                state,
                &fenced,
                self.cfg.sync_size,
                self.cfg.max_lag_on_failover,
            ),
        };
        match choice {
            Choice::Promote {
                id,
                log_end,
                sync_set,
                lossy,
            } => {
                let f = fenced.iter().find(|f| f.id == id)?;
                let mut s = state.clone();
                s.leader = Some(LeaderRecord {
                    id: id.clone(),
                    data_id: f.hb.data_id,
                    boot_id: f.hb.boot_id,
                });
                s.sync_set = if state.mode == Mode::SemiSync {
                    sync_set
                } else {
                    Vec::new()
                };
                s.adding = None;
                s.phase = Phase::Steady;
                s.op = None;
                // Recorded with the epoch: every directive of it says so, and the leader-start
                // is written lossy, so returning holders of cut records archive them and rejoin.
                s.lossy = lossy || state.mode == Mode::Async;
                let msg = format!(
                    "promoted {id} at epoch {} (log end {}/{}{}); sync set [{}]",
                    s.epoch,
                    log_end.0,
                    log_end.1,
                    if lossy { ", lossy" } else { "" },
                    names(&s.sync_set)
                );
                self.write(now, Some(s), "promoted", msg, serde_json::json!({
                    "fenced": fenced.iter().map(|f| serde_json::json!({"id": f.id, "log_end": [f.hb.log_end_epoch, f.hb.log_end_lsn], "unclean": f.hb.unclean})).collect::<Vec<_>>()
                }))
            }
            Choice::Blocked(why) => self.refuse(now, "blocked", format!("blocked: {why}")),
        }
    }

    /// `failover --to M`: the operator's choice, within the rules it may not break. `Err` when
    /// the target reported and can never qualify under this request (waiting will not help).
    fn forced_choice(
        &self,
        state: &ClusterState,
        fenced: &[Fenced],
        op: &OpRecord,
    ) -> Result<Choice, String> {
        let (to, force, allow) = parse_failover_kind(&op.kind);
        let Some(f) = fenced.iter().find(|f| f.id.0 == to) else {
            return Ok(Choice::Blocked(format!(
                "failover target {to} has not reported at the new epoch"
            )));
        };
        if f.hb.unclean && !allow {
            return Err(format!("{to} is unclean; only allow_data_loss promotes it"));
        }
        let best = fenced
            .iter()
            .map(|x| (x.hb.log_end_epoch, x.hb.log_end_lsn))
            .max()
            .unwrap_or_default();
        let behind = (f.hb.log_end_epoch, f.hb.log_end_lsn) < best;
        // In semi-sync mode a recorded sync member, or the replaced leader with the same data
        // directory, holds every acknowledged write (I2), whatever unacknowledged tail another
        // member holds; anyone else may lack some even when no reporting member is ahead (the
        // sync members that hold them may be the ones not reporting). In async mode only a
        // target at the best reported end is known to lose nothing. (Unclean is judged above,
        // by allow_data_loss.)
        let holds_acked = match state.mode {
            Mode::SemiSync => {
                state
                    .sync_set
                    .iter()
                    .any(|m| m.id == f.id && m.data_id == f.hb.data_id)
                    || state
                        .prev_leader
                        .as_ref()
                        .is_some_and(|p| p.id == f.id && p.data_id == f.hb.data_id)
            }
            Mode::Async => !behind,
        };
        if !holds_acked && !force {
            return Err(format!(
                "{to} may lack acknowledged writes{}; force to accept the loss",
                if behind {
                    " (another member holds records it lacks)"
                } else {
                    ""
                }
            ));
        }
        let sync_set = if state.mode == Mode::SemiSync {
            decide::promotion_sync_set(state, fenced, f, self.cfg.sync_size)
        } else {
            Vec::new()
        };
        Ok(Choice::Promote {
            id: f.id.clone(),
            log_end: (f.hb.log_end_epoch, f.hb.log_end_lsn),
            sync_set,
            lossy: !holds_acked || f.hb.unclean,
        })
    }

    fn step_switchover(&mut self, now: Now, state: &ClusterState) -> Option<Write> {
        let op = state.op.as_ref()?;
        // A controller that takes over in `switching` aborts it (DESIGN.md §5), and so does
        // a leader that fails or restarts meanwhile: normal detection takes over from there.
        let heard: Vec<(NodeId, Option<Heard>)> = state
            .members
            .iter()
            .map(|m| (m.id.clone(), self.heard.get(&m.id).cloned()))
            .collect();
        let t = decide::Timing {
            failure_timeout_ms: self.cfg.failure_timeout_ms,
        };
        let health = decide::assess_leader(
            now.ms,
            self.active_since_ms,
            state,
            &heard,
            self.standby_hears,
            t,
        );
        let why = if self.switch_takeover {
            Some("the active controller changed during the switchover".to_string())
        } else {
            match health {
                LeaderHealth::Failed(w) => {
                    Some(format!("the leader failed during the switchover ({w})"))
                }
                LeaderHealth::Restarted => {
                    Some("the leader restarted during the switchover".to_string())
                }
                _ => None,
            }
        };
        if let Some(why) = why {
            self.switch_takeover = false;
            let mut s = state.clone();
            s.phase = Phase::Steady;
            s.op = None;
            let msg = format!("switchover {} aborted: {why}", op.id);
            return self.write(now, Some(s), "abort", msg, self.inputs(now));
        }
        let to = NodeId(
            op.kind
                .strip_prefix("switchover:")
                .unwrap_or_default()
                .to_string(),
        );
        let leader = state.leader.as_ref()?;
        // Only fresh reports count: a target that just stopped must not be handed leadership
        // on the strength of an old "caught up".
        let fresh =
            |h: &&Heard| now.ms.saturating_sub(h.at_ms) < 2 * self.cfg.heartbeat_interval_ms + 50;
        let lh = self.heard.get(&leader.id).filter(fresh)?;
        let th = self.heard.get(&to).filter(fresh)?;
        // The leader gave up its lease (a directive with lease 0) and reports its final log end;
        // the target flushed all of it.
        let revoked = lh.hb.lease_left_ms == Some(0)
            && lh.hb.applied_rev >= self.state().map_or(0, |(_, r)| r);
        let caught_up =
            th.hb.flushed_lsn >= lh.hb.log_end_lsn && th.hb.log_end_epoch == lh.hb.log_end_epoch;
        if !(revoked && caught_up) || th.hb.unclean {
            return None;
        }
        let mut s = state.clone();
        s.epoch = Epoch(state.epoch.0.checked_add(1)?);
        s.prev_leader = Some(leader.clone());
        s.leader = Some(LeaderRecord {
            id: to.clone(),
            data_id: th.hb.data_id,
            boot_id: th.hb.boot_id,
        });
        let mut sync: Vec<MemberRef> = vec![MemberRef {
            id: leader.id.clone(),
            data_id: leader.data_id,
        }];
        sync.extend(state.sync_set.iter().filter(|m| m.id != to).cloned());
        sync.truncate(self.cfg.sync_size);
        s.sync_set = if state.mode == Mode::SemiSync {
            sync
        } else {
            Vec::new()
        };
        s.adding = None;
        s.phase = Phase::Steady;
        s.op = None;
        s.lossy = state.mode == Mode::Async;
        self.no_wait_epoch = Some(s.epoch);
        let msg = format!(
            "switchover {}: {to} leads epoch {} (it holds the old leader's final LSN {})",
            op.id, s.epoch, lh.hb.log_end_lsn
        );
        self.write(now, Some(s), "switchover", msg, self.inputs(now))
    }

    // ----- operator requests ---------------------------------------------------------------

    fn ready_for_op(&self, now: Now) -> Result<(ClusterState, u64), OpError> {
        if !self.active_at(now) {
            return Err(op_err(
                503,
                "not_active",
                format!(
                    "this controller is not active; the active one is {}",
                    self.active_addr.clone().unwrap_or_else(|| "unknown".into())
                ),
            ));
        }
        if self.inflight {
            return Err(op_err(
                503,
                "busy",
                "a state change is being written; retry",
            ));
        }
        let (s, r) = self.state().ok_or_else(|| {
            op_err(
                409,
                "not_initialized",
                "the cluster has no state yet: run `batonctl init`",
            )
        })?;
        if let Some(why) = self.behind_now(s, r) {
            return Err(op_err(409, "state_behind", why));
        }
        if let Some(op) = &s.op {
            return Err(op_err(
                409,
                "operation_running",
                format!("operation {} ({}) is running", op.id, op.kind),
            ));
        }
        Ok((s.clone(), r))
    }

    /// `switchover [--to M]`: planned, lossless.
    pub fn switchover(
        &mut self,
        now: Now,
        to: Option<NodeId>,
        timeout_ms: u64,
        op_id: String,
    ) -> Result<Write, OpError> {
        let (state, _) = self.ready_for_op(now)?;
        if state.phase != Phase::Steady {
            return Err(op_err(
                409,
                "phase",
                format!(
                    "the cluster is {:?}; a switchover needs a steady leader",
                    state.phase
                ),
            ));
        }
        let leader = state
            .leader
            .clone()
            .ok_or_else(|| op_err(409, "no_leader", "there is no leader to switch from"))?;
        if !self.member_ok(
            now,
            &MemberRef {
                id: leader.id.clone(),
                data_id: leader.data_id,
            },
        ) {
            return Err(op_err(
                409,
                "leader_unreachable",
                format!("leader {} is not reporting; use failover", leader.id),
            ));
        }
        let eligible = |id: &NodeId| -> Result<(), String> {
            let m = state.member(id).ok_or(format!("{id} is not a member"))?;
            if m.no_failover {
                return Err(format!("{id} is marked no_failover"));
            }
            if *id == leader.id {
                return Err(format!("{id} already leads"));
            }
            let h = self
                .heard
                .get(id)
                .filter(|h| now.ms.saturating_sub(h.at_ms) < self.cfg.failure_timeout_ms)
                .ok_or(format!("{id} is not reporting"))?;
            if h.hb.unclean {
                return Err(format!("{id} is unclean"));
            }
            if state.mode == Mode::SemiSync
                && !state
                    .sync_set
                    .iter()
                    .any(|s| s.id == *id && s.data_id == h.hb.data_id)
            {
                return Err(format!(
                    "{id} is not in the sync set, so it may lack acknowledged writes; switch over to a \
                     sync member, or use `failover --to {id} --force` and accept the possible loss"
                ));
            }
            Ok(())
        };
        let target = match to {
            Some(t) => {
                eligible(&t).map_err(|e| op_err(400, "ineligible", e))?;
                t
            }
            None => state
                .members
                .iter()
                .filter(|m| eligible(&m.id).is_ok())
                .max_by_key(|m| {
                    (
                        self.heard.get(&m.id).map(|h| h.hb.flushed_lsn),
                        m.priority,
                        std::cmp::Reverse(m.id.clone()),
                    )
                })
                .map(|m| m.id.clone())
                .ok_or_else(|| {
                    op_err(
                        409,
                        "no_candidate",
                        "no member can take over without losing writes",
                    )
                })?,
        };
        // A switchover this controller starts is not one found at takeover.
        self.switch_takeover = false;
        let mut s = state.clone();
        s.phase = Phase::Switching;
        s.op = Some(OpRecord {
            id: op_id.clone(),
            kind: format!("switchover:{target}"),
            deadline_ms: now.unix_ms.saturating_add(timeout_ms.clamp(100, 60_000)),
            timeout_ms: Some(timeout_ms.clamp(100, 60_000)),
        });
        let msg = format!("switchover {op_id} to {target} requested: {} stops writes until {target} holds its final LSN", leader.id);
        self.write(now, Some(s), "switchover", msg, self.inputs(now))
            .ok_or_else(|| op_err(503, "busy", "retry"))
    }

    /// `failover --to M [--force] [--allow-data-loss]`: forced promotion.
    pub fn failover(
        &mut self,
        now: Now,
        to: NodeId,
        force: bool,
        allow_data_loss: bool,
        op_id: String,
    ) -> Result<Write, OpError> {
        if !self.active_at(now) || self.inflight {
            return self.ready_for_op(now).map(|_| unreachable!());
        }
        let (state, rev) = self.state().map(|(s, r)| (s.clone(), r)).ok_or_else(|| {
            op_err(
                409,
                "not_initialized",
                "the cluster has no state yet: run `batonctl init`",
            )
        })?;
        if let Some(why) = self.behind_now(&state, rev) {
            return Err(op_err(409, "state_behind", why));
        }
        if state.member(&to).is_none() {
            return Err(op_err(400, "ineligible", format!("{to} is not a member")));
        }
        if let Some(h) = self.heard.get(&to) {
            if h.hb.unclean && !allow_data_loss {
                return Err(op_err(400, "ineligible", format!("{to} is unclean: it may lack acknowledged writes; only allow_data_loss promotes it")));
            }
        }
        let kind = format!(
            "failover:{to}:{}:{}",
            u8::from(force),
            u8::from(allow_data_loss)
        );
        let op = OpRecord {
            id: op_id.clone(),
            kind,
            deadline_ms: now.unix_ms + 60_000,
            timeout_ms: Some(60_000),
        };
        if let Some(o) = &state.op {
            return Err(op_err(
                409,
                "operation_running",
                format!("operation {} ({}) is running", o.id, o.kind),
            ));
        }
        // The same rule whether the promotion starts now or a blocked one is continued: only a
        // recorded sync member or the leader being replaced surely holds every acknowledged write.
        let replaced = if state.phase == Phase::Promoting {
            state.prev_leader.as_ref()
        } else {
            state.leader.as_ref()
        };
        if state.mode == Mode::SemiSync && !force {
            // Membership is by data directory: the same id on a replaced (wiped) disk holds
            // nothing. A target not heard from is judged by its id until it reports.
            let data_id = self.heard.get(&to).map(|h| h.hb.data_id);
            let same = |d: baton_common::DataId| data_id.is_none_or(|x| x == d);
            let in_set = state.sync_set.iter().any(|m| m.id == to && same(m.data_id));
            let prev = replaced.is_some_and(|l| l.id == to && same(l.data_id));
            if !in_set && !prev {
                let best = self
                    .heard
                    .values()
                    .map(|h| h.hb.flushed_lsn)
                    .max()
                    .unwrap_or(Lsn(0));
                let mine = self.heard.get(&to).map(|h| h.hb.flushed_lsn);
                let loss = match mine {
                    Some(m) => format!(
                        "it would lose at least {} records",
                        best.0.saturating_sub(m.0)
                    ),
                    None => "the loss is unknown (it is not reporting)".into(),
                };
                return Err(op_err(409, "may_lose_writes", format!(
                    "{to} is not in the sync set and may lack acknowledged writes: {loss}; pass force to accept")));
            }
        }
        if state.phase == Phase::Promoting {
            // Continue a blocked promotion at the same epoch with the operator's choice.
            let mut s = state.clone();
            s.op = Some(op);
            return self
                .write(
                    now,
                    Some(s),
                    "manual_failover",
                    format!(
                        "failover {op_id} to {to} requested (continuing the promotion at epoch {})",
                        state.epoch
                    ),
                    self.inputs(now),
                )
                .ok_or_else(|| op_err(503, "busy", "retry"));
        }
        // Journaled as `manual_failover`: the anti-flapping budget counts automatic ones only.
        self.start_promotion(
            now,
            &state,
            "manual_failover",
            format!("manual failover {op_id} to {to}"),
            Some(op),
        )
        .ok_or_else(|| op_err(503, "busy", "retry"))
    }

    /// `pause` / `resume` automatic failover.
    pub fn set_control(&mut self, now: Now, control: Control) -> Result<Write, OpError> {
        let (state, _) = self.ready_for_op(now).or_else(|e| {
            // `operation_running` does not stop pause/resume; `state_behind` does (a write
            // would move the state's revision past what the replicas applied and hide it).
            if e.error == "operation_running" {
                self.state().map(|(s, r)| (s.clone(), r)).ok_or(e)
            } else {
                Err(e)
            }
        })?;
        let mut s = state;
        s.control = control;
        let (kind, msg) = match control {
            Control::Manual => (
                "pause",
                "automatic failover paused: failover is manual only".to_string(),
            ),
            Control::Auto => ("resume", "automatic failover resumed".to_string()),
        };
        self.write(now, Some(s), kind, msg, serde_json::Value::Null)
            .ok_or_else(|| op_err(503, "busy", "retry"))
    }

    /// `init`: the first state, only when none exists and every member reported an empty log.
    pub fn init(&mut self, now: Now) -> Result<Write, OpError> {
        if !self.active_at(now) {
            return self.ready_for_op(now).map(|_| unreachable!());
        }
        if self.inflight {
            return Err(op_err(503, "busy", "retry"));
        }
        match &self.observed {
            Observed::Absent => {}
            Observed::Present { .. } => {
                return Err(op_err(
                    409,
                    "initialized",
                    "the cluster already has a state",
                ))
            }
            Observed::Unknown => return Err(op_err(503, "busy", "the state is being read; retry")),
        }
        let missing: Vec<String> =
            self.cfg
                .members
                .iter()
                .filter(|m| {
                    !self.heard.get(&m.id).is_some_and(|h| {
                        now.ms.saturating_sub(h.at_ms) < self.cfg.failure_timeout_ms
                    })
                })
                .map(|m| m.id.to_string())
                .collect();
        if !missing.is_empty() {
            return Err(op_err(
                409,
                "members_missing",
                format!("waiting for members to report: {}", missing.join(", ")),
            ));
        }
        let nonempty: Vec<String> = self
            .heard
            .iter()
            .filter(|(_, h)| h.hb.log_end_lsn.0 > 0)
            .map(|(id, _)| id.to_string())
            .collect();
        if !nonempty.is_empty() {
            return Err(op_err(
                409,
                "not_empty",
                format!(
                    "members with data refuse a fresh init: {}",
                    nonempty.join(", ")
                ),
            ));
        }
        let epoch = Epoch(self.heard.values().map(|h| h.hb.epoch.0).max().unwrap_or(0) + 1);
        let mut cands: Vec<&Member> = self.cfg.members.iter().filter(|m| !m.no_failover).collect();
        cands.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        let leader = cands
            .first()
            .ok_or_else(|| op_err(400, "no_candidate", "every member is no_failover"))?;
        let lh = &self.heard[&leader.id];
        let sync_set: Vec<MemberRef> = if self.cfg.mode == Mode::SemiSync {
            cands
                .iter()
                .skip(1)
                .take(self.cfg.sync_size)
                .map(|m| MemberRef {
                    id: m.id.clone(),
                    data_id: self.heard[&m.id].hb.data_id,
                })
                .collect()
        } else {
            Vec::new()
        };
        let s = ClusterState {
            epoch,
            leader: Some(LeaderRecord {
                id: leader.id.clone(),
                data_id: lh.hb.data_id,
                boot_id: lh.hb.boot_id,
            }),
            prev_leader: None,
            phase: Phase::Steady,
            members: self.cfg.members.clone(),
            sync_set,
            adding: None,
            control: Control::Auto,
            mode: self.cfg.mode,
            op: None,
            lossy: false,
            cluster_id: self.new_cluster_id(now),
            state_id: self.new_state_id(now, epoch),
            strict: Some(self.cfg.strict),
        };
        let msg = format!(
            "initialized: {} leads epoch {epoch}, sync set [{}]",
            leader.id,
            names(&s.sync_set)
        );
        self.write(now, Some(s), "init", msg, self.inputs(now))
            .ok_or_else(|| op_err(503, "busy", "retry"))
    }

    /// `recover` (DESIGN.md §5): the way out when etcd's state is behind what the replicas
    /// report (restored from an old backup) or lost while they hold data. Writes
    /// `{epoch = 1 + highest reported, leader null, phase promoting, sync_set {}}`; no member is
    /// then known to hold every acknowledged write, so in semi-sync mode the promotion blocks
    /// until `failover --to`, which states the possible loss.
    pub fn recover(&mut self, now: Now) -> Result<Write, OpError> {
        if !self.active_at(now) {
            return self.ready_for_op(now).map(|_| unreachable!());
        }
        if self.inflight {
            return Err(op_err(
                503,
                "busy",
                "a state change is being written; retry",
            ));
        }
        let ft = self.cfg.failure_timeout_ms;
        let reporting: Vec<&Heard> = self
            .heard
            .values()
            .filter(|h| now.ms.saturating_sub(h.at_ms) < ft)
            .collect();
        let (base, why) = match &self.observed {
            Observed::Unknown => {
                return Err(op_err(503, "busy", "the state is being read; retry"));
            }
            Observed::Absent => {
                if !reporting.iter().any(|h| h.hb.log_end_lsn.0 > 0) {
                    return Err(op_err(
                        409,
                        "not_behind",
                        "etcd holds no state and no reporting member holds data: run `batonctl init`",
                    ));
                }
                (
                    None,
                    "etcd holds no state but members hold data".to_string(),
                )
            }
            Observed::Present { state, rev } => match self.behind_now(state, *rev) {
                Some(why) => (Some(state.clone()), why),
                None => {
                    return Err(op_err(
                        409,
                        "not_behind",
                        "the state is not behind what the replicas report: nothing to recover \
                         (use switchover or failover)",
                    ))
                }
            },
        };
        if reporting.is_empty() {
            return Err(op_err(
                409,
                "members_missing",
                "no member reports: recovery needs their positions",
            ));
        }
        let top = self
            .heard
            .values()
            .map(|h| h.hb.epoch.max(h.hb.log_end_epoch))
            .chain(base.as_ref().map(|s| s.epoch))
            .max()
            .unwrap_or(Epoch(0));
        let epoch = Epoch(
            top.0
                .checked_add(1)
                .ok_or_else(|| op_err(409, "epoch_overflow", "epochs are exhausted"))?,
        );
        // Keep the deployment's identity: the state's, else the one the replicas agree on.
        let mut ids: Vec<u64> = self
            .heard
            .values()
            .map(|h| h.hb.cluster_id)
            .filter(|c| *c != 0)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let cluster_id = match (base.as_ref().map_or(0, |s| s.cluster_id), ids.as_slice()) {
            (c, _) if c != 0 => c,
            (_, [one]) => *one,
            _ => self.new_cluster_id(now),
        };
        let s = ClusterState {
            epoch,
            leader: None,
            prev_leader: None,
            phase: Phase::Promoting,
            members: base
                .as_ref()
                .map_or_else(|| self.cfg.members.clone(), |s| s.members.clone()),
            sync_set: Vec::new(),
            adding: None,
            control: base.as_ref().map_or(Control::Auto, |s| s.control),
            mode: base.as_ref().map_or(self.cfg.mode, |s| s.mode),
            op: None,
            lossy: false,
            cluster_id,
            state_id: self.new_state_id(now, epoch),
            strict: base
                .as_ref()
                .and_then(|s| s.strict)
                .or(Some(self.cfg.strict)),
        };
        let ends: Vec<String> = reporting
            .iter()
            .map(|h| format!("{} {}/{}", h.hb.id, h.hb.log_end_epoch, h.hb.log_end_lsn))
            .collect();
        let msg = format!(
            "recover: {why}; promoting at epoch {epoch} with an empty sync set (log ends: {}). \
             No member is known to hold every acknowledged write: `failover --to` states the \
             possible loss",
            ends.join(", ")
        );
        self.behind = None;
        self.write(now, Some(s), "recover", msg, self.inputs(now))
            .ok_or_else(|| op_err(503, "busy", "retry"))
    }

    /// A new deployment identity, without randomness in the core: a mix of the members' data
    /// directory ids (random, made by each replica) and the time. Never 0.
    fn new_cluster_id(&self, now: Now) -> u64 {
        let mut z = mix(now.unix_ms);
        for h in self.heard.values() {
            z = mix(z ^ (h.hb.data_id.0 as u64) ^ mix((h.hb.data_id.0 >> 64) as u64));
        }
        z.max(1)
    }

    /// A new state lineage id (init, recover): never 0, and unlike any earlier one in practice.
    fn new_state_id(&self, now: Now, epoch: Epoch) -> u64 {
        mix(self.new_cluster_id(now) ^ mix(epoch.0 ^ 0x9e37_79b9_7f4a_7c15)).max(1)
    }

    /// What automatic failover would do now, and why.
    pub fn dry_run(&self, now: Now) -> DryRun {
        let mut blocking = Vec::new();
        let Some((state, _)) = self.state() else {
            return DryRun {
                leader_health: "unknown".into(),
                would_fail_over: false,
                candidate: None,
                expected_loss_records: None,
                blocking: vec![
                    "the cluster state is not known (not initialized or not read yet)".into(),
                ],
            };
        };
        if !self.active_at(now) {
            blocking.push("this controller is not active".into());
        }
        let heard: Vec<(NodeId, Option<Heard>)> = state
            .members
            .iter()
            .map(|m| (m.id.clone(), self.heard.get(&m.id).cloned()))
            .collect();
        let t = decide::Timing {
            failure_timeout_ms: self.cfg.failure_timeout_ms,
        };
        let health = decide::assess_leader(
            now.ms,
            self.active_since_ms,
            state,
            &heard,
            self.standby_hears,
            t,
        );
        if state.control == Control::Manual {
            blocking.push("paused: automatic failover is off".into());
        }
        let used = self.failovers_in_last_hour(now);
        if used >= self.cfg.max_failovers_per_hour {
            blocking.push(format!(
                "failover budget exhausted ({used} in the last hour)"
            ));
        }
        // Pretend every follower heard reports its current log end after fencing.
        let fenced: Vec<Fenced> = self
            .heard
            .iter()
            .filter(|(id, h)| {
                state.leader.as_ref().is_none_or(|l| l.id != **id)
                    && now.ms.saturating_sub(h.at_ms) < self.cfg.failure_timeout_ms
            })
            .map(|(id, h)| Fenced {
                id: id.clone(),
                hb: h.hb.clone(),
            })
            .collect();
        let (candidate, loss) = match decide::choose(
            state,
            &fenced,
            self.cfg.sync_size,
            self.cfg.max_lag_on_failover,
        ) {
            Choice::Promote { id, log_end, .. } => {
                let leader_end = state
                    .leader
                    .as_ref()
                    .and_then(|l| self.heard.get(&l.id))
                    .map(|h| h.hb.commit_lsn);
                (
                    Some(id),
                    leader_end.map(|c| c.0.saturating_sub(log_end.1 .0)),
                )
            }
            Choice::Blocked(why) => {
                blocking.push(why);
                (None, None)
            }
        };
        let (label, failed) = match &health {
            LeaderHealth::Healthy => ("healthy".to_string(), false),
            LeaderHealth::NoLeader => ("no leader".to_string(), false),
            LeaderHealth::Observing => (
                "observing (controller recently became active)".to_string(),
                false,
            ),
            LeaderHealth::Restarted => ("restarted".to_string(), true),
            LeaderHealth::Unproven(w) => (format!("not proven failed: {w}"), false),
            LeaderHealth::Failed(w) => (format!("failed: {w}"), true),
        };
        DryRun {
            leader_health: label,
            would_fail_over: failed && blocking.is_empty(),
            candidate,
            expected_loss_records: loss,
            blocking,
        }
    }
}

/// Mixes 64 bits (splitmix64's finalizer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn names(ms: &[MemberRef]) -> String {
    ms.iter()
        .map(|m| m.id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `failover:<to>:<force>:<allow_data_loss>` (the op record's kind).
fn parse_failover_kind(kind: &str) -> (String, bool, bool) {
    let mut p = kind.split(':').skip(1);
    let to = p.next().unwrap_or_default().to_string();
    let force = p.next() == Some("1");
    let allow = p.next() == Some("1");
    (to, force, allow)
}
