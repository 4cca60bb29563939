//! The conformance suite of the write-ahead log: every test of the [`LogStore`] contract is
//! written once against a small [`Harness`] (open a store, crash it, reopen it) and run against
//! both [`DiskLog`] (with tiny segments so that roll-over happens every few dozen records) and
//! [`MemLog`]; a proptest drives both through random operation sequences and compares them with
//! a plain `Vec` model. The second half owns the disk-only fault tests: torn tails at every byte,
//! damage below and above the durable length a segment records (bit flips, write-back holes,
//! truncation: cut, and reported as lost when it may have been acknowledged), missing segments,
//! roll-over crash points and stray files in the log directory. It does not test the record codec (`record.rs` has its own tests)
//! nor what the replica does with a log it refuses to open.

use baton_common::{Epoch, Lsn, NodeId};
use baton_replica::wal::disk::{
    records_end, records_start, set_durable_len, DiskLog, DiskOptions, PREALLOC_CHUNK,
};
use baton_replica::wal::mem::{MemDisk, MemLog};
use baton_replica::wal::{LogError, LogStore, Op, Record, Recovery};
use bytes::Bytes;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Records and small helpers shared by both halves.
// ---------------------------------------------------------------------------------------------

/// Segment size of the disk log under test: small, so that a hundred records span several
/// segments and every operation meets segment boundaries.
const SEGMENT_BYTES_MAX: u64 = 4096;

fn small_segments() -> DiskOptions {
    DiskOptions {
        segment_bytes_max: SEGMENT_BYTES_MAX,
    }
}

/// A record whose size and kind vary with its LSN (frames of roughly 30 to 200 bytes).
fn rec(lsn: u64, epoch: u64) -> Record {
    let op = if lsn.is_multiple_of(10) {
        Op::LeaderStart {
            leader: NodeId(format!("r{epoch}")),
            lossy: lsn.is_multiple_of(20),
        }
    } else if lsn.is_multiple_of(7) {
        Op::Delete {
            key: Bytes::from(format!("key-{lsn}")),
        }
    } else {
        return sized(lsn, epoch, 40 + (lsn * 37 % 120) as usize);
    };
    Record {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
        op,
    }
}

/// A put record with a value of `value_len` bytes.
fn sized(lsn: u64, epoch: u64, value_len: usize) -> Record {
    let value: Vec<u8> = (0..value_len)
        .map(|i| (lsn as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect();
    Record {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
        op: Op::Put {
            key: Bytes::from(format!("key-{lsn}")),
            value: Bytes::from(value),
        },
    }
}

/// Records `from..=to`, all in `epoch`.
fn recs(from: u64, to: u64, epoch: u64) -> Vec<Record> {
    (from..=to).map(|lsn| rec(lsn, epoch)).collect()
}

fn read_all(log: &impl LogStore) -> Vec<Record> {
    log.read(log.first_lsn(), usize::MAX, usize::MAX)
        .expect("read the whole log")
}

/// Appends `records` in batches of `batch`, as the replica does.
fn append_in_batches(log: &mut impl LogStore, records: &[Record], batch: usize) {
    for chunk in records.chunks(batch) {
        log.append(chunk).expect("dense append");
    }
}

fn assert_misuse<T: std::fmt::Debug>(res: Result<T, LogError>, what: &str) {
    assert!(
        matches!(res, Err(LogError::Misuse(_))),
        "{what}: expected Err(Misuse), got {res:?}"
    );
}

/// What `read(from, max_records, max_bytes)` must return from a log holding `all`: the longest
/// run starting at `from` of at most `max_records` records whose frames fit in `max_bytes`, but
/// at least one record when one exists at `from`. This is how the suite reads the trait's
/// "stopping early past `max_bytes`", and what `MemLog`, the reference model, does.
fn expected_read(all: &[Record], from: u64, max_records: usize, max_bytes: usize) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let mut bytes = 0usize;
    for r in all.iter().filter(|r| r.lsn.0 >= from).take(max_records) {
        if !out.is_empty() && bytes + r.frame_len() > max_bytes {
            break;
        }
        bytes += r.frame_len();
        out.push(r.clone());
    }
    out
}

/// The segment files of a disk log directory, sorted by name (which is by base LSN).
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list the log directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| segment_base(p).is_some())
        .collect();
    files.sort();
    files
}

/// The base LSN encoded in a segment file name (`00000000000000000001.seg`).
fn segment_base(path: &Path) -> Option<Lsn> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

// ---------------------------------------------------------------------------------------------
// The harness and its two implementations.
// ---------------------------------------------------------------------------------------------

/// What the suite needs from an implementation besides the trait: a fresh store, a crash, and
/// knowledge of what a crash may lose.
trait Harness: Sized {
    type Store: LogStore;
    /// Whether a crash loses records appended since the last sync (a power cut for the memory
    /// log). The disk log's crash is a process crash: written bytes sit in the page cache and
    /// survive, so nothing is lost.
    const CRASH_LOSES_UNSYNCED: bool;
    /// A fresh, empty store.
    fn create() -> (Self, Self::Store);
    /// Drops `store` as a crash would and opens the same log again.
    fn crash_and_reopen(&mut self, store: Self::Store) -> Self::Store;
    /// Base LSNs of the segment files, for implementations that have segments.
    fn segment_bases(&self) -> Option<Vec<Lsn>>;
    /// A fresh store on a disk that fills up after some hundreds of records (`None`: it cannot
    /// be made here, e.g. mounting a small file system is not permitted).
    fn create_small_disk() -> Option<(Self, Self::Store)>;
    /// Gives the small disk room again.
    fn free_space(&mut self);
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(SmallDisk(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .output();
    }
}

struct DiskHarness {
    /// Unmounted before the temporary directory under it is removed (field order).
    small: Option<SmallDisk>,
    _tmp: TempDir,
    dir: PathBuf,
}

impl Harness for DiskHarness {
    type Store = DiskLog;
    const CRASH_LOSES_UNSYNCED: bool = false;

    fn create() -> (Self, DiskLog) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("wal");
        let (log, recovery) = DiskLog::open(&dir, small_segments()).expect("create a disk log");
        assert_eq!(
            recovery,
            Recovery {
                segments: 1,
                ..Recovery::default()
            }
        );
        (
            DiskHarness {
                small: None,
                _tmp: tmp,
                dir,
            },
            log,
        )
    }

    fn create_small_disk() -> Option<(Self, DiskLog)> {
        let tmp = tempfile::tempdir().expect("temp dir");
        let small = match SmallDisk::mount(&tmp.path().join("disk"), "256k") {
            Ok(d) => d,
            Err(why) => {
                eprintln!("SKIPPED: cannot mount a small tmpfs for the disk-full case ({why})");
                return None;
            }
        };
        let dir = small.0.join("wal");
        let (log, _) = DiskLog::open(&dir, small_segments()).expect("create a disk log");
        Some((
            DiskHarness {
                small: Some(small),
                _tmp: tmp,
                dir,
            },
            log,
        ))
    }

    fn free_space(&mut self) {
        self.small.as_ref().expect("a small disk").resize("16m");
    }

    fn crash_and_reopen(&mut self, store: DiskLog) -> DiskLog {
        drop(store);
        let (log, recovery) = DiskLog::open(&self.dir, small_segments()).expect("reopen");
        // A process crash tears nothing: every write reached the page cache whole.
        assert_eq!(recovery.torn_bytes_truncated, 0, "{recovery:?}");
        assert_eq!(recovery.torn_at, None);
        assert_eq!(recovery.segments, segment_files(&self.dir).len());
        assert_eq!(
            recovery.records,
            log.last_lsn().0 + 1 - log.first_lsn().0,
            "{recovery:?}"
        );
        log
    }

    fn segment_bases(&self) -> Option<Vec<Lsn>> {
        Some(
            segment_files(&self.dir)
                .iter()
                .filter_map(|p| segment_base(p))
                .collect(),
        )
    }
}

struct MemHarness {
    disk: MemDisk,
}

impl Harness for MemHarness {
    type Store = MemLog;
    const CRASH_LOSES_UNSYNCED: bool = true;

    fn create() -> (Self, MemLog) {
        let disk = MemDisk::default();
        let log = MemLog::open(&disk);
        (MemHarness { disk }, log)
    }

    fn crash_and_reopen(&mut self, store: MemLog) -> MemLog {
        drop(store);
        self.disk.crash();
        MemLog::open(&self.disk)
    }

    fn segment_bases(&self) -> Option<Vec<Lsn>> {
        None
    }

    fn create_small_disk() -> Option<(Self, MemLog)> {
        let (h, log) = Self::create();
        h.disk.set_space(Some(500));
        Some((h, log))
    }

    fn free_space(&mut self) {
        self.disk.set_space(None);
    }
}

// ---------------------------------------------------------------------------------------------
// The conformance suite, generic over the harness.
// ---------------------------------------------------------------------------------------------

fn empty_log_positions<H: Harness>() {
    let (mut h, log) = H::create();
    let check = |log: &H::Store| {
        assert_eq!(log.first_lsn(), Lsn(1));
        assert_eq!(log.last_lsn(), Lsn(0));
        assert_eq!(log.last_epoch(), None);
        assert_eq!(log.size_bytes(), 0);
        assert_eq!(log.read(Lsn(1), 10, usize::MAX).expect("read"), vec![]);
        assert_misuse(log.read(Lsn(0), 10, usize::MAX), "read below the first LSN");
    };
    check(&log);
    let log = h.crash_and_reopen(log);
    check(&log);
}

fn append_must_be_dense<H: Harness>() {
    let (_h, mut log) = H::create();
    assert_misuse(log.append(&[rec(0, 1)]), "append of LSN 0");
    assert_misuse(log.append(&[rec(2, 1)]), "first append at LSN 2");
    // A gap inside a batch rejects the whole batch.
    assert_misuse(log.append(&[rec(1, 1), rec(3, 1)]), "gap inside a batch");
    assert_eq!(log.last_lsn(), Lsn(0), "a rejected batch appends nothing");
    log.append(&recs(1, 3, 1)).expect("dense append");
    assert_misuse(log.append(&[rec(3, 1)]), "append of an LSN held");
    assert_misuse(log.append(&[rec(5, 1)]), "append past the next LSN");
    assert_misuse(
        log.append(&[rec(4, 1), rec(4, 1)]),
        "repeated LSN in a batch",
    );
    log.append(&[]).expect("an empty append is allowed");
    assert_eq!(log.last_lsn(), Lsn(3));
    assert_eq!(read_all(&log), recs(1, 3, 1));
    log.append(&[rec(4, 2)])
        .expect("dense append after rejections");
    assert_eq!(log.last_epoch(), Some(Epoch(2)));
}

fn appended_records_read_back<H: Harness>() {
    let (mut h, mut log) = H::create();
    let mut all = recs(1, 40, 1);
    all.extend(recs(41, 100, 2));
    append_in_batches(&mut log, &all, 7);
    if let Some(bases) = h.segment_bases() {
        assert!(bases.len() >= 3, "expected several segments, got {bases:?}");
    }
    assert_eq!(log.first_lsn(), Lsn(1));
    assert_eq!(log.last_lsn(), Lsn(100));
    assert_eq!(log.last_epoch(), Some(Epoch(2)));
    assert_eq!(read_all(&log), all);
    for from in [1u64, 2, 29, 30, 31, 57, 99, 100] {
        let got = log.read(Lsn(from), usize::MAX, usize::MAX).expect("read");
        assert_eq!(got, all[from as usize - 1..], "read from {from}");
    }
    assert_eq!(log.read(Lsn(101), 10, usize::MAX).expect("read"), vec![]);
    assert_eq!(log.read(Lsn(500), 10, usize::MAX).expect("read"), vec![]);
    let frames: u64 = all.iter().map(|r| r.frame_len() as u64).sum();
    assert_eq!(log.size_bytes(), frames);
    log.sync().expect("sync");
    let log = h.crash_and_reopen(log);
    assert_eq!(read_all(&log), all);
    assert_eq!(log.last_epoch(), Some(Epoch(2)));
    assert_eq!(log.size_bytes(), frames);
}

fn read_respects_max_records_and_max_bytes<H: Harness>() {
    let (mut h, mut log) = H::create();
    let all = recs(1, 100, 3);
    append_in_batches(&mut log, &all, 9);
    log.sync().expect("sync");
    let bases: Vec<u64> = h
        .segment_bases()
        .unwrap_or_default()
        .iter()
        .map(|l| l.0)
        .collect();
    let mut froms = vec![1u64, 2, 50, 98, 99, 100, 101];
    // Reads that start at a segment boundary and just before one.
    for b in bases.iter().skip(1) {
        froms.extend([b - 2, b - 1, *b]);
    }
    let check = |log: &H::Store| {
        for &from in &froms {
            let first = all.get(from as usize - 1).map_or(0, |r| r.frame_len());
            let second = all.get(from as usize).map_or(0, |r| r.frame_len());
            for max_records in [1usize, 2, 5, 33, usize::MAX] {
                let got = log.read(Lsn(from), max_records, usize::MAX).expect("read");
                assert_eq!(
                    got,
                    expected_read(&all, from, max_records, usize::MAX),
                    "from {from}, max_records {max_records}"
                );
                assert_frames(log, from, max_records, usize::MAX, &got);
            }
            for max_bytes in [
                0,
                1,
                first.saturating_sub(1),
                first,
                (first + second).saturating_sub(1),
                first + second,
                first + second + 1,
                500,
                1000,
                SEGMENT_BYTES_MAX as usize,
                10_000,
                usize::MAX,
            ] {
                for max_records in [3usize, usize::MAX] {
                    let got = log.read(Lsn(from), max_records, max_bytes).expect("read");
                    let want = expected_read(&all, from, max_records, max_bytes);
                    assert_eq!(
                        got, want,
                        "from {from}, max_records {max_records}, max_bytes {max_bytes}"
                    );
                    assert_frames(log, from, max_records, max_bytes, &got);
                    if from <= 100 {
                        assert!(!got.is_empty(), "at least one record is always returned");
                    }
                }
            }
        }
    };
    check(&log);
    let log = h.crash_and_reopen(log);
    check(&log);
}

/// `read_frames` returns the same records as `read`, as their frames back to back.
fn assert_frames(
    log: &impl LogStore,
    from: u64,
    max_records: usize,
    max_bytes: usize,
    want: &[Record],
) {
    let f = log
        .read_frames(Lsn(from), max_records, max_bytes)
        .expect("read_frames");
    let mut encoded = bytes::BytesMut::new();
    for r in want {
        r.encode_into(&mut encoded);
    }
    assert_eq!(
        (f.count, &f.bytes[..]),
        (want.len(), &encoded[..]),
        "frames from {from}, max_records {max_records}, max_bytes {max_bytes}"
    );
}

fn sync_then_crash_keeps_what_was_synced<H: Harness>() {
    let (mut h, mut log) = H::create();
    let synced = recs(1, 45, 1);
    let unsynced = recs(46, 80, 2);
    append_in_batches(&mut log, &synced, 4);
    log.sync().expect("sync");
    append_in_batches(&mut log, &unsynced, 4);
    let mut log = h.crash_and_reopen(log);
    let got = read_all(&log);
    let appended: Vec<Record> = synced.iter().chain(&unsynced).cloned().collect();
    assert!(
        got.len() >= synced.len() && appended.starts_with(&got),
        "the reopened log must be a prefix of what was appended that holds everything synced"
    );
    if H::CRASH_LOSES_UNSYNCED {
        assert_eq!(got, synced);
        assert_eq!(log.last_epoch(), Some(Epoch(1)));
    } else {
        assert_eq!(got, appended);
        assert_eq!(log.last_epoch(), Some(Epoch(2)));
    }
    // Appends continue right after what survived.
    let next = log.last_lsn().0 + 1;
    assert_misuse(log.append(&[rec(next + 1, 3)]), "append past the end");
    let more = recs(next, next + 9, 3);
    log.append(&more).expect("append after reopen");
    log.sync().expect("sync");
    let log = h.crash_and_reopen(log);
    let want: Vec<Record> = got.into_iter().chain(more).collect();
    assert_eq!(read_all(&log), want);
    assert_eq!(log.last_epoch(), Some(Epoch(3)));
}

/// Fills a log with 100 records in three epochs, synced, and returns them.
fn filled<H: Harness>() -> (H, H::Store, Vec<Record>) {
    let (h, mut log) = H::create();
    let mut all = recs(1, 20, 1);
    all.extend(recs(21, 50, 2));
    all.extend(recs(51, 100, 5));
    append_in_batches(&mut log, &all, 6);
    log.sync().expect("sync");
    (h, log, all)
}

/// Checks the state after `truncate_from(from)`, then after a reopen, then that appends go on at
/// `from`; returns the reopened log.
fn check_truncated<H: Harness>(
    h: &mut H,
    log: H::Store,
    all: &[Record],
    from: u64,
) -> (H::Store, Vec<Record>) {
    let kept = &all[..from as usize - 1];
    let check = |log: &H::Store| {
        assert_eq!(log.first_lsn(), Lsn(1));
        assert_eq!(log.last_lsn(), Lsn(from - 1));
        assert_eq!(log.last_epoch(), kept.last().map(|r| r.epoch));
        assert_eq!(read_all(log), kept);
        assert_eq!(log.read(Lsn(from), 10, usize::MAX).expect("read"), vec![]);
    };
    check(&log);
    // Truncation is durable on return: no sync, and a crash must not bring records back.
    let mut log = h.crash_and_reopen(log);
    check(&log);
    assert_misuse(log.append(&[rec(from + 1, 9)]), "append past the end");
    let again = recs(from, from + 39, 9);
    log.append(&again).expect("append after truncation");
    log.sync().expect("sync");
    let log = h.crash_and_reopen(log);
    let want: Vec<Record> = kept.iter().cloned().chain(again).collect();
    assert_eq!(read_all(&log), want);
    assert_eq!(log.last_epoch(), Some(Epoch(9)));
    (log, want)
}

fn truncate_in_the_middle<H: Harness>() {
    let (mut h, mut log, all) = filled::<H>();
    let bases = h.segment_bases();
    // 73 is not a segment base for the disk log (checked), so the cut is inside a segment.
    if let Some(b) = &bases {
        assert!(!b.contains(&Lsn(73)), "{b:?}");
    }
    log.truncate_from(Lsn(73)).expect("truncate");
    let (mut log, want) = check_truncated(&mut h, log, &all, 73);
    // And once more, inside the records appended after the first truncation.
    log.truncate_from(Lsn(90)).expect("truncate");
    check_truncated(&mut h, log, &want, 90);
}

fn truncate_at_a_segment_boundary<H: Harness>() {
    let (mut h, mut log, all) = filled::<H>();
    // For the memory log any LSN will do; 31 stands in for a boundary.
    let bases = h.segment_bases();
    let from = bases.as_ref().map_or(Lsn(31), |b| b[1]);
    log.truncate_from(from).expect("truncate");
    if let Some(b) = &bases {
        // Every segment from the boundary on is gone; the one before is whole.
        assert_eq!(h.segment_bases().as_deref(), Some(&b[..1]));
    }
    check_truncated(&mut h, log, &all, from.0);
}

fn truncate_at_the_first_lsn<H: Harness>() {
    let (mut h, mut log, all) = filled::<H>();
    log.truncate_from(Lsn(1)).expect("truncate");
    assert_eq!(log.size_bytes(), 0);
    let (log, _) = check_truncated(&mut h, log, &all, 1);
    assert_eq!(log.first_lsn(), Lsn(1));
}

fn truncate_beyond_the_end_is_a_no_op<H: Harness>() {
    let (mut h, mut log, all) = filled::<H>();
    for from in [101u64, 102, 1000, u64::MAX] {
        log.truncate_from(Lsn(from))
            .expect("truncate beyond the end");
        assert_eq!(log.last_lsn(), Lsn(100));
        assert_eq!(log.last_epoch(), Some(Epoch(5)));
        assert_eq!(read_all(&log), all);
    }
    let mut log = h.crash_and_reopen(log);
    assert_eq!(read_all(&log), all);
    log.append(&[rec(101, 5)]).expect("append");
    assert_eq!(log.last_lsn(), Lsn(101));
}

fn truncate_below_the_first_lsn_is_misuse<H: Harness>() {
    let (_h, mut log) = H::create();
    assert_misuse(
        log.truncate_from(Lsn(0)),
        "truncation of an empty log from 0",
    );
    let (mut h, mut log, all) = filled::<H>();
    assert_misuse(log.truncate_from(Lsn(0)), "truncation from 0");
    log.compact_through(Lsn(60)).expect("compact");
    let first = log.first_lsn().0;
    assert!(first > 1, "compaction through 60 removed nothing");
    assert_misuse(
        log.truncate_from(Lsn(first - 1)),
        "truncation below the first LSN",
    );
    assert_eq!(read_all(&log), all[first as usize - 1..]);
    let log = h.crash_and_reopen(log);
    assert_eq!(read_all(&log), all[first as usize - 1..]);
}

fn last_epoch_follows_truncation<H: Harness>() {
    let (mut h, mut log, _all) = filled::<H>();
    assert_eq!(log.last_epoch(), Some(Epoch(5)));
    let steps = [(61, Some(5)), (51, Some(2)), (22, Some(2)), (21, Some(1))];
    for (from, epoch) in steps {
        log.truncate_from(Lsn(from)).expect("truncate");
        assert_eq!(
            log.last_epoch(),
            epoch.map(Epoch),
            "after truncation from {from}"
        );
        log = h.crash_and_reopen(log);
        assert_eq!(log.last_epoch(), epoch.map(Epoch), "reopened at {from}");
    }
    log.truncate_from(Lsn(2)).expect("truncate");
    assert_eq!(log.last_epoch(), Some(Epoch(1)));
    log.truncate_from(Lsn(1)).expect("truncate");
    assert_eq!(log.last_epoch(), None);
    let mut log = h.crash_and_reopen(log);
    assert_eq!(log.last_epoch(), None);
    log.append(&[rec(1, 7)]).expect("append");
    assert_eq!(log.last_epoch(), Some(Epoch(7)));
}

fn truncation_of_unsynced_records_is_durable<H: Harness>() {
    let (mut h, mut log) = H::create();
    let all = recs(1, 90, 4);
    append_in_batches(&mut log, &all, 10);
    log.truncate_from(Lsn(40)).expect("truncate");
    let log = h.crash_and_reopen(log);
    let got = read_all(&log);
    assert!(
        got.len() < 40 && all.starts_with(&got),
        "no truncated record may come back: got {} records",
        got.len()
    );
    if !H::CRASH_LOSES_UNSYNCED {
        assert_eq!(got, all[..39]);
    }
}

fn compaction_keeps_everything_above<H: Harness>() {
    let (mut h, mut log, mut all) = filled::<H>();
    let size = log.size_bytes();
    log.compact_through(Lsn(0)).expect("compact through 0");
    assert_eq!(log.first_lsn(), Lsn(1));
    log.compact_through(Lsn(40)).expect("compact");
    let first = log.first_lsn().0;
    // The disk log removes whole segments only; 40 records span more than one of them.
    assert!(
        (2..=41).contains(&first),
        "first LSN {first} after compaction through 40"
    );
    assert!(log.size_bytes() < size);
    let check = |log: &H::Store, all: &[Record]| {
        assert_eq!(log.first_lsn(), Lsn(first));
        assert_eq!(log.last_lsn(), all.last().expect("records").lsn);
        assert_eq!(log.last_epoch(), all.last().map(|r| r.epoch));
        assert_eq!(read_all(log), all[first as usize - 1..]);
        assert_eq!(
            log.read(Lsn(41), usize::MAX, usize::MAX).expect("read"),
            all[40..]
        );
        assert_eq!(
            log.read(Lsn(first), 3, usize::MAX).expect("read"),
            all[first as usize - 1..first as usize + 2]
        );
        assert_misuse(
            log.read(Lsn(first - 1), 10, usize::MAX),
            "read below the first LSN",
        );
    };
    check(&log, &all);
    let mut log = h.crash_and_reopen(log);
    check(&log, &all);
    // Appends go on after compaction and reopen.
    let more = recs(101, 130, 6);
    log.append(&more).expect("append after compaction");
    all.extend(more);
    log.sync().expect("sync");
    check(&log, &all);
    let log = h.crash_and_reopen(log);
    check(&log, &all);
}

fn compaction_beyond_the_end<H: Harness>() {
    // Each bound on a fresh log, so that `u64::MAX` meets several segments.
    for through in [100u64, 150, u64::MAX] {
        let (mut h, mut log, all) = filled::<H>();
        log.compact_through(Lsn(through)).expect("compact");
        let first = log.first_lsn().0;
        assert!((2..=101).contains(&first), "first LSN {first}");
        assert_eq!(log.last_lsn(), Lsn(100));
        assert_eq!(read_all(&log), all[first as usize - 1..]);
        assert_eq!(
            log.last_epoch(),
            (first <= 100).then_some(Epoch(5)),
            "epoch of the last record held"
        );
        let mut log = h.crash_and_reopen(log);
        assert_eq!(log.first_lsn(), Lsn(first));
        assert_eq!(log.last_lsn(), Lsn(100));
        log.append(&recs(101, 110, 6))
            .expect("append after compacting everything");
        log.sync().expect("sync");
        let log = h.crash_and_reopen(log);
        assert_eq!(log.last_lsn(), Lsn(110));
        assert_eq!(
            log.read(Lsn(101), usize::MAX, usize::MAX).expect("read"),
            recs(101, 110, 6)
        );
    }
}

/// ENOSPC: an append that does not fit fails with [`LogError::NoSpace`] (never a fatal error)
/// and leaves a consistent log holding a prefix of the batch; it fails the same way while the
/// disk stays full; once space is freed the rest is appended, synced, and survives a crash.
fn a_full_disk_leaves_a_written_prefix_and_the_rest_appends_once_space_is_freed<H: Harness>() {
    let Some((mut h, mut log)) = H::create_small_disk() else {
        return;
    };
    let mut all = Vec::new();
    let mut next = 1u64;
    let err = loop {
        assert!(next < 100_000, "the small disk never filled");
        let batch = recs(next, next + 9, 1);
        all.extend(batch.iter().cloned());
        next += 10;
        match log.append(&batch) {
            Ok(()) => log.sync().expect("sync on a disk with room"),
            Err(e) => break e,
        }
    };
    assert!(
        err.is_no_space(),
        "ENOSPC on append is retryable, got {err}"
    );
    let held = log.last_lsn().0;
    assert!(
        held + 10 >= next - 1 && held < next,
        "the log holds a prefix of the failed batch {}..={}: it ends at {held}",
        next - 10,
        next - 1
    );
    assert_eq!(read_all(&log), all[..held as usize]);
    let again = log
        .append(&all[held as usize..])
        .expect_err("the disk is still full");
    assert!(again.is_no_space(), "{again}");
    assert_eq!(read_all(&log), all[..log.last_lsn().0 as usize]);
    h.free_space();
    let held = log.last_lsn().0 as usize;
    log.append(&all[held..])
        .expect("the rest appends once space is freed");
    log.sync().expect("sync");
    let more = recs(next, next + 29, 2);
    append_in_batches(&mut log, &more, 7);
    log.sync().expect("sync");
    all.extend(more);
    assert_eq!(log.last_epoch(), Some(Epoch(2)));
    let log = h.crash_and_reopen(log);
    assert_eq!(read_all(&log), all);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod disk_conformance {
            $( #[test] fn $name() { super::$name::<super::DiskHarness>() } )*
        }
        mod mem_conformance {
            $( #[test] fn $name() { super::$name::<super::MemHarness>() } )*
        }
    };
}

conformance!(
    empty_log_positions,
    append_must_be_dense,
    appended_records_read_back,
    read_respects_max_records_and_max_bytes,
    sync_then_crash_keeps_what_was_synced,
    truncate_in_the_middle,
    truncate_at_a_segment_boundary,
    truncate_at_the_first_lsn,
    truncate_beyond_the_end_is_a_no_op,
    truncate_below_the_first_lsn_is_misuse,
    last_epoch_follows_truncation,
    truncation_of_unsynced_records_is_durable,
    compaction_keeps_everything_above,
    compaction_beyond_the_end,
    a_full_disk_leaves_a_written_prefix_and_the_rest_appends_once_space_is_freed,
);

// ---------------------------------------------------------------------------------------------
// Model-based property test.
// ---------------------------------------------------------------------------------------------

/// One operation of a random run; `pick` values are mapped onto the model's current range.
#[derive(Clone, Debug)]
enum Step {
    Append {
        count: u64,
        epoch_bump: u64,
        value_len: usize,
    },
    Sync,
    Read {
        pick: u64,
        max_records: usize,
        max_bytes: usize,
    },
    Truncate {
        pick: u64,
    },
    Compact {
        pick: u64,
    },
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (1u64..8, 0u64..3, 0usize..400).prop_map(|(count, epoch_bump, value_len)| {
            Step::Append { count, epoch_bump, value_len }
        }),
        2 => Just(Step::Sync),
        1 => (any::<u64>(), 1usize..20, 0usize..2000).prop_map(|(pick, max_records, max_bytes)| {
            Step::Read { pick, max_records, max_bytes }
        }),
        1 => any::<u64>().prop_map(|pick| Step::Truncate { pick }),
        1 => any::<u64>().prop_map(|pick| Step::Compact { pick }),
        1 => Just(Step::Crash),
    ]
}

/// What the log must hold: `records[i]` has LSN `first + i`.
struct Model {
    first: u64,
    records: Vec<Record>,
    /// Every record with an LSN up to this one must survive a crash.
    synced_through: u64,
    /// Epoch of the next batch; never goes back.
    epoch: u64,
}

impl Model {
    fn last(&self) -> u64 {
        self.first + self.records.len() as u64 - 1
    }

    /// Maps `pick` onto `first - 1 ..= last + 2`: below the log, inside it and past its end.
    fn pick(&self, pick: u64) -> u64 {
        self.first - 1 + pick % (self.records.len() as u64 + 4)
    }
}

fn check_model(log: &impl LogStore, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.first_lsn(), Lsn(m.first));
    prop_assert_eq!(log.last_lsn(), Lsn(m.last()));
    prop_assert_eq!(log.last_epoch(), m.records.last().map(|r| r.epoch));
    prop_assert_eq!(&read_all(log), &m.records);
    Ok(())
}

fn run_model<H: Harness>(steps: &[Step]) -> Result<(), TestCaseError> {
    let (mut h, mut log) = H::create();
    let mut m = Model {
        first: 1,
        records: Vec::new(),
        synced_through: 0,
        epoch: 1,
    };
    for step in steps {
        match *step {
            Step::Append {
                count,
                epoch_bump,
                value_len,
            } => {
                m.epoch += epoch_bump;
                let next = m.last() + 1;
                let batch: Vec<Record> = (next..next + count)
                    .map(|lsn| sized(lsn, m.epoch, value_len))
                    .collect();
                log.append(&batch)
                    .map_err(|e| TestCaseError::fail(format!("append: {e}")))?;
                m.records.extend(batch);
            }
            Step::Sync => {
                log.sync()
                    .map_err(|e| TestCaseError::fail(format!("sync: {e}")))?;
                m.synced_through = m.last();
            }
            Step::Read {
                pick,
                max_records,
                max_bytes,
            } => {
                let from = m.pick(pick);
                let res = log.read(Lsn(from), max_records, max_bytes);
                if from < m.first {
                    prop_assert!(matches!(res, Err(LogError::Misuse(_))), "{:?}", res);
                } else {
                    let got = res.map_err(|e| TestCaseError::fail(format!("read: {e}")))?;
                    let want = expected_read(&m.records, from, max_records, max_bytes);
                    let frames = log
                        .read_frames(Lsn(from), max_records, max_bytes)
                        .map_err(|e| TestCaseError::fail(format!("read_frames: {e}")))?;
                    let mut encoded = bytes::BytesMut::new();
                    for r in &want {
                        r.encode_into(&mut encoded);
                    }
                    prop_assert_eq!(frames.count, want.len());
                    prop_assert_eq!(&frames.bytes[..], &encoded[..], "frames from {}", from);
                    prop_assert_eq!(got, want, "read from {}", from);
                }
            }
            Step::Truncate { pick } => {
                let from = m.pick(pick);
                let res = log.truncate_from(Lsn(from));
                if from < m.first {
                    prop_assert!(matches!(res, Err(LogError::Misuse(_))), "{:?}", res);
                } else {
                    res.map_err(|e| TestCaseError::fail(format!("truncate: {e}")))?;
                    m.records
                        .truncate(((from - m.first) as usize).min(m.records.len()));
                    m.synced_through = m.synced_through.min(from - 1);
                }
            }
            Step::Compact { pick } => {
                let through = m.pick(pick);
                log.compact_through(Lsn(through))
                    .map_err(|e| TestCaseError::fail(format!("compact: {e}")))?;
                let first = log.first_lsn().0;
                // Only records up to `through` may go, and never one the log does not hold.
                let limit = m.first.max(through.min(m.last()) + 1);
                prop_assert!(
                    (m.first..=limit).contains(&first),
                    "first LSN {} after compaction through {} of {}..={}",
                    first,
                    through,
                    m.first,
                    m.last()
                );
                m.records.drain(..(first - m.first) as usize);
                m.first = first;
            }
            Step::Crash => {
                log = h.crash_and_reopen(log);
                let last = log.last_lsn().0;
                prop_assert_eq!(log.first_lsn(), Lsn(m.first), "compaction is durable");
                if H::CRASH_LOSES_UNSYNCED {
                    let floor = m.synced_through.max(m.first - 1);
                    prop_assert!(
                        (floor..=m.last()).contains(&last),
                        "last LSN {} after a crash; synced through {}, appended through {}",
                        last,
                        floor,
                        m.last()
                    );
                } else {
                    prop_assert_eq!(last, m.last(), "a process crash loses nothing");
                }
                m.records.truncate((last + 1 - m.first) as usize);
            }
        }
        check_model(&log, &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn disk_log_matches_the_model(steps in proptest::collection::vec(step(), 1..40)) {
        run_model::<DiskHarness>(&steps)?;
    }

    #[test]
    fn mem_log_matches_the_model(steps in proptest::collection::vec(step(), 1..40)) {
        run_model::<MemHarness>(&steps)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Disk-only fault tests.
// ---------------------------------------------------------------------------------------------

/// A disk log written once and closed cleanly; each test case damages a copy of it.
struct Fixture {
    _tmp: TempDir,
    wal: PathBuf,
    records: Vec<Record>,
}

impl Fixture {
    /// A log of `n` records appended in batches of five.
    fn new(n: u64) -> Fixture {
        Self::build(|log| {
            let records = recs(1, n, 2);
            append_in_batches(log, &records, 5);
            records
        })
    }

    /// A log whose last record is alone at the start of a freshly rolled third segment.
    fn with_fresh_last_segment() -> Fixture {
        Self::build_with_dir(|log, wal| {
            let mut records = Vec::new();
            for lsn in 1.. {
                let r = rec(lsn, 2);
                log.append(std::slice::from_ref(&r)).expect("append");
                records.push(r);
                if segment_files(wal).len() == 3 {
                    break;
                }
            }
            records
        })
    }

    fn build(fill: impl FnOnce(&mut DiskLog) -> Vec<Record>) -> Fixture {
        Self::build_with_dir(|log, _| fill(log))
    }

    fn build_with_dir(fill: impl FnOnce(&mut DiskLog, &Path) -> Vec<Record>) -> Fixture {
        let tmp = tempfile::tempdir().expect("temp dir");
        let wal = tmp.path().join("wal");
        let (mut log, _) = DiskLog::open(&wal, small_segments()).expect("create");
        let records = fill(&mut log, &wal);
        log.sync().expect("sync");
        drop(log);
        let (log, recovery) = DiskLog::open(&wal, small_segments()).expect("clean reopen");
        assert_eq!(
            recovery,
            Recovery {
                torn_bytes_truncated: 0,
                torn_at: None,
                records: records.len() as u64,
                segments: segment_files(&wal).len(),
                ..Recovery::default()
            }
        );
        assert_eq!(read_all(&log), records);
        Fixture {
            _tmp: tmp,
            wal,
            records,
        }
    }

    fn segments(&self) -> Vec<PathBuf> {
        segment_files(&self.wal)
    }

    /// A copy of the log directory to damage; the path of a file in the copy is the same name
    /// joined to the returned directory.
    fn copy(&self) -> (TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let wal = tmp.path().join("wal");
        std::fs::create_dir(&wal).expect("create the copy");
        for entry in std::fs::read_dir(&self.wal).expect("list") {
            let src = entry.expect("entry").path();
            let name = src.file_name().expect("file name");
            std::fs::copy(&src, wal.join(name)).expect("copy a segment");
        }
        (tmp, wal)
    }
}

/// The frames of a segment file as (offset, record); the file must be intact (records, then at
/// most a zero-filled preallocated tail).
fn frames(path: &Path) -> Vec<(u64, Record)> {
    let data = std::fs::read(path).expect("read segment");
    let end = records_end(&data);
    assert!(
        data[end..].iter().all(|b| *b == 0),
        "{}: a bad frame at offset {end} before the zero-filled tail",
        path.display()
    );
    let mut out = Vec::new();
    let mut off = records_start(&data);
    while off < end {
        let (r, n) = Record::decode(&data[off..]).expect("an intact frame");
        out.push((off as u64, r));
        off += n;
    }
    out
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

/// Where the records of a segment file end (its zero-filled preallocated tail not counted).
fn records_len(path: &Path) -> u64 {
    records_end(&std::fs::read(path).expect("read segment")) as u64
}

fn set_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for truncation")
        .set_len(len)
        .expect("set_len");
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut data = std::fs::read(path).expect("read");
    data[offset as usize] ^= 1 << bit;
    std::fs::write(path, data).expect("write");
}

/// Opens `wal` and expects `Corrupt` naming `file` at `offset`.
fn expect_corrupt(wal: &Path, file: &Path, offset: u64, case: &str) {
    match DiskLog::open(wal, small_segments()) {
        Err(LogError::Corrupt {
            file: f,
            offset: o,
            reason,
        }) => {
            assert_eq!(
                (f.as_path(), o),
                (file, offset),
                "{case}: wrong place ({reason})"
            );
        }
        Err(e) => panic!("{case}: expected Corrupt, got {e}"),
        Ok((log, _)) => panic!(
            "{case}: expected Corrupt, but the log opened with {} records",
            log.last_lsn().0
        ),
    }
}

/// Cuts the last record of `fx` at every byte offset of its frame (0 = the whole record gone)
/// and checks that recovery cuts exactly the torn bytes and that appends go on at its LSN.
fn check_torn_tail_at_every_offset(fx: &Fixture) {
    let last_seg = fx.segments().pop().expect("a segment");
    let name = last_seg.file_name().expect("file name").to_owned();
    let (off, last) = frames(&last_seg)
        .pop()
        .expect("a record in the last segment");
    assert_eq!(last, *fx.records.last().expect("records"));
    let frame_len = last.frame_len() as u64;
    assert_eq!(records_len(&last_seg), off + frame_len);
    let kept = &fx.records[..fx.records.len() - 1];
    for cut in 0..frame_len {
        let (_tmp, wal) = fx.copy();
        let seg = wal.join(&name);
        // The crash came before the sync of the last record returned: the segment's header
        // still records the length before it.
        set_durable_len(&seg, off).expect("rewrite the durable length");
        set_len(&seg, off + cut);
        let (mut log, recovery) = DiskLog::open(&wal, small_segments())
            .unwrap_or_else(|e| panic!("cut at {cut} of {frame_len}: {e}"));
        assert_eq!(recovery.torn_bytes_truncated, cut, "cut at {cut}");
        assert_eq!(
            (recovery.damage.clone(), recovery.lost_acknowledged),
            (None, false),
            "cut at {cut}: a torn tail is no loss"
        );
        assert_eq!(
            recovery.torn_at,
            (cut > 0).then(|| (seg.clone(), off)),
            "cut at {cut}"
        );
        assert_eq!(recovery.records, kept.len() as u64, "cut at {cut}");
        assert_eq!(file_len(&seg), off, "the torn bytes are gone from the file");
        assert_eq!(
            log.last_lsn(),
            last.lsn.0.checked_sub(1).map(Lsn).expect("lsn")
        );
        assert_eq!(log.last_epoch(), kept.last().map(|r| r.epoch));
        assert_eq!(read_all(&log), kept, "cut at {cut}");
        // Appends go on at the LSN of the torn record, in the same file.
        assert_misuse(log.append(&[rec(last.lsn.0 + 1, 3)]), "append past the end");
        let again = sized(last.lsn.0, 3, 77);
        log.append(std::slice::from_ref(&again))
            .expect("append after recovery");
        log.sync().expect("sync");
        drop(log);
        assert_eq!(records_len(&seg), off + again.frame_len() as u64);
        let (log, recovery) = DiskLog::open(&wal, small_segments()).expect("reopen");
        assert_eq!(recovery.torn_bytes_truncated, 0);
        let mut want = kept.to_vec();
        want.push(again);
        assert_eq!(read_all(&log), want, "cut at {cut}");
        assert_eq!(log.last_epoch(), Some(Epoch(3)));
    }
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record() {
    let fx = Fixture::new(70);
    assert!(
        fx.segments().len() >= 2,
        "the tail is not in the first segment"
    );
    check_torn_tail_at_every_offset(&fx);
}

/// Roll-over crash point: the crash came while the first record of a freshly rolled segment was
/// being written (cut 0 is a crash right after the empty segment was created).
#[test]
fn torn_first_record_of_a_freshly_rolled_segment() {
    let fx = Fixture::with_fresh_last_segment();
    let segs = fx.segments();
    assert_eq!(segs.len(), 3);
    assert_eq!(
        frames(&segs[2]).len(),
        1,
        "the last segment holds one record"
    );
    check_torn_tail_at_every_offset(&fx);
}

/// Zeros after the last record are the active segment's preallocation (or records whose pages
/// never reached the disk after the last sync, which were never acknowledged): recovery keeps
/// them silently as preallocation, reports no torn tail and no damage, and appends go over them.
#[test]
fn zero_bytes_after_the_last_record_are_preallocation() {
    let fx = Fixture::new(70);
    let last_seg = fx.segments().pop().expect("a segment");
    let name = last_seg.file_name().expect("file name").to_owned();
    let len = records_len(&last_seg);
    for zeros in [0u64, 1, 7, 8, 25, 512, 4096, 10_000] {
        let (_tmp, wal) = fx.copy();
        let seg = wal.join(&name);
        set_len(&seg, len + zeros);
        let (mut log, recovery) =
            DiskLog::open(&wal, small_segments()).unwrap_or_else(|e| panic!("{zeros}: {e}"));
        assert_eq!(
            (
                recovery.torn_bytes_truncated,
                recovery.torn_at.clone(),
                recovery.damage.clone(),
                recovery.lost_acknowledged
            ),
            (0, None, None, false),
            "{zeros} zeros"
        );
        assert_eq!(file_len(&seg), len + zeros, "the preallocation is kept");
        assert_eq!(read_all(&log), fx.records);
        log.append(&[rec(71, 3)]).expect("append");
        log.sync().expect("sync");
        drop(log);
        assert_eq!(records_len(&seg), len + rec(71, 3).frame_len() as u64);
        let (log, recovery) = DiskLog::open(&wal, small_segments()).expect("reopen");
        assert_eq!(recovery.torn_at, None);
        assert_eq!(log.last_lsn(), Lsn(71));
        assert_eq!(
            log.read(Lsn(71), 1, usize::MAX).expect("read"),
            vec![rec(71, 3)]
        );
    }
}

/// The active segment is zero-filled ahead of the records: its file is larger than its records
/// (whose fdatasync then overwrites allocated blocks instead of growing the file), never past
/// the segment's size limit; a sealed segment holds its records and nothing after them.
#[test]
fn the_active_segment_is_preallocated_and_a_sealed_one_trimmed() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let wal = tmp.path().join("wal");
    let opts = DiskOptions {
        segment_bytes_max: 3 * PREALLOC_CHUNK,
    };
    let (mut log, _) = DiskLog::open(&wal, opts.clone()).expect("create");
    let mut lsn = 1;
    let mut append = |log: &mut DiskLog, n: u64| {
        let batch: Vec<Record> = (lsn..lsn + n).map(|l| sized(l, 2, 1000)).collect();
        lsn += n;
        log.append(&batch).expect("append");
        log.sync().expect("sync");
    };
    append(&mut log, 10);
    let segs = segment_files(&wal);
    assert_eq!(segs.len(), 1);
    let used = records_len(&segs[0]);
    assert_eq!(
        file_len(&segs[0]),
        PREALLOC_CHUNK,
        "zero-filled to the first chunk boundary ({used} bytes of records)"
    );
    // Past the first chunk: the next one is filled.
    append(&mut log, 1100);
    let size = file_len(&segs[0]);
    assert!(records_len(&segs[0]) > PREALLOC_CHUNK);
    assert_eq!(size, 2 * PREALLOC_CHUNK);
    // Past the size limit: the segment is sealed (trimmed to its records) and a new one
    // preallocated.
    append(&mut log, 3000);
    let segs = segment_files(&wal);
    assert!(segs.len() >= 2, "{segs:?}");
    for sealed in &segs[..segs.len() - 1] {
        assert_eq!(
            file_len(sealed),
            records_len(sealed),
            "{}",
            sealed.display()
        );
        assert!(file_len(sealed) <= 4096 + 3 * PREALLOC_CHUNK + 2000);
    }
    let active = segs.last().expect("active");
    assert!(file_len(active) > records_len(active));
    assert_eq!(file_len(active) % PREALLOC_CHUNK, 0);
    let all = read_all(&log);
    drop(log);
    let (log, recovery) = DiskLog::open(&wal, opts).expect("reopen");
    assert_eq!(
        (
            recovery.torn_at,
            recovery.damage,
            recovery.lost_acknowledged
        ),
        (None, None, false)
    );
    assert_eq!(read_all(&log), all);
    assert_eq!(all.len(), 4110);
    drop(log);
    // The size limit lowered below the active segment's preallocation: the next append seals
    // it, trimmed to its records.
    let small = DiskOptions {
        segment_bytes_max: PREALLOC_CHUNK / 2,
    };
    let before = segment_files(&wal);
    let was_active = before.last().expect("active").clone();
    assert!(records_len(&was_active) > 4096 + PREALLOC_CHUNK / 2);
    assert!(file_len(&was_active) > records_len(&was_active));
    let (mut log, _) = DiskLog::open(&wal, small.clone()).expect("reopen with smaller segments");
    append(&mut log, 1);
    let segs = segment_files(&wal);
    assert_eq!(segs.len(), before.len() + 1, "the append rolled");
    assert_eq!(file_len(&was_active), records_len(&was_active), "trimmed");
    drop(log);
    let (log, recovery) = DiskLog::open(&wal, small).expect("reopen");
    assert_eq!((recovery.torn_at, recovery.damage), (None, None));
    assert_eq!(read_all(&log).len(), 4111);
}

/// A crash while a full segment was sealed, after its records and durable length were synced but
/// before the trim of its zero-filled tail was durable: recovery finishes the trim, silently,
/// and reports nothing lost. Zeros *below* a sealed segment's durable length are still damage.
#[test]
fn a_sealed_segment_with_a_zero_tail_past_its_durable_length_is_trimmed() {
    let fx = Fixture::new(100);
    let segs = fx.segments();
    assert!(segs.len() >= 3);
    let name = segs[0].file_name().expect("file name").to_owned();
    let len = file_len(&segs[0]);
    {
        let (_tmp, wal) = fx.copy();
        let seg = wal.join(&name);
        set_len(&seg, len + 8192);
        let (log, recovery) = DiskLog::open(&wal, small_segments()).expect("open");
        assert_eq!(
            (
                recovery.torn_at,
                recovery.damage,
                recovery.lost_acknowledged
            ),
            (None, None, false)
        );
        assert_eq!(file_len(&seg), len, "the trim was finished");
        assert_eq!(read_all(&log), fx.records);
    }
    // The same zeros over its last record, which the header says was durable: damage.
    let frames = frames(&segs[0]);
    let (off, last) = frames.last().expect("records");
    let (_tmp, wal) = fx.copy();
    let seg = wal.join(&name);
    set_len(&seg, *off);
    set_len(&seg, len + 8192);
    expect_cut_and_lost(
        &wal,
        &seg,
        *off,
        last.lsn.0,
        &fx.records,
        "zeros below the durable length",
    );
}

/// Opens `wal` and expects the damaged record at (`file`, `offset`), LSN `lsn`, to be cut with
/// everything after it and reported as possibly acknowledged (so the replica turns unclean),
/// the later segments moved aside, and every record before it intact.
fn expect_cut_and_lost(wal: &Path, file: &Path, offset: u64, lsn: u64, all: &[Record], case: &str) {
    let (log, recovery) = DiskLog::open(wal, small_segments())
        .unwrap_or_else(|e| panic!("{case}: the log must open (cut and repaired), got {e}"));
    let d = recovery
        .damage
        .clone()
        .unwrap_or_else(|| panic!("{case}: no damage reported: {recovery:?}"));
    assert_eq!(
        (d.file.as_path(), d.offset, d.from, d.acknowledged),
        (file, offset, Lsn(lsn), true),
        "{case}: {}",
        d.reason
    );
    assert!(recovery.lost_acknowledged, "{case}");
    assert_eq!(recovery.torn_at, None, "{case}");
    assert_eq!(log.last_lsn(), Lsn(lsn - 1), "{case}");
    assert_eq!(read_all(&log), all[..lsn as usize - 1], "{case}");
    assert_eq!(file_len(file), offset, "{case}: the file is cut there");
    assert_eq!(
        segment_files(wal).last().map(PathBuf::as_path),
        Some(file),
        "{case}: later segments are moved aside"
    );
    assert!(
        d.archived.is_some_and(|a| a.is_dir()),
        "{case}: nothing is deleted"
    );
}

/// Flips one bit in every byte of the middle record of segment `index` (a different bit per
/// byte): the record lies where a sync had returned, so it is cut and reported lost.
fn check_bit_flips_in_a_middle_record(fx: &Fixture, index: usize) {
    let seg = &fx.segments()[index];
    let name = seg.file_name().expect("file name").to_owned();
    let frames = frames(seg);
    assert!(frames.len() >= 5, "a segment of {} records", frames.len());
    let (off, r) = &frames[frames.len() / 2];
    for byte in 0..r.frame_len() as u64 {
        let (_tmp, wal) = fx.copy();
        let damaged = wal.join(&name);
        flip_bit(&damaged, off + byte, (byte % 8) as u8);
        expect_cut_and_lost(
            &wal,
            &damaged,
            *off,
            r.lsn.0,
            &fx.records,
            &format!("segment {index}, record {}, byte {byte}", r.lsn),
        );
    }
}

#[test]
fn bit_flip_in_a_middle_record_of_a_sealed_segment_is_cut_and_reported_lost() {
    let fx = Fixture::new(100);
    assert!(fx.segments().len() >= 3);
    check_bit_flips_in_a_middle_record(&fx, 0);
    check_bit_flips_in_a_middle_record(&fx, 1);
}

/// Below the last segment's durable length, a bit flip is damage to synced records even with
/// intact records after it (it was refused before; now it is repaired from the leader).
#[test]
fn bit_flip_in_a_middle_record_of_the_last_segment_is_cut_and_reported_lost() {
    let fx = Fixture::new(100);
    let last = fx.segments().len() - 1;
    check_bit_flips_in_a_middle_record(&fx, last);
}

#[test]
fn damaged_length_field_of_a_middle_record_is_cut_and_reported_lost() {
    let fx = Fixture::new(100);
    let segs = fx.segments();
    for (index, seg) in segs.iter().enumerate() {
        let name = seg.file_name().expect("file name").to_owned();
        let frames = frames(seg);
        let (off, r) = &frames[frames.len() / 2];
        let len = (r.frame_len() - 8) as u32;
        // Shorter, longer by one, longer than the file, above the maximum record size, zero.
        for bad in [len - 1, len + 1, len + 100_000, 1 << 30, u32::MAX, 0] {
            let (_tmp, wal) = fx.copy();
            let damaged = wal.join(&name);
            let mut data = std::fs::read(&damaged).expect("read");
            data[*off as usize..*off as usize + 4].copy_from_slice(&bad.to_le_bytes());
            std::fs::write(&damaged, data).expect("write");
            expect_cut_and_lost(
                &wal,
                &damaged,
                *off,
                r.lsn.0,
                &fx.records,
                &format!("segment {index}, length {bad} instead of {len}"),
            );
        }
    }
}

#[test]
fn truncated_sealed_segment_is_cut_and_reported_lost() {
    let fx = Fixture::new(100);
    let segs = fx.segments();
    assert!(segs.len() >= 3);
    for index in [0, segs.len() - 2] {
        let name = segs[index].file_name().expect("file name").to_owned();
        let frames = frames(&segs[index]);
        let mid = &frames[frames.len() / 2];
        let last = frames.last().expect("records");
        let last_len = last.1.frame_len() as u64;
        // Inside a header, inside a payload, one byte short of the end, and at a record
        // boundary (the segment decodes, but it is shorter than its durable length).
        for (at, cut) in [
            (mid, mid.0 + 3),
            (mid, mid.0 + 30),
            (last, last.0 + last_len - 1),
            (mid, mid.0),
        ] {
            let (_tmp, wal) = fx.copy();
            let damaged = wal.join(&name);
            set_len(&damaged, cut);
            expect_cut_and_lost(
                &wal,
                &damaged,
                at.0,
                at.1.lsn.0,
                &fx.records,
                &format!("segment {index} cut at {cut}"),
            );
        }
    }
}

/// Issue 10, item 6: a bit flip in the last record, which a sync had covered, used to be taken
/// for a torn tail and silently cut. It is cut, and the store says acknowledged records are
/// gone, at every open until the replica has stored that it is unclean.
#[test]
fn synced_last_record_with_a_bit_flip_is_cut_and_reported_lost_until_stored() {
    let fx = Fixture::new(70);
    let last_seg = fx.segments().pop().expect("a segment");
    let (off, last) = frames(&last_seg).pop().expect("a record");
    assert_eq!(last.lsn, Lsn(70));
    for byte in [0, 5, 9, 20, last.frame_len() as u64 - 1] {
        let (_tmp, wal) = fx.copy();
        let damaged = wal.join(last_seg.file_name().expect("name"));
        flip_bit(&damaged, off + byte, 3);
        let case = format!("byte {byte} of the last record");
        expect_cut_and_lost(&wal, &damaged, off, 70, &fx.records, &case);
        // Still said at the next open (a crash before the replica stored it).
        let (log, recovery) = DiskLog::open(&wal, small_segments()).expect("reopen");
        assert_eq!(
            (recovery.lost_acknowledged, recovery.damage, log.last_lsn()),
            (true, None, Lsn(69)),
            "{case}"
        );
        log.clear_lost_marker().expect("clear");
        drop(log);
        let (mut log, recovery) = DiskLog::open(&wal, small_segments()).expect("reopen");
        assert!(!recovery.lost_acknowledged, "{case}");
        log.append(&[rec(70, 3)])
            .expect("the log goes on at LSN 70");
        log.sync().expect("sync");
    }
}

/// A log of `synced` records that a sync covered, then `more` records written after the last
/// sync that returned (the process, or the power, died before it): one large segment.
fn with_unsynced_tail(synced: u64, more: u64) -> (TempDir, PathBuf, PathBuf, Vec<Record>) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let wal = tmp.path().join("wal");
    let opts = DiskOptions {
        segment_bytes_max: 1 << 20,
    };
    let (mut log, _) = DiskLog::open(&wal, opts).expect("create");
    let records = recs(1, synced + more, 2);
    append_in_batches(&mut log, &records[..synced as usize], 5);
    log.sync().expect("sync");
    append_in_batches(&mut log, &records[synced as usize..], 5);
    drop(log);
    let seg = segment_files(&wal).pop().expect("one segment");
    (tmp, wal, seg, records)
}

/// Zeroes the frames of records `from..=to` in `seg` (a page that never reached the disk).
fn zero_records(seg: &Path, from: u64, to: u64) -> u64 {
    let fr = frames(seg);
    let (start, _) = fr.iter().find(|(_, r)| r.lsn.0 == from).expect("from");
    let (end_off, end_rec) = fr.iter().find(|(_, r)| r.lsn.0 == to).expect("to");
    let end = end_off + end_rec.frame_len() as u64;
    let mut data = std::fs::read(seg).expect("read");
    data[*start as usize..end as usize].fill(0);
    std::fs::write(seg, data).expect("write");
    *start
}

/// Issue 10, item 6: a write-back hole after the last sync (a later page reached the disk, an
/// earlier one did not) used to be taken for mid-log corruption and the node refused to start.
/// Nothing there was acknowledged: it is cut at the hole, and no loss is reported.
#[test]
fn write_back_hole_after_the_last_sync_is_cut_at_the_hole_and_is_no_loss() {
    let (_tmp, wal, seg, records) = with_unsynced_tail(40, 30);
    let at = zero_records(&seg, 52, 55);
    let (mut log, recovery) =
        DiskLog::open(&wal, small_segments()).expect("a hole after the last sync must not refuse");
    let d = recovery.damage.clone().expect("the hole is reported");
    assert_eq!(
        (d.offset, d.from, d.acknowledged, d.valid_after),
        (at, Lsn(52), false, true),
        "{}",
        d.reason
    );
    assert!(!recovery.lost_acknowledged);
    assert_eq!(read_all(&log), records[..51]);
    assert_eq!(file_len(&seg), at);
    log.append(&[rec(52, 3)])
        .expect("appends go on at the hole");
    log.sync().expect("sync");
}

/// The same hole below the durable length lies in records a sync had covered: cut, and lost.
#[test]
fn write_back_hole_below_the_durable_length_is_cut_and_reported_lost() {
    let (_tmp, wal, seg, records) = with_unsynced_tail(70, 0);
    let at = zero_records(&seg, 52, 55);
    let (log, recovery) = DiskLog::open(&wal, small_segments()).expect("opens");
    let d = recovery.damage.clone().expect("reported");
    assert_eq!(
        (d.offset, d.from, d.acknowledged, d.valid_after),
        (at, Lsn(52), true, true),
        "{}",
        d.reason
    );
    assert!(recovery.lost_acknowledged);
    assert_eq!(read_all(&log), records[..51]);
}

#[test]
fn missing_middle_segment_is_corrupt() {
    let fx = Fixture::new(120);
    let segs = fx.segments();
    assert!(segs.len() >= 4);
    for gone in 1..segs.len() - 1 {
        let (_tmp, wal) = fx.copy();
        std::fs::remove_file(wal.join(segs[gone].file_name().expect("name"))).expect("remove");
        let after = wal.join(segs[gone + 1].file_name().expect("name"));
        expect_corrupt(&wal, &after, 0, &format!("segment {gone} missing"));
    }
    // A missing *first* segment is what compaction leaves: the log starts later.
    let (_tmp, wal) = fx.copy();
    std::fs::remove_file(wal.join(segs[0].file_name().expect("name"))).expect("remove");
    let (log, _) = DiskLog::open(&wal, small_segments()).expect("open");
    let first = segment_base(&segs[1]).expect("base");
    assert_eq!(log.first_lsn(), first);
    assert_eq!(read_all(&log), fx.records[first.0 as usize - 1..]);
}

/// Roll-over crash point: the previous segment was filled and synced, the new segment was created
/// (and the directory synced), but no record reached it yet.
#[test]
fn empty_segment_after_the_last_full_one_opens_and_takes_appends() {
    // Drop the only record of the freshly rolled segment to get the state right after the roll.
    let fx = Fixture::with_fresh_last_segment();
    let (_tmp, wal) = fx.copy();
    let segs = segment_files(&wal);
    let empty = segs.last().expect("a segment").clone();
    let next = fx.records.last().expect("records").lsn;
    assert_eq!(segment_base(&empty), Some(next));
    assert!(
        file_len(&segs[segs.len() - 2]) >= SEGMENT_BYTES_MAX,
        "the segment before is full"
    );
    set_len(&empty, 0);
    let kept = &fx.records[..fx.records.len() - 1];

    let (mut log, recovery) = DiskLog::open(&wal, small_segments()).expect("open");
    assert_eq!(
        recovery,
        Recovery {
            torn_bytes_truncated: 0,
            torn_at: None,
            records: kept.len() as u64,
            segments: segs.len(),
            ..Recovery::default()
        }
    );
    assert_eq!(log.last_lsn(), Lsn(next.0 - 1));
    assert_eq!(log.last_epoch(), Some(Epoch(2)));
    assert_eq!(read_all(&log), kept);
    let more = recs(next.0, next.0 + 4, 3);
    log.append(&more).expect("append");
    log.sync().expect("sync");
    drop(log);
    let in_new: Vec<Record> = frames(&empty).into_iter().map(|(_, r)| r).collect();
    assert_eq!(in_new, more, "appends went into the empty segment");
    assert_eq!(segment_files(&wal), segs, "no other segment was created");
    let (log, _) = DiskLog::open(&wal, small_segments()).expect("reopen");
    let want: Vec<Record> = kept.iter().cloned().chain(more).collect();
    assert_eq!(read_all(&log), want);

    // An empty segment that does not continue the log is a gap, not a roll-over.
    let fx = Fixture::new(70);
    let (_tmp, wal) = fx.copy();
    let wrong = wal.join(format!("{:020}.seg", 73));
    std::fs::File::create(&wrong).expect("create");
    expect_corrupt(&wal, &wrong, 0, "empty segment after a gap");
}

#[test]
fn files_that_are_not_segments_are_ignored() {
    let fx = Fixture::new(100);
    let (_tmp, wal) = fx.copy();
    let strays = [
        "README",
        "00000000000000000001.seg.tmp",
        "1.seg",
        "0000000000000000001x.seg",
        "000000000000000000001.seg",
        ".00000000000000000050.seg.swp",
    ];
    for name in strays {
        std::fs::write(wal.join(name), b"not a segment").expect("write a stray file");
    }
    std::fs::create_dir(wal.join("archive")).expect("create a stray directory");
    let (mut log, recovery) = DiskLog::open(&wal, small_segments()).expect("open");
    assert_eq!(recovery.segments, fx.segments().len());
    assert_eq!(recovery.records, 100);
    assert_eq!(read_all(&log), fx.records);
    // Compaction and truncation remove segments only.
    log.compact_through(Lsn(50)).expect("compact");
    log.truncate_from(Lsn(80)).expect("truncate");
    drop(log);
    for name in strays {
        assert!(wal.join(name).exists(), "{name} was removed");
    }
    assert!(wal.join("archive").is_dir());
    let (log, _) = DiskLog::open(&wal, small_segments()).expect("reopen");
    assert_eq!(log.last_lsn(), Lsn(79));
    let first = log.first_lsn().0;
    assert!(first > 1);
    assert_eq!(read_all(&log), fx.records[first as usize - 1..79]);
}

/// A leader's catch-up reads ship frames without decoding them, but still check each one: a
/// record damaged on disk after the log was opened is `Corrupt` naming the file and offset, as
/// it is for a decoding read, never shipped.
#[test]
fn read_frames_checks_every_frame_it_ships() {
    let fx = Fixture::new(100);
    let (_tmp, wal) = fx.copy();
    let (log, _) = DiskLog::open(&wal, small_segments()).expect("open");
    let seg = segment_files(&wal)[1].clone();
    let fr = frames(&seg);
    let (off, r) = fr[fr.len() / 2].clone();
    flip_bit(&seg, off + 20, 2);
    for res in [
        log.read_frames(Lsn(1), usize::MAX, usize::MAX).map(|_| ()),
        log.read(Lsn(1), usize::MAX, usize::MAX).map(|_| ()),
    ] {
        match res {
            Err(LogError::Corrupt { file, offset, .. }) => {
                assert_eq!((file, offset), (seg.clone(), off), "record {}", r.lsn)
            }
            other => panic!("expected Corrupt at {}:{off}, got {other:?}", seg.display()),
        }
    }
    // Before the damaged record, the frames are shipped.
    let before = log
        .read_frames(Lsn(1), (r.lsn.0 - 1) as usize, usize::MAX)
        .expect("read before the damage");
    assert_eq!(before.count, (r.lsn.0 - 1) as usize);
}
