//! The follower's side of log shipping, as part of the pure [`Core`]: the divergence exchange
//! (Kafka's leader-epoch algorithm, DESIGN.md §5), appending the leader's records only when they
//! follow the local log exactly, learning the commit LSN, installing a snapshot, and clearing
//! `unclean` once caught up. Truncation decisions are made here; the runtime archives the cut
//! records to a rollback file and truncates the files.

use super::{note_overlay, Core, Effect};
use crate::snapshot::Snapshot;
use crate::state::KvState;
use crate::wal::{Op, Record};
use baton_common::api::UpstreamProgress;
use baton_common::directive::{LeaderRef, ReportedRole};
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId};
use std::collections::{HashMap, VecDeque};

/// The stream a follower takes records from.
#[derive(Clone, Debug)]
pub(super) struct Upstream {
    pub leader: NodeId,
    pub stream: u64,
    pub phase: Phase,
    pub leader_commit: Lsn,
    pub leader_end: Lsn,
    pub last_msg_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Exchange,
    Streaming,
}

/// The follower's next request in the exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowerNext {
    /// Ask where the leader's log of this epoch ends.
    Query(Epoch),
    /// The logs agree up to `from - 1`: stream from `from`.
    Fetch { from: Lsn, prev_epoch: Epoch },
}

/// Records cut from the log's tail; the runtime archives them, then truncates the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub from: Lsn,
    pub records: Vec<Record>,
    /// The cut reaches at or below the commit LSN this replica knew (only under a lossy
    /// leader-start); it is reported.
    pub below_commit: bool,
}

/// What an append says besides its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendHeader {
    pub leader_epoch: Epoch,
    /// (epoch, LSN) of the record before the first one sent.
    pub prev: (Epoch, Lsn),
    pub commit: Lsn,
    /// The leader's log end when it sent this.
    pub end: Lsn,
}

/// Result of one round of the exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exchange {
    Next {
        next: FollowerNext,
        truncation: Option<Truncation>,
    },
    /// The divergence point lies at or below what this replica already applied (a lossy
    /// failover): archive the log from `from`, drop local state and log, and fetch everything
    /// again from the leader.
    Resync { from: Lsn },
}

impl Core {
    /// The leader this replica should follow now, with the epoch it follows it in.
    pub fn follower_target(&self) -> Option<(LeaderRef, Epoch)> {
        if self.role != ReportedRole::Follower || self.fatal.is_some() {
            return None;
        }
        let l = self.leader.as_ref()?;
        (l.id != self.cfg.id && !l.addr.is_empty()).then(|| (l.clone(), self.epoch))
    }

    /// A leader's stream showed a higher epoch; the runtime persisted it first.
    pub fn adopt_epoch(&mut self, epoch: Epoch) {
        if epoch > self.epoch {
            self.epoch = epoch;
        }
    }

    /// Checks the leader's answer to `Hello` against the leader the directive named (id, boot,
    /// data directory) and this replica's cluster: a wrong address or a reused port must not
    /// make this follower adopt a foreign epoch or splice in a foreign log.
    pub fn follower_check_leader(
        &self,
        expected: &LeaderRef,
        id: &NodeId,
        boot_id: BootId,
        data_id: DataId,
        cluster: &str,
        cluster_id: u64,
    ) -> Result<(), String> {
        if cluster != self.cfg.cluster {
            return Err(format!(
                "{} answers for cluster {cluster:?}, this replica belongs to {:?}",
                expected.addr, self.cfg.cluster
            ));
        }
        if cluster_id != 0 && self.cluster_id != 0 && cluster_id != self.cluster_id {
            return Err(format!(
                "{} answers for deployment {cluster_id:016x}, this replica belongs to {:016x}",
                expected.addr, self.cluster_id
            ));
        }
        if *id != expected.id || boot_id != expected.boot_id {
            return Err(format!(
                "{} answers as {id} (boot {boot_id}), but the directive names leader {} (boot {})",
                expected.addr, expected.id, expected.boot_id
            ));
        }
        if expected.data_id != DataId::default() && data_id != expected.data_id {
            return Err(format!(
                "{} answers with data directory {data_id}, but the directive names {}",
                expected.addr, expected.data_id
            ));
        }
        Ok(())
    }

    /// A new stream to `leader` was accepted at `leader_epoch`; starts the exchange.
    pub fn follower_start(
        &mut self,
        now: u64,
        leader: &NodeId,
        leader_epoch: Epoch,
    ) -> Result<(u64, FollowerNext), String> {
        if leader_epoch != self.epoch {
            return Err(format!(
                "leader epoch {leader_epoch} differs from this replica's epoch {}",
                self.epoch
            ));
        }
        if self.role != ReportedRole::Follower {
            return Err(format!(
                "this replica is not a follower (role {:?})",
                self.role
            ));
        }
        self.next_stream += 1;
        let stream = self.next_stream;
        self.upstream = Some(Upstream {
            leader: leader.clone(),
            stream,
            phase: Phase::Exchange,
            leader_commit: Lsn(0),
            leader_end: Lsn(0),
            last_msg_ms: now,
        });
        Ok((stream, self.exchange_next()))
    }

    fn exchange_next(&self) -> FollowerNext {
        if self.log_end.1 .0 == 0 {
            FollowerNext::Fetch {
                from: Lsn(1),
                prev_epoch: Epoch(0),
            }
        } else {
            FollowerNext::Query(self.log_end.0)
        }
    }

    pub fn follower_stream_current(&self, stream: u64) -> bool {
        self.role == ReportedRole::Follower
            && self.upstream.as_ref().is_some_and(|u| u.stream == stream)
    }

    fn upstream_mut(&mut self, stream: u64) -> Result<&mut Upstream, String> {
        match self.upstream.as_mut() {
            Some(u) if u.stream == stream && self.role == ReportedRole::Follower => Ok(u),
            _ => Err("the stream is no longer current".into()),
        }
    }

    /// First LSN after this log's records of `epoch`.
    fn own_end_of(&self, epoch: Epoch) -> Lsn {
        self.history
            .iter()
            .find(|(e, _)| *e > epoch)
            .map_or(self.log_end.1.next(), |(_, first)| *first)
    }

    /// The leader answered an epoch query with (`epoch`, `end`).
    pub fn follower_on_epoch_end(
        &mut self,
        now: u64,
        stream: u64,
        epoch: Epoch,
        end: Lsn,
        lossy_above: bool,
    ) -> Result<Exchange, String> {
        let u = self.upstream_mut(stream)?;
        u.last_msg_ms = now;
        let cut = end.min(self.own_end_of(epoch));
        let mut truncation = None;
        if cut <= self.log_end.1 {
            let below_commit = cut <= self.commit;
            if below_commit && !lossy_above {
                return Err(format!(
                    "refusing to truncate committed records: the logs diverge at LSN {cut}, at or below the commit LSN {} \
                     and no lossy leader-start lies above it",
                    self.commit
                ));
            }
            if cut <= self.applied {
                return Ok(Exchange::Resync { from: cut });
            }
            let records = self.truncate_suffix(cut);
            truncation = Some(Truncation {
                from: cut,
                records,
                below_commit,
            });
        }
        let next = if self.log_end.0 == epoch || self.log_end.1 .0 == 0 {
            FollowerNext::Fetch {
                from: self.log_end.1.next(),
                prev_epoch: self.log_end.0,
            }
        } else {
            FollowerNext::Query(self.log_end.0)
        };
        Ok(Exchange::Next { next, truncation })
    }

    /// Removes the records with LSN ≥ `from` (all above `applied`) from memory.
    fn truncate_suffix(&mut self, from: Lsn) -> Vec<Record> {
        debug_assert!(from > self.applied);
        self.log_gen += 1;
        let keep = (from.0 - self.applied.0 - 1) as usize;
        let cut: Vec<Record> = self.pending.drain(keep..).collect();
        self.history.retain(|(_, first)| *first < from);
        let prev = Lsn(from.0 - 1);
        let prev_epoch = self.epoch_of(prev).unwrap_or(Epoch(0));
        self.log_end = (prev_epoch, prev);
        self.flushed = self.flushed.min(prev);
        self.commit = self.commit.min(prev);
        self.lossy_epochs.retain(|e| *e <= prev_epoch);
        self.overlay = HashMap::new();
        for r in &self.pending {
            note_overlay(&mut self.overlay, r);
        }
        cut
    }

    /// The exchange is done and the fetch was sent: records may flow.
    pub fn follower_begin_streaming(&mut self, stream: u64) -> Result<(), String> {
        self.upstream_mut(stream)?.phase = Phase::Streaming;
        Ok(())
    }

    fn note_leader_position(
        &mut self,
        now: u64,
        stream: u64,
        leader_epoch: Epoch,
        commit: Lsn,
        end: Lsn,
    ) -> Result<(), String> {
        if leader_epoch != self.epoch {
            return Err(format!(
                "message of epoch {leader_epoch} on a stream of epoch {}",
                self.epoch
            ));
        }
        let u = self.upstream_mut(stream)?;
        if u.phase != Phase::Streaming {
            return Err("records before the exchange finished".into());
        }
        u.last_msg_ms = now;
        u.leader_commit = u.leader_commit.max(commit);
        u.leader_end = u.leader_end.max(end);
        if self.unclean && self.unclean_target.is_none() {
            // The first commit LSN heard after the flag was set: holding it makes us clean.
            self.unclean_target = Some(commit);
        }
        Ok(())
    }

    /// Records from the leader; they must follow this log exactly.
    pub fn follower_on_append(
        &mut self,
        now: u64,
        stream: u64,
        a: AppendHeader,
        records: Vec<Record>,
    ) -> Result<Vec<Effect>, String> {
        let AppendHeader {
            leader_epoch,
            prev,
            commit,
            end,
        } = a;
        self.note_leader_position(now, stream, leader_epoch, commit, end)?;
        if prev != self.log_end {
            return Err(format!(
                "append does not follow this log: it continues ({}, {}) but the log ends at ({}, {})",
                prev.0, prev.1, self.log_end.0, self.log_end.1
            ));
        }
        let mut expect = self.log_end.1.next();
        let mut last_epoch = self.log_end.0;
        for r in &records {
            if r.lsn != expect || r.epoch < last_epoch || r.epoch > leader_epoch {
                return Err(format!(
                    "record ({}, {}) does not fit: expected LSN {expect} with an epoch in {last_epoch}..={leader_epoch}",
                    r.epoch, r.lsn
                ));
            }
            expect = expect.next();
            last_epoch = r.epoch;
        }
        let mut fx = Vec::with_capacity(records.len() + 1);
        for r in records {
            if let Op::LeaderStart { lossy: true, .. } = r.op {
                self.lossy_epochs.insert(r.epoch);
            }
            self.push_appended(now, r.clone());
            fx.push(Effect::Append(r));
        }
        fx.extend(self.recompute_commit());
        Ok(fx)
    }

    /// Nothing new from the leader, but its commit LSN may have moved.
    pub fn follower_on_keepalive(
        &mut self,
        now: u64,
        stream: u64,
        leader_epoch: Epoch,
        commit: Lsn,
        end: Lsn,
    ) -> Result<Vec<Effect>, String> {
        self.note_leader_position(now, stream, leader_epoch, commit, end)?;
        Ok(self.recompute_commit())
    }

    /// The runtime is about to drop the local log and state (resync) or replace them with a
    /// snapshot: forget everything in memory. The caller archives the log first.
    pub fn follower_reset(&mut self, stream: u64) -> Result<(), String> {
        self.upstream_mut(stream)?;
        self.log_gen += 1;
        self.state = KvState::default();
        self.pending = VecDeque::new();
        self.overlay = HashMap::new();
        self.history.clear();
        self.lossy_epochs.clear();
        self.log_end = (Epoch(0), Lsn(0));
        self.flushed = Lsn(0);
        self.commit = Lsn(0);
        self.applied = Lsn(0);
        self.snapshot_lsn = Lsn(0);
        self.log_start = Lsn(1);
        self.bytes_since_snapshot = 0;
        Ok(())
    }

    /// A snapshot from the leader replaces the log and state; the runtime hands the log thread
    /// the matching reset in the same critical section. Applies whatever the stream's fate:
    /// the disk is about to hold this snapshot either way.
    ///
    /// Nothing of it is durable yet: until the log thread has renamed it into place, fsynced the
    /// directory and restarted the log after it, a crash keeps the old log instead. So `flushed`
    /// (what this replica acknowledges and reports) keeps what the old log made durable, which
    /// is below the snapshot, and reaches the snapshot's LSN only when the runtime reports the
    /// install durable through [`on_flushed`](Core::on_flushed) (I2; issue 10, item 5).
    pub fn follower_install_snapshot(&mut self, now: u64, snap: Snapshot) {
        if let Some(u) = self.upstream.as_mut() {
            u.last_msg_ms = now;
        }
        self.log_gen += 1;
        let lsn = snap.lsn;
        self.state = snap.state;
        self.history = snap.history;
        self.pending = VecDeque::new();
        self.overlay = HashMap::new();
        self.lossy_epochs = snap.lossy_epochs.into_iter().collect();
        self.log_end = (snap.epoch, lsn);
        self.flushed = self.flushed.min(lsn);
        self.commit = lsn;
        self.applied = lsn;
        self.snapshot_lsn = lsn;
        self.log_start = lsn.next();
        self.bytes_since_snapshot = 0;
    }

    pub(super) fn upstream_progress(&self, now: u64) -> Option<UpstreamProgress> {
        let u = self.upstream.as_ref()?;
        Some(UpstreamProgress {
            leader: u.leader.clone(),
            leader_log_end: u.leader_end,
            leader_commit: u.leader_commit,
            records_behind: u.leader_end.0.saturating_sub(self.flushed.0),
            since_leader_ms: now.saturating_sub(u.last_msg_ms),
            phase: match u.phase {
                Phase::Exchange => "exchange",
                Phase::Streaming => "streaming",
            }
            .into(),
        })
    }
}
