//! Sync-set upkeep in the steady phase (DESIGN.md §4): add a member through `adding` (it joins
//! once the leader applied the add and the member flushed from `since_lsn`), replace a dead
//! member add-then-drop, drop etcd-first when no follower can replace it, abandon an add that
//! does not catch up within `sync_wait_ms` (with a doubling back-off). Decided only from a
//! fresh view: the leader heard, and no standby hearing more members.

use super::{names, ClusterCore, Now, Write};
use crate::journal::Kind;
use crate::state::ClusterState;
use baton_common::directive::{Heartbeat, MemberRef, ReportedRole};
use baton_common::NodeId;

impl ClusterCore {
    /// An add of `id` was abandoned: do not try it again for 10 × sync_wait_ms, doubling with
    /// every abandoned add in a row (at most 5 minutes).
    pub(super) fn back_off(&mut self, now: Now, id: &NodeId) {
        let n = self.add_failures.entry(id.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let ms = (10 * self.cfg.sync_wait_ms)
            .saturating_mul(1u64 << (*n - 1).min(16))
            .min(300_000);
        self.add_backoff
            .insert(id.clone(), now.ms.saturating_add(ms));
    }

    /// Sync-set maintenance: add through `adding`, replace add-then-drop, drop etcd-first.
    pub(super) fn step_sync_set(&mut self, now: Now, state: &ClusterState) -> Option<Write> {
        let leader = state.leader.as_ref()?;
        let lh = self.heard.get(&leader.id)?.hb.clone();
        if lh.boot_id != leader.boot_id {
            return None;
        }
        let ft = self.cfg.failure_timeout_ms;
        // Judge the sync set only from a fresh view: the leader heard within the failure
        // timeout, and no standby hearing more members than this controller. A controller
        // cut off from the replicas would otherwise drop healthy members on stale reports
        // and leave the leader acknowledging alone (found by the chaos runs).
        if self.reporting(now, &leader.id).is_none() || self.hears(now) < self.standby_hears {
            return None;
        }
        // Not acknowledged for a failure timeout: silent, or acknowledging keepalives while it
        // owes the leader a record for that long (a stalled disk holds every commit).
        let lagging = |m: &MemberRef| {
            lh.waiting.iter().any(|w| {
                w.id == m.id && w.data_id == m.data_id && w.last_ack_ms.max(w.owed_ms) >= ft
            })
        };
        let dead: Vec<MemberRef> = state
            .sync_set
            .iter()
            .filter(|m| !self.member_ok(now, m) || lagging(m))
            .cloned()
            .collect();
        // A sync member that reports unclean lost records it had flushed (damage repaired from
        // the leader, or a data directory created empty): it no longer holds every acknowledged
        // write (I2), and it holds the leader's commits while it fetches them again. It is
        // replaced as soon as a clean follower can take its place, but never dropped for that
        // alone: with no clean follower (a new cluster, whose members all start unclean), it
        // stays and catches up, which takes milliseconds.
        let unclean: Vec<MemberRef> = state
            .sync_set
            .iter()
            .filter(|m| !dead.contains(m))
            .filter(|m| {
                self.reporting(now, &m.id)
                    .is_some_and(|h| h.hb.data_id == m.data_id && h.hb.unclean)
            })
            .cloned()
            .collect();
        let replaced: Vec<MemberRef> = dead.iter().chain(&unclean).cloned().collect();
        if let Some(a) = &state.adding {
            return self.step_adding(now, state, a, &lh, &dead, &replaced);
        }
        let want = self
            .cfg
            .sync_size
            .min(state.members.len().saturating_sub(1));
        let healthy_count = state.sync_set.len() - dead.len();
        if !replaced.is_empty() || healthy_count < want {
            let cand = self.addition(now, state, &leader.id, &lh);
            match cand {
                Some(c) => {
                    let mut s = state.clone();
                    s.adding = Some(c.clone());
                    let msg = if replaced.is_empty() {
                        format!("adding {} to the sync set", c.id)
                    } else {
                        format!(
                            "replacing {} in the sync set: adding {} first",
                            names(&replaced),
                            c.id
                        )
                    };
                    return self.write(now, Some(s), Kind::SyncAdd, msg, self.inputs(now));
                }
                None if !dead.is_empty() => {
                    let mut s = state.clone();
                    s.sync_set.retain(|m| !dead.contains(m));
                    let msg = format!("dropping {} from the sync set: unreachable and no follower can replace it{}", names(&dead),
                        if self.cfg.strict { " (strict: writes block)" } else { " (not strict: the leader runs degraded)" });
                    return self.write(now, Some(s), Kind::SyncDrop, msg, self.inputs(now));
                }
                None => {}
            }
        }
        None
    }

    /// A member is being added: it joins (replacing dead and unclean members) once ready; dead
    /// members are dropped if the addition is stuck; the add is abandoned if the member stops
    /// reporting or does not catch up within `sync_wait_ms`.
    fn step_adding(
        &mut self,
        now: Now,
        state: &ClusterState,
        a: &MemberRef,
        lh: &Heartbeat,
        dead: &[MemberRef],
        replaced: &[MemberRef],
    ) -> Option<Write> {
        let ready = self.ts.adding_rev.is_some_and(|r| lh.applied_rev >= r)
            && lh
                .waiting
                .iter()
                .any(|w| w.id == a.id && w.data_id == a.data_id && w.flushed_lsn >= w.since_lsn);
        if ready {
            let mut s = state.clone();
            s.sync_set.retain(|m| !replaced.contains(m));
            if !s.sync_set.contains(a) {
                s.sync_set.push(a.clone());
            }
            s.adding = None;
            self.add_failures.remove(&a.id);
            let msg = format!(
                "{} joins the sync set{}",
                a.id,
                if replaced.is_empty() {
                    String::new()
                } else {
                    format!(", replacing {}", names(replaced))
                }
            );
            return self.write(now, Some(s), Kind::SyncAdd, msg, self.inputs(now));
        }
        let stuck = !self.member_ok(now, a)
            || self
                .ts
                .adding_since_ms
                .is_some_and(|t| now.ms.saturating_sub(t) >= self.cfg.sync_wait_ms);
        if !dead.is_empty() && stuck {
            // The replacement did not make it within sync_wait_ms: drop the dead member
            // (etcd first), and `strict` decides whether writes go on without it.
            let mut s = state.clone();
            s.sync_set.retain(|m| !dead.contains(m));
            if !self.member_ok(now, a) {
                s.adding = None;
            }
            let msg = format!(
                "dropping {} from the sync set: unreachable and not replaced within sync_wait_ms",
                names(dead)
            );
            return self.write(now, Some(s), Kind::SyncDrop, msg, self.inputs(now));
        }
        if !self.member_ok(now, a) {
            let mut s = state.clone();
            s.adding = None;
            self.back_off(now, &a.id);
            return self.write(
                now,
                Some(s),
                Kind::SyncDrop,
                format!("{} stopped reporting while being added", a.id),
                self.inputs(now),
            );
        }
        if self
            .ts
            .adding_since_ms
            .is_some_and(|t| now.ms.saturating_sub(t) >= self.cfg.sync_wait_ms)
        {
            // The leader waits for the member being added: one that cannot catch up within
            // sync_wait_ms would stall writes, so the add is abandoned and retried later.
            let mut s = state.clone();
            s.adding = None;
            self.back_off(now, &a.id);
            let msg = format!(
                "{} did not catch up within sync_wait_ms; adding it is retried later",
                a.id
            );
            return self.write(now, Some(s), Kind::SyncDrop, msg, self.inputs(now));
        }
        None
    }

    /// The follower to add to the sync set, if any: heard, streaming from this leader, close
    /// behind it, promotable, not in the set and not backing off (or caught up with the
    /// leader's commit); the most advanced first.
    fn addition(
        &self,
        now: Now,
        state: &ClusterState,
        leader: &NodeId,
        lh: &Heartbeat,
    ) -> Option<MemberRef> {
        let ft = self.cfg.failure_timeout_ms;
        // Find a follower to add: heard, caught up enough to report, promotable, not in the set.
        state
            .members
            .iter()
            .filter(|m| &m.id != leader && !m.no_failover)
            .filter(|m| !state.sync_set.iter().any(|s| s.id == m.id))
            .filter_map(|m| self.heard.get(&m.id).map(|h| (m, h)))
            // Only a follower streaming from this leader: one that is cut off or stuck would
            // be waited for in vain and stall writes for sync_wait_ms each time.
            // Only a clean follower: an unclean one holds neither every acknowledged write nor
            // the right to be promoted until it has caught up.
            .filter(|(_, h)| {
                let age = now.ms.saturating_sub(h.at_ms);
                age < ft
                    && !h.hb.unclean
                    && h.hb.role == ReportedRole::Follower
                    && h.hb.epoch == state.epoch
                    && h.hb
                        .since_leader_ms
                        .is_some_and(|s| s.saturating_add(age) < ft)
            })
            // Only a follower close behind: the leader waits for it as soon as it is added.
            .filter(|(_, h)| {
                lh.log_end_lsn.0.saturating_sub(h.hb.flushed_lsn.0) <= self.cfg.max_lag_on_failover
            })
            // Backing off after an abandoned add, unless the leader runs alone and the member
            // caught up with its commit since: then the add succeeds at once, and every moment
            // without it is a moment with one copy (issue 12 item 5). Twice at most: a member
            // that keeps failing (a slow disk) would stall writes for sync_wait_ms each time.
            .filter(|(m, h)| {
                (state.sync_set.is_empty()
                    && h.hb.flushed_lsn >= lh.commit_lsn
                    && self.add_failures.get(&m.id).is_none_or(|n| *n <= 2))
                    || self
                        .add_backoff
                        .get(&m.id)
                        .is_none_or(|until| now.ms >= *until)
            })
            .max_by_key(|(m, h)| {
                (
                    h.hb.flushed_lsn,
                    m.priority,
                    std::cmp::Reverse(m.id.clone()),
                )
            })
            .map(|(m, h)| MemberRef {
                id: m.id.clone(),
                data_id: h.hb.data_id,
            })
    }
}
