//! `batonctl local up|stop|start|down` as a user runs it: the real binaries, a private etcd,
//! `cluster.json` in the shape DESIGN.md §8 gives, every kind of node stopped and started, and
//! the clear errors (DIR already running, etcd missing).

use baton_tests::client::Client;
use baton_tests::procs::{bin_path, wait_for};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn batonctl(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(bin_path("batonctl")?).args(args).output()?)
}

fn layout(dir: &Path) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        dir.join("cluster.json"),
    )?)?)
}

fn alive(pid: u64) -> bool {
    // SAFETY: signal 0 only checks existence.
    pid > 0
        && unsafe { libc::kill(pid as i32, 0) } == 0
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
}

/// Stops everything even when an assertion failed.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let d = self.0.display().to_string();
        let _ = batonctl(&["local", "down", "--dir", &d]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_stop_start_down() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cl");
    let d = dir.display().to_string();
    let _down = Down(&dir);
    let out = batonctl(&["local", "up", "--dir", &d, "--detach"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "up failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Baton is up") && stdout.contains("| r1"),
        "{stdout}"
    );
    let l = layout(&dir)?;
    assert!(
        l["etcd"][0]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:")),
        "{l}"
    );
    assert_eq!(l["controllers"].as_array().map(Vec::len), Some(2));
    assert_eq!(l["replicas"].as_array().map(Vec::len), Some(3));
    for r in l["replicas"].as_array().into_iter().flatten() {
        assert!(
            r["data_dir"].as_str().is_some_and(|p| p.ends_with("/data")),
            "{r}"
        );
        assert!(alive(r["pid"].as_u64().unwrap_or(0)));
    }
    let c = Client::new(Duration::from_secs(3));
    let ctl = l["controllers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["url"].as_str())
        .collect::<Vec<_>>()
        .join(",");
    let write_somewhere = || async {
        let l = layout(&dir).ok()?;
        let mut targets: Vec<String> = l["replicas"]
            .as_array()?
            .iter()
            .filter_map(|r| r["url"].as_str().map(str::to_string))
            .collect();
        if let Some(p) = l["proxy"]["url"].as_str() {
            targets.insert(0, p.to_string());
        }
        for t in targets {
            if matches!(c.put(&t, "k", "v").await, Ok(r) if r.status == 200) {
                return Some(());
            }
        }
        None
    };
    wait_for(Duration::from_secs(20), "a write", write_somewhere).await?;
    // Every kind of node: stop it, start it, and the cluster still takes writes.
    let mut nodes = vec!["r2", "c1", "etcd"];
    if !l["proxy"].is_null() {
        nodes.push("proxy");
    }
    for node in nodes {
        let out = batonctl(&["local", "stop", "--dir", &d, node, "--signal", "KILL"])?;
        assert!(
            out.status.success(),
            "stop {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let again = batonctl(&["local", "stop", "--dir", &d, node])?;
        let err = String::from_utf8_lossy(&again.stderr);
        let stopped = !again.status.success() && err.contains("not running");
        // The kill may take a moment to be reaped by init; both answers are fine then.
        assert!(stopped || again.status.success(), "{err}");
        let out = batonctl(&["local", "start", "--dir", &d, node])?;
        assert!(
            out.status.success(),
            "start {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(
            Duration::from_secs(30),
            &format!("a write after restarting {node}"),
            write_somewhere,
        )
        .await?;
    }
    // A port taken while a node was down: `start` says so instead of reporting success.
    let out = batonctl(&["local", "stop", "--dir", &d, "r3"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r3 = layout(&dir)?["replicas"][2]["url"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("http://")
        .to_string();
    let r3_pid = layout(&dir)?["replicas"][2]["pid"].as_u64().unwrap_or(0);
    wait_for(Duration::from_secs(15), "r3 to exit", || async {
        (!alive(r3_pid)).then_some(())
    })
    .await?;
    let squatter = std::net::TcpListener::bind(&r3)?;
    let out = batonctl(&["local", "start", "--dir", &d, "r3"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("r3 exited at start")
            && err.contains("cannot listen"),
        "{err}"
    );
    drop(squatter);
    let out = batonctl(&["local", "start", "--dir", &d, "r3"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = batonctl(&["--controller", &ctl, "status"])?;
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    // A second `up` on the same DIR refuses, naming what runs.
    let out = batonctl(&["local", "up", "--dir", &d, "--detach"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already running"),
        "{err}"
    );
    let out = batonctl(&["local", "down", "--dir", &d])?;
    assert!(out.status.success());
    let l = layout(&dir)?;
    for n in l["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(l["controllers"].as_array().into_iter().flatten())
    {
        assert_eq!(n["pid"], 0, "down records every node as stopped: {n}");
    }
    assert!(dir.join("r1/data/meta.json").exists(), "the data stays");
    Ok(())
}

#[test]
fn local_up_without_etcd_says_what_to_install() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let d = tmp.path().join("cl").display().to_string();
    let out = Command::new(bin_path("batonctl")?)
        .args(["local", "up", "--dir", &d, "--detach"])
        .env("PATH", "/nonexistent")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("etcd is not installed") && err.contains("apt install etcd-server"),
        "{err}"
    );
    Ok(())
}
