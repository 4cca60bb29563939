//! Snapshot files: the applied state at one LSN, with the epoch history up to it, in
//! `DATA_DIR/snap/{lsn:020}.snap`. Written to a temp file, fsynced, renamed, directory fsynced;
//! only then may log segments it covers be removed. A snapshot only ever holds committed state.
//!
//! Format (little endian): `"BATONSNP" u32 format=1, lsn u64, epoch u64, digest u128,
//! history_len u32, (epoch u64, first_lsn u64)*, lossy_len u32, (epoch u64)*, entries u64,
//! (key_len u32, key, value_len u32, value, epoch u64, lsn u64)*, crc32c u32` — the checksum
//! covers every byte before it.

use crate::state::{shard_of, Bucket, Entry, KvState, SHARDS};
use crate::wal::disk::sync_dir;
use baton_common::{Epoch, Lsn, Version};
use bytes::Bytes;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"BATONSNP";

/// A captured state, ready to write.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// LSN of the last record the state includes.
    pub lsn: Lsn,
    /// Epoch of that record.
    pub epoch: Epoch,
    /// `(epoch, first LSN)` of every epoch that began at or below `lsn`.
    pub history: Vec<(Epoch, Lsn)>,
    /// Epochs among `history` whose leader-start was lossy (the divergence exchange needs them
    /// after the records themselves were compacted away).
    pub lossy_epochs: Vec<Epoch>,
    pub state: KvState,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt snapshot {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn name(lsn: Lsn) -> String {
    format!("{:020}.snap", lsn.0)
}

fn parse_name(n: &str) -> Option<Lsn> {
    let d = n.strip_suffix(".snap")?;
    (d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit())).then(|| d.parse().ok().map(Lsn))?
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `snap` into `dir` durably and removes older snapshots. Returns the file's path and size.
pub fn write(dir: &Path, snap: &Snapshot) -> Result<(PathBuf, u64), SnapshotError> {
    let tmp = write_tmp(dir, snap)?;
    commit(dir, &tmp, snap.lsn)
}

/// Writes `snap` to a temp file in `dir` and fsyncs it; [`commit`] makes it the newest snapshot.
pub fn write_tmp(dir: &Path, snap: &Snapshot) -> Result<PathBuf, SnapshotError> {
    std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let tmp = dir.join(format!("{}.tmp", name(snap.lsn)));
    let io = |source| SnapshotError::Io {
        path: tmp.clone(),
        source,
    };
    let file = File::create(&tmp).map_err(io)?;
    let mut w = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: 0,
    };
    (|| -> std::io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&1u32.to_le_bytes())?;
        w.write_all(&snap.lsn.0.to_le_bytes())?;
        w.write_all(&snap.epoch.0.to_le_bytes())?;
        w.write_all(&snap.state.digest().to_le_bytes())?;
        w.write_all(&(snap.history.len() as u32).to_le_bytes())?;
        for (e, l) in &snap.history {
            w.write_all(&e.0.to_le_bytes())?;
            w.write_all(&l.0.to_le_bytes())?;
        }
        w.write_all(&(snap.lossy_epochs.len() as u32).to_le_bytes())?;
        for e in &snap.lossy_epochs {
            w.write_all(&e.0.to_le_bytes())?;
        }
        w.write_all(&(snap.state.len() as u64).to_le_bytes())?;
        for (k, e) in snap.state.iter() {
            w.write_all(&(k.len() as u32).to_le_bytes())?;
            w.write_all(k)?;
            w.write_all(&(e.value.len() as u32).to_le_bytes())?;
            w.write_all(&e.value)?;
            w.write_all(&e.version.epoch.0.to_le_bytes())?;
            w.write_all(&e.version.lsn.0.to_le_bytes())?;
        }
        let crc = w.crc;
        w.inner.write_all(&crc.to_le_bytes())?;
        let file = w.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })()
    .map_err(io)?;
    Ok(tmp)
}

/// Renames a fsynced temp snapshot into place, fsyncs the directory and removes older ones.
pub fn commit(dir: &Path, tmp: &Path, lsn: Lsn) -> Result<(PathBuf, u64), SnapshotError> {
    let path = dir.join(name(lsn));
    std::fs::rename(tmp, &path).map_err(|source| SnapshotError::Io {
        path: path.clone(),
        source,
    })?;
    sync_dir(dir).map_err(|e| SnapshotError::Corrupt {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    // Older snapshots are no longer needed once this one is durable.
    for (old, p) in list(dir)? {
        if old < lsn {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!(file = %p.display(), %e, "could not remove an old snapshot");
            }
        }
    }
    Ok((path, size))
}

/// Removes temp files a crash left behind; call at start, before any snapshot is written.
pub fn remove_leftovers(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for ent in rd.flatten() {
            if ent.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(ent.path());
            }
        }
    }
}

/// Snapshot files in `dir`, oldest first (temp files are not listed).
pub fn list(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, SnapshotError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for ent in rd {
        let ent = ent.map_err(|source| SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let n = ent.file_name().to_string_lossy().into_owned();
        if let Some(lsn) = parse_name(&n) {
            out.push((lsn, ent.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Loads the newest snapshot in `dir`, verifying its checksum and digest.
pub fn load_latest(dir: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    let Some((_, path)) = list(dir)?.pop() else {
        return Ok(None);
    };
    let data = std::fs::read(&path).map_err(|source| SnapshotError::Io {
        path: path.clone(),
        source,
    })?;
    decode(&data)
        .map(Some)
        .map_err(|reason| SnapshotError::Corrupt { path, reason })
}

/// Loads and verifies one snapshot file (a received one, before it is installed).
pub fn load_file(path: &Path) -> Result<Snapshot, SnapshotError> {
    let data = std::fs::read(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&data).map_err(|reason| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })
}

fn decode(data: &[u8]) -> Result<Snapshot, String> {
    if data.len() < 8 + 4 + 8 + 8 + 16 + 4 + 8 + 4 {
        return Err("file too short".into());
    }
    let (body, tail) = data.split_at(data.len() - 4);
    let crc = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    let mut p = Reader { b: body, off: 0 };
    if p.take(8)? != MAGIC {
        return Err("not a Baton snapshot (bad magic)".into());
    }
    let format = p.u32()?;
    if format != 1 {
        return Err(format!("unknown snapshot format {format}"));
    }
    let lsn = Lsn(p.u64()?);
    let epoch = Epoch(p.u64()?);
    let digest = u128::from_le_bytes(p.take(16)?.try_into().expect("16 bytes"));
    let hn = p.u32()? as usize;
    let mut history = Vec::with_capacity(hn.min(1 << 16));
    for _ in 0..hn {
        history.push((Epoch(p.u64()?), Lsn(p.u64()?)));
    }
    let ln = p.u32()? as usize;
    let mut lossy_epochs = Vec::with_capacity(ln.min(1 << 16));
    for _ in 0..ln {
        lossy_epochs.push(Epoch(p.u64()?));
    }
    let n = p.u64()?;
    // Entries are sorted into their shards here and the maps built on every core at once
    // (`KvState::from_buckets`): the inserts were most of a restart's time.
    let mut buckets: Vec<Bucket> = (0..SHARDS)
        // At most what the bytes left can hold (an entry takes at least 24), whatever `n` says.
        .map(|_| Vec::with_capacity((n.min((body.len() - p.off) as u64 / 24) as usize) / SHARDS))
        .collect();
    for _ in 0..n {
        let kl = p.u32()? as usize;
        let key = Bytes::copy_from_slice(p.take(kl)?);
        let vl = p.u32()? as usize;
        let value = Bytes::copy_from_slice(p.take(vl)?);
        let version = Version {
            epoch: Epoch(p.u64()?),
            lsn: Lsn(p.u64()?),
        };
        buckets[shard_of(&key)].push((key, Entry { value, version }));
    }
    if p.off != body.len() {
        return Err("trailing bytes after the entries".into());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let state = KvState::from_buckets(buckets, threads);
    if state.digest() != digest {
        return Err("state digest does not match the recorded one".into());
    }
    Ok(Snapshot {
        lsn,
        epoch,
        history,
        lossy_epochs,
        state,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    off: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() - self.off < n {
            return Err(format!("truncated at offset {}", self.off));
        }
        let s = &self.b[self.off..self.off + n];
        self.off += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u64) -> Snapshot {
        let mut state = KvState::default();
        for i in 0..n {
            state.insert(
                Bytes::from(format!("k{i}")),
                Entry {
                    value: Bytes::from(vec![i as u8; 10]),
                    version: Version {
                        epoch: Epoch(2),
                        lsn: Lsn(i + 1),
                    },
                },
            );
        }
        Snapshot {
            lsn: Lsn(n + 1),
            epoch: Epoch(2),
            history: vec![(Epoch(1), Lsn(1)), (Epoch(2), Lsn(1))],
            lossy_epochs: vec![Epoch(2)],
            state,
        }
    }

    #[test]
    fn write_then_load_gives_the_same_state_and_removes_older() {
        let d = tempfile::tempdir().expect("tmp");
        write(d.path(), &sample(3)).expect("write");
        let s = sample(100);
        write(d.path(), &s).expect("write");
        assert_eq!(list(d.path()).expect("list").len(), 1);
        let l = load_latest(d.path()).expect("load").expect("some");
        assert_eq!(l.lsn, s.lsn);
        assert_eq!(l.history, s.history);
        assert_eq!(l.lossy_epochs, s.lossy_epochs);
        assert_eq!(l.state.digest(), s.state.digest());
        assert_eq!(l.state.len(), 100);
    }

    #[test]
    fn any_damage_is_refused_with_the_file_name() {
        let d = tempfile::tempdir().expect("tmp");
        let (path, size) = write(d.path(), &sample(20)).expect("write");
        let orig = std::fs::read(&path).expect("read");
        for off in (0..size as usize).step_by(7) {
            let mut b = orig.clone();
            b[off] ^= 0x10;
            std::fs::write(&path, &b).expect("write");
            let e = load_latest(d.path())
                .expect_err("damaged snapshot must be refused")
                .to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        std::fs::write(&path, &orig[..orig.len() / 2]).expect("write");
        assert!(load_latest(d.path()).is_err());
    }
}
