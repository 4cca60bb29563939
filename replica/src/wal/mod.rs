//! The write-ahead log: the [`LogStore`] trait with its durability contract, the on-disk
//! segment implementation ([`disk::DiskLog`]) and an in-memory one ([`mem::MemLog`]) that models
//! a crash by dropping what was never synced. Both pass the same suite (`tests/log_suite.rs`).
//!
//! The log knows records, positions and files; it knows nothing of keys, roles or epochs' meaning.

pub mod disk;
pub mod mem;
pub mod record;

pub use record::{Op, Record};

use baton_common::{Epoch, Lsn};
use bytes::{Bytes, BytesMut};
use std::path::PathBuf;

/// Errors of a log store. `Corrupt` and `Io` on sync are fatal for the replica (never retried).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A log the node must not start on: segments that do not follow each other, a record in
    /// the wrong place, an unknown segment format. (Damaged records are cut and reported in
    /// [`Recovery::damage`] instead, so that the range is fetched again from the leader.)
    #[error("corrupt log: {file}: offset {offset}: {reason}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("log I/O error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// ENOSPC where nothing durable depends on the failed call: a write(2) (of records or of the
    /// zeros that preallocate a segment) or a file creation, never an fsync. Retryable: the store is left consistent (what `last_lsn` says
    /// is there, is; a partially appended batch keeps its written prefix), and the same call
    /// may simply be made again once space was freed. An ENOSPC from fsync is [`LogError::Io`]
    /// and fatal like any fsync error: some file systems drop the dirty pages when they report
    /// it, and a later fsync would then succeed for data that is gone (DESIGN.md §6).
    #[error("disk full: {context}: {source}")]
    NoSpace {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A caller broke the contract (non-dense append, truncation below the first record, …).
    #[error("log misuse: {0}")]
    Misuse(String),
}

impl LogError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LogError::Io {
            context: context.into(),
            source,
        }
    }

    /// An error of a write(2) or a file creation: ENOSPC there is
    /// [`LogError::NoSpace`] (retryable), anything else [`LogError::Io`]. Never for an fsync.
    pub fn write(context: impl Into<String>, source: std::io::Error) -> Self {
        if is_enospc(&source) {
            LogError::NoSpace {
                context: context.into(),
                source,
            }
        } else {
            LogError::io(context, source)
        }
    }

    /// The store ran out of space where a retry is safe.
    pub fn is_no_space(&self) -> bool {
        matches!(self, LogError::NoSpace { .. })
    }
}

/// Whether an I/O error says the disk is full.
pub fn is_enospc(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull
}

/// What recovery found and repaired when a store was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut from the tail of the last segment because they held a torn record (written
    /// after the last fsync that returned: never acknowledged).
    pub torn_bytes_truncated: u64,
    /// Where the torn bytes started, as (file, offset).
    pub torn_at: Option<(PathBuf, u64)>,
    pub records: u64,
    pub segments: usize,
    /// A damaged record that was cut with everything after it (not a plain torn tail).
    pub damage: Option<Damage>,
    /// Records this replica may have acknowledged (they were fsynced) are gone: it must be
    /// marked unclean and fetch them again from the leader (DESIGN.md §3, §6). Also reported
    /// on every later open until [`disk::DiskLog::clear_lost_marker`] says that was stored.
    pub lost_acknowledged: bool,
}

/// A damaged record found by recovery, and what was cut because of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: u64,
    /// LSN of the damaged record: the log now ends just before it.
    pub from: Lsn,
    /// What was wrong.
    pub reason: String,
    /// The damage lies where a sync had returned (a sealed segment, or below the durable length
    /// the segment records): records that may have been acknowledged were cut.
    pub acknowledged: bool,
    /// A valid record lay after the damage (a write-back hole, or a bit flip in the middle).
    pub valid_after: bool,
    /// Where the cut bytes and segments were moved (nothing is deleted).
    pub archived: Option<PathBuf>,
}

/// Consecutive records as their encoded frames, back to back ([`LogStore::read_frames`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frames {
    pub bytes: Bytes,
    pub count: usize,
}

/// A durable, dense, append-only sequence of records.
///
/// Durability contract:
/// - [`append`](LogStore::append) hands records to the store; they are readable at once but
///   **not durable**: after a crash any suffix of them may be gone.
/// - When [`sync`](LogStore::sync) returns `Ok`, every record appended before the call survives
///   a crash. When it returns `Err`, nothing about durability is known and the caller must stop
///   (an fsync error is never retried) — except [`LogError::NoSpace`], which a store returns
///   only before its fsync ran (say, writing the segment header): then the call may be made again.
/// - [`append`](LogStore::append) may fail with [`LogError::NoSpace`] after appending a prefix of
///   the records (`last_lsn` says how many); appending the rest later continues the log. Any
///   other append error is fatal.
/// - [`truncate_from`](LogStore::truncate_from) and [`compact_through`](LogStore::compact_through)
///   are durable when they return.
/// - After a crash the store reopens holding a prefix of what was appended that includes
///   everything synced; a torn record at the very tail is cut. A damaged record is cut with
///   everything after it, and when it may have been synced (acknowledged) the store says so
///   ([`Recovery::lost_acknowledged`]): the replica is then unclean until it fetched the range
///   again.
pub trait LogStore: Send + 'static {
    /// LSN of the first record held, or of the next record when the store is empty.
    fn first_lsn(&self) -> Lsn;
    /// LSN of the last record held, or `first_lsn() - 1` when empty.
    fn last_lsn(&self) -> Lsn;
    /// Epoch of the last record held, `None` when empty.
    fn last_epoch(&self) -> Option<Epoch>;
    /// Appends records; the first must have LSN `last_lsn() + 1` and the rest follow densely.
    fn append(&mut self, records: &[Record]) -> Result<(), LogError>;
    /// Makes everything appended durable (see the contract above).
    fn sync(&mut self) -> Result<(), LogError>;
    /// Reads up to `max_records` records starting at `from`, stopping early past `max_bytes`
    /// (at least one record is returned when one exists at `from`).
    fn read(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError>;
    /// Reads like [`read`](LogStore::read), but returns the records' frames back to back, as
    /// the log and the replication stream encode them, checked (length, checksum, LSN) but not
    /// decoded: what a leader ships to a follower that is behind, without decoding and
    /// re-encoding every record.
    fn read_frames(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Frames, LogError> {
        let records = self.read(from, max_records, max_bytes)?;
        let mut b = BytesMut::with_capacity(records.iter().map(Record::frame_len).sum());
        for r in &records {
            r.encode_into(&mut b);
        }
        Ok(Frames {
            bytes: b.freeze(),
            count: records.len(),
        })
    }
    /// Removes every record with LSN ≥ `from`; durable on return.
    fn truncate_from(&mut self, from: Lsn) -> Result<(), LogError>;
    /// Allows removal of records with LSN ≤ `through` (a snapshot covers them). Implementations
    /// may keep some (whole segments are removed); durable on return.
    fn compact_through(&mut self, through: Lsn) -> Result<(), LogError>;
    /// Bytes of the records the store holds (their frames; file headers are not counted).
    fn size_bytes(&self) -> u64;
    /// Removes every record and makes the store empty with `next` as its next LSN (after a
    /// snapshot was installed in place of the log); durable on return.
    fn reset(&mut self, next: Lsn) -> Result<(), LogError>;
}
