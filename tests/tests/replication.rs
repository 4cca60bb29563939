//! Multi-process tests of log shipping: three `baton-replica` processes driven by the
//! stand-in controller. Followers catch up and converge (equal state digests); a follower
//! killed under load catches up after restart; in semi-sync mode no acknowledged write is
//! missing from the sync follower; an old leader holding unreplicated records is truncated when
//! leadership moves, with exactly those records in its rollback file; a wiped replica rebuilds
//! from the leader's snapshot; a follower far behind reports its catch-up (rate, ETA) while it
//! lasts.

use baton_replica::wal::Record;
use baton_tests::client::Client;
use baton_tests::procs::{wait_for, ReplicaProc, ReplicaSpec};
use baton_tests::standin::Standin;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Cluster {
    standin: Standin,
    nodes: BTreeMap<String, ReplicaProc>,
    c: Client,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    async fn start(extra_toml: &str) -> anyhow::Result<Cluster> {
        let tmp = tempfile::tempdir()?;
        let standin = Standin::start("r1").await?;
        let mut nodes = BTreeMap::new();
        for id in ["r1", "r2", "r3"] {
            let mut spec = ReplicaSpec::new(id, tmp.path(), std::slice::from_ref(&standin.url));
            spec.extra_toml = extra_toml.to_string();
            nodes.insert(id.to_string(), ReplicaProc::start(spec)?);
        }
        let c = Client::new(Duration::from_secs(10));
        let cl = Cluster {
            standin,
            nodes,
            c,
            _tmp: tmp,
        };
        cl.wait_writable("r1").await?;
        Ok(cl)
    }

    fn url(&self, id: &str) -> String {
        self.nodes[id].url.clone()
    }

    async fn wait_writable(&self, id: &str) -> anyhow::Result<()> {
        let url = self.url(id);
        let res = wait_for(
            Duration::from_secs(30),
            &format!("{id} to accept writes"),
            || async {
                matches!(self.c.put(&url, "probe", "x").await, Ok(r) if r.status == 200)
                    .then_some(())
            },
        )
        .await;
        if res.is_err() {
            self.dump().await;
        }
        res
    }

    /// Prints every replica's status and log tail (for a failing test's output).
    async fn dump(&self) {
        for (id, n) in &self.nodes {
            eprintln!("=== {id} status: {:?}", self.status(id).await);
            let log = n.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "=== {id} log (last 40 lines):\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }

    async fn status(&self, id: &str) -> Option<serde_json::Value> {
        self.c.status(&self.url(id)).await.ok()
    }

    /// Waits until every listed replica reports the same applied LSN and digest.
    async fn wait_converged(&self, ids: &[&str]) -> anyhow::Result<(u64, String)> {
        wait_for(
            Duration::from_secs(60),
            &format!("{ids:?} to converge"),
            || async {
                let mut seen = BTreeSet::new();
                for id in ids {
                    let st = self.status(id).await?;
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
}

fn rollback_records(dir: &Path) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files
        .into_iter()
        .filter(|f| f.extension().is_some_and(|x| x == "rollback"))
    {
        let data = std::fs::read(&f)?;
        let mut off = 0;
        while off < data.len() {
            let (r, n) = Record::decode(&data[off..])
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            out.push(r);
            off += n;
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_replicate_and_converge() -> anyhow::Result<()> {
    let cl = Cluster::start("").await?;
    for i in 0..300 {
        let r =
            cl.c.put(&cl.url("r1"), &format!("k{i}"), format!("v{i}"))
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (applied, _) = cl.wait_converged(&["r1", "r2", "r3"]).await?;
    assert!(applied >= 301);
    for id in ["r2", "r3"] {
        let st = cl.status(id).await.expect("status");
        assert_eq!(st["role"], "follower");
        assert_eq!(st["unclean"], false, "{id} caught up, so it is clean");
        let r =
            cl.c.get(&cl.url(id), "k299?consistency=any")
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(r.text(), "v299");
        let r =
            cl.c.get(&cl.url(id), "k1")
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(r.status, 503, "a follower refuses leader reads");
        let r =
            cl.c.put(&cl.url(id), "x", "y")
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(r.status, 503, "a follower refuses writes");
        assert_eq!(r.json()["leader"]["id"], "r1");
    }
    let leader = cl.status("r1").await.expect("status");
    assert_eq!(
        leader["waiting"].as_array().map(Vec::len),
        Some(2),
        "{leader}"
    );
    assert_eq!(leader["degraded"], false);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_follower_catches_up_and_sync_follower_has_every_acknowledged_write(
) -> anyhow::Result<()> {
    let mut cl = Cluster::start("").await?;
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (c, url, acked, stop) = (cl.c.clone(), cl.url("r1"), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 50_000 {
                let (k, v) = (format!("t{t}-{i}"), format!("val-{t}-{i}"));
                if let Ok(r) = c.put(&url, &k, v.clone()).await {
                    if r.status == 200 {
                        acked.lock().expect("lock").insert(k, v);
                    }
                }
                i += 1;
            }
        }));
    }
    let count = |n| {
        let acked = acked.clone();
        async move { (acked.lock().expect("lock").len() >= n).then_some(()) }
    };
    wait_for(Duration::from_secs(30), "500 writes", || count(500)).await?;
    cl.nodes.get_mut("r2").expect("r2").kill9();
    wait_for(Duration::from_secs(30), "1500 writes with r2 down", || {
        count(1500)
    })
    .await?;
    cl.nodes.get_mut("r2").expect("r2").restart()?;
    wait_for(
        Duration::from_secs(30),
        "2500 writes after r2 is back",
        || count(2500),
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    cl.wait_converged(&["r1", "r2", "r3"]).await?;
    // r3 stayed in the waited set throughout: kill the leader and promote r3 by hand; every
    // acknowledged write must be there.
    cl.nodes.get_mut("r1").expect("r1").kill9();
    cl.standin.set_leader("r3");
    cl.wait_writable("r3").await?;
    let acked = acked.lock().expect("lock").clone();
    for (k, v) in &acked {
        let r =
            cl.c.get(&cl.url("r3"), k)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(
            r.status, 200,
            "acknowledged {k} missing on the sync follower"
        );
        assert_eq!(&r.text(), v);
    }
    Ok(())
}

/// Restarts r2 3000 records (~96 MB) behind r1 (with `extra_toml` in every config) and returns
/// every catch-up report r2's status showed until it had caught up; checks that it logged the
/// end, converged, and shows no report afterwards.
async fn catch_up_reports(extra_toml: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut cl = Cluster::start(extra_toml).await?;
    cl.nodes.get_mut("r2").expect("r2").kill9();
    let value = "v".repeat(32 * 1024);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (c, url, value) = (cl.c.clone(), cl.url("r1"), value.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..188 {
                let r = c.put(&url, &format!("big-{t}-{i}"), value.clone()).await;
                anyhow::ensure!(
                    matches!(&r, Ok(r) if r.status == 200),
                    "write failed: {r:?}"
                );
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    cl.nodes.get_mut("r2").expect("r2").restart()?;
    // Poll r2's status until it has caught up, keeping every catch-up report seen.
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let end = cl
        .status("r1")
        .await
        .and_then(|s| s["log_end_lsn"].as_u64());
    loop {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "r2 did not catch up within 60 s; reports seen: {seen:?}"
        );
        if let Some(st) = cl.status("r2").await {
            if let Some(c) = st.get("catchup").filter(|c| c.is_object()) {
                seen.push(c.clone());
            } else if !seen.is_empty() && st["flushed_lsn"].as_u64() >= end {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{} catch-up reports; first {}; last {}",
        seen.len(),
        seen[0],
        seen[seen.len() - 1]
    );
    wait_for(
        Duration::from_secs(10),
        "r2 to log that it caught up",
        || async {
            let log = cl.nodes["r2"].log();
            (log.contains("caught up with the leader")
                || log.contains("installed a snapshot from the leader"))
            .then_some(())
        },
    )
    .await?;
    cl.wait_converged(&["r1", "r2", "r3"]).await?;
    assert!(cl
        .status("r2")
        .await
        .is_some_and(|s| s.get("catchup").is_none()));
    Ok(seen)
}

/// A follower far behind the leader's log shows its catch-up (records and bytes left, and once
/// a second has passed a rate and an ETA) in its status while it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_far_behind_reports_its_log_catch_up_while_it_lasts() -> anyhow::Result<()> {
    // No snapshot: the whole catch-up comes from the leader's log.
    let seen = catch_up_reports("[storage]\nsnapshot_log_bytes = 4294967296\n").await?;
    assert!(seen.iter().all(|c| c["what"] == "log"), "{seen:?}");
    assert!(
        seen[0]["records_remaining"].as_u64() >= Some(1000),
        "{}",
        seen[0]
    );
    assert!(
        seen[0]["bytes_remaining"].as_u64() > Some(0) || seen[0]["bytes_done"] == 0,
        "{}",
        seen[0]
    );
    let last = &seen[seen.len() - 1];
    assert!(
        last["records_remaining"].as_u64() < seen[0]["records_remaining"].as_u64(),
        "{last}"
    );
    if let Some(c) = seen.iter().find(|c| c["elapsed_ms"].as_u64() >= Some(400)) {
        assert!(
            c["records_per_s"].as_u64() > Some(0),
            "a rate after 250 ms: {c}"
        );
        assert!(c["eta_ms"].is_u64(), "an ETA with a rate: {c}");
    }
    Ok(())
}

/// A follower whose records the leader compacted away installs a snapshot and shows its
/// progress (bytes received and left of the announced size).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_installing_a_snapshot_reports_its_progress() -> anyhow::Result<()> {
    let seen = catch_up_reports("").await?;
    let snap: Vec<_> = seen.iter().filter(|c| c["what"] == "snapshot").collect();
    assert!(
        !snap.is_empty(),
        "the leader compacts; r2 installs a snapshot: {seen:?}"
    );
    let total = snap[0]["bytes_done"].as_u64().unwrap_or(0)
        + snap[0]["bytes_remaining"].as_u64().unwrap_or(0);
    assert!(
        total > 10_000_000,
        "the snapshot's announced size: {}",
        snap[0]
    );
    if let Some(c) = snap.iter().find(|c| c["elapsed_ms"].as_u64() >= Some(400)) {
        assert!(
            c["bytes_per_s"].as_u64() > Some(0),
            "a rate after 250 ms: {c}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_leader_is_truncated_and_its_unreplicated_records_archived() -> anyhow::Result<()> {
    let mut cl = Cluster::start("[timing]\nwrite_timeout_ms = 700\n").await?;
    cl.standin.with(|p| p.drop_after_ms = None);
    for i in 0..50 {
        let r =
            cl.c.put(&cl.url("r1"), &format!("ok{i}"), "v")
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(r.status, 200);
    }
    cl.wait_converged(&["r1", "r2", "r3"]).await?;
    cl.nodes.get_mut("r2").expect("r2").kill9();
    cl.nodes.get_mut("r3").expect("r3").kill9();
    // These reach r1's log but no follower: never acknowledged.
    let mut lost = BTreeSet::new();
    let mut futs = Vec::new();
    for i in 0..20 {
        let (c, url) = (cl.c.clone(), cl.url("r1"));
        futs.push(tokio::spawn(async move {
            c.put(&url, &format!("lost{i}"), "x").await
        }));
        lost.insert(format!("lost{i}"));
    }
    for f in futs {
        let r = f.await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(
            r.status,
            504,
            "an unreplicated write is outcome-unknown: {}",
            r.text()
        );
    }
    let r1_end = cl.status("r1").await.expect("status")["log_end_lsn"]
        .as_u64()
        .expect("lsn");
    cl.standin.set_leader("r2");
    cl.nodes.get_mut("r2").expect("r2").restart()?;
    cl.nodes.get_mut("r3").expect("r3").restart()?;
    cl.wait_writable("r2").await?;
    let (applied, _) = cl.wait_converged(&["r1", "r2", "r3"]).await?;
    let st = cl.status("r1").await.expect("status");
    assert_eq!(st["role"], "follower");
    let cut = &st["last_cut"];
    assert_eq!(cut["to"].as_u64(), Some(r1_end), "{st}");
    assert_eq!(cut["below_commit"], false);
    let archived = rollback_records(&cl.nodes["r1"].data_dir().join("rollback"))?;
    let keys: BTreeSet<String> = archived
        .iter()
        .filter_map(|r| match &r.op {
            baton_replica::wal::Op::Put { key, .. } => {
                Some(String::from_utf8_lossy(key).into_owned())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        keys, lost,
        "the rollback file holds exactly the unreplicated writes"
    );
    assert_eq!(archived.first().map(|r| r.lsn.0), cut["from"].as_u64());
    // The replica lists its rollback files (what `batonctl rollbacks` shows).
    let r =
        cl.c.call(
            "GET",
            &format!("{}/v1/rollbacks", cl.url("r1")),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let files = r.json();
    let last = files
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["from_lsn"].as_u64(), cut["from"].as_u64(), "{files}");
    assert_eq!(last["to_lsn"].as_u64(), cut["to"].as_u64(), "{files}");
    assert_eq!(last["epoch"].as_u64(), cut["epoch"].as_u64(), "{files}");
    for k in &lost {
        let r =
            cl.c.get(&cl.url("r2"), k)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(r.status, 404, "{k} must not survive on the new leader");
    }
    assert!(applied > 50);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_replica_rebuilds_from_the_leaders_snapshot() -> anyhow::Result<()> {
    let mut cl =
        Cluster::start("[storage]\nsegment_bytes_max = 8192\nsnapshot_log_bytes = 16384\n").await?;
    for i in 0..400 {
        let r =
            cl.c.put(
                &cl.url("r1"),
                &format!("k{i}"),
                format!("value-{i}-0123456789"),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(r.status, 200);
    }
    cl.wait_converged(&["r1", "r2", "r3"]).await?;
    let leader = cl.status("r1").await.expect("status");
    assert!(
        leader["log_start_lsn"].as_u64().unwrap_or(0) > 1,
        "the leader compacted its log: {leader}"
    );
    let r3 = cl.nodes.get_mut("r3").expect("r3");
    r3.kill9();
    std::fs::remove_dir_all(r3.data_dir())?;
    r3.restart()?;
    let (_, digest) = cl.wait_converged(&["r1", "r2", "r3"]).await?;
    let st = cl.status("r3").await.expect("status");
    assert!(
        st["snapshot_lsn"].as_u64().unwrap_or(0) > 0,
        "r3 was rebuilt from a snapshot: {st}"
    );
    assert_eq!(st["state_digest"].as_str(), Some(digest.as_str()));
    assert!(cl.nodes["r3"]
        .log()
        .contains("installed a snapshot from the leader"));
    Ok(())
}

/// The health checks of DESIGN §7, as a load balancer calls them (no credentials): live and
/// ready everywhere, leader only on the leader, replica only on a streaming follower within
/// the lag asked for; moving the leader moves the answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_checks_answer_as_a_load_balancer_needs() -> anyhow::Result<()> {
    let cl = Cluster::start("").await?;
    let lb = Client::anonymous(Duration::from_secs(5));
    let check = |id: &str, path: &str| {
        let url = format!("{}/v1/health/{path}", cl.url(id));
        let lb = lb.clone();
        async move {
            let r = lb
                .call("GET", &url, &[], bytes::Bytes::new())
                .await
                .map_err(|e| anyhow::anyhow!("{url}: {e:?}"))?;
            anyhow::Ok((r.status, r.json()))
        }
    };
    wait_for(Duration::from_secs(20), "r2 and r3 to stream", || async {
        let a = check("r2", "replica?max_lag_records=0").await.ok()?.0;
        let b = check("r3", "replica?max_lag_records=0").await.ok()?.0;
        (a == 200 && b == 200).then_some(())
    })
    .await?;
    for id in ["r1", "r2", "r3"] {
        for p in ["live", "ready"] {
            let (st, body) = check(id, p).await?;
            assert_eq!(st, 200, "{id} {p}: {body}");
        }
        let (st, body) = check(id, "leader").await?;
        assert_eq!(
            st,
            if id == "r1" { 200 } else { 503 },
            "{id} leader: {body}"
        );
        let (st, body) = check(id, "replica").await?;
        assert_eq!(
            st,
            if id == "r1" { 503 } else { 200 },
            "{id} replica: {body}"
        );
    }
    let (st, body) = check("r2", "replica?max_lag_records=x").await?;
    assert_eq!(st, 400, "{body}");
    let (st, body) = check("r2", "nothing").await?;
    assert_eq!(st, 404, "{body}");
    // Leadership moves to r2: so do the answers.
    cl.standin.set_leader("r2");
    wait_for(Duration::from_secs(20), "r2 to answer leader", || async {
        (check("r2", "leader").await.ok()?.0 == 200).then_some(())
    })
    .await?;
    wait_for(
        Duration::from_secs(20),
        "r1 to stop answering leader",
        || async { (check("r1", "leader").await.ok()?.0 == 503).then_some(()) },
    )
    .await?;
    Ok(())
}
