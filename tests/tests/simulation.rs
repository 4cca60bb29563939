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
/// end with a promotion blocked by design (a degraded leader lost its disk). They ran with
/// [`SimConfig::classic`] (the simulation before issue 10), but issue 12's immediate
/// re-heartbeats and controller changes moved their schedules (1060 now ends blocked by design
/// after a degraded leader was wiped, another story), so they are kept as plain seeds: every
/// check must pass.
#[test]
fn pinned_seeds() {
    for seed in [1060, 1151, 1186, 4, 7, 94] {
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
    // With forced failovers (their accepted losses reset the linearizability check): the
    // linearizability check alone still catches the broken rule.
    let mut lin = 0;
    for seed in 1..=10 {
        let mut cfg = SimConfig::new(seed);
        cfg.faults = Faults::parse("all,forced,no-snapshot,no-foreign,no-dup-id").expect("faults");
        cfg.broken_ack_on_flush = true;
        let rep = sim::run(cfg);
        if rep
            .violations
            .iter()
            .any(|v| v.contains("not linearizable"))
        {
            lin += 1;
        }
    }
    assert!(
        lin >= 3,
        "the linearizability check caught only {lin} of 10 broken runs"
    );
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

/// Runs `seeds` with `faults` (replaying the schedules of the fault set they were found with)
/// and fails with the replay commands.
fn pinned(faults: &str, seeds: &[u64]) {
    let mut failures = Vec::new();
    for &seed in seeds {
        let mut cfg = SimConfig::new(seed);
        cfg.faults = Faults::parse(faults).expect("faults");
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

/// The fault set of `all` before `forced`, `snapshot`, `foreign` and `dup-id` joined it.
const ALL_BEFORE_ISSUE_10_KINDS: &str = "all,no-forced,no-snapshot,no-foreign,no-dup-id";

/// Issue 10 item 2: a forced failover's leader-start was not marked lossy in semi-sync mode;
/// returning holders of the cut records refused to truncate for ever (seeds 6, 27, 28, 40, 57
/// with `all,forced`). Seeds 24, 232 and 348 then showed reads that follow an accepted loss:
/// the checks now reset each key at a forced promotion to what the surviving lineage holds.
#[test]
fn forced_failovers_converge_and_stay_linearizable_across_accepted_loss() {
    pinned(
        "all,forced,no-snapshot,no-foreign,no-dup-id",
        &[6, 27, 28, 40, 57, 24, 232, 348],
    );
}

/// Forced failovers with snapshots. 18, 94 and 10081/10676 pinned the checker's reset rules
/// (reads of writes an accepted loss undid; a forced epoch that never committed, undone by the
/// next promotion; a served forced epoch undone by a second forced one; a forced leader that
/// appends its leader-start late). 10222 found a wiped member forced to lead before its
/// snapshot install was durable: the replica core's own check took its commit (the snapshot's)
/// above its flush for a broken commit rule (`core_repl.rs`
/// member_led_before_its_snapshot_install_is_durable_commits_nothing_until_it_is).
#[test]
fn forced_failovers_with_snapshots() {
    pinned(
        "all,forced,no-foreign,no-dup-id",
        &[18, 94, 10081, 10222, 10676, 11650],
    );
}

/// Issue 10 item 3 (`restore-ops`): after a same-epoch restore a pause/resume lifted the
/// "etcd state behind replicas" refusal and the stale sync set was used (seed 2274);
/// `failover --to` without force was accepted against a restored sync set (seed 512).
#[test]
fn operator_actions_on_a_restored_etcd() {
    pinned(ALL_BEFORE_ISSUE_10_KINDS, &[2274, 512, 944]);
}

/// `foreign` and `dup-id` (issue 10 items 1, 7 and 9). Seed 372 found a controller that became
/// active while etcd was down hearing a member on another deployment's directory before it
/// knew the state's cluster id: its epoch latched "etcd state behind replicas" and the cluster
/// never decided again (`core_exact.rs`
/// foreign_directory_heard_before_the_state_is_read_is_forgotten_when_it_is). Seed 54 found a
/// twin of the leader, once refused, taken for a restart when the leader was cut for 250 ms,
/// then promoted by `failover --to r1` (a_twin_refused_once_is_not_taken_for_a_restart_when_
/// the_leader_goes_quiet).
#[test]
fn foreign_directories_and_duplicated_ids() {
    pinned("all,forced", &[54, 65, 130, 154, 364, 372]);
}

/// Issue 10's kinds are on in `all` (`forced` added while its open bug below keeps it out) and
/// reach their classes: forced failovers with accepted
/// loss, snapshot installs, foreign directories and second processes refused and journaled.
#[test]
fn issue_10_kinds_reach_their_classes() {
    let mut failures = Vec::new();
    let (mut installs, mut lost, mut kinds) = (0, 0, std::collections::BTreeMap::new());
    for seed in 301..=360 {
        let mut cfg = SimConfig::new(seed);
        cfg.faults = Faults::parse("all,forced").expect("faults");
        let rep = sim::run(cfg.clone());
        installs += rep.installs;
        lost += rep.lost_accepted;
        for (k, n) in rep.fault_kinds {
            *kinds.entry(k).or_insert(0) += n;
        }
        if !rep.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {:?}\n  replay: {}",
                rep.violations,
                cfg.replay_command()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    const {
        let n = NEW_KINDS_ENABLED;
        assert!(n.snapshot && n.restore_ops && n.foreign && n.dup_id);
    };
    assert!(installs > 10, "only {installs} snapshot installs");
    assert!(lost > 0, "no forced failover lost an acknowledged write");
    for k in [
        "forced-failover",
        "cut-and-forced",
        "foreign",
        "dup-id",
        "impostor-refusals-journaled",
    ] {
        assert!(kinds.get(k).is_some_and(|n| *n > 0), "no {k} in {kinds:?}");
    }
}

/// Issue 10 item 2, found by the simulation with `forced`: a forced leader that died before
/// writing its lossy leader-start was promoted again at the next epoch without a lossy start;
/// the holders of the records the forced failover cut refused to truncate them for ever and
/// the run never converged (seed 10232; seed 11433 showed the same loss completed without an
/// accepted-loss reset). The next epoch is now lossy too, and the loss is accepted as part of
/// the forced one.
#[test]
fn forced_leader_lost_before_its_lossy_leader_start_makes_the_next_epoch_lossy() {
    for seed in [10232, 11433] {
        let mut cfg = SimConfig::new(seed);
        cfg.faults = Faults::parse("all").expect("faults");
        let rep = sim::run(cfg.clone());
        assert!(
            rep.violations.is_empty(),
            "seed {seed} ({}): {:?}",
            cfg.replay_command(),
            rep.violations
        );
    }
    const { assert!(NEW_KINDS_ENABLED.forced) };
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
        "all,no-foreign,no-dup-id",
        "crash,foreign,dup-id",
    ] {
        let f = Faults::parse(s).expect(s);
        assert_eq!(Faults::parse(&f.names()).expect("names"), f, "{s}");
    }
}

/// Issue 12 item 3: the write-availability bounds hold exactly in simulated time. One bounded
/// fault at a time (`sim/bounds.rs`), each fault's longest gap between acknowledged writes held
/// against its bound (a gap past it is a violation naming the fault, its time and both numbers).
/// `scripts/test.sh` runs 16 more seeds with `baton-sim --bounds`.
#[test]
fn availability_bounds_hold_in_simulated_time() {
    let mut episodes = 0;
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 1..=4 {
        let mut cfg = SimConfig::new(seed);
        cfg.duration_ms = 60_000;
        cfg.bounds = true;
        let rep = sim::run(cfg.clone());
        assert!(
            rep.violations.is_empty(),
            "seed {seed} ({}): {:?}",
            cfg.replay_command(),
            rep.violations
        );
        for e in &rep.episodes {
            assert!(e.gap_us <= e.bound_us, "{e:?}");
            kinds.insert(e.kind.clone());
        }
        episodes += rep.episodes.len();
    }
    assert!(episodes >= 30, "only {episodes} faults measured");
    assert!(kinds.len() >= 8, "only {kinds:?} measured");
}

/// Stalled disks in the bounds mode: a sync follower whose fsyncs stall keeps acknowledging
/// keepalives, so only what it owes the leader shows it holds every commit; the controller must
/// replace it within min(stall, failure_timeout + 0.5 s) + 0.5 s (chaos found the leader held
/// for the whole stall: `baton-sim --faults snapshot --bounds` seed 52 before the fix, with
/// stalls of 0.2–2 s; they now reach 4 s so the whole class is reached).
#[test]
fn stalled_disks_meet_their_bounds() {
    let mut follower_stalls = 0;
    for seed in 1..=12 {
        let mut cfg = SimConfig::new(seed);
        cfg.duration_ms = 20_000;
        cfg.bounds = true;
        cfg.faults = Faults::parse("snapshot").expect("faults");
        let rep = sim::run(cfg.clone());
        assert!(
            rep.violations.is_empty(),
            "seed {seed} ({}): {:?}",
            cfg.replay_command(),
            rep.violations
        );
        follower_stalls += rep
            .episodes
            .iter()
            .filter(|e| e.kind == "disk-stall" && !e.on_leader && e.end_us - e.start_us > 1_300_000)
            .count();
    }
    assert!(
        follower_stalls >= 3,
        "only {follower_stalls} follower stalls longer than the failure timeout + 0.5 s"
    );
}
