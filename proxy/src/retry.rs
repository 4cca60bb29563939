//! Which failures a forwarded request may be re-sent after (DESIGN.md §7), as a pure decision
//! table: a request is re-sent only when it was certainly **not** applied — there was no
//! target, the connection could not be made (nothing of the request was written), or a replica
//! answered 503 (not_leader, stale_epoch, shutting_down, overloaded: not appended). Anything
//! that may have reached a leader — a timeout, a connection cut after it was made, a 504 — is
//! never re-sent: a replay could apply a write twice, or apply a compare-and-set the client was
//! told had failed. The runtime (`forward.rs`) does the waiting; this file only decides.

use std::time::Duration;

/// What one forwarded attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// There was nowhere to send it: no leader known (or no member for an `any` read).
    NoTarget,
    /// The connection could not be made (refused, unreachable, connect timeout): no byte of the
    /// request was written.
    ConnectFailed,
    /// A connection was made (or reused) and broke before a whole reply arrived: the request
    /// may have been written, in part or in full.
    Broken,
    /// No whole reply within `timing.request_timeout_ms`, or the controllers named another
    /// leader while waiting (the old one is cut off or fenced: its reply may never come).
    TimedOut,
    /// A whole reply with this status (`code`: the `error` of a JSON error body, if any).
    Replied { status: u16, code: Option<String> },
}

/// What to do with the client's request after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Answer the client with the replica's reply as it is (including the replica's own 504).
    PassThrough,
    /// Not applied: hold the request (while `timing.failover_buffer_ms` lasts) and re-send it,
    /// to the new leader once one is known.
    Resend,
    /// May have been applied: answer `504 outcome_unknown`; never re-send.
    OutcomeUnknown,
}

/// The decision table.
pub fn classify(a: &Attempt) -> Disposition {
    match a {
        Attempt::NoTarget | Attempt::ConnectFailed => Disposition::Resend,
        Attempt::Broken | Attempt::TimedOut => Disposition::OutcomeUnknown,
        // Every 503 of the client API means "not appended" (not_leader, stale_epoch,
        // shutting_down, overloaded); a 504 is the replica's own outcome_unknown.
        Attempt::Replied { status: 503, .. } => Disposition::Resend,
        // 507 insufficient_storage: the leader's disk is full, the write was not appended; the
        // controller replaces that leader (DESIGN §6), so hold it for the next one.
        Attempt::Replied { status: 507, .. } => Disposition::Resend,
        Attempt::Replied { .. } => Disposition::PassThrough,
    }
}

/// The label a re-send is counted under in `baton_proxy_retries_total`.
pub fn resend_reason(a: &Attempt) -> &str {
    match a {
        Attempt::NoTarget => "no_leader",
        Attempt::ConnectFailed => "connect_failed",
        Attempt::Replied {
            code: Some(code), ..
        } => match code.as_str() {
            "not_leader"
            | "stale_epoch"
            | "shutting_down"
            | "overloaded"
            | "insufficient_storage" => code,
            _ => "unavailable",
        },
        _ => "unavailable",
    }
}

/// The wait before the `n`-th re-send (from 0) to the same view, unless the view changes first:
/// 10 ms doubling to 100 ms. Short, because a new leader typically answers 503 only for the few
/// milliseconds until its leader-start record commits.
pub fn resend_delay(n: u32) -> Duration {
    Duration::from_millis((10u64 << n.min(4)).min(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replied(status: u16, code: Option<&str>) -> Attempt {
        Attempt::Replied {
            status,
            code: code.map(str::to_string),
        }
    }

    /// One row a case: the attempt, the decision, and the retry reason label for re-sends.
    #[test]
    fn only_requests_that_were_certainly_not_applied_are_resent() {
        use Disposition::*;
        let rows: Vec<(Attempt, Disposition, &str)> = vec![
            (Attempt::NoTarget, Resend, "no_leader"),
            (Attempt::ConnectFailed, Resend, "connect_failed"),
            (replied(503, Some("not_leader")), Resend, "not_leader"),
            (replied(503, Some("stale_epoch")), Resend, "stale_epoch"),
            (replied(503, Some("shutting_down")), Resend, "shutting_down"),
            (replied(503, Some("overloaded")), Resend, "overloaded"),
            (replied(503, None), Resend, "unavailable"),
            (
                replied(507, Some("insufficient_storage")),
                Resend,
                "insufficient_storage",
            ),
            // May have been applied: never re-sent.
            (Attempt::Broken, OutcomeUnknown, ""),
            (Attempt::TimedOut, OutcomeUnknown, ""),
            // The replica's own outcome_unknown is passed on as it is, never re-sent.
            (replied(504, Some("outcome_unknown")), PassThrough, ""),
            (replied(200, None), PassThrough, ""),
            (replied(404, Some("not_found")), PassThrough, ""),
            (replied(412, Some("precondition_failed")), PassThrough, ""),
            (replied(400, Some("bad_request")), PassThrough, ""),
            (replied(413, Some("too_large")), PassThrough, ""),
            (replied(500, Some("fatal")), PassThrough, ""),
            (replied(502, None), PassThrough, ""),
        ];
        for (a, want, reason) in rows {
            assert_eq!(classify(&a), want, "{a:?}");
            if want == Resend {
                assert_eq!(resend_reason(&a), reason, "{a:?}");
            }
        }
    }

    #[test]
    fn resend_delays_grow_to_a_cap() {
        let d: Vec<u64> = (0..7).map(|n| resend_delay(n).as_millis() as u64).collect();
        assert_eq!(d, vec![10, 20, 40, 80, 100, 100, 100]);
        assert_eq!(resend_delay(u32::MAX), Duration::from_millis(100));
    }
}
