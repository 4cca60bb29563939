//! What every `baton-bench` command shares: the latency table (`Row`) and the side-by-side
//! table of Baton next to etcd, a timed load of concurrent clients, a single writer's
//! acknowledgement times, working directories, waits on replicas and their status, and small
//! statistics.

use baton_tests::client::Client;
use baton_tests::procs::{wait_for, ReplicaProc, ReplicaSpec};
use baton_tests::standin::Standin;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub(crate) struct Row {
    pub(crate) system: String,
    pub(crate) clients: usize,
    pub(crate) ops: u64,
    pub(crate) secs: f64,
    pub(crate) lat_us: Vec<u64>,
    pub(crate) errors: u64,
}

pub(crate) fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The latency table, with `first` naming the first column (`system`, `mode`).
pub(crate) fn print_rows_as(first: &str, rows: &mut [Row]) {
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

/// One table of Baton's rows next to etcd's of the same client count (`None`: etcd skipped),
/// with the ratio of their write rates.
pub(crate) fn print_side_by_side(rows: &mut [(Row, Option<Row>)]) {
    println!(
        "| in flight | Baton w/s | Baton p50 ms | Baton p99 ms | etcd w/s | etcd p50 ms | \
         etcd p99 ms | ratio (Baton w/s / etcd w/s) | errors Baton / etcd |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cells = |r: &mut Row| {
        r.lat_us.sort_unstable();
        let rate = r.ops as f64 / r.secs;
        (
            rate,
            format!(
                "{rate:.0} | {:.3} | {:.3}",
                pct(&r.lat_us, 0.5),
                pct(&r.lat_us, 0.99)
            ),
        )
    };
    for (b, e) in rows {
        let (b_rate, b_cells) = cells(b);
        let (ratio, e_cells, e_errors) = match e {
            Some(e) => {
                let (e_rate, e_cells) = cells(e);
                (
                    format!("{:.2}", b_rate / e_rate),
                    e_cells,
                    e.errors.to_string(),
                )
            }
            None => ("–".into(), "– | – | –".into(), "–".into()),
        };
        println!(
            "| {} | {b_cells} | {e_cells} | {ratio} | {} / {e_errors} |",
            b.clients, b.errors
        );
    }
}

/// Runs `clients` loops of `op` for `secs` seconds; each op returns whether it succeeded.
pub(crate) async fn load<F, Fut>(system: &str, clients: usize, secs: u64, op: F) -> Row
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

pub(crate) fn value(n: usize) -> Bytes {
    Bytes::from(vec![b'x'; n])
}

/// One load level of PUTs with unique keys `{prefix}{clients}-{task}-{i}` against `url`.
pub(crate) async fn put_load(
    label: &str,
    prefix: &str,
    url: &str,
    n: usize,
    secs: u64,
    vbytes: usize,
) -> Row {
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

pub(crate) fn du(p: &Path) -> u64 {
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
pub(crate) fn work_dir(
    dir: Option<PathBuf>,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
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
pub(crate) async fn status_of(c: &Client, url: &str) -> Option<serde_json::Value> {
    c.status(url).await.ok().filter(|v| v.is_object())
}

pub(crate) async fn wait_writable(c: &Client, url: &str, what: &str) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(30), what, || async {
        matches!(c.put(url, "probe", "x").await, Ok(rep) if rep.status == 200).then_some(())
    })
    .await
}

/// The last `n` lines of every replica's log, on stderr (after a failure).
pub(crate) fn dump_logs(nodes: &[&ReplicaProc]) {
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

pub(crate) fn start_release(
    id: &str,
    dir: &Path,
    standin: &Standin,
    extra_toml: &str,
) -> anyhow::Result<ReplicaProc> {
    start_replica(id, dir, standin, extra_toml, true)
}

/// A replica led by `standin`, from the release build or (`release == false`) the debug one.
pub(crate) fn start_replica(
    id: &str,
    dir: &Path,
    standin: &Standin,
    extra_toml: &str,
    release: bool,
) -> anyhow::Result<ReplicaProc> {
    let mut spec = ReplicaSpec::new(id, dir, std::slice::from_ref(&standin.url));
    spec.release = release;
    spec.extra_toml = extra_toml.to_string();
    ReplicaProc::start(spec)
}

/// Waits until the leader at `leader` streams to both followers and waits for both (so that
/// semi-sync numbers are for two waited followers).
pub(crate) async fn wait_two_waited(c: &Client, leader: &str) -> anyhow::Result<()> {
    wait_for(
        Duration::from_secs(30),
        "both followers to stream from r1 and be in its waited set",
        || async {
            let st = status_of(c, leader).await?;
            (st["followers"].as_array()?.len() == 2 && st["waited"].as_array()?.len() == 2)
                .then_some(())
        },
    )
    .await
}

/// Waits until every replica reports the same applied LSN; returns it.
pub(crate) async fn wait_converged(c: &Client, urls: &[String]) -> anyhow::Result<u64> {
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

/// A counter from a replica's `/metrics` (0 when absent).
pub(crate) async fn metric(c: &Client, url: &str, name: &str) -> Option<f64> {
    let r = c
        .call("GET", &format!("{url}/metrics"), &[], Bytes::new())
        .await
        .ok()?;
    r.text()
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// One writer that probes every replica until one acknowledges; returns the gaps between
/// consecutive acknowledgements while `stop` is unset, with the time of each acknowledgement.
pub(crate) async fn ack_times(
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

pub(crate) fn stats(mut v: Vec<f64>) -> String {
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

/// Writes keys `{prefix}{i:08}` for `i` in `0..keys` with 64 concurrent clients; each write is
/// retried a bounded number of times.
pub(crate) async fn fill(url: &str, prefix: &str, keys: u64, vbytes: usize) -> anyhow::Result<()> {
    fill_cycling(url, prefix, keys, keys, vbytes).await
}

/// `writes` writes of `vbytes`-byte values with 64 clients, to `distinct` keys in turn (key
/// `i % distinct`): with fewer keys than writes the state stops growing.
pub(crate) async fn fill_cycling(
    url: &str,
    prefix: &str,
    writes: u64,
    distinct: u64,
    vbytes: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(distinct > 0, "at least one key");
    let c = Client::new(Duration::from_secs(30));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (c, url, next, v) = (c.clone(), url.to_string(), next.clone(), value(vbytes));
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= writes {
                    break;
                }
                let key = format!("{prefix}{:08}", i % distinct);
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
