//! `baton-chaos`: the tier-3 chaos runner's command line (TESTING "Tier 3"). Starts real
//! etcd, two controllers, three replicas and the proxy, runs clients through the proxy while a
//! seeded nemesis injects faults, then heals, checks and prints one summary line; exits
//! non-zero on any violation, with the seed and the command that replays it; on SIGINT or
//! SIGTERM it kills every process it started. Each fault kind's longest write gap is printed
//! next to its bound (`baton_tests::chaos::bounds`); past twice the bound is a violation. The
//! run itself is `baton_tests::chaos::run`.

use baton_tests::chaos::{self, ChaosOpts, Fault};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Chaos run against a real Baton deployment on loopback.
#[derive(Parser)]
#[command(name = "baton-chaos")]
struct Args {
    /// Seconds of fault injection (the last fault may run a little past it).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seed of the fault schedule and the clients' choices (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Comma-separated fault kinds, or `all`: kill, pause, partition, partition-controller,
    /// partition-data, leader-cut, leader-cut-oneway, controller, isolate-controller,
    /// controllers-down, etcd, etcd-leader, etcd-down, wipe, switchover, double, restart-all,
    /// disk-full-leader, disk-full-follower, slow-disk-leader, slow-disk-follower,
    /// corrupt-follower. The disk kinds run the replicas as `baton-replica-failpoints` (built
    /// on demand).
    #[arg(long, default_value = "all")]
    faults: String,
    /// Stop after this many shuffled rounds of every kind (`--duration` still bounds the run).
    #[arg(long)]
    rounds: Option<usize>,
    /// Concurrent clients through the proxy.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Clients that talk to the replicas directly (past the relays, so they stay on a
    /// partitioned leader's side), following the leader a 503 names.
    #[arg(long, default_value_t = 2)]
    direct_clients: usize,
    /// Keep data and logs here (default: a temporary directory, removed on success and kept
    /// on failure).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Use the release binaries (`cargo build --release --workspace --bins`).
    #[arg(long)]
    release: bool,
    /// Members of the private etcd cluster: 3 (the `etcd` fault kills a minority member or
    /// all of them) or 1 (total loss only).
    #[arg(long, default_value_t = 3)]
    etcd_members: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let faults = match Fault::parse_list(&args.faults) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("baton-chaos: --faults: {e}");
            return ExitCode::from(2);
        }
    };
    if !matches!(args.etcd_members, 1 | 3) {
        eprintln!("baton-chaos: --etcd-members must be 1 or 3");
        return ExitCode::from(2);
    }
    let opts = ChaosOpts {
        duration: Duration::from_secs(args.duration),
        seed: args.seed.unwrap_or_else(rand::random),
        faults,
        clients: args.clients.max(1),
        direct_clients: args.direct_clients,
        dir: args.dir,
        release: args.release,
        etcd_members: args.etcd_members,
        rounds: args.rounds.filter(|r| *r > 0),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-chaos: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // On SIGINT/SIGTERM the run is dropped, which kills every process it started.
    let report = rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            r = chaos::run(&opts) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => None,
        }
    });
    let Some(report) = report else {
        eprintln!("baton-chaos: interrupted; every process it started was killed");
        return ExitCode::from(130);
    };
    match report {
        Err(e) => {
            eprintln!("baton-chaos: {e:#}");
            eprintln!("replay: {}", opts.replay_command());
            ExitCode::from(1)
        }
        Ok(r) => {
            for l in &r.log {
                println!("  {l}");
            }
            for n in &r.notes {
                println!("note: {n}");
            }
            for u in r.unenforced() {
                println!("!!! NOT ENFORCED (awaiting a feature): {u}");
            }
            for v in &r.violations {
                println!("VIOLATION: {v}");
            }
            println!("{}", r.summary);
            if r.passed() {
                if r.kept {
                    println!("data and logs kept in {}", r.dir.display());
                }
                ExitCode::SUCCESS
            } else {
                println!(
                    "FAILED (seed {}): data and logs kept in {}",
                    opts.seed,
                    r.dir.display()
                );
                println!("replay: {}", opts.replay_command());
                ExitCode::from(1)
            }
        }
    }
}
