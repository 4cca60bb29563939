//! `DIR/cluster.json`, the description of a local deployment that every `local` subcommand and
//! `--local-dir` read: each process's id, URL, pid, command line and log, and what a client
//! needs (DESIGN §9): the CA's path and the read, write and admin tokens — or `"insecure":
//! true`. Written temp → rename, so a reader never sees half of it, and readable only by its
//! owner (it holds the tokens).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One process of the deployment, as `cluster.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// The command line that starts it (for `local start`).
    pub cmd: Vec<String>,
    pub log: String,
}

/// The bearer tokens of a local deployment, one per role.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tokens {
    pub read: String,
    pub write: String,
    pub admin: String,
}

/// `DIR/cluster.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layout {
    pub etcd: Vec<String>,
    /// The private etcd, when `local up` started one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_node: Option<Node>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Node>,
    pub controllers: Vec<Node>,
    pub replicas: Vec<Node>,
    /// The CA certificate (PEM) every node's certificate chains to; absent when insecure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The token strings clients present; absent when insecure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
    /// Started with `--insecure`: plain HTTP, no credentials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

impl Layout {
    /// What `batonctl` presents to this deployment: the CA and the admin token.
    pub fn credentials(&self) -> (Option<PathBuf>, Option<String>) {
        (
            self.ca.as_ref().map(PathBuf::from),
            self.tokens.as_ref().map(|t| t.admin.clone()),
        )
    }
    pub fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.etcd_node
            .iter_mut()
            .chain(self.controllers.iter_mut())
            .chain(self.replicas.iter_mut())
            .chain(self.proxy.iter_mut())
    }
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.etcd_node
            .iter()
            .chain(self.controllers.iter())
            .chain(self.replicas.iter())
            .chain(self.proxy.iter())
    }
    pub fn find_mut(&mut self, id: &str) -> Option<&mut Node> {
        self.nodes_mut().find(|n| n.id == id)
    }
}

pub fn layout_path(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

pub fn read_layout(dir: &Path) -> Result<Layout, String> {
    let p = layout_path(dir);
    let text = std::fs::read_to_string(&p).map_err(|e| {
        format!(
            "{}: {e} (was `batonctl local up --dir {}` run?)",
            p.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a cluster description: {e}", p.display()))
}

/// Writes `cluster.json` owner-only (mode 0600: it holds the tokens).
pub fn write_layout(dir: &Path, l: &Layout) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = layout_path(dir);
    let tmp = dir.join("cluster.json.tmp");
    let body = serde_json::to_vec_pretty(l).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()
    };
    write().map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &p).map_err(|e| format!("{}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// DESIGN §9's shape: `"ca"` and `"tokens"` when secure, `"insecure": true` when not; the
    /// file readable by its owner only.
    #[test]
    fn cluster_json_holds_the_credentials_owner_only() {
        let d = tempfile::tempdir().expect("tmp");
        let mut l = Layout {
            ca: Some("/x/tls/ca.pem".into()),
            tokens: Some(Tokens {
                read: "r".into(),
                write: "w".into(),
                admin: "a".into(),
            }),
            insecure: false,
            etcd: vec!["https://127.0.0.1:1".into()],
            etcd_node: None,
            proxy: None,
            controllers: Vec::new(),
            replicas: Vec::new(),
        };
        write_layout(d.path(), &l).expect("write");
        let p = layout_path(d.path());
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
        assert_eq!(v["ca"], "/x/tls/ca.pem");
        assert_eq!(
            v["tokens"],
            serde_json::json!({"read": "r", "write": "w", "admin": "a"})
        );
        assert!(v.get("insecure").is_none(), "{v}");
        let back = read_layout(d.path()).expect("read back");
        assert_eq!(
            back.credentials(),
            (Some(PathBuf::from("/x/tls/ca.pem")), Some("a".into()))
        );
        l.ca = None;
        l.tokens = None;
        l.insecure = true;
        write_layout(d.path(), &l).expect("write");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
        assert_eq!(v["insecure"], true);
        assert!(v.get("ca").is_none() && v.get("tokens").is_none(), "{v}");
        assert_eq!(
            read_layout(d.path()).expect("read").credentials(),
            (None, None)
        );
    }
}
