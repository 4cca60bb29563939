//! Decision tables for `decide.rs`: one row a case — who was heard when, positions, sync set,
//! flags, priorities, mode — and the expected verdict.

use super::*;
use crate::state::{Control, LeaderRecord, Phase};
use baton_common::directive::{Member, ReportedRole};
use baton_common::{BootId, DataId};

const FT: u64 = 1000;

fn id(s: &str) -> NodeId {
    NodeId(s.into())
}

fn data(s: &str) -> DataId {
    DataId(s.bytes().map(u128::from).sum::<u128>() + 1)
}

fn boot(s: &str) -> BootId {
    BootId(s.bytes().map(u128::from).sum::<u128>() + 100)
}

fn state(mode: Mode, sync: &[&str], prev: Option<&str>) -> ClusterState {
    ClusterState {
        epoch: Epoch(5),
        leader: Some(LeaderRecord {
            id: id("r1"),
            data_id: data("r1"),
            boot_id: boot("r1"),
        }),
        prev_leader: prev.map(|p| LeaderRecord {
            id: id(p),
            data_id: data(p),
            boot_id: boot(p),
        }),
        phase: Phase::Steady,
        members: ["r1", "r2", "r3", "r4"]
            .iter()
            .map(|m| Member {
                id: id(m),
                addr: format!("{m}:1"),
                priority: 0,
                no_failover: false,
            })
            .collect(),
        sync_set: sync
            .iter()
            .map(|s| MemberRef {
                id: id(s),
                data_id: data(s),
            })
            .collect(),
        adding: None,
        control: Control::Auto,
        mode,
        op: None,
        lossy: false,
        cluster_id: 0,
        state_id: 0,
        strict: Some(false),
    }
}

/// A heartbeat: `since_leader` ms without the leader, log end (epoch, lsn), unclean.
fn hb(who: &str, since_leader: Option<u64>, end: (u64, u64), unclean: bool) -> Heartbeat {
    Heartbeat {
        seq: 1,
        cluster: "main".into(),
        cluster_id: 0,
        id: id(who),
        data_id: data(who),
        boot_id: boot(who),
        unclean,
        addr: format!("{who}:1"),
        epoch: Epoch(5),
        role: ReportedRole::Follower,
        log_end_epoch: Epoch(end.0),
        log_end_lsn: Lsn(end.1),
        flushed_lsn: Lsn(end.1),
        applied_lsn: Lsn(end.1),
        commit_lsn: Lsn(end.1),
        applied_rev: 1,
        max_term: 0,
        since_leader_ms: since_leader,
        oldest_unflushed_ms: None,
        last_sync_ack_ms: None,
        lease_left_ms: None,
        waiting: vec![],
        last_cut: None,
        refused_peer: None,
        disk_full: false,
        degraded_for_ms: 0,
        on_promises: false,
        log_start_lsn: Lsn(0),
        log_bytes: 0,
        catchup: None,
    }
}

struct Row {
    name: &'static str,
    mode: Mode,
    sync: &'static [&'static str],
    /// (member, heard how many ms before now, since_leader_ms, unclean)
    heard: &'static [(&'static str, u64, Option<u64>, bool)],
    active_for: u64,
    standby_hears: usize,
    expect: &'static str,
}

#[test]
fn leader_failure_detection_table() {
    use Mode::*;
    let rows = [
        Row {
            name: "leader heard recently",
            mode: SemiSync,
            sync: &["r2"],
            heard: &[("r1", 100, None, false), ("r2", 50, Some(20), false)],
            active_for: 10_000,
            standby_hears: 0,
            expect: "healthy",
        },
        Row {
            name: "leader silent, followers lost it, sync member reports",
            mode: SemiSync,
            sync: &["r2"],
            heard: &[
                ("r1", 1500, None, false),
                ("r2", 50, Some(1200), false),
                ("r3", 50, Some(1300), false),
            ],
            active_for: 10_000,
            standby_hears: 0,
            expect: "failed",
        },
        Row {
            name: "leader silent but a follower still receives from it",
            mode: SemiSync,
            sync: &["r2"],
            heard: &[
                ("r1", 1500, None, false),
                ("r2", 50, Some(1200), false),
                ("r3", 50, Some(30), false),
            ],
            active_for: 10_000,
            standby_hears: 0,
            expect: "unproven:leader unreachable from controller",
        },
        Row {
            name: "leader never heard, controller just became active",
            mode: SemiSync,
            sync: &["r2"],
            heard: &[("r2", 50, Some(5000), false)],
            active_for: 300,
            standby_hears: 0,
            expect: "observing",
        },
        Row {
            name: "no follower reports",
            mode: SemiSync,
            sync: &["r2"],
            heard: &[("r1", 5000, None, false), ("r2", 5000, Some(10), false)],
            active_for: 10_000,
            standby_hears: 0,
            expect: "unproven:no follower reports",
        },
        Row {
            name: "only a non-sync follower reports in semi-sync",
            mode: SemiSync,
            sync: &["r2"],
            heard: &[("r1", 5000, None, false), ("r3", 50, Some(5000), false)],
            active_for: 10_000,
            standby_hears: 0,
            expect: "unproven:no eligible candidate",
        },
        Row {
            name: "the sync member reports but is unclean",
            mode: SemiSync,
            sync: &["r2"],
            heard: &[("r1", 5000, None, false), ("r2", 50, Some(5000), true)],
            active_for: 10_000,
            standby_hears: 0,
            expect: "unproven:no eligible candidate",
        },
        Row {
            name: "async: any clean follower is a candidate",
            mode: Async,
            sync: &[],
            heard: &[("r1", 5000, None, false), ("r3", 50, Some(5000), false)],
            active_for: 10_000,
            standby_hears: 0,
            expect: "failed",
        },
        Row {
            name: "a standby hears more members than this controller",
            mode: SemiSync,
            sync: &["r2"],
            heard: &[("r1", 5000, None, false), ("r2", 50, Some(5000), false)],
            active_for: 10_000,
            standby_hears: 3,
            expect: "unproven:a standby hears 3",
        },
        Row {
            name: "follower with unknown leader contact counts as lost",
            mode: SemiSync,
            sync: &["r2"],
            heard: &[("r1", 5000, None, false), ("r2", 50, None, false)],
            active_for: 10_000,
            standby_hears: 0,
            expect: "failed",
        },
    ];
    let now = 100_000;
    for r in rows {
        let st = state(r.mode, r.sync, None);
        let heard: Vec<(NodeId, Option<Heard>)> = ["r1", "r2", "r3"]
            .iter()
            .map(|m| {
                let h = r
                    .heard
                    .iter()
                    .find(|(w, ..)| w == m)
                    .map(|(w, ago, since, unclean)| Heard {
                        at_ms: now - ago,
                        hb: hb(w, *since, (5, 10), *unclean),
                    });
                (id(m), h)
            })
            .collect();
        let got = assess_leader(
            now,
            now - r.active_for,
            &st,
            &heard,
            r.standby_hears,
            Timing {
                failure_timeout_ms: FT,
            },
        );
        let ok = match (&got, r.expect) {
            (LeaderHealth::Healthy, "healthy") | (LeaderHealth::Observing, "observing") => true,
            (LeaderHealth::Failed(_), "failed") => true,
            (LeaderHealth::Unproven(why), e) if e.starts_with("unproven:") => {
                why.contains(&e["unproven:".len()..])
            }
            _ => false,
        };
        assert!(ok, "row {:?}: expected {}, got {:?}", r.name, r.expect, got);
    }
}

/// Regression (found while splitting the core): in the steady phase `prev_leader` is the leader
/// *before* the current one. It lacks what the current leader acknowledged, and the promotion
/// that detection starts takes the current leader as the replaced one, so it could never pick
/// `prev_leader`. Detection counted it as an eligible candidate anyway: the failing leader was
/// fenced by a promotion that then had no candidate.
#[test]
fn the_leader_before_the_current_one_is_no_candidate() {
    let st = state(Mode::SemiSync, &["r3"], Some("r2"));
    let now = 100_000;
    let heard: Vec<(NodeId, Option<Heard>)> = vec![
        (
            id("r1"),
            Some(Heard {
                at_ms: now - 5000,
                hb: hb("r1", None, (5, 10), false),
            }),
        ),
        (
            id("r2"),
            Some(Heard {
                at_ms: now - 50,
                hb: hb("r2", Some(5000), (4, 8), false),
            }),
        ),
        (id("r3"), None),
    ];
    let got = assess_leader(
        now,
        0,
        &st,
        &heard,
        0,
        Timing {
            failure_timeout_ms: FT,
        },
    );
    assert!(
        matches!(&got, LeaderHealth::Unproven(why) if why.contains("no eligible candidate")),
        "{got:?}"
    );
}

#[test]
fn leader_restart_is_detected_by_boot_or_data_id() {
    let st = state(Mode::SemiSync, &["r2"], None);
    let now = 50_000;
    let mut h = hb("r1", None, (5, 10), false);
    h.boot_id = BootId(999);
    let heard = vec![(
        id("r1"),
        Some(Heard {
            at_ms: now - 10,
            hb: h.clone(),
        }),
    )];
    let t = Timing {
        failure_timeout_ms: FT,
    };
    assert_eq!(
        assess_leader(now, 0, &st, &heard, 0, t),
        LeaderHealth::Restarted
    );
    h.boot_id = boot("r1");
    h.data_id = DataId(12345);
    let heard = vec![(
        id("r1"),
        Some(Heard {
            at_ms: now - 10,
            hb: h,
        }),
    )];
    assert_eq!(
        assess_leader(now, 0, &st, &heard, 0, t),
        LeaderHealth::Restarted
    );
}

struct ChoiceRow {
    name: &'static str,
    mode: Mode,
    sync: &'static [&'static str],
    prev: Option<&'static str>,
    /// (member, log end (epoch, lsn), unclean)
    fenced: &'static [(&'static str, (u64, u64), bool)],
    priorities: &'static [(&'static str, i32)],
    no_failover: &'static [&'static str],
    expect: Result<(&'static str, &'static [&'static str]), &'static str>,
}

#[test]
fn candidate_choice_table() {
    use Mode::*;
    let rows = [
        ChoiceRow { name: "the sync member is chosen over a longer non-sync log, which joins the set (it holds all of the winner's log)", mode: SemiSync, sync: &["r2"], prev: None, fenced: &[("r2", (5, 10), false), ("r3", (5, 12), false)], priorities: &[], no_failover: &[], expect: Ok(("r2", &["r3"])) },
        ChoiceRow { name: "a follower of an older epoch does not join the sync set", mode: SemiSync, sync: &["r2"], prev: None, fenced: &[("r2", (5, 10), false), ("r3", (4, 12), false)], priorities: &[], no_failover: &[], expect: Ok(("r2", &[])) },
        ChoiceRow { name: "follower at the same end joins the new sync set", mode: SemiSync, sync: &["r2"], prev: None, fenced: &[("r2", (5, 10), false), ("r3", (5, 10), false)], priorities: &[], no_failover: &[], expect: Ok(("r2", &["r3"])) },
        ChoiceRow { name: "two sync members: the longer log wins, the other stays in the set", mode: SemiSync, sync: &["r2", "r3"], prev: None, fenced: &[("r2", (5, 10), false), ("r3", (5, 11), false)], priorities: &[], no_failover: &[], expect: Ok(("r3", &["r2"])) },
        ChoiceRow { name: "equal logs: priority decides", mode: SemiSync, sync: &["r2", "r3"], prev: None, fenced: &[("r2", (5, 10), false), ("r3", (5, 10), false)], priorities: &[("r3", 5)], no_failover: &[], expect: Ok(("r3", &["r2"])) },
        ChoiceRow { name: "equal logs and priority: lowest id", mode: SemiSync, sync: &["r2", "r3"], prev: None, fenced: &[("r3", (5, 10), false), ("r2", (5, 10), false)], priorities: &[], no_failover: &[], expect: Ok(("r2", &["r3"])) },
        ChoiceRow { name: "the unclean sync member is never promoted", mode: SemiSync, sync: &["r2"], prev: None, fenced: &[("r2", (5, 10), true), ("r3", (5, 10), false)], priorities: &[], no_failover: &[], expect: Err("no member of the recorded sync set") },
        ChoiceRow { name: "the previous leader with its own disk is eligible", mode: SemiSync, sync: &["r2"], prev: Some("r1"), fenced: &[("r1", (5, 12), false)], priorities: &[], no_failover: &[], expect: Ok(("r1", &[])) },
        ChoiceRow { name: "no_failover member is never chosen", mode: SemiSync, sync: &["r2"], prev: None, fenced: &[("r2", (5, 10), false)], priorities: &[], no_failover: &["r2"], expect: Err("no member of the recorded sync set") },
        ChoiceRow { name: "nobody of the sync set reports", mode: SemiSync, sync: &["r2"], prev: None, fenced: &[("r3", (5, 10), false)], priorities: &[], no_failover: &[], expect: Err("no member of the recorded sync set") },
        ChoiceRow { name: "async: the longest log wins", mode: Async, sync: &[], prev: None, fenced: &[("r2", (5, 10), false), ("r3", (5, 12), false)], priorities: &[], no_failover: &[], expect: Ok(("r3", &[])) },
        ChoiceRow { name: "async: a higher epoch beats a longer log", mode: Async, sync: &[], prev: None, fenced: &[("r2", (6, 3), false), ("r3", (5, 12), false)], priorities: &[], no_failover: &[], expect: Ok(("r2", &[])) },
        ChoiceRow { name: "async: an unclean member is skipped", mode: Async, sync: &[], prev: None, fenced: &[("r2", (5, 10), false), ("r3", (5, 12), true)], priorities: &[], no_failover: &[], expect: Ok(("r2", &[])) },
        ChoiceRow { name: "async: beyond max lag nobody qualifies", mode: Async, sync: &[], prev: None, fenced: &[("r2", (5, 10), false), ("r3", (5, 500), true)], priorities: &[], no_failover: &[], expect: Err("max_lag_on_failover") },
    ];
    for r in rows {
        let mut st = state(r.mode, r.sync, r.prev);
        for m in st.members.iter_mut() {
            if let Some((_, p)) = r.priorities.iter().find(|(w, _)| *w == m.id.0) {
                m.priority = *p;
            }
            m.no_failover = r.no_failover.contains(&m.id.0.as_str());
        }
        let fenced: Vec<Fenced> = r
            .fenced
            .iter()
            .map(|(w, end, unclean)| Fenced {
                id: id(w),
                hb: hb(w, Some(5000), *end, *unclean),
            })
            .collect();
        let got = choose(&st, &fenced, 1, 100);
        match (r.expect, &got) {
            (
                Ok((leader, sync)),
                Choice::Promote {
                    id: chosen,
                    sync_set,
                    lossy,
                    ..
                },
            ) => {
                assert_eq!(chosen.0, leader, "row {:?}", r.name);
                let s: Vec<&str> = sync_set.iter().map(|m| m.id.0.as_str()).collect();
                assert_eq!(s, sync, "row {:?}: sync set", r.name);
                assert_eq!(*lossy, r.mode == Async, "row {:?}: lossy", r.name);
            }
            (Err(why), Choice::Blocked(reason)) => {
                assert!(reason.contains(why), "row {:?}: {reason}", r.name)
            }
            _ => panic!("row {:?}: expected {:?}, got {got:?}", r.name, r.expect),
        }
    }
}
