//! What travels between the simulated processes (replication stream messages [`Repl`],
//! client requests and replies, heartbeats and directives in [`Msg`]) and the events of the
//! world's queue ([`Ev`], with the [`Heal`] that ends each injected fault).

use super::net::Proc;
use super::ops::Act;
use baton_common::directive::{Directive, Heartbeat};
use baton_common::ids::Expect as VExpect;
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId, Version};
use baton_replica::core::AppendHeader;
use baton_replica::snapshot::Snapshot;
use baton_replica::wal::Record;

#[derive(Clone, Debug)]
pub(super) enum Repl {
    Hello {
        id: NodeId,
        data_id: DataId,
        cluster_id: u64,
        epoch: Epoch,
    },
    /// The leader's answer, with its identity (the follower checks it against the directive).
    Welcome {
        epoch: Epoch,
        id: NodeId,
        boot_id: BootId,
        data_id: DataId,
        cluster_id: u64,
    },
    Refused(String),
    EpochQuery(Epoch),
    EpochEnd {
        epoch: Epoch,
        end: Lsn,
        lossy: bool,
    },
    Fetch {
        from: Lsn,
        prev_epoch: Epoch,
    },
    /// `sent_ms`: the leader's clock when it sent it (what a follower's promise counts from).
    Append {
        h: AppendHeader,
        records: Vec<Record>,
        sent_ms: u64,
    },
    Keepalive {
        epoch: Epoch,
        commit: Lsn,
        end: Lsn,
        sent_ms: u64,
    },
    /// With the promise it makes and the newest `sent_ms` received (DESIGN §5).
    Ack {
        epoch: Epoch,
        flushed: Lsn,
        promise_ms: u64,
        echo_ms: u64,
    },
    /// The leader's newest snapshot (begin, chunks and end of the real stream in one message:
    /// the stream is FIFO and the follower acts only on the end).
    Snapshot(Box<Snapshot>),
}

#[derive(Clone, Debug)]
pub(super) enum Req {
    Read(String),
    /// `consistency=any` on whichever replica receives it.
    ReadAny(String),
    Put {
        key: String,
        value: String,
        expect: Option<VExpect>,
    },
    Delete {
        key: String,
        expect: Option<VExpect>,
    },
}

#[derive(Clone, Debug)]
pub(super) enum Res {
    Read(Option<(String, Version)>),
    /// An `any` read: the entry and the replica's applied LSN.
    ReadAny(Option<(String, Version)>),
    Written(Version),
    Precondition,
    NotApplied(String),
    Unknown(String),
}

#[derive(Clone, Debug)]
pub(super) enum Msg {
    /// A heartbeat and the incarnation that sent it (the answer goes back to that process
    /// only, as an HTTP reply on its connection would).
    Heartbeat(Box<Heartbeat>, u64),
    Directive(Box<Directive>),
    Repl {
        conn: u64,
        m: Box<Repl>,
    },
    Request {
        op: usize,
        req: Req,
    },
    Reply {
        op: usize,
        res: Res,
    },
}

#[derive(Clone, Debug)]
pub(super) enum Heal {
    Uncut(Vec<(Proc, Proc)>),
    Loss,
    EtcdUp,
    EtcdTimeouts,
    Restart(Proc),
    Resume(Proc),
    /// A member running on another directory gets its own back (`foreign`).
    OwnDisk(usize),
    /// The second process claiming a member's id stops (`dup-id`).
    StopDup(u64),
}

#[derive(Clone, Debug)]
pub(super) enum Ev {
    Deliver {
        to: Proc,
        from: Proc,
        to_inc: Option<u64>,
        msg: Msg,
    },
    /// The peer's kernel closed a stream (its process died).
    Closed {
        r: usize,
        conn: u64,
    },
    Tick {
        r: usize,
        inc: u64,
    },
    HeartbeatTimer {
        r: usize,
        inc: u64,
    },
    Flush {
        r: usize,
        inc: u64,
    },
    CtlTimer {
        c: usize,
        inc: u64,
    },
    /// A heartbeat changed what the controller knows of a member (boot, epoch, role, revoked
    /// lease): its cluster loop runs at once, as the runtime's `wake`, without rescheduling.
    CtlWake {
        c: usize,
        inc: u64,
    },
    ClientNext(usize),
    ClientTimeout {
        op: usize,
    },
    Nemesis,
    /// An operator's `failover --to` a sync member (or any member: it may be refused).
    ManualFailover,
    /// An operator's action (`ops.rs`).
    Operator(Act),
    /// A background snapshot's temp file is written and fsynced (`snap.rs`).
    SnapWritten {
        r: usize,
        inc: u64,
        snap: Box<Snapshot>,
        gen: u64,
    },
    /// The log thread compacts through `lsn` if its generation is still `gen`.
    Compact {
        r: usize,
        inc: u64,
        lsn: Lsn,
        gen: u64,
    },
    /// The log thread renamed an installed snapshot into place and restarted the log after it.
    InstallDone {
        r: usize,
        inc: u64,
    },
    /// The nemesis crashes this replica run (`crash-after-install`).
    CrashRun {
        r: usize,
        inc: u64,
    },
    /// The heartbeat timer of the second process claiming a member's id (`dup-id`).
    DupTimer {
        inc: u64,
    },
    Heal(Heal),
    EndFaults,
    Probe,
}
