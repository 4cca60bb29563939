//! How the core hands out a change: [`ClusterCore::write`] builds the one guarded [`Write`]
//! (new state and/or journal entry, coalescing repeats of the last entry and rate-limiting their
//! rewrites, the budget key with an automatic failover), [`ClusterCore::refuse`] journals a
//! refusal once per change of reason, and `notice` queues identity notices for `tick` to
//! journal. It decides nothing about *what* to write: the rule files do.

use super::{ClusterCore, Now, Write};
use crate::journal::{self, Entry, Kind};
use crate::state::ClusterState;
use baton_common::Epoch;

impl ClusterCore {
    /// The state change `state` (None: journal only), explained by a journal entry of `kind`;
    /// None when the entry is a repeat counted in memory (nothing to write yet).
    pub(super) fn write(
        &mut self,
        now: Now,
        state: Option<ClusterState>,
        kind: Kind,
        message: String,
        inputs: serde_json::Value,
    ) -> Option<Write> {
        let (cur, rev) = self
            .state()
            .map(|(s, r)| (s.clone(), r))
            .map_or((None, 0), |(s, r)| (Some(s), r));
        let epoch = state
            .as_ref()
            .or(cur.as_ref())
            .map_or(Epoch(0), |s| s.epoch);
        let mut j = self.journal.clone();
        let after = j.last().map_or(0, |e| e.seq);
        // Repeats counted in memory belong to the last entry, if it is still the newest.
        let unflushed = self.unflushed.take().filter(|u| u.seq == after);
        if let (Some(u), Some(last)) = (&unflushed, j.last_mut()) {
            *last = u.clone();
        }
        let refusal = matches!(kind, Kind::Refusal | Kind::Blocked);
        let failover = kind == Kind::Failover;
        let e = Entry {
            seq: 0,
            at_unix_ms: now.unix_ms,
            last_unix_ms: None,
            kind,
            message: message.clone(),
            epoch: epoch.0,
            inputs,
            count: 1,
            reason: String::new(),
        };
        let repeat = journal::repeats(j.last(), &e);
        if repeat
            && state.is_none()
            && self
                .coalesced_at_ms
                .is_some_and(|t| now.ms.saturating_sub(t) < journal::COALESCE_WRITE_MS)
        {
            // A repeat soon after the last rewrite: counted here, written later.
            journal::push(&mut j, e);
            self.unflushed = j.pop();
            return None;
        }
        let mut puts: Vec<Entry> = unflushed.into_iter().filter(|_| !repeat).collect();
        journal::push(&mut j, e);
        puts.extend(j.pop());
        if repeat {
            self.coalesced_at_ms = Some(now.ms);
        }
        let failovers = failover.then(|| self.budget.with_failover(now.ms, now.unix_ms));
        self.ts.inflight = true;
        if !refusal {
            self.ts.last_refusal = None;
        }
        Some(Write {
            expect_rev: rev,
            state,
            journal: puts,
            journal_after: after,
            failovers,
            why: message,
            resign: false,
        })
    }

    /// A refusal or a blocked decision: journaled once per change of reason. Reasons that
    /// differ only in their numbers (how long a leader has been cut off, how many failovers
    /// the last hour saw) are the same reason: a cut that lasts is not a new refusal at every
    /// tick (each one an etcd write). `reason` is the refusal's stable code (the label of
    /// `baton_controller_refusals_total`, stored with the entry): `paused`, `budget_exhausted`,
    /// `leader_unproven`, `no_planned_target`, `state_behind`, `epochs_exhausted`,
    /// `no_fenced_member`, `no_eligible_member`, `notice`.
    pub(super) fn refuse(
        &mut self,
        now: Now,
        kind: Kind,
        reason: &'static str,
        message: String,
    ) -> Option<Write> {
        let shape = crate::journal::reason_shape(&message);
        if self.ts.last_refusal.as_deref() == Some(shape.as_str()) || self.state().is_none() {
            return None;
        }
        self.ts.last_refusal = Some(shape);
        let w = self.write(now, None, kind, message, serde_json::Value::Null);
        with_reason(w, reason)
    }

    /// A notice (foreign data directory, duplicated id, …): journaled as a refusal with reason
    /// `notice` and the decision's inputs.
    pub(super) fn journal_notice(&mut self, now: Now, msg: String) -> Option<Write> {
        let inputs = self.inputs(now);
        let w = self.write(now, None, Kind::Refusal, msg, inputs);
        with_reason(w, "notice")
    }

    /// The inputs journaled with a decision: who was heard when, at which position.
    pub(super) fn inputs(&self, now: Now) -> serde_json::Value {
        let heard: Vec<serde_json::Value> = self
            .heard
            .iter()
            .map(|(id, h)| {
                serde_json::json!({
                    "id": id, "heard_ms_ago": now.ms.saturating_sub(h.at_ms), "epoch": h.hb.epoch,
                    "role": h.hb.role, "log_end": [h.hb.log_end_epoch, h.hb.log_end_lsn],
                    "since_leader_ms": h.hb.since_leader_ms, "unclean": h.hb.unclean,
                })
            })
            .collect();
        serde_json::json!({ "heard": heard })
    }

    /// Queues a journal notice once per episode (`key`); returns the message.
    pub(super) fn notice(&mut self, now: Now, key: String, msg: String) -> String {
        if !self.noticed.contains_key(&key) {
            self.notices.push((key.clone(), msg.clone()));
        }
        self.noticed.insert(key, now.ms);
        msg
    }
}

/// `w` with its new journal entry (the last one) carrying `reason`; a rewrite of an entry that
/// has one keeps it.
fn with_reason(w: Option<Write>, reason: &'static str) -> Option<Write> {
    w.map(|mut w| {
        if let Some(e) = w.journal.last_mut().filter(|e| e.reason.is_empty()) {
            e.reason = reason.to_string();
        }
        w
    })
}
