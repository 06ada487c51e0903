//! Which Redis a room's channel and keys live on, when `[cluster]` lists several Redis
//! instances or a Redis Cluster. Sans-IO: hashing, slots, and reading `CLUSTER SLOTS`.
//!
//! **Partitions.** A clustered node sees its broker as `n` partitions, and every name (a room,
//! a user) belongs to exactly one: [`index`], a jump consistent hash (Lamping & Veach, "A
//! Fast, Minimal Memory, Consistent Hash Algorithm", 2014) of the name's FNV-1a 64-bit hash,
//! as Centrifuge does. Everything about one room (its channel, its history, its presence) is
//! on its partition, so one Redis script can touch all of it and one channel orders it. Jump
//! hash moves only `1/(n+1)` of the names when a partition is added, and none between the old
//! ones; every node must list the same partitions in the same order.
//!
//! - **Several standalone Redis** (`url = [...]`): partition `p` is the `p`-th instance. Names
//!   of keys and channels are those of a single Redis.
//! - **Redis Cluster** (`redis_cluster = true`): partition `p` is the hash tag `{p}` ([`tag`]),
//!   written into every key and channel name of the partition, so they all hash to one slot
//!   ([`slot`]) and live on the master that serves it. A partition's channels are sharded
//!   PUB/SUB channels (`SPUBLISH`/`SSUBSCRIBE`, Redis 7), read on one connection to that
//!   master: `n` subscribe connections per shard however many rooms there are. Which master
//!   serves a slot is read from `CLUSTER SLOTS` ([`parse_slots`], [`master_for`]) whenever a
//!   partition's link connects; a `MOVED` answer ([`is_redirect`]) makes it connect again.

use super::resp::Value;

/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16384;

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Jump consistent hash: the bucket of `key` among `buckets` (at least 1).
pub fn jump(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

/// The partition of a room or user name among `n`.
pub fn index(name: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    jump(fnv1a64(name.as_bytes()), n)
}

/// Partition `p`'s hash tag on Redis Cluster.
pub fn tag(p: usize) -> String {
    format!("{{{p}}}")
}

/// CRC-16/XMODEM (polynomial 0x1021, initial 0), the checksum behind Redis Cluster's slots.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a key or shard channel: of its hash tag (the text between the first `{` and
/// the next `}`, when not empty), otherwise of the whole name.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// One range of slots and the master serving it, from `CLUSTER SLOTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub first: u16,
    pub last: u16,
    /// Empty when the node did not announce an address: the node that answered serves it.
    pub host: String,
    pub port: u16,
}

/// Reads a `CLUSTER SLOTS` answer: `[[first, last, [host, port, id, ...], replicas...]...]`.
pub fn parse_slots(v: &Value) -> Result<Vec<SlotRange>, String> {
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let ranges = v.as_items().ok_or("CLUSTER SLOTS: not an array")?;
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let items = r.as_items().filter(|i| i.len() >= 3);
        let items = items.ok_or("CLUSTER SLOTS: a range without a master")?;
        let (Some(first), Some(last)) = (int(&items[0]), int(&items[1])) else {
            return Err("CLUSTER SLOTS: a range without bounds".into());
        };
        let master = items[2]
            .as_items()
            .filter(|m| m.len() >= 2)
            .ok_or("CLUSTER SLOTS: a master without an address")?;
        let host = match &master[0] {
            Value::Null => String::new(),
            h => {
                let b = h
                    .as_bytes()
                    .ok_or("CLUSTER SLOTS: a host that is not text")?;
                String::from_utf8_lossy(b).into_owned()
            }
        };
        // "?" is Redis's word for an unknown endpoint: the answering node's own address.
        let host = if host == "?" { String::new() } else { host };
        let port = int(&master[1]).ok_or("CLUSTER SLOTS: a port that is not a number")?;
        out.push(SlotRange {
            first,
            last,
            host,
            port,
        });
    }
    Ok(out)
}

/// The master serving `slot`, if the table covers it.
pub fn master_for(ranges: &[SlotRange], slot: u16) -> Option<&SlotRange> {
    ranges.iter().find(|r| r.first <= slot && slot <= r.last)
}

/// A Redis error that means "this slot is served elsewhere": the link must learn the table
/// again (`MOVED`, and `ASK` during a slot's migration).
pub fn is_redirect(error: &str) -> bool {
    error.starts_with("MOVED ") || error.starts_with("ASK ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    #[test]
    fn slots_match_redis() {
        // Values from Redis's own `CLUSTER KEYSLOT` (and the CRC-16/XMODEM check value).
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"hello"), 866);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // An empty tag is no tag; only the first `{` counts.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"beacon.{3}.room.lobby"), slot(b"3"));
    }

    #[test]
    fn cluster_slots_answer_reads() {
        let b = |s: &str| Value::Bulk(Bytes::copy_from_slice(s.as_bytes()));
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![b("127.0.0.1"), Value::Int(7000), b("id1")]),
                Value::Array(vec![b("127.0.0.1"), Value::Int(7003), b("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![b("?"), Value::Int(7001), b("id2")]),
            ]),
        ]);
        let r = parse_slots(&v).unwrap();
        assert_eq!(master_for(&r, 0).unwrap().port, 7000);
        assert_eq!(master_for(&r, 5460).unwrap().port, 7000);
        assert_eq!(master_for(&r, 5461).unwrap().port, 7001);
        assert_eq!(master_for(&r, 5461).unwrap().host, "");
        assert!(parse_slots(&Value::Int(1)).is_err());
        assert!(parse_slots(&Value::Array(vec![Value::Array(vec![Value::Int(0)])])).is_err());
        assert!(master_for(&[], 1).is_none());
        assert!(is_redirect("MOVED 3999 127.0.0.1:6381"));
        assert!(is_redirect("ASK 3999 127.0.0.1:6381"));
        assert!(!is_redirect("ERR unknown command"));
    }

    #[test]
    fn names_spread_over_partitions() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[index(&format!("room-{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(index("anything", 1), 0);
        assert_eq!(index("anything", 0), 0);
        // The tags of the default 16 partitions do not all share one slot.
        let slots: std::collections::HashSet<u16> =
            (0..16).map(|p| slot(tag(p).as_bytes())).collect();
        assert_eq!(slots.len(), 16);
    }

    proptest! {
        /// Growing from n to n + 1 partitions moves a name only into the new one.
        #[test]
        fn jump_is_consistent(key: u64, n in 1usize..200) {
            let before = jump(key, n);
            let after = jump(key, n + 1);
            prop_assert!(before < n);
            prop_assert!(after == before || after == n);
        }
    }
}
