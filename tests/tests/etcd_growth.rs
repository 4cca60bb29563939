//! TESTING.md fault matrix row 23 ("long idle and long busy runs: etcd size flat"): a whole
//! deployment (real etcd, two controllers, three replicas) is left idle, then kept busy with
//! client writes, and etcd's revision counter and database size are sampled through its own
//! maintenance status (the JSON gateway, `POST /v3/maintenance/status`) before and after each
//! window. Nothing in either window changes the cluster state, so etcd must make (almost) no
//! revisions: presence is kept by lease keepalives, which create none. The rates are printed
//! extrapolated to a day. The windows are measurements, not waits for a condition.
//!
//! Also: an etcd alarm (NOSPACE, raised by hand through etcd's alarm API) shows in the
//! controller's view and in `batonctl status`; and many decisions (pause/resume operations)
//! leave the journal as one key per entry, the newest 500 only, read back by `history`.
//!
//! What it does not do: a simulated day (the per-minute rate is what grows without bound, and
//! it is zero), nor fill etcd to its real quota.

use baton_controller::upkeep::{COMPACT_KEEP_REVISIONS, COMPACT_STEP_REVISIONS};
use baton_tests::client::Client;
use baton_tests::cluster::{Cluster, Opts};
use baton_tests::procs::{bin_path, wait_for};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What etcd's maintenance status says.
#[derive(Clone, Copy, Debug)]
struct EtcdStatus {
    revision: u64,
    db_size: u64,
    db_size_in_use: u64,
}

async fn etcd_status(c: &Client, url: &str) -> anyhow::Result<EtcdStatus> {
    let r = c
        .call(
            "POST",
            &format!("{url}/v3/maintenance/status"),
            &[("content-type", "application/json")],
            bytes::Bytes::from_static(b"{}"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("etcd status: {e:?}"))?;
    anyhow::ensure!(r.status == 200, "etcd status: {} {}", r.status, r.text());
    let v = r.json();
    // The gateway renders int64 fields as strings.
    let num = |x: &serde_json::Value| -> anyhow::Result<u64> {
        x.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| x.as_u64())
            .ok_or_else(|| anyhow::anyhow!("etcd status: not a number: {x} in {v}"))
    };
    Ok(EtcdStatus {
        revision: num(&v["header"]["revision"])?,
        db_size: num(&v["dbSize"])?,
        db_size_in_use: num(&v["dbSizeInUse"])?,
    })
}

/// Revisions and bytes per minute between two samples, and the same extrapolated to a day.
struct Rate {
    revs_per_min: f64,
    db_bytes_per_min: f64,
    in_use_bytes_per_min: f64,
}

fn rate(what: &str, a: EtcdStatus, b: EtcdStatus, took: Duration) -> Rate {
    let min = took.as_secs_f64() / 60.0;
    let r = Rate {
        revs_per_min: (b.revision.saturating_sub(a.revision)) as f64 / min,
        db_bytes_per_min: (b.db_size as f64 - a.db_size as f64) / min,
        in_use_bytes_per_min: (b.db_size_in_use as f64 - a.db_size_in_use as f64) / min,
    };
    println!(
        "{what} for {:.1} s: etcd revision {} -> {} ({:.1}/min, {:.0}/day), db size {} -> {} \
         ({:+.0} B/min, {:+.1} MB/day), in use {} -> {} ({:+.0} B/min, {:+.1} MB/day)",
        took.as_secs_f64(),
        a.revision,
        b.revision,
        r.revs_per_min,
        r.revs_per_min * 1440.0,
        a.db_size,
        b.db_size,
        r.db_bytes_per_min,
        r.db_bytes_per_min * 1440.0 / 1e6,
        a.db_size_in_use,
        b.db_size_in_use,
        r.in_use_bytes_per_min,
        r.in_use_bytes_per_min * 1440.0 / 1e6,
    );
    r
}

/// At most this many revisions a minute in a window where nothing is decided (a stray refusal
/// or a member count that changes once is tolerated; a put per poll is not).
const MAX_QUIET_REVS_PER_MIN: f64 = 6.0;
/// Database growth tolerated per minute over the whole quiet run (idle and busy windows
/// together): bbolt grows its file in steps of a page or more, and one 8 KiB step inside the
/// 45 s idle window alone already reads as 10.9 KB/min (seen in CI), so the bytes are judged over
/// the 65 s of both windows, where a single step stays under this bound and a steady leak of
/// more than one step does not.
const MAX_QUIET_BYTES_PER_MIN: f64 = 8192.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_busy_cluster_keep_etcd_flat() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cl = Cluster::start(tmp.path(), Opts::default()).await?;
    let c = Client::new(Duration::from_secs(5));
    let etcd = cl.etcd.url.clone();
    // Settled: steady, the sync set filled, no member being added, every member heard.
    wait_for(Duration::from_secs(30), "a settled cluster", || async {
        let (_, v) = cl.active_view().await?;
        let settled = v["phase"] == "steady"
            && v["sync_set"].as_array().is_some_and(|s| !s.is_empty())
            && v["adding"].is_null()
            && v["members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["health"] == "ok"));
        settled.then_some(())
    })
    .await?;

    // Idle: nothing happens but heartbeats and lease keepalives.
    let t0 = Instant::now();
    let s0 = etcd_status(&c, &etcd).await?;
    tokio::time::sleep(Duration::from_secs(45)).await;
    let s1 = etcd_status(&c, &etcd).await?;
    let idle = rate("idle", s0, s1, t0.elapsed());

    // Busy: client writes on the leader for a while (the data path does not touch etcd).
    let leader = cl.wait_writable(Duration::from_secs(10)).await?;
    let url = cl.url(&leader);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (c, url, stop, acked) = (c.clone(), url.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if matches!(c.put(&url, &format!("k{w}-{}", i % 1000), "v").await, Ok(r) if r.status == 200)
                    {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let t1 = Instant::now();
    let s1 = etcd_status(&c, &etcd).await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let s2 = etcd_status(&c, &etcd).await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let busy = rate("busy", s1, s2, t1.elapsed());
    let quiet = rate("idle and busy", s0, s2, t0.elapsed());
    let writes = acked.load(Ordering::Relaxed);
    println!("busy: {writes} writes acknowledged");

    let text = format!(
        "idle {:.1} revisions/min, busy {:.1} revisions/min (at most {MAX_QUIET_REVS_PER_MIN}); \
         db over both windows {:+.0} B/min, in use {:+.0} B/min (at most {MAX_QUIET_BYTES_PER_MIN})",
        idle.revs_per_min, busy.revs_per_min, quiet.db_bytes_per_min, quiet.in_use_bytes_per_min
    );
    anyhow::ensure!(writes > 0, "no write was acknowledged in the busy window");
    anyhow::ensure!(
        idle.revs_per_min <= MAX_QUIET_REVS_PER_MIN && busy.revs_per_min <= MAX_QUIET_REVS_PER_MIN,
        "etcd makes revisions while nothing changes: {text}"
    );
    anyhow::ensure!(
        quiet.db_bytes_per_min.max(quiet.in_use_bytes_per_min) <= MAX_QUIET_BYTES_PER_MIN,
        "etcd's database grows while nothing changes: {text}"
    );
    println!("{text}");

    // An alarm raised in etcd shows in the view and in `batonctl status`, and goes away again.
    let member = etcd_member_id(&c, &etcd).await?;
    etcd_alarm(&c, &etcd, "ACTIVATE", &member).await?;
    let seen = wait_for(
        Duration::from_secs(20),
        "the controller to see the alarm",
        || async {
            let (_, v) = cl.active_view().await?;
            let alarms = v["etcd"]["alarms"].as_array()?.clone();
            alarms
                .iter()
                .any(|a| a.as_str().is_some_and(|a| a.starts_with("NOSPACE")))
                .then_some(())
        },
    )
    .await;
    let out = std::process::Command::new(bin_path("batonctl")?)
        .args(baton_tests::secure::batonctl_args())
        .args(["--controller", &cl.controllers[0].url, "status"])
        .output()?;
    etcd_alarm(&c, &etcd, "DEACTIVATE", &member).await?;
    seen?;
    let status = String::from_utf8_lossy(&out.stdout);
    println!("batonctl status under the alarm:\n{status}");
    anyhow::ensure!(
        status.contains("etcd ALARM NOSPACE"),
        "batonctl status does not name the alarm:\n{status}"
    );
    wait_for(
        Duration::from_secs(20),
        "the alarm to clear in the view",
        || async {
            let (_, v) = cl.active_view().await?;
            v["etcd"]["alarms"].as_array()?.is_empty().then_some(())
        },
    )
    .await?;
    Ok(())
}

/// Many decisions: each is one transaction (one revision) that adds one key; the journal keeps
/// the newest 500 as keys, which `history` reads back newest last; and once there are more than
/// 1000 revisions of history the active controller compacts it, again every 100 more, however
/// recently it last did (the harness's etcd compacts on its own only every 5 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_is_one_key_per_entry_and_keeps_the_newest_500() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cl = Cluster::start(tmp.path(), Opts::default()).await?;
    let c = Client::new(Duration::from_secs(5));
    let etcd = cl.etcd.url.clone();
    let before = cl.history().await.len();
    let s0 = etcd_status(&c, &etcd).await?;
    let n = 1100;
    for i in 0..n {
        let op = if i % 2 == 0 { "pause" } else { "resume" };
        let r = cl
            .op(op, serde_json::json!({}), Duration::from_secs(10))
            .await?;
        anyhow::ensure!(r.status == 200, "{op}: {} {}", r.status, r.text());
    }
    let s1 = etcd_status(&c, &etcd).await?;
    let keys = etcd_count(&c, &etcd, "/baton/main/journal/").await?;
    let h = cl.history().await;
    let kinds: Vec<&str> = h.iter().filter_map(|e| e["kind"].as_str()).collect();
    println!(
        "{n} operations after {before} entries: {} revisions, {keys} journal keys, history of {}, \
         db size {} -> {}",
        s1.revision - s0.revision,
        h.len(),
        s0.db_size,
        s1.db_size
    );
    anyhow::ensure!(
        keys == 500,
        "the journal holds {keys} keys, not the newest 500"
    );
    anyhow::ensure!(h.len() == 500, "history?limit=500 gave {} entries", h.len());
    anyhow::ensure!(
        kinds.last() == Some(&"resume") && kinds[kinds.len() - 2] == "pause",
        "the newest entries come last: {:?}",
        &kinds[kinds.len() - 4..]
    );
    // One transaction per decision, and nothing else meanwhile (a few for stray refusals).
    let revs = s1.revision - s0.revision;
    anyhow::ensure!(
        (n as u64..=n as u64 + 10).contains(&revs),
        "{revs} revisions for {n} decisions"
    );
    // The controller keeps 1000 revisions and compacts once 100 more have piled up, so within
    // an upkeep tick or two of the last decision at most 1100 revisions of history are left.
    let bound = COMPACT_KEEP_REVISIONS + COMPACT_STEP_REVISIONS;
    let to = wait_for(
        Duration::from_secs(30),
        "the controller to compact etcd",
        || async {
            let (_, v) = cl.active_view().await?;
            v["etcd"]["compacted_to"]
                .as_u64()
                .filter(|t| *t > 2 && t + bound >= s1.revision)
        },
    )
    .await?;
    // Reading below the compacted revision fails in etcd itself.
    let body = serde_json::json!({ "key": base64(b"/baton/main/state"), "revision": "2" });
    let r = c
        .call(
            "POST",
            &format!("{etcd}/v3/kv/range"),
            &[("content-type", "application/json")],
            bytes::Bytes::from(body.to_string()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("etcd range: {e:?}"))?;
    println!(
        "compacted to {to} (of {}); a read at revision 2: {} {}",
        s1.revision,
        r.status,
        r.text()
    );
    anyhow::ensure!(
        r.text().contains("compacted"),
        "etcd's history is compacted to {to} (of {}), but a read at revision 2 gave {}",
        s1.revision,
        r.text()
    );
    Ok(())
}

/// etcd's member id (as the gateway renders it: a decimal string).
async fn etcd_member_id(c: &Client, url: &str) -> anyhow::Result<String> {
    let r = c
        .call(
            "POST",
            &format!("{url}/v3/maintenance/status"),
            &[("content-type", "application/json")],
            bytes::Bytes::from_static(b"{}"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("etcd status: {e:?}"))?;
    r.json()["header"]["member_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("etcd status without a member id: {}", r.text()))
}

/// Raises (`ACTIVATE`) or clears (`DEACTIVATE`) a NOSPACE alarm on `member`.
async fn etcd_alarm(c: &Client, url: &str, action: &str, member: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({ "action": action, "memberID": member, "alarm": "NOSPACE" });
    let r = c
        .call(
            "POST",
            &format!("{url}/v3/maintenance/alarm"),
            &[("content-type", "application/json")],
            bytes::Bytes::from(body.to_string()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("etcd alarm {action}: {e:?}"))?;
    anyhow::ensure!(
        r.status == 200,
        "etcd alarm {action}: {} {}",
        r.status,
        r.text()
    );
    Ok(())
}

/// How many keys start with `prefix`.
async fn etcd_count(c: &Client, url: &str, prefix: &str) -> anyhow::Result<u64> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(b) = end.last_mut() {
        *b += 1;
    }
    let body = serde_json::json!({
        "key": base64(prefix.as_bytes()), "range_end": base64(&end), "count_only": true,
    });
    let r = c
        .call(
            "POST",
            &format!("{url}/v3/kv/range"),
            &[("content-type", "application/json")],
            bytes::Bytes::from(body.to_string()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("etcd range: {e:?}"))?;
    let v = r.json();
    Ok(v["count"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

/// Standard base64 with padding (the gateway's encoding of keys).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
