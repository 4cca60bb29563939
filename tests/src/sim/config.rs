//! The simulation's parameters: which faults the nemesis may inject ([`Faults`], the fault
//! kinds of issue 10 in [`NEW_KINDS_ENABLED`]), one run's [`SimConfig`] and its replay
//! command, and what a run did and found ([`Report`]).

use baton_common::directive::Mode;
use std::collections::BTreeMap;

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
/// The promise a simulated follower gives with each ack (the lease is 600 ms).
pub const DEFAULT_PROMISE_MS: u64 = 500;

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
    /// Follower promises (DESIGN §5): the promise each follower's ack carries, in ms (at most
    /// the lease); 0 turns them off, as before issue 12 (`--classic` replays that).
    pub promise_ms: u64,
    /// One bounded fault at a time, each episode's longest write gap held against its
    /// write-availability bound (`bounds.rs`).
    pub bounds: bool,
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
            promise_ms: DEFAULT_PROMISE_MS,
            bounds: false,
        }
    }
    /// The run as it was before issue 10 (no deletes, no `any` reads, none of the new kinds):
    /// pinned seeds replay their original schedules with it.
    pub fn classic(seed: u64) -> SimConfig {
        let mut c = SimConfig::new(seed);
        c.deletes_and_any = false;
        c.periodic_acks = false;
        c.promise_ms = 0;
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
            "cargo run -p baton-tests --bin baton-sim -- --seed {} --duration-ms {} --faults {}{}{}{}{}",
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
            },
            if self.bounds { " --bounds" } else { "" },
            if self.promise_ms == DEFAULT_PROMISE_MS || (self.promise_ms == 0 && !self.periodic_acks) {
                String::new()
            } else {
                format!(" --promise-ms {}", self.promise_ms)
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
    /// Simulated time a leader served degraded (acknowledging alone), and the run's length.
    pub degraded_us: u64,
    pub sim_us: u64,
    /// Bounds mode: every fault injected, with its longest write gap and bound.
    pub episodes: Vec<super::bounds::Episode>,
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
