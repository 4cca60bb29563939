//! Named fault points at the replica's persistence and replication boundaries (TESTING.md,
//! tier 2). They exist only in builds with the `failpoints` feature (the
//! `baton-replica-failpoints` binary); in every other build [`fault!`] expands to nothing.
//!
//! A point is armed with the [`fail`] crate's action syntax, through the `FAILPOINTS`
//! environment variable at start (`FAILPOINTS="wal.after_fsync=30*off->return(crash)"`) or at
//! run time with `PUT /v1/failpoints/{name}` (body: the actions; `DELETE` disarms, `GET
//! /v1/failpoints` lists). Actions:
//! - `return(crash)`: the process dies on the spot (`_exit`, no destructors, no flush — like
//!   `kill -9` at that line), after one stderr line `failpoint NAME: crash`; exit status
//!   [`CRASH_EXIT_CODE`].
//! - `return(error)`: the operation fails with an injected I/O error (`EIO`) where the point
//!   says so below, taking the same path a real failure takes.
//! - `return(enospc)`: the same with `ENOSPC` (a full disk): at `wal.before_append` the write
//!   is refused and retried every 500 ms, the replica answering writes `507` meanwhile; at
//!   `wal.before_fsync` it is an fsync error like any other (fatal, DESIGN.md §6).
//! - `sleep(ms)`, `delay(ms)`, `pause`: as the `fail` crate defines them (they block the thread).
//!   A slow disk is `wal.before_fsync=sleep(3000)`: every fdatasync of the log stalls 3 s.
//!
//! | point | where | `error` means |
//! |---|---|---|
//! | `wal.before_append` | log thread, before a batch is written to the segment | write error: fatal (`enospc`: disk full, retried) |
//! | `wal.after_append` | after the batch was written, before its fsync | write error: fatal |
//! | `wal.before_fsync` | before the segment's fdatasync | fsync error: fatal, never retried |
//! | `wal.after_fsync` | after fdatasync returned, before anyone learns of it | fsync error: fatal |
//! | `apply.before` | before a step that commits and applies records (local flush, a follower's ack, a leader's commit LSN) | — |
//! | `client.before_ack` | a committed write, before its client is answered | — |
//! | `repl.before_send` | leader, before records are sent to a follower | the stream breaks; the follower reconnects |
//! | `follower.before_append` | follower, records received, before they are appended | the stream breaks; reconnect |
//! | `repl.before_ack` | follower, before it acknowledges a flush to the leader | — |
//! | `meta.before_epoch_write` | before a higher epoch is persisted (directive or leader stream) | fatal: cannot persist the epoch |
//! | `meta.after_epoch_write` | epoch durable, before it is acted on | fatal: cannot persist the epoch |
//! | `meta.before_rename` | `meta.json.tmp` written and fsynced, before the rename | the meta write fails (fatal) |
//! | `snapshot.before_rename` | snapshot temp file fsynced, before the rename | the snapshot fails; retried later |
//! | `compact.before` | before segments a snapshot covers are removed | compaction fails; retried later |
//! | `truncate.after_archive` | divergent suffix archived, before the log is cut | fatal: cannot truncate |
//! | `install.before_rename` | follower, received snapshot fsynced, before it replaces the log | fatal: cannot install |
//! | `install.after_reset` | follower, snapshot renamed into place and the log restarted after it (durable), before that is reported and acknowledged | fatal: cannot install |
//!
//! The controller's points (`promotion.*`, `lease.before_renew`) are in
//! `controller/src/runtime/faults.rs`; evaluating a point, the `FAILPOINTS` set-up and the
//! router are shared, in `baton_runtime::faults`.

pub use baton_runtime::faults::CRASH_EXIT_CODE;
#[cfg(feature = "failpoints")]
pub use baton_runtime::faults::{hit, router};

/// Marks a fault point. `fault!("name")` supports the crash (and sleep/delay/pause) actions;
/// `fault!("name", |e: std::io::Error| -> E)` also `return(error)`: it returns `Err` built from
/// an injected I/O error out of the enclosing function. Without the `failpoints` feature it
/// expands to nothing.
#[cfg(feature = "failpoints")]
macro_rules! fault {
    ($name:literal) => {
        if $crate::faults::hit($name).is_some() {
            $crate::faults::no_error_here($name);
        }
    };
    ($name:literal, $err:expr) => {
        if let Some(errno) = $crate::faults::hit($name) {
            return Err($crate::faults::injected($name, errno, $err));
        }
    };
}

#[cfg(not(feature = "failpoints"))]
macro_rules! fault {
    ($name:literal) => {};
    ($name:literal, $err:expr) => {};
}

pub(crate) use fault;

/// `return(error)` at a point that has no error path.
#[cfg(feature = "failpoints")]
pub fn no_error_here(name: &str) {
    tracing::error!(
        point = name,
        "failpoint: this point has no error path (use crash); ignored"
    );
}

/// The injected error: `errno` naming the point, turned into the site's error type by `f`.
/// Its kind is the errno's (ENOSPC is `StorageFull`, which is how a full disk is recognized).
#[cfg(feature = "failpoints")]
pub fn injected<E>(name: &str, errno: i32, f: impl FnOnce(std::io::Error) -> E) -> E {
    let os = std::io::Error::from_raw_os_error(errno);
    f(std::io::Error::new(
        os.kind(),
        format!("{os} (injected by failpoint {name})"),
    ))
}
