//! Log shipping runtime: the wire format (`wire.rs`), the leader's side serving follower
//! streams (`leader.rs`) and the follower's side keeping one stream to its leader
//! (`follower.rs`), whose catch-up is measured by `progress.rs`. The decisions are the core's (`core/leader.rs`, `core/follower.rs`).

pub mod follower;
pub mod leader;
pub mod progress;
pub mod wire;
