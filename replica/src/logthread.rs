//! The log thread: sole owner of the [`LogStore`]. It takes commands in order from one channel:
//! appends are batched so that everything queued while one fdatasync ran shares the next one
//! (group commit); reads serve followers that are behind the in-memory tail; truncations archive
//! the cut records to a rollback file before cutting; resets replace the log after a snapshot.
//! It reports through the narrow [`LogEvents`] interface (durability with the log generation it
//! wrote under, fatal errors, the meta file's `unclean` flag, compaction, size); it knows
//! nothing of the node around it. [`Gate`] is what it shares with background snapshots.
//!
//! A failed write or sync is fatal: the thread reports it and stops; nothing is retried — except
//! a full disk. ENOSPC from a write(2), a space reservation or the meta file's temp file
//! ([`LogError::NoSpace`]) leaves what was written in place; the thread reports the disk full,
//! keeps the records it was given (and every later command, in order; reads and compactions
//! are still served) and tries again every [`NO_SPACE_RETRY`] until the write succeeds, then
//! reports it. ENOSPC from an fsync is fatal like any fsync error (`wal/mod.rs` says why).

use crate::faults::fault;
use crate::snapshot;
use crate::wal::disk::sync_dir;
use crate::wal::{Frames, LogError, LogStore, Record};
use baton_common::{Epoch, Lsn};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Records cut from the log, and where they were archived.
#[derive(Clone, Debug)]
pub struct Archived {
    pub file: PathBuf,
    pub from: Lsn,
    pub to: Lsn,
    pub epoch: Epoch,
    pub records: usize,
}

pub enum LogCmd {
    Append(Record),
    /// Remove segments a snapshot covers, if the log generation is still the given one.
    Compact(Lsn, u64),
    /// Store the `unclean` flag in the meta file (after the batch before it is durable).
    StoreUnclean(bool),
    /// Read records for a follower, as their frames (shipped as they are).
    Read {
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
        reply: oneshot::Sender<Result<Frames, LogError>>,
    },
    /// Archive `records` (the log's records from `from` on), then cut the log there.
    Truncate {
        from: Lsn,
        records: Vec<Record>,
        reply: oneshot::Sender<Result<Option<Archived>, LogError>>,
    },
    /// Archive the log from `from` on, set the snapshots aside and empty the log (a resync).
    Resync {
        from: Lsn,
        reply: oneshot::Sender<Result<Option<Archived>, LogError>>,
    },
    /// Make the received snapshot at `tmp` the newest one and restart the log after `lsn`.
    InstallSnapshot {
        tmp: PathBuf,
        lsn: Lsn,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// What the log thread reports, in the order it happens. Called on the log thread; an
/// implementation must not block on the log thread itself.
pub trait LogEvents: Send + Sync + 'static {
    /// Everything up to `lsn` is durable, written under log generation `gen`.
    fn flushed(&self, lsn: Lsn, gen: u64);
    /// The log cannot go on; the thread stops after this.
    fn fatal(&self, reason: String);
    /// Store the `unclean` flag durably in the meta file.
    fn store_unclean(&self, unclean: bool) -> anyhow::Result<()>;
    /// Compaction removed records below `first`; the log now holds `log_bytes`.
    fn compacted(&self, first: Lsn, log_bytes: u64);
    /// One batch was appended and synced.
    fn synced(&self, took: Duration, records: usize, log_bytes: u64);
    /// The log cannot be written for lack of space (`Some(error)`; the thread keeps what it was
    /// given and retries every [`NO_SPACE_RETRY`]), or a retry wrote (`None`).
    fn disk_full(&self, full: Option<String>);
}

/// Shared by the log thread and background snapshots: the log generation the thread has
/// executed (truncations and resets), and a lock the thread holds while it truncates or resets
/// and a snapshot holds while it decides whether to commit.
#[derive(Default)]
pub struct Gate {
    pub lock: Mutex<()>,
    gen: AtomicU64,
}

impl Gate {
    pub fn gen(&self) -> u64 {
        self.gen.load(Ordering::SeqCst)
    }
    fn bump(&self) -> u64 {
        self.gen.fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Name of the marker that makes a resync atomic across crashes.
pub const RESYNC_MARKER: &str = "RESYNC";

/// Writes `records` to a new rollback file in `dir`, durably. Named by the first record's
/// epoch and the LSN range; the content is the records in the log's frame format.
pub fn archive(dir: &Path, records: &[Record]) -> Result<Option<Archived>, LogError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| LogError::io(format!("create {}", dir.display()), e))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let file = dir.join(format!(
        "epoch-{}-lsn-{}-{}.{stamp}.rollback",
        first.epoch.0, first.lsn.0, last.lsn.0
    ));
    let mut buf = BytesMut::new();
    for r in records {
        r.encode_into(&mut buf);
    }
    let io = |e| LogError::io(format!("write {}", file.display()), e);
    let mut f = std::fs::File::create(&file).map_err(io)?;
    f.write_all(&buf).map_err(io)?;
    f.sync_all().map_err(io)?;
    sync_dir(dir)?;
    Ok(Some(Archived {
        file,
        from: first.lsn,
        to: last.lsn,
        epoch: first.epoch,
        records: records.len(),
    }))
}

/// Moves every snapshot in `snap_dir` into `rollback_dir` (kept, not deleted).
pub fn set_snapshots_aside(snap_dir: &Path, rollback_dir: &Path) -> Result<(), LogError> {
    let snaps = snapshot::list(snap_dir).map_err(|e| LogError::Misuse(e.to_string()))?;
    if snaps.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(rollback_dir)
        .map_err(|e| LogError::io(format!("create {}", rollback_dir.display()), e))?;
    for (_, p) in snaps {
        let to = rollback_dir.join(p.file_name().unwrap_or_default());
        std::fs::rename(&p, &to)
            .map_err(|e| LogError::io(format!("move {} aside", p.display()), e))?;
    }
    sync_dir(rollback_dir)?;
    sync_dir(snap_dir)
}

/// Paths the log thread needs besides the log.
pub struct Dirs {
    pub data: PathBuf,
    pub snap: PathBuf,
    pub rollback: PathBuf,
}

impl Dirs {
    pub fn new(data: &Path) -> Dirs {
        Dirs {
            data: data.to_path_buf(),
            snap: data.join("snap"),
            rollback: data.join("rollback"),
        }
    }
}

/// How often a write refused for lack of space is tried again.
pub const NO_SPACE_RETRY: Duration = Duration::from_millis(500);

/// Reports durability from a thread of its own while the log thread goes on writing: what a
/// report sets off (commits, applying a batch to the state, answering its writers) runs under
/// the node's lock and took as long as a write and an fsync, so a follower catching up or a
/// leader under load wrote and synced its next batch only after the last one was applied. Only
/// the newest report matters (durability only grows within a log generation; a report of an
/// older generation is ignored), so a report not yet delivered is replaced by a newer one.
struct Reporter {
    slot: std::sync::Arc<(Mutex<ReporterSlot>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct ReporterSlot {
    pending: Option<(Lsn, u64)>,
    closed: bool,
}

impl Reporter {
    fn start(events: std::sync::Arc<dyn LogEvents>) -> Reporter {
        let slot = std::sync::Arc::new((
            Mutex::new(ReporterSlot::default()),
            std::sync::Condvar::new(),
        ));
        let shared = slot.clone();
        let thread = std::thread::Builder::new()
            .name("baton-flushed".into())
            .spawn(move || loop {
                let next = {
                    let (m, cv) = &*shared;
                    let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
                    loop {
                        if let Some(p) = s.pending.take() {
                            break Some(p);
                        }
                        if s.closed {
                            break None;
                        }
                        s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
                    }
                };
                match next {
                    Some((lsn, gen)) => events.flushed(lsn, gen),
                    None => return,
                }
            })
            .ok();
        Reporter { slot, thread }
    }

    /// Hands a report to the reporter thread; false when there is none (it could not be
    /// started): then the caller reports itself.
    fn post(&self, lsn: Lsn, gen: u64) -> bool {
        if self.thread.is_none() {
            return false;
        }
        let (m, cv) = &*self.slot;
        m.lock().unwrap_or_else(|p| p.into_inner()).pending = Some((lsn, gen));
        cv.notify_one();
        true
    }
}

impl Drop for Reporter {
    /// Delivers what is pending, then stops the thread.
    fn drop(&mut self) {
        let (m, cv) = &*self.slot;
        m.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs until the channel closes or the log fails.
pub fn run(
    events: std::sync::Arc<dyn LogEvents>,
    gate: std::sync::Arc<Gate>,
    log: Box<dyn LogStore>,
    rx: mpsc::Receiver<LogCmd>,
    dirs: Dirs,
) {
    let gen = gate.gen();
    let events_for_reporter = events.clone();
    LogThread {
        events,
        gate,
        log,
        rx,
        dirs,
        gen,
        deferred: VecDeque::new(),
        full_since: None,
        reporter: Reporter::start(events_for_reporter),
    }
    .run()
}

/// The log thread's state.
struct LogThread {
    events: std::sync::Arc<dyn LogEvents>,
    gate: std::sync::Arc<Gate>,
    log: Box<dyn LogStore>,
    rx: mpsc::Receiver<LogCmd>,
    dirs: Dirs,
    /// The log generation executed here (truncations and resets).
    gen: u64,
    /// Commands taken off the channel while waiting for space, to be run in order afterwards.
    deferred: VecDeque<LogCmd>,
    /// Since when the disk is full (a write or the meta file failed with ENOSPC).
    full_since: Option<Instant>,
    reporter: Reporter,
}

impl LogThread {
    fn next_blocking(&mut self) -> Option<LogCmd> {
        self.deferred.pop_front().or_else(|| self.rx.recv().ok())
    }

    fn next_ready(&mut self) -> Option<LogCmd> {
        self.deferred
            .pop_front()
            .or_else(|| self.rx.try_recv().ok())
    }

    /// Reports that everything up to `last` is durable: here when nothing else waits (the
    /// shortest path for a lone write), through the reporter thread when more commands are
    /// queued, so that the next batch is written while this one is committed and applied.
    fn report_flushed(&mut self, last: Lsn) {
        match self.next_ready() {
            Some(cmd) => {
                self.deferred.push_front(cmd);
                if !self.reporter.post(last, self.gen) {
                    self.events.flushed(last, self.gen);
                }
            }
            None => self.events.flushed(last, self.gen),
        }
    }

    fn fail(&self, reason: String) {
        self.events.fatal(reason)
    }

    fn run(mut self) {
        const MAX_BATCH: usize = 4096;
        let mut batch: Vec<Record> = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.next_blocking() {
            let mut next = Some(first);
            let mut compact: Option<Lsn> = None;
            let mut unclean: Option<bool> = None;
            let mut reads = Vec::new();
            let mut barrier: Option<LogCmd> = None;
            while let Some(cmd) = next.take() {
                match cmd {
                    LogCmd::Append(r) => batch.push(r),
                    LogCmd::Compact(l, g) if g == self.gen => {
                        compact = Some(compact.map_or(l, |c| c.max(l)))
                    }
                    LogCmd::Compact(..) => {}
                    LogCmd::StoreUnclean(u) => unclean = Some(u),
                    LogCmd::Read { .. } => reads.push(cmd),
                    // Truncations and resets split batches: what came before is written first.
                    other => {
                        barrier = Some(other);
                        break;
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = self.next_ready();
                }
            }
            if !batch.is_empty() {
                let t0 = Instant::now();
                let last = batch.last().map(|r| r.lsn).expect("non-empty");
                if !self.write_batch(&batch) {
                    return;
                }
                self.events
                    .synced(t0.elapsed(), batch.len(), self.log.size_bytes());
                batch.clear();
                self.report_flushed(last);
            }
            for r in reads {
                self.serve_read(r);
            }
            if let Some(u) = unclean {
                if !self.store_unclean(u) {
                    return;
                }
            }
            if let Some(c) = compact {
                self.compact(c);
            }
            if let Some(b) = barrier {
                if !self.barrier(b) {
                    return;
                }
            }
        }
    }

    /// Appends what of `batch` the log does not hold yet and syncs, waiting for space as long
    /// as the disk is full. False when the thread must stop (fatal error, or shutdown while
    /// the disk is full).
    fn write_batch(&mut self, batch: &[Record]) -> bool {
        loop {
            let next = self.log.last_lsn().next();
            let at = batch.partition_point(|r| r.lsn < next);
            let res = if at < batch.len() {
                self.log.append(&batch[at..])
            } else {
                Ok(())
            }
            .and_then(|_| self.log.sync());
            match res {
                Ok(()) => {
                    self.space_again();
                    return true;
                }
                Err(e) if e.is_no_space() => {
                    if !self.wait_for_space(e.to_string(), batch.len() - at) {
                        return false;
                    }
                }
                Err(e) => {
                    self.fail(describe(&e));
                    return false;
                }
            }
        }
    }

    /// Stores the `unclean` flag, waiting for space as long as the meta file cannot be
    /// written for lack of it (the old file stays in place until the rename, so a retry is
    /// safe). False when the thread must stop.
    fn store_unclean(&mut self, u: bool) -> bool {
        loop {
            match self.events.store_unclean(u) {
                Ok(()) => {
                    self.space_again();
                    return true;
                }
                Err(e) if crate::meta::is_no_space(&e) => {
                    if !self.wait_for_space(format!("cannot store the meta file: {e:#}"), 0) {
                        return false;
                    }
                }
                Err(e) => {
                    self.fail(format!("cannot store the meta file: {e:#}"));
                    return false;
                }
            }
        }
    }

    /// The disk is full: says so once, then waits [`NO_SPACE_RETRY`] while serving reads and
    /// compactions (which may free space) and keeping every other command for later, in order.
    /// False when the channel closed (shutdown): the records not written were never
    /// acknowledged.
    fn wait_for_space(&mut self, error: String, unwritten: usize) -> bool {
        if self.full_since.is_none() {
            self.full_since = Some(Instant::now());
            tracing::warn!(%error, unwritten,
                "disk full: writes are refused (507) and reads served; the write is retried every {} ms",
                NO_SPACE_RETRY.as_millis());
            self.events.disk_full(Some(error));
        }
        let deadline = Instant::now() + NO_SPACE_RETRY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            match self.rx.recv_timeout(left) {
                // With nothing deferred, nothing these could overtake is waiting.
                Ok(cmd @ LogCmd::Read { .. }) if self.deferred.is_empty() => self.serve_read(cmd),
                Ok(LogCmd::Compact(l, g)) if self.deferred.is_empty() => {
                    if g == self.gen {
                        self.compact(l);
                    }
                }
                Ok(cmd) => self.deferred.push_back(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => return true,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let appends = self
                        .deferred
                        .iter()
                        .filter(|c| matches!(c, LogCmd::Append(_)))
                        .count();
                    tracing::warn!(
                        records = unwritten + appends,
                        "stopping while the disk is full: records handed to the log were not written (none was acknowledged)"
                    );
                    return false;
                }
            }
        }
    }

    /// A write succeeded: if the disk was full, it is no longer.
    fn space_again(&mut self) {
        if let Some(t) = self.full_since.take() {
            tracing::info!(
                full_ms = t.elapsed().as_millis() as u64,
                "the disk has room again: writes resume"
            );
            self.events.disk_full(None);
        }
    }

    fn serve_read(&self, cmd: LogCmd) {
        if let LogCmd::Read {
            from,
            max_records,
            max_bytes,
            reply,
        } = cmd
        {
            let res = if from < self.log.first_lsn() {
                Err(LogError::Misuse(format!("LSN {from} was compacted away")))
            } else {
                self.log.read_frames(from, max_records, max_bytes)
            };
            let _ = reply.send(res);
        }
    }

    fn compact(&mut self, c: Lsn) {
        match compact_through(self.log.as_mut(), c) {
            Ok(()) => self
                .events
                .compacted(self.log.first_lsn(), self.log.size_bytes()),
            Err(e) => {
                tracing::warn!(%e, "log compaction failed; it is retried after the next snapshot")
            }
        }
    }

    /// Runs a truncation, resync or snapshot install. False when the thread must stop.
    fn barrier(&mut self, b: LogCmd) -> bool {
        let gate = self.gate.clone();
        match b {
            LogCmd::Truncate {
                from,
                records,
                reply,
            } => {
                let _gate = gate.lock();
                self.gen = gate.bump();
                let log = self.log.as_mut();
                let res = archive(&self.dirs.rollback, &records).and_then(|a| {
                    fault!("truncate.after_archive", |e| LogError::io(
                        format!("truncate the log from LSN {from}"),
                        e
                    ));
                    log.truncate_from(from).map(|_| a)
                });
                let failed = res.as_ref().err().map(|e| e.to_string());
                let _ = reply.send(res);
                if let Some(e) = failed {
                    self.fail(format!("cannot truncate the log: {e}"));
                    return false;
                }
            }
            LogCmd::Resync { from, reply } => {
                let _gate = gate.lock();
                self.gen = gate.bump();
                let res = resync(self.log.as_mut(), &self.dirs, from);
                let failed = res.as_ref().err().map(|e| e.to_string());
                let _ = reply.send(res);
                if let Some(e) = failed {
                    self.fail(format!("cannot resync the log: {e}"));
                    return false;
                }
            }
            LogCmd::InstallSnapshot { tmp, lsn, reply } => {
                let g = gate.lock();
                self.gen = gate.bump();
                let res = install(self.log.as_mut(), &self.dirs, &tmp, lsn);
                drop(g);
                if let Err(e) = res {
                    let msg = e.to_string();
                    let _ = reply.send(Err(e));
                    self.fail(format!("cannot install the snapshot: {msg}"));
                    return false;
                }
                // Only now does a crash keep the snapshot: report it durable like a flush, so
                // that the follower acknowledges it (the core held `flushed` below it so far).
                // Outside the gate: the step may start a snapshot, which takes the gate.
                self.events.flushed(lsn, self.gen);
                let _ = reply.send(Ok(()));
            }
            _ => unreachable!("only truncations and resets are barriers"),
        }
        true
    }
}

fn resync(log: &mut dyn LogStore, dirs: &Dirs, from: Lsn) -> Result<Option<Archived>, LogError> {
    let from = from.max(log.first_lsn());
    let records = log.read(from, usize::MAX, usize::MAX)?;
    let archived = archive(&dirs.rollback, &records)?;
    finish_resync(log, dirs)?;
    Ok(archived)
}

/// Sets snapshots aside and empties the log, under a marker so a crash midway is finished at
/// the next start ([`finish_interrupted_resync`]).
fn finish_resync(log: &mut dyn LogStore, dirs: &Dirs) -> Result<(), LogError> {
    let marker = dirs.data.join(RESYNC_MARKER);
    std::fs::write(&marker, b"resync\n")
        .map_err(|e| LogError::io(format!("write {}", marker.display()), e))?;
    sync_dir(&dirs.data)?;
    set_snapshots_aside(&dirs.snap, &dirs.rollback)?;
    log.reset(Lsn(1))?;
    std::fs::remove_file(&marker)
        .map_err(|e| LogError::io(format!("remove {}", marker.display()), e))?;
    sync_dir(&dirs.data)
}

/// At start: if a resync was interrupted, finish it before anything reads the log.
pub fn finish_interrupted_resync(log: &mut dyn LogStore, dirs: &Dirs) -> Result<bool, LogError> {
    if !dirs.data.join(RESYNC_MARKER).exists() {
        return Ok(false);
    }
    tracing::warn!(dir = %dirs.data.display(), "finishing an interrupted resync: the log and snapshots are set aside");
    let records = log.read(log.first_lsn(), usize::MAX, usize::MAX)?;
    archive(&dirs.rollback, &records)?;
    finish_resync(log, dirs)?;
    Ok(true)
}

fn compact_through(log: &mut dyn LogStore, through: Lsn) -> Result<(), LogError> {
    fault!("compact.before", |e| LogError::io("compaction", e));
    log.compact_through(through)
}

/// The fatal message for a log error; a full disk is named as such.
fn describe(e: &LogError) -> String {
    match e {
        LogError::Io { source, .. }
            if source.raw_os_error() == Some(libc::ENOSPC)
                || source.kind() == std::io::ErrorKind::StorageFull =>
        {
            format!("disk full: {e}")
        }
        _ => e.to_string(),
    }
}

fn install(log: &mut dyn LogStore, dirs: &Dirs, tmp: &Path, lsn: Lsn) -> Result<(), LogError> {
    let target = dirs.snap.join(format!("{:020}.snap", lsn.0));
    fault!("install.before_rename", |e| LogError::io(
        format!("rename {} to {}", tmp.display(), target.display()),
        e
    ));
    std::fs::rename(tmp, &target).map_err(|e| {
        LogError::io(
            format!("rename {} to {}", tmp.display(), target.display()),
            e,
        )
    })?;
    sync_dir(&dirs.snap)?;
    // Other snapshots are older or belong to a history this replica no longer follows.
    for (l, p) in snapshot::list(&dirs.snap).map_err(|e| LogError::Misuse(e.to_string()))? {
        if l != lsn {
            let _ = std::fs::remove_file(p);
        }
    }
    log.reset(lsn.next())?;
    // Durable from here on; not yet reported, so not yet acknowledged.
    fault!("install.after_reset", |e| LogError::io(
        format!("report the snapshot at LSN {lsn} installed"),
        e
    ));
    Ok(())
}
