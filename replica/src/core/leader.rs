//! The leader's side of log shipping, as part of the engine: accepting follower streams,
//! answering the divergence exchange from the epoch history, checking where a fetch starts,
//! turning flush acknowledgements of the waited set into the commit LSN, and stepping down when
//! a higher epoch shows on the data path.
//!
//! No I/O: the runtime (`repl/leader.rs`) moves the bytes.

use super::role::{LeaderState, RoleState};
use super::{Action, Core};
use baton_common::api::FollowerProgress;
use baton_common::directive::{Mode, WaitInfo};
use baton_common::{DataId, Epoch, Lsn, NodeId};

/// A follower streaming from this leader.
#[derive(Clone, Debug)]
pub(super) struct Peer {
    pub data_id: DataId,
    /// Only the newest stream of a follower counts.
    pub stream: u64,
    /// Flushed LSN acknowledged on this stream, in this leader's epoch.
    pub flushed: Lsn,
    /// When this stream last acknowledged (an instant on the runtime's clock; the reports
    /// carry ages, named `last_ack_ms`).
    pub acked_at_ms: u64,
    /// The oldest record this follower has not acknowledged and since when it has owed it, on
    /// the runtime's clock (`None`: it acknowledged everything this leader appended). A
    /// follower whose disk stalls keeps acknowledging keepalives with an unchanged flushed
    /// LSN: its acks are fresh while what it owes ages, and that age is what holds commits
    /// (reported as `owed_ms`; the controller replaces a sync member owing for
    /// `failure_timeout`). The time is when the record was appended, or for a record
    /// appended before the follower's previous ack covered its predecessor, that ack's time.
    pub owed: Option<(Lsn, u64)>,
    /// Until when this follower promised not to lead a higher epoch, on this leader's clock
    /// (`promise.rs`; 0: no promise).
    pub promised_until_ms: u64,
}

/// Where a follower's stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchStart {
    /// Records from this LSN on.
    Log(Lsn),
    /// The range was compacted: send the newest snapshot, then records after it.
    Snapshot,
}

impl Core {
    /// A follower opened a stream. Returns the stream id, or why it is refused. A follower that
    /// has persisted a higher epoch makes this leader step down at once.
    pub fn leader_accept(
        &mut self,
        now: u64,
        id: &NodeId,
        data_id: DataId,
        follower_epoch: Epoch,
    ) -> (Result<u64, String>, Vec<Action>) {
        if follower_epoch > self.epoch {
            let fx = self.observe_epoch(follower_epoch, &format!("follower {id}"));
            return (
                Err(format!(
                    "follower {id} is at epoch {follower_epoch}, above this replica's epoch {}",
                    self.epoch
                )),
                fx,
            );
        }
        let epoch = self.epoch;
        let me = self.cfg.id.clone();
        let stream = self.next_stream + 1;
        let l = match self.role.leader_mut() {
            Some(l) if l.leading_epoch == Some(epoch) => l,
            _ => {
                return (
                    Err(format!(
                        "this replica does not lead epoch {} (role {:?})",
                        self.epoch,
                        self.role.reported()
                    )),
                    Vec::new(),
                )
            }
        };
        if *id == me {
            return (Err("a replica cannot follow itself".into()), Vec::new());
        }
        l.departed.remove(id);
        l.peers.insert(
            id.clone(),
            Peer {
                data_id,
                stream,
                flushed: Lsn(0),
                acked_at_ms: now,
                owed: (self.log.end.1 > Lsn(0)).then_some((self.log.end.1, now)),
                promised_until_ms: 0,
            },
        );
        self.next_stream = stream;
        self.checked("leader_accept");
        (Ok(stream), Vec::new())
    }

    /// The replication handshake's identity check, before anything the follower says counts
    /// (its epoch included): a follower of another cluster or deployment, or one that is not a
    /// declared member, is refused. Misconfiguration (a wrong address, a reused port) must not
    /// make a leader step down or ship its log to a stranger.
    pub fn leader_check_peer(
        &self,
        id: &NodeId,
        cluster: &str,
        cluster_id: u64,
    ) -> Result<(), String> {
        if cluster != self.cfg.cluster {
            return Err(format!(
                "follower {id} belongs to cluster {cluster:?}, this leader to {:?}",
                self.cfg.cluster
            ));
        }
        if cluster_id != 0 && self.cluster_id != 0 && cluster_id != self.cluster_id {
            return Err(format!(
                "follower {id} belongs to deployment {cluster_id:016x}, this leader to {:016x}",
                self.cluster_id
            ));
        }
        if !self.members.is_empty() && !self.members.contains(id) {
            return Err(format!(
                "{id} is not a declared member of cluster {:?}",
                self.cfg.cluster
            ));
        }
        Ok(())
    }

    /// Whether a stream is still the current one of its follower, in this leader's epoch.
    pub fn leader_stream_alive(&self, id: &NodeId, stream: u64, epoch: Epoch) -> bool {
        self.epoch == epoch
            && self.role.leader().is_some_and(|l| {
                l.leading_epoch == Some(epoch)
                    && l.peers.get(id).is_some_and(|p| p.stream == stream)
            })
    }

    /// A stream closed.
    pub fn leader_detach(&mut self, id: &NodeId, stream: u64) {
        if let Some(l) = self.role.leader_mut() {
            if l.peers.get(id).is_some_and(|p| p.stream == stream) {
                if let Some(p) = l.peers.remove(id) {
                    l.departed.insert(id.clone(), p);
                }
            }
        }
    }

    /// The epoch of the record at `lsn` according to the epoch history (`None` past the end).
    pub fn epoch_of(&self, lsn: Lsn) -> Option<Epoch> {
        if lsn.0 == 0 {
            return Some(Epoch(0));
        }
        if lsn > self.log.end.1 {
            return None;
        }
        self.log
            .history
            .iter()
            .rev()
            .find(|(_, first)| *first <= lsn)
            .map(|(e, _)| *e)
    }

    /// Divergence exchange (Kafka's leader-epoch request): the largest epoch ≤ `queried` in this
    /// log's history, the first LSN after it, and whether a lossy leader-start lies above it.
    pub fn epoch_end(&self, queried: Epoch) -> (Epoch, Lsn, bool) {
        let h = &self.log.history;
        let idx = h.iter().rposition(|(e, _)| *e <= queried);
        let (epoch, end) = match idx {
            Some(i) => {
                let end = h
                    .get(i + 1)
                    .map_or(self.log.end.1.next(), |(_, first)| *first);
                (h[i].0, end)
            }
            // Nothing of ours is that old: the follower's log diverges from our first record.
            None => (
                Epoch(0),
                h.first().map_or(self.log.end.1.next(), |(_, f)| *f),
            ),
        };
        let lossy = self.log.lossy_epochs.iter().any(|e| *e > epoch);
        (epoch, end, lossy)
    }

    /// A follower asks to stream from `from`, its record at `from - 1` having `prev_epoch`.
    pub fn leader_fetch(
        &self,
        id: &NodeId,
        stream: u64,
        from: Lsn,
        prev_epoch: Epoch,
    ) -> Result<FetchStart, String> {
        if !self.leader_stream_alive(id, stream, self.epoch) {
            return Err("the stream is no longer current".into());
        }
        if from.0 == 0 || from > self.log.end.1.next() {
            return Err(format!(
                "fetch from LSN {from} is outside this log (it ends at {})",
                self.log.end.1
            ));
        }
        let prev = Lsn(from.0 - 1);
        if self.epoch_of(prev) != Some(prev_epoch) {
            return Err(format!(
                "fetch from LSN {from} does not follow this log: the follower has epoch {prev_epoch} at LSN {prev}, this log has {:?}",
                self.epoch_of(prev)
            ));
        }
        if from < self.log.start {
            return Ok(FetchStart::Snapshot);
        }
        Ok(FetchStart::Log(from))
    }

    /// A follower acknowledged that its log is durable up to `flushed`.
    pub fn leader_on_ack(
        &mut self,
        now: u64,
        id: &NodeId,
        stream: u64,
        epoch: Epoch,
        flushed: Lsn,
    ) -> Vec<Action> {
        if epoch > self.epoch {
            return self.observe_epoch(epoch, &format!("follower {id}"));
        }
        if epoch < self.epoch {
            return Vec::new();
        }
        let end = self.log.end.1;
        match self.role.leader_mut().and_then(|l| l.peers.get_mut(id)) {
            Some(p) if p.stream == stream => {
                p.flushed = p.flushed.max(flushed.min(end));
                p.acked_at_ms = now;
                if p.owed.is_some_and(|(lsn, _)| p.flushed >= lsn) {
                    p.owed = (p.flushed < end).then_some((end, now));
                }
            }
            _ => return Vec::new(),
        }
        let fx = self.recompute_commit();
        self.checked("leader_on_ack");
        fx
    }

    /// Commit target of a leader: its own flush, and in semi-sync mode the flush acknowledged by
    /// every member of the waited set (a member with another data_id counts as absent).
    pub(super) fn leader_commit_target(&self, l: &LeaderState) -> Lsn {
        let mut c = self.log.flushed;
        if self.mode == Mode::SemiSync {
            for m in &self.waited {
                let f = l
                    .peers
                    .get(&m.id)
                    .filter(|p| p.data_id == m.data_id)
                    .map_or(Lsn(0), |p| p.flushed);
                c = c.min(f);
            }
        }
        c
    }

    /// A higher epoch was seen on the data path: a leader stops leading at once (it does not
    /// adopt the epoch; the next directive or leader stream brings it).
    pub fn observe_epoch(&mut self, epoch: Epoch, from: &str) -> Vec<Action> {
        if epoch <= self.epoch || self.role.leader().is_none() {
            return Vec::new();
        }
        tracing::warn!(epoch = %self.epoch, seen = %epoch, %from, "a higher epoch exists: stepping down");
        let fx = self.stop_leading(
            RoleState::None,
            format!("epoch {epoch} seen from {from}: this leader stepped down"),
        );
        self.checked("observe_epoch");
        fx
    }

    /// The members this leader waits for, for heartbeats and status.
    pub(super) fn waiting_info(&self, l: &LeaderState, now: u64) -> Vec<WaitInfo> {
        self.waited
            .iter()
            .map(|m| {
                let (since_lsn, since_ms) = l.since.get(m).copied().unwrap_or((Lsn(0), now));
                let peer = l.peers.get(&m.id).filter(|p| p.data_id == m.data_id);
                // The ages of a member whose stream closed run from what it last did.
                let aged =
                    peer.or_else(|| l.departed.get(&m.id).filter(|p| p.data_id == m.data_id));
                WaitInfo {
                    id: m.id.clone(),
                    data_id: m.data_id,
                    since_lsn,
                    flushed_lsn: peer.map_or(Lsn(0), |p| p.flushed),
                    last_ack_ms: now
                        .saturating_sub(aged.map_or(since_ms, |p| p.acked_at_ms.max(since_ms))),
                    owed_ms: match aged {
                        Some(p) => p
                            .owed
                            .map_or(0, |(_, t)| now.saturating_sub(t.max(since_ms))),
                        None => now.saturating_sub(since_ms),
                    },
                }
            })
            .collect()
    }

    /// Every follower streaming from this leader.
    pub(super) fn follower_progress(&self, now: u64) -> Vec<FollowerProgress> {
        let Some(l) = self.role.leader() else {
            return Vec::new();
        };
        let mut v: Vec<_> = l
            .peers
            .iter()
            .map(|(id, p)| {
                let behind = self.log.end.1 .0.saturating_sub(p.flushed.0);
                FollowerProgress {
                    id: id.clone(),
                    data_id: p.data_id,
                    flushed_lsn: p.flushed,
                    records_behind: behind,
                    approx_bytes_behind: behind * self.log.avg_record_bytes,
                    last_ack_ms: now.saturating_sub(p.acked_at_ms),
                }
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}
