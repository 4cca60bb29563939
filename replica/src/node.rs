//! The replica runtime around [`Core`]: recovery from disk, the write waiters, the in-memory tail
//! of recent records that leader streams read from, background snapshots and compaction, the
//! meta file, and the fatal-error path. The log thread (`logthread.rs`) owns the log store.
//!
//! Locking: one mutex guards the core, the waiters and the tail; nothing blocks on I/O while
//! holding it. Records reach the log thread through a channel in LSN order because they are
//! sent under that mutex. The log thread reports durability back by calling `on_flushed`.

use crate::config::ReplicaConfig;
use crate::core::{Core, CoreConfig, Effect, Recovered, WriteReject, WriteReq};
use crate::faults::fault;
use crate::logthread::{self, Archived, Dirs, LogCmd};
use crate::meta::{DirLock, Meta};
use crate::metrics::Metrics;
use crate::snapshot;
use crate::wal::disk::{DiskLog, DiskOptions};
use crate::wal::{LogError, LogStore, Record};
use baton_common::api::WriteReply;
use baton_common::{clock, BootId, Epoch, Lsn, NodeId, Version};
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Notify};

/// The outcome of a write that was not rejected up front.
#[derive(Debug)]
pub enum WriteError {
    /// Not appended: nothing happened.
    Rejected(WriteReject),
    /// Appended, fate unknown.
    OutcomeUnknown(String),
}

type WaiterTx = oneshot::Sender<Result<WriteReply, String>>;

struct Waiter {
    tx: WaiterTx,
    version: Version,
}

/// The core and the writes waiting on it, behind [`Node::lock`].
pub struct Inner {
    core: Core,
    waiters: BTreeMap<Lsn, Waiter>,
    /// Refusals waiting for the pending record they were judged on to commit (true) or to
    /// be given up (false).
    barriers: Vec<(Lsn, oneshot::Sender<bool>)>,
    tail: Tail,
}

/// The most recent records appended, in LSN order, for leader streams to send without a disk
/// read. Bounded in bytes; older records are read through the log thread.
#[derive(Default)]
pub struct Tail {
    recs: VecDeque<Record>,
    bytes: usize,
}

const TAIL_BYTES_MAX: usize = 64 << 20;

impl Tail {
    fn push(&mut self, r: Record) {
        self.bytes += r.frame_len();
        self.recs.push_back(r);
        while self.bytes > TAIL_BYTES_MAX {
            match self.recs.pop_front() {
                Some(old) => self.bytes -= old.frame_len(),
                None => break,
            }
        }
    }

    fn cut_from(&mut self, from: Lsn) {
        while self.recs.back().is_some_and(|r| r.lsn >= from) {
            if let Some(r) = self.recs.pop_back() {
                self.bytes -= r.frame_len();
            }
        }
    }

    fn clear(&mut self) {
        self.recs.clear();
        self.bytes = 0;
    }

    /// Records from `from`, up to the limits; `None` when `from` is older than the tail.
    fn slice(&self, from: Lsn, max_records: usize, max_bytes: usize) -> Option<Vec<Record>> {
        let first = self.recs.front()?.lsn;
        if from < first {
            return None;
        }
        let start = (from.0 - first.0) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for r in self.recs.iter().skip(start).take(max_records) {
            if !out.is_empty() && bytes + r.frame_len() > max_bytes {
                break;
            }
            bytes += r.frame_len();
            out.push(r.clone());
        }
        Some(out)
    }
}

/// The log thread's answer to a command sent under the core lock.
pub struct LogReply<T>(oneshot::Receiver<Result<T, LogError>>);

impl<T> LogReply<T> {
    pub async fn wait(self) -> Result<T, LogError> {
        self.0
            .await
            .map_err(|_| LogError::Misuse("the log thread has stopped".into()))?
    }
}

/// Why the node is stopping on its own.
#[derive(Clone, Debug)]
pub struct Fatal(pub String);

/// A running replica's shared state.
pub struct Node {
    inner: Mutex<Inner>,
    log_tx: Mutex<Option<mpsc::Sender<LogCmd>>>,
    log_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    snapshot_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    meta: Mutex<Meta>,
    data_dir: PathBuf,
    pub cfg: ReplicaConfig,
    pub metrics: Arc<Metrics>,
    pub id: NodeId,
    pub boot_id: BootId,
    /// Set once; the main task exits non-zero when it fires.
    fatal: Mutex<Option<Fatal>>,
    pub fatal_notify: Notify,
    /// Ask the heartbeat loop to send one now (a client showed a newer epoch).
    pub heartbeat_now: Notify,
    log_bytes: std::sync::atomic::AtomicU64,
    /// Truncations and resets the log thread has executed (its log generation).
    pub(crate) log_thread_gen: std::sync::atomic::AtomicU64,
    /// Held by the log thread while it truncates or resets, and by a snapshot while it decides
    /// whether to commit.
    pub(crate) snap_gate: Mutex<()>,
    /// Bumped whenever records are appended or the commit LSN moves: leader streams wait on it.
    pub progress: watch::Sender<u64>,
    /// The flushed LSN: a follower's stream acknowledges on changes.
    pub flushed: watch::Sender<Lsn>,
    _lock: DirLock,
}

/// What opening found, for the start-up log line.
pub struct OpenReport {
    pub created: bool,
    pub snapshot_lsn: Lsn,
    pub records_replayed: usize,
    pub torn_bytes: u64,
    pub elapsed: Duration,
}

impl Node {
    /// Opens the data directory: lock, meta, newest snapshot, log (verified), and starts the log
    /// thread. Corruption or an unusable directory is an error naming the file.
    pub fn open(cfg: ReplicaConfig) -> anyhow::Result<(Arc<Node>, OpenReport)> {
        let t0 = Instant::now();
        let dir = cfg.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("{}: cannot create data directory: {e}", dir.display()))?;
        let lock = DirLock::acquire(&dir)?;
        let (mut log, rec) = DiskLog::open(
            &dir.join("wal"),
            DiskOptions {
                segment_bytes_max: cfg.storage.segment_bytes_max,
            },
        )?;
        if rec.lost_acknowledged {
            // Records this replica may have acknowledged were cut (the log named them in an
            // ERROR): it is unclean until it has fetched them again (DESIGN.md §3, §6). Stored
            // before the log forgets it, so that a crash in between cannot lose the flag.
            let (mut meta, _) = Meta::load_or_create(&dir)?;
            if !meta.unclean {
                meta.unclean = true;
                meta.store(&dir)?;
            }
            tracing::warn!(
                "marked unclean: the log lost records it had synced; they are fetched again \
                 from the leader, and this replica is not promoted until it holds them"
            );
            log.clear_lost_marker()?;
        }
        logthread::finish_interrupted_resync(&mut log, &Dirs::new(&dir))?;
        Self::open_with_log(cfg, lock, Box::new(log), rec.torn_bytes_truncated, t0)
    }

    /// Opens with a given log store (the disk log in production; an in-memory one with fault
    /// injection in tests). The data directory still holds the meta file and snapshots.
    pub fn open_with_log(
        cfg: ReplicaConfig,
        lock: DirLock,
        mut log: Box<dyn LogStore>,
        torn_bytes: u64,
        t0: Instant,
    ) -> anyhow::Result<(Arc<Node>, OpenReport)> {
        let dir = cfg.data_dir.clone();
        let (meta, created) = Meta::load_or_create(&dir)?;
        snapshot::remove_leftovers(&dir.join("snap"));
        let snap = snapshot::load_latest(&dir.join("snap"))?;
        let snap_lsn = snap.as_ref().map_or(Lsn(0), |s| s.lsn);
        if log.last_lsn() < snap_lsn {
            // The snapshot covers everything the log holds (a snapshot was installed from the
            // leader and the crash came before the log was restarted after it): restart it now.
            tracing::warn!(log_end = %log.last_lsn(), snapshot = %snap_lsn, "the log ends inside the snapshot; restarting the log after it");
            log.reset(snap_lsn.next())?;
        }
        if log.first_lsn() > snap_lsn.next() {
            anyhow::bail!(
                "{}: the log starts at LSN {} but the newest snapshot ends at LSN {snap_lsn}: records between are missing",
                dir.join("wal").display(),
                log.first_lsn()
            );
        }
        let records = log.read(snap_lsn.next(), usize::MAX, usize::MAX)?;
        let replayed = records.len();
        let boot_id = BootId::random();
        let core_cfg = CoreConfig {
            id: NodeId(cfg.id.clone()),
            cluster: cfg.cluster.clone(),
            addr: cfg.advertised(),
            data_id: meta.data_id,
            boot_id,
            drift: cfg.timing.clock_drift,
            snapshot_log_bytes: cfg.storage.snapshot_log_bytes,
        };
        let core = Core::new(
            core_cfg,
            Recovered {
                cluster_id: meta.cluster_id,
                epoch: meta.epoch,
                applied_rev: meta.applied_rev,
                unclean: meta.unclean,
                snapshot: snap,
                records,
                log_start: log.first_lsn(),
            },
        );
        core.check_invariants()
            .map_err(|e| anyhow::anyhow!("recovered state is inconsistent: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let log_bytes = log.size_bytes();
        let node = Arc::new(Node {
            inner: Mutex::new(Inner {
                core,
                waiters: BTreeMap::new(),
                barriers: Vec::new(),
                tail: Tail::default(),
            }),
            log_tx: Mutex::new(Some(tx)),
            log_thread: Mutex::new(None),
            snapshot_thread: Mutex::new(None),
            meta: Mutex::new(meta),
            data_dir: dir,
            id: NodeId(cfg.id.clone()),
            boot_id,
            cfg,
            metrics: Arc::new(Metrics::new()),
            fatal: Mutex::new(None),
            fatal_notify: Notify::new(),
            heartbeat_now: Notify::new(),
            log_bytes: std::sync::atomic::AtomicU64::new(log_bytes),
            log_thread_gen: std::sync::atomic::AtomicU64::new(0),
            snap_gate: Mutex::new(()),
            progress: watch::channel(0).0,
            flushed: watch::channel(Lsn(0)).0,
            _lock: lock,
        });
        let n2 = node.clone();
        let dirs = Dirs::new(&node.data_dir);
        let handle = std::thread::Builder::new()
            .name("baton-log".into())
            .spawn(move || logthread::run(n2, log, rx, dirs))
            .map_err(|e| anyhow::anyhow!("cannot start the log thread: {e}"))?;
        *node.log_thread.lock().expect("fresh mutex") = Some(handle);
        Ok((
            node,
            OpenReport {
                created,
                snapshot_lsn: snap_lsn,
                records_replayed: replayed,
                torn_bytes,
                elapsed: t0.elapsed(),
            },
        ))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Locks the core. The guard must not be held across I/O or an await.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Proposes a write and waits until it is committed (or fails).
    pub async fn write(self: &Arc<Self>, req: WriteReq) -> Result<WriteReply, WriteError> {
        let t0 = Instant::now();
        let key = req.key.clone();
        // Propose and hand the record to the log thread in one critical section (LSN order).
        // A refusal judged on a pending record is answered only once that record is committed,
        // so that it never reveals a write a leader read cannot see yet (G2).
        let proposed = {
            let mut g = self.lock();
            match g.core.propose(clock::now_ms(), req) {
                Ok(rec) => {
                    let lsn = rec.lsn;
                    let version = Version {
                        epoch: rec.epoch,
                        lsn,
                    };
                    let (tx, rx) = oneshot::channel();
                    g.waiters.insert(lsn, Waiter { tx, version });
                    if !self.append_record(&mut g, rec) {
                        g.waiters.remove(&lsn);
                        return Err(WriteError::OutcomeUnknown(
                            "the log writer has stopped".into(),
                        ));
                    }
                    Ok((rx, lsn))
                }
                Err(reject @ (WriteReject::PreconditionFailed { .. } | WriteReject::NotFound)) => {
                    match g.core.pending_lsn_of(&key) {
                        Some(pending) => {
                            let (tx, brx) = oneshot::channel();
                            g.barriers.push((pending, tx));
                            Err((reject, Some((pending, brx))))
                        }
                        None => Err((reject, None)),
                    }
                }
                Err(reject) => Err((reject, None)),
            }
        };
        let (rx, lsn) = match proposed {
            Ok(x) => x,
            Err((reject, None)) => return Err(WriteError::Rejected(reject)),
            Err((reject, Some((pending, brx)))) => {
                let timeout = Duration::from_millis(self.cfg.timing.write_timeout_ms);
                return match tokio::time::timeout(timeout, brx).await {
                    Ok(Ok(true)) => Err(WriteError::Rejected(reject)),
                    // Nothing was appended for this request, so "not applied" is certain.
                    _ => Err(WriteError::Rejected(WriteReject::NotLeader {
                        reason: format!(
                            "the condition was checked against LSN {pending}, which did not commit; retry"
                        ),
                        leader: None,
                    })),
                };
            }
        };
        let timeout = Duration::from_millis(self.cfg.timing.write_timeout_ms);
        let res = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(reason))) => Err(WriteError::OutcomeUnknown(reason)),
            Ok(Err(_)) => Err(WriteError::OutcomeUnknown("the replica is stopping".into())),
            Err(_) => {
                self.lock().waiters.remove(&lsn);
                Err(WriteError::OutcomeUnknown(format!(
                    "LSN {lsn} was not committed within timing.write_timeout_ms ({} ms)",
                    self.cfg.timing.write_timeout_ms
                )))
            }
        };
        self.metrics
            .write_seconds
            .observe(t0.elapsed().as_secs_f64());
        res
    }

    /// Hands a record appended in the core to the log thread and the tail (under the lock).
    fn append_record(&self, g: &mut Inner, rec: Record) -> bool {
        g.tail.push(rec.clone());
        let ok = self.send_log(LogCmd::Append(rec));
        self.progress.send_modify(|v| *v += 1);
        ok
    }

    fn send_log(&self, cmd: LogCmd) -> bool {
        match &*self.log_tx.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.send(cmd).is_ok(),
            None => false,
        }
    }

    /// Executes core effects; called with the core locked.
    pub fn run_effects(self: &Arc<Self>, g: &mut Inner, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Append(rec) => {
                    if !self.append_record(g, rec) {
                        tracing::warn!("log writer stopped; a record could not be appended");
                    }
                }
                Effect::FailPending(reason) => {
                    for (_, w) in std::mem::take(&mut g.waiters) {
                        let _ = w.tx.send(Err(reason.clone()));
                    }
                    for (_, b) in std::mem::take(&mut g.barriers) {
                        let _ = b.send(false);
                    }
                }
                Effect::PersistMeta => {
                    // The log thread does the small fsynced write, off the lock and the runtime.
                    self.send_log(LogCmd::StoreUnclean(g.core.unclean()));
                }
            }
        }
    }

    /// Updates and durably stores the meta file (serialized by its own mutex).
    pub fn update_meta(&self, f: impl FnOnce(&mut Meta)) -> anyhow::Result<()> {
        let mut m = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = m.clone();
        f(&mut next);
        if next.epoch < m.epoch {
            next.epoch = m.epoch;
        }
        if next != *m {
            let epoch_write = next.epoch > m.epoch;
            if epoch_write {
                fault!("meta.before_epoch_write", |e| anyhow::anyhow!(
                    "{}: {e}",
                    Meta::path(&self.data_dir).display()
                ));
            }
            next.store(&self.data_dir)?;
            if epoch_write {
                fault!("meta.after_epoch_write", |e| anyhow::anyhow!(
                    "{}: {e}",
                    Meta::path(&self.data_dir).display()
                ));
            }
            *m = next;
        }
        Ok(())
    }

    /// Called by the log thread once everything up to `lsn` is durable, `gen` being the number
    /// of truncations and resets it had executed.
    pub(crate) fn on_flushed(self: &Arc<Self>, lsn: Lsn, gen: u64) {
        self.before_apply();
        let now = clock::now_ms();
        let mut g = self.lock();
        if gen != g.core.log_gen() {
            // Written before a truncation the core has made since: it says nothing about the
            // records that hold those LSNs now.
            return;
        }
        let fx = g.core.on_flushed(now, lsn);
        self.after_step(g, fx);
    }

    /// The `apply.before` fault point: called before a core step that may commit and apply
    /// records (a local flush, a follower's acknowledgement, a leader's commit LSN).
    #[inline]
    pub(crate) fn before_apply(&self) {
        fault!("apply.before");
    }

    /// [`before_apply`](Self::before_apply) when a leader's `commit` would apply records here.
    #[inline]
    pub(crate) fn before_apply_up_to(&self, commit: Lsn) {
        #[cfg(feature = "failpoints")]
        {
            if commit > self.lock().core().applied() {
                self.before_apply();
            }
        }
        let _ = commit;
    }

    /// After any core step that may have moved commit: acknowledge committed writes, run the
    /// effects, wake streams, and start a snapshot when one is due. Consumes the guard.
    pub(crate) fn after_step(self: &Arc<Self>, mut g: MutexGuard<'_, Inner>, fx: Vec<Effect>) {
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
        self.run_effects(&mut g, fx);
        let flushed = g.core.flushed();
        self.flushed.send_if_modified(|f| {
            let changed = *f != flushed;
            *f = flushed;
            changed
        });
        self.progress.send_modify(|v| *v += 1);
        if g.core.snapshot_due() {
            let snap = g.core.begin_snapshot();
            let gen = g.core.log_gen();
            drop(g);
            self.spawn_snapshot(snap, gen);
        }
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

    /// Hands the log thread the truncation the core just decided, in the same critical section
    /// (so no append can overtake it). Await the receiver for the archive.
    pub(crate) fn send_truncate(
        &self,
        g: &mut Inner,
        from: Lsn,
        records: Vec<Record>,
    ) -> LogReply<Option<Archived>> {
        g.tail.cut_from(from);
        let (reply, rx) = oneshot::channel();
        self.send_log(LogCmd::Truncate {
            from,
            records,
            reply,
        });
        self.flushed.send_replace(g.core.flushed());
        LogReply(rx)
    }

    /// Persists `unclean`, then archives the log from `from`, sets snapshots aside and empties
    /// the log; the core was reset in the same critical section.
    pub(crate) fn send_resync(&self, g: &mut Inner, from: Lsn) -> LogReply<Option<Archived>> {
        g.tail.clear();
        let (reply, rx) = oneshot::channel();
        self.send_log(LogCmd::StoreUnclean(true));
        self.send_log(LogCmd::Resync { from, reply });
        self.flushed.send_replace(g.core.flushed());
        LogReply(rx)
    }

    /// Makes a received snapshot file the newest snapshot and restarts the log after it; the
    /// core installed it in the same critical section.
    pub(crate) fn send_install(&self, g: &mut Inner, tmp: PathBuf, lsn: Lsn) -> LogReply<()> {
        g.tail.clear();
        let (reply, rx) = oneshot::channel();
        self.send_log(LogCmd::InstallSnapshot { tmp, lsn, reply });
        self.flushed.send_replace(g.core.flushed());
        LogReply(rx)
    }

    pub(crate) fn set_log_bytes(&self, b: u64) {
        self.log_bytes
            .store(b, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes `snap` in the background. It is committed (renamed into place, then the log
    /// compacted) only if the log was not truncated or reset since it was captured (`gen`),
    /// decided under `snap_gate`, which the log thread holds while it truncates or resets.
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
            let dir = node.data_dir.join("snap");
            let res = snapshot::write_tmp(&dir, &snap).and_then(|tmp| {
                let _gate = node.snap_gate.lock().unwrap_or_else(|p| p.into_inner());
                if node
                    .log_thread_gen
                    .load(std::sync::atomic::Ordering::SeqCst)
                    != gen
                {
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

    /// The node cannot go on (fsync error, corrupt log): fail everything and wake the main task.
    pub fn set_fatal(self: &Arc<Self>, reason: String) {
        {
            let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_some() {
                return;
            }
            *f = Some(Fatal(reason.clone()));
        }
        tracing::error!(reason = %reason, "fatal: this replica stops acknowledging and exits");
        let mut g = self.lock();
        let fx = g.core.on_fatal(reason);
        self.run_effects(&mut g, fx);
        drop(g);
        self.fatal_notify.notify_waiters();
        self.fatal_notify.notify_one();
    }

    pub fn fatal(&self) -> Option<Fatal> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Periodic: lets a directed leader start its epoch, refreshes gauges.
    pub fn tick(self: &Arc<Self>) {
        let now = clock::now_ms();
        let mut g = self.lock();
        let fx = g.core.tick(now);
        self.run_effects(&mut g, fx);
    }

    /// SIGTERM: refuse new writes, wait up to `shutdown_drain_ms` for pending ones, fail the rest
    /// as outcome unknown, then stop the log thread after its last fsync.
    pub async fn shutdown(self: &Arc<Self>) {
        self.lock().core.begin_shutdown();
        let started = Instant::now();
        let deadline = Instant::now() + Duration::from_millis(self.cfg.timing.shutdown_drain_ms);
        while Instant::now() < deadline && !self.lock().waiters.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        {
            let mut g = self.lock();
            let n = g.waiters.len();
            if n > 0 {
                tracing::warn!(
                    pending = n,
                    "writes still pending at shutdown are answered outcome_unknown"
                );
                self.run_effects(
                    &mut g,
                    vec![Effect::FailPending("the replica is shutting down".into())],
                );
            }
        }
        // A short wind-down: requests that arrive now are answered (503, `Connection: close`)
        // instead of meeting a closed keep-alive connection, which a client cannot tell from a
        // crash; proxies and clients learn the new leader meanwhile.
        let wind_down = Duration::from_millis((3 * self.cfg.timing.heartbeat_interval_ms).max(300));
        if let Some(rest) = wind_down.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        self.stop_log_thread();
    }

    fn stop_log_thread(&self) {
        let snap = self
            .snapshot_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = snap {
            let _ = h.join();
        }
        self.log_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let h = self
            .log_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// Refreshes gauges from the core; called on scrape.
    pub fn refresh_gauges(&self) {
        let now = clock::now_ms();
        let g = self.lock();
        let st = g.core.status(now);
        let m = &self.metrics;
        m.epoch.set(st.epoch.0 as i64);
        m.is_leader.set(i64::from(
            st.health == "ok" && st.role == baton_common::directive::ReportedRole::Leader,
        ));
        m.degraded.set(i64::from(st.degraded));
        m.log_end_lsn.set(st.log_end_lsn.0 as i64);
        m.flushed_lsn.set(st.flushed_lsn.0 as i64);
        m.commit_lsn.set(st.commit_lsn.0 as i64);
        m.applied_lsn.set(st.applied_lsn.0 as i64);
        m.keys.set(st.keys as i64);
        m.log_bytes
            .set(self.log_bytes.load(std::sync::atomic::Ordering::Relaxed) as i64);
    }

    /// Persists a directive's epoch and rev before it is acted on.
    /// Persists a directive's epoch and rev, and the deployment's identity when this data
    /// directory has none yet (`cluster_id` 0 changes nothing).
    pub fn persist_epoch(&self, epoch: Epoch, rev: u64, cluster_id: u64) -> anyhow::Result<()> {
        self.update_meta(|m| {
            m.epoch = m.epoch.max(epoch);
            m.applied_rev = rev;
            if m.cluster_id == 0 {
                m.cluster_id = cluster_id;
            }
        })
    }
}

impl Inner {
    pub fn core(&self) -> &Core {
        &self.core
    }
    pub fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }
}
