//! Operators in the simulation (issue 10): forced failovers (`failover --to M --force`, with or
//! without `allow_data_loss`, to a member outside the sync set, while the leader is alive or
//! cut off), the operator actions that follow an etcd restore (pause, resume, switchover,
//! `failover --to` without force), and the nemesis kinds that inject them and snapshots.
//! It calls the controller core's public operations as `batonctl` through the API would, and
//! records which epochs a forced failover promoted (their losses are the operator's choice).

use super::{Ev, Heal, Proc, World};
use baton_common::NodeId;
use baton_controller::state::{ClusterState, Control, Op, Phase};
use rand::Rng;

/// An operator's action.
#[derive(Clone, Debug)]
pub(super) enum Act {
    Pause,
    Resume,
    Switchover,
    /// `failover --to` without force (a sync member usually; anyone sometimes).
    Failover,
    /// `failover --to M --force` to a member outside the recorded sync set.
    Forced {
        allow_data_loss: bool,
    },
}

impl World {
    pub(super) fn operator(&mut self, a: Act) {
        let Some(c) = self.active_controller() else {
            self.note(format!("operator {a:?}: no active controller"));
            return;
        };
        let n = self.cnow(c);
        let op = format!("op-{}", self.report.steps);
        let res = match &a {
            Act::Pause => self.ctls[c].core.set_control(n, Control::Manual),
            Act::Resume => self.ctls[c].core.set_control(n, Control::Auto),
            Act::Switchover => {
                let to = self.rng.random_bool(0.5).then(|| {
                    self.members[self.rng.random_range(0..self.members.len())]
                        .id
                        .clone()
                });
                self.ctls[c].core.switchover(n, to, 5000, op)
            }
            Act::Failover => return self.manual_failover(),
            Act::Forced { allow_data_loss } => {
                let Some(to) = self.forced_target() else {
                    return;
                };
                let allow = *allow_data_loss
                    || self
                        .replicas
                        .iter()
                        .any(|r| r.id == to && r.core.as_ref().is_some_and(|core| core.unclean()));
                self.note(format!(
                    "operator: failover --to {to} --force{}",
                    if allow { " --allow-data-loss" } else { "" }
                ));
                self.ctls[c].core.failover(n, to, true, allow, op)
            }
        };
        match res {
            Ok(w) => {
                self.note(format!("operator {a:?} accepted by c{}", c + 1));
                self.execute(c, w);
            }
            Err(e) => self.note(format!("operator {a:?} refused: {}", e.message)),
        }
    }

    /// A member that is neither the recorded leader nor a recorded sync member (so it may lack
    /// acknowledged writes); any other member if there is none.
    fn forced_target(&mut self) -> Option<NodeId> {
        let (leader, sync): (Option<NodeId>, Vec<NodeId>) = match &self.etcd.state {
            Some((s, _)) => (
                s.leader.as_ref().map(|l| l.id.clone()),
                s.sync_set.iter().map(|m| m.id.clone()).collect(),
            ),
            None => (None, Vec::new()),
        };
        let others: Vec<NodeId> = self
            .members
            .iter()
            .map(|m| m.id.clone())
            .filter(|id| Some(id) != leader.as_ref())
            .collect();
        let outside: Vec<NodeId> = others
            .iter()
            .filter(|id| !sync.contains(id))
            .cloned()
            .collect();
        let pool = if outside.is_empty() { others } else { outside };
        if pool.is_empty() {
            return None;
        }
        Some(pool[self.rng.random_range(0..pool.len())].clone())
    }

    /// Called when a state write reaches etcd: a promotion recorded for a forced failover
    /// whose target was not known to hold every acknowledged write (not a recorded sync member
    /// nor the replaced leader, by data directory) makes earlier acknowledged writes
    /// losable with the operator's consent; so does the lossy promotion that completes one
    /// whose leader never wrote its leader-start.
    pub(super) fn note_promotion(&mut self, prior: Option<&ClusterState>, new: &ClusterState) {
        let Some(prior) = prior else { return };
        if prior.phase != Phase::Promoting || new.phase != Phase::Steady {
            return;
        }
        let Some(l) = &new.leader else { return };
        // A lossy epoch whose leader never wrote its leader-start makes the next promotion
        // lossy too (`promotion.rs`): the loss the operator accepted at the forced epoch is
        // completed there, so it is accepted the same way.
        let carried = new.mode == baton_common::directive::Mode::SemiSync
            && new.lossy
            && prior.lossy
            && !self.forced_epochs.is_empty();
        let forced = prior
            .op
            .as_ref()
            .is_some_and(|op| matches!(op.op, Op::Failover { force: true, .. }));
        if !forced && !carried {
            return;
        }
        let holder = !carried
            && (prior
                .sync_set
                .iter()
                .any(|m| m.id == l.id && m.data_id == l.data_id)
                || prior
                    .prev_leader
                    .as_ref()
                    .is_some_and(|p| p.id == l.id && p.data_id == l.data_id));
        if !holder {
            self.forced_epochs.insert(new.epoch.0, self.now);
        }
        if !holder && new.epoch.0 > self.forced_epoch {
            self.note(format!(
                "forced promotion of {} at epoch {}: earlier acknowledged writes may be lost (accepted)",
                l.id, new.epoch
            ));
            self.forced_epoch = new.epoch.0;
        }
    }

    /// `init` wrote a first state. A second time, etcd was emptied and every member reported
    /// an empty log (each disk was wiped): the old history is gone by design, with nothing
    /// left to hold it (G1 needs a disk that comes back). The checks start over with the new
    /// cluster: records, acknowledgements and client history before now are forgotten.
    pub(super) fn note_init(&mut self) {
        if !self.initialized {
            self.initialized = true;
            return;
        }
        *self
            .report
            .fault_kinds
            .entry("re-initialized-after-total-loss".into())
            .or_insert(0) += 1;
        self.note("every disk and etcd were lost: a new cluster starts; checks start over".into());
        self.written.clear();
        self.epoch_starts.clear();
        self.acked.clear();
        self.acked_deletes.clear();
        self.leader_acked.clear();
        self.forced_epoch = 0;
        self.forced_epochs.clear();
        self.start_states.clear();
        self.committed_starts.clear();
        self.history_from = self.now;
        for c in &mut self.clients {
            c.last_read.clear();
        }
    }

    /// After an etcd restore (`restore-ops`): a few operator actions over the next seconds.
    pub(super) fn schedule_restore_ops(&mut self) {
        let n = self.rng.random_range(2..7);
        let mut at = 0;
        for _ in 0..n {
            at += self.rng.random_range(100_000..800_000);
            let a = match self.rng.random_range(0..6) {
                0 | 1 => Act::Pause,
                2 | 3 => Act::Resume,
                4 => Act::Switchover,
                _ => Act::Failover,
            };
            self.after_us(at, Ev::Operator(a));
        }
    }

    /// The nemesis kinds of issue 10 (`forced`, `snapshot`, `foreign`, `dup-id`); `false` if `kind` is not one.
    pub(super) fn nemesis_new(&mut self, kind: &str, hold: u64) -> bool {
        let nr = self.replicas.len();
        match kind {
            "forced-failover" => {
                let allow = self.rng.random_bool(0.3);
                self.operator(Act::Forced {
                    allow_data_loss: allow,
                });
            }
            "cut-and-forced" => {
                // The leader is cut from everyone (clients on its side keep it busy), and an
                // operator forces another member to lead: what it acknowledged last may be
                // only on its own disk.
                let Some(l) = self.leader_replica() else {
                    return true;
                };
                let p = Proc::Replica(l);
                let mut pairs = Vec::new();
                for o in (0..nr)
                    .map(Proc::Replica)
                    .chain((0..self.ctls.len()).map(Proc::Controller))
                    .filter(|o| *o != p)
                {
                    pairs.push((p, o));
                    pairs.push((o, p));
                }
                self.note(format!(
                    "partition: r{} isolated for {} ms, then a forced failover",
                    l + 1,
                    hold / 1000
                ));
                self.net.cut.extend(pairs.iter().copied());
                self.after_us(hold, Ev::Heal(Heal::Uncut(pairs)));
                let d = self.rng.random_range(0..300_000);
                let allow = self.rng.random_bool(0.3);
                self.after_us(
                    d,
                    Ev::Operator(Act::Forced {
                        allow_data_loss: allow,
                    }),
                );
            }
            "foreign" => self.nemesis_foreign(hold + 500_000),
            "dup-id" => self.nemesis_dup(hold + 500_000),
            "crash-after-install" => {
                self.crash_after_install = true;
            }
            "disk-stall" => {
                let r = self.rng.random_range(0..nr);
                let d = self.rng.random_range(200_000..4_000_000);
                self.note(format!("r{} disk stalls for {} ms", r + 1, d / 1000));
                if self.cfg.bounds {
                    let on_leader = self.leader_replica() == Some(r);
                    self.episode("disk-stall", on_leader, d);
                }
                self.replicas[r].stall_until = self.now + d;
            }
            "lag" => {
                // A follower down long enough to fall behind the leader's compacted log.
                let Some(l) = self.leader_replica() else {
                    return true;
                };
                let f = (l + 1 + self.rng.random_range(0..nr - 1)) % nr;
                if !self.replicas[f].up {
                    return true;
                }
                self.crash_replica(f);
                let d = self.rng.random_range(2_000_000..5_000_000);
                self.after_us(d, Ev::Heal(Heal::Restart(Proc::Replica(f))));
            }
            _ => return false,
        }
        true
    }
}
