//! `baton-bench`: the performance numbers behind Baton's claims, printed as tables, measured side
//! by side with etcd on the same machine and disk (a timed test would fail on a slow day; this
//! reports instead).
//!
//! `baton-bench replica` measures one replica (release build) acknowledging durable writes:
//! throughput and latency at 1/16/64 concurrent clients with 100-byte values, next to the same
//! load with the same client concurrency against a three-member etcd cluster on the same
//! machine through its gRPC API (`etcd-client`), in one side-by-side table with the ratio
//! (`--no-etcd` skips etcd), and restart time with a million keys (clean stop and SIGKILL).
//!
//! `baton-bench cluster` measures three replicas (leader r1, release build) driven by the
//! stand-in controller: write throughput and latency through the leader at each client count in
//! semi-sync mode (both followers waited) and in async mode, each next to the same three-member
//! etcd run (`--no-etcd` skips it), with the followers' lag after each load. Both commands run
//! Baton and etcd interleaved per client count, with the same security on both sides (TLS by
//! default, `--plain` for none); `--debug` runs the debug binaries, as the CI smoke test
//! (`tests/tests/bench_smoke.rs`) does.
//!
//! `baton-bench catchup` measures how fast a follower that was down catches up from the leader's
//! log (about `--gib` GiB of it), next to the disk's sequential write speed measured with `dd`.
//!
//! `baton-bench failover` times leader kills and switchovers with the real controller;
//! `baton-bench partial` holds partial failures (cut links both ways and one way, a cut-off
//! controller, etcd trouble, both controllers down, full and slow disks, a corrupted follower
//! log) and reports the longest write gap of each next to its bound. `baton-bench tls` measures
//! the cluster's writes in the secure default and in plain HTTP side by side (what TLS and
//! tokens cost). One module per command.

mod catchup;
mod cluster;
mod common;
mod etcd;
mod failover;
mod partial;
mod replica;
mod tls;

use catchup::run_catchup;
use clap::{Parser, Subcommand};
use cluster::run_cluster;
use etcd::Versus;
use failover::run_failover;
use partial::run_partial;
use replica::run_replica;
use std::path::PathBuf;
use tls::run_tls;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Single-replica durable writes next to a three-member etcd, and restart time.
    Replica {
        /// Seconds per load level.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent clients per load level.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Keys loaded before measuring restart time (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        restart_keys: u64,
        /// Working directory (on the disk to measure); a temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        versus: Versus,
    },
    /// Three replicas (leader r1): writes through the leader in semi-sync and async mode, next
    /// to a three-member etcd.
    Cluster {
        /// Seconds per load level.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent clients per load level.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Working directory (on the disk to measure); a temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        versus: Versus,
    },
    /// What TLS costs: the three-replica semi-sync cluster with TLS and tokens, then in plain
    /// HTTP (`insecure = true`), in one run.
    Tls {
        /// Seconds per load level.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent clients per load level.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Working directory (on the disk to measure); a temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A restarted follower catching up from the leader's log, next to the disk's speed (dd).
    Catchup {
        /// GiB of values loaded into the leader while the follower is down.
        #[arg(long, default_value_t = 1.0)]
        gib: f64,
        #[arg(long, default_value_t = 4096)]
        value_bytes: usize,
        /// Write to this many keys in turn (0: a new key per write). With fewer, the
        /// follower's in-memory state stops growing and the catch-up measures the log path.
        #[arg(long, default_value_t = 0)]
        distinct_keys: u64,
        /// Working directory (on the disk to measure); a temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Run the debug build's replicas (the CI smoke run; the numbers mean nothing).
        #[arg(long)]
        debug: bool,
    },
    /// Failover and switchover with the real controller and etcd: time from `kill -9` of the
    /// leader to the first acknowledged write on its successor, and the write pause of a
    /// planned switchover, over several runs.
    Failover {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Write through baton-proxy (the client-visible window) instead of to the replicas.
        #[arg(long)]
        proxy: bool,
        /// Working directory; a temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Partial failures on real processes (cut links, a cut-off controller, etcd trouble, both
    /// controllers down, full and slow disks, a corrupted follower log): longest write gap
    /// through the proxy next to its bound, failover or not, lost writes.
    Partial {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// How long each fault is held.
        #[arg(long, default_value_t = 8000)]
        hold_ms: u64,
        /// Faults to run (all by default): leader-isolated, leader-cut-from-followers,
        /// leader-to-followers-dropped, followers-to-leader-dropped, follower-cut-from-leader,
        /// controller-cut-from-replicas, etcd-leader-killed, etcd-down, controllers-down,
        /// disk-full-leader, disk-full-follower, slow-disk-leader, slow-disk-follower,
        /// follower-log-corrupted (the follower faults hit the sync member).
        #[arg(long, value_delimiter = ',')]
        faults: Vec<String>,
        /// Use the debug binaries (a quick check of the command itself; timings mean little).
        #[arg(long)]
        debug: bool,
        /// Working directory; a temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Replica {
            seconds,
            clients,
            value_bytes,
            restart_keys,
            dir,
            versus,
        } => run_replica(seconds, clients, value_bytes, restart_keys, dir, versus).await,
        Cmd::Cluster {
            seconds,
            clients,
            value_bytes,
            dir,
            versus,
        } => run_cluster(seconds, clients, value_bytes, dir, versus).await,
        Cmd::Tls {
            seconds,
            clients,
            value_bytes,
            dir,
        } => run_tls(seconds, clients, value_bytes, dir).await,
        Cmd::Catchup {
            gib,
            value_bytes,
            distinct_keys,
            dir,
            debug,
        } => run_catchup(gib, value_bytes, distinct_keys, dir, debug).await,
        Cmd::Failover { runs, dir, proxy } => run_failover(runs, dir, proxy).await,
        Cmd::Partial {
            runs,
            hold_ms,
            faults,
            debug,
            dir,
        } => run_partial(runs, hold_ms, faults, !debug, dir).await,
    }
}
