//! Presence per user across nodes (`[cluster]` on Redis): a user is online in a room while any
//! socket of theirs is open in it on any live node.
//!
//! Each room that announces presence has a hash `<prefix>.presence.<room>` of `<user>|<node>`
//! -> open sockets. A socket's arrival and departure are one Lua script each, so two sockets
//! of one user arriving (or leaving) at once on two nodes see one first arrival (one last
//! departure) between them. The scripts look up the user's field for each live node, not the
//! whole room: the partition's node hash (`<prefix>.nodes`, [`cluster::nodes_key`]) names the
//! nodes, and a node is live while its alive key (`<prefix>.alive.<node>`, shard 0 renews it
//! every 5 s with a 15 s expiry; the per-user caps use it too) exists, so a killed node's
//! sockets stop counting 15 s after it died. Only an arrival on an endpoint that lists who is
//! online reads the whole room (its answer is that long anyway), dropping dead nodes' fields.
//!
//! Fails open: when Redis does not answer in time the per-shard count (`conn.rs`) decides, as
//! on a lone node, counted in `beacon_broker_fallbacks_total{what="presence"}`.
//!
//! Exists on every shard (no state of its own: the counts live in Redis).

use bytes::Bytes;

use std::time::Duration;

use super::cluster;
use super::probe::{BrokerFailure, BrokerFallback};
use super::shard::Shard;
use crate::broker::envelope;
use crate::config::BrokerKind;

/// The nodes that may hold sockets in rooms of this partition (KEYS[2], a hash of node names
/// each node adds itself to), minus those whose alive key is gone (dropped from the hash), plus
/// this node (ARGV[2]). Shared by [`ARRIVE`] and [`DEPART`]: their cost is one read per node,
/// not per member, so a reconnect storm into a busy room does not stall Redis.
macro_rules! live_nodes_lua {
    () => {
        r#"
local live = {}
for _, n in ipairs(redis.call('HKEYS', KEYS[2])) do
  if n == ARGV[2] or redis.call('EXISTS', ARGV[3] .. n) == 1 then
    table.insert(live, n)
  else
    redis.call('HDEL', KEYS[2], n)
  end
end
"#
    };
}

/// Counts a socket in. KEYS: the room's presence hash, the partition's node hash. ARGV: user,
/// node, alive-key prefix, `1` to list the others online. Returns `"1"` (the user's first
/// socket on a live node) or `"0"`, then (when asked) the other online users, each after a
/// `\n`. Listing reads the whole room (its answer is that long anyway) and drops the fields of
/// dead nodes it meets.
const ARRIVE: &[u8] = concat!(
    live_nodes_lua!(),
    r#"
if redis.call('HSETNX', KEYS[2], ARGV[2], 1) == 1 then
  table.insert(live, ARGV[2])
end
redis.call('EXPIRE', KEYS[2], 86400)
local mine = 0
for _, n in ipairs(live) do
  mine = mine + tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. '|' .. n) or '0')
end
redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 1)
redis.call('EXPIRE', KEYS[1], 86400)
local out = {'0'}
if mine <= 0 then out[1] = '1' end
if ARGV[4] == '1' then
  local alive = {}
  for _, n in ipairs(live) do alive[n] = true end
  local seen = {}
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    local f = fields[i]
    local at = string.find(f, '|[^|]*$')
    local user = string.sub(f, 1, at - 1)
    local node = string.sub(f, at + 1)
    if not alive[node] then
      redis.call('HDEL', KEYS[1], f)
    elseif tonumber(fields[i + 1]) > 0 and user ~= ARGV[1] and not seen[user] then
      seen[user] = true
      table.insert(out, user)
    end
  end
end
return table.concat(out, '\n')
"#
)
.as_bytes();

/// Counts a socket out. KEYS and ARGV[1..3] as [`ARRIVE`]. Returns 1 when the user has no
/// socket left on any live node, and then publishes the farewell envelopes (`ARGV[6..]`) on
/// the room's channel (`ARGV[4]`, with the publish command `ARGV[5]`) in the same step, so an
/// `online` decided after this count-out is always published after the `offline`.
const DEPART: &[u8] = concat!(
    live_nodes_lua!(),
    r#"
local f = ARGV[1] .. '|' .. ARGV[2]
if redis.call('HINCRBY', KEYS[1], f, -1) <= 0 then
  redis.call('HDEL', KEYS[1], f)
end
for _, n in ipairs(live) do
  if tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. '|' .. n) or '0') > 0 then
    return 0
  end
end
for i = 6, #ARGV do
  redis.call(ARGV[5], ARGV[4], ARGV[i])
end
return 1
"#
)
.as_bytes();

/// How often a count-out that could not be sent is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What a socket's arrival found across the cluster.
pub struct Arrival {
    /// The user had no other socket in the room on any live node.
    pub first: bool,
    /// The other users online in the room, on any node.
    pub others: Vec<Box<str>>,
}

/// Presence is counted in Redis: clustered on Redis. (Core NATS has no store: there each
/// node counts its own sockets.)
pub fn enabled(shard: &Shard) -> bool {
    shard
        .shared
        .config
        .cluster
        .as_ref()
        .is_some_and(|c| c.broker == BrokerKind::Redis)
}

/// The room's channel and `frames` as envelopes from this node, for [`DEPART`] to publish.
fn farewell_args(shard: &Shard, room: &str, frames: &[Bytes]) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let c = shard.shared.config.cluster.as_ref()?;
    Some((
        envelope::room_channel(&cluster::keyspace(shard, Some(room))?, room),
        frames
            .iter()
            .map(|f| envelope::encode(&c.node_id, None, f))
            .collect(),
    ))
}

/// What both scripts name: the room's presence hash, the partition's node hash, this node,
/// and the alive keys' prefix.
struct Keys {
    presence: Vec<u8>,
    nodes: Vec<u8>,
    node: Vec<u8>,
    alive: Vec<u8>,
}

fn keys(shard: &Shard, room: &str) -> Option<Keys> {
    let c = shard.shared.config.cluster.as_ref()?;
    // The room's partition: its channel, presence hash, node hash and alive keys share a slot.
    let space = cluster::keyspace(shard, Some(room))?;
    Some(Keys {
        presence: format!("{space}.presence.{room}").into_bytes(),
        nodes: cluster::nodes_key(&space),
        node: c.node_id.clone().into_bytes(),
        alive: format!("{space}.alive.").into_bytes(),
    })
}

/// Counts a socket of `user` in `room`, and lists the others online when `list` (the endpoint
/// sends an `online` message per user); `None` when Redis did not answer (the caller falls
/// back to the per-shard count).
pub async fn arrive(shard: &Shard, room: &str, user: &str, list: bool) -> Option<Arrival> {
    let k = keys(shard, room)?;
    let list: &[u8] = if list { b"1" } else { b"0" };
    let args: [&[u8]; 9] = [
        b"EVAL",
        ARRIVE,
        b"2",
        &k.presence,
        &k.nodes,
        user.as_bytes(),
        &k.node,
        &k.alive,
        list,
    ];
    let Ok(text) = cluster::command_text(Some(room), &args).await else {
        shard.probe.broker.fell_back(BrokerFallback::Presence);
        return None;
    };
    let text = std::str::from_utf8(&text).ok()?;
    let mut lines = text.split('\n');
    let first = lines.next()? == "1";
    Some(Arrival {
        first,
        others: lines.filter(|u| !u.is_empty()).map(Into::into).collect(),
    })
}

/// Counts a socket of `user` out of `room`; when it was the user's last on any live node, Redis
/// publishes `farewell` to the room in the same step. `Some(last)` when Redis answered (the
/// farewell is then taken care of), `None` when it did not (the caller decides by its own
/// count). A count-out that could not be sent (the link
/// was down) is sent again every second until it goes, so the user is not left online in
/// Redis; one that was sent but not answered is not repeated (it may have run).
pub async fn depart(shard: &Shard, room: &str, user: &str, farewell: &[Bytes]) -> Option<bool> {
    let k = keys(shard, room)?;
    let (channel, envelopes) = farewell_args(shard, room, farewell)?;
    let verb = cluster::publish_verb(shard);
    let mut args: Vec<&[u8]> = vec![
        b"EVAL",
        DEPART,
        b"2",
        &k.presence,
        &k.nodes,
        user.as_bytes(),
        &k.node,
        &k.alive,
        &channel,
        verb,
    ];
    args.extend(envelopes.iter().map(Vec::as_slice));
    match cluster::command_int(Some(room), &args).await {
        Ok(n) => Some(n == 1),
        Err(BrokerFailure::Down) => {
            shard.probe.broker.fell_back(BrokerFallback::Presence);
            let user_b = user.as_bytes().to_vec();
            let room = room.to_owned();
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(RETRY_EVERY).await;
                    // No farewell: the caller already decided by its own count.
                    let args: [&[u8]; 10] = [
                        b"EVAL",
                        DEPART,
                        b"2",
                        &k.presence,
                        &k.nodes,
                        &user_b,
                        &k.node,
                        &k.alive,
                        b"",
                        verb,
                    ];
                    if cluster::command_int(Some(&room), &args).await != Err(BrokerFailure::Down) {
                        return;
                    }
                }
            })
            .detach();
            None
        }
        Err(_) => {
            shard.probe.broker.fell_back(BrokerFallback::Presence);
            None
        }
    }
}
