//! Heartbeat → directive: who may be heard (`admit`: the deployment's identity, one process
//! per member id), what each member is told (role, leader, the waited set, `lossy`, `strict`),
//! lease grants to the recorded leader and how long a new leader waits before starting its
//! epoch (`start_after`, DESIGN.md §5). A standby, a controller outside its lease window, or
//! one whose state is behind the replicas grants no role and no lease.
//!
//! It writes nothing: refusals found here are queued as notices that `tick` journals.

use super::{ClusterCore, Now, Observed};
use crate::decide::Heard;
use crate::state::{ClusterState, Phase};
use baton_common::directive::{Directive, Heartbeat, LeaderRef, Member, Mode, ReportedRole, Role};
use baton_common::{BootId, DataId, Epoch};

/// One process run of a member, as heard by this controller: a new boot is heard only once the
/// previous one went quiet (a restart); the previous one speaking again means two processes
/// claim the id.
#[derive(Clone, Debug)]
pub(super) struct Run {
    boot: BootId,
    data: DataId,
    addr: String,
    first_ms: u64,
    pub(super) last_ms: u64,
    /// The run this one was refused against as a second claimant of the id, if it was.
    refused_against: Option<(BootId, DataId)>,
}

impl ClusterCore {
    /// A heartbeat arrived; returns the answer.
    pub fn on_heartbeat(&mut self, now: Now, hb: Heartbeat) -> Directive {
        let declared = self.cfg.members.iter().any(|m| m.id == hb.id);
        let refused = if declared { self.admit(now, &hb) } else { None };
        if declared && refused.is_none() {
            self.hear(now, &hb);
            if hb.role == ReportedRole::Leader
                && hb.lease_left_ms.is_some_and(|l| l > 0)
                && !self.leading_seen.contains_key(&hb.epoch)
            {
                self.leading_seen
                    .insert(hb.epoch, (hb.id.clone(), now.unix_ms));
                while self.leading_seen.len() > 8 {
                    self.leading_seen.pop_first();
                }
            }
        }
        self.directive_for(now, &hb, declared, refused.is_some())
    }

    /// The answer, at `now`, to a heartbeat this controller already heard and admitted with an
    /// active answer (a long-polled heartbeat held until the directive changed or the hold
    /// ran out): computed afresh (role, lease grant, `start_after`) from the current state,
    /// without hearing the heartbeat again (what it reports is as old as it is).
    pub fn answer(&mut self, now: Now, hb: &Heartbeat) -> Directive {
        let declared = self.cfg.members.iter().any(|m| m.id == hb.id);
        self.directive_for(now, hb, declared, false)
    }

    fn directive_for(
        &mut self,
        now: Now,
        hb: &Heartbeat,
        declared: bool,
        refused: bool,
    ) -> Directive {
        let seq = hb.seq;
        let mut d = Directive {
            seq,
            rev: 0,
            controller_term: self.term.unwrap_or(0),
            active: self.active_at(now),
            active_controller: self.active_addr.clone(),
            epoch: Epoch(0),
            role: None,
            leader: None,
            members: self.members_reached(),
            waited: Vec::new(),
            lease_ms: 0,
            start_after_ms: 0,
            promises_void: false,
            mode: self.cfg.mode,
            strict: self.cfg.strict,
            lossy: false,
            cluster_id: 0,
        };
        if refused {
            // A foreign data directory or a second process claiming a member's id: it gets
            // nothing from this controller (an inactive answer changes nothing on a replica).
            d.active = false;
            return d;
        }
        let Some((state, rev)) = self.state().map(|(s, r)| (s.clone(), r)) else {
            // A standby, or the state is not known (yet): no role, no lease.
            if let Some((s, _)) = self.state() {
                d.epoch = s.epoch;
            }
            d.active = d.active && matches!(self.observed, Observed::Absent);
            return d;
        };
        d.epoch = state.epoch;
        d.rev = rev;
        d.members = state
            .members
            .iter()
            .map(|m| Member {
                addr: self.member_addr(&m.id),
                ..m.clone()
            })
            .collect();
        d.mode = state.mode;
        d.cluster_id = state.cluster_id;
        d.lossy = state.lossy || state.mode == Mode::Async;
        d.strict = state.strict.unwrap_or(self.cfg.strict);
        if !self.active_at(now) {
            return d;
        }
        if !declared {
            d.role = Some(Role::Fenced);
            return d;
        }
        if self.check_behind(&state, rev).is_some() {
            // No role and no lease from a state the replicas have moved past. The answer is an
            // inactive one: an active answer without a role would make the recorded leader
            // step down at its own (epoch, rev), and it could not lead that epoch again.
            d.active = false;
            return d;
        }
        self.assign_role(now, hb, &state, &mut d);
        d
    }

    /// An admitted heartbeat of a declared member: remembered, and what it tells noted.
    fn hear(&mut self, now: Now, hb: &Heartbeat) {
        let id = &hb.id;
        self.heard.insert(
            id.clone(),
            Heard {
                at_ms: now.ms,
                hb: hb.clone(),
            },
        );
        self.note_leader_run(now, hb);
        if let Some(r) = &hb.refused_peer {
            let msg = format!("{id} refused a replication peer: {r}");
            self.notice(now, format!("peer:{id}:{r}"), msg);
        }
    }

    /// The role (and leader, waited set, lease) the active controller gives a declared member
    /// under `state`, which is not behind the replicas.
    fn assign_role(&mut self, now: Now, hb: &Heartbeat, state: &ClusterState, d: &mut Directive) {
        let id = &hb.id;
        d.waited = state.waited();
        let leader_ref = state.leader.as_ref().map(|l| LeaderRef {
            id: l.id.clone(),
            addr: self.member_addr(&l.id),
            boot_id: l.boot_id,
            data_id: l.data_id,
        });
        d.leader = leader_ref;
        if state.phase == Phase::Promoting {
            // Step 2: everyone reachable is fenced at the new epoch and reports its log end.
            d.role = Some(Role::Fenced);
            d.leader = None;
            return;
        }
        let Some(leader) = &state.leader else {
            return;
        };
        if &leader.id == id && leader.boot_id == hb.boot_id && leader.data_id == hb.data_id {
            d.role = Some(Role::Leader);
            if state.phase == Phase::Switching {
                d.lease_ms = 0;
            } else {
                d.lease_ms = self.cfg.lease_ms;
                self.note_grant(state.epoch, now.ms);
            }
            d.start_after_ms = self.start_after(now, state);
            // Its own promises bind it only to leaders it followed: none if it is the previous
            // leader itself (a restarted run of it included), which gave none in the epoch it
            // led and had outwaited every older one before leading.
            d.promises_void = self.prev_leader_stopped(state)
                || state
                    .prev_leader
                    .as_ref()
                    .is_some_and(|p| p.id == leader.id && p.data_id == leader.data_id);
        } else if &leader.id == id {
            // Another run or disk of the recorded leader: it waits for the new epoch.
            d.role = Some(Role::Fenced);
        } else {
            d.role = Some(Role::Follower);
        }
    }

    /// Whether a declared member's heartbeat may be heard, or why not: a data directory of
    /// another deployment, or a second process claiming the id of one that is still alive.
    /// Refusals are journaled once per episode (by `tick`) and change nothing else.
    pub(super) fn admit(&mut self, now: Now, hb: &Heartbeat) -> Option<String> {
        let state_id = self.state().map_or(0, |(s, _)| s.cluster_id);
        if hb.cluster != self.cfg.name {
            let msg = format!(
                "member {} reports cluster {:?} to cluster {:?}: refused (wrong cluster name in its config?)",
                hb.id, hb.cluster, self.cfg.name
            );
            return Some(self.notice(now, format!("cluster:{}:{}", hb.id, hb.cluster), msg));
        }
        if state_id != 0 && hb.cluster_id != 0 && hb.cluster_id != state_id {
            let msg = format!(
                "member {} (data {}, at {}) reports a data directory of another deployment \
                 (cluster id {:016x}, this one is {state_id:016x}): refused; it changes nothing",
                hb.id, hb.data_id, hb.addr, hb.cluster_id
            );
            return Some(self.notice(now, format!("foreign:{}:{}", hb.id, hb.data_id), msg));
        }
        // Process runs of this id: a new boot is heard only once the previous one went quiet
        // (a restart); the previous one speaking again means two processes claim the id.
        let quiet = 2 * self.cfg.heartbeat_interval_ms + 50;
        let ft = self.cfg.failure_timeout_ms;
        let runs = self.runs.entry(hb.id.clone()).or_default();
        runs.retain(|r| now.ms.saturating_sub(r.last_ms) < 10 * ft);
        let pos = match runs
            .iter()
            .position(|r| r.boot == hb.boot_id && r.data == hb.data_id)
        {
            Some(i) => {
                runs[i].last_ms = now.ms;
                runs[i].addr = hb.addr.clone();
                i
            }
            None => {
                runs.push(Run {
                    boot: hb.boot_id,
                    data: hb.data_id,
                    addr: hb.addr.clone(),
                    first_ms: now.ms,
                    last_ms: now.ms,
                    refused_against: None,
                });
                runs.len() - 1
            }
        };
        let me = runs[pos].clone();
        // A run once refused as a second claimant stays refused while the run it was refused
        // against is remembered: that one going quiet for a moment (a partition, a pause) does
        // not hand it the id. A real restart comes with a new boot.
        if let Some((ab, ad)) = me.refused_against {
            if let Some(a) = runs.iter().find(|r| r.boot == ab && r.data == ad) {
                let msg = format!(
                    "two processes claim member {}: boot {ab} at {} (heard) and boot {} at {} (refused); \
                     stop the wrong one",
                    hb.id, a.addr, me.boot, me.addr
                );
                return Some(self.notice(now, format!("dup:{}:{}", hb.id, me.boot), msg));
            }
        }
        // The run currently heard for this id (the incumbent), if another one.
        let cur = self
            .heard
            .get(&hb.id)
            .map(|h| (h.hb.boot_id, h.hb.data_id, h.at_ms))
            .filter(|(b, d, _)| (*b, *d) != (me.boot, me.data));
        let (cb, cd, cat) = cur?;
        if now.ms.saturating_sub(cat) >= quiet {
            // The incumbent went quiet: this is a restart (or a replaced disk).
            return None;
        }
        let inc = runs.iter().find(|r| r.boot == cb && r.data == cd).cloned();
        // Two runs alive at once: the incumbent was heard well after this one first spoke.
        let dup = inc
            .as_ref()
            .is_some_and(|i| i.last_ms >= me.first_ms + quiet);
        if dup {
            if let Some(r) = self.runs.get_mut(&hb.id).and_then(|runs| {
                runs.iter_mut()
                    .find(|r| r.boot == me.boot && r.data == me.data)
            }) {
                r.refused_against = Some((cb, cd));
            }
            let msg = format!(
                "two processes claim member {}: boot {} at {} (heard) and boot {} at {} (refused); \
                 stop the wrong one",
                hb.id,
                cb,
                inc.as_ref().map_or("?", |i| i.addr.as_str()),
                me.boot,
                me.addr
            );
            return Some(self.notice(now, format!("dup:{}:{}", hb.id, me.boot), msg));
        }
        Some(format!(
            "{} boot {} waits until boot {cb} is quiet",
            hb.id, me.boot
        ))
    }

    /// Tracks whether the recorded leader's run reports leading with a lease.
    pub(super) fn note_leader_run(&mut self, now: Now, hb: &Heartbeat) {
        let Some((state, _)) = self.state() else {
            return;
        };
        let Some(l) = &state.leader else {
            self.ts.leader_off = None;
            return;
        };
        if l.id != hb.id || l.boot_id != hb.boot_id || l.data_id != hb.data_id {
            if l.id == hb.id {
                self.ts.leader_off = None;
            }
            return;
        }
        let leading = hb.role == ReportedRole::Leader
            && (hb.lease_left_ms != Some(0) || state.phase != Phase::Steady)
            && hb.epoch == state.epoch;
        if leading {
            self.ts.leader_off = None;
        } else if self.ts.leader_off.is_none_or(|(b, _)| b != hb.boot_id) {
            self.ts.leader_off = Some((hb.boot_id, now.ms));
        }
    }

    pub(super) fn note_grant(&mut self, epoch: Epoch, at_ms: u64) {
        if let Some(g) = self.ts.last_grant.filter(|(e, _)| *e < epoch) {
            self.ts.grant_before = Some(g);
        }
        self.ts.last_grant = Some((epoch, at_ms));
    }

    /// Whether the previous epoch's leader is known to serve nothing of its own any more: it
    /// stopped for a switchover this controller wrote, or reported persisting this epoch. Then
    /// the new leader neither waits out the old grants nor its own promises to it.
    pub(super) fn prev_leader_stopped(&self, state: &ClusterState) -> bool {
        if self.ts.no_wait_epoch == Some(state.epoch) {
            return true;
        }
        state.prev_leader.as_ref().is_some_and(|prev| {
            self.heard
                .get(&prev.id)
                .is_some_and(|h| h.hb.boot_id == prev.boot_id && h.hb.epoch >= state.epoch)
        })
    }

    /// How long a new leader waits before starting its epoch (DESIGN.md §5).
    pub(super) fn start_after(&self, now: Now, state: &ClusterState) -> u64 {
        if state.prev_leader.is_none() || self.prev_leader_stopped(state) {
            return 0;
        }
        let rho = self.cfg.drift;
        let wait = (self.cfg.lease_ms as f64 * (1.0 + rho) / (1.0 - rho)).ceil() as u64
            + self.cfg.heartbeat_interval_ms;
        // The last grant to an older epoch (not the new leader's own, which the directive that
        // carries this value has just recorded); after a takeover, the takeover.
        let since = [self.ts.last_grant, self.ts.grant_before]
            .into_iter()
            .flatten()
            .filter(|(e, _)| *e < state.epoch)
            .map(|(_, t)| t)
            .max()
            .unwrap_or(self.ts.active_since_ms);
        (since + wait).saturating_sub(now.ms)
    }
}
