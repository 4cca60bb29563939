//! The simulated replica disk: a durable log prefix plus an unsynced tail that a crash
//! loses, the meta facts, rollback archives; the log thread's flushes and truncations, and
//! a replica's process lifecycle (start from what the disk holds, crash, wipe).
//! Snapshots and installs on this disk are in `snap.rs`.

use super::msg::Ev;
use super::{key_of, rec_content, World, DRIFT, HEARTBEAT_MS, TICK_MS};
use baton_common::{BootId, DataId, Epoch, Lsn};
use baton_replica::core::{Core, CoreConfig, Recovered};
use baton_replica::wal::{Op as WOp, Record};
use rand::Rng;

impl World {
    pub(super) fn start_replica(&mut self, r: usize) {
        let boot = BootId(self.rng.random());
        // A third of the restarts come back at another address (another host, a container
        // with a new IP), decided by the boot id so that no other draw moves: the controller's
        // config keeps naming the old one, and followers and clients must find it at the
        // address its heartbeats advertise (DESIGN.md §8).
        if boot.0.is_multiple_of(3) && self.replicas[r].started > 0 {
            let n = self.replicas[r].started;
            self.members[r].addr = format!("r{}-moved{n}:7000", r + 1);
            *self
                .report
                .fault_kinds
                .entry("moved_address".into())
                .or_insert(0) += 1;
        }
        self.replicas[r].started += 1;
        let snapshot_log_bytes = self.snapshot_bytes;
        let rep = &mut self.replicas[r];
        rep.log.truncate(rep.durable);
        // As `Node::open_with_log`: a log that ends inside the snapshot restarts after it;
        // the records after the snapshot are replayed.
        let snap_lsn = rep.snap.as_ref().map_or(0, |s| s.lsn.0);
        if rep.log_start + (rep.log.len() as u64) <= snap_lsn {
            rep.log.clear();
            rep.durable = 0;
            rep.log_start = snap_lsn + 1;
        }
        assert!(
            rep.log_start <= snap_lsn + 1,
            "simulated disk: the log starts after the snapshot"
        );
        let cfg = CoreConfig {
            id: rep.id.clone(),
            cluster: "main".into(),
            addr: self.members[r].addr.clone(),
            data_id: rep.data_id,
            boot_id: boot,
            drift: DRIFT,
            snapshot_log_bytes,
        };
        let skip = (snap_lsn + 1 - rep.log_start) as usize;
        let rec = Recovered {
            cluster_id: rep.meta_cluster_id,
            epoch: rep.meta_epoch,
            applied_rev: rep.meta_rev,
            unclean: rep.meta_unclean,
            damaged: None,
            snapshot: rep.snap.clone(),
            records: rep.log[skip..].to_vec(),
            log_start: Lsn(rep.log_start),
        };
        let mut core = Core::new(cfg, rec);
        // As `node.rs` on a 2-core machine: a long run of committed records (4096 or more in
        // one step) is applied on two threads. Runs that long are rare in the simulation's
        // short histories; `state.rs` tests the parallel apply against the sequential one.
        core.set_apply_threads(2);
        // As `node.rs`: promises on from the start, leading nothing within one of it.
        if self.cfg.promise_ms > 0 {
            core.set_promises(self.cfg.promise_ms, rep.clock.ms(self.now));
        }
        rep.core = Some(core);
        rep.boot = boot;
        rep.up = true;
        rep.inc += 1;
        rep.disk_gen = 0;
        rep.flush_scheduled = false;
        rep.waiters.clear();
        rep.barriers.clear();
        rep.hb_seq = 0;
        rep.stream = None;
        rep.serving.clear();
        let inc = rep.inc;
        self.note(format!("r{} starts (inc {inc})", r + 1));
        let j1 = self.rng.random_range(0..TICK_MS * 1000);
        let j2 = self.rng.random_range(0..HEARTBEAT_MS * 1000);
        self.after_us(j1, Ev::Tick { r, inc });
        self.after_us(j2, Ev::HeartbeatTimer { r, inc });
    }

    pub(super) fn crash_replica(&mut self, r: usize) {
        if !self.replicas[r].up {
            return;
        }
        self.note(format!("r{} crashes", r + 1));
        self.check_i2_at_crash(r);
        let rep = &mut self.replicas[r];
        rep.up = false;
        rep.inc += 1;
        rep.core = None;
        rep.paused_until = 0;
        // Whatever waited behind an unfinished install in the log thread's channel is gone;
        // the disk still holds the old log and snapshot.
        rep.install = None;
        rep.queued.clear();
        rep.queued_unclean = None;
        rep.log.truncate(rep.durable);
        rep.waiters.clear();
        rep.barriers.clear();
        rep.stream = None;
        rep.serving.clear();
        // Its streams die; the peer's kernel learns it (a reset) soon after.
        let conns: Vec<(u64, (usize, usize))> = self
            .conns
            .iter()
            .filter(|(_, (f, l))| *f == r || *l == r)
            .map(|(c, p)| (*c, *p))
            .collect();
        for (conn, (f, l)) in conns {
            self.net.broken.insert(conn);
            self.conns.remove(&conn);
            let other = if f == r { l } else { f };
            self.after_us(1000, Ev::Closed { r: other, conn });
        }
    }

    pub(super) fn wipe_replica(&mut self, r: usize) {
        self.crash_replica(r);
        self.note(format!("r{} disk wiped", r + 1));
        let id = DataId(self.rng.random());
        let rep = &mut self.replicas[r];
        rep.data_id = id;
        rep.meta_cluster_id = 0;
        rep.meta_epoch = Epoch(0);
        rep.meta_rev = 0;
        rep.meta_unclean = true;
        rep.log.clear();
        rep.log_start = 1;
        rep.durable = 0;
        rep.snap = None;
        rep.max_epoch = Epoch(0);
    }

    pub(super) fn append_local(&mut self, r: usize, rec: Record) {
        let k = (rec.epoch.0, rec.lsn.0);
        let content = rec_content(&rec);
        match self.written.get(&k) {
            Some(c) if *c != content => {
                let c = c.clone();
                self.violation(format!(
                    "one writer per epoch broken: ({}, {}) holds {c:?} elsewhere and {content:?} on r{}",
                    k.0, k.1, r + 1
                ));
            }
            Some(_) => {}
            None => {
                self.written.insert(k, content);
            }
        }
        if let WOp::LeaderStart { leader, .. } = &rec.op {
            // One leader per epoch (I1): every copy of an epoch's leader-start is the same one.
            let me = (leader.0.clone(), rec.lsn.0);
            match self.epoch_starts.get(&rec.epoch.0) {
                Some(first) if *first != me => {
                    let first = first.clone();
                    self.violation(format!(
                        "two leaders started epoch {}: {} at LSN {} and {} at LSN {} (seen on r{})",
                        rec.epoch,
                        first.0,
                        first.1,
                        me.0,
                        me.1,
                        r + 1
                    ));
                }
                Some(_) => {}
                None => {
                    self.epoch_starts.insert(rec.epoch.0, me);
                    let values = self.values_below(r, rec.lsn);
                    self.start_states.insert(rec.epoch.0, (self.now, values));
                }
            }
        }
        let rep = &mut self.replicas[r];
        let end = rep.log_start + rep.log.len() as u64 + rep.queued.len() as u64;
        let end = match &rep.install {
            Some(s) => s.lsn.0 + 1 + rep.queued.len() as u64,
            None => end,
        };
        if rec.lsn.0 != end {
            self.violation(format!(
                "r{} appends LSN {} where its log continues at LSN {end}",
                r + 1,
                rec.lsn
            ));
            return;
        }
        if rep.install.is_some() {
            // Behind the install in the log thread's channel.
            rep.queued.push(rec);
            return;
        }
        rep.log.push(rec);
        if !rep.flush_scheduled {
            rep.flush_scheduled = true;
            let inc = rep.inc;
            let d = self.rng.random_range(200..3000);
            self.after_us(d, Ev::Flush { r, inc });
        }
    }

    /// What every key holds in replica `r`'s log just below `lsn`: its applied state and the
    /// records it holds after it (behind an unfinished install, the queued ones).
    pub(super) fn values_below(&self, r: usize, lsn: Lsn) -> Vec<Option<String>> {
        let rep = &self.replicas[r];
        let core = rep.core.as_ref().expect("up");
        let mut v: Vec<Option<String>> = (0..self.cfg.keys)
            .map(|k| {
                core.state()
                    .get(key_of(k).as_bytes())
                    .map(|e| String::from_utf8_lossy(&e.value).into_owned())
            })
            .collect();
        let tail = if rep.install.is_some() {
            &rep.queued
        } else {
            &rep.log
        };
        for rec in tail
            .iter()
            .filter(|x| x.lsn > core.applied() && x.lsn < lsn)
        {
            let (key, val) = match &rec.op {
                WOp::Put { key, value } => (key, Some(String::from_utf8_lossy(value).into_owned())),
                WOp::Delete { key } => (key, None),
                WOp::LeaderStart { .. } => continue,
            };
            if let Some(k) = (0..self.cfg.keys).find(|k| key_of(*k).as_bytes() == &key[..]) {
                v[k] = val;
            }
        }
        v
    }

    pub(super) fn flush(&mut self, r: usize) {
        let rep = &mut self.replicas[r];
        if rep.install.is_some() || rep.stall_until > self.now {
            // The log thread is busy with an install or its disk stalls: the batch waits.
            let (inc, at) = (rep.inc, rep.stall_until.max(self.now + 500));
            self.q.push(at, Ev::Flush { r, inc });
            return;
        }
        rep.flush_scheduled = false;
        rep.durable = rep.log.len();
        let lsn = Lsn(rep.log_start + rep.durable as u64 - 1);
        let now = self.rms(r);
        let gen = self.core(r).log_gen();
        let fx = self.core(r).on_flushed(now, lsn, gen);
        self.drive(r, fx);
        // A follower acknowledges its flush on its stream.
        self.ack_on_stream(r);
    }

    /// Archives and cuts the log from `from` (the log thread's `Truncate`, after everything
    /// queued before it, an unfinished install included).
    pub(super) fn truncate_disk(&mut self, r: usize, from: Lsn) {
        self.finish_install_now(r);
        let rep = &mut self.replicas[r];
        rep.disk_gen += 1;
        let keep = from.0.saturating_sub(rep.log_start) as usize;
        if keep < rep.log.len() {
            let cut: Vec<Record> = rep.log.drain(keep..).collect();
            rep.rollbacks.extend(cut);
        }
        rep.durable = rep.durable.min(keep);
    }
}
