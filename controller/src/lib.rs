//! The failover controller (`baton-controller`, `batonctl`): etcd-backed election, heartbeats,
//! failure detection, promotion and fencing (DESIGN.md §5).
//!
//! Layout: `state.rs` and `journal.rs` (what is stored in etcd), `decide.rs` and `core.rs` (the
//! pure rules and the per-cluster state machine: no clock, no I/O), `runtime.rs` and
//! `upkeep.rs` (etcd session, election, guarded writes, compaction), `api.rs` (the HTTP API),
//! `config.rs`, and `local.rs` (the one-command local deployment behind `batonctl local`).

pub mod api;
pub mod config;
pub mod core;
pub mod decide;
pub mod journal;
pub mod local;
pub mod runtime;
pub mod state;
pub mod upkeep;
