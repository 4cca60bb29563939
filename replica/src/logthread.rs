//! The log thread: sole owner of the [`LogStore`]. It takes commands in order from one channel:
//! appends are batched so that everything queued while one fdatasync ran shares the next one
//! (group commit); reads serve followers that are behind the in-memory tail; truncations archive
//! the cut records to a rollback file before cutting; resets replace the log after a snapshot.
//! It reports through the narrow [`LogEvents`] interface (durability with the log generation it
//! wrote under, fatal errors, the meta file's `unclean` flag, compaction, size); it knows
//! nothing of the node around it. [`Gate`] is what it shares with background snapshots.
//!
//! A failed write or sync is fatal: the thread reports it and stops; nothing is retried.

use crate::faults::fault;
use crate::snapshot;
use crate::wal::disk::sync_dir;
use crate::wal::{LogError, LogStore, Record};
use baton_common::{Epoch, Lsn};
use bytes::BytesMut;
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
    /// Read records for a follower.
    Read {
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
        reply: oneshot::Sender<Result<Vec<Record>, LogError>>,
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

/// Runs until the channel closes or the log fails.
pub fn run(
    events: std::sync::Arc<dyn LogEvents>,
    gate: std::sync::Arc<Gate>,
    mut log: Box<dyn LogStore>,
    rx: mpsc::Receiver<LogCmd>,
    dirs: Dirs,
) {
    const MAX_BATCH: usize = 4096;
    let mut batch: Vec<Record> = Vec::with_capacity(MAX_BATCH);
    let mut gen: u64 = gate.gen();
    let fail = |e: String| events.fatal(e);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut compact: Option<Lsn> = None;
        let mut unclean: Option<bool> = None;
        let mut reads = Vec::new();
        let mut barrier: Option<LogCmd> = None;
        while let Some(cmd) = next.take() {
            match cmd {
                LogCmd::Append(r) => batch.push(r),
                LogCmd::Compact(l, g) if g == gen => {
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
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let t0 = Instant::now();
            let last = batch.last().map(|r| r.lsn).expect("non-empty");
            if let Err(e) = log.append(&batch).and_then(|_| log.sync()) {
                fail(describe(&e));
                return;
            }
            events.synced(t0.elapsed(), batch.len(), log.size_bytes());
            batch.clear();
            events.flushed(last, gen);
        }
        for r in reads {
            if let LogCmd::Read {
                from,
                max_records,
                max_bytes,
                reply,
            } = r
            {
                let res = if from < log.first_lsn() {
                    Err(LogError::Misuse(format!("LSN {from} was compacted away")))
                } else {
                    log.read(from, max_records, max_bytes)
                };
                let _ = reply.send(res);
            }
        }
        if let Some(u) = unclean {
            if let Err(e) = events.store_unclean(u) {
                fail(format!("cannot store the meta file: {e:#}"));
                return;
            }
        }
        if let Some(c) = compact {
            match compact_through(log.as_mut(), c) {
                Ok(()) => events.compacted(log.first_lsn(), log.size_bytes()),
                Err(e) => {
                    tracing::warn!(%e, "log compaction failed; it is retried after the next snapshot")
                }
            }
        }
        match barrier {
            None => {}
            Some(LogCmd::Truncate {
                from,
                records,
                reply,
            }) => {
                let _gate = gate.lock();
                gen = gate.bump();
                let res = archive(&dirs.rollback, &records).and_then(|a| {
                    fault!("truncate.after_archive", |e| LogError::io(
                        format!("truncate the log from LSN {from}"),
                        e
                    ));
                    log.truncate_from(from).map(|_| a)
                });
                let failed = res.as_ref().err().map(|e| e.to_string());
                let _ = reply.send(res);
                if let Some(e) = failed {
                    fail(format!("cannot truncate the log: {e}"));
                    return;
                }
            }
            Some(LogCmd::Resync { from, reply }) => {
                let _gate = gate.lock();
                gen = gate.bump();
                let res = resync(log.as_mut(), &dirs, from);
                let failed = res.as_ref().err().map(|e| e.to_string());
                let _ = reply.send(res);
                if let Some(e) = failed {
                    fail(format!("cannot resync the log: {e}"));
                    return;
                }
            }
            Some(LogCmd::InstallSnapshot { tmp, lsn, reply }) => {
                let g = gate.lock();
                gen = gate.bump();
                let res = install(log.as_mut(), &dirs, &tmp, lsn);
                drop(g);
                if let Err(e) = res {
                    let msg = e.to_string();
                    let _ = reply.send(Err(e));
                    fail(format!("cannot install the snapshot: {msg}"));
                    return;
                }
                // Only now does a crash keep the snapshot: report it durable like a flush, so
                // that the follower acknowledges it (the core held `flushed` below it so far).
                // Outside the gate: the step may start a snapshot, which takes the gate.
                events.flushed(lsn, gen);
                let _ = reply.send(Ok(()));
            }
            Some(_) => unreachable!("only truncations and resets are barriers"),
        }
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
