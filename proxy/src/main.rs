//! `baton-proxy --config FILE.toml`: parses arguments and config, sets up logging and signals,
//! and runs the proxy. Exits 2 on a bad config (`file: key: problem`), 1 on a failure to start,
//! 0 on SIGTERM/SIGINT.

use baton_proxy::config::ProxyConfig;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Baton proxy: routes the client API to the current leader.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Path to the proxy's TOML config.
    #[arg(long)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match ProxyConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton-proxy: {e}");
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
            eprintln!("baton-proxy: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let span = tracing::info_span!("proxy", cluster = %cfg.cluster);
    match rt.block_on(tracing::Instrument::instrument(
        baton_proxy::run(cfg, shutdown_signal()),
        span,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-proxy: {e:#}");
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
