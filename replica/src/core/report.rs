//! What the engine reports: the heartbeat sent to every controller and the status document.
//! Pure reads of the engine's state; nothing here changes it.

use super::Core;
use baton_common::api::ReplicaStatus;
use baton_common::directive::{Heartbeat, Mode, ReportedRole};

impl Core {
    /// The heartbeat to send now.
    pub fn heartbeat(&self, now: u64, seq: u64) -> Heartbeat {
        let leader = self.role.leader();
        let waiting = leader
            .map(|l| self.waiting_info(l, now))
            .unwrap_or_default();
        Heartbeat {
            seq,
            cluster: self.cfg.cluster.clone(),
            cluster_id: self.cluster_id,
            id: self.cfg.id.clone(),
            data_id: self.cfg.data_id,
            boot_id: self.cfg.boot_id,
            unclean: self.unclean,
            addr: self.cfg.addr.clone(),
            epoch: self.epoch,
            role: self.role.reported(),
            log_end_epoch: self.log.end.0,
            log_end_lsn: self.log.end.1,
            flushed_lsn: self.log.flushed,
            applied_lsn: self.log.applied,
            commit_lsn: self.log.commit,
            applied_rev: self.applied_rev,
            max_term: self.max_term,
            since_leader_ms: self
                .role
                .upstream()
                .map(|u| now.saturating_sub(u.last_msg_ms)),
            oldest_unflushed_ms: leader.map(|_| {
                self.log
                    .unflushed_since_ms
                    .map_or(0, |t| now.saturating_sub(t))
            }),
            last_sync_ack_ms: leader.and_then(|_| waiting.iter().map(|w| w.last_ack_ms).max()),
            lease_left_ms: leader.map(|_| self.lease_left(now)),
            waiting,
            last_cut: self.last_cut.clone(),
            refused_peer: self.last_refused.clone(),
            disk_full: self.disk_full.is_some(),
            degraded_for_ms: self.degraded_for_ms(now),
            on_promises: self.on_promises_only(now),
            log_start_lsn: self.log.start,
            // The log thread knows the size; the runtime fills it in (`heartbeat.rs`).
            log_bytes: 0,
            catchup: None,
        }
    }

    /// The status document.
    pub fn status(&self, now: u64) -> ReplicaStatus {
        let leader = self.role.leader();
        let health = if self.fatal.is_some() {
            "fatal"
        } else if self.role.reported() == ReportedRole::None {
            "no_role"
        } else if leader.is_some_and(|l| l.leading_epoch.is_none()) {
            "starting"
        } else if leader.is_some() && !self.lease_valid(now) {
            "no_lease"
        } else {
            "ok"
        };
        ReplicaStatus {
            id: self.cfg.id.clone(),
            cluster: self.cfg.cluster.clone(),
            data_id: self.cfg.data_id,
            boot_id: self.cfg.boot_id,
            unclean: self.unclean,
            role: self.role.reported(),
            epoch: self.epoch,
            log_end_epoch: self.log.end.0,
            log_end_lsn: self.log.end.1,
            log_start_lsn: self.log.start,
            flushed_lsn: self.log.flushed,
            commit_lsn: self.log.commit,
            applied_lsn: self.log.applied,
            state_digest: format!("{:032x}", self.log.state.digest()),
            keys: self.log.state.len() as u64,
            snapshot_lsn: self.snap.lsn,
            leader: self.leader_hint(),
            waited: self.waited.clone(),
            lease_left_ms: self.lease_left(now),
            health: health.into(),
            degraded: leader.is_some() && self.waited.is_empty() && self.mode == Mode::SemiSync,
            degraded_for_ms: self.degraded_for_ms(now),
            degraded_total_ms: self.degraded_total_ms(now),
            epoch_history: self.log.history.clone(),
            waiting: leader
                .map(|l| self.waiting_info(l, now))
                .unwrap_or_default(),
            followers: self.follower_progress(now),
            upstream: self.upstream_progress(now),
            last_cut: self.last_cut.clone(),
            on_promises: self.on_promises_only(now),
            disk_full: self.disk_full.is_some(),
            // The stream's meter knows it; the runtime fills it in (`api.rs`, `heartbeat.rs`).
            catchup: None,
        }
    }
}
