//! Impostors in the simulation (issue 10 items 1, 7 and 9): the `foreign` kind restarts a
//! declared member on a data directory of another deployment (another cluster id, perhaps a
//! higher epoch and a longer log) or on its own directory restored from an older copy (a wrong
//! backup: behind, perhaps diverged), and puts its own directory back later; the `dup-id` kind
//! runs a second process that claims a member's id (another boot, another data directory) next
//! to the real one for a while. The second process is a replica core that heartbeats to the
//! controllers and applies their answers; it never streams nor serves (a refused process gets
//! nothing from the controller, so a real one would not either).
//!
//! Checked on every cluster state written to etcd: no impostor (by data directory or boot) is
//! ever the recorded leader, a sync member or the member being added, and a member's id claimed
//! twice does not make its leader "restart" over and over. Checked at the end: each refusal is
//! journaled at most once per controller and episode, and the member rejoins with its own
//! directory (convergence, as every run).

use super::{Ev, Heal, Proc, World, DRIFT, HEARTBEAT_MS};
use baton_common::directive::Directive;
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId};
use baton_controller::journal::Entry;
use baton_controller::state::ClusterState;
use baton_replica::core::{Action, Core, CoreConfig, Recovered};
use baton_replica::snapshot::Snapshot;
use baton_replica::wal::{Op as WOp, Record};
use bytes::Bytes;
use rand::Rng;
use std::collections::{HashMap, HashSet};

/// What a replica's data directory holds (the fields of [`super::Replica`] that a crash keeps).
#[derive(Clone)]
pub(super) struct Disk {
    data_id: DataId,
    cluster_id: u64,
    meta_epoch: Epoch,
    meta_rev: u64,
    meta_unclean: bool,
    log: Vec<Record>,
    log_start: u64,
    durable: usize,
    snap: Option<Snapshot>,
    max_epoch: Epoch,
}

/// The second process of a `dup-id` episode.
pub(super) struct Dup {
    member: usize,
    core: Core,
    boot: BootId,
    data: DataId,
    /// A controller journaled it as a second claimant (it saw both alive): from then on it
    /// must never be heard as the member. Before that, the real one may have been quiet when
    /// it started, and a restart is all a controller can take it for.
    known: bool,
    inc: u64,
    hb_seq: u64,
    hb_sent_at: u64,
    clock: super::net::Clock,
    /// "restart" journal entries naming its member while it ran (or shortly after).
    restarts: u64,
    /// The real member's process runs during the episode (a real restart explains one).
    real_runs: u64,
}

/// Impostor bookkeeping of one run.
#[derive(Default)]
pub(super) struct Impostors {
    /// A member's own directory while it runs on another one.
    own: HashMap<usize, Disk>,
    /// An older copy of a member's directory (the "wrong backup").
    copies: HashMap<usize, (u64, Disk)>,
    /// Data directories and boots that are not the member's own.
    bad_data: HashSet<DataId>,
    bad_boots: HashSet<BootId>,
    pub(super) dup: Option<Dup>,
    next_dup_inc: u64,
    /// How often a controller became active (each run of one journals a refusal once).
    pub(super) activations: u64,
    /// Foreign directories and second processes that ran (the member, and what names the
    /// impostor as the refused one in a journal entry), for the journal check.
    episodes: Vec<(NodeId, String)>,
}

impl World {
    fn disk_of(&self, r: usize) -> Disk {
        let rep = &self.replicas[r];
        Disk {
            data_id: rep.data_id,
            cluster_id: rep.meta_cluster_id,
            meta_epoch: rep.meta_epoch,
            meta_rev: rep.meta_rev,
            meta_unclean: rep.meta_unclean,
            log: rep.log[..rep.durable].to_vec(),
            log_start: rep.log_start,
            durable: rep.durable,
            snap: rep.snap.clone(),
            max_epoch: rep.max_epoch,
        }
    }

    fn put_disk(&mut self, r: usize, d: Disk) {
        let rep = &mut self.replicas[r];
        rep.data_id = d.data_id;
        rep.meta_cluster_id = d.cluster_id;
        rep.meta_epoch = d.meta_epoch;
        rep.meta_rev = d.meta_rev;
        rep.meta_unclean = d.meta_unclean;
        rep.log = d.log;
        rep.log_start = d.log_start;
        rep.durable = d.durable;
        rep.snap = d.snap;
        rep.max_epoch = d.max_epoch;
    }

    /// Now and then an operator copies a member's directory (what a wrong backup restores).
    pub(super) fn maybe_copy_disk(&mut self) {
        if !self.cfg.faults.foreign || !self.rng.random_bool(0.3) {
            return;
        }
        let r = self.rng.random_range(0..self.replicas.len());
        if self.imp.own.contains_key(&r) || !self.replicas[r].up {
            return;
        }
        let d = self.disk_of(r);
        self.imp.copies.insert(r, (self.now, d));
    }

    /// The `foreign` kind: a member that is neither the recorded leader nor a recorded sync
    /// member (nor being added) restarts on another deployment's directory (70%) or on its own
    /// restored from an older copy; its own directory comes back after `hold`.
    pub(super) fn nemesis_foreign(&mut self, hold: u64) {
        let Some(r) = self.bystander() else { return };
        if self.imp.own.contains_key(&r) {
            return;
        }
        let copy = self
            .imp
            .copies
            .get(&r)
            .filter(|(at, d)| *at + 1_000_000 < self.now && d.data_id == self.replicas[r].data_id)
            .map(|(_, d)| d.clone());
        if let Some(old) = copy.filter(|_| self.rng.random_bool(0.3)) {
            self.crash_replica(r);
            self.note(format!(
                "r{} restarts on its own directory restored from an older copy (log to LSN {}, epoch {})",
                r + 1,
                old.log_start + old.log.len() as u64 - 1,
                old.meta_epoch
            ));
            *self
                .report
                .fault_kinds
                .entry("wrong-backup".into())
                .or_insert(0) += 1;
            self.put_disk(r, old);
            self.start_replica(r);
            return;
        }
        let own = {
            self.crash_replica(r);
            self.disk_of(r)
        };
        let foreign = self.foreign_disk(r);
        self.note(format!(
            "r{} restarts on a directory of another deployment (cluster id {:016x}, epoch {}, {} records) for {} ms",
            r + 1,
            foreign.cluster_id,
            foreign.meta_epoch,
            foreign.log.len(),
            hold / 1000
        ));
        self.imp.bad_data.insert(foreign.data_id);
        self.imp.episodes.push((
            self.replicas[r].id.clone(),
            format!("(data {}, at", foreign.data_id),
        ));
        self.imp.own.insert(r, own);
        self.put_disk(r, foreign);
        self.start_replica(r);
        self.after_us(hold, Ev::Heal(Heal::OwnDisk(r)));
    }

    /// A member that is neither the recorded leader nor in (or joining) the recorded sync set.
    fn bystander(&mut self) -> Option<usize> {
        let (leader, sync): (Option<NodeId>, Vec<NodeId>) = match &self.etcd.state {
            Some((s, _)) => (
                s.leader.as_ref().map(|l| l.id.clone()),
                s.sync_set
                    .iter()
                    .chain(s.adding.iter())
                    .map(|m| m.id.clone())
                    .collect(),
            ),
            None => return None,
        };
        let pool: Vec<usize> = (0..self.replicas.len())
            .filter(|r| {
                let id = &self.replicas[*r].id;
                Some(id) != leader.as_ref() && !sync.contains(id)
            })
            .collect();
        if pool.is_empty() {
            return None;
        }
        Some(pool[self.rng.random_range(0..pool.len())])
    }

    /// Another deployment's directory for member `r`: its own cluster id, an epoch around (or
    /// above) this one's, a log of its own values, perhaps longer than this cluster's.
    fn foreign_disk(&mut self, r: usize) -> Disk {
        let top = self
            .replicas
            .iter()
            .map(|x| x.max_epoch.0)
            .max()
            .unwrap_or(1);
        let epoch = Epoch(top.saturating_sub(1).max(1) + self.rng.random_range(0..4));
        let longest = self
            .replicas
            .iter()
            .map(|x| x.log_start + x.log.len() as u64)
            .max()
            .unwrap_or(1);
        let n = (longest as i64 + self.rng.random_range(-100i64..300)).max(2) as u64;
        let cluster_id = self.rng.random::<u64>() | 1;
        let mut log = vec![Record {
            epoch,
            lsn: Lsn(1),
            op: WOp::LeaderStart {
                leader: NodeId("r1".into()),
                lossy: false,
            },
        }];
        for lsn in 2..=n {
            log.push(Record {
                epoch,
                lsn: Lsn(lsn),
                op: WOp::Put {
                    key: Bytes::from(super::key_of(lsn as usize % self.cfg.keys)),
                    value: Bytes::from(format!("foreign-{r}-{lsn}")),
                },
            });
        }
        Disk {
            data_id: DataId(self.rng.random()),
            cluster_id,
            meta_epoch: epoch,
            meta_rev: self.rng.random_range(1..50),
            meta_unclean: false,
            durable: log.len(),
            log,
            log_start: 1,
            snap: None,
            max_epoch: epoch,
        }
    }

    /// The member's own directory is put back (the operator fixed the mount): it restarts on
    /// it and must rejoin.
    pub(super) fn restore_own_disk(&mut self, r: usize) {
        let Some(own) = self.imp.own.remove(&r) else {
            return;
        };
        self.crash_replica(r);
        self.note(format!("r{} restarts on its own directory", r + 1));
        self.put_disk(r, own);
        self.start_replica(r);
    }

    /// Every member back on its own directory (the end of the faults).
    pub(super) fn restore_all_disks(&mut self) {
        let rs: Vec<usize> = self.imp.own.keys().copied().collect();
        for r in rs {
            self.restore_own_disk(r);
        }
        self.stop_dup();
    }

    /// The `dup-id` kind: a second process claims a member's id (the leader's, 70%) for
    /// `hold`, with a fresh data directory and its own boot.
    pub(super) fn nemesis_dup(&mut self, hold: u64) {
        if self.imp.dup.is_some() {
            return;
        }
        let m = match self.leader_replica() {
            Some(l) if self.rng.random_bool(0.7) => l,
            _ => self.rng.random_range(0..self.replicas.len()),
        };
        // The member is alive and heard: a controller can tell the two apart.
        let heard =
            (0..self.ctls.len()).all(|c| !self.net.is_cut(Proc::Replica(m), Proc::Controller(c)));
        if !self.replicas[m].up || self.replicas[m].paused_until > self.now || !heard {
            return;
        }
        let id = self.replicas[m].id.clone();
        let boot = BootId(self.rng.random());
        let data_id = DataId(self.rng.random());
        let cfg = CoreConfig {
            id: id.clone(),
            cluster: "main".into(),
            addr: format!("{}-dup:7000", id),
            data_id,
            boot_id: boot,
            drift: DRIFT,
            snapshot_log_bytes: u64::MAX,
        };
        let rec = Recovered {
            cluster_id: 0,
            epoch: Epoch(0),
            applied_rev: 0,
            unclean: true,
            damaged: None,
            snapshot: None,
            records: Vec::new(),
            log_start: Lsn(1),
        };
        let clock = super::net::Clock {
            offset_ms: self.rng.random_range(1_000..1_000_000),
            rate: 1.0 + self.rng.random_range(-0.45 * DRIFT..0.45 * DRIFT),
        };
        self.imp.next_dup_inc += 1;
        let inc = self.imp.next_dup_inc;
        self.imp
            .episodes
            .push((id.clone(), format!("and boot {boot} at {id}-dup")));
        self.note(format!(
            "a second process claims {id} (boot {boot}) for {} ms",
            hold / 1000
        ));
        self.imp.dup = Some(Dup {
            member: m,
            core: Core::new(cfg, rec),
            boot,
            data: data_id,
            known: false,
            inc,
            hb_seq: 0,
            hb_sent_at: 0,
            clock,
            restarts: 0,
            real_runs: self.replicas[m].inc,
        });
        self.after_us(0, Ev::DupTimer { inc });
        self.after_us(hold, Ev::Heal(Heal::StopDup(inc)));
    }

    pub(super) fn stop_dup(&mut self) {
        if let Some(d) = self.imp.dup.take() {
            let id = self.replicas[d.member].id.clone();
            self.note(format!("the second process claiming {id} stops"));
        }
    }

    pub(super) fn stop_dup_inc(&mut self, inc: u64) {
        if self.imp.dup.as_ref().is_some_and(|d| d.inc == inc) {
            self.stop_dup();
        }
    }

    /// The second process's heartbeat timer: it heartbeats to every controller as its member.
    pub(super) fn dup_timer(&mut self, inc: u64) {
        let now = self.now;
        let Some(d) = self.imp.dup.as_mut().filter(|d| d.inc == inc) else {
            return;
        };
        let ms = d.clock.ms(now);
        d.hb_seq += 1;
        d.hb_sent_at = ms;
        let hb = d.core.heartbeat(ms, d.hb_seq);
        for c in 0..self.ctls.len() {
            self.send(
                Proc::Dup,
                Proc::Controller(c),
                None,
                super::Msg::Heartbeat(Box::new(hb.clone()), inc),
            );
        }
        self.after_us(HEARTBEAT_MS * 1000, Ev::DupTimer { inc });
    }

    /// A controller's answer reaches the second process, which applies it as a replica would.
    pub(super) fn dup_directive(&mut self, inc: Option<u64>, d: Directive) {
        let now = self.now;
        let Some(dup) = self
            .imp
            .dup
            .as_mut()
            .filter(|x| Some(x.inc) == inc && x.hb_seq == d.seq)
        else {
            return;
        };
        let ms = dup.clock.ms(now);
        let sent = dup.hb_sent_at;
        // As a replica's driver: a directive that needs its epoch stored first is acted on once
        // stored (the twin's meta is not modelled: it never restarts).
        let fx = dup.core.on_directive(ms, sent, &d);
        if let Some(Action::PersistEpoch { .. }) = fx.last() {
            let _ = dup.core.on_directive_persisted(ms, sent, &d);
        }
    }

    /// Every cluster state written to etcd: no impostor holds a role in it, and a claimed id
    /// does not make its leader restart again and again.
    pub(super) fn check_impostors(
        &mut self,
        prior: Option<&ClusterState>,
        s: &ClusterState,
        journal: &[Entry],
    ) {
        let bad = |data: &DataId, boot: Option<&BootId>| {
            self.imp.bad_data.contains(data) || boot.is_some_and(|b| self.imp.bad_boots.contains(b))
        };
        let mut errs = Vec::new();
        if let Some(l) = &s.leader {
            if bad(&l.data_id, Some(&l.boot_id)) {
                errs.push(format!(
                    "the controller records {} (data {}, boot {}) as leader: a foreign directory or a second process claiming the id",
                    l.id, l.data_id, l.boot_id
                ));
            }
        }
        for m in s.sync_set.iter().chain(s.adding.iter()) {
            if bad(&m.data_id, None) {
                errs.push(format!(
                    "the controller puts {} (data {}) in the sync set: a foreign directory or a second process claiming the id",
                    m.id, m.data_id
                ));
            }
        }
        if let Some(d) = self.imp.dup.as_mut() {
            let id = self.replicas[d.member].id.0.clone();
            let new_epoch = prior.is_none_or(|p| s.epoch > p.epoch);
            if new_epoch
                && journal.iter().any(|e| {
                    e.kind.as_str() == "restart" && e.message.contains(&format!("leader {id} "))
                })
            {
                d.restarts += 1;
            }
            // A real restart of the member explains one (the controller cannot tell it from
            // the second process then); more is the endless restart of issue 10 item 9.
            let real = self.replicas[d.member].inc.saturating_sub(d.real_runs) / 2;
            if d.restarts > 1 + real {
                errs.push(format!(
                    "{} \"restart\" promotions of {id} while a second process claims it ({} real restarts)",
                    d.restarts, real
                ));
            }
        }
        for e in errs {
            self.violation(e);
        }
    }

    /// Every journal write: a second process journaled as refused is known to the controller
    /// as one from then on.
    pub(super) fn note_impostor_journal(&mut self, journal: &[Entry]) {
        if let Some(d) = self.imp.dup.as_mut() {
            let id = &self.replicas[d.member].id;
            let refused = format!("and boot {} at {id}-dup", d.boot);
            if !d.known && journal.iter().any(|e| e.message.contains(&refused)) {
                d.known = true;
                self.imp.bad_boots.insert(d.boot);
                self.imp.bad_data.insert(d.data);
            }
        }
    }

    /// A controller restarted: what it knew of a second process is gone, and a fresh one takes
    /// whichever of two live processes it hears first for the member (it cannot tell them
    /// apart), until it sees both alive.
    pub(super) fn forget_dup(&mut self) {
        if let Some(d) = self.imp.dup.as_mut() {
            d.known = false;
            self.imp.bad_boots.remove(&d.boot);
            self.imp.bad_data.remove(&d.data);
        }
    }

    /// At the end: each foreign directory or second process was journaled at most once per
    /// controller activation (a controller journals a refusal once per episode).
    pub(super) fn check_impostor_journal(&mut self) {
        let mut errs = Vec::new();
        for (id, what) in &self.imp.episodes {
            let n = self
                .etcd
                .journal
                .iter()
                .filter(|e| e.message.contains(what.as_str()) && e.message.contains(&id.0))
                .map(|e| e.count)
                .sum::<u64>();
            *self
                .report
                .fault_kinds
                .entry("impostor-refusals-journaled".into())
                .or_insert(0) += n.min(1);
            if n > self.imp.activations {
                errs.push(format!(
                    "the refusal of {id} ({what}) was journaled {n} times in {} controller activations (once per episode and activation expected)",
                    self.imp.activations
                ));
            }
        }
        for e in errs {
            self.violation(e);
        }
    }
}
