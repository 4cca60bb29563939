//! The simulated world's plumbing: process addresses, the event queue (time in microseconds,
//! ties broken by insertion order, so a seed replays exactly), per-process clocks with bounded
//! rate drift, and the network (delay, loss, one-way cuts, FIFO streams that break on loss).

use std::collections::{BTreeMap, HashMap, HashSet};

/// A process of the simulated deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proc {
    Replica(usize),
    Controller(usize),
    Etcd,
    Client(usize),
    /// The second process of a `dup-id` episode (`impostor.rs`).
    Dup,
}

/// The event queue: `(time µs, seq) → event`.
pub struct Queue<E> {
    q: BTreeMap<(u64, u64), E>,
    seq: u64,
}

impl<E> Queue<E> {
    pub fn new() -> Self {
        Queue {
            q: BTreeMap::new(),
            seq: 0,
        }
    }
    pub fn push(&mut self, at_us: u64, e: E) {
        self.seq += 1;
        self.q.insert((at_us, self.seq), e);
    }
    pub fn pop(&mut self) -> Option<(u64, E)> {
        self.q.pop_first().map(|((t, _), e)| (t, e))
    }
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// A machine clock (CLOCK_BOOTTIME of one host): `offset + t·rate`, in milliseconds. The rate
/// stays within the drift bound; restarts of the process keep the machine's clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub offset_ms: u64,
    pub rate: f64,
}

impl Clock {
    pub fn ms(&self, global_us: u64) -> u64 {
        self.offset_ms + (global_us as f64 * self.rate / 1000.0) as u64
    }
}

/// Network conditions between processes.
#[derive(Default)]
pub struct Net {
    /// One-way cuts: messages from `.0` to `.1` are dropped.
    pub cut: HashSet<(Proc, Proc)>,
    /// Probability that a datagram-like message (heartbeat, directive, client request or
    /// reply) is lost; on a stream the loss breaks the connection.
    pub loss: f64,
    /// Probability that a heartbeat or a directive is delivered twice.
    pub dup: f64,
    /// Extra delay range (µs) added to every message while set.
    pub extra_delay_us: u64,
    /// Streams that broke (a lost message or a cut): nothing more is delivered on them.
    pub broken: HashSet<u64>,
    /// Last delivery time per stream, to keep streams FIFO.
    pub last_delivery: HashMap<u64, u64>,
}

impl Net {
    pub fn is_cut(&self, from: Proc, to: Proc) -> bool {
        self.cut.contains(&(from, to))
    }
    pub fn heal(&mut self) {
        self.cut.clear();
        self.loss = 0.0;
        self.dup = 0.0;
        self.extra_delay_us = 0;
    }
}
