//! Everything one shard sends another: owned values only (Send), so nothing on the data path
//! is shared between threads. The router (`router.rs`) decides where each goes.

use bytes::Bytes;

use super::client_ip;
use super::fd;
use crate::auth::Identity;
use crate::geo::{Position, Radius};
use crate::history::store::Since;
use crate::session::GeoEffect;

/// What the accepting shard learned about a socket before handing it over. Crosses shards
/// (Send).
#[derive(Debug)]
pub struct Admitted {
    pub endpoint: usize,
    pub params: Vec<String>,
    pub identity: Option<Identity>,
    pub room: String,
    /// The client's address (behind trusted proxies, the one they forwarded). For logs.
    pub client: std::net::IpAddr,
    /// The client's place in the per-IP cap, held until the connection ends.
    pub ip_slot: Option<client_ip::ConnSlot>,
    /// The user's place under `max_connections_per_user`, released when the socket ends.
    pub user_slot: Option<client_ip::ConnSlot>,
    /// The user's place under the cap across nodes (`[cluster]` on Redis), released likewise.
    pub cluster_slot: Option<UserSlot>,
    /// Bytes read past the request head (early frames), to be decoded by the owner.
    pub leftover: Vec<u8>,
    /// The home room position the client resumes from (`[resume]`'s query parameters).
    pub since: Since,
    /// The `101 Switching Protocols` response, when it has not been sent yet. The owner sends
    /// it after the socket has joined its room, so a publish that follows the client's `open`
    /// event always finds the socket.
    pub handshake: Option<Vec<u8>>,
}

/// A user's place under `max_connections_per_user` across nodes (`cluster.rs`); dropping it
/// runs `release` on the shard where the socket ended, which gives the place back on the
/// broker. Crosses shards (Send).
pub struct UserSlot {
    pub user: String,
    pub release: fn(&str),
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        (self.release)(&self.user);
    }
}

impl std::fmt::Debug for UserSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSlot").finish_non_exhaustive()
    }
}

/// Crosses shards (Send).
#[derive(Debug)]
pub struct Handoff {
    pub socket: fd::OwnedSocket,
    pub admitted: Admitted,
}

/// Work run on another shard's thread, for state that shard owns (e.g. a per-caller rate
/// limit); the closure owns everything it needs.
pub type ShardJob = Box<dyn FnOnce() + Send>;

/// Everything one shard asks of another. Crosses shards (Send): owned values only.
pub enum ShardMsg {
    /// An upgraded socket whose home room this shard owns.
    Handoff(Box<Handoff>),
    /// Frames for rooms this shard owns, each already encoded once. `exclude` names a
    /// connection (shard, id) that must not receive them; `reply` gets per-item counts.
    Deliver {
        items: Vec<(String, Bytes)>,
        exclude: Option<(usize, u64)>,
        reply: Option<futures::channel::oneshot::Sender<Vec<usize>>>,
    },
    /// Run on the target shard's thread (work keyed to a value whose owner is that shard).
    Run(ShardJob),
    /// A geo update, search, query or job for the shard that owns the pool instance or job.
    Geo(Box<GeoMsg>),
    /// A spread room's message, sequenced (and stamped) by the room's owner, for its members
    /// on this shard. `exclude` as in `Deliver`.
    Fan {
        room: std::sync::Arc<str>,
        frame: Bytes,
        exclude: Option<ConnRef>,
    },
    /// Membership of spread rooms between a member shard and the room's owner
    /// (`spread.rs`).
    Spread(Spread),
    /// Stop accepting and drain.
    Shutdown,
}

/// Membership of a spread room, between the shard a socket stays on and the room's owner.
/// Crosses shards (Send).
#[derive(Debug)]
pub enum Spread {
    /// To the owner: a socket of shard `from` waits (under `key`) to join `room`.
    Join { room: String, from: usize, key: u64 },
    /// To the member shard: from now on the owner sends it `room`'s messages; the socket
    /// parked under `key` joins.
    Joined { room: String, key: u64 },
    /// To the owner: one member of `room` on shard `from` left.
    Leave { room: String, from: usize },
}

/// A connection, as (shard, connection id): who put a provider or search in, so that only
/// that connection's end takes it out. Crosses shards (Send).
pub type ConnRef = (usize, u64);

/// A matched provider as the dispatch endpoint receives it. Crosses shards (Send).
#[derive(Debug, Clone)]
pub struct Nearby {
    pub provider: String,
    pub pos: Position,
    pub distance_km: f64,
    pub sub: String,
}

/// The name whose owner holds a pool instance (`owner_of` of it picks the shard).
pub fn pool_room(proto: &crate::protocol::Protocol, pool: usize, key: &str) -> String {
    format!("geo:{}:{key}", proto.geo.pools[pool].name)
}

/// The name whose owner holds a dispatched job.
pub fn job_room(proto: &crate::protocol::Protocol, dispatch: usize, job: &str) -> String {
    format!("job:{}:{job}", proto.geo.dispatches[dispatch].name)
}

/// Whether a connection's geo effect is news or what it said before. Crosses shards (Send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Live,
    /// Re-sent to a new geo home (`cluster_geo::resync`): changes nothing, and tells nobody,
    /// when the pool already holds exactly this from this connection.
    Again,
}

/// A geo request for the shard that owns a pool instance or job. Crosses shards (Send).
pub enum GeoMsg {
    /// A connection's geo effect; `room` is its home room.
    Conn {
        effect: GeoEffect,
        room: String,
        conn: ConnRef,
        sent: Sent,
    },
    /// The dispatch endpoint asks for the nearest matching providers.
    Nearest {
        pool: usize,
        key: String,
        centre: Position,
        radius: Radius,
        sub: Option<String>,
        max: usize,
        reply: futures::channel::oneshot::Sender<Vec<Nearby>>,
    },
    /// Every connection of a dead node (`ConnRef`s whose shard part is `node << 16 | shard`,
    /// see `cluster_geo.rs`) leaves this shard's pool instances.
    NodeGone { node: usize },
    /// This node stopped being the geo home: every pool instance and job goes.
    Reset,
    /// For every shard, from its node's shard 0 each second while a geo home advertises
    /// `epoch`: a shard that has not re-sent its connections' geo state for this epoch (or
    /// whose geo publish failed since) re-sends it (`cluster_geo::resync`).
    Resync { epoch: String },
    /// A job was offered to `notified` (user id, room); `taken` is the frame they get once
    /// one of them accepts.
    JobCreate {
        dispatch: usize,
        job: String,
        seeker_room: String,
        notified: Vec<(String, String)>,
        taken: Bytes,
        ttl_ms: u64,
    },
}
