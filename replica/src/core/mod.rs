//! The replica's protocol engine: role, epoch, lease, log positions, pending writes and the
//! applied state, as a pure state machine in the shape of openraft's engine. Every input
//! (`on_directive`, `propose`, `on_flushed`, `tick`, the leader's and follower's stream inputs)
//! carries `now` (milliseconds on the runtime's suspend-proof clock) and returns one ordered list
//! of [`Action`]s that the runtime executes in order, the persist-before-acting steps included:
//! an input that needs a fact on disk first ends its list with [`Action::PersistEpoch`] and
//! acts only when the runtime reports it stored (`on_directive_persisted`,
//! `follower_epoch_persisted`). Debug builds check the invariants after every step.
//!
//! It reads no clock, does no I/O and spawns nothing; `driver/` executes the actions, in the
//! runtime and in the simulation. The role and the fields only a role has are [`role::RoleState`]
//! (`role.rs`, with the one "stop leading" path); directives are `directive.rs`, client writes and
//! reads `client.rs`, heartbeats and status `report.rs`, log shipping `leader.rs` (streams,
//! divergence answers, commit from the waited set's acknowledgements) and `follower.rs` (the
//! exchange, appends, snapshots).

use crate::snapshot::Snapshot;
use crate::state::KvState;
use crate::wal::{Op, Record};
use baton_common::directive::{CutRange, LeaderRef, Mode, ReportedRole};
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId, Version};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};

mod client;
mod degraded;
mod directive;
mod follower;
mod leader;
mod promise;
mod report;
mod role;

pub use client::{Consistency, ReadOk, WriteReject, WriteReq, MAX_PENDING};
pub use directive::Verdict;
pub use follower::{AppendHeader, FollowerNext, Truncation};
pub use leader::FetchStart;
pub use promise::AckOut;
use role::RoleState;

/// Fixed identity and protocol parameters of one process run.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub id: NodeId,
    pub cluster: String,
    pub addr: String,
    pub data_id: DataId,
    pub boot_id: BootId,
    /// Clock-rate drift bound ρ (e.g. 0.01): lease deadlines are shortened by it.
    pub drift: f64,
    /// Take a snapshot once this many log bytes were applied since the last one.
    pub snapshot_log_bytes: u64,
}

/// Everything recovered from disk at start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The deployment this data directory belongs to (0: not known yet).
    pub cluster_id: u64,
    pub epoch: Epoch,
    pub applied_rev: u64,
    pub unclean: bool,
    /// Records this replica had acknowledged were lost to damage inside its log, there (meta
    /// `damaged`): it must not lead until it fetched them again.
    pub damaged: Option<String>,
    pub snapshot: Option<Snapshot>,
    /// Durable records after the snapshot, in LSN order.
    pub records: Vec<Record>,
    /// First LSN held in the log.
    pub log_start: Lsn,
}

/// One step of work the runtime does for the engine, in list order. Writes to the log thread
/// (`Append`, `StoreUnclean`, `Truncate`, `Resync`, `InstallSnapshot`) are handed over in the
/// same critical section as the step, so nothing overtakes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Store the epoch (never lowered), the directive revision when given, and the deployment
    /// id when the directory has none (0 changes nothing) durably, then report it with the
    /// matching `…_persisted` input. Always last: the engine acts on nothing it did not persist.
    PersistEpoch {
        epoch: Epoch,
        rev: Option<u64>,
        cluster_id: u64,
    },
    /// Hand this record to the log writer (after the ones handed before it).
    Append(Record),
    /// Answer every outstanding write `504 outcome_unknown` with this reason: they were appended
    /// but this replica can no longer tell whether they commit.
    FailPending(String),
    /// The replica cannot go on: stop the process with this reason (the runtime's fatal path,
    /// taken once the step's lock is released). The engine is already fatal.
    Fatal(String),
    /// Store the `unclean` flag in the meta file (after everything appended before it is durable).
    StoreUnclean(bool),
    /// Archive the cut records to a rollback file, then cut the log from `from` on.
    Truncate(Truncation),
    /// Archive the log from `from` on, set the snapshots aside and empty the log (the engine has
    /// reset itself and marked itself unclean; a `StoreUnclean(true)` precedes this).
    Resync { from: Lsn },
    /// Make the snapshot received from the leader (the runtime's incoming file) the newest one
    /// and restart the log after `lsn`; report it durable through `on_flushed`.
    InstallSnapshot { lsn: Lsn },
    /// The input was ignored, for this reason (the runtime logs it; nothing changed).
    Ignore(String),
}

/// The engine.
pub struct Core {
    cfg: CoreConfig,
    /// The deployment this data directory belongs to, adopted from the first active directive
    /// that names one and persisted with the epoch; 0 until then.
    cluster_id: u64,
    /// Highest epoch persisted (never above what the meta file holds).
    epoch: Epoch,
    /// Revision of the cluster state the newest applied directive came from (persisted).
    applied_rev: u64,
    /// Highest controller_term seen in `epoch` (memory only, DESIGN.md §5).
    max_term: u64,
    /// This replica may lack acknowledged records (DESIGN.md §3); persisted.
    unclean: bool,
    /// It lacks records it had acknowledged, lost to damage inside its log (where): it refuses
    /// to lead (a leader would serve without them) until a leader's stream repaired it; cleared
    /// with `unclean`. Persisted with it.
    damaged: Option<String>,
    /// While unclean: the first leader commit LSN heard; flushing up to it clears the flag.
    unclean_target: Option<Lsn>,
    /// The role and the fields only that role has.
    role: RoleState,
    /// The leader the newest directive names (this replica itself when leading).
    leader: Option<LeaderRef>,
    /// The declared members, from the newest directive (empty until one arrives).
    members: Vec<NodeId>,
    /// The members a semi-sync leader waits for, from the newest directive.
    waited: Vec<baton_common::directive::MemberRef>,
    mode: Mode,
    /// Strict semi-sync: an empty waited set blocks writes.
    strict: bool,
    /// The log, positions and applied state.
    log: LogState,
    /// Set once SIGTERM arrived: new writes are refused.
    shutting_down: bool,
    /// Set once the log writer failed: nothing is acknowledged any more.
    fatal: Option<String>,
    /// Set while the log writer cannot write for lack of space (ENOSPC), with its error: writes
    /// are refused (507, not appended), a follower takes no records; cleared when a retry
    /// wrote (DESIGN.md §6).
    disk_full: Option<String>,
    /// Snapshot bookkeeping.
    snap: SnapState,
    /// Stream ids, shared by the leader's and the follower's streams.
    next_stream: u64,
    /// Follower promises given, and how long they bind (`promise.rs`).
    promises: promise::Promises,
    /// Threads a long run of committed records is applied on (`set_apply_threads`; 1: inline).
    apply_threads: usize,
    /// How long this leader has run alone (`degraded.rs`).
    degraded: degraded::DegradedClock,
    /// The last range a truncation archived (reported in heartbeats and status).
    last_cut: Option<CutRange>,
    /// The last replication peer refused for its identity, if any in this run.
    last_refused: Option<String>,
}

/// The log as the engine holds it: positions, epoch history, the pending (appended, not yet
/// applied) records and the applied state. `applied <= commit <= end`, `flushed <= end`.
struct LogState {
    /// Epoch and LSN of the last record appended.
    end: (Epoch, Lsn),
    /// Highest LSN the log writer reported durable (in the current log generation).
    flushed: Lsn,
    /// Highest LSN known committed; never moves back except by a reported cut.
    commit: Lsn,
    /// Highest LSN applied to `state`.
    applied: Lsn,
    /// (epoch, first LSN) of every epoch in the log, increasing in both.
    history: Vec<(Epoch, Lsn)>,
    /// Records appended but not applied: LSNs `applied+1 ..= end`.
    pending: VecDeque<Record>,
    /// Latest version of each key written by a pending record (`None` = deleted), with the LSN
    /// of that record: what `If-Match` is evaluated against, pending records included.
    overlay: HashMap<Bytes, (Option<Version>, Lsn)>,
    state: KvState,
    /// Append time of the oldest record not yet flushed.
    unflushed_since_ms: Option<u64>,
    /// First LSN still held in the log (earlier ones are only in the snapshot).
    start: Lsn,
    /// Epochs whose leader-start record (held in this log) is lossy.
    lossy_epochs: BTreeSet<Epoch>,
    /// Average encoded record size, for byte estimates of replication lag.
    avg_record_bytes: u64,
    /// Counts truncations and resets of the log decided here; the log thread counts the ones it
    /// executed, and a flush report made under another generation is ignored (it may describe
    /// records that were cut and replaced in memory since).
    gen: u64,
}

/// Background snapshots: one at a time.
struct SnapState {
    /// LSN of the newest snapshot on disk.
    lsn: Lsn,
    running: bool,
    /// Log bytes applied since the last snapshot began.
    bytes_since: u64,
}

impl Core {
    /// Builds the core from what recovery found. Recovered records are durable (flushed) but
    /// not known committed: they are applied once a leader-start above them commits.
    pub fn new(cfg: CoreConfig, rec: Recovered) -> Core {
        let (state, snap_lsn, snap_epoch, mut history, snap_lossy) = match rec.snapshot {
            Some(s) => (s.state, s.lsn, s.epoch, s.history, s.lossy_epochs),
            None => (KvState::default(), Lsn(0), Epoch(0), Vec::new(), Vec::new()),
        };
        let mut end = (snap_epoch, snap_lsn);
        let mut overlay = HashMap::new();
        let mut pending = VecDeque::with_capacity(rec.records.len());
        let mut lossy_epochs: BTreeSet<Epoch> = snap_lossy.into_iter().collect();
        for r in rec.records {
            if let Op::LeaderStart { lossy: true, .. } = r.op {
                lossy_epochs.insert(r.epoch);
            }
            if history.last().is_none_or(|(e, _)| *e < r.epoch) {
                history.push((r.epoch, r.lsn));
            }
            end = (r.epoch, r.lsn);
            note_overlay(&mut overlay, &r);
            pending.push_back(r);
        }
        Core {
            cluster_id: rec.cluster_id,
            epoch: rec.epoch.max(end.0),
            applied_rev: rec.applied_rev,
            max_term: 0,
            unclean: rec.unclean,
            damaged: rec.damaged.filter(|_| rec.unclean),
            unclean_target: None,
            role: RoleState::None,
            leader: None,
            members: Vec::new(),
            waited: Vec::new(),
            mode: Mode::SemiSync,
            strict: false,
            log: LogState {
                end,
                flushed: end.1,
                commit: snap_lsn,
                applied: snap_lsn,
                history,
                pending,
                overlay,
                state,
                unflushed_since_ms: None,
                start: rec.log_start,
                lossy_epochs,
                avg_record_bytes: 128,
                gen: 0,
            },
            shutting_down: false,
            fatal: None,
            disk_full: None,
            snap: SnapState {
                lsn: snap_lsn,
                running: false,
                bytes_since: 0,
            },
            next_stream: 0,
            promises: promise::Promises::default(),
            apply_threads: 1,
            degraded: degraded::DegradedClock::default(),
            last_cut: None,
            last_refused: None,
            cfg,
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    /// The deployment this data directory belongs to (0: not known yet).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }
    pub fn unclean(&self) -> bool {
        self.unclean
    }
    /// Where this replica's log lost records it had acknowledged, until it was repaired.
    pub fn damaged(&self) -> Option<&str> {
        self.damaged.as_deref()
    }
    pub fn applied_rev(&self) -> u64 {
        self.applied_rev
    }
    pub fn commit(&self) -> Lsn {
        self.log.commit
    }
    pub fn applied(&self) -> Lsn {
        self.log.applied
    }
    pub fn flushed(&self) -> Lsn {
        self.log.flushed
    }
    pub fn log_end(&self) -> (Epoch, Lsn) {
        self.log.end
    }
    pub fn role(&self) -> ReportedRole {
        self.role.reported()
    }
    /// The waited set of the newest directive applied (a leader's sync members).
    pub fn waited(&self) -> &[baton_common::directive::MemberRef] {
        &self.waited
    }
    pub fn state(&self) -> &KvState {
        &self.log.state
    }
    pub fn history(&self) -> &[(Epoch, Lsn)] {
        &self.log.history
    }
    /// This replica's data directory id.
    pub fn data_id(&self) -> DataId {
        self.cfg.data_id
    }
    /// First LSN the log still holds.
    pub fn log_start(&self) -> Lsn {
        self.log.start
    }
    /// See [`LogState::gen`].
    pub fn log_gen(&self) -> u64 {
        self.log.gen
    }
    pub fn is_fatal(&self) -> bool {
        self.fatal.is_some()
    }
    /// The log writer's disk is full (see [`on_disk_full`](Self::on_disk_full)).
    pub fn disk_full(&self) -> Option<&str> {
        self.disk_full.as_deref()
    }

    /// Debug builds: the invariants hold after every step (release builds skip the check; the
    /// tests and the simulation call [`check_invariants`](Self::check_invariants) themselves).
    fn checked(&self, step: &str) {
        #[cfg(debug_assertions)]
        if let Err(e) = self.check_invariants() {
            panic!("replica core invariant broken after {step}: {e}");
        }
        let _ = step;
    }

    fn push_appended(&mut self, now: u64, rec: Record) {
        let l = &mut self.log;
        l.avg_record_bytes = (l.avg_record_bytes * 63 + rec.frame_len() as u64) / 64;
        if let Op::LeaderStart { lossy: true, .. } = rec.op {
            l.lossy_epochs.insert(rec.epoch);
        }
        if l.history.last().is_none_or(|(e, _)| *e < rec.epoch) {
            l.history.push((rec.epoch, rec.lsn));
        }
        l.end = (rec.epoch, rec.lsn);
        if l.unflushed_since_ms.is_none() {
            l.unflushed_since_ms = Some(now);
        }
        note_overlay(&mut l.overlay, &rec);
        let lsn = rec.lsn;
        l.pending.push_back(rec);
        if let Some(leader) = self.role.leader_mut() {
            for p in leader
                .peers
                .values_mut()
                .chain(leader.departed.values_mut())
            {
                if p.owed.is_none() && p.flushed < lsn {
                    p.owed = Some((lsn, now));
                }
            }
        }
    }

    /// The log writer made everything up to `lsn` durable, writing under log generation `gen`
    /// (the truncations and resets it had executed). Advances commit and applies. A report
    /// from another generation is ignored: it says nothing about the records that hold those
    /// LSNs now.
    pub fn on_flushed(&mut self, _now: u64, lsn: Lsn, gen: u64) -> Vec<Action> {
        if gen != self.log.gen {
            return Vec::new();
        }
        let mut fx = Vec::new();
        let lsn = lsn.min(self.log.end.1);
        if lsn > self.log.flushed {
            self.log.flushed = lsn;
        }
        if self.log.flushed >= self.log.end.1 {
            self.log.unflushed_since_ms = None;
        }
        fx.extend(self.recompute_commit());
        if self.unclean
            && self
                .role
                .leader()
                .is_some_and(|l| l.own_epoch_applied(self.log.applied))
        {
            // This replica's own epoch is committed: its log is the reference, it holds everything.
            self.unclean = false;
            self.damaged = None;
            fx.push(Action::StoreUnclean(false));
        }
        self.checked("on_flushed");
        fx
    }

    /// Moves the commit LSN as far as the role's rule allows, applies, and clears `unclean`
    /// when a follower has caught up. A leader that waits for nobody (async mode, or an empty
    /// waited set) commits on its own flush; a semi-sync leader also needs the flush of every
    /// waited member (`leader.rs`). A follower commits what the leader reported committed and it
    /// has flushed itself.
    fn recompute_commit(&mut self) -> Vec<Action> {
        let mut fx = Vec::new();
        match &self.role {
            RoleState::Leader(l) if l.leading_epoch == Some(self.epoch) => {
                let t = self.leader_commit_target(l);
                self.advance_commit(t);
            }
            RoleState::Follower(f) => {
                if let Some(u) = &f.upstream {
                    let t = u.leader_commit.min(self.log.flushed);
                    self.advance_commit(t);
                }
                if self.unclean && self.unclean_target.is_some_and(|t| self.log.flushed >= t) {
                    match self.damaged.take() {
                        Some(d) => tracing::info!(flushed = %self.log.flushed, damaged = %d,
                            "repaired: fetched the range lost to damage again from the leader and caught up with its commit LSN: no longer unclean"),
                        None => {
                            tracing::info!(flushed = %self.log.flushed, "caught up with the leader's commit LSN: no longer unclean")
                        }
                    }
                    self.unclean = false;
                    fx.push(Action::StoreUnclean(false));
                }
            }
            _ => {}
        }
        self.apply_committed();
        fx
    }

    fn advance_commit(&mut self, to: Lsn) {
        if to > self.log.commit {
            self.log.commit = to;
        }
    }

    fn apply_committed(&mut self) {
        let l = &mut self.log;
        if l.commit.0.saturating_sub(l.applied.0) >= 4096 && self.apply_threads > 1 {
            // A long run at once (a restarted leader's log after its snapshot when its epoch
            // commits, or a follower's large catch-up batch): the state applies it on every
            // core, shard by shard.
            let n = (l.commit.0 - l.applied.0).min(l.pending.len() as u64) as usize;
            let recs: Vec<Record> = l.pending.drain(..n).collect();
            for rec in &recs {
                debug_assert_eq!(rec.lsn, l.applied.next());
                if let Some(k) = rec_key(rec) {
                    if l.overlay.get(k).is_some_and(|(_, at)| *at == rec.lsn) {
                        l.overlay.remove(k);
                    }
                }
                self.snap.bytes_since += rec.frame_len() as u64;
                l.applied = rec.lsn;
            }
            l.state.apply_many(&recs, self.apply_threads);
            return;
        }
        while l.applied < l.commit {
            let Some(rec) = l.pending.pop_front() else {
                break;
            };
            debug_assert_eq!(rec.lsn, l.applied.next());
            if let Some(k) = rec_key(&rec) {
                if l.overlay.get(k).is_some_and(|(_, at)| *at == rec.lsn) {
                    l.overlay.remove(k);
                }
            }
            l.state.apply(&rec);
            self.snap.bytes_since += rec.frame_len() as u64;
            l.applied = rec.lsn;
        }
    }

    /// How many threads a long run of committed records (4096 or more at once) is applied on;
    /// the result is the same as applying them one by one (`KvState::apply_many`).
    pub fn set_apply_threads(&mut self, threads: usize) {
        self.apply_threads = threads.max(1);
    }

    /// The log writer failed: stop acknowledging for good.
    pub fn on_fatal(&mut self, reason: String) -> Vec<Action> {
        self.fatal = Some(reason.clone());
        vec![Action::FailPending(reason)]
    }

    /// The log writer found the disk full (`Some(error)`: it keeps the records it was given and
    /// retries) or wrote again (`None`). While full, writes are refused with 507 (not
    /// appended); a follower drops its stream and follows nobody — it could not append what it
    /// received, and it must not acknowledge — until the disk has room again. Records appended
    /// before are kept: they are written by the retry (or the replica exits on a real I/O
    /// error), so their writes keep waiting and get a definite answer by the usual rules.
    pub fn on_disk_full(&mut self, _now: u64, full: Option<String>) -> Vec<Action> {
        if full.is_some() {
            if let RoleState::Follower(f) = &mut self.role {
                f.upstream = None;
            }
        }
        self.disk_full = full;
        self.checked("on_disk_full");
        Vec::new()
    }

    /// Whether SIGTERM was received (replies then carry `Connection: close`).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// SIGTERM: new writes get 503 from now on; pending ones may still commit.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// A replication peer was refused for who it is (another cluster or deployment, not a
    /// member, not the directed leader): reported in heartbeats so the controller journals it.
    pub fn note_refused(&mut self, why: String) {
        self.last_refused = Some(why);
    }

    /// Records the range a truncation archived (reported in heartbeats and status).
    pub fn note_cut(&mut self, cut: CutRange) {
        self.last_cut = Some(cut);
    }

    /// Time passes: a directed leader starts its epoch when its wait is over.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        self.account_degraded(now);
        let mut fx = Vec::new();
        let epoch = self.epoch;
        let lsn = self.log.end.1.next();
        let fatal = self.fatal.is_some();
        let Some(l) = self.role.leader_mut() else {
            return fx;
        };
        if !fatal && l.start_at_ms.is_some_and(|at| now >= at) {
            l.start_at_ms = None;
            l.leading_epoch = Some(epoch);
            l.leader_start_lsn = lsn;
            // Nothing was owed before the epoch began: the waited members' ages count from
            // here (a leader that waited out a lease or its promises must not look as if its
            // followers had not acknowledged for that long: a planned failover right after a
            // cluster start).
            for (_, since_ms) in l.since.values_mut() {
                *since_ms = (*since_ms).max(now);
            }
            let rec = Record {
                epoch,
                lsn,
                op: Op::LeaderStart {
                    leader: self.cfg.id.clone(),
                    lossy: l.lossy,
                },
            };
            tracing::info!(epoch = %epoch, lsn = %lsn, "starting epoch with a leader-start record");
            self.push_appended(now, rec.clone());
            fx.push(Action::Append(rec));
        }
        self.checked("tick");
        fx
    }

    /// A snapshot is due: enough log was applied since the last one and none is running.
    pub fn snapshot_due(&self) -> bool {
        !self.snap.running
            && self.snap.bytes_since >= self.cfg.snapshot_log_bytes
            && self.log.applied > self.snap.lsn
    }

    /// Captures the applied state for a background snapshot (an O(1) clone).
    pub fn begin_snapshot(&mut self) -> Snapshot {
        self.snap.running = true;
        self.snap.bytes_since = 0;
        let lsn = self.log.applied;
        let history: Vec<_> = self
            .log
            .history
            .iter()
            .copied()
            .filter(|(_, first)| *first <= lsn)
            .collect();
        let epoch = history.last().map_or(Epoch(0), |(e, _)| *e);
        let lossy_epochs = self
            .log
            .lossy_epochs
            .iter()
            .copied()
            .filter(|e| *e <= epoch)
            .collect();
        Snapshot {
            lsn,
            epoch,
            history,
            lossy_epochs,
            state: self.log.state.clone(),
        }
    }

    /// Log compaction removed records below `first`.
    pub fn set_log_start(&mut self, first: Lsn) {
        self.log.start = self.log.start.max(first);
    }

    /// The background snapshot finished (or failed, with `None`).
    pub fn end_snapshot(&mut self, lsn: Option<Lsn>) {
        self.snap.running = false;
        if let Some(l) = lsn {
            self.snap.lsn = self.snap.lsn.max(l);
        }
    }

    /// The protocol invariants; debug builds check them after every step, tests and the
    /// simulation after every step of theirs.
    pub fn check_invariants(&self) -> Result<(), String> {
        let l = &self.log;
        if !(l.applied <= l.commit && l.commit <= l.end.1 && l.flushed <= l.end.1) {
            return Err(format!(
                "positions out of order: applied {} commit {} flushed {} written {}",
                l.applied, l.commit, l.flushed, l.end.1
            ));
        }
        // A leader acknowledges nothing above its own flush. A commit LSN inherited from a
        // snapshot installed before it was made leader (committed by the leader that sent it)
        // may stand above its flush until the install is durable: nothing of its own epoch
        // commits meanwhile, its leader-start waiting behind the install.
        if l.commit > l.flushed.max(self.snap.lsn) && self.role.reported() == ReportedRole::Leader {
            return Err(format!(
                "leader commit {} above its own flush {}",
                l.commit, l.flushed
            ));
        }
        if l.pending.len() as u64 != l.end.1 .0 - l.applied.0 {
            return Err(format!(
                "{} pending records for LSNs {}..={}",
                l.pending.len(),
                l.applied.next(),
                l.end.1
            ));
        }
        if self.epoch < l.end.0 {
            return Err(format!(
                "epoch {} below the log's last epoch {}",
                self.epoch, l.end.0
            ));
        }
        if l.history
            .windows(2)
            .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
        {
            return Err(format!("epoch history not increasing: {:?}", l.history));
        }
        self.role.check(self.epoch)
    }
}

fn rec_key(r: &Record) -> Option<&Bytes> {
    match &r.op {
        Op::Put { key, .. } | Op::Delete { key } => Some(key),
        Op::LeaderStart { .. } => None,
    }
}

pub(crate) fn note_overlay(overlay: &mut HashMap<Bytes, (Option<Version>, Lsn)>, r: &Record) {
    let v = Version {
        epoch: r.epoch,
        lsn: r.lsn,
    };
    match &r.op {
        Op::Put { key, .. } => {
            overlay.insert(key.clone(), (Some(v), r.lsn));
        }
        Op::Delete { key } => {
            overlay.insert(key.clone(), (None, r.lsn));
        }
        Op::LeaderStart { .. } => {}
    }
}
