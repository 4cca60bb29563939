//! The etcd stand-in: keys with revisions, leases that expire, the election key, the
//! journal, request timeouts, backups (for `etcd-restore`) and the guarded transaction a
//! controller's [`Write`](baton_controller::core::Write) is (a handover's deletes the election
//! key with it).

use super::msg::{Ev, Heal};
use super::net::Proc;
use super::World;
use baton_controller::core::{Write, WriteOutcome};
use baton_controller::journal::Entry;
use baton_controller::state::ClusterState;
use rand::Rng;
use std::collections::HashMap;

#[derive(Default)]
pub(super) struct Etcd {
    pub(super) up: bool,
    pub(super) timeout_p: f64,
    pub(super) rev: u64,
    pub(super) state: Option<(ClusterState, u64)>,
    pub(super) journal: Vec<Entry>,
    pub(super) election: Option<(usize, i64, u64)>,
    pub(super) leases: HashMap<i64, u64>,
    pub(super) next_lease: i64,
    pub(super) hears: HashMap<usize, (usize, i64)>,
}

impl Etcd {
    pub(super) fn expire(&mut self, now_us: u64) {
        self.leases.retain(|_, exp| *exp > now_us);
        if let Some((_, l, _)) = self.election {
            if !self.leases.contains_key(&l) {
                self.election = None;
            }
        }
        let leases = &self.leases;
        self.hears.retain(|_, (_, l)| leases.contains_key(l));
    }
}

/// What an etcd backup holds: the keys and the revision counter at that time.
#[derive(Clone)]
pub(super) struct EtcdBackup {
    pub(super) at: u64,
    pub(super) state: Option<(ClusterState, u64)>,
    pub(super) journal: Vec<Entry>,
    pub(super) rev: u64,
    pub(super) election: Option<(usize, i64, u64)>,
}

impl World {
    pub(super) fn etcd_reachable(&self, c: usize) -> bool {
        self.etcd.up
            && !self.net.is_cut(Proc::Controller(c), Proc::Etcd)
            && !self.net.is_cut(Proc::Etcd, Proc::Controller(c))
    }

    /// Whether an etcd request times out (and so may or may not have happened).
    pub(super) fn etcd_timeout(&mut self) -> bool {
        self.etcd.timeout_p > 0.0 && self.rng.random_bool(self.etcd.timeout_p)
    }

    pub(super) fn execute(&mut self, c: usize, w: Write) {
        let prior_prev = self
            .etcd
            .state
            .as_ref()
            .and_then(|(s, _)| s.prev_leader.clone());
        let reach = self.etcd_reachable(c);
        let timeout = self.etcd_timeout();
        let outcome =
            if !reach {
                WriteOutcome::Unknown
            } else {
                let term = self.ctls[c].core.term();
                let election_ok = matches!(
                    (self.etcd.election, term),
                    (Some((_, _, cr)), Some(t)) if cr == t
                );
                let state_ok = match (&self.etcd.state, w.expect_rev) {
                    (None, 0) => true,
                    (Some((_, rev)), e) => *rev == e && e != 0,
                    _ => false,
                };
                // Nobody appended to the journal since the writer read it.
                let journal_ok = !self
                    .etcd
                    .journal
                    .iter()
                    .any(|e| e.seq == w.journal_after + 1);
                let state_ok = state_ok && journal_ok;
                let applied = !timeout || self.rng.random_bool(0.5);
                if election_ok && state_ok && applied {
                    if let Some(s) = &w.state {
                        let prior = self.etcd.state.as_ref().map(|(p, _)| p.clone());
                        self.note_promotion(prior.as_ref(), s);
                        self.check_impostors(prior.as_ref(), s, &w.journal);
                        if prior.is_none() {
                            self.note_init();
                        }
                        if self.cfg.idle && self.now > 5_000_000 {
                            self.idle_etcd_writes += 1;
                        }
                    }
                    let rev = if let Some(s) = &w.state {
                        self.etcd.rev += 1;
                        self.etcd.state = Some((s.clone(), self.etcd.rev));
                        self.etcd.rev
                    } else {
                        w.expect_rev
                    };
                    baton_controller::journal::apply(&mut self.etcd.journal, &w.journal);
                    if w.resign {
                        // A handover: the election key goes in the same transaction.
                        self.etcd.election = None;
                        self.note(format!("c{} resigns: {}", c + 1, w.why));
                    }
                    self.note_impostor_journal(&w.journal);
                    if let Some(s) = &w.state {
                        self.note(format!(
                        "c{} wrote state rev {rev}: epoch {} leader {:?} phase {:?} sync {:?} ({})",
                        c + 1,
                        s.epoch,
                        s.leader.as_ref().map(|l| l.id.0.clone()),
                        s.phase,
                        s.sync_set.iter().map(|m| m.id.0.clone()).collect::<Vec<_>>(),
                        w.why
                    ));
                    }
                    if timeout {
                        WriteOutcome::Unknown
                    } else {
                        WriteOutcome::Committed { rev }
                    }
                } else if timeout {
                    WriteOutcome::Unknown
                } else {
                    WriteOutcome::Rejected
                }
            };
        let promoting = w.state.as_ref().is_some_and(|s| {
            s.phase == baton_controller::state::Phase::Promoting || s.prev_leader != prior_prev
        });
        if promoting && self.crash_mid_promotion {
            // The active controller dies right after this step of a promotion reached etcd
            // (or not): whoever is active next must carry it on at the same epoch.
            self.crash_mid_promotion = false;
            *self
                .report
                .fault_kinds
                .entry("ctl-crashed-mid-promotion".into())
                .or_insert(0) += 1;
            self.note(format!("c{} crashes mid-promotion ({})", c + 1, w.why));
            self.crash_controller(c);
            let hold = self.rng.random_range(300_000..3_000_000);
            self.after_us(hold, Ev::Heal(Heal::Restart(Proc::Controller(c))));
            return;
        }
        let n = self.cnow(c);
        self.ctls[c].core.on_write(n, &w, outcome);
    }
}
