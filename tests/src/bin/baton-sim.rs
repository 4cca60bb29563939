//! `baton-sim`: runs the tier-1 seeded simulation (`baton_tests::sim`) over a range of seeds,
//! prints one summary line, and for a failing seed the violations, the last events before
//! the first one, and the command that replays it.

use baton_tests::sim::{self, Faults, SimConfig};
use clap::Parser;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Seeded simulation of Baton's controller and replica cores under faults")]
struct Args {
    /// Run only this seed (replay).
    #[arg(long)]
    seed: Option<u64>,
    /// First seed of the range.
    #[arg(long, default_value_t = 1)]
    start: u64,
    /// Number of seeds.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Simulated milliseconds of faults per seed (healing and checks follow).
    #[arg(long, default_value_t = 10_000)]
    duration_ms: u64,
    /// Faults: all (every kind whose known bugs are fixed), everything (the gated kinds of
    /// issue 10 too), none, or a list of crash, pause, partition, loss, controller, etcd, wipe,
    /// operator, restore, forced, snapshot, restore-ops (`all,forced` adds one; `no-KIND`
    /// removes one).
    #[arg(long, default_value = "all")]
    faults: String,
    /// A long idle run of this many simulated milliseconds instead (no faults but those of
    /// `--faults` among snapshot; clients write about once a second; nothing may wedge).
    #[arg(long)]
    idle_ms: Option<u64>,
    /// The simulation before issue 10 (no deletes, no `any` reads, acks on flushes only), as
    /// the seeds pinned before it replay.
    #[arg(long)]
    classic: bool,
    /// Follower promises in ms (0: off; `--classic` turns them off too).
    #[arg(long, default_value_t = sim::DEFAULT_PROMISE_MS)]
    promise_ms: u64,
    /// One bounded fault at a time; each fault's longest write gap is held against its
    /// write-availability bound (a gap past it fails the seed) and the summary prints them.
    #[arg(long)]
    bounds: bool,
    /// Print the event trace of a failing seed (with `--seed`, of a passing one too).
    #[arg(long)]
    trace: bool,
    /// Async replication (acknowledged writes may be lost on failover; counted, not failed).
    #[arg(long = "async")]
    async_mode: bool,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() {
    let args = Args::parse();
    let faults = match Faults::parse(&args.faults) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("baton-sim: --faults: {e}");
            std::process::exit(2);
        }
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.start..args.start + args.seeds).collect(),
    };
    let t0 = Instant::now();
    let single = args.seed.is_some();
    let async_mode = args.async_mode;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // Seeds are dealt round-robin to the workers; reports come back in seed order.
    let mut reports: Vec<(SimConfig, sim::Report)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..jobs)
            .map(|j| {
                let mine: Vec<u64> = seeds.iter().copied().skip(j).step_by(jobs).collect();
                let faults = faults.clone();
                let duration_ms = args.duration_ms;
                let (idle_ms, classic) = (args.idle_ms, args.classic);
                let trace = args.trace;
                let promise_ms = args.promise_ms;
                let bounds = args.bounds;
                sc.spawn(move || {
                    mine.into_iter()
                        .map(|seed| {
                            let mut cfg = match idle_ms {
                                Some(ms) => SimConfig::idle(seed, ms, faults.snapshot),
                                None => {
                                    let mut c = SimConfig::new(seed);
                                    c.duration_ms = duration_ms;
                                    c.faults = faults.clone();
                                    c
                                }
                            };
                            cfg.deletes_and_any = !classic;
                            cfg.periodic_acks = !classic;
                            cfg.promise_ms = if classic { 0 } else { promise_ms };
                            cfg.bounds = bounds;
                            if async_mode {
                                cfg.mode = baton_common::directive::Mode::Async;
                            }
                            if single {
                                cfg.trace_len = 100_000;
                                cfg.keep_trace = trace;
                            }
                            let rep = sim::run(cfg.clone());
                            (cfg, rep)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation worker panicked"))
            .collect()
    });
    reports.sort_by_key(|(c, _)| c.seed);
    if let [(cfg, rep)] = &reports[..] {
        if cfg.keep_trace && rep.violations.is_empty() {
            for t in &rep.trace {
                eprintln!("    {t}");
            }
        }
    }
    let (mut steps, mut nfaults, mut ops, mut violations, mut blocked, mut failing) =
        (0, 0, 0, 0, 0, Vec::new());
    let (mut known, mut fixed) = (Vec::new(), Vec::new());
    // Known bugs are known for their own mix only (see `sim::KNOWN_BUG_SEEDS`).
    let plain = !async_mode
        && !args.classic
        && args.idle_ms.is_none()
        && args.duration_ms == 10_000
        && args.promise_ms == sim::DEFAULT_PROMISE_MS
        && !args.bounds;
    let known_bug = |seed: u64| {
        sim::KNOWN_BUG_SEEDS
            .iter()
            .find(|(s, mix, _)| plain && *s == seed && *mix == args.faults)
            .map(|(_, _, what)| *what)
    };
    for (cfg, rep) in &reports {
        let seed = cfg.seed;
        steps += rep.steps;
        nfaults += rep.faults;
        ops += rep.ops;
        blocked += u64::from(rep.blocked);
        if let Some(what) = known_bug(seed) {
            if rep.violations.is_empty() {
                eprintln!(
                    "seed {seed} is listed in KNOWN_BUG_SEEDS but passes now: remove it there and \
                     pin it as a regression test"
                );
                fixed.push(seed);
            } else {
                eprintln!(
                    "seed {seed}: KNOWN BUG (not counted as a failure): {what}\n  {} violation(s), first: {}\n  replay: {}",
                    rep.violations.len(),
                    rep.violations[0],
                    cfg.replay_command()
                );
                known.push(seed);
            }
            continue;
        }
        if !rep.violations.is_empty() {
            violations += rep.violations.len();
            eprintln!("seed {seed}: {} violation(s):", rep.violations.len());
            for v in &rep.violations {
                eprintln!("  {v}");
            }
            if args.trace || args.seed.is_some() {
                eprintln!("  last events before the first violation:");
                for t in &rep.trace {
                    eprintln!("    {t}");
                }
            }
            eprintln!("  replay: {}", cfg.replay_command());
            failing.push(seed);
        }
    }
    // Issue 12 item 5: how often one disk held acknowledged writes alone.
    let sim_us: u64 = reports.iter().map(|(_, r)| r.sim_us).sum();
    let degraded_us: u64 = reports.iter().map(|(_, r)| r.degraded_us).sum();
    let per_hour = |us: u64| us as f64 / 1e6 * 3.6e9 / sim_us.max(1) as f64;
    println!(
        "simulation: {} seeds, {} steps, {} faults, {} ops, violations {}, blocked by design {} ({:.1}%), degraded {:.0} s per simulated hour ({:.1}%), known bugs {} {:?}, {:.1} s",
        seeds.len(),
        steps,
        nfaults,
        ops,
        violations,
        blocked,
        100.0 * blocked as f64 / seeds.len().max(1) as f64,
        per_hour(degraded_us),
        100.0 * degraded_us as f64 / sim_us.max(1) as f64,
        known.len(),
        known,
        t0.elapsed().as_secs_f64()
    );
    let accepted: u64 = reports.iter().map(|(_, r)| r.lost_accepted).sum();
    let installs: u64 = reports.iter().map(|(_, r)| r.installs).sum();
    let snaps: u64 = reports.iter().map(|(_, r)| r.snapshots).sum();
    if faults.forced || faults.snapshot {
        println!(
            "acknowledged writes lost by forced failovers (accepted by the operator): {accepted}; snapshots taken {snaps}, installed by followers {installs}"
        );
    }
    if async_mode {
        let lost: u64 = reports.iter().map(|(_, r)| r.lost_async).sum();
        println!(
            "async: acknowledged writes lost by failovers (allowed in async mode, G3): {lost}"
        );
    }
    let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
    for (_, rep) in &reports {
        for (k, n) in &rep.fault_kinds {
            *kinds.entry(k.clone()).or_insert(0) += n;
        }
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("faults by kind: {}", kinds.join(", "));
    if args.bounds {
        print_bounds(&reports);
    }
    if !failing.is_empty() || !fixed.is_empty() {
        eprintln!("failing seeds: {failing:?}; known-bug seeds that pass now: {fixed:?}");
        std::process::exit(1);
    }
}

/// Bounds mode: per fault (and whether it hit the leader), how many, the longest write gap
/// seen (max and p50) next to the bound.
fn print_bounds(reports: &[(SimConfig, sim::Report)]) {
    let mut by: std::collections::BTreeMap<(usize, bool), (Vec<u64>, u64)> = Default::default();
    for (_, rep) in reports {
        for e in &rep.episodes {
            let k = sim::bounds::BOUNDED
                .iter()
                .position(|b| *b == e.kind)
                .unwrap_or(usize::MAX);
            let v = by.entry((k, e.on_leader)).or_insert((Vec::new(), 0));
            v.0.push(e.gap_us);
            v.1 = v.1.max(e.bound_us);
        }
    }
    println!("write-availability bounds (simulated ms; a gap past its bound fails the seed):");
    println!(
        "  {:<16} {:<8} {:>6} {:>8} {:>8} {:>8}",
        "fault", "victim", "runs", "gap p50", "gap max", "bound"
    );
    for ((k, leader), (mut gaps, bound)) in by {
        gaps.sort_unstable();
        let name = sim::bounds::BOUNDED.get(k).copied().unwrap_or("?");
        println!(
            "  {:<16} {:<8} {:>6} {:>8} {:>8} {:>8}",
            name,
            if leader { "leader" } else { "other" },
            gaps.len(),
            gaps[gaps.len() / 2] / 1000,
            gaps[gaps.len() - 1] / 1000,
            bound / 1000
        );
    }
}
