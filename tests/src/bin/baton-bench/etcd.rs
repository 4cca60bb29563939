//! The etcd side of `baton-bench replica` and `cluster`: a private three-member etcd cluster on
//! this machine (the distribution's `etcd`, each member with its own data directory under the
//! bench's working directory and its own client and peer ports on 127.0.0.1), the same write
//! load as Baton's against its leader through the gRPC API (`etcd-client`), and the options
//! both commands share for the comparison ([`Versus`]). etcd runs with TLS on its client and
//! peer links and checks client certificates when Baton's side runs its secure default (TLS and
//! tokens), and in plain HTTP when Baton's side does (`--plain`): the two sides are always on
//! the same footing. Every member is killed and its directory removed when the [`EtcdCluster`]
//! is dropped, on error too.

use super::common::*;
use baton_tests::cluster::etcd_bin;
use baton_tests::procs::{free_port, wait_for, Daemon};
use baton_tests::secure;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How `replica` and `cluster` run their comparison with etcd.
#[derive(clap::Args, Clone, Copy, Debug)]
pub(crate) struct Versus {
    /// Skip the etcd comparison.
    #[arg(long)]
    pub(crate) no_etcd: bool,
    /// Both sides in plain HTTP (Baton `insecure = true`, etcd without TLS) instead of both
    /// with TLS (Baton's secure default: TLS and tokens; etcd: TLS and client certificates).
    #[arg(long)]
    pub(crate) plain: bool,
    /// Use the debug build of baton-replica (a quick check that the command works, as the CI
    /// smoke test runs it; the numbers mean nothing).
    #[arg(long)]
    pub(crate) debug: bool,
}

impl Versus {
    /// Call first: switches this process to plain HTTP with `--plain`, and prints what each
    /// side runs with and whether the numbers mean anything.
    pub(crate) fn announce(&self) {
        if self.plain {
            secure::set_plain(true);
        }
        let security = if secure::insecure() {
            "security: both sides in plain HTTP (Baton insecure = true, etcd http:// without \
             auth)"
        } else {
            "security: both sides with TLS (Baton: TLS on client, follower and heartbeat links \
             and a bearer token checked on every request; etcd: TLS on client and peer links \
             with client certificates checked, --client-cert-auth, no etcd auth)"
        };
        println!("{security}");
        if self.debug || !baton_tests::procs::running_release() {
            println!(
                "DEBUG BUILD (baton-replica{}): these numbers mean nothing; only that the \
                 command runs",
                if baton_tests::procs::running_release() {
                    ""
                } else {
                    " and baton-bench"
                }
            );
        }
    }
}

struct Member {
    name: String,
    url: String,
    daemon: Daemon,
}

/// A private three-member etcd cluster in `dir`, and how to reach it.
pub(crate) struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    options: ConnectOptions,
    /// Index of the member that led when the cluster became ready.
    leader: usize,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.daemon.kill9();
        }
        self.members.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl EtcdCluster {
    /// Starts three members in `dir` (created; removed again on drop), in TLS unless this
    /// process runs insecure, and returns once each member sees a leader and the leader takes a
    /// write.
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<EtcdCluster> {
        let bin = etcd_bin()?;
        std::fs::create_dir_all(dir)?;
        let pki = secure::pki();
        let scheme = if pki.is_some() { "https" } else { "http" };
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // As Baton's bench client.
            .with_timeout(Duration::from_secs(10));
        if let Some(p) = pki {
            let client = p.node("etcd-bench-client", &["client.etcd.bench".to_string()]);
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(std::fs::read(p.ca_file())?))
                    .identity(Identity::from_pem(
                        std::fs::read(&client.cert_file)?,
                        std::fs::read(&client.key_file)?,
                    )),
            );
        }
        let mut e = EtcdCluster {
            dir: dir.to_path_buf(),
            members: Vec::new(),
            options,
            leader: 0,
        };
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("etcd{}={scheme}://127.0.0.1:{p}", i + 1))
            .collect();
        let initial = initial.join(",");
        for (i, (c, p)) in ports.iter().enumerate() {
            let name = format!("etcd{}", i + 1);
            let mdir = dir.join(&name);
            std::fs::create_dir_all(&mdir)?;
            let url = format!("{scheme}://127.0.0.1:{c}");
            let peer = format!("{scheme}://127.0.0.1:{p}");
            let mut args: Vec<String> = vec![
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                mdir.join("data").display().to_string(),
                "--listen-client-urls".into(),
                url.clone(),
                "--advertise-client-urls".into(),
                url.clone(),
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer,
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                "baton-bench".into(),
            ];
            if let Some(p) = pki {
                let f = p.node(
                    &format!("etcd-bench-{name}"),
                    &[format!("{name}.etcd.bench")],
                );
                let (ca, cert, key) = (
                    f.ca_file.display().to_string(),
                    f.cert_file.display().to_string(),
                    f.key_file.display().to_string(),
                );
                for (flag, v) in [
                    ("--cert-file", &cert),
                    ("--key-file", &key),
                    ("--trusted-ca-file", &ca),
                    ("--peer-cert-file", &cert),
                    ("--peer-key-file", &key),
                    ("--peer-trusted-ca-file", &ca),
                ] {
                    args.push(flag.into());
                    args.push(v.clone());
                }
                args.push("--client-cert-auth".into());
                args.push("--peer-client-cert-auth".into());
            }
            let daemon = Daemon::start(
                &name,
                bin.clone(),
                args.into_iter().map(Into::into).collect(),
                mdir.join("etcd.log"),
            )?;
            e.members.push(Member { name, url, daemon });
        }
        if let Err(err) = e.wait_ready().await {
            return Err(err.context(e.log_tails()));
        }
        Ok(e)
    }

    async fn client(&self, url: &str) -> anyhow::Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([url], Some(self.options.clone())).await?)
    }

    /// Waits (bounded) until every member reports the same leader, notes which member it is and
    /// checks that it takes a write.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let mut leader_id = 0;
        let mut ids = Vec::new();
        for m in &self.members {
            let (leader, id) = wait_for(
                Duration::from_secs(30),
                &format!("etcd member {} ({}) to see a leader", m.name, m.url),
                || async {
                    let mut c = self.client(&m.url).await.ok()?;
                    let st = c.status().await.ok()?;
                    let id = st.header()?.member_id();
                    (st.leader() != 0).then_some((st.leader(), id))
                },
            )
            .await?;
            anyhow::ensure!(
                leader_id == 0 || leader_id == leader,
                "the etcd members disagree on their leader"
            );
            leader_id = leader;
            ids.push(id);
        }
        self.leader = ids
            .iter()
            .position(|&id| id == leader_id)
            .ok_or_else(|| anyhow::anyhow!("no etcd member has the leader's id {leader_id:x}"))?;
        let url = self.members[self.leader].url.clone();
        wait_for(
            Duration::from_secs(10),
            "the etcd leader to take a write",
            || async {
                let mut c = self.client(&url).await.ok()?;
                c.put("probe", "x", None).await.ok().map(|_| ())
            },
        )
        .await
    }

    /// The last lines of every member's log (for an error).
    fn log_tails(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            s.push_str(&format!(
                "=== {} log ({}), last 20 lines:\n{}\n",
                m.name,
                m.daemon.log_path.display(),
                m.daemon.log_tail(20)
            ));
        }
        s
    }

    /// What the etcd side is, for the output.
    pub(crate) fn describe(&self) -> String {
        format!(
            "etcd {}: 3 members on 127.0.0.1 ({}), writes sent to the leader {} through gRPC \
             (etcd-client, one HTTP/2 connection per load level)",
            etcd_version(),
            if self.options_tls() { "TLS" } else { "plain" },
            self.members[self.leader].name
        )
    }

    fn options_tls(&self) -> bool {
        self.members[0].url.starts_with("https://")
    }

    /// One load level of puts with unique keys `{prefix}{clients}-{task}-{i}` (as Baton's) to
    /// the leader, `n` in flight for `secs` seconds.
    pub(crate) async fn put_load(
        &self,
        label: &str,
        prefix: &str,
        n: usize,
        secs: u64,
        vbytes: usize,
    ) -> anyhow::Result<Row> {
        let kv = self
            .client(&self.members[self.leader].url)
            .await?
            .kv_client();
        let v = vec![b'x'; vbytes];
        let prefix = prefix.to_string();
        Ok(load(label, n, secs, move |t, i| {
            let (mut kv, v) = (kv.clone(), v.clone());
            let key = format!("{prefix}{n}-{t}-{i}");
            async move { kv.put(key, v, None).await.is_ok() }
        })
        .await)
    }
}

/// `etcd --version`'s first line without its label (e.g. `3.4.23`).
fn etcd_version() -> String {
    etcd_bin()
        .ok()
        .and_then(|b| std::process::Command::new(b).arg("--version").output().ok())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version:").trim().to_string())
        })
        .unwrap_or_else(|| "(version unknown)".into())
}
