//! How long this leader has run alone (issue 12 item 5): a semi-sync leader with an empty waited
//! set acknowledges on its own flush, so one disk holds acknowledged writes. Measured on the
//! engine's clock at each [`Core::tick`] and reported in status, heartbeats and metrics.

use super::Core;
use baton_common::directive::Mode;

/// The running and total time of degraded leading.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct DegradedClock {
    /// When the current degraded period began (None: not degraded).
    since_ms: Option<u64>,
    /// Up to when `total_ms` is counted.
    counted_to_ms: u64,
    /// Every degraded period of this process so far, up to `counted_to_ms`.
    total_ms: u64,
}

impl Core {
    /// Whether this replica leads a started semi-sync epoch with nobody to wait for.
    pub fn is_degraded(&self) -> bool {
        self.mode == Mode::SemiSync
            && self.waited.is_empty()
            && self
                .role
                .leader()
                .is_some_and(|l| l.leading_epoch == Some(self.epoch))
    }

    /// Counts the time since the last call (called from `tick`).
    pub(super) fn account_degraded(&mut self, now: u64) {
        let d = &mut self.degraded;
        if d.since_ms.is_some() {
            d.total_ms += now.saturating_sub(d.counted_to_ms);
        }
        d.counted_to_ms = now;
        let degraded = self.is_degraded();
        let d = &mut self.degraded;
        match (degraded, d.since_ms) {
            (true, None) => d.since_ms = Some(now),
            (false, Some(_)) => d.since_ms = None,
            _ => {}
        }
    }

    /// How long the current degraded period has lasted (0: not degraded).
    pub fn degraded_for_ms(&self, now: u64) -> u64 {
        self.degraded.since_ms.map_or(0, |s| now.saturating_sub(s))
    }

    /// Every degraded period of this process, the current one included.
    pub fn degraded_total_ms(&self, now: u64) -> u64 {
        let d = &self.degraded;
        d.total_ms
            + d.since_ms
                .map_or(0, |_| now.saturating_sub(d.counted_to_ms))
    }
}
