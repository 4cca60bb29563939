//! `baton-proxy --config FILE.toml`: parses arguments and config, then hands over to
//! `baton_runtime::main` (logging, runtime, SIGTERM/SIGINT) to run the proxy. Exits 2 on a bad
//! config (`file: key: problem`), 1 on a failure to start, 0 on SIGTERM/SIGINT.

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
    baton_runtime::main(
        "baton-proxy",
        ProxyConfig::load(&args.config),
        |cfg| tracing::info_span!("proxy", cluster = %cfg.cluster),
        baton_proxy::run,
    )
}
