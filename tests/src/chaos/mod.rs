//! The tier-3 chaos runner (TESTING "Tier 3"), behind the `baton-chaos` binary and
//! `tests/tests/chaos.rs`: real etcd, two controllers, three replicas (each behind an inbound
//! relay, with a relay on every replica→controller link) and the proxy; concurrent clients
//! through the proxy ([`workload`]) while a seeded nemesis injects one fault at a time
//! ([`nemesis`]); then heal, availability, convergence, the final state and the logs on disk
//! ([`verify`]), every checker, and one summary line in the TESTING format.
//!
//! The seed fixes the fault schedule and the clients' choices, not the timing of real
//! processes: a replay with the same seed runs the same kinds of faults in the same order
//! against the same roles, which is usually enough to reproduce a finding.

pub mod bounds;
pub mod nemesis;
pub mod verify;
pub mod workload;

use crate::checker::{check_history, OpResult, Outcome, Violation};
use crate::cluster::{Cluster, Opts};
use crate::history;
use nemesis::FaultRecord;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::{Recorder, Target};

/// Violations listed per check in the report; the rest are counted.
const SHOWN: usize = 10;

/// The kinds of fault the nemesis injects. Each has a write-availability bound
/// ([`bounds::rule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// kill -9 a replica (often the leader), restart it after a while.
    Kill,
    /// SIGSTOP a replica (usually the leader) longer than its lease, then SIGCONT.
    Pause,
    /// Cut the leader from everyone: followers, proxy, controllers.
    Partition,
    /// Cut a replica (usually the leader) from the controllers only.
    PartitionController,
    /// Cut one follower from the leader (both directions); everything else passes.
    PartitionData,
    /// Cut the leader from its followers only, both directions (it still reaches the
    /// controllers, etcd and the proxy).
    LeaderCut,
    /// Lose the messages between the leader and its followers in one direction only (the
    /// leader's to them, or theirs to it); the other direction flows.
    LeaderCutOneWay,
    /// kill -9 the active controller, restart it after a while.
    Controller,
    /// Cut the active controller from every replica (it still reaches etcd and the proxy).
    IsolateController,
    /// kill -9 both controllers, restart them after a few seconds.
    ControllersDown,
    /// kill -9 an etcd minority member, or every member (total loss), then restart.
    Etcd,
    /// kill -9 etcd's raft leader, restart it after a while.
    EtcdLeader,
    /// kill -9 every etcd member for 10 s.
    EtcdDown,
    /// kill -9 a replica, delete its data directory, restart it on an empty one.
    Wipe,
    /// A switchover through the controller API.
    Switchover,
    /// Two faults in quick succession: the leader killed and then its successor as soon as it
    /// is recorded (two failovers, KIP-279 class); or the sync standby wiped and the leader
    /// killed right after (the wiped member must not be promoted).
    Double,
    /// kill -9 every replica at once, restart them all after a while.
    RestartAll,
    /// The leader's disk is full (`wal.before_append=return(enospc)`) for a few seconds.
    DiskFullLeader,
    /// A follower's disk is full for a few seconds.
    DiskFullFollower,
    /// Every fsync of the leader's log stalls for seconds (`wal.before_fsync=sleep(S)`).
    SlowDiskLeader,
    /// Every fsync of a follower's log stalls for seconds.
    SlowDiskFollower,
    /// Stop a follower, flip bytes inside a sealed segment of its log, restart it: it must cut
    /// the damage and fetch the range again from the leader.
    CorruptFollower,
}

impl Fault {
    pub const ALL: [Fault; 22] = [
        Fault::Kill,
        Fault::Pause,
        Fault::Partition,
        Fault::PartitionController,
        Fault::PartitionData,
        Fault::LeaderCut,
        Fault::LeaderCutOneWay,
        Fault::Controller,
        Fault::IsolateController,
        Fault::ControllersDown,
        Fault::Etcd,
        Fault::EtcdLeader,
        Fault::EtcdDown,
        Fault::Wipe,
        Fault::Switchover,
        Fault::Double,
        Fault::RestartAll,
        Fault::DiskFullLeader,
        Fault::DiskFullFollower,
        Fault::SlowDiskLeader,
        Fault::SlowDiskFollower,
        Fault::CorruptFollower,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::PartitionController => "partition-controller",
            Fault::PartitionData => "partition-data",
            Fault::LeaderCut => "leader-cut",
            Fault::LeaderCutOneWay => "leader-cut-oneway",
            Fault::Controller => "controller",
            Fault::IsolateController => "isolate-controller",
            Fault::ControllersDown => "controllers-down",
            Fault::Etcd => "etcd",
            Fault::EtcdLeader => "etcd-leader",
            Fault::EtcdDown => "etcd-down",
            Fault::Wipe => "wipe",
            Fault::Switchover => "switchover",
            Fault::Double => "double",
            Fault::RestartAll => "restart-all",
            Fault::DiskFullLeader => "disk-full-leader",
            Fault::DiskFullFollower => "disk-full-follower",
            Fault::SlowDiskLeader => "slow-disk-leader",
            Fault::SlowDiskFollower => "slow-disk-follower",
            Fault::CorruptFollower => "corrupt-follower",
        }
    }

    /// Whether the replicas must run with their fault points compiled in for this kind.
    pub fn needs_fault_points(self) -> bool {
        matches!(
            self,
            Fault::DiskFullLeader
                | Fault::DiskFullFollower
                | Fault::SlowDiskLeader
                | Fault::SlowDiskFollower
        )
    }

    /// Parses a comma-separated list of names (`all` = every kind).
    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                out.extend(Fault::ALL);
                continue;
            }
            let f = Fault::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                    format!("unknown fault {name:?}; known: all, {}", known.join(", "))
                })?;
            out.push(f);
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("no fault kinds given".into());
        }
        Ok(out)
    }
}

/// One run's settings.
#[derive(Clone, Debug)]
pub struct ChaosOpts {
    /// How long the nemesis injects faults (the last one may run past it).
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<Fault>,
    /// Clients through the proxy.
    pub clients: usize,
    /// Clients that talk to the replicas directly (past the relays), following `503` hints.
    pub direct_clients: usize,
    /// Keep everything here; `None` = a temporary directory removed on success.
    pub dir: Option<PathBuf>,
    /// Use the release binaries.
    pub release: bool,
    /// etcd members (1 or 3); with 3, the `etcd` fault also kills a minority member.
    pub etcd_members: usize,
    /// Stop after this many shuffled rounds of every kind (`duration` still bounds the run):
    /// `Some(1)` runs each kind once, as the CI test does.
    pub rounds: Option<usize>,
}

impl Default for ChaosOpts {
    fn default() -> Self {
        ChaosOpts {
            duration: Duration::from_secs(60),
            seed: 1,
            faults: Fault::ALL.to_vec(),
            clients: 8,
            direct_clients: 2,
            dir: None,
            release: false,
            etcd_members: 3,
            rounds: None,
        }
    }
}

impl ChaosOpts {
    /// The command line that runs this schedule again.
    pub fn replay_command(&self) -> String {
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        format!(
            "cargo build --workspace --bins{r} && cargo run{r} -p baton-tests --bin baton-chaos -- --duration {} --seed {} --faults {} --clients {} --direct-clients {} --etcd-members {}{}{}",
            self.duration.as_secs(),
            self.seed,
            faults.join(","),
            self.clients,
            self.direct_clients,
            self.etcd_members,
            match self.rounds {
                Some(n) => format!(" --rounds {n}"),
                None => String::new(),
            },
            if self.release { " --release" } else { "" },
            r = if self.release { " --release" } else { "" },
        )
    }

    /// The deployment the runner starts: failover timings as the product defaults (heartbeat
    /// 100 ms, failure timeout 800 ms, lease 600 ms, election TTL 2 s), no anti-flapping limit
    /// in practice, small log segments and a snapshot every 2 MiB of log (so that snapshots,
    /// compaction and snapshot installs on wiped or lagging replicas happen in every run; 64 KiB
    /// segments, so that a follower's log has sealed segments to damage within seconds), a
    /// replica write timeout and proxy attempt timeout short enough that a partitioned
    /// leader's requests end in seconds, a proxy that buffers through a failover, and the
    /// fault-point replica build when a disk kind is on.
    pub fn cluster_opts(&self) -> Opts {
        Opts {
            replicas: 3,
            controllers: 2,
            mode: "semi-sync".into(),
            replica_toml: "[timing]\nwrite_timeout_ms = 2000\n[storage]\nsegment_bytes_max = 65536\nsnapshot_log_bytes = 2097152\n".into(),
            controller_timing: String::new(),
            cluster_toml: "max_failovers_per_hour = 100000\n".into(),
            release: self.release,
            proxy: true,
            proxy_toml: "[timing]\nfailover_buffer_ms = 5000\nrequest_timeout_ms = 3000\n".into(),
            inbound_relays: true,
            etcd_members: self.etcd_members,
            fault_points: self.faults.iter().any(|f| f.needs_fault_points()),
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct ChaosReport {
    /// The one summary line (TESTING "Reports").
    pub summary: String,
    /// One line per fault, then the end-of-run lines.
    pub log: Vec<String>,
    /// The faults injected, in order.
    pub faults: Vec<FaultRecord>,
    /// Guarantee violations; empty = passed.
    pub violations: Vec<String>,
    /// Things worth reading that are not violations (inconclusive checks, slow settling).
    pub notes: Vec<String>,
    /// Per fault kind injected: its longest write gap next to its bound ([`bounds`]).
    pub bounds: Vec<KindBound>,
    /// Where the run's processes kept their data and logs.
    pub dir: PathBuf,
    /// Whether `dir` was kept (always with `--dir`, else on failure).
    pub kept: bool,
}

impl ChaosReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The kinds in [`bounds::AWAITING_FEATURE`] that exceeded twice their bound in this run
    /// (reported, not failed), one line each.
    pub fn unenforced(&self) -> Vec<String> {
        self.bounds
            .iter()
            .filter(|b| b.awaiting.is_some() && b.verdict == bounds::Verdict::Exceeded)
            .map(KindBound::line)
            .collect()
    }
}

/// One fault kind's availability in a run: its longest write gap next to its bound.
#[derive(Clone, Debug)]
pub struct KindBound {
    pub kind: Fault,
    /// Faults of this kind injected.
    pub faults: usize,
    /// The fault of this kind that came closest to (or went furthest past) its bound: its gap
    /// and its bound.
    pub gap: Duration,
    pub bound: Duration,
    pub verdict: bounds::Verdict,
    /// Why the bound is not enforced yet ([`bounds::AWAITING_FEATURE`]).
    pub awaiting: Option<&'static str>,
}

impl KindBound {
    /// `leader-cut: 2 faults, longest write gap 1.9 s, bound 1.3 s (failure_timeout + 0.5 s; row 15): …`
    pub fn line(&self) -> String {
        let (words, rows) = bounds::rule(self.kind);
        let verdict = match (self.verdict, self.awaiting) {
            (bounds::Verdict::Within, None) => "within the bound".to_string(),
            (bounds::Verdict::Over, None) => format!(
                "over the bound, within {}× (passes)",
                bounds::ENFORCED_FACTOR
            ),
            (bounds::Verdict::Exceeded, None) => {
                format!("EXCEEDS {}× THE BOUND (violation)", bounds::ENFORCED_FACTOR)
            }
            (bounds::Verdict::Exceeded, Some(why)) => format!(
                "EXCEEDS {}× THE BOUND; NOT ENFORCED, AWAITING FEATURE: {why}",
                bounds::ENFORCED_FACTOR
            ),
            (_, Some(why)) => format!(
                "within {}× the bound although listed as AWAITING FEATURE ({why}): remove it from bounds::AWAITING_FEATURE",
                bounds::ENFORCED_FACTOR
            ),
        };
        format!(
            "{}: {} fault(s), longest write gap {:.2} s, bound {:.2} s ({words}; row {rows}), ratio {:.1}: {verdict}",
            self.kind.name(),
            self.faults,
            self.gap.as_secs_f64(),
            self.bound.as_secs_f64(),
            self.gap.as_secs_f64() / self.bound.as_secs_f64().max(1e-9),
        )
    }
}

/// Per kind, the fault with the highest gap-to-bound ratio, judged against its own bound.
pub fn kind_bounds(faults: &[FaultRecord], timing: &bounds::Timing) -> Vec<KindBound> {
    let mut by_kind: std::collections::BTreeMap<Fault, Vec<(Duration, Duration)>> =
        Default::default();
    for f in faults {
        by_kind.entry(f.kind).or_default().push((
            Duration::from_micros(f.gap_us),
            bounds::bound(f.kind, timing, f.param),
        ));
    }
    by_kind
        .into_iter()
        .map(|(kind, v)| {
            let (gap, bound) = v
                .iter()
                .copied()
                .max_by(|a, b| {
                    let r =
                        |(g, b): (Duration, Duration)| g.as_secs_f64() / b.as_secs_f64().max(1e-9);
                    r(*a).total_cmp(&r(*b))
                })
                .expect("one fault at least");
            KindBound {
                kind,
                faults: v.len(),
                gap,
                bound,
                verdict: bounds::judge(gap, bound),
                awaiting: bounds::awaiting(kind),
            }
        })
        .collect()
}

/// Runs one chaos run. An `Err` is a harness failure (the cluster did not start, a process
/// could not be restarted); its message names the kept directory.
pub async fn run(opts: &ChaosOpts) -> anyhow::Result<ChaosReport> {
    let (dir, tmp) = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("baton-chaos-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let res = run_in(&dir, opts).await;
    let keep = !matches!(&res, Ok(r) if r.passed());
    let kept = match tmp {
        Some(t) if keep => {
            let _ = t.keep();
            true
        }
        Some(t) => {
            drop(t);
            false
        }
        None => true,
    };
    match res {
        Ok(mut r) => {
            r.kept = kept;
            Ok(r)
        }
        Err(e) => Err(e.context(format!(
            "chaos run with seed {} failed; its directory is kept at {}",
            opts.seed,
            dir.display()
        ))),
    }
}

fn secs(us: u64) -> String {
    format!("{:.1} s", us as f64 / 1e6)
}

/// The longest stretch without an acknowledged write within `[from, to]` (a fault's window:
/// from its start to the next fault's start).
fn window_gap(acks: &[u64], from: u64, to: u64) -> u64 {
    let mut prev = from;
    let mut max = 0;
    for &a in acks.iter().filter(|a| **a >= from) {
        if a > to {
            break;
        }
        max = max.max(a - prev);
        prev = a;
    }
    max.max(to.saturating_sub(prev))
}

/// Nearest-rank percentile of sorted `v`.
fn percentile(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn listed(out: &mut Vec<String>, what: &str, lines: Vec<String>) {
    let n = lines.len();
    for l in lines.into_iter().take(SHOWN) {
        out.push(format!("{what}: {l}"));
    }
    if n > SHOWN {
        out.push(format!("{what}: … and {} more", n - SHOWN));
    }
}

/// The checkers must reject corrupted copies of this run's own history (so that a pass means
/// something): an acknowledged write removed from the final state, two acknowledged writes at
/// one version, a write acknowledged at an old version after a newer one, a read of a value
/// never written, a log record changed on one replica. Each one accepted is a violation;
/// returns how many were rejected.
fn self_check(
    ops: &[crate::checker::Op],
    timed: &[history::TimedWrite],
    final_state: Option<&std::collections::BTreeMap<String, history::Stored>>,
    logs: &[(String, Vec<history::LogEntry>)],
    violations: &mut Vec<String>,
) -> usize {
    let acked: Vec<history::AckedWrite> = timed.iter().map(|t| t.write.clone()).collect();
    let mut verdicts: Vec<(&str, bool)> = Vec::new();
    if let (Some(s), Some(w)) = (final_state, acked.iter().find(|w| w.key.starts_with("u-"))) {
        let mut s = s.clone();
        s.remove(&w.key);
        verdicts.push((
            "an acknowledged write removed from the final state",
            !history::check_lost(&acked, &s).is_empty(),
        ));
    }
    if let Some(i) = acked.iter().position(|w| w.key != acked[0].key) {
        let mut a = acked.clone();
        a[i].epoch = a[0].epoch;
        a[i].lsn = a[0].lsn;
        verdicts.push((
            "two acknowledged writes at one version",
            !history::check_one_writer_per_epoch(&a).is_empty(),
        ));
    }
    if let Some(last) = timed.iter().max_by_key(|t| t.invoke) {
        if timed.iter().any(|t| t.complete < last.invoke) {
            let mut t: Vec<history::TimedWrite> = timed.to_vec();
            let i = t.iter().position(|x| x == last).expect("present");
            t[i].write.epoch = 0;
            verdicts.push((
                "a write acknowledged at an old version after a newer one",
                !history::check_real_time_order(&t).is_empty(),
            ));
        }
    }
    if let Some(i) = ops
        .iter()
        .position(|o| matches!(o.outcome, Outcome::Ok(OpResult::Read(Some(_)))))
    {
        let mut o = ops.to_vec();
        o[i].outcome = Outcome::Ok(OpResult::Read(Some("never-written".into())));
        verdicts.push((
            "a read of a value never written",
            matches!(check_history(&o), Err(Violation::NotLinearizable(_))),
        ));
    }
    let shared = logs.get(1).and_then(|(_, second)| {
        let first: std::collections::HashSet<(u64, u64)> =
            logs[0].1.iter().map(|e| (e.0, e.1)).collect();
        second.iter().rposition(|e| first.contains(&(e.0, e.1)))
    });
    if let Some(j) = shared {
        let mut l = logs.to_vec();
        l[1].1[j].2 ^= 1;
        verdicts.push((
            "a log record changed on one replica",
            !history::check_logs_agree(&l).is_empty(),
        ));
    }
    let mut rejected = 0;
    for (what, ok) in verdicts {
        if ok {
            rejected += 1;
        } else {
            violations.push(format!("self-check: the checkers accepted {what}"));
        }
    }
    rejected
}

async fn run_in(dir: &std::path::Path, opts: &ChaosOpts) -> anyhow::Result<ChaosReport> {
    eprintln!(
        "chaos: seed {}, {} s, faults {}, {} clients + {} direct, dir {}",
        opts.seed,
        opts.duration.as_secs(),
        opts.faults
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(","),
        opts.clients,
        opts.direct_clients,
        dir.display()
    );
    let copts = opts.cluster_opts();
    if copts.fault_points {
        let release = opts.release;
        tokio::task::spawn_blocking(move || crate::procs::build_fault_bins(release)).await??;
    }
    let mut cl = Cluster::start(dir, copts).await?;
    let rec = Arc::new(Recorder::new());
    let proxy = cl.proxy_url();
    let direct: Vec<(String, String)> = cl
        .replicas
        .iter()
        .map(|(id, r)| (id.clone(), r.url.clone()))
        .collect();
    let started = Instant::now();
    let end = started + opts.duration;
    // A hard bound for the clients, whatever happens to the nemesis.
    let clients_until = end + Duration::from_secs(180);
    let tasks: Vec<_> = (0..opts.clients + opts.direct_clients)
        .map(|n| {
            let target = if n < opts.clients {
                Target::Proxy(proxy.clone())
            } else {
                Target::Direct(direct.clone())
            };
            tokio::spawn(workload::client(
                rec.clone(),
                n,
                opts.seed,
                clients_until,
                target,
            ))
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut dead = Vec::new();
    let schedule = nemesis::run(
        &mut cl,
        &rec,
        &opts.faults,
        opts.rounds,
        &mut rng,
        end,
        &mut dead,
    )
    .await;
    // Heal whatever the schedule left, even after a harness error.
    let healed = nemesis::heal_all(&mut cl).await;
    let mut faults: Vec<FaultRecord> = schedule?;
    let left_dead = healed?;
    let chaos_us = rec.now();
    let mut violations = Vec::new();
    let mut notes = Vec::new();
    let mut log = Vec::new();
    for d in dead {
        violations.push(format!("{d} exited on its own during the run (restarted)"));
    }
    for d in left_dead {
        violations.push(format!("{d} was not running at the final heal (restarted)"));
    }

    // Availability after the heal, then stop the clients.
    let avail = verify::wait_available(&rec, &proxy, Duration::from_secs(60)).await;
    let avail_us = rec.now();
    rec.stop();
    for t in tasks {
        let _ = t.await;
    }
    match avail {
        Some(d) => log.push(format!(
            "after the heal: a write was acknowledged after {:.2} s",
            d.as_secs_f64()
        )),
        None => violations.push("no write was acknowledged within 60 s of the final heal".into()),
    }
    let converged = verify::wait_converged(&cl, Duration::from_secs(60)).await;
    match &converged {
        Ok(d) => log.push(format!(
            "after the heal: all replicas converged {:.2} s after the clients stopped",
            d.as_secs_f64()
        )),
        Err(e) => violations.push(e.clone()),
    }

    // The final state, from the leader.
    let ops = rec.ops();
    let timed = rec.acked();
    let acked: Vec<history::AckedWrite> = timed.iter().map(|t| t.write.clone()).collect();
    let (leader, _) = nemesis::leader_epoch(&cl).await;
    let final_state = match leader.as_ref().filter(|l| cl.replicas.contains_key(*l)) {
        Some(l) => {
            let (state, bad) =
                verify::read_final(&cl.url(l), rec.written_keys().into_iter().collect()).await;
            listed(&mut violations, "final read", bad);
            Some(state)
        }
        None => {
            violations.push("no leader to read the final state from".into());
            None
        }
    };

    // Checkers.
    let lost = match &final_state {
        Some(s) => history::check_lost(&acked, s),
        None => Vec::new(),
    };
    let n_lost = lost.len();
    listed(&mut violations, "lost", lost);
    let checked_at = Instant::now();
    let lin = check_history(&ops);
    let lin_word = match &lin {
        Ok(()) => "yes",
        Err(Violation::Inconclusive { .. }) => {
            notes.push(format!("linearizability: {}", lin.as_ref().unwrap_err()));
            "inconclusive"
        }
        Err(v) => {
            violations.push(format!("linearizability: {v}"));
            "no"
        }
    };
    log.push(format!(
        "linearizability checked in {:.1} s over {} ops",
        checked_at.elapsed().as_secs_f64(),
        ops.len()
    ));
    let one_writer = history::check_one_writer_per_epoch(&acked);
    let real_time = history::check_real_time_order(&timed);
    let two_writers = rec.epochs_with_two_writers();
    let mut split_brain = one_writer.len() + real_time.len() + two_writers.len();
    listed(&mut violations, "two writers in one epoch", two_writers);
    listed(&mut violations, "one writer per epoch", one_writer);
    listed(&mut violations, "versions against real time", real_time);

    // Stop the controllers (so that stopping a leader starts no failover), the proxy and the
    // replicas cleanly, and read the replicas' logs from disk.
    for c in cl.controllers.iter_mut() {
        c.daemon.term(Duration::from_secs(10));
    }
    if let Some(p) = cl.proxy.as_mut() {
        p.daemon.term(Duration::from_secs(10));
    }
    let mut logs = Vec::new();
    for (id, r) in cl.replicas.iter_mut() {
        if r.term(Duration::from_secs(15)).is_none() {
            notes.push(format!("{id} did not stop within 15 s of SIGTERM; killed"));
            r.kill9();
        }
        match verify::read_log(&r.data_dir()) {
            Ok(view) => {
                let missing = history::check_acked_in_log(&acked, id, &view.puts, view.first_lsn);
                listed(
                    &mut violations,
                    "acknowledged write not in the log",
                    missing,
                );
                log.push(format!(
                    "{id}: log LSN {}..={} read back from disk",
                    view.first_lsn,
                    view.entries.last().map_or(0, |e| e.1)
                ));
                logs.push((id.clone(), view.entries));
            }
            Err(e) => violations.push(format!("{id}: cannot read its log: {e:#}")),
        }
    }
    let disagree = history::check_logs_agree(&logs);
    split_brain += disagree.len();
    listed(&mut violations, "logs disagree", disagree);
    drop(cl);
    let rejected = self_check(&ops, &timed, final_state.as_ref(), &logs, &mut violations);
    log.push(format!(
        "self-check: the checkers rejected {rejected} corrupted copies of this run's history"
    ));

    let injected: Vec<Fault> = faults.iter().map(|f| f.kind).collect();
    let scan = verify::scan_logs(dir, &verify::expected_errors(&injected));
    listed(&mut violations, "panic", scan.panics);
    listed(
        &mut violations,
        "unexpected ERROR line",
        scan.unexpected_errors,
    );
    if scan.expected_errors > 0 {
        notes.push(format!(
            "{} ERROR lines explained by the injected faults",
            scan.expected_errors
        ));
    }
    let odd = rec.odd();
    if !odd.is_empty() {
        let n = odd.len();
        listed(&mut notes, "unexpected reply", odd);
        notes.push(format!("{n} unexpected replies in all"));
    }

    // Failover windows per fault.
    let acks = rec.ack_times();
    for i in 0..faults.len() {
        let to = faults.get(i + 1).map_or(avail_us, |n| n.start_us);
        faults[i].gap_us = window_gap(&acks, faults[i].start_us, to);
    }
    let mut fault_log = Vec::new();
    for f in &faults {
        let who = |x: &(Option<String>, Option<u64>)| match x {
            (Some(l), Some(e)) => format!("{l}@{e}"),
            (None, Some(e)) => format!("none@{e}"),
            _ => "?".into(),
        };
        fault_log.push(format!(
            "[{:>6.1} s] {:<20} {}; leader {} -> {}; write gap {}; {}",
            f.start_us as f64 / 1e6,
            f.kind.name(),
            f.what,
            who(&f.before),
            who(&f.after),
            secs(f.gap_us),
            match &f.settled {
                Ok(d) => format!("settled {:.1} s after the heal", d.as_secs_f64()),
                Err(e) => e.clone(),
            }
        ));
        if let Err(e) = &f.settled {
            notes.push(format!("{} at {}: {e}", f.kind.name(), secs(f.start_us)));
        }
    }
    for f in &faults {
        if let Some(p) = &f.problem {
            violations.push(format!("{} at {}: {p}", f.kind.name(), secs(f.start_us)));
        }
    }
    let mut by_kind: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for f in &faults {
        by_kind.entry(f.kind.name()).or_default().push(f.gap_us);
    }
    for (kind, mut g) in by_kind {
        g.sort_unstable();
        fault_log.push(format!(
            "{kind}: {} faults, write gap p50 {} max {}",
            g.len(),
            secs(percentile(&g, 50.0)),
            secs(g.last().copied().unwrap_or(0))
        ));
    }
    // Availability bounds (TESTING "Fault matrix"): reported per kind, a violation past
    // twice the bound unless the kind awaits a feature (then said loudly, not failed).
    let kinds = kind_bounds(&faults, &bounds::Timing::product_default());
    for b in &kinds {
        fault_log.push(format!("bound {}", b.line()));
        if b.verdict == bounds::Verdict::Exceeded && b.awaiting.is_none() {
            violations.push(format!("availability bound: {}", b.line()));
        }
    }
    for (k, why) in bounds::AWAITING_FEATURE {
        if opts.faults.contains(k) {
            notes.push(format!(
                "AWAITING FEATURE: the bound of {} is reported, not enforced: {why}",
                k.name()
            ));
        }
    }
    fault_log.extend(log);
    let mut gaps: Vec<u64> = faults.iter().map(|f| f.gap_us).collect();
    gaps.sort_unstable();

    let (mut ok, mut failed, mut unknown) = (0, 0, 0);
    for op in &ops {
        match op.outcome {
            Outcome::Ok(OpResult::Read(_)) | Outcome::Ok(OpResult::Applied(_)) => ok += 1,
            Outcome::Failed => failed += 1,
            Outcome::Unknown => unknown += 1,
        }
    }
    let summary = format!(
        "chaos: 1 run, {} s, {} ops ({ok} ok, {failed} failed, {unknown} unknown), {} faults, lost {n_lost}, linearizable {lin_word}, split-brain {split_brain}, converged {}, failover p50 {} p99 {} max {}",
        (chaos_us / 1_000_000),
        ops.len(),
        faults.len(),
        if converged.is_ok() { "yes" } else { "no" },
        secs(percentile(&gaps, 50.0)),
        secs(percentile(&gaps, 99.0)),
        secs(gaps.last().copied().unwrap_or(0)),
    );
    Ok(ChaosReport {
        summary,
        log: fault_log,
        faults,
        violations,
        notes,
        bounds: kinds,
        dir: dir.to_path_buf(),
        kept: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse() {
        assert_eq!(Fault::parse_list("all").unwrap(), Fault::ALL.to_vec());
        assert_eq!(
            Fault::parse_list("pause, kill,pause").unwrap(),
            vec![Fault::Kill, Fault::Pause]
        );
        assert!(Fault::parse_list("kill,nope").unwrap_err().contains("nope"));
        assert!(Fault::parse_list("").is_err());
    }

    #[test]
    fn gaps_and_percentiles() {
        let acks = [10, 20, 30, 100, 110, 400];
        // From 25: 30 (5), 100 (70), then to 105 (5).
        assert_eq!(window_gap(&acks, 25, 105), 70);
        // Clipped at `to`: the stretch 110..400 belongs to the next window.
        assert_eq!(window_gap(&acks, 25, 150), 70);
        assert_eq!(window_gap(&acks, 105, 300), 190);
        // Nothing acknowledged after 400: the window runs to `to`.
        assert_eq!(window_gap(&acks, 401, 900), 499);
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 99.0), 4);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
