//! The chaos runner's nemesis: a seeded schedule of one fault at a time (in shuffled rounds of
//! every enabled kind), each held for a random time in its range and then healed, followed by
//! a wait for the cluster to settle and a quiet period. It owns what each fault kind does to the [`Cluster`] (signals, relays,
//! wiped data, operator calls), the heal-everything step, and the record of every fault.

use super::bounds::Param;
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
    /// What the fault's write-availability bound depends on ([`super::bounds::bound`]).
    pub param: Param,
    /// A check of the fault itself that failed (e.g. a damaged log that was not repaired): a
    /// violation.
    pub problem: Option<String>,
    /// Longest client-observed write unavailability around the fault (filled in later).
    pub gap_us: u64,
}

/// What [`inject`] did.
struct Injected {
    what: String,
    param: Param,
    problem: Option<String>,
}

impl From<String> for Injected {
    fn from(what: String) -> Injected {
        Injected {
            what,
            param: Param::None,
            problem: None,
        }
    }
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

/// The recorded leader and the other replicas (the followers; with no leader known, a random
/// replica stands in for it).
async fn leader_and_others(cl: &Cluster, rng: &mut StdRng) -> (String, &'static str, Vec<String>) {
    let (leader, known) = leader_or_any(cl, rng).await;
    let others = cl
        .replicas
        .keys()
        .filter(|id| **id != leader)
        .cloned()
        .collect();
    let role = if known { "leader" } else { "no leader known" };
    (leader, role, others)
}

/// Injects one fault of `kind`, holds it, heals it; returns what was done.
async fn inject(cl: &mut Cluster, kind: Fault, rng: &mut StdRng) -> anyhow::Result<Injected> {
    Ok(match kind {
        Fault::Kill => {
            let (id, role) = pick_replica(cl, rng, 0.6).await;
            let hold = ms(rng, 200, 3000);
            cl.replicas.get_mut(&id).expect("replica").kill9();
            tokio::time::sleep(hold).await;
            cl.replicas.get_mut(&id).expect("replica").restart()?;
            format!("kill -9 {id} ({role}), restart after {}", secs(hold)).into()
        }
        Fault::Pause => {
            let (id, role) = pick_replica(cl, rng, 0.8).await;
            let hold = ms(rng, 1000, 3500);
            cl.replicas[&id].pause();
            tokio::time::sleep(hold).await;
            cl.replicas[&id].resume();
            format!("SIGSTOP {id} ({role}) for {}", secs(hold)).into()
        }
        Fault::Partition => {
            let (id, role) = leader_or_any(cl, rng).await;
            let role = if role { "leader" } else { "no leader known" };
            let hold = ms(rng, 2000, 5000);
            cl.isolate(&id, Mode::Blackhole)?;
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!("partition {id} ({role}) from everyone for {}", secs(hold)).into()
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
            .into()
        }
        Fault::PartitionData => {
            let (leader, role, others) = leader_and_others(cl, rng).await;
            let hold = ms(rng, 2000, 4000);
            let f = others.choose(rng).expect("a follower").clone();
            cl.cut_data_link(&leader, &f, Mode::Blackhole)?;
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!(
                "cut follower {f} from {leader} ({role}) only for {}",
                secs(hold)
            )
            .into()
        }
        Fault::LeaderCut => {
            let (leader, role, others) = leader_and_others(cl, rng).await;
            let hold = ms(rng, 2000, 4000);
            for o in &others {
                cl.cut_data_link(&leader, o, Mode::Blackhole)?;
            }
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!(
                "cut {leader} ({role}) from its followers only, both directions, for {}",
                secs(hold)
            )
            .into()
        }
        Fault::LeaderCutOneWay => {
            let (leader, role, others) = leader_and_others(cl, rng).await;
            let hold = ms(rng, 2000, 4000);
            let from_leader = rng.random_bool(0.5);
            for o in &others {
                if from_leader {
                    cl.drop_data_one_way(&leader, o)?;
                } else {
                    cl.drop_data_one_way(o, &leader)?;
                }
            }
            tokio::time::sleep(hold).await;
            cl.heal_links();
            let dir = if from_leader {
                "its messages to its followers lost (theirs reach it)"
            } else {
                "its followers' messages to it lost (its own reach them)"
            };
            format!("{leader} ({role}): {dir} for {}", secs(hold)).into()
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
            .into()
        }
        Fault::IsolateController => {
            let i = cl.active_controller().await.unwrap_or(0);
            let hold = ms(rng, 2000, 5000);
            cl.isolate_controller(i, Mode::Blackhole);
            tokio::time::sleep(hold).await;
            cl.heal_links();
            format!(
                "cut active controller {} from every replica for {}",
                cl.controllers[i].id,
                secs(hold)
            )
            .into()
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
            Injected {
                what: format!(
                    "kill -9 every replica, restart them all after {}",
                    secs(hold)
                ),
                param: Param::Down(hold),
                problem: None,
            }
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
            format!("{what} {}", secs(hold)).into()
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
            .into()
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
                Injected {
                    what: format!(
                        "kill -9 {leader} ({role}), {second}; both restarted after {}",
                        secs(hold)
                    ),
                    param: Param::TwoFailovers,
                    problem: None,
                }
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
                Injected {
                    what: format!(
                        "wipe sync standby {sync}, then kill -9 {leader} ({role}); restart it after {}",
                        secs(hold)
                    ),
                    param: Param::Down(hold),
                    problem: None,
                }
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
            format!("switchover: {} {}", r.status, msg).into()
        }
        Fault::ControllersDown => {
            let hold = ms(rng, 2000, 4000);
            for c in cl.controllers.iter_mut() {
                c.daemon.kill9();
            }
            tokio::time::sleep(hold).await;
            for c in cl.controllers.iter_mut() {
                c.daemon.restart()?;
            }
            format!(
                "kill -9 both controllers, restart them after {}",
                secs(hold)
            )
            .into()
        }
        Fault::EtcdLeader => {
            let hold = ms(rng, 2000, 4000);
            let i = cl.etcd_leader().await;
            let n = 1 + cl.etcd_peers.len();
            let i = i.unwrap_or_else(|| rng.random_range(0..n));
            let name = cl.etcd_members_mut()[i].daemon.name.clone();
            cl.etcd_members_mut()[i].daemon.kill9();
            tokio::time::sleep(hold).await;
            cl.etcd_members_mut()[i].daemon.restart()?;
            wait_etcd(cl).await?;
            format!(
                "kill -9 etcd raft leader {name} (of {n}), restart after {}",
                secs(hold)
            )
            .into()
        }
        Fault::EtcdDown => {
            let hold = ETCD_DOWN;
            for m in cl.etcd_members_mut() {
                m.daemon.kill9();
            }
            tokio::time::sleep(hold).await;
            for m in cl.etcd_members_mut() {
                m.daemon.restart()?;
            }
            wait_etcd(cl).await?;
            format!("kill -9 every etcd member, restart after {}", secs(hold)).into()
        }
        Fault::DiskFullLeader | Fault::DiskFullFollower => {
            let (leader, role, others) = leader_and_others(cl, rng).await;
            let (id, role) = if kind == Fault::DiskFullLeader {
                (leader, role)
            } else {
                (others.choose(rng).expect("a follower").clone(), "follower")
            };
            let hold = ms(rng, 2000, 4000);
            cl.arm(&id, "wal.before_append", "return(enospc)").await?;
            tokio::time::sleep(hold).await;
            cl.disarm(&id, "wal.before_append").await?;
            format!(
                "disk full on {id} ({role}) for {} (wal.before_append=return(enospc))",
                secs(hold)
            )
            .into()
        }
        Fault::SlowDiskLeader | Fault::SlowDiskFollower => {
            let (leader, role, others) = leader_and_others(cl, rng).await;
            let (id, role) = if kind == Fault::SlowDiskLeader {
                (leader, role)
            } else {
                (others.choose(rng).expect("a follower").clone(), "follower")
            };
            let stall = ms(rng, 1500, 2500);
            // Long enough for at least one whole stall.
            let hold = stall + ms(rng, 300, 1200);
            let action = format!("sleep({})", stall.as_millis());
            cl.arm(&id, "wal.before_fsync", &action).await?;
            tokio::time::sleep(hold).await;
            cl.disarm(&id, "wal.before_fsync").await?;
            // An fsync that began stalling just before the disarm still sleeps its whole
            // stall: the fault lasts until it is over, and its gap must not be charged to the
            // next fault (found when a follower's stall ran into an isolate-controller fault
            // and the leader's promise-lease lapsed).
            tokio::time::sleep(stall).await;
            Injected {
                what: format!(
                    "every fsync of {id} ({role}) stalls {} for {} (wal.before_fsync={action}), the last stall over {} later",
                    secs(stall),
                    secs(hold),
                    secs(stall)
                ),
                param: Param::Stall(stall),
                problem: None,
            }
        }
        Fault::CorruptFollower => {
            let (leader, role, others) = leader_and_others(cl, rng).await;
            let id = others.choose(rng).expect("a follower").clone();
            corrupt_follower(cl, &id, &format!("{leader} ({role})")).await?
        }
    })
}

/// How long the `etcd-down` kind keeps every etcd member down.
pub const ETCD_DOWN: Duration = Duration::from_secs(10);

/// How long a follower with a damaged log may take to repair it (fetch the cut range again
/// from the leader and be clean) before the fault counts as a violation.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(20);

/// Stops follower `id` (SIGTERM), flips bytes inside a sealed segment of its log (a middle
/// record of its newest sealed segment: acknowledged, synced, with valid records after it),
/// restarts it, and waits until it has cut the damage (an ERROR naming the file) and fetched
/// the range again from the leader (its status says clean again). A log without a
/// sealed segment is restarted undamaged (said in the record).
async fn corrupt_follower(cl: &mut Cluster, id: &str, leader: &str) -> anyhow::Result<Injected> {
    let (what, problem) = corrupt_and_repair(cl, id, leader).await?;
    Ok(Injected {
        what,
        param: Param::None,
        problem,
    })
}

/// [`corrupt_follower`]'s work, shared with `baton-bench partial`: returns what was done and,
/// when the damage was not detected or not repaired in time, why.
pub async fn corrupt_and_repair(
    cl: &mut Cluster,
    id: &str,
    leader: &str,
) -> anyhow::Result<(String, Option<String>)> {
    let r = cl.replicas.get_mut(id).expect("replica");
    if r.term(Duration::from_secs(10)).is_none() {
        r.kill9();
    }
    let data = r.data_dir();
    let damage = damage_sealed_segment(&data.join("wal"));
    let before = r.log().len();
    r.restart()?;
    let (seg, lsn) = match damage {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Ok((
                format!(
                    "stop follower {id} (leader {leader}): no sealed segment to damage; restarted as it was"
                ),
                None,
            ))
        }
        Err(e) => anyhow::bail!("damaging {id}'s log: {e:#}"),
    };
    let file = seg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let started = Instant::now();
    let c = crate::client::Client::new(Duration::from_secs(1));
    let url = cl.url(id);
    let mut problem = None;
    let mut detected = false;
    loop {
        let log = cl.replicas[id].log();
        let new = log.get(before..).unwrap_or_default();
        detected = detected || new.contains("damaged log record") && new.contains(&file);
        let clean = matches!(c.status(&url).await, Ok(st) if st["unclean"] == false);
        if detected && clean {
            break;
        }
        if started.elapsed() >= REPAIR_TIMEOUT {
            problem = Some(format!(
                "{id} with a damaged record at LSN {lsn} in {}: {} within {}",
                seg.display(),
                if detected {
                    "not repaired from the leader"
                } else {
                    "the damage was not detected"
                },
                secs(REPAIR_TIMEOUT)
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let what = format!(
        "stop follower {id} (leader {leader}), flip bytes of LSN {lsn} in sealed segment {file}, restart: {}",
        match &problem {
            None => format!("cut and repaired from the leader in {}", secs(started.elapsed())),
            Some(_) => "NOT repaired".to_string(),
        }
    );
    Ok((what, problem))
}

/// Flips 4 bytes in the middle of a middle record of the newest sealed segment under `wal`
/// (the segment before the last). Returns the segment and the damaged record's LSN, or `None`
/// when there is no sealed segment with records.
fn damage_sealed_segment(
    wal: &std::path::Path,
) -> anyhow::Result<Option<(std::path::PathBuf, u64)>> {
    let mut segs: Vec<std::path::PathBuf> = std::fs::read_dir(wal)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    if segs.len() < 2 {
        return Ok(None);
    }
    let seg = segs[segs.len() - 2].clone();
    let mut bytes = std::fs::read(&seg)?;
    let mut off = baton_replica::wal::disk::records_start(&bytes);
    let mut frames = Vec::new();
    while off < bytes.len() {
        let Ok((r, n)) = baton_replica::wal::Record::decode(&bytes[off..]) else {
            break;
        };
        frames.push((off, r.lsn.0, n));
        off += n;
    }
    let Some(&(at, lsn, n)) = frames.get(frames.len() / 2) else {
        return Ok(None);
    };
    for b in &mut bytes[at + n / 2..(at + n / 2 + 4).min(at + n)] {
        *b ^= 0x5a;
    }
    std::fs::write(&seg, &bytes)?;
    Ok(Some((seg, lsn)))
}

/// Runs the schedule until `end` (the last fault may run past it by its hold and settle
/// time), or until `rounds` shuffled rounds of every kind are done. Processes that died on
/// their own are restarted and named in `dead`.
pub async fn run(
    cl: &mut Cluster,
    rec: &Recorder,
    faults: &[Fault],
    rounds: Option<usize>,
    rng: &mut StdRng,
    end: Instant,
    dead: &mut Vec<String>,
) -> anyhow::Result<Vec<FaultRecord>> {
    let mut out = Vec::new();
    let mut bag: Vec<Fault> = Vec::new();
    tokio::time::sleep(ms(rng, 1500, 2500).min(end.saturating_duration_since(Instant::now())))
        .await;
    let max_faults = rounds.map_or(usize::MAX, |r| r.saturating_mul(faults.len()));
    while Instant::now() + Duration::from_secs(2) < end && out.len() < max_faults {
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
        let Injected {
            what,
            param,
            problem,
        } = inject(cl, kind, rng).await?;
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
            param,
            problem,
            gap_us: 0,
        });
        if out.len() >= max_faults {
            break;
        }
        let quiet = ms(rng, 300, 1200).min(end.saturating_duration_since(Instant::now()));
        tokio::time::sleep(quiet).await;
    }
    Ok(out)
}
