//! The controller's etcd I/O of one cluster: its keys ([`Keys`]), the guarded transaction that
//! carries a core [`Write`] (compared on the election key's create revision, the controller
//! term, and on the state key's mod revision), and reading the state and the journal back.

use crate::core::{Observed, Write, WriteOutcome};
use crate::journal::{self, Entry, Tail};
use crate::state::ClusterState;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use std::time::Duration;

/// etcd keys of one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    pub election: String,
    pub state: String,
    /// Prefix of the journal entries, `journal/{seq:020}` each.
    pub journal: String,
    /// The anti-flapping budget: a JSON array of the Unix ms of the automatic failovers of the
    /// last hour.
    pub failovers: String,
    pub hears: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        let p = format!("/baton/{cluster}/");
        Keys {
            election: format!("{p}election"),
            state: format!("{p}state"),
            journal: format!("{p}journal/"),
            failovers: format!("{p}failovers"),
            hears: format!("{p}hears/"),
        }
    }

    /// The key of journal entry `seq` (zero-padded: keys sort as numbers).
    pub fn journal_entry(&self, seq: u64) -> String {
        format!("{}{seq:020}", self.journal)
    }

    /// The end of the journal's key range (the prefix with its last byte raised).
    fn journal_end(&self) -> Vec<u8> {
        let mut end = self.journal.clone().into_bytes();
        if let Some(b) = end.last_mut() {
            *b += 1;
        }
        end
    }
}

pub(super) async fn txn(etcd: &mut Client, keys: &Keys, w: &Write, term: u64) -> WriteOutcome {
    let mut cmps = vec![Compare::create_revision(
        keys.election.clone(),
        CompareOp::Equal,
        term as i64,
    )];
    cmps.push(if w.expect_rev == 0 {
        Compare::create_revision(keys.state.clone(), CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(keys.state.clone(), CompareOp::Equal, w.expect_rev as i64)
    });
    // Nobody appended to the journal since the core read it.
    cmps.push(Compare::create_revision(
        keys.journal_entry(w.journal_after + 1),
        CompareOp::Equal,
        0,
    ));
    let mut ops = Vec::new();
    if let Some(s) = &w.state {
        ops.push(TxnOp::put(
            keys.state.clone(),
            serde_json::to_vec(s).expect("state serializes"),
            None,
        ));
    }
    for e in &w.journal {
        ops.push(TxnOp::put(
            keys.journal_entry(e.seq),
            serde_json::to_vec(e).expect("journal entry serializes"),
            None,
        ));
    }
    // The window: entries older than the newest RING go in the same transaction.
    let newest = w.journal.iter().map(|e| e.seq).max().unwrap_or(0);
    if newest > journal::RING as u64 {
        ops.push(TxnOp::delete(
            keys.journal_entry(0),
            Some(
                DeleteOptions::new()
                    .with_range(keys.journal_entry(newest - journal::RING as u64 + 1)),
            ),
        ));
    }
    if w.resign {
        // A handover: the journal entry and the resignation in one transaction, guarded by
        // this controller's term like every write.
        ops.push(TxnOp::delete(keys.election.clone(), None));
    }
    if let Some(f) = &w.failovers {
        ops.push(TxnOp::put(
            keys.failovers.clone(),
            serde_json::to_vec(f).expect("failovers serialize"),
            None,
        ));
    }
    let t = Txn::new().when(cmps).and_then(ops);
    match tokio::time::timeout(Duration::from_secs(2), etcd.txn(t)).await {
        Ok(Ok(resp)) if resp.succeeded() => {
            let rev = if w.state.is_some() {
                resp.header().map_or(0, |h| h.revision() as u64)
            } else {
                w.expect_rev
            };
            WriteOutcome::Committed { rev }
        }
        Ok(Ok(_)) => WriteOutcome::Rejected,
        Ok(Err(e)) => {
            tracing::warn!(%e, "etcd transaction failed");
            WriteOutcome::Unknown
        }
        Err(_) => WriteOutcome::Unknown,
    }
}

/// Reads, at one revision, the state key of a cluster, the journal entries from `from_seq` on
/// (the newest one the core knows; 0: all) and the budget key. When no entry at or above
/// `from_seq` exists any more (etcd restored or emptied), the newest entry is read instead.
pub async fn read_state(
    etcd: &mut Client,
    keys: &Keys,
    from_seq: u64,
) -> Result<(Observed, Tail), String> {
    let tail = |from: u64| {
        TxnOp::get(
            keys.journal_entry(from),
            Some(GetOptions::new().with_range(keys.journal_end())),
        )
    };
    let newest = TxnOp::get(
        keys.journal.clone(),
        Some(
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(1),
        ),
    );
    let t = Txn::new().and_then([
        TxnOp::get(keys.state.clone(), None),
        tail(from_seq),
        TxnOp::get(keys.failovers.clone(), None),
    ]);
    let r = etcd.txn(t).await.map_err(|e| e.to_string())?;
    let gets: Vec<etcd_client::GetResponse> = r
        .op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect();
    let [state, entries, failovers] = &gets[..] else {
        return Err("etcd answered a read with an unexpected shape".into());
    };
    let observed = match state.kvs().first() {
        None => Observed::Absent,
        Some(kv) => {
            let state: ClusterState = serde_json::from_slice(kv.value())
                .map_err(|e| format!("{}: malformed state: {e}", keys.state))?;
            Observed::Present {
                state,
                rev: kv.mod_revision() as u64,
            }
        }
    };
    let mut entries = parse_entries(keys, entries.kvs())?;
    if entries.is_empty() && from_seq > 0 {
        let r = etcd
            .txn(Txn::new().and_then([newest]))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(TxnOpResponse::Get(g)) = r.op_responses().first() {
            entries = parse_entries(keys, g.kvs())?;
        }
    }
    let failovers = match failovers.kvs().first() {
        None => Vec::new(),
        Some(kv) => serde_json::from_slice(kv.value())
            .map_err(|e| format!("{}: malformed budget: {e}", keys.failovers))?,
    };
    Ok((observed, Tail { entries, failovers }))
}

/// The newest `limit` journal entries, oldest first (a range read of the prefix).
pub async fn read_journal(
    etcd: &mut Client,
    keys: &Keys,
    limit: usize,
) -> Result<Vec<Entry>, String> {
    // etcd reads a limit of 0 as "no limit".
    if limit == 0 {
        return Ok(Vec::new());
    }
    let r = etcd
        .get(
            keys.journal.clone(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(limit.min(journal::RING) as i64),
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut entries = parse_entries(keys, r.kvs())?;
    entries.sort_by_key(|e| e.seq);
    Ok(entries)
}

/// Journal entries from their keys, in the order given.
fn parse_entries(keys: &Keys, kvs: &[etcd_client::KeyValue]) -> Result<Vec<Entry>, String> {
    kvs.iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            let seq = key
                .strip_prefix(&keys.journal)
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| format!("{key}: not a journal entry key"))?;
            let e: Entry = serde_json::from_slice(kv.value())
                .map_err(|e| format!("{key}: malformed journal entry: {e}"))?;
            Ok(Entry { seq, ..e })
        })
        .collect()
}
