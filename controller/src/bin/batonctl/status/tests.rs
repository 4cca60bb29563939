//! Tests of `batonctl`'s status, history and dry-run rendering: the lines an operator reads for
//! each situation (degraded, disk full, promises, planned failovers, alarms, paused).

use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn sample() -> Value {
    serde_json::json!({
        "cluster": "main", "initialized": true, "epoch": 4, "rev": 31, "phase": "steady",
        "leader": {"id": "r3", "data_id": "x", "boot_id": "y"}, "prev_leader": null,
        "sync_set": [{"id": "r1", "data_id": "a"}], "adding": {"id": "r2", "data_id": "b"},
        "control": "auto", "mode": "semi-sync", "op": null,
        "members": [
            {"id": "r1", "addr": "127.0.0.1:7101", "priority": 0, "no_failover": false,
             "role": "follower", "health": "ok", "heard_ms_ago": 40, "unclean": false,
             "epoch": 4, "log_end_lsn": 1042, "flushed_lsn": 1042, "applied_lsn": 1042,
             "sync": true, "lag_records": 0},
            {"id": "r2", "addr": "127.0.0.1:7102", "priority": 0, "no_failover": false,
             "role": "follower", "health": "unreachable", "heard_ms_ago": 2500,
             "unclean": true, "epoch": 3, "log_end_lsn": 980, "flushed_lsn": 980,
             "applied_lsn": 975, "sync": false, "lag_records": 62},
            {"id": "r3", "addr": "127.0.0.1:7103", "priority": 0, "no_failover": false,
             "role": "leader", "health": "ok", "heard_ms_ago": 10, "unclean": false,
             "epoch": 4, "log_end_lsn": 1042, "flushed_lsn": 1042, "applied_lsn": 1042,
             "sync": false, "lag_records": 0},
            {"id": "r4", "addr": "127.0.0.1:7104", "priority": 0, "no_failover": false,
             "role": null, "health": "never heard", "heard_ms_ago": null, "unclean": null,
             "epoch": null, "log_end_lsn": null, "flushed_lsn": null, "applied_lsn": null,
             "sync": false, "lag_records": null}
        ],
        "active": true, "active_controller": "127.0.0.1:7001"
    })
}

#[test]
fn status_renders_a_header_and_one_row_per_member() {
    let got = status_lines(&sample(), "http://127.0.0.1:7001", 0);
    let want = [
        "Cluster: main | epoch 4 | leader r3 | phase steady | control auto | mode semi-sync | active controller 127.0.0.1:7001",
        "security: INSECURE (plain HTTP, no credentials)",
        "+--------+----------------+----------+-------------------+-------+------+-----+--------+---------+",
        "| Member | Host           | Role     | Health            | Epoch |  LSN | Lag | Sync   | Unclean |",
        "+--------+----------------+----------+-------------------+-------+------+-----+--------+---------+",
        "| r1     | 127.0.0.1:7101 | follower | ok                |     4 | 1042 |   0 | sync   |         |",
        "| r2     | 127.0.0.1:7102 | follower | unreachable 2.5 s |     3 |  980 |  62 | adding | yes     |",
        "| r3     | 127.0.0.1:7103 | leader   | ok                |     4 | 1042 |   0 |        |         |",
        "| r4     | 127.0.0.1:7104 | -        | never heard       |     - |    - |   - |        |         |",
        "+--------+----------------+----------+-------------------+-------+------+-----+--------+---------+",
    ];
    assert_eq!(got, want);
}

#[test]
fn status_names_the_partial_failures_in_force() {
    let mut v = sample();
    assert_eq!(situation_lines(&v), Vec::<String>::new(), "all is well");
    v["members"][0]["disk_full"] = true.into();
    v["members"][0]["since_leader_ms"] = 4200.into();
    v["members"][2]["degraded_for_ms"] = 4200.into();
    v["members"][2]["on_promises"] = true.into();
    // r2 is unreachable: what it said last is not in force.
    v["members"][1]["disk_full"] = true.into();
    assert_eq!(
        situation_lines(&v),
        s(&[
            "disk full on r1: it takes no records until space is freed",
            "r1 has received nothing from the leader for 4.2 s",
            "leader r3 acknowledges alone (degraded) for 4.2 s: no sync member holds its writes",
            "leader r3 serves on its followers' promises: no grant from an active controller \
             (etcd or the controllers out of reach); failover waits until they are back",
        ])
    );
    // etcd out of reach, a sync member owing for 1.5 s, a planned failover running.
    let mut w = sample();
    w["etcd_unreachable_ms"] = 4200.into();
    w["leader_waiting"] = serde_json::json!([
        {"id": "r1", "last_ack_ms": 20, "owed_ms": 1500},
        {"id": "r2", "last_ack_ms": 20, "owed_ms": 30}
    ]);
    w["op"] = serde_json::json!({"id": "planned-5", "kind": "failover:r1:0:0", "deadline_ms": 1,
        "op": {"type": "failover", "to": "r1", "force": false, "allow_data_loss": false, "planned": true}});
    assert_eq!(
        situation_lines(&w),
        s(&[
            "etcd unreachable for 4.2 s (from this controller): no failover, election or \
             sync-set change until it answers; the leader serves on its grant, then on its \
             followers' promises",
            "planned failover to r1 in progress (the controller's own decision; `batonctl \
             history` says why)",
            "leader r3 has waited 1.5 s for r1 to acknowledge (a slow disk or a cut link): \
             writes wait until it does or the controller replaces it",
        ])
    );
    v["members"][2]["disk_full"] = true.into();
    assert!(status_lines(&v, "x", 0).contains(
        &"disk full on r3 (the leader): writes get 507; a planned failover replaces it".to_string()
    ));
}

#[test]
fn status_says_paused_names_the_op_and_a_standby_answer() {
    let mut v = sample();
    v["control"] = "manual".into();
    v["phase"] = "switching".into();
    v["op"] =
        serde_json::json!({"id": "op-0000abcd", "kind": "switchover:r1", "deadline_ms": 9_500});
    v["active"] = false.into();
    v["members"][3]["no_failover"] = true.into();
    let got = status_lines(&v, "http://127.0.0.1:7002", 2_000);
    assert_eq!(
        got[0],
        "Cluster: main | epoch 4 | leader r3 | phase switching | control manual (PAUSED: failover is manual only) \
         | mode semi-sync | active controller 127.0.0.1:7001 (answered by standby http://127.0.0.1:7002) \
         | op op-0000abcd switchover:r1 (deadline in 7.5 s)"
    );
    assert!(got[3].ends_with("| Unclean | Tags        |"), "{}", got[3]);
    assert!(got[8].ends_with("|         | no_failover |"), "{}", got[8]);
}

#[test]
fn status_names_an_etcd_alarm_after_the_table() {
    let mut v = sample();
    v["etcd"] = serde_json::json!({"alarms": ["NOSPACE (member 8e9e05c52164694d)"], "db_size": 2147483648u64});
    let got = status_lines(&v, "http://127.0.0.1:7001", 0);
    assert_eq!(got.len(), 11);
    assert!(
        got[10].starts_with(
            "etcd ALARM NOSPACE (member 8e9e05c52164694d): etcd's space quota is exhausted"
        ),
        "{}",
        got[10]
    );
    v["etcd"]["alarms"] = serde_json::json!([]);
    assert_eq!(status_lines(&v, "http://127.0.0.1:7001", 0).len(), 10);
}

#[test]
fn status_of_an_uninitialized_cluster_says_to_run_init() {
    let v = serde_json::json!({
        "cluster": "main", "initialized": false, "epoch": null, "phase": null, "leader": null,
        "control": null, "mode": null, "op": null, "members": [], "active": true,
        "active_controller": null
    });
    let got = status_lines(&v, "http://127.0.0.1:7001", 0);
    assert_eq!(
        got[0],
        "Cluster: main | not initialized (run `batonctl init`) | active controller http://127.0.0.1:7001"
    );
    assert_eq!(got.len(), 6);
}

/// DESIGN §9: every status says when the cluster runs insecure.
#[test]
fn status_says_how_the_cluster_is_secured() {
    let mut v = sample();
    let secure = status_lines(&v, "https://127.0.0.1:7001", 0);
    assert_eq!(secure[1], "security: TLS, tokens");
    let plain = status_lines(&v, "http://127.0.0.1:7001", 0);
    assert_eq!(plain[1], "security: INSECURE (plain HTTP, no credentials)");
    v["insecure"] = true.into();
    assert_eq!(
        status_lines(&v, "https://127.0.0.1:7001", 0)[1],
        "security: INSECURE (plain HTTP, no credentials)"
    );
}

#[test]
fn history_lines_show_time_kind_epoch_message_and_count() {
    let t = |ms: u64| format!("T{}", ms / 1000);
    let mut e = Entry {
        seq: 0,
        at_unix_ms: 5_000,
        last_unix_ms: None,
        kind: "promoted".into(),
        message: "promoted r2 at epoch 3".into(),
        epoch: 3,
        inputs: Value::Null,
        count: 1,
        reason: String::new(),
    };
    assert_eq!(
        history_line(&e, &t),
        "T5  promoted        e3    promoted r2 at epoch 3"
    );
    e.count = 4;
    e.last_unix_ms = Some(9_000);
    assert_eq!(
        history_line(&e, &t),
        "T5  promoted        e3    promoted r2 at epoch 3  ×4 (last T9)"
    );
}

#[test]
fn dry_run_lists_candidate_and_blocking_reasons() {
    let v = serde_json::json!({
        "leader_health": "healthy", "would_fail_over": false, "candidate": "r2",
        "expected_loss_records": 0, "blocking": ["paused: automatic failover is off"]
    });
    assert_eq!(
        dry_run_lines(&v),
        s(&[
            "leader health:   healthy",
            "would fail over: no",
            "candidate:       r2 (expected loss: 0 records)",
            "blocking:",
            "  - paused: automatic failover is off",
        ])
    );
}

#[test]
fn dry_run_names_a_planned_failover() {
    let v = serde_json::json!({
        "leader_health": "healthy",
        "planned": "leader unreachable from followers: no sync acknowledgement for 830 ms and no follower receives its stream: planned failover to r2",
        "would_fail_over": true, "candidate": "r2", "expected_loss_records": 0, "blocking": []
    });
    assert_eq!(
        dry_run_lines(&v),
        s(&[
            "leader health:   healthy",
            "planned:         leader unreachable from followers: no sync acknowledgement for 830 ms and no follower receives its stream: planned failover to r2",
            "would fail over: yes",
            "candidate:       r2 (expected loss: 0 records)",
            "blocking:        nothing",
        ])
    );
}

#[test]
fn status_shows_a_catch_up_with_its_rate_and_eta() {
    let mut v = sample();
    v["members"][0]["catchup"] = serde_json::json!({"what": "log", "bytes_done": 52_000_000u64,
        "bytes_remaining": 48_000_000u64, "records_remaining": 400_000, "bytes_per_s": 24_000_000u64,
        "records_per_s": 200_000, "eta_ms": 2000, "elapsed_ms": 2100});
    v["members"][2]["catchup"] = serde_json::json!({"what": "snapshot", "bytes_done": 1_000_000,
        "bytes_remaining": 9_000_000, "records_remaining": 0, "bytes_per_s": 0,
        "records_per_s": 0, "eta_ms": null, "elapsed_ms": 300});
    assert_eq!(
        situation_lines(&v),
        s(&[
            "r1 catching up: 400000 records (~48.0 MB) behind at 200000 records/s (24.0 MB/s), \
             done in about 2.0 s",
            "r3 installing a snapshot: 1.0 MB received, 9.0 MB left at 0.0 MB/s, no rate yet",
        ])
    );
}
