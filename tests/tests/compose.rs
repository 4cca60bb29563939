//! Tier 3 across containers (issue 14): the Compose deployment of DESIGN §8
//! (`deploy/compose/compose.yaml`: 3 etcd, 2 controllers, 3 replicas, a proxy, each its own
//! container with its own address, secure by default) under a workload through the proxy,
//! while containers are killed, cut off by iptables in their own network namespace, restarted
//! with a new IP, and the whole deployment is taken down and up again. The same history
//! checkers as the chaos runner judge it: nothing acknowledged lost, linearizable registers,
//! one writer per epoch, converged replicas.
//!
//! Runs as its own Compose project (`baton-t{pid}`) with its files in a temporary directory,
//! its own host ports and subnet, so it never touches `scripts/compose.sh`'s deployment. The
//! images come from `scripts/images.sh` (the debug binaries the test run built, as image
//! `baton:test`; reused when nothing changed). Without a Docker engine (or without root, which
//! the iptables cuts need) it prints `SKIPPED` with the reason and returns: `scripts/test.sh`
//! says so too, so a skip is never silent.
//!
//! `BATON_COMPOSE_FAILOVERS=N` repeats the leader kill N times (default 2) and prints the
//! failover window of each; `BATON_COMPOSE_RELEASE=1` runs the release build (`baton:local`).
//! `BATON_COMPOSE_KEEP=1` leaves the deployment running after the test.

use baton_tests::chaos::workload::{self, Recorder, Target};
use baton_tests::checker::{check_history, Violation};
use baton_tests::client::Client;
use baton_tests::history::{self, AckedWrite, NodeEnd};
use baton_tests::procs::{free_port, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REPLICAS: [&str; 3] = ["r1", "r2", "r3"];

/// `BATON_COMPOSE_RELEASE=1`: the release binaries (image `baton:local`, as
/// `scripts/compose.sh` runs them; build them first), for the failover figures.
fn release() -> bool {
    std::env::var("BATON_COMPOSE_RELEASE").is_ok_and(|v| v == "1")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf()
}

/// Runs a command; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Why the containers cannot be run here, if they cannot.
fn unavailable() -> Option<String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
    {
        Err(e) => return Some(format!("docker is not installed ({e})")),
        Ok(o) if !o.status.success() => {
            return Some(format!(
                "the Docker engine is not reachable: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Ok(_) => {}
    }
    if compose_cmd().is_none() {
        return Some("Docker Compose is missing (docker-compose or the compose plugin)".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "not root: the partitions are iptables rules in the containers' namespaces".into(),
        );
    }
    if Command::new("iptables").arg("--version").output().is_err() {
        return Some("iptables is not installed (scripts/install-prereqs.sh installs it)".into());
    }
    None
}

fn compose_cmd() -> Option<Vec<String>> {
    let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    if ok(Command::new("docker").args(["compose", "version"])) {
        Some(vec!["docker".into(), "compose".into()])
    } else if ok(Command::new("docker-compose").arg("version")) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

/// One Compose deployment of the test's own.
struct Deployment {
    project: String,
    compose: Vec<String>,
    run_dir: tempfile::TempDir,
    subnet_prefix: String,
    proxy_port: u16,
    controller_ports: [u16; 2],
    replica_ports: [u16; 3],
    tokens_write: String,
}

impl Deployment {
    /// Images, files, containers, `init`, and a write through the proxy.
    async fn up() -> anyhow::Result<Deployment> {
        let root = repo();
        run(Command::new(root.join("scripts/images.sh"))
            .env(
                "BATON_IMAGES_PROFILE",
                if release() { "release" } else { "debug" },
            )
            .env("BATON_IMAGES_NO_CARGO", "1"))?;
        let run_dir = tempfile::tempdir()?;
        let pid = std::process::id();
        let batonctl = baton_tests::procs::bin_path("batonctl")?;
        run(Command::new(&batonctl)
            .args(["compose", "render", "--dir"])
            .arg(run_dir.path()))?;
        // Several failovers in one run: the anti-flapping budget (3 an hour by default) would
        // stop automatic failover half way.
        for c in ["c1", "c2"] {
            let f = run_dir.path().join("nodes").join(c).join("baton.toml");
            let text = std::fs::read_to_string(&f)?;
            let raised = text.replace(
                "mode = \"semi-sync\"\n",
                "mode = \"semi-sync\"\nmax_failovers_per_hour = 100\n",
            );
            anyhow::ensure!(raised != text, "{}: no [[clusters]] mode line", f.display());
            std::fs::write(&f, raised)?;
        }
        let layout: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run_dir.path().join("cluster.json"))?)?;
        let tok = |r: &str| layout["tokens"][r].as_str().unwrap_or_default().to_string();
        baton_tests::secure::adopt(
            &run_dir.path().join("ca.pem"),
            baton_tests::secure::Tokens {
                read: tok("read"),
                write: tok("write"),
                admin: tok("admin"),
            },
        )?;
        let d = Deployment {
            project: format!("baton-t{pid}"),
            compose: compose_cmd().expect("checked"),
            run_dir,
            subnet_prefix: format!("10.214.{}", pid % 250),
            proxy_port: free_port(),
            controller_ports: [free_port(), free_port()],
            replica_ports: [free_port(), free_port(), free_port()],
            tokens_write: tok("write"),
        };
        d.dc(&["up", "-d"])?;
        let c = Client::new(Duration::from_secs(2));
        wait_for(Duration::from_secs(120), "a controller to answer", || async {
            for u in d.controller_urls() {
                if matches!(c.call("GET", &format!("{u}/v1/cluster"), &[], bytes::Bytes::new()).await, Ok(r) if r.status == 200) {
                    return Some(());
                }
            }
            None
        })
        .await?;
        let mut init = Command::new(&batonctl);
        init.args(["--local-dir"]).arg(d.run_dir.path());
        for u in d.controller_urls() {
            init.args(["--controller", &u]);
        }
        run(init.args(["init", "--wait-s", "90"]))?;
        d.wait_writable(Duration::from_secs(60)).await?;
        Ok(d)
    }

    fn dc(&self, args: &[&str]) -> anyhow::Result<String> {
        let file = repo().join("deploy/compose/compose.yaml");
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .args(["-p", &self.project, "-f"])
            .arg(&file)
            .args(args)
            .env(
                "BATON_IMAGE",
                if release() {
                    "baton:local"
                } else {
                    "baton:test"
                },
            )
            .env("BATON_RUN", self.run_dir.path())
            .env("BATON_SUBNET", format!("{}.0/24", self.subnet_prefix))
            .env("BATON_PORT_PROXY", self.proxy_port.to_string())
            .env("BATON_PORT_C1", self.controller_ports[0].to_string())
            .env("BATON_PORT_C2", self.controller_ports[1].to_string());
        for (i, p) in self.replica_ports.iter().enumerate() {
            cmd.env(format!("BATON_PORT_R{}", i + 1), p.to_string());
        }
        run(&mut cmd)
    }

    fn proxy_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.proxy_port)
    }

    fn controller_urls(&self) -> Vec<String> {
        self.controller_ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect()
    }

    fn replica_url(&self, id: &str) -> String {
        let i = REPLICAS
            .iter()
            .position(|r| *r == id)
            .expect("a replica id");
        format!("https://127.0.0.1:{}", self.replica_ports[i])
    }

    fn container(&self, service: &str) -> anyhow::Result<String> {
        let id = self.dc(&["ps", "-q", service])?;
        anyhow::ensure!(!id.is_empty(), "no container for {service}");
        Ok(id)
    }

    fn network(&self) -> String {
        format!("{}_baton", self.project)
    }

    /// The container's address on the deployment's network.
    fn ip(&self, service: &str) -> anyhow::Result<String> {
        let id = self.container(service)?;
        let f = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network()
        );
        run(Command::new("docker").args(["inspect", "-f", &f, &id]))
    }

    /// Runs iptables in the network namespace of `service`'s container.
    fn iptables(&self, service: &str, args: &[&str]) -> anyhow::Result<()> {
        let id = self.container(service)?;
        let pid = run(Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}", &id]))?;
        run(Command::new("nsenter")
            .args(["-t", &pid, "-n", "iptables", "-w"])
            .args(args))?;
        Ok(())
    }

    /// Drops everything between `service` and `peers`, both ways, in `service`'s namespace.
    fn cut(&self, service: &str, peers: &[&str]) -> anyhow::Result<()> {
        for p in peers {
            let ip = self.ip(p)?;
            self.iptables(service, &["-I", "INPUT", "-s", &ip, "-j", "DROP"])?;
            self.iptables(service, &["-I", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    fn heal(&self, service: &str) -> anyhow::Result<()> {
        self.iptables(service, &["-F", "INPUT"])?;
        self.iptables(service, &["-F", "OUTPUT"])
    }

    async fn view(&self) -> Option<serde_json::Value> {
        let c = Client::new(Duration::from_secs(2));
        let mut standby = None;
        for u in self.controller_urls() {
            if let Ok(r) = c
                .call("GET", &format!("{u}/v1/cluster"), &[], bytes::Bytes::new())
                .await
            {
                if r.status == 200 {
                    let v = r.json();
                    if v["active"] == true {
                        return Some(v);
                    }
                    standby = Some(v);
                }
            }
        }
        standby
    }

    /// The newest journal entries and the view, for a failure message.
    async fn diagnose(&self) -> String {
        let c = Client::new(Duration::from_secs(2));
        let mut out = format!("view: {}\n", self.view().await.unwrap_or_default());
        for u in self.controller_urls() {
            let url = format!("{u}/v1/clusters/main/history?limit=15");
            if let Ok(r) = c.call("GET", &url, &[], bytes::Bytes::new()).await {
                out.push_str(&format!("history from {u}: {}\n", r.text()));
                break;
            }
        }
        out
    }

    async fn leader(&self) -> Option<(String, u64)> {
        let v = self.view().await?;
        Some((
            v["leader"]["id"].as_str()?.to_string(),
            v["epoch"].as_u64()?,
        ))
    }

    async fn wait_writable(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let c = Client::with_token(Duration::from_secs(2), Some(self.tokens_write.clone()));
        let url = self.proxy_url();
        let start = Instant::now();
        wait_for(timeout, "a write through the proxy", || async {
            matches!(c.put(&url, "__compose_probe", "x").await, Ok(r) if r.status == 200)
                .then_some(())
        })
        .await?;
        Ok(start.elapsed())
    }

    /// Steady: a leader, every member heard and a write through the proxy acknowledged.
    async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_for(
            timeout,
            "the cluster to settle (steady, every member ok)",
            || async {
                let v = self.view().await?;
                let ok = v["phase"] == "steady"
                    && v["leader"]["id"].is_string()
                    && v["members"]
                        .as_array()?
                        .iter()
                        .all(|m| m["health"] == "ok" && m["role"] != "fenced");
                ok.then_some(())
            },
        )
        .await?;
        self.wait_writable(timeout).await.map(|_| ())
    }

    async fn node_ends(&self) -> Result<Vec<NodeEnd>, String> {
        let c = Client::new(Duration::from_secs(2));
        let mut out = Vec::new();
        for id in REPLICAS {
            let st = c
                .status(&self.replica_url(id))
                .await
                .map_err(|e| format!("{id}: {e:?}"))?;
            out.push(NodeEnd {
                id: id.to_string(),
                log_end: (
                    st["log_end_epoch"].as_u64().unwrap_or(0),
                    st["log_end_lsn"].as_u64().unwrap_or(0),
                ),
                applied_lsn: st["applied_lsn"].as_u64().unwrap_or(0),
                digest: st["state_digest"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(out)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::env::var("BATON_COMPOSE_KEEP").is_ok() {
            eprintln!("BATON_COMPOSE_KEEP: project {} left running", self.project);
            return;
        }
        if let Err(e) = self.dc(&["down", "--volumes", "--timeout", "5"]) {
            eprintln!("cleanup of {}: {e}", self.project);
        }
    }
}

/// The longest pause between acknowledged writes (sorted complete times, µs on the
/// recorder's clock) within `from..=to`, the window's ends included.
fn longest_gap(times: &[u64], from: u64, to: u64) -> Duration {
    let mut last = from;
    let mut gap = 0;
    for t in times.iter().copied().filter(|t| *t > from && *t <= to) {
        gap = gap.max(t - last);
        last = t;
    }
    Duration::from_micros(gap.max(to.saturating_sub(last)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containers_killed_cut_moved_and_restarted_lose_nothing() -> anyhow::Result<()> {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED compose tests: {why}");
        println!("SKIPPED compose tests: {why}");
        return Ok(());
    }
    let d = Deployment::up().await?;
    let rec = Arc::new(Recorder::new());
    let until = Instant::now() + Duration::from_secs(600);
    let mut clients = Vec::new();
    for n in 0..6 {
        clients.push(tokio::spawn(workload::client(
            rec.clone(),
            n,
            14,
            until,
            Target::Proxy(d.proxy_url()),
        )));
    }
    let mut report = Vec::new();

    // 1. The leader's container killed (SIGKILL), then started again: it rejoins.
    let runs: usize = std::env::var("BATON_COMPOSE_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut windows = Vec::new();
    for i in 0..runs {
        d.wait_settled(Duration::from_secs(60)).await?;
        let (leader, epoch) = d.leader().await.expect("a leader");
        let id = d.container(&leader)?;
        let from = rec.now();
        run(Command::new("docker").args(["kill", "-s", "KILL", &id]))?;
        wait_for(Duration::from_secs(30), "a new leader", || async {
            let (l, e) = d.leader().await?;
            (l != leader && e > epoch).then_some(())
        })
        .await?;
        // Writes resumed through the proxy: acknowledgements again, after the new leader.
        let promoted = rec.now();
        wait_for(Duration::from_secs(30), "writes to resume", || async {
            let n = rec
                .ack_times()
                .into_iter()
                .filter(|t| *t > promoted)
                .count();
            (n >= 20).then_some(())
        })
        .await?;
        // The failover window as clients saw it: the longest pause between acknowledged
        // writes since the kill (6 clients write without pause before it).
        let w = longest_gap(&rec.ack_times(), from, rec.now());
        println!(
            "failover {}: {leader} killed, longest write gap {} ms",
            i + 1,
            w.as_millis()
        );
        windows.push(w);
        d.dc(&["start", &leader])?;
    }
    windows.sort();
    report.push(format!(
        "leader container killed ({runs} runs): longest write gap p50 {} ms, max {} ms",
        windows[windows.len() / 2].as_millis(),
        windows.last().map_or(0, |w| w.as_millis())
    ));

    // 2. The leader cut from its followers (both ways), controllers still reach it: a planned
    //    failover to a sync member; then healed, it rejoins.
    d.wait_settled(Duration::from_secs(60)).await?;
    let (leader, epoch) = d.leader().await.expect("a leader");
    let others: Vec<&str> = REPLICAS.iter().copied().filter(|r| *r != leader).collect();
    let from = rec.now();
    d.cut(&leader, &others)?;
    println!(
        "cut {leader} ({}) from {others:?} ({:?})",
        d.ip(&leader)?,
        others.iter().map(|o| d.ip(o)).collect::<Vec<_>>()
    );
    let moved = wait_for(
        Duration::from_secs(30),
        "a failover away from the cut leader",
        || async {
            let (l, e) = d.leader().await?;
            (l != leader && e > epoch).then_some(())
        },
    )
    .await;
    if let Err(e) = moved {
        anyhow::bail!("{e}\n{}", d.diagnose().await);
    }
    d.wait_writable(Duration::from_secs(30)).await?;
    let gap = longest_gap(&rec.ack_times(), from, rec.now());
    report.push(format!(
        "leader cut from followers: longest write gap {} ms",
        gap.as_millis()
    ));
    d.heal(&leader)?;

    // 3. The active controller cut from every replica: the standby takes over (handover),
    //    writes go on.
    d.wait_settled(Duration::from_secs(60)).await?;
    let active = d
        .view()
        .await
        .and_then(|v| v["active_controller"].as_str().map(str::to_string));
    let active = match active.as_deref() {
        Some(a) if a.starts_with("c2") => "c2",
        _ => "c1",
    };
    let from = rec.now();
    d.cut(active, &REPLICAS)?;
    wait_for(
        Duration::from_secs(30),
        "the standby to take over",
        || async {
            let v = d.view().await?;
            let a = v["active_controller"].as_str()?;
            (!a.starts_with(active) && v["phase"] == "steady").then_some(())
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gap = longest_gap(&rec.ack_times(), from, rec.now());
    report.push(format!(
        "active controller {active} cut from the replicas: handed over, longest write gap {} ms",
        gap.as_millis()
    ));
    d.heal(active)?;

    // 3b. An etcd member killed and started again: no controller change is needed, writes go
    //     on (etcd keeps a quorum of two).
    d.wait_settled(Duration::from_secs(60)).await?;
    let (_, epoch) = d.leader().await.expect("a leader");
    let from = rec.now();
    d.dc(&["kill", "-s", "SIGKILL", "etcd2"])?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    d.wait_writable(Duration::from_secs(30)).await?;
    let gap = longest_gap(&rec.ack_times(), from, rec.now());
    d.dc(&["start", "etcd2"])?;
    let (_, after) = d.leader().await.expect("a leader");
    anyhow::ensure!(
        after == epoch,
        "an etcd member's loss changed the epoch {epoch} -> {after}"
    );
    report.push(format!(
        "etcd member killed: no failover, longest write gap {} ms",
        gap.as_millis()
    ));

    // 3c. The leader's container frozen (docker pause) past the failure timeout: a failover;
    //     thawed, the old leader finds itself fenced and rejoins as a follower.
    d.wait_settled(Duration::from_secs(60)).await?;
    let (leader, epoch) = d.leader().await.expect("a leader");
    let from = rec.now();
    d.dc(&["pause", &leader])?;
    let moved = wait_for(
        Duration::from_secs(30),
        "a failover away from the frozen leader",
        || async {
            let (l, e) = d.leader().await?;
            (l != leader && e > epoch).then_some(())
        },
    )
    .await;
    d.dc(&["unpause", &leader])?;
    moved?;
    d.wait_writable(Duration::from_secs(30)).await?;
    let gap = longest_gap(&rec.ack_times(), from, rec.now());
    d.wait_settled(Duration::from_secs(60)).await?;
    report.push(format!(
        "leader {leader} frozen: failed over, thawed and rejoined; longest write gap {} ms",
        gap.as_millis()
    ));

    // The run's verdict.
    rec.stop();
    for t in clients {
        let _ = t.await;
    }
    let mut violations = Vec::new();
    let converged = wait_for(
        Duration::from_secs(60),
        "the replicas to converge",
        || async {
            let ends = d.node_ends().await.ok()?;
            history::check_converged(&ends).is_none().then_some(())
        },
    )
    .await;
    if let Err(e) = converged {
        violations.push(format!("{e}: {:?}", d.node_ends().await));
    }
    let timed = rec.acked();
    let mut acked: Vec<AckedWrite> = timed.iter().map(|t| t.write.clone()).collect();
    let (leader, _) = d.leader().await.expect("a leader");
    let (state, bad) = baton_tests::chaos::verify::read_final(
        &d.replica_url(&leader),
        rec.written_keys().into_iter().collect(),
    )
    .await;
    violations.extend(bad);
    violations.extend(history::check_lost(&acked, &state));
    violations.extend(history::check_one_writer_per_epoch(&acked));
    violations.extend(history::check_real_time_order(&timed));
    match check_history(&rec.ops()) {
        Ok(()) => {}
        Err(Violation::Inconclusive { .. }) => println!("linearizability: inconclusive"),
        Err(v) => violations.push(format!("linearizability: {v}")),
    }
    report.push(format!(
        "{} operations, {} acknowledged writes",
        rec.ops().len(),
        acked.len()
    ));

    // 4. A follower restarted with a new IP (same host name), with the clients stopped: it
    //    rejoins and catches up; made leader (`failover --to`, forced because it is not the
    //    sync member, and lossless because nothing is being written), the other replicas
    //    stream from it and the proxy writes to it, at its new address.
    d.wait_settled(Duration::from_secs(60)).await?;
    let (leader, _) = d.leader().await.expect("a leader");
    let mover = REPLICAS
        .iter()
        .copied()
        .find(|r| *r != leader)
        .expect("a follower");
    let old_ip = d.ip(mover)?;
    let new_ip = format!("{}.{}", d.subnet_prefix, 200);
    let id = d.container(mover)?;
    d.dc(&["stop", "-t", "10", mover])?;
    let net = d.network();
    run(Command::new("docker").args(["network", "disconnect", &net, &id]))?;
    run(Command::new("docker").args([
        "network", "connect", "--ip", &new_ip, "--alias", mover, &net, &id,
    ]))?;
    d.dc(&["start", mover])?;
    assert_eq!(d.ip(mover)?, new_ip, "{mover} moved from {old_ip}");
    d.wait_settled(Duration::from_secs(60)).await?;
    let converged = wait_for(
        Duration::from_secs(60),
        "the moved replica to catch up",
        || async {
            let ends = d.node_ends().await.ok()?;
            history::check_converged(&ends).is_none().then_some(())
        },
    )
    .await;
    if let Err(e) = converged {
        anyhow::bail!("{e}: {:?}\n{}", d.node_ends().await, d.diagnose().await);
    }
    let c = Client::new(Duration::from_secs(5));
    let body = serde_json::json!({ "to": mover, "force": true });
    let body = bytes::Bytes::from(serde_json::to_vec(&body)?);
    let last = std::sync::Mutex::new(String::new());
    let failed_over = wait_for(
        Duration::from_secs(30),
        "the failover to be accepted",
        || async {
            for u in d.controller_urls() {
                let hdr = [("content-type", "application/json")];
                let url = format!("{u}/v1/clusters/main/failover");
                match c.call("POST", &url, &hdr, body.clone()).await {
                    Ok(r) if r.status == 200 => return Some(()),
                    Ok(r) => {
                        *last.lock().expect("lock") = format!("{u}: {} {}", r.status, r.text())
                    }
                    Err(e) => *last.lock().expect("lock") = format!("{u}: {e:?}"),
                }
            }
            None
        },
    )
    .await;
    if let Err(e) = failed_over {
        anyhow::bail!("{e}; last answer {}", last.lock().expect("lock"));
    }
    wait_for(
        Duration::from_secs(30),
        "the moved replica to lead",
        || async {
            let (l, _) = d.leader().await?;
            (l == mover).then_some(())
        },
    )
    .await?;
    d.wait_settled(Duration::from_secs(60)).await?;
    let mut extra = Vec::new();
    for i in 0..20 {
        let (k, v) = (format!("moved-{i}"), format!("m{i}"));
        let r = c.put(&d.proxy_url(), &k, v.clone()).await;
        let r = r.map_err(|e| anyhow::anyhow!("a write after the move: {e:?}"))?;
        anyhow::ensure!(
            r.status == 200,
            "a write after the move: {} {}",
            r.status,
            r.text()
        );
        let j = r.json();
        extra.push(AckedWrite {
            key: k,
            value: v,
            epoch: j["epoch"].as_u64().unwrap_or(0),
            lsn: j["lsn"].as_u64().unwrap_or(0),
        });
    }
    wait_for(
        Duration::from_secs(30),
        "both followers streaming from the moved leader",
        || async {
            let st = c.status(&d.replica_url(mover)).await.ok()?;
            (st["followers"].as_array()?.len() == 2).then_some(())
        },
    )
    .await?;
    report.push(format!(
        "{mover} restarted at {new_ip} (was {old_ip}): rejoined, caught up, leads, followed and written to there"
    ));
    acked.extend(extra);
    let mut keys: Vec<String> = rec.written_keys().into_iter().collect();
    keys.extend(
        acked
            .iter()
            .filter(|w| w.key.starts_with("moved-"))
            .map(|w| w.key.clone()),
    );

    // 5. The whole deployment down and up again: the data stays.
    d.dc(&["down", "--timeout", "20"])?;
    d.dc(&["up", "-d"])?;
    d.wait_settled(Duration::from_secs(120)).await?;
    let (leader, _) = d.leader().await.expect("a leader");
    let (after, bad) = baton_tests::chaos::verify::read_final(&d.replica_url(&leader), keys).await;
    violations.extend(bad.into_iter().map(|b| format!("after down + up: {b}")));
    violations.extend(
        history::check_lost(&acked, &after)
            .into_iter()
            .map(|l| format!("after down + up: {l}")),
    );
    report.push(format!(
        "down + up: {} keys read back from {leader}",
        after.len()
    ));

    for line in &report {
        println!("{line}");
    }
    assert!(
        violations.is_empty(),
        "violations:\n{}",
        violations.join("\n")
    );
    Ok(())
}
