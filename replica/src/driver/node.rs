//! The driver's runtime side: `Node::step` carries out an engine step through the shared
//! [`driver::step`](super::step) with the engine locked (so records reach the log thread in
//! LSN order and a truncation cannot be overtaken): log writes go to the log thread and the
//! tail, writes are answered on their channels, progress is published on watch channels, and
//! a due snapshot is written on a thread of its own once the lock is released. Every caller
//! (the heartbeat handler, leader and follower streams, the log thread's reports, client
//! writes, the tick) steps the engine and hands the list here. A `PersistEpoch` is handed back
//! to the caller ([`Followups`]), which stores it off the executor (`Node::persist_epoch`)
//! and reports it to the engine.
//!
//! It also implements the log thread's [`LogEvents`] for the node.

use super::{Io, WriteAnswer};
use crate::core::{Action, Core, Truncation};
use crate::driver;
use crate::faults::fault;
use crate::logthread::{Archived, LogCmd, LogEvents};
use crate::node::{Inner, Node, Waiter};
use crate::snapshot;
use crate::wal::{Frames, LogError, Record};
use baton_common::api::WriteReply;
use baton_common::{clock, Epoch, Lsn};
use std::collections::BTreeMap;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The log thread's answer to a command sent under the engine lock.
pub struct LogReply<T>(oneshot::Receiver<Result<T, LogError>>);

impl<T> LogReply<T> {
    pub async fn wait(self) -> Result<T, LogError> {
        self.0
            .await
            .map_err(|_| LogError::Misuse("the log thread has stopped".into()))?
    }
}

/// What an executed action list leaves for the caller to await or do off the lock.
#[derive(Default)]
pub struct Followups {
    /// Store this epoch (and rev, deployment id) durably, then report it to the engine.
    pub persist: Option<(Epoch, Option<u64>, u64)>,
    /// The engine ignored the input, for this reason.
    pub ignored: Option<String>,
    /// A truncation or resync: its archive (and whether the cut reached below commit).
    pub archive: Option<(LogReply<Option<Archived>>, bool)>,
    /// A snapshot install: done once the log thread restarted the log after it.
    pub install: Option<LogReply<()>>,
}

/// The runtime's [`Io`]: the node and its locked state for one step.
struct NodeIo<'a> {
    node: &'a Node,
    g: &'a mut Inner,
    archive: Option<(LogReply<Option<Archived>>, bool)>,
    install: Option<LogReply<()>>,
    snapshot: Option<(snapshot::Snapshot, u64)>,
}

impl Io for NodeIo<'_> {
    type Write = Waiter;
    type Barrier = oneshot::Sender<bool>;

    fn core(&mut self) -> &mut Core {
        &mut self.g.core
    }

    fn waiters(&mut self) -> &mut BTreeMap<Lsn, Waiter> {
        &mut self.g.waiters
    }

    fn barriers(&mut self) -> &mut Vec<(Lsn, oneshot::Sender<bool>)> {
        &mut self.g.barriers
    }

    fn now_ms(&self) -> u64 {
        clock::now_ms()
    }

    fn append(&mut self, rec: Record) {
        if !self.node.append_record(self.g, rec) {
            tracing::warn!("log writer stopped; a record could not be appended");
        }
    }

    // The log thread does the small fsynced write, off the lock and the runtime.
    fn store_unclean(&mut self, unclean: bool) {
        self.node.send_log(LogCmd::StoreUnclean(unclean));
    }

    fn truncate(&mut self, t: Truncation) {
        self.g.tail.cut_from(t.from);
        let (reply, rx) = oneshot::channel();
        self.node.send_log(LogCmd::Truncate {
            from: t.from,
            records: t.records,
            reply,
        });
        self.archive = Some((LogReply(rx), t.below_commit));
    }

    fn resync(&mut self, from: Lsn) {
        self.g.tail.clear();
        let (reply, rx) = oneshot::channel();
        self.node.send_log(LogCmd::Resync { from, reply });
        self.archive = Some((LogReply(rx), true));
    }

    fn install_snapshot(&mut self, lsn: Lsn) {
        self.g.tail.clear();
        let (reply, rx) = oneshot::channel();
        let tmp = self.node.incoming_snapshot_path();
        self.node
            .send_log(LogCmd::InstallSnapshot { tmp, lsn, reply });
        self.install = Some(LogReply(rx));
    }

    fn answer_write(&mut self, w: Waiter, answer: WriteAnswer) {
        let res = match answer {
            WriteAnswer::Committed => {
                fault!("client.before_ack");
                self.node.metrics.writes.with_label_values(&["ok"]).inc();
                Ok(WriteReply {
                    version: w.version,
                    lsn: w.version.lsn,
                    epoch: w.version.epoch,
                })
            }
            WriteAnswer::LeaseExpired => {
                self.node
                    .metrics
                    .writes
                    .with_label_values(&["outcome_unknown"])
                    .inc();
                Err("the lease expired before the write could be acknowledged".into())
            }
            WriteAnswer::Failed(reason) => Err(reason),
        };
        let _ = w.tx.send(res);
    }

    fn answer_barrier(&mut self, b: oneshot::Sender<bool>, answer: Result<(), String>) {
        let _ = b.send(answer.is_ok());
    }

    fn published(&mut self) {
        let flushed = self.g.core.flushed();
        self.node.flushed.send_if_modified(|f| {
            let changed = *f != flushed;
            *f = flushed;
            changed
        });
        let waiting = self.g.waiters.len();
        self.node.pending_writes.send_if_modified(|n| {
            let changed = *n != waiting;
            *n = waiting;
            changed
        });
        self.node.progress.send_modify(|v| *v += 1);
    }

    // Started once the lock is released (`Node::step`).
    fn start_snapshot(&mut self, snap: snapshot::Snapshot, gen: u64) {
        self.snapshot = Some((snap, gen));
    }
}

/// What [`Node::records_from`] found for a follower stream.
pub(crate) enum Batch {
    /// Records from the in-memory tail (encoded once for the stream).
    Records(Vec<Record>),
    /// Frames read from the log, shipped as they are.
    Frames(Frames),
}

impl Batch {
    pub(crate) fn len(&self) -> usize {
        match self {
            Batch::Records(r) => r.len(),
            Batch::Frames(f) => f.count,
        }
    }
}

impl Node {
    /// Carries out `fx` (from a step of the engine behind `g`) in the driver's order, then
    /// releases the lock and starts a due snapshot.
    pub(crate) fn step(
        self: &Arc<Self>,
        mut g: MutexGuard<'_, Inner>,
        fx: Vec<Action>,
    ) -> Followups {
        let mut io = NodeIo {
            node: self,
            g: &mut g,
            archive: None,
            install: None,
            snapshot: None,
        };
        let stepped = driver::step(&mut io, fx);
        let NodeIo {
            archive,
            install,
            snapshot,
            ..
        } = io;
        drop(g);
        if let Some(reason) = stepped.fatal {
            self.set_fatal(reason);
        }
        if let Some((snap, gen)) = snapshot {
            self.spawn_snapshot(snap, gen);
        }
        Followups {
            persist: stepped.persist,
            ignored: stepped.ignored,
            archive,
            install,
        }
    }

    /// Hands a record appended in the engine to the log thread and the tail (under the lock).
    pub(crate) fn append_record(&self, g: &mut Inner, rec: Record) -> bool {
        g.tail.push(rec.clone());
        self.send_log(LogCmd::Append(rec))
    }

    /// Stores what a `PersistEpoch` asks for, off the executor. False when it was not stored: a
    /// full disk (retried by the next directive or stream), otherwise fatal.
    pub(crate) async fn persist_epoch(
        self: &Arc<Self>,
        (epoch, rev, cluster_id): (Epoch, Option<u64>, u64),
    ) -> bool {
        let n = self.clone();
        let res = tokio::task::spawn_blocking(move || {
            n.update_meta(|m| {
                m.epoch = m.epoch.max(epoch);
                if let Some(rev) = rev {
                    m.applied_rev = rev;
                }
                if m.cluster_id == 0 {
                    m.cluster_id = cluster_id;
                }
            })
        })
        .await;
        let err = match res {
            Ok(Ok(())) => return true,
            Ok(Err(e)) if crate::meta::is_no_space(&e) => {
                // The meta file is untouched (the temp file could not be written): the epoch
                // is not acted on, and the next directive or stream tries again. Not fatal: a
                // full disk is not a crash (DESIGN.md §6).
                static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let now = clock::now_ms();
                let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
                if last == 0 || now.saturating_sub(last) >= 10_000 {
                    LAST.store(now.max(1), std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(epoch = %epoch, error = %format!("{e:#}"),
                        "disk full: cannot persist the epoch; not acting on it until it can");
                }
                return false;
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => e.to_string(),
        };
        self.set_fatal(format!("cannot persist epoch {epoch}: {err}"));
        false
    }

    /// Records from `from` for a follower stream: from the in-memory tail when it holds them,
    /// otherwise read through the log thread as their frames (a follower that is behind gets
    /// the log's bytes, checked but neither decoded nor encoded again). An empty result means
    /// nothing new.
    pub(crate) async fn records_from(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Batch, LogError> {
        {
            let g = self.lock();
            if from > g.core.log_end().1 {
                return Ok(Batch::Records(Vec::new()));
            }
            if let Some(v) = g.tail.slice(from, max_records, max_bytes) {
                return Ok(Batch::Records(v));
            }
        }
        let (reply, rx) = oneshot::channel();
        if !self.send_log(LogCmd::Read {
            from,
            max_records,
            max_bytes,
            reply,
        }) {
            return Err(LogError::Misuse("the log thread has stopped".into()));
        }
        rx.await
            .map_err(|_| LogError::Misuse("the log thread has stopped".into()))?
            .map(Batch::Frames)
    }

    /// Writes `snap` in the background. It is committed (renamed into place, then the log
    /// compacted) only if the log was not truncated or reset since it was captured (`gen`),
    /// decided under the log gate, which the log thread holds while it truncates or resets.
    fn spawn_snapshot(self: &Arc<Self>, snap: snapshot::Snapshot, gen: u64) {
        let node = self.clone();
        let mut slot = self
            .snapshot_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(prev) = slot.take() {
            // The previous snapshot ended (the core allows one at a time); reap its thread.
            let _ = prev.join();
        }
        *slot = Some(std::thread::spawn(move || {
            let t0 = Instant::now();
            let lsn = snap.lsn;
            let dir = node.data_dir().join("snap");
            let res = snapshot::write_tmp(&dir, &snap).and_then(|tmp| {
                let _gate = node.gate.lock();
                if node.gate.gen() != gen {
                    let _ = std::fs::remove_file(&tmp);
                    return Ok(None);
                }
                fault!("snapshot.before_rename", |source| {
                    snapshot::SnapshotError::Io {
                        path: tmp.clone(),
                        source,
                    }
                });
                snapshot::commit(&dir, &tmp, lsn).map(Some)
            });
            match res {
                Ok(None) => {
                    tracing::info!(lsn = %lsn, "snapshot discarded: the log was truncated or reset while it was written");
                    node.lock().core.end_snapshot(None);
                }
                Ok(Some((path, size))) => {
                    node.metrics.snapshots.with_label_values(&["ok"]).inc();
                    node.metrics
                        .snapshot_seconds
                        .observe(t0.elapsed().as_secs_f64());
                    tracing::info!(lsn = %lsn, keys = snap.state.len(), bytes = size, file = %path.display(),
                        ms = t0.elapsed().as_millis() as u64, "snapshot written");
                    node.send_log(LogCmd::Compact(lsn, gen));
                    node.lock().core.end_snapshot(Some(lsn));
                }
                Err(e) => {
                    node.metrics.snapshots.with_label_values(&["error"]).inc();
                    tracing::warn!(%e, "snapshot failed; the log is kept and a snapshot is retried later");
                    node.lock().core.end_snapshot(None);
                }
            }
        }));
    }
}

/// The log thread's reports, fed to the engine through the driver.
impl LogEvents for Node {
    fn flushed(&self, lsn: Lsn, gen: u64) {
        self.before_apply();
        let Some(node) = self.me.upgrade() else {
            return;
        };
        let mut g = self.lock();
        let fx = g.core.on_flushed(clock::now_ms(), lsn, gen);
        node.step(g, fx);
    }

    fn fatal(&self, reason: String) {
        if let Some(node) = self.me.upgrade() {
            node.set_fatal(reason);
        }
    }

    fn store_unclean(&self, unclean: bool) -> anyhow::Result<()> {
        self.update_meta(|m| {
            m.unclean = unclean;
            if !unclean {
                // Caught up: the range lost to damage was fetched again.
                m.damaged = None;
            }
        })
    }

    fn compacted(&self, first: Lsn, log_bytes: u64) {
        self.lock().core.set_log_start(first);
        self.set_log_bytes(log_bytes);
    }

    fn synced(&self, took: Duration, records: usize, log_bytes: u64) {
        self.metrics.fsync_seconds.observe(took.as_secs_f64());
        self.metrics.batch_records.observe(records as f64);
        self.set_log_bytes(log_bytes);
    }

    fn disk_full(&self, full: Option<String>) {
        let Some(node) = self.me.upgrade() else {
            return;
        };
        self.metrics.disk_full.set(i64::from(full.is_some()));
        let mut g = self.lock();
        let fx = g.core.on_disk_full(clock::now_ms(), full);
        node.step(g, fx);
        // The controller learns it at once (a leader with a full disk is to be replaced).
        self.heartbeat_soon();
    }
}
