//! Tier-1 seeded simulation (TESTING.md): the real replica [`Core`]s and controller
//! [`ClusterCore`]s run together in one process, driven by thin simulated runtimes over an
//! in-memory network (`net.rs`), disk (a durable log prefix plus an unsynced tail that a crash
//! loses, the meta facts, rollback archives) and coordination store (an etcd stand-in with
//! leases that expire, an election key, guarded transactions and request timeouts).
//! A seeded nemesis crashes, restarts, pauses, partitions (one- and two-way), drops and delays
//! messages, kills controllers, takes etcd away, wipes replicas and asks for switchovers,
//! while clients run compare-and-set registers and blind writes throughout.
//! Invariants are checked after every event; at the end the run heals, waits for
//! convergence and checks the history (linearizability, lost writes, one writer per epoch).
//! The same seed always replays the same run.

mod impostor;
mod net;
mod ops;
mod snap;

use crate::checker::{self, Op as HOp, OpKind, OpResult, Outcome};
use crate::history::{self, AckedWrite, Stored};
use baton_common::directive::{Directive, Heartbeat, Member, Mode, ReportedRole};
use baton_common::ids::Expect as VExpect;
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId, Version};
use baton_controller::core::{ClusterCore, ClusterParams, Now, Observed, Write, WriteOutcome};
use baton_controller::journal::Entry;
use baton_controller::state::ClusterState;
use baton_replica::core::{
    Action, AppendHeader, Consistency, Core, CoreConfig, FetchStart, FollowerNext, Recovered,
    WriteReject, WriteReq,
};
use baton_replica::snapshot::Snapshot;
use baton_replica::wal::{Op as WOp, Record};
use bytes::Bytes;
use net::{Clock, Net, Proc, Queue};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};

const HEARTBEAT_MS: u64 = 100;
const FAILURE_TIMEOUT_MS: u64 = 800;
const LEASE_MS: u64 = 600;
const ELECTION_TTL_MS: u64 = 2000;
const DRIFT: f64 = 0.01;
const WRITE_TIMEOUT_MS: u64 = 5000;
const CLIENT_TIMEOUT_US: u64 = 6_000_000;
const TICK_MS: u64 = 20;
const STREAM_SILENCE_MS: u64 = 1000;
const BATCH: u64 = 64;

/// Seeds that show a known product bug: (seed, `--faults` mix, what it shows); semi-sync,
/// 10 s. `baton-sim` run with that mix reports such a seed as a known bug (loudly, with its
/// replay command) instead of failing, and fails when one of them passes (the bug is fixed:
/// remove the seed here, pin it as a regression test). `simulation.rs`
/// `known_bug_*` asserts each one still fails. Adding a seed here needs an issue that names it.
pub const KNOWN_BUG_SEEDS: &[(u64, &str, &str)] = &[(
    11159,
    "all,no-forced",
    "etcd restored to an epoch-1 backup while every replica that knew epoch 2 was down or \
     paused: nothing can tell the controller epoch 2 was used, it starts epoch 2 again with \
     another leader (two leaders of epoch 2, I1). Needs a store identity the replicas check \
     (e.g. etcd's cluster id in every directive), see the issue 10 closing note",
)];

/// The fault kinds of issue 10, each on in `all` once its known product bugs were fixed (a
/// kind whose bug is open again is turned off here, with the bug named, so that `main` stays
/// green; `--faults all,KIND` turns it on meanwhile):
/// - `forced`: `failover --to M --force`; the forced leader-start is marked lossy in the
///   cluster state (issue 10 item 2), and the checks reset every key to what the surviving
///   lineage holds at a forced promotion (`World::forced_resets`). A forced leader that dies
///   before writing its lossy leader-start makes the next epoch lossy too (seeds 10232,
///   11433), and that completes the accepted loss.
/// - `snapshot`: replicas snapshot and compact, leaders send snapshots, followers install
///   them and acknowledge the snapshot's LSN only once the install is durable (item 5; see
///   [`ACK_SNAPSHOT_BEFORE_DURABLE`]).
/// - `restore_ops`: etcd restores followed by operator actions (item 3).
/// - `foreign`: a member restarts on another deployment's data directory, or on its own
///   restored from an older copy (items 1 and 7).
/// - `dup_id`: a second process claims a member's id for a while (item 9).
pub const NEW_KINDS_ENABLED: NewKinds = NewKinds {
    forced: true,
    snapshot: true,
    restore_ops: true,
    foreign: true,
    dup_id: true,
};

/// The simulated follower acknowledges an installed snapshot's LSN as soon as the core installed
/// it, before the log thread renamed the file into place, when `true` (the runtime before issue
/// 10 item 5). `false` models the runtime today: the log thread reports the install durable
/// like a flush (`logthread.rs` calls `Node::on_flushed` with the snapshot's LSN after the
/// rename), and only then does the acker send it.
pub const ACK_SNAPSHOT_BEFORE_DURABLE: bool = false;

/// See [`NEW_KINDS_ENABLED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewKinds {
    pub forced: bool,
    pub snapshot: bool,
    pub restore_ops: bool,
    pub foreign: bool,
    pub dup_id: bool,
}

/// Which faults the nemesis may inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Faults {
    pub crash: bool,
    pub pause: bool,
    pub partition: bool,
    pub loss: bool,
    pub controller: bool,
    pub etcd: bool,
    pub wipe: bool,
    pub operator: bool,
    /// etcd restored from an old snapshot, or emptied (TESTING row 18). Not part of `all`
    /// unless `restore_ops` is: the cluster then stops deciding by design.
    pub restore: bool,
    /// Operator `failover --to M --force` (sometimes `allow_data_loss`) to a member outside the
    /// sync set, with the leader alive or cut off. Acknowledged writes it loses are counted as
    /// accepted loss; convergence and one writer per epoch are still checked.
    pub forced: bool,
    /// Snapshots, compaction and snapshot installs (replicas snapshot every few KiB of log),
    /// a crash right after a snapshot install, and disk stalls.
    pub snapshot: bool,
    /// Every etcd restore is followed by operator actions (pause, resume, switchover,
    /// `failover --to` without force). Implies `restore`.
    pub restore_ops: bool,
    /// A member restarts on another deployment's data directory (another cluster id, maybe a
    /// higher epoch and a longer log), or on its own restored from an older copy; its own
    /// comes back later. Refused, journaled, and nothing else changes.
    pub foreign: bool,
    /// A second process claims a member's id (another boot and data directory) for a while.
    /// Refused, journaled; no endless "restart" promotions.
    pub dup_id: bool,
}

const BASE_KINDS: [&str; 8] = [
    "crash",
    "pause",
    "partition",
    "loss",
    "controller",
    "etcd",
    "wipe",
    "operator",
];
const EXTRA_KINDS: [&str; 6] = [
    "restore",
    "forced",
    "snapshot",
    "restore-ops",
    "foreign",
    "dup-id",
];

impl Faults {
    /// Every fault kind whose known bugs are fixed (see [`NEW_KINDS_ENABLED`]).
    pub fn all() -> Faults {
        let n = NEW_KINDS_ENABLED;
        Faults {
            crash: true,
            pause: true,
            partition: true,
            loss: true,
            controller: true,
            etcd: true,
            wipe: true,
            operator: true,
            restore: n.restore_ops,
            forced: n.forced,
            snapshot: n.snapshot,
            restore_ops: n.restore_ops,
            foreign: n.foreign,
            dup_id: n.dup_id,
        }
    }
    /// Every fault kind, the gated ones included.
    pub fn everything() -> Faults {
        let mut f = Faults::all();
        for k in EXTRA_KINDS {
            *f.flag(k).expect("known") = true;
        }
        f
    }
    pub fn none() -> Faults {
        Faults {
            crash: false,
            pause: false,
            partition: false,
            loss: false,
            controller: false,
            etcd: false,
            wipe: false,
            operator: false,
            restore: false,
            forced: false,
            snapshot: false,
            restore_ops: false,
            foreign: false,
            dup_id: false,
        }
    }
    fn flag(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "crash" => &mut self.crash,
            "pause" => &mut self.pause,
            "partition" => &mut self.partition,
            "loss" => &mut self.loss,
            "controller" => &mut self.controller,
            "etcd" => &mut self.etcd,
            "wipe" => &mut self.wipe,
            "operator" => &mut self.operator,
            "restore" => &mut self.restore,
            "forced" => &mut self.forced,
            "snapshot" => &mut self.snapshot,
            "restore-ops" => &mut self.restore_ops,
            "foreign" => &mut self.foreign,
            "dup-id" => &mut self.dup_id,
            _ => return None,
        })
    }
    /// Parses `crash,pause,…`; `all` (every kind whose bugs are fixed), `everything` (the
    /// gated kinds too) and `none` may start the list, and `no-KIND` turns one off.
    pub fn parse(s: &str) -> Result<Faults, String> {
        let mut f = Faults::none();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let (on, kind) = match name.strip_prefix("no-") {
                Some(k) => (false, k),
                None => (true, name),
            };
            match kind {
                "none" => f = Faults::none(),
                "all" => f = Faults::all(),
                "everything" => f = Faults::everything(),
                k => match f.flag(k) {
                    Some(b) => *b = on,
                    None => {
                        return Err(format!(
                            "unknown fault {name:?}; known: {}, {}, all, everything, none (no-KIND turns one off)",
                            BASE_KINDS.join(", "),
                            EXTRA_KINDS.join(", ")
                        ))
                    }
                },
            }
        }
        if f.restore_ops {
            f.restore = true;
        }
        Ok(f)
    }
    /// The list `parse` reads back into these faults.
    pub fn names(&self) -> String {
        let mut me = self.clone();
        let base_all = BASE_KINDS.iter().all(|k| *me.flag(k).expect("known"));
        if base_all {
            let all = Faults::all();
            let mut v = vec!["all".to_string()];
            for k in EXTRA_KINDS {
                if k == "restore" && me.restore_ops {
                    continue; // implied
                }
                let (mine, dflt) = (
                    *me.flag(k).expect("known"),
                    *all.clone().flag(k).expect("known"),
                );
                if mine != dflt {
                    v.push(if mine {
                        k.to_string()
                    } else {
                        format!("no-{k}")
                    });
                }
            }
            return v.join(",");
        }
        let v: Vec<&str> = BASE_KINDS
            .iter()
            .chain(EXTRA_KINDS.iter())
            .copied()
            .filter(|k| *k != "restore" || !self.restore_ops)
            .filter(|k| *me.flag(k).expect("known"))
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(",")
        }
    }
}

/// One simulation run's parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Simulated time with faults, in milliseconds (healing and checks come after).
    pub duration_ms: u64,
    pub faults: Faults,
    pub replicas: usize,
    pub controllers: usize,
    pub clients: usize,
    pub keys: usize,
    /// Test of the checks themselves: the simulated runtime acknowledges a write on the
    /// leader's own fsync instead of the commit rule. Every seed should then fail.
    pub broken_ack_on_flush: bool,
    /// How many of the last events a failing run reports.
    pub trace_len: usize,
    /// Report the trace of a passing run too.
    pub keep_trace: bool,
    /// Replication mode. In async mode a failover may lose acknowledged writes by design
    /// (G3 counts them): the lost-write and linearizability checks are replaced by a count.
    pub mode: Mode,
    /// Clients also delete (plain and conditional) and read with `any` consistency from any
    /// replica. Off replays the schedules of the seeds pinned before deletes existed.
    pub deletes_and_any: bool,
    /// Followers acknowledge on keepalives too, as the runtime's acker does every 20 ms
    /// without new flushes. Off replays the seeds pinned before (a quiet follower then looked
    /// "not acking" to the controller after a second, and the sync set flapped).
    pub periodic_acks: bool,
    /// A long quiet run (TESTING row 23): no faults, clients write about once a second each,
    /// and every operation must succeed (nothing wedges), the controllers must not keep writing
    /// etcd, and with snapshots on the logs must stay bounded.
    pub idle: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            duration_ms: 10_000,
            faults: Faults::all(),
            replicas: 3,
            controllers: 2,
            clients: 3,
            keys: 3,
            broken_ack_on_flush: false,
            trace_len: 60,
            keep_trace: false,
            mode: Mode::SemiSync,
            deletes_and_any: true,
            periodic_acks: true,
            idle: false,
        }
    }
    /// The run as it was before issue 10 (no deletes, no `any` reads, none of the new kinds):
    /// pinned seeds replay their original schedules with it.
    pub fn classic(seed: u64) -> SimConfig {
        let mut c = SimConfig::new(seed);
        c.deletes_and_any = false;
        c.periodic_acks = false;
        c.faults.forced = false;
        c.faults.snapshot = false;
        c.faults.restore_ops = false;
        c.faults.restore = false;
        c.faults.foreign = false;
        c.faults.dup_id = false;
        c
    }
    /// A long idle run of `duration_ms` (see [`SimConfig::idle`]); snapshots on when
    /// `snapshots`.
    pub fn idle(seed: u64, duration_ms: u64, snapshots: bool) -> SimConfig {
        let mut c = SimConfig::new(seed);
        c.duration_ms = duration_ms;
        c.faults = Faults::none();
        c.faults.snapshot = snapshots;
        c.idle = true;
        c
    }
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        if self.idle {
            return format!(
                "cargo run -p baton-tests --bin baton-sim -- --seed {} --idle-ms {}{}",
                self.seed,
                self.duration_ms,
                if self.faults.snapshot {
                    " --faults snapshot"
                } else {
                    ""
                }
            );
        }
        format!(
            "cargo run -p baton-tests --bin baton-sim -- --seed {} --duration-ms {} --faults {}{}{}",
            self.seed,
            self.duration_ms,
            self.faults.names(),
            if self.mode == Mode::Async {
                " --async"
            } else {
                ""
            },
            if self.deletes_and_any || self.periodic_acks {
                ""
            } else {
                " --classic"
            }
        )
    }
}

/// What a run did and found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub steps: u64,
    pub faults: u64,
    pub ops: u64,
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    pub epochs: u64,
    /// The run ended with a promotion blocked by design (it needs an operator).
    pub blocked: bool,
    /// Async mode: acknowledged writes missing from the final state (allowed, counted).
    pub lost_async: u64,
    /// Semi-sync mode: acknowledged writes lost by a forced failover the operator accepted
    /// (`failover --force`); counted, not failed.
    pub lost_accepted: u64,
    /// Snapshots installed by followers.
    pub installs: u64,
    /// Snapshots taken (committed) and log compactions.
    pub snapshots: u64,
    /// How often each fault kind was injected (and took effect).
    pub fault_kinds: BTreeMap<String, u64>,
    pub violations: Vec<String>,
    /// The last events before the first violation (for diagnosis).
    pub trace: Vec<String>,
}

// ----- messages and events -----------------------------------------------------------------

#[derive(Clone, Debug)]
enum Repl {
    Hello {
        id: NodeId,
        data_id: DataId,
        epoch: Epoch,
    },
    Welcome {
        epoch: Epoch,
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
    Append {
        h: AppendHeader,
        records: Vec<Record>,
    },
    Keepalive {
        epoch: Epoch,
        commit: Lsn,
        end: Lsn,
    },
    Ack {
        epoch: Epoch,
        flushed: Lsn,
    },
    /// The leader's newest snapshot (begin, chunks and end of the real stream in one message:
    /// the stream is FIFO and the follower acts only on the end).
    Snapshot(Box<Snapshot>),
}

#[derive(Clone, Debug)]
enum Req {
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
enum Res {
    Read(Option<(String, Version)>),
    /// An `any` read: the entry and the replica's applied LSN.
    ReadAny(Option<(String, Version)>),
    Written(Version),
    Precondition,
    NotApplied(String),
    Unknown(String),
}

#[derive(Clone, Debug)]
enum Msg {
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
enum Heal {
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
enum Ev {
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
    ClientNext(usize),
    ClientTimeout {
        op: usize,
    },
    Nemesis,
    /// An operator's `failover --to` a sync member (or any member: it may be refused).
    ManualFailover,
    /// An operator's action (`ops.rs`).
    Operator(ops::Act),
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

// ----- simulated processes ------------------------------------------------------------------

struct FollowerStream {
    conn: u64,
    leader: usize,
    directed: Epoch,
    sid: Option<u64>,
    last_msg_ms: u64,
}

struct Serving {
    follower: usize,
    id: NodeId,
    sid: u64,
    epoch: Epoch,
    /// `None` during the exchange.
    next: Option<Lsn>,
    commit_sent: Lsn,
    last_send_ms: u64,
}

struct Replica {
    id: NodeId,
    clock: Clock,
    up: bool,
    inc: u64,
    paused_until: u64,
    // The disk.
    data_id: DataId,
    /// The deployment the directory belongs to (0: adopted from the first directive, as a
    /// fresh or this cluster's own directory does here).
    meta_cluster_id: u64,
    meta_epoch: Epoch,
    meta_rev: u64,
    meta_unclean: bool,
    /// Every record written, LSN `log_start + i` at index `i`; the first `durable` survive a
    /// crash.
    log: Vec<Record>,
    log_start: u64,
    durable: usize,
    /// The newest snapshot renamed into place (durable).
    snap: Option<Snapshot>,
    rollbacks: Vec<Record>,
    /// Truncations, resets and installs the log thread executed in this process run.
    disk_gen: u64,
    /// A snapshot install queued to the log thread and not done yet: records appended after
    /// it (and an `unclean` change) wait behind it, as in the log thread's channel.
    install: Option<Box<Snapshot>>,
    /// The core's log generation right after that install (`Node::on_flushed` reports the
    /// install durable only if it did not change since).
    install_log_gen: u64,
    queued: Vec<Record>,
    queued_unclean: Option<bool>,
    /// The disk stalls (every fsync, rename and install waits) until then (µs).
    stall_until: u64,
    // The process.
    core: Option<Core>,
    flush_scheduled: bool,
    waiters: BTreeMap<Lsn, (usize, Version, u64)>,
    barriers: Vec<(Lsn, usize, u64)>,
    hb_seq: u64,
    hb_sent_at: u64,
    stream: Option<FollowerStream>,
    retry_at_ms: u64,
    serving: BTreeMap<u64, Serving>,
    /// Highest epoch this data directory ever reported (epochs never go back).
    max_epoch: Epoch,
}

struct Ctl {
    clock: Clock,
    up: bool,
    inc: u64,
    paused_until: u64,
    core: ClusterCore,
    lease: Option<i64>,
    valid_until: u64,
    next_keepalive: u64,
}

#[derive(Default)]
struct Etcd {
    up: bool,
    timeout_p: f64,
    rev: u64,
    state: Option<(ClusterState, u64)>,
    journal: Vec<Entry>,
    election: Option<(usize, i64, u64)>,
    leases: HashMap<i64, u64>,
    next_lease: i64,
    hears: HashMap<usize, (usize, i64)>,
}

impl Etcd {
    fn expire(&mut self, now_us: u64) {
        self.leases.retain(|_, exp| *exp > now_us);
        if let Some((_, l, _)) = self.election {
            if !self.leases.contains_key(&l) {
                self.election = None;
            }
        }
        let leases = &self.leases;
        self.hears.retain(|_, (_, l)| leases.contains_key(l));
    }
}

/// What an etcd backup holds: the keys and the revision counter at that time.
#[derive(Clone)]
struct EtcdBackup {
    at: u64,
    state: Option<(ClusterState, u64)>,
    journal: Vec<Entry>,
    rev: u64,
    election: Option<(usize, i64, u64)>,
}

struct Client {
    busy: Option<usize>,
    last_read: HashMap<String, Option<(String, Version)>>,
    n: u64,
}

struct OpRec {
    h: HOp,
    client: usize,
    done: bool,
    /// An `any` read (kept out of the linearizability history).
    any: bool,
}

// ----- the world ---------------------------------------------------------------------------

struct World {
    cfg: SimConfig,
    rng: StdRng,
    now: u64,
    q: Queue<Ev>,
    net: Net,
    replicas: Vec<Replica>,
    ctls: Vec<Ctl>,
    etcd: Etcd,
    clients: Vec<Client>,
    ops: Vec<OpRec>,
    next_conn: u64,
    conns: HashMap<u64, (usize, usize)>,
    members: Vec<Member>,
    /// Every record ever appended anywhere: (epoch, LSN) → its content.
    written: HashMap<(u64, u64), String>,
    /// The leader-start of each epoch: epoch → (leader, LSN).
    epoch_starts: HashMap<u64, (String, u64)>,
    /// Acknowledged writes: (epoch, LSN) → (key, value).
    acked: HashMap<(u64, u64), (String, String)>,
    /// Acknowledged deletes: (epoch, LSN) → key.
    acked_deletes: HashMap<(u64, u64), String>,
    /// Every (epoch, LSN) a leader acknowledged, when it sent the answer (for I2).
    leader_acked: Vec<(u64, u64)>,
    /// The highest epoch promoted by a forced failover (`failover --force` to a member that
    /// may lack acknowledged writes): writes acknowledged in lower epochs may be lost by the
    /// operator's choice (accepted loss).
    forced_epoch: u64,
    /// Every epoch a forced failover promoted to a member that may lack acknowledged writes,
    /// and when its promotion was recorded (µs).
    forced_epochs: BTreeMap<u64, u64>,
    /// Epochs whose leader-start their leader saw committed (it served them).
    committed_starts: std::collections::HashSet<u64>,
    /// Each epoch's leader-start: when its leader appended it (µs) and what every key held
    /// in that leader's log just below it (the state a forced promotion resets to).
    start_states: HashMap<u64, (u64, Vec<Option<String>>)>,
    /// The next snapshot install crashes its replica right after (`crash-after-install`).
    crash_after_install: bool,
    /// Foreign directories, older copies and second processes (`impostor.rs`).
    imp: impostor::Impostors,
    /// Snapshot threshold of this run's replicas (bytes of log; `u64::MAX` without snapshots).
    snapshot_bytes: u64,
    /// Idle runs: etcd state writes since the run settled.
    idle_etcd_writes: u64,
    /// The cluster was initialized (`init`) at least once.
    initialized: bool,
    /// Client operations invoked before this time (µs) belong to a history that was wiped
    /// out entirely (see [`World::note_init`]) and are not checked.
    history_from: u64,
    faults_on: bool,
    clients_on: bool,
    /// Copies of etcd's state and journal, taken every second (for `etcd-restore`).
    etcd_backups: Vec<EtcdBackup>,
    /// etcd went back to an old backup (or was emptied) during the run.
    etcd_restored: bool,
    /// The active controller crashes right after its next promotion step.
    crash_mid_promotion: bool,
    /// The last refusal a client saw (traced once per change).
    last_refusal: String,
    /// When the faults ended and everything was healed (µs).
    healed_at: u64,
    /// The run ended blocked by design (see [`World::blocked_by_design`]).
    blocked: bool,
    report: Report,
    trace: std::collections::VecDeque<String>,
}

fn key_of(i: usize) -> String {
    format!("k{i}")
}

fn rec_content(r: &Record) -> String {
    match &r.op {
        WOp::Put { key, value } => format!(
            "put {}={}",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(value)
        ),
        WOp::Delete { key } => format!("del {}", String::from_utf8_lossy(key)),
        WOp::LeaderStart { leader, lossy } => format!("start {leader} lossy={lossy}"),
    }
}

impl World {
    fn new(cfg: SimConfig) -> World {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let members: Vec<Member> = (0..cfg.replicas)
            .map(|i| Member {
                id: NodeId(format!("r{}", i + 1)),
                addr: format!("r{}:7000", i + 1),
                priority: 0,
                no_failover: false,
            })
            .collect();
        let clock = |rng: &mut StdRng| Clock {
            offset_ms: rng.random_range(1_000..1_000_000),
            // Rates differ by less than the drift bound ρ between any two machines.
            rate: 1.0 + rng.random_range(-0.45 * DRIFT..0.45 * DRIFT),
        };
        let replicas = (0..cfg.replicas)
            .map(|i| Replica {
                id: members[i].id.clone(),
                clock: clock(&mut rng),
                up: false,
                inc: 0,
                paused_until: 0,
                data_id: DataId(rng.random()),
                meta_cluster_id: 0,
                meta_epoch: Epoch(0),
                meta_rev: 0,
                meta_unclean: true,
                log: Vec::new(),
                log_start: 1,
                durable: 0,
                snap: None,
                rollbacks: Vec::new(),
                disk_gen: 0,
                install: None,
                install_log_gen: 0,
                queued: Vec::new(),
                queued_unclean: None,
                stall_until: 0,
                core: None,
                flush_scheduled: false,
                waiters: BTreeMap::new(),
                barriers: Vec::new(),
                hb_seq: 0,
                hb_sent_at: 0,
                stream: None,
                retry_at_ms: 0,
                serving: BTreeMap::new(),
                max_epoch: Epoch(0),
            })
            .collect();
        let ccfg = ClusterParams {
            name: "main".into(),
            members: members.clone(),
            mode: cfg.mode,
            sync_size: 1,
            strict: false,
            heartbeat_interval_ms: HEARTBEAT_MS,
            failure_timeout_ms: FAILURE_TIMEOUT_MS,
            lease_ms: LEASE_MS,
            sync_wait_ms: 1000,
            drift: DRIFT,
            max_lag_on_failover: 1000,
            max_failovers_per_hour: 1000,
        };
        let ctls = (0..cfg.controllers)
            .map(|_| Ctl {
                clock: clock(&mut rng),
                up: true,
                inc: 0,
                paused_until: 0,
                core: ClusterCore::new(ccfg.clone()),
                lease: None,
                valid_until: 0,
                next_keepalive: 0,
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|_| Client {
                busy: None,
                last_read: HashMap::new(),
                n: 0,
            })
            .collect();
        // Drawn only when on, so that runs without snapshots replay their old schedules.
        let snapshot_bytes = if cfg.faults.snapshot {
            rng.random_range(512..4096)
        } else {
            u64::MAX
        };
        World {
            rng,
            now: 0,
            q: Queue::new(),
            net: Net::default(),
            replicas,
            ctls,
            etcd: Etcd {
                up: true,
                next_lease: 1,
                ..Default::default()
            },
            clients,
            ops: Vec::new(),
            next_conn: 0,
            conns: HashMap::new(),
            members,
            written: HashMap::new(),
            acked: HashMap::new(),
            acked_deletes: HashMap::new(),
            leader_acked: Vec::new(),
            forced_epoch: 0,
            forced_epochs: Default::default(),
            start_states: HashMap::new(),
            committed_starts: Default::default(),
            crash_after_install: false,
            imp: Default::default(),
            snapshot_bytes,
            idle_etcd_writes: 0,
            initialized: false,
            history_from: 0,
            epoch_starts: HashMap::new(),
            faults_on: true,
            clients_on: true,
            healed_at: 0,
            blocked: false,
            last_refusal: String::new(),
            crash_mid_promotion: false,
            etcd_backups: Vec::new(),
            etcd_restored: false,
            report: Report {
                seed: cfg.seed,
                ..Default::default()
            },
            trace: Default::default(),
            cfg,
        }
    }

    fn violation(&mut self, v: String) {
        if self.report.violations.is_empty() {
            self.report.trace = self.trace.iter().cloned().collect();
        }
        if self.report.violations.len() < 20 {
            self.report
                .violations
                .push(format!("t={} ms: {v}", self.now / 1000));
        }
    }

    fn note(&mut self, s: String) {
        if self.trace.len() >= self.cfg.trace_len {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>8} ms {s}", self.now / 1000));
    }

    fn after_us(&mut self, us: u64, e: Ev) {
        self.q.push(self.now + us, e);
    }

    fn rms(&self, r: usize) -> u64 {
        self.replicas[r].clock.ms(self.now)
    }

    fn cnow(&self, c: usize) -> Now {
        Now {
            ms: self.ctls[c].clock.ms(self.now),
            unix_ms: 1_800_000_000_000 + self.now / 1000,
        }
    }

    // ----- network ---------------------------------------------------------------------------

    fn delay(&mut self) -> u64 {
        let base = self.rng.random_range(50..1500);
        let extra = if self.net.extra_delay_us > 0 {
            self.rng.random_range(0..self.net.extra_delay_us)
        } else {
            0
        };
        base + extra
    }

    fn send(&mut self, from: Proc, to: Proc, to_inc: Option<u64>, msg: Msg) {
        if self.net.is_cut(from, to) || (self.net.loss > 0.0 && self.rng.random_bool(self.net.loss))
        {
            if let Msg::Repl { conn, .. } = &msg {
                self.net.broken.insert(*conn);
            }
            return;
        }
        if self.net.dup > 0.0
            && matches!(msg, Msg::Heartbeat(..) | Msg::Directive(_))
            && self.rng.random_bool(self.net.dup)
        {
            // A duplicate, delivered in any order relative to the original.
            let at = self.now + self.delay() + self.delay();
            self.q.push(
                at,
                Ev::Deliver {
                    to,
                    from,
                    to_inc,
                    msg: msg.clone(),
                },
            );
        }
        let mut at = self.now + self.delay();
        if let Msg::Repl { conn, .. } = &msg {
            if self.net.broken.contains(conn) {
                return;
            }
            let last = self.net.last_delivery.entry(*conn).or_insert(0);
            at = at.max(*last);
            *last = at;
        }
        self.q.push(
            at,
            Ev::Deliver {
                to,
                from,
                to_inc,
                msg,
            },
        );
    }

    // ----- main loop -------------------------------------------------------------------------

    fn run(mut self) -> Report {
        for r in 0..self.replicas.len() {
            self.start_replica(r);
        }
        for c in 0..self.ctls.len() {
            let j = self.rng.random_range(0..50_000);
            self.after_us(j, Ev::CtlTimer { c, inc: 0 });
        }
        for c in 0..self.clients.len() {
            self.after_us(1_000_000 + c as u64 * 1000, Ev::ClientNext(c));
        }
        self.after_us(2_000_000, Ev::Nemesis);
        let end_faults = self.cfg.duration_ms * 1000;
        self.q.push(end_faults, Ev::EndFaults);
        let hard_end = end_faults + 40_000_000;
        while let Some((t, ev)) = self.q.pop() {
            if t > hard_end {
                self.violation("the run did not converge within 40 s after healing".into());
                break;
            }
            self.now = t;
            self.report.steps += 1;
            if let Some(done) = self.step(ev) {
                if done {
                    break;
                }
            }
            self.check_step();
            if self.report.violations.len() >= 5 {
                break;
            }
        }
        self.finish()
    }

    /// Handles one event; `Some(true)` ends the run.
    fn step(&mut self, ev: Ev) -> Option<bool> {
        // A paused process handles nothing until it resumes (its events wait, in order).
        let paused_until = match &ev {
            Ev::Deliver {
                to: Proc::Replica(r),
                ..
            }
            | Ev::Tick { r, .. }
            | Ev::HeartbeatTimer { r, .. }
            | Ev::Flush { r, .. }
            | Ev::Closed { r, .. } => self.replicas[*r].paused_until,
            // The disk keeps working while the process is stopped (the kernel writes back),
            // but the log thread is stopped too: its steps wait.
            Ev::SnapWritten { r, .. } | Ev::Compact { r, .. } | Ev::InstallDone { r, .. } => self
                .replicas[*r]
                .paused_until
                .max(self.replicas[*r].stall_until),
            Ev::Deliver {
                to: Proc::Controller(c),
                ..
            }
            | Ev::CtlTimer { c, .. } => self.ctls[*c].paused_until,
            _ => 0,
        };
        if paused_until > self.now {
            self.q.push(paused_until, ev);
            return None;
        }
        match ev {
            Ev::Deliver {
                to,
                from,
                to_inc,
                msg,
            } => self.deliver(to, from, to_inc, msg),
            Ev::Closed { r, conn } => {
                if self.replicas[r].up {
                    self.stream_closed(r, conn);
                }
            }
            Ev::Tick { r, inc } => {
                if self.replicas[r].up && self.replicas[r].inc == inc {
                    self.replica_tick(r);
                    self.after_us(TICK_MS * 1000, Ev::Tick { r, inc });
                }
            }
            Ev::HeartbeatTimer { r, inc } => {
                if self.replicas[r].up && self.replicas[r].inc == inc {
                    self.send_heartbeats(r);
                    self.after_us(HEARTBEAT_MS * 1000, Ev::HeartbeatTimer { r, inc });
                }
            }
            Ev::Flush { r, inc } => {
                if self.replicas[r].up && self.replicas[r].inc == inc {
                    self.flush(r);
                }
            }
            Ev::CtlTimer { c, inc } => {
                if self.ctls[c].up && self.ctls[c].inc == inc {
                    self.ctl_loop(c);
                    self.after_us(HEARTBEAT_MS * 500, Ev::CtlTimer { c, inc });
                }
            }
            Ev::ClientNext(c) => self.client_next(c),
            Ev::ClientTimeout { op } => self.client_timeout(op),
            Ev::Nemesis => {
                if self
                    .etcd_backups
                    .last()
                    .is_none_or(|b| self.now >= b.at + 1_000_000)
                {
                    let b = EtcdBackup {
                        at: self.now,
                        state: self.etcd.state.clone(),
                        journal: self.etcd.journal.clone(),
                        rev: self.etcd.rev,
                        election: self.etcd.election,
                    };
                    self.etcd_backups.push(b);
                }
                self.maybe_copy_disk();
                if self.faults_on {
                    if !self.cfg.idle {
                        self.nemesis();
                    }
                    let next = self.rng.random_range(200_000..1_500_000);
                    self.after_us(next, Ev::Nemesis);
                }
            }
            Ev::Heal(h) => self.heal(h),
            Ev::DupTimer { inc } => self.dup_timer(inc),
            Ev::ManualFailover => self.manual_failover(),
            Ev::Operator(a) => self.operator(a),
            Ev::SnapWritten { r, inc, snap, gen } => {
                if self.replicas[r].up && self.replicas[r].inc == inc {
                    self.snapshot_written(r, *snap, gen);
                }
            }
            Ev::Compact { r, inc, lsn, gen } => {
                if self.replicas[r].up && self.replicas[r].inc == inc {
                    self.compact(r, lsn, gen);
                }
            }
            Ev::InstallDone { r, inc } => {
                if self.replicas[r].up && self.replicas[r].inc == inc {
                    self.install_done(r);
                }
            }
            Ev::CrashRun { r, inc } => {
                if self.replicas[r].up && self.replicas[r].inc == inc {
                    self.crash_replica(r);
                    let hold = self.rng.random_range(300_000..3_500_000);
                    self.after_us(hold, Ev::Heal(Heal::Restart(Proc::Replica(r))));
                }
            }
            Ev::EndFaults => {
                self.faults_on = false;
                self.crash_mid_promotion = false;
                self.note("end of faults: healing everything".into());
                self.heal_all();
                self.healed_at = self.now;
                self.after_us(8_000_000, Ev::Probe);
            }
            Ev::Probe => {
                self.clients_on = false;
                if self.clients.iter().all(|c| c.busy.is_none())
                    && self.converged().is_ok()
                    && self.someone_serves()
                {
                    return Some(true);
                }
                if self.now >= self.healed_at + 12_000_000 && self.blocked_by_design() {
                    self.blocked = true;
                    return Some(true);
                }
                self.after_us(100_000, Ev::Probe);
            }
        }
        None
    }

    // ----- replicas: lifecycle ---------------------------------------------------------------

    fn start_replica(&mut self, r: usize) {
        let boot = BootId(self.rng.random());
        let snapshot_log_bytes = self.snapshot_bytes;
        let rep = &mut self.replicas[r];
        rep.log.truncate(rep.durable);
        // As `Node::open_with_log`: a log that ends inside the snapshot restarts after it;
        // the records after the snapshot are replayed.
        let snap_lsn = rep.snap.as_ref().map_or(0, |s| s.lsn.0);
        if rep.log_start + (rep.log.len() as u64) <= snap_lsn {
            rep.log.clear();
            rep.durable = 0;
            rep.log_start = snap_lsn + 1;
        }
        assert!(
            rep.log_start <= snap_lsn + 1,
            "simulated disk: the log starts after the snapshot"
        );
        let cfg = CoreConfig {
            id: rep.id.clone(),
            cluster: "main".into(),
            addr: self.members[r].addr.clone(),
            data_id: rep.data_id,
            boot_id: boot,
            drift: DRIFT,
            snapshot_log_bytes,
        };
        let skip = (snap_lsn + 1 - rep.log_start) as usize;
        let rec = Recovered {
            cluster_id: rep.meta_cluster_id,
            epoch: rep.meta_epoch,
            applied_rev: rep.meta_rev,
            unclean: rep.meta_unclean,
            snapshot: rep.snap.clone(),
            records: rep.log[skip..].to_vec(),
            log_start: Lsn(rep.log_start),
        };
        rep.core = Some(Core::new(cfg, rec));
        rep.up = true;
        rep.inc += 1;
        rep.disk_gen = 0;
        rep.flush_scheduled = false;
        rep.waiters.clear();
        rep.barriers.clear();
        rep.hb_seq = 0;
        rep.stream = None;
        rep.serving.clear();
        let inc = rep.inc;
        self.note(format!("r{} starts (inc {inc})", r + 1));
        let j1 = self.rng.random_range(0..TICK_MS * 1000);
        let j2 = self.rng.random_range(0..HEARTBEAT_MS * 1000);
        self.after_us(j1, Ev::Tick { r, inc });
        self.after_us(j2, Ev::HeartbeatTimer { r, inc });
    }

    fn crash_replica(&mut self, r: usize) {
        if !self.replicas[r].up {
            return;
        }
        self.note(format!("r{} crashes", r + 1));
        self.check_i2_at_crash(r);
        let rep = &mut self.replicas[r];
        rep.up = false;
        rep.inc += 1;
        rep.core = None;
        rep.paused_until = 0;
        // Whatever waited behind an unfinished install in the log thread's channel is gone;
        // the disk still holds the old log and snapshot.
        rep.install = None;
        rep.queued.clear();
        rep.queued_unclean = None;
        rep.log.truncate(rep.durable);
        rep.waiters.clear();
        rep.barriers.clear();
        rep.stream = None;
        rep.serving.clear();
        // Its streams die; the peer's kernel learns it (a reset) soon after.
        let conns: Vec<(u64, (usize, usize))> = self
            .conns
            .iter()
            .filter(|(_, (f, l))| *f == r || *l == r)
            .map(|(c, p)| (*c, *p))
            .collect();
        for (conn, (f, l)) in conns {
            self.net.broken.insert(conn);
            self.conns.remove(&conn);
            let other = if f == r { l } else { f };
            self.after_us(1000, Ev::Closed { r: other, conn });
        }
    }

    fn wipe_replica(&mut self, r: usize) {
        self.crash_replica(r);
        self.note(format!("r{} disk wiped", r + 1));
        let id = DataId(self.rng.random());
        let rep = &mut self.replicas[r];
        rep.data_id = id;
        rep.meta_cluster_id = 0;
        rep.meta_epoch = Epoch(0);
        rep.meta_rev = 0;
        rep.meta_unclean = true;
        rep.log.clear();
        rep.log_start = 1;
        rep.durable = 0;
        rep.snap = None;
        rep.max_epoch = Epoch(0);
    }

    fn core(&mut self, r: usize) -> &mut Core {
        self.replicas[r].core.as_mut().expect("replica up")
    }

    // ----- replicas: effects, flushing, acknowledgements ---------------------------------------

    fn append_local(&mut self, r: usize, rec: Record) {
        let k = (rec.epoch.0, rec.lsn.0);
        let content = rec_content(&rec);
        match self.written.get(&k) {
            Some(c) if *c != content => {
                let c = c.clone();
                self.violation(format!(
                    "one writer per epoch broken: ({}, {}) holds {c:?} elsewhere and {content:?} on r{}",
                    k.0, k.1, r + 1
                ));
            }
            Some(_) => {}
            None => {
                self.written.insert(k, content);
            }
        }
        if let WOp::LeaderStart { leader, .. } = &rec.op {
            // One leader per epoch (I1): every copy of an epoch's leader-start is the same one.
            let me = (leader.0.clone(), rec.lsn.0);
            match self.epoch_starts.get(&rec.epoch.0) {
                Some(first) if *first != me => {
                    let first = first.clone();
                    self.violation(format!(
                        "two leaders started epoch {}: {} at LSN {} and {} at LSN {} (seen on r{})",
                        rec.epoch,
                        first.0,
                        first.1,
                        me.0,
                        me.1,
                        r + 1
                    ));
                }
                Some(_) => {}
                None => {
                    self.epoch_starts.insert(rec.epoch.0, me);
                    let values = self.values_below(r, rec.lsn);
                    self.start_states.insert(rec.epoch.0, (self.now, values));
                }
            }
        }
        let rep = &mut self.replicas[r];
        let end = rep.log_start + rep.log.len() as u64 + rep.queued.len() as u64;
        let end = match &rep.install {
            Some(s) => s.lsn.0 + 1 + rep.queued.len() as u64,
            None => end,
        };
        if rec.lsn.0 != end {
            self.violation(format!(
                "r{} appends LSN {} where its log continues at LSN {end}",
                r + 1,
                rec.lsn
            ));
            return;
        }
        if rep.install.is_some() {
            // Behind the install in the log thread's channel.
            rep.queued.push(rec);
            return;
        }
        rep.log.push(rec);
        if !rep.flush_scheduled {
            rep.flush_scheduled = true;
            let inc = rep.inc;
            let d = self.rng.random_range(200..3000);
            self.after_us(d, Ev::Flush { r, inc });
        }
    }

    /// What every key holds in replica `r`'s log just below `lsn`: its applied state and the
    /// records it holds after it (behind an unfinished install, the queued ones).
    fn values_below(&self, r: usize, lsn: Lsn) -> Vec<Option<String>> {
        let rep = &self.replicas[r];
        let core = rep.core.as_ref().expect("up");
        let mut v: Vec<Option<String>> = (0..self.cfg.keys)
            .map(|k| {
                core.state()
                    .get(key_of(k).as_bytes())
                    .map(|e| String::from_utf8_lossy(&e.value).into_owned())
            })
            .collect();
        let tail = if rep.install.is_some() {
            &rep.queued
        } else {
            &rep.log
        };
        for rec in tail
            .iter()
            .filter(|x| x.lsn > core.applied() && x.lsn < lsn)
        {
            let (key, val) = match &rec.op {
                WOp::Put { key, value } => (key, Some(String::from_utf8_lossy(value).into_owned())),
                WOp::Delete { key } => (key, None),
                WOp::LeaderStart { .. } => continue,
            };
            if let Some(k) = (0..self.cfg.keys).find(|k| key_of(*k).as_bytes() == &key[..]) {
                v[k] = val;
            }
        }
        v
    }

    /// Executes the engine's actions in list order, as the replica's driver does (the
    /// `PersistEpoch` and `InstallSnapshot` steps are executed where they are asked for).
    fn run_effects(&mut self, r: usize, fx: Vec<Action>) {
        for e in fx {
            match e {
                Action::Append(rec) => self.append_local(r, rec),
                Action::FailPending(reason) => {
                    let rep = &mut self.replicas[r];
                    let waiters = std::mem::take(&mut rep.waiters);
                    let barriers = std::mem::take(&mut rep.barriers);
                    for (_, (op, _, _)) in waiters {
                        self.reply(r, op, Res::Unknown(reason.clone()));
                    }
                    for (_, op, _) in barriers {
                        self.reply(r, op, Res::NotApplied(reason.clone()));
                    }
                }
                Action::StoreUnclean(u) => {
                    let rep = &mut self.replicas[r];
                    if rep.install.is_some() {
                        rep.queued_unclean = Some(u);
                    } else {
                        rep.meta_unclean = u;
                    }
                }
                Action::Truncate(t) => {
                    self.note(format!(
                        "r{} truncates from LSN {} ({} records archived, below_commit {})",
                        r + 1,
                        t.from,
                        t.records.len(),
                        t.below_commit
                    ));
                    self.truncate_disk(r, t.from);
                }
                Action::Resync { from } => {
                    self.note(format!("r{} resyncs from LSN {from}", r + 1));
                    self.truncate_disk(r, from);
                    let rep = &mut self.replicas[r];
                    let rest: Vec<Record> = rep.log.drain(..).collect();
                    rep.rollbacks.extend(rest);
                    rep.durable = 0;
                    rep.log_start = 1;
                    // Snapshots are set aside with the log.
                    rep.snap = None;
                    rep.meta_unclean = true;
                }
                Action::PersistEpoch { .. }
                | Action::InstallSnapshot { .. }
                | Action::Ignore(_) => {}
            }
        }
    }

    /// After any core step: acknowledge what committed, run the effects, feed the streams.
    fn after_step(&mut self, r: usize, fx: Vec<Action>) {
        let now = self.rms(r);
        let commit = if self.cfg.broken_ack_on_flush {
            self.core(r).flushed()
        } else {
            self.core(r).commit()
        };
        let ack = self.core(r).may_acknowledge(now);
        if self.core(r).role() == ReportedRole::Leader {
            let e = self.core(r).epoch().0;
            if self
                .epoch_starts
                .get(&e)
                .is_some_and(|(_, lsn)| commit.0 >= *lsn)
            {
                self.committed_starts.insert(e);
            }
        }
        loop {
            let rep = &mut self.replicas[r];
            let Some(entry) = rep.waiters.first_entry() else {
                break;
            };
            if *entry.key() > commit {
                break;
            }
            let (op, version, _) = entry.remove();
            if ack {
                self.leader_acked.push((version.epoch.0, version.lsn.0));
                self.reply(r, op, Res::Written(version));
            } else {
                self.reply(
                    r,
                    op,
                    Res::Unknown("the lease expired before the write could be acknowledged".into()),
                );
            }
        }
        let rep = &mut self.replicas[r];
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut rep.barriers)
            .into_iter()
            .partition(|(l, _, _)| *l <= commit);
        rep.barriers = keep;
        for (_, op, _) in done {
            self.reply(r, op, Res::Precondition);
        }
        self.run_effects(r, fx);
        self.push_streams(r);
        self.maybe_snapshot(r);
    }

    fn flush(&mut self, r: usize) {
        let rep = &mut self.replicas[r];
        if rep.install.is_some() || rep.stall_until > self.now {
            // The log thread is busy with an install or its disk stalls: the batch waits.
            let (inc, at) = (rep.inc, rep.stall_until.max(self.now + 500));
            self.q.push(at, Ev::Flush { r, inc });
            return;
        }
        rep.flush_scheduled = false;
        rep.durable = rep.log.len();
        let lsn = Lsn(rep.log_start + rep.durable as u64 - 1);
        let now = self.rms(r);
        let gen = self.core(r).log_gen();
        let fx = self.core(r).on_flushed(now, lsn, gen);
        self.after_step(r, fx);
        // A follower acknowledges its flush on its stream.
        if let Some(s) = &self.replicas[r].stream {
            if let Some(sid) = s.sid {
                let (conn, leader) = (s.conn, s.leader);
                let core = self.replicas[r].core.as_ref().expect("up");
                if core.follower_stream_current(sid) {
                    let m = Repl::Ack {
                        epoch: core.epoch(),
                        flushed: core.flushed(),
                    };
                    self.send_repl(r, leader, conn, m);
                }
            }
        }
    }

    fn reply(&mut self, r: usize, op: usize, res: Res) {
        let client = self.ops[op].client;
        self.send(
            Proc::Replica(r),
            Proc::Client(client),
            None,
            Msg::Reply { op, res },
        );
    }

    // ----- replicas: timers and heartbeats ------------------------------------------------------

    fn replica_tick(&mut self, r: usize) {
        let now = self.rms(r);
        let fx = self.core(r).tick(now);
        self.after_step(r, fx);
        // Writes and refusals that waited too long.
        let rep = &mut self.replicas[r];
        let expired: Vec<Lsn> = rep
            .waiters
            .iter()
            .filter(|(_, (_, _, dl))| now >= *dl)
            .map(|(l, _)| *l)
            .collect();
        let mut late = Vec::new();
        for l in expired {
            if let Some((op, _, _)) = rep.waiters.remove(&l) {
                late.push((op, true));
            }
        }
        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut rep.barriers)
            .into_iter()
            .partition(|(_, _, dl)| now >= *dl);
        rep.barriers = keep;
        late.extend(old.into_iter().map(|(_, op, _)| (op, false)));
        for (op, unknown) in late {
            let res = if unknown {
                Res::Unknown("write timeout".into())
            } else {
                Res::NotApplied("the pending record did not commit in time".into())
            };
            self.reply(r, op, res);
        }
        // The follower's stream: silence, a new leader, reconnecting.
        let target = self.core(r).follower_target();
        let rep = &mut self.replicas[r];
        if let Some(s) = &rep.stream {
            let stale = match &target {
                None => true,
                Some((l, e)) => self.members[s.leader].id != l.id || s.directed != *e,
            };
            if stale || now.saturating_sub(s.last_msg_ms) >= STREAM_SILENCE_MS {
                let conn = s.conn;
                self.drop_stream(r, conn, 50);
            }
        }
        let rep = &self.replicas[r];
        if rep.stream.is_none() && now >= rep.retry_at_ms {
            if let Some((l, e)) = target {
                if let Some(li) = self.members.iter().position(|m| m.id == l.id) {
                    self.open_stream(r, li, e);
                }
            }
        }
    }

    fn send_heartbeats(&mut self, r: usize) {
        let now = self.rms(r);
        let rep = &mut self.replicas[r];
        rep.hb_seq += 1;
        rep.hb_sent_at = now;
        let (seq, inc) = (rep.hb_seq, rep.inc);
        let hb = self.core(r).heartbeat(now, seq);
        for c in 0..self.ctls.len() {
            self.send(
                Proc::Replica(r),
                Proc::Controller(c),
                None,
                Msg::Heartbeat(Box::new(hb.clone()), inc),
            );
        }
    }

    fn on_directive(&mut self, r: usize, d: Directive) {
        if d.seq != self.replicas[r].hb_seq {
            return;
        }
        let sent_at = self.replicas[r].hb_sent_at;
        let now = self.rms(r);
        let before = (self.core(r).epoch(), self.core(r).role());
        let mut fx = self.core(r).on_directive(now, sent_at, &d);
        if let Some(Action::PersistEpoch { epoch, rev, .. }) = fx.last() {
            let rep = &mut self.replicas[r];
            rep.meta_epoch = rep.meta_epoch.max(*epoch);
            if let Some(rev) = rev {
                rep.meta_rev = *rev;
            }
            fx = self.core(r).on_directive_persisted(now, sent_at, &d);
        }
        if let Some(Action::Ignore(_)) = fx.first() {
            return;
        }
        let after = (self.core(r).epoch(), self.core(r).role());
        if before != after {
            self.note(format!(
                "r{} directive: epoch {} role {:?} -> epoch {} role {:?} (rev {}, term {})",
                r + 1,
                before.0,
                before.1,
                after.0,
                after.1,
                d.rev,
                d.controller_term
            ));
        }
        self.after_step(r, fx);
    }

    // ----- replication: follower side -----------------------------------------------------------

    fn send_repl(&mut self, from: usize, to: usize, conn: u64, m: Repl) {
        self.send(
            Proc::Replica(from),
            Proc::Replica(to),
            None,
            Msg::Repl {
                conn,
                m: Box::new(m),
            },
        );
    }

    fn open_stream(&mut self, r: usize, leader: usize, directed: Epoch) {
        self.next_conn += 1;
        let conn = self.next_conn;
        self.conns.insert(conn, (r, leader));
        let now = self.rms(r);
        let core = self.replicas[r].core.as_ref().expect("up");
        let hello = Repl::Hello {
            id: self.replicas[r].id.clone(),
            data_id: core.data_id(),
            epoch: core.epoch(),
        };
        self.replicas[r].stream = Some(FollowerStream {
            conn,
            leader,
            directed,
            sid: None,
            last_msg_ms: now,
        });
        self.send_repl(r, leader, conn, hello);
    }

    fn drop_stream(&mut self, r: usize, conn: u64, retry_ms: u64) {
        let rep = &mut self.replicas[r];
        if rep.stream.as_ref().is_some_and(|s| s.conn == conn) {
            rep.stream = None;
            rep.retry_at_ms = rep.clock.ms(self.now) + retry_ms;
        }
        self.net.broken.insert(conn);
        if let Some((_, l)) = self.conns.remove(&conn) {
            // The leader's side sees the close after a network delay.
            if !self.net.is_cut(Proc::Replica(r), Proc::Replica(l)) {
                let d = self.delay();
                self.after_us(d, Ev::Closed { r: l, conn });
            }
        }
    }

    fn stream_closed(&mut self, r: usize, conn: u64) {
        if let Some(s) = self.replicas[r].serving.remove(&conn) {
            self.core(r).leader_detach(&s.id, s.sid);
        }
        if self.replicas[r]
            .stream
            .as_ref()
            .is_some_and(|s| s.conn == conn)
        {
            let rep = &mut self.replicas[r];
            rep.stream = None;
            rep.retry_at_ms = rep.clock.ms(self.now) + 50;
        }
    }

    fn follower_next(&mut self, r: usize, conn: u64, sid: u64, next: FollowerNext) {
        let leader = self.replicas[r].stream.as_ref().expect("stream").leader;
        match next {
            FollowerNext::Query(e) => self.send_repl(r, leader, conn, Repl::EpochQuery(e)),
            FollowerNext::Fetch { from, prev_epoch } => {
                self.send_repl(r, leader, conn, Repl::Fetch { from, prev_epoch });
                if let Err(e) = self.core(r).follower_begin_streaming(sid) {
                    self.note(format!("r{} stream: {e}", r + 1));
                    self.drop_stream(r, conn, 50);
                }
            }
        }
    }

    /// Archives and cuts the log from `from` (the log thread's `Truncate`, after everything
    /// queued before it, an unfinished install included).
    fn truncate_disk(&mut self, r: usize, from: Lsn) {
        self.finish_install_now(r);
        let rep = &mut self.replicas[r];
        rep.disk_gen += 1;
        let keep = from.0.saturating_sub(rep.log_start) as usize;
        if keep < rep.log.len() {
            let cut: Vec<Record> = rep.log.drain(keep..).collect();
            rep.rollbacks.extend(cut);
        }
        rep.durable = rep.durable.min(keep);
    }

    fn on_follower_msg(&mut self, r: usize, conn: u64, m: Repl) {
        let Some(s) = &self.replicas[r].stream else {
            return;
        };
        if s.conn != conn {
            return;
        }
        let now = self.rms(r);
        let leader = s.leader;
        let sid = s.sid;
        if let Some(s) = self.replicas[r].stream.as_mut() {
            s.last_msg_ms = now;
        }
        let res: Result<(), String> = (|| {
            match m {
                Repl::Welcome { epoch } => {
                    let directed = self.replicas[r].stream.as_ref().expect("s").directed;
                    if epoch < directed {
                        return Err(format!("leader epoch {epoch} below {directed}"));
                    }
                    if epoch > self.core(r).epoch() {
                        let rep = &mut self.replicas[r];
                        rep.meta_epoch = rep.meta_epoch.max(epoch);
                        self.core(r).follower_epoch_persisted(epoch);
                    }
                    let lid = self.members[leader].id.clone();
                    let (sid, next) = self.core(r).follower_start(now, &lid, epoch)?;
                    self.replicas[r].stream.as_mut().expect("s").sid = Some(sid);
                    self.follower_next(r, conn, sid, next);
                }
                Repl::Refused(reason) => return Err(reason),
                Repl::EpochEnd { epoch, end, lossy } => {
                    let sid = sid.ok_or("no stream id")?;
                    let (next, fx) = self
                        .core(r)
                        .follower_on_epoch_end(now, sid, epoch, end, lossy)?;
                    self.run_effects(r, fx);
                    self.follower_next(r, conn, sid, next);
                }
                Repl::Append { h, records } => {
                    let sid = sid.ok_or("no stream id")?;
                    let fx = self.core(r).follower_on_append(now, sid, h, records)?;
                    self.after_step(r, fx);
                }
                Repl::Keepalive { epoch, commit, end } => {
                    let sid = sid.ok_or("no stream id")?;
                    let fx = self
                        .core(r)
                        .follower_on_keepalive(now, sid, epoch, commit, end)?;
                    self.after_step(r, fx);
                    if self.cfg.periodic_acks {
                        // The runtime's acker also acknowledges every 20 ms without a new
                        // flush (`repl/follower.rs`): a quiet follower is not "not acking".
                        let core = self.replicas[r].core.as_ref().expect("up");
                        if core.follower_stream_current(sid) {
                            let m = Repl::Ack {
                                epoch: core.epoch(),
                                flushed: core.flushed(),
                            };
                            self.send_repl(r, leader, conn, m);
                        }
                    }
                }
                Repl::Snapshot(snap) => {
                    let sid = sid.ok_or("no stream id")?;
                    self.install_snapshot(r, conn, leader, sid, *snap);
                }
                other => return Err(format!("unexpected message to a follower: {other:?}")),
            }
            Ok(())
        })();
        if let Err(e) = res {
            self.note(format!("r{} stream from r{} ends: {e}", r + 1, leader + 1));
            self.drop_stream(r, conn, 50);
        }
    }

    // ----- replication: leader side -------------------------------------------------------------

    fn on_leader_msg(&mut self, r: usize, from: usize, conn: u64, m: Repl) {
        let now = self.rms(r);
        match m {
            Repl::Hello { id, data_id, epoch } => {
                let (res, fx) = self.core(r).leader_accept(now, &id, data_id, epoch);
                let my_epoch = self.core(r).epoch();
                self.after_step(r, fx);
                match res {
                    Ok(sid) => {
                        self.replicas[r].serving.insert(
                            conn,
                            Serving {
                                follower: from,
                                id,
                                sid,
                                epoch: my_epoch,
                                next: None,
                                commit_sent: Lsn(0),
                                last_send_ms: now,
                            },
                        );
                        self.send_repl(r, from, conn, Repl::Welcome { epoch: my_epoch });
                    }
                    Err(reason) => self.send_repl(r, from, conn, Repl::Refused(reason)),
                }
            }
            Repl::EpochQuery(q) => {
                if !self.replicas[r].serving.contains_key(&conn) {
                    return;
                }
                let (epoch, end, lossy) = self.core(r).epoch_end(q);
                self.send_repl(r, from, conn, Repl::EpochEnd { epoch, end, lossy });
            }
            Repl::Fetch {
                from: f,
                prev_epoch,
            } => {
                let Some(s) = self.replicas[r].serving.get(&conn) else {
                    return;
                };
                let (id, sid) = (s.id.clone(), s.sid);
                match self.core(r).leader_fetch(&id, sid, f, prev_epoch) {
                    Ok(FetchStart::Log(l)) => {
                        self.replicas[r].serving.get_mut(&conn).expect("s").next = Some(l);
                        self.push_streams(r);
                    }
                    Ok(FetchStart::Snapshot) => {
                        self.send_snapshot(r, conn);
                    }
                    Err(reason) => {
                        self.replicas[r].serving.remove(&conn);
                        self.send_repl(r, from, conn, Repl::Refused(reason));
                    }
                }
            }
            Repl::Ack { epoch, flushed } => {
                let Some(s) = self.replicas[r].serving.get(&conn) else {
                    return;
                };
                let (id, sid) = (s.id.clone(), s.sid);
                let fx = self.core(r).leader_on_ack(now, &id, sid, epoch, flushed);
                self.after_step(r, fx);
            }
            other => {
                self.violation(format!("unexpected message to a leader: {other:?}"));
            }
        }
    }

    /// Sends every streaming follower what it lacks, or a keepalive.
    fn push_streams(&mut self, r: usize) {
        if self.replicas[r].serving.is_empty() {
            return;
        }
        let now = self.rms(r);
        let conns: Vec<u64> = self.replicas[r].serving.keys().copied().collect();
        for conn in conns {
            let s = &self.replicas[r].serving[&conn];
            let (id, sid, epoch, next, follower) =
                (s.id.clone(), s.sid, s.epoch, s.next, s.follower);
            let core = self.replicas[r].core.as_ref().expect("up");
            if !core.leader_stream_alive(&id, sid, epoch) {
                if next.is_some() || core.epoch() != epoch {
                    self.replicas[r].serving.remove(&conn);
                    self.send_repl(
                        r,
                        follower,
                        conn,
                        Repl::Refused("stream no longer current".into()),
                    );
                }
                continue;
            }
            let Some(next) = next else { continue };
            let (commit, end) = (core.commit(), core.log_end().1);
            if next < core.log_start() {
                // The follower fell behind what the log still holds while streaming.
                self.send_snapshot(r, conn);
                continue;
            }
            if next <= end {
                let last = end.0.min(next.0 + BATCH - 1);
                let recs: Vec<Record> = (next.0..=last)
                    .filter_map(|l| self.record_at(r, l))
                    .collect();
                if recs.len() as u64 != last + 1 - next.0 {
                    self.violation(format!(
                        "r{} streams LSNs {next}..={last} that its log does not hold",
                        r + 1
                    ));
                    return;
                }
                let prev_lsn = Lsn(next.0 - 1);
                let prev_epoch = core.epoch_of(prev_lsn).unwrap_or(Epoch(0));
                let h = AppendHeader {
                    leader_epoch: epoch,
                    prev: (prev_epoch, prev_lsn),
                    commit,
                    end,
                };
                let s = self.replicas[r].serving.get_mut(&conn).expect("s");
                s.next = Some(Lsn(last + 1));
                s.commit_sent = commit;
                s.last_send_ms = now;
                self.send_repl(r, follower, conn, Repl::Append { h, records: recs });
            } else {
                let s = self.replicas[r].serving.get_mut(&conn).expect("s");
                if commit > s.commit_sent || now.saturating_sub(s.last_send_ms) >= HEARTBEAT_MS / 2
                {
                    s.commit_sent = commit;
                    s.last_send_ms = now;
                    self.send_repl(r, follower, conn, Repl::Keepalive { epoch, commit, end });
                }
            }
        }
    }

    // ----- message dispatch ----------------------------------------------------------------------

    fn deliver(&mut self, to: Proc, from: Proc, to_inc: Option<u64>, msg: Msg) {
        match to {
            Proc::Replica(r) => {
                if !self.replicas[r].up || to_inc.is_some_and(|i| i != self.replicas[r].inc) {
                    return;
                }
                match msg {
                    Msg::Directive(d) => self.on_directive(r, *d),
                    Msg::Repl { conn, m } => {
                        if self.net.broken.contains(&conn) {
                            return;
                        }
                        let Proc::Replica(f) = from else { return };
                        match self.conns.get(&conn) {
                            Some((fo, _)) if *fo == r => self.on_follower_msg(r, conn, *m),
                            Some(_) => self.on_leader_msg(r, f, conn, *m),
                            None => {}
                        }
                    }
                    Msg::Request { op, req } => self.on_request(r, op, req),
                    _ => {}
                }
            }
            Proc::Controller(c) => {
                if !self.ctls[c].up {
                    return;
                }
                if let Msg::Heartbeat(hb, inc) = msg {
                    if matches!(from, Proc::Replica(_) | Proc::Dup) {
                        let n = self.cnow(c);
                        let d = self.ctls[c].core.on_heartbeat(n, *hb);
                        self.send(
                            Proc::Controller(c),
                            from,
                            Some(inc),
                            Msg::Directive(Box::new(d)),
                        );
                    }
                }
            }
            Proc::Client(_) => {
                if let Msg::Reply { op, res } = msg {
                    self.on_reply(op, res);
                }
            }
            Proc::Dup => {
                if let Msg::Directive(d) = msg {
                    self.dup_directive(to_inc, *d);
                }
            }
            Proc::Etcd => {}
        }
    }

    // ----- client requests at a replica ---------------------------------------------------------

    fn on_request(&mut self, r: usize, op: usize, req: Req) {
        let now = self.rms(r);
        match req {
            Req::Read(key) => {
                let res = match self.core(r).read(now, key.as_bytes(), Consistency::Leader) {
                    Ok(ok) => Res::Read(
                        ok.entry
                            .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.version)),
                    ),
                    Err(e) => Res::NotApplied(format!("{e:?}")),
                };
                self.reply(r, op, res);
            }
            Req::ReadAny(key) => {
                let res = match self.core(r).read(now, key.as_bytes(), Consistency::Any) {
                    Ok(ok) => Res::ReadAny(
                        ok.entry
                            .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.version)),
                    ),
                    Err(e) => Res::NotApplied(format!("{e:?}")),
                };
                self.reply(r, op, res);
            }
            Req::Put { .. } | Req::Delete { .. } => {
                let (key, value, expect) = match req {
                    Req::Put { key, value, expect } => (key, Some(Bytes::from(value)), expect),
                    Req::Delete { key, expect } => (key, None, expect),
                    _ => unreachable!(),
                };
                let kb = Bytes::from(key.clone());
                let w = WriteReq {
                    key: kb.clone(),
                    value,
                    expect,
                };
                match self.core(r).propose(now, w) {
                    Ok(fx) => {
                        let Some(Action::Append(rec)) = fx.into_iter().next() else {
                            unreachable!("an accepted write is one append")
                        };
                        let version = Version {
                            epoch: rec.epoch,
                            lsn: rec.lsn,
                        };
                        self.replicas[r]
                            .waiters
                            .insert(rec.lsn, (op, version, now + WRITE_TIMEOUT_MS));
                        self.append_local(r, rec);
                        self.after_step(r, Vec::new());
                    }
                    Err(WriteReject::PreconditionFailed { .. }) | Err(WriteReject::NotFound) => {
                        match self.core(r).pending_lsn_of(&kb) {
                            Some(l) => {
                                self.replicas[r]
                                    .barriers
                                    .push((l, op, now + WRITE_TIMEOUT_MS))
                            }
                            None => self.reply(r, op, Res::Precondition),
                        }
                    }
                    Err(e) => self.reply(r, op, Res::NotApplied(format!("{e:?}"))),
                }
            }
        }
    }

    // ----- clients ---------------------------------------------------------------------------------

    /// Where a client sends: the replica that looks like the newest leader (what the proxy
    /// learns from the controllers), else any.
    fn pick_target(&mut self) -> usize {
        let mut best: Option<(Epoch, usize)> = None;
        for (i, rep) in self.replicas.iter().enumerate() {
            if let Some(c) = &rep.core {
                if c.role() == ReportedRole::Leader && best.is_none_or(|(e, _)| c.epoch() > e) {
                    best = Some((c.epoch(), i));
                }
            }
        }
        match best {
            Some((_, i)) => i,
            None => self.rng.random_range(0..self.replicas.len()),
        }
    }

    fn client_next(&mut self, c: usize) {
        if !self.clients_on || self.clients[c].busy.is_some() {
            return;
        }
        let key = key_of(self.rng.random_range(0..self.cfg.keys));
        self.clients[c].n += 1;
        let value = format!("c{c}-{}", self.clients[c].n);
        let p: f64 = self.rng.random();
        // Deletes and `any` reads take shares of the reads and blind writes (drawn only with
        // them on, so that classic runs replay their schedules).
        let q: f64 = if self.cfg.deletes_and_any {
            self.rng.random()
        } else {
            1.0
        };
        let (kind, req) = if p < 0.4 && q < 0.2 {
            // Not part of the linearizability history: checked on its own (`on_reply`).
            (OpKind::Read, Req::ReadAny(key.clone()))
        } else if p < 0.4 {
            (OpKind::Read, Req::Read(key.clone()))
        } else if p >= 0.7 && q < 0.3 {
            // Conditional on the version last seen (a delete "if absent" is not a thing: the
            // replica answers 404 where the condition would hold).
            let expect = match self.clients[c].last_read.get(&key).cloned().flatten() {
                Some((v, ver)) if q < 0.1 => {
                    Some((checker::Expect::Value(v), VExpect::Version(ver)))
                }
                _ => None,
            };
            (
                OpKind::Delete {
                    expect: expect.as_ref().map(|(h, _)| h.clone()),
                },
                Req::Delete {
                    key: key.clone(),
                    expect: expect.map(|(_, v)| v),
                },
            )
        } else if p < 0.7 {
            let last = self.clients[c].last_read.get(&key).cloned().flatten();
            let (hx, vx) = match last {
                Some((v, ver)) => (checker::Expect::Value(v), VExpect::Version(ver)),
                None => (checker::Expect::Absent, VExpect::Absent),
            };
            (
                OpKind::Cas {
                    expect: hx,
                    value: value.clone(),
                },
                Req::Put {
                    key: key.clone(),
                    value,
                    expect: Some(vx),
                },
            )
        } else {
            (
                OpKind::Write {
                    value: value.clone(),
                },
                Req::Put {
                    key: key.clone(),
                    value,
                    expect: None,
                },
            )
        };
        let any = matches!(req, Req::ReadAny(_));
        let op = self.ops.len();
        self.ops.push(OpRec {
            h: HOp {
                id: op as u64,
                key,
                invoke: self.now,
                complete: None,
                kind,
                outcome: Outcome::Unknown,
            },
            client: c,
            done: false,
            any,
        });
        self.clients[c].busy = Some(op);
        let target = if any {
            self.rng.random_range(0..self.replicas.len())
        } else {
            self.pick_target()
        };
        self.send(
            Proc::Client(c),
            Proc::Replica(target),
            None,
            Msg::Request { op, req },
        );
        self.after_us(CLIENT_TIMEOUT_US, Ev::ClientTimeout { op });
    }

    fn finish_op(&mut self, op: usize, outcome: Outcome, backoff: bool) {
        let rec = &mut self.ops[op];
        if rec.done {
            return;
        }
        rec.done = true;
        rec.h.complete = Some(self.now);
        rec.h.outcome = outcome;
        let c = rec.client;
        self.clients[c].busy = None;
        let think = if self.cfg.idle {
            self.rng.random_range(500_000..2_000_000)
        } else if backoff {
            self.rng.random_range(20_000..60_000)
        } else {
            self.rng.random_range(500..5_000)
        };
        self.after_us(think, Ev::ClientNext(c));
    }

    fn client_timeout(&mut self, op: usize) {
        if self.ops[op].done {
            return;
        }
        let outcome = match self.ops[op].h.kind {
            OpKind::Read => Outcome::Failed,
            _ => Outcome::Unknown,
        };
        self.finish_op(op, outcome, true);
    }

    fn on_reply(&mut self, op: usize, res: Res) {
        if self.ops[op].done {
            return;
        }
        let key = self.ops[op].h.key.clone();
        let c = self.ops[op].client;
        let is_read = matches!(self.ops[op].h.kind, OpKind::Read);
        match res {
            Res::Read(v) => {
                self.clients[c].last_read.insert(key, v.clone());
                self.finish_op(op, Outcome::Ok(OpResult::Read(v.map(|(s, _)| s))), false);
            }
            Res::ReadAny(v) => {
                // Not linearizable by design; but what it returns was written at that version,
                // and the key's contents there are what the leader wrote.
                if let Some((val, ver)) = &v {
                    let k = (ver.epoch.0, ver.lsn.0);
                    let want = format!("put {key}={val}");
                    if self.written.get(&k) != Some(&want) {
                        let got = self.written.get(&k).cloned();
                        self.violation(format!(
                            "an `any` read of {key} returned {val:?} at ({}, {}), but that record is {got:?}",
                            k.0, k.1
                        ));
                    }
                }
                self.finish_op(op, Outcome::Ok(OpResult::Read(v.map(|(s, _)| s))), false);
            }
            Res::Written(ver) if matches!(self.ops[op].h.kind, OpKind::Delete { .. }) => {
                let k = (ver.epoch.0, ver.lsn.0);
                if self.acked.contains_key(&k)
                    || self.acked_deletes.get(&k).is_some_and(|k2| *k2 != key)
                {
                    self.violation(format!(
                        "two acknowledged writes at ({}, {}), one a delete of {key}",
                        k.0, k.1
                    ));
                }
                self.acked_deletes.insert(k, key.clone());
                self.clients[c].last_read.insert(key, None);
                self.finish_op(op, Outcome::Ok(OpResult::Applied(true)), false);
            }
            Res::Written(ver) => {
                let value = match &self.ops[op].h.kind {
                    OpKind::Write { value } | OpKind::Cas { value, .. } => value.clone(),
                    _ => String::new(),
                };
                let k = (ver.epoch.0, ver.lsn.0);
                if self.acked_deletes.contains_key(&k) {
                    self.violation(format!(
                        "two acknowledged writes at ({}, {}), one a delete",
                        k.0, k.1
                    ));
                }
                if let Some((k2, v2)) = self.acked.get(&k) {
                    if (k2, v2) != (&key, &value) {
                        let msg = format!(
                            "two acknowledged writes at ({}, {}): {k2}={v2} and {key}={value}",
                            k.0, k.1
                        );
                        self.violation(msg);
                    }
                }
                self.acked.insert(k, (key.clone(), value.clone()));
                self.clients[c].last_read.insert(key, Some((value, ver)));
                self.finish_op(op, Outcome::Ok(OpResult::Applied(true)), false);
            }
            Res::Precondition => {
                self.clients[c].last_read.remove(&key);
                self.finish_op(op, Outcome::Ok(OpResult::Applied(false)), false)
            }
            Res::NotApplied(why) => {
                if self.last_refusal != why {
                    self.note(format!("op {op} not applied: {why}"));
                    self.last_refusal = why;
                }
                self.finish_op(op, Outcome::Failed, true)
            }
            Res::Unknown(why) => {
                self.note(format!("op {op} outcome unknown: {why}"));
                let o = if is_read {
                    Outcome::Failed
                } else {
                    Outcome::Unknown
                };
                self.finish_op(op, o, true)
            }
        }
    }

    // ----- controllers and the etcd stand-in ------------------------------------------------------

    fn etcd_reachable(&self, c: usize) -> bool {
        self.etcd.up
            && !self.net.is_cut(Proc::Controller(c), Proc::Etcd)
            && !self.net.is_cut(Proc::Etcd, Proc::Controller(c))
    }

    /// Whether an etcd request times out (and so may or may not have happened).
    fn etcd_timeout(&mut self) -> bool {
        self.etcd.timeout_p > 0.0 && self.rng.random_bool(self.etcd.timeout_p)
    }

    fn ctl_loop(&mut self, c: usize) {
        self.etcd.expire(self.now);
        let n = self.cnow(c);
        let ttl_us = ELECTION_TTL_MS * 1000;
        let trust = (ELECTION_TTL_MS as f64 * (1.0 - DRIFT)) as u64;
        let reach = self.etcd_reachable(c);
        // The session: an etcd lease kept alive, trusted until keepalive-sent + TTL·(1−ρ).
        if reach && !self.etcd_timeout() {
            match self.ctls[c].lease {
                None => {
                    let id = self.etcd.next_lease;
                    self.etcd.next_lease += 1;
                    self.etcd.leases.insert(id, self.now + ttl_us);
                    let ctl = &mut self.ctls[c];
                    ctl.lease = Some(id);
                    ctl.valid_until = n.ms + trust;
                    ctl.next_keepalive = n.ms + ELECTION_TTL_MS / 4;
                }
                Some(id) if n.ms >= self.ctls[c].next_keepalive => {
                    if let Some(exp) = self.etcd.leases.get_mut(&id) {
                        *exp = self.now + ttl_us;
                        let ctl = &mut self.ctls[c];
                        ctl.valid_until = n.ms + trust;
                        ctl.next_keepalive = n.ms + ELECTION_TTL_MS / 4;
                    } else if n.ms >= self.ctls[c].valid_until {
                        self.ctls[c].lease = None;
                    }
                }
                _ => {}
            }
        } else if self.ctls[c].lease.is_some() && n.ms >= self.ctls[c].valid_until {
            self.ctls[c].lease = None;
        }
        let ctl = &mut self.ctls[c];
        ctl.core.set_session(ctl.lease, ctl.valid_until);
        let lease_ok = ctl.lease.is_some() && n.ms < ctl.valid_until;
        let my_addr = format!("c{}:8000", c + 1);
        if !lease_ok {
            if self.ctls[c].core.is_active() {
                self.note(format!("c{} standby (no trusted etcd lease)", c + 1));
            }
            self.ctls[c].core.on_election(n, None, None);
        } else if reach && !self.etcd_timeout() {
            let lease = self.ctls[c].lease.expect("lease");
            if self.etcd.election.is_none() {
                self.etcd.rev += 1;
                self.etcd.election = Some((c, lease, self.etcd.rev));
            }
            let (owner, olease, cr) = self.etcd.election.expect("set");
            let term = (owner == c && olease == lease).then_some(cr);
            if term.is_some() && !self.ctls[c].core.is_active() {
                self.note(format!("c{} active, term {cr}", c + 1));
                self.imp.activations += 1;
            }
            let active = format!("c{}:8000", owner + 1);
            self.ctls[c].core.on_election(
                n,
                term,
                Some(if term.is_some() { my_addr } else { active }),
            );
            self.etcd
                .hears
                .insert(c, (self.ctls[c].core.hears(n), lease));
            self.ctls[c].core.standby_hears = self
                .etcd
                .hears
                .iter()
                .filter(|(k, _)| **k != c)
                .map(|(_, (h, _))| *h)
                .max()
                .unwrap_or(0);
        } else if self.ctls[c].core.is_active() && n.ms >= self.ctls[c].valid_until {
            self.ctls[c].core.on_election(n, None, None);
        }
        if self.etcd_reachable(c) && !self.etcd_timeout() {
            let observed = match &self.etcd.state {
                None => Observed::Absent,
                Some((s, rev)) => Observed::Present {
                    state: s.clone(),
                    rev: *rev,
                },
            };
            let j = self.etcd.journal.clone();
            self.ctls[c].core.on_observed(n, observed, j);
        }
        let n = self.cnow(c);
        let core = &mut self.ctls[c].core;
        let w = if core.is_active() && core.observed == Observed::Absent {
            core.init(n).ok()
        } else {
            core.tick(n)
        };
        if let Some(w) = w {
            self.execute(c, w);
        }
    }

    fn execute(&mut self, c: usize, w: Write) {
        let prior_prev = self
            .etcd
            .state
            .as_ref()
            .and_then(|(s, _)| s.prev_leader.clone());
        let reach = self.etcd_reachable(c);
        let timeout = self.etcd_timeout();
        let outcome =
            if !reach {
                WriteOutcome::Unknown
            } else {
                let term = self.ctls[c].core.term();
                let election_ok = matches!(
                    (self.etcd.election, term),
                    (Some((_, _, cr)), Some(t)) if cr == t
                );
                let state_ok = match (&self.etcd.state, w.expect_rev) {
                    (None, 0) => true,
                    (Some((_, rev)), e) => *rev == e && e != 0,
                    _ => false,
                };
                // Nobody appended to the journal since the writer read it.
                let journal_ok = !self
                    .etcd
                    .journal
                    .iter()
                    .any(|e| e.seq == w.journal_after + 1);
                let state_ok = state_ok && journal_ok;
                let applied = !timeout || self.rng.random_bool(0.5);
                if election_ok && state_ok && applied {
                    if let Some(s) = &w.state {
                        let prior = self.etcd.state.as_ref().map(|(p, _)| p.clone());
                        self.note_promotion(prior.as_ref(), s);
                        self.check_impostors(prior.as_ref(), s, &w.journal);
                        if prior.is_none() {
                            self.note_init();
                        }
                        if self.cfg.idle && self.now > 5_000_000 {
                            self.idle_etcd_writes += 1;
                        }
                    }
                    let rev = if let Some(s) = &w.state {
                        self.etcd.rev += 1;
                        self.etcd.state = Some((s.clone(), self.etcd.rev));
                        self.etcd.rev
                    } else {
                        w.expect_rev
                    };
                    baton_controller::journal::apply(&mut self.etcd.journal, &w.journal);
                    self.note_impostor_journal(&w.journal);
                    if let Some(s) = &w.state {
                        self.note(format!(
                        "c{} wrote state rev {rev}: epoch {} leader {:?} phase {:?} sync {:?} ({})",
                        c + 1,
                        s.epoch,
                        s.leader.as_ref().map(|l| l.id.0.clone()),
                        s.phase,
                        s.sync_set.iter().map(|m| m.id.0.clone()).collect::<Vec<_>>(),
                        w.why
                    ));
                    }
                    if timeout {
                        WriteOutcome::Unknown
                    } else {
                        WriteOutcome::Committed { rev }
                    }
                } else if timeout {
                    WriteOutcome::Unknown
                } else {
                    WriteOutcome::Rejected
                }
            };
        let promoting = w.state.as_ref().is_some_and(|s| {
            s.phase == baton_controller::state::Phase::Promoting || s.prev_leader != prior_prev
        });
        if promoting && self.crash_mid_promotion {
            // The active controller dies right after this step of a promotion reached etcd
            // (or not): whoever is active next must carry it on at the same epoch.
            self.crash_mid_promotion = false;
            *self
                .report
                .fault_kinds
                .entry("ctl-crashed-mid-promotion".into())
                .or_insert(0) += 1;
            self.note(format!("c{} crashes mid-promotion ({})", c + 1, w.why));
            self.crash_controller(c);
            let hold = self.rng.random_range(300_000..3_000_000);
            self.after_us(hold, Ev::Heal(Heal::Restart(Proc::Controller(c))));
            return;
        }
        let n = self.cnow(c);
        self.ctls[c].core.on_write(n, &w, outcome);
    }

    fn crash_controller(&mut self, c: usize) {
        self.note(format!("c{} crashes", c + 1));
        self.forget_dup();
        let cfg = self.ctls[c].core.cfg.clone();
        let ctl = &mut self.ctls[c];
        ctl.up = false;
        ctl.inc += 1;
        ctl.core = ClusterCore::new(cfg);
        ctl.lease = None;
        ctl.valid_until = 0;
        ctl.paused_until = 0;
    }

    fn start_controller(&mut self, c: usize) {
        self.note(format!("c{} starts", c + 1));
        let ctl = &mut self.ctls[c];
        ctl.up = true;
        let inc = ctl.inc;
        self.after_us(1000, Ev::CtlTimer { c, inc });
    }

    fn active_controller(&self) -> Option<usize> {
        let now = self.now;
        self.ctls.iter().position(|c| {
            c.up && c.core.active_at(Now {
                ms: c.clock.ms(now),
                unix_ms: 0,
            })
        })
    }

    /// Whether some replica can serve leader reads now.
    fn someone_serves(&self) -> bool {
        self.replicas.iter().any(|r| {
            r.core.as_ref().is_some_and(|c| {
                c.read(r.clock.ms(self.now), b"", Consistency::Leader)
                    .is_ok()
            })
        })
    }

    fn leader_replica(&self) -> Option<usize> {
        let mut best: Option<(Epoch, usize)> = None;
        for (i, rep) in self.replicas.iter().enumerate() {
            if let Some(c) = &rep.core {
                if c.role() == ReportedRole::Leader && best.is_none_or(|(e, _)| c.epoch() > e) {
                    best = Some((c.epoch(), i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    // ----- the nemesis -------------------------------------------------------------------------

    fn nemesis(&mut self) {
        let f = self.cfg.faults.clone();
        let mut kinds: Vec<&str> = Vec::new();
        if f.crash {
            kinds.extend(["crash", "crash"]);
        }
        if f.pause {
            kinds.push("pause");
        }
        if f.partition {
            kinds.extend([
                "isolate",
                "ctl-only",
                "followers-only",
                "one-way",
                "ctl-cut",
            ]);
        }
        if f.loss {
            kinds.push("loss");
        }
        if f.controller {
            kinds.extend(["ctl-crash", "ctl-etcd"]);
        }
        if f.controller && f.pause {
            kinds.push("ctl-pause");
        }
        if f.controller && f.crash {
            kinds.push("ctl-crash-mid-promotion");
        }
        if f.etcd {
            kinds.extend(["etcd-down", "etcd-timeouts"]);
        }
        if f.wipe {
            kinds.push("wipe");
        }
        if f.operator {
            kinds.extend(["switchover", "failover"]);
        }
        if f.restore {
            kinds.push("etcd-restore");
        }
        if f.operator && f.partition {
            kinds.push("cut-and-failover");
        }
        if f.forced {
            kinds.extend(["forced-failover", "cut-and-forced"]);
        }
        if f.snapshot {
            kinds.extend(["crash-after-install", "disk-stall", "lag"]);
        }
        if f.foreign {
            kinds.push("foreign");
        }
        if f.dup_id {
            kinds.push("dup-id");
        }
        if kinds.is_empty() {
            return;
        }
        let kind = kinds[self.rng.random_range(0..kinds.len())];
        *self.report.fault_kinds.entry(kind.to_string()).or_insert(0) += 1;
        let nr = self.replicas.len();
        let leader = self.leader_replica();
        let victim = match leader {
            Some(l) if self.rng.random_bool(0.6) => l,
            _ => self.rng.random_range(0..nr),
        };
        let hold = self.rng.random_range(300_000..3_500_000);
        let all_but = |p: Proc, w: &World| -> Vec<Proc> {
            let mut v: Vec<Proc> = (0..w.replicas.len()).map(Proc::Replica).collect();
            v.extend((0..w.ctls.len()).map(Proc::Controller));
            v.extend((0..w.clients.len()).map(Proc::Client));
            v.retain(|x| *x != p);
            v
        };
        self.report.faults += 1;
        match kind {
            "crash" => {
                if !self.replicas[victim].up {
                    return;
                }
                self.crash_replica(victim);
                self.after_us(hold, Ev::Heal(Heal::Restart(Proc::Replica(victim))));
            }
            "wipe" => {
                self.wipe_replica(victim);
                self.after_us(hold, Ev::Heal(Heal::Restart(Proc::Replica(victim))));
            }
            "pause" => {
                if !self.replicas[victim].up {
                    return;
                }
                let until = self.now + hold;
                self.note(format!("r{} paused for {} ms", victim + 1, hold / 1000));
                self.replicas[victim].paused_until = until;
                self.q
                    .push(until, Ev::Heal(Heal::Resume(Proc::Replica(victim))));
            }
            "isolate" | "ctl-only" | "followers-only" | "ctl-cut" => {
                let p = Proc::Replica(victim);
                let others: Vec<Proc> = match kind {
                    "isolate" => all_but(p, self),
                    "ctl-only" => (0..self.ctls.len()).map(Proc::Controller).collect(),
                    "followers-only" => (0..nr).map(Proc::Replica).collect(),
                    _ => {
                        // One controller cut from every replica.
                        let c = self.rng.random_range(0..self.ctls.len());
                        let pc = Proc::Controller(c);
                        let pairs: Vec<(Proc, Proc)> = (0..nr)
                            .flat_map(|r| [(pc, Proc::Replica(r)), (Proc::Replica(r), pc)])
                            .collect();
                        self.note(format!("partition: c{} cut from the replicas", c + 1));
                        self.net.cut.extend(pairs.iter().copied());
                        self.after_us(hold, Ev::Heal(Heal::Uncut(pairs)));
                        return;
                    }
                };
                let mut pairs = Vec::new();
                for o in others.into_iter().filter(|o| *o != p) {
                    pairs.push((p, o));
                    pairs.push((o, p));
                }
                self.note(format!(
                    "partition: r{} {kind} for {} ms",
                    victim + 1,
                    hold / 1000
                ));
                self.net.cut.extend(pairs.iter().copied());
                self.after_us(hold, Ev::Heal(Heal::Uncut(pairs)));
            }
            "one-way" => {
                let mut procs: Vec<Proc> = (0..nr).map(Proc::Replica).collect();
                procs.extend((0..self.ctls.len()).map(Proc::Controller));
                let a = procs[self.rng.random_range(0..procs.len())];
                let b = procs[self.rng.random_range(0..procs.len())];
                if a == b {
                    return;
                }
                self.note(format!(
                    "one-way drop {a:?} -> {b:?} for {} ms",
                    hold / 1000
                ));
                self.net.cut.insert((a, b));
                self.after_us(hold, Ev::Heal(Heal::Uncut(vec![(a, b)])));
            }
            "loss" => {
                self.net.loss = self.rng.random_range(0.02..0.3);
                self.net.dup = self.rng.random_range(0.0..0.3);
                self.net.extra_delay_us = self.rng.random_range(0..20_000);
                self.note(format!("message loss {:.2}", self.net.loss));
                self.after_us(hold, Ev::Heal(Heal::Loss));
            }
            "ctl-crash" => {
                let c = self
                    .active_controller()
                    .filter(|_| self.rng.random_bool(0.7))
                    .unwrap_or_else(|| self.rng.random_range(0..self.ctls.len()));
                if !self.ctls[c].up {
                    return;
                }
                self.crash_controller(c);
                self.after_us(hold, Ev::Heal(Heal::Restart(Proc::Controller(c))));
            }
            "ctl-crash-mid-promotion" => {
                // Kill the leader, and the active controller at the next step of the
                // promotion that follows (TESTING row 17).
                let Some(l) = leader else { return };
                self.crash_mid_promotion = true;
                self.crash_replica(l);
                self.after_us(hold, Ev::Heal(Heal::Restart(Proc::Replica(l))));
            }
            "etcd-restore" => {
                // etcd comes back from an old backup (or empty): its revisions go back, and
                // the election key is the one of the backup (its lease may be gone).
                let pick = self
                    .etcd_backups
                    .iter()
                    .filter(|b| b.at + 1_000_000 <= self.now)
                    .count();
                if self.cfg.faults.restore_ops && pick > 0 && self.rng.random_bool(0.5) {
                    // The newest backup: most often the same epoch with an older rev (a sync
                    // set since replaced), the case the refusal must keep refusing.
                    let b = self.etcd_backups[pick - 1].clone();
                    self.note(format!(
                        "etcd restored from the newest backup, of t={} ms (rev {}, epoch {:?})",
                        b.at / 1000,
                        b.rev,
                        b.state.as_ref().map(|(s, _)| s.epoch.0)
                    ));
                    self.etcd.state = b.state;
                    self.etcd.journal = b.journal;
                    self.etcd.rev = b.rev;
                    self.etcd.election = b.election;
                    self.etcd.expire(self.now);
                } else if self.rng.random_bool(0.3) || pick == 0 {
                    self.note("etcd emptied".into());
                    self.etcd.state = None;
                    self.etcd.journal.clear();
                    self.etcd.election = None;
                } else {
                    let b = self.etcd_backups[self.rng.random_range(0..pick)].clone();
                    self.note(format!(
                        "etcd restored from the backup of t={} ms (rev {}, epoch {:?})",
                        b.at / 1000,
                        b.rev,
                        b.state.as_ref().map(|(s, _)| s.epoch.0)
                    ));
                    self.etcd.state = b.state;
                    self.etcd.journal = b.journal;
                    self.etcd.rev = b.rev;
                    self.etcd.election = b.election;
                    self.etcd.expire(self.now);
                }
                self.etcd_restored = true;
                if self.cfg.faults.restore_ops {
                    self.schedule_restore_ops();
                }
            }
            "ctl-pause" => {
                // SIGSTOP the active controller (often longer than its etcd lease): on resume
                // it must not act on the trust it had (a zombie controller).
                let c = self
                    .active_controller()
                    .unwrap_or_else(|| self.rng.random_range(0..self.ctls.len()));
                if !self.ctls[c].up {
                    return;
                }
                self.note(format!("c{} paused for {} ms", c + 1, hold / 1000));
                self.ctls[c].paused_until = self.now + hold;
            }
            "ctl-etcd" => {
                let c = self.rng.random_range(0..self.ctls.len());
                let pairs = vec![
                    (Proc::Controller(c), Proc::Etcd),
                    (Proc::Etcd, Proc::Controller(c)),
                ];
                self.note(format!("c{} cut from etcd for {} ms", c + 1, hold / 1000));
                self.net.cut.extend(pairs.iter().copied());
                self.after_us(hold, Ev::Heal(Heal::Uncut(pairs)));
            }
            "etcd-down" => {
                self.note(format!("etcd down for {} ms", hold / 1000));
                self.etcd.up = false;
                self.after_us(hold, Ev::Heal(Heal::EtcdUp));
            }
            "etcd-timeouts" => {
                self.etcd.timeout_p = self.rng.random_range(0.1..0.5);
                self.note(format!(
                    "etcd request timeouts p={:.2}",
                    self.etcd.timeout_p
                ));
                self.after_us(hold, Ev::Heal(Heal::EtcdTimeouts));
            }
            "switchover" => {
                if let Some(c) = self.active_controller() {
                    let n = self.cnow(c);
                    let to = if self.rng.random_bool(0.5) {
                        Some(self.members[self.rng.random_range(0..nr)].id.clone())
                    } else {
                        None
                    };
                    let op = format!("sw-{}", self.report.faults);
                    match self.ctls[c].core.switchover(n, to, 5000, op) {
                        Ok(w) => {
                            self.note(format!("switchover asked of c{}", c + 1));
                            self.execute(c, w)
                        }
                        Err(e) => self.note(format!("switchover refused: {}", e.message)),
                    }
                }
            }
            "cut-and-failover" => {
                // The leader loses the controllers but keeps its followers and clients, and an
                // operator moves leadership at once: the old leader still holds a lease, so the
                // new one must wait it out before serving (G2).
                let Some(l) = leader else { return };
                let p = Proc::Replica(l);
                let mut pairs = Vec::new();
                for c in 0..self.ctls.len() {
                    pairs.push((p, Proc::Controller(c)));
                    pairs.push((Proc::Controller(c), p));
                }
                self.note(format!(
                    "partition: r{} from the controllers, then a manual failover",
                    l + 1
                ));
                self.net.cut.extend(pairs.iter().copied());
                self.after_us(hold, Ev::Heal(Heal::Uncut(pairs)));
                let d = self.rng.random_range(0..200_000);
                self.after_us(d, Ev::ManualFailover);
            }
            // A manual failover while the leader may still be healthy: the new leader must wait
            // out the old one's lease (`start_after_ms`).
            "failover" => self.manual_failover(),
            other => {
                self.nemesis_new(other, hold);
            }
        }
    }

    fn manual_failover(&mut self) {
        let Some(c) = self.active_controller() else {
            return;
        };
        let n = self.cnow(c);
        // Usually a sync member (accepted), sometimes anyone (may be refused: may_lose_writes).
        let sync: Vec<NodeId> = match &self.etcd.state {
            Some((s, _)) => s.sync_set.iter().map(|m| m.id.clone()).collect(),
            None => Vec::new(),
        };
        let to = if !sync.is_empty() && self.rng.random_bool(0.8) {
            sync[self.rng.random_range(0..sync.len())].clone()
        } else {
            self.members[self.rng.random_range(0..self.members.len())]
                .id
                .clone()
        };
        let op = format!("fo-{}", self.report.steps);
        match self.ctls[c].core.failover(n, to.clone(), false, false, op) {
            Ok(w) => {
                self.note(format!("manual failover to {to} asked of c{}", c + 1));
                self.execute(c, w)
            }
            Err(e) => self.note(format!("failover to {to} refused: {}", e.message)),
        }
    }

    /// A promotion may wait for ever, by design (DESIGN §5 step 3): no recorded sync member
    /// nor the replaced leader reports its data any more (a leader that ran degraded, with an
    /// empty sync set, lost its disk). Only an operator's `failover --to … force` moves on,
    /// accepting the loss; the simulation stops there instead and keeps every check that
    /// still applies.
    fn blocked_by_design(&self) -> bool {
        if self.etcd_restored && !self.someone_serves() {
            // An etcd that went back in time is refused (epochs never go back) until an
            // operator restores it or runs recovery.
            return true;
        }
        let Some((s, _)) = &self.etcd.state else {
            return false;
        };
        if s.phase != baton_controller::state::Phase::Promoting {
            return false;
        }
        let mut holders: Vec<(NodeId, DataId)> = s
            .sync_set
            .iter()
            .map(|m| (m.id.clone(), m.data_id))
            .collect();
        if let Some(p) = &s.prev_leader {
            holders.push((p.id.clone(), p.data_id));
        }
        !self.replicas.iter().any(|r| {
            r.core.as_ref().is_some_and(|c| {
                !c.unclean()
                    && holders
                        .iter()
                        .any(|(id, d)| *id == r.id && *d == c.data_id())
            })
        })
    }

    fn heal(&mut self, h: Heal) {
        match h {
            Heal::Uncut(pairs) => {
                for p in pairs {
                    self.net.cut.remove(&p);
                }
            }
            Heal::Loss => {
                self.net.loss = 0.0;
                self.net.dup = 0.0;
                self.net.extra_delay_us = 0;
            }
            Heal::EtcdUp => self.etcd.up = true,
            Heal::EtcdTimeouts => self.etcd.timeout_p = 0.0,
            Heal::Restart(Proc::Replica(r)) if !self.replicas[r].up => self.start_replica(r),
            Heal::Restart(Proc::Controller(c)) if !self.ctls[c].up => self.start_controller(c),
            Heal::Resume(Proc::Replica(r)) if self.replicas[r].paused_until <= self.now => {
                self.note(format!("r{} resumes", r + 1))
            }
            Heal::OwnDisk(r) => self.restore_own_disk(r),
            Heal::StopDup(inc) => self.stop_dup_inc(inc),
            _ => {}
        }
    }

    fn heal_all(&mut self) {
        self.restore_all_disks();
        self.net.heal();
        self.etcd.up = true;
        self.etcd.timeout_p = 0.0;
        for r in 0..self.replicas.len() {
            if self.replicas[r].paused_until > self.now {
                self.replicas[r].paused_until = self.now;
            }
            if !self.replicas[r].up {
                self.start_replica(r);
            }
        }
        for c in 0..self.ctls.len() {
            self.ctls[c].paused_until = self.ctls[c].paused_until.min(self.now);
            if !self.ctls[c].up {
                self.start_controller(c);
            }
        }
    }

    // ----- checks --------------------------------------------------------------------------------

    fn check_step(&mut self) {
        let mut serving = Vec::new();
        let mut errs = Vec::new();
        for (i, rep) in self.replicas.iter_mut().enumerate() {
            let Some(core) = &rep.core else { continue };
            if let Err(e) = core.check_invariants() {
                errs.push(format!("r{}: invariant: {e}", i + 1));
            }
            if core.epoch() < rep.max_epoch {
                errs.push(format!(
                    "r{}: epoch went back from {} to {}",
                    i + 1,
                    rep.max_epoch,
                    core.epoch()
                ));
            }
            rep.max_epoch = rep.max_epoch.max(core.epoch());
            let now = rep.clock.ms(self.now);
            if rep.paused_until <= self.now
                && core.role() == ReportedRole::Leader
                && core.read(now, b"", Consistency::Leader).is_ok()
            {
                serving.push((i, core.epoch()));
            }
        }
        if serving.len() > 1 {
            errs.push(format!(
                "two replicas serve as leader at once: {}",
                serving
                    .iter()
                    .map(|(i, e)| format!("r{} (epoch {e})", i + 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for e in errs {
            self.violation(e);
        }
    }

    fn converged(&self) -> Result<(), String> {
        let mut seen: Option<((Epoch, Lsn), u128)> = None;
        for (i, rep) in self.replicas.iter().enumerate() {
            let Some(c) = &rep.core else {
                return Err(format!("r{} is down", i + 1));
            };
            if c.applied() != c.log_end().1 {
                return Err(format!(
                    "r{} applied {} of {}",
                    i + 1,
                    c.applied(),
                    c.log_end().1
                ));
            }
            let me = (c.log_end(), c.state().digest());
            match seen {
                None => seen = Some(me),
                Some(s) if s != me => {
                    return Err(format!(
                        "r{} ends at {:?} with digest {:x}, another at {:?} with {:x}",
                        i + 1,
                        me.0,
                        me.1,
                        s.0,
                        s.1
                    ))
                }
                _ => {}
            }
        }
        if self.leader_replica().is_none() {
            return Err("no leader".into());
        }
        Ok(())
    }

    /// Every process's state, for a failing run's report.
    fn describe(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (i, rep) in self.replicas.iter().enumerate() {
            match &rep.core {
                None => v.push(format!("r{}: down", i + 1)),
                Some(c) => {
                    let hb = c.heartbeat(rep.clock.ms(self.now), 0);
                    v.push(format!(
                        "r{}: role {:?} epoch {} log_end {:?} flushed {} commit {} applied {} unclean {} rev {} stream {:?} serving {} rollbacks {}",
                        i + 1,
                        c.role(),
                        c.epoch(),
                        c.log_end(),
                        c.flushed(),
                        c.commit(),
                        c.applied(),
                        c.unclean(),
                        c.applied_rev(),
                        rep.stream.as_ref().map(|s| (s.leader + 1, s.sid)),
                        rep.serving.len(),
                        rep.rollbacks.len(),
                    ));
                    v.push(format!(
                        "    heartbeat: {}",
                        serde_json::to_string(&hb).unwrap_or_default()
                    ));
                }
            }
        }
        for (i, c) in self.ctls.iter().enumerate() {
            v.push(format!(
                "c{}: up {} active {} term {:?}",
                i + 1,
                c.up,
                c.core.is_active(),
                c.core.term()
            ));
        }
        if let Some((s, rev)) = &self.etcd.state {
            v.push(format!(
                "etcd state rev {rev}: {}",
                serde_json::to_string(s).unwrap_or_default()
            ));
        }
        for e in self.etcd.journal.iter().rev().take(12).rev() {
            v.push(format!("journal: {} {} (x{})", e.kind, e.message, e.count));
        }
        v
    }

    fn finish(mut self) -> Report {
        self.report.blocked = self.blocked;
        if self.blocked {
            self.note("blocked by design: no sync member nor the old leader holds the data".into());
        } else if let Err(e) = self.converged() {
            self.violation(format!("not converged after healing: {e}"));
            self.report.trace = self.trace.iter().cloned().collect();
        }

        // Final reads of every key from the leader, after every client operation ended.
        let mut history: Vec<HOp> = self
            .ops
            .iter()
            .filter(|o| !o.any && o.h.invoke >= self.history_from)
            .map(|o| o.h.clone())
            .collect();
        let mut accepted_loss = 0;

        if let Some(l) = self.leader_replica().filter(|_| !self.blocked) {
            let now = self.rms(l);
            for k in 0..self.cfg.keys {
                let key = key_of(k);
                let core = self.replicas[l].core.as_ref().expect("up");
                match core.read(now, key.as_bytes(), Consistency::Leader) {
                    Ok(ok) => history.push(HOp {
                        id: history.len() as u64 + 1_000_000,
                        key: key.clone(),
                        invoke: self.now + 1,
                        complete: Some(self.now + 2),
                        kind: OpKind::Read,
                        outcome: Outcome::Ok(OpResult::Read(
                            ok.entry
                                .map(|e| String::from_utf8_lossy(&e.value).into_owned()),
                        )),
                    }),
                    Err(e) => self.violation(format!("final read of {key} refused: {e:?}")),
                }
            }
            // The shared history checkers (tiers 1 and 3): nothing acknowledged is lost from
            // the final state, one writer per (epoch, LSN), every acknowledged write at its
            // place in the leader's log, and the replicas' logs agree record by record.
            let all_acked: Vec<AckedWrite> = self
                .acked
                .iter()
                .map(|((e, l), (k, v))| AckedWrite {
                    key: k.clone(),
                    value: v.clone(),
                    epoch: *e,
                    lsn: *l,
                })
                .collect();
            let core = self.replicas[l].core.as_ref().expect("up");
            // In the final leader's lineage: its epoch history says the record at that LSN
            // is of that epoch, so it is that record (I1).
            let in_lineage = |e: u64, lsn: u64| core.epoch_of(Lsn(lsn)) == Some(Epoch(e));
            // Acknowledged writes (and deletes) that a forced failover may have lost with the
            // operator's consent: acknowledged in an epoch below the last forced one.
            let forced = self.forced_epoch;
            let mut lost_here = Vec::new();
            for (&(e, lsn), what) in self
                .acked
                .iter()
                .map(|(k, (key, v))| (k, format!("{key}={v}")))
                .chain(
                    self.acked_deletes
                        .iter()
                        .map(|(k, key)| (k, format!("delete of {key}"))),
                )
            {
                if !in_lineage(e, lsn) {
                    if e < forced {
                        accepted_loss += 1;
                    } else {
                        lost_here.push(format!(
                            "acknowledged {what} at ({e}, {lsn}) is not in the final leader's log"
                        ));
                    }
                }
            }
            lost_here.sort();
            let acked: Vec<AckedWrite> = all_acked
                .iter()
                .filter(|w| w.epoch >= forced)
                .cloned()
                .collect();
            let mut final_state: BTreeMap<String, Stored> = core
                .state()
                .iter()
                .map(|(k, e)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        Stored {
                            value: String::from_utf8_lossy(&e.value).into_owned(),
                            epoch: e.version.epoch.0,
                            lsn: e.version.lsn.0,
                        },
                    )
                })
                .collect();
            // A deleted key holds a tombstone at the version of the delete that removed it:
            // the newest delete of it in the leader's lineage (what `check_lost` compares).
            for ((e, lsn), content) in &self.written {
                let Some(key) = content.strip_prefix("del ") else {
                    continue;
                };
                if final_state.get(key).is_some_and(|s| s.value != "<deleted>")
                    || !in_lineage(*e, *lsn)
                {
                    continue;
                }
                let t = final_state.entry(key.to_string()).or_insert(Stored {
                    value: "<deleted>".into(),
                    epoch: 0,
                    lsn: 0,
                });
                if (*e, *lsn) > (t.epoch, t.lsn) {
                    (t.epoch, t.lsn) = (*e, *lsn);
                }
            }
            let puts: BTreeMap<(u64, u64), (String, String)> = self.replicas[l]
                .log
                .iter()
                .filter_map(|r| match &r.op {
                    WOp::Put { key, value } => Some((
                        (r.epoch.0, r.lsn.0),
                        (
                            String::from_utf8_lossy(key).into_owned(),
                            String::from_utf8_lossy(value).into_owned(),
                        ),
                    )),
                    _ => None,
                })
                .collect();
            let logs: Vec<(String, Vec<history::LogEntry>)> = self
                .replicas
                .iter()
                .map(|r| {
                    let entries = r
                        .log
                        .iter()
                        .map(|rec| {
                            let h = xxhash_rust::xxh3::xxh3_64(rec_content(rec).as_bytes());
                            (rec.epoch.0, rec.lsn.0, h)
                        })
                        .collect();
                    (r.id.0.clone(), entries)
                })
                .collect();
            let mut found = history::check_one_writer_per_epoch(&all_acked);
            found.extend(history::check_logs_agree(&logs));
            let lost = history::check_lost(&acked, &final_state);
            let first = self.replicas[l].log_start;
            let not_in_log =
                history::check_acked_in_log(&acked, &self.replicas[l].id.0, &puts, first);
            if self.cfg.mode == Mode::Async {
                self.report.lost_async = lost.len() as u64;
            } else {
                found.extend(lost);
                found.extend(not_in_log);
                found.extend(lost_here);
                self.report.lost_accepted = accepted_loss;
            }
            for f in found.into_iter().take(10) {
                self.violation(f);
            }
        }
        history.extend(self.forced_resets());
        if let Ok(k) = std::env::var("SIMDUMP") {
            let mut h: Vec<&HOp> = history.iter().filter(|o| o.key == k).collect();
            h.sort_by_key(|o| o.invoke);
            for o in h {
                eprintln!(
                    "{} [{} {:?}] {:?} {:?}",
                    o.id,
                    o.invoke / 1000,
                    o.complete.map(|c| c / 1000),
                    o.kind,
                    o.outcome
                );
            }
        }
        match checker::check_history(&history) {
            Ok(()) => {}
            Err(v) if v.is_inconclusive() => {}
            Err(_) if self.cfg.mode == Mode::Async => {}
            Err(v) => self.violation(format!("not linearizable: {v}")),
        }
        if self.cfg.idle {
            self.check_idle();
        }
        self.check_impostor_journal();
        for o in &self.ops {
            self.report.ops += 1;
            match o.h.outcome {
                Outcome::Ok(_) => self.report.ok += 1,
                Outcome::Failed => self.report.failed += 1,
                Outcome::Unknown => self.report.unknown += 1,
            }
        }
        if !self.report.violations.is_empty() {
            let d = self.describe();
            self.report.trace.extend(d);
        } else if self.cfg.keep_trace {
            self.report.trace = self.trace.iter().cloned().collect();
        }
        self.report.epochs = self
            .replicas
            .iter()
            .filter_map(|r| r.core.as_ref().map(|c| c.epoch().0))
            .max()
            .unwrap_or(0);
        self.report
    }
}

impl World {
    /// A forced promotion (to a member that may lack acknowledged writes) resets every key to
    /// what its new leader's log holds below its leader-start, within a lease of it (the old
    /// leader may serve what it had until its lease ends). A forced epoch whose leader-start
    /// never committed served nothing; what it made others cut shows in the lineage that
    /// survives: the values of the final leader's log just below the first leader-start at or
    /// above that epoch that it holds, reset to somewhere up to a lease after that one.
    fn forced_resets(&self) -> Vec<HOp> {
        let final_core = self
            .leader_replica()
            .filter(|_| !self.blocked)
            .and_then(|l| self.replicas[l].core.as_ref());
        let mut out = Vec::new();
        for (&e, &recorded) in &self.forced_epochs {
            let Some((started, own)) = self.start_states.get(&e) else {
                continue;
            };
            // Its leader may append its leader-start late (it waits out the old lease, or it
            // was paused): the reset may come as soon as the promotion is recorded.
            let at = &recorded.min(*started);
            if *at < self.history_from {
                continue;
            }
            // Served: its own log decides (a later forced promotion may undo it in turn).
            let held = final_core
                .filter(|_| !self.committed_starts.contains(&e))
                .and_then(|core| {
                    let mut starts: Vec<(&u64, &(String, u64))> =
                        self.epoch_starts.iter().filter(|(g, _)| **g >= e).collect();
                    starts.sort();
                    starts
                        .into_iter()
                        .find(|(g, (_, lsn))| core.epoch_of(Lsn(*lsn)) == Some(Epoch(**g)))
                        .map(|(g, (_, lsn))| (core, *g, *lsn))
                });
            let (values, until) = match held {
                Some((core, g, lsn)) => {
                    let until = self.start_states.get(&g).map_or(*started, |s| s.0);
                    (self.lineage_values(core, Lsn(lsn)), until)
                }
                None => (own.clone(), *started),
            };
            for (k, v) in values.into_iter().enumerate() {
                out.push(HOp {
                    id: 2_000_000 + e * 100 + k as u64,
                    key: key_of(k),
                    invoke: *at,
                    complete: Some(until.max(*at) + 2 * LEASE_MS * 1000),
                    kind: OpKind::Reset { value: v },
                    outcome: Outcome::Ok(OpResult::Applied(true)),
                });
            }
        }
        out
    }

    /// What every key holds in `core`'s lineage just below `lsn` (by its epoch history and
    /// the records written anywhere).
    fn lineage_values(&self, core: &Core, lsn: Lsn) -> Vec<Option<String>> {
        let mut v: Vec<Option<Option<String>>> = vec![None; self.cfg.keys];
        let mut at = lsn.0;
        while at > 1 && v.iter().any(Option::is_none) {
            at -= 1;
            let Some(e) = core.epoch_of(Lsn(at)) else {
                break;
            };
            let Some(content) = self.written.get(&(e.0, at)) else {
                continue;
            };
            let (key, val) = if let Some(kv) = content.strip_prefix("put ") {
                let Some((k, val)) = kv.split_once('=') else {
                    continue;
                };
                (k, Some(val.to_string()))
            } else if let Some(k) = content.strip_prefix("del ") {
                (k, None)
            } else {
                continue;
            };
            if let Some(k) = (0..self.cfg.keys).find(|k| key_of(*k) == key) {
                v[k].get_or_insert(val);
            }
        }
        v.into_iter().map(Option::flatten).collect()
    }

    /// A long quiet run: nothing wedges (every operation after the start-up succeeds), the
    /// controllers leave etcd alone, and compaction keeps the logs bounded.
    fn check_idle(&mut self) {
        let settle = 5_000_000;
        let end = self.cfg.duration_ms * 1000;
        let bad: Vec<String> = self
            .ops
            .iter()
            .filter(|o| {
                o.h.invoke > settle && o.h.invoke < end && !matches!(o.h.outcome, Outcome::Ok(_))
            })
            .take(3)
            .map(|o| {
                format!(
                    "op {} on {} at t={} ms: {:?}",
                    o.h.id,
                    o.h.key,
                    o.h.invoke / 1000,
                    o.h.outcome
                )
            })
            .collect();
        for b in bad {
            self.violation(format!("idle run wedged: {b}"));
        }
        if self.idle_etcd_writes > 2 {
            let n = self.idle_etcd_writes;
            self.violation(format!(
                "idle run: the controllers wrote the cluster state {n} times after start-up"
            ));
        }
        if self.cfg.faults.snapshot {
            for i in 0..self.replicas.len() {
                let n = self.replicas[i].log.len();
                if n > 5000 {
                    self.violation(format!(
                        "idle run: r{} holds {n} log records despite snapshots",
                        i + 1
                    ));
                }
            }
        }
    }
}

/// Runs one seeded simulation.
pub fn run(cfg: SimConfig) -> Report {
    World::new(cfg).run()
}
