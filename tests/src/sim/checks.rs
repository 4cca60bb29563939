//! The checks: invariants after every event (one leader per epoch, commit and lease rules),
//! convergence after healing, and at the end the history checks (linearizability, lost
//! writes, accepted losses of forced failovers) that fill the [`Report`]; the idle-run
//! checks.

use super::{key_of, rec_content, Report, World, LEASE_MS};
use crate::checker::{self, Op as HOp, OpKind, OpResult, Outcome};
use crate::history::{self, AckedWrite, Stored};
use baton_common::directive::{Mode, ReportedRole};
use baton_common::{DataId, Epoch, Lsn, NodeId};
use baton_replica::core::{Consistency, Core};
use baton_replica::wal::Op as WOp;
use std::collections::BTreeMap;

impl World {
    /// Whether some replica can serve leader reads now.
    pub(super) fn someone_serves(&self) -> bool {
        self.replicas.iter().any(|r| {
            r.core.as_ref().is_some_and(|c| {
                c.read(r.clock.ms(self.now), b"", Consistency::Leader)
                    .is_ok()
            })
        })
    }

    pub(super) fn leader_replica(&self) -> Option<usize> {
        let mut best: Option<(Epoch, usize)> = None;
        for (i, rep) in self.replicas.iter().enumerate() {
            if let Some(c) = &rep.core {
                if c.role() == ReportedRole::Leader && best.is_none_or(|(e, _)| c.epoch() > e) {
                    best = Some((c.epoch(), i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// A promotion may wait for ever, by design (DESIGN §5 step 3): no recorded sync member
    /// nor the replaced leader reports its data any more (a leader that ran degraded, with an
    /// empty sync set, lost its disk). Only an operator's `failover --to … force` moves on,
    /// accepting the loss; the simulation stops there instead and keeps every check that
    /// still applies.
    pub(super) fn blocked_by_design(&self) -> bool {
        if self.etcd_restored && !self.someone_serves() {
            // An etcd that went back in time is refused (epochs never go back) until an
            // operator restores it or runs recovery.
            return true;
        }
        let Some((s, _)) = &self.etcd.state else {
            return false;
        };
        if s.phase != baton_controller::state::Phase::Promoting {
            return false;
        }
        let mut holders: Vec<(NodeId, DataId)> = s
            .sync_set
            .iter()
            .map(|m| (m.id.clone(), m.data_id))
            .collect();
        if let Some(p) = &s.prev_leader {
            holders.push((p.id.clone(), p.data_id));
        }
        !self.replicas.iter().any(|r| {
            r.core.as_ref().is_some_and(|c| {
                !c.unclean()
                    && holders
                        .iter()
                        .any(|(id, d)| *id == r.id && *d == c.data_id())
            })
        })
    }

    pub(super) fn check_step(&mut self) {
        let mut serving = Vec::new();
        let mut errs = Vec::new();
        for (i, rep) in self.replicas.iter_mut().enumerate() {
            let Some(core) = &rep.core else { continue };
            if let Err(e) = core.check_invariants() {
                errs.push(format!("r{}: invariant: {e}", i + 1));
            }
            if core.epoch() < rep.max_epoch {
                errs.push(format!(
                    "r{}: epoch went back from {} to {}",
                    i + 1,
                    rep.max_epoch,
                    core.epoch()
                ));
            }
            rep.max_epoch = rep.max_epoch.max(core.epoch());
            let now = rep.clock.ms(self.now);
            if rep.paused_until <= self.now
                && core.role() == ReportedRole::Leader
                && core.read(now, b"", Consistency::Leader).is_ok()
            {
                serving.push((i, core.epoch(), core.is_degraded()));
            }
        }
        self.degraded_now = serving.iter().any(|s| s.2);
        if serving.len() > 1 {
            errs.push(format!(
                "two replicas serve as leader at once: {}",
                serving
                    .iter()
                    .map(|(i, e, _)| format!("r{} (epoch {e})", i + 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for e in errs {
            self.violation(e);
        }
    }

    pub(super) fn converged(&self) -> Result<(), String> {
        let mut seen: Option<((Epoch, Lsn), u128)> = None;
        for (i, rep) in self.replicas.iter().enumerate() {
            let Some(c) = &rep.core else {
                return Err(format!("r{} is down", i + 1));
            };
            if c.applied() != c.log_end().1 {
                return Err(format!(
                    "r{} applied {} of {}",
                    i + 1,
                    c.applied(),
                    c.log_end().1
                ));
            }
            let me = (c.log_end(), c.state().digest());
            match seen {
                None => seen = Some(me),
                Some(s) if s != me => {
                    return Err(format!(
                        "r{} ends at {:?} with digest {:x}, another at {:?} with {:x}",
                        i + 1,
                        me.0,
                        me.1,
                        s.0,
                        s.1
                    ))
                }
                _ => {}
            }
        }
        if self.leader_replica().is_none() {
            return Err("no leader".into());
        }
        Ok(())
    }

    /// Every process's state, for a failing run's report.
    pub(super) fn describe(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (i, rep) in self.replicas.iter().enumerate() {
            match &rep.core {
                None => v.push(format!("r{}: down", i + 1)),
                Some(c) => {
                    let hb = c.heartbeat(rep.clock.ms(self.now), 0);
                    v.push(format!(
                        "r{}: role {:?} epoch {} log_end {:?} flushed {} commit {} applied {} unclean {} rev {} stream {:?} serving {} rollbacks {}",
                        i + 1,
                        c.role(),
                        c.epoch(),
                        c.log_end(),
                        c.flushed(),
                        c.commit(),
                        c.applied(),
                        c.unclean(),
                        c.applied_rev(),
                        rep.stream.as_ref().map(|s| (s.leader + 1, s.sid)),
                        rep.serving.len(),
                        rep.rollbacks.len(),
                    ));
                    v.push(format!(
                        "    heartbeat: {}",
                        serde_json::to_string(&hb).unwrap_or_default()
                    ));
                }
            }
        }
        for (i, c) in self.ctls.iter().enumerate() {
            v.push(format!(
                "c{}: up {} active {} term {:?}",
                i + 1,
                c.up,
                c.core.is_active(),
                c.core.term()
            ));
        }
        if let Some((s, rev)) = &self.etcd.state {
            v.push(format!(
                "etcd state rev {rev}: {}",
                serde_json::to_string(s).unwrap_or_default()
            ));
        }
        for e in self.etcd.journal.iter().rev().take(12).rev() {
            v.push(format!("journal: {} {} (x{})", e.kind, e.message, e.count));
        }
        v
    }

    pub(super) fn finish(mut self) -> Report {
        self.report.blocked = self.blocked;
        if self.cfg.bounds {
            self.check_bounds(self.cfg.duration_ms * 1000);
        }
        self.report.sim_us = self.now;
        if self.blocked {
            self.note("blocked by design: no sync member nor the old leader holds the data".into());
        } else if let Err(e) = self.converged() {
            self.violation(format!("not converged after healing: {e}"));
            self.report.trace = self.trace.iter().cloned().collect();
        }

        // Final reads of every key from the leader, after every client operation ended.
        let mut history: Vec<HOp> = self
            .ops
            .iter()
            .filter(|o| !o.any && o.h.invoke >= self.history_from)
            .map(|o| o.h.clone())
            .collect();
        let mut accepted_loss = 0;

        if let Some(l) = self.leader_replica().filter(|_| !self.blocked) {
            let now = self.rms(l);
            for k in 0..self.cfg.keys {
                let key = key_of(k);
                let core = self.replicas[l].core.as_ref().expect("up");
                match core.read(now, key.as_bytes(), Consistency::Leader) {
                    Ok(ok) => history.push(HOp {
                        id: history.len() as u64 + 1_000_000,
                        key: key.clone(),
                        invoke: self.now + 1,
                        complete: Some(self.now + 2),
                        kind: OpKind::Read,
                        outcome: Outcome::Ok(OpResult::Read(
                            ok.entry
                                .map(|e| String::from_utf8_lossy(&e.value).into_owned()),
                        )),
                    }),
                    Err(e) => self.violation(format!("final read of {key} refused: {e:?}")),
                }
            }
            // The shared history checkers (tiers 1 and 3): nothing acknowledged is lost from
            // the final state, one writer per (epoch, LSN), every acknowledged write at its
            // place in the leader's log, and the replicas' logs agree record by record.
            let all_acked: Vec<AckedWrite> = self
                .acked
                .iter()
                .map(|((e, l), (k, v))| AckedWrite {
                    key: k.clone(),
                    value: v.clone(),
                    epoch: *e,
                    lsn: *l,
                })
                .collect();
            let core = self.replicas[l].core.as_ref().expect("up");
            // In the final leader's lineage: its epoch history says the record at that LSN
            // is of that epoch, so it is that record (I1).
            let in_lineage = |e: u64, lsn: u64| core.epoch_of(Lsn(lsn)) == Some(Epoch(e));
            // Acknowledged writes (and deletes) that a forced failover may have lost with the
            // operator's consent: acknowledged in an epoch below the last forced one.
            let forced = self.forced_epoch;
            let mut lost_here = Vec::new();
            for (&(e, lsn), what) in self
                .acked
                .iter()
                .map(|(k, (key, v))| (k, format!("{key}={v}")))
                .chain(
                    self.acked_deletes
                        .iter()
                        .map(|(k, key)| (k, format!("delete of {key}"))),
                )
            {
                if !in_lineage(e, lsn) {
                    if e < forced {
                        accepted_loss += 1;
                    } else {
                        lost_here.push(format!(
                            "acknowledged {what} at ({e}, {lsn}) is not in the final leader's log"
                        ));
                    }
                }
            }
            lost_here.sort();
            let acked: Vec<AckedWrite> = all_acked
                .iter()
                .filter(|w| w.epoch >= forced)
                .cloned()
                .collect();
            let mut final_state: BTreeMap<String, Stored> = core
                .state()
                .iter()
                .map(|(k, e)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        Stored {
                            value: String::from_utf8_lossy(&e.value).into_owned(),
                            epoch: e.version.epoch.0,
                            lsn: e.version.lsn.0,
                        },
                    )
                })
                .collect();
            // A deleted key holds a tombstone at the version of the delete that removed it:
            // the newest delete of it in the leader's lineage (what `check_lost` compares).
            for ((e, lsn), content) in &self.written {
                let Some(key) = content.strip_prefix("del ") else {
                    continue;
                };
                if final_state.get(key).is_some_and(|s| s.value != "<deleted>")
                    || !in_lineage(*e, *lsn)
                {
                    continue;
                }
                let t = final_state.entry(key.to_string()).or_insert(Stored {
                    value: "<deleted>".into(),
                    epoch: 0,
                    lsn: 0,
                });
                if (*e, *lsn) > (t.epoch, t.lsn) {
                    (t.epoch, t.lsn) = (*e, *lsn);
                }
            }
            let puts: BTreeMap<(u64, u64), (String, String)> = self.replicas[l]
                .log
                .iter()
                .filter_map(|r| match &r.op {
                    WOp::Put { key, value } => Some((
                        (r.epoch.0, r.lsn.0),
                        (
                            String::from_utf8_lossy(key).into_owned(),
                            String::from_utf8_lossy(value).into_owned(),
                        ),
                    )),
                    _ => None,
                })
                .collect();
            let logs: Vec<(String, Vec<history::LogEntry>)> = self
                .replicas
                .iter()
                .map(|r| {
                    let entries = r
                        .log
                        .iter()
                        .map(|rec| {
                            let h = xxhash_rust::xxh3::xxh3_64(rec_content(rec).as_bytes());
                            (rec.epoch.0, rec.lsn.0, h)
                        })
                        .collect();
                    (r.id.0.clone(), entries)
                })
                .collect();
            let mut found = history::check_one_writer_per_epoch(&all_acked);
            found.extend(history::check_logs_agree(&logs));
            let lost = history::check_lost(&acked, &final_state);
            let first = self.replicas[l].log_start;
            let not_in_log =
                history::check_acked_in_log(&acked, &self.replicas[l].id.0, &puts, first);
            if self.cfg.mode == Mode::Async {
                self.report.lost_async = lost.len() as u64;
            } else {
                found.extend(lost);
                found.extend(not_in_log);
                found.extend(lost_here);
                self.report.lost_accepted = accepted_loss;
            }
            for f in found.into_iter().take(10) {
                self.violation(f);
            }
        }
        history.extend(self.forced_resets());
        if let Ok(k) = std::env::var("SIMDUMP") {
            let mut h: Vec<&HOp> = history.iter().filter(|o| o.key == k).collect();
            h.sort_by_key(|o| o.invoke);
            for o in h {
                eprintln!(
                    "{} [{} {:?}] {:?} {:?}",
                    o.id,
                    o.invoke / 1000,
                    o.complete.map(|c| c / 1000),
                    o.kind,
                    o.outcome
                );
            }
        }
        match checker::check_history(&history) {
            Ok(()) => {}
            Err(v) if v.is_inconclusive() => {}
            Err(_) if self.cfg.mode == Mode::Async => {}
            Err(v) => self.violation(format!("not linearizable: {v}")),
        }
        if self.cfg.idle {
            self.check_idle();
        }
        self.check_impostor_journal();
        self.check_refusal_floods();
        for o in &self.ops {
            self.report.ops += 1;
            match o.h.outcome {
                Outcome::Ok(_) => self.report.ok += 1,
                Outcome::Failed => self.report.failed += 1,
                Outcome::Unknown => self.report.unknown += 1,
            }
        }
        if !self.report.violations.is_empty() {
            let d = self.describe();
            self.report.trace.extend(d);
        } else if self.cfg.keep_trace {
            self.report.trace = self.trace.iter().cloned().collect();
        }
        self.report.epochs = self
            .replicas
            .iter()
            .filter_map(|r| r.core.as_ref().map(|c| c.epoch().0))
            .max()
            .unwrap_or(0);
        self.report
    }

    /// A forced promotion (to a member that may lack acknowledged writes) resets every key to
    /// what its new leader's log holds below its leader-start, within a lease of it (the old
    /// leader may serve what it had until its lease ends). A forced epoch whose leader-start
    /// never committed served nothing; what it made others cut shows in the lineage that
    /// survives: the values of the final leader's log just below the first leader-start at or
    /// above that epoch that it holds, reset to somewhere up to a lease after that one.
    pub(super) fn forced_resets(&self) -> Vec<HOp> {
        let final_core = self
            .leader_replica()
            .filter(|_| !self.blocked)
            .and_then(|l| self.replicas[l].core.as_ref());
        let mut out = Vec::new();
        for (&e, &recorded) in &self.forced_epochs {
            let Some((started, own)) = self.start_states.get(&e) else {
                continue;
            };
            // Its leader may append its leader-start late (it waits out the old lease, or it
            // was paused): the reset may come as soon as the promotion is recorded.
            let at = &recorded.min(*started);
            if *at < self.history_from {
                continue;
            }
            // Served: its own log decides (a later forced promotion may undo it in turn).
            let held = final_core
                .filter(|_| !self.committed_starts.contains(&e))
                .and_then(|core| {
                    let mut starts: Vec<(&u64, &(String, u64))> =
                        self.epoch_starts.iter().filter(|(g, _)| **g >= e).collect();
                    starts.sort();
                    starts
                        .into_iter()
                        .find(|(g, (_, lsn))| core.epoch_of(Lsn(*lsn)) == Some(Epoch(**g)))
                        .map(|(g, (_, lsn))| (core, *g, *lsn))
                });
            let (values, until) = match held {
                Some((core, g, lsn)) => {
                    let until = self.start_states.get(&g).map_or(*started, |s| s.0);
                    (self.lineage_values(core, Lsn(lsn)), until)
                }
                None => (own.clone(), *started),
            };
            for (k, v) in values.into_iter().enumerate() {
                out.push(HOp {
                    id: 2_000_000 + e * 100 + k as u64,
                    key: key_of(k),
                    invoke: *at,
                    complete: Some(until.max(*at) + 2 * LEASE_MS * 1000),
                    kind: OpKind::Reset { value: v },
                    outcome: Outcome::Ok(OpResult::Applied(true)),
                });
            }
        }
        out
    }

    /// What every key holds in `core`'s lineage just below `lsn` (by its epoch history and
    /// the records written anywhere).
    pub(super) fn lineage_values(&self, core: &Core, lsn: Lsn) -> Vec<Option<String>> {
        let mut v: Vec<Option<Option<String>>> = vec![None; self.cfg.keys];
        let mut at = lsn.0;
        while at > 1 && v.iter().any(Option::is_none) {
            at -= 1;
            let Some(e) = core.epoch_of(Lsn(at)) else {
                break;
            };
            let Some(content) = self.written.get(&(e.0, at)) else {
                continue;
            };
            let (key, val) = if let Some(kv) = content.strip_prefix("put ") {
                let Some((k, val)) = kv.split_once('=') else {
                    continue;
                };
                (k, Some(val.to_string()))
            } else if let Some(k) = content.strip_prefix("del ") {
                (k, None)
            } else {
                continue;
            };
            if let Some(k) = (0..self.cfg.keys).find(|k| key_of(*k) == key) {
                v[k].get_or_insert(val);
            }
        }
        v.into_iter().map(Option::flatten).collect()
    }

    /// A long quiet run: nothing wedges (every operation after the start-up succeeds), the
    /// controllers leave etcd alone, and compaction keeps the logs bounded.
    /// A refusal is journaled once while its reason holds (`ClusterCore::refuse`): ten or more
    /// refusals of one shape (numbers elided) in a row, each within a second of the previous,
    /// mean one was written at every tick (each an etcd write).
    pub(super) fn check_refusal_floods(&mut self) {
        use baton_controller::journal::{reason_shape, Kind};
        let mut run: Option<(String, u64, usize)> = None;
        let mut floods = Vec::new();
        for e in &self.etcd.journal {
            if e.kind != Kind::Refusal {
                run = None;
                continue;
            }
            let shape = reason_shape(&e.message);
            run = match run {
                Some((s, at, n)) if s == shape && e.at_unix_ms.saturating_sub(at) < 1000 => {
                    if n + 1 == 10 {
                        floods.push(e.message.clone());
                    }
                    Some((s, e.at_unix_ms, n + 1))
                }
                _ => Some((shape, e.at_unix_ms, 1)),
            };
        }
        for m in floods {
            self.violation(format!("refusal journaled at every tick: {m}"));
        }
    }

    pub(super) fn check_idle(&mut self) {
        let settle = 5_000_000;
        let end = self.cfg.duration_ms * 1000;
        let bad: Vec<String> = self
            .ops
            .iter()
            .filter(|o| {
                o.h.invoke > settle && o.h.invoke < end && !matches!(o.h.outcome, Outcome::Ok(_))
            })
            .take(3)
            .map(|o| {
                format!(
                    "op {} on {} at t={} ms: {:?}",
                    o.h.id,
                    o.h.key,
                    o.h.invoke / 1000,
                    o.h.outcome
                )
            })
            .collect();
        for b in bad {
            self.violation(format!("idle run wedged: {b}"));
        }
        if self.idle_etcd_writes > 2 {
            let n = self.idle_etcd_writes;
            self.violation(format!(
                "idle run: the controllers wrote the cluster state {n} times after start-up"
            ));
        }
        if self.cfg.faults.snapshot {
            for i in 0..self.replicas.len() {
                let n = self.replicas[i].log.len();
                if n > 5000 {
                    self.violation(format!(
                        "idle run: r{} holds {n} log records despite snapshots",
                        i + 1
                    ));
                }
            }
        }
    }
}
