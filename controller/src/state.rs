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
    pub deadline_ms: u64,
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
