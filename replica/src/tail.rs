//! The most recent records appended, in LSN order, for leader streams to send without a disk
//! read. Bounded in bytes; older records are read through the log thread.

use crate::wal::Record;
use baton_common::Lsn;
use std::collections::VecDeque;

#[derive(Default)]
pub struct Tail {
    recs: VecDeque<Record>,
    bytes: usize,
}

const TAIL_BYTES_MAX: usize = 64 << 20;

impl Tail {
    pub fn push(&mut self, r: Record) {
        self.bytes += r.frame_len();
        self.recs.push_back(r);
        while self.bytes > TAIL_BYTES_MAX {
            match self.recs.pop_front() {
                Some(old) => self.bytes -= old.frame_len(),
                None => break,
            }
        }
    }

    pub fn cut_from(&mut self, from: Lsn) {
        while self.recs.back().is_some_and(|r| r.lsn >= from) {
            if let Some(r) = self.recs.pop_back() {
                self.bytes -= r.frame_len();
            }
        }
    }

    pub fn clear(&mut self) {
        self.recs.clear();
        self.bytes = 0;
    }

    /// Records from `from`, up to the limits; `None` when `from` is older than the tail.
    pub fn slice(&self, from: Lsn, max_records: usize, max_bytes: usize) -> Option<Vec<Record>> {
        let first = self.recs.front()?.lsn;
        if from < first {
            return None;
        }
        let start = (from.0 - first.0) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for r in self.recs.iter().skip(start).take(max_records) {
            if !out.is_empty() && bytes + r.frame_len() > max_bytes {
                break;
            }
            bytes += r.frame_len();
            out.push(r.clone());
        }
        Some(out)
    }
}
