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
/// How many revisions of history the active controller keeps behind etcd's current one.
pub const COMPACT_KEEP_REVISIONS: u64 = 1000;
/// It compacts as soon as this many revisions beyond [`COMPACT_KEEP_REVISIONS`] have piled up
/// (so history stays under keep + step + one upkeep tick of decisions, however busy)...
pub const COMPACT_STEP_REVISIONS: u64 = 100;
/// ...and at least this often whenever there is anything to compact at all.
const COMPACT_EVERY_MS: u64 = 5 * 60 * 1000;

/// The revision to compact etcd's history to now, if any: `revision` is etcd's current one,
/// `compacted_to` what this controller last compacted to, `since_last_ms` how long ago that was
/// (`None`: never, in this process). Keeps [`COMPACT_KEEP_REVISIONS`]; compacts once
/// [`COMPACT_STEP_REVISIONS`] more have piled up, or every [`COMPACT_EVERY_MS`] when fewer have.
pub fn compaction_target(
    revision: u64,
    compacted_to: u64,
    since_last_ms: Option<u64>,
) -> Option<u64> {
    let to = revision.saturating_sub(COMPACT_KEEP_REVISIONS);
    let behind = to.saturating_sub(compacted_to);
    let due = since_last_ms.is_none_or(|t| t >= COMPACT_EVERY_MS);
    (behind >= COMPACT_STEP_REVISIONS || (behind > 0 && due)).then_some(to)
}

/// etcd's upkeep, one task per controller: every [`UPKEEP_EVERY`] it reads etcd's status and
/// alarm list into `health`; while this controller is active for some cluster, it compacts
/// etcd's history to [`COMPACT_KEEP_REVISIONS`] behind the current revision, at most every
/// as [`compaction_target`] says (logically: `physical = false`; bbolt reuses the freed pages, so
/// the database stops growing). etcd's own `--auto-compaction-*` does the same where it is configured; compacting
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
        let since_last_ms = last_compact_ms.map(|t| clock::now_ms().saturating_sub(t));
        let target = h
            .revision
            .and_then(|rev| compaction_target(rev, h.compacted_to.unwrap_or(0), since_last_ms));
        if let (true, Some(to)) = (active, target) {
            last_compact_ms = Some(clock::now_ms());
            match tokio::time::timeout(Duration::from_secs(5), etcd.compact(to as i64, None)).await
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
        *health.lock().unwrap_or_else(|p| p.into_inner()) = h;
        tokio::select! { _ = tokio::time::sleep(UPKEEP_EVERY) => {}, _ = cancel.cancelled() => break }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_once_a_step_of_history_piles_up_however_recently_it_last_did() {
        // The first look compacts whatever lies beyond the kept history.
        assert_eq!(compaction_target(1001, 0, None), Some(1));
        assert_eq!(compaction_target(1000, 0, None), None);
        // A busy run: 10 s after compacting to 1, a step more is due at once, not 5 minutes on.
        assert_eq!(compaction_target(1107, 1, Some(10_000)), Some(107));
        assert_eq!(compaction_target(1100, 1, Some(10_000)), None);
        assert_eq!(compaction_target(1101, 1, Some(10_000)), Some(101));
        // A quiet one: fewer than a step waits for the period, then goes.
        assert_eq!(compaction_target(1050, 1, Some(COMPACT_EVERY_MS - 1)), None);
        assert_eq!(compaction_target(1050, 1, Some(COMPACT_EVERY_MS)), Some(50));
        // Nothing new: nothing to do, however long it has been.
        assert_eq!(compaction_target(1050, 50, Some(u64::MAX)), None);
        assert_eq!(compaction_target(1050, 60, None), None);
    }
}
