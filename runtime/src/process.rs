//! The skeleton every server's `main` shares: the command line (`--config FILE.toml`, `--help`,
//! `--version`), then a bad config exits 2
//! (`file: key: problem` on stderr), then logging, a multi-threaded tokio runtime, the binary's
//! `run(cfg, shutdown)` inside its span with SIGTERM/SIGINT as the shutdown, and exit 0 on a
//! clean stop or 1 (the error chain on stderr) on a failure.

use crate::signal::{shutdown_signal, Shutdown};
use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A whole server `main`: parses `--config FILE.toml` (`about` is the `--help` line), loads the
/// config with `load`, then [`main`]. The servers' fault points are armed from `FAILPOINTS` for
/// the whole run in builds with them.
pub fn main_with_config<C, E, F, Fut>(
    bin: &'static str,
    about: &'static str,
    load: impl FnOnce(&Path) -> Result<C, E>,
    span: impl FnOnce(&C) -> tracing::Span,
    run: F,
) -> ExitCode
where
    E: Display,
    C: crate::logging::Logged,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    #[allow(clippy::let_unit_value)]
    let _faults = crate::faults::setup();
    let args = clap::Command::new(bin)
        .about(about)
        .version(env!("CARGO_PKG_VERSION"))
        .arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help("Path to the TOML config"),
        )
        .get_matches();
    let path = args
        .get_one::<PathBuf>("config")
        .expect("clap requires --config");
    main(bin, load(path), span, run)
}

/// Runs one server process. `bin` prefixes messages on stderr; `span` names the process in
/// every log line (its id, its cluster).
pub fn main<C, E, F, Fut>(
    bin: &str,
    cfg: Result<C, E>,
    span: impl FnOnce(&C) -> tracing::Span,
    run: F,
) -> ExitCode
where
    C: crate::logging::Logged,
    E: Display,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{bin}: {e}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init_with(cfg.log());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{bin}: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let span = span(&cfg);
    match rt.block_on(tracing::Instrument::instrument(
        run(cfg, Box::pin(shutdown_signal())),
        span,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bin}: {e:#}");
            ExitCode::from(1)
        }
    }
}
