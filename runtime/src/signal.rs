//! The shutdown signal of a server process: a future that completes on the first SIGTERM or
//! SIGINT. Libraries never install it themselves: `run(cfg, shutdown)` takes the future as a
//! parameter so tests can stop a server in-process by completing their own.

use std::future::Future;
use std::pin::Pin;

/// What `run(cfg, shutdown)` functions are handed by `process::main`.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Completes on the first SIGTERM or SIGINT. Without signal handlers (cannot install them) it
/// never completes, and the process still stops on the signals' default action.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
