//! What the proxy knows about its cluster, as a pure value: the leader and the rev of the
//! controller answer that named it, the highest epoch seen, and the members' addresses for
//! `consistency=any` reads. Within one cluster state (one etcd key, from `init` or `recover` on)
//! answers are applied in rev order — a rev is an etcd mod revision of that key, the same scale
//! on every controller — so an older answer (a lagging standby's, a long-poll that returns late)
//! never moves the view back, and the epoch only grows.
//!
//! A state can be replaced by a new one, though: etcd emptied and the cluster initialized again,
//! restored from a backup, `recover`. Its revs start lower, and its epoch may too (a fresh
//! cluster starts at 1). The leader answer carries no identity of the state (see
//! [`LeaderAnswer::state_id`]), so the view tells a new state from an old answer by two rules:
//! - **certain**: within one state the epoch never falls as the rev grows, so an active
//!   controller's answer at a rev ≤ the view's with an epoch above the view's state epoch comes
//!   from another state, a newer one (a new state's epoch is 1 + the highest any member reports):
//!   it is followed at once;
//! - **persistent**: when every active controller's answer has been behind the view (a lower rev,
//!   or a lower epoch) for [`ResetRule::after_ms`] and at least [`ResetRule::answers`] answers,
//!   with no replica reply revealing an epoch above the controllers' in that time, the view is
//!   reset to what they say, epoch included. Within one state an active controller lags only
//!   briefly; a replica ahead of the controllers means etcd is behind the replicas (a stale
//!   restore before `recover`), when the old leader may well still be serving.
//!
//! After a reset, the old state's stragglers (a standby still reading the old state, a late
//! answer) would look newer; a standby's answer inside the old state's range (rev and epoch both
//! at most the old highs) is ignored until the view's rev passes that range. Lowering the epoch
//! is safe because the proxy fences nothing: replicas check epochs themselves (DESIGN.md §7); the
//! epoch the proxy sends only narrows windows, and one above every real epoch would make every
//! request fail.
//!
//! No I/O and no clock here: `controllers.rs` feeds answers in with the time, `forward.rs` reads
//! the view and feeds epochs from replica replies back.

use serde::Deserialize;

/// The body of a controller's `GET /v1/clusters/{c}/leader` (DESIGN.md §7).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct LeaderAnswer {
    /// The recorded leader's member id; `null` while there is none (promoting, before init).
    #[serde(default)]
    pub id: Option<String>,
    /// The leader's address as declared in the answering controller's config (`host:port`).
    #[serde(default)]
    pub addr: Option<String>,
    /// The cluster state's epoch; `null` before the state exists.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// The etcd mod revision of the cluster state the answer was made from (0: none read).
    pub rev: u64,
    /// The answering controller is the active one.
    pub from_active: bool,
    /// An identity of the cluster state, new at every `init` and `recover` and kept by every
    /// later write (not sent by today's controllers: `null`). When two answers both carry one,
    /// revs are compared only between answers with the same identity, and an active
    /// controller's answer with another one replaces the view at once.
    #[serde(default)]
    pub state_id: Option<String>,
}

/// Where requests for the leader go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub id: String,
    /// Base URL, `https://host:port` (`http://` in insecure mode).
    pub url: String,
}

/// Why the view took a new cluster state over the one it held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewStateWhy {
    /// An active answer with an epoch above the view's state epoch at a rev not above it.
    HigherEpochLowerRev,
    /// An active answer with another `state_id`.
    OtherStateId,
    /// Every active answer was behind the view for this long and this many answers.
    BehindFor { ms: u64, answers: u32 },
}

/// A cluster state replaced by a new one (for the WARN saying why).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewState {
    pub why: NewStateWhy,
    /// The view's epoch and rev before.
    pub old_epoch: u64,
    pub old_rev: u64,
}

/// What applying a controller answer changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Older than the view (or equal and not preferred): nothing changed.
    Ignored,
    /// The view moved: requests waiting for a leader should look again.
    Changed {
        /// The rev grew (an equal-rev answer from an active controller may replace a standby's).
        rev_moved: bool,
        /// Another leader than the last one known (not counting "no leader" in between).
        leader_changed: bool,
        /// The answer is from a new cluster state, replacing the view's rev and epoch.
        new_state: Option<NewState>,
    },
}

/// When a view that every active controller contradicts is reset (see the file comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetRule {
    /// The active answers must have been behind for at least this long…
    pub after_ms: u64,
    /// …and at least this many of them in a row.
    pub answers: u32,
}

impl Default for ResetRule {
    /// The config's default (`timing.state_reset_after_ms`) and three answers: with the default
    /// 5 s long-poll, a controller behind the view answers every 5 s.
    fn default() -> Self {
        ResetRule {
            after_ms: 10_000,
            answers: 3,
        }
    }
}

/// Active controllers' answers behind the view since `since_ms`, none in between that was not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behind {
    pub since_ms: u64,
    pub answers: u32,
    /// The epoch of the latest such answer.
    pub epoch: u64,
}

/// The proxy's view of one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub reset_rule: ResetRule,
    /// The highest rev applied from a controller answer of the current cluster state; goes
    /// back only when the state is replaced.
    pub rev: u64,
    /// The epoch of the cluster state at `rev` (0: none); at most `epoch`.
    pub state_epoch: u64,
    /// The `state_id` of the answer applied at `rev`, if it carried one.
    pub state_id: Option<String>,
    /// The answer applied at `rev` came from an active controller.
    pub from_active: bool,
    /// The highest epoch seen from controllers and replica replies since the cluster state was
    /// last replaced. Sent as `Baton-Min-Epoch` on every forwarded request.
    pub epoch: u64,
    /// The leader named at `rev`, if it has an address.
    pub leader: Option<Leader>,
    /// The last leader id ever known (survives "no leader" phases), to count changes.
    pub last_leader_id: Option<String>,
    /// How many times the leader changed since start.
    pub leader_changes: u64,
    /// How many times the cluster state was replaced by a new one since start.
    pub state_resets: u64,
    /// The highest (rev, epoch) of the states replaced: a standby's answer within both is a
    /// straggler of an old state. Cleared once `rev` passes it.
    pub retired: Option<(u64, u64)>,
    /// The `state_id` of the state last replaced, if it had one: answers carrying it are old.
    pub retired_state_id: Option<String>,
    /// Active answers behind the view, counting towards a reset.
    pub behind: Option<Behind>,
    /// Base URLs of the declared members (for `consistency=any` reads), from the cluster view
    /// at `members_rev`.
    pub members: Vec<String>,
    /// The rev of the cluster view `members` came from (0: never fetched, or the state was
    /// replaced since).
    pub members_rev: u64,
    /// Replicas are reached over TLS: base URLs are `https://` (set once, from the config).
    pub https: bool,
}

/// `https://host:port` (`http://` unless `https`) from a member address: `host:port` as the
/// controllers give it, or a URL, whose scheme is replaced (the proxy speaks TLS to every node or
/// to none).
pub fn base_url(addr: &str, https: bool) -> String {
    let a = addr.trim().trim_end_matches('/');
    let a = a.split_once("://").map_or(a, |(_, rest)| rest);
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{a}")
}

/// `host:port` from a base URL.
pub fn addr_of(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

impl ClusterView {
    pub fn new(reset_rule: ResetRule) -> ClusterView {
        ClusterView {
            reset_rule,
            ..ClusterView::default()
        }
    }

    /// Applies a controller's leader answer received at `now_ms` (any monotonic clock in ms).
    /// Within one cluster state a newer rev always wins; at an equal rev an active controller's
    /// answer replaces a standby's (both read the same etcd state, but addresses come from each
    /// controller's own config, and the active one's is the one that counts). Across states,
    /// see the file comment. An answer without a state (rev 0) says nothing and changes nothing.
    pub fn on_leader_answer(&mut self, now_ms: u64, a: &LeaderAnswer) -> Applied {
        if a.rev == 0 {
            return Applied::Ignored;
        }
        if a.state_id.is_some() && a.state_id == self.retired_state_id {
            // An answer of a state replaced already, whoever sends it: not even towards a reset.
            return Applied::Ignored;
        }
        let epoch = a.epoch.unwrap_or(0);
        let old = (self.epoch, self.rev);
        let other_id = matches!((&a.state_id, &self.state_id), (Some(x), Some(y)) if x != y);
        let mut new_state = None;
        let applied = if other_id {
            // Answers of two states with identities: only the active controller's counts.
            if a.from_active {
                new_state = Some(NewStateWhy::OtherStateId);
                self.replace(a, epoch, false)
            } else {
                Applied::Ignored
            }
        } else if self.straggler(a, epoch) {
            Applied::Ignored
        } else if a.from_active && self.rev > 0 && a.rev <= self.rev && epoch > self.state_epoch {
            new_state = Some(NewStateWhy::HigherEpochLowerRev);
            self.replace(a, epoch, true)
        } else if a.rev > self.rev || (a.rev == self.rev && a.from_active && !self.from_active) {
            self.adopt(a, epoch)
        } else {
            Applied::Ignored
        };
        let applied = match (applied, new_state) {
            (
                Applied::Changed {
                    rev_moved,
                    leader_changed,
                    ..
                },
                Some(why),
            ) => Applied::Changed {
                rev_moved,
                leader_changed,
                new_state: Some(NewState {
                    why,
                    old_epoch: old.0,
                    old_rev: old.1,
                }),
            },
            (applied, _) => applied,
        };
        if !a.from_active || new_state.is_some() {
            return applied;
        }
        // An active answer: does it agree with the view, or count towards a reset?
        if a.rev >= self.rev && epoch >= self.epoch {
            self.behind = None;
            return applied;
        }
        let b = self.behind.get_or_insert(Behind {
            since_ms: now_ms,
            answers: 0,
            epoch,
        });
        b.answers += 1;
        b.epoch = epoch;
        let (ms, answers) = (now_ms.saturating_sub(b.since_ms), b.answers);
        if ms < self.reset_rule.after_ms || answers < self.reset_rule.answers {
            return applied;
        }
        let Applied::Changed { leader_changed, .. } = self.replace(a, epoch, false) else {
            return applied;
        };
        Applied::Changed {
            rev_moved: true,
            leader_changed,
            new_state: Some(NewState {
                why: NewStateWhy::BehindFor { ms, answers },
                old_epoch: old.0,
                old_rev: old.1,
            }),
        }
    }

    /// A standby's answer within the range of a replaced state.
    fn straggler(&self, a: &LeaderAnswer, epoch: u64) -> bool {
        !a.from_active && self.retired.is_some_and(|(r, e)| a.rev <= r && epoch <= e)
    }

    /// Takes `a` as a new cluster state: the old one's range is retired, the member list is to
    /// be read again. The epoch becomes the new state's, or with `keep_epoch` the higher of the
    /// two (when the new state's epoch is the higher anyway but a replica showed one above).
    fn replace(&mut self, a: &LeaderAnswer, epoch: u64, keep_epoch: bool) -> Applied {
        let (r, e) = self.retired.unwrap_or((0, 0));
        self.retired = Some((r.max(self.rev), e.max(self.epoch)));
        if self.state_id.is_some() && self.state_id != a.state_id {
            self.retired_state_id = self.state_id.take();
        }
        if !keep_epoch {
            self.epoch = 0;
        }
        self.rev = 0;
        self.from_active = false;
        self.members_rev = 0;
        self.behind = None;
        self.state_resets += 1;
        self.adopt(a, epoch)
    }

    /// Applies `a` as the view's newest answer.
    fn adopt(&mut self, a: &LeaderAnswer, epoch: u64) -> Applied {
        let rev_moved = a.rev > self.rev;
        self.rev = a.rev;
        self.state_epoch = epoch;
        self.state_id = a.state_id.clone();
        self.from_active = a.from_active;
        self.raise_epoch(epoch);
        if self.retired.is_some_and(|(r, _)| self.rev > r) {
            self.retired = None;
        }
        let leader = match (&a.id, &a.addr) {
            (Some(id), Some(addr)) if !addr.trim().is_empty() => Some(Leader {
                id: id.clone(),
                url: base_url(addr, self.https),
            }),
            _ => None,
        };
        let mut leader_changed = false;
        if let Some(l) = &leader {
            if self.last_leader_id.as_deref() != Some(l.id.as_str()) {
                leader_changed = self.last_leader_id.is_some();
                if leader_changed {
                    self.leader_changes += 1;
                }
                self.last_leader_id = Some(l.id.clone());
            }
        }
        self.leader = leader;
        Applied::Changed {
            rev_moved,
            leader_changed,
            new_state: None,
        }
    }

    /// Raises the highest epoch seen; true if it grew.
    pub fn raise_epoch(&mut self, e: u64) -> bool {
        if e > self.epoch {
            self.epoch = e;
            true
        } else {
            false
        }
    }

    /// An epoch from a replica's reply at `now_ms`: raises the epoch, and one above what the
    /// active controllers say holds off a reset (the replicas are ahead of etcd, not the view
    /// ahead of the cluster).
    pub fn on_replica_epoch(&mut self, now_ms: u64, e: u64) -> bool {
        if let Some(b) = &mut self.behind {
            if e > b.epoch {
                b.since_ms = now_ms;
                b.answers = 0;
            }
        }
        self.raise_epoch(e)
    }

    /// Replaces the member list with the one read from a cluster view at `rev`, unless the list
    /// held is from a newer view. True if it was applied.
    pub fn on_members(&mut self, rev: u64, addrs: &[String]) -> bool {
        if rev < self.members_rev || (rev == self.members_rev && !self.members.is_empty()) {
            return false;
        }
        self.members_rev = rev;
        self.members = addrs.iter().map(|a| base_url(a, self.https)).collect();
        true
    }

    /// The target of the `turn`-th `consistency=any` read: round-robin over the members,
    /// the leader when no member list is known.
    pub fn any_target(&self, turn: usize) -> Option<&str> {
        if self.members.is_empty() {
            return self.leader.as_ref().map(|l| l.url.as_str());
        }
        Some(self.members[turn % self.members.len()].as_str())
    }

    /// The leader's base URL, if one is known.
    pub fn leader_url(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.url.as_str())
    }

    /// Invariants that hold after every step (checked by tests).
    pub fn check_invariants(&self) {
        assert!(self.state_epoch <= self.epoch, "the state epoch is seen");
        if let Some((r, _)) = self.retired {
            assert!(
                self.rev <= r,
                "a retired range is kept only while the rev is in it"
            );
        }
        assert!(
            self.leader.is_none() || self.rev > 0,
            "a leader needs an answer"
        );
        if let Some(l) = &self.leader {
            assert_eq!(
                self.last_leader_id.as_deref(),
                Some(l.id.as_str()),
                "the leader is the last one known"
            );
        }
    }
}

#[cfg(test)]
mod tests;
