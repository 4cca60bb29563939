//! The controller's state machine for one cluster, [`ClusterCore`], pure: inputs are
//! heartbeats, etcd observations (state + journal, election, session), ticks and operator
//! requests, each with `now`; outputs are directives (answers to heartbeats), guarded etcd
//! writes ([`Write`]) and typed refusals ([`OpError`]). The runtime (`runtime.rs`) executes the
//! writes as etcd transactions guarded by the state's revision and this controller's election
//! key, and feeds the outcome back; the API layer (`api.rs`) turns refusals into HTTP answers.
//!
//! This file holds the core, its inputs (`on_election`, `on_observed`, `on_write`, `tick`) and
//! the state kept per term ([`TermState`]). The rules live by concern: `directive.rs`
//! (heartbeat → directive, identity checks, lease grants, `start_after`), `detection.rs`
//! (leader health, the recorded leader not leading, "state behind replicas", dry run),
//! `promotion.rs`, `sync_set.rs`, `switchover.rs`, `ops.rs` (operator requests and their
//! errors), `bootstrap.rs` (`init`, `recover`), `write.rs` (journaled writes, refusals).
//!
//! One write is in flight at a time; an unknown outcome is resolved by re-reading the state
//! before anything else is decided. Nothing here reads a clock or touches the network.

mod bootstrap;
mod detection;
mod directive;
mod handover;
mod ops;
mod planned;
mod promotion;
mod switchover;
mod sync_set;
mod write;

pub use detection::DryRun;
pub use handover::{HANDOVER_BACKOFF_FTS, HEARS_PUBLISH_EVERY_MS};
pub use ops::{ErrorCode, OpError};

use crate::decide::Heard;
use crate::journal::{self, Entry};
use crate::state::{ClusterState, Phase};
use baton_common::directive::{Member, MemberRef, Mode};
use baton_common::{BootId, Epoch, NodeId};
use directive::Run;
use std::collections::BTreeMap;

/// What the core decides with for one cluster: its members and tunables, taken from the
/// config file's `[[clusters]]` table (`config::ClusterConfig`) and the timing section.
#[derive(Clone, Debug)]
pub struct ClusterParams {
    pub name: String,
    pub members: Vec<Member>,
    pub mode: Mode,
    pub sync_size: usize,
    pub strict: bool,
    pub heartbeat_interval_ms: u64,
    pub failure_timeout_ms: u64,
    pub lease_ms: u64,
    pub sync_wait_ms: u64,
    pub drift: f64,
    pub max_lag_on_failover: u64,
    pub max_failovers_per_hour: usize,
}

/// Clock readings that come with every input.
#[derive(Clone, Copy, Debug, Default)]
pub struct Now {
    /// Monotonic (CLOCK_BOOTTIME) milliseconds: all timing.
    pub ms: u64,
    /// Wall clock, for journal timestamps only.
    pub unix_ms: u64,
}

/// A write for the runtime: the new state (None: unchanged) and the journal entries that explain
/// it, in one transaction guarded by `expect_rev` (0: the state key must not exist), the
/// election, and `journal_after`.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub expect_rev: u64,
    pub state: Option<ClusterState>,
    /// Journal entries to write, each under its own key (its `seq`), oldest first: the new entry,
    /// or the last one rewritten with a higher count (preceded by the last one when repeats of
    /// it were counted in memory).
    pub journal: Vec<Entry>,
    /// The newest journal seq known when the write was made: the transaction also requires that
    /// no entry above it exists, so nobody's entry is overwritten.
    pub journal_after: u64,
    /// The new anti-flapping budget key (Unix ms of the automatic failovers of the last hour),
    /// when this write starts an automatic failover.
    pub failovers: Option<Vec<u64>>,
    /// What the write is for (logs).
    pub why: String,
    /// A handover (`handover.rs`): the same transaction deletes this controller's election key,
    /// so that a better-connected standby takes over.
    pub resign: bool,
}

/// How a write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed at this revision of the state key.
    Committed { rev: u64 },
    /// The guard failed (someone else wrote, or this controller lost the election).
    Rejected,
    /// Unknown (timeout, connection loss): re-read before deciding anything.
    Unknown,
}

/// What the cluster state looks like from here.
// One value lives per cluster; boxing the state would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// Not read yet (or being re-read after an unknown outcome).
    Unknown,
    /// No state key: the cluster was never initialized.
    Absent,
    Present {
        state: ClusterState,
        rev: u64,
    },
}

/// What this controller knows only for the term it is active in: all of it starts over when it
/// wins an election (a new term), since another controller may have acted in between.
#[derive(Clone, Debug, Default)]
struct TermState {
    /// When this controller became active (CLOCK_BOOTTIME ms): it decides nothing
    /// automatically before observing for a failure timeout.
    active_since_ms: u64,
    /// A write was handed out and its outcome is not known yet.
    inflight: bool,
    /// Set at takeover; a `switching` phase found then is aborted.
    switch_takeover: bool,
    /// Last lease grant sent to a leader: (its epoch, controller time).
    last_grant: Option<(Epoch, u64)>,
    /// The last grant sent to a leader of an epoch below `last_grant`'s: once the new leader
    /// has been granted its own lease, its `start_after_ms` still counts from this one.
    grant_before: Option<(Epoch, u64)>,
    /// A new leader whose predecessor gave up its lease (a switchover this controller wrote in
    /// this term): no wait to start.
    no_wait_epoch: Option<Epoch>,
    /// When the `promoting` phase was first seen.
    promoting_since_ms: Option<u64>,
    /// Revision at which `adding` was first seen (the add protocol's R), and when.
    adding_rev: Option<u64>,
    adding_since_ms: Option<u64>,
    /// The shape (numbers elided) of the last refusal journaled, to journal only changes.
    last_refusal: Option<String>,
    /// The recorded leader's run and when it was first heard not leading (a role other than
    /// leader, or no lease) in the steady phase; cleared when it reports leading again.
    leader_off: Option<(BootId, u64)>,
    /// The state at this rev was found behind the replicas, and why: it stays so until the
    /// state changes (`recover`), even if the replica that showed it stops reporting.
    behind: Option<(u64, String)>,
    /// The operation in the state and when this controller first saw it (monotonic): its
    /// timeout counts from there, not from a wall-clock deadline.
    op_seen: Option<(String, u64)>,
    /// Since when this controller has heard fewer members than the best standby, without a
    /// tick in between that heard as many (`handover.rs`).
    fewer_since_ms: Option<u64>,
}

/// The per-cluster controller core.
pub struct ClusterCore {
    pub cfg: ClusterParams,
    /// `Some(term)` while this controller is active (term: its election key's create revision).
    term: Option<u64>,
    /// CLOCK_BOOTTIME ms until which this controller's etcd lease is certainly alive; past it
    /// the controller acts as a standby (no role, no lease granted), whatever `term` says.
    valid_until_ms: u64,
    /// The etcd lease of the runtime's session (`None`: no session or a runtime that does not
    /// say; then any term counts as its own).
    session_lease: Option<i64>,
    /// The session lease `term` was won under. A term is trusted only within the window of
    /// that lease: once the session holds another lease (the old one lost and re-granted), the
    /// old term is not trusted until a campaign under the new lease confirms one.
    term_lease: Option<i64>,
    /// What is known only for the current term.
    ts: TermState,
    /// The active controller's address, as far as known.
    pub active_addr: Option<String>,
    pub observed: Observed,
    /// The newest journal entries known, oldest first: as read, plus this controller's writes.
    pub journal: Vec<Entry>,
    /// The automatic failovers of the last hour (the budget key), on this controller's clock.
    budget: journal::Budget,
    /// The last entry with repeats counted in memory but not written yet (rate limit).
    unflushed: Option<Entry>,
    /// When a repeat last rewrote the last entry.
    coalesced_at_ms: Option<u64>,
    /// The last heartbeat admitted per member, and when it arrived.
    heard: BTreeMap<NodeId, Heard>,
    /// Since when (CLOCK_BOOTTIME ms) this controller's etcd session has been failing
    /// (keepalives or lease grants), for status: `None` while etcd answers.
    pub etcd_failing_since_ms: Option<u64>,
    /// The most members any standby reports hearing.
    pub standby_hears: usize,
    /// The id of the standby that reports `standby_hears`, when known (journal messages).
    pub standby_id: Option<String>,
    /// CLOCK_BOOTTIME ms before which this controller does not campaign: the back-off after a
    /// handover (`handover.rs`). Kept across terms.
    campaign_after_ms: u64,
    /// Members whose add was abandoned (too far behind), and until when not to retry them.
    add_backoff: BTreeMap<NodeId, u64>,
    /// Abandoned adds in a row per member: the back-off doubles with each.
    add_failures: BTreeMap<NodeId, u32>,
    /// Every process run heard per member id (see `directive.rs`, `admit`).
    runs: BTreeMap<NodeId, Vec<Run>>,
    /// Notices (foreign data directories, duplicated ids) seen and not journaled yet, and the
    /// ones journaled while their condition lasts (journaled once per episode).
    notices: Vec<(String, String)>,
    noticed: BTreeMap<String, u64>,
    /// When (Unix ms) this controller first heard a member report leading each of the last
    /// epochs with a lease (writes accepted again after a promotion): the status page's
    /// "leading" step. Memory only, not journaled; the newest few epochs.
    pub leading_seen: BTreeMap<Epoch, (NodeId, u64)>,
}

impl ClusterCore {
    pub fn new(cfg: ClusterParams) -> ClusterCore {
        ClusterCore {
            cfg,
            term: None,
            valid_until_ms: u64::MAX,
            session_lease: None,
            term_lease: None,
            ts: TermState::default(),
            active_addr: None,
            observed: Observed::Unknown,
            journal: Vec::new(),
            budget: journal::Budget::default(),
            unflushed: None,
            coalesced_at_ms: None,
            heard: BTreeMap::new(),
            etcd_failing_since_ms: None,
            standby_hears: 0,
            standby_id: None,
            campaign_after_ms: 0,
            add_backoff: BTreeMap::new(),
            add_failures: BTreeMap::new(),
            runs: BTreeMap::new(),
            notices: Vec::new(),
            noticed: BTreeMap::new(),
            leading_seen: BTreeMap::new(),
        }
    }

    /// Active per the election (for display); decisions use [`Self::active_at`].
    pub fn is_active(&self) -> bool {
        self.term.is_some()
    }

    /// Active, and still within the trusted window of the etcd lease its term was won under.
    pub fn active_at(&self, now: Now) -> bool {
        self.term.is_some() && self.term_lease == self.session_lease && now.ms < self.valid_until_ms
    }

    /// The trusted window alone, for a driver that does not track lease ids (the exact tests):
    /// any term counts as won under the current session. Runtimes use [`Self::set_session`].
    pub fn set_valid_until(&mut self, ms: u64) {
        self.valid_until_ms = ms
    }

    /// The runtime's session: etcd lease `lease`, certainly alive until `valid_until_ms`
    /// (CLOCK_BOOTTIME). A term won under another lease is not trusted within this window.
    pub fn set_session(&mut self, lease: Option<i64>, valid_until_ms: u64) {
        self.session_lease = lease;
        self.valid_until_ms = if lease.is_some() { valid_until_ms } else { 0 };
    }

    /// How long this controller may still act without a lease renewal (0: not active).
    pub fn trusted_for_ms(&self, now: Now) -> u64 {
        if self.active_at(now) {
            self.valid_until_ms.saturating_sub(now.ms)
        } else {
            0
        }
    }

    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// Members heard within the failure timeout.
    pub fn hears(&self, now: Now) -> usize {
        self.heard.values().filter(|h| self.fresh(now, h)).count()
    }

    pub fn heard(&self) -> &BTreeMap<NodeId, Heard> {
        &self.heard
    }

    /// Whether `h` was heard within the failure timeout (the member reports).
    fn fresh(&self, now: Now, h: &Heard) -> bool {
        now.ms.saturating_sub(h.at_ms) < self.cfg.failure_timeout_ms
    }

    /// Where member `id` is reached (DESIGN.md §8, one source of truth for addresses): the
    /// address its newest admitted heartbeat advertised (a heartbeat that, with TLS, came with
    /// `id`'s own certificate), else the one the state recorded, else the declared one; empty
    /// when none is known. Followers and proxies are sent there, so a member that moved
    /// (restarted on another host or IP) is found as soon as it heartbeats.
    pub fn member_addr(&self, id: &NodeId) -> String {
        if let Some(h) = self.heard.get(id).filter(|h| !h.hb.addr.is_empty()) {
            return h.hb.addr.clone();
        }
        let recorded = self
            .state()
            .and_then(|(s, _)| s.member(id).map(|m| m.addr.clone()))
            .filter(|a| !a.is_empty());
        recorded
            .or_else(|| {
                let m = self.cfg.members.iter().find(|m| &m.id == id)?;
                Some(m.addr.clone())
            })
            .unwrap_or_default()
    }

    /// The declared members, each with [`ClusterCore::member_addr`].
    pub fn members_reached(&self) -> Vec<Member> {
        self.cfg
            .members
            .iter()
            .map(|m| Member {
                addr: self.member_addr(&m.id),
                ..m.clone()
            })
            .collect()
    }

    /// The last heartbeat of `id`, if heard within the failure timeout.
    fn reporting(&self, now: Now, id: &NodeId) -> Option<&Heard> {
        self.heard.get(id).filter(|h| self.fresh(now, h))
    }

    /// Whether member `m` reports, from the same data directory.
    fn member_ok(&self, now: Now, m: &MemberRef) -> bool {
        self.reporting(now, &m.id)
            .is_some_and(|h| h.hb.data_id == m.data_id)
    }

    /// The election changed: active with `term`, or standby (`None`).
    pub fn on_election(&mut self, now: Now, term: Option<u64>, active_addr: Option<String>) {
        if term.is_some() && self.term != term {
            // A freshly active controller decides nothing automatically before observing for a
            // failure timeout (assess_leader's Observing), and takes a restart only from a
            // heartbeat received while active (an old entry may show an old boot). Only a
            // switchover this controller wrote in this term lets a leader start at once.
            self.ts = TermState {
                active_since_ms: now.ms,
                switch_takeover: true,
                ..TermState::default()
            };
            self.observed = Observed::Unknown;
        }
        // The campaign ran under the current session's lease.
        self.term_lease = term.and(self.session_lease);
        self.term = term;
        self.active_addr = active_addr;
    }

    /// The runtime read the state key and, with it, the journal's tail and the budget key.
    pub fn on_observed(&mut self, now: Now, observed: Observed, journal: impl Into<journal::Tail>) {
        let journal = journal.into();
        // A read that started before this controller's own write committed may arrive after it:
        // revisions only grow, so an older one is ignored.
        if let (Observed::Present { rev: new, .. }, Observed::Present { rev: cur, .. }) =
            (&observed, &self.observed)
        {
            if new < cur {
                return;
            }
        }
        if let Observed::Present { state, rev } = &observed {
            // What was heard from another deployment's directory before the state (and its
            // cluster id) was known is forgotten: `admit` refuses it from now on, and its epoch
            // must not make this state look behind.
            if state.cluster_id != 0 {
                self.heard
                    .retain(|_, h| h.hb.cluster_id == 0 || h.hb.cluster_id == state.cluster_id);
            }
            let ts = &mut self.ts;
            match (&state.adding, ts.adding_rev) {
                (Some(_), None) => {
                    ts.adding_rev = Some(*rev);
                    ts.adding_since_ms = Some(now.ms);
                }
                (None, _) => {
                    ts.adding_rev = None;
                    ts.adding_since_ms = None;
                }
                _ => {}
            }
            if state.phase == Phase::Promoting && ts.promoting_since_ms.is_none() {
                ts.promoting_since_ms = Some(now.ms);
            }
            if state.phase != Phase::Promoting {
                ts.promoting_since_ms = None;
            }
            if state.phase != Phase::Switching {
                ts.switch_takeover = false;
            }
            match &state.op {
                Some(op) if ts.op_seen.as_ref().is_none_or(|(id, _)| *id != op.id) => {
                    ts.op_seen = Some((op.id.clone(), now.ms));
                }
                Some(_) => {}
                None => ts.op_seen = None,
            }
        }
        self.observed = observed;
        self.budget.observe(now.ms, now.unix_ms, &journal.failovers);
        self.journal = journal.entries;
    }

    /// The outcome of the write handed out last.
    pub fn on_write(&mut self, now: Now, w: &Write, outcome: WriteOutcome) {
        self.ts.inflight = false;
        let resigned = w.resign && outcome != WriteOutcome::Rejected;
        match outcome {
            WriteOutcome::Committed { rev } => {
                let mut entries = std::mem::take(&mut self.journal);
                journal::apply(&mut entries, &w.journal);
                let failovers = w.failovers.clone().unwrap_or_else(|| self.budget.stored());
                let tail = journal::Tail { entries, failovers };
                match &w.state {
                    Some(s) => self.on_observed(
                        now,
                        Observed::Present {
                            state: s.clone(),
                            rev,
                        },
                        tail,
                    ),
                    None => self.journal = tail.entries,
                }
            }
            // Re-read before deciding anything: the runtime refreshes `observed`.
            WriteOutcome::Rejected | WriteOutcome::Unknown => {
                // A switchover epoch write that is not known to have happened lets nobody skip
                // the wait (if it did happen, the new leader merely waits out the old lease).
                if w.state.as_ref().map(|s| s.epoch) == self.ts.no_wait_epoch {
                    self.ts.no_wait_epoch = None;
                }
                self.observed = Observed::Unknown;
            }
        }
        if resigned {
            self.resigned(now);
        }
    }

    fn state(&self) -> Option<(&ClusterState, u64)> {
        match &self.observed {
            Observed::Present { state, rev } => Some((state, *rev)),
            _ => None,
        }
    }

    /// Automatic failovers in the last hour (the anti-flapping budget).
    pub fn failovers_in_last_hour(&self, now: Now) -> usize {
        self.budget.count(now.ms)
    }

    /// Time passes; returns at most one write to execute.
    pub fn tick(&mut self, now: Now) -> Option<Write> {
        self.forget_old(now);
        if !self.active_at(now) {
            return None;
        }
        self.track_handover(now);
        if self.ts.inflight {
            return None;
        }
        if let Some(w) = self.handover(now) {
            return Some(w);
        }
        if self.state().is_some() && !self.notices.is_empty() {
            let (_, msg) = self.notices.remove(0);
            return self.journal_notice(now, msg);
        }
        let (state, rev) = self.state().map(|(s, r)| (s.clone(), r))?;
        if let Some(why) = self.check_behind(&state, rev) {
            return self.refuse(now, journal::Kind::Refusal, "state_behind", why);
        }
        if let Some(w) = self.expire_op(now, &state) {
            return Some(w);
        }
        if state.phase != Phase::Switching {
            // Only a switchover found at takeover is aborted; later ones run normally.
            self.ts.switch_takeover = false;
        }
        match state.phase {
            Phase::Promoting => self.step_promotion(now, &state),
            Phase::Switching => self.step_switchover(now, &state),
            Phase::Steady => self.step_steady(now, &state),
        }
    }

    /// Drops what is too old to mean anything: heartbeats of members not heard for ten
    /// failure timeouts (a replica that went away no longer weighs on any decision), and
    /// notices whose condition has not been seen for as long (journaled again if it returns).
    fn forget_old(&mut self, now: Now) {
        let horizon = 10 * self.cfg.failure_timeout_ms;
        self.heard
            .retain(|_, h| now.ms.saturating_sub(h.at_ms) < horizon);
        self.noticed
            .retain(|_, t| now.ms.saturating_sub(*t) < horizon);
        self.runs.retain(|_, r| {
            r.retain(|x| now.ms.saturating_sub(x.last_ms) < horizon);
            !r.is_empty()
        });
    }
}

/// The members' ids, comma-separated (journal messages).
fn names(ms: &[MemberRef]) -> String {
    ms.iter()
        .map(|m| m.id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
