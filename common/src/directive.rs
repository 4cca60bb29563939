//! The controller↔replica wire protocol of DESIGN.md §5: the heartbeat a replica sends every
//! `heartbeat_interval_ms`, and the directive the controller answers with.
//!
//! Only the shapes live here. How a replica orders and applies directives is the replica core's
//! job (`replica/src/core/mod.rs`); how the controller computes them is the controller's.

use crate::ids::{BootId, DataId, Epoch, Lsn, NodeId};
use serde::{Deserialize, Serialize};

/// The role a directive assigns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    /// Persist the epoch, stop leading and following, keep serving `any` reads.
    Fenced,
}

/// The role a replica reports; `None` until an active directive arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportedRole {
    None,
    Leader,
    Follower,
    Fenced,
}

/// A member of the cluster as declared in the controller's config; travels in every directive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Client/replication address, `host:port` (a host name or an IP): the one the member
    /// advertises in its heartbeats once heard, else the one declared; empty when neither is
    /// known yet.
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub no_failover: bool,
}

/// A member identity as recorded in the sync set: the same id with another data_id is another
/// member (its disk was replaced).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberRef {
    pub id: NodeId,
    pub data_id: DataId,
}

/// The leader a directive names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRef {
    pub id: NodeId,
    pub addr: String,
    /// A replica leads only on a directive naming its own current boot id.
    pub boot_id: BootId,
    /// The leader's data directory: a follower checks the replication handshake against it.
    #[serde(default)]
    pub data_id: DataId,
}

/// The controller's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    /// Echo of the heartbeat's seq; a lease grant counts from that heartbeat's send time.
    pub seq: u64,
    /// Revision of the cluster state this directive is a function of.
    pub rev: u64,
    /// The issuing controller's election key create_revision.
    pub controller_term: u64,
    /// False on a standby's answer: such an answer carries no role and no lease.
    pub active: bool,
    /// Address of the active controller, as far as the answering controller knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_controller: Option<String>,
    pub epoch: Epoch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderRef>,
    #[serde(default)]
    pub members: Vec<Member>,
    /// The set whose flush acknowledgements a leader waits for (`sync_set ∪ adding`).
    #[serde(default)]
    pub waited: Vec<MemberRef>,
    /// Lease granted to a leader, counted from the echoed heartbeat's send time.
    #[serde(default)]
    pub lease_ms: u64,
    /// A new leader waits this long from receipt before starting its epoch.
    #[serde(default)]
    pub start_after_ms: u64,
    /// The previous epoch's leader reported persisting this epoch (or stopped for a
    /// switchover): it serves nothing of its own any more, so the follower promises made to it
    /// do not hold the new leader back (DESIGN.md §5).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promises_void: bool,
    /// Replication mode of the cluster.
    #[serde(default)]
    pub mode: Mode,
    /// With an empty waited set: block writes (`true`) or run degraded (`false`).
    #[serde(default)]
    pub strict: bool,
    /// The epoch was made in async mode or by a forced failover: its leader-start is lossy.
    #[serde(default)]
    pub lossy: bool,
    /// The cluster deployment's identity (random, made at `init`; 0 = unknown). A replica whose
    /// data directory belongs to another deployment ignores this directive.
    #[serde(default)]
    pub cluster_id: u64,
}

/// Replication mode (DESIGN.md §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    SemiSync,
    Async,
}

/// What a replica sends every heartbeat interval to every controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    pub cluster: String,
    /// The deployment this replica's data directory belongs to (0: not known yet, e.g. a new
    /// directory). The controller refuses a heartbeat from another deployment's directory.
    #[serde(default)]
    pub cluster_id: u64,
    pub id: NodeId,
    pub data_id: DataId,
    pub boot_id: BootId,
    pub unclean: bool,
    pub addr: String,
    /// The highest epoch this replica has persisted.
    pub epoch: Epoch,
    pub role: ReportedRole,
    /// (epoch, LSN) of the last record in the log.
    pub log_end_epoch: Epoch,
    pub log_end_lsn: Lsn,
    pub flushed_lsn: Lsn,
    pub applied_lsn: Lsn,
    pub commit_lsn: Lsn,
    /// The cluster-state rev of the last directive applied.
    pub applied_rev: u64,
    /// The highest controller term seen at this epoch: a controller whose own term is lower
    /// reads an etcd that went back (restored) and must not act on it.
    #[serde(default)]
    pub max_term: u64,
    /// Milliseconds since the last message from the leader on the replication stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_leader_ms: Option<u64>,
    /// Leader only: age of the oldest record appended but not yet flushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_unflushed_ms: Option<u64>,
    /// Leader only: milliseconds since the last sync acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_ack_ms: Option<u64>,
    /// Leader only: milliseconds of lease left (0 when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_left_ms: Option<u64>,
    /// Leader only: every member it waits for, with `since_lsn` and its acknowledged position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<WaitInfo>,
    /// The last range this replica cut from its log (divergence), if any in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cut: Option<CutRange>,
    /// The last replication peer this replica refused for its identity (another cluster or
    /// deployment, not a member, not the directed leader), if any in this run; journaled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_peer: Option<String>,
    /// The replica's log cannot be written for lack of space (ENOSPC): it refuses writes with
    /// 507, a follower stops taking and acknowledging records, and it resumes by itself once a
    /// retry succeeds. A leader reporting it is to be replaced (DESIGN.md §6).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disk_full: bool,
    /// A leader: how long it has run degraded (acknowledging alone) so far (0: not degraded).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub degraded_for_ms: u64,
    /// A leader serving on its followers' promises alone (no valid grant from a controller:
    /// etcd or every controller out of reach, DESIGN §5).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_promises: bool,
    /// The first LSN the log still holds (records below it were compacted into a snapshot).
    #[serde(default)]
    pub log_start_lsn: Lsn,
    /// Bytes of log on disk: with `log_start_lsn` and `log_end_lsn`, the mean record size the
    /// controller turns a member's lag in records into an estimate in bytes with.
    #[serde(default)]
    pub log_bytes: u64,
    /// A follower's catch-up in progress (rate, ETA), for status and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catchup: Option<crate::api::CatchUp>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A member a leader waits for (DESIGN.md §4, sync-set add protocol).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitInfo {
    pub id: NodeId,
    pub data_id: DataId,
    /// The leader's last appended LSN when it began waiting for this member.
    pub since_lsn: Lsn,
    /// The member's flushed LSN as acknowledged to the leader in its epoch.
    pub flushed_lsn: Lsn,
    /// Milliseconds since the member's last acknowledgement (or since waiting began).
    pub last_ack_ms: u64,
    /// Milliseconds the member has owed the oldest record it has not acknowledged (0: it holds
    /// everything the leader appended). Its acks may be fresh while this grows: a follower
    /// whose disk stalls still acknowledges keepalives.
    #[serde(default)]
    pub owed_ms: u64,
}

/// Records a follower cut from its log and archived in a rollback file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutRange {
    pub from: Lsn,
    pub to: Lsn,
    /// Epoch of the first record cut.
    pub epoch: Epoch,
    /// Part of the range was at or below this replica's known commit LSN (lossy leader-start).
    pub below_commit: bool,
    /// The rollback file holding the cut records.
    pub file: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_answer_parses_without_role_or_lease() {
        let j = r#"{"seq":4,"rev":9,"controller_term":0,"active":false,
                    "active_controller":"127.0.0.1:7000","epoch":3}"#;
        let d: Directive = serde_json::from_str(j).expect("parse");
        assert!(!d.active);
        assert_eq!(d.role, None);
        assert_eq!(d.lease_ms, 0);
        assert_eq!(d.mode, Mode::SemiSync);
    }

    #[test]
    fn directive_round_trips() {
        let d = Directive {
            seq: 1,
            rev: 2,
            controller_term: 3,
            active: true,
            active_controller: None,
            epoch: Epoch(4),
            role: Some(Role::Leader),
            leader: Some(LeaderRef {
                id: NodeId("r1".into()),
                addr: "127.0.0.1:1".into(),
                boot_id: BootId(7),
                data_id: DataId(8),
            }),
            members: vec![],
            waited: vec![MemberRef {
                id: NodeId("r2".into()),
                data_id: DataId(9),
            }],
            lease_ms: 800,
            start_after_ms: 0,
            promises_void: false,
            mode: Mode::Async,
            strict: false,
            lossy: true,
            cluster_id: 11,
        };
        let j = serde_json::to_string(&d).expect("ser");
        assert!(j.contains("\"mode\":\"async\""));
        assert_eq!(serde_json::from_str::<Directive>(&j).expect("de"), d);
    }
}
