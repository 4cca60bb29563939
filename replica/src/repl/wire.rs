//! The replication stream's messages and their framing. A stream is an HTTP/1.1 connection
//! upgraded to `baton-replication/1`; each frame is length-delimited (tokio-util's codec) and
//! holds `json_len u32 LE, JSON header, binary tail`. The tail carries record frames
//! (`wal/record.rs` format) after `Append`, and raw snapshot bytes after `SnapshotChunk`.
//!
//! Follower → leader: `Hello`, `EpochQuery`, `Fetch`, `Ack`.
//! Leader → follower: `Welcome`, `EpochEnd`, `Append`, `Keepalive`, `Snapshot*`, `Refused`.

use crate::wal::record::DecodeError;
use crate::wal::Record;
use baton_common::{BootId, DataId, Epoch, Lsn, NodeId};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// The protocol name in the `Upgrade` header.
pub const PROTOCOL: &str = "baton-replication/1";
/// Largest frame accepted (a batch of records or a snapshot chunk).
pub const MAX_FRAME: usize = 48 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// First message of a follower: who it is and the epoch it has persisted.
    Hello {
        id: NodeId,
        data_id: DataId,
        boot_id: BootId,
        epoch: Epoch,
        /// The follower's cluster name and deployment id (0: not known yet): a leader refuses
        /// a follower of another cluster before anything else (its epoch included) counts.
        #[serde(default)]
        cluster: String,
        #[serde(default)]
        cluster_id: u64,
    },
    /// Divergence exchange: "where does your log of epoch `epoch` end?"
    EpochQuery {
        epoch: Epoch,
    },
    /// Start streaming at `from`; the follower's record at `from - 1` has `prev_epoch`.
    Fetch {
        from: Lsn,
        prev_epoch: Epoch,
    },
    /// The follower made its log durable up to `flushed` (a contiguous, verified prefix), and
    /// promises not to lead a higher epoch for `promise_ms` (0: no promise), counted by the
    /// leader from `echo_ms`, its own send time of the newest message the follower received.
    Ack {
        epoch: Epoch,
        flushed: Lsn,
        #[serde(default)]
        promise_ms: u64,
        #[serde(default)]
        echo_ms: u64,
    },
    /// The leader accepted the stream; `epoch` is the leader's epoch.
    Welcome {
        epoch: Epoch,
        leader: NodeId,
        /// Who answers: the follower checks them against the leader its directive named.
        #[serde(default)]
        boot_id: BootId,
        #[serde(default)]
        data_id: DataId,
        #[serde(default)]
        cluster: String,
        #[serde(default)]
        cluster_id: u64,
    },
    /// Answer to `EpochQuery`: `epoch` is the largest epoch ≤ the queried one in the leader's
    /// history, `end` the first LSN after it. `lossy_above`: a lossy leader-start lies above.
    EpochEnd {
        queried: Epoch,
        epoch: Epoch,
        end: Lsn,
        lossy_above: bool,
    },
    /// `count` records follow in the tail; the first one's predecessor is (prev_epoch, prev_lsn).
    /// `end` is the leader's log end when sent; `sent_ms` the leader's clock when sent (echoed
    /// by acknowledgements, which count promises from it).
    Append {
        epoch: Epoch,
        prev_epoch: Epoch,
        prev_lsn: Lsn,
        commit: Lsn,
        end: Lsn,
        count: u32,
        #[serde(default)]
        sent_ms: u64,
    },
    /// Nothing new; the leader's commit LSN and log end, and its clock when sent.
    Keepalive {
        epoch: Epoch,
        commit: Lsn,
        end: Lsn,
        #[serde(default)]
        sent_ms: u64,
    },
    /// A snapshot of `bytes` bytes covering up to `lsn` (whose record has `last_epoch`) follows.
    SnapshotBegin {
        epoch: Epoch,
        lsn: Lsn,
        last_epoch: Epoch,
        bytes: u64,
    },
    /// Raw snapshot file bytes in the tail.
    SnapshotChunk,
    SnapshotEnd,
    /// The other side will not go on; the stream is closed after this.
    Refused {
        reason: String,
        epoch: Epoch,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("malformed record in an append: {0}")]
    Record(#[from] DecodeError),
}

/// Encodes a message with an optional binary tail.
pub fn encode(msg: &Msg, tail: &[u8]) -> Bytes {
    let json = serde_json::to_vec(msg).expect("messages serialize");
    let mut b = BytesMut::with_capacity(4 + json.len() + tail.len());
    b.put_u32_le(json.len() as u32);
    b.put_slice(&json);
    b.put_slice(tail);
    b.freeze()
}

/// Encodes an `Append` with its records.
pub fn encode_append(
    epoch: Epoch,
    prev: (Epoch, Lsn),
    commit: Lsn,
    end: Lsn,
    sent_ms: u64,
    records: &[Record],
) -> Bytes {
    let size = records.iter().map(Record::frame_len).sum();
    let mut b = append_header(epoch, prev, commit, end, sent_ms, records.len(), size);
    for r in records {
        r.encode_into(&mut b);
    }
    b.freeze()
}

/// An append whose records are already encoded: `frames` holds `count` record frames back to
/// back (read from the log), copied once behind the message.
pub fn encode_append_frames(
    epoch: Epoch,
    prev: (Epoch, Lsn),
    commit: Lsn,
    end: Lsn,
    sent_ms: u64,
    frames: &crate::wal::Frames,
) -> Bytes {
    let body = frames.bytes.len();
    let mut b = append_header(epoch, prev, commit, end, sent_ms, frames.count, body);
    b.put_slice(&frames.bytes);
    b.freeze()
}

/// An `Append` message for `count` records, with room for their `body` bytes of frames after it.
fn append_header(
    epoch: Epoch,
    prev: (Epoch, Lsn),
    commit: Lsn,
    end: Lsn,
    sent_ms: u64,
    count: usize,
    body: usize,
) -> BytesMut {
    let msg = Msg::Append {
        epoch,
        prev_epoch: prev.0,
        prev_lsn: prev.1,
        commit,
        end,
        count: count as u32,
        sent_ms,
    };
    let json = serde_json::to_vec(&msg).expect("messages serialize");
    let mut b = BytesMut::with_capacity(4 + json.len() + body);
    b.put_u32_le(json.len() as u32);
    b.put_slice(&json);
    b
}

/// Splits a frame into its message and tail.
pub fn decode(frame: Bytes) -> Result<(Msg, Bytes), WireError> {
    if frame.len() < 4 {
        return Err(WireError::Malformed("frame shorter than its header".into()));
    }
    let n = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    if frame.len() < 4 + n {
        return Err(WireError::Malformed("header runs past the frame".into()));
    }
    let msg = serde_json::from_slice(&frame[4..4 + n])
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    Ok((msg, frame.slice(4 + n..)))
}

/// Decodes the `count` records of an append tail.
pub fn decode_records(tail: &[u8], count: u32) -> Result<Vec<Record>, WireError> {
    // `count` comes from the peer: reserve no more than the tail can hold (a record frame is
    // well over 16 bytes), or a forged count of 4 billion aborts the process.
    let mut out = Vec::with_capacity((count as usize).min(tail.len() / 16));
    let mut off = 0;
    for _ in 0..count {
        let (r, n) = Record::decode(&tail[off..])?;
        off += n;
        out.push(r);
    }
    if off != tail.len() {
        return Err(WireError::Malformed(
            "bytes after the last record of an append".into(),
        ));
    }
    Ok(out)
}

/// Largest frame a leader accepts from a follower: a follower only sends small JSON messages
/// (`Hello`, `EpochQuery`, `Fetch`, `Ack`), so a peer announcing a bigger frame is cut off
/// before the leader reserves a buffer for it.
pub const MAX_FOLLOWER_FRAME: usize = 64 << 10;

fn length_codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .little_endian()
        .length_field_length(4)
        .max_frame_length(max)
        .new_codec()
}

/// The follower's frame codec: reads and writes frames up to [`MAX_FRAME`].
pub fn codec() -> LengthDelimitedCodec {
    length_codec(MAX_FRAME)
}

/// The leader's frame codec: writes frames up to [`MAX_FRAME`] (records, snapshot chunks) but
/// reads only up to [`MAX_FOLLOWER_FRAME`].
#[derive(Debug)]
pub struct LeaderCodec {
    read: LengthDelimitedCodec,
    write: LengthDelimitedCodec,
}

impl LeaderCodec {
    pub fn new() -> LeaderCodec {
        LeaderCodec {
            read: length_codec(MAX_FOLLOWER_FRAME),
            write: length_codec(MAX_FRAME),
        }
    }
}

impl Default for LeaderCodec {
    fn default() -> Self {
        LeaderCodec::new()
    }
}

impl Decoder for LeaderCodec {
    type Item = BytesMut;
    type Error = std::io::Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        self.read.decode(src)
    }
}

impl Encoder<Bytes> for LeaderCodec {
    type Error = std::io::Error;
    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        self.write.encode(item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Op;

    /// A follower (or a stranger) announcing a frame larger than a follower ever sends is cut
    /// off before the leader reserves a buffer for it; the leader still writes big frames.
    #[test]
    fn leader_codec_refuses_big_frames_from_followers_but_writes_them() {
        let mut c = LeaderCodec::new();
        let mut src = BytesMut::new();
        src.put_u32_le(48 << 20);
        src.put_slice(b"x");
        let e = c.decode(&mut src).expect_err("too big");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            src.capacity() < 1 << 20,
            "no buffer reserved: {}",
            src.capacity()
        );
        let mut ok = BytesMut::new();
        ok.put_u32_le(3);
        ok.put_slice(b"abc");
        assert_eq!(
            LeaderCodec::new().decode(&mut ok).expect("fits").as_deref(),
            Some(&b"abc"[..])
        );
        let mut dst = BytesMut::new();
        c.encode(Bytes::from(vec![0u8; 1 << 20]), &mut dst)
            .expect("the leader writes frames up to MAX_FRAME");
        assert_eq!(dst.len(), 4 + (1 << 20));
    }

    #[test]
    fn append_round_trips_with_records() {
        let recs: Vec<Record> = (1..=3)
            .map(|i| Record {
                epoch: Epoch(2),
                lsn: Lsn(i),
                op: Op::Put {
                    key: Bytes::from(format!("k{i}")),
                    value: Bytes::from_static(b"v"),
                },
            })
            .collect();
        let f = encode_append(Epoch(2), (Epoch(1), Lsn(0)), Lsn(7), Lsn(9), 5, &recs);
        let (m, tail) = decode(f).expect("decode");
        let Msg::Append {
            count,
            commit,
            prev_epoch,
            ..
        } = m
        else {
            panic!("not an append: {m:?}")
        };
        assert_eq!((count, commit, prev_epoch), (3, Lsn(7), Epoch(1)));
        assert_eq!(decode_records(&tail, count).expect("records"), recs);
        assert!(
            decode_records(&tail, 4).is_err(),
            "a missing record is an error"
        );
        assert!(
            decode_records(&tail[..tail.len() - 1], 3).is_err(),
            "a cut record is an error"
        );
        // Frames read from the log go out as the same bytes as the records encoded here.
        let mut b = BytesMut::new();
        for r in &recs {
            r.encode_into(&mut b);
        }
        let frames = crate::wal::Frames {
            bytes: b.freeze(),
            count: recs.len(),
        };
        let g = encode_append_frames(Epoch(2), (Epoch(1), Lsn(0)), Lsn(7), Lsn(9), 5, &frames);
        assert_eq!(
            g,
            encode_append(Epoch(2), (Epoch(1), Lsn(0)), Lsn(7), Lsn(9), 5, &recs)
        );
    }

    #[test]
    fn junk_is_refused() {
        assert!(decode(Bytes::from_static(b"\x02")).is_err());
        assert!(decode(Bytes::from_static(b"\x05\x00\x00\x00{}")).is_err());
        assert!(
            decode(Bytes::from_static(b"\x02\x00\x00\x00{}")).is_err(),
            "no type tag"
        );
    }
}
