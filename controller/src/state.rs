//! The cluster state: one etcd key per cluster (DESIGN.md §3), every change a transaction
//! guarded by the writer's election lease and the key's mod_revision (the state's `rev`).
//! This is a storage format: fields are added with defaults, never repurposed; a controller
//! upgraded in place reads what an older one wrote (tests below).

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

/// The operator's operation in progress: what it asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// `switchover --to`: the state's phase is `switching` until `to` leads (or it is aborted).
    Switchover { to: NodeId },
    /// `failover --to [--force] [--allow-data-loss]`: the promotion in progress promotes `to`
    /// if it may (`force`: even if it may lack acknowledged writes; `allow_data_loss`: even
    /// unclean).
    Failover {
        to: NodeId,
        force: bool,
        allow_data_loss: bool,
        /// Started by the controller itself (a planned failover, DESIGN.md §5: the leader cut
        /// from its followers, its flush stuck, its disk full), not by an operator. The old
        /// leader is then no sync member of its successor: whatever made it fail over keeps
        /// it from acknowledging, and the new leader would wait a failure timeout for it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        planned: bool,
    },
}

impl Op {
    /// The member the operation hands leadership to.
    pub fn to(&self) -> &NodeId {
        match self {
            Op::Switchover { to } | Op::Failover { to, .. } => to,
        }
    }

    /// Reads the string form records carried before [`Op`] was stored (`switchover:{to}`,
    /// `failover:{to}:{force as 0/1}:{allow_data_loss as 0/1}`).
    pub fn parse_legacy(kind: &str) -> Result<Op, String> {
        if let Some(to) = kind.strip_prefix("switchover:") {
            return Ok(Op::Switchover {
                to: NodeId(to.to_string()),
            });
        }
        let bad = || format!("operation kind {kind:?}: neither `switchover:…` nor `failover:…`");
        let rest = kind.strip_prefix("failover:").ok_or_else(bad)?;
        // From the right: the flags are the last two fields.
        let mut p = rest.rsplitn(3, ':');
        let (allow, force, to) = (p.next(), p.next(), p.next());
        let flag = |f: Option<&str>| match f {
            Some("1") => Ok(true),
            Some("0") => Ok(false),
            _ => Err(bad()),
        };
        Ok(Op::Failover {
            allow_data_loss: flag(allow)?,
            force: flag(force)?,
            to: NodeId(to.ok_or_else(bad)?.to_string()),
            planned: false,
        })
    }
}

/// The string form of before (still written beside the typed one, see [`OpRecord`]) and of
/// journal messages.
impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Switchover { to } => write!(f, "switchover:{to}"),
            Op::Failover {
                to,
                force,
                allow_data_loss,
                ..
            } => write!(
                f,
                "failover:{to}:{}:{}",
                u8::from(*force),
                u8::from(*allow_data_loss)
            ),
        }
    }
}

/// An operation in progress (serializes operators: a second one gets an `operation_running`
/// error naming this one). Stored as `{id, kind, op, deadline_ms, timeout_ms}`: `op` is the
/// typed form; `kind` the string form of before, still written for readers that predate `op`
/// (an older controller during a rolling upgrade, `batonctl status`) and read only when `op`
/// is absent (a record an older controller wrote).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredOp", into = "StoredOp")]
pub struct OpRecord {
    pub id: String,
    pub op: Op,
    /// Wall-clock (Unix ms) deadline, for display only (stored as `deadline_ms`).
    pub deadline_unix_ms: u64,
    /// How long the operation may run; each controller counts it on its own monotonic clock
    /// from when it first saw the operation (None in records written before: 60 s).
    pub timeout_ms: Option<u64>,
}

/// [`OpRecord`] as stored.
#[derive(Serialize, Deserialize)]
struct StoredOp {
    id: String,
    #[serde(default)]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op: Option<Op>,
    deadline_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
}

impl TryFrom<StoredOp> for OpRecord {
    type Error = String;
    fn try_from(s: StoredOp) -> Result<OpRecord, String> {
        let op = match s.op {
            Some(op) => op,
            None => Op::parse_legacy(&s.kind)?,
        };
        Ok(OpRecord {
            id: s.id,
            op,
            deadline_unix_ms: s.deadline_ms,
            timeout_ms: s.timeout_ms,
        })
    }
}

impl From<OpRecord> for StoredOp {
    fn from(r: OpRecord) -> StoredOp {
        StoredOp {
            id: r.id,
            kind: r.op.to_string(),
            op: Some(r.op),
            deadline_ms: r.deadline_unix_ms,
            timeout_ms: r.timeout_ms,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_record_written_by_an_older_controller_is_read() {
        let old = r#"{"id":"op-1","kind":"failover:r2:1:0","deadline_ms":9500,"timeout_ms":60000}"#;
        let r: OpRecord = serde_json::from_str(old).expect("reads the string form");
        assert_eq!(
            r,
            OpRecord {
                id: "op-1".into(),
                op: Op::Failover {
                    to: NodeId("r2".into()),
                    force: true,
                    allow_data_loss: false,
                    planned: false,
                },
                deadline_unix_ms: 9500,
                timeout_ms: Some(60_000),
            }
        );
        let old = r#"{"id":"op-2","kind":"switchover:r3","deadline_ms":1}"#;
        let r: OpRecord = serde_json::from_str(old).expect("reads the string form");
        assert_eq!(
            (r.op, r.timeout_ms),
            (
                Op::Switchover {
                    to: NodeId("r3".into())
                },
                None
            )
        );
    }

    #[test]
    fn an_op_record_is_written_typed_and_in_the_string_form_of_before() {
        let r = OpRecord {
            id: "op-1".into(),
            op: Op::Failover {
                to: NodeId("r2".into()),
                force: false,
                allow_data_loss: true,
                planned: false,
            },
            deadline_unix_ms: 9500,
            timeout_ms: Some(60_000),
        };
        let v = serde_json::to_value(&r).expect("serializes");
        assert_eq!(
            v,
            serde_json::json!({
                "id": "op-1",
                "kind": "failover:r2:0:1",
                "op": {"type": "failover", "to": "r2", "force": false, "allow_data_loss": true},
                "deadline_ms": 9500,
                "timeout_ms": 60000,
            })
        );
        let back: OpRecord = serde_json::from_value(v).expect("reads back");
        assert_eq!(back, r);
        // The typed form wins over the string form when both are present.
        let both = serde_json::json!({
            "id": "op-3", "kind": "switchover:r1",
            "op": {"type": "switchover", "to": "r2"}, "deadline_ms": 0,
        });
        let r: OpRecord = serde_json::from_value(both).expect("reads");
        assert_eq!(r.op.to(), &NodeId("r2".into()));
    }

    #[test]
    fn a_malformed_string_form_is_an_error_not_a_guess() {
        for kind in ["", "failover:r2", "failover:r2:1:x", "promote:r1"] {
            let text = format!(r#"{{"id":"op","kind":"{kind}","deadline_ms":0}}"#);
            assert!(
                serde_json::from_str::<OpRecord>(&text).is_err(),
                "{kind:?} was accepted"
            );
        }
    }

    #[test]
    fn a_state_written_by_an_older_controller_is_read() {
        let old = r#"{"epoch":6,"leader":null,"prev_leader":null,"phase":"promoting",
            "members":[],"sync_set":[],"adding":null,"control":"auto","mode":"semi-sync",
            "op":{"id":"op-1","kind":"failover:r2:0:0","deadline_ms":1}}"#;
        let s: ClusterState = serde_json::from_str(old).expect("reads");
        assert_eq!(
            s.op.map(|o| o.op),
            Some(Op::Failover {
                to: NodeId("r2".into()),
                force: false,
                allow_data_loss: false,
                planned: false,
            })
        );
    }

    #[test]
    fn a_planned_failover_says_so_and_an_operators_omits_it() {
        let planned = Op::Failover {
            to: NodeId("r2".into()),
            force: false,
            allow_data_loss: false,
            planned: true,
        };
        let v = serde_json::to_value(&planned).expect("serializes");
        assert_eq!(v["planned"], true);
        assert_eq!(serde_json::from_value::<Op>(v).expect("reads"), planned);
        let op = Op::Failover {
            to: NodeId("r2".into()),
            force: false,
            allow_data_loss: false,
            planned: false,
        };
        assert!(serde_json::to_value(&op)
            .expect("serializes")
            .get("planned")
            .is_none());
    }
}
