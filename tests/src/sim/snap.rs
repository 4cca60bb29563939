//! Snapshots in the simulated replica runtime, modelled on `replica/src/node.rs` and
//! `logthread.rs`: a due snapshot is captured under the core (`begin_snapshot`), written in the
//! background, committed (renamed into place) only if the log generation did not move, then the
//! log is compacted behind it (`set_log_start`). A leader whose follower needs a compacted range
//! sends its newest snapshot file (`FetchStart::Snapshot`, as `repl/leader.rs`); the follower
//! installs it in the core at once and queues the install to its log thread, which renames it
//! and restarts the log after it later — records appended meanwhile wait behind it, and a crash
//! before it keeps the old log and snapshot. The follower's acknowledgement of the snapshot's
//! LSN goes out when the runtime sends it ([`super::ACK_SNAPSHOT_BEFORE_DURABLE`]).
//!
//! Also here: the I2 check on a crashed replica's disk (what survives must hold every write
//! acknowledged so far if the replica is a recorded sync member).
//! Nothing here decides protocol: the cores do.

use super::{Ev, Repl, World, ACK_SNAPSHOT_BEFORE_DURABLE};
use baton_common::directive::Mode;
use baton_common::{Epoch, Lsn};
use baton_replica::snapshot::Snapshot;
use baton_replica::wal::Record;
use rand::Rng;

impl World {
    /// The record at `lsn` in what replica `r` has written (its log, or queued behind an
    /// install), if it holds it.
    pub(super) fn record_at(&self, r: usize, lsn: u64) -> Option<Record> {
        let rep = &self.replicas[r];
        if let Some(s) = &rep.install {
            let i = lsn.checked_sub(s.lsn.0 + 1)? as usize;
            return rep.queued.get(i).cloned();
        }
        let i = lsn.checked_sub(rep.log_start)? as usize;
        rep.log.get(i).cloned()
    }

    /// The driver found a snapshot due and captured it (`Node::spawn_snapshot`): it is
    /// written in the background.
    pub(super) fn start_snapshot(&mut self, r: usize, snap: Snapshot, gen: u64) {
        let inc = self.replicas[r].inc;
        // Temp file written and fsynced.
        let d = self.rng.random_range(1_000..10_000);
        self.after_us(
            d,
            Ev::SnapWritten {
                r,
                inc,
                snap: Box::new(snap),
                gen,
            },
        );
    }

    /// The snapshot thread decides under the gate: commit (rename, directory fsync) if the log
    /// thread's generation is still the captured one, else discard.
    pub(super) fn snapshot_written(&mut self, r: usize, snap: Snapshot, gen: u64) {
        let rep = &mut self.replicas[r];
        if rep.disk_gen != gen {
            self.core(r).end_snapshot(None);
            return;
        }
        let lsn = snap.lsn;
        self.report.snapshots += 1;
        let rep = &mut self.replicas[r];
        if rep.snap.as_ref().is_none_or(|s| s.lsn <= lsn) {
            rep.snap = Some(snap);
        }
        let inc = rep.inc;
        let d = self.rng.random_range(200..3_000);
        self.after_us(d, Ev::Compact { r, inc, lsn, gen });
        self.core(r).end_snapshot(Some(lsn));
    }

    /// The log thread removes what the snapshot covers (if its generation did not move).
    pub(super) fn compact(&mut self, r: usize, lsn: Lsn, gen: u64) {
        let rep = &mut self.replicas[r];
        if rep.disk_gen != gen || rep.install.is_some() {
            return;
        }
        // Only durable, committed records lie at or below a snapshot of the applied state.
        let n = (lsn.0 + 1).saturating_sub(rep.log_start) as usize;
        let n = n.min(rep.durable);
        rep.log.drain(..n);
        rep.durable -= n;
        rep.log_start += n as u64;
        let first = Lsn(rep.log_start);
        self.core(r).set_log_start(first);
    }

    /// A leader sends its newest snapshot on stream `conn`, then streams the records after it.
    pub(super) fn send_snapshot(&mut self, r: usize, conn: u64) {
        let Some(s) = self.replicas[r].serving.get(&conn) else {
            return;
        };
        let follower = s.follower;
        let core = self.replicas[r].core.as_ref().expect("up");
        let snap = self.replicas[r]
            .snap
            .clone()
            .filter(|s| core.epoch_of(s.lsn).is_some());
        let Some(snap) = snap else {
            // `send_snapshot` fails: "the follower needs a snapshot but none exists".
            self.replicas[r].serving.remove(&conn);
            self.send_repl(
                r,
                follower,
                conn,
                Repl::Refused("the follower needs a snapshot but none exists".into()),
            );
            return;
        };
        let now = self.rms(r);
        let s = self.replicas[r].serving.get_mut(&conn).expect("serving");
        s.next = Some(snap.lsn.next());
        s.last_send_ms = now;
        self.note(format!(
            "r{} sends its snapshot at LSN {} to r{}",
            r + 1,
            snap.lsn,
            follower + 1
        ));
        self.send_repl(r, follower, conn, Repl::Snapshot(Box::new(snap)));
    }

    /// A follower received a whole snapshot (`repl/follower.rs`, `SnapshotEnd`).
    pub(super) fn install_snapshot(
        &mut self,
        r: usize,
        conn: u64,
        leader: usize,
        sid: u64,
        snap: Snapshot,
    ) {
        if !self.core(r).follower_stream_current(sid) {
            return;
        }
        let now = self.rms(r);
        // A second install queued behind a first one: the first is done by then.
        self.finish_install_now(r);
        // The received file, which the driver's `InstallSnapshot` queues to the log thread.
        self.replicas[r].incoming = Some(Box::new(snap.clone()));
        let fx = self.core(r).follower_install_snapshot(now, sid, snap);
        self.drive(r, fx);
        self.replicas[r].incoming = None;
        if ACK_SNAPSHOT_BEFORE_DURABLE {
            self.ack_flushed(r, conn, leader, sid);
        }
    }

    /// The driver's `InstallSnapshot`: the received snapshot is installed in the core; the
    /// log thread renames it into place and restarts the log after it later.
    pub(super) fn queue_install(&mut self, r: usize, lsn: Lsn) {
        let Some(snap) = self.replicas[r].incoming.take() else {
            self.violation(format!("r{} installs a snapshot it did not receive", r + 1));
            return;
        };
        assert_eq!(snap.lsn, lsn, "the engine installs the snapshot received");
        let leader = self.replicas[r].stream.as_ref().map_or(r, |s| s.leader);
        self.report.installs += 1;
        self.note(format!(
            "r{} installs a snapshot at LSN {lsn} from r{}",
            r + 1,
            leader + 1
        ));
        let log_gen = self.core(r).log_gen();
        let rep = &mut self.replicas[r];
        rep.install = Some(snap);
        rep.install_log_gen = log_gen;
        rep.queued.clear();
        rep.queued_unclean = None;
        let inc = rep.inc;
        // The log thread first writes the batch before it, then renames, fsyncs the directory,
        // removes older snapshots and restarts the log (a new segment, another fsync): a few
        // milliseconds, and now and then much longer on a loaded disk.
        let d = if self.rng.random_bool(0.8) {
            self.rng.random_range(1_000..12_000)
        } else {
            self.rng.random_range(30_000..500_000)
        };
        let at = rep.stall_until.max(self.now) + d;
        self.q.push(at, Ev::InstallDone { r, inc });
        if self.crash_after_install {
            // `crash-after-install`: the replica dies within 400 ms, sometimes before its log
            // thread made the snapshot durable.
            self.crash_after_install = false;
            *self
                .report
                .fault_kinds
                .entry("crashed-after-install".into())
                .or_insert(0) += 1;
            let d = self.rng.random_range(100..400_000);
            self.after_us(d, Ev::CrashRun { r, inc });
        }
    }

    /// The follower's acker: what the core holds flushed now, on the current stream.
    pub(super) fn ack_flushed(&mut self, r: usize, conn: u64, leader: usize, sid: u64) {
        // As `repl/follower.rs`: the promise made with the ack is recorded before it is sent.
        let now = self.rms(r);
        if let Some(out) = self.core(r).follower_ack(now, sid) {
            let m = Repl::Ack {
                epoch: out.epoch,
                flushed: out.flushed,
                promise_ms: out.promise_ms,
                echo_ms: out.echo_ms,
            };
            self.send_repl(r, leader, conn, m);
        }
    }

    /// The log thread executes a queued install: the snapshot is the only one, the log
    /// restarts after it with what was queued behind it.
    pub(super) fn install_done(&mut self, r: usize) {
        let rep = &mut self.replicas[r];
        let Some(snap) = rep.install.take() else {
            return;
        };
        rep.disk_gen += 1;
        rep.log_start = snap.lsn.0 + 1;
        let snap_lsn = snap.lsn;
        rep.log = std::mem::take(&mut rep.queued);
        rep.durable = 0;
        rep.snap = Some(*snap);
        if let Some(u) = rep.queued_unclean.take() {
            rep.meta_unclean = u;
        }
        if !rep.log.is_empty() && !rep.flush_scheduled {
            rep.flush_scheduled = true;
            let inc = rep.inc;
            let d = self.rng.random_range(200..3000);
            self.after_us(d, Ev::Flush { r, inc });
        }
        // As the log thread (`logthread.rs`): the install is durable, reported like a flush
        // of its LSN unless the core truncated or reset its log since (`Node::on_flushed`
        // compares the generations).
        let gen = self.replicas[r].install_log_gen;
        if !ACK_SNAPSHOT_BEFORE_DURABLE && self.core(r).log_gen() == gen {
            let now = self.rms(r);
            let fx = self.core(r).on_flushed(now, snap_lsn, gen);
            self.drive(r, fx);
        }
        if !ACK_SNAPSHOT_BEFORE_DURABLE {
            self.ack_on_stream(r);
        }
    }

    /// The follower's acker on its current stream, if it has one past the hello.
    pub(super) fn ack_on_stream(&mut self, r: usize) {
        if let Some(s) = &self.replicas[r].stream {
            if let Some(sid) = s.sid {
                let (conn, leader) = (s.conn, s.leader);
                self.ack_flushed(r, conn, leader, sid);
            }
        }
    }

    /// A truncation or reset queued behind an unfinished install runs after it.
    pub(super) fn finish_install_now(&mut self, r: usize) {
        if self.replicas[r].install.is_some() {
            self.install_done(r);
        }
    }

    /// Whether replica `r`'s disk (what a crash keeps) holds the record (`epoch`, `lsn`).
    fn disk_holds(&self, r: usize, epoch: u64, lsn: u64) -> bool {
        let rep = &self.replicas[r];
        if let Some(s) = &rep.snap {
            if lsn <= s.lsn.0 {
                let e = s
                    .history
                    .iter()
                    .rev()
                    .find(|(_, first)| first.0 <= lsn)
                    .map(|(e, _)| *e);
                return e == Some(Epoch(epoch));
            }
        }
        let Some(i) = lsn.checked_sub(rep.log_start) else {
            return false;
        };
        (i as usize) < rep.durable && rep.log[i as usize].epoch.0 == epoch
    }

    /// I2 on a crash: a recorded sync member (same data directory) keeps, on its disk, every
    /// write acknowledged so far — except those a forced failover was allowed to lose. Not
    /// checked in async mode, nor once etcd went back to an old state (its sync set is stale
    /// by the restore itself; the end-of-run checks judge what the controller did with it).
    pub(super) fn check_i2_at_crash(&mut self, r: usize) {
        if self.cfg.mode != Mode::SemiSync || self.etcd_restored || self.cfg.broken_ack_on_flush {
            return;
        }
        let rep = &self.replicas[r];
        let Some((state, _)) = &self.etcd.state else {
            return;
        };
        if !state
            .sync_set
            .iter()
            .any(|m| m.id == rep.id && m.data_id == rep.data_id)
        {
            return;
        }
        // What the crash keeps: the durable prefix, and not what waits behind an install.
        let missing: Vec<(u64, u64)> = self
            .leader_acked
            .iter()
            .copied()
            .filter(|&(e, l)| e >= self.forced_epoch && !self.disk_holds(r, e, l))
            .take(3)
            .collect();
        if let Some(&(e, l)) = missing.first() {
            let snap = rep.snap.as_ref().map(|s| s.lsn.0);
            let (start, durable) = (rep.log_start, rep.durable);
            let pending = rep.install.as_ref().map(|s| s.lsn.0);
            self.violation(format!(
                "I2 broken: r{} is a recorded sync member but crashes without the acknowledged write ({e}, {l}) on its disk \
                 (snapshot {snap:?}, log from LSN {start}, {durable} durable records, install pending {pending:?})",
                r + 1
            ));
        }
    }
}
