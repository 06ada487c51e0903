//! Hot rooms on every core: a room's members on several shards, its owner the one sequencer.
//!
//! A room lives on `owner_of(room)`, and normally so do its members' sockets, so its fan-out
//! never leaves that core. One busy room then uses one core however many the machine has.
//! Once a room has `spread_rooms_at` members (config; the owner announces it in
//! `Shared::hot`), a new socket for it stays on the shard that accepted it (the kernel spreads
//! accepts evenly over the shards' listeners) and becomes a *spread member*:
//!
//! 1. The accepting shard parks the socket and sends the owner `Spread::Join` (this module,
//!    [`join`]).
//! 2. The owner counts one more member on that shard and answers `Spread::Joined` through the
//!    shard's inbox ([`handle`]). From that moment every delivery into the room that the owner
//!    makes ([`Shard::deliver_from`]) is also pushed, after the owner's own fan-out, to that
//!    shard as one `ShardMsg::Fan` carrying the same (stamped) bytes.
//! 3. The member shard reads `Joined` and starts the connection: it joins its shard's list of
//!    the room's members and its `101` is queued. Inboxes are FIFO per sender, so every `Fan`
//!    the owner sends after counting it arrives after `Joined`: the socket misses nothing
//!    published after its `101`, and gets nothing published before its join took effect.
//! 4. When it ends, its shard sends `Spread::Leave`; the owner counts it out.
//!
//! **One order per room.** Everything delivered into the room goes through the owner: a spread
//! member's own broadcast to its home room is a `Deliver` to the owner (`router::deliver`),
//! which fans it out like any other. Each member shard reads the owner's `Fan`s in the order
//! the owner sent them, so every subscriber, on any shard, sees the room's one order. The
//! cost is one inbox hop per message per member shard, and the sender hears its own message
//! (when the room echoes) one hop later than on the owner.
//!
//! **What stays on the owner.** A socket that needs the owner's state when it joins is handed
//! to the owner as before: presence (`on_join` / `on_leave`: the per-user counts live there),
//! resuming from a position (the history is read in the join's turn), and latest-value rooms
//! (the snapshot and conflation keys), and rooms whose history lives in Redis (the owner
//! watches their positions for gaps). `Shared::hot` is only a placement hint: any room may
//! have spread members, and everything above holds for any placement (`spread_rooms_at = 1`
//! spreads every room that can be, which the tests use).
//!
//! With `[cluster]`, the owner subscribes to the room's broker channel while it has members on
//! this node, spread ones included, and waits for the subscription before it answers `Joined`.
//!
//! Runs on every shard: the member side on the shard a socket stays on, the owner side on the
//! room's owner.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use super::fd::OwnedSocket;
use super::msg::{Admitted, ShardMsg, Spread};
use super::router::{self, Traffic};
use super::shard::Shard;
use crate::history::store::Since;

/// How long a parked socket waits for its owner's `Joined` before it is refused as overloaded:
/// as long as a handoff may wait for room in a full inbox.
pub const JOIN_WAIT: Duration = Duration::from_secs(2);

thread_local! {
    /// Sockets waiting for their room's owner to say `Joined`, by key. Owned by the shard
    /// they were accepted on.
    static PARKED: RefCell<HashMap<u64, (OwnedSocket, Admitted)>> = RefCell::new(HashMap::new());
    static NEXT_KEY: Cell<u64> = const { Cell::new(1) };
}

/// Whether an upgraded socket for a room this shard does not own should stay here as a
/// spread member. Only sockets that need nothing from the owner's state to join.
pub fn wanted(shard: &Shard, a: &Admitted) -> bool {
    let shared = &*shard.shared;
    let at = shared.config.spread_rooms_at;
    if at == 0 || shared.nr_shards < 2 || a.since != Since::Fresh {
        return false;
    }
    let proto = &shared.proto;
    let ep = &proto.endpoints[a.endpoint];
    if !ep.on_join.is_empty() || !ep.on_leave.is_empty() {
        return false;
    }
    if proto
        .history_for(&a.room)
        .is_some_and(|h| proto.history[h].latest_by.is_some())
    {
        return false;
    }
    // History in Redis: the owner checks each position against the last one its members saw
    // and closes them on a gap, which it can only do for members of its own.
    if shard.history_in_redis(&a.room).is_some() {
        return false;
    }
    at == 1 || shared.is_hot(&a.room)
}

/// Parks the socket and asks `owner` to count it in. `Ok(key)`: parked under `key` until the
/// owner's `Joined` ([`unpark`]); the caller refuses it if that does not come within
/// [`JOIN_WAIT`]. `Err` gives the socket back when the owner's inbox stayed full.
pub async fn join(
    shard: &Rc<Shard>,
    owner: usize,
    socket: OwnedSocket,
    admitted: Admitted,
) -> Result<u64, (OwnedSocket, Admitted)> {
    let key = NEXT_KEY.with(|k| k.replace(k.get() + 1));
    let room = admitted.room.clone();
    PARKED.with(|p| p.borrow_mut().insert(key, (socket, admitted)));
    let msg = ShardMsg::Spread(Spread::Join {
        room,
        from: shard.id,
        key,
    });
    match router::send(shard, owner, msg, Traffic::SpreadJoin).await {
        Ok(()) => Ok(key),
        Err(_) => Err(unpark(key).expect("parked above; only the owner's Joined unparks")),
    }
}

/// The socket parked under `key`, if it is still waiting: taken by the owner's `Joined`, or
/// by the refusal after [`JOIN_WAIT`], whichever comes first.
pub fn unpark(key: u64) -> Option<(OwnedSocket, Admitted)> {
    PARKED.with(|p| p.borrow_mut().remove(&key))
}

/// A spread member of `room` ended on this shard: tells the room's owner.
pub fn left(shard: &Rc<Shard>, room: &str) {
    let owner = router::owner(shard, room);
    let (shard, room) = (shard.clone(), room.to_owned());
    // Must arrive, so it may wait: never in the caller's turn.
    glommio::spawn_local(async move {
        let msg = ShardMsg::Spread(Spread::Leave {
            room,
            from: shard.id,
        });
        let _ = router::send(&shard, owner, msg, Traffic::SpreadLeave).await;
    })
    .detach();
}

/// Membership traffic: `Join` and `Leave` on the room's owner; `Joined` on the member shard,
/// which gets back the parked socket to start (`runtime::handle` starts it: connections are
/// `conn.rs`'s, which this module does not reach).
pub fn handle(shard: &Rc<Shard>, msg: Spread) -> Option<(OwnedSocket, Admitted)> {
    match msg {
        Spread::Join { room, from, key } => match super::cluster::room_wanted(&room) {
            None => count_in(shard, room, from, key),
            Some(subscribed) => {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    subscribed.await;
                    count_in(&shard, room, from, key);
                })
                .detach();
            }
        },
        Spread::Joined { room, key } => {
            let parked = unpark(key);
            if parked.is_none() {
                // Refused after its wait: the owner counted a member that is not there.
                left(shard, &room);
            }
            return parked;
        }
        Spread::Leave { room, from } => {
            shard.spread_member(&room, from, false);
            super::cluster::room_left(shard, &room);
            super::channel_layer::room_left(shard, &room);
        }
    }
    None
}

/// The owner counts one more member of `room` on `from` and answers `Joined` in the same
/// turn, so every `Fan` for the room from now on reaches `from` after it.
fn count_in(shard: &Rc<Shard>, room: String, from: usize, key: u64) {
    shard.spread_member(&room, from, true);
    super::channel_layer::room_joined(shard, &room);
    let msg = ShardMsg::Spread(Spread::Joined {
        room: room.clone(),
        key,
    });
    if !router::send_now(shard, from, msg, Traffic::SpreadAck) {
        // The member shard refuses the socket after its wait; count it out again.
        shard.spread_member(&room, from, false);
        super::cluster::room_left(shard, &room);
        super::channel_layer::room_left(shard, &room);
    }
}
