//! Issue 16's "metrics to alert on", checked against the real thing. The dashboard
//! (deploy/grafana/baton.json) and the alerting rules (deploy/prometheus/alerts.yml) name only
//! metrics the servers export, and the dashboard's queries parse (`promtool check rules`). Live:
//! a secure `batonctl local up` cluster scraped every second by a real Prometheus (from PATH,
//! `apt install prometheus`) over HTTPS with the deployment's CA and read token, the repository's
//! rules loaded; the failover alert is quiet, the leader is killed (SIGKILL), and within 30 s the
//! alert fires for the cluster and the promotions counter has risen. Prometheus and the cluster
//! are stopped at the end, also on failure.

use baton_tests::client::Client;
use baton_tests::procs::{
    batonctl, free_port, local_kill, local_up, percent_encode, wait_for, Daemon, LocalDown,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

/// `name` on PATH, or a failure that says what to install.
fn installed(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{name} is not installed: `sudo apt install prometheus` \
                 (or ./scripts/install-prereqs.sh)"
            )
        })
}

/// The standard series of the prometheus crate's process collector.
const PROCESS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// Metric names (`baton_…`, `process_…`) written in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !word(bytes[i]) || (i > 0 && word(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && word(bytes[i]) {
            i += 1;
        }
        let w = &text[start..i];
        if w.starts_with("baton_") || w.starts_with("process_") {
            out.insert(w.to_string());
        }
    }
    out
}

/// The sources of the servers, concatenated.
fn server_sources() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    let mut out = String::new();
    for d in [
        "controller/src",
        "replica/src",
        "proxy/src",
        "runtime/src",
        "common/src",
    ] {
        walk(&repo().join(d), &mut out);
    }
    out
}

/// The family a series name belongs to (a histogram's `_bucket`, `_sum` and `_count`).
fn family(name: &str) -> &str {
    for s in ["_bucket", "_sum", "_count"] {
        if let Some(f) = name.strip_suffix(s) {
            return f;
        }
    }
    name
}

/// Every `expr` string in the dashboard (panels, annotations), and the variables' queries.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

fn dashboard() -> anyhow::Result<serde_json::Value> {
    let path = repo().join("deploy/grafana/baton.json");
    serde_json::from_str(&std::fs::read_to_string(&path)?)
        .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))
}

fn rules_text() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(
        repo().join("deploy/prometheus/alerts.yml"),
    )?)
}

/// The metric names the dashboard's queries and the alerting rules use.
fn names_used() -> anyhow::Result<BTreeSet<String>> {
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard()?, &mut exprs);
    let mut names = metric_names(&exprs.join("\n"));
    names.extend(metric_names(&rules_text()?));
    Ok(names)
}

#[test]
fn the_dashboard_and_the_rules_name_only_exported_metrics() -> anyhow::Result<()> {
    let d = dashboard()?;
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{}",
        d["schemaVersion"]
    );
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |n: &str| vars.iter().find(|v| v["name"] == n).cloned();
    let cluster = var("cluster").expect("a cluster variable");
    assert_eq!(
        cluster["definition"],
        "label_values(baton_controller_epoch, cluster)"
    );
    assert_eq!(
        var("datasource").expect("a datasource variable")["query"],
        "prometheus"
    );
    let mut exprs = Vec::new();
    dashboard_exprs(&d, &mut exprs);
    assert!(exprs.len() > 30, "{exprs:?}");
    // Every query of every panel goes to the chosen data source.
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    let sources = server_sources();
    let mut unknown = Vec::new();
    let names = names_used()?;
    for n in &names {
        let f = family(n);
        if n.starts_with("process_") {
            if !PROCESS.contains(&n.as_str()) || !sources.contains("ProcessCollector") {
                unknown.push(n.clone());
            }
        } else if !sources.contains(f) {
            unknown.push(n.clone());
        }
    }
    assert!(
        unknown.is_empty(),
        "named by the dashboard or the rules but exported by no server: {unknown:?}"
    );
    for must in [
        "baton_controller_failovers_total",
        "baton_controller_active",
        "baton_replica_write_seconds_bucket",
        "baton_proxy_requests_held",
    ] {
        assert!(names.contains(must), "{must} is used nowhere: {names:?}");
    }
    // The queries parse: each one as a recording rule, its variables filled in.
    let promtool = installed("promtool")?;
    let tmp = tempfile::tempdir()?;
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .filter(|e| !e.starts_with("label_values("))
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$cluster", "main");
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e})
        })
        .collect();
    let file = tmp.path().join("dashboard-queries.yml");
    // JSON is YAML.
    std::fs::write(
        &file,
        serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )?;
    let out = Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()?;
    assert!(
        out.status.success(),
        "a dashboard query does not parse: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The Prometheus HTTP API on 127.0.0.1.
struct Prom {
    base: String,
    http: Client,
}

impl Prom {
    async fn get(&self, path: &str) -> Option<serde_json::Value> {
        let r = self
            .http
            .call(
                "GET",
                &format!("{}{path}", self.base),
                &[],
                bytes::Bytes::new(),
            )
            .await
            .ok()?;
        let v = r.json();
        (r.status == 200 && v["status"] == "success").then(|| v["data"].clone())
    }

    /// The value of an instant query that returns one series (None: no series).
    async fn scalar(&self, q: &str) -> Option<f64> {
        let d = self
            .get(&format!("/api/v1/query?query={}", percent_encode(q)))
            .await?;
        d["result"][0]["value"][1].as_str()?.parse().ok()
    }

    async fn alerts(&self) -> Option<Vec<serde_json::Value>> {
        self.get("/api/v1/alerts").await?["alerts"]
            .as_array()
            .cloned()
    }
}

fn is_failover_alert(a: &serde_json::Value) -> bool {
    a["labels"]["alertname"] == "BatonFailover" && a["labels"]["cluster"] == "main"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_fires_the_failover_alert() -> anyhow::Result<()> {
    let prometheus = installed("prometheus")?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cl");
    let d = dir.display().to_string();
    let _down = LocalDown(&dir);
    let l = local_up(&dir)?;
    let ca = l["ca"].as_str().expect("a secure deployment names its CA");
    let token_file = tmp.path().join("read-token");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)?
            .write_all(
                l["tokens"]["read"]
                    .as_str()
                    .expect("a read token")
                    .as_bytes(),
            )?;
    }
    let host = |u: &serde_json::Value| {
        u.as_str()
            .unwrap_or_default()
            .trim_start_matches("https://")
            .to_string()
    };
    let nodes = |k: &str| l[k].as_array().cloned().unwrap_or_default();
    let controllers: Vec<String> = nodes("controllers")
        .iter()
        .map(|c| host(&c["url"]))
        .collect();
    let replicas: Vec<serde_json::Value> = nodes("replicas")
        .iter()
        .map(|r| {
            serde_json::json!({
                "targets": [host(&r["url"])],
                "labels": {"cluster": "main", "member": r["id"]},
            })
        })
        .collect();
    let proxy = host(&l["proxy"]["url"]);
    assert!(!proxy.is_empty(), "local up starts a proxy: {l}");
    // The example's shape (deploy/prometheus/prometheus.yml), every second, on loopback.
    let job = |name: &str, server_name: &str, targets: serde_json::Value| {
        serde_json::json!({
            "job_name": name,
            "scheme": "https",
            "tls_config": {"ca_file": ca, "server_name": server_name},
            "authorization": {"type": "Bearer", "credentials_file": token_file},
            "static_configs": targets,
        })
    };
    let config = serde_json::json!({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [repo().join("deploy/prometheus/alerts.yml")],
        "scrape_configs": [
            job("baton-controller", "controller.baton", serde_json::json!([{"targets": controllers}])),
            job("baton-replica", "main.replica.baton", serde_json::json!(replicas)),
            job("baton-proxy", "proxy.baton", serde_json::json!([{"targets": [proxy], "labels": {"cluster": "main"}}])),
        ],
    });
    let targets = controllers.len() + replicas.len() + 1;
    let cfg = tmp.path().join("prometheus.yml");
    std::fs::write(&cfg, serde_json::to_string_pretty(&config)?)?; // JSON is YAML
    let port = free_port();
    let _prom = Daemon::start(
        "prometheus",
        prometheus,
        vec![
            format!("--config.file={}", cfg.display()).into(),
            format!(
                "--storage.tsdb.path={}",
                tmp.path().join("prom-data").display()
            )
            .into(),
            format!("--web.listen-address=127.0.0.1:{port}").into(),
        ],
        tmp.path().join("prometheus.log"),
    )?;
    let p = Prom {
        base: format!("http://127.0.0.1:{port}"),
        http: Client::with_dialer(
            Duration::from_secs(5),
            baton_runtime::connect::Dialer::new(None, "").allowing_plain(),
            None,
        ),
    };
    let prom_log =
        || std::fs::read_to_string(tmp.path().join("prometheus.log")).unwrap_or_default();
    let up = wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape every Baton target",
        || async {
            let t = p.get("/api/v1/targets").await?;
            let active = t["activeTargets"].as_array()?;
            let healthy = active.iter().filter(|t| t["health"] == "up").count();
            (active.len() == targets && healthy == targets).then_some(())
        },
    )
    .await;
    if let Err(e) = up {
        let t = p.get("/api/v1/targets").await;
        anyhow::bail!("{e}: targets {t:?}\nprometheus log:\n{}", prom_log());
    }
    // The rules have seen the controllers' series for a few evaluations.
    wait_for(
        Duration::from_secs(30),
        "an active controller in Prometheus",
        || async {
            let n = p
                .scalar(r#"count(baton_controller_active{cluster="main"} == 1)"#)
                .await?;
            (n == 1.0).then_some(())
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = p.alerts().await.expect("the alerts API answers");
    assert!(
        !before.iter().any(is_failover_alert),
        "BatonFailover before any failover: {before:#?}"
    );
    // A healthy cluster fires nothing.
    let firing: Vec<&serde_json::Value> =
        before.iter().filter(|a| a["state"] == "firing").collect();
    assert!(firing.is_empty(), "firing before the kill: {firing:#?}");
    let promotions = r#"sum(baton_controller_promotions_total{cluster="main"})"#;
    let promoted_before = p.scalar(promotions).await.unwrap_or(0.0);
    // Kill the leader.
    let st = batonctl(&["--local-dir", &d, "status", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&st.stdout)?;
    let leader = v["leader"]["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no leader in {v}"))?
        .to_string();
    local_kill(&dir, &leader)?;
    let killed = Instant::now();
    let fired = wait_for(
        Duration::from_secs(30),
        "BatonFailover to fire for cluster main",
        || async {
            let a = p.alerts().await?;
            a.iter()
                .any(|a| is_failover_alert(a) && a["state"] == "firing")
                .then_some(a)
        },
    )
    .await;
    let alerts = match fired {
        Ok(a) => a,
        Err(e) => {
            let now = p.alerts().await;
            let q = p
                .get(&format!(
                    "/api/v1/query?query={}",
                    percent_encode("baton_controller_failovers_total")
                ))
                .await;
            anyhow::bail!("{e}: alerts {now:#?}\nfailovers_total {q:?}");
        }
    };
    let took = killed.elapsed();
    let text = serde_json::to_string_pretty(&alerts)?;
    std::fs::write(tmp.path().join("alerts.json"), &text)?;
    println!("{leader} killed; BatonFailover firing after {took:?}; alerts:\n{text}");
    let a = alerts
        .iter()
        .find(|a| is_failover_alert(a))
        .expect("found above");
    assert_eq!(a["labels"]["trigger"], "automatic", "{a}");
    assert_eq!(a["labels"]["severity"], "ticket", "{a}");
    wait_for(
        Duration::from_secs(15),
        "baton_controller_promotions_total to rise",
        || async { (p.scalar(promotions).await? > promoted_before).then_some(()) },
    )
    .await?;
    // Every metric the rules and the dashboard use is in Prometheus, but those that appear
    // only once something happened that this test does not do.
    let present: BTreeSet<String> = p
        .get("/api/v1/label/__name__/values")
        .await
        .and_then(|d| d.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect();
    let event_only = [
        "baton_controller_refusals_total",
        "baton_controller_fenced_total",
        "baton_proxy_retries_total",
    ];
    let missing: Vec<String> = names_used()?
        .into_iter()
        // A histogram is there as its `_bucket` series.
        .filter(|n| !present.contains(n) && !present.contains(&format!("{n}_bucket")))
        .filter(|n| !event_only.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "used by the rules or the dashboard, absent from Prometheus: {missing:?}"
    );
    Ok(())
}
