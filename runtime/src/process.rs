//! The skeleton every server's `main` shares once its arguments are parsed: a bad config exits 2
//! (`file: key: problem` on stderr), then logging, a multi-threaded tokio runtime, the binary's
//! `run(cfg, shutdown)` inside its span with SIGTERM/SIGINT as the shutdown, and exit 0 on a
//! clean stop or 1 (the error chain on stderr) on a failure.

use crate::signal::{shutdown_signal, Shutdown};
use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// Runs one server process. `bin` prefixes messages on stderr; `span` names the process in
/// every log line (its id, its cluster).
pub fn main<C, E, F, Fut>(
    bin: &str,
    cfg: Result<C, E>,
    span: impl FnOnce(&C) -> tracing::Span,
    run: F,
) -> ExitCode
where
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
    crate::logging::init();
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
