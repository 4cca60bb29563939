//! The replica's role as a sum type: no role yet, follower, fenced, or leader, each variant
//! holding only the fields that role has (a follower's upstream stream; a leader's lease, start
//! time, epoch start and followers). Leaving the leader role goes through one path,
//! [`Core::stop_leading`], which fails the pending writes and drops every leader field at once.

use super::follower::Upstream;
use super::leader::Peer;
use super::{Action, Core};
use baton_common::directive::{MemberRef, ReportedRole};
use baton_common::{Epoch, Lsn, NodeId};
use std::collections::HashMap;

/// What this replica is now, with the state only that role has.
pub(super) enum RoleState {
    /// No directive from an active controller yet, or told to have no role.
    None,
    Fenced,
    Follower(FollowerState),
    Leader(LeaderState),
}

/// A follower's state.
#[derive(Default)]
pub(super) struct FollowerState {
    /// The stream records come from, once one was accepted (dropped when the directed leader
    /// or the epoch changes).
    pub upstream: Option<Upstream>,
}

/// A directed leader's state, from the directive that made it leader on.
pub(super) struct LeaderState {
    /// The lease the controller granted (`None`: revoked or never granted in this epoch).
    pub lease: Option<Lease>,
    /// The controller revoked the lease (a grant of 0 ms, as a switchover does): no serving on
    /// follower promises either until the next grant.
    pub revoked: bool,
    /// When to append the leader-start record (`None` once appended).
    pub start_at_ms: Option<u64>,
    /// The epoch whose leader-start this replica appended in this run (`None` until then).
    pub leading_epoch: Option<Epoch>,
    /// LSN of that leader-start record (0 until appended).
    pub leader_start_lsn: Lsn,
    /// The leader-start record is lossy (a forced failover).
    pub lossy: bool,
    /// Followers streaming from this leader, by id (only the newest stream of each).
    pub peers: HashMap<NodeId, Peer>,
    /// The last state of followers whose stream closed, until they attach again: their ages
    /// (last acknowledgement, what they owe) keep running from what they did, not from when
    /// waiting for them began.
    pub departed: HashMap<NodeId, Peer>,
    /// (LSN, time) at which waiting for each waited member began.
    pub since: HashMap<MemberRef, (Lsn, u64)>,
}

/// A lease granted by the active controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Lease {
    pub epoch: Epoch,
    pub until_ms: u64,
}

impl LeaderState {
    /// Whether this leader's own epoch start is applied (its log is then the reference).
    pub fn own_epoch_applied(&self, applied: Lsn) -> bool {
        self.leading_epoch.is_some()
            && self.leader_start_lsn.0 > 0
            && applied >= self.leader_start_lsn
    }
}

impl RoleState {
    pub fn reported(&self) -> ReportedRole {
        match self {
            RoleState::None => ReportedRole::None,
            RoleState::Fenced => ReportedRole::Fenced,
            RoleState::Follower(_) => ReportedRole::Follower,
            RoleState::Leader(_) => ReportedRole::Leader,
        }
    }

    pub fn leader(&self) -> Option<&LeaderState> {
        match self {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }
    }

    pub fn leader_mut(&mut self) -> Option<&mut LeaderState> {
        match self {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }
    }

    pub fn upstream(&self) -> Option<&Upstream> {
        match self {
            RoleState::Follower(f) => f.upstream.as_ref(),
            _ => None,
        }
    }

    pub fn upstream_mut(&mut self) -> Option<&mut Upstream> {
        match self {
            RoleState::Follower(f) => f.upstream.as_mut(),
            _ => None,
        }
    }

    /// The epoch this replica leads and has started, if any.
    pub fn leading_epoch(&self) -> Option<Epoch> {
        self.leader().and_then(|l| l.leading_epoch)
    }

    /// Role-local invariants.
    pub fn check(&self, epoch: Epoch) -> Result<(), String> {
        if let RoleState::Leader(l) = self {
            if let Some(e) = l.leading_epoch {
                if e > epoch {
                    return Err(format!("leading epoch {e} above the epoch {epoch}"));
                }
                if l.leader_start_lsn.0 == 0 {
                    return Err(format!("epoch {e} started without a leader-start LSN"));
                }
            }
            if l.start_at_ms.is_some() && l.leading_epoch.is_some() {
                return Err("a started leader still waits to start".into());
            }
        }
        Ok(())
    }
}

impl Core {
    /// The one way out of the leader role (stepping down on a directive, moving to another
    /// epoch, refusing to re-lead, a higher epoch seen on the data path): the pending writes
    /// are failed with `why` and every leader field (lease, start, peers, waits) goes with the
    /// old state. A replica that was not leading just takes the new role.
    pub(super) fn stop_leading(&mut self, next: RoleState, why: String) -> Vec<Action> {
        let was_leading = matches!(self.role, RoleState::Leader(_));
        self.role = next;
        if was_leading {
            vec![Action::FailPending(why)]
        } else {
            Vec::new()
        }
    }
}
