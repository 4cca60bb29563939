//! `baton-controller --config FILE.toml`: hands over to `baton_runtime::main_with_config`
//! (arguments, config, logging, runtime, SIGTERM/SIGINT) to run `baton_controller::run`:
//! connect to etcd, campaign for every configured cluster, answer heartbeats with directives,
//! decide failovers, serve the ops API. Exits 2 on a bad config, 1 on a failure to start, 0 on
//! SIGTERM/SIGINT (after resigning, so a standby takes over).

use baton_controller::config::ControllerConfig;
use std::process::ExitCode;

pub(crate) fn main() -> ExitCode {
    baton_runtime::main_with_config(
        "baton-controller",
        "Baton failover controller.",
        ControllerConfig::load,
        |cfg| tracing::info_span!("controller", id = %cfg.id),
        baton_controller::run,
    )
}
