//! The controller's runtime around [`ClusterCore`]: the etcd session (one lease, kept alive;
//! trusted only until keepalive-sent + TTL·(1−ρ)), the election per cluster (a key created under
//! that lease; its create revision is the controller term), polling the cluster state, executing
//! the core's writes as guarded transactions, and publishing how many members this controller
//! hears (under its lease, put only when the count changes) so that a controller hearing fewer
//! decides no failover. etcd's own upkeep (compaction, alarms) is `upkeep.rs`.
//!
//! Nothing here writes etcd while nothing changes: an idle cluster makes no revisions (lease
//! keepalives make none), so etcd's size stays flat (TESTING.md row 23).

use crate::config::ControllerConfig;
use crate::core::{ClusterCore, Now, Observed, Write, WriteOutcome};
use crate::journal::{self, Entry, Tail};
use crate::state::{ClusterState, Phase};
use baton_common::clock;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// etcd keys of one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    pub election: String,
    pub state: String,
    /// Prefix of the journal entries, `journal/{seq:020}` each.
    pub journal: String,
    /// The anti-flapping budget: a JSON array of the Unix ms of the automatic failovers of the
    /// last hour.
    pub failovers: String,
    pub hears: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        let p = format!("/baton/{cluster}/");
        Keys {
            election: format!("{p}election"),
            state: format!("{p}state"),
            journal: format!("{p}journal/"),
            failovers: format!("{p}failovers"),
            hears: format!("{p}hears/"),
        }
    }

    /// The key of journal entry `seq` (zero-padded: keys sort as numbers).
    pub fn journal_entry(&self, seq: u64) -> String {
        format!("{}{seq:020}", self.journal)
    }

    /// The end of the journal's key range (the prefix with its last byte raised).
    fn journal_end(&self) -> Vec<u8> {
        let mut end = self.journal.clone().into_bytes();
        if let Some(b) = end.last_mut() {
            *b += 1;
        }
        end
    }
}

/// The controller's etcd lease and how long it may be trusted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Session {
    pub lease: Option<i64>,
    /// CLOCK_BOOTTIME ms until which the lease is certainly alive.
    pub valid_until_ms: u64,
}

/// One managed cluster.
pub struct ClusterRt {
    pub name: String,
    pub keys: Keys,
    pub core: Mutex<ClusterCore>,
    /// The observed state revision, for long-polls on the leader.
    pub rev_tx: watch::Sender<u64>,
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
    pub fn lock(&self) -> std::sync::MutexGuard<'_, ClusterCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
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
                tracing::info!(cluster = %self.name, rev, why = %w.why, "cluster state written")
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
        outcome
    }
}

async fn txn(etcd: &mut Client, keys: &Keys, w: &Write, term: u64) -> WriteOutcome {
    let mut cmps = vec![Compare::create_revision(
        keys.election.clone(),
        CompareOp::Equal,
        term as i64,
    )];
    cmps.push(if w.expect_rev == 0 {
        Compare::create_revision(keys.state.clone(), CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(keys.state.clone(), CompareOp::Equal, w.expect_rev as i64)
    });
    // Nobody appended to the journal since the core read it.
    cmps.push(Compare::create_revision(
        keys.journal_entry(w.journal_after + 1),
        CompareOp::Equal,
        0,
    ));
    let mut ops = Vec::new();
    if let Some(s) = &w.state {
        ops.push(TxnOp::put(
            keys.state.clone(),
            serde_json::to_vec(s).expect("state serializes"),
            None,
        ));
    }
    for e in &w.journal {
        ops.push(TxnOp::put(
            keys.journal_entry(e.seq),
            serde_json::to_vec(e).expect("journal entry serializes"),
            None,
        ));
    }
    // The window: entries older than the newest RING go in the same transaction.
    let newest = w.journal.iter().map(|e| e.seq).max().unwrap_or(0);
    if newest > journal::RING as u64 {
        ops.push(TxnOp::delete(
            keys.journal_entry(0),
            Some(
                DeleteOptions::new()
                    .with_range(keys.journal_entry(newest - journal::RING as u64 + 1)),
            ),
        ));
    }
    if let Some(f) = &w.failovers {
        ops.push(TxnOp::put(
            keys.failovers.clone(),
            serde_json::to_vec(f).expect("failovers serialize"),
            None,
        ));
    }
    let t = Txn::new().when(cmps).and_then(ops);
    match tokio::time::timeout(Duration::from_secs(2), etcd.txn(t)).await {
        Ok(Ok(resp)) if resp.succeeded() => {
            let rev = if w.state.is_some() {
                resp.header().map_or(0, |h| h.revision() as u64)
            } else {
                w.expect_rev
            };
            WriteOutcome::Committed { rev }
        }
        Ok(Ok(_)) => WriteOutcome::Rejected,
        Ok(Err(e)) => {
            tracing::warn!(%e, "etcd transaction failed");
            WriteOutcome::Unknown
        }
        Err(_) => WriteOutcome::Unknown,
    }
}

/// Reads, at one revision, the state key of a cluster, the journal entries from `from_seq` on
/// (the newest one the core knows; 0: all) and the budget key. When no entry at or above
/// `from_seq` exists any more (etcd restored or emptied), the newest entry is read instead.
pub async fn read_state(
    etcd: &mut Client,
    keys: &Keys,
    from_seq: u64,
) -> Result<(Observed, Tail), String> {
    let tail = |from: u64| {
        TxnOp::get(
            keys.journal_entry(from),
            Some(GetOptions::new().with_range(keys.journal_end())),
        )
    };
    let newest = TxnOp::get(
        keys.journal.clone(),
        Some(
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(1),
        ),
    );
    let t = Txn::new().and_then([
        TxnOp::get(keys.state.clone(), None),
        tail(from_seq),
        TxnOp::get(keys.failovers.clone(), None),
    ]);
    let r = etcd.txn(t).await.map_err(|e| e.to_string())?;
    let gets: Vec<etcd_client::GetResponse> = r
        .op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect();
    let [state, entries, failovers] = &gets[..] else {
        return Err("etcd answered a read with an unexpected shape".into());
    };
    let observed = match state.kvs().first() {
        None => Observed::Absent,
        Some(kv) => {
            let state: ClusterState = serde_json::from_slice(kv.value())
                .map_err(|e| format!("{}: malformed state: {e}", keys.state))?;
            Observed::Present {
                state,
                rev: kv.mod_revision() as u64,
            }
        }
    };
    let mut entries = parse_entries(keys, entries.kvs())?;
    if entries.is_empty() && from_seq > 0 {
        let r = etcd
            .txn(Txn::new().and_then([newest]))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(TxnOpResponse::Get(g)) = r.op_responses().first() {
            entries = parse_entries(keys, g.kvs())?;
        }
    }
    let failovers = match failovers.kvs().first() {
        None => Vec::new(),
        Some(kv) => serde_json::from_slice(kv.value())
            .map_err(|e| format!("{}: malformed budget: {e}", keys.failovers))?,
    };
    Ok((observed, Tail { entries, failovers }))
}

/// The newest `limit` journal entries, oldest first (a range read of the prefix).
pub async fn read_journal(
    etcd: &mut Client,
    keys: &Keys,
    limit: usize,
) -> Result<Vec<Entry>, String> {
    // etcd reads a limit of 0 as "no limit".
    if limit == 0 {
        return Ok(Vec::new());
    }
    let r = etcd
        .get(
            keys.journal.clone(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(limit.min(journal::RING) as i64),
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut entries = parse_entries(keys, r.kvs())?;
    entries.sort_by_key(|e| e.seq);
    Ok(entries)
}

/// Journal entries from their keys, in the order given.
fn parse_entries(keys: &Keys, kvs: &[etcd_client::KeyValue]) -> Result<Vec<Entry>, String> {
    kvs.iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            let seq = key
                .strip_prefix(&keys.journal)
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| format!("{key}: not a journal entry key"))?;
            let e: Entry = serde_json::from_slice(kv.value())
                .map_err(|e| format!("{key}: malformed journal entry: {e}"))?;
            Ok(Entry { seq, ..e })
        })
        .collect()
}

/// Keeps the session's lease alive; re-grants it when lost.
pub async fn run_session(
    mut etcd: Client,
    ttl_s: u64,
    drift: f64,
    session: Arc<Mutex<Session>>,
    cancel: CancellationToken,
) {
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
                tracing::warn!(error = ?other.err().map(|_| "timeout"), "cannot get an etcd lease; retrying");
                tokio::select! { _ = tokio::time::sleep(Duration::from_millis(200)) => {}, _ = cancel.cancelled() => break }
                continue;
            }
        };
        let trust = (ttl_s as f64 * 1000.0 * (1.0 - drift)) as u64;
        *session.lock().unwrap_or_else(|p| p.into_inner()) = Session {
            lease: Some(id),
            valid_until_ms: asked + trust,
        };
        let Ok((mut keeper, mut stream)) = etcd.lease_keep_alive(id).await else {
            continue;
        };
        let period = Duration::from_millis((ttl_s * 1000 / 4).max(100));
        loop {
            let sent = clock::now_ms();
            let ok = async {
                if faults::hit("lease.before_renew") {
                    return None;
                }
                keeper.keep_alive().await.ok()?;
                let r = stream.message().await.ok()??;
                (r.ttl() > 0).then_some(())
            };
            match tokio::time::timeout(Duration::from_millis(period.as_millis() as u64 * 2), ok)
                .await
            {
                Ok(Some(())) => {
                    session
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .valid_until_ms = sent + trust;
                }
                _ => {
                    tracing::warn!(
                        lease = id,
                        "etcd lease keepalive failed; the lease is trusted until it would expire"
                    );
                    break;
                }
            }
            tokio::select! { _ = tokio::time::sleep(period) => {}, _ = cancel.cancelled() => {
                // A controller stopped cleanly resigns at once.
                let _ = etcd.lease_revoke(id).await;
                return;
            } }
        }
        // Wait out the trusted window before taking a new lease (the old one may still hold
        // the election key).
        let until = session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .valid_until_ms;
        let wait = until.saturating_sub(clock::now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        *session.lock().unwrap_or_else(|p| p.into_inner()) = Session::default();
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
        // The core acts (grants leases, decides) only within the session's trusted window,
        // however long this loop's etcd calls take.
        // The term is trusted only within the window of the lease it was won under.
        rt.lock().set_session(s.lease, s.valid_until_ms);
        // The election: trusted only within the session's window.
        let lease_ok = s.lease.is_some() && n.ms < s.valid_until_ms;
        let term = if lease_ok {
            campaign(&mut etcd, &rt.keys, &addr, s.lease.unwrap_or(0)).await
        } else {
            Ok((None, None))
        };
        match term {
            Ok((term, active_addr)) => {
                let was = rt.lock().term();
                if was != term {
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
            Err(e) => {
                tracing::debug!(%e, "campaign failed");
                let mut core = rt.lock();
                if core.is_active() && !core.active_at(n) {
                    core.on_election(n, None, None);
                }
            }
        }
        // Publish how many members this controller hears, under the session lease.
        if let Some(lease) = s.lease.filter(|_| lease_ok) {
            if n.ms.saturating_sub(last_publish) >= 250 {
                last_publish = n.ms;
                let hears = rt.lock().hears(n);
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
                    let me = format!("{}{}", rt.keys.hears, cfg.id);
                    let others = r
                        .kvs()
                        .iter()
                        .filter(|kv| kv.key() != me.as_bytes())
                        .filter_map(|kv| {
                            std::str::from_utf8(kv.value()).ok()?.parse::<usize>().ok()
                        })
                        .max()
                        .unwrap_or(0);
                    rt.lock().standby_hears = others;
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
        tokio::select! { _ = tokio::time::sleep(period) => {}, _ = cancel.cancelled() => break }
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

/// Creates the election key under `lease` if nobody holds it; returns (term, active address).
async fn campaign(
    etcd: &mut Client,
    keys: &Keys,
    addr: &str,
    lease: i64,
) -> Result<(Option<u64>, Option<String>), String> {
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
