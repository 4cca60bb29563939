//! The simulated replica process around its [`Core`](baton_replica::core::Core): the
//! replica's state ([`Replica`]); every engine step carried out by the replica's own driver
//! ([`driver::step`]) through [`SimIo`], this runtime's [`Io`] (log writes on the simulated
//! disk, answers as messages to clients, progress as a push to the streams); its timers,
//! heartbeats and directives, and client requests at a replica. Replication streams are in
//! `repl.rs`, the disk in `disk.rs`.

use super::msg::{Msg, Req, Res};
use super::net::{Clock, Proc};
use super::{World, STREAM_SILENCE_MS, WRITE_TIMEOUT_MS};
use baton_common::directive::{Directive, LeaderRef, ReportedRole};
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId, Version};
use baton_replica::core::{Action, Consistency, Core, Truncation, WriteReject, WriteReq};
use baton_replica::driver::{self, Io, Stepped, WriteAnswer};
use baton_replica::snapshot::Snapshot;
use baton_replica::wal::Record;
use bytes::Bytes;
use std::collections::BTreeMap;

pub(super) struct FollowerStream {
    pub(super) conn: u64,
    pub(super) leader: usize,
    /// The leader as the directive names it (its answer is checked against this).
    pub(super) expected: LeaderRef,
    pub(super) directed: Epoch,
    pub(super) sid: Option<u64>,
    pub(super) last_msg_ms: u64,
}

pub(super) struct Serving {
    pub(super) follower: usize,
    pub(super) id: NodeId,
    pub(super) sid: u64,
    pub(super) epoch: Epoch,
    /// `None` during the exchange.
    pub(super) next: Option<Lsn>,
    pub(super) commit_sent: Lsn,
    pub(super) last_send_ms: u64,
}

pub(super) struct Replica {
    pub(super) id: NodeId,
    /// This process run's boot id.
    pub(super) boot: BootId,
    pub(super) clock: Clock,
    pub(super) up: bool,
    pub(super) inc: u64,
    pub(super) paused_until: u64,
    // The disk.
    pub(super) data_id: DataId,
    /// The deployment the directory belongs to (0: adopted from the first directive, as a
    /// fresh or this cluster's own directory does here).
    pub(super) meta_cluster_id: u64,
    pub(super) meta_epoch: Epoch,
    pub(super) meta_rev: u64,
    pub(super) meta_unclean: bool,
    /// Every record written, LSN `log_start + i` at index `i`; the first `durable` survive a
    /// crash.
    pub(super) log: Vec<Record>,
    pub(super) log_start: u64,
    pub(super) durable: usize,
    /// The newest snapshot renamed into place (durable).
    pub(super) snap: Option<Snapshot>,
    pub(super) rollbacks: Vec<Record>,
    /// Truncations, resets and installs the log thread executed in this process run.
    pub(super) disk_gen: u64,
    /// A snapshot install queued to the log thread and not done yet: records appended after
    /// it (and an `unclean` change) wait behind it, as in the log thread's channel.
    pub(super) install: Option<Box<Snapshot>>,
    /// The core's log generation right after that install (`Node::on_flushed` reports the
    /// install durable only if it did not change since).
    pub(super) install_log_gen: u64,
    pub(super) queued: Vec<Record>,
    /// A snapshot received from the leader, during the step that installs it (the runtime's
    /// incoming snapshot file).
    pub(super) incoming: Option<Box<Snapshot>>,
    pub(super) queued_unclean: Option<bool>,
    /// The disk stalls (every fsync, rename and install waits) until then (µs).
    pub(super) stall_until: u64,
    // The process.
    pub(super) core: Option<Core>,
    pub(super) flush_scheduled: bool,
    pub(super) waiters: BTreeMap<Lsn, (usize, Version, u64)>,
    pub(super) barriers: Vec<(Lsn, (usize, u64))>,
    pub(super) hb_seq: u64,
    pub(super) hb_sent_at: u64,
    pub(super) stream: Option<FollowerStream>,
    pub(super) retry_at_ms: u64,
    /// How many times this member's process started (a restart may move its address).
    pub(super) started: u64,
    pub(super) serving: BTreeMap<u64, Serving>,
    /// Highest epoch this data directory ever reported (epochs never go back).
    pub(super) max_epoch: Epoch,
}

impl World {
    pub(super) fn core(&mut self, r: usize) -> &mut Core {
        self.replicas[r].core.as_mut().expect("replica up")
    }

    /// Carries out a step of replica `r`'s engine in the replica driver's order
    /// ([`driver::step`], the same code `Node::step` runs), then notes what the checks need.
    pub(super) fn drive(&mut self, r: usize, fx: Vec<Action>) -> Stepped {
        let out = driver::step(&mut SimIo { w: self, r }, fx);
        if self.cfg.broken_ack_on_flush {
            self.ack_on_flush(r);
        }
        let commit = if self.cfg.broken_ack_on_flush {
            self.core(r).flushed()
        } else {
            self.core(r).commit()
        };
        if self.core(r).role() == ReportedRole::Leader {
            let e = self.core(r).epoch().0;
            if self
                .epoch_starts
                .get(&e)
                .is_some_and(|(_, lsn)| commit.0 >= *lsn)
            {
                self.committed_starts.insert(e);
            }
        }
        out
    }

    /// `broken_ack_on_flush`: a runtime that breaks the commit rule, answering writes and
    /// refusals on the leader's own fsync (the checks must catch it).
    fn ack_on_flush(&mut self, r: usize) {
        let now = self.rms(r);
        let flushed = self.core(r).flushed();
        let ack = self.core(r).may_acknowledge(now);
        loop {
            let (op, version, _) = match self.replicas[r].waiters.first_entry() {
                Some(e) if *e.key() <= flushed => e.remove(),
                _ => break,
            };
            if ack {
                self.leader_acked.push((version.epoch.0, version.lsn.0));
                self.reply(r, op, Res::Written(version));
            } else {
                self.reply(
                    r,
                    op,
                    Res::Unknown("the lease expired before the write could be acknowledged".into()),
                );
            }
        }
        let rep = &mut self.replicas[r];
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut rep.barriers)
            .into_iter()
            .partition(|(l, _)| *l <= flushed);
        rep.barriers = keep;
        for (_, (op, _)) in done {
            self.reply(r, op, Res::Precondition);
        }
    }

    pub(super) fn reply(&mut self, r: usize, op: usize, res: Res) {
        let client = self.ops[op].client;
        self.send(
            Proc::Replica(r),
            Proc::Client(client),
            None,
            Msg::Reply { op, res },
        );
    }

    pub(super) fn replica_tick(&mut self, r: usize) {
        let now = self.rms(r);
        let fx = self.core(r).tick(now);
        self.drive(r, fx);
        // Writes and refusals that waited too long.
        let rep = &mut self.replicas[r];
        let expired: Vec<Lsn> = rep
            .waiters
            .iter()
            .filter(|(_, (_, _, dl))| now >= *dl)
            .map(|(l, _)| *l)
            .collect();
        let mut late = Vec::new();
        for l in expired {
            if let Some((op, _, _)) = rep.waiters.remove(&l) {
                late.push((op, true));
            }
        }
        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut rep.barriers)
            .into_iter()
            .partition(|(_, (_, dl))| now >= *dl);
        rep.barriers = keep;
        late.extend(old.into_iter().map(|(_, (op, _))| (op, false)));
        for (op, unknown) in late {
            let res = if unknown {
                Res::Unknown("write timeout".into())
            } else {
                Res::NotApplied("the pending record did not commit in time".into())
            };
            self.reply(r, op, res);
        }
        // The follower's stream: silence, a new leader, reconnecting.
        let target = self.core(r).follower_target();
        let rep = &mut self.replicas[r];
        if let Some(s) = &rep.stream {
            let stale = match &target {
                None => true,
                Some((l, e)) => self.members[s.leader].id != l.id || s.directed != *e,
            };
            if stale || now.saturating_sub(s.last_msg_ms) >= STREAM_SILENCE_MS {
                let conn = s.conn;
                self.drop_stream(r, conn, 50);
            }
        }
        let rep = &self.replicas[r];
        if rep.stream.is_none() && now >= rep.retry_at_ms {
            if let Some((l, e)) = target {
                // Dialed by address, as the runtime does: nobody listens at an address a
                // member left (connection refused; try again later).
                match self
                    .members
                    .iter()
                    .position(|m| m.id == l.id && m.addr == l.addr)
                {
                    Some(li) => self.open_stream(r, li, l, e),
                    None => self.replicas[r].retry_at_ms = now + 50,
                }
            }
        }
    }

    pub(super) fn send_heartbeats(&mut self, r: usize) {
        let now = self.rms(r);
        let rep = &mut self.replicas[r];
        rep.hb_seq += 1;
        rep.hb_sent_at = now;
        let (seq, inc) = (rep.hb_seq, rep.inc);
        let hb = self.core(r).heartbeat(now, seq);
        for c in 0..self.ctls.len() {
            self.send(
                Proc::Replica(r),
                Proc::Controller(c),
                None,
                Msg::Heartbeat(Box::new(hb.clone()), inc),
            );
        }
    }

    pub(super) fn on_directive(&mut self, r: usize, d: Directive) {
        if d.seq != self.replicas[r].hb_seq {
            return;
        }
        let sent_at = self.replicas[r].hb_sent_at;
        let now = self.rms(r);
        let before = (self.core(r).epoch(), self.core(r).role());
        let waited_before = self.core(r).waited().to_vec();
        // As `heartbeat::handle`: step, persist what it asks for, report it, step again.
        let fx = self.core(r).on_directive(now, sent_at, &d);
        let mut out = self.drive(r, fx);
        if let Some((epoch, rev, _)) = out.persist.take() {
            let rep = &mut self.replicas[r];
            rep.meta_epoch = rep.meta_epoch.max(epoch);
            if let Some(rev) = rev {
                rep.meta_rev = rev;
            }
            let fx = self.core(r).on_directive_persisted(now, sent_at, &d);
            out = self.drive(r, fx);
        }
        if out.ignored.is_some() {
            return;
        }
        let after = (self.core(r).epoch(), self.core(r).role());
        if before != after || self.core(r).waited() != waited_before {
            // As `heartbeat.rs`: a changed epoch, role or sync set is reported at once.
            self.send_heartbeats(r);
        }
        if before != after {
            self.note(format!(
                "r{} directive: epoch {} role {:?} -> epoch {} role {:?} (rev {}, term {})",
                r + 1,
                before.0,
                before.1,
                after.0,
                after.1,
                d.rev,
                d.controller_term
            ));
        }
    }

    pub(super) fn on_request(&mut self, r: usize, op: usize, req: Req) {
        let now = self.rms(r);
        match req {
            Req::Read(key) => {
                let res = match self.core(r).read(now, key.as_bytes(), Consistency::Leader) {
                    Ok(ok) => Res::Read(
                        ok.entry
                            .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.version)),
                    ),
                    Err(e) => Res::NotApplied(format!("{e:?}")),
                };
                self.reply(r, op, res);
            }
            Req::ReadAny(key) => {
                let res = match self.core(r).read(now, key.as_bytes(), Consistency::Any) {
                    Ok(ok) => Res::ReadAny(
                        ok.entry
                            .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.version)),
                    ),
                    Err(e) => Res::NotApplied(format!("{e:?}")),
                };
                self.reply(r, op, res);
            }
            Req::Put { .. } | Req::Delete { .. } => {
                let (key, value, expect) = match req {
                    Req::Put { key, value, expect } => (key, Some(Bytes::from(value)), expect),
                    Req::Delete { key, expect } => (key, None, expect),
                    _ => unreachable!(),
                };
                let kb = Bytes::from(key.clone());
                let w = WriteReq {
                    key: kb.clone(),
                    value,
                    expect,
                };
                match self.core(r).propose(now, w) {
                    Ok(fx) => {
                        let Some(Action::Append(rec)) = fx.first() else {
                            unreachable!("an accepted write is one append")
                        };
                        let version = Version {
                            epoch: rec.epoch,
                            lsn: rec.lsn,
                        };
                        self.replicas[r]
                            .waiters
                            .insert(rec.lsn, (op, version, now + WRITE_TIMEOUT_MS));
                        self.drive(r, fx);
                    }
                    Err(WriteReject::PreconditionFailed { .. }) | Err(WriteReject::NotFound) => {
                        match self.core(r).pending_lsn_of(&kb) {
                            Some(l) => self.replicas[r]
                                .barriers
                                .push((l, (op, now + WRITE_TIMEOUT_MS))),
                            None => self.reply(r, op, Res::Precondition),
                        }
                    }
                    Err(e) => self.reply(r, op, Res::NotApplied(format!("{e:?}"))),
                }
            }
        }
    }
}

/// The simulation's [`Io`]: replica `r` of the world, for one step.
struct SimIo<'a> {
    w: &'a mut World,
    r: usize,
}

impl Io for SimIo<'_> {
    /// The operation, its version, and when it times out (replica clock, ms).
    type Write = (usize, Version, u64);
    /// The operation and when it times out.
    type Barrier = (usize, u64);

    fn core(&mut self) -> &mut Core {
        self.w.core(self.r)
    }

    fn waiters(&mut self) -> &mut BTreeMap<Lsn, (usize, Version, u64)> {
        &mut self.w.replicas[self.r].waiters
    }

    fn barriers(&mut self) -> &mut Vec<(Lsn, (usize, u64))> {
        &mut self.w.replicas[self.r].barriers
    }

    fn now_ms(&self) -> u64 {
        self.w.rms(self.r)
    }

    fn append(&mut self, rec: Record) {
        self.w.append_local(self.r, rec);
    }

    fn store_unclean(&mut self, unclean: bool) {
        let rep = &mut self.w.replicas[self.r];
        if rep.install.is_some() {
            rep.queued_unclean = Some(unclean);
        } else {
            rep.meta_unclean = unclean;
        }
    }

    fn truncate(&mut self, t: Truncation) {
        let r = self.r;
        self.w.note(format!(
            "r{} truncates from LSN {} ({} records archived, below_commit {})",
            r + 1,
            t.from,
            t.records.len(),
            t.below_commit
        ));
        self.w.truncate_disk(r, t.from);
    }

    fn resync(&mut self, from: Lsn) {
        let r = self.r;
        self.w.note(format!("r{} resyncs from LSN {from}", r + 1));
        self.w.truncate_disk(r, from);
        let rep = &mut self.w.replicas[r];
        let rest: Vec<Record> = rep.log.drain(..).collect();
        rep.rollbacks.extend(rest);
        rep.durable = 0;
        rep.log_start = 1;
        // Snapshots are set aside with the log.
        rep.snap = None;
        rep.meta_unclean = true;
    }

    fn install_snapshot(&mut self, lsn: Lsn) {
        self.w.queue_install(self.r, lsn);
    }

    fn answer_write(&mut self, (op, version, _): (usize, Version, u64), answer: WriteAnswer) {
        let res = match answer {
            WriteAnswer::Committed => {
                self.w.leader_acked.push((version.epoch.0, version.lsn.0));
                Res::Written(version)
            }
            WriteAnswer::LeaseExpired => {
                Res::Unknown("the lease expired before the write could be acknowledged".into())
            }
            WriteAnswer::Failed(reason) => Res::Unknown(reason),
        };
        self.w.reply(self.r, op, res);
    }

    fn answer_barrier(&mut self, (op, _): (usize, u64), answer: Result<(), String>) {
        let res = match answer {
            Ok(()) => Res::Precondition,
            Err(reason) => Res::NotApplied(reason),
        };
        self.w.reply(self.r, op, res);
    }

    fn published(&mut self) {
        self.w.push_streams(self.r);
    }

    fn start_snapshot(&mut self, snap: Snapshot, gen: u64) {
        self.w.start_snapshot(self.r, snap, gen);
    }
}
