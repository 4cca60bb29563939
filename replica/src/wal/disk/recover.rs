//! Opening the disk log: every segment verified frame by frame, a zero-filled preallocated tail
//! kept (trimmed in a sealed segment), torn tails and write-back holes cut, damage to
//! acknowledged data moved to `damaged/` and reported (see `mod.rs`).

use super::format::*;
use super::{DiskLog, DiskOptions, Reserved};
use crate::wal::record::{DecodeError, FRAME_HEADER};
use crate::wal::{Damage, LogError, LogStore, Record, Recovery};
use baton_common::Lsn;
use bytes::BytesMut;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The first frame of a segment that does not decode, as recovery found it.
pub(super) struct BadFrame {
    pub(super) offset: u64,
    /// The LSN that belongs there.
    pub(super) lsn: Lsn,
    pub(super) reason: String,
    /// It lies where a sync had returned: it may have been acknowledged.
    pub(super) acknowledged: bool,
    /// A valid record with a higher LSN follows it in the file.
    pub(super) valid_after: bool,
    pub(super) file_len: u64,
}

/// Decides whether a bad frame at the tail of the last segment is an interrupted write (cut it)
/// or damage (refuse). It is damage when a valid record with a higher LSN follows it: a torn
/// write leaves nothing valid behind it that recovery could have been asked to keep, whereas a
/// bit flip in the middle leaves the later records intact. A damaged *last* record cannot be told
/// from a torn one; it was either never acknowledged or is re-fetched from the leader.
pub(super) fn is_torn(rest: &[u8], expect: Lsn) -> bool {
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
                reserved: Reserved::default(),
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
        // The active segment's zero-filled tail (recovery verified it is all zeros) is the
        // preallocation the next records go over.
        let reserved = match segments.last() {
            Some(last) if last.header.is_some() => {
                let size = last
                    .file
                    .metadata()
                    .map_err(|e| LogError::io(format!("stat {}", last.path.display()), e))?
                    .len();
                Reserved {
                    base: last.base,
                    upto: size.max(last.len),
                }
            }
            _ => Reserved::default(),
        };
        let mut log = DiskLog {
            dir: dir.to_path_buf(),
            opts,
            segments,
            dirty: false,
            buf: BytesMut::new(),
            reserved,
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
    pub(super) fn recover_segment(
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
                Err(_)
                    if header.is_some_and(|w| off as u64 >= w.durable)
                        && data[off..].iter().all(|b| *b == 0) =>
                {
                    // Zeros past the durable length: the segment's preallocation, not records.
                    // The active segment keeps it; a sealed one had its trim interrupted by a
                    // crash (the seal's sync had returned, so every record is here): finish it.
                    if !is_last {
                        file.set_len(off as u64)
                            .and_then(|_| file.sync_all())
                            .map_err(|e| LogError::io(format!("trim {}", path.display()), e))?;
                        tracing::info!(file = %path.display(), offset = off,
                            "trimmed the preallocated tail of a sealed segment (a crash interrupted its seal)");
                    }
                    break;
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
    pub(super) fn cut_bad(
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
}
