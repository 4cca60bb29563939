//! The segment file format of the disk log: the header with its magic, format number and two
//! durable-length slots, segment names, the reset and lost markers, directory fsync.

use crate::wal::LogError;
use baton_common::{Epoch, Lsn};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(super) struct Segment {
    pub(super) base: Lsn,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Byte offset of each record: record `base + i` starts at `offsets[i]`.
    pub(super) offsets: Vec<u64>,
    pub(super) len: u64,
    pub(super) last_epoch: Option<Epoch>,
    /// Format 2: the header's durable-length slots; `None` for a format-1 segment.
    pub(super) header: Option<Watermark>,
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

/// Where the records of a segment file's bytes end: the offset of the first frame that does not
/// decode (a zero-filled preallocated tail, a torn frame) or the file's end. For tools and tests
/// that read segment files directly.
pub fn records_end(data: &[u8]) -> usize {
    let mut off = records_start(data);
    while let Ok((_, n)) = crate::wal::Record::decode(&data[off..]) {
        off += n;
    }
    off
}

/// Bytes before the first record of a format-2 segment.
pub const SEGMENT_HEADER_LEN: u64 = 4096;

/// First bytes of a format-2 segment. As a frame length (`u32` LE) it is far above
/// [`MAX_PAYLOAD`](super::record::MAX_PAYLOAD), so no format-1 segment starts with it.
pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"BATONWAL";

pub(super) const SEGMENT_FORMAT: u32 = 2;

/// The two durable-length slots, in different sectors: `[seq u64][durable u64][crc32c u32]`.
pub(super) const SLOT_AT: [u64; 2] = [512, 1024];

pub(super) const SLOT_LEN: usize = 20;

/// The durable-length slots of a format-2 segment as last written.
#[derive(Clone, Copy, Debug)]
pub(super) struct Watermark {
    pub(super) seq: u64,
    pub(super) durable: u64,
}

pub(super) fn encode_slot(seq: u64, durable: u64) -> [u8; SLOT_LEN] {
    let mut b = [0u8; SLOT_LEN];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&durable.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(super) fn decode_slot(b: &[u8]) -> Option<Watermark> {
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
    pub(super) fn write(&mut self, file: &File, path: &Path, durable: u64) -> Result<(), LogError> {
        let seq = self.seq + 1;
        let at = SLOT_AT[(seq % 2) as usize];
        // ENOSPC here is retryable: the slot is rewritten whole with the same sequence number,
        // and the other slot still holds the last durable length.
        file.write_all_at(&encode_slot(seq, durable), at)
            .map_err(|e| LogError::write(format!("write the header of {}", path.display()), e))?;
        *self = Watermark { seq, durable };
        Ok(())
    }
}

/// Writes a fresh format-2 header claiming `durable` bytes (not synced).
pub(super) fn write_header(file: &File, path: &Path, durable: u64) -> Result<Watermark, LogError> {
    let mut page = vec![0u8; SEGMENT_HEADER_LEN as usize];
    page[..8].copy_from_slice(SEGMENT_MAGIC);
    page[8..12].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
    let at = SLOT_AT[1] as usize;
    page[at..at + SLOT_LEN].copy_from_slice(&encode_slot(1, durable));
    file.write_all_at(&page, 0)
        .map_err(|e| LogError::write(format!("write the header of {}", path.display()), e))?;
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

pub(super) const DAMAGED_DIR: &str = "damaged";

/// Present while records that may have been acknowledged were cut and the replica has not yet
/// stored that it is unclean.
pub(super) const LOST_MARKER: &str = "LOST_ACKNOWLEDGED";

impl Segment {
    pub(super) fn last_lsn(&self) -> Lsn {
        Lsn(self.base.0 + self.offsets.len() as u64 - 1)
    }

    pub(super) fn records_start(&self) -> u64 {
        if self.header.is_some() {
            SEGMENT_HEADER_LEN
        } else {
            0
        }
    }

    /// Records in its header that the file is durable up to its current length (not synced:
    /// the caller's fdatasync or fsync covers it).
    pub(super) fn claim_durable(&mut self) -> Result<(), LogError> {
        let len = self.len;
        match self.header.as_mut() {
            Some(w) if w.durable != len => w.write(&self.file, &self.path, len),
            _ => Ok(()),
        }
    }
}

pub(super) fn segment_name(base: Lsn) -> String {
    format!("{:020}.seg", base.0)
}

pub(super) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

pub(super) const RESET_MARKER: &str = "RESET";

pub(super) fn write_reset_marker(dir: &Path, next: Lsn) -> Result<(), LogError> {
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

pub(super) fn remove_reset_marker(dir: &Path) -> Result<(), LogError> {
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
