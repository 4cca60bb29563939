//! The nemesis: which faults a run may inject and when (crashes, pauses, partitions, loss,
//! controller and etcd faults, wipes, restores, operator actions, snapshots, impostors),
//! the operator's manual failover, and healing one fault or all of them.

use super::msg::{Ev, Heal};
use super::net::Proc;
use super::World;
use baton_common::NodeId;
use rand::Rng;

impl World {
    pub(super) fn nemesis(&mut self) {
        let f = self.cfg.faults.clone();
        let mut kinds: Vec<&str> = Vec::new();
        if f.crash {
            kinds.extend(["crash", "crash"]);
        }
        if f.pause {
            kinds.push("pause");
        }
        if f.partition {
            kinds.extend([
                "isolate",
                "ctl-only",
                "followers-only",
                "one-way",
                "ctl-cut",
            ]);
        }
        if f.loss {
            kinds.push("loss");
        }
        if f.controller {
            kinds.extend(["ctl-crash", "ctl-etcd"]);
        }
        if f.controller && f.pause {
            kinds.push("ctl-pause");
        }
        if f.controller && f.crash {
            kinds.push("ctl-crash-mid-promotion");
        }
        if f.etcd {
            kinds.extend(["etcd-down", "etcd-timeouts"]);
        }
        if f.wipe {
            kinds.push("wipe");
        }
        if f.operator {
            kinds.extend(["switchover", "failover"]);
        }
        if f.restore {
            kinds.push("etcd-restore");
        }
        if f.operator && f.partition {
            kinds.extend(["cut-and-failover", "paused-cut"]);
        }
        if f.forced {
            kinds.extend(["forced-failover", "cut-and-forced"]);
        }
        if f.snapshot {
            kinds.extend(["crash-after-install", "disk-stall", "lag"]);
        }
        if f.foreign {
            kinds.push("foreign");
        }
        if f.dup_id {
            kinds.push("dup-id");
        }
        if self.cfg.bounds {
            // One bounded fault at a time (`bounds.rs`), none that would not heal and settle
            // before the faults end.
            kinds.retain(|k| super::bounds::BOUNDED.contains(k));
            if self.now + 3_500_000 + super::bounds::SETTLE_US > self.cfg.duration_ms * 1000 {
                return;
            }
        }
        if kinds.is_empty() {
            return;
        }
        let kind = kinds[self.rng.random_range(0..kinds.len())];
        *self.report.fault_kinds.entry(kind.to_string()).or_insert(0) += 1;
        let nr = self.replicas.len();
        let leader = self.leader_replica();
        let victim = match leader {
            Some(l) if self.rng.random_bool(0.6) => l,
            _ => self.rng.random_range(0..nr),
        };
        let hold = self.rng.random_range(300_000..3_500_000);
        let all_but = |p: Proc, w: &World| -> Vec<Proc> {
            let mut v: Vec<Proc> = (0..w.replicas.len()).map(Proc::Replica).collect();
            v.extend((0..w.ctls.len()).map(Proc::Controller));
            v.extend((0..w.clients.len()).map(Proc::Client));
            v.retain(|x| *x != p);
            v
        };
        self.report.faults += 1;
        if self.cfg.bounds && kind != "disk-stall" {
            let hold = match kind {
                "switchover" => 0,
                _ => hold,
            };
            let on_leader = leader == Some(victim) && kind != "ctl-cut";
            self.episode(kind, on_leader, hold);
        }
        match kind {
            "crash" => {
                if !self.replicas[victim].up {
                    return;
                }
                self.crash_replica(victim);
                self.after_us(hold, Ev::Heal(Heal::Restart(Proc::Replica(victim))));
            }
            "wipe" => {
                self.wipe_replica(victim);
                self.after_us(hold, Ev::Heal(Heal::Restart(Proc::Replica(victim))));
            }
            "pause" => {
                if !self.replicas[victim].up {
                    return;
                }
                let until = self.now + hold;
                self.note(format!("r{} paused for {} ms", victim + 1, hold / 1000));
                self.replicas[victim].paused_until = until;
                self.q
                    .push(until, Ev::Heal(Heal::Resume(Proc::Replica(victim))));
            }
            "isolate" | "ctl-only" | "followers-only" | "ctl-cut" => {
                let p = Proc::Replica(victim);
                let others: Vec<Proc> = match kind {
                    "isolate" => all_but(p, self),
                    "ctl-only" => (0..self.ctls.len()).map(Proc::Controller).collect(),
                    "followers-only" => (0..nr).map(Proc::Replica).collect(),
                    _ => {
                        // One controller cut from every replica.
                        let c = self.rng.random_range(0..self.ctls.len());
                        let pc = Proc::Controller(c);
                        let pairs: Vec<(Proc, Proc)> = (0..nr)
                            .flat_map(|r| [(pc, Proc::Replica(r)), (Proc::Replica(r), pc)])
                            .collect();
                        self.note(format!("partition: c{} cut from the replicas", c + 1));
                        self.net.cut.extend(pairs.iter().copied());
                        self.after_us(hold, Ev::Heal(Heal::Uncut(pairs)));
                        return;
                    }
                };
                let mut pairs = Vec::new();
                for o in others.into_iter().filter(|o| *o != p) {
                    pairs.push((p, o));
                    pairs.push((o, p));
                }
                self.note(format!(
                    "partition: r{} {kind} for {} ms",
                    victim + 1,
                    hold / 1000
                ));
                self.net.cut.extend(pairs.iter().copied());
                self.after_us(hold, Ev::Heal(Heal::Uncut(pairs)));
            }
            "one-way" => {
                let mut procs: Vec<Proc> = (0..nr).map(Proc::Replica).collect();
                procs.extend((0..self.ctls.len()).map(Proc::Controller));
                let a = procs[self.rng.random_range(0..procs.len())];
                let b = procs[self.rng.random_range(0..procs.len())];
                if a == b {
                    return;
                }
                self.note(format!(
                    "one-way drop {a:?} -> {b:?} for {} ms",
                    hold / 1000
                ));
                self.net.cut.insert((a, b));
                self.after_us(hold, Ev::Heal(Heal::Uncut(vec![(a, b)])));
            }
            "loss" => {
                self.net.loss = self.rng.random_range(0.02..0.3);
                self.net.dup = self.rng.random_range(0.0..0.3);
                self.net.extra_delay_us = self.rng.random_range(0..20_000);
                self.note(format!("message loss {:.2}", self.net.loss));
                self.after_us(hold, Ev::Heal(Heal::Loss));
            }
            "ctl-crash" => {
                let c = self
                    .active_controller()
                    .filter(|_| self.rng.random_bool(0.7))
                    .unwrap_or_else(|| self.rng.random_range(0..self.ctls.len()));
                if !self.ctls[c].up {
                    return;
                }
                self.crash_controller(c);
                self.after_us(hold, Ev::Heal(Heal::Restart(Proc::Controller(c))));
            }
            "ctl-crash-mid-promotion" => {
                // Kill the leader, and the active controller at the next step of the
                // promotion that follows (TESTING row 17).
                let Some(l) = leader else { return };
                self.crash_mid_promotion = true;
                self.crash_replica(l);
                self.after_us(hold, Ev::Heal(Heal::Restart(Proc::Replica(l))));
            }
            "etcd-restore" => {
                // etcd comes back from an old backup (or empty): its revisions go back, and
                // the election key is the one of the backup (its lease may be gone).
                let pick = self
                    .etcd_backups
                    .iter()
                    .filter(|b| b.at + 1_000_000 <= self.now)
                    .count();
                if self.cfg.faults.restore_ops && pick > 0 && self.rng.random_bool(0.5) {
                    // The newest backup: most often the same epoch with an older rev (a sync
                    // set since replaced), the case the refusal must keep refusing.
                    let b = self.etcd_backups[pick - 1].clone();
                    self.note(format!(
                        "etcd restored from the newest backup, of t={} ms (rev {}, epoch {:?})",
                        b.at / 1000,
                        b.rev,
                        b.state.as_ref().map(|(s, _)| s.epoch.0)
                    ));
                    self.etcd.state = b.state;
                    self.etcd.journal = b.journal;
                    self.etcd.rev = b.rev;
                    self.etcd.election = b.election;
                    self.etcd.expire(self.now);
                } else if self.rng.random_bool(0.3) || pick == 0 {
                    self.note("etcd emptied".into());
                    self.etcd.state = None;
                    self.etcd.journal.clear();
                    self.etcd.election = None;
                } else {
                    let b = self.etcd_backups[self.rng.random_range(0..pick)].clone();
                    self.note(format!(
                        "etcd restored from the backup of t={} ms (rev {}, epoch {:?})",
                        b.at / 1000,
                        b.rev,
                        b.state.as_ref().map(|(s, _)| s.epoch.0)
                    ));
                    self.etcd.state = b.state;
                    self.etcd.journal = b.journal;
                    self.etcd.rev = b.rev;
                    self.etcd.election = b.election;
                    self.etcd.expire(self.now);
                }
                self.etcd_restored = true;
                if self.cfg.faults.restore_ops {
                    self.schedule_restore_ops();
                }
            }
            "ctl-pause" => {
                // SIGSTOP the active controller (often longer than its etcd lease): on resume
                // it must not act on the trust it had (a zombie controller).
                let c = self
                    .active_controller()
                    .unwrap_or_else(|| self.rng.random_range(0..self.ctls.len()));
                if !self.ctls[c].up {
                    return;
                }
                self.note(format!("c{} paused for {} ms", c + 1, hold / 1000));
                self.ctls[c].paused_until = self.now + hold;
            }
            "ctl-etcd" => {
                let c = self.rng.random_range(0..self.ctls.len());
                let pairs = vec![
                    (Proc::Controller(c), Proc::Etcd),
                    (Proc::Etcd, Proc::Controller(c)),
                ];
                self.note(format!("c{} cut from etcd for {} ms", c + 1, hold / 1000));
                self.net.cut.extend(pairs.iter().copied());
                self.after_us(hold, Ev::Heal(Heal::Uncut(pairs)));
            }
            "etcd-down" => {
                self.note(format!("etcd down for {} ms", hold / 1000));
                self.etcd.up = false;
                self.after_us(hold, Ev::Heal(Heal::EtcdUp));
            }
            "etcd-timeouts" => {
                self.etcd.timeout_p = self.rng.random_range(0.1..0.5);
                self.note(format!(
                    "etcd request timeouts p={:.2}",
                    self.etcd.timeout_p
                ));
                self.after_us(hold, Ev::Heal(Heal::EtcdTimeouts));
            }
            "switchover" => {
                if let Some(c) = self.active_controller() {
                    let n = self.cnow(c);
                    let to = if self.rng.random_bool(0.5) {
                        Some(self.members[self.rng.random_range(0..nr)].id.clone())
                    } else {
                        None
                    };
                    let op = format!("sw-{}", self.report.faults);
                    match self.ctls[c].core.switchover(n, to, 5000, op) {
                        Ok(w) => {
                            self.note(format!("switchover asked of c{}", c + 1));
                            self.execute(c, w)
                        }
                        Err(e) => self.note(format!("switchover refused: {}", e.message)),
                    }
                }
            }
            "cut-and-failover" => {
                // The leader loses the controllers but keeps its followers and clients, and an
                // operator moves leadership at once: the old leader still holds a lease, so the
                // new one must wait it out before serving (G2).
                let Some(l) = leader else { return };
                let p = Proc::Replica(l);
                let mut pairs = Vec::new();
                for c in 0..self.ctls.len() {
                    pairs.push((p, Proc::Controller(c)));
                    pairs.push((Proc::Controller(c), p));
                }
                self.note(format!(
                    "partition: r{} from the controllers, then a manual failover",
                    l + 1
                ));
                self.net.cut.extend(pairs.iter().copied());
                self.after_us(hold, Ev::Heal(Heal::Uncut(pairs)));
                let d = self.rng.random_range(0..200_000);
                self.after_us(d, Ev::ManualFailover);
            }
            "paused-cut" => {
                // Automatic failover paused, then the leader cut from its followers (a planned
                // failover is due and refused) for as long as `hold`: the refusal is journaled
                // once, not at every tick (`check_refusal_floods`); resumed after the heal.
                let Some(l) = leader else { return };
                self.operator(super::ops::Act::Pause);
                let p = Proc::Replica(l);
                let mut pairs = Vec::new();
                for r in (0..nr).filter(|r| *r != l) {
                    pairs.push((p, Proc::Replica(r)));
                    pairs.push((Proc::Replica(r), p));
                }
                self.note(format!(
                    "partition: r{} cut from its followers while paused",
                    l + 1
                ));
                self.net.cut.extend(pairs.iter().copied());
                self.after_us(hold, Ev::Heal(Heal::Uncut(pairs)));
                self.after_us(hold + 100_000, Ev::Operator(super::ops::Act::Resume));
            }
            // A manual failover while the leader may still be healthy: the new leader must wait
            // out the old one's lease (`start_after_ms`).
            "failover" => self.manual_failover(),
            other => {
                self.nemesis_new(other, hold);
            }
        }
    }

    pub(super) fn manual_failover(&mut self) {
        let Some(c) = self.active_controller() else {
            return;
        };
        let n = self.cnow(c);
        // Usually a sync member (accepted), sometimes anyone (may be refused: may_lose_writes).
        let sync: Vec<NodeId> = match &self.etcd.state {
            Some((s, _)) => s.sync_set.iter().map(|m| m.id.clone()).collect(),
            None => Vec::new(),
        };
        let to = if !sync.is_empty() && self.rng.random_bool(0.8) {
            sync[self.rng.random_range(0..sync.len())].clone()
        } else {
            self.members[self.rng.random_range(0..self.members.len())]
                .id
                .clone()
        };
        let op = format!("fo-{}", self.report.steps);
        match self.ctls[c].core.failover(n, to.clone(), false, false, op) {
            Ok(w) => {
                self.note(format!("manual failover to {to} asked of c{}", c + 1));
                self.execute(c, w)
            }
            Err(e) => self.note(format!("failover to {to} refused: {}", e.message)),
        }
    }

    pub(super) fn heal(&mut self, h: Heal) {
        match h {
            Heal::Uncut(pairs) => {
                for p in pairs {
                    self.net.cut.remove(&p);
                }
            }
            Heal::Loss => {
                self.net.loss = 0.0;
                self.net.dup = 0.0;
                self.net.extra_delay_us = 0;
            }
            Heal::EtcdUp => self.etcd.up = true,
            Heal::EtcdTimeouts => self.etcd.timeout_p = 0.0,
            Heal::Restart(Proc::Replica(r)) if !self.replicas[r].up => self.start_replica(r),
            Heal::Restart(Proc::Controller(c)) if !self.ctls[c].up => self.start_controller(c),
            Heal::Resume(Proc::Replica(r)) if self.replicas[r].paused_until <= self.now => {
                self.note(format!("r{} resumes", r + 1))
            }
            Heal::OwnDisk(r) => self.restore_own_disk(r),
            Heal::StopDup(inc) => self.stop_dup_inc(inc),
            _ => {}
        }
    }

    pub(super) fn heal_all(&mut self) {
        self.restore_all_disks();
        self.net.heal();
        self.etcd.up = true;
        self.etcd.timeout_p = 0.0;
        for r in 0..self.replicas.len() {
            if self.replicas[r].paused_until > self.now {
                self.replicas[r].paused_until = self.now;
            }
            if !self.replicas[r].up {
                self.start_replica(r);
            }
        }
        for c in 0..self.ctls.len() {
            self.ctls[c].paused_until = self.ctls[c].paused_until.min(self.now);
            if !self.ctls[c].up {
                self.start_controller(c);
            }
        }
    }
}
