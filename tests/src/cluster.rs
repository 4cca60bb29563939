//! A whole Baton deployment for tests, benchmarks and the chaos runner: a private etcd (from
//! the distribution's `etcd`; one member or a cluster of three), controllers, replicas and
//! (optionally) a `baton-proxy` as real processes on loopback ports picked at run time. Each
//! replica reaches each controller through its own [`Relay`], so a test can cut one replica off
//! from the controllers while the data path stays up. With [`Opts::inbound_relays`] every
//! replica also sits behind an inbound relay that is its declared member address and its
//! `advertise`: followers, the proxy and anyone using the member address reach it only through
//! that relay, and per-source rules on it cut one follower's link to it ([`Cluster::isolate`],
//! [`Cluster::cut_data_link`]). The harness itself reaches replicas directly ([`Cluster::url`]).

use crate::client::Client;
use crate::procs::{bin_path, free_port, release_bin, wait_for, Daemon, ReplicaProc, ReplicaSpec};
use crate::relay::Relay;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A private single-node etcd.
pub struct EtcdProc {
    pub url: String,
    pub daemon: Daemon,
}

impl EtcdProc {
    pub async fn start(dir: &Path) -> anyhow::Result<EtcdProc> {
        let bin = etcd_bin()?;
        std::fs::create_dir_all(dir)?;
        let (c, p) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{c}");
        let peer = format!("http://127.0.0.1:{p}");
        let args = etcd_args(
            "baton-test",
            dir,
            &url,
            &peer,
            &format!("baton-test={peer}"),
        );
        let daemon = Daemon::start("etcd", bin, args, dir.join("etcd.log"))?;
        let e = EtcdProc { url, daemon };
        e.wait_healthy(Duration::from_secs(20)).await?;
        Ok(e)
    }

    /// An etcd cluster of `n` members (`n == 1` is [`EtcdProc::start`]), member `i` in
    /// `dir/m{i}`; returns once every member reports healthy.
    pub async fn start_cluster(dir: &Path, n: usize) -> anyhow::Result<Vec<EtcdProc>> {
        if n <= 1 {
            return Ok(vec![EtcdProc::start(dir).await?]);
        }
        let bin = etcd_bin()?;
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("etcd{}=http://127.0.0.1:{p}", i + 1))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let name = format!("etcd{}", i + 1);
            let mdir = dir.join(format!("m{}", i + 1));
            std::fs::create_dir_all(&mdir)?;
            let url = format!("http://127.0.0.1:{c}");
            let peer = format!("http://127.0.0.1:{p}");
            let args = etcd_args(&name, &mdir, &url, &peer, &initial);
            let daemon = Daemon::start(&name, bin.clone(), args, mdir.join("etcd.log"))?;
            members.push(EtcdProc { url, daemon });
        }
        for m in &members {
            m.wait_healthy(Duration::from_secs(30)).await?;
        }
        Ok(members)
    }

    /// Waits until this member's `/health` answers 200 (it sees a quorum).
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let c = Client::new(Duration::from_millis(500));
        let health = format!("{}/health", self.url);
        wait_for(timeout, &format!("etcd {} to be healthy", self.url), || async {
            matches!(c.call("GET", &health, &[], bytes::Bytes::new()).await, Ok(r) if r.status == 200).then_some(())
        })
        .await
    }
}

/// The etcd binary on PATH, or an error saying how to install it.
pub fn etcd_bin() -> anyhow::Result<PathBuf> {
    which("etcd").ok_or_else(|| {
        anyhow::anyhow!(
            "etcd is not installed: run scripts/install-prereqs.sh (apt install etcd-server)"
        )
    })
}

fn etcd_args(
    name: &str,
    dir: &Path,
    url: &str,
    peer: &str,
    initial: &str,
) -> Vec<std::ffi::OsString> {
    vec![
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        dir.join("data").into(),
        "--listen-client-urls".into(),
        url.into(),
        "--advertise-client-urls".into(),
        url.into(),
        "--listen-peer-urls".into(),
        peer.into(),
        "--initial-advertise-peer-urls".into(),
        peer.into(),
        "--initial-cluster".into(),
        initial.into(),
        // As `batonctl local up` and the deployment docs: history behind the last 1000
        // revisions is dropped, so etcd's size stays flat.
        "--auto-compaction-mode".into(),
        "revision".into(),
        "--auto-compaction-retention".into(),
        "1000".into(),
    ]
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Options of a test deployment.
#[derive(Clone, Debug)]
pub struct Opts {
    pub replicas: usize,
    pub controllers: usize,
    /// `semi-sync` or `async`.
    pub mode: String,
    /// Extra TOML for every replica (tables like `[timing]`).
    pub replica_toml: String,
    /// Extra keys for the controller's `[timing]` table.
    pub controller_timing: String,
    /// Extra keys for the controller's `[[clusters]]` table (e.g. `max_failovers_per_hour`).
    pub cluster_toml: String,
    pub release: bool,
    /// Start a `baton-proxy` in front of the cluster ([`Cluster::proxy`]).
    pub proxy: bool,
    /// Extra TOML for the proxy's config (tables like `[timing]`).
    pub proxy_toml: String,
    /// Put an inbound [`Relay`] in front of every replica and declare it as the member address
    /// (and the replica's `advertise`), so that every link to a replica can be cut.
    pub inbound_relays: bool,
    /// Members of the private etcd cluster (1 or 3).
    pub etcd_members: usize,
    /// Run the replicas as `baton-replica-failpoints` ([`ReplicaSpec::fault_points`]), so that
    /// disk faults can be armed at run time ([`Cluster::arm`]); build them first with
    /// [`crate::procs::build_fault_bins`].
    pub fault_points: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            replicas: 3,
            controllers: 2,
            mode: "semi-sync".into(),
            replica_toml: String::new(),
            controller_timing: String::new(),
            cluster_toml: String::new(),
            release: false,
            proxy: false,
            proxy_toml: String::new(),
            inbound_relays: false,
            etcd_members: 1,
            fault_points: false,
        }
    }
}

/// A controller process.
pub struct ControllerProc {
    pub id: String,
    pub url: String,
    pub daemon: Daemon,
}

/// The proxy process.
pub struct ProxyProc {
    /// Base URL of its client API, `https://127.0.0.1:…`.
    pub url: String,
    pub daemon: Daemon,
}

impl ProxyProc {
    /// Writes `dir/proxy.toml` (listen on a free port, every controller, `extra` appended) and
    /// starts the proxy.
    pub fn start(
        dir: &Path,
        controllers: &[String],
        extra: &str,
        release: bool,
    ) -> anyhow::Result<ProxyProc> {
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let ctl: Vec<String> = controllers.iter().map(|c| format!("{c:?}")).collect();
        let text = format!(
            "listen = \"127.0.0.1:{port}\"\ncontrollers = [{}]\ncluster = \"main\"\n{}{extra}\n{}",
            ctl.join(", "),
            crate::secure::top(),
            crate::secure::proxy_tables("proxy"),
        );
        let cfg = dir.join("proxy.toml");
        std::fs::write(&cfg, text)?;
        let bin = if release {
            release_bin("baton-proxy")?
        } else {
            bin_path("baton-proxy")?
        };
        let daemon = Daemon::start(
            "proxy",
            bin,
            vec!["--config".into(), cfg.into()],
            dir.join("proxy.log"),
        )?;
        Ok(ProxyProc {
            url: crate::secure::url(format!("127.0.0.1:{port}")),
            daemon,
        })
    }
}

/// A running deployment.
pub struct Cluster {
    pub dir: PathBuf,
    /// The first (or only) etcd member.
    pub etcd: EtcdProc,
    /// The other etcd members when [`Opts::etcd_members`] > 1.
    pub etcd_peers: Vec<EtcdProc>,
    pub controllers: Vec<ControllerProc>,
    pub replicas: BTreeMap<String, ReplicaProc>,
    /// `relays[replica][controller index]`: that replica's link to that controller.
    pub relays: BTreeMap<String, Vec<Relay>>,
    /// `inbound[replica]`: the relay in front of it (its member address), when
    /// [`Opts::inbound_relays`] asked for them.
    pub inbound: BTreeMap<String, Relay>,
    /// The proxy, when [`Opts::proxy`] asked for one.
    pub proxy: Option<ProxyProc>,
    pub client: Client,
}

impl Cluster {
    /// Starts etcd, the controllers and the replicas in `dir`, runs `init` and waits until the
    /// leader accepts writes.
    pub async fn start(dir: &Path, opts: Opts) -> anyhow::Result<Cluster> {
        let mut etcds = EtcdProc::start_cluster(&dir.join("etcd"), opts.etcd_members).await?;
        let etcd = etcds.remove(0);
        let etcd_peers = etcds;
        let etcd_list: Vec<String> = std::iter::once(&etcd)
            .chain(&etcd_peers)
            .map(|e| format!("{:?}", e.url))
            .collect();
        let ids: Vec<String> = (1..=opts.replicas).map(|i| format!("r{i}")).collect();
        let rports: Vec<u16> = ids.iter().map(|_| free_port()).collect();
        let cports: Vec<u16> = (0..opts.controllers).map(|_| free_port()).collect();
        let mut inbound = BTreeMap::new();
        if opts.inbound_relays {
            for (id, p) in ids.iter().zip(&rports) {
                let relay = Relay::start(format!("127.0.0.1:{p}").parse()?).await?;
                inbound.insert(id.clone(), relay);
            }
        }
        let member_addr = |id: &String, p: &u16| match inbound.get(id) {
            Some(r) => r.addr.to_string(),
            None => format!("127.0.0.1:{p}"),
        };
        let members: String = ids
            .iter()
            .zip(&rports)
            .map(|(id, p)| {
                format!(
                    "[[clusters.members]]\nid = \"{id}\"\naddr = \"{}\"\n",
                    member_addr(id, p)
                )
            })
            .collect();
        let cbin = if opts.release {
            release_bin("baton-controller")?
        } else {
            bin_path("baton-controller")?
        };
        let mut controllers = Vec::new();
        for (i, port) in cports.iter().enumerate() {
            let id = format!("c{}", i + 1);
            let cdir = dir.join(&id);
            std::fs::create_dir_all(&cdir)?;
            let text = format!(
                "id = \"{id}\"\nlisten = \"127.0.0.1:{port}\"\netcd = [{}]\n{}[timing]\n{}\n[[clusters]]\nname = \"main\"\nmode = \"{}\"\n{}\n{members}{}",
                etcd_list.join(", "),
                crate::secure::top(),
                opts.controller_timing,
                opts.mode,
                opts.cluster_toml,
                crate::secure::controller_tables(&id),
            );
            let cfg = cdir.join("controller.toml");
            std::fs::write(&cfg, text)?;
            let daemon = Daemon::start(
                &id,
                cbin.clone(),
                vec!["--config".into(), cfg.into()],
                cdir.join("controller.log"),
            )?;
            controllers.push(ControllerProc {
                id,
                url: crate::secure::url(format!("127.0.0.1:{port}")),
                daemon,
            });
        }
        let mut replicas = BTreeMap::new();
        let mut relays = BTreeMap::new();
        for (id, port) in ids.iter().zip(&rports) {
            let mut rl = Vec::new();
            for p in &cports {
                rl.push(Relay::start(format!("127.0.0.1:{p}").parse()?).await?);
            }
            let urls: Vec<String> = rl.iter().map(Relay::url).collect();
            let mut spec = ReplicaSpec::new(id, dir, &urls);
            spec.port = *port;
            spec.advertise = inbound.get(id).map(|r| r.addr.to_string());
            spec.extra_toml = opts.replica_toml.clone();
            spec.release = opts.release;
            spec.fault_points = opts.fault_points;
            replicas.insert(id.clone(), ReplicaProc::start(spec)?);
            relays.insert(id.clone(), rl);
        }
        let mut cl = Cluster {
            dir: dir.to_path_buf(),
            etcd,
            etcd_peers,
            controllers,
            replicas,
            relays,
            inbound,
            proxy: None,
            client: Client::new(Duration::from_secs(5)),
        };
        if opts.proxy {
            let urls: Vec<String> = cl.controllers.iter().map(|c| c.url.clone()).collect();
            cl.proxy = Some(ProxyProc::start(
                &dir.join("proxy"),
                &urls,
                &opts.proxy_toml,
                opts.release,
            )?);
        }
        let ready = async {
            cl.init().await?;
            cl.wait_writable(Duration::from_secs(30)).await?;
            if cl.proxy.is_some() {
                cl.wait_proxy_writable(Duration::from_secs(30)).await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = ready.await {
            eprintln!("the cluster did not start: {e:#}\n{}", cl.dump());
            return Err(e);
        }
        Ok(cl)
    }

    /// The proxy's base URL; panics if the cluster was started without one.
    pub fn proxy_url(&self) -> String {
        self.proxy
            .as_ref()
            .map(|p| p.url.clone())
            .expect("the cluster was started with Opts { proxy: true, .. }")
    }

    /// Waits until a write through the proxy is acknowledged.
    pub async fn wait_proxy_writable(&self, timeout: Duration) -> anyhow::Result<()> {
        let url = self.proxy_url();
        let c = Client::new(Duration::from_secs(5));
        wait_for(timeout, "the proxy to accept writes", || async {
            matches!(c.put(&url, "__proxy_probe", "x").await, Ok(r) if r.status == 200)
                .then_some(())
        })
        .await
    }

    /// `POST init` on whichever controller is active, retrying while members are missing.
    /// On timeout the error names every controller's last answer.
    pub async fn init(&self) -> anyhow::Result<()> {
        let last = std::sync::Mutex::new(vec![String::new(); self.controllers.len()]);
        let res = wait_for(Duration::from_secs(30), "init to succeed", || async {
            for (i, c) in self.controllers.iter().enumerate() {
                let url = format!("{}/v1/clusters/main/init", c.url);
                let answer = match self
                    .client
                    .call("POST", &url, &[], bytes::Bytes::new())
                    .await
                {
                    Ok(r) if r.status == 200 => return Some(()),
                    Ok(r) => r.text(),
                    Err(e) => format!("{e:?}"),
                };
                last.lock().unwrap_or_else(|p| p.into_inner())[i] = answer;
            }
            None
        })
        .await;
        res.map_err(|e| {
            let answers = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let answers: Vec<String> = self
                .controllers
                .iter()
                .zip(answers)
                .map(|(c, a)| format!("{} ({}): {a}", c.id, c.url))
                .collect();
            anyhow::anyhow!("{e}: last answers {}", answers.join("; "))
        })
    }

    /// The cluster view from the first controller that answers.
    pub async fn view(&self) -> Option<serde_json::Value> {
        for c in &self.controllers {
            if let Ok(r) = self
                .client
                .call(
                    "GET",
                    &format!("{}/v1/cluster", c.url),
                    &[],
                    bytes::Bytes::new(),
                )
                .await
            {
                if r.status == 200 {
                    return Some(r.json());
                }
            }
        }
        None
    }

    /// The recorded leader's id, as an active controller reports it.
    pub async fn leader_id(&self) -> Option<String> {
        let v = self.view().await?;
        v["leader"]["id"].as_str().map(str::to_string)
    }

    pub fn url(&self, id: &str) -> String {
        self.replicas[id].url.clone()
    }

    /// Waits until some replica accepts a write; returns its id.
    pub async fn wait_writable(&self, timeout: Duration) -> anyhow::Result<String> {
        let c = Client::new(Duration::from_millis(500));
        wait_for(timeout, "a leader that accepts writes", || async {
            for (id, r) in &self.replicas {
                if let Ok(rep) = c.put(&r.url, "__probe", "x").await {
                    if rep.status == 200 {
                        return Some(id.clone());
                    }
                }
            }
            None
        })
        .await
    }

    /// The index of the active controller, if one says so.
    pub async fn active_controller(&self) -> Option<usize> {
        for (i, c) in self.controllers.iter().enumerate() {
            if let Ok(r) = self
                .client
                .call(
                    "GET",
                    &format!("{}/v1/cluster", c.url),
                    &[],
                    bytes::Bytes::new(),
                )
                .await
            {
                if r.json()["active"] == true {
                    return Some(i);
                }
            }
        }
        None
    }

    /// The cluster view from a controller that says it is active, with that controller's index.
    pub async fn active_view(&self) -> Option<(usize, serde_json::Value)> {
        for (i, c) in self.controllers.iter().enumerate() {
            if let Ok(r) = self
                .client
                .call(
                    "GET",
                    &format!("{}/v1/cluster", c.url),
                    &[],
                    bytes::Bytes::new(),
                )
                .await
            {
                let v = r.json();
                if r.status == 200 && v["active"] == true {
                    return Some((i, v));
                }
            }
        }
        None
    }

    /// Waits up to `timeout` for an active controller's view; returns it with its index.
    pub async fn wait_active_view(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<(usize, serde_json::Value)> {
        wait_for(timeout, "an active controller", || self.active_view()).await
    }

    /// The decision journal (`GET …/history`, oldest first) from the first controller that
    /// answers; every controller reads it from etcd.
    pub async fn history(&self) -> Vec<serde_json::Value> {
        for c in &self.controllers {
            if let Ok(r) = self
                .client
                .call(
                    "GET",
                    &format!("{}/v1/clusters/main/history?limit=500", c.url),
                    &[],
                    bytes::Bytes::new(),
                )
                .await
            {
                if r.status == 200 {
                    if let serde_json::Value::Array(a) = r.json() {
                        return a;
                    }
                }
            }
        }
        Vec::new()
    }

    /// `POST /v1/clusters/main/{op}` with a JSON `body` on the active controller, retrying for
    /// up to `timeout` while no controller is active or the active one answers 503 (busy, not
    /// active). Any other answer is returned as it is.
    pub async fn op(
        &self,
        op: &str,
        body: serde_json::Value,
        timeout: Duration,
    ) -> anyhow::Result<crate::client::Reply> {
        let body = bytes::Bytes::from(serde_json::to_vec(&body)?);
        let last = std::sync::Mutex::new(String::from("no controller is active"));
        let res = wait_for(
            timeout,
            &format!("the active controller to take {op}"),
            || async {
                let (i, _) = self.active_view().await?;
                let url = format!("{}/v1/clusters/main/{op}", self.controllers[i].url);
                let hdr = [("content-type", "application/json")];
                match self.client.call("POST", &url, &hdr, body.clone()).await {
                    Ok(r) if r.status != 503 => Some(r),
                    Ok(r) => {
                        *last.lock().unwrap_or_else(|p| p.into_inner()) = r.text();
                        None
                    }
                    Err(e) => {
                        *last.lock().unwrap_or_else(|p| p.into_inner()) = format!("{e:?}");
                        None
                    }
                }
            },
        )
        .await;
        res.map_err(|e| {
            anyhow::anyhow!(
                "{e}: last answer {}",
                last.lock().unwrap_or_else(|p| p.into_inner())
            )
        })
    }

    /// Sets every link from `replica` to the controllers to `mode`.
    pub fn set_controller_links(&self, replica: &str, mode: crate::relay::Mode) {
        for r in &self.relays[replica] {
            r.set(mode);
        }
    }

    /// Every etcd member, the first one first.
    pub fn etcd_members_mut(&mut self) -> Vec<&mut EtcdProc> {
        std::iter::once(&mut self.etcd)
            .chain(self.etcd_peers.iter_mut())
            .collect()
    }

    /// The index (into [`Cluster::etcd_members_mut`]) of the etcd member that is raft leader
    /// now, asked through each member's JSON gateway (`/v3/maintenance/status`).
    pub async fn etcd_leader(&self) -> Option<usize> {
        let c = Client::new(Duration::from_secs(1));
        let urls: Vec<&str> = std::iter::once(&self.etcd)
            .chain(self.etcd_peers.iter())
            .map(|e| e.url.as_str())
            .collect();
        for (i, u) in urls.iter().enumerate() {
            let Ok(r) = c
                .call(
                    "POST",
                    &format!("{u}/v3/maintenance/status"),
                    &[],
                    bytes::Bytes::from_static(b"{}"),
                )
                .await
            else {
                continue;
            };
            let j = r.json();
            let me = j["header"]["member_id"].as_str();
            if me.is_some() && me == j["leader"].as_str() {
                return Some(i);
            }
        }
        None
    }

    /// The pid of a replica's current process.
    pub fn replica_pid(&self, id: &str) -> Option<u32> {
        self.replicas.get(id).and_then(ReplicaProc::pid)
    }

    /// Cuts `id` off from everyone with `mode` (needs [`Opts::inbound_relays`]): its inbound
    /// relay (followers, the proxy), its links to the controllers, and its own connections to
    /// the other replicas' inbound relays (its follower stream). [`Cluster::heal_links`] undoes
    /// it.
    pub fn isolate(&self, id: &str, mode: crate::relay::Mode) -> anyhow::Result<()> {
        let relay = self.inbound.get(id).ok_or_else(|| {
            anyhow::anyhow!("isolating a replica needs Opts {{ inbound_relays: true, .. }}")
        })?;
        relay.set(mode);
        self.set_controller_links(id, mode);
        if let Some(pid) = self.replica_pid(id) {
            for (other, r) in &self.inbound {
                if other != id {
                    r.cut_from(pid, mode);
                }
            }
        }
        Ok(())
    }

    /// Cuts the data link between replicas `a` and `b` both ways (needs
    /// [`Opts::inbound_relays`]): connections `b`'s process opens to `a`'s inbound relay, and
    /// `a`'s to `b`'s. Links to the controllers and the proxy stay up. The rule follows the
    /// current processes: heal before restarting either.
    pub fn cut_data_link(&self, a: &str, b: &str, mode: crate::relay::Mode) -> anyhow::Result<()> {
        for (to, from) in [(a, b), (b, a)] {
            let relay = self.inbound.get(to).ok_or_else(|| {
                anyhow::anyhow!("cutting a data link needs Opts {{ inbound_relays: true, .. }}")
            })?;
            if let Some(pid) = self.replica_pid(from) {
                relay.cut_from(pid, mode);
            }
        }
        Ok(())
    }

    /// Drops every message from replica `from` to replica `to` while the other direction
    /// flows (needs [`Opts::inbound_relays`]): on `to`'s inbound relay, what `from`'s process
    /// sends is discarded; on `from`'s inbound relay, what goes back to `to`'s process is
    /// discarded. As [`Cluster::cut_data_link`], the rules follow the current processes.
    pub fn drop_data_one_way(&self, from: &str, to: &str) -> anyhow::Result<()> {
        use crate::relay::Mode;
        for (relay_of, opener, mode) in [
            (to, from, Mode::DropFromClient),
            (from, to, Mode::DropToClient),
        ] {
            let relay = self.inbound.get(relay_of).ok_or_else(|| {
                anyhow::anyhow!("cutting a data link needs Opts {{ inbound_relays: true, .. }}")
            })?;
            if let Some(pid) = self.replica_pid(opener) {
                relay.cut_from(pid, mode);
            }
        }
        Ok(())
    }

    /// Cuts controller `i` from every replica (`mode`), while it still reaches etcd and the
    /// proxy: every replica's link to it, and any connection its own process opens to a
    /// replica's inbound relay (needs [`Opts::inbound_relays`] for the latter).
    pub fn isolate_controller(&self, i: usize, mode: crate::relay::Mode) {
        for rl in self.relays.values() {
            rl[i].set(mode);
        }
        if let Some(pid) = self.controllers.get(i).and_then(|c| c.daemon.pid()) {
            for r in self.inbound.values() {
                r.cut_from(pid, mode);
            }
        }
    }

    /// Arms fault point `point` of replica `id` with `actions` (`PUT /v1/failpoints/{point}`;
    /// needs [`Opts::fault_points`]), e.g. `wal.before_append` with `return(enospc)` (a full
    /// disk) or `wal.before_fsync` with `sleep(2500)` (a stalled fsync). A connection error is
    /// retried for up to 3 s; any answer but 200 is an error.
    pub async fn arm(&self, id: &str, point: &str, actions: &str) -> anyhow::Result<()> {
        self.failpoint_call(id, "PUT", point, actions).await
    }

    /// Disarms fault point `point` of replica `id` (`DELETE /v1/failpoints/{point}`), retried
    /// as [`Cluster::arm`].
    pub async fn disarm(&self, id: &str, point: &str) -> anyhow::Result<()> {
        self.failpoint_call(id, "DELETE", point, "").await
    }

    async fn failpoint_call(
        &self,
        id: &str,
        method: &str,
        point: &str,
        actions: &str,
    ) -> anyhow::Result<()> {
        let url = format!("{}/v1/failpoints/{point}", self.url(id));
        let c = Client::new(Duration::from_secs(1));
        let mut last = String::new();
        for _ in 0..15 {
            match c
                .call(method, &url, &[], bytes::Bytes::from(actions.to_string()))
                .await
            {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => anyhow::bail!(
                    "{method} {point} {actions} on {id}: {} {} (is it a fault-point build?)",
                    r.status,
                    r.text()
                ),
                Err(e) => last = format!("{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("{method} {point} {actions} on {id}: {last}")
    }

    /// Every relay back to `Pass`, every per-source rule dropped.
    pub fn heal_links(&self) {
        for rl in self.relays.values() {
            for r in rl {
                if r.mode() != crate::relay::Mode::Pass {
                    r.set(crate::relay::Mode::Pass);
                }
            }
        }
        for r in self.inbound.values() {
            if r.mode() != crate::relay::Mode::Pass {
                r.set(crate::relay::Mode::Pass);
            }
            if r.has_rules() {
                r.clear_rules();
            }
        }
    }

    /// Every process's log tail, for a failing test's output.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let tail = |name: &str, log: String| {
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "=== {name} ===\n{}\n",
                lines[lines.len().saturating_sub(30)..].join("\n")
            )
        };
        for c in &self.controllers {
            out.push_str(&tail(&c.id, c.daemon.log()));
        }
        for (id, r) in &self.replicas {
            out.push_str(&tail(id, r.log()));
        }
        if let Some(p) = &self.proxy {
            out.push_str(&tail("proxy", p.daemon.log()));
        }
        out
    }
}
