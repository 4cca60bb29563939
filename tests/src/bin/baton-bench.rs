//! `baton-bench`: the performance numbers behind Baton's claims, printed as tables, measured side
//! by side with etcd on the same machine and disk (a timed test would fail on a slow day; this
//! reports instead).
//!
//! `baton-bench replica` measures one replica (release build) acknowledging durable writes:
//! throughput and latency at 1/16/64 concurrent clients with 100-byte values, the same load
//! against a single-node etcd through its HTTP gateway when `etcd` is installed, and restart
//! time with a million keys (clean stop and SIGKILL).
//!
//! `baton-bench cluster` measures three replicas (leader r1, release build) driven by the
//! stand-in controller: write throughput and latency through the leader at each client count,
//! first in semi-sync mode (both followers waited), then in async mode, with the followers' lag
//! after each load.
//!
//! `baton-bench catchup` measures how fast a follower that was down catches up from the leader's
//! log (about `--gib` GiB of it), next to the disk's sequential write speed measured with `dd`.

use baton_common::directive::Mode;
use baton_tests::client::Client;
use baton_tests::procs::{free_port, wait_for, ReplicaProc, ReplicaSpec};
use baton_tests::standin::Standin;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Single-replica durable writes and restart time, next to etcd.
    Replica {
        /// Seconds per load level.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent clients per load level.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Keys loaded before measuring restart time (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        restart_keys: u64,
        /// Working directory (on the disk to measure); a temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Skip the etcd comparison.
        #[arg(long)]
        no_etcd: bool,
    },
    /// Three replicas (leader r1): writes through the leader in semi-sync, then async mode.
    Cluster {
        /// Seconds per load level.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent clients per load level.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Working directory (on the disk to measure); a temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A restarted follower catching up from the leader's log, next to the disk's speed (dd).
    Catchup {
        /// GiB of values loaded into the leader while the follower is down.
        #[arg(long, default_value_t = 1.0)]
        gib: f64,
        #[arg(long, default_value_t = 4096)]
        value_bytes: usize,
        /// Working directory (on the disk to measure); a temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Failover and switchover with the real controller and etcd: time from `kill -9` of the
    /// leader to the first acknowledged write on its successor, and the write pause of a
    /// planned switchover, over several runs.
    Failover {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Write through baton-proxy (the client-visible window) instead of to the replicas.
        #[arg(long)]
        proxy: bool,
        /// Working directory; a temporary one by default.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

struct Row {
    system: String,
    clients: usize,
    ops: u64,
    secs: f64,
    lat_us: Vec<u64>,
    errors: u64,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn print_rows(rows: &mut [Row]) {
    print_rows_as("system", rows)
}

/// The latency table, with `first` naming the first column (`system`, `mode`).
fn print_rows_as(first: &str, rows: &mut [Row]) {
    println!("| {first} | clients | writes/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        r.lat_us.sort_unstable();
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
            r.system,
            r.clients,
            r.ops as f64 / r.secs,
            pct(&r.lat_us, 0.5),
            pct(&r.lat_us, 0.99),
            pct(&r.lat_us, 1.0),
            r.errors
        );
    }
}

/// Runs `clients` loops of `op` for `secs` seconds; each op returns whether it succeeded.
async fn load<F, Fut>(system: &str, clients: usize, secs: u64, op: F) -> Row
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for t in 0..clients {
        let op = op.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut i = 0u64;
            // Bounded in time and count.
            while Instant::now() < deadline && i < 10_000_000 {
                let t0 = Instant::now();
                if op(t, i).await {
                    lat.push(t0.elapsed().as_micros() as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            lat
        }));
    }
    let mut lat_us = Vec::new();
    for t in tasks {
        lat_us.extend(t.await.unwrap_or_default());
    }
    Row {
        system: system.into(),
        clients,
        ops: lat_us.len() as u64,
        secs: start.elapsed().as_secs_f64(),
        lat_us,
        errors: errors.load(Ordering::Relaxed),
    }
}

fn value(n: usize) -> Bytes {
    Bytes::from(vec![b'x'; n])
}

async fn bench_baton(url: &str, clients: &[usize], secs: u64, vbytes: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for &n in clients {
        rows.push(put_load("baton replica", "b", url, n, secs, vbytes).await);
    }
    rows
}

/// One load level of PUTs with unique keys `{prefix}{clients}-{task}-{i}` against `url`.
async fn put_load(label: &str, prefix: &str, url: &str, n: usize, secs: u64, vbytes: usize) -> Row {
    let c = Client::new(Duration::from_secs(10));
    let url = url.to_string();
    let prefix = prefix.to_string();
    let v = value(vbytes);
    load(label, n, secs, move |t, i| {
        let (c, url, v) = (c.clone(), url.clone(), v.clone());
        let key = format!("{prefix}{n}-{t}-{i}");
        async move { matches!(c.put(&url, &key, v).await, Ok(r) if r.status == 200) }
    })
    .await
}

struct Etcd {
    child: Child,
    url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for ch in data.chunks(3) {
        let b = [ch[0], *ch.get(1).unwrap_or(&0), *ch.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= ch.len() {
                out.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn start_etcd(dir: &Path) -> anyhow::Result<Option<Etcd>> {
    let Ok(bin) = which("etcd") else {
        println!("etcd is not installed (apt install etcd-server): the etcd comparison is skipped");
        return Ok(None);
    };
    let (cport, pport) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{cport}");
    let log = std::fs::File::create(dir.join("etcd.log"))?;
    let child = Command::new(bin)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd-data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{pport}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{pport}"),
        ])
        .args([
            "--initial-cluster",
            &format!("bench=http://127.0.0.1:{pport}"),
        ])
        .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let e = Etcd { child, url };
    let c = Client::new(Duration::from_secs(2));
    let put = etcd_put_body(b"probe", b"x");
    wait_for(Duration::from_secs(20), "etcd to answer", || async {
        matches!(c.call("POST", &format!("{}/v3/kv/put", e.url), &[], put.clone()).await, Ok(r) if r.status == 200)
            .then_some(())
    })
    .await?;
    Ok(Some(e))
}

fn etcd_put_body(k: &[u8], v: &[u8]) -> Bytes {
    Bytes::from(format!(
        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
        b64(k),
        b64(v)
    ))
}

fn which(name: &str) -> anyhow::Result<PathBuf> {
    for d in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!("{name} not found")
}

async fn bench_etcd(url: &str, clients: &[usize], secs: u64, vbytes: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let v = vec![b'x'; vbytes];
    for &n in clients {
        let c = Client::new(Duration::from_secs(10));
        let put = format!("{url}/v3/kv/put");
        let v = v.clone();
        let row = load("etcd 1 node (HTTP gateway)", n, secs, move |t, i| {
            let (c, put) = (c.clone(), put.clone());
            let body = etcd_put_body(format!("b{n}-{t}-{i}").as_bytes(), &v);
            async move { matches!(c.call("POST", &put, &[], body).await, Ok(r) if r.status == 200) }
        })
        .await;
        rows.push(row);
    }
    rows
}

async fn restart_time(r: &mut ReplicaProc, keys: u64, vbytes: usize) -> anyhow::Result<()> {
    let c = Client::new(Duration::from_secs(30));
    println!("\nloading {keys} keys for the restart measurement…");
    let t0 = Instant::now();
    fill(&r.url, "key-", keys, vbytes).await?;
    println!("loaded in {:.1} s", t0.elapsed().as_secs_f64());
    let st = c
        .status(&r.url)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    println!(
        "state: {} keys, applied LSN {}, snapshot LSN {}",
        st["keys"], st["applied_lsn"], st["snapshot_lsn"]
    );
    println!("\n| restart after | data on disk MB | open (status answers) s | first acknowledged write s |");
    println!("|---|---:|---:|---:|");
    for how in ["SIGTERM", "SIGKILL"] {
        if how == "SIGTERM" {
            r.term(Duration::from_secs(30));
        } else {
            r.kill9();
        }
        let mb = du(&r.data_dir()) as f64 / 1e6;
        let t0 = Instant::now();
        r.restart()?;
        let fast = Client::new(Duration::from_millis(200));
        wait_for(Duration::from_secs(120), "status after restart", || async {
            fast.status(&r.url).await.ok().map(|_| ())
        })
        .await?;
        let open = t0.elapsed().as_secs_f64();
        wait_for(
            Duration::from_secs(120),
            "a write after restart",
            || async {
                matches!(fast.put(&r.url, "after-restart", "x").await, Ok(rep) if rep.status == 200)
                    .then_some(())
            },
        )
        .await?;
        let first = t0.elapsed().as_secs_f64();
        println!("| {how} | {mb:.0} | {open:.2} | {first:.2} |");
    }
    let probe = c
        .get(&r.url, &format!("key-{:08}", keys - 1))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    anyhow::ensure!(
        probe.status == 200,
        "the last loaded key is missing after restart"
    );
    Ok(())
}

/// Writes keys `{prefix}{i:08}` for `i` in `0..keys` with 64 concurrent clients; each write is
/// retried a bounded number of times.
async fn fill(url: &str, prefix: &str, keys: u64, vbytes: usize) -> anyhow::Result<()> {
    let c = Client::new(Duration::from_secs(30));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (c, url, next, v) = (c.clone(), url.to_string(), next.clone(), value(vbytes));
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    break;
                }
                let key = format!("{prefix}{i:08}");
                let mut tries = 0;
                while !matches!(c.put(&url, &key, v.clone()).await, Ok(r) if r.status == 200) {
                    tries += 1;
                    if tries > 100 {
                        return Err(anyhow::anyhow!("write of {key} keeps failing"));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn du(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += du(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The working directory: `dir` (created), or a temporary one under `.` that lives as long as
/// the returned guard.
fn work_dir(dir: Option<PathBuf>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            Ok((d, None))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("baton-bench")
                .tempdir_in(".")?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// A replica's status document, or `None` when it does not answer with one.
async fn status_of(c: &Client, url: &str) -> Option<serde_json::Value> {
    c.status(url).await.ok().filter(|v| v.is_object())
}

async fn wait_writable(c: &Client, url: &str, what: &str) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(30), what, || async {
        matches!(c.put(url, "probe", "x").await, Ok(rep) if rep.status == 200).then_some(())
    })
    .await
}

/// The last `n` lines of every replica's log, on stderr (after a failure).
fn dump_logs(nodes: &[&ReplicaProc]) {
    for r in nodes {
        let log = r.log();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "=== {} log ({}), last 30 lines:\n{}",
            r.spec.id,
            r.log_path.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
}

fn start_release(
    id: &str,
    dir: &Path,
    standin: &Standin,
    extra_toml: &str,
) -> anyhow::Result<ReplicaProc> {
    let mut spec = ReplicaSpec::new(id, dir, std::slice::from_ref(&standin.url));
    spec.release = true;
    spec.extra_toml = extra_toml.to_string();
    ReplicaProc::start(spec)
}

/// Sequence number of the last heartbeat the stand-in got from `id`.
fn last_seq(standin: &Standin, id: &str) -> u64 {
    standin.with(|p| p.seen.get(id).map_or(0, |h| h.seq))
}

/// Switches the stand-in to `mode` and waits until the leader has applied a directive carrying
/// it (every answer to a heartbeat handled after the switch carries it; three more heartbeats of
/// the leader mean at least two such answers were received) and accepts writes.
async fn set_mode(standin: &Standin, c: &Client, leader: &str, mode: Mode) -> anyhow::Result<()> {
    let seq0 = standin.with(|p| {
        p.mode = mode;
        p.seen.get("r1").map_or(0, |h| h.seq)
    });
    wait_for(
        Duration::from_secs(10),
        "the leader to heartbeat after the mode change",
        || async { (last_seq(standin, "r1") >= seq0 + 3).then_some(()) },
    )
    .await?;
    wait_writable(
        c,
        leader,
        "the leader to accept writes after the mode change",
    )
    .await
}

/// Waits until every replica reports the same applied LSN; returns it.
async fn wait_converged(c: &Client, urls: &[String]) -> anyhow::Result<u64> {
    wait_for(
        Duration::from_secs(60),
        "the three replicas to report equal applied_lsn",
        || async {
            let mut lsns = Vec::new();
            for u in urls {
                lsns.push(status_of(c, u).await?["applied_lsn"].as_u64()?);
            }
            lsns.windows(2).all(|w| w[0] == w[1]).then(|| lsns[0])
        },
    )
    .await
}

/// The followers' lag as the leader sees it right after a load level.
struct Lag {
    mode: String,
    clients: usize,
    /// (follower, records_behind, approx_bytes_behind) right after the load.
    behind: Vec<(String, u64, u64)>,
    /// Milliseconds until every follower had acknowledged the leader's log end.
    caught_up_ms: Option<f64>,
    /// Size of the leader's waited set right after the load.
    waited: usize,
    /// Directive revisions handed out during the load (the waited set or the epoch changed).
    rev_changes: u64,
}

/// Reads `followers[].records_behind` from the leader now, then waits (bounded) until both
/// followers report 0.
async fn follower_lag(c: &Client, leader: &str) -> (Vec<(String, u64, u64)>, usize, Option<f64>) {
    let t0 = Instant::now();
    let mut behind = Vec::new();
    let mut waited = 0;
    if let Some(st) = status_of(c, leader).await {
        waited = st["waited"].as_array().map_or(0, Vec::len);
        for f in st["followers"].as_array().into_iter().flatten() {
            behind.push((
                f["id"].as_str().unwrap_or("?").to_string(),
                f["records_behind"].as_u64().unwrap_or(0),
                f["approx_bytes_behind"].as_u64().unwrap_or(0),
            ));
        }
    }
    let deadline = t0 + Duration::from_secs(60);
    let mut caught_up = None;
    for _ in 0..10_000 {
        if Instant::now() >= deadline {
            break;
        }
        if let Some(st) = status_of(c, leader).await {
            let fs = st["followers"].as_array().cloned().unwrap_or_default();
            if fs.len() == 2 && fs.iter().all(|f| f["records_behind"].as_u64() == Some(0)) {
                caught_up = Some(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (behind, waited, caught_up)
}

async fn run_cluster(
    seconds: u64,
    clients: Vec<usize>,
    value_bytes: usize,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (dir, _tmp) = work_dir(dir)?;
    let standin = Standin::start("r1").await?;
    let mut nodes = Vec::new();
    for id in ["r1", "r2", "r3"] {
        nodes.push(start_release(id, &dir, &standin, "")?);
    }
    let res = cluster_inner(&standin, &nodes, seconds, &clients, value_bytes, &dir).await;
    if res.is_err() {
        dump_logs(&nodes.iter().collect::<Vec<_>>());
    }
    for n in &mut nodes {
        n.term(Duration::from_secs(30));
    }
    res
}

async fn cluster_inner(
    standin: &Standin,
    nodes: &[ReplicaProc],
    seconds: u64,
    clients: &[usize],
    value_bytes: usize,
    dir: &Path,
) -> anyhow::Result<()> {
    let c = Client::new(Duration::from_secs(5));
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let leader = urls[0].clone();
    wait_writable(&c, &leader, "r1 to accept writes").await?;
    println!(
        "three replicas (leader r1, stand-in controller), durable writes through the leader, \
         {value_bytes}-byte values, {seconds} s per level, on {}\n",
        dir.display()
    );
    let mut rows = Vec::new();
    let mut lags = Vec::new();
    for (mode, label, prefix) in [
        (Mode::SemiSync, "semi-sync", "s"),
        (Mode::Async, "async", "a"),
    ] {
        set_mode(standin, &c, &leader, mode).await?;
        // The stand-in waits for every follower heard recently; both must be in the set and
        // streaming, so that semi-sync numbers are for two waited followers.
        wait_for(
            Duration::from_secs(30),
            "both followers to stream from r1 and be in its waited set",
            || async {
                let st = status_of(&c, &leader).await?;
                (st["followers"].as_array()?.len() == 2 && st["waited"].as_array()?.len() == 2)
                    .then_some(())
            },
        )
        .await?;
        let lsn = wait_converged(&c, &urls).await?;
        eprintln!("{label}: the replicas converged at applied LSN {lsn}; measuring…");
        for &n in clients {
            let rev0 = standin.with(|p| p.rev);
            rows.push(put_load(label, prefix, &leader, n, seconds, value_bytes).await);
            let rev_changes = standin.with(|p| p.rev) - rev0;
            let (behind, waited, caught_up_ms) = follower_lag(&c, &leader).await;
            lags.push(Lag {
                mode: label.into(),
                clients: n,
                behind,
                caught_up_ms,
                waited,
                rev_changes,
            });
        }
    }
    print_rows_as("mode", &mut rows);
    println!(
        "\nfollowers' lag from the leader's status right after each load \
         (followers[].records_behind, ~bytes = approx_bytes_behind)\n"
    );
    println!(
        "| mode | clients | lag right after the load | all followers at the log end after ms | \
         waited set after the load | directive revs during the load |"
    );
    println!("|---|---:|---|---:|---:|---:|");
    for l in &lags {
        let behind: Vec<String> = l
            .behind
            .iter()
            .map(|(id, r, b)| format!("{id}: {r} records (~{b} bytes)"))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            l.mode,
            l.clients,
            if behind.is_empty() {
                "no followers listed".to_string()
            } else {
                behind.join(", ")
            },
            l.caught_up_ms
                .map_or("not within 60 s".to_string(), |ms| format!("{ms:.0}")),
            l.waited,
            l.rev_changes
        );
    }
    Ok(())
}

/// dd's own summary line and the MB/s computed from its byte count and seconds.
struct DdResult {
    bytes: u64,
    secs: f64,
    line: String,
}

/// Sequential write speed of the disk holding `dir`: 1 GiB in 1 MiB direct writes, fsynced.
fn dd_write(dir: &Path) -> anyhow::Result<DdResult> {
    let file = dir.join("dd.tmp");
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(["bs=1M", "count=1024", "oflag=direct", "conv=fsync"])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output();
    let _ = std::fs::remove_file(&file);
    let out = out?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(out.status.success(), "dd failed: {}", err.trim());
    // "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 4.6 s, 232 MB/s"
    let line = err
        .lines()
        .find(|l| l.contains(" copied, "))
        .ok_or_else(|| anyhow::anyhow!("no 'copied' line in dd's output: {}", err.trim()))?;
    let bytes: u64 = line
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no byte count in {line:?}"))?;
    let secs: f64 = line
        .split(" copied, ")
        .nth(1)
        .and_then(|rest| rest.split(" s,").next())
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no seconds in {line:?}"))?;
    Ok(DdResult {
        bytes,
        secs,
        line: line.trim().to_string(),
    })
}

/// A counter from a replica's `/metrics` (0 when absent).
async fn metric(c: &Client, url: &str, name: &str) -> Option<f64> {
    let r = c
        .call("GET", &format!("{url}/metrics"), &[], Bytes::new())
        .await
        .ok()?;
    r.text()
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

async fn run_catchup(gib: f64, value_bytes: usize, dir: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::ensure!(gib > 0.0 && gib <= 64.0, "--gib must be in (0, 64]");
    anyhow::ensure!(value_bytes > 0, "--value-bytes must be positive");
    let (dir, _tmp) = work_dir(dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    let standin = Standin::start("r1").await?;
    // r2 stays out of the waited set, so its absence does not block writes.
    standin.with(|p| p.sync_followers = false);
    // No snapshot (and no compaction) while loading: the catch-up must come from the log.
    let extra = format!("[storage]\nsnapshot_log_bytes = {}\n", 4u64 << 30);
    let mut r1 = start_release("r1", &dir, &standin, &extra)?;
    let mut r2 = start_release("r2", &dir, &standin, &extra)?;
    let res = catchup_inner(&r1, &mut r2, gib, value_bytes, &dir).await;
    if res.is_err() {
        dump_logs(&[&r1, &r2]);
    }
    r2.term(Duration::from_secs(30));
    r1.term(Duration::from_secs(30));
    res
}

async fn catchup_inner(
    r1: &ReplicaProc,
    r2: &mut ReplicaProc,
    gib: f64,
    vbytes: usize,
    dir: &Path,
) -> anyhow::Result<()> {
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &r1.url, "r1 to accept writes").await?;
    wait_for(Duration::from_secs(30), "r2 to attach to r1", || async {
        let st = status_of(&c, &r1.url).await?;
        let listed = st["followers"]
            .as_array()?
            .iter()
            .any(|f| f["id"].as_str() == Some("r2"));
        let st2 = status_of(&c, &r2.url).await?;
        (listed && st2["upstream"]["phase"].as_str() == Some("streaming")).then_some(())
    })
    .await?;
    let before = status_of(&c, &r2.url)
        .await
        .ok_or_else(|| anyhow::anyhow!("r2 does not answer status"))?;
    r2.kill9();
    let from = before["flushed_lsn"].as_u64().unwrap_or(0);
    let keys = ((gib * (1u64 << 30) as f64) / vbytes as f64).ceil() as u64;
    println!(
        "r2 attached (flushed LSN {from}) and was killed; loading {keys} keys of {vbytes} bytes \
         (~{gib} GiB) into r1 with 64 clients, on {}…",
        dir.display()
    );
    let t0 = Instant::now();
    fill(&r1.url, "c-", keys, vbytes).await?;
    let load_secs = t0.elapsed().as_secs_f64();
    let st1 = status_of(&c, &r1.url)
        .await
        .ok_or_else(|| anyhow::anyhow!("r1 does not answer status"))?;
    let end = st1["log_end_lsn"].as_u64().unwrap_or(0);
    let wal1 = du(&r1.data_dir().join("wal"));
    let wal2 = du(&r2.data_dir().join("wal"));
    println!(
        "loaded in {load_secs:.1} s; r1: log end LSN {end}, log start LSN {}, snapshot LSN {}, \
         wal {:.1} MB; r2 wal {:.3} MB",
        st1["log_start_lsn"],
        st1["snapshot_lsn"],
        wal1 as f64 / 1e6,
        wal2 as f64 / 1e6
    );
    let (r1_log_off, r2_log_off) = (r1.log().len(), r2.log().len());

    // Catch-up: from the restart until r2 holds (flushed) and applied r1's log end.
    let fast = Client::new(Duration::from_millis(500));
    let t0 = Instant::now();
    r2.restart()?;
    let deadline = t0 + Duration::from_secs_f64(120.0 + 600.0 * gib);
    let (mut open, mut first_progress, mut flushed_at, mut applied_at) = (None, None, None, None);
    let mut phases: Vec<String> = Vec::new();
    for _ in 0..1_000_000 {
        if Instant::now() >= deadline {
            break;
        }
        if let Some(st) = status_of(&fast, &r2.url).await {
            let now = t0.elapsed().as_secs_f64();
            open.get_or_insert(now);
            if let Some(ph) = st["upstream"]["phase"].as_str() {
                if phases.last().map(String::as_str) != Some(ph) {
                    phases.push(ph.to_string());
                }
            }
            let flushed = st["flushed_lsn"].as_u64().unwrap_or(0);
            let applied = st["applied_lsn"].as_u64().unwrap_or(0);
            if flushed > from {
                first_progress.get_or_insert(now);
            }
            if flushed >= end {
                flushed_at.get_or_insert(now);
            }
            if applied >= end {
                applied_at.get_or_insert(now);
            }
            if flushed_at.is_some() && applied_at.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (Some(open), Some(first), Some(flushed_at), Some(applied_at)) =
        (open, first_progress, flushed_at, applied_at)
    else {
        anyhow::bail!(
            "r2 did not catch up with LSN {end} within {:.0} s (status answered: {open:?}, \
             first record: {first_progress:?}, flushed: {flushed_at:?}, applied: {applied_at:?})",
            (deadline - t0).as_secs_f64()
        );
    };

    // Which path the catch-up took: the leader logs where each follower stream starts.
    let r1_log = r1.log();
    let attached: Vec<&str> = r1_log
        .get(r1_log_off..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("follower attached") && l.contains("r2"))
        .collect();
    let r2_log = r2.log();
    let snap_lines = r2_log
        .get(r2_log_off..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("receiving a snapshot"))
        .count();
    let snaps_received = metric(&c, &r2.url, "baton_replica_repl_snapshots_received_total").await;
    let path = if snap_lines > 0 || attached.iter().any(|l| l.contains("Snapshot")) {
        "snapshot"
    } else if attached.iter().any(|l| l.contains("Log(")) {
        "log"
    } else {
        "unknown"
    };
    println!(
        "catch-up path: {path} (r1 log: {}; r2 snapshots received: {}; r2 stream phases seen: {})",
        attached
            .last()
            .map_or("no 'follower attached' line".to_string(), |l| {
                let l = l.trim();
                l.find("follower attached")
                    .map_or(l, |i| &l[i..])
                    .to_string()
            }),
        snaps_received.map_or("?".to_string(), |v| format!("{v}")),
        phases.join(" → ")
    );

    let dd = dd_write(dir);
    let bytes = wal1.saturating_sub(wal2) as f64;
    let records = end.saturating_sub(from) as f64;
    println!(
        "\nfollower catch-up from the leader's log: {:.1} MB of log ({} records); time from r2's \
         restart; status answered after {open:.2} s\n",
        bytes / 1e6,
        records as u64
    );
    println!("| measurement | MB | s | MB/s | records/s |");
    println!("|---|---:|---:|---:|---:|");
    let line = |what: &str, mb: f64, s: f64, recs: Option<f64>| {
        println!(
            "| {what} | {mb:.1} | {s:.2} | {:.1} | {} |",
            mb / s,
            recs.map_or("–".to_string(), |r| format!("{:.0}", r / s))
        );
    };
    line(
        &format!("load into r1 (64 clients, {vbytes}-byte values, log bytes written)"),
        wal1 as f64 / 1e6,
        load_secs,
        Some(keys as f64),
    );
    line(
        "r2 catch-up: restart → flushed_lsn = r1 log end",
        bytes / 1e6,
        flushed_at,
        Some(records),
    );
    line(
        "r2 catch-up: restart → applied_lsn = r1 log end",
        bytes / 1e6,
        applied_at,
        Some(records),
    );
    line(
        "r2 streaming only: first record → flushed_lsn = r1 log end",
        bytes / 1e6,
        (flushed_at - first).max(1e-3),
        Some(records),
    );
    match dd {
        Ok(d) => {
            line(
                "dd sequential write, 1 MiB blocks, O_DIRECT + fsync",
                d.bytes as f64 / 1e6,
                d.secs,
                None,
            );
            println!("\ndd: {}", d.line);
        }
        Err(e) => println!("| dd sequential write | – | – | failed: {e} | – |"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Replica {
            seconds,
            clients,
            value_bytes,
            restart_keys,
            dir,
            no_etcd,
        } => run_replica(seconds, clients, value_bytes, restart_keys, dir, no_etcd).await,
        Cmd::Cluster {
            seconds,
            clients,
            value_bytes,
            dir,
        } => run_cluster(seconds, clients, value_bytes, dir).await,
        Cmd::Catchup {
            gib,
            value_bytes,
            dir,
        } => run_catchup(gib, value_bytes, dir).await,
        Cmd::Failover { runs, dir, proxy } => run_failover(runs, dir, proxy).await,
    }
}

/// One writer that probes every replica until one acknowledges; returns the gaps between
/// consecutive acknowledgements while `stop` is unset, with the time of each acknowledgement.
async fn ack_times(
    urls: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(Instant, Instant)> {
    // Through a proxy a request is held during the failover: give it time to be answered.
    let c = Client::new(Duration::from_millis(if urls.len() == 1 {
        5000
    } else {
        300
    }));
    let mut acks = Vec::new();
    let mut target = 0;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && i < 2_000_000 {
        i += 1;
        let sent = Instant::now();
        match c.put(&urls[target], &format!("fo-{i}"), "x").await {
            Ok(r) if r.status == 200 => acks.push((sent, Instant::now())),
            _ => {
                target = (target + 1) % urls.len();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    acks
}

fn stats(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "no runs".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let p50 = v[(v.len() - 1) / 2];
    let max = v[v.len() - 1];
    let min = v[0];
    format!(
        "{} runs: p50 {:.0} ms, min {:.0} ms, max {:.0} ms",
        v.len(),
        p50,
        min,
        max
    )
}

async fn run_failover(runs: usize, dir: Option<PathBuf>, via_proxy: bool) -> anyhow::Result<()> {
    use baton_tests::cluster::{Cluster, Opts};
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
    let opts = Opts {
        release: true,
        cluster_toml: "max_failovers_per_hour = 1000\n".into(),
        proxy: via_proxy,
        ..Opts::default()
    };
    let mut cl = Cluster::start(&dir, opts).await?;
    let urls: Vec<String> = if via_proxy {
        vec![cl.proxy_url()]
    } else {
        cl.replicas.values().map(|r| r.url.clone()).collect()
    };
    println!(
        "etcd + 2 controllers + 3 replicas{} (release build), semi-sync, default timing",
        if via_proxy {
            " + proxy (writes through the proxy)"
        } else {
            ""
        }
    );
    println!("etcd + 2 controllers + 3 replicas (release build), semi-sync, default timing");
    let mut kills = Vec::new();
    for run in 0..runs {
        let leader = cl
            .leader_id()
            .await
            .ok_or_else(|| anyhow::anyhow!("no leader"))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let w = tokio::spawn(ack_times(urls.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        cl.replicas
            .get_mut(&leader)
            .ok_or_else(|| anyhow::anyhow!("leader {leader} unknown"))?
            .kill9();
        // Wait for a new leader to acknowledge, then stop the writer.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let l = cl.leader_id().await;
            if l.is_some_and(|l| l != leader) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let acks = w.await?;
        // The first write sent after the kill that was acknowledged.
        let first = acks
            .iter()
            .find(|(sent, _)| *sent >= t0)
            .map(|(_, t)| t.duration_since(t0).as_secs_f64() * 1000.0);
        match first {
            Some(ms) => {
                println!(
                    "run {}: killed {leader}, first acknowledged write after {ms:.0} ms",
                    run + 1
                );
                kills.push(ms);
            }
            None => println!(
                "run {}: killed {leader}, no acknowledged write within the window",
                run + 1
            ),
        }
        // Bring it back and let it catch up before the next run.
        cl.replicas
            .get_mut(&leader)
            .ok_or_else(|| anyhow::anyhow!("gone"))?
            .restart()?;
        wait_for(
            Duration::from_secs(30),
            "the old leader to follow",
            || async {
                let st = cl.client.status(&cl.url(&leader)).await.ok()?;
                (st["role"] == "follower" && st["upstream"]["records_behind"].as_u64() == Some(0))
                    .then_some(())
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let mut pauses = Vec::new();
    for run in 0..runs.min(10) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let w = tokio::spawn(ack_times(urls.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ctl = cl
            .controllers
            .iter()
            .map(|c| c.url.clone())
            .collect::<Vec<_>>();
        let t0 = Instant::now();
        let mut ok = false;
        for c in &ctl {
            if let Ok(r) = cl
                .client
                .call(
                    "POST",
                    &format!("{c}/v1/clusters/main/switchover"),
                    &[],
                    Bytes::new(),
                )
                .await
            {
                if r.status == 200 {
                    ok = true;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        let acks = w.await?;
        if !ok {
            println!("switchover {}: refused", run + 1);
            continue;
        }
        let gap = acks
            .windows(2)
            .filter(|p| p[1].1 > t0)
            .map(|p| p[1].1.duration_since(p[0].1).as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
        println!(
            "switchover {}: longest gap between acknowledged writes {gap:.0} ms",
            run + 1
        );
        pauses.push(gap);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    println!("\n| measurement | result |\n|---|---|");
    println!(
        "| leader kill -9 → first acknowledged write | {} |",
        stats(kills)
    );
    println!("| switchover write pause | {} |", stats(pauses));
    Ok(())
}

async fn run_replica(
    seconds: u64,
    clients: Vec<usize>,
    value_bytes: usize,
    restart_keys: u64,
    dir: Option<PathBuf>,
    no_etcd: bool,
) -> anyhow::Result<()> {
    let (dir, _tmp) = work_dir(dir)?;
    let standin = Standin::start("r1").await?;
    let mut spec = ReplicaSpec::new("r1", &dir, std::slice::from_ref(&standin.url));
    spec.release = true;
    let mut r = ReplicaProc::start(spec)?;
    let c = Client::new(Duration::from_secs(5));
    wait_for(
        Duration::from_secs(30),
        "the replica to accept writes",
        || async {
            matches!(c.put(&r.url, "probe", "x").await, Ok(rep) if rep.status == 200).then_some(())
        },
    )
    .await?;
    println!(
        "durable writes, {value_bytes}-byte values, {seconds} s per level, on {} (same disk for both)\n",
        dir.display()
    );
    let mut rows = bench_baton(&r.url, &clients, seconds, value_bytes).await;
    if !no_etcd {
        if let Some(etcd) = start_etcd(&dir).await? {
            rows.extend(bench_etcd(&etcd.url, &clients, seconds, value_bytes).await);
        }
    }
    print_rows(&mut rows);
    if restart_keys > 0 {
        restart_time(&mut r, restart_keys, value_bytes).await?;
    }
    r.term(Duration::from_secs(30));
    Ok(())
}
