//! Tier-1 seeded simulation (TESTING.md): the real replica
//! [`Core`](baton_replica::core::Core)s and controller [`ClusterCore`]s run together in one
//! process, driven by thin simulated runtimes (the replica's steps by its own driver) over an
//! in-memory network (`net.rs`), disk (a durable log prefix plus an unsynced tail that a crash
//! loses, the meta facts, rollback archives) and coordination store (an etcd stand-in with
//! leases that expire, an election key, guarded transactions and request timeouts).
//! A seeded nemesis crashes, restarts, pauses, partitions (one- and two-way), drops and delays
//! messages, kills controllers, takes etcd away, wipes replicas and asks for switchovers,
//! while clients run compare-and-set registers and blind writes throughout.
//! Invariants are checked after every event; at the end the run heals, waits for
//! convergence and checks the history (linearizability, lost writes, one writer per epoch).
//! The same seed always replays the same run.

pub mod bounds;
mod checks;
mod client;
mod config;
mod controller;
mod disk;
mod etcd;
mod impostor;
mod msg;
mod nemesis;
mod net;
mod ops;
mod repl;
mod replica;
mod snap;

use baton_common::directive::Member;
use baton_common::{BootId, DataId, Epoch, NodeId};
use baton_controller::core::{ClusterCore, ClusterParams, Now};
use baton_replica::wal::{Op as WOp, Record};
use client::{Client, OpRec};
pub use config::{
    Faults, NewKinds, Report, SimConfig, ACK_SNAPSHOT_BEFORE_DURABLE, DEFAULT_PROMISE_MS,
    NEW_KINDS_ENABLED,
};
use controller::Ctl;
use etcd::{Etcd, EtcdBackup};
use msg::{Ev, Heal, Msg, Repl};
use net::{Clock, Net, Proc, Queue};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replica::Replica;
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
///
/// Seed 10983 (`all`) reproduces the bug this list described without a seed since issue 12:
/// etcd restored to an epoch-1 backup while the replicas that knew epoch 2 were down, moving or
/// not yet heard — a controller that becomes active at the heal hears only the restarted old
/// leader, starts epoch 2 again with it, and two leaders of epoch 2 exist (I1). Found when
/// issue 14 changed the nemesis's schedule (a new fault kind); Seed 11159 (`all,no-forced`)
/// showed it before issue 12. The fix is a store identity the replicas check (etcd's cluster
/// id in every directive), or a newly active controller that hears every member for a failure
/// timeout before it promotes.
pub const KNOWN_BUG_SEEDS: &[(u64, &str, &str)] = &[(
    10983,
    "all",
    "etcd restored behind the replicas: epoch 2 started twice after the heal (two leaders of epoch 2)",
)];

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
    /// After the last check: a leader serves with an empty waited set (semi-sync), so the
    /// time to the next event is degraded time (one disk holds acknowledged writes).
    degraded_now: bool,
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
                boot: BootId(0),
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
                incoming: None,
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
                started: 0,
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
                held: Default::default(),
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
            degraded_now: false,
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
            if self.degraded_now {
                self.report.degraded_us += t - self.now;
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
            | Ev::CtlTimer { c, .. }
            | Ev::CtlWake { c, .. } => self.ctls[*c].paused_until,
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
            Ev::CtlWake { c, inc } => {
                if self.ctls[c].up && self.ctls[c].inc == inc {
                    self.ctl_loop(c);
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
                    let next = match self.report.episodes.last() {
                        // Bounds mode: the next fault once this one healed and settled.
                        Some(e) if self.cfg.bounds => (e.end_us + bounds::SETTLE_US)
                            .saturating_sub(self.now)
                            .max(1),
                        _ if self.cfg.bounds => bounds::SETTLE_US,
                        _ => self.rng.random_range(200_000..1_500_000),
                    };
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
}

/// Runs one seeded simulation.
pub fn run(cfg: SimConfig) -> Report {
    World::new(cfg).run()
}
