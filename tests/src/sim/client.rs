//! Simulated clients: compare-and-set registers, blind writes, deletes and reads (leader
//! and `any`) against the replica that looks like the leader, with timeouts, and the
//! operation records the history checks read.

use super::msg::{Ev, Msg, Req, Res};
use super::net::Proc;
use super::{key_of, World, CLIENT_TIMEOUT_US};
use crate::checker::{self, Op as HOp, OpKind, OpResult, Outcome};
use baton_common::directive::ReportedRole;
use baton_common::ids::Expect as VExpect;
use baton_common::{Epoch, Version};
use rand::Rng;
use std::collections::HashMap;

pub(super) struct Client {
    pub(super) busy: Option<usize>,
    pub(super) last_read: HashMap<String, Option<(String, Version)>>,
    pub(super) n: u64,
}

pub(super) struct OpRec {
    pub(super) h: HOp,
    pub(super) client: usize,
    pub(super) done: bool,
    /// An `any` read (kept out of the linearizability history).
    pub(super) any: bool,
}

impl World {
    /// Where a client sends: the replica that looks like the newest leader (what the proxy
    /// learns from the controllers), else any.
    pub(super) fn pick_target(&mut self) -> usize {
        let mut best: Option<(Epoch, usize)> = None;
        for (i, rep) in self.replicas.iter().enumerate() {
            if let Some(c) = &rep.core {
                if c.role() == ReportedRole::Leader && best.is_none_or(|(e, _)| c.epoch() > e) {
                    best = Some((c.epoch(), i));
                }
            }
        }
        match best {
            Some((_, i)) => i,
            None => self.rng.random_range(0..self.replicas.len()),
        }
    }

    pub(super) fn client_next(&mut self, c: usize) {
        if !self.clients_on || self.clients[c].busy.is_some() {
            return;
        }
        let key = key_of(self.rng.random_range(0..self.cfg.keys));
        self.clients[c].n += 1;
        let value = format!("c{c}-{}", self.clients[c].n);
        let p: f64 = self.rng.random();
        // Deletes and `any` reads take shares of the reads and blind writes (drawn only with
        // them on, so that classic runs replay their schedules).
        let q: f64 = if self.cfg.deletes_and_any {
            self.rng.random()
        } else {
            1.0
        };
        let (kind, req) = if p < 0.4 && q < 0.2 {
            // Not part of the linearizability history: checked on its own (`on_reply`).
            (OpKind::Read, Req::ReadAny(key.clone()))
        } else if p < 0.4 {
            (OpKind::Read, Req::Read(key.clone()))
        } else if p >= 0.7 && q < 0.3 {
            // Conditional on the version last seen (a delete "if absent" is not a thing: the
            // replica answers 404 where the condition would hold).
            let expect = match self.clients[c].last_read.get(&key).cloned().flatten() {
                Some((v, ver)) if q < 0.1 => {
                    Some((checker::Expect::Value(v), VExpect::Version(ver)))
                }
                _ => None,
            };
            (
                OpKind::Delete {
                    expect: expect.as_ref().map(|(h, _)| h.clone()),
                },
                Req::Delete {
                    key: key.clone(),
                    expect: expect.map(|(_, v)| v),
                },
            )
        } else if p < 0.7 {
            let last = self.clients[c].last_read.get(&key).cloned().flatten();
            let (hx, vx) = match last {
                Some((v, ver)) => (checker::Expect::Value(v), VExpect::Version(ver)),
                None => (checker::Expect::Absent, VExpect::Absent),
            };
            (
                OpKind::Cas {
                    expect: hx,
                    value: value.clone(),
                },
                Req::Put {
                    key: key.clone(),
                    value,
                    expect: Some(vx),
                },
            )
        } else {
            (
                OpKind::Write {
                    value: value.clone(),
                },
                Req::Put {
                    key: key.clone(),
                    value,
                    expect: None,
                },
            )
        };
        let any = matches!(req, Req::ReadAny(_));
        let op = self.ops.len();
        self.ops.push(OpRec {
            h: HOp {
                id: op as u64,
                key,
                invoke: self.now,
                complete: None,
                kind,
                outcome: Outcome::Unknown,
            },
            client: c,
            done: false,
            any,
        });
        self.clients[c].busy = Some(op);
        let target = if any {
            self.rng.random_range(0..self.replicas.len())
        } else {
            self.pick_target()
        };
        self.send(
            Proc::Client(c),
            Proc::Replica(target),
            None,
            Msg::Request { op, req },
        );
        let timeout = if self.cfg.bounds {
            super::bounds::BOUNDS_CLIENT_TIMEOUT_US
        } else {
            CLIENT_TIMEOUT_US
        };
        self.after_us(timeout, Ev::ClientTimeout { op });
    }

    pub(super) fn finish_op(&mut self, op: usize, outcome: Outcome, backoff: bool) {
        let rec = &mut self.ops[op];
        if rec.done {
            return;
        }
        rec.done = true;
        rec.h.complete = Some(self.now);
        rec.h.outcome = outcome;
        let c = rec.client;
        self.clients[c].busy = None;
        let think = if self.cfg.idle {
            self.rng.random_range(500_000..2_000_000)
        } else if backoff {
            self.rng.random_range(20_000..60_000)
        } else {
            self.rng.random_range(500..5_000)
        };
        self.after_us(think, Ev::ClientNext(c));
    }

    pub(super) fn client_timeout(&mut self, op: usize) {
        if self.ops[op].done {
            return;
        }
        let outcome = match self.ops[op].h.kind {
            OpKind::Read => Outcome::Failed,
            _ => Outcome::Unknown,
        };
        self.finish_op(op, outcome, true);
    }

    pub(super) fn on_reply(&mut self, op: usize, res: Res) {
        if self.ops[op].done {
            return;
        }
        let key = self.ops[op].h.key.clone();
        let c = self.ops[op].client;
        let is_read = matches!(self.ops[op].h.kind, OpKind::Read);
        match res {
            Res::Read(v) => {
                self.clients[c].last_read.insert(key, v.clone());
                self.finish_op(op, Outcome::Ok(OpResult::Read(v.map(|(s, _)| s))), false);
            }
            Res::ReadAny(v) => {
                // Not linearizable by design; but what it returns was written at that version,
                // and the key's contents there are what the leader wrote.
                if let Some((val, ver)) = &v {
                    let k = (ver.epoch.0, ver.lsn.0);
                    let want = format!("put {key}={val}");
                    if self.written.get(&k) != Some(&want) {
                        let got = self.written.get(&k).cloned();
                        self.violation(format!(
                            "an `any` read of {key} returned {val:?} at ({}, {}), but that record is {got:?}",
                            k.0, k.1
                        ));
                    }
                }
                self.finish_op(op, Outcome::Ok(OpResult::Read(v.map(|(s, _)| s))), false);
            }
            Res::Written(ver) if matches!(self.ops[op].h.kind, OpKind::Delete { .. }) => {
                let k = (ver.epoch.0, ver.lsn.0);
                if self.acked.contains_key(&k)
                    || self.acked_deletes.get(&k).is_some_and(|k2| *k2 != key)
                {
                    self.violation(format!(
                        "two acknowledged writes at ({}, {}), one a delete of {key}",
                        k.0, k.1
                    ));
                }
                self.acked_deletes.insert(k, key.clone());
                self.clients[c].last_read.insert(key, None);
                self.finish_op(op, Outcome::Ok(OpResult::Applied(true)), false);
            }
            Res::Written(ver) => {
                let value = match &self.ops[op].h.kind {
                    OpKind::Write { value } | OpKind::Cas { value, .. } => value.clone(),
                    _ => String::new(),
                };
                let k = (ver.epoch.0, ver.lsn.0);
                if self.acked_deletes.contains_key(&k) {
                    self.violation(format!(
                        "two acknowledged writes at ({}, {}), one a delete",
                        k.0, k.1
                    ));
                }
                if let Some((k2, v2)) = self.acked.get(&k) {
                    if (k2, v2) != (&key, &value) {
                        let msg = format!(
                            "two acknowledged writes at ({}, {}): {k2}={v2} and {key}={value}",
                            k.0, k.1
                        );
                        self.violation(msg);
                    }
                }
                self.acked.insert(k, (key.clone(), value.clone()));
                self.clients[c].last_read.insert(key, Some((value, ver)));
                self.finish_op(op, Outcome::Ok(OpResult::Applied(true)), false);
            }
            Res::Precondition => {
                self.clients[c].last_read.remove(&key);
                self.finish_op(op, Outcome::Ok(OpResult::Applied(false)), false)
            }
            Res::NotApplied(why) => {
                if self.last_refusal != why {
                    self.note(format!("op {op} not applied: {why}"));
                    self.last_refusal = why;
                }
                self.finish_op(op, Outcome::Failed, true)
            }
            Res::Unknown(why) => {
                self.note(format!("op {op} outcome unknown: {why}"));
                let o = if is_read {
                    Outcome::Failed
                } else {
                    Outcome::Unknown
                };
                self.finish_op(op, o, true)
            }
        }
    }
}
