//! `baton-bench failover`: kill -9 of the leader to the first acknowledged write on its
//! successor, and the write pause of a planned switchover, over several runs.

use super::common::*;
use baton_tests::procs::wait_for;
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(crate) async fn run_failover(
    runs: usize,
    dir: Option<PathBuf>,
    via_proxy: bool,
) -> anyhow::Result<()> {
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
