//! Write-availability bounds in simulated time (issue 12 item 3, tests/README.md "bounds"): with
//! `SimConfig::bounds` the nemesis injects one fault at a time from [`BOUNDED`], lets the cluster
//! settle between them, and records each as an [`Episode`]; at the end every episode's longest
//! gap between acknowledged writes — from the fault's start until the next fault (or the end of
//! the faults) — is held exactly against its bound. Time is simulated, so a bound either holds
//! or the seed replays the run that broke it.

use super::{World, FAILURE_TIMEOUT_MS};
use crate::checker::{OpKind, OpResult, Outcome};

/// The nemesis entries that have a bound, in the order the summary prints them.
pub const BOUNDED: &[&str] = &[
    "crash",
    "isolate",
    "ctl-only",
    "followers-only",
    "ctl-cut",
    "ctl-crash",
    "ctl-pause",
    "ctl-etcd",
    "etcd-down",
    "etcd-timeouts",
    "switchover",
    "disk-stall",
];

/// How long the cluster settles after a fault healed before the next one (bounds mode).
pub(super) const SETTLE_US: u64 = 3_000_000;

/// A client's request timeout in bounds mode (a proxy's, not a patient caller's): a request
/// that went to a leader cut off mid-fault is retried elsewhere after this long.
pub(super) const BOUNDS_CLIENT_TIMEOUT_US: u64 = 500_000;

/// One injected fault and what the run saw of it.
#[derive(Clone, Debug)]
pub struct Episode {
    pub kind: String,
    /// The fault hit the replica that led when it began.
    pub on_leader: bool,
    pub start_us: u64,
    /// When the fault healed (for instant faults, the start).
    pub end_us: u64,
    pub bound_us: u64,
    /// The longest gap between acknowledged writes from the start until the next fault.
    pub gap_us: u64,
}

/// The write-availability bound of one fault, in µs: `hold_us` is how long it lasts.
///
/// - The leader lost (crashed, cut off from everyone, or cut from its followers while the
///   controllers still see it: a planned failover): writes resume within failure_timeout +
///   0.5 s; a pause or a stalled disk shorter than that costs its length + 0.5 s.
/// - A follower lost (crashed, isolated, cut from the other replicas): the leader waits for it
///   until the controller replaces it in the sync set (after failure_timeout) and the directive
///   arrives: failure_timeout + 0.5 s. A follower whose disk stalls holds the leader's commits
///   as long, plus the replacement's catch-up: min(stall, failure_timeout + 0.5 s) + 0.5 s.
/// - A switchover: the old leader stops, the target catches up, the epoch is written and both
///   are directed: 0.5 s (the real system's target is a pause of 100 ms at the median).
/// - Everything else keeps the leader and all its followers in touch (a replica cut from the
///   controllers only, a controller crashed, paused, cut from etcd or from the replicas, etcd
///   down or timing out): no gap over 0.3 s — the leader serves on its grant and then on its
///   followers' promises.
pub fn bound_us(kind: &str, on_leader: bool, hold_us: u64) -> u64 {
    let ft = FAILURE_TIMEOUT_MS * 1000;
    match kind {
        "crash" | "isolate" | "followers-only" => ft + 500_000,
        "disk-stall" if on_leader => hold_us.min(ft) + 500_000,
        "disk-stall" => hold_us.min(ft + 500_000) + 500_000,
        "switchover" => 500_000,
        _ => 300_000,
    }
}

impl World {
    /// Opens an episode for the fault just injected.
    pub(super) fn episode(&mut self, kind: &str, on_leader: bool, hold_us: u64) {
        let bound = bound_us(kind, on_leader, hold_us);
        self.report.episodes.push(Episode {
            kind: kind.to_string(),
            on_leader,
            start_us: self.now,
            end_us: self.now + hold_us,
            bound_us: bound,
            gap_us: 0,
        });
    }

    /// Measures every episode against its bound (at the end of the run); a gap past the bound
    /// is a violation.
    pub(super) fn check_bounds(&mut self, faults_end_us: u64) {
        let mut acks: Vec<u64> = self
            .ops
            .iter()
            .filter(|o| !o.any && !matches!(o.h.kind, OpKind::Read))
            .filter(|o| matches!(o.h.outcome, Outcome::Ok(OpResult::Applied(true))))
            .filter_map(|o| o.h.complete)
            .collect();
        acks.sort_unstable();
        let n = self.report.episodes.len();
        let mut broken = Vec::new();
        for i in 0..n {
            let e = &self.report.episodes[i];
            let until = self
                .report
                .episodes
                .get(i + 1)
                .map_or(faults_end_us, |x| x.start_us)
                .max(e.end_us);
            let mut last = e.start_us;
            let mut gap = 0;
            for &t in acks.iter().filter(|t| **t > e.start_us && **t <= until) {
                gap = gap.max(t - last);
                last = t;
            }
            gap = gap.max(until - last);
            let e = &mut self.report.episodes[i];
            e.gap_us = gap;
            if gap > e.bound_us {
                broken.push(format!(
                    "availability: {}{} at t={} ms (held {} ms): longest write gap {} ms, bound {} ms",
                    e.kind,
                    if e.on_leader { " (leader)" } else { "" },
                    e.start_us / 1000,
                    (e.end_us - e.start_us) / 1000,
                    gap / 1000,
                    e.bound_us / 1000
                ));
            }
        }
        for b in broken {
            self.violation(b);
        }
    }
}
