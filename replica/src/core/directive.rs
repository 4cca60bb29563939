//! Directives from the controllers (DESIGN.md §5): the ordering rules (epoch, rev, controller
//! term, deployment id), persist-before-acting, and what a directive does to the role and the
//! lease. The runtime feeds every answer to [`Core::on_directive`]; when the directive needs
//! its epoch or rev stored first, the list ends with [`Action::PersistEpoch`] and the directive
//! acts only once [`Core::on_directive_persisted`] reports it stored.

use super::follower::Upstream;
use super::role::{FollowerState, LeaderState, Lease, RoleState};
use super::{Action, Core};
use baton_common::directive::{Directive, Role};
use std::collections::HashMap;

/// What a directive check decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ignore it, for this reason.
    Ignore(String),
    /// Apply it; when `persist` is set, first store (epoch, rev) durably.
    Accept {
        persist: Option<(super::Epoch, u64)>,
    },
}

impl Core {
    /// Decides whether a controller's answer is to be applied (DESIGN.md §5 ordering rules).
    pub fn check_directive(&self, d: &Directive) -> Verdict {
        if !d.active {
            return Verdict::Ignore("answer from a standby controller carries no role".into());
        }
        if d.cluster_id != 0 && self.cluster_id != 0 && d.cluster_id != self.cluster_id {
            return Verdict::Ignore(format!(
                "directive for deployment {:016x}, but this data directory belongs to {:016x}",
                d.cluster_id, self.cluster_id
            ));
        }
        if d.epoch < self.epoch {
            return Verdict::Ignore(format!(
                "directive epoch {} is below the persisted epoch {}",
                d.epoch, self.epoch
            ));
        }
        if d.epoch == self.epoch {
            if d.rev < self.applied_rev {
                return Verdict::Ignore(format!(
                    "directive rev {} is older than the applied rev {}",
                    d.rev, self.applied_rev
                ));
            }
            if d.controller_term < self.max_term {
                return Verdict::Ignore(format!(
                    "directive from controller term {} after term {} was seen",
                    d.controller_term, self.max_term
                ));
            }
        }
        // Adopting the deployment's identity is persisted with the epoch and rev.
        let adopt = self.cluster_id == 0 && d.cluster_id != 0;
        let persist = (d.epoch > self.epoch || d.rev != self.applied_rev || adopt)
            .then_some((d.epoch, d.rev));
        Verdict::Accept { persist }
    }

    /// A controller's answer to the heartbeat sent at `sent_at_ms` (a lease counts from there).
    /// Ignored: `[Ignore(why)]`. Needing its epoch, rev or deployment id stored first:
    /// `[PersistEpoch]`, and the directive acts in [`on_directive_persisted`](Self::on_directive_persisted).
    /// Otherwise it acts now.
    pub fn on_directive(&mut self, now: u64, sent_at_ms: u64, d: &Directive) -> Vec<Action> {
        match self.check_directive(d) {
            Verdict::Ignore(why) => vec![Action::Ignore(why)],
            Verdict::Accept {
                persist: Some((epoch, rev)),
            } => vec![Action::PersistEpoch {
                epoch,
                rev: Some(rev),
                cluster_id: d.cluster_id,
            }],
            Verdict::Accept { persist: None } => self.apply_directive(now, sent_at_ms, d),
        }
    }

    /// The runtime stored what `on_directive` asked for. The ordering rules are checked again
    /// (another directive may have been applied meanwhile) and the directive acts.
    pub fn on_directive_persisted(
        &mut self,
        now: u64,
        sent_at_ms: u64,
        d: &Directive,
    ) -> Vec<Action> {
        match self.check_directive(d) {
            Verdict::Ignore(why) => vec![Action::Ignore(why)],
            Verdict::Accept { .. } => self.apply_directive(now, sent_at_ms, d),
        }
    }

    fn apply_directive(&mut self, now: u64, sent_at_ms: u64, d: &Directive) -> Vec<Action> {
        let mut fx = Vec::new();
        let old_epoch = self.epoch;
        self.epoch = self.epoch.max(d.epoch);
        self.applied_rev = d.rev;
        if self.cluster_id == 0 {
            self.cluster_id = d.cluster_id;
        }
        // Terms order directives within an epoch; a higher epoch (written to etcd by whoever was
        // active) starts the order afresh, so that after an etcd restore, whose election
        // revisions go back, `recover`'s new epoch is followed.
        self.max_term = if d.epoch > old_epoch {
            d.controller_term
        } else {
            self.max_term.max(d.controller_term)
        };
        self.mode = d.mode;
        self.strict = d.strict;
        if !d.members.is_empty() {
            self.members = d.members.iter().map(|m| m.id.clone()).collect();
        }
        let old_waited = std::mem::replace(&mut self.waited, d.waited.clone());
        let leader_moved = self.leader.as_ref().map(|l| (&l.id, l.boot_id))
            != d.leader.as_ref().map(|l| (&l.id, l.boot_id))
            || old_epoch != self.epoch;
        self.leader = d.leader.clone();
        let leads = d.role == Some(Role::Leader)
            && d.leader
                .as_ref()
                .is_some_and(|l| l.id == self.cfg.id && l.boot_id == self.cfg.boot_id);
        if d.role == Some(Role::Leader) && !leads {
            tracing::warn!(epoch = %d.epoch, "directed to lead under another boot id; not leading (the controller will start a new epoch)");
        }
        let leading_epoch = self.role.leading_epoch();
        if leads && leading_epoch != Some(d.epoch) {
            if let Some(where_) = self.damaged.clone() {
                if !d.lossy {
                    // DESIGN.md §6: damage inside the log is repaired from a leader; with this
                    // replica the one to lead, nobody can repair it, and leading would serve
                    // without writes it acknowledged.
                    let why = format!(
                        "refusing to lead epoch {}: this replica's log lost records it had acknowledged to damage at {where_}; \
                         it can only be repaired from another leader (direct another member to lead, or wipe this data directory)",
                        d.epoch
                    );
                    self.fatal = Some(why.clone());
                    fx.extend(self.stop_leading(RoleState::None, why.clone()));
                    fx.push(Action::Fatal(why));
                    self.checked("on_directive");
                    return fx;
                }
                tracing::error!(epoch = %d.epoch, damaged = %where_,
                    "leading a lossy epoch on a log that lost acknowledged records to damage: the forced failover accepted the loss");
            }
        }
        if leads && leading_epoch != Some(d.epoch) && self.log.end.0 >= d.epoch {
            // I1: one process run writes an epoch. This log already holds records of that epoch
            // from an earlier run, so leading it again would write it twice.
            tracing::warn!(epoch = %d.epoch, log_end_epoch = %self.log.end.0,
                "refusing to lead an epoch this log already holds records of; a restart needs a new epoch");
            fx.extend(self.stop_leading(
                RoleState::None,
                format!("refused to re-lead epoch {}", d.epoch),
            ));
            return fx;
        }
        let same_epoch_leader = matches!(self.role, RoleState::Leader(_))
            && (leading_epoch == Some(d.epoch) || old_epoch == d.epoch);
        let grant = sent_at_ms + (d.lease_ms as f64 * (1.0 - self.cfg.drift)) as u64;
        if leads && same_epoch_leader {
            let end = self.log.end.1;
            let l = self.role.leader_mut().expect("checked: leading");
            // Same epoch: only the lease and the waited set move. A grant of 0 ms revokes the
            // lease at once (a switchover stops the leader's writes this way before the epoch
            // moves). A newly waited member is waited for from now, at this log's end.
            l.revoked = d.lease_ms == 0;
            if d.lease_ms == 0 {
                l.lease = None;
            } else {
                match &mut l.lease {
                    Some(x) if x.epoch == d.epoch => x.until_ms = x.until_ms.max(grant),
                    _ => {
                        l.lease = Some(Lease {
                            epoch: d.epoch,
                            until_ms: grant,
                        })
                    }
                }
            }
            for m in &d.waited {
                if !old_waited.contains(m) {
                    l.since.insert(m.clone(), (end, now));
                }
            }
            l.since.retain(|m, _| d.waited.contains(m));
            fx.extend(self.tick(now));
        } else if leads {
            // Its own promises to the previous epoch's leader hold it back too, unless that leader
            // is known to have persisted this epoch (it can serve nothing of its own any more).
            let promised = if d.promises_void {
                0
            } else {
                self.promises.no_lead_before_ms
            };
            let start_at = (now + d.start_after_ms).max(promised);
            tracing::info!(epoch = %d.epoch, start_after_ms = d.start_after_ms,
                promise_wait_ms = start_at.saturating_sub(now + d.start_after_ms), "directed to lead");
            // Waiting for every member begins now, at this log's end.
            let since: HashMap<_, _> = self
                .waited
                .iter()
                .map(|m| (m.clone(), (self.log.end.1, now)))
                .collect();
            let next = RoleState::Leader(LeaderState {
                lease: Some(Lease {
                    epoch: d.epoch,
                    until_ms: grant,
                }),
                start_at_ms: Some(start_at),
                revoked: d.lease_ms == 0,
                leading_epoch: None,
                leader_start_lsn: baton_common::Lsn(0),
                lossy: d.lossy,
                peers: HashMap::new(),
                departed: HashMap::new(),
                since,
            });
            fx.extend(self.stop_leading(next, format!("leadership moved to epoch {}", d.epoch)));
            fx.extend(self.tick(now));
        } else {
            let next = match d.role {
                Some(Role::Follower) => {
                    // The stream from the same leader in the same epoch goes on.
                    let upstream: Option<Upstream> = match &mut self.role {
                        RoleState::Follower(f) if !leader_moved => f.upstream.take(),
                        _ => None,
                    };
                    RoleState::Follower(FollowerState { upstream })
                }
                Some(Role::Fenced) => RoleState::Fenced,
                _ => RoleState::None,
            };
            if matches!(self.role, RoleState::Leader(_)) {
                tracing::info!(epoch = %d.epoch, role = ?d.role, "stepped down");
            }
            fx.extend(self.stop_leading(next, format!("stepped down at epoch {}", d.epoch)));
        }
        // A smaller waited set (a member dropped) may let the commit LSN move at once.
        fx.extend(self.recompute_commit());
        self.checked("on_directive");
        fx
    }
}
