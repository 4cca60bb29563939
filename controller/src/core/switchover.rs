//! The `switching` phase of a switchover (DESIGN.md §5): once the leader gave up its lease and
//! the target flushed its final log end (by its own report, or by the leader's report of the
//! target's acknowledged flush), the target leads a new epoch at once (no wait); the
//! switchover is aborted if the leader fails or restarts, or at a controller takeover. The
//! request itself is `ops.rs`; its timeout is `ClusterCore::expire_op`.

use super::{ClusterCore, Now, Write};
use crate::decide::{Heard, LeaderHealth};
use crate::journal::Kind;
use crate::state::{ClusterState, LeaderRecord, Op, Phase};
use baton_common::directive::{MemberRef, Mode};
use baton_common::Epoch;

impl ClusterCore {
    /// One step of the `switching` phase: abort, complete, or wait.
    pub(super) fn step_switchover(&mut self, now: Now, state: &ClusterState) -> Option<Write> {
        let op = state.op.as_ref()?;
        // A controller that takes over in `switching` aborts it (DESIGN.md §5), and so does
        // a leader that fails or restarts meanwhile: normal detection takes over from there.
        let health = self.leader_health(now, state);
        let why = if self.ts.switch_takeover {
            Some("the active controller changed during the switchover".to_string())
        } else {
            match health {
                LeaderHealth::Failed(w) => {
                    Some(format!("the leader failed during the switchover ({w})"))
                }
                LeaderHealth::Restarted => {
                    Some("the leader restarted during the switchover".to_string())
                }
                _ => None,
            }
        };
        if let Some(why) = why {
            self.ts.switch_takeover = false;
            let mut s = state.clone();
            s.phase = Phase::Steady;
            s.op = None;
            let msg = format!("switchover {} aborted: {why}", op.id);
            return self.write(now, Some(s), Kind::Abort, msg, self.inputs(now));
        }
        let Op::Switchover { to } = &op.op else {
            return None;
        };
        let leader = state.leader.as_ref()?;
        // Only fresh reports count: a target that just stopped must not be handed leadership
        // on the strength of an old "caught up".
        let fresh =
            |h: &&Heard| now.ms.saturating_sub(h.at_ms) < 2 * self.cfg.heartbeat_interval_ms + 50;
        let lh = self.heard.get(&leader.id).filter(fresh)?;
        let th = self.heard.get(to).filter(fresh)?;
        // The leader gave up its lease (a directive with lease 0) and reports its final log end;
        // the target flushed all of it.
        let revoked = lh.hb.lease_left_ms == Some(0)
            && lh.hb.applied_rev >= self.state().map_or(0, |(_, r)| r);
        // Caught up by the target's own report, or by the leader's: a flush the target
        // acknowledged to the leader in its epoch, at or past the leader's final end (the
        // leader reports it at once, the target only at its next heartbeat).
        let acked = lh.hb.waiting.iter().any(|w| {
            &w.id == to && w.data_id == th.hb.data_id && w.flushed_lsn >= lh.hb.log_end_lsn
        }) && lh.hb.epoch == state.epoch;
        let caught_up = acked
            || (th.hb.flushed_lsn >= lh.hb.log_end_lsn
                && th.hb.log_end_epoch == lh.hb.log_end_epoch);
        if !(revoked && caught_up) || th.hb.unclean {
            return None;
        }
        let mut s = state.clone();
        s.epoch = Epoch(state.epoch.0.checked_add(1)?);
        s.prev_leader = Some(leader.clone());
        s.leader = Some(LeaderRecord {
            id: to.clone(),
            data_id: th.hb.data_id,
            boot_id: th.hb.boot_id,
        });
        let mut sync: Vec<MemberRef> = vec![MemberRef {
            id: leader.id.clone(),
            data_id: leader.data_id,
        }];
        sync.extend(state.sync_set.iter().filter(|m| &m.id != to).cloned());
        sync.truncate(self.cfg.sync_size);
        s.sync_set = if state.mode == Mode::SemiSync {
            sync
        } else {
            Vec::new()
        };
        s.adding = None;
        s.phase = Phase::Steady;
        s.op = None;
        s.lossy = state.mode == Mode::Async;
        self.ts.no_wait_epoch = Some(s.epoch);
        let msg = format!(
            "switchover {}: {to} leads epoch {} (it holds the old leader's final LSN {})",
            op.id, s.epoch, lh.hb.log_end_lsn
        );
        self.write(now, Some(s), Kind::Switchover, msg, self.inputs(now))
    }
}
