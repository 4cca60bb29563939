//! Named fault points of the controller (TESTING.md, tier 2), compiled in only with the
//! `failpoints` feature (the `baton-controller-failpoints` binary); elsewhere they are no-ops.
//! Armed like the replica's (`replica/src/faults.rs`): `FAILPOINTS` at start, or
//! `PUT /v1/failpoints/{name}` with the actions as body. `return(crash)` ends the process on
//! the spot (`_exit`, exit status [`CRASH_EXIT_CODE`]); `return(error)` is supported
//! where the table says so. Evaluating a point and the router are shared with the replica
//! (`baton_runtime::faults`).
//!
//! | point | where | `error` means |
//! |---|---|---|
//! | `promotion.before_epoch_write` | before the write of `{epoch N+1, leader null, promoting}` | — |
//! | `promotion.after_epoch_write` | that write committed, before this controller acts on it | — |
//! | `promotion.before_record` | before the write recording the new leader (`steady`) | — |
//! | `promotion.before_direct` | the new leader recorded, before anyone is directed by it | — |
//! | `lease.before_renew` | before each keepalive attempt of the etcd election lease | the attempt fails: retried on a new stream after 100 ms; past the trusted window the controller stops acting until one succeeds |

#[cfg(feature = "failpoints")]
pub use baton_runtime::faults::router;
pub use baton_runtime::faults::{hit, CRASH_EXIT_CODE};

macro_rules! fault {
    ($name:literal) => {
        if $crate::runtime::faults::hit($name).is_some() {
            tracing::error!(
                point = $name,
                "failpoint: this point has no error path (use crash); ignored"
            );
        }
    };
}
pub(crate) use fault;
