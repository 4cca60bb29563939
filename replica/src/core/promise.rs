//! Follower promises (DESIGN.md §5 "Leader lease"): a follower's acknowledgement carries
//! `promise_ms`, a promise not to lead a higher epoch before ack-sent + promise_ms·(1+ρ) on its
//! own clock (and not within that long of its own start, which covers restarts). A leader holds
//! a promise-lease while it has unexpired promises from **every** other member of the newest
//! directive, counted as promise_ms·(1−ρ) from the send time of the message acknowledged. So a
//! leader that all its followers still see keeps serving through the loss of etcd or of every
//! controller, and whoever is promoted next first outwaits its own promise.
//!
//! A leader whose controller revoked its lease (a switchover stops writes that way) does not
//! serve on promises until the next grant. Promises are off until the runtime configures them
//! ([`Core::set_promises`]).

use super::role::LeaderState;
use super::Core;
use baton_common::{Epoch, Lsn, NodeId};

/// What a follower acknowledges on its stream now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckOut {
    /// The leader's epoch on this stream.
    pub epoch: Epoch,
    pub flushed: Lsn,
    /// The promise made with this acknowledgement (0: none).
    pub promise_ms: u64,
    /// The leader's send time of the newest message received on the stream (the leader's
    /// clock), which the leader counts the promise from.
    pub echo_ms: u64,
}

/// The promise state of one replica.
#[derive(Clone, Debug, Default)]
pub(super) struct Promises {
    /// The promise length this replica gives (0: promises off).
    pub promise_ms: u64,
    /// This replica leads no epoch above the one it promised to before this instant: its start
    /// plus one promise, then every promise given.
    pub no_lead_before_ms: u64,
}

impl Core {
    /// Turns promises on with `promise_ms` (at most the controller's `lease_ms`), at this
    /// replica's start `now`: it leads nothing within one promise of its start, since a promise
    /// given before a crash may still be held.
    pub fn set_promises(&mut self, promise_ms: u64, now: u64) {
        self.promises.promise_ms = promise_ms;
        let wait = self.promised_wait(promise_ms);
        self.promises.no_lead_before_ms = self.promises.no_lead_before_ms.max(now + wait);
    }

    /// How long a promise given now binds this replica, on its own clock: promise·(1+ρ).
    fn promised_wait(&self, promise_ms: u64) -> u64 {
        (promise_ms as f64 * (1.0 + self.cfg.drift)).ceil() as u64
    }

    /// The instant before which this replica must not start leading a higher epoch.
    pub fn no_lead_before(&self) -> u64 {
        self.promises.no_lead_before_ms
    }

    /// The leader sent the message just received on `stream` at `sent_ms` (its clock); the
    /// next acknowledgement echoes the newest such time.
    pub fn follower_note_sent(&mut self, stream: u64, sent_ms: u64) {
        if let Ok(u) = self.upstream_mut(stream) {
            u.leader_sent_ms = u.leader_sent_ms.max(sent_ms);
        }
    }

    /// The acknowledgement to send now on `stream` (None: the stream is not current), with the
    /// promise it makes recorded first: the promise binds from this instant on.
    pub fn follower_ack(&mut self, now: u64, stream: u64) -> Option<AckOut> {
        let echo_ms = self.upstream_mut(stream).ok()?.leader_sent_ms;
        let epoch = self.epoch;
        let promise_ms = self.promises.promise_ms;
        if promise_ms > 0 {
            let until = now + self.promised_wait(promise_ms);
            self.promises.no_lead_before_ms = self.promises.no_lead_before_ms.max(until);
        }
        Some(AckOut {
            epoch,
            flushed: self.log.flushed,
            promise_ms,
            echo_ms,
        })
    }

    /// A follower's promise on the stream `stream`, counted from `echo_ms` (this leader's send
    /// time of what it acknowledged; a time not yet reached counts as now).
    pub fn leader_on_promise(
        &mut self,
        now: u64,
        id: &NodeId,
        stream: u64,
        echo_ms: u64,
        promise_ms: u64,
    ) {
        let drift = self.cfg.drift;
        let Some(l) = self.role.leader_mut() else {
            return;
        };
        let Some(p) = l.peers.get_mut(id).filter(|p| p.stream == stream) else {
            return;
        };
        let until = echo_ms.min(now) + (promise_ms as f64 * (1.0 - drift)) as u64;
        p.promised_until_ms = p.promised_until_ms.max(until);
    }

    /// Until when this leader holds a promise from every other member of the newest directive
    /// (0: not from all of them, or no other member).
    pub(super) fn promise_lease_until(&self, l: &LeaderState) -> u64 {
        if l.revoked {
            return 0;
        }
        let mut others = self
            .members
            .iter()
            .filter(|m| **m != self.cfg.id)
            .peekable();
        if others.peek().is_none() {
            return 0;
        }
        others
            .map(|m| l.peers.get(m).map_or(0, |p| p.promised_until_ms))
            .min()
            .unwrap_or(0)
    }
}
