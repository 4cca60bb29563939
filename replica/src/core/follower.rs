//! The follower's side of log shipping, as part of the engine: the leader's welcome (a higher
//! epoch is persisted before it counts), the divergence exchange (Kafka's leader-epoch
//! algorithm, DESIGN.md §5) with its truncations and resyncs as actions, appending the
//! leader's records only when they follow the local log exactly, learning the commit LSN,
//! installing a snapshot, and clearing `unclean` once caught up. The runtime archives the cut
//! records to a rollback file and truncates the files.

use super::role::RoleState;
use super::{note_overlay, Action, Core};
use crate::snapshot::Snapshot;
use crate::state::KvState;
use crate::wal::{Op, Record};
use baton_common::api::UpstreamProgress;
use baton_common::directive::LeaderRef;
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId};
use std::collections::{HashMap, VecDeque};

/// The stream a follower takes records from.
#[derive(Clone, Debug)]
pub(super) struct Upstream {
    pub leader: NodeId,
    pub stream: u64,
    pub phase: Phase,
    /// Highest commit LSN the leader reported on this stream.
    pub leader_commit: Lsn,
    /// Highest log end the leader reported on this stream.
    pub leader_end: Lsn,
    /// When the leader was last heard on this stream (an instant on the runtime's clock).
    pub last_msg_ms: u64,
    /// The leader's send time (its clock) of the newest message received on this stream: the
    /// next acknowledgement echoes it (`promise.rs`).
    pub leader_sent_ms: u64,
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

impl Core {
    /// The leader this replica should follow now, with the epoch it follows it in.
    /// None while the disk is full: a follower that cannot append takes no stream.
    pub fn follower_target(&self) -> Option<(LeaderRef, Epoch)> {
        if !matches!(self.role, RoleState::Follower(_))
            || self.fatal.is_some()
            || self.disk_full.is_some()
        {
            return None;
        }
        let l = self.leader.as_ref()?;
        (l.id != self.cfg.id && !l.addr.is_empty()).then(|| (l.clone(), self.epoch))
    }

    /// The leader answered the hello: checks it against the leader the directive named (id,
    /// boot, data directory) and this replica's cluster — a wrong address or a reused port must
    /// not make this follower adopt a foreign epoch or splice in a foreign log — and against the
    /// epoch this replica was directed in. A higher leader epoch must be stored first:
    /// `[PersistEpoch]`, then [`follower_epoch_persisted`](Self::follower_epoch_persisted).
    /// The stream starts with [`follower_start`](Self::follower_start) afterwards.
    #[allow(clippy::too_many_arguments)]
    pub fn follower_on_welcome(
        &mut self,
        expected: &LeaderRef,
        directed_epoch: Epoch,
        id: &NodeId,
        boot_id: BootId,
        data_id: DataId,
        cluster: &str,
        cluster_id: u64,
        leader_epoch: Epoch,
    ) -> Result<Vec<Action>, String> {
        if let Err(why) =
            self.follower_check_leader(expected, id, boot_id, data_id, cluster, cluster_id)
        {
            self.note_refused(why.clone());
            return Err(format!("refusing the stream: {why}"));
        }
        if leader_epoch < directed_epoch {
            return Err(format!(
                "{} leads epoch {leader_epoch}, below this replica's epoch {directed_epoch}",
                expected.id
            ));
        }
        if leader_epoch > self.epoch {
            // A leader's stream may bring a higher epoch; it is persisted before it counts.
            return Ok(vec![Action::PersistEpoch {
                epoch: leader_epoch,
                rev: None,
                cluster_id: 0,
            }]);
        }
        Ok(Vec::new())
    }

    /// The higher epoch a leader's stream brought was stored.
    pub fn follower_epoch_persisted(&mut self, epoch: Epoch) {
        if epoch > self.epoch {
            self.epoch = epoch;
        }
        self.checked("follower_epoch_persisted");
    }

    /// Checks the leader's answer to `Hello` against the leader the directive named (id, boot,
    /// data directory) and this replica's cluster.
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
        if let Some(e) = &self.disk_full {
            return Err(format!("the disk is full ({e}): not taking records"));
        }
        let stream = self.next_stream + 1;
        let RoleState::Follower(f) = &mut self.role else {
            return Err(format!(
                "this replica is not a follower (role {:?})",
                self.role.reported()
            ));
        };
        self.next_stream = stream;
        f.upstream = Some(Upstream {
            leader: leader.clone(),
            stream,
            phase: Phase::Exchange,
            leader_commit: Lsn(0),
            leader_end: Lsn(0),
            last_msg_ms: now,
            leader_sent_ms: 0,
        });
        Ok((stream, self.exchange_next()))
    }

    fn exchange_next(&self) -> FollowerNext {
        if self.log.end.1 .0 == 0 {
            FollowerNext::Fetch {
                from: Lsn(1),
                prev_epoch: Epoch(0),
            }
        } else {
            FollowerNext::Query(self.log.end.0)
        }
    }

    pub fn follower_stream_current(&self, stream: u64) -> bool {
        self.role.upstream().is_some_and(|u| u.stream == stream)
    }

    pub(super) fn upstream_mut(&mut self, stream: u64) -> Result<&mut Upstream, String> {
        match self.role.upstream_mut() {
            Some(u) if u.stream == stream => Ok(u),
            _ => Err("the stream is no longer current".into()),
        }
    }

    /// First LSN after this log's records of `epoch`.
    fn own_end_of(&self, epoch: Epoch) -> Lsn {
        self.log
            .history
            .iter()
            .find(|(e, _)| *e > epoch)
            .map_or(self.log.end.1.next(), |(_, first)| *first)
    }

    /// The leader answered an epoch query with (`epoch`, `end`): the next request, and what the
    /// runtime does first. A divergent suffix above what was applied is cut
    /// (`[Truncate]`); a divergence at or below what was applied (a lossy failover) makes this
    /// replica unclean, resets it and fetches everything again (`[StoreUnclean(true), Resync]`).
    pub fn follower_on_epoch_end(
        &mut self,
        now: u64,
        stream: u64,
        epoch: Epoch,
        end: Lsn,
        lossy_above: bool,
    ) -> Result<(FollowerNext, Vec<Action>), String> {
        let u = self.upstream_mut(stream)?;
        u.last_msg_ms = now;
        let cut = end.min(self.own_end_of(epoch));
        let mut fx = Vec::new();
        if cut <= self.log.end.1 {
            let below_commit = cut <= self.log.commit;
            if below_commit && !lossy_above {
                return Err(format!(
                    "refusing to truncate committed records: the logs diverge at LSN {cut}, at or below the commit LSN {} \
                     and no lossy leader-start lies above it",
                    self.log.commit
                ));
            }
            if cut <= self.log.applied {
                tracing::warn!(from = %cut, "the divergence point is below what this replica applied: \
                    archiving and fetching everything again (unclean until caught up)");
                // A resync drops records this replica had flushed and fetches them again: it is
                // unclean until it holds everything again (DESIGN.md §3).
                self.unclean = true;
                self.unclean_target = None;
                self.reset_log();
                self.checked("follower_on_epoch_end");
                let fetch = FollowerNext::Fetch {
                    from: Lsn(1),
                    prev_epoch: Epoch(0),
                };
                return Ok((
                    fetch,
                    vec![Action::StoreUnclean(true), Action::Resync { from: cut }],
                ));
            }
            let records = self.truncate_suffix(cut);
            fx.push(Action::Truncate(Truncation {
                from: cut,
                records,
                below_commit,
            }));
        }
        let next = if self.log.end.0 == epoch || self.log.end.1 .0 == 0 {
            FollowerNext::Fetch {
                from: self.log.end.1.next(),
                prev_epoch: self.log.end.0,
            }
        } else {
            FollowerNext::Query(self.log.end.0)
        };
        self.checked("follower_on_epoch_end");
        Ok((next, fx))
    }

    /// Removes the records with LSN ≥ `from` (all above `applied`) from memory.
    fn truncate_suffix(&mut self, from: Lsn) -> Vec<Record> {
        debug_assert!(from > self.log.applied);
        let prev = Lsn(from.0 - 1);
        let prev_epoch = {
            self.log.history.retain(|(_, first)| *first < from);
            self.log.history.last().map_or(Epoch(0), |(e, _)| *e)
        };
        let prev_epoch = if prev.0 == 0 { Epoch(0) } else { prev_epoch };
        let l = &mut self.log;
        l.gen += 1;
        let keep = (from.0 - l.applied.0 - 1) as usize;
        let cut: Vec<Record> = l.pending.drain(keep..).collect();
        l.end = (prev_epoch, prev);
        l.flushed = l.flushed.min(prev);
        l.commit = l.commit.min(prev);
        l.lossy_epochs.retain(|e| *e <= prev_epoch);
        l.overlay = HashMap::new();
        for r in &l.pending {
            note_overlay(&mut l.overlay, r);
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
    ) -> Result<Vec<Action>, String> {
        let AppendHeader {
            leader_epoch,
            prev,
            commit,
            end,
        } = a;
        self.note_leader_position(now, stream, leader_epoch, commit, end)?;
        if prev != self.log.end {
            return Err(format!(
                "append does not follow this log: it continues ({}, {}) but the log ends at ({}, {})",
                prev.0, prev.1, self.log.end.0, self.log.end.1
            ));
        }
        let mut expect = self.log.end.1.next();
        let mut last_epoch = self.log.end.0;
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
                self.log.lossy_epochs.insert(r.epoch);
            }
            self.push_appended(now, r.clone());
            fx.push(Action::Append(r));
        }
        fx.extend(self.recompute_commit());
        self.checked("follower_on_append");
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
    ) -> Result<Vec<Action>, String> {
        self.note_leader_position(now, stream, leader_epoch, commit, end)?;
        let fx = self.recompute_commit();
        self.checked("follower_on_keepalive");
        Ok(fx)
    }

    /// Forgets the log and state in memory (a resync); the runtime archives the log first.
    fn reset_log(&mut self) {
        let l = &mut self.log;
        l.gen += 1;
        l.state = KvState::default();
        l.pending = VecDeque::new();
        l.overlay = HashMap::new();
        l.history.clear();
        l.lossy_epochs.clear();
        l.end = (Epoch(0), Lsn(0));
        l.flushed = Lsn(0);
        l.commit = Lsn(0);
        l.applied = Lsn(0);
        l.start = Lsn(1);
        self.snap.lsn = Lsn(0);
        self.snap.bytes_since = 0;
    }

    /// A snapshot from the leader (received in full on the stream `stream`, verified) replaces
    /// the log and state: `[InstallSnapshot]`, which the runtime hands the log thread in the
    /// same critical section. A stream that is no longer current installs nothing (`[]`, and
    /// the runtime discards the file).
    ///
    /// Nothing of it is durable yet: until the log thread has renamed it into place, fsynced the
    /// directory and restarted the log after it, a crash keeps the old log instead. So `flushed`
    /// (what this replica acknowledges and reports) keeps what the old log made durable, which
    /// is below the snapshot, and reaches the snapshot's LSN only when the runtime reports the
    /// install durable through [`on_flushed`](Core::on_flushed) (I2; issue 10, item 5).
    pub fn follower_install_snapshot(
        &mut self,
        now: u64,
        stream: u64,
        snap: Snapshot,
    ) -> Vec<Action> {
        let Ok(u) = self.upstream_mut(stream) else {
            return Vec::new();
        };
        u.last_msg_ms = now;
        let lsn = snap.lsn;
        let l = &mut self.log;
        l.gen += 1;
        l.state = snap.state;
        l.history = snap.history;
        l.pending = VecDeque::new();
        l.overlay = HashMap::new();
        l.lossy_epochs = snap.lossy_epochs.into_iter().collect();
        l.end = (snap.epoch, lsn);
        l.flushed = l.flushed.min(lsn);
        l.commit = lsn;
        l.applied = lsn;
        l.start = lsn.next();
        self.snap.lsn = lsn;
        self.snap.bytes_since = 0;
        self.checked("follower_install_snapshot");
        vec![Action::InstallSnapshot { lsn }]
    }

    pub(super) fn upstream_progress(&self, now: u64) -> Option<UpstreamProgress> {
        let u = self.role.upstream()?;
        Some(UpstreamProgress {
            leader: u.leader.clone(),
            leader_log_end: u.leader_end,
            leader_commit: u.leader_commit,
            records_behind: u.leader_end.0.saturating_sub(self.log.flushed.0),
            since_leader_ms: now.saturating_sub(u.last_msg_ms),
            phase: match u.phase {
                Phase::Exchange => "exchange",
                Phase::Streaming => "streaming",
            }
            .into(),
        })
    }
}
