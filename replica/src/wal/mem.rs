//! In-memory [`LogStore`]: the reference model of the durability contract. Records live in a
//! shared [`MemDisk`]; only synced ones survive [`MemDisk::crash`]. Used by the conformance suite
//! and by tests and simulations that need a log without files. Fault injection: a failing sync,
//! and a disk that holds only so many more records (ENOSPC, [`MemDisk::set_space`]).

use super::{LogError, LogStore, Record};
use baton_common::{Epoch, Lsn};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct DiskState {
    /// Records durably stored (survive a crash).
    durable: Vec<Record>,
    /// Records appended but not synced (lost on crash).
    volatile: Vec<Record>,
    /// LSN of the first record (advanced by compaction).
    first: u64,
    fail_sync: bool,
    /// Records the disk still has room for (`None`: unlimited). An append that does not fit
    /// appends what fits and fails with ENOSPC, as a write(2) on a full disk does.
    space: Option<u64>,
}

/// The "disk" behind a [`MemLog`]; clone it to reopen the same log after a simulated crash.
#[derive(Clone, Debug)]
pub struct MemDisk(Arc<Mutex<DiskState>>);

impl Default for MemDisk {
    fn default() -> Self {
        MemDisk(Arc::new(Mutex::new(DiskState {
            first: 1,
            ..Default::default()
        })))
    }
}

impl MemDisk {
    /// Loses everything appended since the last sync, as a power cut would.
    pub fn crash(&self) {
        self.lock().volatile.clear();
    }

    /// Makes every following sync fail with EIO.
    pub fn fail_sync(&self, fail: bool) {
        self.lock().fail_sync = fail;
    }

    /// Leaves room for `records` more records (`None`: unlimited); `Some(0)` is a full disk.
    /// Truncation and compaction give no room back: the test says when space is freed.
    pub fn set_space(&self, records: Option<u64>) {
        self.lock().space = records;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        // A poisoned lock only means another test thread panicked; the data is still usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An in-memory log on a [`MemDisk`].
pub struct MemLog {
    disk: MemDisk,
}

impl MemLog {
    /// Opens the log held by `disk` (after a crash: only its durable part).
    pub fn open(disk: &MemDisk) -> MemLog {
        disk.crash();
        MemLog { disk: disk.clone() }
    }
}

fn all(s: &DiskState) -> impl Iterator<Item = &Record> {
    s.durable.iter().chain(s.volatile.iter())
}

impl LogStore for MemLog {
    fn first_lsn(&self) -> Lsn {
        Lsn(self.disk.lock().first)
    }

    fn last_lsn(&self) -> Lsn {
        let s = self.disk.lock();
        Lsn(s.first + (s.durable.len() + s.volatile.len()) as u64 - 1)
    }

    fn last_epoch(&self) -> Option<Epoch> {
        let s = self.disk.lock();
        s.volatile.last().or(s.durable.last()).map(|r| r.epoch)
    }

    fn append(&mut self, records: &[Record]) -> Result<(), LogError> {
        let mut next = self.last_lsn().next();
        for r in records {
            if r.lsn != next {
                return Err(LogError::Misuse(format!(
                    "append of LSN {} where {} was expected",
                    r.lsn, next
                )));
            }
            next = next.next();
        }
        let mut s = self.disk.lock();
        let fits = s
            .space
            .map_or(records.len(), |n| (n as usize).min(records.len()));
        s.volatile.extend_from_slice(&records[..fits]);
        if let Some(n) = s.space.as_mut() {
            *n -= fits as u64;
        }
        if fits < records.len() {
            return Err(LogError::write(
                "append to the in-memory log",
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        let mut s = self.disk.lock();
        if s.fail_sync {
            return Err(LogError::io(
                "sync of the in-memory log",
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        let v = std::mem::take(&mut s.volatile);
        s.durable.extend(v);
        Ok(())
    }

    fn read(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        let s = self.disk.lock();
        if from.0 < s.first {
            return Err(LogError::Misuse(format!(
                "read from LSN {from}, below the first LSN {}",
                s.first
            )));
        }
        let skip = (from.0 - s.first) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for r in all(&s).skip(skip).take(max_records) {
            if !out.is_empty() && bytes + r.frame_len() > max_bytes {
                break;
            }
            bytes += r.frame_len();
            out.push(r.clone());
        }
        Ok(out)
    }

    fn truncate_from(&mut self, from: Lsn) -> Result<(), LogError> {
        let mut s = self.disk.lock();
        if from.0 < s.first {
            return Err(LogError::Misuse(format!(
                "truncation from LSN {from}, below the first LSN {}",
                s.first
            )));
        }
        let keep = (from.0 - s.first) as usize;
        let mut v: Vec<Record> = all(&s).take(keep).cloned().collect();
        // Truncation is durable on return: what remains is synced as a side effect.
        s.volatile.clear();
        s.durable = std::mem::take(&mut v);
        Ok(())
    }

    fn compact_through(&mut self, through: Lsn) -> Result<(), LogError> {
        let mut s = self.disk.lock();
        let last = s.first + s.durable.len() as u64;
        // Only durable records may be dropped.
        let upto = through.0.min(last.saturating_sub(1));
        if upto >= s.first {
            let n = (upto - s.first + 1) as usize;
            s.durable.drain(..n);
            s.first = upto + 1;
        }
        Ok(())
    }

    fn reset(&mut self, next: Lsn) -> Result<(), LogError> {
        if next.0 == 0 {
            return Err(LogError::Misuse("reset to LSN 0".into()));
        }
        let mut s = self.disk.lock();
        s.durable.clear();
        s.volatile.clear();
        s.first = next.0;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        all(&self.disk.lock()).map(|r| r.frame_len() as u64).sum()
    }
}
