//! One delivery on a broker channel, and the channel names. Sans-IO.
//!
//! A delivery crosses nodes as the WebSocket frame every member receives, already encoded
//! (server frames are unmasked, so the bytes are the same on every node), behind a small
//! header. Receiving nodes fan the frame out as they would a local one: no JSON, no re-encode.
//!
//! ```text
//! byte 0      version (1, or 2 for a frame positioned in its room's history)
//! byte 1      flags: bit 0 = an excluded connection follows
//! byte 2      n = length of the sending node's id (1..=64)
//! 3..3+n      the sending node's id (ASCII)
//! [flag 0]    u16 shard, u64 connection (big-endian): the sender, who must not receive it
//! [version 2] u64 offset, u64 epoch (big-endian): the frame's position, already written in it
//! rest        the encoded WebSocket frame
//! ```
//!
//! Version 2 is written by the cluster's Redis history script (`runtime/cluster_history.rs`),
//! which decides the position once for every node: [`head`] is what the node hands it, and the
//! script appends the position and the stamped frame. A node that does not know version 2
//! drops it (counted), as it must any envelope it cannot read.
//!
//! The room is not in the envelope: it is the channel's name (`<prefix>.room.<room>`), and
//! a Redis channel name is any bytes, so a room name needs no escaping there.

use bytes::Bytes;

pub const VERSION: u8 = 1;
/// An envelope whose frame carries its position in its room's history.
pub const VERSION_POSITIONED: u8 = 2;
const FLAG_EXCLUDE: u8 = 1;
/// Longest node id (config validation keeps ids within this).
pub const MAX_NODE_ID: usize = 64;

/// A parsed envelope, borrowing the received bytes; `frame` shares them (no copy).
#[derive(Debug, PartialEq)]
pub struct Envelope<'a> {
    pub node: &'a [u8],
    pub exclude: Option<(u16, u64)>,
    /// (offset, epoch) of a frame positioned in its room's history (version 2).
    pub position: Option<(u64, u64)>,
    pub frame: Bytes,
}

/// Why a received payload was not a delivery (counted and dropped by the receiver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope version {0} is not known to this node")]
    Version(u8),
    #[error("envelope shorter than its header")]
    Truncated,
}

/// Writes the envelope for `frame` sent by `node` (excluding `exclude`, a connection of the
/// sending shard).
pub fn encode(node: &str, exclude: Option<(u16, u64)>, frame: &[u8]) -> Vec<u8> {
    let mut out = header(VERSION, node, exclude, frame.len());
    out.extend_from_slice(frame);
    out
}

/// The start of a version-2 envelope, up to where the position goes.
pub fn head(node: &str, exclude: Option<(u16, u64)>) -> Vec<u8> {
    header(VERSION_POSITIONED, node, exclude, 0)
}

fn header(version: u8, node: &str, exclude: Option<(u16, u64)>, room: usize) -> Vec<u8> {
    let node = &node.as_bytes()[..node.len().min(MAX_NODE_ID)];
    let mut out = Vec::with_capacity(3 + node.len() + 10 + room);
    out.push(version);
    out.push(if exclude.is_some() { FLAG_EXCLUDE } else { 0 });
    out.push(node.len() as u8);
    out.extend_from_slice(node);
    if let Some((shard, conn)) = exclude {
        out.extend_from_slice(&shard.to_be_bytes());
        out.extend_from_slice(&conn.to_be_bytes());
    }
    out
}

/// Reads an envelope received on a room channel. `payload` is kept whole; the frame is a slice
/// of it.
pub fn decode(payload: &Bytes) -> Result<Envelope<'_>, EnvelopeError> {
    let p = &payload[..];
    let (&version, rest) = p.split_first().ok_or(EnvelopeError::Truncated)?;
    if version != VERSION && version != VERSION_POSITIONED {
        return Err(EnvelopeError::Version(version));
    }
    let [flags, n, ..] = *rest else {
        return Err(EnvelopeError::Truncated);
    };
    let mut at = 3 + n as usize;
    let node = p.get(3..at).ok_or(EnvelopeError::Truncated)?;
    let exclude = if flags & FLAG_EXCLUDE != 0 {
        let b = p.get(at..at + 10).ok_or(EnvelopeError::Truncated)?;
        at += 10;
        Some((
            u16::from_be_bytes([b[0], b[1]]),
            u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
        ))
    } else {
        None
    };
    let position = if version == VERSION_POSITIONED {
        let b = p.get(at..at + 16).ok_or(EnvelopeError::Truncated)?;
        at += 16;
        Some((
            u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
        ))
    } else {
        None
    };
    Ok(Envelope {
        node,
        exclude,
        position,
        frame: payload.slice(at..),
    })
}

/// The broker channel of `room`.
pub fn room_channel(prefix: &str, room: &str) -> Vec<u8> {
    [prefix.as_bytes(), b".room.", room.as_bytes()].concat()
}

/// The room a channel named by [`room_channel`] carries; `None` for any other channel.
pub fn channel_room<'a>(prefix: &str, channel: &'a [u8]) -> Option<&'a str> {
    let rest = channel.strip_prefix(prefix.as_bytes())?;
    std::str::from_utf8(rest.strip_prefix(b".room.")?).ok()
}

/// A shard's own service channel: its liveness probes travel here, so a subscription that
/// silently stopped delivering is noticed.
pub fn service_channel(prefix: &str, node: &str, shard: usize) -> Vec<u8> {
    format!("{prefix}.node.{node}.{shard}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_with_and_without_exclude() {
        let f = b"\x81\x02hi";
        for ex in [None, Some((3u16, 0xdead_beef_u64))] {
            let wire = Bytes::from(encode("node-a", ex, f));
            let e = decode(&wire).unwrap();
            assert_eq!(e.node, b"node-a");
            assert_eq!(e.exclude, ex);
            assert_eq!(&e.frame[..], f);
        }
        assert_eq!(encode("n", None, b"x"), b"\x01\x00\x01nx");
    }

    #[test]
    fn positioned_envelopes_carry_offset_and_epoch() {
        for ex in [None, Some((1u16, 9u64))] {
            let mut wire = head("node-b", ex);
            wire.extend_from_slice(&7u64.to_be_bytes());
            wire.extend_from_slice(&u64::MAX.to_be_bytes());
            wire.extend_from_slice(b"\x81\x01x");
            let wire = Bytes::from(wire);
            let e = decode(&wire).unwrap();
            assert_eq!((e.node, e.exclude), (&b"node-b"[..], ex));
            assert_eq!(e.position, Some((7, u64::MAX)));
            assert_eq!(&e.frame[..], b"\x81\x01x");
        }
        assert_eq!(
            decode(&Bytes::from_static(b"\x02\x00\x01n\x00\x00")),
            Err(EnvelopeError::Truncated)
        );
    }

    #[test]
    fn unknown_versions_and_truncation_are_errors() {
        assert_eq!(
            decode(&Bytes::from_static(b"\x03\x00\x01nx")),
            Err(EnvelopeError::Version(3))
        );
        for bad in [
            &b""[..],
            b"\x01",
            b"\x01\x00",
            b"\x01\x00\x05ab",
            b"\x01\x01\x01n\x00",
        ] {
            assert_eq!(
                decode(&Bytes::copy_from_slice(bad)),
                Err(EnvelopeError::Truncated)
            );
        }
    }

    #[test]
    fn channels_name_rooms_both_ways() {
        let c = room_channel("beacon", "booking:42.x");
        assert_eq!(c, b"beacon.room.booking:42.x");
        assert_eq!(channel_room("beacon", &c), Some("booking:42.x"));
        assert_eq!(channel_room("other", &c), None);
        assert_eq!(
            channel_room("beacon", &service_channel("beacon", "n1", 0)),
            None
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let b = Bytes::from(data);
            if let Ok(e) = decode(&b) {
                prop_assert!(e.frame.len() <= b.len());
            }
        }
    }
}
