//! `baton-proxy --config FILE.toml`: hands over to `baton_runtime::main_with_config`
//! (arguments, config, logging, runtime, SIGTERM/SIGINT) to run the proxy; SIGHUP reloads the
//! `[tls]` files (`lib.rs`). Exits 2 on a bad config (`file: key: problem`, the TLS files
//! included), 1 on a failure to start, 0 on SIGTERM/SIGINT.

use baton_proxy::config::ProxyConfig;
use std::process::ExitCode;

fn main() -> ExitCode {
    baton_runtime::main_with_config(
        "baton-proxy",
        "Baton proxy: routes the client API to the current leader.",
        ProxyConfig::load,
        |cfg| tracing::info_span!("proxy", id = %cfg.id, cluster = %cfg.cluster),
        baton_proxy::run,
    )
}
