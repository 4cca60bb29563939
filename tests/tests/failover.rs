//! End-to-end failover with the real controller and a real etcd: etcd, two controllers and
//! three replicas as processes. A killed leader is replaced and loses no acknowledged write;
//! the old leader rejoins as a follower; the cluster converges.

use baton_tests::client::Client;
use baton_tests::cluster::{Cluster, Opts};
use baton_tests::procs::wait_for;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Acked = Arc<Mutex<BTreeMap<String, String>>>;

/// Writers that find the leader themselves (any replica; a 503 names the leader).
fn writers(
    cl: &Cluster,
    n: usize,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> Vec<tokio::task::JoinHandle<()>> {
    let urls: Vec<String> = cl.replicas.values().map(|r| r.url.clone()).collect();
    (0..n)
        .map(|t| {
            let (urls, stop, acked) = (urls.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let c = Client::new(Duration::from_secs(3));
                let mut target = 0usize;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 200_000 {
                    let (k, v) = (format!("w{t}-{i}"), format!("v{t}-{i}"));
                    match c.put(&urls[target], &k, v.clone()).await {
                        Ok(r) if r.status == 200 => {
                            acked.lock().expect("lock").insert(k, v);
                            i += 1;
                        }
                        Ok(r) if r.status == 503 => {
                            target = (target + 1) % urls.len();
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        _ => {
                            // Outcome unknown: never counted as acknowledged; move on.
                            i += 1;
                            target = (target + 1) % urls.len();
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

async fn converged(cl: &Cluster) -> anyhow::Result<()> {
    wait_for(
        Duration::from_secs(60),
        "all replicas to converge",
        || async {
            let mut seen = std::collections::BTreeSet::new();
            for r in cl.replicas.values() {
                let st = cl.client.status(&r.url).await.ok()?;
                seen.insert((
                    st["applied_lsn"].as_u64()?,
                    st["state_digest"].as_str()?.to_string(),
                ));
            }
            (seen.len() == 1).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_leader_is_replaced_without_losing_acknowledged_writes() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cl = Cluster::start(tmp.path(), Opts::default()).await?;
    let first = cl.leader_id().await.expect("a leader");
    let acked: Acked = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(&cl, 8, stop.clone(), acked.clone());
    let count = |n: usize| {
        let acked = acked.clone();
        async move { (acked.lock().expect("lock").len() >= n).then_some(()) }
    };
    wait_for(Duration::from_secs(30), "300 acknowledged writes", || {
        count(300)
    })
    .await?;
    cl.replicas.get_mut(&first).expect("leader").kill9();
    let before = acked.lock().expect("lock").len();
    let res = wait_for(
        Duration::from_secs(30),
        "writes to resume on a new leader",
        || count(before + 300),
    )
    .await;
    if res.is_err() {
        eprintln!("{}", cl.dump());
    }
    res?;
    let second = cl.leader_id().await.expect("a leader");
    assert_ne!(first, second, "another replica leads");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    // The old leader comes back as a follower and the cluster converges.
    cl.replicas.get_mut(&first).expect("old leader").restart()?;
    converged(&cl).await?;
    let st = cl
        .client
        .status(&cl.url(&first))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(st["role"], "follower", "{st}");
    let acked = acked.lock().expect("lock").clone();
    for (k, v) in &acked {
        let r = cl
            .client
            .get(&cl.url(&second), k)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(r.status, 200, "acknowledged {k} lost");
        assert_eq!(&r.text(), v);
    }
    let history = cl.view().await.expect("view");
    assert!(history["epoch"].as_u64().unwrap_or(0) >= 2);
    Ok(())
}
