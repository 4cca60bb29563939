//! The driver: executes the engine's action lists in the real runtime, in order, with the
//! engine locked (so records reach the log thread in LSN order and a truncation cannot be
//! overtaken), then acknowledges committed writes, wakes streams and starts a due snapshot.
//! Every caller (the heartbeat handler, leader and follower streams, the log thread's reports,
//! client writes, the tick) steps the engine and hands the list here; none re-implements the
//! order. A `PersistEpoch` is handed back to the caller ([`Followups`]), which stores it off
//! the executor ([`Node::persist_epoch`]) and reports it to the engine.
//!
//! It also implements the log thread's [`LogEvents`] for the node, and runs background
//! snapshots.

use crate::core::Action;
use crate::faults::fault;
use crate::logthread::{Archived, LogCmd, LogEvents};
use crate::node::{Inner, Node};
use crate::snapshot;
use crate::wal::{LogError, Record};
use baton_common::api::WriteReply;
use baton_common::{clock, Epoch, Lsn};
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

impl Node {
    /// Executes `fx` (from a step of the engine behind `g`), then acknowledges what committed,
    /// publishes the flushed LSN and progress, and starts a snapshot when one is due.
    pub(crate) fn step(
        self: &Arc<Self>,
        mut g: MutexGuard<'_, Inner>,
        fx: Vec<Action>,
    ) -> Followups {
        let mut out = Followups::default();
        for a in fx {
            self.execute(&mut g, a, &mut out);
        }
        self.acknowledge(&mut g);
        let flushed = g.core.flushed();
        self.flushed.send_if_modified(|f| {
            let changed = *f != flushed;
            *f = flushed;
            changed
        });
        let waiting = g.waiters.len();
        self.pending_writes.send_if_modified(|n| {
            let changed = *n != waiting;
            *n = waiting;
            changed
        });
        self.progress.send_modify(|v| *v += 1);
        if g.core.snapshot_due() {
            let snap = g.core.begin_snapshot();
            let gen = g.core.log_gen();
            drop(g);
            self.spawn_snapshot(snap, gen);
        }
        out
    }

    fn execute(&self, g: &mut Inner, a: Action, out: &mut Followups) {
        match a {
            Action::PersistEpoch {
                epoch,
                rev,
                cluster_id,
            } => out.persist = Some((epoch, rev, cluster_id)),
            Action::Ignore(why) => out.ignored = Some(why),
            Action::Append(rec) => {
                if !self.append_record(g, rec) {
                    tracing::warn!("log writer stopped; a record could not be appended");
                }
            }
            Action::FailPending(reason) => {
                for (_, w) in std::mem::take(&mut g.waiters) {
                    let _ = w.tx.send(Err(reason.clone()));
                }
                for (_, b) in std::mem::take(&mut g.barriers) {
                    let _ = b.send(false);
                }
            }
            // The log thread does the small fsynced write, off the lock and the runtime.
            Action::StoreUnclean(u) => {
                self.send_log(LogCmd::StoreUnclean(u));
            }
            Action::Truncate(t) => {
                g.tail.cut_from(t.from);
                let (reply, rx) = oneshot::channel();
                self.send_log(LogCmd::Truncate {
                    from: t.from,
                    records: t.records,
                    reply,
                });
                out.archive = Some((LogReply(rx), t.below_commit));
            }
            Action::Resync { from } => {
                g.tail.clear();
                let (reply, rx) = oneshot::channel();
                self.send_log(LogCmd::Resync { from, reply });
                out.archive = Some((LogReply(rx), true));
            }
            Action::InstallSnapshot { lsn } => {
                g.tail.clear();
                let (reply, rx) = oneshot::channel();
                let tmp = self.incoming_snapshot_path();
                self.send_log(LogCmd::InstallSnapshot { tmp, lsn, reply });
                out.install = Some(LogReply(rx));
            }
        }
    }

    /// Hands a record appended in the engine to the log thread and the tail (under the lock).
    pub(crate) fn append_record(&self, g: &mut Inner, rec: Record) -> bool {
        g.tail.push(rec.clone());
        self.send_log(LogCmd::Append(rec))
    }

    /// Answers the writes and refusal barriers the commit LSN has reached.
    fn acknowledge(&self, g: &mut Inner) {
        let now = clock::now_ms();
        let commit = g.core.commit();
        if g.waiters
            .first_key_value()
            .is_some_and(|(l, _)| *l <= commit)
        {
            let ack = g.core.may_acknowledge(now);
            while let Some(entry) = g.waiters.first_entry() {
                if *entry.key() > commit {
                    break;
                }
                let w = entry.remove();
                if ack {
                    fault!("client.before_ack");
                    self.metrics.writes.with_label_values(&["ok"]).inc();
                    let _ = w.tx.send(Ok(WriteReply {
                        version: w.version,
                        lsn: w.version.lsn,
                        epoch: w.version.epoch,
                    }));
                } else {
                    self.metrics
                        .writes
                        .with_label_values(&["outcome_unknown"])
                        .inc();
                    let _ = w.tx.send(Err(
                        "the lease expired before the write could be acknowledged".into(),
                    ));
                }
            }
        }
        if g.barriers.iter().any(|(l, _)| *l <= commit) {
            let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut g.barriers)
                .into_iter()
                .partition(|(l, _)| *l <= commit);
            g.barriers = keep;
            for (_, b) in done {
                let _ = b.send(true);
            }
        }
    }

    /// Stores what a `PersistEpoch` asks for, off the executor. A failure is fatal (false).
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
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => e.to_string(),
        };
        self.set_fatal(format!("cannot persist epoch {epoch}: {err}"));
        false
    }

    /// Records from `from` for a follower stream: from the in-memory tail when it holds them,
    /// otherwise read through the log thread. An empty result means nothing new.
    pub(crate) async fn records_from(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        {
            let g = self.lock();
            if from > g.core.log_end().1 {
                return Ok(Vec::new());
            }
            if let Some(v) = g.tail.slice(from, max_records, max_bytes) {
                return Ok(v);
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
        self.update_meta(|m| m.unclean = unclean)
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
}
