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
    /// Base URL, `http://host:port`.
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
}

/// `http://host:port` from a member address (`host:port`, or already a URL).
pub fn base_url(addr: &str) -> String {
    let a = addr.trim().trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
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
                url: base_url(addr),
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
        self.members = addrs.iter().map(|a| base_url(a)).collect();
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
mod tests {
    use super::*;

    fn ans(id: Option<&str>, epoch: u64, rev: u64, active: bool) -> LeaderAnswer {
        LeaderAnswer {
            id: id.map(str::to_string),
            addr: id.map(|i| format!("127.0.0.1:71{:02}", i.len())),
            epoch: Some(epoch),
            rev,
            from_active: active,
            state_id: None,
        }
    }

    fn ch(rev_moved: bool, leader_changed: bool) -> Applied {
        Applied::Changed {
            rev_moved,
            leader_changed,
            new_state: None,
        }
    }

    #[test]
    fn answers_apply_in_rev_order_and_epochs_never_go_back() {
        let mut v = ClusterView::default();
        let steps: Vec<(LeaderAnswer, Applied, Option<&str>, u64, u64)> = vec![
            // (answer, result, leader id after, epoch after, rev after)
            (
                ans(Some("r1"), 3, 10, true),
                ch(true, false),
                Some("r1"),
                3,
                10,
            ),
            // An older answer (a lagging standby) changes nothing.
            (
                ans(Some("r2"), 2, 9, false),
                Applied::Ignored,
                Some("r1"),
                3,
                10,
            ),
            // The same rev again: nothing new.
            (
                ans(Some("r1"), 3, 10, true),
                Applied::Ignored,
                Some("r1"),
                3,
                10,
            ),
            // Promoting: epoch N+1, no leader yet.
            (ans(None, 4, 11, true), ch(true, false), None, 4, 11),
            // The new leader: a change from r1, though "none" came in between.
            (
                ans(Some("r2"), 4, 12, false),
                ch(true, true),
                Some("r2"),
                4,
                12,
            ),
            // The active controller's answer at the same rev replaces the standby's.
            (
                ans(Some("r2"), 4, 12, true),
                ch(false, false),
                Some("r2"),
                4,
                12,
            ),
            // ...but a standby's never replaces the active one's at the same rev.
            (
                ans(Some("r3"), 4, 12, false),
                Applied::Ignored,
                Some("r2"),
                4,
                12,
            ),
        ];
        for (i, (a, want, leader, epoch, rev)) in steps.into_iter().enumerate() {
            assert_eq!(v.on_leader_answer(0, &a), want, "step {i}");
            v.check_invariants();
            assert_eq!(v.leader.as_ref().map(|l| l.id.as_str()), leader, "step {i}");
            assert_eq!((v.epoch, v.rev), (epoch, rev), "step {i}");
        }
        assert_eq!(v.leader_changes, 1);
        // A replica's reply may carry a higher epoch than the controllers told so far.
        assert!(v.raise_epoch(5));
        assert!(!v.raise_epoch(4));
        assert_eq!(v.epoch, 5);
        // A controller answer with a lower epoch does not lower it.
        v.on_leader_answer(0, &ans(Some("r2"), 4, 13, true));
        assert_eq!(v.epoch, 5);
    }

    #[test]
    fn a_leader_without_an_address_is_no_target() {
        let mut v = ClusterView::default();
        let a = LeaderAnswer {
            id: Some("r1".into()),
            addr: None,
            epoch: Some(1),
            rev: 5,
            from_active: true,
            state_id: None,
        };
        assert!(matches!(v.on_leader_answer(0, &a), Applied::Changed { .. }));
        assert_eq!(v.leader, None);
        v.check_invariants();
    }

    #[test]
    fn any_reads_rotate_over_members_and_fall_back_to_the_leader() {
        let mut v = ClusterView::default();
        assert_eq!(v.any_target(0), None);
        v.on_leader_answer(
            0,
            &LeaderAnswer {
                id: Some("r1".into()),
                addr: Some("127.0.0.1:7101".into()),
                epoch: Some(1),
                rev: 5,
                from_active: true,
                state_id: None,
            },
        );
        assert_eq!(v.any_target(7), Some("http://127.0.0.1:7101"));
        let m = vec!["127.0.0.1:7101".to_string(), "127.0.0.1:7102".to_string()];
        assert!(v.on_members(5, &m));
        assert_eq!(v.any_target(0), Some("http://127.0.0.1:7101"));
        assert_eq!(v.any_target(1), Some("http://127.0.0.1:7102"));
        assert_eq!(v.any_target(2), Some("http://127.0.0.1:7101"));
        // An older member list does not replace a newer one.
        assert!(!v.on_members(4, &m[..1]));
        assert_eq!(v.members.len(), 2);
        assert!(v.on_members(6, &m[..1]));
        assert_eq!(v.members, vec!["http://127.0.0.1:7101"]);
    }

    #[test]
    fn base_urls() {
        assert_eq!(base_url("127.0.0.1:1"), "http://127.0.0.1:1");
        assert_eq!(base_url("http://h:1/"), "http://h:1");
    }

    fn at(v: &mut ClusterView, now: u64, a: LeaderAnswer) -> Applied {
        let r = v.on_leader_answer(now, &a);
        v.check_invariants();
        r
    }

    fn new_state(leader_changed: bool, why: NewStateWhy, old: (u64, u64)) -> Applied {
        Applied::Changed {
            rev_moved: true,
            leader_changed,
            new_state: Some(NewState {
                why,
                old_epoch: old.0,
                old_rev: old.1,
            }),
        }
    }

    fn rule() -> ResetRule {
        ResetRule {
            after_ms: 1000,
            answers: 3,
        }
    }

    /// Issue 10 item 9: etcd restored and `recover` run, the new state at a lower rev with a
    /// higher epoch. No answer of the old state can look like that: followed at once.
    #[test]
    fn a_new_state_with_a_higher_epoch_at_a_lower_rev_is_followed_at_once() {
        let mut v = ClusterView::new(rule());
        assert_eq!(at(&mut v, 0, ans(Some("r1"), 5, 40, true)), ch(true, false));
        // A standby's word is not enough.
        assert_eq!(
            at(&mut v, 10, ans(Some("r2"), 6, 12, false)),
            Applied::Ignored
        );
        assert_eq!(
            at(&mut v, 20, ans(Some("r2"), 6, 12, true)),
            new_state(true, NewStateWhy::HigherEpochLowerRev, (5, 40))
        );
        assert_eq!((v.epoch, v.state_epoch, v.rev), (6, 6, 12));
        assert_eq!(
            (v.retired, v.state_resets, v.members_rev),
            (Some((40, 5)), 1, 0)
        );
        // A standby still reading the old state is a straggler, not a newer rev.
        assert_eq!(
            at(&mut v, 30, ans(Some("r1"), 5, 40, false)),
            Applied::Ignored
        );
        assert_eq!(v.leader_url(), Some("http://127.0.0.1:7102"));
        // The new state moves on as usual, from standbys too, and once its rev passes the old
        // range nothing is remembered of it.
        assert_eq!(
            at(&mut v, 40, ans(Some("r2"), 6, 13, false)),
            ch(true, false)
        );
        assert_eq!(
            at(&mut v, 50, ans(Some("r2"), 6, 41, true)),
            ch(true, false)
        );
        assert_eq!(v.retired, None);
        assert_eq!(
            at(&mut v, 60, ans(Some("r1"), 5, 40, false)),
            Applied::Ignored
        );
        // The same epoch at a lower rev is no proof (a late answer of the same state could be
        // that): it counts towards the slow rule only.
        assert_eq!(at(&mut v, 70, ans(None, 6, 30, true)), Applied::Ignored);
        assert_eq!(v.behind.as_ref().map(|b| b.answers), Some(1));
    }

    /// Issue 10 item 9: etcd emptied and the cluster initialized again with fresh replicas: a
    /// lower rev *and* a lower epoch. Followed once every active answer has said so for the grace
    /// period and enough answers; the epoch sent goes down with it.
    #[test]
    fn a_lower_state_is_followed_once_the_active_controllers_said_so_for_the_grace_period() {
        let mut v = ClusterView::new(rule());
        at(&mut v, 0, ans(Some("r1"), 7, 40, true));
        let lower = || ans(Some("r2"), 1, 3, true);
        type Row = (u64, LeaderAnswer, Applied, Option<(u64, u32)>);
        let rows: Vec<Row> = vec![
            // (now, answer, result, behind (since, answers) after)
            (100, lower(), Applied::Ignored, Some((100, 1))),
            // Standbys do not count either way.
            (
                600,
                ans(Some("r2"), 1, 3, false),
                Applied::Ignored,
                Some((100, 1)),
            ),
            (
                650,
                ans(Some("r1"), 7, 40, false),
                Applied::Ignored,
                Some((100, 1)),
            ),
            // An active controller that still reads the old state: start again.
            (700, ans(Some("r1"), 7, 40, true), Applied::Ignored, None),
            // No state at all (etcd emptied, not yet initialized) says nothing.
            (750, ans(None, 0, 0, true), Applied::Ignored, None),
            (800, lower(), Applied::Ignored, Some((800, 1))),
            (1300, lower(), Applied::Ignored, Some((800, 2))),
            (1700, lower(), Applied::Ignored, Some((800, 3))),
            (
                1800,
                lower(),
                new_state(
                    true,
                    NewStateWhy::BehindFor {
                        ms: 1000,
                        answers: 4,
                    },
                    (7, 40),
                ),
                None,
            ),
            // A straggler of the old state from a standby is ignored...
            (1900, ans(Some("r1"), 7, 40, false), Applied::Ignored, None),
            // ...while the new state moves on (a failover in it).
            (2000, ans(Some("r3"), 2, 5, true), ch(true, true), None),
        ];
        for (i, (now, a, want, behind)) in rows.into_iter().enumerate() {
            assert_eq!(at(&mut v, now, a), want, "row {i}");
            let b = v.behind.as_ref().map(|b| (b.since_ms, b.answers));
            assert_eq!(b, behind, "row {i}");
        }
        assert_eq!((v.epoch, v.rev, v.retired), (2, 5, Some((40, 7))));
        assert_eq!((v.leader_changes, v.state_resets), (2, 1));
    }

    /// etcd restored from an old backup, before `recover`: the controllers name an older state
    /// while the replicas, and perhaps the old leader, run ahead of it. A replica reply showing
    /// an epoch above the controllers' holds the reset off; without one it happens.
    #[test]
    fn a_replica_ahead_of_the_controllers_holds_off_a_reset() {
        let mut v = ClusterView::new(rule());
        at(&mut v, 0, ans(Some("r1"), 7, 40, true));
        let stale = || ans(Some("r2"), 5, 20, true);
        let mut t = 100;
        while t < 5000 {
            assert_eq!(at(&mut v, t, stale()), Applied::Ignored, "at {t}");
            // A reply at the controllers' epoch or below is no sign of anything.
            assert!(!v.on_replica_epoch(t + 100, 5));
            assert!(!v.on_replica_epoch(t + 250, 7));
            t += 500;
        }
        assert_eq!((v.epoch, v.rev), (7, 40));
        assert_eq!(
            v.behind.as_ref().map(|b| (b.since_ms, b.answers)),
            Some((4850, 0))
        );
        assert_eq!(at(&mut v, 5100, stale()), Applied::Ignored);
        assert_eq!(at(&mut v, 5600, stale()), Applied::Ignored);
        assert_eq!(
            at(&mut v, 6100, stale()),
            new_state(
                true,
                NewStateWhy::BehindFor {
                    ms: 1250,
                    answers: 3
                },
                (7, 40)
            )
        );
        assert_eq!((v.epoch, v.rev), (5, 20));
    }

    /// A new state whose revs overtook the old view's is taken by the rev rule, but its lower
    /// epoch would stay behind the one the view holds; the slow rule brings the epoch down.
    #[test]
    fn a_new_state_at_a_higher_rev_but_a_lower_epoch_lowers_the_epoch_after_the_grace_period() {
        let mut v = ClusterView::new(rule());
        at(&mut v, 0, ans(Some("r1"), 7, 12, true));
        assert_eq!(
            at(&mut v, 100, ans(Some("r2"), 1, 13, true)),
            ch(true, true)
        );
        assert_eq!((v.epoch, v.state_epoch), (7, 1));
        assert_eq!(
            at(&mut v, 600, ans(Some("r2"), 1, 13, true)),
            Applied::Ignored
        );
        assert_eq!(
            at(&mut v, 1100, ans(Some("r2"), 1, 13, true)),
            new_state(
                false,
                NewStateWhy::BehindFor {
                    ms: 1000,
                    answers: 3
                },
                (7, 13)
            )
        );
        assert_eq!((v.epoch, v.rev, v.retired), (1, 13, Some((13, 7))));
        // An answer at the same place now agrees.
        assert_eq!(
            at(&mut v, 1600, ans(Some("r2"), 1, 13, true)),
            Applied::Ignored
        );
        assert_eq!(v.behind, None);
    }

    /// With a `state_id` in the answers (a controller change this proxy is ready for), revs are
    /// compared only within one identity and the active controller's new identity is taken at
    /// once, epoch included.
    #[test]
    fn answers_with_another_state_id_replace_the_view_when_active() {
        let with_id = |id: &str, leader: &str, epoch: u64, rev: u64, active: bool| LeaderAnswer {
            state_id: Some(id.into()),
            ..ans(Some(leader), epoch, rev, active)
        };
        let mut v = ClusterView::new(rule());
        assert_eq!(
            at(&mut v, 0, with_id("a", "r1", 7, 40, true)),
            ch(true, false)
        );
        assert_eq!(
            at(&mut v, 10, with_id("b", "r2", 1, 3, false)),
            Applied::Ignored
        );
        // Even a higher rev of another identity from a standby.
        assert_eq!(
            at(&mut v, 20, with_id("b", "r2", 1, 50, false)),
            Applied::Ignored
        );
        assert_eq!(
            at(&mut v, 30, with_id("b", "r2", 1, 3, true)),
            new_state(true, NewStateWhy::OtherStateId, (7, 40))
        );
        assert_eq!((v.epoch, v.rev, v.state_id.as_deref()), (1, 3, Some("b")));
        // The old identity, even from an active controller, is not followed back.
        assert_eq!(
            at(&mut v, 40, with_id("a", "r1", 7, 41, false)),
            Applied::Ignored
        );
        // Within an identity, rev order as always.
        assert_eq!(
            at(&mut v, 50, with_id("b", "r2", 1, 2, true)),
            Applied::Ignored
        );
        assert_eq!(
            at(&mut v, 60, with_id("b", "r3", 2, 4, true)),
            ch(true, true)
        );
    }
}
