//! Tier 1 in CI: the seeded simulation (`baton_tests::sim`) over thousands of seeds, the seeds
//! that found bugs pinned as regression tests, and a check that the checks can fail.

use baton_tests::sim::{self, Faults, SimConfig, NEW_KINDS_ENABLED};

/// Runs `count` seeds from `start` with every fault and fails with the replay commands.
fn run_range(start: u64, count: u64) {
    let (mut steps, mut faults, mut blocked) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    for seed in start..start + count {
        let cfg = SimConfig::new(seed);
        let rep = sim::run(cfg.clone());
        steps += rep.steps;
        faults += rep.faults;
        blocked += u64::from(rep.blocked);
        if !rep.violations.is_empty() {
            failures.push(format!(
                "seed {seed}:\n  {}\n  replay: {}",
                rep.violations.join("\n  "),
                cfg.replay_command()
            ));
        }
    }
    println!(
        "simulation: {count} seeds, {steps} steps, {faults} faults, violations {}, blocked by design {blocked}",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// Split in parts so that the test runner spreads them over the cores. `scripts/test.sh` runs
// 2000 more through `baton-sim`, which prints the summary line.
#[test]
fn seeds_0001_0150() {
    run_range(1, 150);
}
#[test]
fn seeds_0151_0300() {
    run_range(151, 150);
}

/// Seeds that found bugs, pinned: 1060, 1151 and 1186 left the cluster leaderless for a
/// minute because an operator's `failover --to` named a member whose disk had been wiped
/// (accepted by id alone; its promotion then waited for the op's deadline). 4, 7 and 94
/// end with a promotion blocked by design (a degraded leader lost its disk). They replay
/// their original schedules with [`SimConfig::classic`] (the simulation before issue 10).
#[test]
fn pinned_seeds() {
    for seed in [1060, 1151, 1186] {
        let rep = sim::run(SimConfig::classic(seed));
        assert!(
            rep.violations.is_empty(),
            "seed {seed}: {:?}",
            rep.violations
        );
        assert!(!rep.blocked, "seed {seed} must not end blocked");
    }
    for seed in [4, 7, 94] {
        let rep = sim::run(SimConfig::classic(seed));
        assert!(
            rep.violations.is_empty(),
            "seed {seed}: {:?}",
            rep.violations
        );
    }
}

/// etcd restored from an old backup or emptied (TESTING row 18), with crashes and partitions.
/// Seed 53 found a second leader of one epoch (the state, restored to the middle of a
/// promotion, let the controller finish it again); seed 25 found a deposed leader granted a
/// lease by the restored state. Both pinned; runs may end blocked (the controller refuses a
/// state behind the replicas until an operator acts), never unsafe.
#[test]
fn etcd_restored_from_an_old_backup() {
    let faults = Faults::parse("crash,partition,restore").expect("faults");
    let mut failures = Vec::new();
    let mut blocked = 0;
    for seed in [25, 53].into_iter().chain(1000..1150) {
        // The pinned ones replay their original schedules.
        let mut cfg = if seed < 1000 {
            SimConfig::classic(seed)
        } else {
            SimConfig::new(seed)
        };
        cfg.faults = faults.clone();
        let rep = sim::run(cfg.clone());
        blocked += u64::from(rep.blocked);
        if !rep.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {:?}\n  replay: {}",
                rep.violations,
                cfg.replay_command()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        blocked > 0,
        "no run saw the controller refuse a restored etcd"
    );
}

/// Async mode: failovers may lose acknowledged writes (G3 counts them), but one writer per
/// epoch, logs that agree, convergence after healing and epochs that only grow still hold.
#[test]
fn async_mode_seeds() {
    let mut failures = Vec::new();
    for seed in 1..=150 {
        let mut cfg = SimConfig::new(seed);
        cfg.mode = baton_common::directive::Mode::Async;
        let rep = sim::run(cfg.clone());
        if !rep.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {:?}\n  replay: {}",
                rep.violations,
                cfg.replay_command()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The checks fail when the runtime breaks the commit rule (acknowledging on the leader's own
/// fsync): lost writes and non-linearizable reads are reported, with a replay command.
#[test]
fn checks_catch_a_broken_commit_rule() {
    let mut caught = 0;
    for seed in 1..=10 {
        let mut cfg = SimConfig::new(seed);
        cfg.broken_ack_on_flush = true;
        let rep = sim::run(cfg);
        if !rep.violations.is_empty() {
            caught += 1;
        }
    }
    assert!(caught >= 8, "only {caught} of 10 broken runs were caught");
}

/// No faults: every operation succeeds or is refused cleanly, and the run converges.
#[test]
fn quiet_run_has_no_unknown_outcomes() {
    let mut cfg = SimConfig::new(42);
    cfg.faults = Faults::none();
    let rep = sim::run(cfg);
    assert!(rep.violations.is_empty(), "{:?}", rep.violations);
    assert!(rep.ok > 1000, "only {} ops succeeded", rep.ok);
    assert_eq!(rep.unknown, 0);
    assert_eq!(rep.faults, 0);
}

/// The same seed replays the same run.
#[test]
fn a_seed_replays_exactly() {
    let a = sim::run(SimConfig::new(7));
    let b = sim::run(SimConfig::new(7));
    assert_eq!(
        (a.steps, a.ops, a.ok, a.failed, a.unknown, a.epochs),
        (b.steps, b.ops, b.ok, b.failed, b.unknown, b.epochs)
    );
}

/// Issue 10's fault kinds reach known product bugs; until each is fixed its kind stays out of
/// `all` ([`NEW_KINDS_ENABLED`]) and the bug is pinned here as a seed that must still show
/// it. When the fix lands this test fails with "no longer shows": flip the kind's flag in
/// `NEW_KINDS_ENABLED` (tests/src/sim/mod.rs); the same seed must then pass, and the kind
/// joins every `all` sweep (this file's ranges and `baton-sim --seeds 2000`).
/// A schedule that moved (another product change) may stop showing the bug on the pinned
/// seed: then the next seeds are tried, and the first that shows it is named.
fn known_bug(enabled: bool, flag: &str, faults: &str, seed: u64, symptom: &str) {
    let cfg = |seed| {
        let mut c = SimConfig::new(seed);
        c.faults = Faults::parse(faults).expect("faults");
        c
    };
    if enabled {
        let rep = sim::run(cfg(seed));
        assert!(
            rep.violations.is_empty(),
            "seed {seed} ({}) still fails with {flag} on: {:?}",
            cfg(seed).replay_command(),
            rep.violations
        );
        return;
    }
    for s in seed..seed + 40 {
        let rep = sim::run(cfg(s));
        if rep.violations.iter().any(|v| v.contains(symptom)) {
            if s != seed {
                println!("the bug moved from seed {seed} to seed {s}: pin {s}");
            }
            return;
        }
    }
    panic!(
        "seeds {seed}..{} no longer show the bug ({symptom:?}): if it is fixed, set {flag} = true; \
         if not, a change moved the schedules: find a seed that shows it with \
         `baton-sim --seeds 2000 --faults {faults}` and pin it here",
        seed + 40
    );
}

/// Issue 10 item 2: `failover --to M --force` in semi-sync mode records M's promotion but its
/// leader-start is not marked lossy, so the returning holders of the records M lacked refuse
/// to truncate them for ever ("refusing to truncate committed records") and the run never
/// converges. Replay: `cargo run -p baton-tests --bin baton-sim -- --seed 6 --faults all,forced`.
#[test]
fn known_bug_forced_failover_leader_start_not_lossy() {
    // Fixed (the lossy flag lives in the cluster state): seeds that never converged before now
    // do. The kind stays out of `all` until the linearizability checker accounts for the
    // acknowledged writes a forced failover is allowed to lose (it reports them as
    // non-linearizable reads; see tests/README.md).
    for seed in [6, 27, 28, 40, 57] {
        let mut c = SimConfig::new(seed);
        c.faults = Faults::parse("all,forced").expect("faults");
        let rep = sim::run(c.clone());
        let stuck: Vec<_> = rep
            .violations
            .iter()
            .filter(|v| v.contains("not converged") || v.contains("refusing to truncate"))
            .collect();
        assert!(
            stuck.is_empty(),
            "seed {seed} ({}): {stuck:?}",
            c.replay_command()
        );
    }
    let _ = NEW_KINDS_ENABLED.forced;
}

/// Issue 10 item 3: after a same-epoch etcd restore the controller refuses ("etcd state behind
/// replicas: the state is at rev 2 of epoch 1 but r3 applied rev 4 of it"), but an operator's
/// pause and resume are still written, each moving the rev up, until it passes what the
/// replicas applied: the refusal is lifted for good and the restored sync set [r2] (r2 had
/// been replaced by r3) is used; the next promotion picks r2, which lacks writes acknowledged
/// with r3 (seed 2274). `failover --to M` without force is likewise accepted against a
/// restored sync set (seed 512: a restore to epoch 1 while r3 led epoch 3 alone; r2 promoted).
/// Replay: `cargo run -p baton-tests --bin baton-sim -- --seed 2274 --faults all,restore-ops`.
#[test]
fn known_bug_operator_actions_on_a_restored_etcd() {
    known_bug(
        NEW_KINDS_ENABLED.restore_ops,
        "NEW_KINDS_ENABLED.restore_ops",
        "all,restore-ops",
        2274,
        "is not in its log",
    );
}

/// Snapshots, compaction and snapshot installs (`--faults snapshot`: replicas snapshot every
/// 0.5–4 KiB of log; crashes right after installs; disk stalls; followers down long enough to
/// need a snapshot). Gated in `all` by its known bug (issue 10 item 5: the follower
/// acknowledges a snapshot's LSN before the snapshot is durable), which these seeds do not
/// reach (see tests/README.md); they keep the snapshot paths under test meanwhile (40 seeds:
/// the CI budget).
#[test]
fn snapshot_seeds() {
    let mut failures = Vec::new();
    let mut installs = 0;
    for seed in 301..=340 {
        let mut cfg = SimConfig::new(seed);
        cfg.faults = Faults::parse("all,snapshot").expect("faults");
        let rep = sim::run(cfg.clone());
        installs += rep.installs;
        if !rep.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {:?}\n  replay: {}",
                rep.violations,
                cfg.replay_command()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        installs > 10,
        "only {installs} snapshot installs in 40 runs"
    );
}

/// A long idle run (TESTING row 23): one simulated hour without faults, clients writing about
/// once a second, snapshots on. Nothing wedges (every operation succeeds), the controllers do
/// not keep rewriting etcd, and compaction keeps the logs short. (Before the simulated
/// follower acknowledged on keepalives as the runtime does, this run flapped the sync set
/// once a second: `baton-sim --seed 4 --idle-ms 600000 --classic`.)
#[test]
fn long_idle_run_does_not_wedge() {
    let rep = sim::run(SimConfig::idle(3, 3600 * 1000, true));
    assert!(rep.violations.is_empty(), "{:?}", rep.violations);
    assert!(rep.ok > 5_000, "only {} operations succeeded", rep.ok);
    assert!(rep.snapshots > 50, "only {} snapshots", rep.snapshots);
}

/// Every fault kind's name parses back (`names` is what replay commands print).
#[test]
fn fault_lists_round_trip() {
    for s in [
        "all",
        "everything",
        "none",
        "crash,restore",
        "all,forced",
        "all,snapshot,restore-ops",
        "snapshot",
    ] {
        let f = Faults::parse(s).expect(s);
        assert_eq!(Faults::parse(&f.names()).expect("names"), f, "{s}");
    }
}
