//! `baton-controller --config FILE.toml`: parses arguments and config, then hands over to
//! `baton_runtime::main` (logging, runtime, SIGTERM/SIGINT) to run `baton_controller::run`:
//! connect to etcd, campaign for every configured cluster, answer heartbeats with directives,
//! decide failovers, serve the ops API. Exits 2 on a bad config, 1 on a failure to start, 0 on
//! SIGTERM/SIGINT (after resigning, so a standby takes over).

use baton_controller::config::ControllerConfig;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Baton failover controller.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Path to the controller's TOML config.
    #[arg(long)]
    config: PathBuf,
}

pub(crate) fn main() -> ExitCode {
    // Fault points (only in builds with the `failpoints` feature) armed by `FAILPOINTS`.
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let args = Args::parse();
    baton_runtime::main(
        "baton-controller",
        ControllerConfig::load(&args.config),
        |cfg| tracing::info_span!("controller", id = %cfg.id),
        baton_controller::run,
    )
}
