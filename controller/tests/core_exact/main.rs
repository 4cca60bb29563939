//! Exact-action tests of [`ClusterCore`], the controller's pure per-cluster state machine
//! (DESIGN.md §3–5, §7): explicit `Now` values, heartbeats in, directives and guarded etcd
//! writes out, asserted field by field (state, journal kind, epoch and count; the journal's
//! wording only where it is the point, e.g. a refusal names the member it concerns).
//!
//! The harness plays the runtime: it hands the core the state as etcd returns it, commits the
//! writes the core hands out (`on_write(Committed { rev })`, the state key's mod revision moving
//! only when a state is written), and checks invariants after every step. It does not test the
//! decision tables of `decide.rs` row by row (those live in `src/decide/tests.rs`), nor etcd,
//! HTTP or the replica.
//!
//! `harness.rs` is the simulated runtime and the inputs; the other files are the tests, by
//! concern.

mod harness;

mod detection;
mod directives;
mod handover;
mod journal;
mod metrics;
mod operations;
mod planned;
mod prompt;
mod regressions;
mod sync_set;
