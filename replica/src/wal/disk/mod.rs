//! On-disk [`LogStore`]: a directory of segment files named by their first LSN
//! (`00000000000000000001.seg`), each a sequence of checksummed frames (`record.rs`).
//!
//! Segment format 2 starts with a [`SEGMENT_HEADER_LEN`]-byte header: the magic `BATONWAL`,
//! the format number, and two slots holding the segment's **durable length** (with a sequence
//! number and a crc32c; written alternately so that a torn slot leaves the other one). Every
//! sync writes the length it is about to make durable into a slot *before* the fdatasync, so
//! the same fdatasync covers records and watermark: whatever a sync returned for (and so may
//! have been acknowledged) lies below the durable length on disk. A format-1 segment (no header,
//! frames from offset 0) is still read; a new segment is always format 2.
//!
//! Crash safety: a new segment is created with its header fsynced and the directory fsynced
//! before any record goes into it; a full segment is fdatasynced before the next one is created
//! (so a sealed segment is durable as a whole); deletions (truncation from the newest segment
//! back, compaction from the oldest forward) keep the remaining files a contiguous range at every
//! crash point.
//!
//! Recovery verifies every frame. A bad frame in the last segment at or past its durable length
//! was written after the last sync that returned: a torn tail or a write-back hole (a later page
//! reached the disk, an earlier one did not), never acknowledged; it is cut with everything
//! after it. A bad frame below it, or in a sealed segment, is damage to data that may have been
//! acknowledged: it is cut too (the cut bytes and later segments are moved to `damaged/`, never
//! deleted), an ERROR names file, offset and LSN, and [`Recovery::lost_acknowledged`] tells the
//! replica to mark itself unclean and fetch the range again from the leader (DESIGN.md §6).
//! Structural damage (segments that do not follow each other, a record in the wrong place) is
//! [`LogError::Corrupt`] naming the file and offset.
//!
//! Preallocation: the active segment's file is extended with real zeros ahead of the writes,
//! in steps of [`PREALLOC_CHUNK`] (never past the segment's size limit). A record is then
//! written over blocks that are already allocated, written and inside the file's size, so the
//! fdatasync after it flushes data pages (and the header's slot) only: no block allocation, no
//! size change, no journal commit — on ext4 about a third less per sync than an append that
//! extends the file. The zeros past the durable length are not records: recovery reads them
//! as preallocation (silently; a bad frame *below* the durable length is still damage). A
//! segment is trimmed to its records when it is sealed (before the next one is created), and
//! recovery finishes a trim a crash interrupted.
//!
//! A full disk: the zeros are written ahead of the records, so ENOSPC surfaces there or at the
//! record's write(2) — both [`LogError::NoSpace`], retryable, the log left consistent (a batch
//! keeps its written prefix, a segment that could not be created is removed) — and not at the
//! fdatasync, where it would be fatal like any fsync error (DESIGN.md §6).
//!
//! Layout: `format.rs` the segment file format (header, durable-length slots, names, markers),
//! `recover.rs` opening a directory and recovering every segment, this file the log itself.

mod format;
mod recover;

use super::record::FRAME_HEADER;
use super::{Frames, LogError, LogStore, Record};
use crate::faults::fault;
use baton_common::{Epoch, Lsn};
use bytes::BytesMut;
use format::*;
pub use format::{records_end, records_start, set_durable_len, sync_dir};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

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

/// The active segment is zero-filled ahead of the writes in steps of this many bytes.
pub const PREALLOC_CHUNK: u64 = 1 << 20;

/// How far the active segment's file is zero-filled (its size on disk).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Reserved {
    /// The segment the preallocation belongs to (another base: none, the file ends at `len`).
    base: Lsn,
    /// The file is zero-filled up to this offset (its size).
    upto: u64,
}

/// Zeros written ahead of the records, in writes of this size.
static ZEROS: [u8; 64 << 10] = [0u8; 64 << 10];

/// The disk log. Not shareable: one writer owns it (the replica's log thread).
pub struct DiskLog {
    dir: PathBuf,
    opts: DiskOptions,
    /// Sorted by base; never empty; the last one is the active segment.
    segments: Vec<Segment>,
    /// The active segment has writes that were not yet fdatasynced.
    dirty: bool,
    buf: BytesMut,
    reserved: Reserved,
}

impl DiskLog {
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
            .map_err(|e| LogError::write(format!("create {}", path.display()), e))?;
        // The header and the directory entry are durable before any record is written.
        let header = match write_header(&file, &path, SEGMENT_HEADER_LEN) {
            Ok(h) => h,
            Err(e) => {
                // Out of space (or worse) before the file was synced or used: remove it, so
                // that neither a retry nor recovery meets a segment with a partial header.
                drop(file);
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        file.sync_data()
            .map_err(|e| LogError::io(format!("fdatasync {}", path.display()), e))?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            base,
            path,
            file,
            offsets: Vec::new(),
            len: SEGMENT_HEADER_LEN,
            last_epoch: None,
            header: Some(header),
        });
        self.reserved.base = Lsn(0);
        Ok(())
    }

    /// Zero-fills the active segment's file up to `end` (and a chunk ahead, within the
    /// segment's size limit), so that records are written over allocated blocks inside the
    /// file's size and a full disk shows here, not at the fdatasync.
    fn reserve(&mut self, end: u64) -> Result<(), LogError> {
        let r = self.reserved;
        let seg = self.active();
        if r.base == seg.base && r.upto >= end {
            return Ok(());
        }
        let from = if r.base == seg.base {
            r.upto.max(seg.len)
        } else {
            seg.len
        };
        let limit = seg.records_start() + self.opts.segment_bytes_max;
        let upto = end.max(end.next_multiple_of(PREALLOC_CHUNK).min(limit));
        let mut at = from;
        while at < upto {
            let n = (upto - at).min(ZEROS.len() as u64) as usize;
            seg.file.write_all_at(&ZEROS[..n], at).map_err(|e| {
                LogError::write(
                    format!("preallocate {} at offset {at}", seg.path.display()),
                    e,
                )
            })?;
            at += n as u64;
        }
        self.reserved = Reserved {
            base: seg.base,
            upto: upto.max(from),
        };
        Ok(())
    }

    /// Seals the active segment before the next one is created: its records and durable length
    /// synced, and a zero-filled tail past them cut. (The preallocation stops at the size limit
    /// and a segment is sealed once it reaches it, so a tail is left only when the limit was
    /// lowered since the segment was preallocated. A crash before the cut is durable leaves zeros
    /// past the durable length of a sealed segment, which recovery cuts.)
    fn seal(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let r = self.reserved;
        let seg = self.active();
        if r.base == seg.base && r.upto > seg.len {
            seg.file
                .set_len(seg.len)
                .map_err(|e| LogError::io(format!("truncate {}", seg.path.display()), e))?;
            seg.file
                .sync_all()
                .map_err(|e| LogError::io(format!("fsync {}", seg.path.display()), e))?;
        }
        self.reserved.base = Lsn(0);
        Ok(())
    }

    /// Writes the buffered frames to the active segment. On an error nothing counts as written
    /// (the caller forgets the buffered records); bytes that did reach the file lie past the
    /// segment's length, where a retry overwrites them and recovery cuts them.
    fn write_buf(&mut self) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let end = self.active().len + self.buf.len() as u64;
        self.reserve(end)?;
        let buf = std::mem::take(&mut self.buf);
        let seg = self.active_mut();
        let start = seg.len;
        seg.file.write_all_at(&buf, start).map_err(|e| {
            LogError::write(format!("write {} at offset {start}", seg.path.display()), e)
        })?;
        seg.len += buf.len() as u64;
        self.dirty = true;
        self.buf = buf;
        self.buf.clear();
        Ok(())
    }

    fn append_frames(&mut self, records: &[Record]) -> Result<(), LogError> {
        for r in records {
            let seg = self.active();
            let pending = seg.len - seg.records_start() + self.buf.len() as u64;
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
        self.write_buf()
    }

    /// After a failed append: drops the buffered frames and the index entries past the active
    /// segment's written length, and recomputes the epoch of its last record.
    fn forget_unwritten(&mut self) -> Result<(), LogError> {
        self.buf.clear();
        let seg = self.active_mut();
        let len = seg.len;
        let before = seg.offsets.len();
        while seg.offsets.last().is_some_and(|o| *o >= len) {
            seg.offsets.pop();
        }
        if seg.offsets.len() != before {
            self.reread_last_epoch()?;
        }
        Ok(())
    }

    /// Sets the active segment's `last_epoch` from its last record on disk (`None` when empty).
    fn reread_last_epoch(&mut self) -> Result<(), LogError> {
        let seg = self.active();
        let epoch = match seg.offsets.last().copied() {
            None => None,
            Some(last) => {
                let mut hdr = [0u8; FRAME_HEADER + 8];
                seg.file
                    .read_exact_at(&mut hdr, last)
                    .map_err(|e| LogError::io(format!("read {}", seg.path.display()), e))?;
                Some(Epoch(u64::from_le_bytes(
                    hdr[8..16].try_into().expect("8 bytes"),
                )))
            }
        };
        self.active_mut().last_epoch = epoch;
        Ok(())
    }

    fn roll(&mut self) -> Result<(), LogError> {
        self.write_buf()?;
        self.seal()?;
        let base = self.active().last_lsn().next();
        self.create_segment(base)
    }

    /// The reads' common part: finds the runs of consecutive records from `from` (at most
    /// `max_records`, and no more than `max_bytes` of frames unless the first record alone is
    /// larger), reads each run with one pread, and hands it to `each` with its segment, offset
    /// and first LSN.
    fn read_runs(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
        mut each: impl FnMut(&Segment, u64, Vec<u8>, Lsn) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        if from < self.first_lsn() {
            return Err(LogError::Misuse(format!(
                "read from LSN {from}, below the first LSN {}",
                self.first_lsn()
            )));
        }
        let mut records = 0usize;
        let mut lsn = from;
        let mut bytes = 0usize;
        while records < max_records && lsn <= self.last_lsn() {
            let Some(si) = self.locate(lsn) else { break };
            let seg = &self.segments[si];
            let idx = (lsn.0 - seg.base.0) as usize;
            if idx >= seg.offsets.len() {
                break;
            }
            // A contiguous run of records from this segment, read in one call.
            let n = (seg.offsets.len() - idx).min(max_records - records);
            let start = seg.offsets[idx];
            let mut end_idx = idx + n;
            let budget = max_bytes.saturating_sub(bytes) as u64;
            // Shrink the run to the byte budget. Only the first record of the whole read may
            // exceed it; a later run may shrink to nothing, which ends the read.
            let min_end = if records == 0 { idx + 1 } else { idx };
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
            bytes += data.len();
            records += end_idx - idx;
            each(seg, start, data, lsn)?;
            lsn = Lsn(seg.base.0 + end_idx as u64);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(())
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
        fault!("wal.before_append", |e| LogError::write(
            format!("write {}", self.active().path.display()),
            e
        ));
        if let Err(e) = self.append_frames(records) {
            // Forget what could not be written so the in-memory index matches the file: the
            // records before it stay appended (a roll may have written and synced them).
            self.forget_unwritten()?;
            return Err(e);
        }
        fault!("wal.after_append", |e| LogError::io(
            format!("write {}", self.active().path.display()),
            e
        ));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        if self.dirty {
            // The durable length goes into the header first: the same fdatasync covers both.
            self.active_mut().claim_durable()?;
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
        let mut out = Vec::new();
        self.read_runs(from, max_records, max_bytes, |seg, start, data, _| {
            let mut off = 0usize;
            while off < data.len() {
                let (rec, len) = Record::decode(&data[off..]).map_err(|e| LogError::Corrupt {
                    file: seg.path.clone(),
                    offset: start + off as u64,
                    reason: e.to_string(),
                })?;
                off += len;
                out.push(rec);
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn read_frames(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Frames, LogError> {
        let mut bytes: Vec<u8> = Vec::new();
        let mut count = 0usize;
        self.read_runs(from, max_records, max_bytes, |seg, start, data, first| {
            let mut off = 0usize;
            let mut lsn = first;
            while off < data.len() {
                off += Record::check_frame(&data[off..], lsn).map_err(|e| LogError::Corrupt {
                    file: seg.path.clone(),
                    offset: start + off as u64,
                    reason: e.to_string(),
                })?;
                lsn = lsn.next();
                count += 1;
            }
            if bytes.is_empty() {
                bytes = data;
            } else {
                bytes.extend_from_slice(&data);
            }
            Ok(())
        })?;
        Ok(Frames {
            bytes: bytes.into(),
            count,
        })
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
            seg.len = cut;
            seg.claim_durable()?;
            seg.file
                .sync_all()
                .map_err(|e| LogError::io(format!("fsync {}", seg.path.display()), e))?;
            seg.offsets.truncate(keep);
            seg.len = cut;
            seg.last_epoch = None;
        }
        // Recompute the epoch of the last record held in the active segment.
        if !self.active().offsets.is_empty() {
            self.reread_last_epoch()?;
        }
        // The cut freed the blocks reserved past it.
        self.reserved.base = Lsn(0);
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
        // The records' bytes, as the trait counts them; a segment header is not a record.
        self.segments
            .iter()
            .map(|s| s.len - s.records_start())
            .sum::<u64>()
            + self.buf.len() as u64
    }
}
