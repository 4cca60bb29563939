//! Promotion (DESIGN.md §5 steps 1–4): start one (a new epoch in the `promoting` phase, the
//! replaced leader kept as `prev_leader`), collect the members fenced at the new epoch, then
//! record the leader `decide::choose` picks — or the operator's `failover --to` target within
//! the rules it may not break ([`ClusterCore::forced_choice`]) — with its sync set.

use super::{names, ClusterCore, Now, Write};
use crate::decide::{self, Choice, Fenced};
use crate::journal::Kind;
use crate::state::{ClusterState, LeaderRecord, Op, OpRecord, Phase};
use baton_common::directive::{Mode, ReportedRole};
use baton_common::{Epoch, NodeId};

impl ClusterCore {
    /// Step 1: a new epoch above every one recorded or reported, the leader replaced, the
    /// `promoting` phase (with the operator's `op` for a forced failover).
    pub(super) fn start_promotion(
        &mut self,
        now: Now,
        state: &ClusterState,
        kind: Kind,
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
                Kind::Refusal,
                "epochs_exhausted",
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
        // While promoting, `lossy` says the epoch being replaced was lossy: its leader may have
        // died before writing its lossy leader-start, and then the next one must be lossy too
        // (`step_promotion`). No leader is directed meanwhile, so no leader-start reads it.
        s.lossy = state.lossy;
        let msg = format!("{why}; promoting at epoch {}", s.epoch);
        self.write(now, Some(s), kind, msg, self.inputs(now))
    }

    /// The members that reported fenced at the promotion's epoch since it was first seen.
    pub(super) fn fenced(&self, state: &ClusterState) -> Vec<Fenced> {
        let since = self.ts.promoting_since_ms.unwrap_or(0);
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

    /// Steps 2–4: once every reachable member reported fenced (or four heartbeat intervals
    /// passed), record the chosen leader; journal a blocked promotion once per reason.
    pub(super) fn step_promotion(&mut self, now: Now, state: &ClusterState) -> Option<Write> {
        let fenced = self.fenced(state);
        let reachable: Vec<&NodeId> = self
            .heard
            .iter()
            .filter(|(_, h)| self.fresh(now, h))
            .map(|(id, _)| id)
            .collect();
        let all_in = reachable
            .iter()
            .all(|id| fenced.iter().any(|f| &f.id == *id));
        let waited = self
            .ts
            .promoting_since_ms
            .map_or(0, |t| now.ms.saturating_sub(t));
        if !(all_in || waited >= 4 * self.cfg.heartbeat_interval_ms) || fenced.is_empty() {
            if fenced.is_empty() && waited >= self.cfg.failure_timeout_ms {
                return self.refuse(
                    now,
                    Kind::Blocked,
                    "no_fenced_member",
                    "blocked: no member has reported its log at the new epoch".into(),
                );
            }
            return None;
        }
        let forced = state
            .op
            .as_ref()
            .filter(|o| matches!(o.op, Op::Failover { .. }));
        let choice = match forced {
            Some(op) => match self.forced_choice(state, &fenced, &op.op) {
                Ok(c) => c,
                Err(why) => {
                    // Waiting cannot make this target eligible (it reported, and it is unclean
                    // or not a holder of every acknowledged write without `force`): holding the
                    // promotion for it until the deadline would only keep the cluster leaderless.
                    let mut s = state.clone();
                    s.op = None;
                    let msg = format!(
                        "operation {} ({}) released: {why}; the promotion at epoch {} continues under the automatic rules",
                        op.id, op.op, state.epoch
                    );
                    return self.write(now, Some(s), Kind::Abort, msg, self.inputs(now));
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
                // A lossy epoch being replaced carries over while the new leader's log holds
                // nothing of it (its lossy leader-start may never have been written): the
                // holders of what that promotion cut still hold it.
                let carried = state.lossy && f.hb.log_end_epoch.0 < state.epoch.0.saturating_sub(1);
                let lossy = lossy || carried;
                s.lossy = lossy || state.mode == Mode::Async;
                let msg = format!(
                    "promoted {id} at epoch {} (log end {}/{}{}); sync set [{}]",
                    s.epoch,
                    log_end.0,
                    log_end.1,
                    if lossy { ", lossy" } else { "" },
                    names(&s.sync_set)
                );
                self.write(now, Some(s), Kind::Promoted, msg, serde_json::json!({
                    "fenced": fenced.iter().map(|f| serde_json::json!({"id": f.id, "log_end": [f.hb.log_end_epoch, f.hb.log_end_lsn], "unclean": f.hb.unclean})).collect::<Vec<_>>()
                }))
            }
            Choice::Blocked(why) => self.refuse(
                now,
                Kind::Blocked,
                "no_eligible_member",
                format!("blocked: {why}"),
            ),
        }
    }

    /// `failover --to M`: the operator's choice, within the rules it may not break. `Err` when
    /// the target reported and can never qualify under this request (waiting will not help).
    pub(super) fn forced_choice(
        &self,
        state: &ClusterState,
        fenced: &[Fenced],
        op: &Op,
    ) -> Result<Choice, String> {
        let Op::Failover {
            to,
            force,
            allow_data_loss: allow,
            planned,
        } = op
        else {
            return Ok(Choice::Blocked(format!("operation {op} is not a failover")));
        };
        let (force, allow) = (*force, *allow);
        let Some(f) = fenced.iter().find(|f| &f.id == to) else {
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
        // In semi-sync mode the holders of every acknowledged write are known (whatever
        // unacknowledged tail another member holds); in async mode only a target at the best
        // reported end is known to lose nothing. (Unclean is judged above, by allow_data_loss.)
        let holds_acked = match state.mode {
            Mode::SemiSync => {
                decide::holds_acked(state, state.prev_leader.as_ref(), to, Some(f.hb.data_id))
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
            decide::promotion_sync_set(state, fenced, f, self.cfg.sync_size, !planned)
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
}
