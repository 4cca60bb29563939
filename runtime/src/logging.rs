//! Log set-up shared by every binary: `tracing` to stderr, level from `RUST_LOG` (default
//! `info`), colours only on a terminal (log files stay plain text).

/// Installs the global subscriber; call once, first thing in `main` after the config loaded
/// (`process::main` does). A second call (tests starting several servers) changes nothing.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
