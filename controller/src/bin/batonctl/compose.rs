//! `batonctl compose render --dir DIR`: the files the Docker Compose deployment
//! (`deploy/compose/compose.yaml`, DESIGN §8) mounts, made secure by default (DESIGN §9): one CA
//! for the deployment, a second CA for etcd alone (its members' certificates and the
//! controllers' etcd client certificates), a certificate per node naming its
//! identity and the hosts it is reached at (its Compose service name, and localhost for the
//! ports published on the host), tokens per role, every node's config, and `DIR/cluster.json`
//! with host-reachable URLs so that `batonctl --local-dir DIR` operates the deployment from the
//! host.
//!
//! Layout: `DIR` (0700) holds `cluster.json` (0600, the tokens) and `ca.pem`; `DIR/nodes/NAME/`
//! is what container NAME mounts read-only at `/etc/baton`: `ca.pem`, `cert.pem`, `key.pem`, and
//! baton.toml. etcd members have their own CA (server, peer and client certificates: their
//! `ca.pem` is it, and `client.pem`, `client-key.pem` serve their health checks) instead of a
//! config; controllers also hold `etcd-ca.pem`, `etcd-client.pem`, `etcd-client-key.pem`. Each container sees only
//! its own key; on the host the keys are kept from other users by `DIR`'s mode, and they are
//! readable inside the container by its unprivileged user. An existing `cluster.json` is kept
//! (its tokens and certificates with it) unless `--renew`.

use crate::local::layout::{read_layout, write_layout, Layout, Node, Tokens};
use crate::local::secure::{token_sections, write_file};
use baton_runtime::auth::new_token;
use baton_runtime::pki::{self, Ca};
use std::path::{Path, PathBuf};

/// The Compose services (DESIGN §8): etcd members, controllers and their ports (published on
/// the host at the same number), replicas and theirs, and the proxy's.
pub const ETCD: [&str; 3] = ["etcd1", "etcd2", "etcd3"];
pub const CONTROLLERS: [(&str, u16); 2] = [("c1", 7001), ("c2", 7002)];
pub const REPLICAS: [(&str, u16); 3] = [("r1", 7101), ("r2", 7102), ("r3", 7103)];
pub const PROXY_PORT: u16 = 7100;
/// Where a container finds its files.
const MOUNT: &str = "/etc/baton";

#[derive(clap::Subcommand, Debug)]
pub enum ComposeCmd {
    /// Write the certificates, tokens, configs and cluster.json the Compose deployment mounts.
    Render {
        /// Where (deploy/compose/run in the repository; scripts/compose.sh passes it).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Make everything afresh (new CA and tokens) even if DIR/cluster.json exists.
        #[arg(long)]
        renew: bool,
    },
}

pub fn run(cmd: ComposeCmd) -> Result<(), String> {
    match cmd {
        ComposeCmd::Render { dir, renew } => {
            if !renew && read_layout(&dir).is_ok() {
                println!(
                    "{} exists: keeping its CA, certificates and tokens (--renew makes new ones)",
                    dir.join("cluster.json").display()
                );
                return Ok(());
            }
            render(&dir)?;
            println!("wrote the deployment's files to {}", dir.display());
            Ok(())
        }
    }
}

fn mkdir(p: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// Writes `DIR/nodes/{name}/`: the CA, and a certificate carrying `names` for `name`, its
/// service name, and localhost.
fn node_dir(dir: &Path, ca: &Ca, name: &str, names: &[String]) -> Result<PathBuf, String> {
    let d = dir.join("nodes").join(name);
    mkdir(&d, 0o755)?;
    let mut hosts = vec![name.to_string()];
    hosts.extend(pki::local_hosts());
    let (cert, key) = ca
        .issue(names, &hosts)
        .map_err(|e| format!("cannot make the certificate of {name}: {e}"))?;
    write_file(&d.join("ca.pem"), &ca.cert_pem(), 0o644)?;
    write_file(&d.join("cert.pem"), &cert, 0o644)?;
    // Readable inside the container by its unprivileged user; DIR (0700) keeps it from the
    // host's other users.
    write_file(&d.join("key.pem"), &key, 0o644)?;
    Ok(d)
}

/// A client certificate of the etcd CA in `d` as `{file}.pem`, `{file}-key.pem`.
fn etcd_client(d: &Path, etcd_ca: &Ca, who: &str, file: &str) -> Result<(), String> {
    let (cert, key) = etcd_ca
        .issue(&[format!("{who}.etcd-client.baton")], &[])
        .map_err(|e| format!("cannot make the etcd client certificate of {who}: {e}"))?;
    write_file(&d.join(format!("{file}.pem")), &cert, 0o644)?;
    write_file(&d.join(format!("{file}-key.pem")), &key, 0o644)
}

fn quoted(items: impl IntoIterator<Item = String>) -> String {
    items
        .into_iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every file of the deployment, afresh.
fn render(dir: &Path) -> Result<(), String> {
    mkdir(dir, 0o700)?;
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca = Ca::new("Baton compose CA").map_err(|e| format!("cannot make a CA: {e}"))?;
    let etcd_ca = Ca::new("Baton compose etcd CA").map_err(|e| format!("cannot make a CA: {e}"))?;
    let tokens = Tokens {
        read: new_token(),
        write: new_token(),
        admin: new_token(),
    };
    let tok = token_sections(&tokens);
    let tls = format!(
        "[tls]\nca_file = \"{MOUNT}/ca.pem\"\ncert_file = \"{MOUNT}/cert.pem\"\nkey_file = \"{MOUNT}/key.pem\"\n"
    );
    // etcd lives under its own CA (server, peer and client certificates): a Baton node's
    // certificate opens nothing in etcd, and only the controllers hold etcd client keys.
    for e in ETCD {
        let d = node_dir(&dir, &etcd_ca, e, &[format!("{e}.etcd.baton")])?;
        etcd_client(&d, &etcd_ca, e, "client")?;
    }
    let etcd = quoted(ETCD.iter().map(|e| format!("https://{e}:2379")));
    let ctls = quoted(CONTROLLERS.iter().map(|(c, p)| format!("https://{c}:{p}")));
    let members: String = REPLICAS
        .iter()
        .map(|(r, p)| format!("[[clusters.members]]\nid = \"{r}\"\naddr = \"{r}:{p}\"\n\n"))
        .collect();
    for (c, port) in CONTROLLERS {
        let d = node_dir(&dir, &ca, c, &pki::controller_names(c))?;
        etcd_client(&d, &etcd_ca, c, "etcd-client")?;
        write_file(&d.join("etcd-ca.pem"), &etcd_ca.cert_pem(), 0o644)?;
        let text = format!(
            "# Controller {c} of the Compose deployment (written by `batonctl compose render`).\n\
             id = \"{c}\"\nlisten = \"0.0.0.0:{port}\"\nadvertise = \"{c}:{port}\"\netcd = [{etcd}]\n\n\
             [etcd_tls]\nca_file = \"{MOUNT}/etcd-ca.pem\"\ncert_file = \"{MOUNT}/etcd-client.pem\"\nkey_file = \"{MOUNT}/etcd-client-key.pem\"\n\n\
             {tls}{tok}\n[[clusters]]\nname = \"main\"\nmode = \"semi-sync\"\n\n\
             # Followers and proxies are sent to the address each member advertises in its\n\
             # heartbeats; these serve until a member is first heard.\n{members}"
        );
        write_file(&d.join("baton.toml"), &text, 0o644)?;
    }
    for (r, port) in REPLICAS {
        let d = node_dir(&dir, &ca, r, &pki::replica_names("main", r))?;
        let text = format!(
            "# Replica {r} of the Compose deployment (written by `batonctl compose render`).\n\
             id = \"{r}\"\ncluster = \"main\"\ndata_dir = \"/var/lib/baton/data\"\n\
             listen = \"0.0.0.0:{port}\"\n# Sent in every heartbeat: where the controller directs the other replicas and the proxy.\n\
             advertise = \"{r}:{port}\"\ncontrollers = [{ctls}]\n\n{tls}{tok}"
        );
        write_file(&d.join("baton.toml"), &text, 0o644)?;
    }
    let d = node_dir(&dir, &ca, "proxy", &pki::proxy_names("proxy"))?;
    let text = format!(
        "# The proxy of the Compose deployment (written by `batonctl compose render`).\n\
         listen = \"0.0.0.0:{PROXY_PORT}\"\ncontrollers = [{ctls}]\n\n{tls}{tok}"
    );
    write_file(&d.join("baton.toml"), &text, 0o644)?;
    let ca_file = dir.join("ca.pem");
    write_file(&ca_file, &ca.cert_pem(), 0o644)?;
    // Host-reachable URLs (the published ports); no pids: containers are started and
    // stopped with `docker compose -p baton`, not `batonctl local`.
    let node = |id: &str, url: String| Node {
        id: id.to_string(),
        url,
        pid: 0,
        data_dir: None,
        cmd: Vec::new(),
        log: format!("docker compose -p baton logs {id}"),
    };
    let layout = Layout {
        etcd: ETCD.iter().map(|e| format!("https://{e}:2379")).collect(),
        etcd_node: None,
        proxy: Some(node("proxy", format!("https://127.0.0.1:{PROXY_PORT}"))),
        controllers: CONTROLLERS
            .iter()
            .map(|(c, p)| node(c, format!("https://127.0.0.1:{p}")))
            .collect(),
        replicas: REPLICAS
            .iter()
            .map(|(r, p)| node(r, format!("https://127.0.0.1:{p}")))
            .collect(),
        ca: Some(ca_file.display().to_string()),
        tokens: Some(tokens),
        insecure: false,
    };
    write_layout(&dir, &layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_controller::config::ControllerConfig;
    use std::os::unix::fs::PermissionsExt;

    /// The controllers' configs `render` writes pass their validation once the container paths
    /// point at the rendered files; the tokens in cluster.json hash to what the configs
    /// hold; the directory keeps the keys from other users of the host.
    #[test]
    fn rendered_configs_are_valid_and_the_keys_are_kept_from_other_users() {
        let d = tempfile::tempdir().expect("tmp");
        let run = d.path().join("run");
        render(&run).expect("render");
        let mode = std::fs::metadata(&run).expect("dir").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let l = read_layout(&run).expect("layout");
        let admin = baton_runtime::auth::hash_token(&l.tokens.as_ref().expect("tokens").admin);
        let local = |name: &str| {
            let dir = run.join("nodes").join(name);
            std::fs::read_to_string(dir.join("baton.toml"))
                .expect("config")
                .replace(MOUNT, &dir.display().to_string())
        };
        for (c, _) in CONTROLLERS {
            let text = local(c);
            assert!(text.contains(&admin), "{c} holds the admin token's hash");
            let cfg = ControllerConfig::parse(Path::new("baton.toml"), &text).expect(c);
            assert_eq!(
                cfg.advertised(),
                format!("{c}:{}", if c == "c1" { 7001 } else { 7002 })
            );
            assert_eq!(cfg.clusters[0].members.len(), 3);
        }
        // The replicas' and the proxy's configs are checked by their own parsers in
        // tests/tests/compose.rs, which runs this command.
        assert!(local("r2").contains("advertise = \"r2:7102\""));
        assert_eq!(l.controllers[1].url, "https://127.0.0.1:7002");
        assert_eq!(
            l.proxy.as_ref().map(|p| p.url.as_str()),
            Some("https://127.0.0.1:7100")
        );
    }
}
