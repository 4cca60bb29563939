//! Fuzzing, by proptest, of every decoder that reads bytes from the network or from a peer
//! (issue 13 item 6): replication frames (the leader's and the follower's codec, the message
//! header), record frames in an append tail, snapshot files as received in chunks, and the
//! directive and heartbeat JSON. Arbitrary bytes and mutations of valid encodings must give an
//! error or a value, never a panic, an abort or an allocation sized by an untrusted count.

use baton_common::directive::{Directive, Heartbeat};
use baton_common::{Epoch, Lsn};
use baton_replica::repl::wire::{self, LeaderCodec, Msg};
use baton_replica::snapshot;
use baton_replica::state::KvState;
use baton_replica::wal::{Op, Record};
use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn valid_append() -> Bytes {
    let recs: Vec<Record> = (1..=3)
        .map(|i| Record {
            epoch: Epoch(2),
            lsn: Lsn(i),
            op: Op::Put {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from_static(b"value"),
            },
        })
        .collect();
    wire::encode_append(Epoch(2), (Epoch(1), Lsn(0)), Lsn(3), Lsn(3), 7, &recs)
}

fn mutate(mut b: Vec<u8>, flips: &[(usize, u8)]) -> Vec<u8> {
    if b.is_empty() {
        return b;
    }
    for (at, x) in flips {
        let i = at % b.len();
        b[i] ^= x;
    }
    b
}

/// Decodes a frame the way a follower does with an append: header, then the records.
fn decode_like_a_follower(frame: Bytes) {
    if let Ok((Msg::Append { count, .. }, tail)) = wire::decode(frame) {
        let _ = wire::decode_records(&tail, count);
    }
}

/// An append that claims 4 billion records in an empty tail: an error, not an allocation of
/// 4 billion records (which aborted the process: found by review for issue 13).
#[test]
fn a_huge_record_count_is_an_error_not_an_allocation() {
    assert!(wire::decode_records(&[], u32::MAX).is_err());
    let one = Record {
        epoch: Epoch(1),
        lsn: Lsn(1),
        op: Op::Delete {
            key: Bytes::from_static(b"k"),
        },
    }
    .encode();
    assert!(wire::decode_records(&one, u32::MAX).is_err());
    assert_eq!(wire::decode_records(&one, 1).expect("one record").len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_like_a_follower(Bytes::from(bytes.clone()));
        let _ = Record::decode(&bytes);
        let _ = wire::decode_records(&bytes, u32::from_le_bytes([bytes.first().copied().unwrap_or(0), 0, 0, 0]));
    }

    #[test]
    fn mutated_appends_never_panic(flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..8), count in any::<u32>()) {
        let frame = mutate(valid_append().to_vec(), &flips);
        decode_like_a_follower(Bytes::from(frame.clone()));
        // And with any count in the header's place.
        if let Ok((_, tail)) = wire::decode(Bytes::from(frame)) {
            let _ = wire::decode_records(&tail, count);
        }
    }

    /// The codecs: whatever length prefix arrives, the leader's reads at most 64 KiB frames and
    /// neither reserves a buffer for a bigger announced length nor panics.
    #[test]
    fn codecs_never_panic_or_reserve_for_announced_lengths(len in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut src = BytesMut::new();
        src.put_u32_le(len);
        src.put_slice(&body);
        let mut leader = LeaderCodec::new();
        let r = leader.decode(&mut src);
        if len as usize > wire::MAX_FOLLOWER_FRAME {
            prop_assert!(r.is_err());
            prop_assert!(src.capacity() < 1 << 20);
        }
        let mut src = BytesMut::new();
        src.put_u32_le(len);
        src.put_slice(&body);
        let _ = wire::codec().decode(&mut src);
    }

    #[test]
    fn mutated_snapshot_files_never_panic(flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..6), cut in any::<usize>()) {
        let dir = tempfile::tempdir().expect("tmp");
        let mut state = KvState::default();
        for i in 0..4u64 {
            state.insert(
                Bytes::from(format!("k{i}")),
                baton_replica::state::Entry {
                    value: Bytes::from_static(b"v"),
                    version: baton_common::Version { epoch: Epoch(1), lsn: Lsn(i + 1) },
                },
            );
        }
        let snap = snapshot::Snapshot {
            lsn: Lsn(4),
            epoch: Epoch(1),
            history: vec![(Epoch(1), Lsn(1))],
            lossy_epochs: vec![],
            state,
        };
        let (path, _) = snapshot::write(dir.path(), &snap).expect("write");
        let good = std::fs::read(&path).expect("read");
        let mut bad = mutate(good.clone(), &flips);
        bad.truncate(1 + cut % good.len().max(1));
        let p = dir.path().join("received.snap");
        std::fs::write(&p, &bad).expect("write");
        let _ = snapshot::load_file(&p);
    }

    #[test]
    fn directive_and_heartbeat_json_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..6)) {
        let _ = serde_json::from_slice::<Directive>(&bytes);
        let _ = serde_json::from_slice::<Heartbeat>(&bytes);
        let near = br#"{"seq":1,"cluster":"main","id":"r1","epoch":18446744073709551615,"role":"leader","log_end_lsn":3,"waiting":[{"id":"r2","flushed_lsn":1}]}"#;
        let _ = serde_json::from_slice::<Heartbeat>(&mutate(near.to_vec(), &flips));
        let _ = serde_json::from_slice::<Directive>(&mutate(near.to_vec(), &flips));
    }
}
