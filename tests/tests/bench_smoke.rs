//! The benchmark's CI-sized run, so that it never rots: `baton-bench cluster` and `baton-bench
//! replica` on the debug binaries (`--debug`), one second per load level, with their
//! three-member etcd. Each test asserts only that the command exits 0 and printed its
//! side-by-side table rows with numbers on both sides (Baton's and etcd's) and the ratio —
//! nothing about speed. The cluster runs in the secure default (TLS on both sides), the replica
//! with `--plain`, so both ways of starting etcd are exercised. `baton-bench catchup` runs with a
//! few MiB and its table rows must be positive numbers.

use baton_tests::procs::bin_path;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `baton-bench` with `args` in its own process group (bounded: the whole group is killed
/// after `limit`) and returns its stdout; fails unless it exits 0.
fn bench(args: &[&str], dir: &Path, limit: Duration) -> anyhow::Result<String> {
    // baton-bench finds baton-replica next to itself (target/debug/).
    bin_path("baton-replica")?;
    let out = dir.join("stdout");
    let err = dir.join("stderr");
    let work = dir.join("work");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton-bench"));
    cmd.args(args)
        .arg("--dir")
        .arg(&work)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            // The bench, its replicas and its etcd members: the group we made.
            // SAFETY: kill(2) on the process group of a child we started and have not reaped.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out)?;
    let stderr = std::fs::read_to_string(&err)?;
    match status {
        Some(st) if st.success() => Ok(stdout),
        Some(st) => anyhow::bail!(
            "baton-bench {args:?} exited with {st}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
        None => anyhow::bail!(
            "baton-bench {args:?} ran over {limit:?} and was killed\n--- stdout\n{stdout}\n--- \
             stderr\n{stderr}"
        ),
    }
}

/// Checks that `stdout` holds `tables` side-by-side tables, each with one row per client count
/// of 1, 16 and 64 whose Baton and etcd rates, latencies and ratio are numbers.
fn check_tables(stdout: &str, tables: usize) {
    let headers = stdout
        .lines()
        .filter(|l| l.starts_with("| in flight | Baton w/s |") && l.contains("| etcd w/s |"))
        .count();
    assert_eq!(headers, tables, "side-by-side table headers in:\n{stdout}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| {
            ["| 1 |", "| 16 |", "| 64 |"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 3 * tables, "table rows in:\n{stdout}");
    for r in &rows {
        // in flight, Baton w/s, p50, p99, etcd w/s, p50, p99, ratio, errors
        assert_eq!(r.len(), 9, "row {r:?} in:\n{stdout}");
        for cell in &r[1..8] {
            assert!(
                cell.parse::<f64>().is_ok_and(f64::is_finite),
                "not a number: {cell:?} in row {r:?} of:\n{stdout}"
            );
        }
    }
    for clients in ["1", "16", "64"] {
        assert_eq!(
            rows.iter().filter(|r| r[0] == clients).count(),
            tables,
            "rows for {clients} in flight in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("DEBUG BUILD"),
        "no debug-build warning in:\n{stdout}"
    );
}

#[test]
fn cluster_bench_runs_with_etcd() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = bench(
        &["cluster", "--debug", "--seconds", "1"],
        dir.path(),
        Duration::from_secs(120),
    )?;
    // Semi-sync and async, each against the same etcd run.
    check_tables(&out, 2);
    assert!(out.contains("security: both sides with TLS"), "{out}");
    Ok(())
}

#[test]
fn replica_bench_runs_with_etcd() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = bench(
        &[
            "replica",
            "--debug",
            "--plain",
            "--seconds",
            "1",
            "--restart-keys",
            "1000",
        ],
        dir.path(),
        Duration::from_secs(120),
    )?;
    check_tables(&out, 1);
    assert!(out.contains("security: both sides in plain HTTP"), "{out}");
    assert!(out.contains("| SIGKILL |"), "no restart table in:\n{out}");
    Ok(())
}

#[test]
fn catchup_bench_runs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // 4 MiB of 4 KiB values to 64 keys: a few seconds in a debug build.
    let out = bench(
        &[
            "catchup",
            "--debug",
            "--gib",
            "0.004",
            "--distinct-keys",
            "64",
        ],
        dir.path(),
        Duration::from_secs(120),
    )?;
    assert!(
        out.contains("DEBUG BUILD"),
        "no debug-build warning in:\n{out}"
    );
    assert!(out.contains("catch-up path: log"), "{out}");
    for row in [
        "| load into r1 ",
        "| r2 catch-up: restart → flushed_lsn = r1 log end |",
        "| r2 catch-up: restart → applied_lsn = r1 log end |",
        "| dd sequential write",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{out}"));
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        // measurement, MB, s, MB/s, records/s
        assert_eq!(cells.len(), 5, "row {line:?}");
        for cell in &cells[1..4] {
            assert!(
                cell.parse::<f64>().is_ok_and(|v| v.is_finite() && v > 0.0),
                "not a positive number: {cell:?} in {line:?} of:\n{out}"
            );
        }
    }
    assert!(out.contains("catch-up (restart → applied) / dd: "), "{out}");
    Ok(())
}
