//! Replication streams between simulated replicas, as `repl/follower.rs` and
//! `repl/leader.rs` run them: the follower's hello, divergence exchange, appends and
//! keepalives; the leader's side (accept, epoch queries, fetches, acknowledgements) and
//! pushing records or keepalives to every streaming follower.

use super::msg::{Ev, Msg, Repl};
use super::net::Proc;
use super::replica::{FollowerStream, Serving};
use super::{World, BATCH, HEARTBEAT_MS};
use baton_common::directive::LeaderRef;
use baton_common::{Epoch, Lsn};
use baton_replica::core::{AppendHeader, FetchStart, FollowerNext};
use baton_replica::wal::Record;

impl World {
    pub(super) fn send_repl(&mut self, from: usize, to: usize, conn: u64, m: Repl) {
        self.send(
            Proc::Replica(from),
            Proc::Replica(to),
            None,
            Msg::Repl {
                conn,
                m: Box::new(m),
            },
        );
    }

    pub(super) fn open_stream(
        &mut self,
        r: usize,
        leader: usize,
        expected: LeaderRef,
        directed: Epoch,
    ) {
        self.next_conn += 1;
        let conn = self.next_conn;
        self.conns.insert(conn, (r, leader));
        let now = self.rms(r);
        let core = self.replicas[r].core.as_ref().expect("up");
        let hello = Repl::Hello {
            id: self.replicas[r].id.clone(),
            data_id: core.data_id(),
            cluster_id: core.cluster_id(),
            epoch: core.epoch(),
        };
        self.replicas[r].stream = Some(FollowerStream {
            conn,
            leader,
            expected,
            directed,
            sid: None,
            last_msg_ms: now,
        });
        self.send_repl(r, leader, conn, hello);
    }

    pub(super) fn drop_stream(&mut self, r: usize, conn: u64, retry_ms: u64) {
        let rep = &mut self.replicas[r];
        if rep.stream.as_ref().is_some_and(|s| s.conn == conn) {
            rep.stream = None;
            rep.retry_at_ms = rep.clock.ms(self.now) + retry_ms;
        }
        self.net.broken.insert(conn);
        if let Some((_, l)) = self.conns.remove(&conn) {
            // The leader's side sees the close after a network delay.
            if !self.net.is_cut(Proc::Replica(r), Proc::Replica(l)) {
                let d = self.delay();
                self.after_us(d, Ev::Closed { r: l, conn });
            }
        }
    }

    pub(super) fn stream_closed(&mut self, r: usize, conn: u64) {
        if let Some(s) = self.replicas[r].serving.remove(&conn) {
            self.core(r).leader_detach(&s.id, s.sid);
        }
        if self.replicas[r]
            .stream
            .as_ref()
            .is_some_and(|s| s.conn == conn)
        {
            let rep = &mut self.replicas[r];
            rep.stream = None;
            rep.retry_at_ms = rep.clock.ms(self.now) + 50;
        }
    }

    pub(super) fn follower_next(&mut self, r: usize, conn: u64, sid: u64, next: FollowerNext) {
        let leader = self.replicas[r].stream.as_ref().expect("stream").leader;
        match next {
            FollowerNext::Query(e) => self.send_repl(r, leader, conn, Repl::EpochQuery(e)),
            FollowerNext::Fetch { from, prev_epoch } => {
                self.send_repl(r, leader, conn, Repl::Fetch { from, prev_epoch });
                if let Err(e) = self.core(r).follower_begin_streaming(sid) {
                    self.note(format!("r{} stream: {e}", r + 1));
                    self.drop_stream(r, conn, 50);
                }
            }
        }
    }

    pub(super) fn on_follower_msg(&mut self, r: usize, conn: u64, m: Repl) {
        let Some(s) = &self.replicas[r].stream else {
            return;
        };
        if s.conn != conn {
            return;
        }
        let now = self.rms(r);
        let leader = s.leader;
        let sid = s.sid;
        if let Some(s) = self.replicas[r].stream.as_mut() {
            s.last_msg_ms = now;
        }
        let res: Result<(), String> = (|| {
            match m {
                Repl::Welcome {
                    epoch,
                    id,
                    boot_id,
                    data_id,
                    cluster_id,
                } => {
                    // As `repl/follower.rs`: the leader's identity, then its epoch persisted
                    // before it counts.
                    let s = self.replicas[r].stream.as_ref().expect("s");
                    let (expected, directed) = (s.expected.clone(), s.directed);
                    let fx = self.core(r).follower_on_welcome(
                        &expected, directed, &id, boot_id, data_id, "main", cluster_id, epoch,
                    )?;
                    if let Some((e, _, _)) = self.drive(r, fx).persist {
                        let rep = &mut self.replicas[r];
                        rep.meta_epoch = rep.meta_epoch.max(e);
                        self.core(r).follower_epoch_persisted(e);
                    }
                    let (sid, next) = self.core(r).follower_start(now, &expected.id, epoch)?;
                    self.replicas[r].stream.as_mut().expect("s").sid = Some(sid);
                    self.follower_next(r, conn, sid, next);
                }
                Repl::Refused(reason) => return Err(reason),
                Repl::EpochEnd { epoch, end, lossy } => {
                    let sid = sid.ok_or("no stream id")?;
                    let (next, fx) = self
                        .core(r)
                        .follower_on_epoch_end(now, sid, epoch, end, lossy)?;
                    self.drive(r, fx);
                    self.follower_next(r, conn, sid, next);
                }
                Repl::Append {
                    h,
                    records,
                    sent_ms,
                } => {
                    let sid = sid.ok_or("no stream id")?;
                    let fx = self.core(r).follower_on_append(now, sid, h, records)?;
                    self.core(r).follower_note_sent(sid, sent_ms);
                    self.drive(r, fx);
                }
                Repl::Keepalive {
                    epoch,
                    commit,
                    end,
                    sent_ms,
                } => {
                    let sid = sid.ok_or("no stream id")?;
                    let fx = self
                        .core(r)
                        .follower_on_keepalive(now, sid, epoch, commit, end)?;
                    self.core(r).follower_note_sent(sid, sent_ms);
                    self.drive(r, fx);
                    if self.cfg.periodic_acks {
                        // The runtime's acker also acknowledges every 20 ms without a new
                        // flush (`repl/follower.rs`): a quiet follower is not "not acking".
                        self.ack_flushed(r, conn, leader, sid);
                    }
                }
                Repl::Snapshot(snap) => {
                    let sid = sid.ok_or("no stream id")?;
                    self.install_snapshot(r, conn, leader, sid, *snap);
                }
                other => return Err(format!("unexpected message to a follower: {other:?}")),
            }
            Ok(())
        })();
        if let Err(e) = res {
            self.note(format!("r{} stream from r{} ends: {e}", r + 1, leader + 1));
            self.drop_stream(r, conn, 50);
        }
    }

    pub(super) fn on_leader_msg(&mut self, r: usize, from: usize, conn: u64, m: Repl) {
        let now = self.rms(r);
        match m {
            Repl::Hello {
                id,
                data_id,
                cluster_id,
                epoch,
            } => {
                // As `repl/leader.rs`: identity first, nothing a stranger says counts.
                let core = self.core(r);
                let (res, fx) = match core.leader_check_peer(&id, "main", cluster_id) {
                    Ok(()) => core.leader_accept(now, &id, data_id, epoch),
                    Err(why) => {
                        core.note_refused(why.clone());
                        (Err(why), Vec::new())
                    }
                };
                let my_epoch = self.core(r).epoch();
                let (my_data, my_cluster) = (self.core(r).data_id(), self.core(r).cluster_id());
                let welcome = Repl::Welcome {
                    epoch: my_epoch,
                    id: self.replicas[r].id.clone(),
                    boot_id: self.replicas[r].boot,
                    data_id: my_data,
                    cluster_id: my_cluster,
                };
                self.drive(r, fx);
                match res {
                    Ok(sid) => {
                        self.replicas[r].serving.insert(
                            conn,
                            Serving {
                                follower: from,
                                id,
                                sid,
                                epoch: my_epoch,
                                next: None,
                                commit_sent: Lsn(0),
                                last_send_ms: now,
                            },
                        );
                        self.send_repl(r, from, conn, welcome);
                    }
                    Err(reason) => self.send_repl(r, from, conn, Repl::Refused(reason)),
                }
            }
            Repl::EpochQuery(q) => {
                if !self.replicas[r].serving.contains_key(&conn) {
                    return;
                }
                let (epoch, end, lossy) = self.core(r).epoch_end(q);
                self.send_repl(r, from, conn, Repl::EpochEnd { epoch, end, lossy });
            }
            Repl::Fetch {
                from: f,
                prev_epoch,
            } => {
                let Some(s) = self.replicas[r].serving.get(&conn) else {
                    return;
                };
                let (id, sid) = (s.id.clone(), s.sid);
                match self.core(r).leader_fetch(&id, sid, f, prev_epoch) {
                    Ok(FetchStart::Log(l)) => {
                        self.replicas[r].serving.get_mut(&conn).expect("s").next = Some(l);
                        self.push_streams(r);
                    }
                    Ok(FetchStart::Snapshot) => {
                        self.send_snapshot(r, conn);
                    }
                    Err(reason) => {
                        self.replicas[r].serving.remove(&conn);
                        self.send_repl(r, from, conn, Repl::Refused(reason));
                    }
                }
            }
            Repl::Ack {
                epoch,
                flushed,
                promise_ms,
                echo_ms,
            } => {
                let Some(s) = self.replicas[r].serving.get(&conn) else {
                    return;
                };
                let (id, sid) = (s.id.clone(), s.sid);
                // As `repl/leader.rs`: the promise first, for this leader's epoch only.
                if epoch == self.core(r).epoch() {
                    self.core(r)
                        .leader_on_promise(now, &id, sid, echo_ms, promise_ms);
                }
                let fx = self.core(r).leader_on_ack(now, &id, sid, epoch, flushed);
                self.drive(r, fx);
            }
            other => {
                self.violation(format!("unexpected message to a leader: {other:?}"));
            }
        }
    }

    /// Sends every streaming follower what it lacks, or a keepalive.
    pub(super) fn push_streams(&mut self, r: usize) {
        if self.replicas[r].serving.is_empty() {
            return;
        }
        let now = self.rms(r);
        let conns: Vec<u64> = self.replicas[r].serving.keys().copied().collect();
        for conn in conns {
            let s = &self.replicas[r].serving[&conn];
            let (id, sid, epoch, next, follower) =
                (s.id.clone(), s.sid, s.epoch, s.next, s.follower);
            let core = self.replicas[r].core.as_ref().expect("up");
            if !core.leader_stream_alive(&id, sid, epoch) {
                if next.is_some() || core.epoch() != epoch {
                    self.replicas[r].serving.remove(&conn);
                    self.send_repl(
                        r,
                        follower,
                        conn,
                        Repl::Refused("stream no longer current".into()),
                    );
                }
                continue;
            }
            let Some(next) = next else { continue };
            let (commit, end) = (core.commit(), core.log_end().1);
            if next < core.log_start() {
                // The follower fell behind what the log still holds while streaming.
                self.send_snapshot(r, conn);
                continue;
            }
            if next <= end {
                let last = end.0.min(next.0 + BATCH - 1);
                let recs: Vec<Record> = (next.0..=last)
                    .filter_map(|l| self.record_at(r, l))
                    .collect();
                if recs.len() as u64 != last + 1 - next.0 {
                    self.violation(format!(
                        "r{} streams LSNs {next}..={last} that its log does not hold",
                        r + 1
                    ));
                    return;
                }
                let prev_lsn = Lsn(next.0 - 1);
                let prev_epoch = core.epoch_of(prev_lsn).unwrap_or(Epoch(0));
                let h = AppendHeader {
                    leader_epoch: epoch,
                    prev: (prev_epoch, prev_lsn),
                    commit,
                    end,
                };
                let s = self.replicas[r].serving.get_mut(&conn).expect("s");
                s.next = Some(Lsn(last + 1));
                s.commit_sent = commit;
                s.last_send_ms = now;
                let m = Repl::Append {
                    h,
                    records: recs,
                    sent_ms: now,
                };
                self.send_repl(r, follower, conn, m);
            } else {
                let s = self.replicas[r].serving.get_mut(&conn).expect("s");
                if commit > s.commit_sent || now.saturating_sub(s.last_send_ms) >= HEARTBEAT_MS / 2
                {
                    s.commit_sent = commit;
                    s.last_send_ms = now;
                    let m = Repl::Keepalive {
                        epoch,
                        commit,
                        end,
                        sent_ms: now,
                    };
                    self.send_repl(r, follower, conn, m);
                }
            }
        }
    }
}
