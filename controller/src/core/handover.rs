//! Controller handover (DESIGN.md §5): an active controller that hears fewer members than a
//! standby has published, continuously for `failure_timeout`, resigns its election so that the
//! better-connected standby takes over, and campaigns again only after a back-off
//! ([`HANDOVER_BACKOFF_FTS`] failure timeouts), so that two controllers never ping-pong.
//!
//! Pure like the rest of the core: the runtime publishes the counts and feeds the best
//! standby's in (`standby_hears`, `standby_id`), executes the resign write (its journal entry
//! and the deletion of the election key, in one transaction guarded by this controller's term)
//! and asks [`ClusterCore::may_campaign`] before campaigning.

use super::{ClusterCore, Now, Write};
use crate::journal::Kind;

/// How many failure timeouts a controller that handed over waits before it campaigns again.
pub const HANDOVER_BACKOFF_FTS: u64 = 5;

/// How often the runtime publishes this controller's count (when it changed).
pub const HEARS_PUBLISH_EVERY_MS: u64 = 250;

impl ClusterCore {
    /// The number of members this controller publishes as hearing: 0 while it backs off after
    /// a handover. It will not take over then, so it must neither draw a handover to itself nor
    /// hold back the active controller's failover decisions ("a controller that hears fewer
    /// members than a standby decides no failover").
    ///
    /// The count is of members heard within a window shorter than the failure timeout by the
    /// publication's lag (its period, two heartbeat intervals of phase between the controllers,
    /// and the read): a member that went silent (a killed leader) leaves the published count
    /// before the active controller's own count, counted over the whole failure timeout, drops
    /// it. Counted over the same window, a standby's stale count still held the dead leader when
    /// the active controller could prove the failure, and held every failover back by up to
    /// the publication period (found by `baton-bench failover`: promotion ~990 ms after the
    /// kill with an 800 ms failure timeout; the journal said "this controller hears 2 members, a
    /// standby hears 3"). A member a standby hears steadily, and the active one does not, is in
    /// both windows: the guard against a partly cut-off active controller is unchanged.
    pub fn published_hears(&self, now: Now) -> usize {
        if !self.may_campaign(now) {
            return 0;
        }
        let lag = HEARS_PUBLISH_EVERY_MS + 2 * self.cfg.heartbeat_interval_ms + 50;
        let window = self
            .cfg
            .failure_timeout_ms
            .saturating_sub(lag)
            .max(2 * self.cfg.heartbeat_interval_ms);
        self.heard
            .values()
            .filter(|h| now.ms.saturating_sub(h.at_ms) < window)
            .count()
    }

    /// Whether this controller may campaign for the election now (not within the back-off of a
    /// handover it made).
    pub fn may_campaign(&self, now: Now) -> bool {
        now.ms >= self.campaign_after_ms
    }

    /// Tracks, on every tick while active, since when this controller has heard fewer members
    /// than the best standby; any tick that hears as many resets it.
    pub(super) fn track_handover(&mut self, now: Now) {
        if self.hears(now) < self.standby_hears {
            self.ts.fewer_since_ms.get_or_insert(now.ms);
        } else {
            self.ts.fewer_since_ms = None;
        }
    }

    /// The resign write, once this controller has heard fewer members than a standby for a
    /// failure timeout: a journal entry, with `resign` set (the runtime deletes the election
    /// key in the same guarded transaction).
    pub(super) fn handover(&mut self, now: Now) -> Option<Write> {
        let since = self.ts.fewer_since_ms?;
        let lasted = now.ms.saturating_sub(since);
        if lasted < self.cfg.failure_timeout_ms || self.state().is_none() {
            return None;
        }
        let standby = self
            .standby_id
            .as_deref()
            .map_or("a standby".to_string(), |id| format!("standby {id}"));
        let msg = format!(
            "this controller hears {} members, {standby} hears {} for {:.1} s: resigning",
            self.hears(now),
            self.standby_hears,
            lasted as f64 / 1000.0
        );
        let inputs = self.inputs(now);
        let mut w = self.write(now, None, Kind::Handover, msg, inputs)?;
        w.resign = true;
        Some(w)
    }

    /// A resign write ended: committed, or with an unknown outcome (the election key may be
    /// gone). Either way this controller stops acting and backs off; a campaign during the
    /// back-off only reads the election key, so a resign that did not happen shows up as this
    /// controller's term again.
    pub(super) fn resigned(&mut self, now: Now) {
        self.campaign_after_ms = now
            .ms
            .saturating_add(HANDOVER_BACKOFF_FTS * self.cfg.failure_timeout_ms);
        self.on_election(now, None, None);
    }
}
