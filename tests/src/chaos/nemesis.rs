//! The chaos runner's nemesis: a seeded schedule of one fault at a time (in shuffled rounds of
//! every enabled kind), each held for a random time in its range and then healed, followed by
//! a wait for the cluster to settle and a quiet period. It owns what each fault kind does to the [`Cluster`] (signals, relays,
//! wiped data, operator calls), the heal-everything step, and the record of every fault.

use super::workload::Recorder;
use super::Fault;
use crate::cluster::Cluster;
use crate::relay::Mode;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use std::time::{Duration, Instant};

/// The cluster must settle this long after a heal before the next fault; past it the fault
/// record says what was still missing and the schedule goes on.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// One injected fault.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    pub kind: Fault,
    /// What was done, e.g. `kill -9 r2 (leader), restart after 1.4 s`.
    pub what: String,
    /// µs since the run began (the workload's clock).
    pub start_us: u64,
    pub heal_us: u64,
    /// Leader and epoch before the fault and once settled.
    pub before: (Option<String>, Option<u64>),
    pub after: (Option<String>, Option<u64>),
    /// Time from the heal until the cluster was settled, or what was still missing.
    pub settled: Result<Duration, String>,
    /// Longest client-observed write unavailability around the fault (filled in later).
    pub gap_us: u64,
}

fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..=hi))
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// (leader, epoch) of the active controller's view.
pub async fn leader_epoch(cl: &Cluster) -> (Option<String>, Option<u64>) {
    match cl.active_view().await {
        Some((_, v)) => (
            v["leader"]["id"].as_str().map(str::to_string),
            v["epoch"].as_u64(),
        ),
        None => (None, None),
    }
}

/// Why the cluster is not settled yet (`None` = settled): an active controller in phase
/// steady with no operation or add running, a leader, a non-empty sync set, and every member
/// heard, clean and at the leader's epoch.
pub async fn unsettled(cl: &Cluster) -> Option<String> {
    let Some((_, v)) = cl.active_view().await else {
        return Some("no active controller".into());
    };
    if v["phase"] != "steady" {
        return Some(format!("phase {}", v["phase"]));
    }
    if v["leader"].is_null() {
        return Some("no leader".into());
    }
    if !v["op"].is_null() {
        return Some(format!("operation {} running", v["op"]));
    }
    if !v["adding"].is_null() {
        return Some(format!("adding {}", v["adding"]));
    }
    if v["sync_set"].as_array().is_none_or(|a| a.is_empty()) {
        return Some("empty sync set".into());
    }
    let epoch = v["epoch"].as_u64();
    for m in v["members"].as_array().into_iter().flatten() {
        let id = m["id"].as_str().unwrap_or("?");
        if m["health"] != "ok" {
            return Some(format!("{id} {}", m["health"]));
        }
        if m["unclean"] == true {
            return Some(format!("{id} unclean"));
        }
        if m["epoch"].as_u64() != epoch {
            return Some(format!(
                "{id} at epoch {} (cluster {})",
                m["epoch"], v["epoch"]
            ));
        }
    }
    // The replicas' own word, read directly: the view may not have noticed a restart yet.
    let leader = v["leader"]["id"].as_str().unwrap_or_default();
    let c = crate::client::Client::new(Duration::from_secs(1));
    for (id, r) in &cl.replicas {
        let Ok(st) = c.status(&r.url).await else {
            return Some(format!("{id} does not answer its status"));
        };
        let want = if id == leader { "leader" } else { "follower" };
        if st["role"] != want {
            return Some(format!("{id} is {} (expected {want})", st["role"]));
        }
        if st["health"] != "ok" {
            return Some(format!("{id} reports {}", st["health"]));
        }
        if st["epoch"].as_u64() != epoch || st["unclean"] != false {
            return Some(format!(
                "{id} reports epoch {} unclean {}",
                st["epoch"], st["unclean"]
            ));
        }
        if want == "follower" && st["upstream"]["phase"] != "streaming" {
            return Some(format!("{id} upstream {}", st["upstream"]));
        }
    }
    None
}

/// Waits up to `timeout` for [`unsettled`] to say `None`.
pub async fn wait_settled(cl: &Cluster, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let why = unsettled(cl).await;
        match why {
            None => return Ok(start.elapsed()),
            Some(w) if start.elapsed() >= timeout => {
                return Err(format!("not settled after {}: {w}", secs(timeout)))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The recorded leader, or a random replica when there is none.
async fn leader_or_any(cl: &Cluster, rng: &mut StdRng) -> (String, bool) {
    if let (Some(l), _) = leader_epoch(cl).await {
        if cl.replicas.contains_key(&l) {
            return (l, true);
        }
    }
    let ids: Vec<&String> = cl.replicas.keys().collect();
    ((*ids.choose(rng).expect("replicas")).clone(), false)
}

/// A replica: the leader with probability `p_leader`, else a random follower.
async fn pick_replica(cl: &Cluster, rng: &mut StdRng, p_leader: f64) -> (String, &'static str) {
    let (leader, known) = leader_or_any(cl, rng).await;
    if known && rng.random_bool(p_leader) {
        return (leader, "leader");
    }
    let others: Vec<&String> = cl.replicas.keys().filter(|id| **id != leader).collect();
    let pick = (*others.choose(rng).expect("followers")).clone();
    (pick, if known { "follower" } else { "no leader known" })
}

/// Processes that died on their own (not by the nemesis) since the last call: restarts them
/// and returns their names, which the report counts as violations.
pub async fn restart_dead(cl: &mut Cluster) -> anyhow::Result<Vec<String>> {
    let mut dead = Vec::new();
    for (id, r) in cl.replicas.iter_mut() {
        if !r.is_running() {
            dead.push(id.clone());
            r.kill9();
            r.restart()?;
        }
    }
    for c in cl.controllers.iter_mut() {
        if !c.daemon.is_running() {
            dead.push(c.id.clone());
            c.daemon.kill9();
            c.daemon.restart()?;
        }
    }
    if let Some(p) = cl.proxy.as_mut() {
        if !p.daemon.is_running() {
            dead.push("proxy".into());
            p.daemon.kill9();
            p.daemon.restart()?;
        }
    }
    let mut etcd_restarted = false;
    for e in cl.etcd_members_mut() {
        if !e.daemon.is_running() {
            dead.push(e.daemon.name.clone());
            e.daemon.kill9();
            e.daemon.restart()?;
            etcd_restarted = true;
        }
    }
    if etcd_restarted {
        wait_etcd(cl).await?;
    }
    Ok(dead)
}

async fn wait_etcd(cl: &Cluster) -> anyhow::Result<()> {
    for e in std::iter::once(&cl.etcd).chain(&cl.etcd_peers) {
        e.wait_healthy(Duration::from_secs(30)).await?;
    }
    Ok(())
}

/// Heals everything: links pass, paused replicas continue, and every process that is not
/// running runs again (the nemesis restarts what it stops, so any such process is named in
/// the result).
pub async fn heal_all(cl: &mut Cluster) -> anyhow::Result<Vec<String>> {
    cl.heal_links();
    for r in cl.replicas.values() {
        r.resume();
    }
    restart_dead(cl).await
}

/// Injects one fault of `kind`, holds it, heals it; returns what was done.
async fn inject(cl: &mut Cluster, kind: Fault, rng: &mut StdRng) -> anyhow::Result<String> {
    Ok(match kind {
        Fault::Kill => {
            let (id, role) = pick_replica(cl, rng, 0.6).await;
            let hold = ms(rng, 200, 3000);
            cl.replicas.get_mut(&id).expect("replica").kill9();
            tokio::time::sleep(hold).await;
            cl.replicas.get_mut(&id).expect("replica").restart()?;
            format!("kill -9 {id} ({role}), restart after {}", secs(hold))
        }
        Fault::Pause => {
            let (id, role) = pick_replica(cl, rng, 0.8).await;
            let hold = ms(rng, 1000, 3500);
            cl.replicas[&id].pause();
            tokio::time::sleep(hold).await;
            cl.replicas[&id].resume();
            format!("SIGSTOP {id} ({role}) for {}", secs(hold))
        }
        Fault::Partition => {
            let (id, role) = leader_or_any(cl, rng).await;
            let role = if role { "leader" } else { "no leader known" };
            let hold = ms(rng, 2000, 5000);
            cl.isolate(&id, Mode::Blackhole)?;
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!("partition {id} ({role}) from everyone for {}", secs(hold))
        }
        Fault::PartitionController => {
            let (id, role) = pick_replica(cl, rng, 0.8).await;
            let hold = ms(rng, 1500, 4000);
            cl.set_controller_links(&id, Mode::Blackhole);
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!(
                "partition {id} ({role}) from the controllers only for {}",
                secs(hold)
            )
        }
        Fault::PartitionData => {
            let (leader, known) = leader_or_any(cl, rng).await;
            let others: Vec<String> = cl
                .replicas
                .keys()
                .filter(|id| **id != leader)
                .cloned()
                .collect();
            let hold = ms(rng, 2000, 4000);
            let role = if known { "leader" } else { "no leader known" };
            let what = if rng.random_bool(0.5) {
                for o in &others {
                    cl.cut_data_link(&leader, o, Mode::Blackhole)?;
                }
                format!("cut {leader} ({role}) from its followers only")
            } else {
                let f = others.choose(rng).expect("a follower").clone();
                cl.cut_data_link(&leader, &f, Mode::Blackhole)?;
                format!("cut follower {f} from {leader} ({role}) only")
            };
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!("{what} for {}", secs(hold))
        }
        Fault::Controller => {
            let i = cl.active_controller().await.unwrap_or(0);
            let hold = ms(rng, 500, 3000);
            let id = cl.controllers[i].id.clone();
            cl.controllers[i].daemon.kill9();
            tokio::time::sleep(hold).await;
            cl.controllers[i].daemon.restart()?;
            format!(
                "kill -9 active controller {id}, restart after {}",
                secs(hold)
            )
        }
        Fault::IsolateController => {
            let i = cl.active_controller().await.unwrap_or(0);
            let hold = ms(rng, 2000, 5000);
            for rl in cl.relays.values() {
                rl[i].set(Mode::Blackhole);
            }
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!(
                "cut active controller {} from every replica for {}",
                cl.controllers[i].id,
                secs(hold)
            )
        }
        Fault::RestartAll => {
            let hold = ms(rng, 200, 2000);
            for r in cl.replicas.values_mut() {
                r.kill9();
            }
            tokio::time::sleep(hold).await;
            for r in cl.replicas.values_mut() {
                r.restart()?;
            }
            format!(
                "kill -9 every replica, restart them all after {}",
                secs(hold)
            )
        }
        Fault::Etcd => {
            let hold = ms(rng, 2000, 5000);
            let n = 1 + cl.etcd_peers.len();
            let what = if n > 1 && rng.random_bool(0.5) {
                let i = rng.random_range(0..n);
                let mut members = cl.etcd_members_mut();
                let name = members[i].daemon.name.clone();
                members[i].daemon.kill9();
                tokio::time::sleep(hold).await;
                cl.etcd_members_mut()[i].daemon.restart()?;
                format!("kill -9 etcd member {name} (a minority of {n}), restart after")
            } else {
                for m in cl.etcd_members_mut() {
                    m.daemon.kill9();
                }
                tokio::time::sleep(hold).await;
                for m in cl.etcd_members_mut() {
                    m.daemon.restart()?;
                }
                format!("kill -9 all {n} etcd member(s) (total loss), restart after")
            };
            wait_etcd(cl).await?;
            format!("{what} {}", secs(hold))
        }
        Fault::Wipe => {
            let (id, role) = pick_replica(cl, rng, 0.3).await;
            let hold = ms(rng, 200, 1500);
            let r = cl.replicas.get_mut(&id).expect("replica");
            r.kill9();
            tokio::time::sleep(hold).await;
            r.wipe_and_restart()?;
            format!(
                "kill -9 {id} ({role}), wipe its data, restart after {}",
                secs(hold)
            )
        }
        Fault::Double => {
            let (leader, known) = leader_or_any(cl, rng).await;
            let role = if known { "leader" } else { "no leader known" };
            let hold = ms(rng, 500, 2500);
            if rng.random_bool(0.5) {
                // Two failovers in quick succession.
                let (_, epoch) = leader_epoch(cl).await;
                cl.replicas.get_mut(&leader).expect("replica").kill9();
                let next =
                    crate::procs::wait_for(Duration::from_secs(5), "a successor", || async {
                        match leader_epoch(cl).await {
                            (Some(l), e) if l != leader && e > epoch => Some(l),
                            _ => None,
                        }
                    })
                    .await
                    .ok();
                let second = match &next {
                    Some(n) => {
                        cl.replicas.get_mut(n).expect("replica").kill9();
                        format!("then its successor {n} as soon as it was recorded")
                    }
                    None => "no successor within 5 s".to_string(),
                };
                tokio::time::sleep(hold).await;
                cl.replicas.get_mut(&leader).expect("replica").restart()?;
                if let Some(n) = &next {
                    cl.replicas.get_mut(n).expect("replica").restart()?;
                }
                format!(
                    "kill -9 {leader} ({role}), {second}; both restarted after {}",
                    secs(hold)
                )
            } else {
                // The sync standby loses its disk, then the leader dies.
                let sync = match cl.active_view().await {
                    Some((_, v)) => v["sync_set"]
                        .as_array()
                        .and_then(|a| a.first())
                        .and_then(|m| m["id"].as_str())
                        .map(str::to_string),
                    None => None,
                };
                let sync = sync
                    .filter(|s| *s != leader && cl.replicas.contains_key(s))
                    .unwrap_or_else(|| {
                        let others: Vec<&String> =
                            cl.replicas.keys().filter(|id| **id != leader).collect();
                        (*others.choose(rng).expect("followers")).clone()
                    });
                cl.replicas
                    .get_mut(&sync)
                    .expect("replica")
                    .wipe_and_restart()?;
                cl.replicas.get_mut(&leader).expect("replica").kill9();
                tokio::time::sleep(hold).await;
                cl.replicas.get_mut(&leader).expect("replica").restart()?;
                format!(
                    "wipe sync standby {sync}, then kill -9 {leader} ({role}); restart it after {}",
                    secs(hold)
                )
            }
        }
        Fault::Switchover => {
            let r = cl
                .op("switchover", serde_json::json!({}), Duration::from_secs(10))
                .await?;
            let msg = r.json()["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| r.text());
            format!("switchover: {} {}", r.status, msg)
        }
    })
}

/// Runs the schedule until `end` (the last fault may run past it by its hold and settle
/// time). Processes that died on their own are restarted and named in `dead`.
pub async fn run(
    cl: &mut Cluster,
    rec: &Recorder,
    faults: &[Fault],
    rng: &mut StdRng,
    end: Instant,
    dead: &mut Vec<String>,
) -> anyhow::Result<Vec<FaultRecord>> {
    let mut out = Vec::new();
    let mut bag: Vec<Fault> = Vec::new();
    tokio::time::sleep(ms(rng, 1500, 2500).min(end.saturating_duration_since(Instant::now())))
        .await;
    while Instant::now() + Duration::from_secs(2) < end {
        dead.extend(restart_dead(cl).await?);
        // One fault at a time: never inject into a cluster that has not recovered from the
        // last one (G1 covers single faults and sequences that let the sync set recover).
        if let Some(why) = unsettled(cl).await {
            let waited = Instant::now();
            let res = wait_settled(cl, end.saturating_duration_since(waited)).await;
            eprintln!(
                "chaos: [{:>6.1} s] waited {:.1} s for the cluster to settle ({why}): {}",
                rec.now() as f64 / 1e6,
                waited.elapsed().as_secs_f64(),
                match res {
                    Ok(_) => "settled".to_string(),
                    Err(e) => e,
                }
            );
            continue;
        }
        // Shuffled rounds: every kind once per round, so that a short run covers them all.
        if bag.is_empty() {
            bag = faults.to_vec();
            bag.shuffle(rng);
        }
        let kind = bag.pop().expect("at least one fault kind");
        let before = leader_epoch(cl).await;
        let start_us = rec.now();
        let what = inject(cl, kind, rng).await?;
        let heal_us = rec.now();
        let settled = wait_settled(cl, SETTLE_TIMEOUT).await;
        let after = leader_epoch(cl).await;
        eprintln!(
            "chaos: [{:>6.1} s] {what}; {}",
            start_us as f64 / 1e6,
            match &settled {
                Ok(d) => format!("settled {} after the heal", secs(*d)),
                Err(e) => e.clone(),
            }
        );
        out.push(FaultRecord {
            kind,
            what,
            start_us,
            heal_us,
            before,
            after,
            settled,
            gap_us: 0,
        });
        let quiet = ms(rng, 500, 2000).min(end.saturating_duration_since(Instant::now()));
        tokio::time::sleep(quiet).await;
    }
    Ok(out)
}
