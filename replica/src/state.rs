//! The key-value state machine: an in-memory map from key to (value, version) plus an
//! order-independent digest, updated by applying committed records in LSN order.
//!
//! The map is a persistent (structurally shared) hash map, so a snapshot of the state is an O(1)
//! clone that a background thread can write while writes go on. Applying is deterministic: two
//! replicas that applied the same records hold equal maps and equal digests.

use crate::wal::{Op, Record};
use baton_common::Version;
use bytes::Bytes;

/// A key's current value and the version of its last write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub version: Version,
}

/// The applied state.
#[derive(Clone, Debug, Default)]
pub struct KvState {
    map: imbl::HashMap<Bytes, Entry>,
    /// Wrapping sum of [`entry_hash`] over all entries: updated in O(1) per write.
    digest: u128,
}

/// Hash of one entry; the state digest is the wrapping sum of these, so it does not depend on
/// the order in which keys were written, only on the final contents.
pub fn entry_hash(key: &[u8], e: &Entry) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(&e.version.epoch.0.to_le_bytes());
    h.update(&e.version.lsn.0.to_le_bytes());
    h.update(&e.value);
    h.digest128()
}

impl KvState {
    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn digest(&self) -> u128 {
        self.digest
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Entry)> {
        self.map.iter()
    }

    /// Applies one committed record.
    pub fn apply(&mut self, rec: &Record) {
        let version = Version {
            epoch: rec.epoch,
            lsn: rec.lsn,
        };
        match &rec.op {
            Op::Put { key, value } => self.insert(
                key.clone(),
                Entry {
                    value: value.clone(),
                    version,
                },
            ),
            Op::Delete { key } => {
                if let Some(old) = self.map.remove(key) {
                    self.digest = self.digest.wrapping_sub(entry_hash(key, &old));
                }
            }
            Op::LeaderStart { .. } => {}
        }
    }

    /// Inserts an entry (used by apply and by snapshot loading).
    pub fn insert(&mut self, key: Bytes, e: Entry) {
        self.digest = self.digest.wrapping_add(entry_hash(&key, &e));
        if let Some(old) = self.map.insert(key.clone(), e) {
            self.digest = self.digest.wrapping_sub(entry_hash(&key, &old));
        }
    }

    /// Recomputes the digest from scratch (for checks).
    pub fn recompute_digest(&self) -> u128 {
        self.map
            .iter()
            .fold(0u128, |acc, (k, e)| acc.wrapping_add(entry_hash(k, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_common::{Epoch, Lsn};

    fn put(lsn: u64, k: &str, v: &str) -> Record {
        Record {
            epoch: Epoch(1),
            lsn: Lsn(lsn),
            op: Op::Put {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
            },
        }
    }

    #[test]
    fn digest_tracks_contents_not_history() {
        let mut a = KvState::default();
        a.apply(&put(1, "x", "1"));
        a.apply(&put(2, "y", "2"));
        a.apply(&Record {
            epoch: Epoch(1),
            lsn: Lsn(3),
            op: Op::Delete {
                key: Bytes::from_static(b"x"),
            },
        });
        assert_eq!(a.digest(), a.recompute_digest());
        assert_eq!(a.len(), 1);
        let mut b = KvState::default();
        b.insert(
            Bytes::from_static(b"y"),
            Entry {
                value: Bytes::from_static(b"2"),
                version: Version {
                    epoch: Epoch(1),
                    lsn: Lsn(2),
                },
            },
        );
        assert_eq!(a.digest(), b.digest());
        // Same value at another version is another state.
        let mut c = KvState::default();
        c.apply(&put(5, "y", "2"));
        assert_ne!(c.digest(), b.digest());
    }
}
