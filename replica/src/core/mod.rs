//! The replica's protocol core: role, epoch, lease, log positions, pending writes and the applied
//! state, as a pure state machine. Inputs are method calls carrying `now` (milliseconds on the
//! runtime's suspend-proof clock); outputs are return values and [`Effect`]s for the runtime to
//! execute (append a record, fail outstanding writes, persist the meta file).
//!
//! It reads no clock, does no I/O and spawns nothing; `node.rs` and `repl/` are the runtime
//! around it. Log shipping lives in `leader.rs` (streams, divergence answers, commit from the
//! waited set's acknowledgements) and `follower.rs` (the exchange, appends, snapshots).

use crate::snapshot::Snapshot;
use crate::state::{Entry, KvState};
use crate::wal::{Op, Record};
use baton_common::api::{LeaderHint, ReplicaStatus};
use baton_common::directive::{
    CutRange, Directive, Heartbeat, LeaderRef, MemberRef, Mode, ReportedRole, Role,
};
use baton_common::ids::Expect;
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId, Version};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};

mod follower;
mod leader;

pub use follower::{AppendHeader, Exchange, FollowerNext, Truncation};
pub use leader::FetchStart;

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
    pub snapshot: Option<Snapshot>,
    /// Durable records after the snapshot, in LSN order.
    pub records: Vec<Record>,
    /// First LSN held in the log.
    pub log_start: Lsn,
}

/// Work the runtime must do on the core's behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Hand this record to the log writer (after the ones handed before it).
    Append(Record),
    /// Answer every outstanding write `504 outcome_unknown` with this reason: they were appended
    /// but this replica can no longer tell whether they commit.
    FailPending(String),
    /// The durable meta facts changed (unclean cleared); store them.
    PersistMeta,
}

/// Why a write was not appended (all map to 4xx/503: nothing was written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteReject {
    NotLeader {
        reason: String,
        leader: Option<LeaderHint>,
    },
    PreconditionFailed {
        current: Option<Version>,
    },
    NotFound,
    ShuttingDown,
    /// Too many writes appended and not yet committed (503, not appended): a leader whose sync
    /// members stopped acknowledging would otherwise queue without bound.
    Overloaded(String),
    Fatal(String),
}

/// At most this many records may be appended and not yet applied on a leader.
pub const MAX_PENDING: usize = 65_536;

/// A read's consistency level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    Leader,
    Any,
}

/// A successful read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOk {
    pub entry: Option<Entry>,
    pub epoch: Epoch,
    pub applied: Lsn,
    /// `any` reads: milliseconds since this replica last heard from its leader (0 on a serving
    /// leader, `None` when it follows nobody and cannot tell).
    pub staleness_ms: Option<u64>,
    /// `any` reads: records known committed but not yet applied here.
    pub lag_records: u64,
}

/// What a directive check decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ignore it, for this reason.
    Ignore(String),
    /// Apply it; when `persist` is set, first store (epoch, rev) durably.
    Accept { persist: Option<(Epoch, u64)> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lease {
    epoch: Epoch,
    until_ms: u64,
}

/// A write request as the core sees it.
#[derive(Clone, Debug)]
pub struct WriteReq {
    pub key: Bytes,
    /// `None` deletes.
    pub value: Option<Bytes>,
    pub expect: Option<Expect>,
}

/// The core.
pub struct Core {
    cfg: CoreConfig,
    /// The deployment this data directory belongs to, adopted from the first active directive
    /// that names one and persisted with the epoch; 0 until then.
    cluster_id: u64,
    /// Highest epoch persisted.
    epoch: Epoch,
    applied_rev: u64,
    /// Highest controller_term seen (memory only, DESIGN.md §5).
    max_term: u64,
    unclean: bool,
    role: ReportedRole,
    leader: Option<LeaderRef>,
    /// The declared members, from the newest directive (empty until one arrives).
    members: Vec<NodeId>,
    waited: Vec<MemberRef>,
    mode: Mode,
    strict: bool,
    lossy: bool,
    lease: Option<Lease>,
    /// Directed to lead: append leader-start at this time.
    start_at_ms: Option<u64>,
    /// Epoch whose leader-start this replica appended in this run.
    leading_epoch: Option<Epoch>,
    leader_start_lsn: Lsn,
    /// Epoch and LSN of the last record appended.
    log_end: (Epoch, Lsn),
    flushed: Lsn,
    commit: Lsn,
    applied: Lsn,
    history: Vec<(Epoch, Lsn)>,
    /// Records appended but not applied: LSNs `applied+1 ..= log_end`.
    pending: VecDeque<Record>,
    /// Latest version of each key written by a pending record (`None` = deleted), with the LSN
    /// of that record: what `If-Match` is evaluated against, pending records included.
    overlay: HashMap<Bytes, (Option<Version>, Lsn)>,
    state: KvState,
    /// Append time of the oldest record not yet flushed.
    unflushed_since_ms: Option<u64>,
    shutting_down: bool,
    fatal: Option<String>,
    snapshot_lsn: Lsn,
    /// First LSN still held in the log (earlier ones are only in the snapshot).
    log_start: Lsn,
    snapshot_running: bool,
    bytes_since_snapshot: u64,
    /// Leader: followers streaming from this replica.
    peers: HashMap<NodeId, leader::Peer>,
    /// Leader: (since_lsn, since time) of each waited member: when waiting for it began.
    since: HashMap<MemberRef, (Lsn, u64)>,
    /// Follower: the stream records come from.
    upstream: Option<follower::Upstream>,
    /// Epochs whose leader-start record (held in this log) is lossy.
    lossy_epochs: BTreeSet<Epoch>,
    next_stream: u64,
    /// While unclean: the first leader commit LSN heard; flushing up to it clears the flag.
    unclean_target: Option<Lsn>,
    last_cut: Option<CutRange>,
    /// The last replication peer refused for its identity, if any in this run.
    last_refused: Option<String>,
    /// Average encoded record size, for byte estimates of replication lag.
    avg_record_bytes: u64,
    /// Counts truncations and resets of the log decided here; the log thread counts the ones it
    /// executed, and a flush report made before the latest one executed is ignored (it may
    /// describe records that were cut and replaced in memory since).
    log_gen: u64,
}

impl Core {
    /// Builds the core from what recovery found. Recovered records are durable (flushed) but
    /// not known committed: they are applied once a leader-start above them commits.
    pub fn new(cfg: CoreConfig, rec: Recovered) -> Core {
        let (state, snap_lsn, snap_epoch, mut history, snap_lossy) = match rec.snapshot {
            Some(s) => (s.state, s.lsn, s.epoch, s.history, s.lossy_epochs),
            None => (KvState::default(), Lsn(0), Epoch(0), Vec::new(), Vec::new()),
        };
        let mut log_end = (snap_epoch, snap_lsn);
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
            log_end = (r.epoch, r.lsn);
            note_overlay(&mut overlay, &r);
            pending.push_back(r);
        }
        Core {
            cluster_id: rec.cluster_id,
            epoch: rec.epoch.max(log_end.0),
            applied_rev: rec.applied_rev,
            max_term: 0,
            unclean: rec.unclean,
            role: ReportedRole::None,
            leader: None,
            members: Vec::new(),
            waited: Vec::new(),
            mode: Mode::SemiSync,
            strict: false,
            lossy: false,
            lease: None,
            start_at_ms: None,
            leading_epoch: None,
            leader_start_lsn: Lsn(0),
            log_end,
            flushed: log_end.1,
            commit: snap_lsn,
            applied: snap_lsn,
            history,
            pending,
            overlay,
            state,
            unflushed_since_ms: None,
            shutting_down: false,
            fatal: None,
            snapshot_lsn: snap_lsn,
            log_start: rec.log_start,
            snapshot_running: false,
            bytes_since_snapshot: 0,
            peers: HashMap::new(),
            since: HashMap::new(),
            upstream: None,
            lossy_epochs,
            next_stream: 0,
            unclean_target: None,
            last_cut: None,
            last_refused: None,
            avg_record_bytes: 128,
            log_gen: 0,
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
    pub fn applied_rev(&self) -> u64 {
        self.applied_rev
    }
    pub fn commit(&self) -> Lsn {
        self.commit
    }
    pub fn applied(&self) -> Lsn {
        self.applied
    }
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }
    pub fn log_end(&self) -> (Epoch, Lsn) {
        self.log_end
    }
    pub fn role(&self) -> ReportedRole {
        self.role
    }
    pub fn state(&self) -> &KvState {
        &self.state
    }
    pub fn history(&self) -> &[(Epoch, Lsn)] {
        &self.history
    }
    /// This replica's data directory id.
    pub fn data_id(&self) -> DataId {
        self.cfg.data_id
    }
    /// First LSN the log still holds.
    pub fn log_start(&self) -> Lsn {
        self.log_start
    }
    /// See the `log_gen` field.
    pub fn log_gen(&self) -> u64 {
        self.log_gen
    }
    pub fn is_fatal(&self) -> bool {
        self.fatal.is_some()
    }

    fn leader_hint(&self) -> Option<LeaderHint> {
        self.leader.as_ref().map(|l| LeaderHint {
            id: l.id.clone(),
            addr: l.addr.clone(),
            epoch: self.epoch,
        })
    }

    fn lease_valid(&self, now: u64) -> bool {
        match (self.lease, self.leading_epoch) {
            (Some(l), Some(e)) => l.epoch == e && e == self.epoch && now < l.until_ms,
            _ => false,
        }
    }

    fn lease_left(&self, now: u64) -> u64 {
        match self.lease {
            Some(l) if l.epoch == self.epoch => l.until_ms.saturating_sub(now),
            _ => 0,
        }
    }

    /// Why this replica cannot take writes or leader reads now, if it cannot.
    fn not_serving(&self, now: u64) -> Option<String> {
        if self.role != ReportedRole::Leader {
            return Some(match self.role {
                ReportedRole::None => {
                    "this replica has no role yet (no directive from an active controller)".into()
                }
                ReportedRole::Follower => "this replica is a follower".into(),
                ReportedRole::Fenced => "this replica is fenced".into(),
                ReportedRole::Leader => unreachable!(),
            });
        }
        match self.leading_epoch {
            None => {
                return Some(format!(
                    "leader of epoch {} has not started its epoch yet",
                    self.epoch
                ))
            }
            Some(e) if e != self.epoch => {
                return Some(format!(
                    "epoch {e} is over; epoch {} is current",
                    self.epoch
                ))
            }
            Some(_) => {}
        }
        if self.applied < self.leader_start_lsn {
            return Some(format!(
                "leader-start record {} is not committed yet",
                self.leader_start_lsn
            ));
        }
        if !self.lease_valid(now) {
            return Some(
                "the leader holds no lease (no recent grant from the active controller)".into(),
            );
        }
        None
    }

    /// Validates and appends a client write. On success the returned effect list holds the
    /// record to append; the runtime acknowledges it once [`Core::commit`] reaches its LSN.
    pub fn propose(&mut self, now: u64, req: WriteReq) -> Result<Record, WriteReject> {
        if let Some(f) = &self.fatal {
            return Err(WriteReject::Fatal(f.clone()));
        }
        if self.shutting_down {
            return Err(WriteReject::ShuttingDown);
        }
        if let Some(reason) = self.not_serving(now) {
            return Err(WriteReject::NotLeader {
                reason,
                leader: self.leader_hint(),
            });
        }
        if self.pending.len() >= MAX_PENDING {
            return Err(WriteReject::Overloaded(format!(
                "{} writes are waiting to commit (the limit is {MAX_PENDING}): not appended, retry later",
                self.pending.len()
            )));
        }
        if self.mode == Mode::SemiSync && self.strict && self.waited.is_empty() {
            return Err(WriteReject::NotLeader {
                reason: "strict semi-sync: the sync set is empty, writes are blocked".into(),
                leader: self.leader_hint(),
            });
        }
        let current = self.current_version(&req.key);
        match req.expect {
            Some(Expect::Absent) if current.is_some() => {
                return Err(WriteReject::PreconditionFailed { current })
            }
            Some(Expect::Version(v)) if current != Some(v) => {
                return Err(WriteReject::PreconditionFailed { current })
            }
            _ => {}
        }
        if req.value.is_none() && current.is_none() {
            return Err(WriteReject::NotFound);
        }
        let lsn = self.log_end.1.next();
        let op = match req.value {
            Some(value) => Op::Put {
                key: req.key,
                value,
            },
            None => Op::Delete { key: req.key },
        };
        let rec = Record {
            epoch: self.epoch,
            lsn,
            op,
        };
        self.push_appended(now, rec.clone());
        Ok(rec)
    }

    /// The LSN of the pending (appended, not yet applied) record that decides `key`'s current
    /// version, if any. A refusal judged on it (412, 404) must wait until it commits: answering
    /// earlier would reveal a write that a leader read cannot see yet (and might never).
    pub fn pending_lsn_of(&self, key: &[u8]) -> Option<Lsn> {
        self.overlay.get(key).map(|(_, lsn)| *lsn)
    }

    fn current_version(&self, key: &[u8]) -> Option<Version> {
        match self.overlay.get(key) {
            Some((v, _)) => *v,
            None => self.state.get(key).map(|e| e.version),
        }
    }

    fn push_appended(&mut self, now: u64, rec: Record) {
        self.avg_record_bytes = (self.avg_record_bytes * 63 + rec.frame_len() as u64) / 64;
        if let Op::LeaderStart { lossy: true, .. } = rec.op {
            self.lossy_epochs.insert(rec.epoch);
        }
        if self.history.last().is_none_or(|(e, _)| *e < rec.epoch) {
            self.history.push((rec.epoch, rec.lsn));
        }
        self.log_end = (rec.epoch, rec.lsn);
        if self.unflushed_since_ms.is_none() {
            self.unflushed_since_ms = Some(now);
        }
        note_overlay(&mut self.overlay, &rec);
        self.pending.push_back(rec);
    }

    /// The log writer made everything up to `lsn` durable. Advances commit and applies.
    pub fn on_flushed(&mut self, _now: u64, lsn: Lsn) -> Vec<Effect> {
        let mut fx = Vec::new();
        let lsn = lsn.min(self.log_end.1);
        if lsn > self.flushed {
            self.flushed = lsn;
        }
        if self.flushed >= self.log_end.1 {
            self.unflushed_since_ms = None;
        }
        fx.extend(self.recompute_commit());
        if self.unclean
            && self.leading_epoch.is_some()
            && self.applied >= self.leader_start_lsn
            && self.leader_start_lsn.0 > 0
        {
            // This replica's own epoch is committed: its log is the reference, it holds everything.
            self.unclean = false;
            fx.push(Effect::PersistMeta);
        }
        fx
    }

    /// Moves the commit LSN as far as the role's rule allows, applies, and clears `unclean`
    /// when a follower has caught up. A leader that waits for nobody (async mode, or an empty
    /// waited set) commits on its own flush; a semi-sync leader also needs the flush of every
    /// waited member (`leader.rs`). A follower commits what the leader reported committed and it
    /// has flushed itself.
    fn recompute_commit(&mut self) -> Vec<Effect> {
        let mut fx = Vec::new();
        match self.role {
            ReportedRole::Leader if self.leading_epoch == Some(self.epoch) => {
                let t = self.leader_commit_target();
                self.advance_commit(t);
            }
            ReportedRole::Follower => {
                if let Some(u) = &self.upstream {
                    let t = u.leader_commit.min(self.flushed);
                    self.advance_commit(t);
                }
                if self.unclean && self.unclean_target.is_some_and(|t| self.flushed >= t) {
                    tracing::info!(flushed = %self.flushed, "caught up with the leader's commit LSN: no longer unclean");
                    self.unclean = false;
                    fx.push(Effect::PersistMeta);
                }
            }
            _ => {}
        }
        self.apply_committed();
        fx
    }

    fn advance_commit(&mut self, to: Lsn) {
        if to > self.commit {
            self.commit = to;
        }
    }

    fn apply_committed(&mut self) {
        while self.applied < self.commit {
            let Some(rec) = self.pending.pop_front() else {
                break;
            };
            debug_assert_eq!(rec.lsn, self.applied.next());
            if let Some((_, at)) = rec_key(&rec).and_then(|k| self.overlay.get(k)) {
                if *at == rec.lsn {
                    let k = rec_key(&rec).expect("checked").clone();
                    self.overlay.remove(&k);
                }
            }
            self.state.apply(&rec);
            self.bytes_since_snapshot += rec.frame_len() as u64;
            self.applied = rec.lsn;
        }
    }

    /// Whether a committed write may be acknowledged now: a leader that waits for nobody (async,
    /// or degraded semi-sync) checks its lease after the fsync, just before acknowledging.
    pub fn may_acknowledge(&self, now: u64) -> bool {
        if self.mode == Mode::Async || self.waited.is_empty() {
            self.lease_valid(now)
        } else {
            true
        }
    }

    /// The log writer failed: stop acknowledging for good.
    pub fn on_fatal(&mut self, reason: String) -> Vec<Effect> {
        self.fatal = Some(reason.clone());
        vec![Effect::FailPending(reason)]
    }

    /// Whether SIGTERM was received (replies then carry `Connection: close`).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// SIGTERM: new writes get 503 from now on; pending ones may still commit.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    pub fn read(&self, now: u64, key: &[u8], c: Consistency) -> Result<ReadOk, WriteReject> {
        if c == Consistency::Leader {
            if let Some(reason) = self.not_serving(now) {
                return Err(WriteReject::NotLeader {
                    reason,
                    leader: self.leader_hint(),
                });
            }
        }
        let leading = self.role == ReportedRole::Leader && self.not_serving(now).is_none();
        let (staleness_ms, known_commit) = match (&self.upstream, leading) {
            (_, true) => (Some(0), self.commit),
            (Some(u), false) => (
                Some(now.saturating_sub(u.last_msg_ms)),
                u.leader_commit.max(self.commit),
            ),
            // Not leading and not following: nothing says how current this state is.
            (None, false) => (None, self.commit),
        };
        Ok(ReadOk {
            entry: self.state.get(key).cloned(),
            epoch: self.epoch,
            applied: self.applied,
            staleness_ms,
            lag_records: known_commit.0.saturating_sub(self.applied.0),
        })
    }

    /// Decides whether a controller's answer is to be applied (DESIGN.md §5 ordering rules).
    pub fn check_directive(&self, d: &Directive) -> Verdict {
        if !d.active {
            return Verdict::Ignore("answer from a standby controller carries no role".into());
        }
        if d.cluster_id != 0 && self.cluster_id != 0 && d.cluster_id != self.cluster_id {
            return Verdict::Ignore(format!(
                "directive for deployment {:016x}, but this data directory belongs to {:016x}",
                d.cluster_id, self.cluster_id
            ));
        }
        if d.epoch < self.epoch {
            return Verdict::Ignore(format!(
                "directive epoch {} is below the persisted epoch {}",
                d.epoch, self.epoch
            ));
        }
        if d.epoch == self.epoch {
            if d.rev < self.applied_rev {
                return Verdict::Ignore(format!(
                    "directive rev {} is older than the applied rev {}",
                    d.rev, self.applied_rev
                ));
            }
            if d.controller_term < self.max_term {
                return Verdict::Ignore(format!(
                    "directive from controller term {} after term {} was seen",
                    d.controller_term, self.max_term
                ));
            }
        }
        // Adopting the deployment's identity is persisted with the epoch and rev.
        let adopt = self.cluster_id == 0 && d.cluster_id != 0;
        let persist = (d.epoch > self.epoch || d.rev != self.applied_rev || adopt)
            .then_some((d.epoch, d.rev));
        Verdict::Accept { persist }
    }

    /// Applies an accepted directive (after its epoch and rev were persisted). `sent_at_ms` is
    /// the send time of the heartbeat the directive answers: a lease counts from there.
    pub fn apply_directive(&mut self, now: u64, sent_at_ms: u64, d: &Directive) -> Vec<Effect> {
        let mut fx = Vec::new();
        let was_leading = self.role == ReportedRole::Leader;
        let old_epoch = self.epoch;
        self.epoch = self.epoch.max(d.epoch);
        self.applied_rev = d.rev;
        if self.cluster_id == 0 {
            self.cluster_id = d.cluster_id;
        }
        // Terms order directives within an epoch; a higher epoch (written to etcd by whoever was
        // active) starts the order afresh, so that after an etcd restore, whose election
        // revisions go back, `recover`'s new epoch is followed.
        self.max_term = if d.epoch > old_epoch {
            d.controller_term
        } else {
            self.max_term.max(d.controller_term)
        };
        self.mode = d.mode;
        self.strict = d.strict;
        if !d.members.is_empty() {
            self.members = d.members.iter().map(|m| m.id.clone()).collect();
        }
        for m in &d.waited {
            if !self.waited.contains(m) {
                self.since.insert(m.clone(), (self.log_end.1, now));
            }
        }
        self.waited = d.waited.clone();
        let waited = self.waited.clone();
        self.since.retain(|m, _| waited.contains(m));
        if self.leader.as_ref().map(|l| (&l.id, l.boot_id))
            != d.leader.as_ref().map(|l| (&l.id, l.boot_id))
            || old_epoch != self.epoch
        {
            // Another leader or epoch: the stream from the old one is over.
            self.upstream = None;
        }
        self.leader = d.leader.clone();
        let leads = d.role == Some(Role::Leader)
            && d.leader
                .as_ref()
                .is_some_and(|l| l.id == self.cfg.id && l.boot_id == self.cfg.boot_id);
        if d.role == Some(Role::Leader) && !leads {
            tracing::warn!(epoch = %d.epoch, "directed to lead under another boot id; not leading (the controller will start a new epoch)");
        }
        if leads && self.leading_epoch != Some(d.epoch) && self.log_end.0 >= d.epoch {
            // I1: one process run writes an epoch. This log already holds records of that epoch
            // from an earlier run, so leading it again would write it twice.
            tracing::warn!(epoch = %d.epoch, log_end_epoch = %self.log_end.0,
                "refusing to lead an epoch this log already holds records of; a restart needs a new epoch");
            if was_leading {
                fx.push(Effect::FailPending(format!(
                    "refused to re-lead epoch {}",
                    d.epoch
                )));
            }
            self.role = ReportedRole::None;
            self.lease = None;
            self.start_at_ms = None;
            self.leading_epoch = None;
            return fx;
        }
        if leads {
            let grant = sent_at_ms + (d.lease_ms as f64 * (1.0 - self.cfg.drift)) as u64;
            if self.leading_epoch == Some(d.epoch)
                || (self.role == ReportedRole::Leader && old_epoch == d.epoch)
            {
                // Same epoch: only the lease moves. A grant of 0 ms revokes it at once (a
                // switchover stops the leader's writes this way before the epoch moves).
                if d.lease_ms == 0 {
                    self.lease = None;
                } else {
                    match &mut self.lease {
                        Some(l) if l.epoch == d.epoch => l.until_ms = l.until_ms.max(grant),
                        _ => {
                            self.lease = Some(Lease {
                                epoch: d.epoch,
                                until_ms: grant,
                            })
                        }
                    }
                }
            } else {
                if was_leading {
                    fx.push(Effect::FailPending(format!(
                        "leadership moved to epoch {}",
                        d.epoch
                    )));
                }
                tracing::info!(epoch = %d.epoch, start_after_ms = d.start_after_ms, "directed to lead");
                self.role = ReportedRole::Leader;
                self.leading_epoch = None;
                self.upstream = None;
                self.peers.clear();
                // Waiting for every member begins now, at this log's end.
                self.since = self
                    .waited
                    .iter()
                    .map(|m| (m.clone(), (self.log_end.1, now)))
                    .collect();
                self.lossy = d.lossy;
                self.start_at_ms = Some(now + d.start_after_ms);
                self.lease = Some(Lease {
                    epoch: d.epoch,
                    until_ms: grant,
                });
            }
            fx.extend(self.tick(now));
        } else {
            if was_leading {
                fx.push(Effect::FailPending(format!(
                    "stepped down at epoch {}",
                    d.epoch
                )));
                tracing::info!(epoch = %d.epoch, role = ?d.role, "stepped down");
            }
            self.role = match d.role {
                Some(Role::Follower) => ReportedRole::Follower,
                Some(Role::Fenced) => ReportedRole::Fenced,
                _ => ReportedRole::None,
            };
            self.lease = None;
            self.start_at_ms = None;
            self.leading_epoch = None;
            self.peers.clear();
            if self.role != ReportedRole::Follower {
                self.upstream = None;
            }
        }
        // A smaller waited set (a member dropped) may let the commit LSN move at once.
        fx.extend(self.recompute_commit());
        fx
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
    pub fn tick(&mut self, now: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(at) = self.start_at_ms {
            if now >= at && self.role == ReportedRole::Leader && self.fatal.is_none() {
                self.start_at_ms = None;
                let lsn = self.log_end.1.next();
                let rec = Record {
                    epoch: self.epoch,
                    lsn,
                    op: Op::LeaderStart {
                        leader: self.cfg.id.clone(),
                        lossy: self.lossy,
                    },
                };
                self.leading_epoch = Some(self.epoch);
                self.leader_start_lsn = lsn;
                tracing::info!(epoch = %self.epoch, lsn = %lsn, "starting epoch with a leader-start record");
                self.push_appended(now, rec.clone());
                fx.push(Effect::Append(rec));
            }
        }
        fx
    }

    /// The heartbeat to send now.
    pub fn heartbeat(&self, now: u64, seq: u64) -> Heartbeat {
        let leader = self.role == ReportedRole::Leader;
        Heartbeat {
            seq,
            cluster: self.cfg.cluster.clone(),
            cluster_id: self.cluster_id,
            id: self.cfg.id.clone(),
            data_id: self.cfg.data_id,
            boot_id: self.cfg.boot_id,
            unclean: self.unclean,
            addr: self.cfg.addr.clone(),
            epoch: self.epoch,
            role: self.role,
            log_end_epoch: self.log_end.0,
            log_end_lsn: self.log_end.1,
            flushed_lsn: self.flushed,
            applied_lsn: self.applied,
            commit_lsn: self.commit,
            applied_rev: self.applied_rev,
            max_term: self.max_term,
            since_leader_ms: self
                .upstream
                .as_ref()
                .map(|u| now.saturating_sub(u.last_msg_ms)),
            oldest_unflushed_ms: leader
                .then(|| self.unflushed_since_ms.map_or(0, |t| now.saturating_sub(t))),
            last_sync_ack_ms: if leader {
                self.waiting_info(now).iter().map(|w| w.last_ack_ms).max()
            } else {
                None
            },
            lease_left_ms: leader.then(|| self.lease_left(now)),
            waiting: if leader {
                self.waiting_info(now)
            } else {
                Vec::new()
            },
            last_cut: self.last_cut.clone(),
            refused_peer: self.last_refused.clone(),
        }
    }

    /// The status document.
    pub fn status(&self, now: u64) -> ReplicaStatus {
        let health = if self.fatal.is_some() {
            "fatal"
        } else if self.role == ReportedRole::None {
            "no_role"
        } else if self.role == ReportedRole::Leader && self.leading_epoch.is_none() {
            "starting"
        } else if self.role == ReportedRole::Leader && !self.lease_valid(now) {
            "no_lease"
        } else {
            "ok"
        };
        ReplicaStatus {
            id: self.cfg.id.clone(),
            cluster: self.cfg.cluster.clone(),
            data_id: self.cfg.data_id,
            boot_id: self.cfg.boot_id,
            unclean: self.unclean,
            role: self.role,
            epoch: self.epoch,
            log_end_epoch: self.log_end.0,
            log_end_lsn: self.log_end.1,
            log_start_lsn: self.log_start,
            flushed_lsn: self.flushed,
            commit_lsn: self.commit,
            applied_lsn: self.applied,
            state_digest: format!("{:032x}", self.state.digest()),
            keys: self.state.len() as u64,
            snapshot_lsn: self.snapshot_lsn,
            leader: self.leader_hint(),
            waited: self.waited.clone(),
            lease_left_ms: self.lease_left(now),
            health: health.into(),
            degraded: self.role == ReportedRole::Leader
                && self.waited.is_empty()
                && self.mode == Mode::SemiSync,
            epoch_history: self.history.clone(),
            waiting: if self.role == ReportedRole::Leader {
                self.waiting_info(now)
            } else {
                Vec::new()
            },
            followers: self.follower_progress(now),
            upstream: self.upstream_progress(now),
            last_cut: self.last_cut.clone(),
        }
    }

    /// A snapshot is due: enough log was applied since the last one and none is running.
    pub fn snapshot_due(&self) -> bool {
        !self.snapshot_running
            && self.bytes_since_snapshot >= self.cfg.snapshot_log_bytes
            && self.applied > self.snapshot_lsn
    }

    /// Captures the applied state for a background snapshot (an O(1) clone).
    pub fn begin_snapshot(&mut self) -> Snapshot {
        self.snapshot_running = true;
        self.bytes_since_snapshot = 0;
        let lsn = self.applied;
        let history: Vec<_> = self
            .history
            .iter()
            .copied()
            .filter(|(_, first)| *first <= lsn)
            .collect();
        let epoch = history.last().map_or(Epoch(0), |(e, _)| *e);
        let lossy_epochs = self
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
            state: self.state.clone(),
        }
    }

    /// A resync is about to drop records this replica had flushed and fetch them again: it is
    /// unclean until it holds everything again (DESIGN.md §3). The caller persists the flag.
    pub fn mark_unclean(&mut self) {
        self.unclean = true;
        self.unclean_target = None;
    }

    /// Log compaction removed records below `first`.
    pub fn set_log_start(&mut self, first: Lsn) {
        self.log_start = self.log_start.max(first);
    }

    /// The background snapshot finished (or failed, with `None`).
    pub fn end_snapshot(&mut self, lsn: Option<Lsn>) {
        self.snapshot_running = false;
        if let Some(l) = lsn {
            self.snapshot_lsn = self.snapshot_lsn.max(l);
        }
    }

    /// The protocol invariants; tests call this after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        if !(self.applied <= self.commit
            && self.commit <= self.log_end.1
            && self.flushed <= self.log_end.1)
        {
            return Err(format!(
                "positions out of order: applied {} commit {} flushed {} written {}",
                self.applied, self.commit, self.flushed, self.log_end.1
            ));
        }
        // A leader acknowledges nothing above its own flush. A commit LSN inherited from a
        // snapshot installed before it was made leader (committed by the leader that sent it)
        // may stand above its flush until the install is durable: nothing of its own epoch
        // commits meanwhile, its leader-start waiting behind the install.
        if self.commit > self.flushed.max(self.snapshot_lsn) && self.role == ReportedRole::Leader {
            return Err(format!(
                "leader commit {} above its own flush {}",
                self.commit, self.flushed
            ));
        }
        if self.pending.len() as u64 != self.log_end.1 .0 - self.applied.0 {
            return Err(format!(
                "{} pending records for LSNs {}..={}",
                self.pending.len(),
                self.applied.next(),
                self.log_end.1
            ));
        }
        if self.epoch < self.log_end.0 {
            return Err(format!(
                "epoch {} below the log's last epoch {}",
                self.epoch, self.log_end.0
            ));
        }
        if self
            .history
            .windows(2)
            .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
        {
            return Err(format!("epoch history not increasing: {:?}", self.history));
        }
        Ok(())
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
