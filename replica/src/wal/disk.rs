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

use super::record::{DecodeError, FRAME_HEADER};
use super::{Damage, LogError, LogStore, Record, Recovery};
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
    /// Format 2: the header's durable-length slots; `None` for a format-1 segment.
    header: Option<Watermark>,
}

/// Where records start in a segment file: after the header of a format-2 segment, at 0 in a
/// format-1 one. For tools and tests that read segment files directly.
pub fn records_start(data: &[u8]) -> usize {
    if data.starts_with(SEGMENT_MAGIC) {
        SEGMENT_HEADER_LEN as usize
    } else {
        0
    }
}

/// Bytes before the first record of a format-2 segment.
pub const SEGMENT_HEADER_LEN: u64 = 4096;
/// First bytes of a format-2 segment. As a frame length (`u32` LE) it is far above
/// [`MAX_PAYLOAD`](super::record::MAX_PAYLOAD), so no format-1 segment starts with it.
const SEGMENT_MAGIC: &[u8; 8] = b"BATONWAL";
const SEGMENT_FORMAT: u32 = 2;
/// The two durable-length slots, in different sectors: `[seq u64][durable u64][crc32c u32]`.
const SLOT_AT: [u64; 2] = [512, 1024];
const SLOT_LEN: usize = 20;

/// The durable-length slots of a format-2 segment as last written.
#[derive(Clone, Copy, Debug)]
struct Watermark {
    seq: u64,
    durable: u64,
}

fn encode_slot(seq: u64, durable: u64) -> [u8; SLOT_LEN] {
    let mut b = [0u8; SLOT_LEN];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&durable.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_slot(b: &[u8]) -> Option<Watermark> {
    let b = b.get(..SLOT_LEN)?;
    let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
    if crc != crc32c::crc32c(&b[..16]) {
        return None;
    }
    let seq = u64::from_le_bytes(b[..8].try_into().ok()?);
    let durable = u64::from_le_bytes(b[8..16].try_into().ok()?);
    (seq > 0).then_some(Watermark { seq, durable })
}

impl Watermark {
    /// Writes the next slot (not synced: the caller's fdatasync covers it).
    fn write(&mut self, file: &File, path: &Path, durable: u64) -> Result<(), LogError> {
        let seq = self.seq + 1;
        let at = SLOT_AT[(seq % 2) as usize];
        file.write_all_at(&encode_slot(seq, durable), at)
            .map_err(|e| LogError::io(format!("write the header of {}", path.display()), e))?;
        *self = Watermark { seq, durable };
        Ok(())
    }
}

/// Writes a fresh format-2 header claiming `durable` bytes (not synced).
fn write_header(file: &File, path: &Path, durable: u64) -> Result<Watermark, LogError> {
    let mut page = vec![0u8; SEGMENT_HEADER_LEN as usize];
    page[..8].copy_from_slice(SEGMENT_MAGIC);
    page[8..12].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
    let at = SLOT_AT[1] as usize;
    page[at..at + SLOT_LEN].copy_from_slice(&encode_slot(1, durable));
    file.write_all_at(&page, 0)
        .map_err(|e| LogError::io(format!("write the header of {}", path.display()), e))?;
    Ok(Watermark { seq: 1, durable })
}

/// Rewrites the durable length a format-2 segment claims, in both slots, and syncs it. Only for
/// tests that model a crash before a sync returned, and for repair by hand.
#[doc(hidden)]
pub fn set_durable_len(path: &Path, durable: u64) -> Result<(), LogError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| LogError::io(format!("open {}", path.display()), e))?;
    let mut w = Watermark { seq: 0, durable };
    for _ in 0..2 {
        w.write(&file, path, durable)?;
    }
    file.sync_data()
        .map_err(|e| LogError::io(format!("fdatasync {}", path.display()), e))
}

/// The first frame of a segment that does not decode, as recovery found it.
struct BadFrame {
    offset: u64,
    /// The LSN that belongs there.
    lsn: Lsn,
    reason: String,
    /// It lies where a sync had returned: it may have been acknowledged.
    acknowledged: bool,
    /// A valid record with a higher LSN follows it in the file.
    valid_after: bool,
    file_len: u64,
}

const DAMAGED_DIR: &str = "damaged";
/// Present while records that may have been acknowledged were cut and the replica has not yet
/// stored that it is unclean.
const LOST_MARKER: &str = "LOST_ACKNOWLEDGED";

impl Segment {
    fn last_lsn(&self) -> Lsn {
        Lsn(self.base.0 + self.offsets.len() as u64 - 1)
    }

    fn records_start(&self) -> u64 {
        if self.header.is_some() {
            SEGMENT_HEADER_LEN
        } else {
            0
        }
    }

    /// Records in its header that the file is durable up to its current length (not synced:
    /// the caller's fdatasync or fsync covers it).
    fn claim_durable(&mut self) -> Result<(), LogError> {
        let len = self.len;
        match self.header.as_mut() {
            Some(w) if w.durable != len => w.write(&self.file, &self.path, len),
            _ => Ok(()),
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
                None if name == RESET_MARKER
                    || name == format!("{RESET_MARKER}.tmp")
                    || name == LOST_MARKER
                    || name == DAMAGED_DIR => {}
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
        let mut recovery = Recovery {
            lost_acknowledged: dir.join(LOST_MARKER).exists(),
            ..Recovery::default()
        };
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let count = bases.len();
        for (i, &base) in bases.iter().enumerate() {
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
            let (seg, bad) = Self::recover_segment(path, base, is_last)?;
            recovery.records += seg.offsets.len() as u64;
            match bad {
                None => segments.push(seg),
                Some(bad) => {
                    let later: Vec<PathBuf> = bases[i + 1..]
                        .iter()
                        .map(|b| dir.join(segment_name(*b)))
                        .collect();
                    segments.push(Self::cut_bad(dir, seg, bad, &later, &mut recovery)?);
                    break;
                }
            }
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
            // make it durable so that "flushed" is true from the first moment, and say so in
            // the header: the replica may acknowledge these records from now on.
            let last = log.active_mut();
            if let Some(w) = last.header.as_mut() {
                if w.durable != last.len {
                    w.write(&last.file, &last.path, last.len)?;
                }
            }
            last.file
                .sync_data()
                .map_err(|e| LogError::io(format!("fdatasync {}", last.path.display()), e))?;
            sync_dir(dir)?;
            if last.header.is_none() {
                // A format-1 segment has no durable length: records go to a new segment.
                let next = log.last_lsn().next();
                log.create_segment(next)?;
            }
        }
        recovery.segments = log.segments.len();
        Ok((log, recovery))
    }

    /// The replica stored that it is unclean: forget that acknowledged records were cut.
    pub fn clear_lost_marker(&self) -> Result<(), LogError> {
        let path = self.dir.join(LOST_MARKER);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LogError::io(format!("remove {}", path.display()), e)),
        }
    }

    /// Reads one segment's records up to the first bad frame, which it describes. Only wrong
    /// LSNs and epochs are errors here (a record in the wrong place is not a storage fault).
    fn recover_segment(
        path: PathBuf,
        base: Lsn,
        is_last: bool,
    ) -> Result<(Segment, Option<BadFrame>), LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(format!("open {}", path.display()), e))?;
        let data = std::fs::read(&path)
            .map_err(|e| LogError::io(format!("read {}", path.display()), e))?;
        let magic = data.starts_with(SEGMENT_MAGIC);
        if (magic && data.len() <= SEGMENT_HEADER_LEN as usize) || data.iter().all(|b| *b == 0) {
            // Created, but no record reached it (the header may not have either): start it
            // afresh as a format-2 segment.
            file.set_len(0)
                .map_err(|e| LogError::io(format!("truncate {}", path.display()), e))?;
            let header = write_header(&file, &path, SEGMENT_HEADER_LEN)?;
            file.sync_data()
                .map_err(|e| LogError::io(format!("fdatasync {}", path.display()), e))?;
            let seg = Segment {
                base,
                path,
                file,
                offsets: Vec::new(),
                len: SEGMENT_HEADER_LEN,
                last_epoch: None,
                header: Some(header),
            };
            return Ok((seg, None));
        }
        let header = if magic {
            let format = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
            if format != SEGMENT_FORMAT {
                return Err(LogError::Corrupt {
                    file: path,
                    offset: 8,
                    reason: format!("unknown segment format {format}"),
                });
            }
            let best = SLOT_AT
                .iter()
                .filter_map(|at| decode_slot(&data[*at as usize..]))
                .max_by_key(|w| w.seq);
            Some(best.unwrap_or_else(|| {
                // Written whole at creation and one slot at a time since: damage. Take the
                // whole file as durable, so that any bad record in it counts as acknowledged.
                tracing::error!(file = %path.display(), "both durable-length slots of the segment header are damaged; taking the whole segment as durable");
                Watermark {
                    seq: 1,
                    durable: data.len() as u64,
                }
            }))
        } else {
            None
        };
        let start = if magic {
            SEGMENT_HEADER_LEN as usize
        } else {
            0
        };
        // Below this, a sync had returned. A sealed segment was synced whole before the next one
        // was created; a format-1 last segment does not say (0).
        let durable = match header {
            Some(w) if is_last => w.durable,
            Some(w) => w.durable.max(data.len() as u64),
            None if is_last => 0,
            None => data.len() as u64,
        };
        let mut offsets = Vec::new();
        let mut off = start;
        let mut last_epoch = None;
        let mut bad = None;
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
                Err(err) => {
                    let valid_after = !is_torn(&data[off..], expect);
                    let acknowledged = if header.is_some() || !is_last {
                        (off as u64) < durable
                    } else {
                        // Format 1 says nothing: a valid record after the damage is taken as
                        // a sign that the damaged one was synced (it had been refused before).
                        valid_after
                    };
                    let reason = match err {
                        DecodeError::Incomplete { .. } => {
                            format!("the segment ends inside the record for LSN {expect} ({err})")
                        }
                        _ => format!("{err} in the record for LSN {expect}"),
                    };
                    bad = Some(BadFrame {
                        offset: off as u64,
                        lsn: expect,
                        reason,
                        acknowledged,
                        valid_after,
                        file_len: data.len() as u64,
                    });
                    break;
                }
            }
        }
        if bad.is_none() && header.is_some_and(|w| w.durable > data.len() as u64) {
            let durable = header.map_or(0, |w| w.durable);
            bad = Some(BadFrame {
                offset: data.len() as u64,
                lsn: Lsn(base.0 + offsets.len() as u64),
                reason: format!(
                    "the segment is {} bytes long but {durable} bytes of it were durable",
                    data.len()
                ),
                acknowledged: true,
                valid_after: false,
                file_len: data.len() as u64,
            });
        }
        let seg = Segment {
            base,
            path,
            file,
            offsets,
            len: off as u64,
            last_epoch,
            header,
        };
        Ok((seg, bad))
    }

    /// Cuts `seg` at its bad frame and moves the `later` segments aside (see the module doc for
    /// what counts as acknowledged). Returns the segment, now the last one.
    fn cut_bad(
        dir: &Path,
        mut seg: Segment,
        bad: BadFrame,
        later: &[PathBuf],
        recovery: &mut Recovery,
    ) -> Result<Segment, LogError> {
        let torn = !bad.acknowledged && !bad.valid_after && later.is_empty();
        if bad.acknowledged {
            // Stored before anything is cut, so that a crash midway cannot forget it.
            let marker = dir.join(LOST_MARKER);
            let f = File::create(&marker)
                .map_err(|e| LogError::io(format!("create {}", marker.display()), e))?;
            f.sync_all()
                .map_err(|e| LogError::io(format!("fsync {}", marker.display()), e))?;
            sync_dir(dir)?;
            recovery.lost_acknowledged = true;
        }
        let cut_bytes = bad.file_len.saturating_sub(bad.offset);
        let mut archived = None;
        if !torn && (cut_bytes > 0 || !later.is_empty()) {
            // Nothing is deleted: the cut bytes and the later segments go to `damaged/`.
            let to = dir.join(DAMAGED_DIR);
            std::fs::create_dir_all(&to)
                .map_err(|e| LogError::io(format!("create {}", to.display()), e))?;
            if cut_bytes > 0 {
                let name = seg.path.file_name().unwrap_or_default().to_string_lossy();
                let copy = to.join(format!("{name}.at-{}.damaged", bad.offset));
                let mut bytes = vec![0u8; cut_bytes as usize];
                let io = |e| LogError::io(format!("copy damaged bytes to {}", copy.display()), e);
                seg.file.read_exact_at(&mut bytes, bad.offset).map_err(io)?;
                let f = File::create(&copy).map_err(io)?;
                f.write_all_at(&bytes, 0).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
            // Newest first, so that a crash midway leaves a contiguous log.
            for p in later.iter().rev() {
                let dest = to.join(p.file_name().unwrap_or_default());
                std::fs::rename(p, &dest)
                    .map_err(|e| LogError::io(format!("move {} aside", p.display()), e))?;
            }
            sync_dir(&to)?;
            sync_dir(dir)?;
            archived = Some(to);
        }
        let io = |e| LogError::io(format!("truncate {}", seg.path.display()), e);
        if cut_bytes > 0 {
            seg.file.set_len(bad.offset).map_err(io)?;
        }
        if let Some(w) = seg.header.as_mut() {
            if w.durable != bad.offset {
                w.write(&seg.file, &seg.path, bad.offset)?;
            }
        }
        seg.file.sync_all().map_err(io)?;
        seg.len = bad.offset;
        let file = seg.path.display().to_string();
        if torn {
            tracing::warn!(%file, offset = bad.offset, bytes = cut_bytes, reason = %bad.reason,
                "truncating a torn record at the tail of the log (written after the last sync)");
            recovery.torn_bytes_truncated = cut_bytes;
            recovery.torn_at = Some((seg.path.clone(), bad.offset));
            return Ok(seg);
        }
        let moved = archived
            .as_ref()
            .map_or(String::new(), |a| a.display().to_string());
        if bad.acknowledged {
            tracing::error!(%file, offset = bad.offset, from_lsn = %bad.lsn, reason = %bad.reason,
                bytes_cut = cut_bytes, segments_cut = later.len(), moved_to = %moved,
                "damaged log record where a sync had returned: the log now ends before LSN {}; \
                 records this replica may have acknowledged are gone, so it is unclean until it \
                 has fetched them again from the leader", bad.lsn);
        } else {
            tracing::warn!(%file, offset = bad.offset, from_lsn = %bad.lsn, reason = %bad.reason,
                bytes_cut = cut_bytes, moved_to = %moved,
                "write-back hole after the last sync (a later page reached the disk, this one did \
                 not): cut the log there; nothing cut was acknowledged");
        }
        recovery.damage = Some(Damage {
            file: seg.path.clone(),
            offset: bad.offset,
            from: bad.lsn,
            reason: bad.reason,
            acknowledged: bad.acknowledged,
            valid_after: bad.valid_after,
            archived,
        });
        Ok(seg)
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
