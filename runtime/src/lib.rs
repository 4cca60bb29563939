//! The async plumbing the three Baton servers (`baton-replica`, `baton-controller`,
//! `baton-proxy`) share, so each binary's library holds only its own logic: the HTTP/1.1 accept
//! loop with a connection cap, idle timeout and graceful drain (`server.rs`), request bodies
//! read under a limit with oversized ones drained so the client reads the 413 (`body.rs`), the
//! SIGTERM/SIGINT shutdown future (`signal.rs`), the Prometheus exposition and connection
//! metrics (`metrics.rs`), the log set-up (`logging.rs`), the skeleton of every `main` — `--config FILE.toml`, config,
//! logging, runtime, exit codes (`process.rs`) — and the shared half of the replica's and the
//! controller's fault points (`faults.rs`, `failpoints` feature); and security (DESIGN §9): the
//! `[tls]` files, server and client configs and node identities (`tls.rs`), dialling nodes over
//! TLS (`connect.rs`), bearer tokens, roles and the guard middleware (`auth.rs`), and a CA with
//! node certificates made on the spot for `batonctl local up` and the tests (`pki.rs`).
//!
//! It is a crate of its own rather than a feature of `baton-common` so that `common`, which the
//! pure cores and the simulation build on, keeps no tokio, no sockets and no hyper in its
//! dependency graph at all (a cargo feature would be unified on for the whole workspace). It
//! decides nothing about the protocol and holds no state beyond one server's connections.

pub mod auth;
pub mod body;
pub mod connect;
pub mod faults;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod process;
pub mod server;
pub mod signal;
pub mod tls;

pub use process::{main, main_with_config};
pub use server::{bind, serve, ServeOpts, CLIENT_POOL_IDLE};
pub use signal::{shutdown_signal, Shutdown};
