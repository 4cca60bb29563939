//! Client writes and reads as the engine sees them: whether this replica serves (role, epoch
//! start, lease), `propose` with `If-Match` evaluated against pending records, the bound on
//! pending writes, reads at `leader` and `any` consistency, and whether a committed write may
//! be acknowledged now. The runtime (`node.rs`, `api.rs`) holds the waiters and the HTTP side.

use super::{Action, Core};
use crate::state::Entry;
use crate::wal::{Op, Record};
use baton_common::api::LeaderHint;
use baton_common::directive::{Mode, ReportedRole};
use baton_common::ids::Expect;
use baton_common::{Epoch, Lsn, Version};
use bytes::Bytes;

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
    /// The disk is full (507, not appended): the replica resumes by itself once space is freed.
    InsufficientStorage(String),
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

/// A write request as the core sees it.
#[derive(Clone, Debug)]
pub struct WriteReq {
    pub key: Bytes,
    /// `None` deletes.
    pub value: Option<Bytes>,
    pub expect: Option<Expect>,
}

impl Core {
    pub(super) fn leader_hint(&self) -> Option<LeaderHint> {
        self.leader.as_ref().map(|l| LeaderHint {
            id: l.id.clone(),
            addr: l.addr.clone(),
            epoch: self.epoch,
        })
    }

    /// Whether this leader holds a lease now: the controller's grant for its epoch, or
    /// promises from every other member (`promise.rs`).
    pub(super) fn lease_valid(&self, now: u64) -> bool {
        let Some(l) = self.role.leader() else {
            return false;
        };
        if l.leading_epoch != Some(self.epoch) {
            return false;
        }
        self.granted_until(l) > now || self.promise_lease_until(l) > now
    }

    /// The controller's grant for this epoch: valid before the instant returned (0: none).
    fn granted_until(&self, l: &super::role::LeaderState) -> u64 {
        match l.lease {
            Some(x) if x.epoch == self.epoch => x.until_ms,
            _ => 0,
        }
    }

    /// Milliseconds of lease left, from either source.
    pub(super) fn lease_left(&self, now: u64) -> u64 {
        self.role.leader().map_or(0, |l| {
            let promised = if l.leading_epoch == Some(self.epoch) {
                self.promise_lease_until(l)
            } else {
                0
            };
            self.granted_until(l).max(promised).saturating_sub(now)
        })
    }

    /// This leader serves on follower promises alone (no valid grant from a controller).
    pub fn on_promises_only(&self, now: u64) -> bool {
        self.role
            .leader()
            .is_some_and(|l| self.lease_valid(now) && self.granted_until(l) <= now)
    }

    /// Why this replica cannot take writes or leader reads now, if it cannot.
    fn not_serving(&self, now: u64) -> Option<String> {
        let l = match self.role.reported() {
            ReportedRole::None => {
                return Some(
                    "this replica has no role yet (no directive from an active controller)".into(),
                )
            }
            ReportedRole::Follower => return Some("this replica is a follower".into()),
            ReportedRole::Fenced => return Some("this replica is fenced".into()),
            ReportedRole::Leader => self.role.leader().expect("leader"),
        };
        match l.leading_epoch {
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
        if self.log.applied < l.leader_start_lsn {
            return Some(format!(
                "leader-start record {} is not committed yet",
                l.leader_start_lsn
            ));
        }
        if !self.lease_valid(now) {
            return Some(
                "the leader holds no lease (no recent grant from the active controller, and not \
                 every follower's promise)"
                    .into(),
            );
        }
        None
    }

    /// Validates a client write and appends it: `[Append(record)]`. The runtime acknowledges it
    /// once [`Core::commit`] reaches its LSN and [`Core::may_acknowledge`] allows.
    pub fn propose(&mut self, now: u64, req: WriteReq) -> Result<Vec<Action>, WriteReject> {
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
        if let Some(e) = &self.disk_full {
            return Err(WriteReject::InsufficientStorage(format!(
                "the log cannot be written ({e}): not appended; writes resume once space is freed"
            )));
        }
        if self.log.pending.len() >= MAX_PENDING {
            return Err(WriteReject::Overloaded(format!(
                "{} writes are waiting to commit (the limit is {MAX_PENDING}): not appended, retry later",
                self.log.pending.len()
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
        let op = match req.value {
            Some(value) => Op::Put {
                key: req.key,
                value,
            },
            None => Op::Delete { key: req.key },
        };
        let rec = Record {
            epoch: self.epoch,
            lsn: self.log.end.1.next(),
            op,
        };
        self.push_appended(now, rec.clone());
        self.checked("propose");
        Ok(vec![Action::Append(rec)])
    }

    /// The LSN of the pending (appended, not yet applied) record that decides `key`'s current
    /// version, if any. A refusal judged on it (412, 404) must wait until it commits: answering
    /// earlier would reveal a write that a leader read cannot see yet (and might never).
    pub fn pending_lsn_of(&self, key: &[u8]) -> Option<Lsn> {
        self.log.overlay.get(key).map(|(_, lsn)| *lsn)
    }

    fn current_version(&self, key: &[u8]) -> Option<Version> {
        match self.log.overlay.get(key) {
            Some((v, _)) => *v,
            None => self.log.state.get(key).map(|e| e.version),
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

    pub fn read(&self, now: u64, key: &[u8], c: Consistency) -> Result<ReadOk, WriteReject> {
        let serving = self.not_serving(now);
        if c == Consistency::Leader {
            if let Some(reason) = serving {
                return Err(WriteReject::NotLeader {
                    reason,
                    leader: self.leader_hint(),
                });
            }
        }
        let (staleness_ms, known_commit) = match (self.role.upstream(), serving.is_none()) {
            (_, true) => (Some(0), self.log.commit),
            (Some(u), false) => (
                Some(now.saturating_sub(u.last_msg_ms)),
                u.leader_commit.max(self.log.commit),
            ),
            // Not leading and not following: nothing says how current this state is.
            (None, false) => (None, self.log.commit),
        };
        Ok(ReadOk {
            entry: self.log.state.get(key).cloned(),
            epoch: self.epoch,
            applied: self.log.applied,
            staleness_ms,
            lag_records: known_commit.0.saturating_sub(self.log.applied.0),
        })
    }
}
