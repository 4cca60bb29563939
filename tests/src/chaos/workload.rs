//! The chaos runner's clients: concurrent tasks doing compare-and-set registers (a leader
//! read, then `PUT` with `If-Match` on the version it returned) on a few keys that rotate every
//! [`REGISTER_PERIOD`] (so each key's history stays small enough to check), plain leader reads
//! of those keys, and blind writes of unique values to unique keys. Most clients go through
//! the proxy; direct clients talk to one replica at a time on its own port (past the relays,
//! so they stay on a partitioned leader's side and probe what a deposed leader still
//! answers), moving to the leader a `503` names. Every operation is recorded with its invoke
//! and complete time (µs since the run began) and its outcome: ok, failed (`503`, definitely
//! not applied) or unknown (`504`, a timeout, a cut connection). Every loop is bounded in
//! operations and in time.

use crate::checker::{Expect, Op, OpKind, OpResult, Outcome};
use crate::client::{CallError, Client, Reply};
use crate::history::{AckedWrite, TimedWrite};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Register keys in use at any time.
pub const REGISTER_KEYS: u64 = 3;
/// A new set of register keys every this long.
pub const REGISTER_PERIOD: Duration = Duration::from_secs(8);
/// A client gives up on a request after this long (its outcome is then unknown). Longer than
/// the proxy's failover buffer plus one forwarded attempt, so that the proxy answers first.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for direct clients: longer than a replica's write timeout.
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Per-client bound on loop iterations.
pub const MAX_ITERS: u64 = 1_000_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything the clients observed.
pub struct Recorder {
    t0: Instant,
    stop: AtomicBool,
    next_id: AtomicU64,
    ops: Mutex<Vec<Op>>,
    acked: Mutex<Vec<TimedWrite>>,
    /// Every key a write was sent to.
    written: Mutex<BTreeSet<String>>,
    /// Complete times of acknowledged writes (applied CAS included).
    ack_times: Mutex<Vec<u64>>,
    /// Epoch → the replicas that acknowledged a direct client's write in it.
    acked_by: Mutex<BTreeMap<u64, BTreeSet<String>>>,
    /// Replies the workload did not expect (a 200 without a version, a 4xx), for the report.
    odd: Mutex<Vec<String>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            t0: Instant::now(),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            ops: Mutex::new(Vec::new()),
            acked: Mutex::new(Vec::new()),
            written: Mutex::new(BTreeSet::new()),
            ack_times: Mutex::new(Vec::new()),
            acked_by: Mutex::new(BTreeMap::new()),
            odd: Mutex::new(Vec::new()),
        }
    }

    /// µs since the run began.
    pub fn now(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    pub fn t0(&self) -> Instant {
        self.t0
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn ops(&self) -> Vec<Op> {
        lock(&self.ops).clone()
    }

    pub fn acked(&self) -> Vec<TimedWrite> {
        lock(&self.acked).clone()
    }

    pub fn written_keys(&self) -> BTreeSet<String> {
        lock(&self.written).clone()
    }

    /// Sorted complete times of acknowledged writes.
    pub fn ack_times(&self) -> Vec<u64> {
        let mut v = lock(&self.ack_times).clone();
        v.sort_unstable();
        v
    }

    /// Epochs in which more than one replica acknowledged a direct client's write (G2: at most
    /// one replica acknowledges writes for a given epoch), with those replicas.
    pub fn epochs_with_two_writers(&self) -> Vec<String> {
        lock(&self.acked_by)
            .iter()
            .filter(|(_, r)| r.len() > 1)
            .map(|(e, r)| {
                format!(
                    "epoch {e}: writes acknowledged by {}",
                    r.iter().cloned().collect::<Vec<_>>().join(" and ")
                )
            })
            .collect()
    }

    pub fn odd(&self) -> Vec<String> {
        lock(&self.odd).clone()
    }

    /// The latest complete time of an acknowledged write.
    pub fn last_ack(&self) -> Option<u64> {
        lock(&self.ack_times).iter().max().copied()
    }

    fn note_odd(&self, what: String) {
        let mut odd = lock(&self.odd);
        if odd.len() < 100 {
            odd.push(what);
        }
    }

    fn record(&self, key: &str, invoke: u64, kind: OpKind, outcome: Outcome) {
        let complete = match outcome {
            Outcome::Unknown => None,
            _ => Some(self.now()),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.ops).push(Op {
            id,
            key: key.to_string(),
            invoke,
            complete,
            kind,
            outcome,
        });
    }

    /// Sends one write (blind, or with `If-Match`) to `base` (replica `replica`'s own port,
    /// for a direct client), records it, and returns its outcome and the leader a `503` named,
    /// if any.
    pub async fn write(
        &self,
        c: &Client,
        base: &str,
        replica: Option<&str>,
        key: &str,
        value: &str,
        if_match: Option<(Expect, String)>,
    ) -> (Outcome, Option<String>) {
        lock(&self.written).insert(key.to_string());
        let invoke = self.now();
        let hdr: Vec<(&str, &str)> = match &if_match {
            Some((_, v)) => vec![("if-match", v.as_str())],
            None => vec![],
        };
        let r = c
            .call(
                "PUT",
                &format!("{base}/v1/kv/{key}"),
                &hdr,
                value.to_string().into(),
            )
            .await;
        let complete = self.now();
        let mut outcome = write_outcome(&r);
        if let (Outcome::Ok(OpResult::Applied(true)), Ok(reply)) = (&outcome, &r) {
            let j = reply.json();
            match (j["epoch"].as_u64(), j["lsn"].as_u64()) {
                (Some(epoch), Some(lsn)) => {
                    lock(&self.acked).push(TimedWrite {
                        write: AckedWrite {
                            key: key.to_string(),
                            value: value.to_string(),
                            epoch,
                            lsn,
                        },
                        invoke,
                        complete,
                    });
                    lock(&self.ack_times).push(complete);
                    if let Some(r) = replica {
                        lock(&self.acked_by)
                            .entry(epoch)
                            .or_default()
                            .insert(r.to_string());
                    }
                }
                _ => {
                    self.note_odd(format!(
                        "PUT {key}: 200 without epoch/lsn: {}",
                        reply.text()
                    ));
                    outcome = Outcome::Unknown;
                }
            }
        }
        if let Ok(reply) = &r {
            if !matches!(reply.status, 200 | 412 | 503 | 504 | 507) {
                self.note_odd(format!(
                    "PUT {key}: {} {}",
                    reply.status,
                    reply.text().chars().take(200).collect::<String>()
                ));
            }
        }
        let kind = match if_match {
            Some((expect, _)) => OpKind::Cas {
                expect,
                value: value.to_string(),
            },
            None => {
                // A blind write cannot be refused by a precondition.
                if outcome == Outcome::Ok(OpResult::Applied(false)) {
                    outcome = Outcome::Unknown;
                }
                OpKind::Write {
                    value: value.to_string(),
                }
            }
        };
        self.record(key, invoke, kind, outcome.clone());
        (outcome, hint(&r))
    }

    /// A leader read from `base`, recorded; `Some((version, value))` for a definite answer
    /// (both `None` when absent), and the leader a `503` named, if any.
    pub async fn read(&self, c: &Client, base: &str, key: &str) -> (Seen, Option<String>) {
        let invoke = self.now();
        let r = c.get(base, key).await;
        let (outcome, seen) = match &r {
            Ok(r) if r.status == 200 => match r.header("baton-version") {
                Some(ver) => {
                    let v = r.text();
                    (
                        Outcome::Ok(OpResult::Read(Some(v.clone()))),
                        Some((Some(ver), Some(v))),
                    )
                }
                None => {
                    self.note_odd(format!("GET {key}: 200 without Baton-Version"));
                    (Outcome::Unknown, None)
                }
            },
            Ok(r) if r.status == 404 => (Outcome::Ok(OpResult::Read(None)), Some((None, None))),
            Ok(r) if r.status == 503 => (Outcome::Failed, None),
            _ => (Outcome::Unknown, None),
        };
        self.record(key, invoke, OpKind::Read, outcome);
        (seen, hint(&r))
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// What a definite read saw: `(version, value)`, both `None` when absent.
pub type Seen = Option<(Option<String>, Option<String>)>;

/// The leader id a `503` names (`ErrorBody.leader.id`).
fn hint(r: &Result<Reply, CallError>) -> Option<String> {
    match r {
        Ok(r) if r.status == 503 => r.json()["leader"]["id"].as_str().map(str::to_string),
        _ => None,
    }
}

/// Where a client sends its requests.
#[derive(Clone, Debug)]
pub enum Target {
    /// The proxy's base URL.
    Proxy(String),
    /// Replica id → its direct base URL; the client starts at one and follows `503` hints.
    Direct(Vec<(String, String)>),
}

fn write_outcome(r: &Result<Reply, CallError>) -> Outcome {
    match r {
        Ok(r) if r.status == 200 => Outcome::Ok(OpResult::Applied(true)),
        Ok(r) if r.status == 412 => Outcome::Ok(OpResult::Applied(false)),
        // 507: a full disk refused it before appending (DESIGN §6).
        Ok(r) if r.status == 503 || r.status == 507 => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// The register key `slot` of the period `now_us` falls in.
pub fn register_key(now_us: u64, slot: u64) -> String {
    format!("reg-{}-{slot}", now_us / REGISTER_PERIOD.as_micros() as u64)
}

/// One client (`n` names its keys and values): until stopped or `until`, at most
/// [`MAX_ITERS`] iterations.
pub async fn client(rec: Arc<Recorder>, n: usize, seed: u64, until: Instant, target: Target) {
    let c = Client::new(match target {
        Target::Proxy(_) => CLIENT_TIMEOUT,
        Target::Direct(_) => DIRECT_TIMEOUT,
    });
    let mut rng =
        StdRng::seed_from_u64(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(n as u64 + 1)));
    let mut at = rng.random_range(0..8usize);
    for i in 0..MAX_ITERS {
        if rec.stopped() || Instant::now() >= until {
            break;
        }
        let (base, replica) = match &target {
            Target::Proxy(p) => (p.clone(), None),
            Target::Direct(urls) => {
                let (id, url) = &urls[at % urls.len()];
                (url.clone(), Some(id.as_str()))
            }
        };
        let value = format!("c{n}-{i}");
        let dice = rng.random_range(0..10u32);
        let (definite, hint) = if dice < 5 {
            // Compare-and-set on what a read just returned.
            let key = register_key(rec.now(), rng.random_range(0..REGISTER_KEYS));
            match rec.read(&c, &base, &key).await {
                (Some((version, seen)), _) => {
                    let cond = match (version, seen) {
                        (Some(ver), Some(v)) => (Expect::Value(v), ver),
                        _ => (Expect::Absent, "0".to_string()),
                    };
                    let (o, hint) = rec
                        .write(&c, &base, replica, &key, &value, Some(cond))
                        .await;
                    (matches!(o, Outcome::Ok(_)), hint)
                }
                (None, hint) => (false, hint),
            }
        } else if dice < 6 {
            let key = register_key(rec.now(), rng.random_range(0..REGISTER_KEYS));
            let (seen, hint) = rec.read(&c, &base, &key).await;
            (seen.is_some(), hint)
        } else {
            let key = format!("u-{n}-{i}");
            let (o, hint) = rec.write(&c, &base, replica, &key, &value, None).await;
            (matches!(o, Outcome::Ok(_)), hint)
        };
        if !definite {
            if let Target::Direct(urls) = &target {
                // Follow the hint, else try the next replica.
                at = hint
                    .and_then(|h| urls.iter().position(|(id, _)| *id == h))
                    .filter(|p| *p != at % urls.len())
                    .unwrap_or(at + 1);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
