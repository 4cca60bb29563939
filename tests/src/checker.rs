//! Per-key linearizability checker for the client API (DESIGN §7), shared by tier 1 and
//! tier 3 (TESTING "Checkers"). It owns the register model of one key (blind PUT,
//! compare-and-set with `If-Match`, where `If-Match: 0` is [`Expect::Absent`], DELETE and
//! leader reads) and a Wing–Gong / Lowe search with memoization of (linearized set,
//! state), as in porcupine. Versions are modelled by the value that wrote them, so every
//! written value must be unique per key. A `503` is [`Outcome::Failed`] (dropped); a
//! `504 outcome_unknown` or a lost reply is [`Outcome::Unknown`]: the operation may take
//! effect at any time after its invoke, or never. The history is partitioned by key
//! (linearizability is compositional) and each key's search is bounded by a step budget,
//! giving [`Violation::Inconclusive`] rather than running forever.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// A value as the client wrote it; unique per key among writes.
pub type Value = String;

/// The precondition of a compare-and-set (`If-Match`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// `If-Match: 0`: the key must be absent (create only).
    Absent,
    /// The key must hold the version written with this value.
    Value(Value),
}

/// What an operation asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// Unconditional PUT.
    Write { value: Value },
    /// PUT with `If-Match`.
    Cas { expect: Expect, value: Value },
    /// DELETE, optionally with `If-Match`.
    Delete { expect: Option<Expect> },
    /// GET with leader (or linearizable) consistency.
    Read,
    /// Not a client operation: the key's state becomes `value` at one instant between invoke
    /// and complete. A forced promotion that may drop acknowledged writes (`failover --force`)
    /// is recorded as one per key, with the value the new leader's log holds: writes it lacks
    /// are undone there, precisely, and every era between two such promotions is checked
    /// as strictly as a run without one. Its outcome must be `Ok(Applied(true))`; its value
    /// need not be unique (it is some earlier write's).
    Reset { value: Option<Value> },
}

/// The observed result of an operation that definitely completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A read's answer: `Some(value)` or `None` (404).
    Read(Option<Value>),
    /// A write's answer. `Write` must be `Applied(true)`. `Cas`/conditional `Delete`:
    /// `true` = applied, `false` = 412 (the condition did not hold at its linearization
    /// point). Unconditional `Delete`: `true` = deleted (any prior state), `false` = 404
    /// (the key was absent).
    Applied(bool),
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok(OpResult),
    /// Definitely not applied (`503`): dropped from the history.
    Failed,
    /// May or may not have been applied, possibly later (`504`, timeout, lost reply).
    Unknown,
}

/// One client operation. Times are in any monotonic unit shared by all clients; `a`
/// precedes `b` iff `a.complete < b.invoke` (equal times count as concurrent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Caller's id, used in reports.
    pub id: u64,
    pub key: String,
    pub invoke: u64,
    /// `None` means never observed (only allowed with `Unknown`/`Failed`); ignored for
    /// `Unknown` ops, which are open-ended.
    pub complete: Option<u64>,
    pub kind: OpKind,
    pub outcome: Outcome,
}

/// A non-linearizable key: the deepest partial linearization the search reached, and the
/// operation whose completion it could not get past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub key: String,
    /// The op that cannot be placed.
    pub op: Op,
    /// Ids of the ops linearized before it, in order (the deepest prefix found).
    pub prefix: Vec<u64>,
    /// The key's state after that prefix.
    pub state: Option<Value>,
    pub reason: String,
}

/// Why a history was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A real violation.
    NotLinearizable(Box<Explanation>),
    /// The step budget ran out on this key; nothing was proven either way.
    Inconclusive { key: String, ops: usize, steps: u64 },
    /// The history itself is inconsistent (e.g. a read with a write result).
    Malformed {
        key: String,
        id: u64,
        reason: String,
    },
}

impl Violation {
    pub fn is_inconclusive(&self) -> bool {
        matches!(self, Violation::Inconclusive { .. })
    }
    pub fn key(&self) -> &str {
        match self {
            Violation::NotLinearizable(e) => &e.key,
            Violation::Inconclusive { key, .. } | Violation::Malformed { key, .. } => key,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotLinearizable(e) => {
                const SHOWN: usize = 8;
                let skip = e.prefix.len().saturating_sub(SHOWN);
                let tail: Vec<String> = e.prefix[skip..].iter().map(|i| format!("#{i}")).collect();
                write!(
                    f,
                    "key {:?} not linearizable: op #{} {:?} -> {:?} [{}, {}] {}; deepest prefix ({} ops{}): [{}], state there {:?}",
                    e.key,
                    e.op.id,
                    e.op.kind,
                    e.op.outcome,
                    e.op.invoke,
                    e.op.complete.map_or("inf".to_string(), |c| c.to_string()),
                    e.reason,
                    e.prefix.len(),
                    if skip > 0 { format!(", last {SHOWN} shown") } else { String::new() },
                    tail.join(", "),
                    e.state
                )
            }
            Violation::Inconclusive { key, ops, steps } => write!(
                f,
                "key {key:?} inconclusive: {ops} ops, step budget of {steps} exhausted"
            ),
            Violation::Malformed { key, id, reason } => {
                write!(f, "key {key:?} malformed op #{id}: {reason}")
            }
        }
    }
}

impl std::error::Error for Violation {}

/// Default step budget per key.
pub const DEFAULT_MAX_STEPS: u64 = 2_000_000;

/// Checks every key with [`DEFAULT_MAX_STEPS`]; the first failing key (in key order) wins,
/// a real violation on any key taking precedence over an inconclusive one.
pub fn check_history(ops: &[Op]) -> Result<(), Violation> {
    check_history_with(ops, DEFAULT_MAX_STEPS)
}

/// As [`check_history`] with an explicit per-key step budget.
pub fn check_history_with(ops: &[Op], max_steps: u64) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let mut inconclusive = None;
    for (key, ops) in by_key {
        match check_key(key, &ops, max_steps) {
            Ok(()) => {}
            Err(v) if v.is_inconclusive() => {
                inconclusive.get_or_insert(v);
            }
            Err(v) => return Err(v),
        }
    }
    inconclusive.map_or(Ok(()), Err)
}

/// A value id: 0 = absent, `i + 1` = the i-th interned value.
type Vid = u32;
const ABSENT: Vid = 0;

#[derive(Clone, Copy)]
enum PKind {
    Write(Vid),
    Cas(Vid, Vid),
    Delete(Option<Vid>),
    Read,
    Reset(Vid),
}

#[derive(Clone, Copy)]
enum PRes {
    Read(Vid),
    Applied(bool),
    Unknown,
}

struct Prepared {
    src: usize,
    kind: PKind,
    res: PRes,
}

/// The register model: the next state, or `None` if the op cannot happen in `state`.
fn step(state: Vid, kind: PKind, res: PRes) -> Option<Vid> {
    match (kind, res) {
        (PKind::Read, PRes::Read(v)) => (state == v).then_some(state),
        (PKind::Read, _) => Some(state),
        (PKind::Reset(v), _) => Some(v),
        (PKind::Write(v), _) => Some(v),
        (PKind::Cas(e, v), PRes::Applied(true)) => (state == e).then_some(v),
        (PKind::Cas(e, _), PRes::Applied(false)) => (state != e).then_some(state),
        (PKind::Cas(e, v), _) => Some(if state == e { v } else { state }),
        (PKind::Delete(None), PRes::Applied(false)) => (state == ABSENT).then_some(state),
        (PKind::Delete(None), _) => Some(ABSENT),
        (PKind::Delete(Some(e)), PRes::Applied(true)) => (state == e).then_some(ABSENT),
        (PKind::Delete(Some(e)), PRes::Applied(false)) => (state != e).then_some(state),
        (PKind::Delete(Some(e)), _) => Some(if state == e { ABSENT } else { state }),
    }
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// Checks the operations of one key (all `ops` are taken to be on `key`).
pub fn check_key(key: &str, ops: &[Op], max_steps: u64) -> Result<(), Violation> {
    let malformed = |op: &Op, reason: &str| Violation::Malformed {
        key: key.to_string(),
        id: op.id,
        reason: reason.to_string(),
    };
    // Intern values and prepare the ops that matter.
    let mut ids: HashMap<&str, Vid> = HashMap::new();
    let mut names: Vec<&str> = Vec::new();
    for op in ops {
        let vals: Vec<&str> = match &op.kind {
            OpKind::Write { value } => vec![value],
            OpKind::Cas { expect, value } => match expect {
                Expect::Value(e) => vec![e, value],
                Expect::Absent => vec![value],
            },
            OpKind::Delete {
                expect: Some(Expect::Value(e)),
            } => vec![e],
            OpKind::Reset { value: Some(v) } => vec![v],
            _ => vec![],
        };
        let read = match &op.outcome {
            Outcome::Ok(OpResult::Read(Some(v))) => Some(v.as_str()),
            _ => None,
        };
        for v in vals.into_iter().chain(read) {
            if !ids.contains_key(v) {
                names.push(v);
                ids.insert(v, names.len() as Vid);
            }
        }
    }
    let intern = |v: &str| ids[v];
    let vid = |e: &Expect| match e {
        Expect::Absent => ABSENT,
        Expect::Value(v) => intern(v),
    };
    let mut written: HashSet<Vid> = HashSet::new();
    let mut prepared: Vec<Prepared> = Vec::new();
    for (src, op) in ops.iter().enumerate() {
        if let Some(c) = op.complete {
            if c < op.invoke {
                return Err(malformed(op, "completes before it is invoked"));
            }
        }
        let kind = match &op.kind {
            OpKind::Write { value } => PKind::Write(intern(value)),
            OpKind::Cas { expect, value } => PKind::Cas(vid(expect), intern(value)),
            OpKind::Delete { expect } => PKind::Delete(expect.as_ref().map(vid)),
            OpKind::Read => PKind::Read,
            OpKind::Reset { value } => {
                if op.outcome != Outcome::Ok(OpResult::Applied(true)) || op.complete.is_none() {
                    return Err(malformed(op, "a reset that did not surely happen"));
                }
                PKind::Reset(value.as_deref().map_or(ABSENT, intern))
            }
        };
        let res = match (&op.outcome, kind) {
            (Outcome::Failed, _) | (Outcome::Unknown, PKind::Read) => continue,
            (Outcome::Unknown, _) => PRes::Unknown,
            (Outcome::Ok(_), _) if op.complete.is_none() => {
                return Err(malformed(op, "ok outcome without a completion time"))
            }
            (Outcome::Ok(OpResult::Read(v)), PKind::Read) => {
                PRes::Read(v.as_ref().map_or(ABSENT, |v| intern(v)))
            }
            (Outcome::Ok(OpResult::Read(_)), _) => {
                return Err(malformed(op, "a write with a read result"))
            }
            (Outcome::Ok(OpResult::Applied(_)), PKind::Read) => {
                return Err(malformed(op, "a read with a write result"))
            }
            (Outcome::Ok(OpResult::Applied(false)), PKind::Write(_)) => {
                return Err(malformed(
                    op,
                    "an unconditional write reported as not applied",
                ))
            }
            (Outcome::Ok(OpResult::Applied(a)), _) => PRes::Applied(*a),
        };
        if let PKind::Write(v) | PKind::Cas(_, v) = kind {
            if !written.insert(v) {
                return Err(malformed(op, "value written twice (values must be unique)"));
            }
        }
        prepared.push(Prepared { src, kind, res });
    }
    let value_of = |v: Vid| (v != ABSENT).then(|| names[v as usize - 1].to_string());
    let explain = |p: &Prepared, prefix: Vec<u64>, state: Vid, reason: &str| {
        Violation::NotLinearizable(Box::new(Explanation {
            key: key.to_string(),
            op: ops[p.src].clone(),
            prefix,
            state: value_of(state),
            reason: reason.to_string(),
        }))
    };
    // Cheap diagnosis first: a read of a value that no non-failed op ever wrote.
    for p in &prepared {
        if let PRes::Read(v) = p.res {
            if v != ABSENT && !written.contains(&v) {
                return Err(explain(
                    p,
                    vec![],
                    ABSENT,
                    "reads a value that no non-failed operation wrote",
                ));
            }
        }
    }

    // Event list: calls at invoke, returns at complete (calls first on ties); unknown ops
    // have no return (they are open-ended and may be left out).
    let n = prepared.len();
    let definite = |i: usize| !matches!(prepared[i].res, PRes::Unknown);
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, p) in prepared.iter().enumerate() {
        let op = &ops[p.src];
        events.push((op.invoke, 0, i));
        if definite(i) {
            events.push((op.complete.expect("checked above"), 1, i));
        }
    }
    events.sort_unstable();
    let m = events.len();
    // Doubly linked list over nodes 1..=m, node 0 the head sentinel.
    let mut next = vec![NIL; m + 1];
    let mut prev = vec![NIL; m + 1];
    let mut node_op = vec![(0usize, false); m + 1];
    let mut call_node = vec![NIL; n];
    let mut ret_node = vec![NIL; n];
    for (k, &(_, kind, i)) in events.iter().enumerate() {
        let node = k + 1;
        prev[node] = k;
        next[k] = node;
        node_op[node] = (i, kind == 0);
        if kind == 0 {
            call_node[i] = node;
        } else {
            ret_node[i] = node;
        }
    }
    fn unlink(next: &mut [usize], prev: &mut [usize], x: usize) {
        next[prev[x]] = next[x];
        if next[x] != NIL {
            prev[next[x]] = prev[x];
        }
    }
    fn relink(next: &mut [usize], prev: &mut [usize], x: usize) {
        next[prev[x]] = x;
        if next[x] != NIL {
            prev[next[x]] = x;
        }
    }

    let words = n.div_ceil(64);
    // Linearized set as a bitset, with the state in the last word: the memo key.
    let mut bits = vec![0u64; words + 1];
    let mut cache: HashSet<Vec<u64>> = HashSet::new();
    let mut stack: Vec<(usize, Vid)> = Vec::new();
    let mut state = ABSENT;
    let mut remaining = (0..n).filter(|&i| definite(i)).count();
    let mut best: Option<(Vec<u64>, usize, Vid)> = None;
    let mut steps = 0u64;
    let mut cur = next[HEAD];
    while remaining > 0 {
        steps += 1;
        if steps > max_steps {
            return Err(Violation::Inconclusive {
                key: key.to_string(),
                ops: n,
                steps: max_steps,
            });
        }
        debug_assert!(cur != NIL, "a definite op's return is always ahead");
        let (i, is_call) = node_op[cur];
        if is_call {
            if let Some(ns) = step(state, prepared[i].kind, prepared[i].res) {
                bits[i / 64] |= 1 << (i % 64);
                bits[words] = ns as u64;
                if !cache.contains(bits.as_slice()) {
                    cache.insert(bits.clone());
                    stack.push((i, state));
                    state = ns;
                    unlink(&mut next, &mut prev, call_node[i]);
                    if ret_node[i] != NIL {
                        unlink(&mut next, &mut prev, ret_node[i]);
                        remaining -= 1;
                    }
                    cur = next[HEAD];
                    continue;
                }
                bits[i / 64] &= !(1 << (i % 64));
            }
            cur = next[cur];
        } else {
            // Op i must have been linearized by now and was not: dead end.
            if best.as_ref().is_none_or(|b| stack.len() > b.0.len()) {
                let prefix = stack
                    .iter()
                    .map(|&(j, _)| ops[prepared[j].src].id)
                    .collect();
                best = Some((prefix, i, state));
            }
            let Some((j, s)) = stack.pop() else {
                let (prefix, i, st) = best.expect("set just above");
                return Err(explain(
                    &prepared[i],
                    prefix,
                    st,
                    "cannot be linearized after this prefix (nor can anything concurrent with it)",
                ));
            };
            state = s;
            bits[j / 64] &= !(1 << (j % 64));
            if ret_node[j] != NIL {
                relink(&mut next, &mut prev, ret_node[j]);
                remaining += 1;
            }
            relink(&mut next, &mut prev, call_node[j]);
            cur = next[call_node[j]];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history builder on key "k" with automatic ids.
    #[derive(Default)]
    struct H(Vec<Op>);

    impl H {
        fn op(&mut self, t: (u64, Option<u64>), kind: OpKind, outcome: Outcome) -> &mut Self {
            let id = self.0.len() as u64;
            self.0.push(Op {
                id,
                key: "k".into(),
                invoke: t.0,
                complete: t.1,
                kind,
                outcome,
            });
            self
        }
        fn w(&mut self, a: u64, b: u64, v: &str) -> &mut Self {
            self.op(
                (a, Some(b)),
                OpKind::Write { value: v.into() },
                Outcome::Ok(OpResult::Applied(true)),
            )
        }
        fn w_unknown(&mut self, a: u64, v: &str) -> &mut Self {
            self.op(
                (a, None),
                OpKind::Write { value: v.into() },
                Outcome::Unknown,
            )
        }
        fn w_failed(&mut self, a: u64, b: u64, v: &str) -> &mut Self {
            self.op(
                (a, Some(b)),
                OpKind::Write { value: v.into() },
                Outcome::Failed,
            )
        }
        fn r(&mut self, a: u64, b: u64, v: Option<&str>) -> &mut Self {
            self.op(
                (a, Some(b)),
                OpKind::Read,
                Outcome::Ok(OpResult::Read(v.map(Into::into))),
            )
        }
        fn cas(&mut self, a: u64, b: u64, e: Option<&str>, v: &str, ok: bool) -> &mut Self {
            let expect = e.map_or(Expect::Absent, |e| Expect::Value(e.into()));
            self.op(
                (a, Some(b)),
                OpKind::Cas {
                    expect,
                    value: v.into(),
                },
                Outcome::Ok(OpResult::Applied(ok)),
            )
        }
        fn del(&mut self, a: u64, b: u64) -> &mut Self {
            self.op(
                (a, Some(b)),
                OpKind::Delete { expect: None },
                Outcome::Ok(OpResult::Applied(true)),
            )
        }
        fn ok(&self) {
            if let Err(v) = check_history(&self.0) {
                panic!("expected linearizable: {v}\n{:#?}", self.0);
            }
        }
        fn bad(&self) -> Box<Explanation> {
            match check_history(&self.0) {
                Err(Violation::NotLinearizable(e)) => e,
                other => panic!("expected a violation, got {other:?}\n{:#?}", self.0),
            }
        }
    }

    fn reset(h: &mut H, a: u64, b: u64, v: Option<&str>) {
        h.op(
            (a, Some(b)),
            OpKind::Reset {
                value: v.map(Into::into),
            },
            Outcome::Ok(OpResult::Applied(true)),
        );
    }

    /// A forced promotion drops "b" (acknowledged and read) and the key goes back to "a":
    /// linearizable only with the reset there, and each era stays strict.
    #[test]
    fn a_reset_undoes_lost_writes_and_nothing_else() {
        let mut h = H::default();
        h.w(0, 1, "a").w(2, 3, "b").r(4, 5, Some("b"));
        h.r(20, 21, Some("a"));
        h.bad();
        let mut h = H::default();
        h.w(0, 1, "a").w(2, 3, "b").r(4, 5, Some("b"));
        reset(&mut h, 10, 12, Some("a"));
        h.r(20, 21, Some("a")).w(22, 23, "c").r(24, 25, Some("c"));
        h.ok();
        // A lost write after the reset is still a violation.
        let mut h = H::default();
        h.w(0, 1, "a");
        reset(&mut h, 10, 12, Some("a"));
        h.w(22, 23, "c").r(24, 25, Some("a"));
        h.bad();
        // Reads of the lost value after the reset completed are violations.
        let mut h = H::default();
        h.w(0, 1, "a").w(2, 3, "b");
        reset(&mut h, 10, 12, Some("a"));
        h.r(20, 21, Some("b"));
        h.bad();
        // ... but not while it may not have happened yet.
        let mut h = H::default();
        h.w(0, 1, "a").w(2, 3, "b");
        reset(&mut h, 10, 12, Some("a"));
        h.r(9, 11, Some("b")).r(20, 21, Some("a"));
        h.ok();
        // A reset to absent, and one that is not certain, is malformed.
        let mut h = H::default();
        h.w(0, 1, "a");
        reset(&mut h, 10, 12, None);
        h.r(20, 21, None);
        h.ok();
        let mut h = H::default();
        h.op((10, None), OpKind::Reset { value: None }, Outcome::Unknown);
        assert!(matches!(
            check_history(&h.0),
            Err(Violation::Malformed { .. })
        ));
    }

    #[test]
    fn known_good() {
        H::default()
            .w(0, 1, "a")
            .r(2, 3, Some("a"))
            .w(4, 5, "b")
            .r(6, 7, Some("b"))
            .ok();
        // Overlapping writes, later reads see either order's winner.
        H::default()
            .w(0, 10, "a")
            .w(1, 9, "b")
            .r(11, 12, Some("a"))
            .r(13, 14, Some("a"))
            .ok();
        H::default()
            .w(0, 10, "a")
            .w(1, 9, "b")
            .r(11, 12, Some("b"))
            .ok();
        // A read concurrent with a write sees either value.
        H::default()
            .w(0, 1, "a")
            .w(2, 10, "b")
            .r(3, 4, Some("a"))
            .r(5, 6, Some("b"))
            .ok();
        H::default()
            .w(0, 1, "a")
            .w(2, 10, "b")
            .r(3, 4, Some("b"))
            .ok();
        H::default().r(0, 5, None).w(1, 2, "a").ok();
        // Unknown writes: later, or never.
        H::default()
            .w(0, 1, "a")
            .w_unknown(2, "b")
            .r(3, 4, Some("a"))
            .r(100, 101, Some("b"))
            .ok();
        H::default()
            .w(0, 1, "a")
            .w_unknown(2, "b")
            .r(3, 4, Some("a"))
            .r(100, 101, Some("a"))
            .ok();
        H::default()
            .w_unknown(0, "b")
            .w(5, 6, "a")
            .r(7, 8, Some("b"))
            .ok();
        // A failed write is simply dropped.
        H::default()
            .w(0, 1, "a")
            .w_failed(2, 3, "b")
            .r(4, 5, Some("a"))
            .ok();
        // CAS chains and create-only.
        H::default()
            .cas(0, 1, None, "a", true)
            .cas(2, 3, Some("a"), "b", true)
            .cas(4, 5, Some("a"), "c", false)
            .cas(6, 7, None, "d", false)
            .cas(8, 9, Some("b"), "e", true)
            .r(10, 11, Some("e"))
            .ok();
        // Two concurrent CAS on the same version: one wins, the other gets 412.
        H::default()
            .w(0, 1, "a")
            .cas(2, 5, Some("a"), "b", true)
            .cas(3, 6, Some("a"), "c", false)
            .r(7, 8, Some("b"))
            .ok();
        // Delete then read None; create-only after delete.
        H::default()
            .w(0, 1, "a")
            .del(2, 3)
            .r(4, 5, None)
            .cas(6, 7, None, "b", true)
            .r(8, 9, Some("b"))
            .ok();
        // Unknown delete that took effect later.
        H::default()
            .w(0, 1, "a")
            .op((2, None), OpKind::Delete { expect: None }, Outcome::Unknown)
            .r(3, 4, Some("a"))
            .r(5, 6, None)
            .ok();
    }

    #[test]
    fn known_bad() {
        // Stale read after a completed write.
        let e = H::default()
            .w(0, 1, "a")
            .w(2, 3, "b")
            .r(4, 5, Some("a"))
            .bad();
        assert_eq!(e.op.id, 2);
        assert_eq!(e.state.as_deref(), Some("b"));
        // A read of a value never written, and of a failed write.
        H::default().w(0, 1, "a").r(2, 3, Some("zz")).bad();
        H::default()
            .w(0, 1, "a")
            .w_failed(2, 3, "b")
            .r(4, 5, Some("b"))
            .bad();
        // Two CAS with the same expected version both succeeding.
        H::default()
            .w(0, 1, "a")
            .cas(2, 5, Some("a"), "b", true)
            .cas(3, 6, Some("a"), "c", true)
            .bad();
        // Read going back in time.
        H::default()
            .w(0, 1, "a")
            .w(2, 20, "b")
            .r(3, 4, Some("b"))
            .r(5, 6, Some("a"))
            .bad();
        // Create-only succeeding on an existing key.
        H::default().w(0, 1, "a").cas(2, 3, None, "b", true).bad();
        // 412 when the condition held and nothing was concurrent.
        H::default()
            .w(0, 1, "a")
            .cas(2, 3, Some("a"), "b", false)
            .bad();
        // Read None after a completed write, nothing concurrent.
        H::default().w(0, 1, "a").r(2, 3, None).bad();
        // An unknown write cannot take effect before its invoke.
        H::default().r(0, 1, Some("a")).w_unknown(2, "a").bad();
        // Keys are independent: the violation names its key.
        let mut h = H::default();
        h.w(0, 1, "a").r(2, 3, Some("a"));
        h.0.push(Op {
            id: 9,
            key: "x".into(),
            invoke: 0,
            complete: Some(1),
            kind: OpKind::Read,
            outcome: Outcome::Ok(OpResult::Read(Some("a".into()))),
        });
        let v = check_history(&h.0).unwrap_err();
        assert_eq!(v.key(), "x");
        assert!(v.to_string().contains("#9"), "{v}");
    }

    #[test]
    fn malformed_and_budget() {
        let mut h = H::default();
        h.op(
            (0, Some(1)),
            OpKind::Read,
            Outcome::Ok(OpResult::Applied(true)),
        );
        assert!(matches!(
            check_history(&h.0),
            Err(Violation::Malformed { .. })
        ));
        let mut h = H::default();
        h.w(0, 1, "a").w(2, 3, "a");
        assert!(matches!(
            check_history(&h.0),
            Err(Violation::Malformed { .. })
        ));
        // Many concurrent writes and a bad read: a tiny budget gives up.
        let mut h = H::default();
        for i in 0..20 {
            h.w(0, 100, &format!("v{i}"));
        }
        h.r(200, 201, Some("zz0")).w(202, 203, "zz0");
        assert!(check_history_with(&h.0, 50).unwrap_err().is_inconclusive());
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, pct: u64) -> bool {
            self.below(100) < pct
        }
    }

    /// A linearizable history by construction: op i takes effect at 100 + 10 i, inside its
    /// interval; results come from a sequential model. Some ops are unknown (applied or
    /// not) or failed (not applied).
    fn gen_good(rng: &mut Rng, n: usize, spread: u64) -> Vec<Op> {
        let mut state: Option<Value> = None;
        let mut written: Vec<Value> = Vec::new();
        let mut ops = Vec::new();
        for i in 0..n {
            let lp = 100 + 10 * i as u64;
            let invoke = lp - rng.below(spread);
            let complete = lp + rng.below(spread);
            let value = format!("v{i}");
            let pick = |rng: &mut Rng, state: &Option<Value>, written: &[Value]| {
                if rng.chance(60) || written.is_empty() {
                    state.clone().map_or(Expect::Absent, Expect::Value)
                } else if rng.chance(20) {
                    Expect::Absent
                } else {
                    Expect::Value(written[rng.below(written.len() as u64) as usize].clone())
                }
            };
            let kind = match rng.below(10) {
                0..=2 => OpKind::Write {
                    value: value.clone(),
                },
                3..=4 => OpKind::Cas {
                    expect: pick(rng, &state, &written),
                    value: value.clone(),
                },
                5 => OpKind::Delete {
                    expect: rng.chance(50).then(|| pick(rng, &state, &written)),
                },
                _ => OpKind::Read,
            };
            let fate = rng.below(100);
            let (outcome, complete) = if fate < 5 && kind != OpKind::Read {
                (Outcome::Failed, Some(complete)) // not applied
            } else if fate < 10 {
                (Outcome::Unknown, None) // never applied
            } else {
                let holds = |e: &Expect| match e {
                    Expect::Absent => state.is_none(),
                    Expect::Value(v) => state.as_ref() == Some(v),
                };
                let res = match &kind {
                    OpKind::Read => OpResult::Read(state.clone()),
                    OpKind::Write { value } => {
                        state = Some(value.clone());
                        OpResult::Applied(true)
                    }
                    OpKind::Cas { expect, value } => {
                        let ok = holds(expect);
                        if ok {
                            state = Some(value.clone());
                        }
                        OpResult::Applied(ok)
                    }
                    OpKind::Delete { expect } => {
                        let ok = expect
                            .as_ref()
                            .map_or(state.is_some() || rng.chance(50), holds);
                        if ok {
                            state = None;
                        }
                        OpResult::Applied(ok)
                    }
                    OpKind::Reset { value } => {
                        state = value.clone();
                        OpResult::Applied(true)
                    }
                };
                if fate < 20 {
                    (Outcome::Unknown, None)
                } else {
                    (Outcome::Ok(res), Some(complete))
                }
            };
            if let (
                OpKind::Write { value } | OpKind::Cas { value, .. },
                Outcome::Ok(_) | Outcome::Unknown,
            ) = (&kind, &outcome)
            {
                written.push(value.clone());
            }
            ops.push(Op {
                id: i as u64,
                key: "k".into(),
                invoke,
                complete,
                kind,
                outcome,
            });
        }
        ops
    }

    fn end(ops: &[Op]) -> u64 {
        ops.iter()
            .map(|o| o.complete.unwrap_or(o.invoke))
            .max()
            .unwrap_or(0)
            + 10
    }

    fn push(ops: &mut Vec<Op>, invoke: u64, complete: u64, kind: OpKind, res: OpResult) {
        let id = ops.len() as u64 + 1000;
        ops.push(Op {
            id,
            key: "k".into(),
            invoke,
            complete: Some(complete),
            kind,
            outcome: Outcome::Ok(res),
        });
    }

    /// Values definitely written (ok write or applied CAS).
    fn definite_values(ops: &[Op]) -> Vec<Value> {
        ops.iter()
            .filter_map(|o| match (&o.kind, &o.outcome) {
                (
                    OpKind::Write { value } | OpKind::Cas { value, .. },
                    Outcome::Ok(OpResult::Applied(true)),
                ) => Some(value.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn random_good_accepted_and_perturbed_rejected() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..150 {
            let n = 10 + rng.below(60) as usize;
            let spread = 1 + rng.below(40);
            let ops = gen_good(&mut rng, n, spread);
            if let Err(v) = check_history(&ops) {
                panic!("round {round}: good history rejected: {v}\n{ops:#?}");
            }
            let mut bad = ops.clone();
            let t = end(&ops);
            let olds = definite_values(&ops);
            match round % 3 {
                // A read of a value nobody wrote.
                0 => {
                    let r = bad
                        .iter_mut()
                        .find(|o| matches!(o.outcome, Outcome::Ok(OpResult::Read(_))));
                    match r {
                        Some(r) => r.outcome = Outcome::Ok(OpResult::Read(Some("never".into()))),
                        None => push(
                            &mut bad,
                            t,
                            t + 1,
                            OpKind::Read,
                            OpResult::Read(Some("never".into())),
                        ),
                    }
                }
                // Stale read: a completed write, then a later read of an older definite value.
                1 => {
                    let Some(old) = olds.last() else { continue };
                    push(
                        &mut bad,
                        t,
                        t + 1,
                        OpKind::Write {
                            value: "new".into(),
                        },
                        OpResult::Applied(true),
                    );
                    push(
                        &mut bad,
                        t + 2,
                        t + 3,
                        OpKind::Read,
                        OpResult::Read(Some(old.clone())),
                    );
                }
                // Two overlapping CAS on the same version both succeed.
                _ => {
                    push(
                        &mut bad,
                        t,
                        t + 1,
                        OpKind::Write {
                            value: "new".into(),
                        },
                        OpResult::Applied(true),
                    );
                    for v in ["c1", "c2"] {
                        let kind = OpKind::Cas {
                            expect: Expect::Value("new".into()),
                            value: v.into(),
                        };
                        push(&mut bad, t + 2, t + 5, kind, OpResult::Applied(true));
                    }
                }
            }
            match check_history(&bad) {
                Err(Violation::NotLinearizable(_)) => {}
                other => {
                    panic!("round {round}: perturbed history not rejected: {other:?}\n{bad:#?}")
                }
            }
        }
    }

    /// Independent brute force over all orders (and inclusion of unknown ops) for tiny
    /// histories, with its own string model.
    fn brute(ops: &[Op]) -> bool {
        let ops: Vec<&Op> = ops
            .iter()
            .filter(|o| {
                let dropped = matches!(o.outcome, Outcome::Failed)
                    || (o.kind == OpKind::Read && o.outcome == Outcome::Unknown);
                !dropped
            })
            .collect();
        fn holds(e: &Expect, s: &Option<Value>) -> bool {
            match e {
                Expect::Absent => s.is_none(),
                Expect::Value(v) => s.as_ref() == Some(v),
            }
        }
        fn go(ops: &[&Op], placed: u32, s: Option<Value>) -> bool {
            if (0..ops.len()).all(|i| placed & (1 << i) != 0 || ops[i].outcome == Outcome::Unknown)
            {
                return true;
            }
            for i in 0..ops.len() {
                if placed & (1 << i) != 0 {
                    continue;
                }
                let blocked = (0..ops.len()).any(|j| {
                    j != i
                        && placed & (1 << j) == 0
                        && ops[j].outcome != Outcome::Unknown
                        && ops[j].complete.unwrap() < ops[i].invoke
                });
                if blocked {
                    continue;
                }
                let o = ops[i];
                let next: Option<Option<Value>> = match (&o.kind, &o.outcome) {
                    (OpKind::Read, Outcome::Ok(OpResult::Read(v))) => (v == &s).then(|| s.clone()),
                    (OpKind::Reset { value }, _) => Some(value.clone()),
                    (OpKind::Write { value }, _) => Some(Some(value.clone())),
                    (OpKind::Cas { expect, value }, Outcome::Ok(OpResult::Applied(a))) => {
                        (holds(expect, &s) == *a).then(|| {
                            if *a {
                                Some(value.clone())
                            } else {
                                s.clone()
                            }
                        })
                    }
                    (OpKind::Cas { expect, value }, _) => Some(if holds(expect, &s) {
                        Some(value.clone())
                    } else {
                        s.clone()
                    }),
                    (OpKind::Delete { expect: None }, Outcome::Ok(OpResult::Applied(false))) => {
                        s.is_none().then_some(None)
                    }
                    (OpKind::Delete { expect: None }, _) => Some(None),
                    (OpKind::Delete { expect: Some(e) }, Outcome::Ok(OpResult::Applied(a))) => {
                        (holds(e, &s) == *a).then(|| if *a { None } else { s.clone() })
                    }
                    (OpKind::Delete { expect: Some(e) }, _) => {
                        Some(if holds(e, &s) { None } else { s.clone() })
                    }
                    _ => unreachable!(),
                };
                if let Some(ns) = next {
                    if go(ops, placed | (1 << i), ns) {
                        return true;
                    }
                }
                if o.outcome == Outcome::Unknown && go(ops, placed | (1 << i), s.clone()) {
                    return true;
                }
            }
            false
        }
        go(&ops, 0, None)
    }

    /// Random tiny histories with arbitrary (mostly wrong) results: the checker agrees with
    /// brute force on every one.
    #[test]
    fn random_tiny_agrees_with_brute_force() {
        let mut rng = Rng(0xDEAD_BEEF_1234_5678);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..3000 {
            let n = 2 + rng.below(6) as usize;
            let pool = |rng: &mut Rng| -> Option<Value> {
                (!rng.chance(25)).then(|| format!("v{}", rng.below(n as u64 + 1)))
            };
            let expect = |rng: &mut Rng| pool(rng).map_or(Expect::Absent, Expect::Value);
            let mut ops = Vec::new();
            for i in 0..n {
                let invoke = rng.below(20);
                let complete = invoke + rng.below(8);
                let value = format!("v{i}");
                let kind = match rng.below(7) {
                    0 | 1 => OpKind::Write { value },
                    2 | 3 => OpKind::Cas {
                        expect: expect(&mut rng),
                        value,
                    },
                    4 => OpKind::Delete {
                        expect: rng.chance(50).then(|| expect(&mut rng)),
                    },
                    _ => OpKind::Read,
                };
                let outcome = match rng.below(10) {
                    0 => Outcome::Failed,
                    1 | 2 => Outcome::Unknown,
                    _ => Outcome::Ok(match &kind {
                        OpKind::Read => OpResult::Read(pool(&mut rng)),
                        OpKind::Write { .. } => OpResult::Applied(true),
                        _ => OpResult::Applied(rng.chance(60)),
                    }),
                };
                ops.push(Op {
                    id: i as u64,
                    key: "k".into(),
                    invoke,
                    complete: Some(complete),
                    kind,
                    outcome,
                });
            }
            let expected = brute(&ops);
            let got = check_history(&ops);
            assert!(
                !matches!(
                    got,
                    Err(Violation::Inconclusive { .. }) | Err(Violation::Malformed { .. })
                ),
                "{got:?}"
            );
            assert_eq!(
                got.is_ok(),
                expected,
                "checker {got:?} vs brute force {expected}\n{ops:#?}"
            );
            if expected {
                yes += 1
            } else {
                no += 1
            }
        }
        assert!(yes > 100 && no > 100, "yes {yes} no {no}");
    }

    /// A few thousand ops with modest concurrency check quickly.
    #[test]
    fn large_history_is_fast() {
        let mut rng = Rng(42);
        let ops = gen_good(&mut rng, 3000, 25);
        let start = std::time::Instant::now();
        check_history(&ops).unwrap();
        assert!(
            start.elapsed() < std::time::Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
    }
}
