//! Multi-process tests of one `baton-replica` driven by the stand-in controller: acknowledged
//! writes survive SIGKILL under load (with snapshots and compaction happening meanwhile), a
//! restarted replica leads only at a new epoch, SIGTERM drains and exits 0, bad configs and
//! corrupt logs stop the process with a one-line reason, and replication streams are capped
//! and cut off when they announce frames no follower sends.

use baton_tests::client::{CallError, Client};
use baton_tests::procs::{bin_path, wait_for, ReplicaProc, ReplicaSpec};
use baton_tests::standin::Standin;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SMALL_STORAGE: &str = "[storage]\nsegment_bytes_max = 65536\nsnapshot_log_bytes = 262144\n";

async fn wait_writable(c: &Client, url: &str) -> anyhow::Result<()> {
    wait_for(
        Duration::from_secs(20),
        "the replica to accept writes",
        || async {
            match c.put(url, "probe", "x").await {
                Ok(r) if r.status == 200 => Some(()),
                _ => None,
            }
        },
    )
    .await
}

/// Outcome bookkeeping of the writers: acknowledged writes must all be found after recovery.
#[derive(Default)]
struct Book {
    acked: Mutex<HashMap<String, (String, String)>>,
    unknown: AtomicU64,
    rejected: AtomicU64,
}

async fn writer(c: Client, url: String, t: usize, stop: Arc<AtomicBool>, book: Arc<Book>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && i < 100_000 {
        let key = format!("w{t}-{i}");
        let value = format!("value-{t}-{i}-{}", rand::random::<u32>());
        match c.put(&url, &key, value.clone()).await {
            Ok(r) if r.status == 200 => {
                let version = r.json()["version"].as_str().unwrap_or_default().to_string();
                book.acked
                    .lock()
                    .expect("lock")
                    .insert(key, (value, version));
            }
            Ok(r) if r.status == 503 => {
                book.rejected.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(_) | Err(CallError::Transport(_)) | Err(CallError::Timeout) => {
                book.unknown.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_under_load() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let standin = Standin::start("r1").await?;
    let mut spec = ReplicaSpec::new("r1", tmp.path(), std::slice::from_ref(&standin.url));
    spec.extra_toml = SMALL_STORAGE.into();
    let mut r = ReplicaProc::start(spec)?;
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &r.url).await?;
    let book = Arc::new(Book::default());
    let mut last_epoch = 0;
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let before = book.acked.lock().expect("lock").len();
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                tokio::spawn(writer(
                    c.clone(),
                    r.url.clone(),
                    round * 100 + t,
                    stop.clone(),
                    book.clone(),
                ))
            })
            .collect();
        // Kill while writes are in flight, after a good number were acknowledged.
        wait_for(
            Duration::from_secs(60),
            "1500 more acknowledged writes",
            || async { (book.acked.lock().expect("lock").len() >= before + 1500).then_some(()) },
        )
        .await?;
        r.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await?;
        }
        r.restart()?;
        wait_writable(&c, &r.url).await?;
        let st = c
            .status(&r.url)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let epoch = st["epoch"].as_u64().unwrap_or(0);
        assert!(
            epoch > last_epoch,
            "a restarted leader leads at a new epoch: {epoch} after {last_epoch}"
        );
        last_epoch = epoch;
        let acked = book.acked.lock().expect("lock").clone();
        for (key, (value, version)) in &acked {
            let got = c
                .get(&r.url, key)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            assert_eq!(
                got.status,
                200,
                "acknowledged key {key} missing after kill -9 (round {round}): {}",
                got.text()
            );
            assert_eq!(
                got.text(),
                *value,
                "acknowledged key {key} has another value"
            );
            assert_eq!(
                got.header("baton-version").as_deref(),
                Some(version.as_str()),
                "version of {key}"
            );
        }
    }
    let log = r.log();
    assert!(
        log.contains("snapshot written"),
        "snapshots must have run during the test:\n{log}"
    );
    assert!(!log.contains("panicked"), "no panics:\n{log}");
    assert!(book.acked.lock().expect("lock").len() >= 4500);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly_and_data_survives() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let standin = Standin::start("r1").await?;
    let mut r = ReplicaProc::start(ReplicaSpec::new(
        "r1",
        tmp.path(),
        std::slice::from_ref(&standin.url),
    ))?;
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &r.url).await?;
    for i in 0..50 {
        let rep = c
            .put(&r.url, &format!("k{i}"), format!("v{i}"))
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(rep.status, 200);
    }
    let st = r
        .term(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(st.success(), "exit status {st:?}; log:\n{}", r.log());
    assert!(r.log().contains("stopped"));
    r.restart()?;
    wait_writable(&c, &r.url).await?;
    for i in 0..50 {
        let rep = c
            .get(&r.url, &format!("k{i}"))
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(rep.text(), format!("v{i}"));
    }
    Ok(())
}

/// Issue 16: `[log] format = "json"` makes every log line one JSON object (for log
/// shippers) carrying the level, the message's fields and the process span with its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let standin = Standin::start("r1").await?;
    let mut spec = ReplicaSpec::new("r1", tmp.path(), std::slice::from_ref(&standin.url));
    // (The level comes from RUST_LOG here: the test harness sets it for every process.)
    spec.extra_toml = "[log]\nformat = \"json\"\n".into();
    let mut r = ReplicaProc::start(spec)?;
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &r.url).await?;
    let st = r
        .term(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(st.success(), "{st:?}");
    let log = r.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    let mut with_span = 0;
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).map_err(|e| anyhow::anyhow!("not a JSON line ({e}): {l}"))?;
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        assert!(
            v["fields"]["message"].is_string() || v["fields"].is_object(),
            "{l}"
        );
        if v["span"]["id"] == "r1" {
            with_span += 1;
        }
    }
    assert!(with_span > 0, "no line carries the replica's span: {log}");
    Ok(())
}

/// A damaged record in a synced log is cut with everything after it: an ERROR names the file,
/// the offset and the LSN, the cut bytes are kept under `wal/damaged/`, and the replica is
/// marked unclean, so that a leader repairs it. This one is alone and directed to lead: nobody
/// can repair it, so it refuses, exiting with the file and offset (DESIGN.md §6; it used to lead
/// on without the writes it had acknowledged). `fault_points.rs` has the follower that repairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_log_record_is_cut_and_kept_aside_and_a_lone_leader_refuses_naming_file_and_offset(
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let standin = Standin::start("r1").await?;
    let mut r = ReplicaProc::start(ReplicaSpec::new(
        "r1",
        tmp.path(),
        std::slice::from_ref(&standin.url),
    ))?;
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &r.url).await?;
    for i in 0..20 {
        c.put(&r.url, &format!("k{i}"), "0123456789")
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    assert!(r.term(Duration::from_secs(10)).is_some_and(|s| s.success()));
    let wal = r.data_dir().join("wal");
    let seg = std::fs::read_dir(&wal)?.next().expect("a segment")?.path();
    let mut bytes = std::fs::read(&seg)?;
    let start = baton_replica::wal::disk::records_start(&bytes);
    let end = baton_replica::wal::disk::records_end(&bytes);
    let mid = start + (end - start) / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&seg, &bytes)?;
    r.restart()?;
    let exited = r.wait_exit(Duration::from_secs(20));
    let log = r.log();
    let line = log
        .lines()
        .find(|l| l.contains("damaged log record where a sync had returned"))
        .unwrap_or_else(|| panic!("no ERROR about the damage:\n{log}"));
    assert!(
        line.contains("ERROR")
            && line.contains(&seg.display().to_string())
            && line.contains("offset")
            && line.contains("from_lsn"),
        "{line}"
    );
    assert!(
        log.contains("marked unclean"),
        "the replica marks itself unclean:\n{log}"
    );
    let kept = std::fs::read_dir(wal.join("damaged"))?.count();
    assert_eq!(kept, 1, "the cut bytes are kept aside");
    let fatal = log.lines().last().unwrap_or_default();
    assert!(
        exited.and_then(|s| s.code()) == Some(1)
            && fatal.contains("fatal: refusing to lead")
            && fatal.contains(&seg.display().to_string())
            && fatal.contains("offset"),
        "a lone leader on a damaged log refuses, naming file and offset: {exited:?}\n{log}"
    );
    Ok(())
}

#[test]
fn bad_config_exits_2_with_file_key_and_reason() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("bad.toml");
    std::fs::write(
        &path,
        "id = \"r1\"\ndata_dir = \"/tmp/x\"\nlisten = \"127.0.0.1:1\"\ncontrollers = [\"http://127.0.0.1:2\"]\ninsecure = true\n[limits]\nvalue_bytes_max = 0\n",
    )?;
    let out = std::process::Command::new(bin_path("baton-replica")?)
        .arg("--config")
        .arg(&path)
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("bad.toml: limits.value_bytes_max: "), "{err}");
    Ok(())
}

/// Opens a replication stream by hand, as member r2 of the cluster (the certificate a
/// follower would present), and returns the socket and the status line of the answer.
async fn open_stream(addr: &str) -> anyhow::Result<(baton_runtime::connect::Stream, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = baton_tests::secure::member_dialer("main", "r2", "")
        .dial(addr, Duration::from_secs(2))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    s.write_all(
        b"POST /v1/replicate HTTP/1.1\r\nhost: x\r\nupgrade: baton-replication/1\r\nconnection: upgrade\r\ncontent-length: 0\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(
            s.read(&mut b).await? == 1,
            "closed before the answer's head"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    Ok((s, head.lines().next().unwrap_or_default().to_string()))
}

/// Replication streams leave the connection count once upgraded: they have their own cap
/// (`limits.replication_streams_max`), one more is answered 503 `overloaded`, and a stream that
/// announces a frame bigger than any follower sends is cut before the leader reserves a buffer
/// for it, which frees its slot (issue 13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_streams_are_capped_and_oversized_frames_cut() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir()?;
    let standin = Standin::start("r1").await?;
    let mut spec = ReplicaSpec::new("r1", tmp.path(), std::slice::from_ref(&standin.url));
    spec.extra_toml = "[limits]\nreplication_streams_max = 1\n".into();
    let r = ReplicaProc::start(spec)?;
    let c = Client::new(Duration::from_secs(5));
    wait_writable(&c, &r.url).await?;
    let addr = r
        .url
        .split_once("://")
        .map_or(r.url.as_str(), |x| x.1)
        .to_string();

    let (mut first, status) = open_stream(&addr).await?;
    anyhow::ensure!(status.contains(" 101 "), "first stream: {status}");
    let (_, status) = open_stream(&addr).await?;
    anyhow::ensure!(
        status.contains(" 503 "),
        "second stream over the cap: {status}"
    );
    let metrics = c
        .call(
            "GET",
            &format!("{}/metrics", r.url),
            &[],
            Default::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("metrics: {e:?}"))?;
    anyhow::ensure!(
        metrics
            .text()
            .contains("baton_replica_replication_streams_rejected_total 1"),
        "the refusal is counted"
    );

    // A 48 MiB frame announced by the first stream: cut at once.
    first.write_all(&(48u32 << 20).to_le_bytes()).await?;
    first.write_all(b"{").await?;
    let mut rest = Vec::new();
    // Closed either way: a clean end, or (over TLS) a TCP close without close_notify.
    let _closed = tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest))
        .await
        .map_err(|_| anyhow::anyhow!("the oversized frame did not end the stream"))?;
    // Its slot is free again.
    wait_for(Duration::from_secs(5), "the slot to be free", || async {
        let (_, status) = open_stream(&addr).await.ok()?;
        status.contains(" 101 ").then_some(())
    })
    .await?;
    // And the replica still serves.
    wait_writable(&c, &r.url).await?;
    Ok(())
}
