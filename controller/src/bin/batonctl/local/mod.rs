//! `batonctl local up|stop|start|down` (DESIGN.md §8): a whole Baton deployment on loopback
//! ports for a newcomer, scripts and tests — a private single-node etcd (unless `--etcd` is
//! given), controllers, replicas and the proxy as processes, their configs, logs and data under
//! DIR, and `DIR/cluster.json` describing it. Binaries are found next to `batonctl`.
//!
//! Secure by default (DESIGN §9): every node, the private etcd included, serves and connects
//! over TLS with certificates of a CA made for the deployment, and takes bearer tokens of the
//! roles read, write and admin, which `cluster.json` holds for clients; `--insecure` runs it
//! all in plain HTTP without credentials instead, and says so.
//!
//! This file is the subcommands (`run` is `main`'s entry for them); `layout.rs` is
//! `cluster.json`, `secure.rs` the CA, certificates, tokens and config sections, `procs.rs`
//! starting, finding and signalling the processes.

pub mod layout;
mod procs;
pub mod secure;
pub use procs::Http;

use crate::client::{load_ca, Credentials, Ctl};
use baton_runtime::pki;
use layout::{layout_path, read_layout, write_layout, Layout, Node};
use procs::{alive, bin, exited, free_port, signal, spawn, which, Started};
use secure::{toml_path, Secure};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The `local` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum LocalCmd {
    /// Start etcd (unless --etcd), controllers, replicas and a proxy; init; wait for a leader.
    Up {
        /// The deployment's directory (default: BATON_LOCAL_DIR).
        #[arg(long, env = "BATON_LOCAL_DIR")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        #[arg(long, default_value_t = 2)]
        controllers: usize,
        /// `semi-sync` or `async`.
        #[arg(long, default_value = "semi-sync")]
        mode: String,
        /// Use these etcd endpoints instead of a private etcd (comma-separated).
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// Return once the cluster is up instead of staying in the foreground.
        #[arg(long)]
        detach: bool,
        /// Plain HTTP without certificates or tokens: anyone who can reach a port can read,
        /// write and operate everything. Every status output says so.
        #[arg(long)]
        insecure: bool,
    },
    /// Signal one node (`r2`, `c1`, `proxy`, `etcd`).
    Stop {
        /// The deployment's directory (default: BATON_LOCAL_DIR).
        #[arg(long, env = "BATON_LOCAL_DIR")]
        dir: PathBuf,
        node: String,
        /// KILL, TERM, STOP or CONT.
        #[arg(long, default_value = "TERM")]
        signal: String,
    },
    /// Start a stopped node again with the same config and data.
    Start {
        /// The deployment's directory (default: BATON_LOCAL_DIR).
        #[arg(long, env = "BATON_LOCAL_DIR")]
        dir: PathBuf,
        node: String,
    },
    /// Stop everything; the data stays in DIR.
    Down {
        /// The deployment's directory (default: BATON_LOCAL_DIR).
        #[arg(long, env = "BATON_LOCAL_DIR")]
        dir: PathBuf,
    },
}

/// `local …`: after `up`, print the status table; without `--detach` stay in the foreground
/// and stop everything on Ctrl-C or SIGTERM.
pub async fn run(cmd: LocalCmd, cluster: String) -> ExitCode {
    let up = match launch(cmd).await {
        Ok(up) => up,
        Err(e) => {
            eprintln!("batonctl: {e}");
            return ExitCode::from(1);
        }
    };
    let Some((controllers, creds, dir, detach)) = up else {
        return ExitCode::SUCCESS;
    };
    let ctl = match Ctl::new(controllers, cluster, &creds) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("batonctl: {e}");
            return ExitCode::from(1);
        }
    };
    // Let a few heartbeats reach the controllers so the table shows current positions.
    tokio::time::sleep(Duration::from_millis(400)).await;
    println!();
    if let Err(crate::Fail(m, _)) = crate::status::status(&ctl, false).await {
        eprintln!("batonctl: status: {m}");
    }
    if detach {
        println!(
            "\nStop it with: batonctl local down --dir {}",
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    println!("\nRunning in the foreground; Ctrl-C stops everything (the data stays).");
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut t) => {
                t.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    match tokio::task::spawn_blocking(move || down(&dir)).await {
        Ok(Ok(())) => {
            println!("stopped");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("batonctl: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("batonctl: {e}");
            ExitCode::from(1)
        }
    }
}

/// What `up` hands back for the status table: the controller URLs, the credentials, DIR and
/// `--detach`.
type Launched = (Vec<String>, Credentials, PathBuf, bool);

/// Runs a `local` subcommand.
async fn launch(cmd: LocalCmd) -> Result<Option<Launched>, String> {
    match cmd {
        LocalCmd::Up {
            dir,
            replicas,
            controllers,
            mode,
            etcd,
            detach,
            insecure,
        } => {
            let (urls, creds) = up(&dir, replicas, controllers, &mode, etcd, insecure).await?;
            Ok(Some((urls, creds, dir, detach)))
        }
        LocalCmd::Stop {
            dir,
            node,
            signal: sig,
        } => {
            let l = read_layout(&dir)?;
            let n = l
                .nodes()
                .find(|n| n.id == node)
                .ok_or_else(|| format!("no node {node:?} in {}", layout_path(&dir).display()))?;
            if !alive(n.pid) {
                return Err(format!("{node} is not running"));
            }
            signal(n.pid, &sig)?;
            println!(
                "sent SIG{} to {node} (pid {})",
                sig.to_ascii_uppercase(),
                n.pid
            );
            Ok(None)
        }
        LocalCmd::Start { dir, node } => {
            let mut l = read_layout(&dir)?;
            let n = l
                .find_mut(&node)
                .ok_or_else(|| format!("no node {node:?} in {}", layout_path(&dir).display()))?;
            if alive(n.pid) {
                return Err(format!("{node} is already running (pid {})", n.pid));
            }
            let mut child = spawn(&n.cmd, Path::new(&n.log))?;
            n.pid = child.id();
            let (pid, log) = (n.pid, n.log.clone());
            write_layout(&dir, &l)?;
            // A node that exits at once (its port taken meanwhile, say) is reported, with why.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(why) = exited(&mut child, &log) {
                return Err(format!("{node} exited at start ({why}); log: {log}"));
            }
            println!("started {node} (pid {pid})");
            Ok(None)
        }
        LocalCmd::Down { dir } => {
            down(&dir)?;
            println!("stopped everything; the data stays in {}", dir.display());
            Ok(None)
        }
    }
}

/// Stops every node of DIR: proxy, replicas, controllers, etcd; TERM, then KILL after 10 s.
fn down(dir: &Path) -> Result<(), String> {
    let mut l = read_layout(dir)?;
    let order: Vec<u32> = l
        .proxy
        .iter()
        .chain(l.replicas.iter())
        .chain(l.controllers.iter())
        .chain(l.etcd_node.iter())
        .map(|n| n.pid)
        .collect();
    for pid in order {
        if alive(pid) {
            let _ = signal(pid, "CONT");
            let _ = signal(pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                let _ = signal(pid, "KILL");
            }
        }
    }
    for n in l.nodes_mut() {
        n.pid = 0;
    }
    write_layout(dir, &l)
}

async fn up(
    dir: &Path,
    replicas: usize,
    controllers: usize,
    mode: &str,
    etcd: Vec<String>,
    insecure: bool,
) -> Result<(Vec<String>, Credentials), String> {
    if !(1..=9).contains(&replicas) || !(1..=9).contains(&controllers) {
        return Err("--replicas and --controllers must be between 1 and 9".into());
    }
    if mode != "semi-sync" && mode != "async" {
        return Err(format!("--mode {mode:?}: use semi-sync or async"));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Ok(l) = read_layout(&dir) {
        let running: Vec<String> = l
            .nodes()
            .filter(|n| alive(n.pid))
            .map(|n| format!("{} (pid {})", n.id, n.pid))
            .collect();
        if !running.is_empty() {
            return Err(format!(
                "{} is already running: {}; run `batonctl local down --dir {}` first",
                dir.display(),
                running.join(", "),
                dir.display()
            ));
        }
    }
    let (rbin, cbin) = (bin("baton-replica")?, bin("baton-controller")?);
    let pbin = bin("baton-proxy").ok();
    let s = |p: &Path| p.display().to_string();
    // Secure unless --insecure: a CA, certificates and tokens made afresh under DIR/tls.
    let sec = if insecure {
        None
    } else {
        Some(Secure::new(&dir)?)
    };
    let scheme = if insecure { "http" } else { "https" };
    // Plain HTTP must be chosen in every config: the default is TLS.
    let insecure_line = if insecure { "insecure = true\n" } else { "" };
    let creds = Credentials {
        ca: sec.as_ref().map(|x| x.ca_file.clone()),
        token: sec.as_ref().map(|x| x.tokens.admin.clone()),
    };
    let http = Http::new(load_ca(&creds)?, creds.token.clone());
    let mut layout = Layout {
        etcd: etcd.clone(),
        etcd_node: None,
        proxy: None,
        controllers: Vec::new(),
        replicas: Vec::new(),
        ca: sec.as_ref().map(|x| s(&x.ca_file)),
        tokens: sec.as_ref().map(|x| x.tokens.clone()),
        insecure,
    };
    let mut started = Started::default();
    let result = async {
        // The controllers reach a private etcd over TLS, presenting their own certificates.
        let mut etcd_tls = false;
        if etcd.is_empty() {
            let e = which("etcd").ok_or("etcd is not installed: `sudo apt install etcd-server` (or ./scripts/install-prereqs.sh), or pass --etcd URL")?;
            let (c, p) = (free_port()?, free_port()?);
            let url = format!("{scheme}://127.0.0.1:{c}");
            // A single member: nothing but itself on the peer port, which stays on loopback.
            let peer = format!("http://127.0.0.1:{p}");
            let edir = dir.join("etcd");
            std::fs::create_dir_all(&edir).map_err(|e| e.to_string())?;
            let mut cmd = vec![
                s(&e), "--name".into(), "baton-local".into(), "--data-dir".into(), s(&edir.join("data")),
                "--listen-client-urls".into(), url.clone(), "--advertise-client-urls".into(), url.clone(),
                "--listen-peer-urls".into(), peer.clone(), "--initial-advertise-peer-urls".into(), peer.clone(),
                "--initial-cluster".into(), format!("baton-local={peer}"),
                // History behind the last 1000 revisions is dropped (the controller compacts
                // too): etcd's size stays flat however long the deployment runs.
                "--auto-compaction-mode".into(), "revision".into(), "--auto-compaction-retention".into(), "1000".into(),
            ];
            if let Some(sec) = &sec {
                // TLS on the client port, and only clients with a certificate of the etcd-clients
                // CA, which signs the controllers' etcd certificates alone.
                let f = sec.node("etcd", &["etcd.baton".to_string()])?;
                cmd.extend([
                    "--cert-file".into(), s(&f.cert_file), "--key-file".into(), s(&f.key_file),
                    "--trusted-ca-file".into(), s(&sec.etcd_ca_file), "--client-cert-auth".into(),
                ]);
                etcd_tls = true;
            }
            let log = s(&edir.join("etcd.log"));
            let pid = started.spawn("etcd", &cmd, &log)?;
            layout.etcd = vec![url.clone()];
            layout.etcd_node = Some(Node { id: "etcd".into(), url, pid, data_dir: Some(s(&edir.join("data"))), cmd, log });
        }
        let rports: Vec<u16> = (0..replicas).map(|_| free_port()).collect::<Result<_, _>>()?;
        let cports: Vec<u16> = (0..controllers).map(|_| free_port()).collect::<Result<_, _>>()?;
        let curls: Vec<String> = cports.iter().map(|p| format!("{scheme}://127.0.0.1:{p}")).collect();
        let members: String = rports.iter().enumerate().map(|(i, p)| format!("[[clusters.members]]\nid = \"r{}\"\naddr = \"127.0.0.1:{p}\"\n\n", i + 1)).collect();
        let etcd_list = layout.etcd.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(", ");
        // A node's `[tls]` and `[[tokens]]` (nothing when insecure), its certificate carrying
        // `names`.
        let sections = |file: &str, names: Vec<String>| -> Result<(String, Option<pki::NodeFiles>), String> {
            match &sec {
                None => Ok((String::new(), None)),
                Some(sec) => {
                    let f = sec.node(file, &names)?;
                    Ok((sec.sections(&f), Some(f)))
                }
            }
        };
        for (i, port) in cports.iter().enumerate() {
            let id = format!("c{}", i + 1);
            let d = dir.join(&id);
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            let cfg = d.join("controller.toml");
            let (tls, files) = sections(&id, pki::controller_names(&id))?;
            let etcd_tls = match (&sec, &files, etcd_tls) {
                (Some(sec), Some(_), true) => sec.etcd_tls(&id)?,
                _ => String::new(),
            };
            let text = format!("id = \"{id}\"\nlisten = \"127.0.0.1:{port}\"\netcd = [{etcd_list}]\n{insecure_line}\n{etcd_tls}\n{tls}\n[[clusters]]\nname = \"main\"\nmode = \"{mode}\"\n\n{members}");
            std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
            let cmd = vec![s(&cbin), "--config".into(), s(&cfg)];
            let log = s(&d.join("controller.log"));
            let pid = started.spawn(&id, &cmd, &log)?;
            layout.controllers.push(Node { id, url: curls[i].clone(), pid, data_dir: None, cmd, log });
        }
        let ctl_list = curls.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(", ");
        for (i, port) in rports.iter().enumerate() {
            let id = format!("r{}", i + 1);
            let d = dir.join(&id);
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            let cfg = d.join("replica.toml");
            let data = d.join("data");
            let (tls, _) = sections(&id, pki::replica_names("main", &id))?;
            let text = format!("id = \"{id}\"\ndata_dir = {}\nlisten = \"127.0.0.1:{port}\"\ncontrollers = [{ctl_list}]\n{insecure_line}\n{tls}", toml_path(&data));
            std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
            let cmd = vec![s(&rbin), "--config".into(), s(&cfg)];
            let log = s(&d.join("replica.log"));
            let pid = started.spawn(&id, &cmd, &log)?;
            layout.replicas.push(Node { id, url: format!("{scheme}://127.0.0.1:{port}"), pid, data_dir: Some(s(&data)), cmd, log });
        }
        if let Some(pbin) = &pbin {
            let port = free_port()?;
            let d = dir.join("proxy");
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            let cfg = d.join("proxy.toml");
            // Its id is the default, "proxy", which its certificate names.
            let (tls, _) = sections("proxy", pki::proxy_names("proxy"))?;
            std::fs::write(&cfg, format!("listen = \"127.0.0.1:{port}\"\ncontrollers = [{ctl_list}]\n{insecure_line}\n{tls}")).map_err(|e| e.to_string())?;
            let cmd = vec![s(pbin), "--config".into(), s(&cfg)];
            let log = s(&d.join("proxy.log"));
            let pid = started.spawn("proxy", &cmd, &log)?;
            layout.proxy = Some(Node { id: "proxy".into(), url: format!("{scheme}://127.0.0.1:{port}"), pid, data_dir: None, cmd, log });
        }
        write_layout(&dir, &layout)?;
        // A node that exits at once (port taken, bad config) is reported with how it exited and
        // the last lines of its log.
        tokio::time::sleep(Duration::from_millis(300)).await;
        started.check()?;
        // init, through whichever controller is active (with the admin token).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        println!("waiting for the controllers to initialize the cluster…");
        'init: loop {
            started.check()?;
            for u in &curls {
                match http.call("POST", &format!("{u}/v1/clusters/main/init"), "").await {
                    Ok((200, _)) => break 'init,
                    Ok((409, b)) if b.contains("initialized") => break 'init,
                    Ok((_, b)) => last = b,
                    Err(e) => last = e,
                }
            }
            if Instant::now() > deadline {
                return Err(format!("the cluster did not initialize within 30 s: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Wait until a leader accepts writes (through the proxy when there is one).
        let targets: Vec<String> = match &layout.proxy {
            Some(p) => vec![p.url.clone()],
            None => layout.replicas.iter().map(|r| r.url.clone()).collect(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        println!("waiting for a leader to accept a write…");
        'ready: loop {
            started.check()?;
            for t in &targets {
                match http.call("PUT", &format!("{t}/v1/kv/__baton_local_up"), "ok").await {
                    Ok((200, _)) => break 'ready,
                    Ok((status, b)) => last = format!("HTTP {status}: {b}"),
                    Err(e) => last = e,
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no leader accepted a write within 30 s ({last}); see the logs under DIR"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, String>(curls)
    }
    .await;
    match result {
        Ok(curls) => {
            println!("Baton is up in {}", dir.display());
            match &layout.ca {
                Some(ca) => println!(
                    "  security:    TLS everywhere (CA {ca}); bearer tokens read, write, admin in {}",
                    layout_path(&dir).display()
                ),
                None => println!(
                    "  security:    INSECURE (plain HTTP, no credentials: anyone who reaches a port can do anything)"
                ),
            }
            println!("  etcd:        {}", layout.etcd.join(", "));
            for c in &layout.controllers {
                println!("  controller:  {} {}", c.id, c.url);
            }
            for r in &layout.replicas {
                println!("  replica:     {} {}", r.id, r.url);
            }
            match &layout.proxy {
                Some(p) => println!("  proxy:       {}   (clients connect here)", p.url),
                None => println!(
                    "  proxy:       (baton-proxy not built; clients talk to the leader directly)"
                ),
            }
            println!("  description: {}", layout_path(&dir).display());
            if let Some(ca) = &layout.ca {
                println!(
                    "  clients:     curl --cacert {ca} -H \"Authorization: Bearer TOKEN\" (TOKEN: \"tokens\" of {})",
                    layout_path(&dir).display()
                );
            }
            println!(
                "  operate:     batonctl --local-dir {} status   (or export BATON_LOCAL_DIR={})",
                dir.display(),
                dir.display()
            );
            Ok((curls, creds))
        }
        Err(e) => {
            // Nothing stays running: every process this `up` started is stopped and reaped.
            started.kill_all();
            for n in layout.nodes_mut() {
                n.pid = 0;
            }
            let _ = write_layout(&dir, &layout);
            Err(e)
        }
    }
}
