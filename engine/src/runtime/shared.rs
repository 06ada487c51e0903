//! What every shard reads: the frozen protocol and config, verifiers, the inboxes and probes,
//! the process-wide connection caps; and the one function that names a room's owner shard.
//! Built once at startup. Crosses shards (Send + Sync).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use super::client_ip;
use super::inbox::Inbox;
use super::msg::ShardMsg;
use super::probe::Probe;
use crate::auth::Verifier;
use crate::config::Config;
use crate::protocol::Protocol;
use crate::ws::codec;

/// The only place a shard id is computed: FNV-1a of the room name, modulo the shard count.
/// FNV is stable across builds and platforms, so a room's owner never depends on a hasher seed.
pub fn owner_of(room: &str, nr_shards: usize) -> usize {
    (fnv1a(room) % nr_shards.max(1) as u64) as usize
}

fn fnv1a(room: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Buckets of [`Shared::hot`]: rooms sharing one are all taken for hot while one of them is,
/// which only places a few more sockets off their room's owner (always correct, see
/// `runtime/spread.rs`).
const HOT_BUCKETS: usize = 1024;

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Built once at startup, read by every shard. Crosses shards (Send + Sync).
pub struct Shared {
    pub proto: Arc<Protocol>,
    pub config: Config,
    /// One verifier per protocol token kind, by `TokenId`.
    pub verifiers: Vec<Verifier>,
    pub api_key: Option<String>,
    pub inboxes: Vec<Inbox<ShardMsg>>,
    pub probes: Vec<Arc<Probe>>,
    pub draining: AtomicBool,
    pub nr_shards: usize,
    pub ip_limiter: Arc<client_ip::ConnLimiter>,
    pub user_limiter: Arc<client_ip::ConnLimiter>,
    /// Rooms with at least `spread_rooms_at` members, by hash bucket: a count of such rooms
    /// per bucket, written by the rooms' owners and read by accepting shards to decide where
    /// a new socket lives (`runtime/spread.rs`).
    hot: Box<[AtomicU32]>,
}

impl Shared {
    fn hot_bucket(room: &str) -> usize {
        // The high half: the low half picks the owner shard, so rooms of one owner would
        // crowd a few buckets.
        ((fnv1a(room) >> 32) as usize) % HOT_BUCKETS
    }

    /// Whether `room` is (probably) hot: a placement hint, never a correctness question.
    pub fn is_hot(&self, room: &str) -> bool {
        self.hot[Self::hot_bucket(room)].load(Ordering::Relaxed) > 0
    }

    /// The owner of `room` says it became hot (`true`) or cooled down.
    pub fn set_hot(&self, room: &str, hot: bool) {
        let b = &self.hot[Self::hot_bucket(room)];
        if hot {
            b.fetch_add(1, Ordering::Relaxed);
        } else {
            b.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn ws_limits(&self) -> codec::Limits {
        codec::Limits {
            max_frame_bytes: self.proto.limits.max_frame_bytes,
            max_message_bytes: self.proto.limits.max_message_bytes,
        }
    }

    pub fn new(
        proto: Arc<Protocol>,
        config: Config,
        verifiers: Vec<Verifier>,
        api_key: Option<String>,
        nr_shards: usize,
    ) -> Self {
        let mut codes: Vec<u16> = proto.closes.iter().map(|c| c.code).collect();
        codes.extend([1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1013]);
        let ip_limiter = Arc::new(client_ip::ConnLimiter::new(config.max_connections_per_ip));
        let user_limiter = Arc::new(client_ip::ConnLimiter::new(
            proto.limits.max_connections_per_user,
        ));
        Shared {
            inboxes: (0..nr_shards).map(|_| Inbox::new(16 * 1024)).collect(),
            probes: (0..nr_shards)
                .map(|i| Arc::new(Probe::new(i, &codes)))
                .collect(),
            proto,
            config,
            verifiers,
            api_key,
            draining: AtomicBool::new(false),
            nr_shards,
            ip_limiter,
            user_limiter,
            hot: (0..HOT_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}
