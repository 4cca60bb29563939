//! `baton-replica --config FILE.toml`: parses arguments and config, then hands over to
//! `baton_runtime::main` (logging, runtime, SIGTERM/SIGINT) to run the replica. Exits 2 on a bad
//! config, 1 on a fatal error, 0 on SIGTERM/SIGINT.

use baton_replica::config::ReplicaConfig;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Baton replica: durable log, key-value state, client API.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Path to the replica's TOML config.
    #[arg(long)]
    config: PathBuf,
}

pub(crate) fn main() -> ExitCode {
    // Fault points (only in builds with the `failpoints` feature) armed by `FAILPOINTS`.
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let args = Args::parse();
    baton_runtime::main(
        "baton-replica",
        ReplicaConfig::load(&args.config),
        |cfg| tracing::info_span!("replica", id = %cfg.id, cluster = %cfg.cluster),
        baton_replica::run,
    )
}
