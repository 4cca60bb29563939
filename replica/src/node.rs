//! The replica runtime around the engine ([`Core`]): recovery from disk, the write waiters, the
//! meta file, the fatal-error path and shutdown. The driver (`driver/`) executes the
//! engine's actions; the log thread (`logthread.rs`) owns the log store and reports through
//! `LogEvents`; the tail of recent records for leader streams is `tail.rs`.
//!
//! Locking: one mutex guards the core, the waiters and the tail; nothing blocks on I/O while
//! holding it. Records reach the log thread through a channel in LSN order because they are
//! sent under that mutex.

use crate::config::ReplicaConfig;
use crate::core::{Action, Core, CoreConfig, Recovered, WriteReject, WriteReq};
use crate::faults::fault;
use crate::logthread::{self, Dirs, Gate, LogCmd};
use crate::meta::{DirLock, Meta};
use crate::metrics::Metrics;
use crate::snapshot;
use crate::tail::Tail;
use crate::wal::disk::{DiskLog, DiskOptions};
use crate::wal::LogStore;
use baton_common::api::WriteReply;
use baton_common::{clock, BootId, Lsn, NodeId, Version};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
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

pub(crate) struct Waiter {
    pub tx: WaiterTx,
    pub version: Version,
}

/// The core and the writes waiting on it, behind [`Node::lock`].
pub struct Inner {
    pub(crate) core: Core,
    pub(crate) waiters: BTreeMap<Lsn, Waiter>,
    /// Refusals waiting for the pending record they were judged on to commit (true) or to
    /// be given up (false).
    pub(crate) barriers: Vec<(Lsn, oneshot::Sender<bool>)>,
    pub(crate) tail: Tail,
}

/// Why the node is stopping on its own.
#[derive(Clone, Debug)]
pub struct Fatal(pub String);

/// A running replica's shared state.
pub struct Node {
    inner: Mutex<Inner>,
    /// This node, for the log thread's reports (which step the engine through the driver).
    pub(crate) me: Weak<Node>,
    log_tx: Mutex<Option<mpsc::Sender<LogCmd>>>,
    log_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(crate) snapshot_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    meta: Mutex<Meta>,
    data_dir: PathBuf,
    pub cfg: ReplicaConfig,
    pub metrics: Arc<Metrics>,
    pub id: NodeId,
    pub boot_id: BootId,
    /// Set once; the main task exits non-zero when it fires.
    fatal: Mutex<Option<Fatal>>,
    pub fatal_notify: Notify,
    /// Bumped to ask every heartbeat loop to send one now ([`Node::heartbeat_soon`]).
    pub heartbeat_now: tokio::sync::watch::Sender<u64>,
    log_bytes: std::sync::atomic::AtomicU64,
    /// The log generation the log thread executed, and the lock snapshots commit under.
    pub(crate) gate: Arc<Gate>,
    /// Bumped after every engine step (records appended, commit moved, role changed): leader
    /// streams, follower streams and the follower loop wait on it.
    pub progress: watch::Sender<u64>,
    /// The follower's catch-up in progress, as its stream's meter last said
    /// (`repl/progress.rs`): shown in status and heartbeats and as metrics.
    catchup: Mutex<Option<baton_common::api::CatchUp>>,
    /// Writes waiting for their commit: shutdown waits for it to reach 0.
    pub(crate) pending_writes: watch::Sender<usize>,
    /// The flushed LSN: a follower's stream acknowledges on changes.
    pub flushed: watch::Sender<Lsn>,
    /// One permit per replication stream served (`limits.replication_streams_max`): an
    /// upgraded stream leaves the server's connection count, so it is counted here.
    pub repl_streams: Arc<tokio::sync::Semaphore>,
    /// This replica's TLS (`None`: insecure mode): its listener, its heartbeats to the
    /// controllers and its streams from the leader.
    pub tls: Option<Arc<baton_runtime::tls::Tls>>,
    /// Who may do what on its API (open in insecure mode).
    pub auth: Arc<baton_runtime::auth::Auth>,
    _lock: DirLock,
}

/// What opening found, for the start-up log line.
pub struct OpenReport {
    pub created: bool,
    pub snapshot_lsn: Lsn,
    pub records_replayed: usize,
    pub torn_bytes: u64,
    pub elapsed: Duration,
    /// Where the time went: opening (recovering) the log, loading the newest snapshot, reading
    /// the records after it into the core (they are applied later, when a leader's epoch
    /// above them commits: for a restarted leader, with its first write).
    pub log_open: Duration,
    pub snapshot_load: Duration,
    pub replay: Duration,
}

impl Node {
    /// Asks every heartbeat loop (one per controller) to send a heartbeat now, abandoning a
    /// held one: a client showed a newer epoch, or something the controller must learn at once
    /// changed (a full disk).
    pub fn heartbeat_soon(&self) {
        self.heartbeat_now.send_modify(|n| *n = n.wrapping_add(1));
    }

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
            let damaged = match &rec.damage {
                Some(d) => format!(
                    "{}: offset {}: {} (LSN {} and everything after it were cut{})",
                    d.file.display(),
                    d.offset,
                    d.reason,
                    d.from,
                    d.archived
                        .as_ref()
                        .map(|a| format!(", kept in {}", a.display()))
                        .unwrap_or_default()
                ),
                None => meta.damaged.clone().unwrap_or_else(|| {
                    format!(
                        "{}: records it had synced were cut at an earlier start (see {})",
                        dir.join("wal").display(),
                        dir.join("wal").join("damaged").display()
                    )
                }),
            };
            if !meta.unclean || meta.damaged.as_ref() != Some(&damaged) {
                meta.unclean = true;
                meta.damaged = Some(damaged);
                meta.store(&dir)?;
            }
            tracing::warn!(
                "marked unclean: the log lost records it had synced; they are fetched again \
                 from the leader, and this replica is not promoted until it holds them"
            );
            log.clear_lost_marker()?;
        }
        logthread::finish_interrupted_resync(&mut log, &Dirs::new(&dir))?;
        let log_open = t0.elapsed();
        let (node, mut report) =
            Self::open_with_log(cfg, lock, Box::new(log), rec.torn_bytes_truncated, t0)?;
        report.log_open = log_open;
        Ok((node, report))
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
        let t_snap = Instant::now();
        let snap = snapshot::load_latest(&dir.join("snap"))?;
        let snapshot_load = t_snap.elapsed();
        let t_replay = Instant::now();
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
        let mut core = Core::new(
            core_cfg,
            Recovered {
                cluster_id: meta.cluster_id,
                epoch: meta.epoch,
                applied_rev: meta.applied_rev,
                unclean: meta.unclean,
                damaged: meta.damaged.clone(),
                snapshot: snap,
                records,
                log_start: log.first_lsn(),
            },
        );
        core.check_invariants()
            .map_err(|e| anyhow::anyhow!("recovered state is inconsistent: {e}"))?;
        // Long runs of committed records (the records after the snapshot, applied at once when
        // the first epoch commits; a follower's large catch-up batches) use every core.
        core.set_apply_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
        let replay = t_replay.elapsed();
        // A promise given before this start may still be held: none is led within one.
        core.set_promises(cfg.timing.promise_ms, clock::now_ms());
        let (tx, rx) = mpsc::channel();
        let log_bytes = log.size_bytes();
        let metrics = Arc::new(Metrics::new());
        let tls = baton_runtime::tls::check_security(cfg.insecure, cfg.tls.as_ref(), &cfg.tokens)
            .map_err(|(k, r)| anyhow::anyhow!("{k}: {r}"))?;
        let auth = baton_runtime::auth::Auth::new(
            !cfg.insecure,
            &cfg.tokens,
            metrics.registry(),
            "replica",
        )
        .map_err(|(k, r)| anyhow::anyhow!("{k}: {r}"))?;
        let node = Arc::new_cyclic(|me| Node {
            tls,
            auth,
            me: me.clone(),
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
            repl_streams: Arc::new(tokio::sync::Semaphore::new(
                cfg.limits.replication_streams_max,
            )),
            id: NodeId(cfg.id.clone()),
            boot_id,
            cfg,
            metrics,
            fatal: Mutex::new(None),
            fatal_notify: Notify::new(),
            heartbeat_now: tokio::sync::watch::channel(0).0,
            log_bytes: std::sync::atomic::AtomicU64::new(log_bytes),
            gate: Arc::new(Gate::default()),
            progress: watch::channel(0).0,
            catchup: Mutex::new(None),
            pending_writes: watch::channel(0).0,
            flushed: watch::channel(Lsn(0)).0,
            _lock: lock,
        });
        let events: Arc<dyn logthread::LogEvents> = node.clone();
        let gate = node.gate.clone();
        let dirs = Dirs::new(&node.data_dir);
        let handle = std::thread::Builder::new()
            .name("baton-log".into())
            .spawn(move || logthread::run(events, gate, log, rx, dirs))
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
                log_open: Duration::ZERO,
                snapshot_load,
                replay,
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
                Ok(fx) => {
                    let Some(Action::Append(rec)) = fx.first() else {
                        unreachable!("an accepted write is one append")
                    };
                    let lsn = rec.lsn;
                    let version = Version {
                        epoch: rec.epoch,
                        lsn,
                    };
                    let (tx, rx) = oneshot::channel();
                    g.waiters.insert(lsn, Waiter { tx, version });
                    if !self.log_running() {
                        g.waiters.remove(&lsn);
                        return Err(WriteError::OutcomeUnknown(
                            "the log writer has stopped".into(),
                        ));
                    }
                    self.step(g, fx);
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
                let mut g = self.lock();
                g.waiters.remove(&lsn);
                let n = g.waiters.len();
                self.pending_writes.send_replace(n);
                drop(g);
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

    pub(crate) fn send_log(&self, cmd: LogCmd) -> bool {
        match &*self.log_tx.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.send(cmd).is_ok(),
            None => false,
        }
    }

    fn log_running(&self) -> bool {
        self.log_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Where a snapshot received from the leader is written before it is installed.
    pub(crate) fn incoming_snapshot_path(&self) -> PathBuf {
        self.data_dir.join("snap").join("incoming.snap.tmp")
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

    /// The follower's catch-up in progress, if any.
    pub fn catchup(&self) -> Option<baton_common::api::CatchUp> {
        self.catchup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_catchup(&self, c: Option<baton_common::api::CatchUp>) {
        *self.catchup.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }

    /// Bytes of log on disk, as the log thread last reported.
    pub(crate) fn log_bytes(&self) -> u64 {
        self.log_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_log_bytes(&self, b: u64) {
        self.log_bytes
            .store(b, std::sync::atomic::Ordering::Relaxed);
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
        self.step(g, fx);
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
        self.step(g, fx);
    }

    /// SIGTERM: refuse new writes, wait up to `shutdown_drain_ms` for pending ones, fail the rest
    /// as outcome unknown, then stop the log thread after its last fsync.
    pub async fn shutdown(self: &Arc<Self>) {
        self.lock().core.begin_shutdown();
        let started = Instant::now();
        let drain = Duration::from_millis(self.cfg.timing.shutdown_drain_ms);
        let mut pending = self.pending_writes.subscribe();
        let _ = tokio::time::timeout(drain, pending.wait_for(|n| *n == 0)).await;
        {
            let g = self.lock();
            let n = g.waiters.len();
            if n > 0 {
                tracing::warn!(
                    pending = n,
                    "writes still pending at shutdown are answered outcome_unknown"
                );
                self.step(
                    g,
                    vec![Action::FailPending("the replica is shutting down".into())],
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
        m.degraded_for_seconds
            .set(st.degraded_for_ms as f64 / 1000.0);
        m.degraded_seconds.set(st.degraded_total_ms as f64 / 1000.0);
        m.disk_full.set(i64::from(st.disk_full));
        m.log_end_lsn.set(st.log_end_lsn.0 as i64);
        m.flushed_lsn.set(st.flushed_lsn.0 as i64);
        m.commit_lsn.set(st.commit_lsn.0 as i64);
        m.applied_lsn.set(st.applied_lsn.0 as i64);
        m.keys.set(st.keys as i64);
        m.log_bytes
            .set(self.log_bytes.load(std::sync::atomic::Ordering::Relaxed) as i64);
        let c = self.catchup().unwrap_or_default();
        m.catchup_records_remaining.set(c.records_remaining as i64);
        m.catchup_bytes_remaining.set(c.bytes_remaining as i64);
        m.catchup_bytes_per_second.set(c.bytes_per_s as i64);
        m.catchup_eta_seconds
            .set(c.eta_ms.map_or(0.0, |ms| ms as f64 / 1000.0));
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
