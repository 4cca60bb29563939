//! JSON bodies of the client API (DESIGN.md §7): the error shape every non-2xx reply uses, the
//! write reply, and the replica status.

use crate::directive::{CutRange, MemberRef, ReportedRole, WaitInfo};
use crate::ids::{BootId, DataId, Epoch, Lsn, NodeId, Version};
use serde::{Deserialize, Serialize};

/// Machine-readable error codes; the HTTP status is part of each code's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 503: the write was **not** appended (not leader, no lease, leader-start not committed).
    NotLeader,
    /// 504: the write was appended but its fate is unknown (lease lost, fenced, shutdown).
    OutcomeUnknown,
    /// 412: `If-Match` did not hold.
    PreconditionFailed,
    /// 404: no such key.
    NotFound,
    /// 400: malformed request (bad header, bad key, bad query).
    BadRequest,
    /// 413: key, value or body over the configured limit.
    TooLarge,
    /// 503: too many open connections.
    Overloaded,
    /// 503: the replica is stopping.
    ShuttingDown,
    /// 503: a `Baton-Min-Epoch` precondition this replica cannot meet yet.
    StaleEpoch,
    /// 500: the replica hit an error it cannot recover from and is stopping.
    Fatal,
    /// 507: the replica's disk is full; the write was **not** appended (DESIGN.md §6). The
    /// replica keeps serving reads and resumes by itself once space is freed.
    InsufficientStorage,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NotLeader
            | ErrorCode::Overloaded
            | ErrorCode::ShuttingDown
            | ErrorCode::StaleEpoch => 503,
            ErrorCode::OutcomeUnknown => 504,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::NotFound => 404,
            ErrorCode::BadRequest => 400,
            ErrorCode::TooLarge => 413,
            ErrorCode::Fatal => 500,
            ErrorCode::InsufficientStorage => 507,
        }
    }
}

/// Where the replica believes the leader is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    pub id: NodeId,
    pub addr: String,
    pub epoch: Epoch,
}

/// Body of every error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderHint>,
}

/// Reply to a successful PUT or DELETE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReply {
    pub version: Version,
    pub lsn: Lsn,
    pub epoch: Epoch,
}

/// `GET /v1/status` of a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub id: NodeId,
    pub cluster: String,
    pub data_id: DataId,
    pub boot_id: BootId,
    pub unclean: bool,
    pub role: ReportedRole,
    /// Highest epoch persisted.
    pub epoch: Epoch,
    pub log_end_epoch: Epoch,
    pub log_end_lsn: Lsn,
    pub log_start_lsn: Lsn,
    pub flushed_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub applied_lsn: Lsn,
    /// Order-independent digest of the applied state: equal applied LSN means equal digest.
    pub state_digest: String,
    pub keys: u64,
    pub snapshot_lsn: Lsn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderHint>,
    pub waited: Vec<MemberRef>,
    pub lease_left_ms: u64,
    /// `ok`, `no_role`, `no_lease`, `starting`, `fatal`.
    pub health: String,
    /// Leading with an empty waited set (non-strict semi-sync): acknowledged writes have one copy.
    pub degraded: bool,
    /// How long the current degraded period has lasted (0: not degraded), and every degraded
    /// period of this process together: how long one disk held acknowledged writes alone.
    #[serde(default)]
    pub degraded_for_ms: u64,
    #[serde(default)]
    pub degraded_total_ms: u64,
    /// `(epoch, first LSN)` pairs.
    pub epoch_history: Vec<(Epoch, Lsn)>,
    /// Leader: the members it waits for and their acknowledged positions.
    pub waiting: Vec<WaitInfo>,
    /// Leader: every follower streaming from it.
    pub followers: Vec<FollowerProgress>,
    /// Follower: how far behind the leader it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cut: Option<CutRange>,
    /// A leader serving on follower promises alone: no grant from a controller is valid (etcd
    /// or every controller unreachable), every follower still sees it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_promises: bool,
    /// The log could not be written for lack of space (ENOSPC): writes are refused with 507
    /// until a retry succeeds; reads are served (DESIGN.md §6).
    #[serde(default)]
    pub disk_full: bool,
    /// Follower: the catch-up in progress, if it is behind by more than a moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catchup: Option<CatchUp>,
}

/// A follower's catch-up in progress (a log far behind, or a snapshot install): how much is
/// done, how fast it goes and how long it should still take. Reported by the follower in its
/// status and heartbeats (so `batonctl status` and the controller's metrics and page show it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUp {
    /// `log` (records streamed from the leader's log) or `snapshot` (a snapshot install).
    pub what: String,
    /// Bytes received since this catch-up started.
    pub bytes_done: u64,
    /// A snapshot: what is left of its announced size. The log: the records left times the
    /// mean size of the records received (an estimate).
    pub bytes_remaining: u64,
    /// The log: records between this follower's log end and the leader's (0 for a snapshot).
    pub records_remaining: u64,
    /// Over the last second or so.
    pub bytes_per_s: u64,
    pub records_per_s: u64,
    /// At the current rate (None until a rate is known).
    pub eta_ms: Option<u64>,
    /// Since this catch-up started.
    pub elapsed_ms: u64,
}

/// A follower as its leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerProgress {
    pub id: NodeId,
    pub data_id: DataId,
    pub flushed_lsn: Lsn,
    pub records_behind: u64,
    /// Records behind times the average record size of the leader's log.
    pub approx_bytes_behind: u64,
    /// Milliseconds since its last acknowledgement.
    pub last_ack_ms: u64,
}

/// A follower's view of its leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamProgress {
    pub leader: NodeId,
    /// The leader's log end and commit LSN as last heard.
    pub leader_log_end: Lsn,
    pub leader_commit: Lsn,
    pub records_behind: u64,
    /// Milliseconds since the last message on the replication stream.
    pub since_leader_ms: u64,
    /// `exchange` (divergence check), `snapshot` or `streaming`.
    pub phase: String,
}
