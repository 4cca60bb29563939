//! HAProxy as the alternative to `baton-proxy` (DESIGN §7, issue 14 item 4): a real HAProxy
//! (Debian's `haproxy`, installed by `scripts/install-prereqs.sh`) runs
//! `deploy/haproxy/haproxy.cfg` — only its ports, CA path and replica addresses replaced — in
//! front of a real cluster in the secure default. Writes through it reach the leader; the
//! leader is killed; writes through it resume on the new leader, and every acknowledged one is
//! there. Stale reads go to followers through the second frontend.

use baton_tests::client::{assert_all_readable, Client};
use baton_tests::cluster::{Cluster, Opts};
use baton_tests::procs::{free_port, wait_for, Daemon};
use baton_tests::secure;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn haproxy_bin() -> anyhow::Result<PathBuf> {
    for p in ["/usr/sbin/haproxy", "/usr/bin/haproxy"] {
        if std::path::Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    anyhow::bail!(
        "haproxy is not installed: run scripts/install-prereqs.sh (apt install haproxy); this \
         test does not pass without it"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_haproxy_follow_the_leader_across_a_failover() -> anyhow::Result<()> {
    let bin = haproxy_bin()?;
    if secure::insecure() {
        eprintln!("BATON_TEST_INSECURE=1: the HAProxy config checks replicas over TLS; SKIPPED");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut cl = Cluster::start(tmp.path(), Opts::default()).await?;
    let (wport, rport) = (free_port(), free_port());
    let mut cfg = include_str!("../../deploy/haproxy/haproxy.cfg")
        .replace(
            "/etc/baton/tls/ca.pem",
            &secure::pki()
                .expect("secure")
                .ca_file()
                .display()
                .to_string(),
        )
        .replace("127.0.0.1:7200", &format!("127.0.0.1:{wport}"))
        .replace("127.0.0.1:7201", &format!("127.0.0.1:{rport}"));
    for (i, id) in ["r1", "r2", "r3"].iter().enumerate() {
        let addr = cl
            .url(id)
            .split_once("://")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        cfg = cfg.replace(&format!("127.0.0.1:710{}", i + 1), &addr);
    }
    let path = tmp.path().join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let _haproxy = Daemon::start(
        "haproxy",
        bin,
        vec!["-f".into(), path.into(), "-db".into()],
        tmp.path().join("haproxy.log"),
    )?;
    let writes = format!("https://127.0.0.1:{wport}");
    let reads = format!("https://127.0.0.1:{rport}");
    let c = Client::new(Duration::from_secs(2));
    wait_for(
        Duration::from_secs(20),
        "a write through HAProxy",
        || async {
            matches!(c.put(&writes, "first", "x").await, Ok(r) if r.status == 200).then_some(())
        },
    )
    .await?;
    let leader = cl.wait_writable(Duration::from_secs(5)).await?;

    // Writes go on (one client, bounded in count and time); the leader is killed after 100.
    let mut acked = BTreeMap::new();
    let (mut killed_at, mut resumed_after) = (None::<Instant>, None::<Duration>);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    while Instant::now() < deadline && i < 5000 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        i += 1;
        let ok = matches!(c.put(&writes, &k, v.clone()).await, Ok(r) if r.status == 200);
        if ok {
            acked.insert(k, v);
            if let (Some(t), None) = (killed_at, resumed_after) {
                resumed_after = Some(t.elapsed());
            }
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if acked.len() == 100 && killed_at.is_none() {
            cl.replicas.get_mut(&leader).expect("leader").kill9();
            killed_at = Some(Instant::now());
        }
        if resumed_after.is_some() && acked.len() >= 200 {
            break;
        }
    }
    let resumed = resumed_after.ok_or_else(|| {
        anyhow::anyhow!("writes through HAProxy never resumed after the leader was killed")
    })?;
    println!("writes through HAProxy resumed {resumed:?} after the leader was killed");
    let next = cl.wait_writable(Duration::from_secs(10)).await?;
    anyhow::ensure!(next != leader, "the leader did not change");
    // Every acknowledged write is on the new leader, read back through HAProxy.
    assert_all_readable(&writes, &acked).await?;
    // Stale reads through the followers' frontend.
    let any = wait_for(
        Duration::from_secs(20),
        "a stale read through HAProxy",
        || async {
            let r = c.get(&reads, "k0?consistency=any").await.ok()?;
            (r.status == 200).then_some(r.text())
        },
    )
    .await?;
    anyhow::ensure!(any == "v0", "stale read: {any}");
    Ok(())
}
