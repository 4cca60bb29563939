//! The stranger's tests (issue 13 item 6, DESIGN §9): a real cluster in the secure default,
//! attacked the ways a review found open — forged sync acknowledgements on the replication
//! stream, forged heartbeats, forged directives from a fake controller, stolen tokens replayed
//! with the wrong role, plain HTTP on TLS ports, certificates from another CA, silent and
//! trickling connections. Each attack must be refused (and counted), and the cluster must lose
//! nothing and keep serving. Oversized replication frames are `replica_process.rs`'s
//! `replication_streams_are_capped_and_oversized_frames_cut`; the decoders' fuzzing is
//! `replica/tests/decoders_fuzz.rs`.

use baton_common::api::ReplicaStatus;
use baton_common::directive::{Heartbeat, ReportedRole};
use baton_common::{BootId, Epoch, Lsn, NodeId};
use baton_replica::repl::wire::{self, Msg};
use baton_runtime::connect::Dialer;
use baton_runtime::pki::{self, Ca};
use baton_runtime::tls::{self, Tls};
use baton_tests::client::{assert_all_readable, Client};
use baton_tests::cluster::{Cluster, Opts};
use baton_tests::procs::{wait_for, ReplicaProc, ReplicaSpec};
use baton_tests::secure;
use baton_tests::standin::Standin;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

fn skip_if_insecure() -> bool {
    if secure::insecure() {
        eprintln!("BATON_TEST_INSECURE=1: the attack tests need the secure default; SKIPPED");
        return true;
    }
    false
}

fn addr_of(url: &str) -> String {
    url.split_once("://").map_or(url, |x| x.1).to_string()
}

/// Writes `n` keys through `url`, returning the acknowledged ones.
async fn write_some(c: &Client, url: &str, tag: &str, n: usize) -> BTreeMap<String, String> {
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let (k, v) = (format!("{tag}-{i}"), format!("v{i}"));
        if let Ok(r) = c.put(url, &k, v.clone()).await {
            if r.status == 200 {
                acked.insert(k, v);
            }
        }
    }
    acked
}

/// Sends the upgrade request for a replication stream on `s`; returns the answer's status line.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> anyhow::Result<String> {
    s.write_all(
        b"POST /v1/replicate HTTP/1.1\r\nhost: x\r\nupgrade: baton-replication/1\r\nconnection: upgrade\r\ncontent-length: 0\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(
            s.read(&mut b).await? == 1,
            "closed before the answer's head"
        );
        head.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// A metric's value summed over its label sets, from `/metrics` at `url`.
async fn metric(c: &Client, url: &str, name: &str) -> f64 {
    let Ok(r) = c
        .call("GET", &format!("{url}/metrics"), &[], Bytes::new())
        .await
    else {
        return 0.0;
    };
    r.text()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The forged-ack attack of the issue: a stream on the leader that says `Hello{id: r2}` and
/// acknowledges anything would let the leader acknowledge writes r2 never received. Without a
/// certificate the stream is not opened (401); with another member's certificate (r3 claiming
/// r2) the Hello is refused; with a certificate of another CA naming r2 the handshake fails.
/// Writes go on meanwhile, then the leader is killed: every acknowledged write is on the new
/// leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_acks_on_the_replication_stream_are_refused_and_nothing_is_lost(
) -> anyhow::Result<()> {
    if skip_if_insecure() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut cl = Cluster::start(tmp.path(), Opts::default()).await?;
    let c = Client::new(Duration::from_secs(5));
    let leader = cl.wait_writable(Duration::from_secs(20)).await?;
    let lurl = cl.url(&leader);
    let laddr = addr_of(&lurl);
    let victim = cl
        .replicas
        .keys()
        .find(|k| **k != leader)
        .cloned()
        .expect("a follower");
    let thief = cl
        .replicas
        .keys()
        .find(|k| **k != leader && **k != victim)
        .cloned()
        .expect("another follower");
    let st: ReplicaStatus = serde_json::from_value(
        c.status(&cl.url(&victim))
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    )?;
    let mut acked = write_some(&c, &lurl, "before", 50).await;
    let refused_before = metric(&c, &lurl, "baton_replica_auth_refused_total").await;

    // 1. No certificate at all (a client trusting the CA): the stream is not even opened.
    let mut s = Dialer::new(secure::client_tls(), "")
        .dial(&laddr, Duration::from_secs(2))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let status = upgrade(&mut s).await?;
    anyhow::ensure!(status.contains(" 401 "), "no certificate: {status}");

    // 2. Member `thief`'s own certificate, claiming to be `victim`: the Hello is refused.
    let mut s = secure::member_dialer("main", &thief, &tls::replica_name("main", &leader))
        .dial(&laddr, Duration::from_secs(2))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let status = upgrade(&mut s).await?;
    anyhow::ensure!(
        status.contains(" 101 "),
        "a member's certificate opens a stream: {status}"
    );
    let mut framed = tokio_util::codec::Framed::new(s, wire::codec());
    let hello = Msg::Hello {
        id: NodeId(victim.clone()),
        data_id: st.data_id,
        boot_id: BootId::random(),
        epoch: st.epoch,
        cluster: "main".into(),
        cluster_id: 0,
    };
    framed.send(wire::encode(&hello, &[])).await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), framed.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the leader closed the stream without an answer"))??;
    match wire::decode(answer.freeze()).map_err(|e| anyhow::anyhow!("{e}"))? {
        (Msg::Refused { reason, .. }, _) => anyhow::ensure!(
            reason.contains("certificate"),
            "refused, but not for the certificate: {reason}"
        ),
        (m, _) => anyhow::bail!("a forged hello was answered {m:?}"),
    }
    // Whatever else it sends goes nowhere: the leader has closed the stream.
    let _ = framed.send(Bytes::from_static(b"\0\0\0\x05forge")).await;
    anyhow::ensure!(
        matches!(
            tokio::time::timeout(Duration::from_secs(5), framed.next()).await,
            Ok(None) | Ok(Some(Err(_)))
        ),
        "the leader kept the refused stream open"
    );

    // 3. A certificate from another CA naming `victim`, presented by a client that does trust
    //    the deployment's CA (so the server, not the client, must say no): no stream, and the
    //    failed handshake is counted.
    let failed_before = metric(&c, &lurl, "baton_replica_tls_handshakes_failed_total").await;
    let foreign = tempfile::tempdir()?;
    let other = Ca::new("someone else's CA")?;
    let files = other.write_node(
        foreign.path(),
        "forged",
        &pki::replica_names("main", &victim),
        &pki::local_hosts(),
    )?;
    let roots = tls::read_roots("ca_file", &secure::pki().expect("secure").ca_file())?;
    let chain = CertificateDer::pem_file_iter(&files.cert_file)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)?;
    let cfg = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    let tcp = tokio::net::TcpStream::connect(&laddr).await?;
    let shake = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1")?, tcp)
        .await;
    // TLS 1.3 finishes the client's side before the server has judged its certificate: the
    // refusal then arrives as an alert on the first read.
    if let Ok(mut s) = shake {
        let st = upgrade(&mut s).await;
        anyhow::ensure!(
            st.is_err(),
            "a foreign CA's certificate opened a stream: {st:?}"
        );
    }
    let failed_after = metric(&c, &lurl, "baton_replica_tls_handshakes_failed_total").await;
    anyhow::ensure!(
        failed_after > failed_before,
        "the foreign certificate's handshake was not refused and counted: {failed_before} -> {failed_after}"
    );

    let refused_after = metric(&c, &lurl, "baton_replica_auth_refused_total").await;
    anyhow::ensure!(
        refused_after >= refused_before + 2.0,
        "refusals counted: {refused_before} -> {refused_after}"
    );
    acked.extend(write_some(&c, &lurl, "after", 50).await);
    anyhow::ensure!(
        acked.len() >= 95,
        "writes kept being acknowledged: {}",
        acked.len()
    );

    // The leader dies: the promoted member holds every acknowledged write.
    cl.replicas.get_mut(&leader).expect("leader").kill9();
    let next = wait_for(Duration::from_secs(30), "a new leader", || async {
        let id = cl.wait_writable(Duration::from_millis(500)).await.ok()?;
        (id != leader).then_some(id)
    })
    .await?;
    assert_all_readable(&cl.url(&next), &acked).await?;
    Ok(())
}

/// A heartbeat the controller would act on (naming the leader with a new boot id starts a
/// promotion) is refused without the leader's own certificate: anonymous 401, a token 403,
/// another member's certificate 403. Leader and epoch stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_heartbeats_are_refused_and_change_nothing() -> anyhow::Result<()> {
    if skip_if_insecure() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let cl = Cluster::start(tmp.path(), Opts::default()).await?;
    let c = Client::new(Duration::from_secs(5));
    let leader = cl.wait_writable(Duration::from_secs(20)).await?;
    let (_, before) = cl.wait_active_view(Duration::from_secs(10)).await?;
    let st: ReplicaStatus = serde_json::from_value(
        c.status(&cl.url(&leader))
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    )?;
    let hb = Heartbeat {
        seq: 1,
        cluster: "main".into(),
        cluster_id: 0,
        id: NodeId(leader.clone()),
        data_id: st.data_id,
        boot_id: BootId::random(),
        unclean: false,
        addr: addr_of(&cl.url(&leader)),
        epoch: Epoch(st.epoch.0 + 1000),
        role: ReportedRole::None,
        log_end_epoch: st.log_end_epoch,
        log_end_lsn: st.log_end_lsn,
        flushed_lsn: st.flushed_lsn,
        applied_lsn: st.applied_lsn,
        commit_lsn: st.commit_lsn,
        applied_rev: 0,
        max_term: 0,
        since_leader_ms: None,
        oldest_unflushed_ms: None,
        last_sync_ack_ms: None,
        lease_left_ms: None,
        waiting: Vec::new(),
        last_cut: None,
        refused_peer: None,
        disk_full: false,
        degraded_for_ms: 0,
        on_promises: false,
        log_start_lsn: Lsn(0),
        log_bytes: 0,
        catchup: None,
    };
    let body = Bytes::from(serde_json::to_vec(&hb)?);
    let thief = cl
        .replicas
        .keys()
        .find(|k| **k != leader)
        .cloned()
        .expect("a follower");
    let clients = [
        ("anonymous", Client::anonymous(Duration::from_secs(3)), 401),
        ("admin token", Client::new(Duration::from_secs(3)), 403),
        (
            "another member's certificate",
            Client::with_dialer(
                Duration::from_secs(3),
                secure::member_dialer("main", &thief, "").allowing_plain(),
                None,
            ),
            403,
        ),
    ];
    for _ in 0..20 {
        for ctl in &cl.controllers {
            for (who, client, want) in &clients {
                let url = format!("{}/v1/clusters/main/heartbeat", ctl.url);
                let r = client
                    .call(
                        "POST",
                        &url,
                        &[("content-type", "application/json")],
                        body.clone(),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("{who}: {e:?}"))?;
                anyhow::ensure!(r.status == *want, "{who}: {} {}", r.status, r.text());
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, after) = cl.wait_active_view(Duration::from_secs(10)).await?;
    anyhow::ensure!(
        after["leader"]["id"] == before["leader"]["id"] && after["epoch"] == before["epoch"],
        "the forged heartbeats moved the cluster: {} -> {}",
        before,
        after
    );
    let st2: ReplicaStatus = serde_json::from_value(
        c.status(&cl.url(&leader))
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    )?;
    anyhow::ensure!(
        st2.boot_id == st.boot_id && st2.epoch == st.epoch,
        "the leader was replaced"
    );
    let refused: f64 = {
        let mut sum = 0.0;
        for ctl in &cl.controllers {
            sum += metric(&c, &ctl.url, "baton_controller_auth_refused_total").await;
        }
        sum
    };
    anyhow::ensure!(refused >= 120.0, "every refusal is counted: {refused}");
    Ok(())
}

/// A fake controller cannot direct a replica: one serving a certificate that is not a
/// controller's (a member's, from the right CA), and one whose certificate comes from another
/// CA, both get no heartbeat at all (the replica refuses the TLS session), so the replica takes
/// no role and no epoch from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_directives_from_a_fake_controller_are_never_taken() -> anyhow::Result<()> {
    if skip_if_insecure() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let p = secure::pki().expect("secure");
    let member = p.node("replica-main-r9", &pki::replica_names("main", "r9"));
    let wrong_identity =
        Standin::start_with_tls("r1", Some(Tls::server(&member.as_tls())?)).await?;
    let other = Ca::new("someone else's CA")?;
    let foreign_dir = tempfile::tempdir()?;
    let foreign = other.write_node(
        foreign_dir.path(),
        "c9",
        &pki::controller_names("c9"),
        &pki::local_hosts(),
    )?;
    let foreign_ca = Standin::start_with_tls("r1", Some(Tls::server(&foreign.as_tls())?)).await?;
    // And a genuine one (a controller's certificate of the deployment's CA), silent so that
    // it directs nothing: it must be heard, so the replica does heartbeat and believes no one
    // else.
    let genuine = Standin::start("r1").await?;
    genuine.with(|p| p.silent = true);
    let spec = ReplicaSpec::new(
        "r1",
        tmp.path(),
        &[
            wrong_identity.url.clone(),
            foreign_ca.url.clone(),
            genuine.url.clone(),
        ],
    );
    let r = ReplicaProc::start(spec)?;
    let c = Client::new(Duration::from_secs(2));
    wait_for(Duration::from_secs(10), "the replica to serve", || async {
        c.status(&r.url).await.ok().filter(|s| s["id"] == "r1")
    })
    .await?;
    // The heartbeat loop goes to every controller each round: once the genuine one has heard
    // a dozen, the fakes had as many chances.
    wait_for(
        Duration::from_secs(20),
        "the genuine controller to hear 12 heartbeats",
        || async { (genuine.with(|p| p.heard) >= 12).then_some(()) },
    )
    .await?;
    for (name, s) in [
        ("wrong identity", &wrong_identity),
        ("foreign CA", &foreign_ca),
    ] {
        let heard = s.with(|p| p.heard);
        anyhow::ensure!(heard == 0, "the {name} controller heard {heard} heartbeats");
    }
    let st = c
        .status(&r.url)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    anyhow::ensure!(
        st["role"] == "none" && st["epoch"] == 0,
        "the replica took a role from a fake controller: {st}"
    );
    let put = c
        .put(&r.url, "k", "v")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    anyhow::ensure!(put.status != 200, "a write was accepted: {}", put.text());
    Ok(())
}

/// Tokens: no credentials or an unknown token is 401, a stolen token used beyond its role is
/// 403, on the replica, the proxy and the controller; nothing is written, read or changed,
/// and every refusal is counted. A TLS port answers plain HTTP with nothing (the handshake
/// fails and is counted), and a client that does not trust the deployment's CA gets no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_wrong_roles_are_refused_everywhere() -> anyhow::Result<()> {
    if skip_if_insecure() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let cl = Cluster::start(
        tmp.path(),
        Opts {
            proxy: true,
            ..Opts::default()
        },
    )
    .await?;
    let tokens = secure::pki().expect("secure").tokens.clone();
    let leader = cl.wait_writable(Duration::from_secs(20)).await?;
    let lurl = cl.url(&leader);
    let purl = cl.proxy_url();
    let curl = cl.controllers[0].url.clone();
    let t = Duration::from_secs(3);
    let anon = Client::anonymous(t);
    let unknown = Client::with_token(t, Some("not-a-token".into()));
    let read = Client::with_token(t, Some(tokens.read.clone()));
    let write = Client::with_token(t, Some(tokens.write.clone()));
    let admin = Client::new(t);
    admin
        .put(&lurl, "secret", "s3")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let empty = Bytes::new;
    // (who, method, url, expected status)
    let mut rows: Vec<(&str, &Client, &str, String, u16)> = Vec::new();
    for base in [&lurl, &purl] {
        rows.push((
            "anonymous",
            &anon,
            "GET",
            format!("{base}/v1/kv/secret"),
            401,
        ));
        rows.push(("anonymous", &anon, "PUT", format!("{base}/v1/kv/x"), 401));
        rows.push((
            "anonymous",
            &anon,
            "DELETE",
            format!("{base}/v1/kv/secret"),
            401,
        ));
        rows.push(("anonymous", &anon, "GET", format!("{base}/v1/status"), 401));
        rows.push(("anonymous", &anon, "GET", format!("{base}/metrics"), 401));
        rows.push((
            "unknown token",
            &unknown,
            "GET",
            format!("{base}/v1/kv/secret"),
            401,
        ));
        rows.push(("read token", &read, "PUT", format!("{base}/v1/kv/x"), 403));
        rows.push((
            "read token",
            &read,
            "DELETE",
            format!("{base}/v1/kv/secret"),
            403,
        ));
        rows.push((
            "read token",
            &read,
            "GET",
            format!("{base}/v1/kv/secret"),
            200,
        ));
    }
    rows.push((
        "anonymous",
        &anon,
        "GET",
        format!("{lurl}/v1/rollbacks"),
        401,
    ));
    rows.push((
        "anonymous",
        &anon,
        "GET",
        format!("{curl}/v1/clusters/main"),
        401,
    ));
    rows.push((
        "anonymous",
        &anon,
        "GET",
        format!("{curl}/v1/clusters/main/history"),
        401,
    ));
    rows.push((
        "anonymous",
        &anon,
        "GET",
        format!("{curl}/v1/clusters/main/leader"),
        401,
    ));
    for op in [
        "pause",
        "switchover",
        "failover",
        "init",
        "resume",
        "recover",
    ] {
        let url = format!("{curl}/v1/clusters/main/{op}");
        rows.push(("anonymous", &anon, "POST", url.clone(), 401));
        rows.push(("unknown token", &unknown, "POST", url.clone(), 401));
        rows.push(("read token", &read, "POST", url.clone(), 403));
        rows.push(("write token", &write, "POST", url, 403));
    }
    rows.push((
        "read token",
        &read,
        "GET",
        format!("{curl}/v1/clusters/main"),
        200,
    ));
    for (who, client, method, url, want) in &rows {
        let body = if *method == "PUT" {
            Bytes::from_static(b"stolen")
        } else if *method == "POST" {
            Bytes::from_static(b"{\"force\":true,\"allow_data_loss\":true}")
        } else {
            empty()
        };
        let r = client
            .call(method, url, &[("content-type", "application/json")], body)
            .await
            .map_err(|e| anyhow::anyhow!("{who} {method} {url}: {e:?}"))?;
        anyhow::ensure!(
            r.status == *want,
            "{who} {method} {url}: {} {}",
            r.status,
            r.text()
        );
        if *want >= 400 {
            anyhow::ensure!(
                !r.text().contains("s3"),
                "{who} {method} {url} read data: {}",
                r.text()
            );
        }
    }
    // Nothing changed: the key is there, x is not, the cluster is not paused, same leader.
    let g = admin
        .get(&lurl, "secret")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    anyhow::ensure!(
        g.status == 200 && g.text() == "s3",
        "secret: {} {}",
        g.status,
        g.text()
    );
    let x = admin
        .get(&lurl, "x")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    anyhow::ensure!(x.status == 404, "x was written: {} {}", x.status, x.text());
    let (_, view) = cl.wait_active_view(Duration::from_secs(10)).await?;
    anyhow::ensure!(view["paused"] != true, "paused by a stranger: {view}");
    anyhow::ensure!(
        view["leader"]["id"] == leader.as_str(),
        "leader moved: {view}"
    );
    for (url, name) in [
        (&lurl, "baton_replica_auth_refused_total"),
        (&purl, "baton_proxy_auth_refused_total"),
        (&curl, "baton_controller_auth_refused_total"),
    ] {
        let n = metric(&admin, url, name).await;
        anyhow::ensure!(n >= 5.0, "{name} at {url}: {n}");
    }

    // Plain HTTP on each TLS port: no HTTP answer at all, the failed handshake counted.
    for (url, name) in [
        (&lurl, "baton_replica_tls_handshakes_failed_total"),
        (&purl, "baton_proxy_tls_handshakes_failed_total"),
        (&curl, "baton_controller_tls_handshakes_failed_total"),
    ] {
        let before = metric(&admin, url, name).await;
        let mut s = tokio::net::TcpStream::connect(addr_of(url)).await?;
        s.write_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        anyhow::ensure!(
            !buf.starts_with(b"HTTP/"),
            "plain HTTP got an HTTP answer from {url}: {}",
            String::from_utf8_lossy(&buf)
        );
        let after = metric(&admin, url, name).await;
        anyhow::ensure!(after > before, "{name} at {url}: {before} -> {after}");
    }

    // A client that trusts another CA does not accept the node's certificate.
    let other_dir = tempfile::tempdir()?;
    let other = Ca::new("someone else's CA")?;
    let ca_file = other.write_ca(other_dir.path())?;
    let stranger = Client::with_dialer(
        t,
        Dialer::new(Some(Tls::client_only(&ca_file)?), ""),
        Some(tokens.admin.clone()),
    );
    let r = stranger
        .call("GET", &format!("{lurl}/v1/status"), &[], empty())
        .await;
    anyhow::ensure!(r.is_err(), "a client of another CA got an answer: {r:?}");
    Ok(())
}

/// Slowloris over TLS: connections that never finish their handshake, and ones that finish it
/// and then trickle a request head a byte a second, hold a slot for the idle timeout at most
/// (5 s here) and never keep the replica from serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_trickling_connections_are_closed_and_others_are_served() -> anyhow::Result<()> {
    if skip_if_insecure() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let cl = Cluster::start(
        tmp.path(),
        Opts {
            replica_toml: "[limits]\nidle_timeout_ms = 5000\n".into(),
            ..Opts::default()
        },
    )
    .await?;
    let leader = cl.wait_writable(Duration::from_secs(20)).await?;
    let lurl = cl.url(&leader);
    let addr = addr_of(&lurl);
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(&addr).await?);
    }
    let mut trickle = Vec::new();
    for _ in 0..20 {
        let mut s = Dialer::new(secure::client_tls(), "")
            .dial(&addr, Duration::from_secs(2))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        s.write_all(b"GET /v1/status HTTP/1.1\r\n").await?;
        trickle.push(s);
    }
    let started = Instant::now();
    // Everyone else is served meanwhile.
    let c = Client::new(Duration::from_secs(2));
    for i in 0..20 {
        let r = c
            .put(&lurl, &format!("k{i}"), "v")
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        anyhow::ensure!(
            r.status == 200,
            "write {i} under slowloris: {} {}",
            r.status,
            r.text()
        );
    }
    // The trickle goes on; by ~6 s every one of them has been closed by the server.
    let mut closed_trickle = 0;
    while started.elapsed() < Duration::from_secs(9) && closed_trickle < trickle.len() {
        closed_trickle = 0;
        for s in trickle.iter_mut() {
            if s.write_all(b"x").await.is_err() || s.flush().await.is_err() {
                closed_trickle += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let mut closed_silent = 0;
    for s in silent.iter_mut() {
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed_silent += 1,
            _ => {}
        }
    }
    anyhow::ensure!(
        closed_silent == silent.len() && closed_trickle == trickle.len(),
        "after {:?}: {closed_silent}/{} silent and {closed_trickle}/{} trickling connections closed",
        started.elapsed(),
        silent.len(),
        trickle.len()
    );
    let r = c
        .put(&lurl, "after", "v")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    anyhow::ensure!(r.status == 200, "after: {}", r.status);
    Ok(())
}
