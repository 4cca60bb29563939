//! Planned failovers (DESIGN.md §5): the recorded leader is alive and heard, but the cluster
//! cannot stay writable through it — it reaches none of its followers while its sync member lost
//! the stream, its flush has been pending for a failure timeout, or it reports a full disk. The
//! controller then promotes a member that holds every acknowledged write, naming it as the
//! promotion's target (an automatic `failover --to`, stored as the state's `op`) so that the
//! leader being replaced, usually the one with the longest log, is not chosen again.
//!
//! Replacing a sync member by another follower the leader cannot reach either would only move
//! the stall (and dropping it would leave the cut-off leader acknowledging alone), so this is
//! judged before the sync set's upkeep (`sync_set.rs`).

use super::{ClusterCore, Now, Write};
use crate::decide;
use crate::journal::Kind;
use crate::state::{ClusterState, Control, Op, OpRecord};
use baton_common::directive::{Heartbeat, Mode, ReportedRole};
use baton_common::NodeId;

/// Why the recorded leader should hand over although it is alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// No sync acknowledgement for a failure timeout while the sync members report a lost
    /// stream, and no follower receives from the leader.
    CutFromFollowers { since_ms: u64 },
    /// A flush pending for this long.
    FlushStuck { pending_ms: u64 },
    /// The leader reports a full disk: it refuses writes until space is freed.
    DiskFull,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::CutFromFollowers { since_ms } => write!(
                f,
                "leader unreachable from followers: no sync acknowledgement for {since_ms} ms and no follower receives its stream"
            ),
            Trigger::FlushStuck { pending_ms } => {
                write!(f, "leader's flush pending for {pending_ms} ms (slow or failing disk)")
            }
            Trigger::DiskFull => write!(f, "disk full on the leader"),
        }
    }
}

/// How long a planned failover's target has to report at the new epoch before the promotion
/// goes on under the automatic rules.
const TARGET_TIMEOUT_MS: u64 = 10_000;

impl ClusterCore {
    /// The recorded leader's heartbeat, when it is heard within the failure timeout from the
    /// recorded run and reports leading the recorded epoch.
    fn leading_report(&self, now: Now, state: &ClusterState) -> Option<(Heartbeat, u64)> {
        let l = state.leader.as_ref()?;
        let h = self.reporting(now, &l.id)?;
        (h.hb.boot_id == l.boot_id
            && h.hb.data_id == l.data_id
            && h.hb.role == ReportedRole::Leader
            && h.hb.epoch == state.epoch)
            .then(|| (h.hb.clone(), now.ms.saturating_sub(h.at_ms)))
    }

    /// Whether a planned failover is due, and why (DESIGN.md §5). Judged only on a fresh view:
    /// the leader heard leading within three heartbeat intervals, and this controller hearing at least as many members as any
    /// standby.
    pub fn planned_trigger(&self, now: Now, state: &ClusterState) -> Option<Trigger> {
        let (lh, age) = self.leading_report(now, state)?;
        let ft = self.cfg.failure_timeout_ms;
        // Alive means heard lately: a leader gone silent is judged by failure detection.
        if age >= (3 * self.cfg.heartbeat_interval_ms).min(ft / 2) {
            return None;
        }
        if self.hears(now) < self.standby_hears {
            return None;
        }
        if lh.disk_full {
            return Some(Trigger::DiskFull);
        }
        if let Some(p) = lh.oldest_unflushed_ms {
            let pending_ms = p.saturating_add(age);
            if pending_ms >= ft {
                return Some(Trigger::FlushStuck { pending_ms });
            }
        }
        if state.mode != Mode::SemiSync || state.sync_set.is_empty() {
            return None;
        }
        // A follower has lost the stream when it has had nothing from the leader for half a
        // failure timeout: the leader's silence and theirs start together, but their reports
        // arrive at other moments.
        let lost = |h: &decide::Heard| {
            h.hb.since_leader_ms
                .is_none_or(|s| s.saturating_add(now.ms.saturating_sub(h.at_ms)) >= ft / 2)
        };
        // The longest a recorded sync member that reports a lost stream has gone
        // unacknowledged, as the leader reports it (the measure of the sync set's upkeep, so
        // that this trigger is never later than its drop). (One that does not report is dead, not
        // cut off: the sync set's upkeep replaces or drops it.)
        let since_ms = state
            .sync_set
            .iter()
            .filter(|m| {
                // A member with a full disk dropped the stream itself: it is replaced, not
                // followed.
                self.reporting(now, &m.id)
                    .is_some_and(|h| h.hb.data_id == m.data_id && !h.hb.disk_full && lost(h))
            })
            .filter_map(|m| {
                lh.waiting
                    .iter()
                    .find(|w| w.id == m.id && w.data_id == m.data_id)
            })
            .map(|w| w.last_ack_ms.max(w.owed_ms).saturating_add(age))
            .max()?;
        if since_ms < ft {
            return None;
        }
        // Every follower heard must have lost it too: one that still receives the stream means
        // the leader reaches someone, and the sync set's upkeep replaces the member instead.
        let mut followers = self
            .heard
            .iter()
            .filter(|(id, h)| **id != lh.id && self.fresh(now, h) && state.member(id).is_some())
            .peekable();
        followers.peek()?;
        followers
            .all(|(_, h)| lost(h))
            .then_some(Trigger::CutFromFollowers { since_ms })
    }

    /// Whom a planned failover promotes: a reporting member that holds every acknowledged write
    /// (semi-sync: a recorded sync member with its recorded data directory; async: one whose
    /// flushed log reaches the leader's), clean, promotable and not out of disk; the furthest flushed, then
    /// priority, then lowest id. `Err` says why there is none.
    pub fn planned_target(&self, now: Now, state: &ClusterState) -> Result<NodeId, String> {
        let (lh, _) = self
            .leading_report(now, state)
            .ok_or_else(|| "the leader does not report leading".to_string())?;
        let cands: Vec<(&NodeId, &decide::Heard)> = self
            .heard
            .iter()
            .filter(|(id, h)| **id != lh.id && self.fresh(now, h))
            .filter(|(id, h)| {
                state
                    .member(id)
                    .is_some_and(|m| !m.no_failover && !h.hb.unclean && !h.hb.disk_full)
            })
            .filter(|(id, h)| match state.mode {
                Mode::SemiSync => decide::holds_acked(state, None, id, Some(h.hb.data_id)),
                Mode::Async => {
                    h.hb.log_end_epoch == lh.log_end_epoch && h.hb.flushed_lsn >= lh.flushed_lsn
                }
            })
            .collect();
        let prio = |id: &NodeId| state.member(id).map_or(0, |m| m.priority);
        cands
            .into_iter()
            .max_by(|(a, ha), (b, hb)| {
                (ha.hb.flushed_lsn, prio(a))
                    .cmp(&(hb.hb.flushed_lsn, prio(b)))
                    .then(b.cmp(a))
            })
            .map(|(id, _)| id.clone())
            .ok_or_else(|| match state.mode {
                Mode::SemiSync => {
                    "no recorded sync member reports, clean and promotable".to_string()
                }
                Mode::Async => {
                    "no clean, promotable follower holds the leader's flushed log".to_string()
                }
            })
    }

    /// The steady phase's planned failover, if one is due: a promotion whose target is named
    /// (within the anti-flapping budget and not when paused, like any automatic failover), or
    /// a refusal saying why not. `None`: nothing due, or the refusal was journaled already
    /// (the sync set's upkeep then goes on: a dead member is still replaced or dropped).
    pub(super) fn step_planned(&mut self, now: Now, state: &ClusterState) -> Option<Write> {
        let why = self.planned_trigger(now, state)?;
        if state.control == Control::Manual {
            return self.refuse(
                now,
                Kind::Refusal,
                "paused",
                format!("paused: planned failover is off ({why})"),
            );
        }
        let used = self.failovers_in_last_hour(now);
        if used >= self.cfg.max_failovers_per_hour {
            return self.refuse(now, Kind::Refusal, "budget_exhausted", format!(
                "failover budget exhausted: {used} automatic failovers in the last hour (max_failovers_per_hour = {}); no planned failover ({why})",
                self.cfg.max_failovers_per_hour));
        }
        let to = match self.planned_target(now, state) {
            Ok(t) => t,
            Err(e) => {
                return self.refuse(
                    now,
                    Kind::Refusal,
                    "no_planned_target",
                    format!("no planned failover: {e} ({why})"),
                )
            }
        };
        let op = OpRecord {
            id: format!("planned-{}", state.epoch.0.saturating_add(1)),
            op: Op::Failover {
                to: to.clone(),
                force: false,
                allow_data_loss: false,
                planned: true,
            },
            deadline_unix_ms: now.unix_ms.saturating_add(TARGET_TIMEOUT_MS),
            timeout_ms: Some(TARGET_TIMEOUT_MS),
        };
        let msg = format!("planned failover to {to}: {why}");
        self.start_promotion(now, state, Kind::Failover, msg, Some(op))
    }
}
