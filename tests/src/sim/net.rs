//! The simulated world's plumbing: process addresses, the event queue (time in microseconds,
//! ties broken by insertion order, so a seed replays exactly), per-process clocks with bounded
//! rate drift, and the network (delay, loss, one-way cuts, FIFO streams that break on loss):
//! sending a message and delivering it to its process.

use super::msg::{Ev, Msg};
use super::World;
use baton_common::directive::Heartbeat;
use rand::Rng;
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

impl World {
    pub(super) fn delay(&mut self) -> u64 {
        let base = self.rng.random_range(50..1500);
        let extra = if self.net.extra_delay_us > 0 {
            self.rng.random_range(0..self.net.extra_delay_us)
        } else {
            0
        };
        base + extra
    }

    pub(super) fn send(&mut self, from: Proc, to: Proc, to_inc: Option<u64>, msg: Msg) {
        if self.net.is_cut(from, to) || (self.net.loss > 0.0 && self.rng.random_bool(self.net.loss))
        {
            if let Msg::Repl { conn, .. } = &msg {
                self.net.broken.insert(*conn);
            }
            return;
        }
        if self.net.dup > 0.0
            && matches!(msg, Msg::Heartbeat(..) | Msg::Directive(_))
            && self.rng.random_bool(self.net.dup)
        {
            // A duplicate, delivered in any order relative to the original.
            let at = self.now + self.delay() + self.delay();
            self.q.push(
                at,
                Ev::Deliver {
                    to,
                    from,
                    to_inc,
                    msg: msg.clone(),
                },
            );
        }
        let mut at = self.now + self.delay();
        if let Msg::Repl { conn, .. } = &msg {
            if self.net.broken.contains(conn) {
                return;
            }
            let last = self.net.last_delivery.entry(*conn).or_insert(0);
            at = at.max(*last);
            *last = at;
        }
        self.q.push(
            at,
            Ev::Deliver {
                to,
                from,
                to_inc,
                msg,
            },
        );
    }

    pub(super) fn deliver(&mut self, to: Proc, from: Proc, to_inc: Option<u64>, msg: Msg) {
        match to {
            Proc::Replica(r) => {
                if !self.replicas[r].up || to_inc.is_some_and(|i| i != self.replicas[r].inc) {
                    return;
                }
                match msg {
                    Msg::Directive(d) => self.on_directive(r, *d),
                    Msg::Repl { conn, m } => {
                        if self.net.broken.contains(&conn) {
                            return;
                        }
                        let Proc::Replica(f) = from else { return };
                        match self.conns.get(&conn) {
                            Some((fo, _)) if *fo == r => self.on_follower_msg(r, conn, *m),
                            Some(_) => self.on_leader_msg(r, f, conn, *m),
                            None => {}
                        }
                    }
                    Msg::Request { op, req } => self.on_request(r, op, req),
                    _ => {}
                }
            }
            Proc::Controller(c) => {
                if !self.ctls[c].up {
                    return;
                }
                if let Msg::Heartbeat(hb, inc) = msg {
                    if matches!(from, Proc::Replica(_) | Proc::Dup) {
                        let n = self.cnow(c);
                        let key = |h: &Heartbeat| {
                            (h.boot_id, h.epoch, h.role, h.lease_left_ms == Some(0))
                        };
                        let before = self.ctls[c].core.heard().get(&hb.id).map(|h| key(&h.hb));
                        let wake = before != Some(key(&hb));
                        let d = self.ctls[c].core.on_heartbeat(n, (*hb).clone());
                        if let Proc::Replica(r) = from {
                            self.hold_heartbeat(c, r, *hb, inc, &d);
                        }
                        self.send(
                            Proc::Controller(c),
                            from,
                            Some(inc),
                            Msg::Directive(Box::new(d)),
                        );
                        if wake {
                            // As the runtime's `wake`: a new role, epoch or lease state may
                            // make a promotion or switchover step due now.
                            let cinc = self.ctls[c].inc;
                            self.after_us(1, Ev::CtlWake { c, inc: cinc });
                        }
                    }
                }
            }
            Proc::Client(_) => {
                if let Msg::Reply { op, res } = msg {
                    self.on_reply(op, res);
                }
            }
            Proc::Dup => {
                if let Msg::Directive(d) = msg {
                    self.dup_directive(to_inc, *d);
                }
            }
            Proc::Etcd => {}
        }
    }
}
