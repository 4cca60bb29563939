//! The two ways a cluster state is made from nothing: `init` (the first state, only when none
//! exists and every member reported an empty log) and `recover` (etcd's state behind what the
//! replicas report, or lost while they hold data). Both make a new state lineage (`state_id`);
//! `init` also makes the deployment's identity (`cluster_id`), which `recover` keeps.

use super::ops::op_err;
use super::{names, ClusterCore, ErrorCode, Now, Observed, OpError, Write};
use crate::decide::Heard;
use crate::journal::Kind;
use crate::state::{ClusterState, Control, LeaderRecord, Phase};
use baton_common::directive::{Member, MemberRef, Mode};
use baton_common::Epoch;

impl ClusterCore {
    /// `init`: the first state, only when none exists and every member reported an empty log.
    pub fn init(&mut self, now: Now) -> Result<Write, OpError> {
        self.gate(now)?;
        match &self.observed {
            Observed::Absent => {}
            Observed::Present { .. } => {
                return Err(op_err(
                    ErrorCode::Initialized,
                    "the cluster already has a state",
                ))
            }
            Observed::Unknown => {
                return Err(op_err(ErrorCode::Busy, "the state is being read; retry"))
            }
        }
        let missing: Vec<String> = self
            .cfg
            .members
            .iter()
            .filter(|m| self.reporting(now, &m.id).is_none())
            .map(|m| m.id.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(op_err(
                ErrorCode::MembersMissing,
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
                ErrorCode::NotEmpty,
                format!(
                    "members with data refuse a fresh init: {}",
                    nonempty.join(", ")
                ),
            ));
        }
        let highest = self.heard.values().map(|h| h.hb.epoch.0).max().unwrap_or(0);
        let Some(next) = highest.checked_add(1) else {
            return Err(op_err(
                ErrorCode::Ineligible,
                format!("a member reports epoch {highest}: epochs are exhausted"),
            ));
        };
        let epoch = Epoch(next);
        let mut cands: Vec<&Member> = self.cfg.members.iter().filter(|m| !m.no_failover).collect();
        cands.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        let leader = cands
            .first()
            .ok_or_else(|| op_err(ErrorCode::AllNoFailover, "every member is no_failover"))?;
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
        self.write(now, Some(s), Kind::Init, msg, self.inputs(now))
            .ok_or_else(|| op_err(ErrorCode::Busy, "retry"))
    }

    /// `recover` (DESIGN.md §5): the way out when etcd's state is behind what the replicas
    /// report (restored from an old backup) or lost while they hold data. Writes
    /// `{epoch = 1 + highest reported, leader null, phase promoting, sync_set {}}`; no member is
    /// then known to hold every acknowledged write, so in semi-sync mode the promotion blocks
    /// until `failover --to`, which states the possible loss.
    pub fn recover(&mut self, now: Now) -> Result<Write, OpError> {
        self.gate(now)?;
        let reporting: Vec<&Heard> = self.heard.values().filter(|h| self.fresh(now, h)).collect();
        let (base, why) = match &self.observed {
            Observed::Unknown => {
                return Err(op_err(ErrorCode::Busy, "the state is being read; retry"));
            }
            Observed::Absent => {
                if !reporting.iter().any(|h| h.hb.log_end_lsn.0 > 0) {
                    return Err(op_err(ErrorCode::NotBehind,
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
                        ErrorCode::NotBehind,
                        "the state is not behind what the replicas report: nothing to recover \
                         (use switchover or failover)",
                    ))
                }
            },
        };
        if reporting.is_empty() {
            return Err(op_err(
                ErrorCode::MembersMissing,
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
                .ok_or_else(|| op_err(ErrorCode::EpochOverflow, "epochs are exhausted"))?,
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
        self.ts.behind = None;
        self.write(now, Some(s), Kind::Recover, msg, self.inputs(now))
            .ok_or_else(|| op_err(ErrorCode::Busy, "retry"))
    }

    /// A new deployment identity, without randomness in the core: a mix of the members' data
    /// directory ids (random, made by each replica) and the time. Never 0.
    pub(super) fn new_cluster_id(&self, now: Now) -> u64 {
        let mut z = mix(now.unix_ms);
        for h in self.heard.values() {
            z = mix(z ^ (h.hb.data_id.0 as u64) ^ mix((h.hb.data_id.0 >> 64) as u64));
        }
        z.max(1)
    }

    /// A new state lineage id (init, recover): never 0, and unlike any earlier one in practice.
    pub(super) fn new_state_id(&self, now: Now, epoch: Epoch) -> u64 {
        mix(self.new_cluster_id(now) ^ mix(epoch.0 ^ 0x9e37_79b9_7f4a_7c15)).max(1)
    }
}

/// Mixes 64 bits (splitmix64's finalizer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
