//! The failover controller (`baton-controller`, `batonctl`): etcd-backed election, heartbeats,
//! failure detection, promotion and fencing (DESIGN.md §5).
//!
//! Built so far: the cluster state as stored in etcd (`state.rs`) and the pure decision rules
//! for failure detection and candidate choice (`decide.rs`), with decision-table tests. The
//! etcd runtime, the heartbeat endpoint, operations and `batonctl` come next (issue 4).

pub mod api;
pub mod config;
pub mod core;
pub mod decide;
pub mod journal;
pub mod local;
pub mod runtime;
pub mod state;
pub mod upkeep;
