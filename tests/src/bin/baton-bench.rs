//! `baton-bench`: the performance numbers behind Baton's claims, printed as tables, measured side
//! by side with etcd on the same machine and disk (a timed test would fail on a slow day; this
//! reports instead).
//!
//! `baton-bench replica` measures one replica (release build) acknowledging durable writes:
//! throughput and latency at 1/16/64 concurrent clients with 100-byte values, the same load
//! against a single-node etcd through its HTTP gateway when `etcd` is installed, and restart
//! time with a million keys (clean stop and SIGKILL).

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
    println!("| system | clients | writes/s | p50 ms | p99 ms | max ms | errors |");
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
        let c = Client::new(Duration::from_secs(10));
        let url = url.to_string();
        let v = value(vbytes);
        let row = load("baton replica", n, secs, move |t, i| {
            let (c, url, v) = (c.clone(), url.clone(), v.clone());
            async move {
                matches!(c.put(&url, &format!("b{n}-{t}-{i}"), v).await, Ok(r) if r.status == 200)
            }
        })
        .await;
        rows.push(row);
    }
    rows
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
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (c, url, next, v) = (c.clone(), r.url.clone(), next.clone(), value(vbytes));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    break;
                }
                let mut tries = 0;
                while !matches!(c.put(&url, &format!("key-{i:08}"), v.clone()).await, Ok(r) if r.status == 200) {
                    tries += 1;
                    if tries > 100 {
                        return Err(anyhow::anyhow!("write of key-{i:08} keeps failing"));
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cmd::Replica {
        seconds,
        clients,
        value_bytes,
        restart_keys,
        dir,
        no_etcd,
    } = Args::parse().cmd;
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
