//! The log record and its on-disk frame: `[len u32][crc32c u32][payload]`, little endian, where
//! the checksum covers the length bytes and the payload, so a corrupted length is caught too.
//!
//! Payload: `epoch u64, lsn u64, kind u8`, then per kind:
//! - `1` put: `key_len u32, key, value_len u32, value`
//! - `2` delete: `key_len u32, key`
//! - `3` leader-start: `lossy u8, leader_len u16, leader id`
//!
//! This encoding is a wire and disk format: change it only with a new kind or a format version.

use baton_common::{Epoch, Lsn, NodeId};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of frame header before the payload.
pub const FRAME_HEADER: usize = 8;
/// Largest payload a frame may claim; anything above is a corrupt length, not a record.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// What a record does to the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// First record of a leader's epoch; committing it commits everything below it.
    LeaderStart {
        leader: NodeId,
        lossy: bool,
    },
}

/// One log entry. Every record carries its epoch and LSN (DESIGN.md §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub epoch: Epoch,
    pub lsn: Lsn,
    pub op: Op,
}

/// Why bytes could not be decoded as a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the frame needs: a torn write, or a truncated file.
    #[error("incomplete frame: need {need} bytes, have {have}")]
    Incomplete { need: usize, have: usize },
    #[error("checksum mismatch")]
    Checksum,
    #[error("frame length {0} exceeds the maximum record size")]
    Length(usize),
    #[error("malformed payload: {0}")]
    Payload(&'static str),
}

impl Record {
    /// Size of the encoded frame in bytes.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER + self.payload_len()
    }

    fn payload_len(&self) -> usize {
        17 + match &self.op {
            Op::Put { key, value } => 8 + key.len() + value.len(),
            Op::Delete { key } => 4 + key.len(),
            Op::LeaderStart { leader, .. } => 3 + leader.0.len(),
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        let len = self.payload_len();
        out.reserve(FRAME_HEADER + len);
        let start = out.len();
        out.put_u32_le(len as u32);
        out.put_u32_le(0); // checksum, filled below
        out.put_u64_le(self.epoch.0);
        out.put_u64_le(self.lsn.0);
        match &self.op {
            Op::Put { key, value } => {
                out.put_u8(1);
                out.put_u32_le(key.len() as u32);
                out.put_slice(key);
                out.put_u32_le(value.len() as u32);
                out.put_slice(value);
            }
            Op::Delete { key } => {
                out.put_u8(2);
                out.put_u32_le(key.len() as u32);
                out.put_slice(key);
            }
            Op::LeaderStart { leader, lossy } => {
                out.put_u8(3);
                out.put_u8(u8::from(*lossy));
                out.put_u16_le(leader.0.len() as u16);
                out.put_slice(leader.0.as_bytes());
            }
        }
        let crc = checksum(&out[start..start + 4], &out[start + FRAME_HEADER..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.frame_len());
        self.encode_into(&mut b);
        b.freeze()
    }

    /// Decodes one frame from the front of `buf`; returns the record and the frame length.
    pub fn decode(buf: &[u8]) -> Result<(Record, usize), DecodeError> {
        let (payload, total) = frame(buf)?;
        Ok((decode_payload(payload)?, total))
    }

    /// Checks the frame at the front of `buf` without decoding its payload: its length, its
    /// checksum, and that it holds the record with LSN `lsn`. Returns the frame length. For
    /// frames shipped as they are (a leader's catch-up reads), which the receiver decodes.
    pub fn check_frame(buf: &[u8], lsn: Lsn) -> Result<usize, DecodeError> {
        let (payload, total) = frame(buf)?;
        if payload.len() < 17 {
            return Err(DecodeError::Payload("field runs past the payload"));
        }
        let got = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
        if got != lsn.0 {
            return Err(DecodeError::Payload("the frame holds another LSN"));
        }
        Ok(total)
    }
}

/// The payload of the frame at the front of `buf` (length and checksum verified) and the frame's
/// length.
fn frame(buf: &[u8]) -> Result<(&[u8], usize), DecodeError> {
    {
        if buf.len() < FRAME_HEADER {
            return Err(DecodeError::Incomplete {
                need: FRAME_HEADER,
                have: buf.len(),
            });
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(DecodeError::Length(len));
        }
        let total = FRAME_HEADER + len;
        if buf.len() < total {
            return Err(DecodeError::Incomplete {
                need: total,
                have: buf.len(),
            });
        }
        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let payload = &buf[FRAME_HEADER..total];
        if checksum(&buf[0..4], payload) != crc {
            return Err(DecodeError::Checksum);
        }
        Ok((payload, total))
    }
}

fn checksum(len_bytes: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), payload)
}

fn decode_payload(mut p: &[u8]) -> Result<Record, DecodeError> {
    fn take(p: &mut &[u8], n: usize) -> Result<Bytes, DecodeError> {
        if p.len() < n {
            return Err(DecodeError::Payload("field runs past the payload"));
        }
        let b = Bytes::copy_from_slice(&p[..n]);
        p.advance(n);
        Ok(b)
    }
    fn need(p: &[u8], n: usize) -> Result<(), DecodeError> {
        if p.len() < n {
            Err(DecodeError::Payload("field runs past the payload"))
        } else {
            Ok(())
        }
    }
    need(p, 17)?;
    let epoch = Epoch(p.get_u64_le());
    let lsn = Lsn(p.get_u64_le());
    let op = match p.get_u8() {
        1 => {
            need(p, 4)?;
            let kl = p.get_u32_le() as usize;
            let key = take(&mut p, kl)?;
            need(p, 4)?;
            let vl = p.get_u32_le() as usize;
            let value = take(&mut p, vl)?;
            Op::Put { key, value }
        }
        2 => {
            need(p, 4)?;
            let kl = p.get_u32_le() as usize;
            Op::Delete {
                key: take(&mut p, kl)?,
            }
        }
        3 => {
            need(p, 3)?;
            let lossy = p.get_u8() != 0;
            let n = p.get_u16_le() as usize;
            let id = take(&mut p, n)?;
            let leader = String::from_utf8(id.to_vec())
                .map_err(|_| DecodeError::Payload("leader id is not UTF-8"))?;
            Op::LeaderStart {
                leader: NodeId(leader),
                lossy,
            }
        }
        _ => return Err(DecodeError::Payload("unknown record kind")),
    };
    if !p.is_empty() {
        return Err(DecodeError::Payload("trailing bytes after the record"));
    }
    if lsn.0 == 0 {
        return Err(DecodeError::Payload("LSN 0 is not a record position"));
    }
    Ok(Record { epoch, lsn, op })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(any::<u8>(), 0..200)
            )
                .prop_map(|(k, v)| Op::Put {
                    key: k.into(),
                    value: v.into()
                }),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|k| Op::Delete { key: k.into() }),
            ("[a-z0-9]{1,10}", any::<bool>()).prop_map(|(s, lossy)| Op::LeaderStart {
                leader: NodeId(s),
                lossy
            }),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(epoch in 0u64..u64::MAX, lsn in 1u64..u64::MAX, op in arb_op()) {
            let r = Record { epoch: Epoch(epoch), lsn: Lsn(lsn), op };
            let b = r.encode();
            prop_assert_eq!(b.len(), r.frame_len());
            let (d, n) = Record::decode(&b).expect("decode");
            prop_assert_eq!(n, b.len());
            prop_assert_eq!(d, r);
        }

        #[test]
        fn any_single_bit_flip_is_detected(op in arb_op(), bit in 0usize..10_000) {
            let r = Record { epoch: Epoch(3), lsn: Lsn(9), op };
            let mut b = r.encode().to_vec();
            let bit = bit % (b.len() * 8);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Record::decode(&b).is_err());
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let r = Record {
            epoch: Epoch(1),
            lsn: Lsn(1),
            op: Op::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
            },
        };
        let b = r.encode();
        for cut in 0..b.len() {
            assert!(
                matches!(
                    Record::decode(&b[..cut]),
                    Err(DecodeError::Incomplete { .. })
                ),
                "cut at {cut}"
            );
        }
    }
}
