//! On-disk [`LogStore`]: a directory of segment files named by their first LSN
//! (`00000000000000000001.seg`), each a plain sequence of checksummed frames (`record.rs`).
//!
//! Crash safety: a new segment is created and the directory fsynced before any record goes
//! into it; a full segment is fdatasynced before the next one is created; deletions (truncation
//! from the newest segment back, compaction from the oldest forward) keep the remaining files a
//! contiguous range at every crash point. Recovery verifies every frame: a torn record at the end
//! of the last segment is cut off, anything else wrong is [`LogError::Corrupt`] naming the file
//! and offset.

use super::record::{DecodeError, FRAME_HEADER};
use super::{LogError, LogStore, Record, Recovery};
use crate::faults::fault;
use baton_common::{Epoch, Lsn};
use bytes::BytesMut;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Tunables of the disk log.
#[derive(Clone, Debug)]
pub struct DiskOptions {
    /// A segment is closed once it holds this many bytes.
    pub segment_bytes_max: u64,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            segment_bytes_max: 64 << 20,
        }
    }
}

struct Segment {
    base: Lsn,
    path: PathBuf,
    file: File,
    /// Byte offset of each record: record `base + i` starts at `offsets[i]`.
    offsets: Vec<u64>,
    len: u64,
    last_epoch: Option<Epoch>,
}

impl Segment {
    fn last_lsn(&self) -> Lsn {
        Lsn(self.base.0 + self.offsets.len() as u64 - 1)
    }
}

/// The disk log. Not shareable: one writer owns it (the replica's log thread).
pub struct DiskLog {
    dir: PathBuf,
    opts: DiskOptions,
    /// Sorted by base; never empty; the last one is the active segment.
    segments: Vec<Segment>,
    /// The active segment has writes that were not yet fdatasynced.
    dirty: bool,
    buf: BytesMut,
}

fn segment_name(base: Lsn) -> String {
    format!("{:020}.seg", base.0)
}

fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

const RESET_MARKER: &str = "RESET";

fn write_reset_marker(dir: &Path, next: Lsn) -> Result<(), LogError> {
    // Written whole to a temp file and renamed, so a crash never leaves a partial marker.
    let path = dir.join(RESET_MARKER);
    let tmp = dir.join(format!("{RESET_MARKER}.tmp"));
    let io = |e| LogError::io(format!("write {}", tmp.display()), e);
    let f = File::create(&tmp).map_err(io)?;
    f.write_all_at(next.0.to_string().as_bytes(), 0)
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| LogError::io(format!("rename to {}", path.display()), e))?;
    sync_dir(dir)
}

fn remove_reset_marker(dir: &Path) -> Result<(), LogError> {
    let path = dir.join(RESET_MARKER);
    std::fs::remove_file(&path)
        .map_err(|e| LogError::io(format!("remove {}", path.display()), e))?;
    sync_dir(dir)
}

/// fsyncs a directory so that creations, renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(format!("fsync of directory {}", dir.display()), e))
}

/// Decides whether a bad frame at the tail of the last segment is an interrupted write (cut it)
/// or damage (refuse). It is damage when a valid record with a higher LSN follows it: a torn
/// write leaves nothing valid behind it that recovery could have been asked to keep, whereas a
/// bit flip in the middle leaves the later records intact. A damaged *last* record cannot be told
/// from a torn one; it was either never acknowledged or is re-fetched from the leader.
fn is_torn(rest: &[u8], expect: Lsn) -> bool {
    if rest.iter().all(|b| *b == 0) {
        return true;
    }
    const MIN_FRAME: usize = FRAME_HEADER + 17;
    let max_lsn = expect.0 + (rest.len() / MIN_FRAME) as u64;
    for p in 1..rest.len().saturating_sub(MIN_FRAME - 1) {
        let lsn = u64::from_le_bytes(rest[p + 16..p + 24].try_into().expect("8 bytes"));
        if lsn > expect.0 && lsn <= max_lsn {
            if let Ok((rec, _)) = Record::decode(&rest[p..]) {
                if rec.lsn.0 == lsn {
                    return false;
                }
            }
        }
    }
    true
}

impl DiskLog {
    /// Opens (or creates) the log in `dir`, verifying every record; see the module doc for what
    /// recovery repairs and what it refuses.
    pub fn open(dir: &Path, opts: DiskOptions) -> Result<(DiskLog, Recovery), LogError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LogError::io(format!("create {}", dir.display()), e))?;
        let marker = dir.join(RESET_MARKER);
        let pending_reset = match std::fs::read_to_string(&marker) {
            Ok(t) => Some(
                t.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Lsn)
                    .ok_or_else(|| LogError::Corrupt {
                        file: marker.clone(),
                        offset: 0,
                        reason: format!("unreadable reset marker {t:?}"),
                    })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(LogError::io(format!("read {}", marker.display()), e)),
        };
        let mut bases = Vec::new();
        let rd = std::fs::read_dir(dir)
            .map_err(|e| LogError::io(format!("list {}", dir.display()), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| LogError::io(format!("list {}", dir.display()), e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match parse_segment_name(&name) {
                Some(base) => bases.push(base),
                None if name == RESET_MARKER || name == format!("{RESET_MARKER}.tmp") => {}
                None => {
                    tracing::warn!(file = %entry.path().display(), "ignoring a file that is not a log segment")
                }
            }
        }
        bases.sort();
        if let Some(next) = pending_reset {
            // A reset was interrupted: finish it (the snapshot that replaced the log is durable).
            tracing::warn!(dir = %dir.display(), next = %next, "finishing an interrupted log reset");
            for base in bases.drain(..) {
                let p = dir.join(segment_name(base));
                std::fs::remove_file(&p)
                    .map_err(|e| LogError::io(format!("remove {}", p.display()), e))?;
            }
            let mut log = DiskLog {
                dir: dir.to_path_buf(),
                opts,
                segments: Vec::new(),
                dirty: false,
                buf: BytesMut::new(),
            };
            log.create_segment(next)?;
            remove_reset_marker(dir)?;
            return Ok((
                log,
                Recovery {
                    segments: 1,
                    ..Recovery::default()
                },
            ));
        }
        let mut recovery = Recovery::default();
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let path = dir.join(segment_name(base));
            if let Some(prev) = segments.last() {
                let expect = prev.last_lsn().next();
                if base != expect {
                    return Err(LogError::Corrupt {
                        file: path,
                        offset: 0,
                        reason: format!(
                            "segment starts at LSN {base} but the previous segment ends at LSN {}",
                            prev.last_lsn()
                        ),
                    });
                }
            }
            let seg = Self::recover_segment(path, base, is_last, &mut recovery)?;
            recovery.records += seg.offsets.len() as u64;
            segments.push(seg);
        }
        let mut log = DiskLog {
            dir: dir.to_path_buf(),
            opts,
            segments,
            dirty: false,
            buf: BytesMut::new(),
        };
        if log.segments.is_empty() {
            log.create_segment(Lsn(1))?;
        } else {
            // What recovery read may so far live only in the page cache (after a process crash);
            // make it durable so that "flushed" is true from the first moment.
            let last = log.active();
            last.file
                .sync_data()
                .map_err(|e| LogError::io(format!("fdatasync {}", last.path.display()), e))?;
            sync_dir(dir)?;
        }
        recovery.segments = log.segments.len();
        Ok((log, recovery))
    }

    fn recover_segment(
        path: PathBuf,
        base: Lsn,
        is_last: bool,
        recovery: &mut Recovery,
    ) -> Result<Segment, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(format!("open {}", path.display()), e))?;
        let data = std::fs::read(&path)
            .map_err(|e| LogError::io(format!("read {}", path.display()), e))?;
        let mut offsets = Vec::new();
        let mut off = 0usize;
        let mut last_epoch = None;
        while off < data.len() {
            let expect = Lsn(base.0 + offsets.len() as u64);
            match Record::decode(&data[off..]) {
                Ok((rec, n)) => {
                    if rec.lsn != expect {
                        return Err(LogError::Corrupt {
                            file: path,
                            offset: off as u64,
                            reason: format!(
                                "record has LSN {} where LSN {expect} belongs",
                                rec.lsn
                            ),
                        });
                    }
                    if last_epoch.is_some_and(|e| rec.epoch < e) {
                        return Err(LogError::Corrupt {
                            file: path,
                            offset: off as u64,
                            reason: format!(
                                "record at LSN {} has epoch {}, below the epoch before it",
                                rec.lsn, rec.epoch
                            ),
                        });
                    }
                    last_epoch = Some(rec.epoch);
                    offsets.push(off as u64);
                    off += n;
                }
                Err(err) if is_last && is_torn(&data[off..], expect) => {
                    let cut = (data.len() - off) as u64;
                    tracing::warn!(file = %path.display(), offset = off, bytes = cut, %err,
                        "truncating a torn record at the tail of the log");
                    file.set_len(off as u64)
                        .map_err(|e| LogError::io(format!("truncate {}", path.display()), e))?;
                    file.sync_all()
                        .map_err(|e| LogError::io(format!("fsync {}", path.display()), e))?;
                    recovery.torn_bytes_truncated = cut;
                    recovery.torn_at = Some((path.clone(), off as u64));
                    break;
                }
                Err(err) => {
                    let reason = match err {
                        DecodeError::Incomplete { .. } => {
                            format!("segment ends inside a record ({err}); the file was truncated")
                        }
                        _ => format!("{err} in record for LSN {expect}"),
                    };
                    return Err(LogError::Corrupt {
                        file: path,
                        offset: off as u64,
                        reason,
                    });
                }
            }
        }
        Ok(Segment {
            base,
            path,
            file,
            offsets,
            len: off as u64,
            last_epoch,
        })
    }

    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a disk log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a disk log always has an active segment")
    }

    fn create_segment(&mut self, base: Lsn) -> Result<(), LogError> {
        let path = self.dir.join(segment_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| LogError::io(format!("create {}", path.display()), e))?;
        // The directory entry is durable before any record is written into the file.
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            base,
            path,
            file,
            offsets: Vec::new(),
            len: 0,
            last_epoch: None,
        });
        Ok(())
    }

    /// Writes the buffered frames to the active segment.
    fn write_buf(&mut self) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let seg = self.active_mut();
        let start = seg.len;
        seg.file.write_all_at(&buf, start).map_err(|e| {
            LogError::io(format!("write {} at offset {start}", seg.path.display()), e)
        })?;
        seg.len += buf.len() as u64;
        self.dirty = true;
        self.buf = buf;
        self.buf.clear();
        Ok(())
    }

    fn roll(&mut self) -> Result<(), LogError> {
        self.write_buf()?;
        self.sync()?;
        let base = self.active().last_lsn().next();
        self.create_segment(base)
    }

    fn locate(&self, lsn: Lsn) -> Option<usize> {
        let i = self.segments.partition_point(|s| s.base <= lsn);
        i.checked_sub(1)
    }
}

impl LogStore for DiskLog {
    fn first_lsn(&self) -> Lsn {
        self.segments[0].base
    }

    fn last_lsn(&self) -> Lsn {
        let a = self.active();
        Lsn(a.base.0 + a.offsets.len() as u64 - 1)
    }

    fn last_epoch(&self) -> Option<Epoch> {
        self.segments.iter().rev().find_map(|s| s.last_epoch)
    }

    fn append(&mut self, records: &[Record]) -> Result<(), LogError> {
        let mut next = self.last_lsn().next();
        for r in records {
            if r.lsn != next {
                return Err(LogError::Misuse(format!(
                    "append of LSN {} where {next} was expected",
                    r.lsn
                )));
            }
            next = next.next();
        }
        fault!("wal.before_append", |e| LogError::io(
            format!("write {}", self.active().path.display()),
            e
        ));
        for r in records {
            let seg = self.active();
            let pending = seg.len + self.buf.len() as u64;
            if pending >= self.opts.segment_bytes_max && !seg.offsets.is_empty() {
                self.roll()?;
            }
            let seg_len = self.active().len;
            let off = seg_len + self.buf.len() as u64;
            r.encode_into(&mut self.buf);
            let seg = self.active_mut();
            seg.offsets.push(off);
            seg.last_epoch = Some(r.epoch);
        }
        let res = self.write_buf();
        if res.is_err() {
            // Forget what could not be written so the in-memory index matches the file.
            let seg = self.active_mut();
            let len = seg.len;
            while seg.offsets.last().is_some_and(|o| *o >= len) {
                seg.offsets.pop();
            }
            self.buf.clear();
            return res;
        }
        fault!("wal.after_append", |e| LogError::io(
            format!("write {}", self.active().path.display()),
            e
        ));
        res
    }

    fn sync(&mut self) -> Result<(), LogError> {
        if self.dirty {
            let seg = self.active();
            let fsync_error = |e| LogError::io(format!("fdatasync {}", seg.path.display()), e);
            fault!("wal.before_fsync", fsync_error);
            seg.file.sync_data().map_err(fsync_error)?;
            fault!("wal.after_fsync", fsync_error);
            self.dirty = false;
        }
        Ok(())
    }

    fn read(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        if from < self.first_lsn() {
            return Err(LogError::Misuse(format!(
                "read from LSN {from}, below the first LSN {}",
                self.first_lsn()
            )));
        }
        let mut out = Vec::new();
        let mut lsn = from;
        let mut bytes = 0usize;
        while out.len() < max_records && lsn <= self.last_lsn() {
            let Some(si) = self.locate(lsn) else { break };
            let seg = &self.segments[si];
            let idx = (lsn.0 - seg.base.0) as usize;
            if idx >= seg.offsets.len() {
                break;
            }
            // Read a contiguous run of records from this segment in one call.
            let n = (seg.offsets.len() - idx).min(max_records - out.len());
            let start = seg.offsets[idx];
            let mut end_idx = idx + n;
            let budget = max_bytes.saturating_sub(bytes) as u64;
            // Shrink the run to the byte budget. Only the first record of the whole read may
            // exceed it; a later run may shrink to nothing, which ends the read.
            let min_end = if out.is_empty() { idx + 1 } else { idx };
            while end_idx > min_end {
                let end = seg.offsets.get(end_idx).copied().unwrap_or(seg.len);
                if end - start <= budget {
                    break;
                }
                end_idx -= 1;
            }
            if end_idx == idx {
                break;
            }
            let end = seg.offsets.get(end_idx).copied().unwrap_or(seg.len);
            let mut data = vec![0u8; (end - start) as usize];
            seg.file.read_exact_at(&mut data, start).map_err(|e| {
                LogError::io(format!("read {} at offset {start}", seg.path.display()), e)
            })?;
            let mut off = 0usize;
            while off < data.len() {
                let (rec, len) = Record::decode(&data[off..]).map_err(|e| LogError::Corrupt {
                    file: seg.path.clone(),
                    offset: start + off as u64,
                    reason: e.to_string(),
                })?;
                off += len;
                bytes += len;
                out.push(rec);
            }
            lsn = Lsn(seg.base.0 + end_idx as u64);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    fn truncate_from(&mut self, from: Lsn) -> Result<(), LogError> {
        if from < self.first_lsn() {
            return Err(LogError::Misuse(format!(
                "truncation from LSN {from}, below the first LSN {}",
                self.first_lsn()
            )));
        }
        if from > self.last_lsn() {
            return Ok(());
        }
        self.write_buf()?;
        let mut removed = false;
        while self.segments.len() > 1 && self.active().base >= from {
            let seg = self.segments.pop().expect("checked non-empty");
            std::fs::remove_file(&seg.path)
                .map_err(|e| LogError::io(format!("remove {}", seg.path.display()), e))?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        let seg = self.active_mut();
        let keep = (from.0.saturating_sub(seg.base.0)) as usize;
        if keep < seg.offsets.len() {
            let cut = seg.offsets[keep];
            seg.file
                .set_len(cut)
                .map_err(|e| LogError::io(format!("truncate {}", seg.path.display()), e))?;
            seg.file
                .sync_all()
                .map_err(|e| LogError::io(format!("fsync {}", seg.path.display()), e))?;
            seg.offsets.truncate(keep);
            seg.len = cut;
            seg.last_epoch = None;
        }
        // Recompute the epoch of the last record held in the active segment.
        if let Some(last) = self.active().offsets.last().copied() {
            let seg = self.active();
            let mut hdr = [0u8; FRAME_HEADER + 8];
            seg.file
                .read_exact_at(&mut hdr, last)
                .map_err(|e| LogError::io(format!("read {}", seg.path.display()), e))?;
            let epoch = Epoch(u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes")));
            self.active_mut().last_epoch = Some(epoch);
        }
        self.dirty = false;
        Ok(())
    }

    fn compact_through(&mut self, through: Lsn) -> Result<(), LogError> {
        let mut removed = false;
        // The first segment goes when all its records are ≤ `through`, i.e. when the next one
        // starts at or below `through + 1` (written without the `+ 1`, which overflows at MAX).
        while self.segments.len() > 1 && self.segments[1].base.0 - 1 <= through.0 {
            let seg = self.segments.remove(0);
            std::fs::remove_file(&seg.path)
                .map_err(|e| LogError::io(format!("remove {}", seg.path.display()), e))?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn reset(&mut self, next: Lsn) -> Result<(), LogError> {
        if next.0 == 0 {
            return Err(LogError::Misuse("reset to LSN 0".into()));
        }
        self.buf.clear();
        // A marker makes the reset atomic: recovery finishes an interrupted one.
        write_reset_marker(&self.dir, next)?;
        for seg in std::mem::take(&mut self.segments) {
            std::fs::remove_file(&seg.path)
                .map_err(|e| LogError::io(format!("remove {}", seg.path.display()), e))?;
        }
        self.create_segment(next)?;
        remove_reset_marker(&self.dir)?;
        self.dirty = false;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum::<u64>() + self.buf.len() as u64
    }
}
