//! Tier 2 of TESTING.md: named fault points in the real binaries, and a full disk.
//!
//! The points (`replica/src/faults.rs`, `controller/src/runtime.rs`) exist only in the
//! `baton-replica-failpoints` and `baton-controller-failpoints` binaries, built here on first
//! use (`cargo build --features …/failpoints`, the same step `scripts/test.sh` runs); the
//! normal binaries have none. Each point is armed at run time (`PUT /v1/failpoints/{name}`) or
//! at start (`FAILPOINTS`), fires under a write load, and the recovered state is checked:
//! - one replica (stand-in controller): a crash at every persistence point, in a loop, loses
//!   no acknowledged write, and the restarted replica leads at a higher epoch; an injected
//!   write, fsync or epoch-write error stops it with a one-line fatal reason naming the point
//!   and it restarts cleanly; a snapshot or compaction error is survived and retried;
//! - a leader and its sync follower: a crash at each replication point on either side, then
//!   the loss of the other node, loses no acknowledged write on the survivor, the old leader's
//!   unreplicated suffix is archived (also across a crash between archive and cut), and both
//!   converge to the same state digest; injected stream errors only reconnect;
//! - real etcd and two controllers: the active controller crashing at each promotion step is
//!   finished by the standby at the same epoch (no double promotion); a failed etcd keepalive
//!   pauses writes at most the election TTL plus the lease and changes no epoch;
//! - ENOSPC on a small tmpfs: the replica stays up, answers writes 507 and serves reads while
//!   the disk is full, resumes by itself once space is freed, and loses nothing acknowledged
//!   (skipped, loudly, when mounting is refused).

use baton_replica::faults::CRASH_EXIT_CODE;
use baton_replica::wal::{Op, Record};
use baton_tests::client::{assert_all_readable, Client};
use baton_tests::cluster::EtcdProc;
use baton_tests::procs::{bin_path, free_port, wait_for, Daemon, ReplicaSpec};
use baton_tests::secure;
use baton_tests::standin::Standin;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Acked = BTreeMap<String, String>;

// ----- the fault-enabled binaries --------------------------------------------------------------

/// Builds (once per test process; a no-op when fresh) and locates the fault-enabled binaries.
/// With `BATON_BIN_DIR` set, they are taken from there as they are.
async fn fault_bins() -> anyhow::Result<(PathBuf, PathBuf)> {
    tokio::task::spawn_blocking(|| {
        baton_tests::procs::build_fault_bins(baton_tests::procs::running_release())
    })
    .await??;
    Ok((
        bin_path("baton-replica-failpoints")?,
        bin_path("baton-controller-failpoints")?,
    ))
}

// ----- processes -------------------------------------------------------------------------------

/// The fault-point runs start processes through the harness's [`Daemon`], with `FAILPOINTS`
/// set for the run or cleared (never inherited from the test's environment).
fn start_proc(
    bin: PathBuf,
    args: Vec<OsString>,
    log_path: PathBuf,
    failpoints: Option<&str>,
) -> anyhow::Result<Daemon> {
    let name = bin
        .file_name()
        .map_or_else(|| "process".into(), |n| n.to_string_lossy().into_owned());
    Daemon::start_with_env(&name, bin, args, log_path, &[("FAILPOINTS", failpoints)])
}

/// Restarts with `FAILPOINTS` set to `failpoints` (or cleared).
trait RestartWith {
    fn restart_with(&mut self, failpoints: Option<&str>) -> anyhow::Result<()>;
}

impl RestartWith for Daemon {
    fn restart_with(&mut self, failpoints: Option<&str>) -> anyhow::Result<()> {
        self.set_env("FAILPOINTS", failpoints);
        self.restart()
    }
}

/// A replica process.
struct Replica {
    url: String,
    data: PathBuf,
    proc: Daemon,
}

impl Replica {
    fn start(bin: &Path, spec: &ReplicaSpec, failpoints: Option<&str>) -> anyhow::Result<Replica> {
        std::fs::create_dir_all(&spec.dir)?;
        let cfg = spec.dir.join("replica.toml");
        std::fs::write(&cfg, spec.config_text())?;
        let proc = start_proc(
            bin.to_path_buf(),
            vec!["--config".into(), cfg.into()],
            spec.dir.join("replica.log"),
            failpoints,
        )?;
        Ok(Replica {
            url: secure::url(format!("127.0.0.1:{}", spec.port)),
            data: spec.dir.join("data"),
            proc,
        })
    }
}

/// Arms a fault point of a running process (`PUT /v1/failpoints/{point}`).
async fn arm(c: &Client, base: &str, point: &str, actions: &str) -> anyhow::Result<()> {
    let url = format!("{base}/v1/failpoints/{point}");
    let body = bytes::Bytes::from(actions.to_string());
    wait_for(
        Duration::from_secs(10),
        &format!("{point} armed at {base}"),
        || async {
            match c.call("PUT", &url, &[], body.clone()).await {
                Ok(r) if r.status == 200 => Some(()),
                Ok(r) => panic!("arming {point}={actions}: {} {}", r.status, r.text()),
                Err(_) => None,
            }
        },
    )
    .await
}

/// `N*off->return(ACTION)`: the point passes `after` times, then fires once.
fn nth(after: u32, action: &str) -> String {
    if after == 0 {
        format!("1*return({action})")
    } else {
        format!("{after}*off->1*return({action})")
    }
}

/// Asserts that `p` exited by the crash action at `point`.
async fn expect_crash(p: &mut Daemon, point: &str, what: &str) -> anyhow::Result<()> {
    let Some(st) = p.exited(Duration::from_secs(30)).await else {
        anyhow::bail!(
            "{what}: {point} never fired within 30 s; log tail:\n{}",
            p.log_tail(30)
        );
    };
    anyhow::ensure!(
        st.code() == Some(CRASH_EXIT_CODE)
            && p.log().contains(&format!("failpoint {point}: crash")),
        "{what}: expected the crash at {point}, got {st:?}; log tail:\n{}",
        p.log_tail(30)
    );
    Ok(())
}

// ----- load and checks -------------------------------------------------------------------------

/// Writers putting unique keys to one replica, recording each acknowledged write (and when).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    times: Arc<Mutex<Vec<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, prefix: &str, writers: usize, value_len: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Acked>> = Default::default();
        let times: Arc<Mutex<Vec<Instant>>> = Default::default();
        let tasks = (0..writers)
            .map(|t| {
                let (stop, acked, times) = (stop.clone(), acked.clone(), times.clone());
                let (url, prefix) = (url.to_string(), prefix.to_string());
                tokio::spawn(async move {
                    let c = Client::new(Duration::from_secs(3));
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}-{t}-{i}");
                        let mut value = format!("{key}={}", rand::random::<u32>());
                        while value.len() < value_len {
                            value.push('.');
                        }
                        i += 1;
                        match c.put(&url, &key, value.clone()).await {
                            Ok(r) if r.status == 200 => {
                                acked.lock().expect("lock").insert(key, value);
                                times.lock().expect("lock").push(Instant::now());
                            }
                            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            times,
            tasks,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    async fn wait_acked(&self, n: usize, what: &str) -> anyhow::Result<()> {
        wait_for(
            Duration::from_secs(30),
            &format!("{n} acknowledged writes ({what})"),
            || async { (self.acked() >= n).then_some(()) },
        )
        .await
    }

    /// Stops the writers (in-flight writes finish or time out) and returns what was
    /// acknowledged, with the acknowledgement times sorted.
    async fn stop(self) -> (Acked, Vec<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let acked = self.acked.lock().expect("lock").clone();
        let mut times = self.times.lock().expect("lock").clone();
        times.sort();
        (acked, times)
    }
}

async fn wait_writable(c: &Client, url: &str, what: &str) -> anyhow::Result<()> {
    wait_for(
        Duration::from_secs(30),
        &format!("{what} to accept writes"),
        || async {
            matches!(c.put(url, "probe", "x").await, Ok(r) if r.status == 200).then_some(())
        },
    )
    .await
}

async fn status(c: &Client, url: &str) -> serde_json::Value {
    c.status(url).await.unwrap_or(serde_json::Value::Null)
}

/// [`assert_all_readable`], with `what` (the scenario) in the error.
async fn check_acked(url: &str, acked: &Acked, what: &str) -> anyhow::Result<()> {
    assert_all_readable(url, acked)
        .await
        .map_err(|e| anyhow::anyhow!("{what}: {e:#}"))
}

/// Waits until the replicas report the same applied LSN and state digest (G4).
async fn wait_converged(c: &Client, urls: &[&str]) -> anyhow::Result<(u64, String)> {
    wait_for(
        Duration::from_secs(30),
        "the replicas to converge",
        || async {
            let mut seen = BTreeSet::new();
            for url in urls {
                let st = c.status(url).await.ok()?;
                seen.insert((
                    st["applied_lsn"].as_u64()?,
                    st["state_digest"].as_str()?.to_string(),
                ));
            }
            (seen.len() == 1).then(|| seen.into_iter().next().expect("one"))
        },
    )
    .await
}

/// Keys of the puts archived in a replica's rollback files.
fn archived_keys(data: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(data.join("rollback")) else {
        return Ok(out);
    };
    for f in rd.flatten().map(|e| e.path()) {
        if f.extension().is_none_or(|x| x != "rollback") {
            continue;
        }
        let bytes = std::fs::read(&f)?;
        let mut off = 0;
        while off < bytes.len() {
            let (r, n): (Record, usize) = Record::decode(&bytes[off..])
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            if let Op::Put { key, .. } = r.op {
                out.insert(String::from_utf8_lossy(&key).into_owned());
            }
            off += n;
        }
    }
    Ok(out)
}

/// The records in a replica's log segments by LSN (read while nothing writes; a torn frame at
/// the very end of a segment ends that segment).
fn log_records(data: &Path) -> anyhow::Result<BTreeMap<u64, Record>> {
    let mut out = BTreeMap::new();
    for f in std::fs::read_dir(data.join("wal"))?
        .flatten()
        .map(|e| e.path())
    {
        if f.extension().is_none_or(|x| x != "seg") {
            continue;
        }
        let bytes = std::fs::read(&f)?;
        let mut off = baton_replica::wal::disk::records_start(&bytes);
        while let Ok((r, n)) = Record::decode(&bytes[off..]) {
            out.insert(r.lsn.0, r);
            off += n;
        }
    }
    Ok(out)
}

/// I1 on the logs themselves: every LSN two replicas both hold is the same record.
fn assert_same_records(a: &Path, b: &Path) -> anyhow::Result<usize> {
    let (ra, rb) = (log_records(a)?, log_records(b)?);
    let mut common = 0;
    for (lsn, x) in &ra {
        if let Some(y) = rb.get(lsn) {
            anyhow::ensure!(x == y, "LSN {lsn} differs between the logs: {x:?} vs {y:?}");
            common += 1;
        }
    }
    Ok(common)
}

fn no_panics(p: &Daemon, who: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !p.log().contains("panicked"),
        "{who} panicked:\n{}",
        p.log_tail(40)
    );
    Ok(())
}

// ----- one replica -----------------------------------------------------------------------------

/// Small segments and snapshots so that rolls, snapshots and compaction happen under load.
const ONE_TOML: &str = "[timing]\nwrite_timeout_ms = 2000\n[storage]\nsegment_bytes_max = 32768\nsnapshot_log_bytes = 65536\n";

/// One replica led by the stand-in controller.
async fn one_replica(bin: &Path, dir: &Path) -> anyhow::Result<(Standin, Replica, Client, u64)> {
    let standin = Standin::start("r1").await?;
    let mut spec = ReplicaSpec::new("r1", dir, std::slice::from_ref(&standin.url));
    spec.extra_toml = ONE_TOML.into();
    let r = Replica::start(bin, &spec, None)?;
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &r.url, "r1").await?;
    let epoch = status(&c, &r.url).await["epoch"].as_u64().unwrap_or(0);
    Ok((standin, r, c, epoch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_at_each_persistence_point_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let (bin, _) = fault_bins().await?;
    let tmp = tempfile::tempdir()?;
    let (standin, mut r, c, mut epoch) = one_replica(&bin, tmp.path()).await?;
    // (point, hits that pass before it fires, reached through a new epoch)
    // (point, hits that pass before it fires in rounds 1 and 2, reached through a new epoch)
    let plan: &[(&str, [u32; 2], bool)] = &[
        ("wal.before_append", [20, 3], false),
        ("wal.after_append", [20, 3], false),
        ("wal.before_fsync", [20, 3], false),
        ("wal.after_fsync", [20, 3], false),
        ("apply.before", [30, 5], false),
        ("client.before_ack", [100, 25], false),
        ("snapshot.before_rename", [0, 1], false),
        ("compact.before", [0, 1], false),
        ("meta.before_epoch_write", [0, 0], true),
        ("meta.after_epoch_write", [0, 0], true),
        ("meta.before_rename", [0, 0], true),
    ];
    let mut all = Acked::new();
    for round in 0..2 {
        for (i, &(point, after, new_epoch)) in plan.iter().enumerate() {
            let after = after[round];
            arm(&c, &r.url, point, &nth(after, "crash")).await?;
            let load = Load::start(&r.url, &format!("c{round}-{i}"), 8, 120);
            if new_epoch {
                load.wait_acked(50, point).await?;
                // A new epoch for the same leader: the directive's epoch is persisted first.
                standin.set_leader("r1");
            }
            expect_crash(&mut r.proc, point, "r1").await?;
            let (acked, _) = load.stop().await;
            r.proc.restart_with(None)?;
            wait_writable(&c, &r.url, "r1 restarted").await?;
            let now = status(&c, &r.url).await["epoch"].as_u64().unwrap_or(0);
            anyhow::ensure!(
                now > epoch,
                "after the crash at {point} r1 leads epoch {now}, not above {epoch}"
            );
            epoch = now;
            check_acked(&r.url, &acked, &format!("after a crash at {point}")).await?;
            println!(
                "{point} (after {after}): crashed, restarted at epoch {now}, {} acknowledged writes intact",
                acked.len()
            );
            all.extend(acked);
        }
    }
    check_acked(&r.url, &all, "at the end").await?;
    let log = r.proc.log();
    assert!(log.contains("snapshot written"), "snapshots ran");
    no_panics(&r.proc, "r1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_injected_io_error_stops_the_replica_which_restarts_with_everything_acknowledged(
) -> anyhow::Result<()> {
    let (bin, _) = fault_bins().await?;
    let tmp = tempfile::tempdir()?;
    let (standin, mut r, c, _) = one_replica(&bin, tmp.path()).await?;
    // (point, hits that pass, reached through a new epoch, what the fatal line must say, the
    // error). ENOSPC from an fsync is fatal like any fsync error (DESIGN.md §6): some file
    // systems drop the dirty pages when they report it, so a retry could succeed falsely.
    let plan: &[(&str, u32, bool, &str, &str)] = &[
        (
            "wal.before_append",
            10,
            false,
            "log I/O error: write",
            "error",
        ),
        (
            "wal.after_append",
            10,
            false,
            "log I/O error: write",
            "error",
        ),
        (
            "wal.before_fsync",
            10,
            false,
            "log I/O error: fdatasync",
            "error",
        ),
        (
            "wal.before_fsync",
            10,
            false,
            "log I/O error: fdatasync",
            "enospc",
        ),
        (
            "wal.after_fsync",
            10,
            false,
            "log I/O error: fdatasync",
            "error",
        ),
        (
            "meta.before_epoch_write",
            0,
            true,
            "cannot persist epoch",
            "error",
        ),
        (
            "meta.after_epoch_write",
            0,
            true,
            "cannot persist epoch",
            "error",
        ),
    ];
    let mut all = Acked::new();
    for (i, &(point, after, new_epoch, says, error)) in plan.iter().enumerate() {
        arm(&c, &r.url, point, &nth(after, error)).await?;
        let load = Load::start(&r.url, &format!("e{i}"), 8, 120);
        if new_epoch {
            load.wait_acked(50, point).await?;
            standin.set_leader("r1");
        }
        let st = r.proc.exited(Duration::from_secs(30)).await;
        let (acked, _) = load.stop().await;
        // The fatal path: exit 1 with one line naming the reason (never retried).
        let last = r.proc.log().lines().last().unwrap_or_default().to_string();
        anyhow::ensure!(
            st.and_then(|s| s.code()) == Some(1)
                && last.starts_with("baton-replica: fatal: ")
                && last.contains(says)
                && last.contains(&format!("injected by failpoint {point}")),
            "an error at {point} must stop r1 naming it, got {st:?}:\n{}",
            r.proc.log_tail(20)
        );
        r.proc.restart_with(None)?;
        wait_writable(&c, &r.url, "r1 restarted").await?;
        check_acked(&r.url, &acked, &format!("after an error at {point}")).await?;
        println!(
            "{point}: stopped with `{last}`; restarted, {} acknowledged writes intact",
            acked.len()
        );
        all.extend(acked);
    }
    // Snapshot and compaction errors are not fatal: both are retried later.
    for (point, says) in [
        ("snapshot.before_rename", "snapshot failed"),
        ("compact.before", "log compaction failed"),
    ] {
        let seen = r.proc.log().matches(says).count();
        arm(&c, &r.url, point, "1*return(error)").await?;
        let load = Load::start(&r.url, point, 8, 120);
        wait_for(
            Duration::from_secs(30),
            &format!("`{says}` in the log"),
            || async { (r.proc.log().matches(says).count() > seen).then_some(()) },
        )
        .await?;
        let written = r.proc.log().matches("snapshot written").count();
        wait_for(Duration::from_secs(30), "the next snapshot", || async {
            (r.proc.log().matches("snapshot written").count() > written).then_some(())
        })
        .await?;
        let (acked, _) = load.stop().await;
        anyhow::ensure!(r.proc.is_running(), "an error at {point} must not stop r1");
        check_acked(&r.url, &acked, point).await?;
        println!("{point}: `{says}`, retried; r1 kept serving");
        all.extend(acked);
    }
    check_acked(&r.url, &all, "at the end").await?;
    no_panics(&r.proc, "r1")
}

// ----- a leader and its sync follower ----------------------------------------------------------

/// Writes that cannot be acknowledged end soon; small segments and snapshots so that the
/// leader compacts and a wiped follower is rebuilt from a snapshot.
const PAIR_TOML: &str = "[timing]\nwrite_timeout_ms = 1000\n[storage]\nsegment_bytes_max = 16384\nsnapshot_log_bytes = 32768\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_at_each_replication_point_then_the_other_node_lost_keeps_every_acknowledged_write(
) -> anyhow::Result<()> {
    let (bin, _) = fault_bins().await?;
    let tmp = tempfile::tempdir()?;
    let standin = Standin::start("r1").await?;
    // The follower stays in the waited set while it is down: every acknowledged write is on
    // both, so either one alone must hold them all (I2).
    standin.with(|p| p.drop_after_ms = None);
    let mut nodes = BTreeMap::new();
    for id in ["r1", "r2"] {
        let mut spec = ReplicaSpec::new(id, tmp.path(), std::slice::from_ref(&standin.url));
        spec.extra_toml = PAIR_TOML.into();
        nodes.insert(id.to_string(), Replica::start(&bin, &spec, None)?);
    }
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &nodes["r1"].url, "r1").await?;
    // From now on r1 acknowledges only what r2 flushed too.
    let r1 = nodes["r1"].url.clone();
    wait_for(Duration::from_secs(30), "r1 to wait for r2", || async {
        let st = status(&c, &r1).await;
        let waited = st["waited"].as_array().map(Vec::len).unwrap_or(0);
        (waited == 1 && st["degraded"] == false).then_some(())
    })
    .await?;
    let (mut leader, mut follower) = ("r1".to_string(), "r2".to_string());
    // (point, on the leader, hits that pass, reached through a new epoch, armed at the old
    // leader's restart)
    let plan: &[(&str, bool, u32, bool, Option<&str>)] = &[
        (
            "follower.before_append",
            false,
            10,
            false,
            Some("truncate.after_archive"),
        ),
        ("repl.before_ack", false, 20, false, None),
        ("wal.after_fsync", false, 15, false, None),
        ("apply.before", false, 15, false, None),
        ("meta.before_epoch_write", false, 0, true, None),
        ("meta.after_epoch_write", false, 0, true, None),
        ("repl.before_send", true, 10, false, None),
        ("client.before_ack", true, 60, false, None),
    ];
    let mut all = Acked::new();
    for (i, &(point, on_leader, after, new_epoch, at_restart)) in plan.iter().enumerate() {
        let target = if on_leader { &leader } else { &follower };
        arm(&c, &nodes[target].url, point, &nth(after, "crash")).await?;
        let load = Load::start(&nodes[&leader].url, &format!("p{i}"), 8, 120);
        if new_epoch {
            load.wait_acked(50, point).await?;
            standin.set_leader(&leader);
        }
        let who = format!(
            "{target} ({})",
            if on_leader { "leader" } else { "follower" }
        );
        expect_crash(&mut nodes.get_mut(target).expect("node").proc, point, &who).await?;
        let mut diverged = None;
        if !on_leader {
            // A write the follower never receives: appended on the leader, never acknowledged
            // (refused up front while a new epoch's leader-start waits for the follower).
            let key = format!("diverge-{i}");
            match c.put(&nodes[&leader].url, &key, "x").await {
                Ok(r) if r.status == 504 => diverged = Some(key),
                Ok(r) if r.status == 503 && new_epoch => {}
                other => anyhow::bail!(
                    "a write the sync follower cannot take must not be acknowledged: {other:?}"
                ),
            }
        }
        let (acked, _) = load.stop().await;
        // Now the other node is lost too (the leader, or it already crashed): the follower
        // comes back with its disk and leads.
        nodes.get_mut(&leader).expect("leader").proc.kill9();
        standin.set_leader(&follower);
        let f = nodes.get_mut(&follower).expect("follower");
        if !f.proc.is_running() {
            f.proc.restart_with(None)?;
        }
        let fp = at_restart.map(|p| format!("{p}=1*return(crash)"));
        let old = nodes.get_mut(&leader).expect("old leader");
        old.proc.restart_with(fp.as_deref())?;
        if let Some(p) = at_restart {
            // The old leader archives its divergent suffix and crashes before cutting it; the
            // next start does it again.
            expect_crash(&mut old.proc, p, "the old leader rejoining").await?;
            old.proc.restart_with(None)?;
        }
        wait_writable(&c, &nodes[&follower].url, &follower).await?;
        check_acked(
            &nodes[&follower].url,
            &acked,
            &format!("{follower} after {who} crashed at {point} and {leader} was lost"),
        )
        .await?;
        let urls = [nodes["r1"].url.as_str(), nodes["r2"].url.as_str()];
        let (applied, digest) = wait_converged(&c, &urls).await?;
        assert_same_records(&nodes["r1"].data, &nodes["r2"].data)?;
        if let Some(key) = diverged {
            let archived = archived_keys(&nodes[&leader].data)?;
            anyhow::ensure!(
                archived.contains(&key),
                "{leader}'s unreplicated {key} must be archived in a rollback file: {archived:?}"
            );
        }
        println!(
            "{point} on {who}: {} acknowledged writes on {follower}; converged at LSN {applied} ({digest})",
            acked.len()
        );
        all.extend(acked);
        std::mem::swap(&mut leader, &mut follower);
    }
    // Injected stream errors only break the stream: the follower reconnects, nothing stops.
    arm(
        &c,
        &nodes[&leader].url,
        "repl.before_send",
        "3*return(error)",
    )
    .await?;
    arm(
        &c,
        &nodes[&follower].url,
        "follower.before_append",
        "3*return(error)",
    )
    .await?;
    let load = Load::start(&nodes[&leader].url, "stream-errors", 8, 120);
    load.wait_acked(300, "with stream errors").await?;
    let (acked, _) = load.stop().await;
    all.extend(acked);
    let urls = [nodes["r1"].url.clone(), nodes["r2"].url.clone()];
    let urls = [urls[0].as_str(), urls[1].as_str()];
    wait_converged(&c, &urls).await?;
    anyhow::ensure!(
        nodes[&leader]
            .proc
            .log()
            .contains("injected by failpoint repl.before_send")
            && nodes[&follower]
                .proc
                .log()
                .contains("injected by failpoint follower.before_append"),
        "the stream errors were injected"
    );
    for (id, n) in nodes.iter_mut() {
        anyhow::ensure!(n.proc.is_running(), "{id} must survive stream errors");
    }
    // The follower loses its disk and is rebuilt from the leader's snapshot; it crashes once
    // between receiving the snapshot and putting it in place of its log.
    let lurl = nodes[&leader].url.clone();
    wait_for(
        Duration::from_secs(30),
        "the leader to compact its log",
        || async { (status(&c, &lurl).await["log_start_lsn"].as_u64() > Some(1)).then_some(()) },
    )
    .await?;
    let f = nodes.get_mut(&follower).expect("follower");
    f.proc.kill9();
    std::fs::remove_dir_all(&f.data)?;
    f.proc
        .restart_with(Some("install.before_rename=1*return(crash)"))?;
    expect_crash(&mut f.proc, "install.before_rename", "the wiped follower").await?;
    f.proc.restart_with(None)?;
    wait_converged(&c, &urls).await?;
    anyhow::ensure!(
        nodes[&follower]
            .proc
            .log()
            .contains("installed a snapshot from the leader"),
        "the wiped follower was rebuilt from a snapshot"
    );
    for (id, n) in &nodes {
        no_panics(&n.proc, id)?;
    }
    check_acked(&nodes[&leader].url, &all, "at the end").await?;
    let common = assert_same_records(&nodes["r1"].data, &nodes["r2"].data)?;
    println!("the two logs agree on all {common} LSNs both hold");
    Ok(())
}

// ----- a snapshot received from the leader -----------------------------------------------------

/// The flushed LSN the leader at `leader` has from follower `id` (0 when it has none).
async fn flushed_as_seen_by_leader(c: &Client, leader: &str, id: &str) -> u64 {
    let st = status(c, leader).await;
    st["followers"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["id"] == id))
        .and_then(|f| f["flushed_lsn"].as_u64())
        .unwrap_or(0)
}

/// Issue 10, item 5: a follower rebuilt from the leader's snapshot acknowledges the snapshot's
/// LSN only once a crash would keep it (renamed into place, directory fsynced, log restarted
/// after it). Held at `install.before_rename` (paused), neither the follower's own flushed LSN
/// nor the leader's view of it may reach the snapshot; released, both do. A crash at the new
/// boundary `install.after_reset` (durable, not yet reported) restarts holding the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_acknowledges_a_received_snapshot_only_once_it_is_in_place() -> anyhow::Result<()>
{
    let (bin, _) = fault_bins().await?;
    let tmp = tempfile::tempdir()?;
    let standin = Standin::start("r1").await?;
    let spec = |id: &str| {
        let mut s = ReplicaSpec::new(id, tmp.path(), std::slice::from_ref(&standin.url));
        s.extra_toml = PAIR_TOML.into();
        s
    };
    let r1 = Replica::start(&bin, &spec("r1"), None)?;
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &r1.url, "r1").await?;
    // r1 alone writes until it compacts: a follower that starts empty needs its snapshot.
    let load = Load::start(&r1.url, "s", 4, 120);
    wait_for(Duration::from_secs(30), "r1 to compact its log", || async {
        (status(&c, &r1.url).await["log_start_lsn"].as_u64() > Some(1)).then_some(())
    })
    .await?;
    let (acked, _) = load.stop().await;

    let mut r2 = Replica::start(&bin, &spec("r2"), Some("install.before_rename=pause"))?;
    // The core took the snapshot (status says so) and the log thread is held before the rename.
    let snap = wait_for(
        Duration::from_secs(30),
        "r2 to receive a snapshot",
        || async {
            status(&c, &r2.url).await["snapshot_lsn"]
                .as_u64()
                .filter(|l| *l > 0)
        },
    )
    .await?;
    for _ in 0..20 {
        let own = status(&c, &r2.url).await["flushed_lsn"]
            .as_u64()
            .unwrap_or(0);
        let seen = flushed_as_seen_by_leader(&c, &r1.url, "r2").await;
        anyhow::ensure!(
            own < snap && seen < snap,
            "the snapshot at LSN {snap} is not in place yet, but r2 reports flushed {own} and r1 \
             counts {seen} for it"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!("held before the rename: r2 and r1 count nothing up to the snapshot at LSN {snap}");
    let url = format!("{}/v1/failpoints/install.before_rename", r2.url);
    let r = c.call("DELETE", &url, &[], bytes::Bytes::new()).await;
    anyhow::ensure!(
        matches!(&r, Ok(r) if r.status == 200),
        "disarming install.before_rename: {r:?}"
    );
    wait_for(
        Duration::from_secs(30),
        "r1 to count r2's installed snapshot",
        || async { (flushed_as_seen_by_leader(&c, &r1.url, "r2").await >= snap).then_some(()) },
    )
    .await?;
    let urls = [r1.url.as_str(), r2.url.as_str()];
    wait_converged(&c, &urls).await?;

    // Durable but not yet reported: a crash there restarts with the snapshot in place.
    r2.proc.kill9();
    std::fs::remove_dir_all(&r2.data)?;
    r2.proc
        .restart_with(Some("install.after_reset=1*return(crash)"))?;
    expect_crash(&mut r2.proc, "install.after_reset", "r2").await?;
    r2.proc.restart_with(None)?;
    let st = wait_for(Duration::from_secs(30), "r2 to serve again", || async {
        c.status(&r2.url).await.ok()
    })
    .await?;
    let (snap2, flushed) = (
        st["snapshot_lsn"].as_u64().unwrap_or(0),
        st["flushed_lsn"].as_u64().unwrap_or(0),
    );
    anyhow::ensure!(
        snap2 > 0 && flushed >= snap2,
        "after a crash at install.after_reset r2 must hold its snapshot: {st}"
    );
    wait_converged(&c, &urls).await?;
    check_acked(&r1.url, &acked, "after the installs").await?;
    no_panics(&r1.proc, "r1")?;
    no_panics(&r2.proc, "r2")
}

// ----- damaged records on a follower's disk ----------------------------------------------------

/// Large segments (the damage lands in the last one) and no snapshot during these tests.
const DAMAGE_TOML: &str = "[timing]\nwrite_timeout_ms = 1000\n[storage]\nsegment_bytes_max = 1048576\nsnapshot_log_bytes = 104857600\n";

/// A leader r1 and its sync follower r2 that acknowledged `writes` writes, then both killed
/// (r2 after it flushed everything): r2's log is synced to its end.
async fn pair_then_both_killed(
    bin: &Path,
    dir: &Path,
    writes: usize,
) -> anyhow::Result<(Standin, Replica, Replica, Client, Acked)> {
    pair_then_both_killed_with(bin, dir, writes, DAMAGE_TOML).await
}

/// [`pair_then_both_killed`] with the given replica config.
async fn pair_then_both_killed_with(
    bin: &Path,
    dir: &Path,
    writes: usize,
    toml: &str,
) -> anyhow::Result<(Standin, Replica, Replica, Client, Acked)> {
    let standin = Standin::start("r1").await?;
    standin.with(|p| p.drop_after_ms = None);
    let spec = |id: &str| {
        let mut s = ReplicaSpec::new(id, dir, std::slice::from_ref(&standin.url));
        s.extra_toml = toml.into();
        s
    };
    let mut r1 = Replica::start(bin, &spec("r1"), None)?;
    let mut r2 = Replica::start(bin, &spec("r2"), None)?;
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &r1.url, "r1").await?;
    wait_for(Duration::from_secs(30), "r1 to wait for r2", || async {
        let st = status(&c, &r1.url).await;
        (st["waited"].as_array().map(Vec::len) == Some(1) && st["degraded"] == false).then_some(())
    })
    .await?;
    let load = Load::start(&r1.url, "d", 4, 120);
    load.wait_acked(writes, "before the damage").await?;
    let (acked, _) = load.stop().await;
    wait_converged(&c, &[r1.url.as_str(), r2.url.as_str()]).await?;
    wait_for(
        Duration::from_secs(30),
        "r2 to flush its log end",
        || async {
            let st = status(&c, &r2.url).await;
            let end = st["log_end_lsn"].as_u64()?;
            (st["flushed_lsn"].as_u64()? == end && st["unclean"] == false).then_some(())
        },
    )
    .await?;
    r2.proc.kill9();
    r1.proc.kill9();
    Ok((standin, r1, r2, c, acked))
}

/// The newest segment file of a replica's log.
fn last_segment(data: &Path) -> anyhow::Result<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data.join("wal"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop()
        .ok_or_else(|| anyhow::anyhow!("no segment in {}", data.display()))
}

/// Restarts the damaged r2 while its leader is down (nothing can repair it yet) and returns
/// its status; a replica that refuses to start fails here with its log.
async fn restart_damaged(r2: &mut Replica, c: &Client) -> anyhow::Result<serde_json::Value> {
    r2.proc.restart_with(None)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = c
            .status(&r2.url)
            .await
            .ok()
            .filter(|s| s["log_end_lsn"].is_u64())
        {
            return Ok(st);
        }
        if !r2.proc.is_running() {
            anyhow::bail!(
                "r2 refused to start on its damaged log:\n{}",
                r2.proc.log_tail(5)
            );
        }
        anyhow::ensure!(Instant::now() < deadline, "r2 did not serve within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// r1 comes back: r2 fetches what it lost, converges, and is clean again by the normal rule
/// (its flush reached the first commit LSN it heard). Nothing acknowledged is lost.
async fn leader_back_and_repaired(
    r1: &mut Replica,
    r2: &Replica,
    c: &Client,
    acked: &Acked,
) -> anyhow::Result<()> {
    r1.proc.restart_with(None)?;
    wait_writable(c, &r1.url, "r1 restarted").await?;
    wait_for(Duration::from_secs(30), "r2 to be clean again", || async {
        (status(c, &r2.url).await["unclean"] == false).then_some(())
    })
    .await?;
    wait_converged(c, &[r1.url.as_str(), r2.url.as_str()]).await?;
    assert_same_records(&r1.data, &r2.data)?;
    check_acked(&r1.url, acked, "after the repair").await?;
    no_panics(&r1.proc, "r1")?;
    no_panics(&r2.proc, "r2")
}

/// Issue 10, item 6 (a): a bit flip in a follower's last record, which a sync had covered (the
/// follower acknowledged it), used to be taken for a torn tail and cut silently. The follower
/// starts, reports `unclean` (it lost a record it had acknowledged), fetches the record again
/// from the leader, converges and is clean again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bit_flip_in_a_followers_synced_last_record_makes_it_unclean_until_it_fetched_it_again(
) -> anyhow::Result<()> {
    let (bin, _) = fault_bins().await?;
    let tmp = tempfile::tempdir()?;
    let (_standin, mut r1, mut r2, c, acked) = pair_then_both_killed(&bin, tmp.path(), 100).await?;
    let seg = last_segment(&r2.data)?;
    let mut data = std::fs::read(&seg)?;
    let mut off = baton_replica::wal::disk::records_start(&data);
    let mut last = None;
    while let Ok((r, n)) = Record::decode(&data[off..]) {
        last = Some((off, r.lsn.0, n));
        off += n;
    }
    let (at, lsn, n) = last.ok_or_else(|| anyhow::anyhow!("no record in {}", seg.display()))?;
    anyhow::ensure!(
        data[off..].iter().all(|b| *b == 0),
        "the last record ends the segment's records (only its zero-filled preallocation follows)"
    );
    data[at + n / 2] ^= 0x10;
    std::fs::write(&seg, &data)?;

    let st = restart_damaged(&mut r2, &c).await?;
    anyhow::ensure!(
        st["unclean"] == true && st["log_end_lsn"].as_u64() == Some(lsn - 1),
        "r2 lost LSN {lsn}, which it had acknowledged: it must report unclean with its log \
         ending at LSN {}; status {st}",
        lsn - 1
    );
    anyhow::ensure!(
        r2.proc
            .log()
            .contains("damaged log record where a sync had returned"),
        "the damage is logged as an error naming file and offset"
    );
    println!(
        "r2 cut LSN {lsn} (damaged at {}:{at}) and reports unclean",
        seg.display()
    );
    leader_back_and_repaired(&mut r1, &r2, &c, &acked).await
}

/// Issue 10, item 6 (b): a write-back hole in the middle of a follower's last segment (a page
/// that did not reach the disk while later ones did) used to be taken for mid-log corruption:
/// the node refused to start. It starts, cuts at the hole, is unclean (the records there had
/// been synced and acknowledged), catches up from the leader and is clean again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_back_hole_in_a_followers_last_segment_is_cut_and_fetched_again(
) -> anyhow::Result<()> {
    let (bin, _) = fault_bins().await?;
    let tmp = tempfile::tempdir()?;
    let (_standin, mut r1, mut r2, c, acked) = pair_then_both_killed(&bin, tmp.path(), 400).await?;
    let seg = last_segment(&r2.data)?;
    let mut data = std::fs::read(&seg)?;
    // The middle of its records (the file goes on with its zero-filled preallocation).
    let used = baton_replica::wal::disk::records_end(&data);
    anyhow::ensure!(used >= 8 * 4096, "a segment of {used} bytes of records");
    let page = (used / 2) & !4095;
    data[page..page + 4096].fill(0);
    std::fs::write(&seg, &data)?;
    let mut end = 0;
    let mut off = baton_replica::wal::disk::records_start(&data);
    while let Ok((r, n)) = Record::decode(&data[off..]) {
        end = r.lsn.0;
        off += n;
    }

    let st = restart_damaged(&mut r2, &c).await?;
    anyhow::ensure!(
        st["unclean"] == true && st["log_end_lsn"].as_u64() == Some(end),
        "r2 must cut at the hole (its log ending at LSN {end}) and report unclean; status {st}"
    );
    println!(
        "r2 cut its log at the hole at {}:{page}, after LSN {end}",
        seg.display()
    );
    leader_back_and_repaired(&mut r1, &r2, &c, &acked).await
}

/// Small segments: a few hundred writes fill several, so that damage lands mid-log, in a
/// sealed segment.
const MIDLOG_TOML: &str = "[timing]\nwrite_timeout_ms = 1000\n[storage]\nsegment_bytes_max = 16384\nsnapshot_log_bytes = 104857600\n";

/// The segments of a replica's log, oldest first.
fn segments(data: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data.join("wal"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    Ok(segs)
}

/// Flips bytes in the middle of a middle record of the first (sealed) segment: damage inside
/// the log, with valid records and later segments after it. Returns the file, the damaged
/// record's offset and its LSN.
fn damage_mid_log(data: &Path) -> anyhow::Result<(PathBuf, usize, u64)> {
    let segs = segments(data)?;
    anyhow::ensure!(
        segs.len() >= 3,
        "{} segments: not enough for a mid-log case",
        segs.len()
    );
    let seg = segs[0].clone();
    let mut bytes = std::fs::read(&seg)?;
    let mut off = baton_replica::wal::disk::records_start(&bytes);
    let mut frames = Vec::new();
    while let Ok((r, n)) = Record::decode(&bytes[off..]) {
        frames.push((off, r.lsn.0, n));
        off += n;
    }
    let (at, lsn, n) = frames[frames.len() / 2];
    for b in &mut bytes[at + n / 2..at + n / 2 + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(&seg, &bytes)?;
    Ok((seg, at, lsn))
}

/// DESIGN.md §6: corruption inside a follower's log (a sealed segment, far from the tail). The
/// follower starts anyway: the damaged record and everything after it are cut (moved to
/// `damaged/`), an ERROR names file and offset, it is unclean (it had acknowledged them); once
/// its leader is back it fetches the range again, converges, and is clean again, which it logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mid_log_corruption_in_a_follower_is_cut_and_fetched_again_from_the_leader(
) -> anyhow::Result<()> {
    let (bin, _) = fault_bins().await?;
    let tmp = tempfile::tempdir()?;
    let (_standin, mut r1, mut r2, c, acked) =
        pair_then_both_killed_with(&bin, tmp.path(), 400, MIDLOG_TOML).await?;
    let (seg, at, lsn) = damage_mid_log(&r2.data)?;
    let st = restart_damaged(&mut r2, &c).await?;
    anyhow::ensure!(
        st["unclean"] == true && st["log_end_lsn"].as_u64() == Some(lsn - 1),
        "r2 must cut at the damaged LSN {lsn} and report unclean; status {st}"
    );
    let log = r2.proc.log();
    let named = format!("{}", seg.display());
    anyhow::ensure!(
        log.lines().any(
            |l| l.contains("damaged log record where a sync had returned")
                && l.contains(&named)
                && l.contains(&format!("offset={at}"))
        ),
        "an ERROR names the file and offset of the damage:\n{}",
        r2.proc.log_tail(10)
    );
    anyhow::ensure!(
        r2.data.join("wal").join("damaged").is_dir(),
        "the cut bytes are kept in wal/damaged/"
    );
    println!(
        "r2 cut its log at LSN {lsn} ({}:{at}) and reports unclean",
        seg.display()
    );
    leader_back_and_repaired(&mut r1, &r2, &c, &acked).await?;
    anyhow::ensure!(
        r2.proc.log().contains("no longer unclean"),
        "r2 logs that it caught up: {}",
        r2.proc.log_tail(10)
    );
    Ok(())
}

/// DESIGN.md §6: a replica whose log lost acknowledged records to mid-log corruption has
/// nobody to repair it from when it is the one directed to lead: it must refuse, with a clear
/// error naming the file and offset, rather than lead without writes it acknowledged. (It used
/// to cut the damage, lead, and serve without them.) Started as a follower instead, it repairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_directed_to_lead_on_a_log_damaged_mid_way_refuses_naming_file_and_offset(
) -> anyhow::Result<()> {
    let (bin, _) = fault_bins().await?;
    let tmp = tempfile::tempdir()?;
    let (standin, mut r1, mut r2, c, acked) =
        pair_then_both_killed_with(&bin, tmp.path(), 400, MIDLOG_TOML).await?;
    // The leader's own log is damaged; it is the one the controller directs to lead.
    let (seg, at, lsn) = damage_mid_log(&r1.data)?;
    r1.proc.restart_with(None)?;
    let exited = r1.proc.exited(Duration::from_secs(30)).await;
    let log = r1.proc.log();
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("fatal"))
        .unwrap_or_default();
    anyhow::ensure!(
        exited.and_then(|s| s.code()) == Some(1)
            && last.contains(&format!("{}", seg.display()))
            && last.contains(&format!("offset {at}"))
            && last.contains("refusing to lead"),
        "r1 must refuse to lead on a log damaged at {}:{at} (LSN {lsn}), naming it; exit {exited:?}:\n{}",
        seg.display(),
        r1.proc.log_tail(8)
    );
    // And again on every start until it was repaired: the damage is remembered.
    r1.proc.restart_with(None)?;
    let again = r1.proc.exited(Duration::from_secs(30)).await;
    anyhow::ensure!(
        again.and_then(|s| s.code()) == Some(1)
            && r1
                .proc
                .log()
                .lines()
                .rev()
                .find(|l| l.contains("fatal"))
                .unwrap_or_default()
                .contains("refusing to lead"),
        "r1 refuses again after a restart: {again:?}:\n{}",
        r1.proc.log_tail(8)
    );
    println!("r1 refused to lead: {last}");
    // r2 holds everything: it leads, and r1 started as its follower repairs from it.
    standin.set_leader("r2");
    r2.proc.restart_with(None)?;
    r1.proc.restart_with(None)?;
    wait_writable(&c, &r2.url, "r2 leading").await?;
    wait_for(Duration::from_secs(30), "r1 to be clean again", || async {
        (status(&c, &r1.url).await["unclean"] == false).then_some(())
    })
    .await?;
    wait_converged(&c, &[r1.url.as_str(), r2.url.as_str()]).await?;
    check_acked(&r2.url, &acked, "on r2").await?;
    assert_same_records(&r1.data, &r2.data)?;
    // Repaired: it may lead again.
    standin.set_leader("r1");
    wait_writable(&c, &r1.url, "r1 leading after its repair").await?;
    check_acked(&r1.url, &acked, "on r1 after the repair").await?;
    no_panics(&r1.proc, "r1")?;
    no_panics(&r2.proc, "r2")
}

// ----- ENOSPC ----------------------------------------------------------------------------------

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, size: &str) -> anyhow::Result<()> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// DESIGN.md §6: a full disk is not a crash. A replica on an 8 MiB tmpfs is written until
/// the disk is full: it stays up, answers writes `507 insufficient_storage` (not appended),
/// serves reads, says `disk_full` in its status and heartbeats; once space is freed it resumes
/// by itself (same process) and every acknowledged write is there. (It used to exit with
/// `fatal: disk full`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_writes_with_507_serves_reads_and_resumes_once_space_is_freed(
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let disk = match Tmpfs::mount(&tmp.path().join("disk"), "8m") {
        Ok(d) => d,
        Err(why) => {
            println!("SKIPPED: cannot mount a tmpfs for the disk-full test ({why})");
            return Ok(());
        }
    };
    let standin = Standin::start("r1").await?;
    // The data directory is on the small tmpfs; the config and the process log are not.
    let mut spec = ReplicaSpec::new("r1", &disk.0, std::slice::from_ref(&standin.url));
    spec.extra_toml =
        "[storage]\nsegment_bytes_max = 262144\nsnapshot_log_bytes = 1073741824\n".into();
    let side = tmp.path().join("r1");
    std::fs::create_dir_all(&side)?;
    let cfg = side.join("replica.toml");
    std::fs::write(&cfg, spec.config_text())?;
    let mut p = start_proc(
        bin_path("baton-replica")?,
        vec!["--config".into(), cfg.into()],
        side.join("replica.log"),
        None,
    )?;
    let url = secure::url(format!("127.0.0.1:{}", spec.port));
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &url, "r1").await?;
    let boot = status(&c, &url).await["boot_id"].clone();
    let load = Load::start(&url, "full", 8, 4000);
    let full = wait_for(
        Duration::from_secs(60),
        "r1 to report disk_full",
        || async {
            let st = status(&c, &url).await;
            (st["disk_full"] == true).then_some(st)
        },
    )
    .await;
    let full = match full {
        Ok(st) => st,
        Err(e) => anyhow::bail!("{e:#}; r1 log tail:\n{}", p.log_tail(20)),
    };
    // Writes are refused, unappended; the writers keep trying meanwhile.
    let refused = c
        .put(&url, "after-full", "x")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    anyhow::ensure!(
        refused.status == 507 && refused.json()["error"] == "insufficient_storage",
        "a write on a full disk is answered 507 insufficient_storage, got {} {}",
        refused.status,
        refused.text()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    anyhow::ensure!(
        p.is_running(),
        "r1 exited on a full disk:\n{}",
        p.log_tail(20)
    );
    let before_free = load.acked();
    // Reads are served: every write acknowledged so far reads back.
    let acked_so_far = load.acked.lock().expect("lock").clone();
    check_acked(&url, &acked_so_far, "while the disk is full").await?;
    let hb = standin.with(|pl| pl.seen.get("r1").cloned());
    anyhow::ensure!(
        hb.as_ref().is_some_and(|h| h.disk_full),
        "the heartbeat says disk_full: {hb:?}"
    );
    anyhow::ensure!(
        p.log().contains("disk full: writes are refused (507)"),
        "the replica logs the full disk once"
    );
    // Space is freed: r1 resumes by itself, the same process.
    disk.resize("64m")?;
    wait_for(Duration::from_secs(10), "r1 to resume writes", || async {
        let st = status(&c, &url).await;
        (st["disk_full"] == false).then_some(())
    })
    .await?;
    load.wait_acked(before_free + 50, "after space was freed")
        .await?;
    let (acked, _) = load.stop().await;
    anyhow::ensure!(
        status(&c, &url).await["boot_id"] == boot && p.is_running(),
        "r1 resumed without a restart"
    );
    let refused_key = c
        .get(&url, "after-full")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    anyhow::ensure!(
        refused_key.status == 404,
        "the write refused with 507 was not applied: {} {}",
        refused_key.status,
        refused_key.text()
    );
    check_acked(&url, &acked, "after space was freed").await?;
    // And all of it is durable: a kill -9 and restart keeps every acknowledged write.
    p.kill9();
    p.restart_with(None)?;
    wait_writable(&c, &url, "r1 restarted").await?;
    check_acked(&url, &acked, "after a restart").await?;
    println!(
        "disk full at log end {} ({} writes acknowledged before), 507 while full, resumed by itself; {} acknowledged writes intact",
        full["log_end_lsn"],
        acked_so_far.len(),
        acked.len()
    );
    no_panics(&p, "r1")?;
    p.kill9();
    drop(disk);
    Ok(())
}

/// Disarms a fault point of a running process (`DELETE /v1/failpoints/{point}`).
async fn disarm(c: &Client, base: &str, point: &str) -> anyhow::Result<()> {
    let r = c
        .call(
            "DELETE",
            &format!("{base}/v1/failpoints/{point}"),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("disarm {point}: {e:?}"))?;
    anyhow::ensure!(r.status == 200, "disarm {point}: {}", r.status);
    Ok(())
}

/// DESIGN.md §6 on a follower: with ENOSPC on its log writes (`wal.before_append=return(enospc)`)
/// the sync follower stays up, says `disk_full`, stops taking and acknowledging records (the
/// leader's writes wait for it), and is not fatal. Once the controller drops it from the
/// waited set (the stand-in does it by hand here) the leader writes again; once space is back
/// the follower resumes on its own, catches up and converges, losing nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_with_a_full_disk_stops_acknowledging_and_catches_up_once_it_has_room(
) -> anyhow::Result<()> {
    let (bin, _) = fault_bins().await?;
    let tmp = tempfile::tempdir()?;
    let standin = Standin::start("r1").await?;
    standin.with(|p| p.drop_after_ms = None);
    let spec = |id: &str| {
        let mut s = ReplicaSpec::new(id, tmp.path(), std::slice::from_ref(&standin.url));
        s.extra_toml = PAIR_TOML.into();
        s
    };
    let r1 = Replica::start(&bin, &spec("r1"), None)?;
    let r2 = Replica::start(&bin, &spec("r2"), None)?;
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &r1.url, "r1").await?;
    wait_for(Duration::from_secs(30), "r1 to wait for r2", || async {
        let st = status(&c, &r1.url).await;
        (st["waited"].as_array().map(Vec::len) == Some(1) && st["degraded"] == false).then_some(())
    })
    .await?;
    let load = Load::start(&r1.url, "ff", 4, 200);
    load.wait_acked(100, "before r2's disk fills").await?;
    arm(&c, &r2.url, "wal.before_append", "return(enospc)").await?;
    wait_for(
        Duration::from_secs(10),
        "r2 to report disk_full",
        || async {
            let hb = standin.with(|p| p.seen.get("r2").cloned())?;
            (hb.disk_full && status(&c, &r2.url).await["disk_full"] == true).then_some(())
        },
    )
    .await?;
    // r2 acknowledges nothing more: r1's writes stall (they wait for r2, the waited member).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled = load.acked();
    let flushed = status(&c, &r2.url).await["flushed_lsn"].as_u64();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    anyhow::ensure!(
        load.acked() == stalled,
        "r1 acknowledged {} writes that r2 could not have flushed",
        load.acked() - stalled
    );
    anyhow::ensure!(
        status(&c, &r2.url).await["flushed_lsn"].as_u64() == flushed,
        "r2's flushed LSN must not move while its disk is full"
    );
    anyhow::ensure!(
        status(&c, &r2.url).await["upstream"].is_null(),
        "r2 follows no stream while its disk is full"
    );
    // The controller's part: drop the member that cannot write. r1 writes alone.
    standin.with(|p| p.sync_followers = false);
    load.wait_acked(stalled + 100, "r1 with r2 dropped").await?;
    // Space is back: r2 resumes by itself, catches up and is waited for again.
    disarm(&c, &r2.url, "wal.before_append").await?;
    wait_for(Duration::from_secs(10), "r2 to resume", || async {
        (status(&c, &r2.url).await["disk_full"] == false).then_some(())
    })
    .await?;
    standin.with(|p| p.sync_followers = true);
    let more = load.acked() + 100;
    load.wait_acked(more, "with r2 back").await?;
    let (acked, _) = load.stop().await;
    wait_converged(&c, &[r1.url.as_str(), r2.url.as_str()]).await?;
    for (url, who) in [(&r1.url, "r1"), (&r2.url, "r2")] {
        let st = status(&c, url).await;
        anyhow::ensure!(st["health"] != "fatal", "{who} is not fatal: {st}");
    }
    check_acked(&r1.url, &acked, "on r1").await?;
    assert_same_records(&r1.data, &r2.data)?;
    anyhow::ensure!(
        r2.proc
            .log()
            .contains("disk full: writes are refused (507)")
            && r2.proc.log().contains("the disk has room again"),
        "r2 logs the full disk and the resume"
    );
    println!(
        "follower disk full: r1 stalled at {stalled} acknowledged writes until r2 was dropped; {} acknowledged in all, converged",
        acked.len()
    );
    no_panics(&r1.proc, "r1")?;
    no_panics(&r2.proc, "r2")
}

/// A slow disk: every fdatasync of the leader's log stalls 2.5 s
/// (`wal.before_fsync=sleep(2500)`). Heartbeats do not wait on the log thread: they keep
/// flowing (the lease is renewed, the controller hears `oldest_unflushed_ms` grow), status
/// answers at once, and the write waiting on the fsync is acknowledged when it returns. Started
/// the way the chaos runner and the bench can (`ReplicaSpec::fault_points`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_fsync_stops_neither_heartbeats_nor_status_and_the_write_completes(
) -> anyhow::Result<()> {
    fault_bins().await?;
    let tmp = tempfile::tempdir()?;
    let standin = Standin::start("r1").await?;
    let mut spec = ReplicaSpec::new("r1", tmp.path(), std::slice::from_ref(&standin.url));
    spec.extra_toml = "[timing]\nwrite_timeout_ms = 10000\n".into();
    spec.fault_points = true;
    let r = baton_tests::procs::ReplicaProc::start(spec)?;
    let c = Client::new(Duration::from_secs(10));
    wait_writable(&c, &r.url, "r1").await?;
    arm(&c, &r.url, "wal.before_fsync", "1*sleep(2500)").await?;
    let t0 = Instant::now();
    let write = tokio::spawn({
        let (c, url) = (c.clone(), r.url.clone());
        async move { c.put(&url, "slow", "v").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seq0 = standin
        .with(|p| p.seen.get("r1").map(|h| h.seq))
        .unwrap_or(0);
    let mut worst_status = Duration::ZERO;
    let mut oldest_unflushed = 0;
    while t0.elapsed() < Duration::from_millis(2000) {
        let s0 = Instant::now();
        let st = status(&c, &r.url).await;
        worst_status = worst_status.max(s0.elapsed());
        anyhow::ensure!(
            st["lease_left_ms"].as_u64() > Some(0),
            "the lease lapsed: {st}"
        );
        if let Some(h) = standin.with(|p| p.seen.get("r1").cloned()) {
            oldest_unflushed = oldest_unflushed.max(h.oldest_unflushed_ms.unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seq1 = standin
        .with(|p| p.seen.get("r1").map(|h| h.seq))
        .unwrap_or(0);
    anyhow::ensure!(
        !write.is_finished(),
        "the write must wait for its stalled fsync"
    );
    anyhow::ensure!(
        seq1 >= seq0 + 5,
        "heartbeats keep flowing during the stall: seq {seq0} -> {seq1}"
    );
    anyhow::ensure!(
        worst_status < Duration::from_millis(500),
        "status answered in {worst_status:?} during the stall"
    );
    anyhow::ensure!(
        oldest_unflushed >= 1000,
        "the heartbeat reports the unflushed record's age: {oldest_unflushed} ms"
    );
    let reply = write.await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    anyhow::ensure!(
        reply.status == 200 && t0.elapsed() >= Duration::from_millis(2500),
        "the write is acknowledged once the fsync returns: {} after {:?}",
        reply.status,
        t0.elapsed()
    );
    println!(
        "fsync stalled 2.5 s: heartbeats seq {seq0} -> {seq1}, worst status {worst_status:?}, oldest_unflushed_ms {oldest_unflushed}"
    );
    anyhow::ensure!(!r.log().contains("panicked"), "r1 panicked");
    Ok(())
}

// ----- controllers ---------------------------------------------------------------------------

/// Real etcd, two fault-enabled controllers, three replicas (semi-sync).
struct Deployment {
    _etcd: EtcdProc,
    ctl: Vec<(String, Daemon)>,
    replicas: BTreeMap<String, Replica>,
    c: Client,
}

impl Deployment {
    async fn start(dir: &Path, cbin: &Path) -> anyhow::Result<Deployment> {
        let etcd = EtcdProc::start(&dir.join("etcd")).await?;
        let ids = ["r1", "r2", "r3"];
        let rports: Vec<u16> = ids.iter().map(|_| free_port()).collect();
        let cports: Vec<u16> = (0..2).map(|_| free_port()).collect();
        let members: String = ids
            .iter()
            .zip(&rports)
            .map(|(id, p)| {
                format!("[[clusters.members]]\nid = \"{id}\"\naddr = \"127.0.0.1:{p}\"\n")
            })
            .collect();
        let mut ctl = Vec::new();
        for (i, port) in cports.iter().enumerate() {
            let id = format!("c{}", i + 1);
            let cdir = dir.join(&id);
            std::fs::create_dir_all(&cdir)?;
            let text = format!(
                "id = \"{id}\"\nlisten = \"127.0.0.1:{port}\"\netcd = [\"{}\"]\n{}[[clusters]]\nname = \"main\"\nmode = \"semi-sync\"\nmax_failovers_per_hour = 50\n{members}{}",
                etcd.url,
                secure::top(),
                secure::controller_tables(&id),
            );
            let cfg = cdir.join("controller.toml");
            std::fs::write(&cfg, text)?;
            let p = start_proc(
                cbin.to_path_buf(),
                vec!["--config".into(), cfg.into()],
                cdir.join("controller.log"),
                None,
            )?;
            ctl.push((secure::url(format!("127.0.0.1:{port}")), p));
        }
        let curls: Vec<String> = ctl.iter().map(|(u, _)| u.clone()).collect();
        let mut replicas = BTreeMap::new();
        for (id, port) in ids.iter().zip(&rports) {
            let mut spec = ReplicaSpec::new(id, dir, &curls);
            spec.port = *port;
            replicas.insert(
                id.to_string(),
                Replica::start(&bin_path("baton-replica")?, &spec, None)?,
            );
        }
        let d = Deployment {
            _etcd: etcd,
            ctl,
            replicas,
            c: Client::new(Duration::from_secs(5)),
        };
        wait_for(Duration::from_secs(30), "init", || async {
            for (url, _) in &d.ctl {
                let u = format!("{url}/v1/clusters/main/init");
                if matches!(d.c.call("POST", &u, &[], bytes::Bytes::new()).await, Ok(r) if r.status == 200) {
                    return Some(());
                }
            }
            None
        })
        .await?;
        Ok(d)
    }

    /// The view of a controller that says it is active, with its index.
    async fn active_view(&self) -> anyhow::Result<(usize, serde_json::Value)> {
        wait_for(Duration::from_secs(30), "an active controller", || async {
            for (i, (url, _)) in self.ctl.iter().enumerate() {
                let u = format!("{url}/v1/cluster");
                let Ok(r) = self.c.call("GET", &u, &[], bytes::Bytes::new()).await else {
                    continue;
                };
                let v = r.json();
                if r.status == 200 && v["active"] == true {
                    return Some((i, v));
                }
            }
            None
        })
        .await
    }

    /// The active view once its leader accepts writes and its sync set is not empty (so
    /// that G1 covers what it acknowledges): (controller, leader, epoch).
    async fn steady(&self) -> anyhow::Result<(usize, String, u64)> {
        let last = Mutex::new(String::new());
        let res = wait_for(
            Duration::from_secs(30),
            "a leader that accepts writes",
            || async {
                let (i, v) = self.active_view().await.ok()?;
                *last.lock().expect("lock") = v.to_string();
                if v["sync_set"].as_array().is_none_or(|s| s.is_empty()) {
                    return None;
                }
                let id = v["leader"]["id"].as_str()?.to_string();
                let epoch = v["epoch"].as_u64()?;
                let url = &self.replicas.get(&id)?.url;
                let r = self.c.put(url, "probe", "x").await;
                *last.lock().expect("lock") = format!("{id}: {r:?}");
                matches!(r, Ok(r) if r.status == 200).then_some((i, id, epoch))
            },
        )
        .await;
        res.map_err(|e| anyhow::anyhow!("{e}; last: {}", last.lock().expect("lock")))
    }

    async fn history(&self) -> Vec<serde_json::Value> {
        for (url, _) in &self.ctl {
            let u = format!("{url}/v1/clusters/main/history?limit=500");
            if let Ok(r) = self.c.call("GET", &u, &[], bytes::Bytes::new()).await {
                if let serde_json::Value::Array(a) = r.json() {
                    return a;
                }
            }
        }
        Vec::new()
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for (i, (_, p)) in self.ctl.iter().enumerate() {
            out.push_str(&format!("=== c{} ===\n{}\n", i + 1, p.log_tail(25)));
        }
        for (id, r) in &self.replicas {
            out.push_str(&format!("=== {id} ===\n{}\n", r.proc.log_tail(15)));
        }
        out
    }
}

fn journal_text(h: &[serde_json::Value]) -> String {
    h.iter()
        .map(|e| {
            format!(
                "  [{} e{} x{}] {}",
                e["kind"], e["epoch"], e["count"], e["message"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_finishes_a_promotion_the_active_controller_crashed_in_at_the_same_epoch(
) -> anyhow::Result<()> {
    let (_, cbin) = fault_bins().await?;
    let tmp = tempfile::tempdir()?;
    let mut d = Deployment::start(tmp.path(), &cbin).await?;
    let res = controller_points(&mut d).await;
    if res.is_err() {
        eprintln!(
            "{}\njournal:\n{}",
            d.dump(),
            journal_text(&d.history().await)
        );
    }
    res
}

async fn controller_points(d: &mut Deployment) -> anyhow::Result<()> {
    let mut all = Acked::new();
    for (i, point) in [
        "promotion.before_direct",
        "promotion.after_epoch_write",
        "promotion.before_record",
    ]
    .into_iter()
    .enumerate()
    {
        let (active, leader, epoch) = d.steady().await?;
        arm(&d.c, &d.ctl[active].0, point, "1*return(crash)").await?;
        let load = Load::start(&d.replicas[&leader].url, &format!("k{i}"), 8, 100);
        load.wait_acked(100, point).await?;
        d.replicas.get_mut(&leader).expect("leader").proc.kill9();
        let who = format!("the active controller c{}", active + 1);
        expect_crash(&mut d.ctl[active].1, point, &who).await?;
        let (acked, _) = load.stop().await;
        let (now_active, new_leader, new_epoch) = d.steady().await?;
        anyhow::ensure!(now_active != active && new_leader != leader);
        // The crashed controller had written epoch N+1 (or was about to); the standby carries
        // that promotion to its end instead of starting another.
        anyhow::ensure!(
            new_epoch == epoch + 1,
            "after a crash at {point} the standby promoted at epoch {new_epoch}, expected {}",
            epoch + 1
        );
        let h = d.history().await;
        let promoted = h
            .iter()
            .filter(|e| e["kind"] == "promoted" && e["epoch"].as_u64() >= Some(new_epoch))
            .count();
        anyhow::ensure!(
            promoted == 1,
            "one promotion at epoch {new_epoch}, journal:\n{}",
            journal_text(&h)
        );
        check_acked(&d.replicas[&new_leader].url, &acked, point).await?;
        all.extend(acked);
        // Bring everyone back (no faults armed) and let them converge.
        d.replicas
            .get_mut(&leader)
            .expect("old leader")
            .proc
            .restart_with(None)?;
        d.ctl[active].1.restart_with(None)?;
        let urls: Vec<&str> = d.replicas.values().map(|r| r.url.as_str()).collect();
        wait_converged(&d.c, &urls).await?;
        println!(
            "{point}: {who} crashed; the standby finished the promotion of {new_leader} at epoch {new_epoch}"
        );
    }
    // Failed etcd keepalives (DESIGN.md §5): retried on a new stream within the trusted
    // window, so nothing changes: no election, the same leader and epoch, no write pause.
    let (active, leader, epoch) = d.steady().await?;
    let load = Load::start(&d.replicas[&leader].url, "lease", 8, 100);
    load.wait_acked(100, "before the keepalive fails").await?;
    let elections = || {
        d.ctl
            .iter()
            .map(|(_, p)| p.log().matches("active controller cluster=main").count())
            .sum::<usize>()
    };
    let elected_before = elections();
    let armed_at = Instant::now();
    arm(
        &d.c,
        &d.ctl[active].0,
        "lease.before_renew",
        "3*return(error)",
    )
    .await?;
    wait_for(
        Duration::from_secs(20),
        "the failed keepalives to be retried successfully",
        || async {
            d.ctl[active]
                .1
                .log()
                .contains("etcd lease keepalive succeeded again")
                .then_some(())
        },
    )
    .await?;
    // Past the lease's TTL (2 s): had the lease been given up, another election would show.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let n = load.acked();
    load.wait_acked(n + 100, "after the keepalives failed")
        .await?;
    let (acked, times) = load.stop().await;
    let log = d.ctl[active].1.log();
    anyhow::ensure!(
        log.contains("etcd lease keepalive failed; retrying"),
        "the failed keepalive was not logged"
    );
    anyhow::ensure!(
        elections() == elected_before,
        "a retried keepalive must not change the active controller"
    );
    let gap = times
        .windows(2)
        .filter(|w| w[1] >= armed_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let (after_active, after_leader, after_epoch) = d.steady().await?;
    anyhow::ensure!(
        (after_active, after_leader.as_str(), after_epoch) == (active, leader.as_str(), epoch),
        "failed keepalives must not change the controller, leader or epoch: \
         c{}/{leader}@{epoch} -> c{}/{after_leader}@{after_epoch}",
        active + 1,
        after_active + 1
    );
    // Loose, for a loaded machine: nothing should pause at all.
    let bound = Duration::from_millis(1000);
    anyhow::ensure!(
        gap < bound,
        "writes paused {gap:?} after failed keepalives (bound {bound:?})"
    );
    check_acked(&d.replicas[&leader].url, &acked, "lease.before_renew").await?;
    all.extend(acked);
    println!("lease.before_renew: three keepalives failed and were retried; longest pause between acknowledged writes {gap:?}; same controller, leader and epoch");
    check_acked(&d.replicas[&leader].url, &all, "at the end").await?;
    for (i, (_, p)) in d.ctl.iter().enumerate() {
        no_panics(p, &format!("c{}", i + 1))?;
    }
    Ok(())
}
