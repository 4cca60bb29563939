//! The stand-in controller: a test double for `baton-controller` that answers heartbeats with
//! directives so that replicas can be driven without etcd. It names one leader; a new boot of
//! that leader (a restart) gets a new epoch, as the real controller does, and, as it does, is
//! told its promises are void when the previous epoch's leader was itself (same id and data
//! directory: it gave no promise in the epoch it led); every other member is
//! directed to follow. In semi-sync mode the waited set is every follower heard within
//! `drop_after_ms` (a crude stand-in for the controller's sync-set protocol). Tests can move
//! leadership, change the lease or mode, or make it go silent.
//!
//! It makes no failure decisions and keeps nothing durable.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use baton_common::directive::{Directive, Heartbeat, LeaderRef, Member, MemberRef, Mode, Role};
use baton_common::{BootId, DataId, Epoch, NodeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Mutable behaviour of the stand-in.
#[derive(Debug)]
pub struct Plan {
    pub leader: String,
    pub epoch: u64,
    pub rev: u64,
    pub lease_ms: u64,
    pub start_after_ms: u64,
    /// Tell a new leader that its promises to the previous one are void (the test knows the
    /// previous leader is gone or fenced).
    pub promises_void: bool,
    pub mode: Mode,
    pub strict: bool,
    /// Followers unheard for longer leave the waited set (`None`: never).
    pub drop_after_ms: Option<u64>,
    /// Put the followers in the waited set (semi-sync); when false it stays empty.
    pub sync_followers: bool,
    waited: Vec<MemberRef>,
    last_seen: HashMap<String, Instant>,
    /// While true, heartbeats get no answer (a controller that vanished).
    pub silent: bool,
    /// Heartbeats received, answered or not (silent).
    pub heard: u64,
    leader_boot: Option<BootId>,
    /// The leader of the current epoch and of the one before (id, data directory), for
    /// `promises_void` as the controller decides it.
    epoch_leaders: [Option<(String, DataId)>; 2],
    /// Last heartbeat per member.
    pub seen: HashMap<String, Heartbeat>,
}

/// A running stand-in controller.
pub struct Standin {
    pub url: String,
    pub plan: Arc<Mutex<Plan>>,
    _server: CancelOnDrop,
}

impl Standin {
    /// Starts on an ephemeral loopback port, naming `leader` as the leader; served as a
    /// controller is, over TLS with a controller's certificate (plain when insecure).
    pub async fn start(leader: &str) -> anyhow::Result<Standin> {
        Standin::start_with_tls(leader, crate::secure::controller_tls("standin")).await
    }

    /// As [`Standin::start`], serving TLS with `tls` (the attack tests give it a certificate
    /// that is not a controller's, or one of another CA).
    pub async fn start_with_tls(
        leader: &str,
        tls: Option<Arc<baton_runtime::tls::Tls>>,
    ) -> anyhow::Result<Standin> {
        let plan = Arc::new(Mutex::new(Plan {
            leader: leader.to_string(),
            epoch: 0,
            rev: 1,
            lease_ms: 2000,
            start_after_ms: 0,
            promises_void: false,
            mode: Mode::SemiSync,
            strict: false,
            drop_after_ms: Some(1000),
            sync_followers: true,
            waited: Vec::new(),
            last_seen: HashMap::new(),
            silent: false,
            heard: 0,
            leader_boot: None,
            epoch_leaders: [None, None],
            seen: HashMap::new(),
        }));
        let app = Router::new()
            .route("/v1/clusters/{cluster}/heartbeat", post(heartbeat))
            .with_state(plan.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = crate::secure::url(listener.local_addr()?);
        let opts =
            baton_runtime::ServeOpts::new(1024, Duration::from_secs(1), Duration::from_secs(15))
                .with_tls(tls);
        let task = tokio::spawn(baton_runtime::serve(
            listener,
            app,
            opts,
            tokio_util::sync::CancellationToken::new(),
        ));
        Ok(Standin {
            url,
            plan,
            _server: CancelOnDrop(task),
        })
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Plan) -> R) -> R {
        f(&mut self.plan.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Moves leadership to `id` at a new epoch.
    pub fn set_leader(&self, id: &str) {
        self.with(|p| {
            p.leader = id.to_string();
            p.leader_boot = None;
        })
    }

    /// The current epoch handed out.
    pub fn epoch(&self) -> u64 {
        self.with(|p| p.epoch)
    }
}

async fn heartbeat(
    State(plan): State<Arc<Mutex<Plan>>>,
    Path(_cluster): Path<String>,
    Json(hb): Json<Heartbeat>,
) -> Result<Json<Directive>, axum::http::StatusCode> {
    let mut p = plan.lock().unwrap_or_else(|p| p.into_inner());
    p.heard += 1;
    if p.silent {
        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    }
    let max_reported = p
        .seen
        .values()
        .map(|h| h.epoch.0)
        .max()
        .unwrap_or(0)
        .max(hb.epoch.0);
    p.seen.insert(hb.id.0.clone(), hb.clone());
    p.last_seen.insert(hb.id.0.clone(), Instant::now());
    let mut waited: Vec<MemberRef> = if p.sync_followers {
        p.seen
            .values()
            .filter(|h| h.id.0 != p.leader)
            .filter(|h| {
                p.drop_after_ms.is_none_or(|ms| {
                    p.last_seen
                        .get(&h.id.0)
                        .is_some_and(|t| t.elapsed() < Duration::from_millis(ms))
                })
            })
            .map(|h| MemberRef {
                id: h.id.clone(),
                data_id: h.data_id,
            })
            .collect()
    } else {
        Vec::new()
    };
    waited.sort();
    if waited != p.waited {
        p.waited = waited;
        p.rev += 1;
    }
    if hb.id.0 == p.leader && p.leader_boot != Some(hb.boot_id) {
        // A new leader, or the leader restarted: a new epoch above anything reported.
        p.epoch = p.epoch.max(max_reported) + 1;
        p.rev += 1;
        p.leader_boot = Some(hb.boot_id);
        let now_leading = Some((p.leader.clone(), hb.data_id));
        p.epoch_leaders = [p.epoch_leaders[1].take(), now_leading];
    }
    // As the controller (`core/directive.rs`): a leader's own promises bind it only to leaders
    // it followed, none when the previous epoch's leader was itself.
    let own_prev = p.epoch_leaders[0].is_some() && p.epoch_leaders[0] == p.epoch_leaders[1];
    let leader = p.leader_boot.map(|boot_id| LeaderRef {
        id: NodeId(p.leader.clone()),
        addr: p
            .seen
            .get(&p.leader)
            .map(|h| h.addr.clone())
            .unwrap_or_default(),
        boot_id,
        data_id: p.seen.get(&p.leader).map(|h| h.data_id).unwrap_or_default(),
    });
    let role = if hb.id.0 == p.leader && p.leader_boot == Some(hb.boot_id) {
        Role::Leader
    } else {
        Role::Follower
    };
    let members = p
        .seen
        .values()
        .map(|h| Member {
            id: h.id.clone(),
            addr: h.addr.clone(),
            priority: 0,
            no_failover: false,
        })
        .collect();
    Ok(Json(Directive {
        seq: hb.seq,
        rev: p.rev,
        controller_term: 1,
        active: true,
        active_controller: None,
        epoch: Epoch(p.epoch),
        role: if p.epoch == 0 { None } else { Some(role) },
        leader,
        members,
        waited: p.waited.clone(),
        lease_ms: p.lease_ms,
        start_after_ms: p.start_after_ms,
        promises_void: p.promises_void || (role == Role::Leader && own_prev),
        mode: p.mode,
        strict: p.strict,
        lossy: false,
        cluster_id: 0,
    }))
}

/// Aborts a spawned task when dropped, so a stand-in never outlives its test.
pub struct CancelOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
