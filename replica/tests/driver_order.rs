//! The driver's order (`replica/src/driver/mod.rs`), which the runtime and the simulation
//! share: the actions in list order, then the writes and refusals the commit LSN reached, then
//! progress published; `PersistEpoch` and `Ignore` handed back. A recording `Io` shows exactly
//! what the driver asked for, in which order. It does not test the runtime's `Io` (`Node`).

use baton_common::{BootId, DataId, Epoch, Lsn, NodeId};
use baton_replica::core::{Action, Core, CoreConfig, Recovered, Truncation};
use baton_replica::driver::{self, Io, Stepped, WriteAnswer};
use baton_replica::snapshot::Snapshot;
use baton_replica::wal::{Op, Record};
use bytes::Bytes;
use std::collections::BTreeMap;

struct Recorder {
    core: Core,
    waiters: BTreeMap<Lsn, &'static str>,
    barriers: Vec<(Lsn, &'static str)>,
    events: Vec<String>,
}

impl Io for Recorder {
    type Write = &'static str;
    type Barrier = &'static str;

    fn core(&mut self) -> &mut Core {
        &mut self.core
    }
    fn waiters(&mut self) -> &mut BTreeMap<Lsn, &'static str> {
        &mut self.waiters
    }
    fn barriers(&mut self) -> &mut Vec<(Lsn, &'static str)> {
        &mut self.barriers
    }
    fn now_ms(&self) -> u64 {
        1_000
    }
    fn append(&mut self, rec: Record) {
        self.events.push(format!("append {}", rec.lsn));
    }
    fn store_unclean(&mut self, unclean: bool) {
        self.events.push(format!("unclean {unclean}"));
    }
    fn truncate(&mut self, t: Truncation) {
        self.events.push(format!("truncate {}", t.from));
    }
    fn resync(&mut self, from: Lsn) {
        self.events.push(format!("resync {from}"));
    }
    fn install_snapshot(&mut self, lsn: Lsn) {
        self.events.push(format!("install {lsn}"));
    }
    fn answer_write(&mut self, w: &'static str, answer: WriteAnswer) {
        self.events.push(format!("write {w} {answer:?}"));
    }
    fn answer_barrier(&mut self, b: &'static str, answer: Result<(), String>) {
        self.events.push(format!("barrier {b} {answer:?}"));
    }
    fn published(&mut self) {
        self.events.push("published".into());
    }
    fn start_snapshot(&mut self, snap: Snapshot, gen: u64) {
        self.events.push(format!("snapshot {} gen {gen}", snap.lsn));
    }
}

fn recorder() -> Recorder {
    let cfg = CoreConfig {
        id: NodeId("r1".into()),
        cluster: "main".into(),
        addr: "127.0.0.1:7101".into(),
        data_id: DataId(21),
        boot_id: BootId(11),
        drift: 0.01,
        snapshot_log_bytes: u64::MAX,
    };
    Recorder {
        core: Core::new(cfg, Recovered::default()),
        // Commit is 0 on a fresh core: LSN 0 counts as reached, LSN 5 and 7 do not.
        waiters: BTreeMap::from([(Lsn(0), "w0"), (Lsn(5), "w5")]),
        barriers: vec![(Lsn(7), "b7"), (Lsn(0), "b0")],
        events: Vec::new(),
    }
}

fn put(lsn: u64) -> Record {
    Record {
        epoch: Epoch(1),
        lsn: Lsn(lsn),
        op: Op::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        },
    }
}

#[test]
fn actions_first_then_the_commit_reached_then_progress_and_the_epoch_handed_back() {
    let mut io = recorder();
    let out = driver::step(
        &mut io,
        vec![
            Action::Append(put(1)),
            Action::StoreUnclean(true),
            Action::Resync { from: Lsn(1) },
            Action::PersistEpoch {
                epoch: Epoch(3),
                rev: Some(4),
                cluster_id: 9,
            },
        ],
    );
    // A fresh core holds no lease: what the commit reached is answered, but not as committed.
    assert_eq!(
        io.events,
        [
            "append 1",
            "unclean true",
            "resync 1",
            "write w0 LeaseExpired",
            "barrier b0 Ok(())",
            "published",
        ]
    );
    assert_eq!(
        out,
        Stepped {
            persist: Some((Epoch(3), Some(4), 9)),
            ignored: None,
            fatal: None,
        }
    );
    assert_eq!(io.waiters.keys().copied().collect::<Vec<_>>(), [Lsn(5)]);
    assert_eq!(io.barriers, [(Lsn(7), "b7")]);
}

#[test]
fn fail_pending_answers_every_write_then_every_refusal_in_place() {
    let mut io = recorder();
    let out = driver::step(
        &mut io,
        vec![
            Action::FailPending("gone".into()),
            Action::Append(put(1)),
            Action::Ignore("stale".into()),
        ],
    );
    assert_eq!(
        io.events,
        [
            "write w0 Failed(\"gone\")",
            "write w5 Failed(\"gone\")",
            "barrier b7 Err(\"gone\")",
            "barrier b0 Err(\"gone\")",
            "append 1",
            "published",
        ]
    );
    assert_eq!(out.ignored.as_deref(), Some("stale"));
    assert!(io.waiters.is_empty() && io.barriers.is_empty());
}

/// A `Fatal` step answers nothing and publishes nothing: the caller stops the replica.
#[test]
fn a_fatal_step_acknowledges_nothing() {
    let mut io = recorder();
    let out = driver::step(&mut io, vec![Action::Fatal("damaged log".into())]);
    assert_eq!(out.fatal.as_deref(), Some("damaged log"));
    assert!(io.events.is_empty(), "{:?}", io.events);
    assert_eq!(io.waiters.len(), 2, "w0 (reached) is not acknowledged");
}
