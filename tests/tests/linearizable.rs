//! Linearizability of the client API through `baton-proxy` while the leader is killed with
//! SIGKILL and later restarted (TESTING "Checkers"): six clients run a register workload
//! over three keys — leader reads, compare-and-set (`If-Match` with the version a read just
//! returned, or `0` when it said absent) and occasional blind writes, every written value
//! unique — and the recorded history is checked with [`check_history`].
//!
//! Outcomes: `200` is a definite result, `412` a CAS that did not apply, `503` a request
//! that was definitely not applied ([`Outcome::Failed`]), anything else (`504
//! outcome_unknown`, a lost reply, a timeout) [`Outcome::Unknown`].
//!
//! The same checker is also run on corrupted copies of the recorded history (one read
//! returning a value never written, one read returning a value first written after it
//! completed), which must be rejected: the check can fail on this kind of history.
//!
//! Every phase is bounded in time and every client in operation count.

use baton_tests::checker::{check_history, Expect, Op, OpKind, OpResult, Outcome, Violation};
use baton_tests::client::{CallError, Client, Reply};
use baton_tests::cluster::{Cluster, Opts};
use baton_tests::procs::wait_for;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 6;
const KEYS: [&str; 3] = ["lin-a", "lin-b", "lin-c"];
/// Per-client bound on loop iterations.
const MAX_ITERS: u64 = 4000;
/// Longer than a failover; the proxy holds requests while there is no leader.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);

fn opts() -> Opts {
    Opts {
        proxy: true,
        proxy_toml: "[timing]\nfailover_buffer_ms = 6000\n".into(),
        ..Opts::default()
    }
}

/// Prints every process's log tail when a test fails.
struct DumpOnFailure<'a> {
    cl: &'a Cluster,
    passed: bool,
}

impl Drop for DumpOnFailure<'_> {
    fn drop(&mut self) {
        if !self.passed {
            eprintln!("{}", self.cl.dump());
        }
    }
}

/// Shared state of the workload.
struct Shared {
    t0: Instant,
    proxy: String,
    stop: AtomicBool,
    next_id: AtomicU64,
    ops: Mutex<Vec<Op>>,
    /// Invoke time (µs) of the latest acknowledged write or applied CAS.
    last_write_ok: AtomicU64,
}

impl Shared {
    fn now(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    fn record(&self, key: &str, invoke: u64, kind: OpKind, outcome: Outcome) -> u64 {
        let complete = match outcome {
            Outcome::Unknown => None,
            _ => Some(self.now()),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let (OpKind::Write { .. } | OpKind::Cas { .. }, Outcome::Ok(OpResult::Applied(true))) =
            (&kind, &outcome)
        {
            self.last_write_ok.fetch_max(invoke, Ordering::Relaxed);
        }
        self.ops.lock().expect("lock").push(Op {
            id,
            key: key.to_string(),
            invoke,
            complete,
            kind,
            outcome,
        });
        id
    }
}

/// A small deterministic generator (no dependency on a particular `rand` API).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn write_outcome(r: &Result<Reply, CallError>) -> Outcome {
    match r {
        Ok(r) if r.status == 200 => Outcome::Ok(OpResult::Applied(true)),
        Ok(r) if r.status == 412 => Outcome::Ok(OpResult::Applied(false)),
        Ok(r) if r.status == 503 => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// A leader read through the proxy, recorded; returns `Some((version, value))` for a definite
/// answer (`None` version/value when absent).
async fn read(sh: &Shared, c: &Client, key: &str) -> Option<(Option<String>, Option<String>)> {
    let invoke = sh.now();
    let r = c.get(&sh.proxy, key).await;
    let (outcome, seen) = match &r {
        Ok(r) if r.status == 200 => {
            let v = r.text();
            (
                Outcome::Ok(OpResult::Read(Some(v.clone()))),
                Some((r.header("baton-version"), Some(v))),
            )
        }
        Ok(r) if r.status == 404 => (Outcome::Ok(OpResult::Read(None)), Some((None, None))),
        Ok(r) if r.status == 503 => (Outcome::Failed, None),
        _ => (Outcome::Unknown, None),
    };
    sh.record(key, invoke, OpKind::Read, outcome);
    seen
}

async fn client_loop(sh: Arc<Shared>, n: usize) {
    let c = Client::new(CLIENT_TIMEOUT);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ ((n as u64 + 1) * 0x1234_5678_9abc));
    for i in 0..MAX_ITERS {
        if sh.stop.load(Ordering::Relaxed) {
            break;
        }
        let key = KEYS[(rng.next() % KEYS.len() as u64) as usize];
        let value = format!("c{n}-{i}");
        let dice = rng.next() % 10;
        let definite = if dice < 3 {
            read(&sh, &c, key).await.is_some()
        } else if dice < 9 {
            // Compare-and-set on what a read just returned.
            match read(&sh, &c, key).await {
                Some((version, seen)) => {
                    let (expect, if_match) = match (version, seen) {
                        (_, None) => (Expect::Absent, "0".to_string()),
                        (Some(ver), Some(v)) => (Expect::Value(v), ver),
                        (None, Some(v)) => panic!("a 200 read of {key} ({v:?}) without a version"),
                    };
                    let invoke = sh.now();
                    let r = c
                        .call(
                            "PUT",
                            &format!("{}/v1/kv/{key}", sh.proxy),
                            &[("if-match", &if_match)],
                            value.clone().into(),
                        )
                        .await;
                    let outcome = write_outcome(&r);
                    let definite = matches!(outcome, Outcome::Ok(_));
                    sh.record(key, invoke, OpKind::Cas { expect, value }, outcome);
                    definite
                }
                None => false,
            }
        } else {
            let invoke = sh.now();
            let r = c.put(&sh.proxy, key, value.clone()).await;
            let outcome = match write_outcome(&r) {
                // A blind write cannot be refused by a precondition.
                Outcome::Ok(OpResult::Applied(false)) => Outcome::Unknown,
                o => o,
            };
            let definite = matches!(outcome, Outcome::Ok(_));
            sh.record(key, invoke, OpKind::Write { value }, outcome);
            definite
        };
        if !definite {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn kind_name(k: &OpKind) -> &'static str {
    match k {
        OpKind::Read => "read",
        OpKind::Cas { .. } => "cas",
        OpKind::Write { .. } => "write",
        OpKind::Delete { .. } => "delete",
        OpKind::Reset { .. } => "reset",
    }
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Ok(OpResult::Applied(false)) => "ok(412)",
        Outcome::Ok(_) => "ok",
        Outcome::Failed => "failed",
        Outcome::Unknown => "unknown",
    }
}

/// `kind -> outcome -> count`.
fn counts(ops: &[Op]) -> BTreeMap<&'static str, BTreeMap<&'static str, usize>> {
    let mut m: BTreeMap<&'static str, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for op in ops {
        *m.entry(kind_name(&op.kind))
            .or_default()
            .entry(outcome_name(&op.outcome))
            .or_default() += 1;
    }
    m
}

/// Every op on `key`, in invoke order, for a diagnosis.
fn timeline(ops: &[Op], key: &str, t0_us: u64) -> String {
    let mut v: Vec<&Op> = ops.iter().filter(|o| o.key == key).collect();
    v.sort_by_key(|o| o.invoke);
    v.iter()
        .map(|o| {
            format!(
                "  #{} [{} .. {}] {:?} -> {:?}",
                o.id,
                o.invoke.saturating_sub(t0_us),
                o.complete
                    .map_or("inf".into(), |c| c.saturating_sub(t0_us).to_string()),
                o.kind,
                o.outcome
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Direct witnesses of the "412 then stale read" pattern: a CAS answered 412 for `expect`
/// while `expect` was written by an op that completed before the CAS was invoked, and a read
/// invoked after the 412 completed still returns `expect` (or absent, for `Expect::Absent`).
/// Values are unique and never deleted here, so once replaced a value never comes back: no
/// linearization exists. Each witness also lists the applied writes in flight at the 412.
fn witnesses_412_then_stale_read(ops: &[Op], key: &str) -> Vec<String> {
    let on_key: Vec<&Op> = ops.iter().filter(|o| o.key == key).collect();
    let written_before = |value: &str, t: u64| {
        on_key.iter().any(|w| {
            matches!(
                (&w.kind, &w.outcome, w.complete),
                (OpKind::Cas { value: v, .. } | OpKind::Write { value: v },
                 Outcome::Ok(OpResult::Applied(true)), Some(c)) if v == value && c < t
            )
        })
    };
    let mut out = Vec::new();
    for c in &on_key {
        let (OpKind::Cas { expect, .. }, Outcome::Ok(OpResult::Applied(false)), Some(done)) =
            (&c.kind, &c.outcome, c.complete)
        else {
            continue;
        };
        let stale: Option<Option<String>> = match expect {
            Expect::Absent => Some(None),
            Expect::Value(x) if written_before(x, c.invoke) => Some(Some(x.clone())),
            Expect::Value(_) => None,
        };
        let Some(stale) = stale else { continue };
        for r in &on_key {
            if r.kind == OpKind::Read
                && r.invoke > done
                && r.outcome == Outcome::Ok(OpResult::Read(stale.clone()))
            {
                let in_flight: Vec<String> = on_key
                    .iter()
                    .filter(|w| {
                        !matches!(w.kind, OpKind::Read)
                            && w.outcome == Outcome::Ok(OpResult::Applied(true))
                            && w.invoke <= done
                            && w.complete.is_none_or(|wc| wc >= c.invoke)
                    })
                    .map(|w| format!("#{} {:?} [{} .. {:?}]", w.id, w.kind, w.invoke, w.complete))
                    .collect();
                out.push(format!(
                    "CAS #{} {:?} answered 412 at [{} .. {}], then read #{} [{} .. {:?}] returned {:?}; applied writes in flight during the 412: {}",
                    c.id,
                    c.kind,
                    c.invoke,
                    done,
                    r.id,
                    r.invoke,
                    r.complete,
                    stale,
                    in_flight.join(", ")
                ));
                break;
            }
        }
    }
    out
}

/// Corrupts one successful read to return `value`; the checker must reject the result.
fn assert_rejected(ops: &[Op], idx: usize, value: String, what: &str) {
    let mut bad = ops.to_vec();
    let orig = bad[idx].clone();
    bad[idx].outcome = Outcome::Ok(OpResult::Read(Some(value)));
    match check_history(&bad) {
        Err(Violation::NotLinearizable(e)) => {
            println!(
                "corrupted history ({what}: op #{} {:?} -> {:?}) rejected: {}",
                orig.id,
                orig.outcome,
                bad[idx].outcome,
                Violation::NotLinearizable(e)
            );
        }
        other => panic!(
            "the checker did not reject the corrupted history ({what}, op #{} {:?}): {other:?}",
            orig.id, bad[idx]
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_workload_through_the_proxy_is_linearizable_across_a_killed_leader(
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cl = Cluster::start(tmp.path(), opts()).await?;
    let sh = Arc::new(Shared {
        t0: Instant::now(),
        proxy: cl.proxy_url(),
        stop: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
        ops: Mutex::new(Vec::new()),
        last_write_ok: AtomicU64::new(0),
    });
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client_loop(sh.clone(), n)))
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = cl.leader_id().await;
    let phases = async {
        let leader = leader.ok_or_else(|| anyhow::anyhow!("no leader recorded"))?;
        let killed_us = sh.now();
        cl.replicas.get_mut(&leader).expect("leader").kill9();
        wait_for(
            Duration::from_secs(15),
            "a write acknowledged after the kill",
            || {
                let ok = sh.last_write_ok.load(Ordering::Relaxed) > killed_us;
                async move { ok.then_some(()) }
            },
        )
        .await?;
        let recovered_us = sh.now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        cl.replicas
            .get_mut(&leader)
            .expect("old leader")
            .restart()?;
        let restarted_us = sh.now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        anyhow::Ok((leader, killed_us, recovered_us, restarted_us))
    };
    let res = phases.await;
    sh.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let mut guard = DumpOnFailure {
        cl: &cl,
        passed: false,
    };
    let (leader, killed_us, recovered_us, restarted_us) = res?;
    let ops = sh.ops.lock().expect("lock").clone();
    let counts = counts(&ops);
    println!(
        "leader {leader} killed at {}ms, writes acknowledged again by {}ms, restarted at {}ms, \
         stopped at {}ms; {} ops: {counts:?}",
        killed_us / 1000,
        recovered_us / 1000,
        restarted_us / 1000,
        sh.now() / 1000,
        ops.len()
    );

    let checked_at = Instant::now();
    let verdict = check_history(&ops);
    println!("checked in {:?}", checked_at.elapsed());
    if let Err(v) = &verdict {
        eprintln!("VIOLATION: {v}");
        eprintln!(
            "leader {leader} killed at {killed_us}us, writes again at {recovered_us}us, \
             restarted at {restarted_us}us; counts {counts:?}"
        );
        let w = witnesses_412_then_stale_read(&ops, v.key());
        eprintln!(
            "{} direct witnesses on key {:?} of a 412 followed by a read of the value the 412 \
             said was no longer current (first 10):",
            w.len(),
            v.key()
        );
        for line in w.iter().take(10) {
            eprintln!("  {line}");
        }
        // A 412 changes no state: without them the rest (acknowledged writes, applied CAS,
        // reads) is checked on its own, to tell whether anything else is wrong too.
        let no_412: Vec<Op> = ops
            .iter()
            .filter(|o| o.outcome != Outcome::Ok(OpResult::Applied(false)))
            .cloned()
            .collect();
        match check_history(&no_412) {
            Ok(()) => eprintln!(
                "without the {} CAS answered 412 the history ({} ops) is linearizable: the \
                 violation is in the 412 answers",
                ops.len() - no_412.len(),
                no_412.len()
            ),
            Err(v2) => eprintln!("without the CAS answered 412 it is still not linearizable: {v2}"),
        }
        eprintln!("timeline of key {:?} (µs since start):", v.key());
        eprintln!("{}", timeline(&ops, v.key(), 0));
    }
    let cas_ok = counts
        .get("cas")
        .and_then(|m| m.get("ok"))
        .copied()
        .unwrap_or(0);
    assert!(
        cas_ok > 50,
        "only {cas_ok} applied compare-and-sets: {counts:?}"
    );

    // The check can fail on this history: corrupt one successful read at a time. When the
    // recorded history is itself rejected, its 412-free part (which changes no state) is
    // corrupted instead, so that the rejection still proves something.
    let ops = if verdict.is_ok() {
        ops.clone()
    } else {
        ops.iter()
            .filter(|o| o.outcome != Outcome::Ok(OpResult::Applied(false)))
            .cloned()
            .collect()
    };
    let baseline = check_history(&ops);
    let read_idx = ops
        .iter()
        .position(|o| {
            o.kind == OpKind::Read && matches!(&o.outcome, Outcome::Ok(OpResult::Read(Some(_))))
        })
        .expect("a successful read of a present value");
    assert_rejected(
        &ops,
        read_idx,
        "never-written".into(),
        "a value never written",
    );
    // A read that returns a value first written by an op invoked after the read completed.
    let future = ops.iter().enumerate().find_map(|(i, r)| {
        let (OpKind::Read, Outcome::Ok(OpResult::Read(_)), Some(done)) =
            (&r.kind, &r.outcome, r.complete)
        else {
            return None;
        };
        ops.iter().find_map(|w| match (&w.kind, &w.outcome) {
            (
                OpKind::Cas { value, .. } | OpKind::Write { value },
                Outcome::Ok(OpResult::Applied(true)),
            ) if w.key == r.key && w.invoke > done => Some((i, value.clone())),
            _ => None,
        })
    });
    let (i, v) = future.expect("a read followed by an applied write on its key");
    assert_rejected(&ops, i, v, "a value written only after the read completed");
    println!("uncorrupted baseline for the corruption checks: {baseline:?}");

    assert!(
        verdict.is_ok(),
        "not linearizable: {}",
        verdict.unwrap_err()
    );

    guard.passed = true;
    Ok(())
}
