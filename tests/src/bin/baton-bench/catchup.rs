//! `baton-bench catchup`: a follower that was down catching up from the leader's log, next to
//! the disk's sequential write speed (`dd`).

use super::common::*;
use baton_tests::client::Client;
use baton_tests::procs::{wait_for, ReplicaProc};
use baton_tests::standin::Standin;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// dd's own summary line and the MB/s computed from its byte count and seconds.
pub(crate) struct DdResult {
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
    pub(crate) line: String,
    /// Written with O_DIRECT (false: the file system refused it, e.g. tmpfs, and dd wrote
    /// through the page cache, fsynced at the end).
    pub(crate) direct: bool,
}

/// Sequential write speed of the disk holding `dir`: `mib` MiB in 1 MiB direct writes, fsynced
/// (through the page cache where the file system refuses O_DIRECT).
pub(crate) fn dd_write(dir: &Path, mib: u64) -> anyhow::Result<DdResult> {
    dd_run(dir, mib, true).or_else(|direct_err| {
        dd_run(dir, mib, false)
            .map_err(|e| anyhow::anyhow!("{direct_err:#}; without O_DIRECT: {e:#}"))
    })
}

fn dd_run(dir: &Path, mib: u64, direct: bool) -> anyhow::Result<DdResult> {
    let file = dir.join("dd.tmp");
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(["bs=1M", "conv=fsync"])
        .args(direct.then_some("oflag=direct"))
        .arg(format!("count={mib}"))
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
        direct,
    })
}

pub(crate) async fn run_catchup(
    gib: f64,
    value_bytes: usize,
    distinct_keys: u64,
    dir: Option<PathBuf>,
    debug: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(gib > 0.0 && gib <= 64.0, "--gib must be in (0, 64]");
    anyhow::ensure!(value_bytes > 0, "--value-bytes must be positive");
    let (dir, _tmp) = work_dir(dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    let standin = Standin::start("r1").await?;
    // r2 stays out of the waited set, so its absence does not block writes.
    standin.with(|p| p.sync_followers = false);
    // No snapshot (and no compaction) while loading: the catch-up must come from the log.
    let extra = format!("[storage]\nsnapshot_log_bytes = {}\n", 4u64 << 30);
    // Release replicas unless told otherwise, as `cluster` and `replica` do (the catch-up is
    // between the replicas; the bench's own build does not matter).
    let release = !debug;
    if !release {
        println!(
            "DEBUG BUILD (baton-replica): these numbers mean nothing; only that the command runs"
        );
    }
    let mut r1 = start_replica("r1", &dir, &standin, &extra, release)?;
    let mut r2 = start_replica("r2", &dir, &standin, &extra, release)?;
    let res = catchup_inner(&r1, &mut r2, gib, value_bytes, distinct_keys, &dir).await;
    if res.is_err() {
        dump_logs(&[&r1, &r2]);
    }
    r2.term(Duration::from_secs(30));
    r1.term(Duration::from_secs(30));
    res
}

pub(crate) async fn catchup_inner(
    r1: &ReplicaProc,
    r2: &mut ReplicaProc,
    gib: f64,
    vbytes: usize,
    distinct_keys: u64,
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
    let distinct = if distinct_keys == 0 {
        keys
    } else {
        distinct_keys.min(keys)
    };
    println!(
        "r2 attached (flushed LSN {from}) and was killed; loading {keys} writes of {vbytes} bytes \
         (~{gib} GiB) to {distinct} distinct keys into r1 with 64 clients, on {}…",
        dir.display()
    );
    let t0 = Instant::now();
    fill_cycling(&r1.url, "c-", keys, distinct, vbytes).await?;
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

    let bytes = wal1.saturating_sub(wal2) as f64;
    // As much as was caught up (at least 64 MiB, at most 1 GiB).
    let dd = dd_write(
        dir,
        ((bytes / (1 << 20) as f64).ceil() as u64).clamp(64, 1024),
    );
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
                if d.direct {
                    "dd sequential write, 1 MiB blocks, O_DIRECT + fsync"
                } else {
                    "dd sequential write, 1 MiB blocks, buffered + fsync (O_DIRECT refused here)"
                },
                d.bytes as f64 / 1e6,
                d.secs,
                None,
            );
            let dd_rate = d.bytes as f64 / d.secs;
            println!(
                "\ncatch-up (restart → applied) / dd: {:.0}%\ndd: {}",
                100.0 * (bytes / applied_at) / dd_rate,
                d.line
            );
        }
        Err(e) => println!("| dd sequential write | – | – | failed: {e} | – |"),
    }
    Ok(())
}
