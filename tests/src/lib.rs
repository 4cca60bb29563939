//! Harness for Baton's multi-process tests, the benchmark and the dev cluster: a stand-in
//! controller (a test double that hands out directives), process control for real
//! `baton-replica` binaries, a small HTTP client, and the tests' CA, certificates and tokens
//! (`secure.rs`: every test runs the secure default).
//!
//! Nothing here is part of the product; the real controller is `baton-controller`.

pub mod chaos;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod history;
pub mod procs;
pub mod relay;
pub mod secure;
pub mod sim;
pub mod standin;
