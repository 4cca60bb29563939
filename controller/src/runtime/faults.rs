//! Named fault points of the controller (TESTING.md, tier 2), compiled in only with the
//! `failpoints` feature (the `baton-controller-failpoints` binary); elsewhere they are no-ops.
//! Armed like the replica's (`replica/src/faults.rs`): `FAILPOINTS` at start, or
//! `PUT /v1/failpoints/{name}` with the actions as body. `return(crash)` ends the process on
//! the spot (`_exit`, exit status [`CRASH_EXIT_CODE`]); `return(error)` is supported
//! where the table says so.
//!
//! | point | where | `error` means |
//! |---|---|---|
//! | `promotion.before_epoch_write` | before the write of `{epoch N+1, leader null, promoting}` | — |
//! | `promotion.after_epoch_write` | that write committed, before this controller acts on it | — |
//! | `promotion.before_record` | before the write recording the new leader (`steady`) | — |
//! | `promotion.before_direct` | the new leader recorded, before anyone is directed by it | — |
//! | `lease.before_renew` | before each keepalive of the etcd election lease | the keepalive fails: the lease is trusted until it would expire, then re-granted |

/// Exit status of a process crashed by a `return(crash)` action.
pub const CRASH_EXIT_CODE: i32 = 86;

macro_rules! fault {
    ($name:literal) => {
        if $crate::runtime::faults::hit($name) {
            tracing::error!(
                point = $name,
                "failpoint: this point has no error path (use crash); ignored"
            );
        }
    };
}
pub(crate) use fault;

/// Evaluates a point: crashes on `return(crash)`, returns true on `return(error)`; always
/// false without the `failpoints` feature.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) -> bool {
    fn eval(name: &str) -> Option<String> {
        fail::fail_point!(name, |arg: Option<String>| Some(arg.unwrap_or_default()));
        None
    }
    match eval(name).as_deref() {
        None => false,
        Some("crash") => {
            eprintln!("failpoint {name}: crash");
            // SAFETY: _exit(2) ends the process without running any Rust code, as kill -9.
            unsafe { libc::_exit(CRASH_EXIT_CODE) }
        }
        Some("error") => {
            tracing::warn!(point = name, "failpoint: injecting an error");
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

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) -> bool {
    false
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
