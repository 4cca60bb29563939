//! End-to-end through `baton-proxy`: etcd, two controllers, three replicas and the proxy as real
//! processes, clients talking only to the proxy.
//!
//! - The client API works through the proxy (writes, reads, compare-and-set, delete, `any`
//!   reads, the replica's headers passed on), and the proxy reports what it knows.
//! - A leader killed with SIGKILL under load: every acknowledged write is readable afterwards,
//!   and the only errors clients see are `504 outcome_unknown` for requests in flight at the
//!   kill — never a `503 not_leader` (the proxy holds those and re-sends them to the new leader).
//!   Prints the client-visible failover window.
//! - A rolling restart (switchover away from the leader, wait until the proxy follows the new
//!   leader, SIGTERM, restart, catch up; for every replica) under load through the proxy fails
//!   no write. (The wait works around a replica shutdown race; see `restart_each`.)
//! - A bad config exits 2 naming file and key; SIGTERM stops the proxy with exit 0.
//!
//! Waits are bounded by deadlines; the holding time is raised above the default
//! (`failover_buffer_ms = 10000`) so that a slow failover on a loaded machine is not mistaken
//! for a leak: what these tests check is which answers clients get, not how fast (that is the
//! benchmark's job).

use baton_tests::client::{assert_all_readable, CallError, Client};
use baton_tests::cluster::{Cluster, Opts};
use baton_tests::procs::{bin_path, wait_for};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn opts() -> Opts {
    Opts {
        proxy: true,
        proxy_toml: "[timing]\nfailover_buffer_ms = 10000\n".into(),
        ..Opts::default()
    }
}

fn e(err: CallError) -> anyhow::Error {
    anyhow::anyhow!("{err:?}")
}

/// Prints every process's log tail when a test fails.
struct DumpOnFailure<'a> {
    cl: &'a Cluster,
    passed: bool,
}

impl Drop for DumpOnFailure<'_> {
    fn drop(&mut self) {
        if !self.passed {
            eprintln!("{}", self.cl.dump());
        }
    }
}

// ----- writers through the proxy ---------------------------------------------------------------

/// One write that was not acknowledged: when it was sent and what came back.
#[derive(Clone, Debug)]
struct Failed {
    writer: usize,
    sent: Instant,
    status: Option<u16>,
    code: String,
    text: String,
}

#[derive(Clone, Default)]
struct Outcomes {
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    times: Arc<Mutex<Vec<Instant>>>,
    failed: Arc<Mutex<Vec<Failed>>>,
}

struct Load {
    stop: Arc<AtomicBool>,
    out: Outcomes,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a stopped [`Load`] recorded; `times` sorted.
struct Recorded {
    acked: BTreeMap<String, String>,
    times: Vec<Instant>,
    failed: Vec<Failed>,
}

impl Load {
    /// `n` writers, each writing unique keys and values through the proxy one at a time. Every
    /// reply other than 200 is recorded as failed; nothing is retried by the client.
    fn start(proxy: &str, n: usize, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let out = Outcomes::default();
        let tasks = (0..n)
            .map(|t| {
                let (stop, out, proxy, tag) = (
                    stop.clone(),
                    out.clone(),
                    proxy.to_string(),
                    tag.to_string(),
                );
                tokio::spawn(async move {
                    // Longer than the proxy's holding time plus its request timeout.
                    let c = Client::new(Duration::from_secs(30));
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (k, v) = (format!("{tag}{t}-{i}"), format!("v{tag}{t}-{i}"));
                        i += 1;
                        let sent = Instant::now();
                        match c.put(&proxy, &k, v.clone()).await {
                            Ok(r) if r.status == 200 => {
                                let now = Instant::now();
                                out.acked.lock().expect("lock").insert(k, v);
                                out.times.lock().expect("lock").push(now);
                            }
                            other => {
                                let f = match other {
                                    Ok(r) => Failed {
                                        writer: t,
                                        sent,
                                        status: Some(r.status),
                                        code: r.json()["error"]
                                            .as_str()
                                            .unwrap_or_default()
                                            .to_string(),
                                        text: r.text(),
                                    },
                                    Err(e) => Failed {
                                        writer: t,
                                        sent,
                                        status: None,
                                        code: "no_reply".into(),
                                        text: format!("{e:?}"),
                                    },
                                };
                                out.failed.lock().expect("lock").push(f);
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, out, tasks }
    }

    fn acked(&self) -> usize {
        self.out.acked.lock().expect("lock").len()
    }

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

    async fn stop(self) -> anyhow::Result<Recorded> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await?;
        }
        let mut times = self.out.times.lock().expect("lock").clone();
        times.sort();
        Ok(Recorded {
            acked: self.out.acked.lock().expect("lock").clone(),
            times,
            failed: self.out.failed.lock().expect("lock").clone(),
        })
    }
}

/// The longest time between two consecutive acknowledgements where the later one came at or
/// after `from`.
fn longest_gap(sorted: &[Instant], from: Instant) -> Duration {
    sorted
        .windows(2)
        .filter(|w| w[1] >= from)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
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

// ----- 1: the client API through the proxy ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_and_reads_go_through_the_proxy() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cl = Cluster::start(tmp.path(), opts()).await?;
    let mut guard = DumpOnFailure {
        cl: &cl,
        passed: false,
    };
    let p = cl.proxy_url();
    let c = &cl.client;

    let r = c.put(&p, "greeting", "hello").await.map_err(e)?;
    assert_eq!(r.status, 200, "{}", r.text());
    let w = r.json();
    let version = w["version"].as_str().expect("a version").to_string();
    let epoch = w["epoch"].as_u64().expect("an epoch");

    let r = c.get(&p, "greeting").await.map_err(e)?;
    assert_eq!((r.status, r.text()), (200, "hello".to_string()));
    // The replica's headers are passed on.
    assert_eq!(r.header("baton-version"), Some(version.clone()));
    assert!(r.header("baton-lsn").is_some(), "{:?}", r.headers);
    assert_eq!(r.header("baton-epoch"), Some(epoch.to_string()));

    // Compare-and-set: a stale version is refused (412 passed on), the current one applies.
    let url = format!("{p}/v1/kv/greeting");
    let r = c
        .call("PUT", &url, &[("if-match", "0")], "again".into())
        .await
        .map_err(e)?;
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(r.json()["error"], "precondition_failed");
    let r = c
        .call("PUT", &url, &[("if-match", &version)], "world".into())
        .await
        .map_err(e)?;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.get(&p, "greeting").await.map_err(e)?;
    assert_eq!(r.text(), "world");

    // Any member may answer an `any` read; every one of them gets the write eventually.
    for i in 0..6 {
        wait_for(
            Duration::from_secs(10),
            "an `any` read through the proxy to see the write",
            || async {
                let r = c
                    .call(
                        "GET",
                        &format!("{url}?consistency=any"),
                        &[],
                        bytes::Bytes::new(),
                    )
                    .await
                    .ok()?;
                (r.status == 200 && r.text() == "world").then_some(())
            },
        )
        .await
        .map_err(|err| anyhow::anyhow!("read {i}: {err}"))?;
    }

    let r = c
        .call("DELETE", &url, &[], bytes::Bytes::new())
        .await
        .map_err(e)?;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.get(&p, "greeting").await.map_err(e)?;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"], "not_found");

    // The proxy's own limits and status.
    let r = c.put(&p, &"k".repeat(1025), "x").await.map_err(e)?;
    assert_eq!(r.status, 413, "{}", r.text());
    // A controller that started after the proxy is asked again within a second.
    let st = wait_for(
        Duration::from_secs(10),
        "the proxy to reach both controllers",
        || async {
            let st = c.status(&p).await.ok()?;
            (st["controllers_reachable"] == 2).then_some(st)
        },
    )
    .await?;
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    assert_eq!(st["leader"]["id"], v["leader"]["id"], "{st}\n{v}");
    assert_eq!(st["epoch"], v["epoch"], "{st}\n{v}");
    assert_eq!(st["buffered"], 0, "{st}");
    assert_eq!(st["members"].as_array().map(Vec::len), Some(3), "{st}");
    let m = c
        .call("GET", &format!("{p}/metrics"), &[], bytes::Bytes::new())
        .await
        .map_err(e)?;
    assert!(
        m.text()
            .contains("baton_proxy_requests_total{result=\"ok\"}"),
        "{}",
        m.text()
    );
    guard.passed = true;
    Ok(())
}

// ----- 2: the leader killed under load -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_leader_behind_the_proxy_leaks_no_503_and_loses_no_acknowledged_write(
) -> anyhow::Result<()> {
    const WRITERS: usize = 8;
    let tmp = tempfile::tempdir()?;
    let mut cl = Cluster::start(tmp.path(), opts()).await?;
    let p = cl.proxy_url();
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    let first = v["leader"]["id"].as_str().expect("a leader").to_string();
    let epoch = v["epoch"].as_u64().expect("an epoch");
    let load = Load::start(&p, WRITERS, "k");
    let res = load
        .wait_acked(300, Duration::from_secs(30), "before the kill")
        .await;
    if res.is_err() {
        eprintln!("{}", cl.dump());
    }
    res?;

    let killed_at = Instant::now();
    cl.replicas.get_mut(&first).expect("leader").kill9();
    let before = load.acked();
    let res = load
        .wait_acked(before + 300, Duration::from_secs(30), "after the kill")
        .await;
    if res.is_err() {
        eprintln!("{}", cl.dump());
    }
    res?;
    let rec = load.stop().await?;
    let mut guard = DumpOnFailure {
        cl: &cl,
        passed: false,
    };
    let window = longest_gap(&rec.times, killed_at);
    let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
    let second = v["leader"]["id"].as_str().unwrap_or("?").to_string();
    let unknown = rec
        .failed
        .iter()
        .filter(|f| f.status == Some(504) && f.code == "outcome_unknown")
        .count();
    println!(
        "leader {first} (epoch {epoch}) killed; {second} leads at epoch {}; client-visible \
         failover window through the proxy (longest gap between acknowledged writes) {window:?}; \
         {} writes acknowledged, {unknown} answered 504 outcome_unknown (in flight at the kill)",
        v["epoch"],
        rec.acked.len()
    );
    for f in &rec.failed {
        println!(
            "  failed: sent {:?} after the kill: {:?} {}",
            f.sent.checked_duration_since(killed_at),
            f.status,
            f.text
        );
    }
    let leaked_503: Vec<&Failed> = rec
        .failed
        .iter()
        .filter(|f| f.status == Some(503))
        .collect();
    assert!(
        leaked_503.is_empty(),
        "503s leaked through the proxy: {leaked_503:#?}"
    );
    // Only requests that may have reached the killed leader have an unknown outcome: each
    // names it, and each writer (one request at a time) has at most one — the one in flight at
    // the kill, or sent on a pooled connection to it before the proxy saw any connection fail.
    let killed_url = cl.url(&first);
    let other: Vec<&Failed> = rec
        .failed
        .iter()
        .filter(|f| {
            !(f.status == Some(504) && f.code == "outcome_unknown" && f.text.contains(&killed_url))
        })
        .collect();
    assert!(
        other.is_empty(),
        "errors other than 504 outcome_unknown from the killed leader {killed_url}: {other:#?}"
    );
    for w in 0..WRITERS {
        let n = rec.failed.iter().filter(|f| f.writer == w).count();
        assert!(
            n <= 1,
            "writer {w} got {n} outcome_unknown answers; only one request of it was in flight"
        );
    }
    assert_ne!(second, first, "another replica leads");

    assert_all_readable(&p, &rec.acked).await?;
    let st = cl.client.status(&p).await.map_err(e)?;
    assert_eq!(st["leader"]["id"], v["leader"]["id"], "{st}");
    assert!(st["leader_changes"].as_u64() >= Some(1), "{st}");
    assert!(st["epoch"].as_u64() > Some(epoch), "{st}");
    // The old leader comes back and rejoins as a follower of the new one, caught up.
    guard.passed = true;
    drop(guard);
    cl.replicas.get_mut(&first).expect("old leader").restart()?;
    let old = cl.url(&first);
    wait_for(
        Duration::from_secs(30),
        "the old leader to rejoin as a follower",
        || async {
            let st = cl.client.status(&old).await.ok()?;
            (st["role"] == "follower" && st["upstream"]["records_behind"].as_u64() == Some(0))
                .then_some(())
        },
    )
    .await?;
    Ok(())
}

// ----- 3: a rolling restart under load fails no write ----------------------------------------

/// Waits until `id` follows and has flushed what the leader had committed when it was started.
async fn caught_up(cl: &Cluster, id: &str, leader: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let target = wait_for(
        Duration::from_secs(20),
        "the leader's commit LSN",
        || async {
            let st = cl.client.status(&cl.url(leader)).await.ok()?;
            st["commit_lsn"].as_u64()
        },
    )
    .await?;
    wait_for(
        Duration::from_secs(60),
        &format!("{id} to follow and reach LSN {target}"),
        || async {
            let st = cl.client.status(&cl.url(id)).await.ok()?;
            let ok = st["role"] == "follower" && st["flushed_lsn"].as_u64()? >= target;
            ok.then_some(())
        },
    )
    .await?;
    // ...and the controller hears it again (a switchover to it needs that).
    wait_for(
        Duration::from_secs(20),
        &format!("the controller to hear {id}"),
        || async {
            let (_, v) = cl.active_view().await?;
            let m = v["members"].as_array()?.iter().find(|m| m["id"] == id)?;
            (m["health"] == "ok").then_some(())
        },
    )
    .await?;
    Ok(t0.elapsed())
}

/// For every replica in turn: switch over away from it if it leads, SIGTERM it, restart it and
/// wait until it has caught up and writes flow again. Returns a line per replica.
async fn restart_each(cl: &mut Cluster, load: &Load) -> anyhow::Result<Vec<String>> {
    let ids: Vec<String> = cl.replicas.keys().cloned().collect();
    let mut steps = Vec::new();
    for id in &ids {
        let step = Instant::now();
        let (_, v) = cl.wait_active_view(Duration::from_secs(10)).await?;
        let mut leader = v["leader"]["id"].as_str().unwrap_or_default().to_string();
        if leader == *id {
            // Switch over to a sync member the controller hears (only those are eligible).
            let to = wait_for(
                Duration::from_secs(20),
                "a sync member to switch over to",
                || async {
                    let (_, v) = cl.active_view().await?;
                    v["sync_set"].as_array()?.iter().find_map(|s| {
                        let sid = s["id"].as_str()?;
                        let heard = v["members"]
                            .as_array()?
                            .iter()
                            .any(|m| m["id"] == sid && m["health"] == "ok");
                        (sid != id && heard).then(|| sid.to_string())
                    })
                },
            )
            .await?;
            let r = cl
                .op(
                    "switchover",
                    serde_json::json!({ "to": to }),
                    Duration::from_secs(10),
                )
                .await?;
            anyhow::ensure!(r.status == 200, "switchover to {to}: {}", r.text());
            wait_for(
                Duration::from_secs(20),
                &format!("the switchover to {to} to complete"),
                || async {
                    let (_, v) = cl.active_view().await?;
                    let done =
                        v["phase"] == "steady" && v["op"].is_null() && v["leader"]["id"] == *to;
                    done.then_some(())
                },
            )
            .await?;
            // Stop the old leader only once the proxy follows the new one. Without this wait a
            // request the proxy re-sends to the old leader (which refuses writes since the
            // switchover began) can meet the old leader's SIGTERM: the replica closes its idle
            // keep-alive connections at once, also one carrying that request unread, and the
            // proxy must answer 504 (it cannot tell). A replica-side fix (serve 503 with
            // `Connection: close` for a moment before closing) would make this wait unneeded.
            let proxy = cl.proxy_url();
            wait_for(
                Duration::from_secs(20),
                &format!("the proxy to follow {to}"),
                || async {
                    let st = cl.client.status(&proxy).await.ok()?;
                    (st["leader"]["id"] == *to).then_some(())
                },
            )
            .await?;
            leader = to;
        }
        let r = cl.replicas.get_mut(id).expect("replica");
        let status = r.term(Duration::from_secs(15));
        anyhow::ensure!(
            status.is_some_and(|s| s.success()),
            "{id} did not stop cleanly on SIGTERM: {status:?}"
        );
        r.restart()?;
        let catch_up = caught_up(cl, id, &leader).await?;
        let before = load.acked();
        load.wait_acked(
            before + 100,
            Duration::from_secs(30),
            &format!("after restarting {id}"),
        )
        .await?;
        steps.push(format!(
            "{id} (leader afterwards {leader}): {:?} in all, caught up {catch_up:?} after its \
             restart",
            step.elapsed()
        ));
    }
    Ok(steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_behind_the_proxy_fails_no_write() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cl = Cluster::start(tmp.path(), opts()).await?;
    let p = cl.proxy_url();
    let load = Load::start(&p, 4, "k");
    let started = Instant::now();
    let res = match load
        .wait_acked(200, Duration::from_secs(30), "before the restarts")
        .await
    {
        Ok(()) => restart_each(&mut cl, &load).await,
        Err(e) => Err(e),
    };
    let rec = load.stop().await?;
    let mut guard = DumpOnFailure {
        cl: &cl,
        passed: false,
    };
    let steps = res?;
    println!(
        "rolling restart of {:?} through the proxy: {} writes acknowledged, {} failed; longest \
         gap between acknowledged writes {:?}",
        cl.replicas.keys().collect::<Vec<_>>(),
        rec.acked.len(),
        rec.failed.len(),
        longest_gap(&rec.times, started)
    );
    for s in &steps {
        println!("  {s}");
    }
    for f in &rec.failed {
        println!(
            "  failed: sent {:?} after the start: {:?} {}",
            f.sent.checked_duration_since(started),
            f.status,
            f.text
        );
    }
    assert!(
        rec.failed.is_empty(),
        "{} writes failed at the proxy during the rolling restart; first: {:#?}",
        rec.failed.len(),
        &rec.failed[..rec.failed.len().min(5)]
    );
    assert_all_readable(&p, &rec.acked).await?;
    converged(&cl).await?;
    guard.passed = true;
    Ok(())
}

// ----- the process: config errors and signals ------------------------------------------------

#[tokio::test]
async fn bad_config_exits_2_naming_file_and_key_and_sigterm_stops_cleanly() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bin = bin_path("baton-proxy")?;
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:1\"\ncontrollers = [\"http://127.0.0.1:2\"]\ninsecure = true\n[timing]\nlong_poll_ms = 5\n",
    )?;
    let out = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}: timing.long_poll_ms: ", cfg.display())),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // No controller answers: the proxy still serves its status, and stops on SIGTERM.
    let port = baton_tests::procs::free_port();
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "listen = \"127.0.0.1:{port}\"\ncontrollers = [\"{}\"]\n{}{}",
            baton_tests::secure::url(format!("127.0.0.1:{}", baton_tests::procs::free_port())),
            baton_tests::secure::top(),
            baton_tests::secure::proxy_tables("proxy"),
        ),
    )?;
    let mut d = baton_tests::procs::Daemon::start(
        "proxy",
        bin,
        vec!["--config".into(), good.into()],
        tmp.path().join("proxy.log"),
    )?;
    let c = Client::new(Duration::from_secs(2));
    let url = baton_tests::secure::url(format!("127.0.0.1:{port}"));
    let st = wait_for(Duration::from_secs(10), "the proxy to serve", || async {
        c.status(&url).await.ok()
    })
    .await?;
    assert_eq!(st["leader"], serde_json::Value::Null, "{st}");
    assert_eq!(st["controllers_reachable"], 0, "{st}");
    let status = d.term(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        d.log()
    );
    Ok(())
}
