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
//! Layout: `format.rs` the segment file format (header, durable-length slots, names, markers),
//! `recover.rs` opening a directory and recovering every segment, this file the log itself.

mod format;
mod recover;

use super::record::FRAME_HEADER;
use super::{LogError, LogStore, Record};
use crate::faults::fault;
use baton_common::{Epoch, Lsn};
use bytes::BytesMut;
use format::*;
pub use format::{records_start, set_durable_len, sync_dir};
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
            .map_err(|e| LogError::io(format!("create {}", path.display()), e))?;
        // The header and the directory entry are durable before any record is written.
        let header = write_header(&file, &path, SEGMENT_HEADER_LEN)?;
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
        // The records' bytes, as the trait counts them; a segment header is not a record.
        self.segments
            .iter()
            .map(|s| s.len - s.records_start())
            .sum::<u64>()
            + self.buf.len() as u64
    }
}
