//! The failover controller (`baton-controller`, `batonctl`): etcd-backed election, heartbeats,
//! failure detection, promotion and fencing (DESIGN.md §5).
//!
//! The pure parts: the cluster state as stored in etcd (`state.rs`), the decision journal and
//! anti-flapping budget (`journal.rs`), the decision rules (`decide.rs`) and the per-cluster
//! state machine that uses them (`core/`). The I/O around them: the etcd runtime
//! (`runtime.rs`, `upkeep.rs`), the HTTP API (`api.rs`), configuration (`config.rs`) and the
//! local launcher behind `batonctl local` (`local.rs`).

pub mod api;
pub mod config;
pub mod core;
pub mod decide;
pub mod journal;
pub mod local;
pub mod runtime;
pub mod state;
pub mod upkeep;
