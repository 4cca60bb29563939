//! The decision journal (DESIGN.md §5): every decision and every change of a refusal, with its
//! inputs; identical refusals coalesced with a count; a bounded ring stored in etcd next to the
//! cluster state and trimmed in the same guarded transaction.

use serde::{Deserialize, Serialize};

/// How many entries the ring keeps.
pub const RING: usize = 500;

/// One journal entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Wall-clock time (Unix ms) of the first occurrence.
    pub at_unix_ms: u64,
    /// Of the last occurrence, when coalesced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_unix_ms: Option<u64>,
    /// `failover` (automatic; counted by the anti-flapping budget), `manual_failover`,
    /// `promoted`, `restart`, `switchover`, `sync_add`, `sync_drop`, `refusal`, `blocked`,
    /// `pause`, `resume`, `init`, `abort`.
    pub kind: String,
    pub message: String,
    /// The epoch the entry concerns.
    pub epoch: u64,
    /// Inputs of the decision (who was heard when, positions, candidates), as JSON.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub inputs: serde_json::Value,
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

/// Appends `e` to `ring`, coalescing it with the last entry when kind and message match, and
/// trims the ring to [`RING`] entries.
pub fn push(ring: &mut Vec<Entry>, e: Entry) {
    if let Some(last) = ring.last_mut() {
        if last.kind == e.kind && last.message == e.message && last.epoch == e.epoch {
            last.count += e.count;
            last.last_unix_ms = Some(e.at_unix_ms);
            return;
        }
    }
    ring.push(e);
    if ring.len() > RING {
        let cut = ring.len() - RING;
        ring.drain(..cut);
    }
}

/// Automatic failovers journaled within the hour before `now_unix_ms` (anti-flapping budget).
pub fn failovers_in_last_hour(ring: &[Entry], now_unix_ms: u64) -> usize {
    ring.iter()
        .filter(|e| e.kind == "failover" && now_unix_ms.saturating_sub(e.at_unix_ms) < 3_600_000)
        .map(|e| e.count as usize)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(kind: &str, msg: &str, at: u64) -> Entry {
        Entry {
            at_unix_ms: at,
            last_unix_ms: None,
            kind: kind.into(),
            message: msg.into(),
            epoch: 1,
            inputs: serde_json::Value::Null,
            count: 1,
        }
    }

    #[test]
    fn identical_entries_coalesce_and_the_ring_is_bounded() {
        let mut r = Vec::new();
        push(&mut r, e("refusal", "paused", 1));
        push(&mut r, e("refusal", "paused", 2));
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].count, r[0].last_unix_ms), (2, Some(2)));
        push(&mut r, e("refusal", "other", 3));
        assert_eq!(r.len(), 2);
        for i in 0..(RING as u64 + 10) {
            push(&mut r, e("failover", &format!("f{i}"), 10 + i));
        }
        assert_eq!(r.len(), RING);
        assert_eq!(
            r.last().map(|x| x.message.as_str()),
            Some(format!("f{}", RING + 9).as_str())
        );
    }

    #[test]
    fn budget_counts_failovers_of_the_last_hour_only() {
        let r = vec![
            e("failover", "a", 0),
            e("failover", "b", 3_000_000),
            e("switchover", "c", 3_500_000),
        ];
        assert_eq!(failovers_in_last_hour(&r, 3_700_000), 1);
        assert_eq!(failovers_in_last_hour(&r, 3_500_000), 2);
    }
}
