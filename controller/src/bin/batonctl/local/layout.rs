//! `DIR/cluster.json`, the description of a local deployment that every `local` subcommand and
//! `--local-dir` read: each process's id, URL, pid, command line and log. Written temp → rename,
//! so a reader never sees half of it.

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
}

impl Layout {
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

pub fn write_layout(dir: &Path, l: &Layout) -> Result<(), String> {
    let p = layout_path(dir);
    let tmp = dir.join("cluster.json.tmp");
    let body = serde_json::to_vec_pretty(l).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, body).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &p).map_err(|e| format!("{}: {e}", p.display()))
}
