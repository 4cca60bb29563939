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
//! - `sleep(ms)`, `delay(ms)`, `pause`: as the `fail` crate defines them (they block the thread).
//!
//! | point | where | `error` means |
//! |---|---|---|
//! | `wal.before_append` | log thread, before a batch is written to the segment | write error: fatal |
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
//! `controller/src/runtime.rs`.

/// Exit status of a process crashed by a `return(crash)` action.
pub const CRASH_EXIT_CODE: i32 = 86;

/// Marks a fault point. `fault!("name")` supports the crash (and sleep/delay/pause) actions;
/// `fault!("name", |e: std::io::Error| -> E)` also `return(error)`: it returns `Err` built from
/// an injected I/O error out of the enclosing function. Without the `failpoints` feature it
/// expands to nothing.
#[cfg(feature = "failpoints")]
macro_rules! fault {
    ($name:literal) => {
        if $crate::faults::hit($name) {
            $crate::faults::no_error_here($name);
        }
    };
    ($name:literal, $err:expr) => {
        if $crate::faults::hit($name) {
            return Err($crate::faults::injected($name, $err));
        }
    };
}

#[cfg(not(feature = "failpoints"))]
macro_rules! fault {
    ($name:literal) => {};
    ($name:literal, $err:expr) => {};
}

pub(crate) use fault;

/// Evaluates the point: crashes on `return(crash)`, returns true on `return(error)`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) -> bool {
    fn eval(name: &str) -> Option<String> {
        fail::fail_point!(name, |arg: Option<String>| Some(arg.unwrap_or_default()));
        None
    }
    match eval(name).as_deref() {
        None => false,
        Some("crash") => crash(name),
        Some("error") => {
            tracing::warn!(point = name, "failpoint: injecting an I/O error");
            true
        }
        Some(other) => {
            tracing::error!(
                point = name,
                arg = other,
                "failpoint: unknown return argument (use crash or error); ignored"
            );
            false
        }
    }
}

/// Ends the process at once, as `kill -9` would at this point (nothing is flushed or dropped).
#[cfg(feature = "failpoints")]
pub fn crash(name: &str) -> ! {
    eprintln!("failpoint {name}: crash");
    // SAFETY: _exit(2) ends the process without running any Rust code; that is the point.
    unsafe { libc::_exit(CRASH_EXIT_CODE) }
}

/// `return(error)` at a point that has no error path.
#[cfg(feature = "failpoints")]
pub fn no_error_here(name: &str) {
    tracing::error!(
        point = name,
        "failpoint: this point has no error path (use crash); ignored"
    );
}

/// The injected error: `EIO` naming the point, turned into the site's error type by `f`.
#[cfg(feature = "failpoints")]
pub fn injected<E>(name: &str, f: impl FnOnce(std::io::Error) -> E) -> E {
    let eio = std::io::Error::from_raw_os_error(libc::EIO);
    f(std::io::Error::new(
        eio.kind(),
        format!("{eio} (injected by failpoint {name})"),
    ))
}

/// `PUT /v1/failpoints/{name}` (body: actions), `DELETE /v1/failpoints/{name}`,
/// `GET /v1/failpoints`: arm, disarm and list points at run time.
#[cfg(feature = "failpoints")]
pub fn router() -> axum::Router {
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::routing::{get, put};
    async fn arm(Path(name): Path<String>, body: String) -> (StatusCode, String) {
        match fail::cfg(name.clone(), body.trim()) {
            Ok(()) => {
                tracing::info!(point = %name, actions = %body.trim(), "failpoint armed");
                (StatusCode::OK, format!("{name}={}\n", body.trim()))
            }
            Err(e) => (StatusCode::BAD_REQUEST, format!("{name}: {e}\n")),
        }
    }
    async fn disarm(Path(name): Path<String>) -> StatusCode {
        fail::remove(name);
        StatusCode::OK
    }
    async fn list() -> axum::Json<Vec<(String, String)>> {
        axum::Json(fail::list())
    }
    axum::Router::new()
        .route("/v1/failpoints", get(list))
        .route("/v1/failpoints/{name}", put(arm).delete(disarm))
}
