//! The driver: one order in which a step of the engine ([`Core`]) is carried out, shared by
//! the runtime (`driver/node.rs`, for [`Node`](crate::node::Node)) and the seeded simulation
//! (`tests/src/sim/replica.rs`). [`step`] executes the action list in order through an [`Io`],
//! then answers the writes and refusal barriers the commit LSN reached, lets the runtime
//! publish progress (flushed LSN, pending writes, streams woken), and starts a snapshot when
//! one is due. A `PersistEpoch` and an `Ignore` are handed back ([`Stepped`]): the caller
//! stores the epoch (off its lock or executor) and reports it to the engine with the matching
//! `…_persisted` input, whose actions come back here.
//!
//! No caller re-implements this order. Nothing here does I/O, reads a clock or needs tokio:
//! the [`Io`] implementation does those.

pub mod node;

use crate::core::{Action, Core, Truncation};
use crate::snapshot::Snapshot;
use crate::wal::Record;
use baton_common::{Epoch, Lsn};
use std::collections::BTreeMap;

/// How a waiting client write is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteAnswer {
    /// Its record committed and the commit rule admits acknowledging it now.
    Committed,
    /// Its record committed, but this leader's lease expired: the outcome is unknown to the
    /// client (the record may or may not survive a failover).
    LeaseExpired,
    /// `FailPending`: appended, but this replica can no longer tell whether it commits.
    Failed(String),
}

/// What a runtime does for the engine. Log writes (`append` … `install_snapshot`) are handed
/// over in list order, before the next action; the runtime keeps them in that order.
pub trait Io {
    /// A client write waiting for its record (keyed by LSN) to commit.
    type Write;
    /// A refusal judged on a pending record, waiting for that record to commit.
    type Barrier;

    fn core(&mut self) -> &mut Core;
    fn waiters(&mut self) -> &mut BTreeMap<Lsn, Self::Write>;
    fn barriers(&mut self) -> &mut Vec<(Lsn, Self::Barrier)>;
    /// The monotonic clock (ms) the leader's lease is judged on.
    fn now_ms(&self) -> u64;

    /// `Append`: hand the record to the log writer (and the tail leader streams read).
    fn append(&mut self, rec: Record);
    /// `StoreUnclean`: store the flag once everything appended before it is durable.
    fn store_unclean(&mut self, unclean: bool);
    /// `Truncate`: archive the cut records, then cut the log.
    fn truncate(&mut self, t: Truncation);
    /// `Resync`: archive the log from `from` on, set the snapshots aside, empty the log.
    fn resync(&mut self, from: Lsn);
    /// `InstallSnapshot`: make the snapshot received from the leader the newest one and
    /// restart the log after `lsn`; report it durable like a flush.
    fn install_snapshot(&mut self, lsn: Lsn);

    fn answer_write(&mut self, w: Self::Write, answer: WriteAnswer);
    /// `Ok`: the record committed, the refusal stands. `Err`: given up, for this reason.
    fn answer_barrier(&mut self, b: Self::Barrier, answer: Result<(), String>);

    /// The step is over: publish what may have changed (flushed LSN, pending writes) and wake
    /// whoever streams the log.
    fn published(&mut self);
    /// Write `snap` in the background; commit it only if the log generation is still `gen`,
    /// then report it to the engine (`end_snapshot`, `set_log_start` after compaction).
    fn start_snapshot(&mut self, snap: Snapshot, gen: u64);
}

/// What a step leaves to its caller.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stepped {
    /// `PersistEpoch`: store this epoch (and rev, deployment id) durably, then report it.
    pub persist: Option<(Epoch, Option<u64>, u64)>,
    /// The engine ignored the input, for this reason.
    pub ignored: Option<String>,
    /// `Fatal`: the engine cannot go on; the caller stops the replica with this reason (off
    /// its lock). Nothing is acknowledged in such a step.
    pub fatal: Option<String>,
}

/// Carries out one step of the engine: `fx` is the action list the step returned.
pub fn step<I: Io>(io: &mut I, fx: Vec<Action>) -> Stepped {
    let mut out = Stepped::default();
    for a in fx {
        match a {
            Action::PersistEpoch {
                epoch,
                rev,
                cluster_id,
            } => out.persist = Some((epoch, rev, cluster_id)),
            Action::Ignore(why) => out.ignored = Some(why),
            Action::Fatal(why) => out.fatal = Some(why),
            Action::Append(rec) => io.append(rec),
            Action::FailPending(reason) => {
                for (_, w) in std::mem::take(io.waiters()) {
                    io.answer_write(w, WriteAnswer::Failed(reason.clone()));
                }
                for (_, b) in std::mem::take(io.barriers()) {
                    io.answer_barrier(b, Err(reason.clone()));
                }
            }
            Action::StoreUnclean(u) => io.store_unclean(u),
            Action::Truncate(t) => io.truncate(t),
            Action::Resync { from } => io.resync(from),
            Action::InstallSnapshot { lsn } => io.install_snapshot(lsn),
        }
    }
    if out.fatal.is_some() {
        return out;
    }
    acknowledge(io);
    io.published();
    let core = io.core();
    if core.snapshot_due() {
        let snap = core.begin_snapshot();
        let gen = core.log_gen();
        io.start_snapshot(snap, gen);
    }
    out
}

/// Answers the writes and refusal barriers the commit LSN has reached.
fn acknowledge<I: Io>(io: &mut I) {
    let commit = io.core().commit();
    if io
        .waiters()
        .first_key_value()
        .is_some_and(|(l, _)| *l <= commit)
    {
        let now = io.now_ms();
        let answer = if io.core().may_acknowledge(now) {
            WriteAnswer::Committed
        } else {
            WriteAnswer::LeaseExpired
        };
        loop {
            let w = match io.waiters().first_entry() {
                Some(e) if *e.key() <= commit => e.remove(),
                _ => break,
            };
            io.answer_write(w, answer.clone());
        }
    }
    if io.barriers().iter().any(|(l, _)| *l <= commit) {
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(io.barriers())
            .into_iter()
            .partition(|(l, _)| *l <= commit);
        *io.barriers() = keep;
        for (_, b) in done {
            io.answer_barrier(b, Ok(()));
        }
    }
}
