//! Is the recorded leader failed, and may this controller act on what it sees? One home
//! for leader health ([`ClusterCore::leader_health`], the `decide::assess_leader` verdict from
//! this controller's view), the recorded leader alive but not leading, and "etcd state behind
//! replicas" (latched per state rev until `recover`). `step_steady` turns these into at most
//! one write: a restart or failover promotion, a refusal, or sync-set upkeep. Also the dry run.
//!
//! Which member is promoted is `promotion.rs`; the sync set's upkeep is `sync_set.rs`.

use super::{ClusterCore, Now, Write};
use crate::decide::{self, Choice, Fenced, Heard, LeaderHealth};
use crate::journal::Kind;
use crate::state::{ClusterState, Control, Phase};
use baton_common::directive::{Mode, ReportedRole};
use baton_common::NodeId;
use serde::Serialize;

/// An automatic-failover dry run (DESIGN.md §7 `dry-run`).
#[derive(Clone, Debug, Serialize)]
pub struct DryRun {
    pub leader_health: String,
    /// A planned failover due now (DESIGN.md §5: the leader alive but cut from its followers,
    /// its flush stuck, its disk full) and its target: "TRIGGER: planned failover to ID".
    pub planned: Option<String>,
    pub would_fail_over: bool,
    pub candidate: Option<NodeId>,
    pub expected_loss_records: Option<u64>,
    pub blocking: Vec<String>,
}

impl ClusterCore {
    /// The verdict on the recorded leader from what this controller heard (one home for it:
    /// the steady phase, a running switchover and the dry run all ask here).
    pub(super) fn leader_health(&self, now: Now, state: &ClusterState) -> LeaderHealth {
        let heard: Vec<(NodeId, Option<Heard>)> = state
            .members
            .iter()
            .map(|m| (m.id.clone(), self.heard.get(&m.id).cloned()))
            .collect();
        let t = decide::Timing {
            failure_timeout_ms: self.cfg.failure_timeout_ms,
        };
        decide::assess_leader(
            now.ms,
            self.ts.active_since_ms,
            state,
            &heard,
            self.standby_hears,
            t,
        )
    }

    /// When the leader's failure would be proven if nothing more is heard of it (DESIGN.md §5
    /// detection (a) and (c): the leader silent for a failure timeout, and every reporting
    /// follower without its stream as long): the runtime's cluster loop looks again then
    /// rather than at its next poll, so a failover starts on time, not up to a poll late.
    /// `None` while the leader was heard within a quarter of the failure timeout.
    pub fn failure_due_at(&self, now: Now) -> Option<u64> {
        let (state, _) = self.state()?;
        let l = state.leader.as_ref()?;
        let ft = self.cfg.failure_timeout_ms;
        let lh = self.heard.get(&l.id)?;
        if now.ms.saturating_sub(lh.at_ms) < ft / 4 {
            return None;
        }
        let mut due = lh.at_ms.saturating_add(ft);
        for (id, h) in &self.heard {
            if *id == l.id || !self.fresh(now, h) || state.member(id).is_none() {
                continue;
            }
            let since = h.hb.since_leader_ms.unwrap_or(ft);
            due = due.max(h.at_ms.saturating_add(ft.saturating_sub(since)));
        }
        Some(due)
    }

    /// The recorded leader is alive but has not led for a failure timeout (it stepped down
    /// without an epoch change, or holds no lease): why, if so. It cannot lead this epoch
    /// again, so it gets a new one.
    fn leader_not_leading(&mut self, now: Now, state: &ClusterState) -> Option<String> {
        let (l, (boot, since)) = (state.leader.as_ref()?, self.ts.leader_off?);
        let h = self
            .reporting(now, &l.id)
            .filter(|h| h.hb.boot_id == boot)?;
        if boot != l.boot_id || now.ms.saturating_sub(since) < self.cfg.failure_timeout_ms {
            return None;
        }
        let h = &h.hb;
        let what = if h.role != ReportedRole::Leader {
            format!("reports role {:?}", h.role).to_lowercase()
        } else if h.epoch != state.epoch {
            format!("reports epoch {}", h.epoch)
        } else {
            "reports no lease".to_string()
        };
        let msg = format!(
            "leader {} {what} for {} ms: a new epoch is needed",
            l.id,
            now.ms.saturating_sub(since)
        );
        self.ts.leader_off = None;
        Some(msg)
    }

    /// Members whose heartbeats (within the failure timeout) advertise another address than
    /// the state recorded: the state is written with theirs (journaled), so that every
    /// controller, the proxies and `status` agree on where each member is even before they
    /// hear it. Directives do not wait for this write ([`ClusterCore::member_addr`]).
    fn record_addresses(&mut self, now: Now, state: &ClusterState) -> Option<Write> {
        // Looked at every tick: the state is copied only when a member moved.
        let advertised = |m: &baton_common::directive::Member| {
            let h = self.reporting(now, &m.id)?;
            (!h.hb.addr.is_empty() && h.hb.addr != m.addr).then(|| h.hb.addr.clone())
        };
        if !state.members.iter().any(|m| advertised(m).is_some()) {
            return None;
        }
        let mut s = state.clone();
        let mut moved = Vec::new();
        for m in &mut s.members {
            if let Some(addr) = advertised(m) {
                let was = if m.addr.is_empty() {
                    "none"
                } else {
                    m.addr.as_str()
                };
                moved.push(format!("{} at {addr} (was {was})", m.id));
                m.addr = addr;
            }
        }
        let msg = format!("members advertise new addresses: {}", moved.join(", "));
        self.write(now, Some(s), Kind::Address, msg, serde_json::Value::Null)
    }

    /// The steady phase: the configured `strict` and the members' advertised addresses
    /// recorded, then leader health (a restart or an
    /// automatic failover within the budget, or a refusal), then sync-set upkeep.
    pub(super) fn step_steady(&mut self, now: Now, state: &ClusterState) -> Option<Write> {
        if state.strict != Some(self.cfg.strict) {
            let mut s = state.clone();
            s.strict = Some(self.cfg.strict);
            let msg = format!(
                "strict = {} from this controller's config (the state said {})",
                self.cfg.strict,
                state
                    .strict
                    .map_or("nothing".to_string(), |b| b.to_string())
            );
            return self.write(now, Some(s), Kind::Config, msg, serde_json::Value::Null);
        }
        if let Some(w) = self.record_addresses(now, state) {
            return Some(w);
        }
        if let Some(msg) = self.leader_not_leading(now, state) {
            // In any mode and outside the anti-flapping budget, like a restart.
            return self.start_promotion(now, state, Kind::Restart, msg, None);
        }
        let mut healthy = false;
        match self.leader_health(now, state) {
            LeaderHealth::Restarted => {
                let msg = format!(
                    "leader {} restarted (new boot or data directory): a new epoch is needed",
                    state
                        .leader
                        .as_ref()
                        .map_or_else(String::new, |l| l.id.to_string())
                );
                return self.start_promotion(now, state, Kind::Restart, msg, None);
            }
            LeaderHealth::Failed(why) => {
                if state.control == Control::Manual {
                    return self.refuse(
                        now,
                        Kind::Refusal,
                        "paused",
                        format!("paused: automatic failover is off ({why})"),
                    );
                }
                let used = self.failovers_in_last_hour(now);
                if used >= self.cfg.max_failovers_per_hour {
                    return self.refuse(now, Kind::Refusal, "budget_exhausted", format!(
                        "failover budget exhausted: {used} automatic failovers in the last hour (max_failovers_per_hour = {}); \
                         automatic failover pauses ({why})", self.cfg.max_failovers_per_hour));
                }
                return self.start_promotion(now, state, Kind::Failover, why, None);
            }
            LeaderHealth::Unproven(why) => {
                if let Some(w) = self.refuse(now, Kind::Refusal, "leader_unproven", why) {
                    return Some(w);
                }
            }
            LeaderHealth::Healthy => healthy = true,
            LeaderHealth::NoLeader | LeaderHealth::Observing => {}
        }
        let observed =
            now.ms.saturating_sub(self.ts.active_since_ms) >= self.cfg.failure_timeout_ms;
        if observed {
            // Before the sync set's upkeep: a leader that reaches none of its followers gets a
            // new one, not a sync member swapped for another it cannot reach.
            if let Some(w) = self.step_planned(now, state) {
                return Some(w);
            }
        }
        // The refusal (if any) no longer holds: journal it again when it comes back. A leader
        // that is healthy but due a planned failover (cut from its followers, flush stuck,
        // disk full) that was refused still has that refusal standing: forgetting it here
        // journaled it again every other tick.
        if healthy && !(observed && self.planned_trigger(now, state).is_some()) {
            self.ts.last_refusal = None;
        }
        if state.mode == Mode::SemiSync && observed {
            return self.step_sync_set(now, state);
        }
        None
    }

    /// [`Self::state_behind`], remembered for the state's rev: the refusal is lifted only by a
    /// new state (`recover`, or another writer), not by the replica that showed it going away.
    pub(super) fn check_behind(&mut self, state: &ClusterState, rev: u64) -> Option<String> {
        if let Some((r, why)) = &self.ts.behind {
            if *r == rev {
                return Some(why.clone());
            }
        }
        let why = self.state_behind(state, rev)?;
        self.ts.behind = Some((rev, why.clone()));
        Some(why)
    }

    /// [`Self::check_behind`] without remembering (for `&self` callers): the remembered verdict
    /// for this rev, or the one the heartbeats show now.
    pub(super) fn behind_now(&self, state: &ClusterState, rev: u64) -> Option<String> {
        match &self.ts.behind {
            Some((r, why)) if *r == rev => Some(why.clone()),
            _ => self.state_behind(state, rev),
        }
    }

    /// Why the state read from etcd is older than what the replicas already acted on (etcd
    /// restored from an old backup, or emptied and re-created), if it is. Acting on it could
    /// move epochs back or pick a second leader for the same epoch (I1), so the controller
    /// then neither decides nor grants a role or a lease.
    pub(super) fn state_behind(&self, state: &ClusterState, rev: u64) -> Option<String> {
        const FIX: &str = "refusing to act (restore the state or run recovery)";
        let top = self.heard.values().max_by_key(|h| h.hb.epoch)?;
        if top.hb.epoch > state.epoch {
            return Some(format!(
                "etcd state behind replicas: the state says epoch {} but {} persisted epoch {}; {FIX}",
                state.epoch, top.hb.id, top.hb.epoch
            ));
        }
        // A replica saw a controller term above this one at the current epoch: the election
        // revisions went back (etcd restored); its directives would be ignored anyway.
        if let (Some(term), Some(h)) = (
            self.term,
            self.heard
                .values()
                .filter(|h| h.hb.epoch == state.epoch)
                .max_by_key(|h| h.hb.max_term),
        ) {
            if h.hb.max_term > term {
                return Some(format!(
                    "etcd state behind replicas: {} saw controller term {} at epoch {} but this \
                     controller's term is {term}; {FIX}",
                    h.hb.id, h.hb.max_term, state.epoch
                ));
            }
        }
        // Still the current epoch, but a replica applied a later rev of it: the decisions of
        // those revs were made already.
        if let Some(h) = self
            .heard
            .values()
            .filter(|h| h.hb.epoch == state.epoch && h.hb.applied_rev > rev)
            .max_by_key(|h| h.hb.applied_rev)
        {
            return Some(format!(
                "etcd state behind replicas: the state is at rev {rev} of epoch {} but {} applied rev {} of it; {FIX}",
                state.epoch, h.hb.id, h.hb.applied_rev
            ));
        }
        // A leader is directed only once the promotion is recorded as done: records of an epoch
        // still being promoted show it was done.
        if state.phase == Phase::Promoting {
            if let Some(h) = self
                .heard
                .values()
                .find(|h| h.hb.log_end_epoch >= state.epoch)
            {
                return Some(format!(
                    "etcd state behind replicas: the state says epoch {} is still being promoted but {} holds records of epoch {}; {FIX}",
                    state.epoch, h.hb.id, h.hb.log_end_epoch
                ));
            }
        }
        None
    }

    /// What automatic failover would do now, and why.
    pub fn dry_run(&self, now: Now) -> DryRun {
        let mut blocking = Vec::new();
        let Some((state, _)) = self.state() else {
            return DryRun {
                leader_health: "unknown".into(),
                planned: None,
                would_fail_over: false,
                candidate: None,
                expected_loss_records: None,
                blocking: vec![
                    "the cluster state is not known (not initialized or not read yet)".into(),
                ],
            };
        };
        if !self.active_at(now) {
            blocking.push("this controller is not active".into());
        }
        let health = self.leader_health(now, state);
        if state.control == Control::Manual {
            blocking.push("paused: automatic failover is off".into());
        }
        let used = self.failovers_in_last_hour(now);
        if used >= self.cfg.max_failovers_per_hour {
            blocking.push(format!(
                "failover budget exhausted ({used} in the last hour)"
            ));
        }
        // Pretend every follower heard reports its current log end after fencing.
        let fenced: Vec<Fenced> = self
            .heard
            .iter()
            .filter(|(id, h)| {
                state.leader.as_ref().is_none_or(|l| l.id != **id) && self.fresh(now, h)
            })
            .map(|(id, h)| Fenced {
                id: id.clone(),
                hb: h.hb.clone(),
            })
            .collect();
        let (candidate, loss) = match decide::choose(
            state,
            &fenced,
            self.cfg.sync_size,
            self.cfg.max_lag_on_failover,
        ) {
            Choice::Promote { id, log_end, .. } => {
                let leader_end = state
                    .leader
                    .as_ref()
                    .and_then(|l| self.heard.get(&l.id))
                    .map(|h| h.hb.commit_lsn);
                (
                    Some(id),
                    leader_end.map(|c| c.0.saturating_sub(log_end.1 .0)),
                )
            }
            Choice::Blocked(why) => {
                blocking.push(why);
                (None, None)
            }
        };
        let (label, failed) = match &health {
            LeaderHealth::Healthy => ("healthy".to_string(), false),
            LeaderHealth::NoLeader => ("no leader".to_string(), false),
            LeaderHealth::Observing => (
                "observing (controller recently became active)".to_string(),
                false,
            ),
            LeaderHealth::Restarted => ("restarted".to_string(), true),
            LeaderHealth::Unproven(w) => (format!("not proven failed: {w}"), false),
            LeaderHealth::Failed(w) => (format!("failed: {w}"), true),
        };
        // A planned failover names its own target: a member holding every acknowledged write.
        let mut planned = None;
        let (mut candidate, mut loss, mut failed) = (candidate, loss, failed);
        if !failed {
            if let Some(t) = self.planned_trigger(now, state) {
                match self.planned_target(now, state) {
                    Ok(to) => {
                        planned = Some(format!("{t}: planned failover to {to}"));
                        candidate = Some(to);
                        // It holds every acknowledged write (that is how it was chosen).
                        loss = Some(0);
                        failed = true;
                    }
                    Err(e) => blocking.push(format!("no planned failover: {e} ({t})")),
                }
            }
        }
        DryRun {
            leader_health: label,
            planned,
            would_fail_over: failed && blocking.is_empty(),
            candidate,
            expected_loss_records: loss,
            blocking,
        }
    }
}
