//! Exact tests of the replica's protocol core (`replica/src/core/`) as a pure state machine:
//! every test feeds directives, ticks, proposals and flush notifications with explicit `now`
//! values and asserts the exact verdicts, records, effects, rejections and positions that come
//! back, calling `check_invariants()` after every step. It owns the directive ordering rules,
//! the leader lease, the leader-start record, `If-Match`, the commit rule on the leader's own
//! flush, the refusal to re-lead a recovered epoch, recovery from a snapshot plus records, and
//! snapshot + replay equivalence (a proptest, partly through real snapshot files).
//!
//! It deliberately does not test the runtime around the core (`node.rs`: threads, the log
//! writer, the meta file, HTTP) nor the log stores, which have their own suites.

use baton_common::api::LeaderHint;
use baton_common::directive::{Directive, LeaderRef, Member, MemberRef, Mode, ReportedRole, Role};
use baton_common::ids::Expect;
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId, Version};
use baton_replica::core::{
    Action, Consistency, Core, CoreConfig, ReadOk, Recovered, Verdict, WriteReject, WriteReq,
};
use baton_replica::snapshot::{self, Snapshot};
use baton_replica::state::{Entry, KvState};
use baton_replica::wal::{Op, Record};
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::HashMap;

const ME: &str = "r1";
const MY_ADDR: &str = "127.0.0.1:7101";
const MY_BOOT: BootId = BootId(11);
const OTHER: &str = "r2";
const OTHER_ADDR: &str = "127.0.0.1:7102";
/// 1000 ms shortened by the 1% drift bound of [`cfg`].
const LEASE_MS: u64 = 1000;
const GRANT_MS: u64 = 990;

// ---------------------------------------------------------------------------------------------
// Builders and step helpers. Every helper that changes the core checks its invariants after.
// ---------------------------------------------------------------------------------------------

fn cfg(boot: BootId) -> CoreConfig {
    CoreConfig {
        id: NodeId(ME.into()),
        cluster: "main".into(),
        addr: MY_ADDR.into(),
        data_id: DataId(21),
        boot_id: boot,
        drift: 0.01,
        snapshot_log_bytes: u64::MAX,
    }
}

fn checked(core: &Core, step: &str) {
    if let Err(e) = core.check_invariants() {
        panic!("invariant broken after {step}: {e}");
    }
}

fn fresh() -> Core {
    let core = Core::new(cfg(MY_BOOT), Recovered::default());
    checked(&core, "Core::new");
    core
}

fn recovered(rec: Recovered) -> Core {
    let core = Core::new(cfg(MY_BOOT), rec);
    checked(&core, "Core::new(recovered)");
    core
}

fn me_ref(boot: BootId) -> LeaderRef {
    LeaderRef {
        id: NodeId(ME.into()),
        addr: MY_ADDR.into(),
        boot_id: boot,
        data_id: Default::default(),
    }
}

fn other_ref() -> LeaderRef {
    LeaderRef {
        id: NodeId(OTHER.into()),
        addr: OTHER_ADDR.into(),
        boot_id: BootId(77),
        data_id: Default::default(),
    }
}

fn r2() -> MemberRef {
    MemberRef {
        id: NodeId(OTHER.into()),
        data_id: DataId(22),
    }
}

/// An active controller's directive with the given epoch, rev, role and leader; term 1.
fn directive(epoch: u64, rev: u64, role: Option<Role>, leader: Option<LeaderRef>) -> Directive {
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
        waited: Vec::new(),
        lease_ms: LEASE_MS,
        start_after_ms: 0,
        promises_void: false,
        mode: Mode::SemiSync,
        strict: false,
        lossy: false,
        cluster_id: 0,
    }
}

fn lead(epoch: u64, rev: u64) -> Directive {
    directive(epoch, rev, Some(Role::Leader), Some(me_ref(MY_BOOT)))
}

fn follow(epoch: u64, rev: u64) -> Directive {
    directive(epoch, rev, Some(Role::Follower), Some(other_ref()))
}

/// The runtime's directive path: `on_directive`, whose list is exactly what the ordering rules
/// (`check_directive`) decided — `[Ignore(why)]`, `[PersistEpoch]` (then, the epoch stored,
/// `on_directive_persisted`) or the directive's actions at once. Returns the verdict and the
/// actions of the directive itself (empty when ignored).
fn offer(core: &mut Core, now: u64, sent_at: u64, d: &Directive) -> (Verdict, Vec<Action>) {
    let v = core.check_directive(d);
    let first = core.on_directive(now, sent_at, d);
    checked(core, "on_directive");
    let fx = match &v {
        Verdict::Ignore(why) => {
            assert_eq!(first, vec![Action::Ignore(why.clone())]);
            Vec::new()
        }
        Verdict::Accept {
            persist: Some((epoch, rev)),
        } => {
            assert_eq!(
                first,
                vec![Action::PersistEpoch {
                    epoch: *epoch,
                    rev: Some(*rev),
                    cluster_id: d.cluster_id
                }]
            );
            let fx = core.on_directive_persisted(now, sent_at, d);
            checked(core, "on_directive_persisted");
            fx
        }
        Verdict::Accept { persist: None } => first,
    };
    (v, fx)
}

fn tick(core: &mut Core, now: u64) -> Vec<Action> {
    let fx = core.tick(now);
    checked(core, "tick");
    fx
}

fn flushed(core: &mut Core, now: u64, lsn: u64) -> Vec<Action> {
    let fx = core.on_flushed(now, Lsn(lsn), core.log_gen());
    checked(core, "on_flushed");
    fx
}

/// An accepted write is exactly one append; returns its record.
fn propose(core: &mut Core, now: u64, req: WriteReq) -> Result<Record, WriteReject> {
    let r = core.propose(now, req);
    checked(core, "propose");
    r.map(|fx| match fx.as_slice() {
        [Action::Append(rec)] => rec.clone(),
        other => panic!("an accepted write appends one record, not {other:?}"),
    })
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str, expect: Option<Expect>) -> WriteReq {
    WriteReq {
        key: b(key),
        value: Some(b(value)),
        expect,
    }
}

fn del(key: &str, expect: Option<Expect>) -> WriteReq {
    WriteReq {
        key: b(key),
        value: None,
        expect,
    }
}

fn ver(epoch: u64, lsn: u64) -> Version {
    Version {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
    }
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

fn del_rec(epoch: u64, lsn: u64, key: &str) -> Record {
    Record {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
        op: Op::Delete { key: b(key) },
    }
}

fn start_rec(epoch: u64, lsn: u64, lossy: bool) -> Record {
    Record {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
        op: Op::LeaderStart {
            leader: NodeId(ME.into()),
            lossy,
        },
    }
}

fn entry(value: &str, epoch: u64, lsn: u64) -> Entry {
    Entry {
        value: b(value),
        version: ver(epoch, lsn),
    }
}

fn read_any(core: &Core, now: u64, key: &str) -> Option<Entry> {
    core.read(now, key.as_bytes(), Consistency::Any)
        .expect("`any` reads are always served")
        .entry
}

fn not_leader(reason: &str, leader: Option<LeaderHint>) -> WriteReject {
    WriteReject::NotLeader {
        reason: reason.into(),
        leader,
    }
}

fn me_hint(epoch: u64) -> Option<LeaderHint> {
    Some(LeaderHint {
        id: NodeId(ME.into()),
        addr: MY_ADDR.into(),
        epoch: Epoch(epoch),
    })
}

/// A fresh core led at epoch 1 (rev 1) with its leader-start (LSN 1) flushed and applied; the
/// directive answered a heartbeat sent at `now`, so the lease runs until `now + GRANT_MS`.
fn started_leader(now: u64) -> Core {
    started_leader_with(now, lead(1, 1))
}

fn started_leader_with(now: u64, d: Directive) -> Core {
    let mut core = fresh();
    let (v, fx) = offer(&mut core, now, now, &d);
    assert_eq!(
        v,
        Verdict::Accept {
            persist: Some((d.epoch, d.rev))
        }
    );
    assert_eq!(fx, vec![Action::Append(start_rec(d.epoch.0, 1, d.lossy))]);
    assert_eq!(flushed(&mut core, now, 1), vec![]);
    assert_eq!(core.applied(), Lsn(1));
    core
}

// ---------------------------------------------------------------------------------------------
// A fresh core.
// ---------------------------------------------------------------------------------------------

#[test]
fn fresh_core_has_no_role_refuses_writes_and_leader_reads_but_serves_any_reads() {
    let mut core = fresh();
    assert_eq!(core.role(), ReportedRole::None);
    assert_eq!(core.epoch(), Epoch(0));
    assert_eq!(core.log_end(), (Epoch(0), Lsn(0)));
    let no_role = "this replica has no role yet (no directive from an active controller)";
    assert_eq!(
        propose(&mut core, 10, put("k", "v", None)),
        Err(not_leader(no_role, None))
    );
    assert_eq!(
        core.read(10, b"k", Consistency::Leader),
        Err(not_leader(no_role, None))
    );
    assert_eq!(
        core.read(10, b"k", Consistency::Any),
        Ok(ReadOk {
            entry: None,
            epoch: Epoch(0),
            applied: Lsn(0),
            staleness_ms: None,
            lag_records: 0,
        })
    );
    assert_eq!(
        core.log_end(),
        (Epoch(0), Lsn(0)),
        "a refused write appends nothing"
    );
    assert_eq!(
        tick(&mut core, 1_000_000),
        vec![],
        "no role, nothing to start"
    );
    assert_eq!(core.status(10).health, "no_role");
    let hb = core.heartbeat(10, 1);
    assert_eq!(hb.role, ReportedRole::None);
    assert_eq!(hb.lease_left_ms, None);
}

// ---------------------------------------------------------------------------------------------
// Directive ordering (DESIGN.md §5).
// ---------------------------------------------------------------------------------------------

#[test]
fn directive_ordering_by_epoch_rev_and_controller_term() {
    // Persisted at epoch 5, rev 10.
    let mut core = recovered(Recovered {
        epoch: Epoch(5),
        applied_rev: 10,
        ..Recovered::default()
    });
    // Same epoch and rev from controller term 7: applied, nothing to persist; the term is seen.
    let mut d = follow(5, 10);
    d.controller_term = 7;
    assert_eq!(
        offer(&mut core, 100, 100, &d),
        (Verdict::Accept { persist: None }, vec![])
    );
    assert_eq!(core.role(), ReportedRole::Follower);

    // A standby's answer carries no role, whatever its epoch.
    let mut standby = lead(9, 50);
    standby.active = false;
    standby.controller_term = 99;
    assert_eq!(
        offer(&mut core, 101, 101, &standby),
        (
            Verdict::Ignore("answer from a standby controller carries no role".into()),
            vec![]
        )
    );
    // Epoch below the persisted one.
    let mut d4 = lead(4, 99);
    d4.controller_term = 99;
    assert_eq!(
        offer(&mut core, 102, 102, &d4),
        (
            Verdict::Ignore("directive epoch 4 is below the persisted epoch 5".into()),
            vec![]
        )
    );
    // Same epoch, lower rev.
    let mut old_rev = lead(5, 9);
    old_rev.controller_term = 7;
    assert_eq!(
        offer(&mut core, 103, 103, &old_rev),
        (
            Verdict::Ignore("directive rev 9 is older than the applied rev 10".into()),
            vec![]
        )
    );
    // Same epoch, higher rev, but from a controller term below the highest seen.
    let mut old_term = lead(5, 11);
    old_term.controller_term = 6;
    assert_eq!(
        offer(&mut core, 104, 104, &old_term),
        (
            Verdict::Ignore("directive from controller term 6 after term 7 was seen".into()),
            vec![]
        )
    );
    // None of the ignored ones changed anything.
    assert_eq!(core.role(), ReportedRole::Follower);
    assert_eq!((core.epoch(), core.applied_rev()), (Epoch(5), 10));

    // Same epoch, higher rev, same term: persist the new rev.
    let mut d11 = follow(5, 11);
    d11.controller_term = 7;
    assert_eq!(
        core.check_directive(&d11),
        Verdict::Accept {
            persist: Some((Epoch(5), 11))
        }
    );
    // A higher term at the same epoch and rev is accepted without anything to persist.
    let mut d10 = follow(5, 10);
    d10.controller_term = 8;
    assert_eq!(
        core.check_directive(&d10),
        Verdict::Accept { persist: None }
    );

    // A higher epoch is applied whatever its rev and term.
    let mut up = follow(6, 3);
    up.controller_term = 2;
    assert_eq!(
        offer(&mut core, 105, 105, &up),
        (
            Verdict::Accept {
                persist: Some((Epoch(6), 3))
            },
            vec![]
        )
    );
    assert_eq!((core.epoch(), core.applied_rev()), (Epoch(6), 3));
    assert_eq!(core.heartbeat(105, 2).applied_rev, 3);

    // Now epoch 5 is below, and at epoch 6 rev 2 is old.
    assert_eq!(
        core.check_directive(&follow(5, 100)),
        Verdict::Ignore("directive epoch 5 is below the persisted epoch 6".into())
    );
    assert_eq!(
        core.check_directive(&follow(6, 2)),
        Verdict::Ignore("directive rev 2 is older than the applied rev 3".into())
    );
    // The term order restarts with a higher epoch (after an etcd restore the election
    // revisions go back, and `recover`'s new epoch must be followed): at epoch 6 term 2 is
    // the highest seen, so a lower term is refused and a higher one accepted.
    let mut t1 = follow(6, 4);
    t1.controller_term = 1;
    assert_eq!(
        core.check_directive(&t1),
        Verdict::Ignore("directive from controller term 1 after term 2 was seen".into())
    );
    let mut t7 = follow(6, 3);
    t7.controller_term = 7;
    assert_eq!(core.check_directive(&t7), Verdict::Accept { persist: None });
}

#[test]
fn persisted_epoch_from_recovered_log_end_orders_directives() {
    // The meta file says epoch 2, but the log already holds records of epoch 3 (durable
    // themselves): the core's epoch is the higher one, so an epoch-2 directive is stale.
    let core = recovered(Recovered {
        epoch: Epoch(2),
        applied_rev: 4,
        records: vec![start_rec(3, 1, false)],
        ..Recovered::default()
    });
    assert_eq!(core.epoch(), Epoch(3));
    assert_eq!(
        core.check_directive(&follow(2, 9)),
        Verdict::Ignore("directive epoch 2 is below the persisted epoch 3".into())
    );
    assert_eq!(
        core.check_directive(&follow(3, 5)),
        Verdict::Accept {
            persist: Some((Epoch(3), 5))
        }
    );
    assert_eq!(
        core.check_directive(&follow(3, 3)),
        Verdict::Ignore("directive rev 3 is older than the applied rev 4".into())
    );
}

#[test]
fn leader_directive_naming_another_boot_does_not_lead() {
    // A restarted leader sees the directive its previous boot was given.
    let mut core = fresh();
    let mut d = directive(1, 1, Some(Role::Leader), Some(me_ref(BootId(10))));
    d.start_after_ms = 0;
    assert_eq!(
        offer(&mut core, 100, 100, &d),
        (
            Verdict::Accept {
                persist: Some((Epoch(1), 1))
            },
            vec![]
        )
    );
    assert_eq!(core.role(), ReportedRole::None);
    assert_eq!(tick(&mut core, 5_000), vec![]);
    assert_eq!(core.log_end(), (Epoch(0), Lsn(0)));
    assert!(matches!(
        propose(&mut core, 101, put("k", "v", None)),
        Err(WriteReject::NotLeader { .. })
    ));
    // Another node's id with my boot id does not make me lead either.
    let mut d2 = directive(1, 2, Some(Role::Leader), Some(other_ref()));
    d2.leader.as_mut().expect("leader").boot_id = MY_BOOT;
    let (_, fx) = offer(&mut core, 102, 102, &d2);
    assert_eq!(fx, vec![]);
    assert_eq!(core.role(), ReportedRole::None);
    // The directive for this boot does.
    let (_, fx) = offer(&mut core, 103, 103, &lead(2, 3));
    assert_eq!(fx, vec![Action::Append(start_rec(2, 1, false))]);
    assert_eq!(core.role(), ReportedRole::Leader);
}

// ---------------------------------------------------------------------------------------------
// Leading: leader-start, commit, apply.
// ---------------------------------------------------------------------------------------------

#[test]
fn leader_start_waits_for_start_after_then_writes_wait_for_its_commit() {
    let mut core = fresh();
    let mut d = lead(3, 7);
    d.start_after_ms = 300;
    d.lossy = true;
    // Received at 1000, answering a heartbeat sent at 990: lease until 990 + 990.
    assert_eq!(
        offer(&mut core, 1000, 990, &d),
        (
            Verdict::Accept {
                persist: Some((Epoch(3), 7))
            },
            vec![]
        )
    );
    assert_eq!(core.role(), ReportedRole::Leader);
    assert_eq!(core.status(1000).health, "starting");
    let not_started = not_leader(
        "leader of epoch 3 has not started its epoch yet",
        me_hint(3),
    );
    assert_eq!(
        propose(&mut core, 1000, put("k", "v", None)),
        Err(not_started.clone())
    );
    assert_eq!(core.read(1000, b"k", Consistency::Leader), Err(not_started));
    assert_eq!(tick(&mut core, 1299), vec![]);
    assert_eq!(core.log_end(), (Epoch(0), Lsn(0)));
    // A renewal before the start moves the lease only, not the start time.
    let mut renew = lead(3, 7);
    renew.start_after_ms = 5_000;
    renew.lossy = false;
    assert_eq!(
        offer(&mut core, 1200, 1190, &renew),
        (Verdict::Accept { persist: None }, vec![])
    );
    assert_eq!(core.status(1200).lease_left_ms, 1190 + GRANT_MS - 1200);

    assert_eq!(
        tick(&mut core, 1300),
        vec![Action::Append(start_rec(3, 1, true))]
    );
    assert_eq!(core.log_end(), (Epoch(3), Lsn(1)));
    assert_eq!(core.history(), &[(Epoch(3), Lsn(1))]);
    assert_eq!(tick(&mut core, 1301), vec![], "one leader-start per epoch");

    let uncommitted = not_leader("leader-start record 1 is not committed yet", me_hint(3));
    assert_eq!(
        propose(&mut core, 1301, put("k", "v", None)),
        Err(uncommitted.clone())
    );
    assert_eq!(core.read(1301, b"k", Consistency::Leader), Err(uncommitted));

    assert_eq!(flushed(&mut core, 1302, 1), vec![]);
    assert_eq!(
        (core.flushed(), core.commit(), core.applied()),
        (Lsn(1), Lsn(1), Lsn(1))
    );
    assert_eq!(core.status(1302).health, "ok");

    let rec = propose(&mut core, 1303, put("k", "v", None)).expect("leading with a lease");
    assert_eq!(rec, put_rec(3, 2, "k", "v"));
    assert_eq!(core.log_end(), (Epoch(3), Lsn(2)));
    assert_eq!(core.commit(), Lsn(1), "appended is not committed");
    assert_eq!(
        read_any(&core, 1303, "k"),
        None,
        "not applied before commit"
    );
    assert_eq!(core.heartbeat(1310, 1).oldest_unflushed_ms, Some(7));

    assert_eq!(flushed(&mut core, 1320, 2), vec![]);
    assert_eq!(
        (core.flushed(), core.commit(), core.applied()),
        (Lsn(2), Lsn(2), Lsn(2))
    );
    assert!(core.may_acknowledge(1320));
    assert_eq!(
        core.read(1320, b"k", Consistency::Leader),
        Ok(ReadOk {
            entry: Some(entry("v", 3, 2)),
            epoch: Epoch(3),
            applied: Lsn(2),
            staleness_ms: Some(0),
            lag_records: 0,
        })
    );
    assert_eq!(core.heartbeat(1321, 2).oldest_unflushed_ms, Some(0));
}

#[test]
fn flush_notification_in_pieces_commits_only_what_is_durable() {
    let mut core = started_leader(100);
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        let rec = propose(&mut core, 101, put(k, "x", None)).expect("leader");
        assert_eq!(rec.lsn, Lsn(2 + i as u64));
    }
    assert_eq!(flushed(&mut core, 102, 3), vec![]);
    assert_eq!((core.commit(), core.applied()), (Lsn(3), Lsn(3)));
    assert_eq!(read_any(&core, 102, "b"), Some(entry("x", 1, 3)));
    assert_eq!(read_any(&core, 102, "c"), None);
    // A stale (lower) notification moves nothing back.
    assert_eq!(flushed(&mut core, 103, 2), vec![]);
    assert_eq!((core.flushed(), core.commit()), (Lsn(3), Lsn(3)));
    assert_eq!(flushed(&mut core, 104, 4), vec![]);
    assert_eq!((core.commit(), core.applied()), (Lsn(4), Lsn(4)));
    assert_eq!(core.state().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// The lease.
// ---------------------------------------------------------------------------------------------

#[test]
fn lease_runs_from_heartbeat_send_time_shortened_by_drift_and_is_renewed_at_same_epoch() {
    // Heartbeat sent at 1000, answer received at 1040: the lease counts from 1000.
    let mut core = fresh();
    let (_, fx) = offer(&mut core, 1040, 1000, &lead(1, 1));
    assert_eq!(fx, vec![Action::Append(start_rec(1, 1, false))]);
    assert_eq!(flushed(&mut core, 1041, 1), vec![]);
    let until = 1000 + GRANT_MS;
    assert_eq!(core.heartbeat(1041, 1).lease_left_ms, Some(until - 1041));

    let rec = propose(&mut core, until - 1, put("k", "v", None)).expect("lease still held");
    assert_eq!(rec.lsn, Lsn(2));
    assert!(core.may_acknowledge(until - 1));
    let no_lease = not_leader(
        "the leader holds no lease (no recent grant from the active controller, and not \
         every follower's promise)",
        me_hint(1),
    );
    assert_eq!(
        propose(&mut core, until, put("k", "w", None)),
        Err(no_lease.clone())
    );
    assert_eq!(
        core.read(until, b"k", Consistency::Leader),
        Err(no_lease.clone())
    );
    // The write appended in time is flushed after expiry: with an empty waited set it commits,
    // but may not be acknowledged.
    assert_eq!(flushed(&mut core, until + 5, 2), vec![]);
    assert_eq!(core.commit(), Lsn(2));
    assert!(!core.may_acknowledge(until + 5));
    assert_eq!(core.status(until + 5).health, "no_lease");
    assert_eq!(core.heartbeat(until + 5, 2).lease_left_ms, Some(0));
    assert!(core.read(until + 5, b"k", Consistency::Any).is_ok());

    // Renewal by a later directive at the same epoch, answering a heartbeat sent at 1500.
    assert_eq!(
        offer(&mut core, until + 10, 1500, &lead(1, 2)),
        (
            Verdict::Accept {
                persist: Some((Epoch(1), 2))
            },
            vec![]
        ),
        "a renewal appends no second leader-start"
    );
    let until2 = 1500 + GRANT_MS;
    // A grant answering an older heartbeat never shortens the lease.
    assert_eq!(
        offer(&mut core, until2 - 50, 1200, &lead(1, 3)),
        (
            Verdict::Accept {
                persist: Some((Epoch(1), 3))
            },
            vec![]
        )
    );
    assert_eq!(core.status(until2 - 50).lease_left_ms, 50);
    assert!(core.may_acknowledge(until2 - 1));
    let rec = propose(&mut core, until2 - 1, put("k", "w", None)).expect("renewed");
    assert_eq!(rec, put_rec(1, 3, "k", "w"));
    assert_eq!(
        propose(&mut core, until2, put("k", "x", None)),
        Err(no_lease)
    );
    assert!(!core.may_acknowledge(until2));
}

#[test]
fn lease_of_a_nonzero_lease_with_fractional_drift_is_truncated_conservatively() {
    // 777 ms · 0.99 = 769.23 ms: the lease ends at the whole millisecond below.
    let mut d = lead(1, 1);
    d.lease_ms = 777;
    let mut core = started_leader_with(0, d);
    assert!(core.may_acknowledge(768));
    assert_eq!(
        propose(&mut core, 768, put("k", "v", None)).map(|r| r.lsn),
        Ok(Lsn(2))
    );
    assert!(!core.may_acknowledge(769));
    assert!(matches!(
        propose(&mut core, 769, put("k", "v", None)),
        Err(WriteReject::NotLeader { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// If-Match, DELETE.
// ---------------------------------------------------------------------------------------------

#[test]
fn if_match_create_only_and_exact_version_against_committed_state() {
    let mut core = started_leader(100);
    // Create-only on an absent key.
    let r = propose(&mut core, 101, put("k", "v1", Some(Expect::Absent))).expect("absent");
    assert_eq!(r, put_rec(1, 2, "k", "v1"));
    assert_eq!(flushed(&mut core, 102, 2), vec![]);
    // Create-only on a present key: the current version is reported, nothing is appended.
    assert_eq!(
        propose(&mut core, 103, put("k", "v2", Some(Expect::Absent))),
        Err(WriteReject::PreconditionFailed {
            current: Some(ver(1, 2))
        })
    );
    // Exact version mismatch.
    assert_eq!(
        propose(
            &mut core,
            103,
            put("k", "v2", Some(Expect::Version(ver(1, 1))))
        ),
        Err(WriteReject::PreconditionFailed {
            current: Some(ver(1, 2))
        })
    );
    assert_eq!(
        propose(&mut core, 103, del("k", Some(Expect::Version(ver(2, 2))))),
        Err(WriteReject::PreconditionFailed {
            current: Some(ver(1, 2))
        })
    );
    // A version on an absent key.
    assert_eq!(
        propose(
            &mut core,
            103,
            put("z", "v", Some(Expect::Version(ver(1, 2))))
        ),
        Err(WriteReject::PreconditionFailed { current: None })
    );
    assert_eq!(
        core.log_end(),
        (Epoch(1), Lsn(2)),
        "failed conditions append nothing"
    );
    // Exact version match.
    let r = propose(
        &mut core,
        104,
        put("k", "v2", Some(Expect::Version(ver(1, 2)))),
    )
    .expect("matching version");
    assert_eq!(r, put_rec(1, 3, "k", "v2"));
    assert_eq!(flushed(&mut core, 105, 3), vec![]);
    assert_eq!(read_any(&core, 105, "k"), Some(entry("v2", 1, 3)));
}

#[test]
fn if_match_is_evaluated_against_pending_records() {
    let mut core = started_leader(100);
    let r = propose(&mut core, 101, put("k", "v1", Some(Expect::Absent))).expect("absent");
    assert_eq!(r.lsn, Lsn(2));
    // Not flushed: the state does not hold it, but If-Match sees it.
    assert_eq!(read_any(&core, 101, "k"), None);
    assert_eq!(
        propose(&mut core, 102, put("k", "v", Some(Expect::Absent))),
        Err(WriteReject::PreconditionFailed {
            current: Some(ver(1, 2))
        })
    );
    let r = propose(
        &mut core,
        103,
        put("k", "v2", Some(Expect::Version(ver(1, 2)))),
    )
    .expect("the pending version matches");
    assert_eq!(r, put_rec(1, 3, "k", "v2"));
    assert_eq!(
        propose(
            &mut core,
            104,
            put("k", "v3", Some(Expect::Version(ver(1, 2))))
        ),
        Err(WriteReject::PreconditionFailed {
            current: Some(ver(1, 3))
        })
    );
    // A pending delete makes the key absent for the next condition.
    let r = propose(&mut core, 105, del("k", Some(Expect::Version(ver(1, 3))))).expect("delete");
    assert_eq!(r, del_rec(1, 4, "k"));
    assert_eq!(
        propose(&mut core, 106, del("k", None)),
        Err(WriteReject::NotFound)
    );
    assert_eq!(
        propose(
            &mut core,
            106,
            put("k", "v", Some(Expect::Version(ver(1, 3))))
        ),
        Err(WriteReject::PreconditionFailed { current: None })
    );
    let r = propose(&mut core, 107, put("k", "v4", Some(Expect::Absent))).expect("absent again");
    assert_eq!(r, put_rec(1, 5, "k", "v4"));
    // Commit part of the pending records: the newer pending version still decides.
    assert_eq!(flushed(&mut core, 108, 3), vec![]);
    assert_eq!(read_any(&core, 108, "k"), Some(entry("v2", 1, 3)));
    assert_eq!(
        propose(
            &mut core,
            109,
            put("k", "v", Some(Expect::Version(ver(1, 3))))
        ),
        Err(WriteReject::PreconditionFailed {
            current: Some(ver(1, 5))
        })
    );
    assert_eq!(flushed(&mut core, 110, 5), vec![]);
    assert_eq!(read_any(&core, 110, "k"), Some(entry("v4", 1, 5)));
    // Everything applied: the committed state decides.
    let r = propose(
        &mut core,
        111,
        put("k", "v6", Some(Expect::Version(ver(1, 5)))),
    )
    .expect("ok");
    assert_eq!(r.lsn, Lsn(6));
}

#[test]
fn delete_of_absent_key_is_not_found_and_delete_removes_after_commit() {
    let mut core = started_leader(100);
    assert_eq!(
        propose(&mut core, 101, del("nope", None)),
        Err(WriteReject::NotFound)
    );
    assert_eq!(
        propose(&mut core, 101, del("nope", Some(Expect::Absent))),
        Err(WriteReject::NotFound)
    );
    assert_eq!(core.log_end(), (Epoch(1), Lsn(1)));
    propose(&mut core, 102, put("k", "v", None)).expect("put");
    assert_eq!(flushed(&mut core, 103, 2), vec![]);
    let r = propose(&mut core, 104, del("k", None)).expect("delete");
    assert_eq!(r, del_rec(1, 3, "k"));
    assert_eq!(
        read_any(&core, 104, "k"),
        Some(entry("v", 1, 2)),
        "not yet committed"
    );
    assert_eq!(core.state().len(), 1);
    assert_eq!(flushed(&mut core, 105, 3), vec![]);
    assert_eq!(read_any(&core, 105, "k"), None);
    assert_eq!(core.state().len(), 0);
    assert_eq!(core.state().digest(), 0);
    assert_eq!(core.state().recompute_digest(), 0);
    assert_eq!(
        propose(&mut core, 106, del("k", None)),
        Err(WriteReject::NotFound)
    );
}

// ---------------------------------------------------------------------------------------------
// The waited set, strict mode, async mode.
// ---------------------------------------------------------------------------------------------

#[test]
fn with_a_waited_set_the_leaders_own_flush_does_not_commit() {
    let mut core = started_leader(100);
    let mut d = lead(1, 2);
    d.waited = vec![r2()];
    assert_eq!(
        offer(&mut core, 110, 110, &d),
        (
            Verdict::Accept {
                persist: Some((Epoch(1), 2))
            },
            vec![]
        )
    );
    assert!(!core.status(110).degraded);
    let r = propose(&mut core, 111, put("k", "v", None)).expect("semi-sync with a member");
    assert_eq!(r.lsn, Lsn(2));
    assert_eq!(flushed(&mut core, 112, 2), vec![]);
    assert_eq!(
        (core.flushed(), core.commit(), core.applied()),
        (Lsn(2), Lsn(1), Lsn(1))
    );
    assert_eq!(read_any(&core, 112, "k"), None);
    // If-Match still sees the pending write.
    assert_eq!(
        propose(&mut core, 113, put("k", "w", Some(Expect::Absent))),
        Err(WriteReject::PreconditionFailed {
            current: Some(ver(1, 2))
        })
    );
}

#[test]
fn strict_semi_sync_with_an_empty_waited_set_refuses_writes() {
    let mut d = lead(1, 1);
    d.strict = true;
    // The leader-start itself still commits on the leader's own flush.
    let mut core = started_leader_with(100, d);
    assert_eq!(
        propose(&mut core, 101, put("k", "v", None)),
        Err(not_leader(
            "strict semi-sync: the sync set is empty, writes are blocked",
            me_hint(1)
        ))
    );
    assert_eq!(core.log_end(), (Epoch(1), Lsn(1)));
    // A member to wait for unblocks writes.
    let mut d = lead(1, 2);
    d.strict = true;
    d.waited = vec![r2()];
    offer(&mut core, 102, 102, &d);
    assert_eq!(
        propose(&mut core, 103, put("k", "v", None)).map(|r| r.lsn),
        Ok(Lsn(2))
    );
    // Strict has no meaning in async mode.
    let mut d = lead(1, 3);
    d.strict = true;
    d.mode = Mode::Async;
    offer(&mut core, 104, 104, &d);
    assert_eq!(
        propose(&mut core, 105, put("k", "w", None)).map(|r| r.lsn),
        Ok(Lsn(3))
    );
    // Non-strict semi-sync with an empty set runs degraded.
    offer(&mut core, 106, 106, &lead(1, 4));
    assert!(core.status(106).degraded);
    assert_eq!(
        propose(&mut core, 107, put("k", "x", None)).map(|r| r.lsn),
        Ok(Lsn(4))
    );
}

/// Regression: an async-mode leader waits for nobody's flush (DESIGN.md §4: acknowledged after
/// the leader's fsync), even if the directive's waited set still lists sync members. Before the
/// fix, the commit rule looked only at the waited set, so such a leader never committed.
#[test]
fn async_leader_commits_on_its_own_flush_even_with_a_waited_set() {
    let mut d = lead(1, 1);
    d.mode = Mode::Async;
    d.waited = vec![r2()];
    let mut core = started_leader_with(100, d);
    assert_eq!(core.commit(), Lsn(1));
    let r = propose(&mut core, 101, put("k", "v", None)).expect("async leader");
    assert_eq!(r.lsn, Lsn(2));
    assert_eq!(flushed(&mut core, 102, 2), vec![]);
    assert_eq!((core.commit(), core.applied()), (Lsn(2), Lsn(2)));
    assert!(core.may_acknowledge(102));
    assert!(
        !core.may_acknowledge(100 + GRANT_MS),
        "async checks the lease before acking"
    );
}

// ---------------------------------------------------------------------------------------------
// Stepping down and refusing to re-lead.
// ---------------------------------------------------------------------------------------------

#[test]
fn stepping_down_with_pending_writes_fails_them() {
    let mut core = started_leader(100);
    propose(&mut core, 101, put("k", "v", None)).expect("leader");
    assert_eq!(
        offer(&mut core, 102, 102, &follow(2, 2)),
        (
            Verdict::Accept {
                persist: Some((Epoch(2), 2))
            },
            vec![Action::FailPending("stepped down at epoch 2".into())]
        )
    );
    assert_eq!(core.role(), ReportedRole::Follower);
    assert_eq!(core.epoch(), Epoch(2));
    // The appended record stays in the log, neither committed nor applied here.
    assert_eq!(core.log_end(), (Epoch(1), Lsn(2)));
    assert_eq!((core.commit(), core.applied()), (Lsn(1), Lsn(1)));
    let other = Some(LeaderHint {
        id: NodeId(OTHER.into()),
        addr: OTHER_ADDR.into(),
        epoch: Epoch(2),
    });
    assert_eq!(
        propose(&mut core, 103, put("j", "v", None)),
        Err(not_leader("this replica is a follower", other.clone()))
    );
    assert_eq!(
        core.read(103, b"k", Consistency::Leader),
        Err(not_leader("this replica is a follower", other))
    );
    // Its own flush no longer commits: it is not the leader.
    assert_eq!(flushed(&mut core, 104, 2), vec![]);
    assert_eq!(core.commit(), Lsn(1));
    assert!(!core.may_acknowledge(104));
}

#[test]
fn fenced_leader_fails_pending_writes_and_keeps_serving_any_reads() {
    let mut core = started_leader(100);
    propose(&mut core, 101, put("a", "1", None)).expect("leader");
    assert_eq!(flushed(&mut core, 102, 2), vec![]);
    propose(&mut core, 103, put("b", "2", None)).expect("leader");
    let d = directive(2, 2, Some(Role::Fenced), None);
    assert_eq!(
        offer(&mut core, 104, 104, &d).1,
        vec![Action::FailPending("stepped down at epoch 2".into())]
    );
    assert_eq!(core.role(), ReportedRole::Fenced);
    assert_eq!(
        propose(&mut core, 105, put("c", "3", None)),
        Err(not_leader("this replica is fenced", None))
    );
    assert_eq!(read_any(&core, 105, "a"), Some(entry("1", 1, 2)));
    assert_eq!(core.heartbeat(105, 3).log_end_lsn, Lsn(3));
}

#[test]
fn leading_a_new_epoch_while_leading_fails_the_old_epochs_pending_writes() {
    let mut core = started_leader(100);
    propose(&mut core, 101, put("k", "v", None)).expect("leader");
    assert_eq!(
        offer(&mut core, 102, 102, &lead(2, 2)).1,
        vec![
            Action::FailPending("leadership moved to epoch 2".into()),
            Action::Append(start_rec(2, 3, false)),
        ]
    );
    assert_eq!(core.history(), &[(Epoch(1), Lsn(1)), (Epoch(2), Lsn(3))]);
    // The new leader-start commits the old epoch's write below it.
    assert_eq!(flushed(&mut core, 103, 3), vec![]);
    assert_eq!(read_any(&core, 103, "k"), Some(entry("v", 1, 2)));
    assert_eq!(
        propose(&mut core, 104, put("k", "w", None)),
        Ok(put_rec(2, 4, "k", "w"))
    );
}

#[test]
fn refuses_to_re_lead_an_epoch_whose_records_are_in_the_recovered_log() {
    // An earlier run led epoch 4 and wrote two records.
    let mut core = recovered(Recovered {
        epoch: Epoch(4),
        applied_rev: 7,
        records: vec![start_rec(4, 1, false), put_rec(4, 2, "k", "v")],
        ..Recovered::default()
    });
    assert_eq!(core.log_end(), (Epoch(4), Lsn(2)));
    assert_eq!(
        (core.flushed(), core.commit(), core.applied()),
        (Lsn(2), Lsn(0), Lsn(0))
    );
    assert_eq!(
        offer(&mut core, 100, 100, &lead(4, 8)),
        (
            Verdict::Accept {
                persist: Some((Epoch(4), 8))
            },
            vec![]
        )
    );
    assert_eq!(core.role(), ReportedRole::None);
    assert_eq!(tick(&mut core, 10_000), vec![]);
    assert_eq!(
        core.log_end(),
        (Epoch(4), Lsn(2)),
        "nothing appended at epoch 4"
    );
    assert!(matches!(
        propose(&mut core, 101, put("j", "v", None)),
        Err(WriteReject::NotLeader { .. })
    ));
    assert_eq!(flushed(&mut core, 102, 2), vec![]);
    assert_eq!(
        core.commit(),
        Lsn(0),
        "recovered records are not known committed"
    );

    // Epoch 5 is new to this log: lead it.
    assert_eq!(
        offer(&mut core, 103, 103, &lead(5, 9)),
        (
            Verdict::Accept {
                persist: Some((Epoch(5), 9))
            },
            vec![Action::Append(start_rec(5, 3, false))]
        )
    );
    assert_eq!(core.role(), ReportedRole::Leader);
    assert_eq!(flushed(&mut core, 104, 3), vec![]);
    assert_eq!((core.commit(), core.applied()), (Lsn(3), Lsn(3)));
    assert_eq!(read_any(&core, 104, "k"), Some(entry("v", 4, 2)));
    assert_eq!(core.history(), &[(Epoch(4), Lsn(1)), (Epoch(5), Lsn(3))]);
}

#[test]
fn shutdown_refuses_new_writes_but_lets_pending_ones_commit() {
    let mut core = started_leader(100);
    propose(&mut core, 101, put("k", "v", None)).expect("leader");
    core.begin_shutdown();
    checked(&core, "begin_shutdown");
    assert_eq!(
        propose(&mut core, 102, put("j", "v", None)),
        Err(WriteReject::ShuttingDown)
    );
    assert_eq!(flushed(&mut core, 103, 2), vec![]);
    assert_eq!(core.commit(), Lsn(2));
    assert!(core.may_acknowledge(103));
}

#[test]
fn a_fatal_log_error_fails_pending_writes_and_stops_everything() {
    let mut core = fresh();
    let mut d = lead(1, 1);
    d.start_after_ms = 100;
    assert_eq!(offer(&mut core, 0, 0, &d).1, vec![]);
    let fx = core.on_fatal("fsync failed: EIO".into());
    checked(&core, "on_fatal");
    assert_eq!(fx, vec![Action::FailPending("fsync failed: EIO".into())]);
    assert!(core.is_fatal());
    assert_eq!(tick(&mut core, 100), vec![], "a fatal core starts no epoch");
    assert_eq!(
        propose(&mut core, 101, put("k", "v", None)),
        Err(WriteReject::Fatal("fsync failed: EIO".into()))
    );
    assert_eq!(core.status(101).health, "fatal");
}

const ENOSPC: &str = "write wal/00000000000000000001.seg at offset 4096: No space left on device";

#[test]
fn a_full_disk_refuses_writes_unappended_keeps_pending_ones_and_serves_reads_until_it_has_room() {
    let mut core = started_leader(100);
    let k = propose(&mut core, 101, put("k", "v", None)).expect("leader");
    assert_eq!(k, put_rec(1, 2, "k", "v"));
    assert_eq!(core.on_disk_full(102, Some(ENOSPC.into())), vec![]);
    checked(&core, "on_disk_full");
    assert_eq!(core.disk_full(), Some(ENOSPC));
    assert!(core.heartbeat(102, 7).disk_full);
    assert!(core.status(102).disk_full);
    assert_eq!(
        core.status(102).health,
        "ok",
        "a full disk is not a health verdict of its own"
    );
    // 507, and not appended: the log end does not move.
    assert_eq!(
        propose(&mut core, 103, put("j", "w", None)),
        Err(WriteReject::InsufficientStorage(format!(
            "the log cannot be written ({ENOSPC}): not appended; writes resume once space is freed"
        )))
    );
    assert_eq!(core.log_end(), (Epoch(1), Lsn(2)));
    // Leader reads are served (of what committed: k is still pending, not acknowledged).
    assert_eq!(
        core.read(103, b"k", Consistency::Leader),
        Ok(ReadOk {
            entry: None,
            epoch: Epoch(1),
            applied: Lsn(1),
            staleness_ms: Some(0),
            lag_records: 0,
        })
    );
    // The pending write is kept (no FailPending): the retry writes it, then it commits.
    assert_eq!(core.on_disk_full(104, None), vec![]);
    checked(&core, "on_disk_full(None)");
    assert!(!core.heartbeat(104, 8).disk_full);
    assert_eq!(flushed(&mut core, 104, 2), vec![]);
    assert_eq!(core.commit(), Lsn(2));
    assert_eq!(read_any(&core, 104, "k"), Some(entry("v", 1, 2)));
    assert_eq!(
        propose(&mut core, 105, put("j", "w", None)),
        Ok(put_rec(1, 3, "j", "w"))
    );
}

#[test]
fn a_follower_with_a_full_disk_drops_its_stream_and_follows_nobody_until_it_has_room() {
    let mut core = fresh();
    let (v, _) = offer(&mut core, 0, 0, &follow(1, 1));
    assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    let leader = NodeId(OTHER.into());
    assert_eq!(core.follower_target(), Some((other_ref(), Epoch(1))));
    let (stream, _) = core
        .follower_start(1, &leader, Epoch(1))
        .expect("stream starts");
    assert!(core.follower_stream_current(stream));
    assert!(core.heartbeat(1, 1).since_leader_ms.is_some());
    assert_eq!(core.on_disk_full(2, Some(ENOSPC.into())), vec![]);
    checked(&core, "on_disk_full");
    // It takes no more records and acknowledges nothing: the stream is no longer current.
    assert!(!core.follower_stream_current(stream));
    assert_eq!(core.follower_target(), None);
    assert_eq!(
        core.follower_start(3, &leader, Epoch(1)),
        Err(format!("the disk is full ({ENOSPC}): not taking records"))
    );
    let hb = core.heartbeat(3, 2);
    assert!(hb.disk_full);
    assert_eq!(hb.since_leader_ms, None, "it follows no stream");
    assert_eq!(core.role(), ReportedRole::Follower, "it keeps its role");
    assert_eq!(core.on_disk_full(4, None), vec![]);
    assert_eq!(core.follower_target(), Some((other_ref(), Epoch(1))));
    assert!(core.follower_start(5, &leader, Epoch(1)).is_ok());
}

const DAMAGE: &str = "wal/00000000000000000001.seg: offset 12075: checksum mismatch (LSN 53 and everything after it were cut)";

fn damaged_core() -> Core {
    recovered(Recovered {
        epoch: Epoch(1),
        unclean: true,
        damaged: Some(DAMAGE.into()),
        records: vec![start_rec(1, 1, false), put_rec(1, 2, "k", "v")],
        log_start: Lsn(1),
        ..Recovered::default()
    })
}

#[test]
fn a_log_that_lost_acknowledged_records_to_damage_refuses_to_lead_naming_where() {
    let mut core = damaged_core();
    assert_eq!(core.damaged(), Some(DAMAGE));
    let (v, fx) = offer(&mut core, 100, 100, &lead(2, 2));
    assert!(matches!(v, Verdict::Accept { .. }), "{v:?}");
    let why = format!(
        "refusing to lead epoch 2: this replica's log lost records it had acknowledged to damage at {DAMAGE}; \
         it can only be repaired from another leader (direct another member to lead, or wipe this data directory)"
    );
    assert_eq!(fx, vec![Action::Fatal(why.clone())]);
    assert!(core.is_fatal());
    assert_eq!(core.role(), ReportedRole::None);
    assert_eq!(tick(&mut core, 200), vec![], "no leader-start is written");
    assert_eq!(
        propose(&mut core, 201, put("j", "w", None)),
        Err(WriteReject::Fatal(why))
    );
}

#[test]
fn a_damaged_log_may_lead_a_lossy_epoch_and_is_repaired_as_a_follower() {
    // A forced failover (lossy epoch) accepted the loss: it leads.
    let mut core = damaged_core();
    let mut d = lead(2, 2);
    d.lossy = true;
    let (_, fx) = offer(&mut core, 100, 100, &d);
    assert_eq!(fx, vec![Action::Append(start_rec(2, 3, true))]);
    assert!(!core.is_fatal());
    // Directed to follow, it keeps the damage noted until it caught up with the leader.
    let mut core = damaged_core();
    let (_, fx) = offer(&mut core, 100, 100, &follow(2, 2));
    assert_eq!(fx, vec![]);
    assert_eq!(core.damaged(), Some(DAMAGE));
    assert!(!core.is_fatal());
}

// ---------------------------------------------------------------------------------------------
// Recovery.
// ---------------------------------------------------------------------------------------------

fn state_of(records: &[Record]) -> KvState {
    let mut s = KvState::default();
    for r in records {
        s.apply(r);
    }
    s
}

#[test]
fn recovery_from_snapshot_plus_records_then_leading_applies_all_and_clears_unclean() {
    let before = vec![
        start_rec(1, 1, false),
        put_rec(1, 2, "a", "1"),
        put_rec(1, 3, "b", "2"),
    ];
    let snap = Snapshot {
        lsn: Lsn(3),
        epoch: Epoch(1),
        history: vec![(Epoch(1), Lsn(1))],
        lossy_epochs: vec![],
        state: state_of(&before),
    };
    let after = vec![
        put_rec(1, 4, "d", "4"),
        start_rec(2, 5, true),
        del_rec(2, 6, "a"),
        put_rec(2, 7, "c", "3"),
    ];
    let mut core = recovered(Recovered {
        epoch: Epoch(2),
        applied_rev: 12,
        unclean: true,
        snapshot: Some(snap),
        records: after.clone(),
        ..Recovered::default()
    });
    assert_eq!(core.log_end(), (Epoch(2), Lsn(7)));
    assert_eq!(core.history(), &[(Epoch(1), Lsn(1)), (Epoch(2), Lsn(5))]);
    assert_eq!(
        (core.flushed(), core.commit(), core.applied()),
        (Lsn(7), Lsn(3), Lsn(3))
    );
    assert_eq!(
        (core.epoch(), core.applied_rev(), core.unclean()),
        (Epoch(2), 12, true)
    );
    assert_eq!(read_any(&core, 0, "a"), Some(entry("1", 1, 2)));
    assert_eq!(read_any(&core, 0, "c"), None);
    let st = core.status(0);
    assert_eq!(
        (st.keys, st.snapshot_lsn, st.health.as_str()),
        (2, Lsn(3), "no_role")
    );

    assert_eq!(
        offer(&mut core, 50, 50, &lead(3, 13)),
        (
            Verdict::Accept {
                persist: Some((Epoch(3), 13))
            },
            vec![Action::Append(start_rec(3, 8, false))]
        )
    );
    assert_eq!(flushed(&mut core, 51, 8), vec![Action::StoreUnclean(false)]);
    assert!(!core.unclean());
    assert_eq!(
        (core.flushed(), core.commit(), core.applied()),
        (Lsn(8), Lsn(8), Lsn(8))
    );
    assert_eq!(
        core.history(),
        &[(Epoch(1), Lsn(1)), (Epoch(2), Lsn(5)), (Epoch(3), Lsn(8))]
    );
    let mut all = before;
    all.extend(after);
    let expect = state_of(&all);
    assert_eq!(core.state().digest(), expect.digest());
    assert_eq!(core.state().recompute_digest(), expect.digest());
    assert_eq!(core.state().len(), 3);
    assert_eq!(read_any(&core, 51, "a"), None);
    assert_eq!(read_any(&core, 51, "b"), Some(entry("2", 1, 3)));
    assert_eq!(read_any(&core, 51, "c"), Some(entry("3", 2, 7)));
    assert_eq!(read_any(&core, 51, "d"), Some(entry("4", 1, 4)));
    assert_eq!(
        propose(
            &mut core,
            52,
            put("c", "x", Some(Expect::Version(ver(2, 7))))
        ),
        Ok(put_rec(3, 9, "c", "x"))
    );
    // Unclean is cleared once.
    assert_eq!(flushed(&mut core, 53, 9), vec![]);
}

#[test]
fn new_leader_with_a_waited_set_takes_no_writes_until_its_leader_start_commits() {
    // Recovered records are applied only once a leader-start above them commits; with members
    // to wait for, the new leader's own flush does not commit it, so no write is taken yet.
    let mut core = recovered(Recovered {
        epoch: Epoch(1),
        applied_rev: 1,
        records: vec![start_rec(1, 1, false), put_rec(1, 2, "k", "v")],
        ..Recovered::default()
    });
    let mut d = lead(2, 2);
    d.waited = vec![r2()];
    assert_eq!(
        offer(&mut core, 10, 10, &d).1,
        vec![Action::Append(start_rec(2, 3, false))]
    );
    // With a waited set the leader-start does not commit on the own flush: no writes yet.
    assert_eq!(flushed(&mut core, 11, 3), vec![]);
    assert_eq!(core.applied(), Lsn(0));
    assert_eq!(
        propose(&mut core, 12, put("k", "w", Some(Expect::Absent))),
        Err(not_leader(
            "leader-start record 3 is not committed yet",
            me_hint(2)
        ))
    );
}

// ---------------------------------------------------------------------------------------------
// Snapshot + replay equivalence.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Step {
    key: u8,
    /// `None` deletes.
    value: Option<Vec<u8>>,
    /// 0: no condition; 1: create-only; 2: the current version (or a made-up one); 3: a wrong one.
    cond: u8,
    flush: bool,
}

fn arb_step() -> impl Strategy<Value = Step> {
    (
        0u8..6,
        proptest::option::weighted(0.7, proptest::collection::vec(any::<u8>(), 0..8)),
        0u8..4,
        any::<bool>(),
    )
        .prop_map(|(key, value, cond, flush)| Step {
            key,
            value,
            cond,
            flush,
        })
}

/// Runs `steps` on a leader at epoch 1, capturing a snapshot before step `snap_at` (after the
/// last one if past the end), then recovers a second core from it and compares.
fn snapshot_replay_case(
    steps: &[Step],
    snap_at: usize,
    via_disk: bool,
) -> Result<(), TestCaseError> {
    let mut core = started_leader_with(0, {
        let mut d = lead(1, 1);
        d.lease_ms = 1_000_000;
        d
    });
    let mut log = vec![start_rec(1, 1, false)];
    // The model: the latest appended (pending included) value and version of each key.
    let mut model: HashMap<Bytes, (Bytes, Version)> = HashMap::new();
    let mut snap: Option<Snapshot> = None;
    let mut now = 1;
    // Positions and the epoch only ever grow.
    let mut last = (core.epoch(), core.commit(), core.applied(), core.flushed());
    for (i, s) in steps.iter().enumerate() {
        if i == snap_at {
            snap = Some(core.begin_snapshot());
            checked(&core, "begin_snapshot");
        }
        now += 1;
        let key = Bytes::from(vec![b'k', b'0' + s.key]);
        let current = model.get(&key).map(|(_, v)| *v);
        let expect = match s.cond {
            0 => None,
            1 => Some(Expect::Absent),
            2 => Some(Expect::Version(current.unwrap_or(ver(1, 999)))),
            _ => Some(Expect::Version(ver(7, 7))),
        };
        let lsn = Lsn(core.log_end().1 .0 + 1);
        let want = match expect {
            Some(Expect::Absent) if current.is_some() => {
                Err(WriteReject::PreconditionFailed { current })
            }
            Some(Expect::Version(v)) if current != Some(v) => {
                Err(WriteReject::PreconditionFailed { current })
            }
            _ if s.value.is_none() && current.is_none() => Err(WriteReject::NotFound),
            _ => Ok(Record {
                epoch: Epoch(1),
                lsn,
                op: match &s.value {
                    Some(v) => Op::Put {
                        key: key.clone(),
                        value: Bytes::from(v.clone()),
                    },
                    None => Op::Delete { key: key.clone() },
                },
            }),
        };
        let got = propose(
            &mut core,
            now,
            WriteReq {
                key: key.clone(),
                value: s.value.clone().map(Bytes::from),
                expect,
            },
        );
        prop_assert_eq!(&got, &want, "step {} {:?}", i, s);
        if let Ok(rec) = got {
            match &s.value {
                Some(v) => {
                    model.insert(
                        key,
                        (
                            Bytes::from(v.clone()),
                            Version {
                                epoch: Epoch(1),
                                lsn,
                            },
                        ),
                    );
                }
                None => {
                    model.remove(&key);
                }
            }
            log.push(rec);
        }
        if s.flush {
            let end = core.log_end().1 .0;
            prop_assert_eq!(flushed(&mut core, now, end), vec![]);
            prop_assert_eq!(core.applied(), Lsn(end));
        }
        let cur = (core.epoch(), core.commit(), core.applied(), core.flushed());
        prop_assert!(
            cur.0 >= last.0 && cur.1 >= last.1 && cur.2 >= last.2 && cur.3 >= last.3,
            "went back at step {}: {:?} -> {:?}",
            i,
            last,
            cur
        );
        last = cur;
    }
    let snap = match snap {
        Some(s) => s,
        None => core.begin_snapshot(),
    };
    core.end_snapshot(Some(snap.lsn));
    checked(&core, "end_snapshot");
    let end = core.log_end().1;
    prop_assert_eq!(flushed(&mut core, now + 1, end.0), vec![]);
    prop_assert_eq!(core.applied(), end);
    prop_assert_eq!(log.len() as u64, end.0);

    // The original core's state is the model.
    prop_assert_eq!(core.state().len(), model.len());
    for (k, (v, version)) in &model {
        prop_assert_eq!(
            core.state().get(k),
            Some(&Entry {
                value: v.clone(),
                version: *version
            })
        );
    }
    prop_assert_eq!(core.state().digest(), core.state().recompute_digest());

    // The snapshot holds exactly the applied prefix.
    prop_assert_eq!(snap.epoch, Epoch(1));
    prop_assert_eq!(&snap.history, &vec![(Epoch(1), Lsn(1))]);
    let prefix = state_of(&log[..snap.lsn.0 as usize]);
    prop_assert_eq!(snap.state.digest(), prefix.digest());

    let snap = if via_disk {
        let dir = tempfile::tempdir().expect("tempdir");
        snapshot::write(dir.path(), &snap).expect("write snapshot");
        let loaded = snapshot::load_latest(dir.path())
            .expect("load snapshot")
            .expect("a snapshot was written");
        prop_assert_eq!(loaded.lsn, snap.lsn);
        prop_assert_eq!(loaded.epoch, snap.epoch);
        prop_assert_eq!(&loaded.history, &snap.history);
        prop_assert_eq!(loaded.state.digest(), snap.state.digest());
        loaded
    } else {
        snap
    };
    let snap_lsn = snap.lsn;
    let records: Vec<Record> = log.iter().filter(|r| r.lsn > snap_lsn).cloned().collect();
    let mut again = Core::new(
        cfg(BootId(12)),
        Recovered {
            epoch: Epoch(1),
            cluster_id: 0,
            applied_rev: 1,
            unclean: false,
            damaged: None,
            snapshot: Some(snap),
            records,
            log_start: snap_lsn.next(),
        },
    );
    checked(&again, "Core::new(snapshot + records)");
    prop_assert_eq!(again.log_end(), core.log_end());
    prop_assert_eq!(again.history(), core.history());
    prop_assert_eq!(
        (again.applied(), again.commit(), again.flushed()),
        (snap_lsn, snap_lsn, end)
    );

    let d = directive(2, 2, Some(Role::Leader), Some(me_ref(BootId(12))));
    let (v, fx) = offer(&mut again, now + 2, now + 2, &d);
    prop_assert_eq!(
        v,
        Verdict::Accept {
            persist: Some((Epoch(2), 2))
        }
    );
    let start = end.0 + 1;
    prop_assert_eq!(fx, vec![Action::Append(start_rec(2, start, false))]);
    prop_assert_eq!(flushed(&mut again, now + 3, start), vec![]);
    prop_assert_eq!(again.applied(), Lsn(start));

    prop_assert_eq!(again.state().digest(), core.state().digest());
    prop_assert_eq!(again.state().recompute_digest(), core.state().digest());
    prop_assert_eq!(again.state().len(), core.state().len());
    for (k, e) in core.state().iter() {
        prop_assert_eq!(again.state().get(k), Some(e));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_plus_replay_equals_the_original(
        steps in proptest::collection::vec(arb_step(), 0..40),
        snap_at in 0usize..45,
        via_disk in proptest::bool::weighted(0.25),
    ) {
        snapshot_replay_case(&steps, snap_at, via_disk)?;
    }
}

#[test]
fn snapshot_replay_pinned_cases() {
    let step = |key, value: Option<&str>, cond, flush| Step {
        key,
        value: value.map(|v| v.as_bytes().to_vec()),
        cond,
        flush,
    };
    // Snapshot with pending writes past it and a delete of a key that only the snapshot holds.
    let steps = vec![
        step(0, Some("a"), 1, true),
        step(1, Some("b"), 0, false),
        step(0, None, 2, false),
        step(2, Some("c"), 0, true),
        step(1, None, 0, false),
        step(1, Some("b2"), 1, false),
    ];
    for via_disk in [false, true] {
        for snap_at in 0..=steps.len() {
            snapshot_replay_case(&steps, snap_at, via_disk)
                .unwrap_or_else(|e| panic!("snap_at {snap_at} via_disk {via_disk}: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 10, item 7: identities in the directive and the replication handshake.
// ---------------------------------------------------------------------------------------------

/// A data directory adopts the deployment id of the first directive naming one (persisted with
/// the epoch), then ignores directives of another deployment (a wrong controller address, or a
/// directory from elsewhere).
#[test]
fn deployment_id_is_adopted_once_and_other_deployments_are_ignored() {
    let mut core = fresh();
    let mut d = follow(3, 5);
    d.cluster_id = 77;
    let (v, _) = offer(&mut core, 10, 10, &d);
    assert_eq!(
        v,
        Verdict::Accept {
            persist: Some((Epoch(3), 5))
        }
    );
    assert_eq!(core.cluster_id(), 77);
    assert_eq!(core.heartbeat(10, 1).cluster_id, 77);
    let mut other = lead(9, 1);
    other.cluster_id = 78;
    let (v, _) = offer(&mut core, 20, 20, &other);
    assert!(
        matches!(v, Verdict::Ignore(ref why) if why.contains("belongs to")),
        "{v:?}"
    );
    assert_eq!(
        (core.epoch(), core.role()),
        (Epoch(3), ReportedRole::Follower)
    );
    // The same deployment's id re-adopts nothing: persisting only when something moved.
    let mut same = follow(3, 5);
    same.cluster_id = 77;
    assert_eq!(
        core.check_directive(&same),
        Verdict::Accept { persist: None }
    );
}

/// The leader checks who opens a stream before its epoch counts: another cluster name, another
/// deployment, or an undeclared member is refused (a stranger with a high epoch used to make the
/// leader step down).
#[test]
fn leader_refuses_streams_from_strangers_before_their_epoch_counts() {
    let mut core = fresh();
    let mut d = lead(2, 1);
    d.cluster_id = 5;
    d.members = vec![
        Member {
            id: NodeId(ME.into()),
            addr: MY_ADDR.into(),
            priority: 0,
            no_failover: false,
        },
        Member {
            id: NodeId(OTHER.into()),
            addr: OTHER_ADDR.into(),
            priority: 0,
            no_failover: false,
        },
    ];
    offer(&mut core, 0, 0, &d);
    let other = NodeId(OTHER.into());
    assert!(core.leader_check_peer(&other, "main", 5).is_ok());
    assert!(
        core.leader_check_peer(&other, "main", 0).is_ok(),
        "a new directory"
    );
    assert!(core
        .leader_check_peer(&other, "prod", 5)
        .unwrap_err()
        .contains("cluster"));
    assert!(core
        .leader_check_peer(&other, "main", 6)
        .unwrap_err()
        .contains("deployment"));
    assert!(core
        .leader_check_peer(&NodeId("r9".into()), "main", 5)
        .unwrap_err()
        .contains("not a declared member"));
}

/// The follower checks the leader's welcome against the directive (id, boot, data directory,
/// cluster): a wrong address or a reused port must not splice in a foreign log.
#[test]
fn follower_refuses_a_leader_other_than_the_directed_one() {
    let core = fresh();
    let mut want = other_ref();
    want.data_id = DataId(22);
    let ok = core.follower_check_leader(&want, &want.id, want.boot_id, DataId(22), "main", 0);
    assert!(ok.is_ok());
    let e = core
        .follower_check_leader(&want, &want.id, BootId(78), DataId(22), "main", 0)
        .unwrap_err();
    assert!(e.contains("boot"), "{e}");
    let e = core
        .follower_check_leader(&want, &want.id, want.boot_id, DataId(23), "main", 0)
        .unwrap_err();
    assert!(e.contains("data directory"), "{e}");
    let e = core
        .follower_check_leader(&want, &want.id, want.boot_id, DataId(22), "other", 0)
        .unwrap_err();
    assert!(e.contains("cluster"), "{e}");
}
