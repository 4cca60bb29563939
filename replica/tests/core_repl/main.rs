//! Exact tests of log shipping between replica cores (`replica/src/core/leader.rs` and
//! `core/follower.rs`): two or three [`Core`]s in one test, the test carrying every message
//! between them by hand — hello, the divergence exchange (Kafka's leader-epoch algorithm), fetch,
//! appends, keepalives, acknowledgements and snapshots — at explicit `now` values. Every step
//! asserts the exact answer, effects and positions, and after every step the harness checks every
//! core: `check_invariants()`, plus what only a view across steps and replicas can see — the log
//! handed to the (modelled) log writer agrees with the core's log end and epoch history, commit
//! and epoch never move back (except across a restart, a reset or a cut that says it is below
//! commit), no truncation cuts a committed record without saying so, the same (epoch, LSN) on two
//! replicas is the same record (I1), and committed prefixes agree unless a test declares a lossy
//! failover.
//!
//! It deliberately does not test the runtime around the cores (`repl/`: sockets, framing, the log
//! thread, rollback files), nor the directive ordering rules and the lease (`core_exact.rs`).

use baton_common::api::LeaderHint;
use baton_common::directive::{Directive, LeaderRef, MemberRef, Mode, ReportedRole, Role};
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId};
use baton_replica::core::{
    AckOut, Action, AppendHeader, Consistency, Core, CoreConfig, FetchStart, FollowerNext,
    Recovered, Truncation, Verdict, WriteReject, WriteReq,
};
use baton_replica::snapshot::Snapshot;
use baton_replica::wal::{Op, Record};
use bytes::Bytes;

mod promises;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const NAMES: [&str; 3] = ["r1", "r2", "r3"];
const LEASE_MS: u64 = 1000;

// ---------------------------------------------------------------------------------------------
// Identities, records and directives.
// ---------------------------------------------------------------------------------------------

fn id(i: usize) -> NodeId {
    NodeId(NAMES[i].into())
}

fn addr(i: usize) -> String {
    format!("127.0.0.1:710{}", i + 1)
}

/// The data_id the controller's member list records for replica `i`.
fn declared(i: usize) -> DataId {
    DataId(21 + i as u128)
}

fn member(i: usize) -> MemberRef {
    MemberRef {
        id: id(i),
        data_id: declared(i),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put_rec(epoch: u64, lsn: u64, key: &str, value: &str) -> Record {
    Record {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
        op: Op::Put {
            key: b(key),
            value: b(value),
        },
    }
}

fn start_rec(epoch: u64, lsn: u64, leader: usize, lossy: bool) -> Record {
    Record {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
        op: Op::LeaderStart {
            leader: id(leader),
            lossy,
        },
    }
}

fn appended(records: &[Record]) -> Vec<Action> {
    records.iter().cloned().map(Action::Append).collect()
}

fn fetch(from: u64, prev_epoch: u64) -> FollowerNext {
    FollowerNext::Fetch {
        from: Lsn(from),
        prev_epoch: Epoch(prev_epoch),
    }
}

type Exchanged = Result<(FollowerNext, Vec<Action>), String>;

fn next(next: FollowerNext) -> Exchanged {
    Ok((next, vec![]))
}

fn cut_then(next: FollowerNext, from: u64, records: Vec<Record>) -> Exchanged {
    Ok((
        next,
        vec![Action::Truncate(Truncation {
            from: Lsn(from),
            records,
            below_commit: false,
        })],
    ))
}

/// A divergence at or below what was applied: the follower marks itself unclean (stored
/// first), resets, and fetches everything again.
fn resync_from(from: u64) -> Exchanged {
    Ok((
        fetch(1, 0),
        vec![
            Action::StoreUnclean(true),
            Action::Resync { from: Lsn(from) },
        ],
    ))
}

fn hint(i: usize, epoch: u64) -> Option<LeaderHint> {
    Some(LeaderHint {
        id: id(i),
        addr: addr(i),
        epoch: Epoch(epoch),
    })
}

/// What a directed leader answers a write before its leader-start is committed and applied.
fn not_committed(i: usize, epoch: u64, start_lsn: u64) -> WriteReject {
    WriteReject::NotLeader {
        reason: format!("leader-start record {start_lsn} is not committed yet"),
        leader: hint(i, epoch),
    }
}

fn stepped_down(epoch: u64, from: usize) -> Action {
    Action::FailPending(format!(
        "epoch {epoch} seen from follower {}: this leader stepped down",
        NAMES[from]
    ))
}

/// An active controller's directive (term 1, semi-sync, not strict, not lossy).
fn directive(
    epoch: u64,
    rev: u64,
    role: Option<Role>,
    leader: Option<LeaderRef>,
    waited: Vec<MemberRef>,
) -> Directive {
    Directive {
        seq: 1,
        rev,
        controller_term: 1,
        active: true,
        active_controller: None,
        epoch: Epoch(epoch),
        role,
        leader,
        members: Vec::new(),
        waited,
        lease_ms: LEASE_MS,
        start_after_ms: 0,
        promises_void: false,
        mode: Mode::SemiSync,
        strict: false,
        lossy: false,
        cluster_id: 0,
    }
}

/// Log end, flushed, commit and applied LSN of one core, as plain numbers.
#[derive(Debug, PartialEq, Eq)]
struct Pos {
    end: (u64, u64),
    flushed: u64,
    commit: u64,
    applied: u64,
}

fn pos(end: (u64, u64), flushed: u64, commit: u64, applied: u64) -> Pos {
    Pos {
        end,
        flushed,
        commit,
        applied,
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: cores plus the runtime facts it models around them. Every method that steps a
// core checks every core after.
// ---------------------------------------------------------------------------------------------

struct Replica {
    core: Core,
    data_id: DataId,
    boot_id: BootId,
    /// The log as the runtime's writer holds it: records handed over by `Action::Append` and
    /// accepted proposals, minus what truncations and resets cut. It starts after `base`.
    log: Vec<Record>,
    /// Position of the snapshot the log starts after ((0, 0) without one) and its epoch history.
    base: (Epoch, Lsn),
    base_history: Vec<(Epoch, Lsn)>,
    /// Highest commit LSN and epoch seen so far: neither may move back.
    commit_floor: Lsn,
    epoch_floor: Epoch,
    /// The newest stream this replica started as a follower (what a snapshot arrives on).
    stream: u64,
}

impl Replica {
    fn new(i: usize, data_id: DataId, boot_id: BootId, rec: Recovered) -> Replica {
        let log = rec.records.clone();
        let (base, base_history) = rec.snapshot.as_ref().map_or_else(
            || ((Epoch(0), Lsn(0)), Vec::new()),
            |s| ((s.epoch, s.lsn), s.history.clone()),
        );
        let core = Core::new(
            CoreConfig {
                id: id(i),
                cluster: "main".into(),
                addr: addr(i),
                data_id,
                boot_id,
                drift: 0.01,
                snapshot_log_bytes: u64::MAX,
            },
            rec,
        );
        Replica {
            epoch_floor: core.epoch(),
            core,
            data_id,
            boot_id,
            log,
            base,
            base_history,
            commit_floor: Lsn(0),
            stream: 0,
        }
    }

    fn model_end(&self) -> (Epoch, Lsn) {
        self.log.last().map_or(self.base, |r| (r.epoch, r.lsn))
    }

    fn model_history(&self) -> Vec<(Epoch, Lsn)> {
        let mut h = self.base_history.clone();
        for r in &self.log {
            if h.last().is_none_or(|(e, _)| *e < r.epoch) {
                h.push((r.epoch, r.lsn));
            }
        }
        h
    }

    fn push(&mut self, rec: &Record) {
        let end = self.model_end().1;
        assert_eq!(
            rec.lsn,
            end.next(),
            "record handed to the writer does not follow the log"
        );
        self.log.push(rec.clone());
    }
}

struct Net {
    r: Vec<Replica>,
    /// A test that forces a lossy failover turns off the committed-prefix agreement check.
    lossy_failover: bool,
}

impl Net {
    fn new(n: usize) -> Net {
        let mut net = Net {
            r: (0..n)
                .map(|i| Replica::new(i, declared(i), BootId(11 + i as u128), Recovered::default()))
                .collect(),
            lossy_failover: false,
        };
        net.check("Net::new");
        net
    }

    /// Replaces replica `i` with a new process that recovered `rec` from its data directory.
    fn recover(&mut self, i: usize, data_id: DataId, rec: Recovered) {
        let boot = BootId(self.r[i].boot_id.0 + 100);
        self.r[i] = Replica::new(i, data_id, boot, rec);
        self.check("recover");
    }

    /// Replica `i` crashes and restarts: what it flushed survives, the rest of its log is lost.
    fn restart(&mut self, i: usize) {
        let r = &self.r[i];
        assert_eq!(
            r.base,
            (Epoch(0), Lsn(0)),
            "restart models a log without a snapshot"
        );
        let flushed = r.core.flushed();
        let rec = Recovered {
            epoch: r.core.epoch(),
            cluster_id: 0,
            applied_rev: r.core.applied_rev(),
            unclean: r.core.unclean(),
            damaged: r.core.damaged().map(str::to_string),
            snapshot: None,
            records: r.log.iter().filter(|x| x.lsn <= flushed).cloned().collect(),
            log_start: Lsn(1),
        };
        let data_id = r.data_id;
        self.recover(i, data_id, rec);
    }

    fn core(&self, i: usize) -> &Core {
        &self.r[i].core
    }

    fn log(&self, i: usize) -> &[Record] {
        &self.r[i].log
    }

    fn pos(&self, i: usize) -> Pos {
        let c = self.core(i);
        pos(
            (c.log_end().0 .0, c.log_end().1 .0),
            c.flushed().0,
            c.commit().0,
            c.applied().0,
        )
    }

    /// The applied value and version of `key` on replica `i`.
    fn entry(&self, i: usize, key: &str) -> Option<(String, u64, u64)> {
        self.core(i).state().get(key.as_bytes()).map(|e| {
            (
                String::from_utf8_lossy(&e.value).into_owned(),
                e.version.epoch.0,
                e.version.lsn.0,
            )
        })
    }

    fn leader_ref(&self, i: usize) -> LeaderRef {
        LeaderRef {
            id: id(i),
            addr: addr(i),
            boot_id: self.r[i].boot_id,
            data_id: Default::default(),
        }
    }

    /// A directive naming `i` leader of `epoch`, waiting for `waited`.
    fn lead_d(&self, i: usize, epoch: u64, rev: u64, waited: &[usize]) -> Directive {
        directive(
            epoch,
            rev,
            Some(Role::Leader),
            Some(self.leader_ref(i)),
            waited.iter().map(|m| member(*m)).collect(),
        )
    }

    fn follow_d(&self, leader: usize, epoch: u64, rev: u64) -> Directive {
        directive(
            epoch,
            rev,
            Some(Role::Follower),
            Some(self.leader_ref(leader)),
            Vec::new(),
        )
    }

    fn apply(&mut self, i: usize, fx: &[Action]) {
        for e in fx {
            if let Action::Append(rec) = e {
                self.r[i].push(rec);
            }
        }
    }

    /// The runtime's directive path; the directive must be accepted. The lease counts from `now`.
    fn offer(&mut self, i: usize, now: u64, d: &Directive) -> Vec<Action> {
        let v = self.r[i].core.check_directive(d);
        assert!(
            matches!(v, Verdict::Accept { .. }),
            "{} ignored a directive: {v:?}",
            NAMES[i]
        );
        let mut fx = self.r[i].core.on_directive(now, now, d);
        if let Some(Action::PersistEpoch { .. }) = fx.last() {
            assert_eq!(fx.len(), 1, "a persist comes alone: {fx:?}");
            fx = self.r[i].core.on_directive_persisted(now, now, d);
        }
        self.apply(i, &fx);
        self.check("apply_directive");
        fx
    }

    fn direct_lead(
        &mut self,
        i: usize,
        now: u64,
        epoch: u64,
        rev: u64,
        waited: &[usize],
    ) -> Vec<Action> {
        let d = self.lead_d(i, epoch, rev, waited);
        self.offer(i, now, &d)
    }

    fn direct_follow(
        &mut self,
        i: usize,
        now: u64,
        leader: usize,
        epoch: u64,
        rev: u64,
    ) -> Vec<Action> {
        let d = self.follow_d(leader, epoch, rev);
        self.offer(i, now, &d)
    }

    fn flush(&mut self, i: usize, now: u64, lsn: u64) -> Vec<Action> {
        let gen = self.r[i].core.log_gen();
        let fx = self.r[i].core.on_flushed(now, Lsn(lsn), gen);
        self.apply(i, &fx);
        self.check("on_flushed");
        fx
    }

    fn propose(
        &mut self,
        i: usize,
        now: u64,
        key: &str,
        value: &str,
    ) -> Result<Record, WriteReject> {
        let res = self.r[i].core.propose(
            now,
            WriteReq {
                key: b(key),
                value: Some(b(value)),
                expect: None,
            },
        );
        let res = res.map(|fx| match fx.as_slice() {
            [Action::Append(rec)] => rec.clone(),
            other => panic!("an accepted write appends one record, not {other:?}"),
        });
        if let Ok(rec) = &res {
            self.r[i].push(rec);
        }
        self.check("propose");
        res
    }

    /// The follower's hello reaches the leader, carrying the follower's persisted epoch.
    fn accept(
        &mut self,
        leader: usize,
        follower: usize,
        now: u64,
    ) -> (Result<u64, String>, Vec<Action>) {
        let (data_id, epoch) = (self.r[follower].data_id, self.core(follower).epoch());
        let (res, fx) = self.r[leader]
            .core
            .leader_accept(now, &id(follower), data_id, epoch);
        self.apply(leader, &fx);
        self.check("leader_accept");
        (res, fx)
    }

    /// The leader's welcome reaches the follower, carrying the leader's epoch.
    fn start(
        &mut self,
        follower: usize,
        leader: usize,
        now: u64,
    ) -> Result<(u64, FollowerNext), String> {
        let epoch = self.core(leader).epoch();
        self.start_at(follower, leader, now, epoch.0)
    }

    fn start_at(
        &mut self,
        follower: usize,
        leader: usize,
        now: u64,
        leader_epoch: u64,
    ) -> Result<(u64, FollowerNext), String> {
        let res = self.r[follower]
            .core
            .follower_start(now, &id(leader), Epoch(leader_epoch));
        if let Ok((s, _)) = &res {
            self.r[follower].stream = *s;
        }
        self.check("follower_start");
        res
    }

    /// One round of the exchange: the follower's epoch query, the leader's answer (returned
    /// too), and what the follower makes of it. A truncation is executed on the modelled log
    /// after checking that it cuts exactly the log's suffix, and nothing committed unless it
    /// says so.
    fn query(
        &mut self,
        leader: usize,
        follower: usize,
        now: u64,
        fstream: u64,
        epoch: u64,
    ) -> ((Epoch, Lsn, bool), Exchanged) {
        let answer = self.core(leader).epoch_end(Epoch(epoch));
        let commit_before = self.core(follower).commit();
        let (e, end, lossy) = answer;
        let res = self.r[follower]
            .core
            .follower_on_epoch_end(now, fstream, e, end, lossy);
        if let Ok((_, fx)) = &res {
            if fx.iter().any(|a| matches!(a, Action::Resync { .. })) {
                let r = &mut self.r[follower];
                r.log.clear();
                r.base = (Epoch(0), Lsn(0));
                r.base_history.clear();
                r.commit_floor = Lsn(0);
            }
        }
        if let Ok((_, fx)) = &res {
            for t in fx.iter().filter_map(|a| match a {
                Action::Truncate(t) => Some(t),
                _ => None,
            }) {
                let r = &mut self.r[follower];
                let keep = r
                    .log
                    .iter()
                    .position(|x| x.lsn >= t.from)
                    .expect("the cut lies inside the log");
                assert_eq!(
                    &r.log[keep..],
                    &t.records[..],
                    "the truncation does not name the log's suffix"
                );
                if t.below_commit {
                    r.commit_floor = r.core.commit();
                } else {
                    assert!(
                        t.from > commit_before,
                        "cut from {} below the commit LSN {commit_before} without saying so",
                        t.from
                    );
                }
                r.log.truncate(keep);
            }
        }
        self.check("follower_on_epoch_end");
        (answer, res)
    }

    fn fetch(
        &self,
        leader: usize,
        follower: usize,
        lstream: u64,
        from: u64,
        prev_epoch: u64,
    ) -> Result<FetchStart, String> {
        self.core(leader)
            .leader_fetch(&id(follower), lstream, Lsn(from), Epoch(prev_epoch))
    }

    /// The fetch was sent: records may flow on `fstream`.
    fn streaming(&mut self, follower: usize, fstream: u64) {
        let res = self.r[follower].core.follower_begin_streaming(fstream);
        assert_eq!(res, Ok(()));
        self.check("follower_begin_streaming");
    }

    /// The leader sends its records `from..=to` with its current commit and log end.
    fn ship(
        &mut self,
        leader: usize,
        follower: usize,
        now: u64,
        fstream: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<Action>, String> {
        let l = self.core(leader);
        assert!(
            Lsn(from) >= l.log_start(),
            "LSN {from} was compacted away on the leader"
        );
        let records: Vec<Record> = self.r[leader]
            .log
            .iter()
            .filter(|r| (from..=to).contains(&r.lsn.0))
            .cloned()
            .collect();
        assert_eq!(
            records.len() as u64,
            to + 1 - from,
            "the leader lacks records"
        );
        let header = AppendHeader {
            leader_epoch: l.epoch(),
            prev: (
                l.epoch_of(Lsn(from - 1)).expect("inside the log"),
                Lsn(from - 1),
            ),
            commit: l.commit(),
            end: l.log_end().1,
        };
        self.append(follower, now, fstream, header, records)
    }

    fn append(
        &mut self,
        follower: usize,
        now: u64,
        fstream: u64,
        header: AppendHeader,
        records: Vec<Record>,
    ) -> Result<Vec<Action>, String> {
        let res = self.r[follower]
            .core
            .follower_on_append(now, fstream, header, records);
        if let Ok(fx) = &res {
            let fx = fx.clone();
            self.apply(follower, &fx);
        }
        self.check("follower_on_append");
        res
    }

    fn keepalive(
        &mut self,
        leader: usize,
        follower: usize,
        now: u64,
        fstream: u64,
    ) -> Result<Vec<Action>, String> {
        let l = self.core(leader);
        let (epoch, commit, end) = (l.epoch(), l.commit(), l.log_end().1);
        self.keepalive_raw(follower, now, fstream, epoch.0, commit.0, end.0)
    }

    fn keepalive_raw(
        &mut self,
        follower: usize,
        now: u64,
        fstream: u64,
        epoch: u64,
        commit: u64,
        end: u64,
    ) -> Result<Vec<Action>, String> {
        let res = self.r[follower].core.follower_on_keepalive(
            now,
            fstream,
            Epoch(epoch),
            Lsn(commit),
            Lsn(end),
        );
        if let Ok(fx) = &res {
            let fx = fx.clone();
            self.apply(follower, &fx);
        }
        self.check("follower_on_keepalive");
        res
    }

    /// The follower acknowledges its flushed LSN in the leader's epoch (as the runtime does).
    fn ack(&mut self, leader: usize, follower: usize, now: u64, lstream: u64) -> Vec<Action> {
        let (epoch, flushed) = (self.core(leader).epoch(), self.core(follower).flushed());
        self.ack_raw(leader, follower, now, lstream, epoch.0, flushed.0)
    }

    fn ack_raw(
        &mut self,
        leader: usize,
        follower: usize,
        now: u64,
        lstream: u64,
        epoch: u64,
        flushed: u64,
    ) -> Vec<Action> {
        let fx = self.r[leader].core.leader_on_ack(
            now,
            &id(follower),
            lstream,
            Epoch(epoch),
            Lsn(flushed),
        );
        self.apply(leader, &fx);
        self.check("leader_on_ack");
        fx
    }

    /// The leader's snapshot was made durable on the follower, which restarts its log after it:
    /// [`install_begin`](Self::install_begin), then [`install_durable`](Self::install_durable).
    fn install(&mut self, follower: usize, now: u64, snap: Snapshot) {
        let lsn = snap.lsn;
        self.install_begin(follower, now, snap);
        assert_eq!(self.install_durable(follower, now, lsn), vec![]);
    }

    /// The follower's core takes a received snapshot in place of its log and state; the runtime
    /// hands the log thread the install in the same step. Nothing about it is durable yet, so
    /// the flushed LSN (what the follower acknowledges) must not grow (I2).
    fn install_begin(&mut self, follower: usize, now: u64, snap: Snapshot) {
        let (base, history) = ((snap.epoch, snap.lsn), snap.history.clone());
        let flushed_before = self.core(follower).flushed();
        let stream = self.r[follower].stream;
        let lsn = snap.lsn;
        assert_eq!(
            self.r[follower]
                .core
                .follower_install_snapshot(now, stream, snap),
            vec![Action::InstallSnapshot { lsn }]
        );
        let r = &mut self.r[follower];
        r.log.clear();
        r.base = base;
        r.base_history = history;
        assert!(
            self.core(follower).flushed() <= flushed_before,
            "{}: the flushed LSN grew from {flushed_before} to {} before the snapshot was durable",
            NAMES[follower],
            self.core(follower).flushed()
        );
        self.check("follower_install_snapshot");
    }

    /// The log thread renamed the snapshot into place, fsynced the directory and restarted the
    /// log after it: it reports the snapshot's LSN durable, as it reports a flush.
    fn install_durable(&mut self, follower: usize, now: u64, lsn: Lsn) -> Vec<Action> {
        self.flush(follower, now, lsn.0)
    }

    /// Hello, welcome and an exchange that cuts nothing, then the fetch: returns the leader's
    /// and the follower's stream ids and the LSN the stream starts from.
    fn attach(&mut self, leader: usize, follower: usize, now: u64) -> (u64, u64, u64) {
        let (res, fx) = self.accept(leader, follower, now);
        assert_eq!(fx, vec![]);
        let lstream = res.expect("the leader accepts the stream");
        let (fstream, mut n) = self
            .start(follower, leader, now)
            .expect("the follower starts the stream");
        let (from, prev_epoch) = loop {
            match n {
                FollowerNext::Fetch { from, prev_epoch } => break (from, prev_epoch),
                FollowerNext::Query(e) => match self.query(leader, follower, now, fstream, e.0).1 {
                    Ok((next, fx)) if fx.is_empty() => n = next,
                    other => panic!("attach is for exchanges that cut nothing: {other:?}"),
                },
            }
        };
        assert_eq!(
            self.fetch(leader, follower, lstream, from.0, prev_epoch.0),
            Ok(FetchStart::Log(from))
        );
        self.streaming(follower, fstream);
        (lstream, fstream, from.0)
    }

    /// Every core's invariants, and what the harness sees across steps and replicas.
    fn check(&mut self, step: &str) {
        for (i, r) in self.r.iter_mut().enumerate() {
            let name = NAMES[i];
            if let Err(e) = r.core.check_invariants() {
                panic!("{name}: invariant broken after {step}: {e}");
            }
            assert_eq!(
                r.core.log_end(),
                r.model_end(),
                "{name} after {step}: the core's log end differs from the log handed to the writer"
            );
            assert_eq!(
                r.core.history(),
                &r.model_history()[..],
                "{name} after {step}: the epoch history differs from the log's records"
            );
            assert!(
                r.core.commit() >= r.commit_floor,
                "{name} after {step}: commit moved back from {} to {}",
                r.commit_floor,
                r.core.commit()
            );
            r.commit_floor = r.core.commit();
            assert!(
                r.core.epoch() >= r.epoch_floor,
                "{name} after {step}: epoch moved back"
            );
            r.epoch_floor = r.core.epoch();
        }
        for (i, x) in self.r.iter().enumerate() {
            for (j, y) in self.r.iter().enumerate().skip(i + 1) {
                let both_committed = x.core.commit().min(y.core.commit());
                for rx in &x.log {
                    let Some(ry) = y.log.iter().find(|r| r.lsn == rx.lsn) else {
                        continue;
                    };
                    if rx.epoch == ry.epoch {
                        assert_eq!(
                            rx, ry,
                            "after {step}: {} and {} hold different records at the same (epoch, LSN) (I1)",
                            NAMES[i], NAMES[j]
                        );
                    }
                    if !self.lossy_failover && rx.lsn <= both_committed {
                        assert_eq!(
                            rx, ry,
                            "after {step}: {} and {} committed different records at LSN {}",
                            NAMES[i], NAMES[j], rx.lsn
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Fetch from an empty log; the semi-sync commit rule; the follower's commit.
// ---------------------------------------------------------------------------------------------

#[test]
fn fresh_follower_fetches_from_one_and_semi_sync_commit_waits_for_every_waited_member() {
    let mut net = Net::new(3);
    let start1 = start_rec(1, 1, A, false);
    assert_eq!(
        net.direct_lead(A, 100, 1, 1, &[B, C]),
        vec![Action::Append(start1.clone())]
    );
    assert_eq!(net.direct_follow(B, 100, A, 1, 1), vec![]);
    assert_eq!(net.direct_follow(C, 100, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert_eq!(
        net.pos(A),
        pos((1, 1), 1, 0, 0),
        "with a waited set the leader's own flush does not commit"
    );

    // Hello, welcome: an empty log has nothing to compare and fetches from 1 after epoch 0.
    assert_eq!(net.accept(A, B, 102), (Ok(1), vec![]));
    assert_eq!(net.start(B, A, 102), Ok((1, fetch(1, 0))));
    assert_eq!(net.fetch(A, B, 1, 1, 0), Ok(FetchStart::Log(Lsn(1))));
    net.streaming(B, 1);
    assert_eq!(net.accept(A, C, 103), (Ok(2), vec![]));
    assert_eq!(net.start(C, A, 103), Ok((1, fetch(1, 0))));
    assert_eq!(net.fetch(A, C, 2, 1, 0), Ok(FetchStart::Log(Lsn(1))));
    net.streaming(C, 1);

    // The leader-start reaches B, which flushes and acknowledges: C is still missing.
    assert_eq!(
        net.ship(A, B, 110, 1, 1, 1),
        Ok(vec![Action::Append(start1.clone())])
    );
    assert_eq!(net.flush(B, 111, 1), vec![]);
    assert_eq!(net.ack(A, B, 112, 1), vec![]);
    assert_eq!(net.pos(A), pos((1, 1), 1, 0, 0), "C has not acknowledged");
    assert_eq!(net.propose(A, 112, "k1", "v1"), Err(not_committed(A, 1, 1)));
    assert_eq!(
        net.ship(A, C, 113, 1, 1, 1),
        Ok(vec![Action::Append(start1.clone())])
    );
    assert_eq!(net.flush(C, 114, 1), vec![]);
    assert_eq!(net.ack(A, C, 115, 2), vec![]);
    assert_eq!(
        net.pos(A),
        pos((1, 1), 1, 1, 1),
        "every waited member acked"
    );

    // Two writes; the leader's flush alone commits neither.
    let (r2, r3) = (put_rec(1, 2, "k1", "v1"), put_rec(1, 3, "k2", "v2"));
    assert_eq!(net.propose(A, 120, "k1", "v1"), Ok(r2.clone()));
    assert_eq!(net.propose(A, 120, "k2", "v2"), Ok(r3.clone()));
    assert_eq!(net.flush(A, 121, 3), vec![]);
    assert_eq!(net.pos(A), pos((1, 3), 3, 1, 1));

    // Appends hand the records to the log writer in order; the header carries commit 1.
    let batch = vec![r2.clone(), r3.clone()];
    assert_eq!(net.ship(A, B, 122, 1, 2, 3), Ok(appended(&batch)));
    assert_eq!(net.ship(A, C, 122, 1, 2, 3), Ok(appended(&batch)));
    assert_eq!(net.pos(B), pos((1, 3), 1, 1, 1));
    assert_eq!(net.pos(C), pos((1, 3), 1, 1, 1));

    // B flushes all, C only LSN 2: the leader commits the smallest acknowledged flush.
    assert_eq!(net.flush(B, 123, 3), vec![]);
    assert_eq!(net.ack(A, B, 124, 1), vec![]);
    assert_eq!(
        net.pos(A),
        pos((1, 3), 3, 1, 1),
        "C acknowledged only LSN 1"
    );
    assert_eq!(net.flush(C, 125, 2), vec![]);
    assert_eq!(net.ack(A, C, 126, 2), vec![]);
    assert_eq!(net.pos(A), pos((1, 3), 3, 2, 2));
    assert_eq!(net.flush(C, 127, 3), vec![]);
    assert_eq!(net.ack(A, C, 128, 2), vec![]);
    assert_eq!(net.pos(A), pos((1, 3), 3, 3, 3));
    assert_eq!(net.entry(A, "k2"), Some(("v2".into(), 1, 3)));

    // The followers learned commit 1 from the append; the keepalive brings 3.
    assert_eq!(net.pos(B), pos((1, 3), 3, 1, 1));
    assert_eq!(net.keepalive(A, B, 130, 1), Ok(vec![]));
    assert_eq!(net.pos(B), pos((1, 3), 3, 3, 3));
    assert_eq!(net.keepalive(A, C, 130, 1), Ok(vec![]));
    assert_eq!(net.pos(C), pos((1, 3), 3, 3, 3));
    for i in [B, C] {
        assert_eq!(net.log(i), net.log(A));
        assert_eq!(net.core(i).state().digest(), net.core(A).state().digest());
    }
    let waiting = net.core(A).heartbeat(130, 1).waiting;
    assert_eq!(
        waiting
            .iter()
            .map(|w| (w.id.clone(), w.flushed_lsn))
            .collect::<Vec<_>>(),
        vec![(id(B), Lsn(3)), (id(C), Lsn(3))]
    );
}

#[test]
fn follower_commit_follows_the_leaders_commit_capped_by_its_own_flush() {
    // An async leader commits on its own flush, so its commit runs ahead of the follower's.
    let mut net = Net::new(2);
    let mut d = net.lead_d(A, 1, 1, &[B]);
    d.mode = Mode::Async;
    assert_eq!(
        net.offer(A, 100, &d),
        vec![Action::Append(start_rec(1, 1, A, false))]
    );
    assert_eq!(net.direct_follow(B, 100, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    let (r2, r3) = (put_rec(1, 2, "k1", "v1"), put_rec(1, 3, "k2", "v2"));
    assert_eq!(net.propose(A, 102, "k1", "v1"), Ok(r2.clone()));
    assert_eq!(net.propose(A, 102, "k2", "v2"), Ok(r3.clone()));
    assert_eq!(net.flush(A, 103, 3), vec![]);
    assert_eq!(net.pos(A), pos((1, 3), 3, 3, 3));

    assert_eq!(net.attach(A, B, 104), (1, 1, 1));
    assert_eq!(
        net.ship(A, B, 105, 1, 1, 3),
        Ok(appended(&[start_rec(1, 1, A, false), r2, r3]))
    );
    assert_eq!(
        net.pos(B),
        pos((1, 3), 0, 0, 0),
        "the leader said 3 is committed; nothing is flushed here"
    );
    assert_eq!(net.flush(B, 106, 2), vec![]);
    assert_eq!(net.pos(B), pos((1, 3), 2, 2, 2));
    assert_eq!(net.entry(B, "k1"), Some(("v1".into(), 1, 2)));
    assert_eq!(net.entry(B, "k2"), None);
    assert_eq!(net.flush(B, 107, 3), vec![]);
    assert_eq!(net.pos(B), pos((1, 3), 3, 3, 3));

    // The leader moves on; a keepalive says commit 4 before the record arrives.
    let r4 = put_rec(1, 4, "k3", "v3");
    assert_eq!(net.propose(A, 110, "k3", "v3"), Ok(r4.clone()));
    assert_eq!(net.flush(A, 111, 4), vec![]);
    assert_eq!(net.keepalive(A, B, 112, 1), Ok(vec![]));
    assert_eq!(net.pos(B), pos((1, 3), 3, 3, 3));
    let read = net
        .core(B)
        .read(112, b"k3", Consistency::Any)
        .expect("any read");
    assert_eq!(
        (read.entry, read.lag_records, read.staleness_ms),
        (None, 1, Some(0)),
        "one record is known committed but not applied"
    );
    assert_eq!(net.ship(A, B, 113, 1, 4, 4), Ok(vec![Action::Append(r4)]));
    assert_eq!(net.pos(B), pos((1, 4), 3, 3, 3));
    assert_eq!(net.flush(B, 114, 4), vec![]);
    assert_eq!(net.pos(B), pos((1, 4), 4, 4, 4));
    // Acknowledgements change nothing for an async leader.
    assert_eq!(net.ack(A, B, 115, 1), vec![]);
    assert_eq!(net.pos(A), pos((1, 4), 4, 4, 4));
    assert_eq!(net.log(B), net.log(A));
}

// ---------------------------------------------------------------------------------------------
// 2. Fetch from the middle of the same epoch.
// ---------------------------------------------------------------------------------------------

#[test]
fn follower_with_a_prefix_of_the_same_epoch_fetches_from_its_end_without_truncating() {
    let mut net = Net::new(2);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[B]).len(), 1);
    assert_eq!(net.direct_follow(B, 100, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert_eq!(net.attach(A, B, 102), (1, 1, 1));
    assert_eq!(net.ship(A, B, 103, 1, 1, 1).map(|f| f.len()), Ok(1));
    assert_eq!(net.flush(B, 104, 1), vec![]);
    assert_eq!(net.ack(A, B, 105, 1), vec![]);
    let (r2, r3) = (put_rec(1, 2, "k1", "v1"), put_rec(1, 3, "k2", "v2"));
    assert_eq!(net.propose(A, 110, "k1", "v1"), Ok(r2.clone()));
    assert_eq!(net.propose(A, 110, "k2", "v2"), Ok(r3.clone()));
    assert_eq!(net.flush(A, 111, 3), vec![]);
    assert_eq!(
        net.ship(A, B, 112, 1, 2, 3),
        Ok(appended(&[r2, r3.clone()]))
    );
    assert_eq!(net.flush(B, 113, 2), vec![]);
    assert_eq!(net.ack(A, B, 114, 1), vec![]);
    assert_eq!(net.pos(A), pos((1, 3), 3, 2, 2));

    // B crashes before LSN 3 is durable, and comes back with the prefix 1..=2 of epoch 1.
    net.restart(B);
    assert_eq!(net.pos(B), pos((1, 2), 2, 0, 0));
    assert_eq!(net.direct_follow(B, 200, A, 1, 1), vec![]);
    assert_eq!(net.accept(A, B, 201), (Ok(2), vec![]));
    assert_eq!(net.start(B, A, 201), Ok((1, FollowerNext::Query(Epoch(1)))));
    // The leader's epoch 1 runs to its log end; B's own end of epoch 1 is LSN 3: no cut.
    assert_eq!(
        net.query(A, B, 202, 1, 1),
        ((Epoch(1), Lsn(4), false), next(fetch(3, 1)))
    );
    assert_eq!(net.pos(B), pos((1, 2), 2, 0, 0));
    assert_eq!(net.core(B).log_gen(), 0, "nothing was cut");
    assert_eq!(
        net.fetch(A, B, 1, 3, 1),
        Err("the stream is no longer current".into()),
        "B's previous stream was replaced by its new hello"
    );
    assert_eq!(net.fetch(A, B, 2, 3, 1), Ok(FetchStart::Log(Lsn(3))));
    net.streaming(B, 1);
    assert_eq!(net.ship(A, B, 203, 1, 3, 3), Ok(vec![Action::Append(r3)]));
    // The header's commit (2) commits and applies the recovered records.
    assert_eq!(net.pos(B), pos((1, 3), 2, 2, 2));
    assert_eq!(net.flush(B, 204, 3), vec![]);
    assert_eq!(
        net.ack(A, B, 205, 1),
        vec![],
        "an ack on the replaced stream"
    );
    assert_eq!(net.pos(A), pos((1, 3), 3, 2, 2));
    assert_eq!(net.ack(A, B, 205, 2), vec![]);
    assert_eq!(net.pos(A), pos((1, 3), 3, 3, 3));
    assert_eq!(net.keepalive(A, B, 206, 1), Ok(vec![]));
    assert_eq!(net.pos(B), pos((1, 3), 3, 3, 3));
    assert_eq!(net.log(B), net.log(A));
    assert_eq!(net.core(B).state().digest(), net.core(A).state().digest());
}

// ---------------------------------------------------------------------------------------------
// 3. Divergence after one failover.
// ---------------------------------------------------------------------------------------------

#[test]
fn old_leader_truncates_its_unreplicated_suffix_after_one_failover() {
    let mut net = Net::new(2);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[B]).len(), 1);
    assert_eq!(net.direct_follow(B, 100, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert_eq!(net.attach(A, B, 102), (1, 1, 1));
    assert_eq!(net.ship(A, B, 103, 1, 1, 1).map(|f| f.len()), Ok(1));
    assert_eq!(net.flush(B, 104, 1), vec![]);
    assert_eq!(net.ack(A, B, 105, 1), vec![]);
    assert_eq!(
        net.propose(A, 110, "k1", "v1"),
        Ok(put_rec(1, 2, "k1", "v1"))
    );
    assert_eq!(net.flush(A, 111, 2), vec![]);
    assert_eq!(net.ship(A, B, 112, 1, 2, 2).map(|f| f.len()), Ok(1));
    assert_eq!(net.flush(B, 113, 2), vec![]);
    assert_eq!(net.ack(A, B, 114, 1), vec![]);
    // Two writes that reach nobody: flushed on A, never acknowledged.
    let lost = vec![put_rec(1, 3, "k2", "a2"), put_rec(1, 4, "k3", "a3")];
    assert_eq!(net.propose(A, 120, "k2", "a2"), Ok(lost[0].clone()));
    assert_eq!(net.propose(A, 120, "k3", "a3"), Ok(lost[1].clone()));
    assert_eq!(net.flush(A, 121, 4), vec![]);
    assert_eq!(net.keepalive(A, B, 122, 1), Ok(vec![]));
    assert_eq!(net.pos(A), pos((1, 4), 4, 2, 2));
    assert_eq!(net.pos(B), pos((1, 2), 2, 2, 2));

    // Failover: B leads epoch 2; A learns it with two writes outstanding.
    let start2 = start_rec(2, 3, B, false);
    assert_eq!(
        net.direct_lead(B, 1000, 2, 2, &[A]),
        vec![Action::Append(start2.clone())]
    );
    assert_eq!(net.flush(B, 1001, 3), vec![]);
    assert_eq!(
        net.direct_follow(A, 1002, B, 2, 2),
        vec![Action::FailPending("stepped down at epoch 2".into())]
    );
    assert_eq!(net.core(A).role(), ReportedRole::Follower);
    // Stream ids come from one counter per replica: B's stream 1 was its follower stream.
    assert_eq!(net.accept(B, A, 1003), (Ok(2), vec![]));
    assert_eq!(
        net.start(A, B, 1003),
        Ok((2, FollowerNext::Query(Epoch(1))))
    );
    // B's epoch 1 ends where its epoch 2 begins (LSN 3): A cuts exactly its two lost writes.
    assert_eq!(
        net.query(B, A, 1004, 2, 1),
        ((Epoch(1), Lsn(3), false), cut_then(fetch(3, 1), 3, lost))
    );
    assert_eq!(net.pos(A), pos((1, 2), 2, 2, 2));
    assert_eq!(net.core(A).history(), &[(Epoch(1), Lsn(1))]);
    assert_eq!(net.core(A).log_gen(), 1);
    assert_eq!(net.fetch(B, A, 2, 3, 1), Ok(FetchStart::Log(Lsn(3))));
    net.streaming(A, 2);
    assert_eq!(
        net.ship(B, A, 1005, 2, 3, 3),
        Ok(vec![Action::Append(start2)])
    );
    assert_eq!(
        net.core(A).history(),
        &[(Epoch(1), Lsn(1)), (Epoch(2), Lsn(3))]
    );
    assert_eq!(
        net.propose(B, 1006, "k2", "b2"),
        Err(not_committed(B, 2, 3))
    );
    assert_eq!(net.flush(A, 1006, 3), vec![]);
    assert_eq!(net.ack(B, A, 1007, 2), vec![]);
    assert_eq!(net.pos(B), pos((2, 3), 3, 3, 3));
    let w = put_rec(2, 4, "k2", "b2");
    assert_eq!(net.propose(B, 1008, "k2", "b2"), Ok(w.clone()));
    assert_eq!(net.flush(B, 1009, 4), vec![]);
    assert_eq!(net.ship(B, A, 1010, 2, 4, 4), Ok(vec![Action::Append(w)]));
    assert_eq!(net.flush(A, 1011, 4), vec![]);
    assert_eq!(net.ack(B, A, 1012, 2), vec![]);
    assert_eq!(net.keepalive(B, A, 1013, 2), Ok(vec![]));
    assert_eq!(net.pos(A), pos((2, 4), 4, 4, 4));
    assert_eq!(net.log(A), net.log(B));
    assert_eq!(net.entry(A, "k2"), Some(("b2".into(), 2, 4)));
    assert_eq!(net.entry(A, "k3"), None, "the lost write is gone");
    assert_eq!(net.core(A).state().digest(), net.core(B).state().digest());
    assert_eq!(net.core(A).log_gen(), 1);
}

// ---------------------------------------------------------------------------------------------
// 4. Two (and three) quick failovers: KIP-279.
// ---------------------------------------------------------------------------------------------

/// Epoch 1 on three fresh replicas: A leads waiting for B and C and writes `k2`, `k3` at LSNs 2
/// and 3; B receives 1..=`b_has`, C 1..=`c_has`; both acknowledge and learn the commit LSN
/// (the smaller of the two).
fn epoch_one(b_has: u64, c_has: u64) -> Net {
    let mut net = Net::new(3);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[B, C]).len(), 1);
    assert_eq!(net.direct_follow(B, 100, A, 1, 1), vec![]);
    assert_eq!(net.direct_follow(C, 100, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert_eq!(net.attach(A, B, 102), (1, 1, 1));
    assert_eq!(net.attach(A, C, 102), (2, 1, 1));
    for (f, s) in [(B, 1), (C, 2)] {
        assert_eq!(net.ship(A, f, 103, 1, 1, 1).map(|x| x.len()), Ok(1));
        assert_eq!(net.flush(f, 104, 1), vec![]);
        assert_eq!(net.ack(A, f, 105, s), vec![]);
    }
    assert_eq!(net.pos(A), pos((1, 1), 1, 1, 1));
    assert_eq!(
        net.propose(A, 110, "k2", "a2"),
        Ok(put_rec(1, 2, "k2", "a2"))
    );
    assert_eq!(
        net.propose(A, 110, "k3", "a3"),
        Ok(put_rec(1, 3, "k3", "a3"))
    );
    assert_eq!(net.flush(A, 111, 3), vec![]);
    for (f, s, has) in [(B, 1, b_has), (C, 2, c_has)] {
        assert_eq!(
            net.ship(A, f, 112, 1, 2, has).map(|x| x.len() as u64),
            Ok(has - 1)
        );
        assert_eq!(net.flush(f, 113, has), vec![]);
        assert_eq!(net.ack(A, f, 114, s), vec![]);
    }
    let commit = b_has.min(c_has);
    assert_eq!(net.pos(A), pos((1, 3), 3, commit, commit));
    for f in [B, C] {
        assert_eq!(net.keepalive(A, f, 115, 1), Ok(vec![]));
        assert_eq!(net.core(f).commit(), Lsn(commit));
    }
    net
}

#[test]
fn kip_279_two_quick_failovers_cut_the_middle_epoch_and_the_surplus_records_in_one_round() {
    // B holds all of epoch 1, C only 1..=2; A committed 2.
    let mut net = epoch_one(3, 2);
    // Epoch 2: B is forced to lead (C unreachable; lossy), waits for C; its leader-start
    // reaches nobody.
    let b_start = start_rec(2, 4, B, true);
    let mut d = net.lead_d(B, 2, 2, &[C]);
    d.lossy = true;
    assert_eq!(
        net.offer(B, 1000, &d),
        vec![Action::Append(b_start.clone())]
    );
    assert_eq!(net.flush(B, 1001, 4), vec![]);
    assert_eq!(net.pos(B), pos((2, 4), 4, 2, 2));
    assert_eq!(net.core(B).epoch_end(Epoch(1)), (Epoch(1), Lsn(4), true));
    // Epoch 3: C leads (B unreachable) with epoch-1 records only, waits for B.
    let c_start = start_rec(3, 3, C, false);
    assert_eq!(
        net.direct_lead(C, 2000, 3, 3, &[B]),
        vec![Action::Append(c_start.clone())]
    );
    assert_eq!(net.flush(C, 2001, 3), vec![]);
    assert_eq!(
        net.direct_follow(B, 2002, C, 3, 3),
        vec![Action::FailPending("stepped down at epoch 3".into())]
    );
    assert_eq!(net.accept(C, B, 2003), (Ok(2), vec![]));
    assert_eq!(
        net.start(B, C, 2003),
        Ok((2, FollowerNext::Query(Epoch(2))))
    );
    // C has no epoch 2: it answers epoch 1, which ends where its epoch 3 begins (LSN 3). B cuts
    // its own epoch-2 record and the epoch-1 record C never got, in one round.
    assert_eq!(
        net.query(C, B, 2004, 2, 2),
        (
            (Epoch(1), Lsn(3), false),
            cut_then(fetch(3, 1), 3, vec![put_rec(1, 3, "k3", "a3"), b_start])
        )
    );
    assert_eq!(net.pos(B), pos((1, 2), 2, 2, 2));
    assert_eq!(net.core(B).log_gen(), 1);
    assert_eq!(net.fetch(C, B, 2, 3, 1), Ok(FetchStart::Log(Lsn(3))));
    net.streaming(B, 2);
    assert_eq!(
        net.ship(C, B, 2005, 2, 3, 3),
        Ok(vec![Action::Append(c_start)])
    );
    assert_eq!(net.flush(B, 2006, 3), vec![]);
    assert_eq!(net.ack(C, B, 2007, 2), vec![]);
    assert_eq!(net.pos(C), pos((3, 3), 3, 3, 3));
    let w = put_rec(3, 4, "k4", "c4");
    assert_eq!(net.propose(C, 2008, "k4", "c4"), Ok(w.clone()));
    assert_eq!(net.flush(C, 2009, 4), vec![]);
    assert_eq!(net.ship(C, B, 2010, 2, 4, 4), Ok(vec![Action::Append(w)]));
    assert_eq!(net.flush(B, 2011, 4), vec![]);
    assert_eq!(net.ack(C, B, 2012, 2), vec![]);
    assert_eq!(net.keepalive(C, B, 2013, 2), Ok(vec![]));
    assert_eq!(net.pos(B), pos((3, 4), 4, 4, 4));
    assert_eq!(net.log(B), net.log(C));
    assert_eq!(
        net.core(B).history(),
        &[(Epoch(1), Lsn(1)), (Epoch(3), Lsn(3))]
    );
    assert_eq!(net.core(B).state().digest(), net.core(C).state().digest());
    assert_eq!(net.entry(B, "k3"), None, "A's unacknowledged write is gone");
    assert_eq!(
        net.core(B).epoch_end(Epoch(1)),
        (Epoch(1), Lsn(3), false),
        "the cut took B's lossy epoch 2 with it"
    );
}

#[test]
fn kip_279_leader_lacking_the_followers_last_epoch_takes_two_query_rounds() {
    // B holds all of epoch 1, C only 1..=2; A committed 2.
    let mut net = epoch_one(3, 2);
    // Epoch 2: C leads (B unreachable), waits for B; its leader-start reaches nobody.
    let c_start2 = start_rec(2, 3, C, false);
    assert_eq!(
        net.direct_lead(C, 1000, 2, 2, &[B]),
        vec![Action::Append(c_start2.clone())]
    );
    assert_eq!(net.flush(C, 1001, 3), vec![]);
    // Epoch 3: B leads (C unreachable) without epoch 2, waits for C; reaches nobody either.
    let b_start3 = start_rec(3, 4, B, false);
    assert_eq!(
        net.direct_lead(B, 2000, 3, 3, &[C]),
        vec![Action::Append(b_start3.clone())]
    );
    assert_eq!(net.flush(B, 2001, 4), vec![]);
    // Epoch 4: C leads again, waiting for A and B.
    let c_start4 = start_rec(4, 4, C, false);
    assert_eq!(
        net.direct_lead(C, 3000, 4, 4, &[A, B]),
        vec![
            Action::FailPending("leadership moved to epoch 4".into()),
            Action::Append(c_start4.clone())
        ]
    );
    assert_eq!(net.flush(C, 3001, 4), vec![]);
    assert_eq!(
        net.core(C).history(),
        &[(Epoch(1), Lsn(1)), (Epoch(2), Lsn(3)), (Epoch(4), Lsn(4))]
    );
    for f in [A, B] {
        assert_eq!(
            net.direct_follow(f, 3002, C, 4, 4),
            vec![Action::FailPending("stepped down at epoch 4".into())]
        );
    }

    // B's last epoch is 3, which C never had: C answers epoch 2, ending at LSN 4. B holds no
    // epoch 2, so its own end of it is where its epoch 3 begins: it cuts that, and its log now
    // ends in epoch 1, which is not the epoch answered, so it asks again.
    assert_eq!(net.accept(C, B, 3003), (Ok(2), vec![]));
    assert_eq!(
        net.start(B, C, 3003),
        Ok((2, FollowerNext::Query(Epoch(3))))
    );
    assert_eq!(
        net.query(C, B, 3004, 2, 3),
        (
            (Epoch(2), Lsn(4), false),
            cut_then(FollowerNext::Query(Epoch(1)), 4, vec![b_start3])
        )
    );
    assert_eq!(net.pos(B), pos((1, 3), 3, 2, 2));
    assert_eq!(net.core(B).log_gen(), 1);
    // Second round: C's epoch 1 ends at LSN 3 (its epoch 2 begins there): B cuts A's record 3.
    assert_eq!(
        net.query(C, B, 3005, 2, 1),
        (
            (Epoch(1), Lsn(3), false),
            cut_then(fetch(3, 1), 3, vec![put_rec(1, 3, "k3", "a3")])
        )
    );
    assert_eq!(net.pos(B), pos((1, 2), 2, 2, 2));
    assert_eq!(net.core(B).history(), &[(Epoch(1), Lsn(1))]);
    assert_eq!(net.core(B).log_gen(), 2);
    assert_eq!(net.fetch(C, B, 2, 3, 1), Ok(FetchStart::Log(Lsn(3))));
    net.streaming(B, 2);

    // A, the epoch-1 leader, cuts its record 3 in one round.
    assert_eq!(net.accept(C, A, 3006), (Ok(3), vec![]));
    assert_eq!(
        net.start(A, C, 3006),
        Ok((3, FollowerNext::Query(Epoch(1))))
    );
    assert_eq!(
        net.query(C, A, 3007, 3, 1),
        (
            (Epoch(1), Lsn(3), false),
            cut_then(fetch(3, 1), 3, vec![put_rec(1, 3, "k3", "a3")])
        )
    );
    assert_eq!(net.fetch(C, A, 3, 3, 1), Ok(FetchStart::Log(Lsn(3))));
    net.streaming(A, 3);

    let tail = vec![c_start2, c_start4];
    for (f, ls, fs) in [(A, 3, 3), (B, 2, 2)] {
        assert_eq!(net.ship(C, f, 3010, fs, 3, 4), Ok(appended(&tail)));
        assert_eq!(net.flush(f, 3011, 4), vec![]);
        assert_eq!(net.ack(C, f, 3012, ls), vec![]);
    }
    assert_eq!(net.pos(C), pos((4, 4), 4, 4, 4));
    let w = put_rec(4, 5, "k5", "c5");
    assert_eq!(net.propose(C, 3013, "k5", "c5"), Ok(w.clone()));
    assert_eq!(net.flush(C, 3014, 5), vec![]);
    for (f, ls, fs) in [(A, 3, 3), (B, 2, 2)] {
        assert_eq!(
            net.ship(C, f, 3015, fs, 5, 5),
            Ok(vec![Action::Append(w.clone())])
        );
        assert_eq!(net.flush(f, 3016, 5), vec![]);
        assert_eq!(net.ack(C, f, 3017, ls), vec![]);
    }
    for (f, fs) in [(A, 3), (B, 2)] {
        assert_eq!(net.keepalive(C, f, 3018, fs), Ok(vec![]));
        assert_eq!(net.pos(f), pos((4, 5), 5, 5, 5));
        assert_eq!(
            net.log(f),
            net.log(C),
            "{} differs from the leader",
            NAMES[f]
        );
        assert_eq!(net.core(f).history(), net.core(C).history());
        assert_eq!(net.core(f).state().digest(), net.core(C).state().digest());
    }
    assert_eq!(
        net.log(C),
        &[
            start_rec(1, 1, A, false),
            put_rec(1, 2, "k2", "a2"),
            start_rec(2, 3, C, false),
            start_rec(4, 4, C, false),
            put_rec(4, 5, "k5", "c5"),
        ]
    );
}

#[test]
fn kip_279_follower_cuts_at_its_own_epoch_end_when_the_leader_has_more_of_that_epoch() {
    // B holds 1..=2 of epoch 1, C all of it (1..=3); A committed 2.
    let mut net = epoch_one(2, 3);
    // Epoch 2: B leads (C unreachable), waits for C; its leader-start reaches nobody.
    let b_start = start_rec(2, 3, B, false);
    assert_eq!(
        net.direct_lead(B, 1000, 2, 2, &[C]),
        vec![Action::Append(b_start.clone())]
    );
    assert_eq!(net.flush(B, 1001, 3), vec![]);
    // Epoch 3: C leads (B unreachable) with epoch-1 records only, waits for B.
    let c_start = start_rec(3, 4, C, false);
    assert_eq!(
        net.direct_lead(C, 2000, 3, 3, &[B]),
        vec![Action::Append(c_start.clone())]
    );
    assert_eq!(net.flush(C, 2001, 4), vec![]);
    assert_eq!(
        net.direct_follow(B, 2002, C, 3, 3),
        vec![Action::FailPending("stepped down at epoch 3".into())]
    );
    assert_eq!(net.accept(C, B, 2003), (Ok(2), vec![]));
    assert_eq!(
        net.start(B, C, 2003),
        Ok((2, FollowerNext::Query(Epoch(2))))
    );
    // C answers epoch 1, ending at LSN 4. B's own epoch 1 ends at 3, where its epoch 2 began:
    // the cut is there, not at the leader's end (which would keep B's epoch-2 record and leave
    // B asking about epoch 2 forever).
    assert_eq!(
        net.query(C, B, 2004, 2, 2),
        (
            (Epoch(1), Lsn(4), false),
            cut_then(fetch(3, 1), 3, vec![b_start])
        )
    );
    assert_eq!(net.pos(B), pos((1, 2), 2, 2, 2));
    assert_eq!(net.fetch(C, B, 2, 3, 1), Ok(FetchStart::Log(Lsn(3))));
    net.streaming(B, 2);
    let tail = vec![put_rec(1, 3, "k3", "a3"), c_start];
    assert_eq!(net.ship(C, B, 2005, 2, 3, 4), Ok(appended(&tail)));
    assert_eq!(net.flush(B, 2006, 4), vec![]);
    assert_eq!(net.ack(C, B, 2007, 2), vec![]);
    // Committing C's leader-start commits A's write at LSN 3 with it.
    assert_eq!(net.pos(C), pos((3, 4), 4, 4, 4));
    assert_eq!(net.entry(C, "k3"), Some(("a3".into(), 1, 3)));
    assert_eq!(net.keepalive(C, B, 2008, 2), Ok(vec![]));
    assert_eq!(net.pos(B), pos((3, 4), 4, 4, 4));
    assert_eq!(net.log(B), net.log(C));
    assert_eq!(net.core(B).state().digest(), net.core(C).state().digest());
}

/// The leader's side of the exchange as a table: for a log with epochs 1 (LSN 1), 2 (LSN 3,
/// lossy leader-start) and 4 (LSN 5, ending at 5), the answer to each queried epoch.
#[test]
fn epoch_end_answers_from_the_history() {
    let mut net = Net::new(1);
    net.recover(
        A,
        declared(A),
        Recovered {
            epoch: Epoch(4),
            applied_rev: 4,
            records: vec![
                start_rec(1, 1, A, false),
                put_rec(1, 2, "k1", "v1"),
                start_rec(2, 3, B, true),
                put_rec(2, 4, "k2", "v2"),
                start_rec(4, 5, A, false),
            ],
            log_start: Lsn(1),
            ..Recovered::default()
        },
    );
    let rows: [(u64, (u64, u64, bool)); 6] = [
        // Older than anything held: the divergence is at the first record.
        (0, (0, 1, true)),
        (1, (1, 3, true)),
        // The lossy epoch itself: only epochs above the answered one count.
        (2, (2, 5, false)),
        // Not held: the largest held epoch below it.
        (3, (2, 5, false)),
        // The last epoch runs to the log end.
        (4, (4, 6, false)),
        (5, (4, 6, false)),
    ];
    for (queried, (e, end, lossy)) in rows {
        assert_eq!(
            net.core(A).epoch_end(Epoch(queried)),
            (Epoch(e), Lsn(end), lossy),
            "epoch_end({queried})"
        );
    }
    let epochs: Vec<Option<u64>> = (0..=6)
        .map(|l| net.core(A).epoch_of(Lsn(l)).map(|e| e.0))
        .collect();
    assert_eq!(
        epochs,
        vec![Some(0), Some(1), Some(1), Some(2), Some(2), Some(4), None]
    );
    // An empty log: everything a follower holds diverges from LSN 1.
    let empty = Net::new(1);
    assert_eq!(empty.core(A).epoch_end(Epoch(3)), (Epoch(0), Lsn(1), false));
}

// ---------------------------------------------------------------------------------------------
// 5. Cuts below the commit LSN.
// ---------------------------------------------------------------------------------------------

#[test]
fn cut_below_commit_is_refused_without_a_lossy_leader_start_and_resyncs_with_one() {
    // Epoch 1: A leads waiting for B only; C is an async follower that got 1..=2.
    let mut net = Net::new(3);
    net.lossy_failover = true;
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[B]).len(), 1);
    assert_eq!(net.direct_follow(B, 100, A, 1, 1), vec![]);
    assert_eq!(net.direct_follow(C, 100, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert_eq!(net.attach(A, B, 102), (1, 1, 1));
    assert_eq!(net.attach(A, C, 102), (2, 1, 1));
    assert_eq!(net.propose(A, 103, "k", "x"), Err(not_committed(A, 1, 1)));
    assert_eq!(net.ship(A, B, 103, 1, 1, 1).map(|f| f.len()), Ok(1));
    assert_eq!(net.flush(B, 104, 1), vec![]);
    assert_eq!(net.ack(A, B, 105, 1), vec![]);
    assert_eq!(
        net.propose(A, 110, "k1", "v1"),
        Ok(put_rec(1, 2, "k1", "v1"))
    );
    assert_eq!(
        net.propose(A, 110, "k2", "v2"),
        Ok(put_rec(1, 3, "k2", "v2"))
    );
    assert_eq!(net.flush(A, 111, 3), vec![]);
    assert_eq!(net.ship(A, B, 112, 1, 2, 3).map(|f| f.len()), Ok(2));
    assert_eq!(net.flush(B, 113, 3), vec![]);
    assert_eq!(net.ack(A, B, 114, 1), vec![]);
    assert_eq!(net.keepalive(A, B, 115, 1), Ok(vec![]));
    assert_eq!(net.pos(B), pos((1, 3), 3, 3, 3));
    assert_eq!(net.ship(A, C, 116, 1, 1, 2).map(|f| f.len()), Ok(2));
    assert_eq!(net.flush(C, 117, 2), vec![]);
    assert_eq!(net.pos(C), pos((1, 2), 2, 2, 2));

    // Epoch 2: C is made leader without the lossy flag although it lacks the committed LSN 3.
    assert_eq!(
        net.direct_lead(C, 1000, 2, 2, &[]),
        vec![Action::Append(start_rec(2, 3, C, false))]
    );
    assert_eq!(net.flush(C, 1001, 3), vec![]);
    assert_eq!(net.direct_follow(B, 1002, C, 2, 2), vec![]);
    assert_eq!(net.accept(C, B, 1003), (Ok(2), vec![]));
    assert_eq!(
        net.start(B, C, 1003),
        Ok((2, FollowerNext::Query(Epoch(1))))
    );
    assert_eq!(
        net.query(C, B, 1004, 2, 1),
        (
            (Epoch(1), Lsn(3), false),
            Err(
                "refusing to truncate committed records: the logs diverge at LSN 3, at or below \
                 the commit LSN 3 and no lossy leader-start lies above it"
                    .into()
            )
        )
    );
    assert_eq!(
        net.pos(B),
        pos((1, 3), 3, 3, 3),
        "the refusal changes nothing"
    );
    assert_eq!(net.core(B).log_gen(), 0);
    assert_eq!(net.entry(B, "k2"), Some(("v2".into(), 1, 3)));

    // Epoch 3: a forced failover to C, lossy this time.
    let mut d = net.lead_d(C, 3, 3, &[]);
    d.lossy = true;
    let c_start3 = start_rec(3, 4, C, true);
    assert_eq!(
        net.offer(C, 2000, &d),
        vec![
            Action::FailPending("leadership moved to epoch 3".into()),
            Action::Append(c_start3.clone())
        ]
    );
    assert_eq!(net.flush(C, 2001, 4), vec![]);
    assert_eq!(net.pos(C), pos((3, 4), 4, 4, 4));
    assert_eq!(net.direct_follow(B, 2002, C, 3, 3), vec![]);
    assert_eq!(net.accept(C, B, 2003), (Ok(3), vec![]));
    assert_eq!(
        net.start(B, C, 2003),
        Ok((3, FollowerNext::Query(Epoch(1))))
    );
    // The cut (LSN 3) is at B's applied LSN: nothing can be cut from the applied state, so B
    // must drop everything and fetch again. The answer itself changes nothing yet.
    //
    // `Truncation::below_commit` can never be true through this API: the core applies every
    // committed record at once (applied == commit after every step), so a cut at or below the
    // commit LSN is at or below the applied LSN and always resyncs.
    assert_eq!(net.core(B).applied(), net.core(B).commit());
    assert_eq!(net.pos(B), pos((1, 3), 3, 3, 3));
    assert_eq!(net.core(B).log_gen(), 0);
    assert_eq!(
        net.query(C, B, 2004, 3, 1),
        ((Epoch(1), Lsn(3), true), resync_from(3))
    );
    assert!(net.core(B).unclean());
    assert_eq!(net.pos(B), pos((0, 0), 0, 0, 0));
    assert_eq!(net.core(B).history(), &[]);
    assert_eq!(net.core(B).log_start(), Lsn(1));
    assert_eq!(net.core(B).state().len(), 0);
    assert_eq!(net.core(B).log_gen(), 1);
    // The runtime fetches everything again after a resync.
    assert_eq!(net.fetch(C, B, 3, 1, 0), Ok(FetchStart::Log(Lsn(1))));
    net.streaming(B, 3);
    let all = net.log(C).to_vec();
    assert_eq!(net.ship(C, B, 2005, 3, 1, 4), Ok(appended(&all)));
    // Holding the first commit LSN heard since the resync makes it clean again.
    assert_eq!(net.flush(B, 2006, 4), vec![Action::StoreUnclean(false)]);
    assert!(!net.core(B).unclean());
    assert_eq!(net.ack(C, B, 2007, 3), vec![]);
    assert_eq!(net.pos(B), pos((3, 4), 4, 4, 4));
    assert_eq!(net.log(B), net.log(C));
    assert_eq!(
        net.entry(B, "k2"),
        None,
        "the committed write C lacked is lost"
    );
    assert_eq!(net.entry(B, "k1"), Some(("v1".into(), 1, 2)));
    assert_eq!(net.core(B).state().digest(), net.core(C).state().digest());
    assert_eq!(net.core(B).log_gen(), 1);
    assert_eq!(
        net.core(B).epoch_end(Epoch(1)),
        (Epoch(1), Lsn(3), true),
        "B learned from the append that epoch 3 began lossy"
    );
}

#[test]
fn lossy_leader_start_above_the_cut_does_not_mark_a_cut_above_commit() {
    // A recovered with its own epoch-1 write at LSN 3 that nobody else has; B leads epoch 2
    // lossy. The cut is above A's commit, so `below_commit` stays false even though the leader
    // says a lossy leader-start lies above it.
    let mut net = Net::new(2);
    let shared = vec![start_rec(1, 1, A, false), put_rec(1, 2, "k1", "v1")];
    let mut a_log = shared.clone();
    a_log.push(put_rec(1, 3, "k2", "lost"));
    net.recover(
        A,
        declared(A),
        Recovered {
            epoch: Epoch(1),
            applied_rev: 1,
            records: a_log,
            log_start: Lsn(1),
            ..Recovered::default()
        },
    );
    net.recover(
        B,
        declared(B),
        Recovered {
            epoch: Epoch(1),
            applied_rev: 1,
            records: shared,
            log_start: Lsn(1),
            ..Recovered::default()
        },
    );
    let mut d = net.lead_d(B, 2, 2, &[A]);
    d.lossy = true;
    assert_eq!(
        net.offer(B, 100, &d),
        vec![Action::Append(start_rec(2, 3, B, true))]
    );
    assert_eq!(net.direct_follow(A, 100, B, 2, 2), vec![]);
    assert_eq!(net.accept(B, A, 101), (Ok(1), vec![]));
    assert_eq!(net.start(A, B, 101), Ok((1, FollowerNext::Query(Epoch(1)))));
    assert_eq!(
        net.query(B, A, 102, 1, 1),
        (
            (Epoch(1), Lsn(3), true),
            cut_then(fetch(3, 1), 3, vec![put_rec(1, 3, "k2", "lost")])
        )
    );
    assert_eq!(net.pos(A), pos((1, 2), 2, 0, 0));
}

#[test]
fn leader_restarted_from_a_snapshot_over_its_lossy_leader_start_still_lets_followers_resync() {
    // Epoch 1: A leads waiting for B (commit 3 on both); C, an async follower, got 1..=2.
    let mut net = Net::new(3);
    net.lossy_failover = true;
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[B]).len(), 1);
    assert_eq!(net.direct_follow(B, 100, A, 1, 1), vec![]);
    assert_eq!(net.direct_follow(C, 100, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert_eq!(net.attach(A, B, 102), (1, 1, 1));
    assert_eq!(net.attach(A, C, 102), (2, 1, 1));
    assert_eq!(net.ship(A, B, 103, 1, 1, 1).map(|f| f.len()), Ok(1));
    assert_eq!(net.flush(B, 104, 1), vec![]);
    assert_eq!(net.ack(A, B, 105, 1), vec![]);
    assert!(net.propose(A, 110, "k1", "v1").is_ok());
    assert!(net.propose(A, 110, "k2", "v2").is_ok());
    assert_eq!(net.flush(A, 111, 3), vec![]);
    assert_eq!(net.ship(A, B, 112, 1, 2, 3).map(|f| f.len()), Ok(2));
    assert_eq!(net.flush(B, 113, 3), vec![]);
    assert_eq!(net.ack(A, B, 114, 1), vec![]);
    assert_eq!(net.keepalive(A, B, 115, 1), Ok(vec![]));
    assert_eq!(net.pos(B), pos((1, 3), 3, 3, 3));
    assert_eq!(net.ship(A, C, 116, 1, 1, 2).map(|f| f.len()), Ok(2));
    assert_eq!(net.flush(C, 117, 2), vec![]);

    // Epoch 2: forced (lossy) failover to C, which writes, snapshots over its lossy
    // leader-start, compacts, and restarts from the snapshot alone.
    let mut d = net.lead_d(C, 2, 2, &[]);
    d.lossy = true;
    assert_eq!(
        net.offer(C, 1000, &d),
        vec![Action::Append(start_rec(2, 3, C, true))]
    );
    assert_eq!(net.flush(C, 1001, 3), vec![]);
    assert_eq!(
        net.propose(C, 1002, "k3", "c3"),
        Ok(put_rec(2, 4, "k3", "c3"))
    );
    assert_eq!(net.flush(C, 1003, 4), vec![]);
    let snap = net.r[C].core.begin_snapshot();
    net.r[C].core.end_snapshot(Some(snap.lsn));
    assert_eq!((snap.lsn, snap.epoch), (Lsn(4), Epoch(2)));
    net.recover(
        C,
        declared(C),
        Recovered {
            epoch: Epoch(2),
            applied_rev: 2,
            snapshot: Some(snap.clone()),
            records: Vec::new(),
            log_start: Lsn(5),
            ..Recovered::default()
        },
    );
    assert_eq!(net.pos(C), pos((2, 4), 4, 4, 4));
    assert_eq!(
        net.direct_lead(C, 2000, 3, 3, &[]),
        vec![Action::Append(start_rec(3, 5, C, false))]
    );
    assert_eq!(net.flush(C, 2001, 5), vec![]);

    // B's committed LSN 3 is not in C's log. The lossy leader-start that allows cutting it is
    // only in C's snapshot now, and C still says so.
    assert_eq!(net.direct_follow(B, 2002, C, 3, 3), vec![]);
    assert_eq!(net.accept(C, B, 2003), (Ok(1), vec![]));
    assert_eq!(
        net.start(B, C, 2003),
        Ok((2, FollowerNext::Query(Epoch(1))))
    );
    assert_eq!(
        net.query(C, B, 2004, 2, 1),
        ((Epoch(1), Lsn(3), true), resync_from(3))
    );
    assert_eq!(net.fetch(C, B, 1, 1, 0), Ok(FetchStart::Snapshot));
    net.streaming(B, 2);
    net.install(B, 2005, snap);
    assert_eq!(net.pos(B), pos((2, 4), 4, 4, 4));
    assert_eq!(
        net.ship(C, B, 2006, 2, 5, 5),
        Ok(vec![Action::Append(start_rec(3, 5, C, false))])
    );
    // Unclean since the resync; holding the first commit LSN heard makes it clean again.
    assert_eq!(net.flush(B, 2007, 5), vec![Action::StoreUnclean(false)]);
    assert_eq!(net.pos(B), pos((3, 5), 5, 5, 5));
    assert_eq!(net.core(B).history(), net.core(C).history());
    assert_eq!(net.core(B).state().digest(), net.core(C).state().digest());
    assert_eq!(
        net.entry(B, "k2"),
        None,
        "the committed write C lacked is lost"
    );
    // B now holds C's lossy epoch in its own history too: were it to lead, it would say so.
    assert_eq!(net.core(B).epoch_end(Epoch(1)), (Epoch(1), Lsn(3), true));
}

// ---------------------------------------------------------------------------------------------
// 6. Snapshot hand-off.
// ---------------------------------------------------------------------------------------------

#[test]
fn compacted_range_is_sent_as_a_snapshot_and_appends_continue_after_it() {
    let mut net = Net::new(3);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[]).len(), 1);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    for (k, v) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3"), ("k4", "v4")] {
        assert!(net.propose(A, 102, k, v).is_ok());
    }
    assert_eq!(net.flush(A, 103, 5), vec![]);
    assert_eq!(net.pos(A), pos((1, 5), 5, 5, 5));
    let snap = net.r[A].core.begin_snapshot();
    assert_eq!(
        (snap.lsn, snap.epoch, snap.history.clone()),
        (Lsn(5), Epoch(1), vec![(Epoch(1), Lsn(1))])
    );
    let snap_digest = snap.state.digest();
    net.r[A].core.end_snapshot(Some(Lsn(5)));
    // Compaction removed LSNs 1..=3; the log still holds 4 and 5.
    net.r[A].core.set_log_start(Lsn(4));
    net.check("set_log_start");
    let (r6, r7) = (put_rec(1, 6, "k5", "v5"), put_rec(1, 7, "k6", "v6"));
    assert_eq!(net.propose(A, 104, "k5", "v5"), Ok(r6.clone()));
    assert_eq!(net.propose(A, 104, "k6", "v6"), Ok(r7.clone()));
    assert_eq!(net.flush(A, 105, 7), vec![]);

    // B is empty: it needs LSN 1, which only the snapshot holds.
    assert_eq!(net.direct_follow(B, 110, A, 1, 1), vec![]);
    assert_eq!(net.accept(A, B, 111), (Ok(1), vec![]));
    assert_eq!(net.start(B, A, 111), Ok((1, fetch(1, 0))));
    assert_eq!(net.fetch(A, B, 1, 1, 0), Ok(FetchStart::Snapshot));
    // The boundary: LSN 4 is still in the log, LSN 3 is not.
    assert_eq!(net.fetch(A, B, 1, 4, 1), Ok(FetchStart::Log(Lsn(4))));
    assert_eq!(net.fetch(A, B, 1, 3, 1), Ok(FetchStart::Snapshot));
    net.streaming(B, 1);
    net.install(B, 112, snap.clone());
    assert_eq!(net.pos(B), pos((1, 5), 5, 5, 5));
    assert_eq!(net.core(B).log_start(), Lsn(6));
    assert_eq!(net.core(B).history(), &[(Epoch(1), Lsn(1))]);
    assert_eq!(net.core(B).state().digest(), snap_digest);
    assert_eq!(net.core(B).log_gen(), 1);
    assert_eq!(
        net.ship(A, B, 113, 1, 6, 7),
        Ok(appended(&[r6.clone(), r7.clone()]))
    );
    assert_eq!(net.pos(B), pos((1, 7), 5, 5, 5));
    assert_eq!(net.flush(B, 114, 7), vec![]);
    assert_eq!(net.pos(B), pos((1, 7), 7, 7, 7));
    assert_eq!(net.core(B).state().digest(), net.core(A).state().digest());

    // C recovered a prefix (1..=2) of the same epoch: the exchange agrees, but LSN 3 is gone.
    let prefix = net.log(A)[..2].to_vec();
    net.recover(
        C,
        declared(C),
        Recovered {
            epoch: Epoch(1),
            applied_rev: 1,
            records: prefix,
            log_start: Lsn(1),
            ..Recovered::default()
        },
    );
    assert_eq!(net.direct_follow(C, 120, A, 1, 1), vec![]);
    assert_eq!(net.accept(A, C, 121), (Ok(2), vec![]));
    assert_eq!(net.start(C, A, 121), Ok((1, FollowerNext::Query(Epoch(1)))));
    assert_eq!(
        net.query(A, C, 122, 1, 1),
        ((Epoch(1), Lsn(8), false), next(fetch(3, 1)))
    );
    assert_eq!(net.fetch(A, C, 2, 3, 1), Ok(FetchStart::Snapshot));
    net.streaming(C, 1);
    net.install(C, 123, snap);
    assert_eq!(net.core(C).log_gen(), 1);
    assert_eq!(net.pos(C), pos((1, 5), 5, 5, 5));
    assert_eq!(net.ship(A, C, 124, 1, 6, 7), Ok(appended(&[r6, r7])));
    assert_eq!(net.flush(C, 125, 7), vec![]);
    assert_eq!(net.pos(C), pos((1, 7), 7, 7, 7));
    assert_eq!(net.core(C).state().digest(), net.core(A).state().digest());
}

/// Issue 10, item 5: a follower that takes a snapshot from the leader acknowledges its LSN only
/// once the runtime reports the install durable (renamed into place, directory fsynced, log
/// restarted after it). A crash before that keeps the old log, so an earlier acknowledgement
/// could let the add protocol count as a sync member a replica that holds nothing (I2).
#[test]
fn snapshot_install_is_acknowledged_only_once_the_runtime_reports_it_durable() {
    let mut net = Net::new(2);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[]).len(), 1);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    for (k, v) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3")] {
        assert!(net.propose(A, 102, k, v).is_ok());
    }
    assert_eq!(net.flush(A, 103, 4), vec![]);
    let snap = net.r[A].core.begin_snapshot();
    assert_eq!(snap.lsn, Lsn(4));
    net.r[A].core.end_snapshot(Some(snap.lsn));
    net.r[A].core.set_log_start(Lsn(5));
    net.check("set_log_start");
    // B, on a new data directory, is being added: A waits for it from LSN 4 on.
    net.recover(
        B,
        declared(B),
        Recovered {
            unclean: true,
            ..Recovered::default()
        },
    );
    assert_eq!(net.direct_lead(A, 104, 1, 2, &[B]), vec![]);
    assert_eq!(net.direct_follow(B, 105, A, 1, 2), vec![]);
    assert_eq!(net.accept(A, B, 106), (Ok(1), vec![]));
    assert_eq!(net.start(B, A, 106), Ok((1, fetch(1, 0))));
    assert_eq!(net.fetch(A, B, 1, 1, 0), Ok(FetchStart::Snapshot));
    net.streaming(B, 1);

    net.install_begin(B, 107, snap);
    assert_eq!(
        net.pos(B),
        pos((1, 4), 0, 4, 4),
        "the snapshot is in memory, nothing of it is durable yet"
    );
    assert_eq!(net.core(B).heartbeat(107, 1).flushed_lsn, Lsn(0));
    // What B's stream acknowledges now is what A counts for the add protocol.
    assert_eq!(net.ack(A, B, 108, 1), vec![]);
    let w = net.core(A).heartbeat(108, 1).waiting;
    assert_eq!(
        (w.len(), w[0].since_lsn, w[0].flushed_lsn),
        (1, Lsn(4), Lsn(0)),
        "B must not count as holding LSN 4 before its snapshot is durable"
    );

    // The log thread reports the install durable: now B holds LSN 4 and says so.
    assert_eq!(net.install_durable(B, 109, Lsn(4)), vec![]);
    assert_eq!(net.pos(B), pos((1, 4), 4, 4, 4));
    assert_eq!(net.ack(A, B, 110, 1), vec![]);
    let w = net.core(A).heartbeat(110, 2).waiting;
    assert_eq!((w[0].since_lsn, w[0].flushed_lsn), (Lsn(4), Lsn(4)));
    assert!(
        net.core(B).unclean(),
        "no commit LSN heard from the leader yet"
    );
}

/// Found by the simulation (`baton-sim --seed 10222`): a wiped member installs the leader's
/// snapshot, and before its log thread made it durable an operator forces it to lead
/// (`failover --to --force --allow-data-loss`). Its commit LSN is the snapshot's (committed by
/// the leader that sent it) while its own flush is still below it: that is no broken commit
/// rule, since nothing of its own epoch commits (no write, no leader read) until the install
/// and its leader-start are durable.
#[test]
fn member_led_before_its_snapshot_install_is_durable_commits_nothing_until_it_is() {
    let mut net = Net::new(2);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[]).len(), 1);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    for (k, v) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3")] {
        assert!(net.propose(A, 102, k, v).is_ok());
    }
    assert_eq!(net.flush(A, 103, 4), vec![]);
    let snap = net.r[A].core.begin_snapshot();
    net.r[A].core.end_snapshot(Some(snap.lsn));
    net.r[A].core.set_log_start(Lsn(5));
    net.check("set_log_start");
    net.recover(
        B,
        declared(B),
        Recovered {
            unclean: true,
            ..Recovered::default()
        },
    );
    assert_eq!(net.direct_lead(A, 104, 1, 2, &[B]), vec![]);
    assert_eq!(net.direct_follow(B, 105, A, 1, 2), vec![]);
    assert_eq!(net.accept(A, B, 106), (Ok(1), vec![]));
    assert_eq!(net.start(B, A, 106), Ok((1, fetch(1, 0))));
    assert_eq!(net.fetch(A, B, 1, 1, 0), Ok(FetchStart::Snapshot));
    net.streaming(B, 1);
    net.install_begin(B, 107, snap);
    assert_eq!(net.pos(B), pos((1, 4), 0, 4, 4));

    // Forced to lead epoch 2 (lossy: it is unclean) while the install is still queued.
    let mut d = net.lead_d(B, 2, 3, &[]);
    d.lossy = true;
    let fx = net.offer(B, 108, &d);
    assert_eq!(fx.len(), 1, "its leader-start: {fx:?}");
    assert_eq!(net.pos(B), pos((2, 5), 0, 4, 4));
    assert!(
        net.propose(B, 109, "k9", "v9").is_err(),
        "no write before its leader-start is durable and committed"
    );
    // The install becomes durable, then the leader-start: epoch 2 commits.
    assert_eq!(net.install_durable(B, 110, Lsn(4)), vec![]);
    assert_eq!(net.pos(B), pos((2, 5), 4, 4, 4));
    net.flush(B, 111, 5);
    assert_eq!(net.pos(B), pos((2, 5), 5, 5, 5));
}

// ---------------------------------------------------------------------------------------------
// 7. Stale epochs and stale streams, both ways.
// ---------------------------------------------------------------------------------------------

#[test]
fn follower_hello_with_a_higher_epoch_makes_the_leader_step_down() {
    let mut net = Net::new(3);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[]).len(), 1);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert_eq!(net.direct_follow(C, 101, A, 1, 1), vec![]);
    assert_eq!(
        net.accept(A, A, 102),
        (Err("a replica cannot follow itself".into()), vec![])
    );
    // A write is outstanding when B, fenced at epoch 2 already, says hello.
    assert_eq!(
        net.propose(A, 102, "k1", "v1"),
        Ok(put_rec(1, 2, "k1", "v1"))
    );
    let fence = directive(2, 2, Some(Role::Fenced), None, Vec::new());
    assert_eq!(net.offer(B, 103, &fence), vec![]);
    assert_eq!(
        net.accept(A, B, 104),
        (
            Err("follower r2 is at epoch 2, above this replica's epoch 1".into()),
            vec![stepped_down(2, B)]
        )
    );
    assert_eq!(net.core(A).role(), ReportedRole::None);
    assert_eq!(
        net.core(A).epoch(),
        Epoch(1),
        "the epoch comes with a directive"
    );
    assert_eq!(
        net.propose(A, 105, "k2", "v2"),
        Err(WriteReject::NotLeader {
            reason: "this replica has no role yet (no directive from an active controller)".into(),
            leader: hint(A, 1),
        })
    );
    assert_eq!(net.flush(A, 105, 2), vec![]);
    assert_eq!(
        net.pos(A),
        pos((1, 2), 2, 1, 1),
        "a replica that stepped down commits nothing more"
    );
    // Stepping down happens once; an equal-epoch follower finds no leader.
    assert_eq!(
        net.accept(A, B, 106),
        (
            Err("follower r2 is at epoch 2, above this replica's epoch 1".into()),
            vec![]
        )
    );
    assert_eq!(
        net.accept(A, C, 106),
        (
            Err("this replica does not lead epoch 1 (role None)".into()),
            vec![]
        )
    );
}

#[test]
fn ack_with_a_higher_epoch_makes_the_leader_step_down_and_a_lower_one_is_ignored() {
    let mut net = Net::new(2);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[B]).len(), 1);
    assert_eq!(net.direct_follow(B, 100, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert_eq!(net.attach(A, B, 102), (1, 1, 1));
    assert_eq!(net.ship(A, B, 103, 1, 1, 1).map(|f| f.len()), Ok(1));
    assert_eq!(net.flush(B, 104, 1), vec![]);
    assert_eq!(net.ack(A, B, 105, 1), vec![]);
    assert_eq!(
        net.propose(A, 106, "k1", "v1"),
        Ok(put_rec(1, 2, "k1", "v1"))
    );
    assert_eq!(net.flush(A, 107, 2), vec![]);
    assert_eq!(net.ship(A, B, 108, 1, 2, 2).map(|f| f.len()), Ok(1));
    assert_eq!(net.flush(B, 109, 2), vec![]);
    assert_eq!(
        net.ack_raw(A, B, 110, 1, 0, 2),
        vec![],
        "an acknowledgement of an older epoch"
    );
    assert_eq!(net.pos(A), pos((1, 2), 2, 1, 1));
    assert_eq!(net.ack_raw(A, B, 111, 1, 2, 2), vec![stepped_down(2, B)]);
    assert_eq!(net.core(A).role(), ReportedRole::None);
    assert!(!net.core(A).leader_stream_alive(&id(B), 1, Epoch(1)));
    assert_eq!(net.ack(A, B, 112, 1), vec![]);
    assert_eq!(
        net.pos(A),
        pos((1, 2), 2, 1, 1),
        "the write never commits here"
    );
}

#[test]
fn follower_rejects_messages_of_another_epoch_and_of_replaced_streams() {
    let mut net = Net::new(2);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[B]).len(), 1);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    let r1 = start_rec(1, 1, A, false);
    let header = |commit: u64, epoch: u64| AppendHeader {
        leader_epoch: Epoch(epoch),
        prev: (Epoch(0), Lsn(0)),
        commit: Lsn(commit),
        end: Lsn(1),
    };
    assert_eq!(
        net.start(B, A, 102),
        Err("leader epoch 1 differs from this replica's epoch 0".into())
    );
    assert_eq!(
        net.start_at(A, B, 102, 1),
        Err("this replica is not a follower (role Leader)".into())
    );
    assert_eq!(net.direct_follow(B, 102, A, 1, 1), vec![]);
    for e in [0, 2] {
        assert_eq!(
            net.start_at(B, A, 103, e),
            Err(format!(
                "leader epoch {e} differs from this replica's epoch 1"
            ))
        );
    }
    assert_eq!(net.accept(A, B, 104), (Ok(1), vec![]));
    assert_eq!(net.start(B, A, 104), Ok((1, fetch(1, 0))));
    // Nothing flows before the exchange is over and the fetch sent.
    assert_eq!(
        net.append(B, 105, 1, header(0, 1), vec![r1.clone()]),
        Err("records before the exchange finished".into())
    );
    assert_eq!(
        net.keepalive_raw(B, 105, 1, 1, 0, 1),
        Err("records before the exchange finished".into())
    );
    net.streaming(B, 1);
    assert_eq!(
        net.append(B, 106, 1, header(0, 2), vec![r1.clone()]),
        Err("message of epoch 2 on a stream of epoch 1".into())
    );
    assert_eq!(
        net.keepalive_raw(B, 106, 1, 0, 0, 1),
        Err("message of epoch 0 on a stream of epoch 1".into())
    );
    assert_eq!(net.pos(B), pos((0, 0), 0, 0, 0));

    // B reconnects: stream 1 is over on both sides.
    assert_eq!(net.accept(A, B, 107), (Ok(2), vec![]));
    assert_eq!(net.start(B, A, 107), Ok((2, fetch(1, 0))));
    assert!(!net.core(B).follower_stream_current(1));
    assert!(net.core(B).follower_stream_current(2));
    let stale = Err::<Vec<Action>, String>("the stream is no longer current".into());
    assert_eq!(net.append(B, 108, 1, header(0, 1), vec![r1.clone()]), stale);
    assert_eq!(net.keepalive_raw(B, 108, 1, 1, 0, 1), stale);
    assert_eq!(
        net.query(A, B, 108, 1, 1).1,
        Err("the stream is no longer current".into())
    );
    assert_eq!(
        net.r[B].core.follower_begin_streaming(1),
        Err("the stream is no longer current".into())
    );
    assert_eq!(net.core(B).log_gen(), 0);
    assert_eq!(
        net.fetch(A, B, 1, 1, 0),
        Err("the stream is no longer current".into())
    );
    assert!(!net.core(A).leader_stream_alive(&id(B), 1, Epoch(1)));
    assert!(net.core(A).leader_stream_alive(&id(B), 2, Epoch(1)));
    assert_eq!(net.pos(B), pos((0, 0), 0, 0, 0));

    // The current stream works.
    assert_eq!(net.fetch(A, B, 2, 1, 0), Ok(FetchStart::Log(Lsn(1))));
    net.streaming(B, 2);
    assert_eq!(net.ship(A, B, 109, 2, 1, 1), Ok(vec![Action::Append(r1)]));
    assert_eq!(net.flush(B, 110, 1), vec![]);
    assert_eq!(
        net.ack(A, B, 111, 1),
        vec![],
        "an ack on the replaced stream"
    );
    assert_eq!(net.pos(A), pos((1, 1), 1, 0, 0));
    assert_eq!(net.ack(A, B, 111, 2), vec![]);
    assert_eq!(net.pos(A), pos((1, 1), 1, 1, 1));
    // A directive naming another epoch ends the stream in the core.
    assert_eq!(net.direct_follow(B, 112, A, 2, 2), vec![]);
    assert!(!net.core(B).follower_stream_current(2));
}

// ---------------------------------------------------------------------------------------------
// 8. The leader-start barrier.
// ---------------------------------------------------------------------------------------------

#[test]
fn new_leader_takes_no_writes_until_the_waited_set_acks_its_leader_start() {
    // Epoch 1: A committed 2; B holds 1..=3, and so does C, which acknowledged 2 only.
    let mut net = epoch_one(3, 2);
    assert_eq!(net.ship(A, C, 116, 1, 3, 3).map(|f| f.len()), Ok(1));
    assert_eq!(net.flush(C, 117, 3), vec![]);
    assert_eq!(net.pos(C), pos((1, 3), 3, 2, 2));
    // Epoch 2: B leads, waiting for C.
    let start2 = start_rec(2, 4, B, false);
    assert_eq!(
        net.direct_lead(B, 1000, 2, 2, &[C]),
        vec![Action::Append(start2.clone())]
    );
    assert_eq!(net.propose(B, 1001, "k", "b"), Err(not_committed(B, 2, 4)));
    assert_eq!(
        net.core(B).read(1001, b"k2", Consistency::Leader),
        Err(not_committed(B, 2, 4))
    );
    assert_eq!(net.flush(B, 1002, 4), vec![]);
    assert_eq!(
        net.propose(B, 1002, "k", "b"),
        Err(not_committed(B, 2, 4)),
        "its own flush is not enough"
    );
    assert_eq!(net.direct_follow(C, 1003, B, 2, 2), vec![]);
    assert_eq!(net.accept(B, C, 1004), (Ok(2), vec![]));
    assert_eq!(
        net.start(C, B, 1004),
        Ok((2, FollowerNext::Query(Epoch(1))))
    );
    assert_eq!(
        net.query(B, C, 1005, 2, 1),
        ((Epoch(1), Lsn(4), false), next(fetch(4, 1)))
    );
    assert_eq!(net.fetch(B, C, 2, 4, 1), Ok(FetchStart::Log(Lsn(4))));
    net.streaming(C, 2);
    assert_eq!(
        net.ship(B, C, 1006, 2, 4, 4),
        Ok(vec![Action::Append(start2)])
    );
    assert_eq!(net.ack(B, C, 1007, 2), vec![]);
    assert_eq!(net.pos(B), pos((2, 4), 4, 3, 3));
    assert_eq!(
        net.propose(B, 1007, "k", "b"),
        Err(not_committed(B, 2, 4)),
        "C acknowledged the epoch-1 records only"
    );
    assert_eq!(net.flush(C, 1008, 4), vec![]);
    assert_eq!(net.ack(B, C, 1009, 2), vec![]);
    assert_eq!(net.pos(B), pos((2, 4), 4, 4, 4));
    assert_eq!(net.propose(B, 1010, "k", "b"), Ok(put_rec(2, 5, "k", "b")));
    assert!(net.core(B).read(1010, b"k2", Consistency::Leader).is_ok());
}

// ---------------------------------------------------------------------------------------------
// 9. Appends that do not follow the log.
// ---------------------------------------------------------------------------------------------

#[test]
fn append_that_does_not_follow_the_log_is_refused_and_changes_nothing() {
    let mut net = Net::new(2);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[]).len(), 1);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    for (k, v) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3")] {
        assert!(net.propose(A, 102, k, v).is_ok());
    }
    assert_eq!(net.flush(A, 103, 4), vec![]);
    assert_eq!(net.direct_follow(B, 104, A, 1, 1), vec![]);
    assert_eq!(net.attach(A, B, 104), (1, 1, 1));
    assert_eq!(net.ship(A, B, 105, 1, 1, 2).map(|f| f.len()), Ok(2));
    assert_eq!(net.flush(B, 106, 2), vec![]);
    let before = net.pos(B);
    assert_eq!(before, pos((1, 2), 2, 2, 2));
    let h = |prev: (u64, u64)| AppendHeader {
        leader_epoch: Epoch(1),
        prev: (Epoch(prev.0), Lsn(prev.1)),
        commit: Lsn(4),
        end: Lsn(4),
    };
    let (r3, r4) = (put_rec(1, 3, "k2", "v2"), put_rec(1, 4, "k3", "v3"));
    let cases: Vec<(AppendHeader, Vec<Record>, &str)> = vec![
        (
            h((1, 3)),
            vec![r4.clone()],
            "append does not follow this log: it continues (1, 3) but the log ends at (1, 2)",
        ),
        (
            h((0, 2)),
            vec![r3.clone()],
            "append does not follow this log: it continues (0, 2) but the log ends at (1, 2)",
        ),
        (
            h((1, 1)),
            vec![put_rec(1, 2, "k1", "v1")],
            "append does not follow this log: it continues (1, 1) but the log ends at (1, 2)",
        ),
        (
            h((1, 2)),
            vec![r3.clone(), put_rec(1, 5, "k4", "v4")],
            "record (1, 5) does not fit: expected LSN 4 with an epoch in 1..=1",
        ),
        (
            h((1, 2)),
            vec![put_rec(2, 3, "k2", "v2")],
            "record (2, 3) does not fit: expected LSN 3 with an epoch in 1..=1",
        ),
        (
            h((1, 2)),
            vec![put_rec(0, 3, "k2", "v2")],
            "record (0, 3) does not fit: expected LSN 3 with an epoch in 1..=1",
        ),
    ];
    for (header, records, why) in cases {
        assert_eq!(net.append(B, 107, 1, header, records), Err(why.into()));
        assert_eq!(net.pos(B), before, "a refused append changes nothing");
    }
    assert_eq!(net.log(B), &net.log(A)[..2]);
    assert_eq!(
        net.append(B, 108, 1, h((1, 2)), vec![r3.clone(), r4.clone()]),
        Ok(appended(&[r3, r4]))
    );
    assert_eq!(net.flush(B, 109, 4), vec![]);
    assert_eq!(net.pos(B), pos((1, 4), 4, 4, 4));
    assert_eq!(net.log(B), net.log(A));

    // The leader refuses a fetch that does not continue its log the same way.
    assert_eq!(
        net.fetch(A, B, 1, 3, 2),
        Err(
            "fetch from LSN 3 does not follow this log: the follower has epoch 2 at LSN 2, \
             this log has Some(Epoch(1))"
                .into()
        )
    );
    for from in [0, 6] {
        assert_eq!(
            net.fetch(A, B, 1, from, 1),
            Err(format!(
                "fetch from LSN {from} is outside this log (it ends at 4)"
            ))
        );
    }
    assert_eq!(net.fetch(A, B, 1, 5, 1), Ok(FetchStart::Log(Lsn(5))));
}

// ---------------------------------------------------------------------------------------------
// 10. log_gen.
// ---------------------------------------------------------------------------------------------

#[test]
fn log_gen_counts_cuts_and_snapshot_installs_not_appends_or_compaction() {
    // A crashed before flushing its write at LSN 3, which B had flushed; A restarts and is made
    // leader of epoch 2 (a restart needs a new epoch).
    let mut net = Net::new(2);
    let shared = vec![start_rec(1, 1, A, false), put_rec(1, 2, "k1", "v1")];
    let mut b_log = shared.clone();
    b_log.push(put_rec(1, 3, "k2", "v2"));
    for (i, records) in [(A, shared), (B, b_log)] {
        net.recover(
            i,
            declared(i),
            Recovered {
                epoch: Epoch(1),
                applied_rev: 1,
                records,
                log_start: Lsn(1),
                ..Recovered::default()
            },
        );
    }
    assert_eq!(
        net.direct_lead(A, 100, 2, 2, &[]),
        vec![Action::Append(start_rec(2, 3, A, false))]
    );
    assert_eq!(net.flush(A, 101, 3), vec![]);
    assert_eq!(net.pos(A), pos((2, 3), 3, 3, 3));
    assert_eq!(net.direct_follow(B, 102, A, 2, 2), vec![]);
    assert_eq!(net.accept(A, B, 103), (Ok(1), vec![]));
    assert_eq!(net.start(B, A, 103), Ok((1, FollowerNext::Query(Epoch(1)))));
    assert_eq!(net.core(B).log_gen(), 0);
    assert_eq!(
        net.query(A, B, 104, 1, 1),
        (
            (Epoch(1), Lsn(3), false),
            cut_then(fetch(3, 1), 3, vec![put_rec(1, 3, "k2", "v2")])
        )
    );
    assert_eq!(net.core(B).log_gen(), 1, "a cut");
    assert_eq!(net.fetch(A, B, 1, 3, 1), Ok(FetchStart::Log(Lsn(3))));
    net.streaming(B, 1);
    assert_eq!(net.ship(A, B, 105, 1, 3, 3).map(|f| f.len()), Ok(1));
    assert_eq!(net.flush(B, 106, 3), vec![]);
    assert_eq!(net.keepalive(A, B, 107, 1), Ok(vec![]));
    assert_eq!(net.pos(B), pos((2, 3), 3, 3, 3));
    assert_eq!(
        net.core(B).log_gen(),
        1,
        "appends, flushes and commits are not cuts"
    );

    // A writes on, snapshots and compacts everything while B is away.
    assert!(net.propose(A, 110, "k3", "v3").is_ok());
    assert!(net.propose(A, 110, "k4", "v4").is_ok());
    assert_eq!(net.flush(A, 111, 5), vec![]);
    let snap = net.r[A].core.begin_snapshot();
    net.r[A].core.end_snapshot(Some(snap.lsn));
    net.r[A].core.set_log_start(Lsn(6));
    net.check("set_log_start");
    assert_eq!(
        net.core(A).log_gen(),
        0,
        "the leader's compaction is no cut"
    );
    // B's new stream: the exchange cuts nothing, the fetch needs the snapshot.
    assert_eq!(net.accept(A, B, 120), (Ok(2), vec![]));
    assert_eq!(net.start(B, A, 120), Ok((2, FollowerNext::Query(Epoch(2)))));
    assert_eq!(
        net.query(A, B, 121, 2, 2),
        ((Epoch(2), Lsn(6), false), next(fetch(4, 2)))
    );
    assert_eq!(net.core(B).log_gen(), 1);
    assert_eq!(net.fetch(A, B, 2, 4, 2), Ok(FetchStart::Snapshot));
    net.streaming(B, 2);
    net.install(B, 122, snap);
    assert_eq!(net.core(B).log_gen(), 2, "a snapshot install");
    assert_eq!(net.pos(B), pos((2, 5), 5, 5, 5));
    assert_eq!(
        net.core(B).history(),
        &[(Epoch(1), Lsn(1)), (Epoch(2), Lsn(3))]
    );
    assert!(net.propose(A, 123, "k5", "v5").is_ok());
    assert_eq!(net.ship(A, B, 124, 2, 6, 6).map(|f| f.len()), Ok(1));
    assert_eq!(net.core(B).log_gen(), 2);
    // (A resync bumps it too: see `cut_below_commit_is_refused_...`.)
}

// ---------------------------------------------------------------------------------------------
// 11. `unclean` on a follower.
// ---------------------------------------------------------------------------------------------

#[test]
fn unclean_follower_is_cleared_once_its_flush_reaches_the_first_commit_heard() {
    let mut net = Net::new(2);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[]).len(), 1);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert!(net.propose(A, 102, "k1", "v1").is_ok());
    assert!(net.propose(A, 102, "k2", "v2").is_ok());
    assert_eq!(net.flush(A, 103, 3), vec![]);
    assert_eq!(net.pos(A), pos((1, 3), 3, 3, 3));
    // B: a new data directory.
    net.recover(
        B,
        DataId(99),
        Recovered {
            unclean: true,
            ..Recovered::default()
        },
    );
    assert!(net.core(B).unclean());
    assert_eq!(net.direct_follow(B, 110, A, 1, 1), vec![]);
    assert_eq!(net.attach(A, B, 111), (1, 1, 1));
    assert!(net.core(B).unclean());
    // The first message carries commit 3: that is the target.
    let first = net.log(A)[..2].to_vec();
    assert_eq!(net.ship(A, B, 112, 1, 1, 2), Ok(appended(&first)));
    assert_eq!(net.flush(B, 113, 2), vec![]);
    assert!(net.core(B).unclean(), "flushed 2, target 3");
    assert!(net.core(B).heartbeat(113, 1).unclean);
    // The leader's commit moves to 5; the target stays 3.
    assert!(net.propose(A, 114, "k3", "v3").is_ok());
    assert!(net.propose(A, 114, "k4", "v4").is_ok());
    assert_eq!(net.flush(A, 115, 5), vec![]);
    assert_eq!(net.keepalive(A, B, 116, 1), Ok(vec![]));
    assert!(net.core(B).unclean());
    let rest = net.log(A)[2..].to_vec();
    assert_eq!(net.ship(A, B, 117, 1, 3, 5), Ok(appended(&rest)));
    assert!(net.core(B).unclean(), "appended, not flushed");
    assert_eq!(net.flush(B, 118, 3), vec![Action::StoreUnclean(false)]);
    assert!(!net.core(B).unclean());
    assert_eq!(net.pos(B), pos((1, 5), 3, 3, 3));
    assert!(!net.core(B).heartbeat(118, 2).unclean);
    assert_eq!(net.flush(B, 119, 5), vec![], "cleared once");
    assert_eq!(net.pos(B), pos((1, 5), 5, 5, 5));
}

// ---------------------------------------------------------------------------------------------
// 12. The waited set.
// ---------------------------------------------------------------------------------------------

#[test]
fn waited_member_with_another_data_id_does_not_count_and_dropping_it_commits_at_once() {
    // C's data directory was replaced (data_id 99); the member list still records 23.
    let mut net = Net::new(3);
    net.recover(C, DataId(99), Recovered::default());
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[B, C]).len(), 1);
    assert_eq!(net.direct_follow(B, 100, A, 1, 1), vec![]);
    assert_eq!(net.direct_follow(C, 100, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert_eq!(net.attach(A, B, 102), (1, 1, 1));
    assert_eq!(net.attach(A, C, 102), (2, 1, 1));
    for (f, s) in [(B, 1), (C, 2)] {
        assert_eq!(net.ship(A, f, 103, 1, 1, 1).map(|x| x.len()), Ok(1));
        assert_eq!(net.flush(f, 104, 1), vec![]);
        assert_eq!(net.ack(A, f, 105, s), vec![]);
    }
    assert_eq!(
        net.pos(A),
        pos((1, 1), 1, 0, 0),
        "C's acknowledgement is of another data directory"
    );
    let hb = net.core(A).heartbeat(105, 1);
    assert_eq!(
        hb.waiting
            .iter()
            .map(|w| (w.id.clone(), w.data_id, w.flushed_lsn))
            .collect::<Vec<_>>(),
        vec![(id(B), declared(B), Lsn(1)), (id(C), declared(C), Lsn(0))]
    );
    assert_eq!(net.propose(A, 106, "k1", "v1"), Err(not_committed(A, 1, 1)));

    // The controller drops C: commit moves within the directive's application.
    assert_eq!(net.direct_lead(A, 107, 1, 2, &[B]), vec![]);
    assert_eq!(net.pos(A), pos((1, 1), 1, 1, 1));
    let r2 = put_rec(1, 2, "k1", "v1");
    assert_eq!(net.propose(A, 108, "k1", "v1"), Ok(r2.clone()));
    assert_eq!(net.flush(A, 109, 2), vec![]);
    assert_eq!(net.pos(A), pos((1, 2), 2, 1, 1));
    for (f, s) in [(B, 1), (C, 2)] {
        assert_eq!(
            net.ship(A, f, 110, 1, 2, 2),
            Ok(vec![Action::Append(r2.clone())])
        );
        assert_eq!(net.flush(f, 111, 2), vec![]);
        assert_eq!(net.ack(A, f, 112, s), vec![]);
    }
    assert_eq!(net.pos(A), pos((1, 2), 2, 2, 2));

    // C is added back under its new data_id: now its acknowledgements count.
    let mut d = net.lead_d(A, 1, 3, &[B]);
    d.waited.push(MemberRef {
        id: id(C),
        data_id: DataId(99),
    });
    assert_eq!(net.offer(A, 120, &d), vec![]);
    // Waiting for C (data_id 99) began at the log end when the directive was applied.
    let hb = net.core(A).heartbeat(120, 2);
    assert_eq!(
        hb.waiting
            .iter()
            .map(|w| (w.id.clone(), w.data_id, w.since_lsn, w.flushed_lsn))
            .collect::<Vec<_>>(),
        vec![
            (id(B), declared(B), Lsn(0), Lsn(2)),
            (id(C), DataId(99), Lsn(2), Lsn(2))
        ]
    );
    let r3 = put_rec(1, 3, "k2", "v2");
    assert_eq!(net.propose(A, 121, "k2", "v2"), Ok(r3.clone()));
    assert_eq!(net.flush(A, 122, 3), vec![]);
    for f in [B, C] {
        assert_eq!(
            net.ship(A, f, 123, 1, 3, 3),
            Ok(vec![Action::Append(r3.clone())])
        );
    }
    assert_eq!(net.flush(B, 124, 3), vec![]);
    assert_eq!(net.ack(A, B, 125, 1), vec![]);
    assert_eq!(net.pos(A), pos((1, 3), 3, 2, 2), "C has not acknowledged 3");
    assert_eq!(net.flush(C, 126, 3), vec![]);
    assert_eq!(net.ack(A, C, 127, 2), vec![]);
    assert_eq!(net.pos(A), pos((1, 3), 3, 3, 3));
}

/// DESIGN.md §6: a follower whose log lost acknowledged records to damage (recovery cut them;
/// the meta file says where) is repaired like any unclean follower: once its flush reaches the
/// first commit LSN it heard, the damage is forgotten with `unclean`, and it may lead again.
#[test]
fn a_follower_repaired_from_the_leader_forgets_its_damage_with_unclean() {
    let mut net = Net::new(2);
    assert_eq!(net.direct_lead(A, 100, 1, 1, &[]).len(), 1);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert!(net.propose(A, 102, "k1", "v1").is_ok());
    assert!(net.propose(A, 102, "k2", "v2").is_ok());
    assert_eq!(net.flush(A, 103, 3), vec![]);
    // B kept only LSN 1: LSNs 2 and 3, which it had acknowledged, were cut as damaged.
    net.recover(
        B,
        DataId(99),
        Recovered {
            epoch: Epoch(1),
            unclean: true,
            damaged: Some("wal/00000000000000000001.seg: offset 4196: checksum mismatch".into()),
            records: net.log(A)[..1].to_vec(),
            log_start: Lsn(1),
            ..Recovered::default()
        },
    );
    assert!(net.core(B).damaged().is_some());
    assert_eq!(net.direct_follow(B, 110, A, 1, 1), vec![]);
    assert_eq!(net.attach(A, B, 111), (1, 1, 2), "it fetches from LSN 2");
    let rest = net.log(A)[1..].to_vec();
    assert_eq!(net.ship(A, B, 112, 1, 2, 3), Ok(appended(&rest)));
    assert!(net.core(B).damaged().is_some(), "appended, not flushed");
    assert_eq!(net.flush(B, 113, 3), vec![Action::StoreUnclean(false)]);
    assert!(!net.core(B).unclean());
    assert_eq!(net.core(B).damaged(), None);
}

/// A follower whose disk stalls still acknowledges keepalives, with an unchanged flushed LSN:
/// its acks stay fresh while the record it owes ages. The leader reports both ages for every
/// waited member (`last_ack_ms`, `owed_ms`), so the controller can replace a stalled sync
/// member (found by the chaos runs: a sync follower with a 2 s fsync stall held every commit
/// for the whole stall).
#[test]
fn a_waited_member_that_acks_without_flushing_is_reported_owing() {
    let mut net = Net::new(2);
    let start1 = start_rec(1, 1, A, false);
    assert_eq!(
        net.direct_lead(A, 100, 1, 1, &[B]),
        vec![Action::Append(start1.clone())]
    );
    assert_eq!(net.direct_follow(B, 100, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert_eq!(net.accept(A, B, 102), (Ok(1), vec![]));
    assert_eq!(net.start(B, A, 102), Ok((1, fetch(1, 0))));
    assert_eq!(net.fetch(A, B, 1, 1, 0), Ok(FetchStart::Log(Lsn(1))));
    net.streaming(B, 1);
    assert_eq!(
        net.ship(A, B, 110, 1, 1, 1),
        Ok(vec![Action::Append(start1.clone())])
    );
    assert_eq!(net.flush(B, 111, 1), vec![]);
    assert_eq!(net.ack(A, B, 112, 1), vec![]);
    let ages = |net: &mut Net, now: u64| {
        let w = net.core(A).heartbeat(now, 1).waiting;
        (w[0].flushed_lsn, w[0].last_ack_ms, w[0].owed_ms)
    };
    assert_eq!(ages(&mut net, 150), (Lsn(1), 38, 0), "B holds everything");

    // A write at 200 reaches B, whose disk stalls: it acknowledges keepalives, flushed 1.
    assert_eq!(
        net.propose(A, 200, "k1", "v1"),
        Ok(put_rec(1, 2, "k1", "v1"))
    );
    assert_eq!(net.flush(A, 201, 2), vec![]);
    assert!(net.ship(A, B, 202, 1, 2, 2).is_ok());
    for t in [300, 600, 900, 1_100] {
        assert_eq!(net.ack(A, B, t, 1), vec![]);
    }
    assert_eq!(
        ages(&mut net, 1_120),
        (Lsn(1), 20, 920),
        "acks are fresh, LSN 2 has been owed since 200"
    );
    assert_eq!(net.pos(A), pos((1, 2), 2, 1, 1), "B holds the commit");

    // The stall ends: B flushes and acknowledges; it owes nothing.
    assert_eq!(net.flush(B, 1_200, 2), vec![]);
    assert_eq!(net.ack(A, B, 1_210, 1), vec![]);
    assert_eq!(ages(&mut net, 1_220), (Lsn(2), 10, 0));
    assert_eq!(net.pos(A), pos((1, 2), 2, 2, 2));
}

/// A waited member's stream closes (a cut link): its ages run from its last acknowledgement,
/// not from when waiting for it began. Measured from the wait's start, a member cut a moment
/// ago looked silent for minutes: the controller dropped it from the sync set within a
/// heartbeat of the cut, before the followers reported the lost stream, and the leader cut
/// from its followers ran alone instead of being failed over (found by `baton-bench partial`
/// leader-cut-from-followers: failover in 1 of 4 runs).
#[test]
fn a_detached_member_is_aged_from_its_last_acknowledgement() {
    let mut net = Net::new(2);
    let start1 = start_rec(1, 1, A, false);
    assert_eq!(
        net.direct_lead(A, 100, 1, 1, &[B]),
        vec![Action::Append(start1.clone())]
    );
    assert_eq!(net.direct_follow(B, 100, A, 1, 1), vec![]);
    assert_eq!(net.flush(A, 101, 1), vec![]);
    assert_eq!(net.accept(A, B, 102), (Ok(1), vec![]));
    assert_eq!(net.start(B, A, 102), Ok((1, fetch(1, 0))));
    assert_eq!(net.fetch(A, B, 1, 1, 0), Ok(FetchStart::Log(Lsn(1))));
    net.streaming(B, 1);
    assert!(net.ship(A, B, 110, 1, 1, 1).is_ok());
    assert_eq!(net.flush(B, 111, 1), vec![]);
    assert_eq!(net.ack(A, B, 500, 1), vec![]);
    assert_eq!(
        net.propose(A, 550, "k1", "v1"),
        Ok(put_rec(1, 2, "k1", "v1"))
    );
    net.r[A].core.leader_detach(&id(B), 1);
    let w = net.core(A).heartbeat(700, 1).waiting;
    assert_eq!(
        (w[0].last_ack_ms, w[0].owed_ms),
        (200, 150),
        "acknowledged at 500, owes LSN 2 appended at 550"
    );
    // A record appended after the stream closed is owed from its own append only when
    // nothing older is owed.
    assert_eq!(
        net.propose(A, 720, "k2", "v2"),
        Ok(put_rec(1, 3, "k2", "v2"))
    );
    let w = net.core(A).heartbeat(750, 1).waiting;
    assert_eq!((w[0].last_ack_ms, w[0].owed_ms), (250, 200));
    // B comes back on a new stream: its ages follow the new stream.
    assert_eq!(net.accept(A, B, 800), (Ok(2), vec![]));
    let w = net.core(A).heartbeat(850, 1).waiting;
    assert_eq!((w[0].last_ack_ms, w[0].owed_ms), (50, 50));
}

/// A directed leader that waits (`start_after_ms`, a lease or its promises) owes nothing before
/// its epoch begins: its waited members' ages count from the leader-start, not from the
/// directive. Counted from the directive, a sync member looked 800 ms silent as soon as the
/// leader started after a 700 ms wait, and the controller weighed a planned failover right
/// after a cluster start (found in `baton-bench failover`'s journal).
#[test]
fn waited_members_are_aged_from_the_leader_start_not_the_directive() {
    let mut net = Net::new(2);
    let mut d = net.lead_d(A, 1, 1, &[B]);
    d.start_after_ms = 700;
    assert_eq!(net.offer(A, 100, &d), vec![]);
    let w = net.core(A).heartbeat(600, 1).waiting;
    assert_eq!(w[0].last_ack_ms, 500, "waiting since the directive");
    let fx = net.r[A].core.tick(800);
    assert!(
        matches!(fx.as_slice(), [Action::Append(_)]),
        "the leader-start: {fx:?}"
    );
    let w = net.core(A).heartbeat(850, 1).waiting;
    assert_eq!((w[0].last_ack_ms, w[0].owed_ms), (50, 50));
}
