//! Operator requests (DESIGN.md §7) and their typed refusals: `switchover`, `failover`,
//! `set_control` (pause/resume), the readiness every request needs, and the timeout of an
//! operation stored in the state (`expire_op`). `init` and `recover` are `bootstrap.rs`.
//! The core names the error ([`ErrorCode`]); the API layer picks the HTTP status.

use super::{ClusterCore, Now, Write};
use crate::decide;
use crate::journal::Kind;
use crate::state::{ClusterState, Control, Op, OpRecord, Phase};
use baton_common::directive::{MemberRef, Mode};
use baton_common::{Lsn, NodeId};

/// Why an operator request was refused: the code callers act on, and the message for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
}

/// The refusals of operator requests. [`ErrorCode::as_str`] is the `error` field of the API's
/// JSON answer (a stable interface: `batonctl` and scripts match on it); the HTTP status is
/// the API layer's choice (`api.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// This controller is not the active one (or is outside its lease window).
    NotActive,
    /// A state change is being written, or the state is being read: retry.
    Busy,
    /// No cluster state yet: `init` first.
    NotInitialized,
    /// etcd's state is behind what the replicas report: `recover` first.
    StateBehind,
    /// Another operation is running.
    OperationRunning,
    /// The cluster's phase does not allow the request.
    Phase,
    NoLeader,
    LeaderUnreachable,
    /// The requested target may not take over under this request.
    Ineligible,
    /// No member can take over without losing writes.
    NoCandidate,
    /// `init` finds every member marked `no_failover` (a configuration error; wire code
    /// `no_candidate` too).
    AllNoFailover,
    /// The target may lack acknowledged writes and `force` was not given.
    MayLoseWrites,
    /// `init` on a cluster that has a state.
    Initialized,
    /// Members the request needs have not reported.
    MembersMissing,
    /// `init` while members hold data.
    NotEmpty,
    /// `recover` while the state is not behind.
    NotBehind,
    EpochOverflow,
}

impl ErrorCode {
    /// The wire code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotActive => "not_active",
            ErrorCode::Busy => "busy",
            ErrorCode::NotInitialized => "not_initialized",
            ErrorCode::StateBehind => "state_behind",
            ErrorCode::OperationRunning => "operation_running",
            ErrorCode::Phase => "phase",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::LeaderUnreachable => "leader_unreachable",
            ErrorCode::Ineligible => "ineligible",
            ErrorCode::NoCandidate | ErrorCode::AllNoFailover => "no_candidate",
            ErrorCode::MayLoseWrites => "may_lose_writes",
            ErrorCode::Initialized => "initialized",
            ErrorCode::MembersMissing => "members_missing",
            ErrorCode::NotEmpty => "not_empty",
            ErrorCode::NotBehind => "not_behind",
            ErrorCode::EpochOverflow => "epoch_overflow",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(super) fn op_err(code: ErrorCode, message: impl Into<String>) -> OpError {
    OpError {
        code,
        message: message.into(),
    }
}
fn running(op: &OpRecord) -> OpError {
    op_err(
        ErrorCode::OperationRunning,
        format!("operation {} ({}) is running", op.id, op.op),
    )
}

impl ClusterCore {
    /// What every request needs first: this controller active, and no write in flight.
    pub(super) fn gate(&self, now: Now) -> Result<(), OpError> {
        if !self.active_at(now) {
            return Err(op_err(
                ErrorCode::NotActive,
                format!(
                    "this controller is not active; the active one is {}",
                    self.active_addr.clone().unwrap_or_else(|| "unknown".into())
                ),
            ));
        }
        if self.ts.inflight {
            return Err(op_err(
                ErrorCode::Busy,
                "a state change is being written; retry",
            ));
        }
        Ok(())
    }

    /// [`Self::gate`], then a state that is read and not behind the replicas.
    fn known_state(&self, now: Now) -> Result<(ClusterState, u64), OpError> {
        self.gate(now)?;
        let (s, r) = self.state().ok_or_else(|| {
            op_err(
                ErrorCode::NotInitialized,
                "the cluster has no state yet: run `batonctl init`",
            )
        })?;
        if let Some(why) = self.behind_now(s, r) {
            return Err(op_err(ErrorCode::StateBehind, why));
        }
        Ok((s.clone(), r))
    }

    /// [`Self::known_state`] with no operation running.
    fn ready_for_op(&self, now: Now) -> Result<(ClusterState, u64), OpError> {
        let (s, r) = self.known_state(now)?;
        match &s.op {
            Some(op) => Err(running(op)),
            None => Ok((s, r)),
        }
    }

    /// The operation in the state has run out of time (counted from when this controller first
    /// saw it, on its own monotonic clock: a wall-clock deadline would move with clock steps):
    /// a switchover is aborted, a forced failover releases its promotion.
    pub(super) fn expire_op(&mut self, now: Now, state: &ClusterState) -> Option<Write> {
        let op = state.op.as_ref()?;
        let seen = self.ts.op_seen.as_ref().map_or(now.ms, |(_, t)| *t);
        let timeout = op.timeout_ms.unwrap_or(60_000).min(60_000);
        if now.ms.saturating_sub(seen) <= timeout {
            return None;
        }
        let mut s = state.clone();
        s.op = None;
        let msg = match state.phase {
            Phase::Switching => {
                s.phase = Phase::Steady;
                format!("switchover {} aborted: the target did not catch up before the deadline; the leader keeps leading", op.id)
            }
            // A forced failover whose target could not be promoted in time releases the
            // promotion: it goes on under the automatic rules, and the operator may issue
            // another `failover --to` (otherwise the op would hold the cluster leaderless).
            Phase::Promoting => format!(
                "operation {} ({}) expired before its target was promoted; the promotion at epoch {} continues under the automatic rules",
                op.id, op.op, state.epoch
            ),
            Phase::Steady => return None,
        };
        self.write(now, Some(s), Kind::Abort, msg, self.inputs(now))
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
                ErrorCode::Phase,
                format!(
                    "the cluster is {:?}; a switchover needs a steady leader",
                    state.phase
                ),
            ));
        }
        let leader = state
            .leader
            .clone()
            .ok_or_else(|| op_err(ErrorCode::NoLeader, "there is no leader to switch from"))?;
        if !self.member_ok(
            now,
            &MemberRef {
                id: leader.id.clone(),
                data_id: leader.data_id,
            },
        ) {
            return Err(op_err(
                ErrorCode::LeaderUnreachable,
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
                .reporting(now, id)
                .ok_or(format!("{id} is not reporting"))?;
            if h.hb.unclean {
                return Err(format!("{id} is unclean"));
            }
            // Not the replaced leader: the target of a switchover is never the leader.
            if state.mode == Mode::SemiSync
                && !decide::holds_acked(&state, None, id, Some(h.hb.data_id))
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
                eligible(&t).map_err(|e| op_err(ErrorCode::Ineligible, e))?;
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
                        ErrorCode::NoCandidate,
                        "no member can take over without losing writes",
                    )
                })?,
        };
        // A switchover this controller starts is not one found at takeover.
        self.ts.switch_takeover = false;
        let mut s = state.clone();
        s.phase = Phase::Switching;
        s.op = Some(OpRecord {
            id: op_id.clone(),
            op: Op::Switchover { to: target.clone() },
            deadline_unix_ms: now.unix_ms.saturating_add(timeout_ms.clamp(100, 60_000)),
            timeout_ms: Some(timeout_ms.clamp(100, 60_000)),
        });
        let msg = format!("switchover {op_id} to {target} requested: {} stops writes until {target} holds its final LSN", leader.id);
        self.write(now, Some(s), Kind::Switchover, msg, self.inputs(now))
            .ok_or_else(|| op_err(ErrorCode::Busy, "retry"))
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
        let (state, _) = self.known_state(now)?;
        if state.member(&to).is_none() {
            return Err(op_err(
                ErrorCode::Ineligible,
                format!("{to} is not a member"),
            ));
        }
        if let Some(h) = self.heard.get(&to) {
            if h.hb.unclean && !allow_data_loss {
                return Err(op_err(ErrorCode::Ineligible, format!("{to} is unclean: it may lack acknowledged writes; only allow_data_loss promotes it")));
            }
        }
        let op = OpRecord {
            id: op_id.clone(),
            op: Op::Failover {
                planned: false,
                to: to.clone(),
                force,
                allow_data_loss,
            },
            deadline_unix_ms: now.unix_ms + 60_000,
            timeout_ms: Some(60_000),
        };
        if let Some(o) = &state.op {
            return Err(running(o));
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
            if !decide::holds_acked(&state, replaced, &to, data_id) {
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
                return Err(op_err(ErrorCode::MayLoseWrites, format!(
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
                    Kind::ManualFailover,
                    format!(
                        "failover {op_id} to {to} requested (continuing the promotion at epoch {})",
                        state.epoch
                    ),
                    self.inputs(now),
                )
                .ok_or_else(|| op_err(ErrorCode::Busy, "retry"));
        }
        // Journaled as `manual_failover`: the anti-flapping budget counts automatic ones only.
        self.start_promotion(
            now,
            &state,
            Kind::ManualFailover,
            format!("manual failover {op_id} to {to}"),
            Some(op),
        )
        .ok_or_else(|| op_err(ErrorCode::Busy, "retry"))
    }

    /// `pause` / `resume` automatic failover.
    pub fn set_control(&mut self, now: Now, control: Control) -> Result<Write, OpError> {
        let (state, _) = self.ready_for_op(now).or_else(|e| {
            // `operation_running` does not stop pause/resume; `state_behind` does (a write
            // would move the state's revision past what the replicas applied and hide it).
            if e.code == ErrorCode::OperationRunning {
                self.state().map(|(s, r)| (s.clone(), r)).ok_or(e)
            } else {
                Err(e)
            }
        })?;
        let mut s = state;
        s.control = control;
        let (kind, msg) = match control {
            Control::Manual => (
                Kind::Pause,
                "automatic failover paused: failover is manual only".to_string(),
            ),
            Control::Auto => (Kind::Resume, "automatic failover resumed".to_string()),
        };
        self.write(now, Some(s), kind, msg, serde_json::Value::Null)
            .ok_or_else(|| op_err(ErrorCode::Busy, "retry"))
    }
}
