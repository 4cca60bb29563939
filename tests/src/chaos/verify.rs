//! The chaos runner's end of run: availability after the heal, convergence, the final state
//! read from the leader, the replicas' logs read back from disk after a clean stop, and the
//! scan of every process log for panics and unexpected ERROR lines. The judgements themselves
//! are the pure checkers of [`crate::history`] and [`crate::checker`].

use super::workload::Recorder;
use crate::client::Client;
use crate::cluster::Cluster;
use crate::history::{parse_version, LogEntry, NodeEnd, Stored};
use baton_replica::wal::disk::{DiskLog, DiskOptions};
use baton_replica::wal::record::Op as RecOp;
use baton_replica::wal::LogStore;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Writes through the proxy until one is acknowledged (recorded like the clients' writes);
/// returns how long that took, or `None` after `timeout`.
pub async fn wait_available(rec: &Recorder, proxy: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let c = Client::new(Duration::from_secs(3));
    let mut i = 0;
    while start.elapsed() < timeout {
        let key = format!("final-probe-{i}");
        let (o, _) = rec
            .write(&c, proxy, None, &key, &format!("p{i}"), None)
            .await;
        if o == crate::checker::Outcome::Ok(crate::checker::OpResult::Applied(true)) {
            return Some(start.elapsed());
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Every replica's log end, applied LSN and digest, read directly (not through its relay).
pub async fn node_ends(cl: &Cluster) -> Result<Vec<NodeEnd>, String> {
    let c = Client::new(Duration::from_secs(2));
    let mut out = Vec::new();
    for (id, r) in &cl.replicas {
        let st = c
            .status(&r.url)
            .await
            .map_err(|e| format!("{id}: status: {e:?}"))?;
        let n = (|| {
            Some(NodeEnd {
                id: id.clone(),
                log_end: (st["log_end_epoch"].as_u64()?, st["log_end_lsn"].as_u64()?),
                applied_lsn: st["applied_lsn"].as_u64()?,
                digest: st["state_digest"].as_str()?.to_string(),
            })
        })();
        out.push(n.ok_or_else(|| format!("{id}: unexpected status {st}"))?);
    }
    Ok(out)
}

/// Waits up to `timeout` for convergence; returns the time it took, or why it did not happen.
pub async fn wait_converged(cl: &Cluster, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let why = match node_ends(cl).await {
            Ok(ends) => match crate::history::check_converged(&ends) {
                None => return Ok(start.elapsed()),
                Some(w) => w,
            },
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(format!(
                "not converged {:.0} s after the heal: {why}",
                timeout.as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Leader reads of `keys` from `base` (a replica's direct URL), retrying `503` (no lease for a
/// moment) for up to 30 s in all. Returns the final state and the keys that could not be read.
pub async fn read_final(base: &str, keys: Vec<String>) -> (BTreeMap<String, Stored>, Vec<String>) {
    let chunk = keys.len().div_ceil(6).max(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for part in keys.chunks(chunk) {
        let (part, base) = (part.to_vec(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let c = Client::new(Duration::from_secs(3));
            let mut state = Vec::new();
            let mut bad = Vec::new();
            for k in part {
                loop {
                    match c.get(&base, &k).await {
                        Ok(r) if r.status == 200 => {
                            match r.header("baton-version").as_deref().and_then(parse_version) {
                                Some((epoch, lsn)) => state.push((
                                    k.clone(),
                                    Stored {
                                        value: r.text(),
                                        epoch,
                                        lsn,
                                    },
                                )),
                                None => bad.push(format!("{k}: 200 without a version")),
                            }
                        }
                        Ok(r) if r.status == 404 => {}
                        Ok(r) if r.status == 503 && Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        Ok(r) => bad.push(format!("{k}: {} {}", r.status, r.text())),
                        Err(e) if Instant::now() < deadline => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        Err(e) => bad.push(format!("{k}: {e:?}")),
                    }
                    break;
                }
            }
            (state, bad)
        }));
    }
    let mut state = BTreeMap::new();
    let mut bad = Vec::new();
    for t in tasks {
        match t.await {
            Ok((s, b)) => {
                state.extend(s);
                bad.extend(b);
            }
            Err(e) => bad.push(format!("reader task: {e}")),
        }
    }
    (state, bad)
}

/// One replica's log read from disk (the process must be stopped): its `(epoch, lsn, hash)`
/// entries, and its puts by version.
pub struct DiskLogView {
    pub entries: Vec<LogEntry>,
    pub puts: BTreeMap<(u64, u64), (String, String)>,
    pub first_lsn: u64,
}

/// Reads the log under `data_dir/wal` with the replica's own reader.
pub fn read_log(data_dir: &Path) -> anyhow::Result<DiskLogView> {
    let (log, _) = DiskLog::open(&data_dir.join("wal"), DiskOptions::default())
        .map_err(|e| anyhow::anyhow!("{}: {e}", data_dir.display()))?;
    let first = log.first_lsn();
    let mut entries = Vec::new();
    let mut puts = BTreeMap::new();
    let mut next = first;
    while next <= log.last_lsn() {
        let recs = log
            .read(next, 4096, 16 << 20)
            .map_err(|e| anyhow::anyhow!("{}: {e}", data_dir.display()))?;
        if recs.is_empty() {
            break;
        }
        for r in recs {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            r.encode().hash(&mut h);
            entries.push((r.epoch.0, r.lsn.0, h.finish()));
            if let RecOp::Put { key, value } = &r.op {
                puts.insert(
                    (r.epoch.0, r.lsn.0),
                    (
                        String::from_utf8_lossy(key).into_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    ),
                );
            }
            next = r.lsn.next();
        }
    }
    Ok(DiskLogView {
        entries,
        puts,
        first_lsn: first.0,
    })
}

/// ERROR lines that a fault this runner injects explains, by kind; anything else is
/// unexpected. Each entry is a substring of the line, excused only in a run that injected
/// that kind.
pub const EXPECTED_ERRORS: &[(super::Fault, &str)] = &[(
    // DESIGN §6: the follower cuts the damaged record and what follows and says so (ERROR: a
    // person must look at a disk that damages synced data), then repairs from the leader.
    super::Fault::CorruptFollower,
    "damaged log record where a sync had returned",
)];

/// The ERROR-line substrings excused in a run that injected `kinds`.
pub fn expected_errors(kinds: &[super::Fault]) -> Vec<&'static str> {
    EXPECTED_ERRORS
        .iter()
        .filter(|(k, _)| kinds.contains(k))
        .map(|(_, e)| *e)
        .collect()
}

/// What the log scan found.
#[derive(Default, Debug)]
pub struct LogScan {
    pub panics: Vec<String>,
    pub unexpected_errors: Vec<String>,
    /// Count of expected ERROR lines.
    pub expected_errors: usize,
}

/// Every `*.log` under `dir` (process logs), scanned for `panicked` and ` ERROR ` lines; an
/// ERROR line containing one of `expected` is counted, not listed.
pub fn scan_logs(dir: &Path, expected: &[&str]) -> LogScan {
    let mut files = Vec::new();
    collect_logs(dir, &mut files);
    files.sort();
    let mut scan = LogScan::default();
    for f in files {
        let name = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
        let is_etcd = name.starts_with("etcd");
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            if line.contains("panicked") {
                scan.panics.push(format!("{name}: {line}"));
            } else if !is_etcd && line.contains(" ERROR ") {
                if expected.iter().any(|e| line.contains(e)) {
                    scan.expected_errors += 1;
                } else {
                    scan.unexpected_errors.push(format!("{name}: {line}"));
                }
            }
        }
    }
    scan
}

fn collect_logs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            // Data directories hold no process logs.
            if p.file_name().is_some_and(|n| n == "data" || n == "wal") {
                continue;
            }
            collect_logs(&p, out);
        } else if p.extension().is_some_and(|x| x == "log") {
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_scan_finds_panics_and_error_lines_in_process_logs_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        std::fs::create_dir_all(d.join("r1/data")).expect("mkdir");
        std::fs::create_dir_all(d.join("etcd/m1")).expect("mkdir");
        std::fs::write(
            d.join("r1/replica.log"),
            "2026-01-01T00:00:00Z  INFO baton_replica: fine\n\
             2026-01-01T00:00:01Z ERROR baton_replica::node: fatal: this replica stops\n\
             thread 'main' panicked at replica/src/x.rs:1:1\n",
        )
        .expect("write");
        // Not a process log: inside a data directory.
        std::fs::write(d.join("r1/data/x.log"), "x ERROR y\n").expect("write");
        // etcd's own error lines are not ours to judge; a panic still counts.
        std::fs::write(d.join("etcd/m1/etcd.log"), "a ERROR b\nc panicked d\n").expect("write");
        let scan = scan_logs(d, &[]);
        assert_eq!(scan.panics.len(), 2, "{scan:?}");
        assert_eq!(scan.unexpected_errors.len(), 1, "{scan:?}");
        assert!(scan.unexpected_errors[0].starts_with("r1/replica.log: "));
        // Excused only when the run injected the kind that explains it.
        let excused = expected_errors(&[super::super::Fault::Kill]);
        assert_eq!(scan_logs(d, &excused).unexpected_errors.len(), 1);
        let excused = expected_errors(&[super::super::Fault::CorruptFollower]);
        std::fs::write(
            d.join("r1/replica.log"),
            "x ERROR baton_replica::wal::disk::recover: damaged log record where a sync had returned: …\n",
        )
        .expect("write");
        let scan = scan_logs(d, &excused);
        assert_eq!((scan.unexpected_errors.len(), scan.expected_errors), (0, 1));
    }
}
