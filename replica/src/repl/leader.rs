//! The leader's side of the replication stream: a follower's HTTP request upgraded to
//! `baton-replication/1` is served here — hello, divergence exchange, then records from the
//! in-memory tail or the log (or the newest snapshot when its range was compacted), keepalives
//! carrying the commit LSN, and acknowledgements fed to the core, which turns them into commits.
//!
//! The stream ends when this replica stops leading that epoch or the follower opens a newer
//! stream; decisions are the core's (`core/leader.rs`).

use super::wire::{self, Msg};
use crate::core::FetchStart;
use crate::driver::node::Batch;
use crate::faults::fault;
use crate::node::Node;
use crate::snapshot;
use baton_common::{clock, Epoch, Lsn, NodeId};
use baton_runtime::tls::Peer;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_util::codec::Framed;

type Io = TokioIo<hyper::upgrade::Upgraded>;
type Stream = Framed<Io, wire::LeaderCodec>;

const BATCH_RECORDS: usize = 4096;
const BATCH_BYTES: usize = 1 << 20;
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one follower stream until it ends.
/// `peer` is the connection's TLS identity (the guard has let only a member of this cluster
/// through); its Hello must name the member the certificate names.
pub async fn serve(node: Arc<Node>, io: hyper::upgrade::Upgraded, peer: Option<Peer>) {
    let framed = Framed::new(TokioIo::new(io), wire::LeaderCodec::new());
    if let Err(e) = serve_inner(&node, framed, peer).await {
        tracing::debug!(error = %e, "replication stream ended");
    }
}

async fn recv(framed: &mut Stream, timeout: Duration) -> Result<(Msg, Bytes), String> {
    match tokio::time::timeout(timeout, framed.next()).await {
        Err(_) => Err(format!("no message within {timeout:?}")),
        Ok(None) => Err("the follower closed the stream".into()),
        Ok(Some(Err(e))) => Err(format!("stream error: {e}")),
        Ok(Some(Ok(frame))) => wire::decode(frame.freeze()).map_err(|e| e.to_string()),
    }
}

async fn send<S>(sink: &mut S, msg: &Msg) -> Result<(), String>
where
    S: futures_util::Sink<Bytes, Error = std::io::Error> + Unpin,
{
    sink.send(wire::encode(msg, &[]))
        .await
        .map_err(|e| format!("send failed: {e}"))
}

async fn serve_inner(
    node: &Arc<Node>,
    mut framed: Stream,
    peer: Option<Peer>,
) -> Result<(), String> {
    let framed_ref = &mut framed;
    let (
        Msg::Hello {
            id,
            data_id,
            epoch: follower_epoch,
            cluster,
            cluster_id,
            ..
        },
        _,
    ) = recv(framed_ref, EXCHANGE_TIMEOUT).await?
    else {
        return Err("the first message was not a hello".into());
    };
    // With TLS, the stream speaks for the member its certificate names and no other: a
    // certificate of r3 cannot acknowledge for r2 (forged acks would count toward commit).
    if node.auth.is_on() {
        let want = baton_runtime::tls::replica_name(&node.cfg.cluster, &id.0);
        let peer = peer.unwrap_or_else(|| Peer {
            addr: ([0, 0, 0, 0], 0).into(),
            cert: None,
        });
        if !peer.is(&want) {
            let refused = baton_runtime::auth::Refused::forbidden(
                "wrong_identity",
                format!("the hello names {id}, but the connection's certificate is not {want}"),
            );
            node.auth.note(&peer, &refused, &"replication hello");
            let epoch = node.lock().core().epoch();
            let _ = send(
                framed_ref,
                &Msg::Refused {
                    reason: refused.message.clone(),
                    epoch,
                },
            )
            .await;
            return Err(refused.message);
        }
    }
    let (accepted, epoch, me) = {
        let mut g = node.lock();
        // Identity first: nothing a stranger says (its epoch included) may count.
        let (res, fx) = match g.core().leader_check_peer(&id, &cluster, cluster_id) {
            Ok(()) => g
                .core_mut()
                .leader_accept(clock::now_ms(), &id, data_id, follower_epoch),
            Err(why) => {
                g.core_mut().note_refused(why.clone());
                (Err(why), Vec::new())
            }
        };
        let epoch = g.core().epoch();
        let me = (g.core().data_id(), g.core().cluster_id());
        node.step(g, fx);
        (res, epoch, me)
    };
    let stream = match accepted {
        Ok(s) => s,
        Err(reason) => {
            let _ = send(
                framed_ref,
                &Msg::Refused {
                    reason: reason.clone(),
                    epoch,
                },
            )
            .await;
            return Err(reason);
        }
    };
    send(
        framed_ref,
        &Msg::Welcome {
            epoch,
            leader: node.id.clone(),
            boot_id: node.boot_id,
            data_id: me.0,
            cluster: node.cfg.cluster.clone(),
            cluster_id: me.1,
        },
    )
    .await?;
    let start = loop {
        match recv(framed_ref, EXCHANGE_TIMEOUT).await?.0 {
            Msg::EpochQuery { epoch: queried } => {
                let (e, end, lossy_above) = node.lock().core().epoch_end(queried);
                send(
                    framed_ref,
                    &Msg::EpochEnd {
                        queried,
                        epoch: e,
                        end,
                        lossy_above,
                    },
                )
                .await?;
            }
            Msg::Fetch { from, prev_epoch } => {
                let res = node
                    .lock()
                    .core()
                    .leader_fetch(&id, stream, from, prev_epoch);
                match res {
                    Ok(s) => break s,
                    Err(reason) => {
                        let _ = send(
                            framed_ref,
                            &Msg::Refused {
                                reason: reason.clone(),
                                epoch,
                            },
                        )
                        .await;
                        return Err(reason);
                    }
                }
            }
            other => return Err(format!("unexpected message during the exchange: {other:?}")),
        }
    };
    tracing::info!(follower = %id, ?start, epoch = %epoch, "follower attached");
    let (mut sink, mut source) = framed.split();
    let reader = {
        let node = node.clone();
        let id = id.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = source.next().await {
                match wire::decode(frame.freeze()) {
                    Ok((
                        Msg::Ack {
                            epoch,
                            flushed,
                            promise_ms,
                            echo_ms,
                        },
                        _,
                    )) => {
                        node.before_apply();
                        let now = clock::now_ms();
                        let mut g = node.lock();
                        if epoch == g.core().epoch() {
                            g.core_mut()
                                .leader_on_promise(now, &id, stream, echo_ms, promise_ms);
                        }
                        let fx = g.core_mut().leader_on_ack(now, &id, stream, epoch, flushed);
                        node.step(g, fx);
                    }
                    Ok((other, _)) => {
                        tracing::debug!(follower = %id, ?other, "unexpected message from a follower");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(follower = %id, error = %e, "malformed message from a follower");
                        break;
                    }
                }
            }
        })
    };
    let res = send_loop(node, &mut sink, &id, stream, epoch, start).await;
    reader.abort();
    node.lock().core_mut().leader_detach(&id, stream);
    tracing::info!(follower = %id, epoch = %epoch, result = ?res, "follower detached");
    res
}

async fn send_loop<S>(
    node: &Arc<Node>,
    sink: &mut S,
    id: &NodeId,
    stream: u64,
    epoch: Epoch,
    start: FetchStart,
) -> Result<(), String>
where
    S: futures_util::Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let keepalive = Duration::from_millis((node.cfg.timing.heartbeat_interval_ms / 2).max(10));
    let mut next = match start {
        FetchStart::Log(from) => from,
        FetchStart::Snapshot => send_snapshot(node, sink, epoch).await?,
    };
    let mut progress = node.progress.subscribe();
    let mut commit_sent = Lsn(0);
    let mut last_send = Instant::now();
    loop {
        progress.borrow_and_update();
        let (alive, commit, end, log_start, prev_epoch) = {
            let g = node.lock();
            let c = g.core();
            let prev = Lsn(next.0 - 1);
            (
                c.leader_stream_alive(id, stream, epoch),
                c.commit(),
                c.log_end().1,
                c.log_start(),
                c.epoch_of(prev),
            )
        };
        if !alive {
            let _ = send(
                sink,
                &Msg::Refused {
                    reason: "this stream is no longer current".into(),
                    epoch,
                },
            )
            .await;
            return Ok(());
        }
        if next < log_start {
            // The follower fell behind what the log still holds while streaming.
            next = send_snapshot(node, sink, epoch).await?;
            continue;
        }
        let batch = node
            .records_from(next, BATCH_RECORDS, BATCH_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        let count = batch.len();
        if count > 0 {
            let prev = (
                prev_epoch.ok_or("the stream position is past the log end")?,
                Lsn(next.0 - 1),
            );
            fault!("repl.before_send", |e| format!("send failed: {e}"));
            let now = clock::now_ms();
            let msg = match &batch {
                Batch::Records(recs) => wire::encode_append(epoch, prev, commit, end, now, recs),
                Batch::Frames(f) => wire::encode_append_frames(epoch, prev, commit, end, now, f),
            };
            sink.send(msg)
                .await
                .map_err(|e| format!("send failed: {e}"))?;
            node.metrics.repl_records_sent.inc_by(count as u64);
            next = Lsn(next.0 + count as u64);
            commit_sent = commit;
            last_send = Instant::now();
            continue;
        }
        if commit > commit_sent || last_send.elapsed() >= keepalive {
            send(
                sink,
                &Msg::Keepalive {
                    epoch,
                    commit,
                    end,
                    sent_ms: clock::now_ms(),
                },
            )
            .await?;
            commit_sent = commit;
            last_send = Instant::now();
        }
        tokio::select! {
            _ = progress.changed() => {}
            _ = tokio::time::sleep(keepalive) => {}
        }
    }
}

/// Sends the newest snapshot; returns the LSN to stream from after it.
async fn send_snapshot<S>(node: &Arc<Node>, sink: &mut S, epoch: Epoch) -> Result<Lsn, String>
where
    S: futures_util::Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let dir = node.data_dir().join("snap");
    let snaps = tokio::task::spawn_blocking(move || snapshot::list(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let (lsn, path) = snaps
        .last()
        .cloned()
        .ok_or("the follower needs a snapshot but none exists")?;
    let last_epoch = node
        .lock()
        .core()
        .epoch_of(lsn)
        .ok_or("the snapshot is past the log end")?;
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let bytes = f.metadata().await.map_err(|e| e.to_string())?.len();
    tracing::info!(lsn = %lsn, bytes, file = %path.display(), "sending a snapshot to a follower");
    send(
        sink,
        &Msg::SnapshotBegin {
            epoch,
            lsn,
            last_epoch,
            bytes,
        },
    )
    .await?;
    let mut buf = vec![0u8; BATCH_BYTES];
    let mut sent = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        sink.send(wire::encode(&Msg::SnapshotChunk, &buf[..n]))
            .await
            .map_err(|e| format!("send failed: {e}"))?;
    }
    if sent != bytes {
        return Err(format!(
            "snapshot {} changed size while being sent",
            path.display()
        ));
    }
    send(sink, &Msg::SnapshotEnd).await?;
    Ok(lsn.next())
}
