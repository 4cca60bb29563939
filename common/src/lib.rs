//! Shared vocabulary of Baton: identifiers, epochs and LSNs as newtypes, the controller↔replica
//! wire types (heartbeats and directives), the client API's JSON bodies, config loading with
//! errors that name file, key and problem, and the suspend-proof clock the runtimes read.
//!
//! It deliberately holds no I/O beyond reading a config file and the clock, and depends on
//! neither tokio nor etcd, so the pure cores of the controller and the replica can use it.

pub mod api;
pub mod clock;
pub mod config;
pub mod directive;
pub mod ids;

pub use ids::{BootId, DataId, Epoch, Lsn, NodeId, Version};
