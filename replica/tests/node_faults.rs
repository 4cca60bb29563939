//! The replica runtime under storage faults, with the in-memory log and its fault injection:
//! an fsync error is never retried — the write in flight is answered outcome-unknown, the node
//! turns fatal and refuses everything after, and `run` would exit with the reason. A full disk
//! (ENOSPC) is not fatal: writes are refused with 507, reads served, the write in flight is
//! retried until space is freed, and shutdown still ends while the disk is full.

use baton_common::directive::{Directive, LeaderRef, Mode, Role};
use baton_common::{Epoch, NodeId};
use baton_replica::config::ReplicaConfig;
use baton_replica::core::{Consistency, WriteReject, WriteReq};
use baton_replica::heartbeat;
use baton_replica::meta::DirLock;
use baton_replica::node::{Node, WriteError};
use baton_replica::wal::mem::{MemDisk, MemLog};
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(dir: &Path) -> ReplicaConfig {
    let text = format!(
        "id = \"r1\"\ndata_dir = {:?}\nlisten = \"127.0.0.1:1\"\ncontrollers = [\"http://127.0.0.1:2\"]\ninsecure = true\n[timing]\nwrite_timeout_ms = 2000\n",
        dir.display().to_string()
    );
    ReplicaConfig::parse(Path::new("test.toml"), &text).expect("valid config")
}

fn lead(node: &Node, epoch: u64) -> Directive {
    Directive {
        seq: 1,
        rev: epoch,
        controller_term: 1,
        active: true,
        active_controller: None,
        epoch: Epoch(epoch),
        role: Some(Role::Leader),
        leader: Some(LeaderRef {
            id: NodeId("r1".into()),
            addr: "127.0.0.1:1".into(),
            boot_id: node.boot_id,
            data_id: Default::default(),
        }),
        members: vec![],
        waited: vec![],
        lease_ms: 60_000,
        start_after_ms: 0,
        // A single node the test alone directs: no earlier leader holds its promises.
        promises_void: true,
        mode: Mode::SemiSync,
        strict: false,
        lossy: false,
        cluster_id: 0,
    }
}

fn put(k: &str) -> WriteReq {
    WriteReq {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Some(Bytes::from_static(b"v")),
        expect: None,
    }
}

async fn open_leader(dir: &Path, disk: &MemDisk) -> Arc<Node> {
    let cfg = config(dir);
    let lock = DirLock::acquire(dir).expect("lock");
    let (node, _) = Node::open_with_log(cfg, lock, Box::new(MemLog::open(disk)), 0, Instant::now())
        .expect("open");
    let d = lead(&node, 1 + node.lock().core().epoch().0);
    heartbeat::handle(&node, baton_common::clock::now_ms(), d).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match node.write(put("probe")).await {
            Ok(_) => return node,
            Err(e) if Instant::now() > deadline => panic!("never became writable: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_error_is_fatal_and_never_retried() {
    let tmp = tempfile::tempdir().expect("tmp");
    let disk = MemDisk::default();
    let node = open_leader(tmp.path(), &disk).await;
    assert!(node.write(put("a")).await.is_ok());
    disk.fail_sync(true);
    match node.write(put("b")).await {
        Err(WriteError::OutcomeUnknown(reason)) => assert!(reason.contains("sync"), "{reason}"),
        other => panic!("a write whose fsync failed must be outcome-unknown, got {other:?}"),
    }
    let fatal = node
        .fatal()
        .expect("the node is fatal after an fsync error");
    assert!(fatal.0.contains("sync"), "{}", fatal.0);
    // Even with the disk healthy again, nothing is retried or acknowledged any more.
    disk.fail_sync(false);
    match node.write(put("c")).await {
        Err(WriteError::Rejected(WriteReject::Fatal(_))) => {}
        other => panic!("a fatal node must refuse writes, got {other:?}"),
    }
    assert_eq!(node.lock().core().status(0).health, "fatal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_lost_in_a_power_cut_were_never_acknowledged() {
    let tmp = tempfile::tempdir().expect("tmp");
    let disk = MemDisk::default();
    let node = open_leader(tmp.path(), &disk).await;
    for i in 0..20 {
        node.write(put(&format!("k{i}"))).await.expect("write");
    }
    let before = node.lock().core().status(0);
    node.shutdown().await;
    drop(node);
    disk.crash();
    let node = open_leader(tmp.path(), &disk).await;
    let after = node.lock().core().status(0);
    assert!(after.epoch > before.epoch, "restart leads a new epoch");
    for i in 0..20 {
        let r = node
            .lock()
            .core()
            .read(
                baton_common::clock::now_ms(),
                format!("k{i}").as_bytes(),
                Consistency::Leader,
            )
            .expect("leader read");
        assert!(r.entry.is_some(), "acknowledged k{i} survives the crash");
    }
}

/// Waits until the node's core says whether the disk is full.
async fn wait_disk_full(node: &Node, full: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.lock().core().disk_full().is_some() != full {
        assert!(Instant::now() < deadline, "disk_full never became {full}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_507_serves_reads_and_resumes_when_space_is_freed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let disk = MemDisk::default();
    let node = open_leader(tmp.path(), &disk).await;
    node.write(put("a")).await.expect("write a");
    disk.set_space(Some(0));
    // A write handed to the log before the disk filled waits for the retry.
    let pending = tokio::spawn({
        let node = node.clone();
        async move { node.write(put("b")).await }
    });
    wait_disk_full(&node, true).await;
    assert!(node.fatal().is_none(), "a full disk is not fatal");
    let st = node.lock().core().status(baton_common::clock::now_ms());
    assert!(st.disk_full && st.health == "ok", "{st:?}");
    match node.write(put("c")).await {
        Err(WriteError::Rejected(WriteReject::InsufficientStorage(why))) => {
            assert!(why.contains("No space left on device"), "{why}")
        }
        other => panic!("a write on a full disk is refused unappended (507), got {other:?}"),
    }
    let r = node
        .lock()
        .core()
        .read(baton_common::clock::now_ms(), b"a", Consistency::Leader)
        .expect("reads are served on a full disk");
    assert!(r.entry.is_some());
    // Still full after a few retries; then space is freed and the retry writes b.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!pending.is_finished(), "b waits for the disk");
    disk.set_space(None);
    pending
        .await
        .expect("task")
        .expect("b is written by the retry and acknowledged");
    wait_disk_full(&node, false).await;
    node.write(put("d")).await.expect("writes resume");
    // Nothing acknowledged is lost, across a power cut too.
    node.shutdown().await;
    drop(node);
    disk.crash();
    let node = open_leader(tmp.path(), &disk).await;
    for k in ["a", "b", "d"] {
        let r = node
            .lock()
            .core()
            .read(
                baton_common::clock::now_ms(),
                k.as_bytes(),
                Consistency::Leader,
            )
            .expect("leader read");
        assert!(r.entry.is_some(), "acknowledged {k} survives");
    }
    assert!(node
        .lock()
        .core()
        .read(baton_common::clock::now_ms(), b"c", Consistency::Leader)
        .expect("leader read")
        .entry
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_disk_is_full_ends_and_answers_the_pending_write_outcome_unknown() {
    let tmp = tempfile::tempdir().expect("tmp");
    let disk = MemDisk::default();
    let node = open_leader(tmp.path(), &disk).await;
    disk.set_space(Some(0));
    let pending = tokio::spawn({
        let node = node.clone();
        async move { node.write(put("b")).await }
    });
    wait_disk_full(&node, true).await;
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .expect("shutdown does not hang on a full disk");
    assert!(t0.elapsed() < Duration::from_secs(10));
    match pending.await.expect("task") {
        Err(WriteError::OutcomeUnknown(_)) => {}
        other => panic!("the write handed to the log is outcome-unknown, got {other:?}"),
    }
    drop(node);
    disk.crash();
    disk.set_space(None);
    let node = open_leader(tmp.path(), &disk).await;
    assert!(node.fatal().is_none());
}
