//! What the replica's and the controller's named fault points (TESTING.md, tier 2) share:
//! evaluating a point ([`hit`]: `return(crash)` ends the process on the spot with
//! [`CRASH_EXIT_CODE`], `return(error)` and `return(enospc)` ask the site to fail with that errno), the `FAILPOINTS` set-up at start
//! ([`setup`]) and the `/v1/failpoints` router that arms, disarms and lists points at run time.
//! Compiled in only with the `failpoints` feature; otherwise `hit` is always false, `setup` does
//! nothing and there is no router. The points themselves, their table and the `fault!` macro
//! stay with each server (`replica/src/faults.rs`, `controller/src/runtime/faults.rs`).

/// Exit status of a process crashed by a `return(crash)` action.
pub const CRASH_EXIT_CODE: i32 = 86;

/// Arms the points `FAILPOINTS` names (the `fail` crate's syntax); they stay armed while the
/// returned guard lives, so `main` holds it.
#[cfg(feature = "failpoints")]
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}

/// Without the `failpoints` feature: nothing to arm.
#[cfg(not(feature = "failpoints"))]
pub fn setup() {}

/// Evaluates the point: crashes on `return(crash)`, returns the errno to inject on
/// `return(error)` (EIO) and `return(enospc)` (ENOSPC, a full disk).
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) -> Option<i32> {
    fn eval(name: &str) -> Option<String> {
        fail::fail_point!(name, |arg: Option<String>| Some(arg.unwrap_or_default()));
        None
    }
    match eval(name).as_deref() {
        None => None,
        Some("crash") => crash(name),
        Some("error") => {
            tracing::warn!(point = name, "failpoint: injecting an I/O error");
            Some(libc::EIO)
        }
        Some("enospc") => {
            tracing::warn!(point = name, "failpoint: injecting ENOSPC (disk full)");
            Some(libc::ENOSPC)
        }
        Some(other) => {
            tracing::error!(
                point = name,
                arg = other,
                "failpoint: unknown return argument (use crash, error or enospc); ignored"
            );
            None
        }
    }
}

/// Without the `failpoints` feature no point is ever hit.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) -> Option<i32> {
    None
}

/// Ends the process at once, as `kill -9` would at this point (nothing is flushed or dropped).
#[cfg(feature = "failpoints")]
pub fn crash(name: &str) -> ! {
    eprintln!("failpoint {name}: crash");
    // SAFETY: _exit(2) ends the process without running any Rust code; that is the point.
    unsafe { libc::_exit(CRASH_EXIT_CODE) }
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
