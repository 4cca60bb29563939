//! The client proxy (`baton-proxy`): routes `/v1/kv/*` to the leader learned from the
//! controllers (DESIGN.md §7). Not built yet (issue 5).
