//! etcd's upkeep, one task per controller process: compacting etcd's history behind the active
//! controller, and reading etcd's alarms and size for the cluster view and `batonctl status` (a
//! NOSPACE alarm stops every decision, election and new lease). It does not defragment etcd
//! (that blocks the member) nor disarm alarms: both are the operator's, and say so.

use crate::runtime::ClusterRt;
use baton_common::clock;
use etcd_client::{AlarmAction, AlarmType, Client};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What this controller last learned of etcd itself (`batonctl status`, the cluster view).
#[derive(Clone, Debug, Default, Serialize)]
pub struct EtcdHealth {
    /// Raised alarms, as `NOSPACE (member 8e9e05c52164694d)`. Under NOSPACE etcd refuses every
    /// write: no decision, election or new lease is possible until an operator compacts,
    /// defragments and disarms it.
    pub alarms: Vec<String>,
    /// etcd's current revision, and the database size (file, and in use) of the member that
    /// answered, in bytes.
    pub revision: Option<u64>,
    pub db_size: Option<u64>,
    pub db_size_in_use: Option<u64>,
    /// The revision this controller last compacted etcd's history to.
    pub compacted_to: Option<u64>,
    /// Why the last look failed, if it did.
    pub error: Option<String>,
}

/// How often [`run_etcd_upkeep`] looks at etcd's status and alarms.
const UPKEEP_EVERY: Duration = Duration::from_secs(10);
/// How often the active controller compacts etcd's history, and how many revisions it keeps.
const COMPACT_EVERY_MS: u64 = 5 * 60 * 1000;
const COMPACT_KEEP_REVISIONS: u64 = 1000;

/// etcd's upkeep, one task per controller: every [`UPKEEP_EVERY`] it reads etcd's status and
/// alarm list into `health`; while this controller is active for some cluster, it compacts
/// etcd's history to [`COMPACT_KEEP_REVISIONS`] behind the current revision, at most every
/// [`COMPACT_EVERY_MS`] (the first time as soon as there is that much history) (logically: `physical = false`; bbolt reuses the freed pages, so the database stops
/// growing). etcd's own `--auto-compaction-*` does the same where it is configured; compacting
/// twice is harmless. It does not defragment (that blocks the member) nor disarm alarms.
pub async fn run_etcd_upkeep(
    mut etcd: Client,
    clusters: Vec<Arc<ClusterRt>>,
    health: Arc<Mutex<EtcdHealth>>,
    cancel: CancellationToken,
) {
    let mut last_compact_ms: Option<u64> = None;
    loop {
        let mut h = health.lock().unwrap_or_else(|p| p.into_inner()).clone();
        h.error = None;
        match tokio::time::timeout(Duration::from_secs(2), etcd.status()).await {
            Ok(Ok(s)) => {
                h.revision = s.header().map(|x| x.revision() as u64);
                h.db_size = Some(s.db_size() as u64);
                h.db_size_in_use = Some(s.raft_used_db_size() as u64);
            }
            Ok(Err(e)) => h.error = Some(format!("status: {e}")),
            Err(_) => h.error = Some("status: etcd did not answer".into()),
        }
        let alarms = tokio::time::timeout(
            Duration::from_secs(2),
            etcd.alarm(AlarmAction::Get, AlarmType::None, None),
        )
        .await;
        match alarms {
            Ok(Ok(a)) => {
                let now: Vec<String> = a
                    .alarms()
                    .iter()
                    .map(|m| format!("{} (member {:x})", m.alarm().as_str_name(), m.member_id()))
                    .collect();
                if now != h.alarms && !now.is_empty() {
                    tracing::error!(alarms = ?now, "etcd raised an alarm: it refuses writes until an operator clears it (compact, defragment, `etcdctl alarm disarm`)");
                }
                h.alarms = now;
            }
            Ok(Err(e)) => h.error = Some(format!("alarm list: {e}")),
            Err(_) => h.error = Some("alarm list: etcd did not answer".into()),
        }
        let active = clusters.iter().any(|rt| rt.lock().is_active());
        let due =
            last_compact_ms.is_none_or(|t| clock::now_ms().saturating_sub(t) >= COMPACT_EVERY_MS);
        if let (true, true, Some(rev)) = (active, due, h.revision) {
            let to = rev.saturating_sub(COMPACT_KEEP_REVISIONS);
            if to > h.compacted_to.unwrap_or(0) {
                last_compact_ms = Some(clock::now_ms());
                match tokio::time::timeout(Duration::from_secs(5), etcd.compact(to as i64, None))
                    .await
                {
                    Ok(Ok(_)) => {
                        tracing::info!(revision = to, "compacted etcd's history");
                        h.compacted_to = Some(to);
                    }
                    // Already compacted further (etcd's auto-compaction): nothing to do.
                    Ok(Err(e)) if e.to_string().contains("compacted") => h.compacted_to = Some(to),
                    Ok(Err(e)) => {
                        tracing::warn!(revision = to, error = %e, "cannot compact etcd's history")
                    }
                    Err(_) => tracing::warn!(
                        revision = to,
                        "cannot compact etcd's history: etcd did not answer"
                    ),
                }
            }
        }
        *health.lock().unwrap_or_else(|p| p.into_inner()) = h;
        tokio::select! { _ = tokio::time::sleep(UPKEEP_EVERY) => {}, _ = cancel.cancelled() => break }
    }
}
