//! The controller started in-process with `baton_controller::run` against a private etcd (no
//! controller binary): it wins the election and serves its API, refuses a connection over
//! `limits.connections_max` with 503 `overloaded`, and when its `shutdown` future completes it
//! resigns (its election key is deleted) and `run` returns `Ok`.

use baton_controller::config::ControllerConfig;
use baton_tests::client::Client;
use baton_tests::cluster::EtcdProc;
use baton_tests::procs::{free_port, wait_for};
use baton_tests::secure;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_runs_in_process_caps_connections_and_resigns_on_shutdown() -> anyhow::Result<()>
{
    let tmp = tempfile::tempdir()?;
    let etcd = EtcdProc::start(&tmp.path().join("etcd")).await?;
    let port = free_port();
    let text = format!(
        "id = \"c1\"\nlisten = \"127.0.0.1:{port}\"\netcd = [\"{}\"]\n{}[limits]\nconnections_max = 2\n\
         [[clusters]]\nname = \"main\"\n[[clusters.members]]\nid = \"r1\"\naddr = \"127.0.0.1:{}\"\n{}",
        etcd.url,
        secure::top(),
        free_port(),
        secure::controller_tables("c1"),
    );
    let cfg = ControllerConfig::parse(Path::new("controller.toml"), &text)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(baton_controller::run(cfg, async {
        let _ = stopped.await;
    }));

    // Active, and serving the cluster view and the metrics.
    let base = secure::url(format!("127.0.0.1:{port}"));
    let client = Client::new(Duration::from_secs(2));
    let view = wait_for(
        Duration::from_secs(20),
        "the controller to become active",
        || async {
            let r = client
                .call(
                    "GET",
                    &format!("{base}/v1/clusters/main"),
                    &[],
                    bytes::Bytes::new(),
                )
                .await
                .ok()?;
            let v = r.json();
            (r.status == 200 && v["active"] == true).then_some(v)
        },
    )
    .await?;
    assert_eq!(view["cluster"], "main");
    assert_eq!(view["initialized"], false);
    let metrics = client
        .call("GET", &format!("{base}/metrics"), &[], bytes::Bytes::new())
        .await
        .map_err(|e| anyhow::anyhow!("GET /metrics: {e:?}"))?;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .contains("baton_controller_active{cluster=\"main\"} 1"),
        "{}",
        metrics.text()
    );
    assert!(metrics
        .text()
        .contains("baton_controller_connections_rejected_total 0"));

    let mut etcd_client = etcd_client::Client::connect([etcd.url.as_str()], None).await?;
    let key = "/baton/main/election";
    let held = etcd_client.get(key, None).await?;
    assert_eq!(
        held.kvs().len(),
        1,
        "the active controller holds its election key"
    );

    // The cap: idle connections are accepted up to the cap, the next one is answered 503 and
    // closed. The client above may still hold a pooled connection the server has not seen
    // closed yet, so count the accepted ones instead of assuming two (at most the cap).
    drop(client);
    // Until the server has seen those closed, fewer than two new ones fit: retry the round
    // (bounded) until exactly two idle connections are accepted before the refusal.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (held, answer) = loop {
        let mut held = Vec::new();
        let answer = loop {
            anyhow::ensure!(
                held.len() <= 2,
                "{} idle connections accepted with limits.connections_max = 2",
                held.len()
            );
            // Over TLS as a client connects (the refusal is answered inside a session).
            let mut c = baton_runtime::connect::Dialer::new(secure::client_tls(), "")
                .dial(&format!("127.0.0.1:{port}"), Duration::from_secs(2))
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            let mut buf = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_millis(500), c.read_to_end(&mut buf)).await;
            let text = String::from_utf8_lossy(&buf).into_owned();
            match read {
                // Accepted: the server waits for a request on it.
                Err(_) => held.push(c),
                Ok(_) if text.starts_with("HTTP/1.1 503") => break text,
                Ok(r) => anyhow::bail!("unexpected answer over the cap: {r:?} {text:?}"),
            }
        };
        if held.len() == 2 {
            break (held, answer);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the cap never admitted two idle connections (earlier ones never released)"
        );
        drop(held);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(answer.contains("\"error\":\"overloaded\""), "{answer}");
    assert!(answer.contains("limits.connections_max = 2"), "{answer}");
    drop(held);

    // Shutdown: `run` returns Ok, and the election key is gone (resigned, not left to expire).
    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .map_err(|_| anyhow::anyhow!("run did not return within 10 s of shutdown"))??;
    result?;
    let after = etcd_client.get(key, None).await?;
    assert!(
        after.kvs().is_empty(),
        "the election key was deleted on shutdown"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "no longer listening"
    );
    Ok(())
}
