//! The replica runtime under storage faults, with the in-memory log and its fault injection:
//! an fsync error is never retried — the write in flight is answered outcome-unknown, the node
//! turns fatal and refuses everything after, and `run` would exit with the reason.

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
        "id = \"r1\"\ndata_dir = {:?}\nlisten = \"127.0.0.1:1\"\ncontrollers = [\"http://127.0.0.1:2\"]\n[timing]\nwrite_timeout_ms = 2000\n",
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
