//! The cluster state: one etcd key per cluster (DESIGN.md §3), every change a transaction
//! guarded by the writer's election lease and the key's mod_revision (the state's `rev`).
//! This is a storage format: fields are added with defaults, never repurposed.

use baton_common::directive::{Member, MemberRef, Mode};
use baton_common::{BootId, DataId, Epoch, NodeId};
use serde::{Deserialize, Serialize};

/// The recorded leader: a process run of one member's data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub id: NodeId,
    pub data_id: DataId,
    pub boot_id: BootId,
}

/// Where a leadership change stands; a recorded phase is carried to its end by whichever
/// controller is active.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Steady,
    Promoting,
    Switching,
}

/// Automatic failover on, or manual only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    #[default]
    Auto,
    Manual,
}

/// An operation in progress (serializes operators: a second one gets 409 naming this one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    pub id: String,
    pub kind: String,
    /// Wall-clock (Unix ms) deadline, for display only.
    pub deadline_ms: u64,
    /// How long the operation may run; each controller counts it on its own monotonic clock
    /// from when it first saw the operation (None in records written before: 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The whole cluster state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub epoch: Epoch,
    pub leader: Option<LeaderRecord>,
    pub prev_leader: Option<LeaderRecord>,
    pub phase: Phase,
    pub members: Vec<Member>,
    pub sync_set: Vec<MemberRef>,
    pub adding: Option<MemberRef>,
    pub control: Control,
    pub mode: Mode,
    pub op: Option<OpRecord>,
    /// The current epoch's promotion may have lost acknowledged writes (async mode, or a forced
    /// failover to a member that may lack some): its leader-start is written `lossy`, so that
    /// returning holders of the cut records archive them and rejoin (DESIGN.md §3, §5).
    #[serde(default)]
    pub lossy: bool,
    /// The deployment's identity, random, made by `init` (or `recover`); 0 in states written
    /// before it existed. A replica whose data directory carries another one is refused.
    #[serde(default)]
    pub cluster_id: u64,
    /// This state's lineage, random, made anew by `init` and by `recover` (0 in states written
    /// before it existed); promotions and operations keep it. The controller hands it to the
    /// proxy with the leader, so that a proxy tells a re-created or recovered state from an old
    /// answer at once instead of after a grace period.
    #[serde(default)]
    pub state_id: u64,
    /// `strict` (DESIGN.md §4), one value for every controller: the active controller writes
    /// its configured value here when they differ (journaled). None in older states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl ClusterState {
    /// The members a leader waits for: `sync_set ∪ adding`.
    pub fn waited(&self) -> Vec<MemberRef> {
        let mut w = self.sync_set.clone();
        if let Some(a) = &self.adding {
            if !w.contains(a) {
                w.push(a.clone());
            }
        }
        w
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.iter().find(|m| &m.id == id)
    }
}
