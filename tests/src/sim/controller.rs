//! The simulated controller process around its [`ClusterCore`]: the etcd session (a lease
//! kept alive, trusted until keepalive-sent + TTL·(1−ρ)), the election (no campaign within the
//! back-off after a handover), the member counts published under the lease, observing etcd,
//! the core's tick and its writes; controller crash and restart.

use super::msg::{Ev, Msg};
use super::net::{Clock, Proc};
use super::{World, DRIFT, ELECTION_TTL_MS};
use baton_common::directive::{Directive, Heartbeat, Role};
use baton_controller::core::{ClusterCore, Now, Observed};

pub(super) struct Ctl {
    pub(super) clock: Clock,
    pub(super) up: bool,
    pub(super) inc: u64,
    pub(super) paused_until: u64,
    pub(super) core: ClusterCore,
    pub(super) lease: Option<i64>,
    pub(super) valid_until: u64,
    pub(super) next_keepalive: u64,
    /// Each replica's newest heartbeat that got an active answer, held as the runtime holds a
    /// long-polled one (`api.rs` `heartbeat`): when the answer would change (a new state rev
    /// or term), it is answered again at once, under the same seq, then forgotten.
    pub(super) held: std::collections::BTreeMap<usize, Held>,
}

/// A heartbeat held by the simulated controller.
pub(super) struct Held {
    pub(super) hb: Heartbeat,
    pub(super) inc: u64,
    /// The (rev, term) of the answer it got.
    pub(super) answered: (u64, u64),
    /// When it arrived, on the controller's clock: the runtime holds it up to the heartbeat
    /// interval the replica asks for, then answers it anyway (the simulation answered at once).
    pub(super) at_ms: u64,
}

impl World {
    pub(super) fn ctl_loop(&mut self, c: usize) {
        self.etcd.expire(self.now);
        let n = self.cnow(c);
        let ttl_us = ELECTION_TTL_MS * 1000;
        let trust = (ELECTION_TTL_MS as f64 * (1.0 - DRIFT)) as u64;
        let reach = self.etcd_reachable(c);
        // The session: an etcd lease kept alive, trusted until keepalive-sent + TTL·(1−ρ).
        if reach && !self.etcd_timeout() {
            match self.ctls[c].lease {
                None => {
                    let id = self.etcd.next_lease;
                    self.etcd.next_lease += 1;
                    self.etcd.leases.insert(id, self.now + ttl_us);
                    let ctl = &mut self.ctls[c];
                    ctl.lease = Some(id);
                    ctl.valid_until = n.ms + trust;
                    ctl.next_keepalive = n.ms + ELECTION_TTL_MS / 4;
                }
                // A keepalive (retried every loop while it fails, as the runtime does): etcd
                // either renews the lease or says it is gone; only then is a new one granted.
                Some(id) if n.ms >= self.ctls[c].next_keepalive => {
                    if let Some(exp) = self.etcd.leases.get_mut(&id) {
                        *exp = self.now + ttl_us;
                        let ctl = &mut self.ctls[c];
                        ctl.valid_until = n.ms + trust;
                        ctl.next_keepalive = n.ms + ELECTION_TTL_MS / 4;
                    } else {
                        self.ctls[c].lease = None;
                    }
                }
                _ => {}
            }
        }
        let ctl = &mut self.ctls[c];
        ctl.core.set_session(ctl.lease, ctl.valid_until);
        let lease_ok = ctl.lease.is_some() && n.ms < ctl.valid_until;
        let my_addr = format!("c{}:8000", c + 1);
        if ctl.lease.is_none() {
            if self.ctls[c].core.is_active() {
                self.note(format!("c{} standby (no etcd lease)", c + 1));
            }
            self.ctls[c].core.on_election(n, None, None);
        } else if !lease_ok {
            // The lease is not trusted now but may be alive: the core stops acting (its window
            // lapsed) and keeps its term until a keepalive says more.
        } else if reach && !self.etcd_timeout() {
            let lease = self.ctls[c].lease.expect("lease");
            // Within the back-off after a handover a controller only looks.
            if self.etcd.election.is_none() && self.ctls[c].core.may_campaign(n) {
                self.etcd.rev += 1;
                self.etcd.election = Some((c, lease, self.etcd.rev));
            }
            match self.etcd.election {
                Some((owner, olease, cr)) => {
                    let term = (owner == c && olease == lease).then_some(cr);
                    if term.is_some() && !self.ctls[c].core.is_active() {
                        self.note(format!("c{} active, term {cr}", c + 1));
                        self.imp.activations += 1;
                    }
                    let active = format!("c{}:8000", owner + 1);
                    self.ctls[c].core.on_election(
                        n,
                        term,
                        Some(if term.is_some() { my_addr } else { active }),
                    );
                }
                None => self.ctls[c].core.on_election(n, None, None),
            }
            self.etcd
                .hears
                .insert(c, (self.ctls[c].core.published_hears(n), lease));
            // The other controller hearing the most members (the lowest index on a tie).
            let best = self
                .etcd
                .hears
                .iter()
                .filter(|(k, _)| **k != c)
                .map(|(k, (h, _))| (*h, *k))
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let core = &mut self.ctls[c].core;
            core.standby_hears = best.map_or(0, |b| b.0);
            core.standby_id = best.map(|b| format!("c{}", b.1 + 1));
        }
        if self.etcd_reachable(c) && !self.etcd_timeout() {
            let observed = match &self.etcd.state {
                None => Observed::Absent,
                Some((s, rev)) => Observed::Present {
                    state: s.clone(),
                    rev: *rev,
                },
            };
            let j = self.etcd.journal.clone();
            self.ctls[c].core.on_observed(n, observed, j);
        }
        let n = self.cnow(c);
        let core = &mut self.ctls[c].core;
        let w = if core.is_active() && core.observed == Observed::Absent {
            core.init(n).ok()
        } else {
            core.tick(n)
        };
        if let Some(w) = w {
            self.execute(c, w);
        }
        self.answer_held(c);
    }

    /// Prompt delivery (DESIGN.md §5): a held heartbeat whose answer changed (the state's rev or
    /// the controller's term) is answered now, as the runtime's `changed` notification does.
    pub(super) fn answer_held(&mut self, c: usize) {
        if !self.ctls[c].up || !self.ctls[c].core.is_active() {
            self.ctls[c].held.clear();
            return;
        }
        let n = self.cnow(c);
        // Past its hold a heartbeat was answered (the runtime's timeout answer is the one the
        // simulation gave at once).
        self.ctls[c]
            .held
            .retain(|_, h| n.ms.saturating_sub(h.at_ms) < super::HEARTBEAT_MS);
        // `answer` records a grant to a leader: it is asked only when the answer changed, as
        // the runtime asks only on a change notification.
        let core = &self.ctls[c].core;
        let now_at = (
            match &core.observed {
                Observed::Present { rev, .. } => *rev,
                _ => 0,
            },
            core.term().unwrap_or(0),
        );
        let rs: Vec<usize> = self.ctls[c]
            .held
            .iter()
            .filter(|(_, h)| h.answered != now_at)
            .map(|(r, _)| *r)
            .collect();
        for r in rs {
            let h = &self.ctls[c].held[&r];
            let hb = h.hb.clone();
            let (inc, answered) = (h.inc, h.answered);
            let d = self.ctls[c].core.answer(n, &hb);
            if d.active && (d.rev, d.controller_term) != answered {
                self.ctls[c].held.remove(&r);
                self.send(
                    Proc::Controller(c),
                    Proc::Replica(r),
                    Some(inc),
                    Msg::Directive(Box::new(d)),
                );
            }
        }
    }

    /// Remembers a replica's heartbeat answered with `d` as held (only an active answer that
    /// does not revoke a leader's lease is held, as in the runtime).
    pub(super) fn hold_heartbeat(
        &mut self,
        c: usize,
        r: usize,
        hb: Heartbeat,
        inc: u64,
        d: &Directive,
    ) {
        let revoked = d.role == Some(Role::Leader) && d.lease_ms == 0;
        if d.active && !revoked {
            let at_ms = self.cnow(c).ms;
            self.ctls[c].held.insert(
                r,
                Held {
                    hb,
                    inc,
                    answered: (d.rev, d.controller_term),
                    at_ms,
                },
            );
        } else {
            self.ctls[c].held.remove(&r);
        }
    }

    pub(super) fn crash_controller(&mut self, c: usize) {
        self.note(format!("c{} crashes", c + 1));
        self.forget_dup();
        let cfg = self.ctls[c].core.cfg.clone();
        let ctl = &mut self.ctls[c];
        ctl.up = false;
        ctl.inc += 1;
        ctl.core = ClusterCore::new(cfg);
        ctl.lease = None;
        ctl.valid_until = 0;
        ctl.paused_until = 0;
        ctl.held.clear();
    }

    pub(super) fn start_controller(&mut self, c: usize) {
        self.note(format!("c{} starts", c + 1));
        let ctl = &mut self.ctls[c];
        ctl.up = true;
        let inc = ctl.inc;
        self.after_us(1000, Ev::CtlTimer { c, inc });
    }

    pub(super) fn active_controller(&self) -> Option<usize> {
        let now = self.now;
        self.ctls.iter().position(|c| {
            c.up && c.core.active_at(Now {
                ms: c.clock.ms(now),
                unix_ms: 0,
            })
        })
    }
}
