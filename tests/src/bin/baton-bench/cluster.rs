//! `baton-bench cluster`: three replicas driven by the stand-in controller, writes through the
//! leader in semi-sync and in async mode next to a three-member etcd cluster on the same machine
//! (interleaved per client count: semi-sync, etcd, async), one side-by-side table per mode
//! against the same etcd run, and the followers' lag after each Baton load.

use super::common::*;
use super::etcd::{EtcdCluster, Versus};
use baton_common::directive::Mode;
use baton_tests::client::Client;
use baton_tests::procs::{wait_for, ReplicaProc};
use baton_tests::standin::Standin;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Sequence number of the last heartbeat the stand-in got from `id`.
pub(crate) fn last_seq(standin: &Standin, id: &str) -> u64 {
    standin.with(|p| p.seen.get(id).map_or(0, |h| h.seq))
}

/// Switches the stand-in to `mode` and waits until the leader has applied a directive carrying
/// it (every answer to a heartbeat handled after the switch carries it; three more heartbeats of
/// the leader mean at least two such answers were received) and accepts writes.
pub(crate) async fn set_mode(
    standin: &Standin,
    c: &Client,
    leader: &str,
    mode: Mode,
) -> anyhow::Result<()> {
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

/// The followers' lag as the leader sees it right after a load level.
pub(crate) struct Lag {
    pub(crate) mode: String,
    pub(crate) clients: usize,
    /// (follower, records_behind, approx_bytes_behind) right after the load.
    pub(crate) behind: Vec<(String, u64, u64)>,
    /// Milliseconds until every follower had acknowledged the leader's log end.
    pub(crate) caught_up_ms: Option<f64>,
    /// Size of the leader's waited set right after the load.
    pub(crate) waited: usize,
    /// Directive revisions handed out during the load (the waited set or the epoch changed).
    pub(crate) rev_changes: u64,
}

/// Reads `followers[].records_behind` from the leader now, then waits (bounded) until both
/// followers report 0.
pub(crate) async fn follower_lag(
    c: &Client,
    leader: &str,
) -> (Vec<(String, u64, u64)>, usize, Option<f64>) {
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

pub(crate) async fn run_cluster(
    seconds: u64,
    clients: Vec<usize>,
    value_bytes: usize,
    dir: Option<PathBuf>,
    versus: Versus,
) -> anyhow::Result<()> {
    versus.announce();
    let (dir, _tmp) = work_dir(dir)?;
    let standin = Standin::start("r1").await?;
    let mut nodes = Vec::new();
    for id in ["r1", "r2", "r3"] {
        nodes.push(start_replica(id, &dir, &standin, "", !versus.debug)?);
    }
    // Dropped (members killed, directory removed) when this function returns, on error too.
    let etcd = if versus.no_etcd {
        None
    } else {
        Some(EtcdCluster::start(&dir.join("etcd")).await?)
    };
    let res = cluster_inner(
        &standin,
        &nodes,
        etcd.as_ref(),
        seconds,
        &clients,
        value_bytes,
        &dir,
    )
    .await;
    if res.is_err() {
        dump_logs(&nodes.iter().collect::<Vec<_>>());
    }
    drop(etcd);
    for n in &mut nodes {
        n.term(Duration::from_secs(30));
    }
    res
}

pub(crate) async fn cluster_inner(
    standin: &Standin,
    nodes: &[ReplicaProc],
    etcd: Option<&EtcdCluster>,
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
        "durable writes, {value_bytes}-byte values, {seconds} s per level, on {} (same disk for \
         both)",
        dir.display()
    );
    println!(
        "Baton: three replicas (leader r1, stand-in controller), writes through the leader's \
         HTTP API; semi-sync waits for both followers"
    );
    match etcd {
        Some(e) => println!(
            "{}\ninterleaved per client count: Baton semi-sync, then etcd, then Baton async, \
             back to back; both tables use the same etcd run\n",
            e.describe()
        ),
        None => println!("etcd: skipped (--no-etcd)\n"),
    }
    let mut semi = Vec::new();
    let mut asy = Vec::new();
    let mut etcd_rows = Vec::new();
    let mut lags = Vec::new();
    for &n in clients {
        for (mode, label, prefix) in [
            (Mode::SemiSync, "semi-sync", "s"),
            (Mode::Async, "async", "a"),
        ] {
            set_mode(standin, &c, &leader, mode).await?;
            // The stand-in waits for every follower heard recently; both must be in the set
            // and streaming, so that semi-sync numbers are for two waited followers.
            wait_two_waited(&c, &leader).await?;
            let lsn = wait_converged(&c, &urls).await?;
            eprintln!(
                "{label}, {n} in flight: the replicas converged at applied LSN {lsn}; measuring…"
            );
            let rev0 = standin.with(|p| p.rev);
            let row = put_load(label, prefix, &leader, n, seconds, value_bytes).await;
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
            if mode == Mode::SemiSync {
                semi.push(row);
                if let Some(e) = etcd {
                    eprintln!("etcd, {n} in flight: measuring…");
                    etcd_rows.push(e.put_load("etcd", "e", n, seconds, value_bytes).await?);
                }
            } else {
                asy.push(row);
            }
        }
    }
    for (label, rows) in [("semi-sync", semi), ("async", asy)] {
        println!("\nBaton {label} vs etcd (3 members)\n");
        let mut pairs: Vec<(Row, Option<Row>)> = rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| (r, etcd_rows.get(i).cloned()))
            .collect();
        print_side_by_side(&mut pairs);
    }
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
