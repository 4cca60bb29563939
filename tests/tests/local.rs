//! `batonctl local up|stop|start|down` as a user runs it: the real binaries, a private etcd,
//! `cluster.json` in the shape DESIGN.md §8 gives, every kind of node stopped and started, and
//! the clear errors (DIR already running, etcd missing). Secure by default (DESIGN §9): every
//! URL is https, `cluster.json` names the CA and the tokens, nothing answers a request without
//! them, and `--insecure` says so in `batonctl status`.

use baton_tests::client::Client;
use baton_tests::procs::{batonctl, bin_path, local_kill, wait_for, LocalDown};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn layout(dir: &Path) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        dir.join("cluster.json"),
    )?)?)
}

/// A client of the cluster in `l` (cluster.json): its CA, and the token of `role` if any.
fn client_of(l: &serde_json::Value, role: Option<&str>) -> anyhow::Result<Client> {
    let ca = l["ca"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no ca in {l}"))?;
    let tls = baton_runtime::tls::Tls::client_only(&ca.into())?;
    let token = role
        .and_then(|r| l["tokens"][r].as_str())
        .map(str::to_string);
    Ok(Client::with_dialer(
        Duration::from_secs(3),
        baton_runtime::connect::Dialer::new(Some(tls), "").allowing_plain(),
        token,
    ))
}

fn alive(pid: u64) -> bool {
    // SAFETY: signal 0 only checks existence.
    pid > 0
        && unsafe { libc::kill(pid as i32, 0) } == 0
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_stop_start_down() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cl");
    let d = dir.display().to_string();
    let _down = LocalDown(&dir);
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
            .is_some_and(|u| u.starts_with("https://127.0.0.1:")),
        "{l}"
    );
    for t in ["read", "write", "admin"] {
        assert!(
            l["tokens"][t].as_str().is_some_and(|t| t.len() >= 32),
            "{l}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("cluster.json"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "cluster.json holds tokens: owner only");
    assert_eq!(l["controllers"].as_array().map(Vec::len), Some(2));
    assert_eq!(l["replicas"].as_array().map(Vec::len), Some(3));
    for r in l["replicas"].as_array().into_iter().flatten() {
        assert!(
            r["data_dir"].as_str().is_some_and(|p| p.ends_with("/data")),
            "{r}"
        );
        assert!(alive(r["pid"].as_u64().unwrap_or(0)));
    }
    let c = client_of(&l, Some("admin"))?;
    let anonymous = client_of(&l, None)?;
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
    // Without a token nothing is read or written, anywhere.
    let mut urls: Vec<String> = l["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["url"].as_str().map(str::to_string))
        .collect();
    urls.extend(l["proxy"]["url"].as_str().map(str::to_string));
    for u in &urls {
        for r in [
            anonymous.get(u, "k").await,
            anonymous.put(u, "k", "stolen").await,
        ] {
            let r = r.map_err(|e| anyhow::anyhow!("{u}: {e:?}"))?;
            assert_eq!(r.status, 401, "{u}: {} {}", r.status, r.text());
        }
    }
    // Every kind of node: stop it, start it, and the cluster still takes writes.
    let mut nodes = vec!["r2", "c1", "etcd"];
    if !l["proxy"].is_null() {
        nodes.push("proxy");
    }
    for node in nodes {
        local_kill(&dir, node)?;
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
        .trim_start_matches("https://")
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
    let ca = l["ca"].as_str().unwrap_or_default();
    let admin = l["tokens"]["admin"].as_str().unwrap_or_default();
    let st = batonctl(&["--controller", &ctl, "--ca", ca, "--token", admin, "status"])?;
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(text.contains("security: TLS"), "{text}");
    // Without the CA batonctl refuses an https controller instead of trusting anything.
    let st = batonctl(&["--controller", &ctl, "status"])?;
    assert!(
        !st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stdout)
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

/// `--insecure` runs plain HTTP without credentials, and every status output says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_insecure_says_so_in_status() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cl");
    let d = dir.display().to_string();
    let _down = LocalDown(&dir);
    let out = batonctl(&["local", "up", "--dir", &d, "--detach", "--insecure"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "up failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("INSECURE"), "{stdout}");
    let l = layout(&dir)?;
    assert_eq!(l["insecure"], true, "{l}");
    assert!(l["ca"].is_null() && l["tokens"].is_null(), "{l}");
    let proxy = l["proxy"]["url"].as_str().unwrap_or_default().to_string();
    assert!(proxy.starts_with("http://"), "{l}");
    let c = Client::with_dialer(
        Duration::from_secs(3),
        baton_runtime::connect::Dialer::new(None, ""),
        None,
    );
    wait_for(
        Duration::from_secs(20),
        "a write without credentials",
        || async {
            matches!(c.put(&proxy, "k", "v").await, Ok(r) if r.status == 200).then_some(())
        },
    )
    .await?;
    let st = batonctl(&["--local-dir", &d, "status"])?;
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success() && text.contains("security: INSECURE"),
        "{text}{}",
        String::from_utf8_lossy(&st.stderr)
    );
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

/// Processes whose command line names `dir` (every node `up` starts gets its config path there).
fn running_in(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) && alive(pid) {
            out.push(format!("{pid}: {cmd}"));
        }
    }
    out
}

/// Issue 16: a node that exits while `up` waits makes `up` fail with the node's name, how it
/// exited and what its log said last — and nothing `up` started is left running (the failed
/// `up` used to guess liveness from /proc and could leave a node serving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_exits_at_start_fails_up_and_nothing_is_left_running() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let d = tmp.path().display().to_string();
    let _down = LocalDown(tmp.path());
    // r2's data directory is a file: the replica refuses to start.
    std::fs::create_dir_all(tmp.path().join("r2"))?;
    std::fs::write(tmp.path().join("r2/data"), "not a directory")?;
    let out = batonctl(&["local", "up", "--dir", &d, "--detach"])?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "up succeeded: {err}");
    assert!(err.contains("r2 exited (exit code"), "{err}");
    assert!(err.contains("r2/replica.log"), "{err}");
    let left = running_in(tmp.path());
    assert!(left.is_empty(), "left running after a failed up: {left:?}");
    let l = layout(tmp.path())?;
    for n in l["replicas"].as_array().into_iter().flatten() {
        assert_eq!(n["pid"], 0, "{n}");
    }
    Ok(())
}

/// Issue 16: the `local` subcommands take their directory from BATON_LOCAL_DIR, as the README
/// tells users to set it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_subcommands_honour_baton_local_dir() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let d = tmp.path().display().to_string();
    let _down = LocalDown(tmp.path());
    let with_env = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(bin_path("batonctl")?)
            .args(args)
            .env("BATON_LOCAL_DIR", &d)
            .output()?)
    };
    let out = with_env(&["local", "up", "--detach"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Issue 16: operations that move leadership ask first; without a terminal they need
    // --yes; exit codes tell a refusal (3) from an unreachable cluster (4) from usage (2).
    let code = |o: &std::process::Output| o.status.code();
    let out = with_env(&["switchover"])?;
    assert_eq!(
        code(&out),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("add --yes"));
    let v: serde_json::Value = serde_json::from_slice(&with_env(&["status", "--json"])?.stdout)?;
    let leader = v["leader"]["id"].as_str().unwrap_or_default().to_string();
    let plain = v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["sync"] == false && m["id"] != leader.as_str())
        .and_then(|m| m["id"].as_str())
        .map(str::to_string);
    let plain = plain.expect("a follower outside the sync set (3 replicas, sync_size 1)");
    // Not a sync member: a lossless failover to it is refused, and says how to force it.
    let out = with_env(&["failover", "--to", &plain, "--yes"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), Some(3), "{err}");
    assert!(err.contains("sync"), "{err}");
    // `--force` is patronictl's "do not ask", never an acceptance of data loss.
    let out = with_env(&["failover", "--to", &plain, "--force"])?;
    assert_eq!(
        code(&out),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A standby's refusal names the active controller in a field of its own.
    let l = layout(tmp.path())?;
    let c = client_of(&l, Some("admin"))?;
    let mut standby_said = None;
    for ctl in l["controllers"].as_array().into_iter().flatten() {
        let url = ctl["url"].as_str().unwrap_or_default();
        let r = c
            .call(
                "POST",
                &format!("{url}/v1/clusters/main/pause"),
                &[],
                bytes::Bytes::new(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if r.status == 503 && r.json()["error"] == "not_active" {
            standby_said = Some(r.json());
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
            let r = c
                .call(
                    "POST",
                    &format!("{url}/v1/clusters/main/resume"),
                    &[],
                    bytes::Bytes::new(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    let said = standby_said.expect("one of the two controllers is a standby");
    let active = said["active_controller"]
        .as_str()
        .expect("active_controller");
    assert!(
        l["controllers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["url"].as_str().is_some_and(|u| u.ends_with(active))),
        "{said}"
    );
    let out = with_env(&["switchover", "--yes"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin_path("batonctl")?)
        .args(["--controller", "https://127.0.0.1:1", "status"])
        .env("BATON_LOCAL_DIR", &d)
        .output()?;
    assert_eq!(
        code(&out),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_env(&["local", "stop", "r3"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_env(&["status"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_env(&["local", "down"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(running_in(tmp.path()).is_empty());
    Ok(())
}
