//! The failover controller (`baton-controller`, `batonctl`): etcd-backed election, heartbeats,
//! failure detection, promotion and fencing (DESIGN.md §5). Not built yet (issue 4); the wire
//! types it will speak already live in `baton_common::directive`.
