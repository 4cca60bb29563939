//! The replica's small durable facts outside the log: `data_id`, the highest epoch persisted,
//! the rev of the last applied directive, and the `unclean` flag, in `DATA_DIR/meta.json`,
//! replaced atomically (temp file, fsync, rename, directory fsync). Also the directory lock that
//! keeps two processes off one data directory.

use crate::wal::disk::sync_dir;
use baton_common::{DataId, Epoch};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Contents of `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format: u32,
    pub data_id: DataId,
    /// Highest epoch this replica has persisted; never goes back.
    pub epoch: Epoch,
    /// Cluster-state rev of the last directive applied.
    pub applied_rev: u64,
    /// Set on a new data directory; see DESIGN.md §3.
    pub unclean: bool,
    /// The deployment (cluster id) this directory belongs to, adopted from the first directive
    /// that names one; 0 until then. Directives of another deployment are ignored.
    #[serde(default)]
    pub cluster_id: u64,
    /// Set when recovery cut records this replica may have acknowledged (damage inside the
    /// log): where, for the error a leader directive then gets (DESIGN.md §6: such a log is
    /// repaired from a leader, never led). Cleared with `unclean`, once it fetched them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: another process holds this data directory (lock file); is a replica already running on it?")]
    Locked { path: PathBuf },
}

impl Meta {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("meta.json")
    }

    /// Loads `meta.json`, or creates it (fresh `data_id`, `unclean`) when the directory is new.
    /// Returns whether it was created.
    pub fn load_or_create(dir: &Path) -> Result<(Meta, bool), MetaError> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| MetaError::Bad {
                    path: path.clone(),
                    reason: format!("not a valid meta file: {e}"),
                })?;
                if meta.format != 1 {
                    return Err(MetaError::Bad {
                        path,
                        reason: format!("unknown format {}", meta.format),
                    });
                }
                Ok((meta, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let meta = Meta {
                    format: 1,
                    data_id: DataId::random(),
                    epoch: Epoch(0),
                    applied_rev: 0,
                    unclean: true,
                    cluster_id: 0,
                    damaged: None,
                };
                meta.store(dir)?;
                Ok((meta, true))
            }
            Err(e) => Err(MetaError::Io { path, source: e }),
        }
    }

    /// Replaces `meta.json` atomically and durably.
    pub fn store(&self, dir: &Path) -> Result<(), MetaError> {
        let path = Self::path(dir);
        let tmp = dir.join("meta.json.tmp");
        let io = |source| MetaError::Io {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(self).expect("meta serializes");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        crate::faults::fault!("meta.before_rename", io);
        std::fs::rename(&tmp, &path).map_err(io)?;
        sync_dir(dir).map_err(|e| MetaError::Bad {
            path: path.clone(),
            reason: e.to_string(),
        })
    }
}

/// Whether storing the meta file failed for lack of space before the rename: the old file is
/// still in place and the store may be tried again (anything later is not retried).
pub fn is_no_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<MetaError>(),
            Some(MetaError::Io { source, .. }) if crate::wal::is_enospc(source))
    })
}

/// An exclusive lock on a data directory, held for the life of the process.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, MetaError> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| MetaError::Io {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a valid, open file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(MetaError::Locked { path });
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded_and_locked() {
        let d = tempfile::tempdir().expect("tmp");
        let (m, created) = Meta::load_or_create(d.path()).expect("create");
        assert!(created && m.unclean);
        let mut m2 = m.clone();
        m2.epoch = Epoch(5);
        m2.store(d.path()).expect("store");
        let (m3, created) = Meta::load_or_create(d.path()).expect("load");
        assert!(!created);
        assert_eq!(m3, m2);
        let _l = DirLock::acquire(d.path()).expect("lock");
        assert!(matches!(
            DirLock::acquire(d.path()),
            Err(MetaError::Locked { .. })
        ));
    }

    #[test]
    fn garbage_meta_is_refused_with_the_path() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(Meta::path(d.path()), b"{not json").expect("write");
        let e = Meta::load_or_create(d.path())
            .expect_err("must fail")
            .to_string();
        assert!(
            e.contains("meta.json") && e.contains("not a valid meta file"),
            "{e}"
        );
    }
}
