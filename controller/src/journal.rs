//! The decision journal (DESIGN.md §5): every decision and every change of a refusal, with its
//! inputs; identical entries coalesced with a count. In etcd each entry is its own key under the
//! cluster's `journal/` prefix, numbered by `seq` (zero-padded, so a range read sorts), written
//! in the same guarded transaction as the state change it explains; the transaction also deletes
//! whatever falls out of the newest [`RING`]. Also the anti-flapping budget ([`Budget`]): the
//! times of the automatic failovers of the last hour, kept in a small key of their own.
//!
//! Pure: no etcd, no clock (times come in as arguments). It does not decide when to journal
//! (that is the core's `write`/`refuse` in `core/write.rs`), nor read or write etcd (that is
//! `runtime.rs`).

use serde::{Deserialize, Serialize};

/// How many entries the window keeps.
pub const RING: usize = 500;

/// A repeat of the last entry rewrites its key at most this often (CLOCK_BOOTTIME ms); repeats
/// in between are counted in memory and written with the next entry or the next rewrite.
pub const COALESCE_WRITE_MS: u64 = 10_000;

/// The window of the anti-flapping budget.
pub const HOUR_MS: u64 = 3_600_000;

/// One journal entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its number: the entry is stored under `journal/{seq:020}`; entries are numbered from 1
    /// without gaps. Not part of the stored value (the key says it), nor of the API's answer.
    #[serde(skip)]
    pub seq: u64,
    /// Wall-clock time (Unix ms) of the first occurrence.
    pub at_unix_ms: u64,
    /// Of the last occurrence, when coalesced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_unix_ms: Option<u64>,
    /// What kind of decision this is (see [`Kind`]).
    pub kind: Kind,
    pub message: String,
    /// The epoch the entry concerns.
    pub epoch: u64,
    /// Inputs of the decision (who was heard when, positions, candidates), as JSON.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub inputs: serde_json::Value,
    #[serde(default = "one")]
    pub count: u64,
    /// A refusal's or a blocked decision's reason as a short stable code (`paused`,
    /// `budget_exhausted`, …; see [`ClusterCore::refuse`](crate::core::ClusterCore)): the label
    /// of `baton_controller_refusals_total`. Empty for other kinds and in older entries.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The kind of a journal entry. Stored (and shown by the API) as the snake_case strings below;
/// a kind this controller does not know (written by a newer one) is kept as [`Kind::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Kind {
    /// An automatic failover started (counted by the anti-flapping budget).
    Failover,
    /// An operator's `failover --to` started or took over a promotion.
    ManualFailover,
    /// A promotion recorded its new leader.
    Promoted,
    /// The recorded leader restarted or stopped leading: a new epoch (outside the budget).
    Restart,
    /// A switchover was requested, or completed.
    Switchover,
    /// A member is being added to the sync set, or joined it.
    SyncAdd,
    /// A member left the sync set, or its add was abandoned.
    SyncDrop,
    /// Something was not done, and why (journaled once per change of reason).
    Refusal,
    /// A promotion cannot choose a leader now.
    Blocked,
    Pause,
    Resume,
    Init,
    Recover,
    /// An operation ended without completing (timeout, takeover, target ineligible).
    Abort,
    /// The active controller wrote its configuration into the state (`strict`).
    Config,
    /// The active controller recorded the address a member advertises in its heartbeats.
    Address,
    /// The active controller heard fewer members than a standby for a failure timeout and
    /// resigned its election so that the standby takes over.
    Handover,
    /// A kind written by another (newer) controller.
    Other(String),
}

impl Kind {
    /// The stored string.
    pub fn as_str(&self) -> &str {
        match self {
            Kind::Failover => "failover",
            Kind::ManualFailover => "manual_failover",
            Kind::Promoted => "promoted",
            Kind::Restart => "restart",
            Kind::Switchover => "switchover",
            Kind::SyncAdd => "sync_add",
            Kind::SyncDrop => "sync_drop",
            Kind::Refusal => "refusal",
            Kind::Blocked => "blocked",
            Kind::Pause => "pause",
            Kind::Resume => "resume",
            Kind::Init => "init",
            Kind::Recover => "recover",
            Kind::Abort => "abort",
            Kind::Config => "config",
            Kind::Address => "address",
            Kind::Handover => "handover",
            Kind::Other(s) => s,
        }
    }
}

impl From<&str> for Kind {
    fn from(s: &str) -> Kind {
        match s {
            "failover" => Kind::Failover,
            "manual_failover" => Kind::ManualFailover,
            "promoted" => Kind::Promoted,
            "restart" => Kind::Restart,
            "switchover" => Kind::Switchover,
            "sync_add" => Kind::SyncAdd,
            "sync_drop" => Kind::SyncDrop,
            "refusal" => Kind::Refusal,
            "blocked" => Kind::Blocked,
            "pause" => Kind::Pause,
            "resume" => Kind::Resume,
            "init" => Kind::Init,
            "recover" => Kind::Recover,
            "abort" => Kind::Abort,
            "config" => Kind::Config,
            "address" => Kind::Address,
            "handover" => Kind::Handover,
            other => Kind::Other(other.to_string()),
        }
    }
}

impl From<String> for Kind {
    fn from(s: String) -> Kind {
        Kind::from(s.as_str())
    }
}

impl From<Kind> for String {
    fn from(k: Kind) -> String {
        k.as_str().to_string()
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

fn one() -> u64 {
    1
}

/// What the runtime read of the journal together with the state: the newest entries (oldest
/// first, at least the newest one when there is any) and the budget key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tail {
    pub entries: Vec<Entry>,
    /// Unix ms of the automatic failovers of the last hour (the `failovers` key).
    pub failovers: Vec<u64>,
}

/// A whole journal, as tests and the simulation hold it: the budget key is what it would hold,
/// the times of the `failover` entries it lists.
impl From<Vec<Entry>> for Tail {
    fn from(entries: Vec<Entry>) -> Tail {
        let failovers = entries
            .iter()
            .filter(|e| e.kind == Kind::Failover)
            .flat_map(|e| std::iter::repeat_n(e.at_unix_ms, e.count as usize))
            .collect();
        Tail { entries, failovers }
    }
}

/// Whether `e` repeats `last` (and would be coalesced with it).
pub fn repeats(last: Option<&Entry>, e: &Entry) -> bool {
    last.is_some_and(|l| l.kind == e.kind && l.message == e.message && l.epoch == e.epoch)
}

/// Appends `e` to `ring` (numbered after the last entry), or coalesces it with the last entry
/// when kind, message and epoch match, and trims the ring to [`RING`] entries. The entry to
/// write is `ring.last()`.
pub fn push(ring: &mut Vec<Entry>, mut e: Entry) {
    if repeats(ring.last(), &e) {
        if let Some(last) = ring.last_mut() {
            last.count += e.count;
            last.last_unix_ms = Some(e.last_unix_ms.unwrap_or(e.at_unix_ms));
            return;
        }
    }
    e.seq = ring.last().map_or(1, |l| l.seq + 1);
    ring.push(e);
    if ring.len() > RING {
        let cut = ring.len() - RING;
        ring.drain(..cut);
    }
}

/// Applies written entries to `ring` (each replaces the entry of its seq, or is appended) and
/// trims it to [`RING`] entries.
pub fn apply(ring: &mut Vec<Entry>, written: &[Entry]) {
    for e in written {
        match ring.iter_mut().rev().find(|x| x.seq == e.seq) {
            Some(x) => *x = e.clone(),
            None => ring.push(e.clone()),
        }
    }
    if ring.len() > RING {
        let cut = ring.len() - RING;
        ring.drain(..cut);
    }
}

/// The anti-flapping budget: the automatic failovers of the last hour. The stored times are
/// wall-clock (controllers share them); each is placed once on this controller's monotonic
/// clock when first seen (`now_ms − (now_unix_ms − t)`, never later than `now_ms`), and ages on
/// that clock from then on, so a wall-clock step after that neither forgets nor revives one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// (stored Unix ms, estimated CLOCK_BOOTTIME ms of the failover), oldest first.
    seen: Vec<(u64, i64)>,
}

impl Budget {
    /// The budget key was read (or written) holding `stored`.
    pub fn observe(&mut self, now_ms: u64, now_unix_ms: u64, stored: &[u64]) {
        let mut next = Vec::with_capacity(stored.len());
        for &t in stored {
            let mono = match self.seen.iter().find(|(u, _)| *u == t) {
                Some((_, m)) => *m,
                None => (now_ms as i64).saturating_sub(now_unix_ms.saturating_sub(t) as i64),
            };
            next.push((t, mono));
        }
        self.seen = next;
    }

    /// Automatic failovers within the hour before `now_ms`.
    pub fn count(&self, now_ms: u64) -> usize {
        self.seen
            .iter()
            .filter(|(_, m)| (now_ms as i64).saturating_sub(*m) < HOUR_MS as i64)
            .count()
    }

    /// The budget key after one more automatic failover at `now_unix_ms`: the ones still within
    /// the hour, and this one.
    pub fn with_failover(&self, now_ms: u64, now_unix_ms: u64) -> Vec<u64> {
        self.seen
            .iter()
            .filter(|(_, m)| (now_ms as i64).saturating_sub(*m) < HOUR_MS as i64)
            .map(|(u, _)| *u)
            .chain(std::iter::once(now_unix_ms))
            .collect()
    }

    /// What the key holds as far as known.
    pub fn stored(&self) -> Vec<u64> {
        self.seen.iter().map(|(u, _)| *u).collect()
    }
}

/// `message` with every run of digits replaced by `#`: what stays the same while a refusal
/// holds (the core journals a refusal once per shape; the simulation checks it).
pub fn reason_shape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_digits = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stored_as_the_strings_of_before() {
        let all = [
            "failover",
            "manual_failover",
            "promoted",
            "restart",
            "switchover",
            "sync_add",
            "sync_drop",
            "refusal",
            "blocked",
            "pause",
            "resume",
            "init",
            "recover",
            "abort",
            "config",
            "handover",
        ];
        for s in all {
            let k = Kind::from(s);
            assert!(!matches!(k, Kind::Other(_)), "{s} is a known kind");
            assert_eq!(serde_json::to_value(&k).ok(), Some(serde_json::json!(s)));
            assert_eq!(k.to_string(), s);
        }
        let k: Kind = serde_json::from_str(r#""fencing""#).expect("an unknown kind is read");
        assert_eq!(k, Kind::Other("fencing".into()));
        assert_eq!(
            serde_json::to_string(&k).ok().as_deref(),
            Some(r#""fencing""#)
        );
    }

    fn e(kind: &str, msg: &str, at: u64) -> Entry {
        Entry {
            seq: 0,
            at_unix_ms: at,
            last_unix_ms: None,
            kind: kind.into(),
            message: msg.into(),
            epoch: 1,
            inputs: serde_json::Value::Null,
            count: 1,
            reason: String::new(),
        }
    }

    #[test]
    fn identical_entries_coalesce_and_the_ring_is_bounded() {
        let mut r = Vec::new();
        push(&mut r, e("refusal", "paused", 1));
        push(&mut r, e("refusal", "paused", 2));
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].seq, r[0].count, r[0].last_unix_ms), (1, 2, Some(2)));
        push(&mut r, e("refusal", "other", 3));
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].seq, 2);
        for i in 0..(RING as u64 + 10) {
            push(&mut r, e("failover", &format!("f{i}"), 10 + i));
        }
        assert_eq!(r.len(), RING);
        assert_eq!(
            r.last().map(|x| (x.seq, x.message.as_str())),
            Some((RING as u64 + 12, format!("f{}", RING + 9).as_str()))
        );
        assert_eq!(r[0].seq, 13, "numbered without gaps, the oldest dropped");
    }

    #[test]
    fn written_entries_replace_their_seq_or_are_appended() {
        let mut r = Vec::new();
        push(&mut r, e("refusal", "a", 1));
        let mut rewritten = r[0].clone();
        rewritten.count = 5;
        let mut new = e("sync_add", "b", 2);
        new.seq = 2;
        apply(&mut r, &[rewritten.clone(), new.clone()]);
        assert_eq!(r, vec![rewritten, new]);
    }

    #[test]
    fn the_stored_value_carries_no_seq() {
        let mut x = e("refusal", "a", 1);
        x.seq = 7;
        let text = serde_json::to_string(&x).expect("serializes");
        assert!(!text.contains("seq"), "{text}");
        let back: Entry = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, Entry { seq: 0, ..x });
    }

    #[test]
    fn a_whole_journal_gives_the_budget_its_failover_times() {
        let j = vec![
            e("failover", "a", 10),
            e("manual_failover", "b", 20),
            Entry {
                count: 2,
                ..e("failover", "c", 30)
            },
        ];
        assert_eq!(Tail::from(j).failovers, vec![10, 30, 30]);
    }

    #[test]
    fn budget_counts_failovers_of_the_last_hour_only() {
        let mut b = Budget::default();
        // Seen at boot time 5 000 000, wall 10 000 000: one 55 min old, one 10 min old, one
        // older than an hour.
        let (ms, unix) = (5_000_000, 10_000_000);
        b.observe(
            ms,
            unix,
            &[unix - 3_700_000, unix - 3_300_000, unix - 600_000],
        );
        assert_eq!(b.count(ms), 2);
        assert_eq!(b.count(ms + 300_000), 1, "five minutes later");
        assert_eq!(
            b.with_failover(ms + 300_000, unix + 300_000),
            vec![unix - 600_000, unix + 300_000],
            "the key keeps only what still counts"
        );
    }

    #[test]
    fn budget_ages_on_the_monotonic_clock_once_seen() {
        let mut b = Budget::default();
        let (ms, unix) = (1_000, 50_000_000);
        b.observe(ms, unix, &[unix]);
        assert_eq!(b.count(ms), 1);
        // The wall clock jumps two hours ahead: the failover of a minute ago still counts.
        b.observe(ms + 60_000, unix + 7_200_000, &[unix]);
        assert_eq!(b.count(ms + 60_000), 1);
        // And it stops counting an hour after it happened, whatever the wall clock says.
        b.observe(ms + HOUR_MS, unix - 1_000, &[unix]);
        assert_eq!(b.count(ms + HOUR_MS), 0);
        // A failover stamped in the future by a writer whose clock runs ahead is placed now.
        let mut b = Budget::default();
        b.observe(ms, unix, &[unix + 600_000]);
        assert_eq!(b.count(ms + HOUR_MS - 1), 1);
        assert_eq!(b.count(ms + HOUR_MS), 0);
    }
}
