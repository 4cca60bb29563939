//! What the proxy knows about its cluster, as a pure value: the leader and the rev of the
//! controller answer that named it, the highest epoch seen anywhere, and the members' addresses
//! for `consistency=any` reads. Answers are applied in rev order (a rev is an etcd revision of
//! the cluster state, the same scale on every controller), so an older answer — a lagging
//! standby's, or a long-poll that returns late — never moves the view back.
//!
//! No I/O and no clock here: `controllers.rs` feeds answers in, `forward.rs` reads the view and
//! feeds epochs from replica replies back. The epoch only grows; it is what the proxy sends as
//! `Baton-Min-Epoch`.

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
}

/// Where requests for the leader go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub id: String,
    /// Base URL, `http://host:port`.
    pub url: String,
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
    },
}

/// The proxy's view of one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The highest rev applied from a controller answer; never goes back.
    pub rev: u64,
    /// The answer applied at `rev` came from an active controller.
    pub from_active: bool,
    /// The highest epoch seen from controllers and replica replies; never goes back. Sent as
    /// `Baton-Min-Epoch` on every forwarded request.
    pub epoch: u64,
    /// The leader named at `rev`, if it has an address.
    pub leader: Option<Leader>,
    /// The last leader id ever known (survives "no leader" phases), to count changes.
    pub last_leader_id: Option<String>,
    /// How many times the leader changed since start.
    pub leader_changes: u64,
    /// Base URLs of the declared members (for `consistency=any` reads), from the cluster view
    /// at `members_rev`.
    pub members: Vec<String>,
    /// The rev of the cluster view `members` came from (0: never fetched).
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
    /// Applies a controller's leader answer. A newer rev always wins; at an equal rev an active
    /// controller's answer replaces a standby's (both read the same etcd state, but addresses
    /// come from each controller's own config, and the active one's is the one that counts).
    pub fn on_leader_answer(&mut self, a: &LeaderAnswer) -> Applied {
        if let Some(e) = a.epoch {
            self.raise_epoch(e);
        }
        let newer = a.rev > self.rev;
        let preferred = a.rev == self.rev && a.rev > 0 && a.from_active && !self.from_active;
        if !newer && !preferred {
            return Applied::Ignored;
        }
        self.rev = a.rev;
        self.from_active = a.from_active;
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
            rev_moved: newer,
            leader_changed,
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
        }
    }

    #[test]
    fn answers_apply_in_rev_order_and_epochs_never_go_back() {
        let mut v = ClusterView::default();
        let steps: Vec<(LeaderAnswer, Applied, Option<&str>, u64, u64)> = vec![
            // (answer, result, leader id after, epoch after, rev after)
            (
                ans(Some("r1"), 3, 10, true),
                Applied::Changed {
                    rev_moved: true,
                    leader_changed: false,
                },
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
            (
                ans(None, 4, 11, true),
                Applied::Changed {
                    rev_moved: true,
                    leader_changed: false,
                },
                None,
                4,
                11,
            ),
            // The new leader: a change from r1, though "none" came in between.
            (
                ans(Some("r2"), 4, 12, false),
                Applied::Changed {
                    rev_moved: true,
                    leader_changed: true,
                },
                Some("r2"),
                4,
                12,
            ),
            // The active controller's answer at the same rev replaces the standby's.
            (
                ans(Some("r2"), 4, 12, true),
                Applied::Changed {
                    rev_moved: false,
                    leader_changed: false,
                },
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
            assert_eq!(v.on_leader_answer(&a), want, "step {i}");
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
        v.on_leader_answer(&ans(Some("r2"), 4, 13, true));
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
        };
        assert!(matches!(v.on_leader_answer(&a), Applied::Changed { .. }));
        assert_eq!(v.leader, None);
        v.check_invariants();
    }

    #[test]
    fn any_reads_rotate_over_members_and_fall_back_to_the_leader() {
        let mut v = ClusterView::default();
        assert_eq!(v.any_target(0), None);
        v.on_leader_answer(&LeaderAnswer {
            id: Some("r1".into()),
            addr: Some("127.0.0.1:7101".into()),
            epoch: Some(1),
            rev: 5,
            from_active: true,
        });
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
}
