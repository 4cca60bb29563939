//! The controller's decision rules as pure functions of what it knows (DESIGN.md §5): is the
//! leader failed — on positive evidence only — and, once reachable members are fenced at the new
//! epoch, which one is promoted and which sync set is recorded with it.
//!
//! No clock, no etcd, no I/O: inputs carry `now` and the members' last heartbeats. The
//! controller's state machine calls these; the tests are decision tables.

use crate::state::{ClusterState, LeaderRecord};
use baton_common::directive::{Heartbeat, MemberRef, Mode};
use baton_common::{DataId, Epoch, Lsn, NodeId};

/// What the controller heard from one member.
#[derive(Clone, Debug)]
pub struct Heard {
    /// Controller time the heartbeat arrived.
    pub at_ms: u64,
    pub hb: Heartbeat,
}

/// Detection tunables.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub failure_timeout_ms: u64,
}

/// The verdict on the recorded leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderHealth {
    /// Heard within the failure timeout.
    Healthy,
    /// No leader recorded (bootstrap, or a promotion in progress).
    NoLeader,
    /// The controller took over recently and has not observed for a failure timeout yet.
    Observing,
    /// The leader's id answered with another boot or data directory: a new epoch is needed,
    /// in any mode and outside the anti-flapping budget.
    Restarted,
    /// Not heard, but the failure is not proven; no failover. The reason is journaled.
    Unproven(String),
    /// Failed on positive evidence.
    Failed(String),
}

fn heard_within(h: &Heard, now: u64, ms: u64) -> bool {
    now.saturating_sub(h.at_ms) < ms
}

/// Assesses the recorded leader (DESIGN.md §5 "Detection").
///
/// `active_since_ms`: when this controller became active (it decides nothing before observing
/// for a failure timeout). `standby_hears`: the highest number of members any standby reports
/// hearing (a controller that hears fewer decides no failover).
pub fn assess_leader(
    now: u64,
    active_since_ms: u64,
    state: &ClusterState,
    heard: &[(NodeId, Option<Heard>)],
    standby_hears: usize,
    t: Timing,
) -> LeaderHealth {
    let Some(leader) = &state.leader else {
        return LeaderHealth::NoLeader;
    };
    let get = |id: &NodeId| {
        heard
            .iter()
            .find(|(i, _)| i == id)
            .and_then(|(_, h)| h.as_ref())
    };
    if let Some(h) = get(&leader.id) {
        let same_run = h.hb.boot_id == leader.boot_id && h.hb.data_id == leader.data_id;
        // A restart is taken only from a heartbeat received while this controller is active:
        // an entry from before the takeover may show a boot that has long been replaced.
        if !same_run && h.at_ms >= active_since_ms {
            return LeaderHealth::Restarted;
        }
        if same_run && heard_within(h, now, t.failure_timeout_ms) {
            return LeaderHealth::Healthy;
        }
    }
    if now.saturating_sub(active_since_ms) < t.failure_timeout_ms {
        return LeaderHealth::Observing;
    }
    let hears = heard
        .iter()
        .filter(|(_, h)| {
            h.as_ref()
                .is_some_and(|h| heard_within(h, now, t.failure_timeout_ms))
        })
        .count();
    if hears < standby_hears {
        return LeaderHealth::Unproven(format!(
            "this controller hears {hears} members, a standby hears {standby_hears}: not deciding a failover"
        ));
    }
    let reporting: Vec<(&NodeId, &Heard)> = heard
        .iter()
        .filter(|(id, _)| *id != leader.id)
        .filter_map(|(id, h)| {
            h.as_ref()
                .filter(|h| heard_within(h, now, t.failure_timeout_ms))
                .map(|h| (id, h))
        })
        .collect();
    if reporting.is_empty() {
        return LeaderHealth::Unproven(
            "no follower reports: the failure cannot be told from this controller's own isolation"
                .into(),
        );
    }
    // (c) every reporting follower has lost the leader too.
    let still_see: Vec<String> = reporting
        .iter()
        .filter(|(_, h)| {
            let since =
                h.hb.since_leader_ms
                    .unwrap_or(u64::MAX)
                    .saturating_add(now.saturating_sub(h.at_ms));
            since < t.failure_timeout_ms
        })
        .map(|(id, _)| id.to_string())
        .collect();
    if !still_see.is_empty() {
        return LeaderHealth::Unproven(format!(
            "leader unreachable from controller: followers {} still receive from it",
            still_see.join(", ")
        ));
    }
    // (b) at least one eligible candidate reports.
    let eligible: Vec<&NodeId> = reporting
        .iter()
        // The leader judged here is the one a promotion would replace (`promotion.rs` then
        // records it as `prev_leader`); the leader before it holds nothing this one acknowledged.
        .filter(|(id, h)| may_be_candidate(state, state.leader.as_ref(), id, &h.hb))
        .map(|(id, _)| *id)
        .collect();
    if eligible.is_empty() {
        return LeaderHealth::Unproven(
            "no eligible candidate reports (blocked: waiting for a sync member or the old leader)"
                .into(),
        );
    }
    LeaderHealth::Failed(format!(
        "leader {} not heard for {} ms; every reporting follower lost it too; candidates reporting: {}",
        leader.id,
        t.failure_timeout_ms,
        eligible.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
    ))
}

/// Whether a member could be promoted, judged before fencing (no positions compared yet).
/// `replaced`: the leader a promotion replaces (it holds what it acknowledged itself).
fn may_be_candidate(
    state: &ClusterState,
    replaced: Option<&LeaderRecord>,
    id: &NodeId,
    hb: &Heartbeat,
) -> bool {
    let Some(m) = state.member(id) else {
        return false;
    };
    if m.no_failover || hb.unclean {
        return false;
    }
    match state.mode {
        Mode::SemiSync => holds_acked(state, replaced, id, Some(hb.data_id)),
        Mode::Async => true,
    }
}

/// Whether member `id` with data directory `data` surely holds every acknowledged write in
/// semi-sync mode (I2): a recorded sync member, or `replaced` (the leader being replaced), with
/// the same data directory — the same id on a replaced (wiped) disk holds nothing. `data` None:
/// a member not heard from, judged by its id until it reports. Any other member may lack some,
/// even when no reporting member is ahead of it (the ones that hold them may not be reporting).
/// In async mode nothing is waited for, so nobody is known to hold them.
pub fn holds_acked(
    state: &ClusterState,
    replaced: Option<&LeaderRecord>,
    id: &NodeId,
    data: Option<DataId>,
) -> bool {
    let same = |d: DataId| data.is_none_or(|x| x == d);
    state.mode == Mode::SemiSync
        && (state
            .sync_set
            .iter()
            .any(|m| &m.id == id && same(m.data_id))
            || replaced.is_some_and(|l| &l.id == id && same(l.data_id)))
}

/// A member's position reported after it fsynced the new epoch (promotion step 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fenced {
    pub id: NodeId,
    pub hb: Heartbeat,
}

/// The outcome of candidate choice (promotion step 3 and the sync set of step 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Promote {
        id: NodeId,
        log_end: (Epoch, Lsn),
        sync_set: Vec<MemberRef>,
        lossy: bool,
    },
    /// Nobody may be promoted now; journaled as `blocked: …`.
    Blocked(String),
}

/// Candidate rules (DESIGN.md §5 step 3): never unclean, never `no_failover`; in semi-sync
/// mode only recorded sync members and the previous leader with the same data directory; in
/// async mode any member within `max_lag` records of the best. Highest (last epoch, LSN), then
/// priority, then lowest id. The sync set recorded with it (semi-sync): reachable members of
/// the old set and followers at the same last epoch and an LSN ≥ the new leader's (they hold
/// all of its log), up to `sync_size`; unclean members may join (that is how they get clean).
pub fn choose(state: &ClusterState, fenced: &[Fenced], sync_size: usize, max_lag: u64) -> Choice {
    let eligible: Vec<&Fenced> = fenced
        .iter()
        // During a promotion the replaced leader is recorded as `prev_leader`.
        .filter(|f| may_be_candidate(state, state.prev_leader.as_ref(), &f.id, &f.hb))
        .collect();
    let best_end = fenced
        .iter()
        .map(|f| (f.hb.log_end_epoch, f.hb.log_end_lsn))
        .max();
    let mut cands: Vec<&Fenced> = match state.mode {
        Mode::SemiSync => eligible,
        Mode::Async => {
            let best = best_end.map_or(0, |e| e.1 .0);
            eligible
                .into_iter()
                .filter(|f| best.saturating_sub(f.hb.log_end_lsn.0) <= max_lag)
                .collect()
        }
    };
    if cands.is_empty() {
        let why = match state.mode {
            Mode::SemiSync => {
                "no member of the recorded sync set (nor the previous leader) reports after fencing"
            }
            Mode::Async => {
                "no clean, promotable member within max_lag_on_failover reports after fencing"
            }
        };
        return Choice::Blocked(why.into());
    }
    let prio = |f: &Fenced| state.member(&f.id).map_or(0, |m| m.priority);
    cands.sort_by(|a, b| {
        (b.hb.log_end_epoch, b.hb.log_end_lsn)
            .cmp(&(a.hb.log_end_epoch, a.hb.log_end_lsn))
            .then(prio(b).cmp(&prio(a)))
            .then(a.id.cmp(&b.id))
    });
    let w = cands[0];
    let end = (w.hb.log_end_epoch, w.hb.log_end_lsn);
    if state.mode == Mode::Async {
        // Nothing waits in async mode; the sync set stays empty.
        return Choice::Promote {
            id: w.id.clone(),
            log_end: end,
            sync_set: Vec::new(),
            lossy: true,
        };
    }
    let sync_set = promotion_sync_set(state, fenced, w, sync_size, true);
    Choice::Promote {
        id: w.id.clone(),
        log_end: end,
        sync_set,
        lossy: false,
    }
}

/// The sync set recorded with a new leader `w` (DESIGN.md §4): reachable members of the old
/// set, then followers whose log end has the new leader's last epoch and an LSN ≥ its end
/// (they hold all of its log) — the old leader's followers before the old leader — up to
/// `sync_size`; never `no_failover` members or `w` itself. The old leader is left out when
/// `with_old_leader` is false (a planned failover: what made it fail over keeps it from
/// acknowledging); the new leader then adds a follower it reaches (DESIGN.md §4: it holds writes
/// up to `sync_wait_ms` while one is added) instead of waiting a failure timeout for it.
pub fn promotion_sync_set(
    state: &ClusterState,
    fenced: &[Fenced],
    w: &Fenced,
    sync_size: usize,
    with_old_leader: bool,
) -> Vec<MemberRef> {
    let end = (w.hb.log_end_epoch, w.hb.log_end_lsn);
    let mut sync_set: Vec<MemberRef> = Vec::new();
    let promotable = |f: &Fenced| state.member(&f.id).is_some_and(|m| !m.no_failover);
    let mut add = |f: &Fenced| {
        let r = MemberRef {
            id: f.id.clone(),
            data_id: f.hb.data_id,
        };
        if f.id != w.id && sync_set.len() < sync_size && !sync_set.contains(&r) {
            sync_set.push(r);
        }
    };
    for f in fenced {
        if promotable(f)
            && state
                .sync_set
                .iter()
                .any(|o| o.id == f.id && o.data_id == f.hb.data_id)
        {
            add(f);
        }
    }
    // Flushed, not merely appended: a member joins on what survives its own crash. Followers
    // of the old leader first: the old leader itself must first cut its unreplicated tail, and
    // after a planned failover it may be the one cut off from everyone.
    let holds =
        |f: &&Fenced| promotable(f) && f.hb.log_end_epoch == end.0 && f.hb.flushed_lsn >= end.1;
    let old_leader = |f: &Fenced| {
        (state.leader.as_ref())
            .or(state.prev_leader.as_ref())
            .is_some_and(|l| l.id == f.id)
    };
    for f in fenced.iter().filter(holds).filter(|f| !old_leader(f)) {
        add(f);
    }
    for f in fenced
        .iter()
        .filter(holds)
        .filter(|f| with_old_leader && old_leader(f))
    {
        add(f);
    }
    sync_set
}

#[cfg(test)]
mod tests;
