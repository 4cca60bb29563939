//! The follower's side of the replication stream: while the engine says "follow L at epoch E",
//! keep one stream to L — connect and upgrade, hello, feed the welcome, the divergence
//! exchange, snapshots, appends and keepalives to the engine and hand its actions to the
//! driver (which persists, cuts, resyncs and installs in the engine's order), and acknowledge
//! every flush. Waits are on the node's watch channels, never on sleeps; the received snapshot
//! is written off the executor. Any error ends the stream; the loop reconnects after a short
//! pause.

use super::progress::{self, Meter};
use super::wire::{self, Msg, PROTOCOL};
use crate::core::{AppendHeader, FollowerNext};
use crate::faults::fault;
use crate::logthread::Archived;
use crate::node::Node;
use crate::snapshot;
use crate::wal::Record;
use baton_common::directive::{CutRange, LeaderRef};
use baton_common::{clock, Epoch};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

type Stream = Framed<TokioIo<hyper::upgrade::Upgraded>, tokio_util::codec::LengthDelimitedCodec>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until `cancel` fires.
pub async fn run(node: Arc<Node>, cancel: CancellationToken) {
    let mut last_err: Option<String> = None;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        // Subscribed before the check: a step after it wakes the wait below.
        let mut progress = node.progress.subscribe();
        let target = node.lock().core().follower_target();
        let Some((leader, epoch)) = target else {
            tokio::select! {
                r = progress.changed() => if r.is_err() { return },
                _ = cancel.cancelled() => return,
            }
            continue;
        };
        let res = tokio::select! {
            r = follow(&node, &leader, epoch) => r,
            _ = cancel.cancelled() => return,
        };
        match res {
            Ok(()) => last_err = None,
            Err(e) => {
                if last_err.as_deref() != Some(e.as_str()) {
                    tracing::warn!(leader = %leader.id, addr = %leader.addr, error = %e, "replication stream from the leader ended");
                }
                last_err = Some(e);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    }
}

/// Opens the stream to the leader `leader_id` at `addr`: over TLS (with this replica's
/// certificate) the leader must present `leader_id`'s certificate of this cluster, so nobody
/// else can feed this replica records or snapshots.
async fn connect(node: &Node, leader_id: &str, addr: &str) -> Result<Stream, String> {
    let dialer = baton_runtime::connect::Dialer::new(
        node.tls.clone(),
        baton_runtime::tls::replica_name(&node.cfg.cluster, leader_id),
    );
    let tcp = dialer.dial(addr, CONNECT_TIMEOUT).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let req = hyper::Request::post(format!("{}://{addr}/v1/replicate", dialer.scheme()))
        .header(hyper::header::HOST, addr)
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, PROTOCOL)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| format!("{addr} did not answer the upgrade"))?
        .map_err(|e| format!("upgrade request to {addr}: {e}"))?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(format!(
            "{addr} refused the stream: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let up = hyper::upgrade::on(resp)
        .await
        .map_err(|e| format!("upgrade with {addr}: {e}"))?;
    Ok(Framed::new(TokioIo::new(up), wire::codec()))
}

async fn recv(framed: &mut Stream, timeout: Duration) -> Result<(Msg, Bytes), String> {
    match tokio::time::timeout(timeout, framed.next()).await {
        Err(_) => Err(format!("the leader sent nothing for {timeout:?}")),
        Ok(None) => Err("the leader closed the stream".into()),
        Ok(Some(Err(e))) => Err(format!("stream error: {e}")),
        Ok(Some(Ok(frame))) => wire::decode(frame.freeze()).map_err(|e| e.to_string()),
    }
}

async fn send(framed: &mut Stream, msg: &Msg) -> Result<(), String> {
    framed
        .send(wire::encode(msg, &[]))
        .await
        .map_err(|e| format!("send failed: {e}"))
}

fn note_cut(node: &Node, a: &Archived, below_commit: bool) {
    node.metrics.repl_truncations.inc();
    tracing::warn!(from = %a.from, to = %a.to, epoch = %a.epoch, records = a.records, below_commit,
        file = %a.file.display(), "cut a divergent log suffix and archived it");
    node.lock().core_mut().note_cut(CutRange {
        from: a.from,
        to: a.to,
        epoch: a.epoch,
        below_commit,
        file: a.file.display().to_string(),
    });
}

/// One stream's life.
async fn follow(node: &Arc<Node>, leader: &LeaderRef, directed_epoch: Epoch) -> Result<(), String> {
    let mut framed = connect(node, &leader.id.0, &leader.addr).await?;
    let (data_id, epoch, cluster_id) = {
        let g = node.lock();
        (g.core().data_id(), g.core().epoch(), g.core().cluster_id())
    };
    send(
        &mut framed,
        &Msg::Hello {
            id: node.id.clone(),
            data_id,
            boot_id: node.boot_id,
            epoch,
            cluster: node.cfg.cluster.clone(),
            cluster_id,
        },
    )
    .await?;
    let leader_epoch = match recv(&mut framed, EXCHANGE_TIMEOUT).await?.0 {
        Msg::Welcome {
            epoch,
            leader: who,
            boot_id,
            data_id,
            cluster,
            cluster_id,
        } => {
            let persist = {
                let mut g = node.lock();
                let fx = g.core_mut().follower_on_welcome(
                    leader,
                    directed_epoch,
                    &who,
                    boot_id,
                    data_id,
                    &cluster,
                    cluster_id,
                    epoch,
                )?;
                node.step(g, fx).persist
            };
            if let Some(p) = persist {
                if !node.persist_epoch(p).await {
                    return Err(format!("cannot persist epoch {epoch}"));
                }
                node.lock().core_mut().follower_epoch_persisted(epoch);
            }
            epoch
        }
        Msg::Refused { reason, .. } => {
            return Err(format!("the leader refused the stream: {reason}"))
        }
        other => return Err(format!("unexpected answer to hello: {other:?}")),
    };
    let (stream, mut next) =
        node.lock()
            .core_mut()
            .follower_start(clock::now_ms(), &leader.id, leader_epoch)?;
    // The divergence exchange.
    let (from, prev_epoch) = loop {
        match next {
            FollowerNext::Fetch { from, prev_epoch } => break (from, prev_epoch),
            FollowerNext::Query(e) => {
                send(&mut framed, &Msg::EpochQuery { epoch: e }).await?;
                let Msg::EpochEnd {
                    epoch,
                    end,
                    lossy_above,
                    ..
                } = recv(&mut framed, EXCHANGE_TIMEOUT).await?.0
                else {
                    return Err("expected an epoch-end answer".into());
                };
                // The engine's cut and the log command happen in one critical section, so no
                // append (say, a leader-start) can slip between them.
                let (n, out) = {
                    let mut g = node.lock();
                    let (n, fx) = g.core_mut().follower_on_epoch_end(
                        clock::now_ms(),
                        stream,
                        epoch,
                        end,
                        lossy_above,
                    )?;
                    (n, node.step(g, fx))
                };
                if let Some((reply, below)) = out.archive {
                    if let Some(a) = reply.wait().await.map_err(|e| e.to_string())? {
                        note_cut(node, &a, below);
                    }
                }
                next = n;
            }
        }
    };
    send(&mut framed, &Msg::Fetch { from, prev_epoch }).await?;
    node.lock().core_mut().follower_begin_streaming(stream)?;
    tracing::info!(leader = %leader.id, epoch = %leader_epoch, from = %from, "following");
    let (mut sink, source) = framed.split();
    let acker = {
        let node = node.clone();
        let mut flushed = node.flushed.subscribe();
        let mut progress = node.progress.subscribe();
        tokio::spawn(async move {
            loop {
                flushed.borrow_and_update();
                progress.borrow_and_update();
                // Acknowledge what the core holds durable now (never a stale watch value), and
                // only while this stream is the current one: a fenced replica stops at once.
                // The promise it carries is recorded before it is sent.
                let ack = {
                    let mut g = node.lock();
                    if !g.core().follower_stream_current(stream) {
                        return;
                    }
                    match g.core_mut().follower_ack(clock::now_ms(), stream) {
                        Some(a) => a,
                        None => return,
                    }
                };
                fault!("repl.before_ack");
                if sink
                    .send(wire::encode(
                        &Msg::Ack {
                            epoch: leader_epoch,
                            flushed: ack.flushed,
                            promise_ms: ack.promise_ms,
                            echo_ms: ack.echo_ms,
                        },
                        &[],
                    ))
                    .await
                    .is_err()
                {
                    return;
                }
                // A flush, or any step (a keepalive, a role change): acknowledge again, so the
                // leader hears from an idle follower at its keepalive rate.
                tokio::select! {
                    r = flushed.changed() => if r.is_err() { return },
                    r = progress.changed() => if r.is_err() { return },
                }
            }
        })
    };
    let silence = Duration::from_millis((node.cfg.timing.heartbeat_interval_ms * 10).max(1000));
    let (mut frames, reader) = spawn_reader(source);
    let res = stream_loop(node, &mut frames, stream, silence).await;
    node.set_catchup(None);
    acker.abort();
    reader.abort();
    res
}

/// A follower at least this many records behind its leader's log end reports its catch-up
/// (rate, ETA) until it has caught up.
const CATCHUP_RECORDS: u64 = 1000;

/// A catch-up in progress is logged this often.
const PROGRESS_LOG_MS: u64 = 5000;

/// A frame off the stream, decoded: the message, its tail, and an append's records.
type Incoming = Result<(Msg, Bytes, Option<Vec<Record>>), String>;

/// Frames read and decoded ahead of the stream loop.
const READ_AHEAD: usize = 4;

/// Reads and decodes the leader's frames (TLS, checksums, record decoding) on a task of their
/// own, up to [`READ_AHEAD`] frames ahead, so that a follower catching up decodes the next batch
/// while the stream loop hands the last one to the core and the log (they ran one after the
/// other on one task, which left a core idle a third of the time). An error ends the reader.
fn spawn_reader(
    mut source: futures_util::stream::SplitStream<Stream>,
) -> (
    tokio::sync::mpsc::Receiver<Incoming>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let task = tokio::spawn(async move {
        loop {
            let item = match source.next().await {
                None => Err("the leader closed the stream".to_string()),
                Some(Err(e)) => Err(format!("stream error: {e}")),
                Some(Ok(f)) => decode_incoming(f.freeze()),
            };
            let end = item.is_err();
            if tx.send(item).await.is_err() || end {
                return;
            }
        }
    });
    (rx, task)
}

fn decode_incoming(frame: Bytes) -> Incoming {
    let (msg, tail) = wire::decode(frame).map_err(|e| e.to_string())?;
    let records = match &msg {
        Msg::Append { count, .. } => {
            Some(wire::decode_records(&tail, *count).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    Ok((msg, tail, records))
}

async fn stream_loop(
    node: &Arc<Node>,
    frames: &mut tokio::sync::mpsc::Receiver<Incoming>,
    stream: u64,
    silence: Duration,
) -> Result<(), String> {
    let mut snapshot_in: Option<(tokio::fs::File, std::path::PathBuf, baton_common::Lsn, u64)> =
        None;
    // The catch-up in progress (a log at least CATCHUP_RECORDS behind, or a snapshot), and
    // when it was last logged.
    let mut meter: Option<Meter> = None;
    let mut logged_ms = 0;
    let mut last_frame = tokio::time::Instant::now();
    let mut progress = node.progress.subscribe();
    loop {
        if let Some(c) = node
            .catchup()
            .filter(|_| clock::now_ms() >= logged_ms + PROGRESS_LOG_MS)
        {
            logged_ms = clock::now_ms();
            tracing::info!(what = %c.what, records_remaining = c.records_remaining, bytes_done = c.bytes_done,
                bytes_remaining = c.bytes_remaining, bytes_per_s = c.bytes_per_s, eta_ms = c.eta_ms,
                "catching up with the leader: {}", progress::describe(&c));
        }
        progress.borrow_and_update();
        if !node.lock().core().follower_stream_current(stream) {
            return Ok(());
        }
        let frame = tokio::select! {
            f = frames.recv() => f,
            // Notice a role or leader change without a frame.
            r = progress.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                continue;
            }
            _ = tokio::time::sleep_until(last_frame + silence) => {
                return Err(format!("the leader sent nothing for {silence:?}"));
            }
        };
        let (msg, tail, records) = match frame {
            None => return Err("the leader closed the stream".into()),
            Some(item) => item?,
        };
        last_frame = tokio::time::Instant::now();
        let now = clock::now_ms();
        match msg {
            Msg::Append {
                epoch,
                prev_epoch,
                prev_lsn,
                commit,
                end,
                count,
                sent_ms,
            } => {
                let records = records.unwrap_or_default();
                let remaining = end.0.saturating_sub(prev_lsn.0 + u64::from(count));
                if meter.is_none() && remaining >= CATCHUP_RECORDS {
                    meter = Some(Meter::new(false, now));
                    logged_ms = now;
                }
                if let Some(m) = meter.as_mut() {
                    m.add(now, tail.len() as u64, u64::from(count));
                    if remaining == 0 {
                        tracing::info!(
                            records = m.records(),
                            bytes = m.bytes(),
                            elapsed_ms = m.elapsed_ms(now),
                            "caught up with the leader: {} records ({:.1} MB) in {:.1} s",
                            m.records(),
                            m.bytes() as f64 / 1e6,
                            m.elapsed_ms(now) as f64 / 1000.0
                        );
                        meter = None;
                        node.set_catchup(None);
                    } else {
                        node.set_catchup(Some(m.log(now, remaining)));
                    }
                }
                node.metrics
                    .repl_records_received
                    .inc_by(records.len() as u64);
                fault!("follower.before_append", |e| format!(
                    "cannot take the records received: {e}"
                ));
                node.before_apply_up_to(commit);
                let mut g = node.lock();
                let header = AppendHeader {
                    leader_epoch: epoch,
                    prev: (prev_epoch, prev_lsn),
                    commit,
                    end,
                };
                let fx = g
                    .core_mut()
                    .follower_on_append(now, stream, header, records)?;
                g.core_mut().follower_note_sent(stream, sent_ms);
                node.step(g, fx);
            }
            Msg::Keepalive {
                epoch,
                commit,
                end,
                sent_ms,
            } => {
                node.before_apply_up_to(commit);
                let mut g = node.lock();
                let fx = g
                    .core_mut()
                    .follower_on_keepalive(now, stream, epoch, commit, end)?;
                g.core_mut().follower_note_sent(stream, sent_ms);
                node.step(g, fx);
            }
            Msg::SnapshotBegin { lsn, bytes, .. } => {
                let path = node.incoming_snapshot_path();
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .map_err(|e| format!("create {}: {e}", dir.display()))?;
                }
                let f = tokio::fs::File::create(&path)
                    .await
                    .map_err(|e| format!("create {}: {e}", path.display()))?;
                tracing::info!(lsn = %lsn, bytes, "receiving a snapshot from the leader");
                snapshot_in = Some((f, path, lsn, bytes));
                let m = Meter::new(true, now);
                node.set_catchup(Some(m.snapshot(now, bytes)));
                meter = Some(m);
                logged_ms = now;
            }
            Msg::SnapshotChunk => {
                let Some((f, path, ..)) = snapshot_in.as_mut() else {
                    return Err("a snapshot chunk outside a snapshot".into());
                };
                f.write_all(&tail)
                    .await
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
                if let (Some(m), Some((.., total))) = (meter.as_mut(), snapshot_in.as_ref()) {
                    m.add(now, tail.len() as u64, 0);
                    node.set_catchup(Some(m.snapshot(now, *total)));
                }
            }
            Msg::SnapshotEnd => {
                let Some((mut f, path, lsn, bytes)) = snapshot_in.take() else {
                    return Err("a snapshot end outside a snapshot".into());
                };
                f.flush()
                    .await
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
                f.sync_all()
                    .await
                    .map_err(|e| format!("fsync {}: {e}", path.display()))?;
                drop(f);
                let p = path.clone();
                let snap = tokio::task::spawn_blocking(move || snapshot::load_file(&p))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                if snap.lsn != lsn {
                    return Err(format!(
                        "the snapshot covers LSN {}, announced {lsn}",
                        snap.lsn
                    ));
                }
                let out = {
                    let mut g = node.lock();
                    let fx = g.core_mut().follower_install_snapshot(now, stream, snap);
                    node.step(g, fx)
                };
                let Some(reply) = out.install else {
                    // The stream was replaced meanwhile: nothing was installed.
                    let _ = tokio::fs::remove_file(&path).await;
                    return Ok(());
                };
                reply.wait().await.map_err(|e| e.to_string())?;
                node.metrics.repl_snapshots_received.inc();
                let took_ms = meter.take().map_or(0, |m| m.elapsed_ms(clock::now_ms()));
                node.set_catchup(None);
                tracing::info!(lsn = %lsn, bytes, took_ms, "installed a snapshot from the leader ({:.1} MB in {:.1} s)",
                    bytes as f64 / 1e6, took_ms as f64 / 1000.0);
            }
            Msg::Refused { reason, .. } => {
                return Err(format!("the leader ended the stream: {reason}"))
            }
            other => return Err(format!("unexpected message on the stream: {other:?}")),
        }
    }
}
