//! The replica runtime around [`Core`]: recovery from disk, the log writer thread (group commit:
//! every append queued while one fdatasync runs shares the next one), background snapshots and
//! compaction, the write waiters, the meta file, and the fatal-error path.
//!
//! Locking: one mutex guards the core and the waiters; nothing blocks on I/O while holding it.
//! Records reach the log thread through a channel in LSN order because they are sent under that
//! mutex. The log thread reports durability back by calling [`Node::on_flushed`].

use crate::config::ReplicaConfig;
use crate::core::{Core, CoreConfig, Effect, Recovered, WriteReject, WriteReq};
use crate::meta::{DirLock, Meta};
use crate::metrics::Metrics;
use crate::snapshot;
use crate::wal::disk::{DiskLog, DiskOptions};
use crate::wal::{LogError, LogStore, Record};
use baton_common::api::WriteReply;
use baton_common::{clock, BootId, Epoch, Lsn, NodeId, Version};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

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
}

enum LogCmd {
    Append(Record),
    Compact(Lsn),
    /// Store the `unclean` flag in the meta file (after the batch before it is durable).
    StoreUnclean(bool),
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
        let (log, rec) = DiskLog::open(
            &dir.join("wal"),
            DiskOptions {
                segment_bytes_max: cfg.storage.segment_bytes_max,
            },
        )?;
        Self::open_with_log(cfg, lock, Box::new(log), rec.torn_bytes_truncated, t0)
    }

    /// Opens with a given log store (the disk log in production; an in-memory one with fault
    /// injection in tests). The data directory still holds the meta file and snapshots.
    pub fn open_with_log(
        cfg: ReplicaConfig,
        lock: DirLock,
        log: Box<dyn LogStore>,
        torn_bytes: u64,
        t0: Instant,
    ) -> anyhow::Result<(Arc<Node>, OpenReport)> {
        let dir = cfg.data_dir.clone();
        let (meta, created) = Meta::load_or_create(&dir)?;
        let snap = snapshot::load_latest(&dir.join("snap"))?;
        let snap_lsn = snap.as_ref().map_or(Lsn(0), |s| s.lsn);
        if log.last_lsn() < snap_lsn {
            anyhow::bail!(
                "{}: the log ends at LSN {} but the snapshot covers up to LSN {snap_lsn}; the log was damaged or replaced",
                dir.join("wal").display(),
                log.last_lsn()
            );
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
            _lock: lock,
        });
        let n2 = node.clone();
        let handle = std::thread::Builder::new()
            .name("baton-log".into())
            .spawn(move || log_thread(n2, log, rx))
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
        let (rx, lsn) = {
            let mut g = self.lock();
            let now = clock::now_ms();
            let rec = g.core.propose(now, req).map_err(WriteError::Rejected)?;
            let lsn = rec.lsn;
            let version = Version {
                epoch: rec.epoch,
                lsn,
            };
            let (tx, rx) = oneshot::channel();
            g.waiters.insert(lsn, Waiter { tx, version });
            if !self.send_log(LogCmd::Append(rec)) {
                g.waiters.remove(&lsn);
                return Err(WriteError::OutcomeUnknown(
                    "the log writer has stopped".into(),
                ));
            }
            (rx, lsn)
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
                    if !self.send_log(LogCmd::Append(rec)) {
                        tracing::warn!("log writer stopped; a record could not be appended");
                    }
                }
                Effect::FailPending(reason) => {
                    for (_, w) in std::mem::take(&mut g.waiters) {
                        let _ = w.tx.send(Err(reason.clone()));
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
            next.store(&self.data_dir)?;
            *m = next;
        }
        Ok(())
    }

    /// Called by the log thread once everything up to `lsn` is durable.
    fn on_flushed(self: &Arc<Self>, lsn: Lsn) {
        let now = clock::now_ms();
        let mut g = self.lock();
        let fx = g.core.on_flushed(now, lsn);
        let commit = g.core.commit();
        if !g.waiters.is_empty() {
            let ack = g.core.may_acknowledge(now);
            while let Some(entry) = g.waiters.first_entry() {
                if *entry.key() > commit {
                    break;
                }
                let w = entry.remove();
                if ack {
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
        self.run_effects(&mut g, fx);
        if g.core.snapshot_due() {
            let snap = g.core.begin_snapshot();
            drop(g);
            self.spawn_snapshot(snap);
        }
    }

    fn spawn_snapshot(self: &Arc<Self>, snap: snapshot::Snapshot) {
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
            match snapshot::write(&node.data_dir.join("snap"), &snap) {
                Ok((path, size)) => {
                    node.metrics.snapshots.with_label_values(&["ok"]).inc();
                    node.metrics
                        .snapshot_seconds
                        .observe(t0.elapsed().as_secs_f64());
                    tracing::info!(lsn = %lsn, keys = snap.state.len(), bytes = size, file = %path.display(),
                        ms = t0.elapsed().as_millis() as u64, "snapshot written");
                    node.send_log(LogCmd::Compact(lsn));
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
    pub fn persist_epoch(&self, epoch: Epoch, rev: u64) -> anyhow::Result<()> {
        self.update_meta(|m| {
            m.epoch = m.epoch.max(epoch);
            m.applied_rev = rev;
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

fn log_thread(node: Arc<Node>, mut log: Box<dyn LogStore>, rx: mpsc::Receiver<LogCmd>) {
    const MAX_BATCH: usize = 4096;
    let mut batch: Vec<Record> = Vec::with_capacity(MAX_BATCH);
    let mut compact: Option<Lsn> = None;
    let mut unclean: Option<bool> = None;
    let fail = |e: LogError| node.set_fatal(format!("{e}"));
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                LogCmd::Append(r) => batch.push(r),
                LogCmd::Compact(l) => compact = Some(compact.map_or(l, |c| c.max(l))),
                LogCmd::StoreUnclean(u) => unclean = Some(u),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let t0 = Instant::now();
            let last = batch.last().map(|r| r.lsn).expect("non-empty");
            if let Err(e) = log.append(&batch).and_then(|_| log.sync()) {
                fail(e);
                return;
            }
            node.metrics
                .fsync_seconds
                .observe(t0.elapsed().as_secs_f64());
            node.metrics.batch_records.observe(batch.len() as f64);
            batch.clear();
            node.on_flushed(last);
        }
        if let Some(u) = unclean.take() {
            if let Err(e) = node.update_meta(|m| m.unclean = u) {
                node.set_fatal(format!("cannot store the meta file: {e:#}"));
                return;
            }
        }
        if let Some(c) = compact.take() {
            match log.compact_through(c) {
                Ok(()) => node.lock().core.set_log_start(log.first_lsn()),
                Err(e) => {
                    tracing::warn!(%e, "log compaction failed; it is retried after the next snapshot")
                }
            }
        }
        node.log_bytes
            .store(log.size_bytes(), std::sync::atomic::Ordering::Relaxed);
    }
}
