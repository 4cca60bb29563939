//! `baton-replica --config FILE.toml`: hands over to `baton_runtime::main_with_config`
//! (arguments, config, logging, runtime, SIGTERM/SIGINT) to run the replica. Exits 2 on a bad
//! config, 1 on a fatal error, 0 on SIGTERM/SIGINT.

use baton_replica::config::ReplicaConfig;
use std::process::ExitCode;

pub(crate) fn main() -> ExitCode {
    baton_runtime::main_with_config(
        "baton-replica",
        "Baton replica: durable log, key-value state, client API.",
        ReplicaConfig::load,
        |cfg| tracing::info_span!("replica", id = %cfg.id, cluster = %cfg.cluster),
        baton_replica::run,
    )
}
