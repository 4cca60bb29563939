//! `baton-bench replica`: one replica's durable writes next to a three-member etcd cluster on
//! the same machine (the same load, interleaved per client count, one side-by-side table), and
//! restart time with a million keys.

use super::common::*;
use super::etcd::{EtcdCluster, Versus};
use baton_tests::client::Client;
use baton_tests::procs::{wait_for, ReplicaProc, ReplicaSpec};
use baton_tests::standin::Standin;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub(crate) async fn restart_time(
    r: &mut ReplicaProc,
    keys: u64,
    vbytes: usize,
) -> anyhow::Result<()> {
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
    println!("\n| restart after | data on disk MB | open (status answers) s | first acknowledged write s | writes refused before it | client errors before it |");
    println!("|---|---:|---:|---:|---|---:|");
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
        // What the writes before the first acknowledged one got: answers (the first kept) and
        // client errors (timeouts of the 200 ms client, refused connections).
        let before = std::cell::RefCell::new((0u32, String::new(), 0u32));
        wait_for(
            Duration::from_secs(120),
            "a write after restart",
            || async {
                let res = fast.put(&r.url, "after-restart", "x").await;
                let mut b = before.borrow_mut();
                match res {
                    Ok(rep) if rep.status == 200 => return Some(()),
                    Ok(rep) => {
                        b.0 += 1;
                        if b.1.is_empty() {
                            b.1 = format!("{} {}", rep.status, String::from_utf8_lossy(&rep.body));
                        }
                    }
                    Err(_) => b.2 += 1,
                }
                None
            },
        )
        .await?;
        let first = t0.elapsed().as_secs_f64();
        let (refused, why, errors) = before.into_inner();
        // One table cell: no line breaks or column bars from the answer's body.
        let why: String = why
            .trim()
            .chars()
            .map(|c| if c == '|' || c.is_control() { ' ' } else { c })
            .collect();
        let why = if refused > 0 {
            format!(" (first: {why})")
        } else {
            String::new()
        };
        println!("| {how} | {mb:.0} | {open:.2} | {first:.2} | {refused}{why} | {errors} |");
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

pub(crate) async fn run_replica(
    seconds: u64,
    clients: Vec<usize>,
    value_bytes: usize,
    restart_keys: u64,
    dir: Option<PathBuf>,
    versus: Versus,
) -> anyhow::Result<()> {
    versus.announce();
    let (dir, _tmp) = work_dir(dir)?;
    let standin = Standin::start("r1").await?;
    let mut spec = ReplicaSpec::new("r1", &dir, std::slice::from_ref(&standin.url));
    spec.release = !versus.debug;
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
    let etcd = if versus.no_etcd {
        None
    } else {
        Some(EtcdCluster::start(&dir.join("etcd")).await?)
    };
    println!(
        "durable writes, {value_bytes}-byte values, {seconds} s per level, on {} (same disk for both)",
        dir.display()
    );
    println!("Baton: one replica (no followers), writes through its HTTP API");
    match &etcd {
        Some(e) => println!(
            "{}
interleaved per client count: Baton's load, then etcd's, back to back
",
            e.describe()
        ),
        None => println!(
            "etcd: skipped (--no-etcd)
"
        ),
    }
    let mut rows = Vec::new();
    for &n in &clients {
        let b = put_load("baton replica", "b", &r.url, n, seconds, value_bytes).await;
        let e = match &etcd {
            Some(e) => Some(e.put_load("etcd", "e", n, seconds, value_bytes).await?),
            None => None,
        };
        rows.push((b, e));
    }
    drop(etcd);
    print_side_by_side(&mut rows);
    if restart_keys > 0 {
        restart_time(&mut r, restart_keys, value_bytes).await?;
    }
    r.term(Duration::from_secs(30));
    Ok(())
}
