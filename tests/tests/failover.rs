//! End-to-end failover with the real controller and a real etcd: etcd, two controllers and
//! three replicas as processes. A killed leader is replaced and loses no acknowledged write;
//! the old leader rejoins as a follower; the cluster converges.
//!
//! Also (TESTING.md fault matrix): the active controller killed under load (#6), or cut from
//! every replica (#6: it hands over to the standby); etcd's raft leader killed (#7: no
//! controller change); the leader cut from the controllers only (#4, no failover); no
//! promotion while paused; a switchover under load with a concurrent second operation refused
//! (#11, #19); a leader restarted within the failure timeout gets a new epoch (#13). Each test bounds its waits with deadlines; fixed
//! windows are used only to show that something does not happen, and say so.

use baton_tests::client::{assert_all_readable, Client};
use baton_tests::cluster::{Cluster, Opts};
use baton_tests::procs::wait_for;
use baton_tests::relay::Mode;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Acked = Arc<Mutex<BTreeMap<String, String>>>;

/// Writers that find the leader themselves (any replica; a 503 names the leader).
fn writers(
    cl: &Cluster,
    n: usize,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> Vec<tokio::task::JoinHandle<()>> {
    let out = Outcomes {
        acked,
        ..Outcomes::default()
    };
    timed_writers(replica_urls(cl), n, stop, out)
}

fn replica_urls(cl: &Cluster) -> Vec<String> {
    cl.replicas.values().map(|r| r.url.clone()).collect()
}

async fn converged(cl: &Cluster) -> anyhow::Result<()> {
    wait_for(
        Duration::from_secs(60),
        "all replicas to converge",
        || async {
            let mut seen = std::collections::BTreeSet::new();
            for r in cl.replicas.values() {
                let st = cl.client.status(&r.url).await.ok()?;
                seen.insert((
                    st["applied_lsn"].as_u64()?,
                    st["state_digest"].as_str()?.to_string(),
                ));
            }
            (seen.len() == 1).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_leader_is_replaced_without_losing_acknowledged_writes() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cl = Cluster::start(tmp.path(), Opts::default()).await?;
    let first = cl.leader_id().await.expect("a leader");
    let acked: Acked = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(&cl, 8, stop.clone(), acked.clone());
    let count = |n: usize| {
        let acked = acked.clone();
        async move { (acked.lock().expect("lock").len() >= n).then_some(()) }
    };
    wait_for(Duration::from_secs(30), "300 acknowledged writes", || {
        count(300)
    })
    .await?;
    cl.replicas.get_mut(&first).expect("leader").kill9();
    let before = acked.lock().expect("lock").len();
    let res = wait_for(
        Duration::from_secs(30),
        "writes to resume on a new leader",
        || count(before + 300),
    )
    .await;
    if res.is_err() {
        eprintln!("{}", cl.dump());
    }
    res?;
    let second = cl.leader_id().await.expect("a leader");
    assert_ne!(first, second, "another replica leads");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    // The old leader comes back as a follower and the cluster converges.
    cl.replicas.get_mut(&first).expect("old leader").restart()?;
    converged(&cl).await?;
    let st = cl
        .client
        .status(&cl.url(&first))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(st["role"], "follower", "{st}");
    let acked = acked.lock().expect("lock").clone();
    for (k, v) in &acked {
        let r = cl
            .client
            .get(&cl.url(&second), k)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(r.status, 200, "acknowledged {k} lost");
        assert_eq!(&r.text(), v);
    }
    let history = cl.view().await.expect("view");
    assert!(history["epoch"].as_u64().unwrap_or(0) >= 2);
    Ok(())
}

// ----- shared helpers for the fault tests below ----------------------------------------------

/// Failure timeout of the controller's default timing (controller/src/config.rs): the tests
/// below observe "nothing happens" windows of three of these.
const FAILURE_TIMEOUT: Duration = Duration::from_millis(800);

/// What writers record: every acknowledged write, the instant of every acknowledgement, and
/// every write whose outcome is unknown (a reply other than 200 and 503, or none).
#[derive(Clone, Default)]
struct Outcomes {
    acked: Acked,
    times: Arc<Mutex<Vec<Instant>>>,
    unknown: Arc<Mutex<Vec<String>>>,
}

/// [`writers`] to `urls` (the replicas, moving on at a 503; or the proxy alone), recording
/// into `out`.
fn timed_writers(
    urls: Vec<String>,
    n: usize,
    stop: Arc<AtomicBool>,
    out: Outcomes,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|t| {
            let (urls, stop, out) = (urls.clone(), stop.clone(), out.clone());
            tokio::spawn(async move {
                let c = Client::new(Duration::from_secs(3));
                let mut target = 0usize;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 200_000 {
                    let (k, v) = (format!("w{t}-{i}"), format!("v{t}-{i}"));
                    match c.put(&urls[target], &k, v.clone()).await {
                        Ok(r) if r.status == 200 => {
                            let now = Instant::now();
                            out.acked.lock().expect("lock").insert(k, v);
                            out.times.lock().expect("lock").push(now);
                            i += 1;
                        }
                        Ok(r) if r.status == 503 => {
                            target = (target + 1) % urls.len();
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        other => {
                            // Outcome unknown: never counted as acknowledged; move on.
                            let why = match other {
                                Ok(r) => format!("{} {}", r.status, r.text()),
                                Err(e) => format!("{e:?}"),
                            };
                            out.unknown
                                .lock()
                                .expect("lock")
                                .push(format!("{k}: {why}"));
                            i += 1;
                            target = (target + 1) % urls.len();
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// A running write load: `n` writers that follow 503s, recording their outcomes.
struct Load {
    stop: Arc<AtomicBool>,
    out: Outcomes,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a stopped [`Load`] recorded; `times` sorted.
struct Recorded {
    acked: BTreeMap<String, String>,
    times: Vec<Instant>,
    unknown: Vec<String>,
}

impl Load {
    fn start(cl: &Cluster, n: usize) -> Load {
        Load::start_on(replica_urls(cl), n)
    }

    /// `n` writers through the proxy only.
    fn through_proxy(cl: &Cluster, n: usize) -> Load {
        Load::start_on(vec![cl.proxy_url()], n)
    }

    fn start_on(urls: Vec<String>, n: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let out = Outcomes::default();
        let tasks = timed_writers(urls, n, stop.clone(), out.clone());
        Load { stop, out, tasks }
    }

    fn acked(&self) -> usize {
        self.out.acked.lock().expect("lock").len()
    }

    /// Waits until `n` writes in all were acknowledged.
    async fn wait_acked(&self, n: usize, timeout: Duration, what: &str) -> anyhow::Result<()> {
        wait_for(
            timeout,
            &format!("{n} acknowledged writes ({what})"),
            || {
                let ok = self.acked() >= n;
                async move { ok.then_some(()) }
            },
        )
        .await
    }

    /// Stops the writers; returns what they recorded.
    async fn stop(self) -> anyhow::Result<Recorded> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await?;
        }
        let acked = self.out.acked.lock().expect("lock").clone();
        let mut times = self.out.times.lock().expect("lock").clone();
        times.sort();
        let unknown = self.out.unknown.lock().expect("lock").clone();
        Ok(Recorded {
            acked,
            times,
            unknown,
        })
    }
}

/// The longest time between two consecutive acknowledgements (of any writer) where the later
/// one came at or after `from`: the write pause around a fault injected at `from`.
fn longest_gap(sorted: &[Instant], from: Instant) -> Duration {
    sorted
        .windows(2)
        .filter(|w| w[1] >= from)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// Prints the tail of every process log when a test fails (by panic or error), so that the
/// failure comes with the controllers' and replicas' side of the story.
struct LogDump {
    logs: Vec<(String, std::path::PathBuf)>,
    passed: bool,
}

impl LogDump {
    fn new(cl: &Cluster) -> LogDump {
        let mut logs: Vec<(String, std::path::PathBuf)> = cl
            .controllers
            .iter()
            .map(|c| (c.id.clone(), c.daemon.log_path.clone()))
            .collect();
        logs.extend(
            cl.replicas
                .iter()
                .map(|(id, r)| (id.clone(), r.log_path.clone())),
        );
        LogDump {
            logs,
            passed: false,
        }
    }

    /// Marks the test passed, after checking that no process panicked; ERROR lines are
    /// printed (a fault test provokes some) but do not fail the test.
    fn passed(&mut self) {
        let mut panics = Vec::new();
        for (name, path) in &self.logs {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            for line in log.lines() {
                if line.contains("panicked") {
                    panics.push(format!("{name}: {line}"));
                } else if line.contains(" ERROR ") {
                    println!("{name}: {line}");
                }
            }
        }
        assert!(panics.is_empty(), "a process panicked: {panics:#?}");
        self.passed = true;
    }
}

impl Drop for LogDump {
    fn drop(&mut self) {
        if self.passed {
            return;
        }
        for (name, path) in &self.logs {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "=== {name} ({}) ===\n{}",
                path.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// (leader id, epoch) of an active controller's view.
fn leader_epoch(v: &serde_json::Value) -> (Option<String>, Option<u64>) {
    (
        v["leader"]["id"].as_str().map(str::to_string),
        v["epoch"].as_u64(),
    )
}

/// Journal entries of `kind` whose message contains `needle`.
fn journaled(history: &[serde_json::Value], kind: &str, needle: &str) -> Vec<String> {
    history
        .iter()
        .filter(|e| e["kind"] == kind)
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.contains(needle))
        .map(str::to_string)
        .collect()
}

fn journal_text(history: &[serde_json::Value]) -> String {
    history
        .iter()
        .map(|e| {
            format!(
                "  [{} e{} x{}] {}",
                e["kind"], e["epoch"], e["count"], e["message"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ----- fault matrix #6: the active controller is killed ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_active_controller_is_replaced_and_writes_resume() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cl = Cluster::start(tmp.path(), Opts::default()).await?;
    let mut dump = LogDump::new(&cl);
    let (active, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    let (leader, epoch) = leader_epoch(&v);
    let leader = leader.expect("a recorded leader");
    let standby = (active + 1) % cl.controllers.len();
    let load = Load::start(&cl, 8);
    load.wait_acked(300, Duration::from_secs(30), "before the fault")
        .await?;

    let killed_at = Instant::now();
    cl.controllers[active].daemon.kill9();
    let standby_url = format!("{}/v1/cluster", cl.controllers[standby].url);
    wait_for(
        Duration::from_secs(20),
        "the standby controller to become active",
        || async {
            let r = cl
                .client
                .call("GET", &standby_url, &[], bytes::Bytes::new())
                .await
                .ok()?;
            (r.json()["active"] == true).then_some(())
        },
    )
    .await?;
    let takeover = killed_at.elapsed();
    // The old leader may still acknowledge on its last grant for lease_ms after the kill; count
    // only writes acknowledged once the standby is active (they need its grants).
    let after = load.acked();
    load.wait_acked(after + 300, Duration::from_secs(30), "after the takeover")
        .await?;
    let rec = load.stop().await?;
    let acked = rec.acked;
    let gap = longest_gap(&rec.times, killed_at);
    println!(
        "controller kill: {} became active {takeover:?} after {} was killed; longest gap \
         between acknowledged writes {gap:?} (design bound: election TTL 2 s + lease 600 ms); \
         {} writes acknowledged, {} with unknown outcome",
        cl.controllers[standby].id,
        cl.controllers[active].id,
        acked.len(),
        rec.unknown.len()
    );
    // DESIGN.md §5: until follower promises land, losing the active controller pauses writes
    // for at most the election TTL (2 s) plus lease_ms (600 ms); 1 s of slack for a loaded
    // machine (measured: 1.2–2.0 s with the whole file running, up to 2.3 s with all six tests
    // at once).
    let bound = Duration::from_millis(2000 + 600 + 1000);
    assert!(
        gap < bound,
        "writes paused for {gap:?} after the active controller was killed (bound {bound:?})\n{}",
        journal_text(&cl.history().await)
    );

    // A takeover is not a leadership change: same leader, same epoch, no promotion.
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    assert_eq!(
        leader_epoch(&v),
        (Some(leader.clone()), epoch),
        "the controller takeover changed the leader or epoch: {v}\n{}",
        journal_text(&cl.history().await)
    );
    assert_all_readable(&cl.url(&leader), &acked).await?;
    dump.passed();
    Ok(())
}

// ----- fault matrix #4: the leader is cut from the controllers only ---------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_cut_from_controllers_only_is_not_failed_over() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cl = Cluster::start(tmp.path(), Opts::default()).await?;
    let mut dump = LogDump::new(&cl);
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    let (leader, epoch) = leader_epoch(&v);
    let leader = leader.expect("a recorded leader");
    let epoch = epoch.expect("an epoch");
    let lurl = cl.url(&leader);
    // The followers replicate: a write is acknowledged (semi-sync waits for one of them).
    let r = cl
        .client
        .put(&lurl, "before", "cut")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(r.status, 200, "{}", r.text());

    cl.set_controller_links(&leader, Mode::Blackhole);
    let cut_at = Instant::now();
    // Observe for 3 × failure_timeout: no failover may happen in this window (proving that
    // something does not happen needs a fixed window). Writes are probed meanwhile; the
    // leader's lease comes from controller grants, so it stops acknowledging after lease_ms.
    let (mut ok, mut refused, mut other) = (0u32, 0u32, 0u32);
    let mut last_ok: Option<Duration> = None;
    let probe = Client::new(Duration::from_millis(500));
    let mut i = 0u32;
    while cut_at.elapsed() < FAILURE_TIMEOUT * 3 {
        if let Some((_, v)) = cl.active_view().await {
            assert_eq!(
                leader_epoch(&v),
                (Some(leader.clone()), Some(epoch)),
                "failover although the followers still see the leader ({:?} after the cut): {v}\n{}",
                cut_at.elapsed(),
                journal_text(&cl.history().await)
            );
        }
        let sent = cut_at.elapsed();
        match probe.put(&lurl, &format!("cut-{i}"), "x").await {
            Ok(r) if r.status == 200 => {
                ok += 1;
                last_ok = Some(sent);
            }
            Ok(r) if r.status == 503 => refused += 1,
            _ => other += 1,
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "leader {leader} cut from the controllers for {:?}: writes on it {ok} ok (the last one \
         sent {last_ok:?} after the cut), {refused} refused (no lease), {other} other",
        cut_at.elapsed()
    );
    let needle = "leader unreachable from controller";
    let found = wait_for(
        Duration::from_secs(10),
        "the journal to explain why there is no failover",
        || async {
            let h = cl.history().await;
            let hits = journaled(&h, "refusal", needle);
            (!hits.is_empty()).then_some(hits)
        },
    )
    .await;
    if found.is_err() {
        eprintln!("journal:\n{}", journal_text(&cl.history().await));
    }
    println!("journaled: {:?}", found?);

    cl.set_controller_links(&leader, Mode::Pass);
    let healed_at = Instant::now();
    let reply = wait_for(
        Duration::from_secs(20),
        "the leader to accept writes again after the heal",
        || async {
            let r = probe.put(&lurl, "after", "heal").await.ok()?;
            (r.status == 200).then_some(r.json())
        },
    )
    .await?;
    println!(
        "writes on {leader} resumed {:?} after the heal",
        healed_at.elapsed()
    );
    assert_eq!(reply["epoch"].as_u64(), Some(epoch), "{reply}");
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    assert_eq!(leader_epoch(&v), (Some(leader.clone()), Some(epoch)), "{v}");
    let r = cl
        .client
        .get(&lurl, "before")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!((r.status, r.text()), (200, "cut".to_string()));
    dump.passed();
    Ok(())
}

// ----- pause: no automatic promotion while paused ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_controller_does_not_promote_until_resumed() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cl = Cluster::start(tmp.path(), Opts::default()).await?;
    let mut dump = LogDump::new(&cl);
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    let (leader, epoch) = leader_epoch(&v);
    let leader = leader.expect("a recorded leader");
    let epoch = epoch.expect("an epoch");
    let mut acked = BTreeMap::new();
    for i in 0..50 {
        let (k, val) = (format!("p{i}"), format!("v{i}"));
        let r = cl
            .client
            .put(&cl.url(&leader), &k, val.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(r.status, 200, "{}", r.text());
        acked.insert(k, val);
    }

    let r = cl
        .op("pause", serde_json::json!({}), Duration::from_secs(10))
        .await?;
    assert_eq!(r.status, 200, "pause: {}", r.text());
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    assert_eq!(v["control"], "manual", "{v}");

    cl.replicas.get_mut(&leader).expect("leader").kill9();
    let killed_at = Instant::now();
    let followers: Vec<String> = cl
        .replicas
        .keys()
        .filter(|id| **id != leader)
        .cloned()
        .collect();
    let probe = Client::new(Duration::from_millis(500));
    // Observe for 3 × failure_timeout: no promotion may happen while paused (proving that
    // something does not happen needs a fixed window).
    while killed_at.elapsed() < FAILURE_TIMEOUT * 3 {
        if let Some((_, v)) = cl.active_view().await {
            assert_eq!(
                leader_epoch(&v),
                (Some(leader.clone()), Some(epoch)),
                "promotion while paused ({:?} after the kill): {v}\n{}",
                killed_at.elapsed(),
                journal_text(&cl.history().await)
            );
        }
        for f in &followers {
            if let Ok(r) = probe.put(&cl.url(f), "paused-probe", "x").await {
                assert_ne!(
                    r.status, 200,
                    "{f} accepted a write while failover is paused"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let found = wait_for(
        Duration::from_secs(10),
        "the journal to say failover is paused",
        || async {
            let h = cl.history().await;
            let hits = journaled(&h, "refusal", "paused");
            (!hits.is_empty()).then_some(hits)
        },
    )
    .await;
    if found.is_err() {
        eprintln!("journal:\n{}", journal_text(&cl.history().await));
    }
    println!("journaled: {:?}", found?);

    let r = cl
        .op("resume", serde_json::json!({}), Duration::from_secs(10))
        .await?;
    assert_eq!(r.status, 200, "resume: {}", r.text());
    let resumed_at = Instant::now();
    let new = cl.wait_writable(Duration::from_secs(30)).await?;
    println!(
        "after resume, {new} accepted writes in {:?}",
        resumed_at.elapsed()
    );
    assert_ne!(new, leader);
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    assert!(v["epoch"].as_u64() > Some(epoch), "{v}");
    assert_eq!(v["control"], "auto", "{v}");
    assert_all_readable(&cl.url(&new), &acked).await?;
    dump.passed();
    Ok(())
}

// ----- fault matrix #11 and #19: switchover under load; a second operation gets 409 -----------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switchover_under_load_loses_nothing_and_serializes_operations() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cl = Cluster::start(tmp.path(), Opts::default()).await?;
    let mut dump = LogDump::new(&cl);
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    let (first, epoch) = leader_epoch(&v);
    let first = first.expect("a recorded leader");
    let epoch = epoch.expect("an epoch");
    let load = Load::start(&cl, 8);
    load.wait_acked(300, Duration::from_secs(30), "before the switchover")
        .await?;

    let started = Instant::now();
    let r1 = cl
        .op("switchover", serde_json::json!({}), Duration::from_secs(10))
        .await?;
    assert_eq!(r1.status, 200, "switchover: {}", r1.text());
    // "switchover op-… to rN requested: …"
    let msg = r1.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let op_id = msg
        .split_whitespace()
        .find(|w| w.starts_with("op-"))
        .unwrap_or_else(|| panic!("no operation id in {msg:?}"))
        .to_string();
    // A second operation while this one runs is refused, naming it. (A 503 `busy` while a
    // state write is in flight is retried by `op`.)
    let r2 = cl
        .op("switchover", serde_json::json!({}), Duration::from_secs(10))
        .await?;
    let second_ran = match r2.status {
        409 => {
            assert!(
                r2.text().contains(&op_id),
                "the 409 does not name the running operation {op_id}: {}",
                r2.text()
            );
            false
        }
        // The first switchover completed before the second request arrived: then the second
        // is a new operation of its own.
        200 => {
            println!("second switchover accepted: the first ({op_id}) had completed");
            true
        }
        s => panic!("second switchover answered {s}: {}", r2.text()),
    };
    let want_epoch = epoch + if second_ran { 2 } else { 1 };
    let (_, v) = wait_for(
        Duration::from_secs(20),
        "the switchover to complete",
        || async {
            let (i, v) = cl.active_view().await?;
            let done = v["phase"] == "steady"
                && v["op"].is_null()
                && v["epoch"].as_u64() >= Some(want_epoch);
            done.then_some((i, v))
        },
    )
    .await?;
    let switched = started.elapsed();
    let (second, new_epoch) = leader_epoch(&v);
    let second = second.expect("a recorded leader");
    if !second_ran {
        assert_ne!(second, first, "the leader did not change: {v}");
    }
    let before = load.acked();
    load.wait_acked(
        before + 300,
        Duration::from_secs(30),
        "after the switchover",
    )
    .await?;
    let rec = load.stop().await?;
    let acked = rec.acked;
    let pause = longest_gap(&rec.times, started);
    println!(
        "switchover {first} -> {second} (epoch {epoch} -> {new_epoch:?}) recorded after \
         {switched:?}; write pause (longest gap between acknowledgements) {pause:?}; {} writes \
         acknowledged, {} with unknown outcome {:?}",
        acked.len(),
        rec.unknown.len(),
        &rec.unknown[..rec.unknown.len().min(5)]
    );
    assert!(
        pause < Duration::from_secs(10),
        "writes paused for {pause:?}"
    );
    assert_all_readable(&cl.url(&second), &acked).await?;
    let h = cl.history().await;
    assert!(
        !journaled(&h, "switchover", &format!("switchover {op_id}: ")).is_empty(),
        "no completion of {op_id} journaled:\n{}",
        journal_text(&h)
    );
    converged(&cl).await?;
    dump.passed();
    Ok(())
}

// ----- fault matrix #13: the leader restarted within the failure timeout ----------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_leader_gets_a_new_epoch() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // A failure timeout well above a replica's start time on a loaded machine, so that the
    // restarted leader always reports (with its new boot_id) before it could be declared
    // failed: the test is about restart detection, not failure detection.
    let opts = Opts {
        controller_timing: "failure_timeout_ms = 3000".into(),
        ..Opts::default()
    };
    let mut cl = Cluster::start(tmp.path(), opts).await?;
    let mut dump = LogDump::new(&cl);
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    let (leader, epoch) = leader_epoch(&v);
    let leader = leader.expect("a recorded leader");
    let epoch = epoch.expect("an epoch");
    let load = Load::start(&cl, 4);
    load.wait_acked(200, Duration::from_secs(30), "before the restart")
        .await?;

    let restarted_at = Instant::now();
    {
        let r = cl.replicas.get_mut(&leader).expect("leader");
        r.kill9();
        r.restart()?;
    }
    let before = load.acked();
    let (_, v) = wait_for(
        Duration::from_secs(30),
        "a new epoch with a leader after the restart",
        || async {
            let (i, v) = cl.active_view().await?;
            let done = v["phase"] == "steady" && v["epoch"].as_u64() > Some(epoch);
            done.then_some((i, v))
        },
    )
    .await?;
    let promoted = restarted_at.elapsed();
    let (new_leader, new_epoch) = leader_epoch(&v);
    let new_leader = new_leader.expect("a recorded leader");
    load.wait_acked(before + 200, Duration::from_secs(30), "after the restart")
        .await?;
    let rec = load.stop().await?;
    let acked = rec.acked;
    println!(
        "leader {leader} restarted: epoch {epoch} -> {new_epoch:?} recorded {promoted:?} after \
         the kill, {new_leader} leads; longest gap between acknowledged writes {:?}; {} writes \
         with unknown outcome",
        longest_gap(&rec.times, restarted_at),
        rec.unknown.len()
    );
    let h = cl.history().await;
    assert!(
        !journaled(&h, "restart", &format!("leader {leader} restarted")).is_empty(),
        "the restart was not detected as such:\n{}",
        journal_text(&h)
    );
    // The new run of the old leader took part (as leader or follower) at the new epoch.
    let st = cl
        .client
        .status(&cl.url(&leader))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert!(st["epoch"].as_u64() >= new_epoch, "{st}");
    let r = cl
        .client
        .put(&cl.url(&new_leader), "after-restart", "x")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["epoch"].as_u64() > Some(epoch), "{}", r.text());
    assert_all_readable(&cl.url(&new_leader), &acked).await?;
    converged(&cl).await?;
    dump.passed();
    Ok(())
}

// ----- fault matrix #7: etcd's raft leader is killed ------------------------------------------

/// Every controller's view (index, active, term), for watching who is active during a fault.
async fn controller_terms(cl: &Cluster) -> Vec<(usize, bool, Option<u64>)> {
    let mut out = Vec::new();
    for (i, c) in cl.controllers.iter().enumerate() {
        let url = format!("{}/v1/cluster", c.url);
        if let Ok(r) = cl.client.call("GET", &url, &[], bytes::Bytes::new()).await {
            let v = r.json();
            out.push((i, v["active"] == true, v["term"].as_u64()));
        }
    }
    out
}

/// DESIGN.md §5: a keepalive that fails is retried within the trusted window; an etcd leader
/// election alone must not change the active controller. Three etcd members; the raft leader
/// is killed while clients write through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_etcd_leader_changes_no_active_controller_and_loses_nothing() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let opts = Opts {
        proxy: true,
        etcd_members: 3,
        ..Opts::default()
    };
    let mut cl = Cluster::start(tmp.path(), opts).await?;
    let mut dump = LogDump::new(&cl);
    let (active, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    let term = v["term"]
        .as_u64()
        .expect("the active controller reports its term");
    let (leader, epoch) = leader_epoch(&v);
    let leader = leader.expect("a recorded leader");
    let load = Load::through_proxy(&cl, 4);
    load.wait_acked(300, Duration::from_secs(30), "before the fault")
        .await?;

    let i = wait_for(Duration::from_secs(10), "an etcd raft leader", || {
        cl.etcd_leader()
    })
    .await?;
    let killed_at = Instant::now();
    cl.etcd_members_mut()[i].daemon.kill9();
    // A fixed window, to show that something does not happen: for 6 s (an etcd election takes
    // 1–2 s, the controllers' etcd lease TTL is 2 s), no other controller becomes active and
    // the active one keeps its term.
    let mut seen = Vec::new();
    while killed_at.elapsed() < Duration::from_secs(6) {
        for (c, is_active, t) in controller_terms(&cl).await {
            if (c != active && is_active) || (c == active && t != Some(term)) {
                seen.push(format!(
                    "{:?} after the kill: c{} active {is_active} term {t:?}",
                    killed_at.elapsed(),
                    c + 1
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cl.etcd_members_mut()[i].daemon.restart()?;
    let n = load.acked();
    load.wait_acked(n + 300, Duration::from_secs(30), "after the fault")
        .await?;
    let rec = load.stop().await?;
    let gap = longest_gap(&rec.times, killed_at);
    println!(
        "etcd leader (member {}) killed: longest gap between acknowledged writes through the \
         proxy {gap:?}; {} acknowledged, {} with unknown outcome",
        i + 1,
        rec.acked.len(),
        rec.unknown.len()
    );
    assert!(
        seen.is_empty(),
        "the active controller changed during the etcd election:\n{}\n{}",
        seen.join("\n"),
        journal_text(&cl.history().await)
    );
    let (now_active, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    assert_eq!(
        (now_active, v["term"].as_u64()),
        (active, Some(term)),
        "another controller or term is active: {v}"
    );
    assert_eq!(
        leader_epoch(&v),
        (Some(leader.clone()), epoch),
        "the etcd election changed the leader or epoch: {v}"
    );
    // Loose, for a noisy machine: follower promises carry the leader through; most runs show
    // no gap above the write latency.
    assert!(
        gap < Duration::from_secs(2),
        "writes paused for {gap:?} when the etcd leader was killed"
    );
    assert_all_readable(&cl.proxy_url(), &rec.acked).await?;
    dump.passed();
    Ok(())
}

// ----- fault matrix #6: the active controller is cut from every replica -----------------------

/// DESIGN.md §5 handover: the active controller, cut from every replica by the relays (it
/// still reaches etcd and the proxy), hears fewer members than the standby for a failure
/// timeout and resigns; the standby takes over, writes through the proxy go on, nothing
/// acknowledged is lost, and after the heal (equal counts) nobody hands back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn active_controller_cut_from_every_replica_hands_over_to_the_standby() -> anyhow::Result<()>
{
    let tmp = tempfile::tempdir()?;
    let opts = Opts {
        proxy: true,
        ..Opts::default()
    };
    let cl = Cluster::start(tmp.path(), opts).await?;
    let mut dump = LogDump::new(&cl);
    let (active, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    let (leader, epoch) = leader_epoch(&v);
    let standby = (active + 1) % cl.controllers.len();
    let (active_id, standby_id) = (
        cl.controllers[active].id.clone(),
        cl.controllers[standby].id.clone(),
    );
    let load = Load::through_proxy(&cl, 4);
    load.wait_acked(300, Duration::from_secs(30), "before the fault")
        .await?;

    let cut_at = Instant::now();
    for rl in cl.relays.values() {
        rl[active].set(Mode::Blackhole);
    }
    let standby_url = format!("{}/v1/cluster", cl.controllers[standby].url);
    wait_for(
        Duration::from_secs(20),
        "the standby controller to take over",
        || async {
            let r = cl
                .client
                .call("GET", &standby_url, &[], bytes::Bytes::new())
                .await
                .ok()?;
            (r.json()["active"] == true).then_some(())
        },
    )
    .await?;
    let takeover = cut_at.elapsed();
    let n = load.acked();
    load.wait_acked(n + 300, Duration::from_secs(30), "after the takeover")
        .await?;
    // Hold the cut for 6 s in all, then heal: both controllers hear every member again.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(cut_at.elapsed())).await;
    cl.heal_links();
    let n = load.acked();
    load.wait_acked(n + 300, Duration::from_secs(30), "after the heal")
        .await?;
    // A fixed window, to show that something does not happen: no hand-back within two
    // failure timeouts of the heal plus the back-off.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rec = load.stop().await?;
    let gap = longest_gap(&rec.times, cut_at);
    let history = cl.history().await;
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    println!(
        "{active_id} cut from every replica: {standby_id} active {takeover:?} after the cut; \
         longest gap between acknowledged writes through the proxy {gap:?} (failure timeout \
         {FAILURE_TIMEOUT:?}); {} acknowledged, {} with unknown outcome; leader {:?} epoch {:?} \
         (before: {leader:?} {epoch:?})",
        rec.acked.len(),
        rec.unknown.len(),
        v["leader"]["id"],
        v["epoch"],
    );
    let handovers = journaled(&history, "handover", &format!("standby {standby_id}"));
    assert_eq!(
        handovers.len(),
        1,
        "one handover journaled:\n{}",
        journal_text(&history)
    );
    let (now_active, _) = cl.wait_active_view(Duration::from_secs(10)).await?;
    assert_eq!(
        now_active,
        standby,
        "the standby stays active after the heal (no hand-back):\n{}",
        journal_text(&history)
    );
    // Loose, for a noisy machine: the design bound is failure_timeout + ~1 s.
    let bound = 2 * (FAILURE_TIMEOUT + Duration::from_secs(1));
    assert!(
        gap < bound,
        "writes paused for {gap:?} (bound {bound:?})\n{}",
        journal_text(&history)
    );
    assert_all_readable(&cl.proxy_url(), &rec.acked).await?;
    dump.passed();
    Ok(())
}

// ----- issue 14: a member that moved is found at the address it advertises --------------------

/// A follower restarted at another address, advertised by host name (`localhost:P`, where the
/// controllers' configs still say `127.0.0.1:Q`), is recorded there (journal kind `address`),
/// shown there in the view, and, once made leader by a switchover, is followed there: the
/// other replicas stream from it (semi-sync writes through the proxy need their acks) and the
/// proxy sends writes to it. Nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_restarted_at_a_new_address_is_found_by_followers_and_the_proxy(
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cl = Cluster::start(
        tmp.path(),
        Opts {
            proxy: true,
            ..Opts::default()
        },
    )
    .await?;
    cl.wait_proxy_writable(Duration::from_secs(30)).await?;
    let proxy = cl.proxy_url();
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        let (k, v) = (format!("before-{i}"), format!("v{i}"));
        let r = cl
            .client
            .put(&proxy, &k, v.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(r.status, 200, "{}", r.text());
        acked.insert(k, v);
    }
    let leader = cl.leader_id().await.expect("a leader");
    let mover = cl
        .replicas
        .keys()
        .find(|id| **id != leader)
        .cloned()
        .expect("a follower");
    let mut old = cl.replicas.remove(&mover).expect("the follower");
    old.term(Duration::from_secs(10));
    let mut spec = old.spec.clone();
    drop(old);
    spec.port = baton_tests::procs::free_port();
    let moved_to = format!("localhost:{}", spec.port);
    spec.advertise = Some(moved_to.clone());
    cl.replicas
        .insert(mover.clone(), baton_tests::procs::ReplicaProc::start(spec)?);
    // The view names the new address, and the active controller recorded it.
    wait_for(
        Duration::from_secs(20),
        "the view to show the new address",
        || async {
            let v = cl.view().await?;
            let m = v["members"]
                .as_array()?
                .iter()
                .find(|m| m["id"] == mover.as_str())?;
            (m["addr"] == moved_to.as_str() && m["health"] == "ok").then_some(())
        },
    )
    .await?;
    wait_for(
        Duration::from_secs(20),
        "the address to be journaled",
        || async {
            let h = cl.history().await;
            (!journaled(&h, "address", &moved_to).is_empty()).then_some(())
        },
    )
    .await?;
    let r = cl
        .op(
            "switchover",
            serde_json::json!({ "to": mover }),
            Duration::from_secs(10),
        )
        .await?;
    assert_eq!(r.status, 200, "switchover: {}", r.text());
    wait_for(
        Duration::from_secs(30),
        "the moved member to lead",
        || async {
            let (_, v) = cl.active_view().await?;
            (v["phase"] == "steady" && v["leader"]["id"] == mover.as_str()).then_some(())
        },
    )
    .await?;
    // Semi-sync: each write needs a follower's ack, so the followers found the new leader;
    // the proxy sent the writes there.
    for i in 0..20 {
        let (k, v) = (format!("after-{i}"), format!("w{i}"));
        wait_for(
            Duration::from_secs(20),
            "a write through the proxy",
            || async {
                cl.client
                    .put(&proxy, &k, v.clone())
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
            },
        )
        .await?;
        acked.insert(k, v);
    }
    wait_for(
        Duration::from_secs(20),
        "both followers streaming from the new leader",
        || async {
            let st = cl.client.status(&cl.url(&mover)).await.ok()?;
            let followers = st["followers"].as_array().map_or(0, |a| a.len());
            (followers == 2 && st["degraded"] == false).then_some(())
        },
    )
    .await?;
    assert_all_readable(&cl.url(&mover), &acked).await?;
    converged(&cl).await
}
