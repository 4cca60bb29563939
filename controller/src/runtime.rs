//! The controller's runtime around [`ClusterCore`]: the etcd session (one lease, kept alive;
//! trusted only until keepalive-sent + TTL·(1−ρ)), the election per cluster (a key created under
//! that lease; its create revision is the controller term), polling the cluster state, executing
//! the core's writes as guarded transactions, and publishing how many members this controller
//! hears (under its lease, put only when the count changes) so that a controller hearing fewer
//! decides no failover, and an active one hearing fewer for a failure timeout hands over (the
//! core's `handover.rs` decides; the resign rides in its journal write's transaction, and the
//! back-off after it is honoured by campaigning only when the core allows). A failed keepalive
//! is retried on a new stream; past the trusted window the core stops acting but keeps its term
//! until etcd says the lease is gone. etcd's own upkeep (compaction, alarms) is `upkeep.rs`; the
//! keys, the guarded transaction and reading state and journal back are `runtime/store.rs`.
//!
//! Nothing here writes etcd while nothing changes: an idle cluster makes no revisions (lease
//! keepalives make none), so etcd's size stays flat (TESTING.md row 23).

use crate::config::ControllerConfig;
use crate::core::{ClusterCore, Now, Observed, Write, WriteOutcome};
use crate::journal;
use crate::metrics::ControllerMetrics;
use crate::state::Phase;
use baton_common::clock;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod store;
use store::txn;
pub use store::{read_journal, read_state, Keys};

/// The controller's etcd lease and how long it may be trusted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Session {
    pub lease: Option<i64>,
    /// CLOCK_BOOTTIME ms until which the lease is certainly alive.
    pub valid_until_ms: u64,
    /// Since when (CLOCK_BOOTTIME ms) keepalives or lease grants have been failing (status:
    /// "etcd unreachable for N s"); `None` while etcd answers.
    pub failing_since_ms: Option<u64>,
}

/// One managed cluster.
pub struct ClusterRt {
    pub name: String,
    pub keys: Keys,
    pub core: Mutex<ClusterCore>,
    /// The observed state revision, for long-polls on the leader.
    pub rev_tx: watch::Sender<u64>,
    /// Bumped whenever the directive a member gets may have changed (a new state rev, a new
    /// term, a takeover or a resignation): held heartbeats are answered then.
    pub changed: watch::Sender<u64>,
    /// Wakes the cluster loop at once (a member's report changed its role, epoch or lease, so
    /// a decision may be due) instead of at its next poll.
    pub wake: tokio::sync::Notify,
    /// The controller's metrics (counted here as writes commit and heartbeats are answered).
    pub metrics: Arc<ControllerMetrics>,
}

pub fn now() -> Now {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Now {
        ms: clock::now_ms(),
        unix_ms,
    }
}

impl ClusterRt {
    pub fn new(name: &str, core: ClusterCore, metrics: Arc<ControllerMetrics>) -> ClusterRt {
        metrics.init_cluster(name);
        ClusterRt {
            metrics,
            name: name.to_string(),
            keys: Keys::new(name),
            core: Mutex::new(core),
            rev_tx: watch::channel(0).0,
            changed: watch::channel(0).0,
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, ClusterCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directives may have changed: answer the held heartbeats.
    pub fn bump(&self) {
        self.changed.send_modify(|c| *c = c.wrapping_add(1));
    }

    /// Executes a core write as a guarded transaction and reports the outcome to the core.
    pub async fn execute(&self, etcd: &mut Client, w: Write) -> WriteOutcome {
        let term = self.lock().term();
        // Promotion steps, for the fault points around them.
        let epoch_write = w
            .state
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Promoting && s.leader.is_none());
        let record_write = w.state.is_some()
            && w.journal
                .last()
                .is_some_and(|e| e.kind == journal::Kind::Promoted);
        if epoch_write {
            faults::fault!("promotion.before_epoch_write");
        }
        if record_write {
            faults::fault!("promotion.before_record");
        }
        let outcome = match term {
            None => WriteOutcome::Rejected,
            Some(term) => txn(etcd, &self.keys, &w, term).await,
        };
        if matches!(outcome, WriteOutcome::Committed { .. }) {
            // Written to etcd, not yet known to this controller's core: it has directed nobody.
            if epoch_write {
                faults::fault!("promotion.after_epoch_write");
            }
            if record_write {
                faults::fault!("promotion.before_direct");
            }
        }
        match &outcome {
            WriteOutcome::Committed { rev } => {
                self.metrics.on_committed(&self.name, &w);
                log_decisions(&self.name, *rev, &w);
            }
            WriteOutcome::Rejected => {
                tracing::warn!(cluster = %self.name, why = %w.why, "write rejected by its guard (the state moved or the election was lost)")
            }
            WriteOutcome::Unknown => {
                tracing::warn!(cluster = %self.name, why = %w.why, "write outcome unknown; re-reading the state")
            }
        }
        self.lock().on_write(now(), &w, outcome.clone());
        if let WriteOutcome::Committed { rev } = outcome {
            self.rev_tx.send_replace(rev);
        }
        self.bump();
        outcome
    }
}

/// Logs each decision `w` journaled (committed at `rev`) once, with its inputs as fields; a
/// write that journals nothing new (a coalesced repeat's rewrite) logs one line of its own.
fn log_decisions(cluster: &str, rev: u64, w: &Write) {
    let mut new = w
        .journal
        .iter()
        .filter(|e| e.seq > w.journal_after)
        .peekable();
    if new.peek().is_none() {
        tracing::info!(cluster, rev, why = %w.why, "cluster state written");
    }
    for e in new {
        let inputs = (!e.inputs.is_null()).then(|| e.inputs.to_string());
        tracing::info!(
            cluster,
            rev,
            kind = %e.kind,
            epoch = e.epoch,
            seq = e.seq,
            reason = (!e.reason.is_empty()).then_some(e.reason.as_str()),
            inputs,
            state_changed = w.state.is_some(),
            "decision: {}",
            e.message
        );
    }
}

/// How long to wait before retrying a failed keepalive on a new stream.
const KEEPALIVE_RETRY: Duration = Duration::from_millis(100);

/// What one keepalive attempt found out.
#[derive(Debug)]
enum Renewal {
    /// etcd renewed the lease (it is alive for the full TTL from the moment it answered).
    Renewed,
    /// etcd answered that the lease no longer exists (expired or revoked): its keys are gone.
    Gone,
    /// No answer, an error, or a broken stream: nothing is known; the lease may well be alive
    /// (an etcd raft leader election extends every lease).
    Failed(String),
}

/// Sets the session and hands it to every cluster's core at once, so that the cores' trusted
/// window follows the keepalives even while a cluster loop waits on a slow etcd call.
fn set_session(session: &Mutex<Session>, clusters: &[Arc<ClusterRt>], s: Session) {
    *session.lock().unwrap_or_else(|p| p.into_inner()) = s;
    for rt in clusters {
        let mut core = rt.lock();
        core.set_session(s.lease, s.valid_until_ms);
        core.etcd_failing_since_ms = s.failing_since_ms;
    }
}

/// Keeps the session's lease alive. A keepalive that fails is retried on a new keepalive
/// stream after [`KEEPALIVE_RETRY`] (DESIGN.md §5): within the trusted window (keepalive sent +
/// TTL·(1−ρ)) the controller goes on acting; past it the cores stop acting, but the same lease
/// is still retried, because only etcd knows whether it expired (an etcd leader election alone
/// extends it): when a retry renews it, the controller carries on under the same lease and so
/// the same election term. A new lease is granted only once etcd says the old one is gone.
pub async fn run_session(
    mut etcd: Client,
    ttl_s: u64,
    drift: f64,
    session: Arc<Mutex<Session>>,
    clusters: Vec<Arc<ClusterRt>>,
    cancel: CancellationToken,
) {
    let trust = (ttl_s as f64 * 1000.0 * (1.0 - drift)) as u64;
    let period = Duration::from_millis((ttl_s * 1000 / 4).max(100));
    // One attempt may take this long; a slower answer is given up and retried on a new stream.
    let attempt = period;
    // Since when etcd has not answered this session (carried across a lost lease).
    let mut unreachable_since: Option<u64> = None;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        // Trust counts from before the request: the lease may have started any time after.
        let asked = clock::now_ms();
        let granted =
            tokio::time::timeout(Duration::from_secs(2), etcd.lease_grant(ttl_s as i64, None))
                .await;
        let id = match granted {
            Ok(Ok(r)) => r.id(),
            other => {
                let since = *unreachable_since.get_or_insert(asked);
                set_session(
                    &session,
                    &clusters,
                    Session {
                        failing_since_ms: Some(since),
                        ..Session::default()
                    },
                );
                tracing::warn!(error = ?other.err().map(|_| "timeout"), "cannot get an etcd lease; retrying");
                tokio::select! { _ = tokio::time::sleep(Duration::from_millis(200)) => {}, _ = cancel.cancelled() => break }
                continue;
            }
        };
        let mut valid_until_ms = asked + trust;
        unreachable_since = None;
        set_session(
            &session,
            &clusters,
            Session {
                lease: Some(id),
                valid_until_ms,
                failing_since_ms: None,
            },
        );
        let mut stream = None;
        // Since when keepalives have been failing (CLOCK_BOOTTIME ms), and how many attempts
        // failed; whether the lapse of the trusted window was logged.
        let mut failing: Option<(u64, u32)> = None;
        let mut lapse_logged = false;
        loop {
            let sent = clock::now_ms();
            let r = tokio::time::timeout(attempt, keep_alive(&mut etcd, id, &mut stream))
                .await
                .unwrap_or_else(|_| Renewal::Failed("no answer".into()));
            match r {
                Renewal::Renewed => {
                    lapse_logged = false;
                    unreachable_since = None;
                    if let Some((since, attempts)) = failing.take() {
                        tracing::info!(
                            lease = id,
                            failed_ms = sent.saturating_sub(since),
                            attempts,
                            "etcd lease keepalive succeeded again; same lease, same election"
                        );
                    }
                    valid_until_ms = sent + trust;
                    set_session(
                        &session,
                        &clusters,
                        Session {
                            lease: Some(id),
                            valid_until_ms,
                            failing_since_ms: None,
                        },
                    );
                }
                Renewal::Gone => {
                    tracing::warn!(lease = id, "etcd says the lease is gone; taking a new one");
                    break;
                }
                Renewal::Failed(why) => {
                    // A new stream for the next attempt (this one may be broken, or bound to
                    // an etcd member that is down).
                    stream = None;
                    let (since, attempts) = failing.get_or_insert((sent, 0));
                    *attempts += 1;
                    unreachable_since = Some(*since);
                    set_session(
                        &session,
                        &clusters,
                        Session {
                            lease: Some(id),
                            valid_until_ms,
                            failing_since_ms: Some(*since),
                        },
                    );
                    if *attempts == 1 {
                        tracing::warn!(
                            lease = id,
                            error = %why,
                            trusted_ms = valid_until_ms.saturating_sub(sent),
                            "etcd lease keepalive failed; retrying (the lease is trusted until keepalive-sent + TTL·(1−ρ))"
                        );
                    } else if sent >= valid_until_ms && !lapse_logged {
                        lapse_logged = true;
                        tracing::warn!(lease = id, error = %why, failing_ms = sent.saturating_sub(*since), "etcd lease keepalive still failing past the trusted window; not acting until it succeeds");
                    }
                }
            }
            let pause = if failing.is_some() {
                KEEPALIVE_RETRY
            } else {
                period
            };
            tokio::select! { _ = tokio::time::sleep(pause) => {}, _ = cancel.cancelled() => {
                // A controller stopped cleanly resigns at once.
                let _ = tokio::time::timeout(Duration::from_secs(1), etcd.lease_revoke(id)).await;
                return;
            } }
        }
        set_session(
            &session,
            &clusters,
            Session {
                failing_since_ms: unreachable_since,
                ..Session::default()
            },
        );
    }
}

/// One keepalive of lease `id` on `stream` (opened first when there is none).
async fn keep_alive(
    etcd: &mut Client,
    id: i64,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Renewal {
    if faults::hit("lease.before_renew").is_some() {
        return Renewal::Failed("failpoint lease.before_renew".into());
    }
    if stream.is_none() {
        match etcd.lease_keep_alive(id).await {
            Ok(s) => *stream = Some(s),
            Err(e) => return Renewal::Failed(e.to_string()),
        }
    }
    let Some((keeper, answers)) = stream.as_mut() else {
        return Renewal::Failed("no stream".into());
    };
    if let Err(e) = keeper.keep_alive().await {
        return Renewal::Failed(e.to_string());
    }
    match answers.message().await {
        Ok(Some(r)) if r.ttl() > 0 => Renewal::Renewed,
        Ok(Some(_)) => Renewal::Gone,
        Ok(None) => Renewal::Failed("the keepalive stream ended".into()),
        Err(e) => Renewal::Failed(e.to_string()),
    }
}

/// Campaigns, polls the state, ticks the core and executes its writes for one cluster.
pub async fn run_cluster(
    rt: Arc<ClusterRt>,
    mut etcd: Client,
    cfg: Arc<ControllerConfig>,
    session: Arc<Mutex<Session>>,
    cancel: CancellationToken,
) {
    let addr = cfg.advertised();
    let period = Duration::from_millis((cfg.timing.heartbeat_interval_ms / 2).max(10));
    let mut last_publish = 0u64;
    // What this controller's `hears` key holds: (lease, count). The lease keeps it alive; it is
    // put again only when the count or the lease changes.
    let mut published: Option<(i64, usize)> = None;
    let mut last_rev: Option<u64> = None;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let s = *session.lock().unwrap_or_else(|p| p.into_inner());
        let n = now();
        // The core acts (grants leases, decides) only within the session's trusted window: the
        // session task hands every renewal to the core at once (`set_session`), however long
        // this loop's etcd calls take. The term is trusted only within the window of the lease
        // it was won under.
        let lease_ok = s.lease.is_some() && n.ms < s.valid_until_ms;
        let term = if lease_ok {
            // Within the back-off after a handover, only look (DESIGN.md §5).
            let may_win = rt.lock().may_campaign(n);
            campaign(&mut etcd, &rt.keys, &addr, s.lease.unwrap_or(0), may_win).await
        } else if s.lease.is_none() {
            Ok((None, None))
        } else {
            // The lease is not trusted now but may still be alive (keepalives being retried
            // through an etcd leader election): the core stops acting (its window lapsed) and
            // keeps its term, which a renewed keepalive makes trusted again.
            Err("the etcd lease is not trusted now".to_string())
        };
        match term {
            Ok((term, active_addr)) => {
                let was = rt.lock().term();
                if was != term {
                    rt.bump();
                    match term {
                        Some(t) => {
                            tracing::info!(cluster = %rt.name, term = t, "active controller")
                        }
                        None => {
                            tracing::info!(cluster = %rt.name, active = ?active_addr, "standby controller")
                        }
                    }
                }
                rt.lock()
                    .on_election(n, term, active_addr.or_else(|| term.map(|_| addr.clone())));
            }
            // Nothing learnt: the core's trusted window alone says whether it acts.
            Err(e) => tracing::debug!(%e, "campaign failed"),
        }
        // Publish how many members this controller hears, under the session lease.
        if let Some(lease) = s.lease.filter(|_| lease_ok) {
            if n.ms.saturating_sub(last_publish) >= crate::core::HEARS_PUBLISH_EVERY_MS {
                last_publish = n.ms;
                let hears = rt.lock().published_hears(n);
                let key = format!("{}{}", rt.keys.hears, cfg.id);
                if published != Some((lease, hears)) {
                    published = None;
                    let put = etcd
                        .put(
                            key,
                            hears.to_string(),
                            Some(PutOptions::new().with_lease(lease)),
                        )
                        .await;
                    if put.is_ok() {
                        published = Some((lease, hears));
                    }
                }
                if let Ok(r) = etcd
                    .get(rt.keys.hears.clone(), Some(GetOptions::new().with_prefix()))
                    .await
                {
                    // The other controller hearing the most members (the first id on a tie).
                    let best = r
                        .kvs()
                        .iter()
                        .filter_map(|kv| {
                            let id = kv.key().strip_prefix(rt.keys.hears.as_bytes())?;
                            let id = std::str::from_utf8(id).ok()?;
                            let n = std::str::from_utf8(kv.value())
                                .ok()?
                                .parse::<usize>()
                                .ok()?;
                            (id != cfg.id).then(|| (n, id.to_string()))
                        })
                        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
                    let mut core = rt.lock();
                    core.standby_hears = best.as_ref().map_or(0, |b| b.0);
                    core.standby_id = best.map(|b| b.1);
                }
            }
        }
        // Observe the state.
        let from_seq = rt.lock().journal.last().map_or(0, |e| e.seq);
        match read_state(&mut etcd, &rt.keys, from_seq).await {
            Ok((observed, journal)) => {
                let rev = match &observed {
                    Observed::Present { rev, .. } => Some(*rev),
                    _ => None,
                };
                let mut core = rt.lock();
                // While a write is in flight the core's view stays as it is.
                core.on_observed(now(), observed, journal);
                drop(core);
                if rev != last_rev {
                    last_rev = rev;
                    rt.rev_tx.send_replace(rev.unwrap_or(0));
                    rt.bump();
                }
            }
            Err(e) => {
                tracing::warn!(cluster = %rt.name, error = %e, "cannot read the cluster state from etcd")
            }
        }
        // Decide.
        let w = rt.lock().tick(now());
        if let Some(w) = w {
            rt.execute(&mut etcd, w).await;
            continue;
        }
        // At the next poll, or when the leader's failure would be proven, if sooner.
        let n = now();
        let pause = match rt.lock().failure_due_at(n) {
            Some(due) => Duration::from_millis(due.saturating_sub(n.ms) + 1).min(period),
            None => period,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {},
            _ = rt.wake.notified() => {},
            _ = cancel.cancelled() => break,
        }
    }
    // Resign: delete our election key (guarded by our term) so a standby takes over at once.
    let term = rt.lock().term();
    if let Some(term) = term {
        let t = Txn::new()
            .when([Compare::create_revision(
                rt.keys.election.clone(),
                CompareOp::Equal,
                term as i64,
            )])
            .and_then([TxnOp::delete(rt.keys.election.clone(), None)]);
        let _ = tokio::time::timeout(Duration::from_secs(1), etcd.txn(t)).await;
        tracing::info!(cluster = %rt.name, "resigned");
    }
}

/// Creates the election key under `lease` if nobody holds it (only looks when `may_win` is
/// false); returns (term, active address). A key held under `lease` is this controller's term.
async fn campaign(
    etcd: &mut Client,
    keys: &Keys,
    addr: &str,
    lease: i64,
    may_win: bool,
) -> Result<(Option<u64>, Option<String>), String> {
    if !may_win {
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            etcd.get(keys.election.clone(), None),
        )
        .await
        .map_err(|_| "etcd did not answer".to_string())?
        .map_err(|e| e.to_string())?;
        return Ok(match r.kvs().first() {
            Some(kv) if kv.lease() == lease => (Some(kv.create_revision() as u64), None),
            Some(kv) => (None, Some(String::from_utf8_lossy(kv.value()).into_owned())),
            None => (None, None),
        });
    }
    let t = Txn::new()
        .when([Compare::create_revision(
            keys.election.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then([TxnOp::put(
            keys.election.clone(),
            addr.as_bytes().to_vec(),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(keys.election.clone(), None)]);
    let r = tokio::time::timeout(Duration::from_secs(1), etcd.txn(t))
        .await
        .map_err(|_| "etcd did not answer".to_string())?
        .map_err(|e| e.to_string())?;
    if r.succeeded() {
        return Ok((r.header().map(|h| h.revision() as u64), None));
    }
    for op in r.op_responses() {
        if let etcd_client::TxnOpResponse::Get(g) = op {
            if let Some(kv) = g.kvs().first() {
                let holder = String::from_utf8_lossy(kv.value()).into_owned();
                if kv.lease() == lease {
                    return Ok((Some(kv.create_revision() as u64), None));
                }
                return Ok((None, Some(holder)));
            }
        }
    }
    Ok((None, None))
}

pub mod faults;
