//! Pure history checkers shared by the tier-1 simulation and the tier-3 chaos runner (TESTING
//! "Checkers"), next to the linearizability checker in [`crate::checker`]: no acknowledged
//! write lost, one writer per epoch, versions that follow real time, logs that agree, and
//! convergence. No I/O, no clock: callers collect what happened and pass it in.
//!
//! Every check returns every violation it found, one readable line each naming key, version
//! and replica (empty means the check passed; callers shorten long lists for display); [`check_converged`] returns the one reason it is
//! not converged. Versions are `(epoch, lsn)` pairs, as in the API's `"E.L"` strings
//! ([`parse_version`]).

use std::collections::{BTreeMap, HashMap};

/// A write the client saw acknowledged (`200`), with the version from its reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AckedWrite {
    pub key: String,
    pub value: String,
    pub epoch: u64,
    pub lsn: u64,
}

impl AckedWrite {
    /// `(epoch, lsn)`, ordered as the log orders records.
    pub fn version(&self) -> (u64, u64) {
        (self.epoch, self.lsn)
    }
}

/// What a key holds in the final state, with the version of its last write (for the chaos
/// runner: a leader read's body and `Baton-Version`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub value: String,
    pub epoch: u64,
    pub lsn: u64,
}

impl Stored {
    pub fn version(&self) -> (u64, u64) {
        (self.epoch, self.lsn)
    }
}

/// An acknowledged write with the interval the client observed it in (any monotonic unit
/// shared by all clients, e.g. µs since the run began).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedWrite {
    pub write: AckedWrite,
    pub invoke: u64,
    pub complete: u64,
}

/// One replica's log end and applied state, as its status reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEnd {
    pub id: String,
    /// `(epoch, lsn)` of its last record.
    pub log_end: (u64, u64),
    pub applied_lsn: u64,
    /// The state digest of what it applied.
    pub digest: String,
}

/// One record of one replica's log: `(epoch, lsn, hash of the record's content)`.
pub type LogEntry = (u64, u64, u64);

/// Parses an API version string `"E.L"`; `None` for anything else (including `"0"`).
pub fn parse_version(s: &str) -> Option<(u64, u64)> {
    let (e, l) = s.trim().trim_matches('"').split_once('.')?;
    Some((e.parse().ok()?, l.parse().ok()?))
}

fn v(x: (u64, u64)) -> String {
    format!("{}.{}", x.0, x.1)
}

/// No acknowledged write is lost (G1; TESTING "No lost acknowledged write").
///
/// For every key with acknowledged writes, the final state must hold the key at a version at
/// least that of the newest acknowledged write to it: an acknowledged write may be missing
/// only because a later write (by version, acknowledged or not) overwrote it. At the newest
/// acknowledged version the value must be the acknowledged one, and a value that was
/// acknowledged must not appear at another version. For a key written exactly once (the
/// unique-value workload) this says: the acknowledged value is there, at its version.
///
/// Values must be unique per key. Deletes are not modelled: a key that was deleted after an
/// acknowledged write is reported as lost, so workloads checked here do not delete.
pub fn check_lost(acked: &[AckedWrite], final_state: &BTreeMap<String, Stored>) -> Vec<String> {
    let mut newest: BTreeMap<&str, &AckedWrite> = BTreeMap::new();
    for w in acked {
        let e = newest.entry(&w.key).or_insert(w);
        if w.version() > e.version() {
            *e = w;
        }
    }
    let mut out = Vec::new();
    for (key, top) in &newest {
        match final_state.get(*key) {
            None => out.push(format!(
                "key {key:?}: acknowledged write {:?} at {} is lost (the key is absent)",
                top.value,
                v(top.version())
            )),
            Some(f) if f.version() < top.version() => out.push(format!(
                "key {key:?}: acknowledged write {:?} at {} is lost (the key holds {:?} at the older {})",
                top.value,
                v(top.version()),
                f.value,
                v(f.version())
            )),
            Some(f) if f.version() == top.version() && f.value != top.value => out.push(format!(
                "key {key:?}: acknowledged write {:?} at {} is lost (the key holds {:?} at that same version)",
                top.value,
                v(top.version()),
                f.value
            )),
            Some(_) => {}
        }
    }
    for w in acked {
        if let Some(f) = final_state.get(&w.key) {
            if f.value == w.value && f.version() != w.version() {
                out.push(format!(
                    "key {:?}: value {:?} was acknowledged at {} but the final state holds it at {}",
                    w.key,
                    w.value,
                    v(w.version()),
                    v(f.version())
                ));
            }
        }
    }
    out
}

/// One writer per epoch (I1, G2), on the acknowledgements: no two acknowledged writes share
/// an `(epoch, lsn)` with different `(key, value)`.
pub fn check_one_writer_per_epoch(acked: &[AckedWrite]) -> Vec<String> {
    let mut at: HashMap<(u64, u64), &AckedWrite> = HashMap::new();
    let mut out = Vec::new();
    for w in acked {
        match at.get(&w.version()) {
            Some(o) if (&o.key, &o.value) != (&w.key, &w.value) => out.push(format!(
                "two acknowledged writes at {}: {:?}={:?} and {:?}={:?}",
                v(w.version()),
                o.key,
                o.value,
                w.key,
                w.value
            )),
            Some(_) => {}
            None => {
                at.insert(w.version(), w);
            }
        }
    }
    out
}

/// Versions follow real time (G2 "epochs only grow", and the log order is a linearization):
/// if write `a` completed before write `b` was invoked, `a`'s version is below `b`'s, whatever
/// the keys. A deposed leader acknowledging at an old epoch after its successor did breaks
/// this.
pub fn check_real_time_order(writes: &[TimedWrite]) -> Vec<String> {
    let mut by_invoke: Vec<&TimedWrite> = writes.iter().collect();
    by_invoke.sort_by_key(|w| w.invoke);
    let mut by_complete: Vec<&TimedWrite> = writes.iter().collect();
    by_complete.sort_by_key(|w| w.complete);
    let mut out = Vec::new();
    let mut done = 0;
    let mut max: Option<&TimedWrite> = None;
    for b in by_invoke {
        while done < by_complete.len() && by_complete[done].complete < b.invoke {
            let a = by_complete[done];
            if max.is_none_or(|m| a.write.version() > m.write.version()) {
                max = Some(a);
            }
            done += 1;
        }
        if let Some(a) = max {
            if a.write.version() >= b.write.version() {
                out.push(format!(
                    "{:?}={:?} acknowledged at {} (invoked at {}) after {:?}={:?} was acknowledged at the higher or equal {} (completed at {})",
                    b.write.key,
                    b.write.value,
                    v(b.write.version()),
                    b.invoke,
                    a.write.key,
                    a.write.value,
                    v(a.write.version()),
                    a.complete
                ));
            }
        }
    }
    out
}

/// The logs agree (I1): the same `(epoch, lsn)` on two replicas holds the same content; within
/// one log LSNs strictly grow and epochs never go back. Each log is `(replica, entries)` with
/// entries in log order.
pub fn check_logs_agree(logs: &[(String, Vec<LogEntry>)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: HashMap<(u64, u64), (&str, u64)> = HashMap::new();
    for (replica, entries) in logs {
        let mut prev: Option<(u64, u64)> = None;
        for &(epoch, lsn, hash) in entries {
            if let Some((pe, pl)) = prev {
                if lsn <= pl {
                    out.push(format!(
                        "replica {replica}: LSN {lsn} follows LSN {pl} in its log"
                    ));
                }
                if epoch < pe {
                    out.push(format!(
                        "replica {replica}: the epoch goes back at LSN {lsn} ({epoch} after {pe})"
                    ));
                }
            }
            prev = Some((epoch, lsn));
            match seen.get(&(epoch, lsn)) {
                Some((other, h)) if *h != hash => out.push(format!(
                    "{} holds different records on {other} and {replica}",
                    v((epoch, lsn))
                )),
                Some(_) => {}
                None => {
                    seen.insert((epoch, lsn), (replica, hash));
                }
            }
        }
    }
    out
}

/// Acknowledged writes are in the log (G1, I1), checked on one replica's log read back from
/// disk: every acknowledged write whose LSN is at or above `first_lsn` (the first LSN the log
/// still holds; snapshots compact below it) is a put at exactly its `(epoch, lsn)` with its key
/// and value. Unlike [`check_lost`], this also catches an acknowledged write that was lost and
/// then overwritten. `puts` maps `(epoch, lsn)` to `(key, value)` for the log's put records.
pub fn check_acked_in_log(
    acked: &[AckedWrite],
    replica: &str,
    puts: &BTreeMap<(u64, u64), (String, String)>,
    first_lsn: u64,
) -> Vec<String> {
    let mut out = Vec::new();
    for w in acked.iter().filter(|w| w.lsn >= first_lsn) {
        match puts.get(&w.version()) {
            Some((k, val)) if (k, val) == (&w.key, &w.value) => {}
            Some((k, val)) => out.push(format!(
                "replica {replica}: {} holds {k:?}={val:?}, but {:?}={:?} was acknowledged there",
                v(w.version()),
                w.key,
                w.value
            )),
            None => out.push(format!(
                "replica {replica}: acknowledged {:?}={:?} at {} is not in its log",
                w.key,
                w.value,
                v(w.version())
            )),
        }
    }
    out
}

/// Convergence (G4): every replica has applied its whole log, and all have the same log end
/// and the same state digest. `None` when converged, else why not.
pub fn check_converged(nodes: &[NodeEnd]) -> Option<String> {
    let first = nodes.first()?;
    for n in nodes {
        if n.applied_lsn != n.log_end.1 {
            return Some(format!(
                "{} applied {} of its log ending at {}",
                n.id,
                n.applied_lsn,
                v(n.log_end)
            ));
        }
    }
    let differs = nodes
        .iter()
        .any(|n| n.log_end != first.log_end || n.digest != first.digest);
    differs.then(|| {
        let each: Vec<String> = nodes
            .iter()
            .map(|n| format!("{} log end {} digest {}", n.id, v(n.log_end), n.digest))
            .collect();
        format!("replicas differ: {}", each.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, value: &str, epoch: u64, lsn: u64) -> AckedWrite {
        AckedWrite {
            key: key.into(),
            value: value.into(),
            epoch,
            lsn,
        }
    }

    fn st(entries: &[(&str, &str, u64, u64)]) -> BTreeMap<String, Stored> {
        entries
            .iter()
            .map(|(k, v, e, l)| {
                (
                    k.to_string(),
                    Stored {
                        value: v.to_string(),
                        epoch: *e,
                        lsn: *l,
                    },
                )
            })
            .collect()
    }

    fn tw(key: &str, epoch: u64, lsn: u64, invoke: u64, complete: u64) -> TimedWrite {
        TimedWrite {
            write: w(key, &format!("{key}-{epoch}.{lsn}"), epoch, lsn),
            invoke,
            complete,
        }
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("3.1042"), Some((3, 1042)));
        assert_eq!(parse_version("\"2.7\""), Some((2, 7)));
        assert_eq!(parse_version("0"), None);
        assert_eq!(parse_version("x.1"), None);
    }

    #[test]
    fn unique_writes_present_pass() {
        let acked = [w("a", "1", 1, 2), w("b", "2", 1, 3)];
        assert!(check_lost(&acked, &st(&[("a", "1", 1, 2), ("b", "2", 1, 3)])).is_empty());
    }

    #[test]
    fn a_missing_unique_write_is_lost() {
        let acked = [w("a", "1", 1, 2), w("b", "2", 1, 3)];
        let out = check_lost(&acked, &st(&[("a", "1", 1, 2)]));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].contains("\"b\"") && out[0].contains("absent"),
            "{out:?}"
        );
    }

    #[test]
    fn overwritten_by_a_later_write_is_not_lost() {
        // "1" acknowledged, then overwritten by an unacknowledged (unknown-outcome) write.
        let acked = [w("k", "1", 2, 5), w("k", "0", 1, 3)];
        assert!(check_lost(&acked, &st(&[("k", "x", 3, 1)])).is_empty());
        assert!(check_lost(&acked, &st(&[("k", "1", 2, 5)])).is_empty());
    }

    #[test]
    fn an_older_value_surviving_a_newer_acknowledged_write_is_a_loss() {
        let acked = [w("k", "old", 1, 3), w("k", "new", 2, 5)];
        let out = check_lost(&acked, &st(&[("k", "old", 1, 3)]));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].contains("\"new\"") && out[0].contains("older"),
            "{out:?}"
        );
        // An unacknowledged value at an older version is a loss too.
        assert_eq!(check_lost(&acked, &st(&[("k", "zz", 2, 4)])).len(), 1);
    }

    #[test]
    fn another_value_at_the_acknowledged_version_is_a_loss() {
        let acked = [w("k", "mine", 2, 5)];
        let out = check_lost(&acked, &st(&[("k", "theirs", 2, 5)]));
        assert_eq!(out.len(), 1, "{out:?}");
    }

    #[test]
    fn an_acknowledged_value_at_another_version_is_reported() {
        let acked = [w("k", "a", 2, 5)];
        let out = check_lost(&acked, &st(&[("k", "a", 3, 9)]));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].contains("3.9"), "{out:?}");
    }

    #[test]
    fn one_writer_per_epoch_accepts_distinct_versions_and_duplicates_of_one_write() {
        let acked = [w("a", "1", 1, 2), w("b", "2", 1, 3), w("a", "1", 1, 2)];
        assert!(check_one_writer_per_epoch(&acked).is_empty());
    }

    #[test]
    fn one_writer_per_epoch_rejects_two_writes_at_one_version() {
        let acked = [w("a", "1", 4, 7), w("b", "2", 4, 7), w("c", "3", 5, 7)];
        let out = check_one_writer_per_epoch(&acked);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].contains("4.7"), "{out:?}");
    }

    #[test]
    fn real_time_order_accepts_growing_versions_and_overlaps() {
        let writes = [
            tw("a", 1, 1, 0, 10),
            tw("b", 1, 2, 11, 20),
            // Overlaps b: any order is fine.
            tw("c", 1, 3, 5, 30),
            tw("d", 2, 1, 31, 40),
            // Overlaps d and is older: fine, they were concurrent.
            tw("e", 1, 4, 29, 45),
        ];
        assert!(check_real_time_order(&writes).is_empty());
    }

    #[test]
    fn real_time_order_rejects_an_old_epoch_acknowledged_after_a_new_one() {
        // A deposed leader acknowledges 3.50 after the successor acknowledged 4.2.
        let writes = [tw("a", 4, 2, 0, 10), tw("b", 3, 50, 11, 20)];
        let out = check_real_time_order(&writes);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].contains("3.50") && out[0].contains("4.2"), "{out:?}");
        // Equal versions in sequence are two writes at one version.
        let writes = [tw("a", 4, 2, 0, 10), tw("b", 4, 2, 11, 20)];
        assert_eq!(check_real_time_order(&writes).len(), 1);
    }

    #[test]
    fn logs_agree_accepts_prefixes_and_truncated_suffixes_of_one_history() {
        let logs = vec![
            ("r1".to_string(), vec![(1, 1, 10), (1, 2, 11), (2, 3, 12)]),
            ("r2".to_string(), vec![(1, 1, 10), (1, 2, 11)]),
            (
                "r3".to_string(),
                vec![(1, 1, 10), (1, 2, 11), (2, 3, 12), (2, 4, 13)],
            ),
        ];
        assert!(check_logs_agree(&logs).is_empty());
    }

    #[test]
    fn logs_agree_rejects_different_records_at_one_version() {
        let logs = vec![
            ("r1".to_string(), vec![(1, 1, 10), (2, 2, 11)]),
            ("r2".to_string(), vec![(1, 1, 10), (2, 2, 99)]),
        ];
        let out = check_logs_agree(&logs);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].contains("2.2") && out[0].contains("r1") && out[0].contains("r2"));
    }

    #[test]
    fn logs_agree_rejects_an_epoch_going_back_and_a_repeated_lsn() {
        let logs = vec![("r1".to_string(), vec![(2, 1, 10), (1, 2, 11), (1, 2, 11)])];
        let out = check_logs_agree(&logs);
        assert_eq!(out.len(), 2, "{out:?}");
    }

    #[test]
    fn acked_in_log_accepts_a_log_holding_every_write_and_skips_compacted_ones() {
        let acked = [w("a", "1", 1, 2), w("b", "2", 1, 3), w("c", "3", 1, 1)];
        let puts: BTreeMap<(u64, u64), (String, String)> = [
            ((1, 2), ("a".to_string(), "1".to_string())),
            ((1, 3), ("b".to_string(), "2".to_string())),
        ]
        .into_iter()
        .collect();
        assert!(check_acked_in_log(&acked, "r1", &puts, 2).is_empty());
    }

    #[test]
    fn acked_in_log_rejects_a_missing_or_replaced_write() {
        let acked = [w("a", "1", 1, 2), w("b", "2", 1, 3)];
        let puts: BTreeMap<(u64, u64), (String, String)> =
            [((1, 2), ("a".to_string(), "other".to_string()))]
                .into_iter()
                .collect();
        let out = check_acked_in_log(&acked, "r2", &puts, 1);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.iter().all(|l| l.contains("r2")));
    }

    fn node(id: &str, end: (u64, u64), applied: u64, digest: &str) -> NodeEnd {
        NodeEnd {
            id: id.into(),
            log_end: end,
            applied_lsn: applied,
            digest: digest.into(),
        }
    }

    #[test]
    fn converged_when_all_equal_and_fully_applied() {
        let n = [node("r1", (3, 9), 9, "ab"), node("r2", (3, 9), 9, "ab")];
        assert_eq!(check_converged(&n), None);
        assert_eq!(check_converged(&[]), None);
    }

    #[test]
    fn not_converged_on_a_different_end_digest_or_unapplied_tail() {
        let n = [node("r1", (3, 9), 9, "ab"), node("r2", (3, 8), 8, "ab")];
        assert!(check_converged(&n).is_some());
        let n = [node("r1", (3, 9), 9, "ab"), node("r2", (3, 9), 9, "cd")];
        assert!(check_converged(&n).unwrap().contains("digest"));
        let n = [node("r1", (3, 9), 9, "ab"), node("r2", (3, 9), 7, "ab")];
        assert!(check_converged(&n).unwrap().contains("applied 7"));
    }
}
