//! `baton-bench partial`: the partial failures of issue 12 on real processes (3 etcd members,
//! 2 controllers, 3 replicas behind relays, the proxy; release build). Each fault is held for
//! `--hold-ms` while writers go through the proxy, then healed; after the cluster settled every
//! acknowledged write is read back. One row per fault: the longest gap between acknowledged
//! writes (p50 and max over the runs) next to the chaos runner's bound for that fault
//! (`chaos::bounds`), how many runs failed over, and the writes lost. The disk faults run
//! the replicas as `baton-replica-failpoints` (built on demand, release): a full disk is
//! `wal.before_append=return(enospc)`, a slow disk `wal.before_fsync=sleep(2500)`, both held
//! for `--hold-ms`; a corrupted follower log is stopped, damaged in a sealed segment and
//! restarted (not held: the row measures its repair from the leader).
//!
//! It measures and reports; it asserts nothing about the numbers (the bounds are asserted in
//! simulated time by tier 1, and checked loosely by the chaos runner).

use super::common::stats;
use baton_tests::chaos::bounds::{self, Param, Timing};
use baton_tests::chaos::nemesis::{corrupt_and_repair, leader_epoch, wait_settled};
use baton_tests::chaos::Fault;
use baton_tests::client::Client;
use baton_tests::cluster::{Cluster, Opts};
use baton_tests::relay::Mode;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The faults measured, in table order.
pub(crate) const FAULTS: &[&str] = &[
    "leader-isolated",
    "leader-cut-from-followers",
    "leader-to-followers-dropped",
    "followers-to-leader-dropped",
    "follower-cut-from-leader",
    "controller-cut-from-replicas",
    "etcd-leader-killed",
    "etcd-down",
    "controllers-down",
    "disk-full-leader",
    "disk-full-follower",
    "slow-disk-leader",
    "slow-disk-follower",
    "follower-log-corrupted",
];

/// Each fsync's stall in the slow-disk faults.
const STALL: Duration = Duration::from_millis(2500);

/// The chaos kind whose bound applies to `fault`, and what that bound depends on.
fn kind_of(fault: &str) -> Option<(Fault, Param)> {
    Some(match fault {
        "leader-isolated" => (Fault::Partition, Param::None),
        "leader-cut-from-followers" => (Fault::LeaderCut, Param::None),
        "leader-to-followers-dropped" | "followers-to-leader-dropped" => {
            (Fault::LeaderCutOneWay, Param::None)
        }
        "follower-cut-from-leader" => (Fault::PartitionData, Param::None),
        "controller-cut-from-replicas" => (Fault::IsolateController, Param::None),
        "etcd-leader-killed" => (Fault::EtcdLeader, Param::None),
        "etcd-down" => (Fault::EtcdDown, Param::None),
        "controllers-down" => (Fault::ControllersDown, Param::None),
        "disk-full-leader" => (Fault::DiskFullLeader, Param::None),
        "disk-full-follower" => (Fault::DiskFullFollower, Param::None),
        "slow-disk-leader" => (Fault::SlowDiskLeader, Param::Stall(STALL)),
        "slow-disk-follower" => (Fault::SlowDiskFollower, Param::Stall(STALL)),
        "follower-log-corrupted" => (Fault::CorruptFollower, Param::None),
        _ => return None,
    })
}

/// Concurrent writers through the proxy.
const WRITERS: usize = 4;

/// One acknowledged write: key, value, when it was acknowledged.
type Ack = (String, String, Instant);

/// Writers through the proxy until `stop`; every acknowledged write recorded.
fn start_writers(url: String, stop: Arc<AtomicBool>, acks: Arc<Mutex<Vec<Ack>>>, run: usize) {
    for w in 0..WRITERS {
        let (url, stop, acks) = (url.clone(), stop.clone(), acks.clone());
        tokio::spawn(async move {
            // Longer than the proxy's failover buffer: a held request is answered, not dropped.
            let c = Client::new(Duration::from_secs(12));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 5_000_000 {
                i += 1;
                let key = format!("p{run}-{w}-{i}");
                let val = format!("v{i}");
                match c.put(&url, &key, val.clone()).await {
                    Ok(r) if r.status == 200 => acks
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((key, val, Instant::now())),
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        });
    }
}

/// Injects `fault`, holds it, heals it; returns what was done.
async fn inject(cl: &mut Cluster, fault: &str, hold: Duration) -> anyhow::Result<String> {
    let leader = cl
        .leader_id()
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader before the fault"))?;
    let followers: Vec<String> = cl
        .replicas
        .keys()
        .filter(|id| **id != leader)
        .cloned()
        .collect();
    // The follower faults hit the sync member (the one the leader waits for): the worst case.
    let sync = match cl.view().await {
        Some(v) => v["sync_set"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|m| m["id"].as_str())
            .map(str::to_string),
        None => None,
    }
    .filter(|s| followers.contains(s))
    .unwrap_or_else(|| followers[0].clone());
    let what = match fault {
        "leader-isolated" => {
            cl.isolate(&leader, Mode::Blackhole)?;
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!("{leader} cut from everyone")
        }
        "leader-cut-from-followers" => {
            for f in &followers {
                cl.cut_data_link(&leader, f, Mode::Blackhole)?;
            }
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!("{leader} cut from its followers (both directions)")
        }
        "leader-to-followers-dropped" => {
            for f in &followers {
                cl.drop_data_one_way(&leader, f)?;
            }
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!("{leader}'s messages to its followers dropped (theirs reach it)")
        }
        "followers-to-leader-dropped" => {
            for f in &followers {
                cl.drop_data_one_way(f, &leader)?;
            }
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!("its followers' messages to {leader} dropped (its own reach them)")
        }
        "disk-full-leader" | "disk-full-follower" => {
            let id = if fault == "disk-full-leader" {
                &leader
            } else {
                &sync
            };
            cl.arm(id, "wal.before_append", "return(enospc)").await?;
            tokio::time::sleep(hold).await;
            cl.disarm(id, "wal.before_append").await?;
            format!("disk full on {id} (leader {leader})")
        }
        "slow-disk-leader" | "slow-disk-follower" => {
            let id = if fault == "slow-disk-leader" {
                &leader
            } else {
                &sync
            };
            let action = format!("sleep({})", STALL.as_millis());
            cl.arm(id, "wal.before_fsync", &action).await?;
            tokio::time::sleep(hold).await;
            cl.disarm(id, "wal.before_fsync").await?;
            format!(
                "every fsync of {id} (leader {leader}) stalls {} ms",
                STALL.as_millis()
            )
        }
        "follower-log-corrupted" => {
            let (what, problem) = corrupt_and_repair(cl, &sync, &leader).await?;
            match problem {
                Some(p) => format!("{what} ({p})"),
                None => what,
            }
        }
        "follower-cut-from-leader" => {
            let f = &followers[0];
            cl.cut_data_link(&leader, f, Mode::Blackhole)?;
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!("follower {f} cut from {leader}")
        }
        "controller-cut-from-replicas" => {
            let i = cl.active_controller().await.unwrap_or(0);
            cl.isolate_controller(i, Mode::Blackhole);
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!(
                "active controller {} cut from every replica",
                cl.controllers[i].id
            )
        }
        "etcd-leader-killed" => {
            let i = cl
                .etcd_leader()
                .await
                .ok_or_else(|| anyhow::anyhow!("no etcd leader found"))?;
            let name = cl.etcd_members_mut()[i].daemon.name.clone();
            cl.etcd_members_mut()[i].daemon.kill9();
            tokio::time::sleep(hold).await;
            cl.etcd_members_mut()[i].daemon.restart()?;
            format!("etcd raft leader {name} killed")
        }
        "etcd-down" => {
            for m in cl.etcd_members_mut() {
                m.daemon.kill9();
            }
            tokio::time::sleep(hold).await;
            for m in cl.etcd_members_mut() {
                m.daemon.restart()?;
            }
            "every etcd member killed".to_string()
        }
        "controllers-down" => {
            for c in &mut cl.controllers {
                c.daemon.kill9();
            }
            tokio::time::sleep(hold).await;
            for c in &mut cl.controllers {
                c.daemon.restart()?;
            }
            "both controllers killed".to_string()
        }
        other => anyhow::bail!("unknown fault {other:?}; known: {}", FAULTS.join(", ")),
    };
    Ok(what)
}

/// The acknowledged writes that cannot be read back with their value (leader reads through
/// the proxy; a transient 503 is retried for up to 20 s).
async fn lost(url: &str, acks: &[Ack]) -> usize {
    let c = Client::new(Duration::from_secs(5));
    let mut missing = 0;
    for chunk in acks.chunks(256) {
        let mut tasks = Vec::new();
        for (k, v, _) in chunk {
            let (c, url, k, v) = (c.clone(), url.to_string(), k.clone(), v.clone());
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    match c.get(&url, &k).await {
                        Ok(r) if r.status == 200 => return r.body == v.as_bytes(),
                        Ok(r) if r.status == 404 => return false,
                        _ if Instant::now() > deadline => return false,
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }));
        }
        for t in tasks {
            if !t.await.unwrap_or(false) {
                missing += 1;
            }
        }
    }
    missing
}

/// One measured run of `fault`: (longest gap ms, failed over, lost writes).
async fn one_run(
    cl: &mut Cluster,
    fault: &str,
    hold: Duration,
    run: usize,
) -> anyhow::Result<(f64, bool, usize)> {
    let url = cl.proxy_url();
    let (_, epoch0) = leader_epoch(cl).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    start_writers(url.clone(), stop.clone(), acks.clone(), run);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let t0 = Instant::now();
    let what = inject(cl, fault, hold).await?;
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let end = Instant::now();
    // Let in-flight requests finish (their outcome is recorded if acknowledged).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut acks: Vec<Ack> = std::mem::take(&mut *acks.lock().unwrap_or_else(|p| p.into_inner()));
    acks.sort_by_key(|a| a.2);
    // The longest stretch without an acknowledgement from the fault to the end of the window.
    let mut last = t0;
    let mut gap = Duration::ZERO;
    for (_, _, at) in acks.iter().filter(|a| a.2 >= t0 && a.2 <= end) {
        gap = gap.max(at.duration_since(last));
        last = *at;
    }
    gap = gap.max(end.duration_since(last));
    let settled = wait_settled(cl, Duration::from_secs(30)).await;
    let (leader, epoch1) = leader_epoch(cl).await;
    let failover = epoch1 != epoch0;
    let lost = lost(&url, &acks).await;
    println!(
        "{fault} run {}: {what} for {:.1} s; longest write gap {:.0} ms; {} acknowledged; \
         failover {}; lost {lost}; settled {}; leader now {}; heal→end {:.1} s",
        run + 1,
        healed.duration_since(t0).as_secs_f64(),
        gap.as_secs_f64() * 1000.0,
        acks.len(),
        if failover { "yes" } else { "no" },
        match &settled {
            Ok(d) => format!("after {:.1} s", d.as_secs_f64()),
            Err(why) => format!("no ({why})"),
        },
        leader.unwrap_or_else(|| "?".into()),
        end.duration_since(healed).as_secs_f64(),
    );
    Ok((gap.as_secs_f64() * 1000.0, failover, lost))
}

pub(crate) async fn run_partial(
    runs: usize,
    hold_ms: u64,
    faults: Vec<String>,
    release: bool,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("baton-bench")
                .tempdir_in(".")?;
            tmp.path().to_path_buf()
        }
    };
    let faults: Vec<String> = if faults.is_empty() {
        FAULTS.iter().map(|f| f.to_string()).collect()
    } else {
        faults
    };
    for f in &faults {
        anyhow::ensure!(
            FAULTS.contains(&f.as_str()),
            "unknown fault {f:?}; known: {}",
            FAULTS.join(", ")
        );
    }
    let fault_points = faults
        .iter()
        .any(|f| kind_of(f).is_some_and(|(k, _)| k.needs_fault_points()));
    if fault_points {
        tokio::task::spawn_blocking(move || baton_tests::procs::build_fault_bins(release))
            .await??;
    }
    let opts = Opts {
        release,
        proxy: true,
        inbound_relays: true,
        etcd_members: 3,
        cluster_toml: "max_failovers_per_hour = 1000\n".into(),
        // Sealed segments within seconds, for the corrupted-log fault.
        replica_toml: "[storage]\nsegment_bytes_max = 262144\n".into(),
        fault_points,
        ..Opts::default()
    };
    let mut cl = Cluster::start(&dir, opts).await?;
    cl.wait_proxy_writable(Duration::from_secs(30)).await?;
    println!(
        "3 etcd + 2 controllers + 3 replicas behind relays + proxy ({} build), semi-sync, \
         default timing; {WRITERS} writers through the proxy; each fault held {hold_ms} ms",
        if release { "release" } else { "debug" }
    );
    let hold = Duration::from_millis(hold_ms);
    let mut table = Vec::new();
    for f in &faults {
        let (mut gaps, mut failovers, mut lost, mut done) = (Vec::new(), 0, 0, 0);
        for run in 0..runs {
            if let Err(why) = wait_settled(&cl, Duration::from_secs(30)).await {
                println!(
                    "{f} run {}: cluster not settled before the fault: {why}",
                    run + 1
                );
            }
            match one_run(&mut cl, f, hold, run).await {
                Ok((gap, fo, l)) => {
                    gaps.push(gap);
                    failovers += usize::from(fo);
                    lost += l;
                    done += 1;
                }
                Err(e) => println!("{f} run {}: failed: {e:#}", run + 1),
            }
        }
        table.push((f.clone(), stats(gaps), failovers, done, lost));
    }
    let timing = Timing::product_default();
    println!(
        "\n| fault (held {hold_ms} ms) | longest write gap | bound (chaos kind) | failover | lost writes |"
    );
    println!("|---|---|---|---|---:|");
    for (f, gaps, fo, done, lost) in table {
        let bound = match kind_of(&f) {
            Some((k, p)) => format!(
                "{:.0} ms ({}: {})",
                bounds::bound(k, &timing, p).as_secs_f64() * 1000.0,
                k.name(),
                bounds::rule(k).0
            ),
            None => "?".into(),
        };
        println!("| {f} | {gaps} | {bound} | {fo} of {done} | {lost} |");
    }
    Ok(())
}
