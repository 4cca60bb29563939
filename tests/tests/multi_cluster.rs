//! One controller deployment managing two clusters, each under its own etcd prefix: both get a
//! leader, take writes, and fail over independently of each other.

use baton_tests::client::Client;
use baton_tests::cluster::EtcdProc;
use baton_tests::procs::{bin_path, free_port, wait_for, Daemon, ReplicaProc, ReplicaSpec};
use baton_tests::secure;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_under_one_controller_are_independent() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let etcd = EtcdProc::start(&tmp.path().join("etcd")).await?;
    let cport = free_port();
    let ports: Vec<(String, String, u16)> = [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2")]
        .iter()
        .map(|(c, r)| (c.to_string(), r.to_string(), free_port()))
        .collect();
    let mut cfg = format!(
        "id = \"c1\"\nlisten = \"127.0.0.1:{cport}\"\netcd = [\"{}\"]\n{}",
        etcd.url,
        secure::top()
    );
    for cl in ["a", "b"] {
        cfg.push_str(&format!("\n[[clusters]]\nname = \"{cl}\"\n"));
        for (c, r, p) in &ports {
            if c == cl {
                cfg.push_str(&format!(
                    "[[clusters.members]]\nid = \"{r}\"\naddr = \"127.0.0.1:{p}\"\n"
                ));
            }
        }
    }
    cfg.push_str(&secure::controller_tables("c1"));
    let cpath = tmp.path().join("controller.toml");
    std::fs::write(&cpath, cfg)?;
    let _controller = Daemon::start(
        "c1",
        bin_path("baton-controller")?,
        vec!["--config".into(), cpath.into()],
        tmp.path().join("c1.log"),
    )?;
    let ctl = secure::url(format!("127.0.0.1:{cport}"));
    let mut replicas = Vec::new();
    for (c, r, p) in &ports {
        let mut spec = ReplicaSpec::new(r, tmp.path(), std::slice::from_ref(&ctl));
        spec.port = *p;
        spec.cluster = c.clone();
        replicas.push((c.clone(), r.clone(), ReplicaProc::start(spec)?));
    }
    let client = Client::new(Duration::from_secs(2));
    for cl in ["a", "b"] {
        let url = format!("{ctl}/v1/clusters/{cl}/init");
        wait_for(Duration::from_secs(30), &format!("init of cluster {cl}"), || async {
            matches!(client.call("POST", &url, &[], bytes::Bytes::new()).await, Ok(r) if r.status == 200).then_some(())
        })
        .await?;
    }
    let leader = |cl: &'static str| {
        let client = client.clone();
        let ctl = ctl.clone();
        async move {
            let r = client
                .call(
                    "GET",
                    &format!("{ctl}/v1/clusters/{cl}"),
                    &[],
                    bytes::Bytes::new(),
                )
                .await
                .ok()?;
            let v = r.json();
            Some((
                v["leader"]["id"].as_str()?.to_string(),
                v["epoch"].as_u64()?,
            ))
        }
    };
    let (la, ea) = wait_for(Duration::from_secs(10), "a leader in a", || leader("a")).await?;
    let (lb, eb) = wait_for(Duration::from_secs(10), "a leader in b", || leader("b")).await?;
    assert!(la.starts_with('a') && lb.starts_with('b'), "{la} {lb}");
    // Both take writes, each on its own leader.
    for (c, r, p) in &replicas {
        if *r == la || *r == lb {
            wait_for(
                Duration::from_secs(10),
                &format!("{c} writable"),
                || async {
                    matches!(client.put(&p.url, "k", c.clone()).await, Ok(x) if x.status == 200)
                        .then_some(())
                },
            )
            .await?;
        }
    }
    // Kill cluster a's leader: a fails over, b is untouched.
    let idx = replicas
        .iter()
        .position(|(_, r, _)| *r == la)
        .expect("leader a");
    replicas[idx].2.kill9();
    let (la2, ea2) = wait_for(Duration::from_secs(20), "a new leader in a", || async {
        leader("a").await.filter(|(l, _)| *l != la)
    })
    .await?;
    assert!(ea2 > ea && la2.starts_with('a'));
    assert_eq!(
        leader("b").await,
        Some((lb, eb)),
        "cluster b keeps its leader and epoch"
    );
    Ok(())
}
