//! The one door out of a shard: where a delivery goes, and what a full inbox does to it.
//!
//! A room lives on `owner_of(room)`. Whatever must reach a room, a pool instance, a job or a
//! caller's rate bucket goes through here: handled in place when this shard owns it, otherwise
//! pushed to the owner's inbox. The third destination is other nodes: when `[cluster]` is
//! configured, a delivery into a room is published on the broker instead, and every node (this
//! one included) fans it out when it comes back from the room's channel (`cluster.rs`), so
//! a room has one order everywhere. Nothing else in the engine knows about the broker.
//!
//! What a full inbox does to each kind of traffic is declared in [`super::traffic`]; every
//! message that does not get through is counted by the sending shard's probe.
//!
//! Runs on the sending shard.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cluster;
use super::msg::ShardMsg;
use super::shard::Shard;
use super::shared::owner_of;
pub use super::traffic::{Policy, Traffic};

/// Where something keyed by a room name is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// This shard owns it.
    Here,
    /// Another shard does.
    Shard(usize),
}

/// Decides where `room` (or a pool, job or bucket key) is handled. Every delivery asks here.
pub fn dest(shard: &Shard, room: &str) -> Dest {
    match owner(shard, room) {
        o if o == shard.id => Dest::Here,
        o => Dest::Shard(o),
    }
}

/// The shard that owns `room`, for grouping a batch by owner.
pub fn owner(shard: &Shard, room: &str) -> usize {
    owner_of(room, shard.shared.nr_shards)
}

/// Pushes `msg` to `owner`'s inbox without waiting: for [`Policy::Drop`] traffic, whose
/// message is dropped and counted when the inbox is full. Returns whether it was queued.
pub fn send_now(shard: &Shard, owner: usize, msg: ShardMsg, traffic: Traffic) -> bool {
    shard.push_now(owner, msg, traffic)
}

/// Pushes `msg` to `owner`'s inbox by `traffic`'s policy, waiting for room when the policy
/// allows. `Err(msg)` gives the message back (counted) when the policy gives up.
pub async fn send(
    shard: &Shard,
    owner: usize,
    mut msg: ShardMsg,
    traffic: Traffic,
) -> Result<(), ShardMsg> {
    let deadline = match traffic.policy() {
        Policy::Drop => None,
        Policy::Wait(d) => Some(Instant::now() + d),
        Policy::MustArrive => Some(Instant::now() + Duration::MAX / 4),
    };
    let mut attempt = 0u64;
    loop {
        match shard.shared.inboxes[owner].push(msg) {
            Ok(()) => return Ok(()),
            Err(m) => msg = m,
        }
        if deadline.is_none_or(|d| Instant::now() >= d) {
            shard.probe.inbox_full(traffic);
            return Err(msg);
        }
        // A full inbox means the owner is busy: back off so its shard gets the core.
        glommio::timer::sleep(Duration::from_millis(1 + attempt.min(9))).await;
        attempt += 1;
    }
}

/// Fans `frame` out to `room` wherever it lives: through the broker when clustered (returns
/// 0: members are reached when it comes back), in place when this shard owns the room
/// (returns the members reached), otherwise one `Deliver` to the owner (returns 0).
/// `exclude`: a connection of this shard that must not receive it.
pub fn deliver(
    shard: &Shard,
    room: &str,
    frame: Bytes,
    exclude: Option<u64>,
    traffic: Traffic,
) -> usize {
    if cluster::forward(shard, room, &frame, exclude) {
        return 0;
    }
    match dest(shard, room) {
        Dest::Here => shard.deliver(room, &frame, exclude),
        Dest::Shard(owner) => {
            let msg = ShardMsg::Deliver {
                items: vec![(room.to_owned(), frame)],
                exclude: exclude.map(|c| (shard.id, c)),
                reply: None,
            };
            send_now(shard, owner, msg, traffic);
            0
        }
    }
}

/// Fans `frame` out to a connection's home room (its broadcast, its presence): through the
/// broker when clustered, in place on the room's owner, and through the owner for a spread
/// member (`spread.rs`), so the room keeps one order.
pub fn deliver_home(shard: &Shard, room: &str, frame: &Bytes, exclude: Option<u64>) -> usize {
    if cluster::forward(shard, room, frame, exclude) {
        return 0;
    }
    if shard.owns(room) {
        return shard.deliver(room, frame, exclude);
    }
    let msg = ShardMsg::Deliver {
        items: vec![(room.to_owned(), frame.clone())],
        exclude: exclude.map(|c| (shard.id, c)),
        reply: None,
    };
    send_now(shard, owner(shard, room), msg, Traffic::Broadcast);
    0
}

/// Frames grouped by the shard owning their room, so each target shard costs one hop however
/// many rooms it gets. Fire-and-forget ([`Policy::Drop`] traffic).
pub struct Outbox {
    per_shard: Vec<Vec<(String, Bytes)>>,
}

impl Outbox {
    pub fn new(nr_shards: usize) -> Self {
        Outbox {
            per_shard: (0..nr_shards).map(|_| Vec::new()).collect(),
        }
    }

    pub fn push(&mut self, room: String, frame: Bytes) {
        let owner = owner_of(&room, self.per_shard.len());
        self.per_shard[owner].push((room, frame));
    }

    pub fn flush(self, shard: &Shard, traffic: Traffic) {
        for (owner, mut items) in self.per_shard.into_iter().enumerate() {
            items.retain(|(room, frame)| !cluster::forward(shard, room, frame, None));
            if items.is_empty() {
                continue;
            }
            if owner == shard.id {
                for (room, frame) in &items {
                    shard.deliver(room, frame, None);
                }
                continue;
            }
            let msg = ShardMsg::Deliver {
                items,
                exclude: None,
                reply: None,
            };
            send_now(shard, owner, msg, traffic);
        }
    }
}
