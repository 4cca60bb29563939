//! The journal's writes (coalescing, rate limit) and the budget key.

use crate::harness::*;

// ----- the journal's writes and the budget key ---------------------------------------------------

/// A refusal that keeps coming back rewrites its entry at most once per
/// `journal::COALESCE_WRITE_MS`; repeats in between are counted in memory and written with the
/// next entry (etcd must not take a write per repeat).
#[test]
fn repeated_refusal_rewrites_its_entry_at_most_every_10_s_and_the_next_entry_flushes_the_count() {
    let mut s = steady_sim();
    // The leader (and both followers) heard at `h`, then the refusal is back at `h + 1000`.
    let cycle = |s: &mut Sim, h: u64| {
        for hb in [leader_hb(), follower("r2"), follower("r3")] {
            s.hb(h, hb);
        }
        assert_eq!(s.tick(h), None);
        s.hb(h + 1000, lost("r2", 20));
        s.hb(h + 1000, lost("r3", 1000));
        s.tick(h + 1000)
    };
    s.hb(11_000, lost("r2", 20));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("the refusal");
    assert_eq!(
        (w.journal.len(), w.journal[0].seq, w.journal_after),
        (1, 1, 0)
    );
    s.commit(11_000, &w);
    // The first repeat rewrites entry 1.
    let w = cycle(&mut s, 11_200).expect("a rewrite");
    assert_eq!(last(&w), (Kind::Refusal, 5, 2));
    assert_eq!(
        (w.journal.len(), w.journal[0].seq, w.journal_after),
        (1, 1, 1)
    );
    s.commit(12_200, &w);
    // Within 10 s of that rewrite: counted, not written.
    assert_eq!(cycle(&mut s, 12_300), None);
    assert_eq!(cycle(&mut s, 13_400), None);
    // 10 s after the rewrite: written again, with the repeats counted meanwhile.
    let w = cycle(&mut s, 21_300).expect("a rewrite");
    assert_eq!(w.journal.len(), 1);
    assert_eq!(last(&w), (Kind::Refusal, 5, 5));
    assert_eq!(w.journal[0].last_unix_ms, Some(UNIX0 + 22_300));
    s.commit(22_300, &w);
    assert_eq!(cycle(&mut s, 22_400), None);
    // The next entry carries the count of entry 1 along.
    let w = s
        .core
        .set_control(at(23_500), Control::Manual)
        .expect("pause");
    s.check_write(&w);
    let got: Vec<(u64, &str, u64)> = w
        .journal
        .iter()
        .map(|e| (e.seq, e.kind.as_str(), e.count))
        .collect();
    assert_eq!(got, vec![(1, "refusal", 6), (2, "pause", 1)]);
    assert_eq!(w.journal_after, 1);
    s.commit(23_500, &w);
    assert_eq!(s.core.journal.last().map(|e| e.seq), Some(2));
}

/// The anti-flapping budget counts the failovers key the runtime read, not the journal's tail,
/// and an automatic failover writes the key with itself added and the expired ones dropped.
#[test]
fn failover_budget_comes_from_its_own_key_and_a_failover_rewrites_it() {
    let mut s = steady_sim();
    let recent = vec![UNIX0 + 5_000, UNIX0 + 6_000, UNIX0 + 7_000];
    s.core.on_observed(
        at(10_500),
        Observed::Present {
            state: steady(),
            rev: REV0,
        },
        journal::Tail {
            entries: vec![],
            failovers: recent,
        },
    );
    assert_eq!(s.failovers(10_500), 3);
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("refusal");
    assert!(
        says(&w).starts_with("failover budget exhausted: 3 "),
        "{}",
        says(&w)
    );
    assert_eq!(w.failovers, None, "a refusal leaves the key alone");

    // One failover older than an hour and one recent: room for one more.
    let mut s = steady_sim();
    let old = UNIX0 + 10_500 - journal::HOUR_MS;
    s.core.on_observed(
        at(10_500),
        Observed::Present {
            state: steady(),
            rev: REV0,
        },
        journal::Tail {
            entries: vec![],
            failovers: vec![old, UNIX0 + 7_000],
        },
    );
    assert_eq!(s.failovers(10_500), 1);
    s.hb(11_000, lost("r2", 1000));
    s.hb(11_000, lost("r3", 1000));
    let w = s.tick(11_000).expect("failover");
    assert_eq!(last(&w).0, Kind::Failover);
    assert_eq!(w.failovers, Some(vec![UNIX0 + 7_000, UNIX0 + 11_000]));
    s.commit(11_000, &w);
    assert_eq!(s.failovers(11_000), 2);
    // The next step of the promotion leaves the key alone.
    assert_eq!(
        s.tick(11_050).and_then(|w| w.failovers),
        None,
        "only the failover write touches the key"
    );
}
