//! `baton-replica --config FILE.toml`: parses arguments and config, sets up logging and signals,
//! and runs the replica. Exits 2 on a bad config, 1 on a fatal error, 0 on SIGTERM/SIGINT.

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
    let cfg = match ReplicaConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton-replica: {e}");
            return ExitCode::from(2);
        }
    };
    baton_common::logging::init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-replica: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let span = tracing::info_span!("replica", id = %cfg.id, cluster = %cfg.cluster);
    match rt.block_on(tracing::Instrument::instrument(
        baton_replica::run(cfg, shutdown_signal()),
        span,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-replica: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still stops on the default action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
