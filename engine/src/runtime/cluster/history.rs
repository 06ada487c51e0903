//! Room history in Redis, when the cluster broker is Redis: a message's position is decided
//! once for the whole cluster, so a client resumes on any node and across a node's restart.
//!
//! **Publishing.** A delivery into a room whose kind keeps history, of a type that enters it,
//! is not `PUBLISH`ed: one Lua script ([`APPEND`]) takes the
//! room's next offset (`HINCRBY` on the room's meta hash), creates the epoch if the hash is
//! new (`HSETNX`; the node proposes a random one), writes offset and epoch into the frame's
//! JSON (from [`StampParts`]: the bytes the in-memory store would build), `XADD`s the stamped
//! frame to the room's stream with the offset as its id (`MAXLEN` = the kind's `size`, the
//! Redis time beside it for the TTL), refreshes both keys' expiry (`ttl_s`), and publishes the
//! stamped frame in a version-2 envelope carrying the position. Redis runs a script alone, so
//! the channel's order is the offsets' order; every node, this one included, fans the same
//! stamped bytes out ([`Shard::deliver_positioned`]) and none stamps again.
//!
//! **Resuming.** Sockets live on their room's owner shard, which is also the shard subscribed
//! to the room's channel, and the `101` waited for that subscription. The catch-up then:
//!
//! 1. gives the socket a [`Cursor::catching_up`]: from now on every positioned frame for the
//!    room is buffered for it, not sent;
//! 2. reads the room's epoch and top and the stream after the client's offset ([`READ`], one
//!    script, so the three agree) on the shard's publish connection;
//! 3. when the read lands, judges it exactly as the memory store would ([`resume_read`]) and
//!    hands it to the cursor, which sends the missed frames, then the buffered ones that follow
//!    them, dropping those the read already held. Everything Redis ran before the read is in
//!    it; everything after it reaches the subscription after the read's answer was written, so
//!    nothing falls between.
//!
//! A read that fails (Redis down, no subscription, no answer within
//! [`PUBLISH_TIMEOUT`]) is answered `not_recovered` with the reason `unavailable`; the client
//! keeps what it has and tries again later. A cursor that cannot keep the seam (a gap, or more
//! buffered frames than a member's queue holds) closes the socket, and the client resumes from
//! the last position it was given.
//!
//! While the link is down, a message that would enter a Redis history is refused (counted
//! `history_refused`) rather than delivered to this node's members only: it would have no
//! position, and a client that missed it would later be told it recovered.
//!
//! Latest-value rooms (`latest_by`) work the same way with [`APPEND_LATEST`] and
//! [`READ_LATEST`]: each key's newest frame, keys ordered by offset, their update times.
//! Exists on every shard (the functions run on the shard that publishes or owns the room).

use std::rc::Rc;

use super::*;
use crate::history::store::{Since, StampParts};
use crate::history::{
    resume_read, snapshot_read, CaughtUp, Cursor, Epoch, HistoryLimits, Position, ReadEntry,
    Recovery, Resume, SeamError, Unrecoverable,
};
use crate::runtime::shard::Conn;

/// Lua shared by [`APPEND`] and [`APPEND_LATEST`]: `frame`, the stamped JSON (stamp head
/// `ARGV[6]`, the offset `off`, stamp middle `ARGV[7]`, the epoch `m[1]`) as one unmasked
/// WebSocket text frame, its header as `ws/codec.rs` writes it.
macro_rules! stamped_frame_lua {
    () => {
        r#"
local payload = ARGV[6] .. string.format('%d', off) .. ARGV[7] .. m[1] .. '"}'
local n = #payload
local hdr
if n < 126 then
  hdr = string.char(129, n)
elseif n < 65536 then
  hdr = string.char(129, 126, math.floor(n / 256), n % 256)
else
  hdr = string.char(129, 127, 0, 0, 0, 0, math.floor(n / 16777216) % 256,
    math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
end
local frame = hdr .. payload
"#
    };
}

/// Lua shared by [`APPEND`] and [`APPEND_LATEST`]: `pos`, the offset `off` as 8 big-endian
/// bytes, as the version-2 envelope carries it (`broker/envelope.rs`).
macro_rules! position_lua {
    () => {
        r#"
local pos = ''
local x = off
for i = 1, 8 do
  pos = string.char(x % 256) .. pos
  x = math.floor(x / 256)
end
"#
    };
}

/// Offset, epoch and stream in one step (a new epoch starts an empty stream: entries of a lost
/// meta hash's epoch would collide with the new offsets). KEYS: meta hash, stream, channel. ARGV: proposed
/// epoch (decimal text), the same epoch (8 bytes, big-endian), size, TTL in ms, envelope
/// head, stamp head, stamp middle, the publish command (`PUBLISH`, or `SPUBLISH` on Redis
/// Cluster). Returns the publish's receiver count.
const APPEND: &[u8] = concat!(
    r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'b', ARGV[2])
  redis.call('DEL', KEYS[2])
end
local m = redis.call('HMGET', KEYS[1], 'e', 'b')
local off = redis.call('HINCRBY', KEYS[1], 's', 1)
"#,
    stamped_frame_lua!(),
    r#"redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], string.format('%d', off) .. '-0', 'f', frame, 't', now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
"#,
    position_lua!(),
    r#"return redis.call(ARGV[8], KEYS[3], ARGV[5] .. pos .. m[2] .. frame)
"#
)
.as_bytes();

/// [`APPEND`] for a latest-value room: the stamped frame replaces its key's value. KEYS: meta
/// hash, values (key -> frame), order (sorted set: key by offset), times (key -> ms), channel.
/// ARGV: as [`APPEND`] up to the stamp middle, the key, the publish command. Values the TTL ran out on, then the least recently
/// updated beyond `size` keys, are dropped, as [`crate::history::LatestValues`] does.
const APPEND_LATEST: &[u8] = concat!(
    r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'b', ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
end
local m = redis.call('HMGET', KEYS[1], 'e', 'b')
local off = redis.call('HINCRBY', KEYS[1], 's', 1)
local ttl = tonumber(ARGV[4])
while true do
  local first = redis.call('ZRANGE', KEYS[3], 0, 0)
  if #first == 0 then break end
  local at = tonumber(redis.call('HGET', KEYS[4], first[1]) or '0')
  if at + ttl > now then break end
  redis.call('ZREM', KEYS[3], first[1])
  redis.call('HDEL', KEYS[2], first[1])
  redis.call('HDEL', KEYS[4], first[1])
end
"#,
    stamped_frame_lua!(),
    r#"redis.call('HSET', KEYS[2], ARGV[8], frame)
redis.call('HSET', KEYS[4], ARGV[8], now)
redis.call('ZADD', KEYS[3], off, ARGV[8])
while redis.call('ZCARD', KEYS[3]) > tonumber(ARGV[3]) do
  local gone = redis.call('ZPOPMIN', KEYS[3])
  redis.call('HDEL', KEYS[2], gone[1])
  redis.call('HDEL', KEYS[4], gone[1])
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
"#,
    position_lua!(),
    r#"return redis.call(ARGV[9], KEYS[5], ARGV[5] .. pos .. m[2] .. frame)
"#
)
.as_bytes();

/// A latest-value room's epoch, top and every value. KEYS: meta, values, order, times. ARGV:
/// proposed epoch (text, 8 bytes), TTL in ms. Returns `{epoch, top, now_ms, {{offset, frame,
/// ms}...}}` in offset order.
const READ_LATEST: &[u8] = br#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'b', ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
local m = redis.call('HMGET', KEYS[1], 'e', 's')
local ks = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #ks, 2 do
  out[#out + 1] = {ks[i + 1], redis.call('HGET', KEYS[2], ks[i]) or '', redis.call('HGET', KEYS[4], ks[i]) or '0'}
end
return {m[1], m[2] or '0', now, out}
"#;

/// A room's epoch, top and kept messages after an offset. KEYS: meta hash, stream. ARGV:
/// proposed epoch (text), the same (8 bytes), TTL in ms, first offset wanted ('' for none),
/// most entries. Creates the epoch of a room that has none (so a client told "offset 0" of it
/// finds the same epoch later) and keeps both keys for another TTL. Returns
/// `{epoch, top, now_ms, {{id, {'f', frame, 't', ms}}...}}`.
const READ: &[u8] = br#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'b', ARGV[2])
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local m = redis.call('HMGET', KEYS[1], 'e', 's')
local entries = {}
if ARGV[4] ~= '' then
  entries = redis.call('XRANGE', KEYS[2], ARGV[4] .. '-0', '+', 'COUNT', ARGV[5])
end
return {m[1], m[2] or '0', now, entries}
"#;

/// The room's history rule when its history lives in Redis: clustered on Redis, the protocol
/// declares `[resume]`, and the room's kind keeps history (messages or latest values).
pub fn rule(shard: &Shard, room: &str) -> Option<usize> {
    shard.history_in_redis(room)
}

fn keys(prefix: &str, room: &str) -> (Vec<u8>, Vec<u8>) {
    (key(prefix, "meta", room), key(prefix, "stream", room))
}

fn key(prefix: &str, what: &str, room: &str) -> Vec<u8> {
    [prefix, ".history.", what, ".", room].concat().into_bytes()
}

/// A latest-value room's keys: meta, values, order, times.
fn latest_keys(prefix: &str, room: &str) -> [Vec<u8>; 4] {
    ["meta", "values", "order", "times"].map(|w| key(prefix, w, room))
}

/// A proposed epoch: used only by the script that creates the room's history.
fn proposed() -> (String, [u8; 8]) {
    let e = rand::random::<u64>();
    (e.to_string(), e.to_be_bytes())
}

/// Publishes `frame` through [`APPEND`] when it enters a Redis history; otherwise gives `who`
/// back for a plain publish.
pub(super) fn publish(
    shard: &Shard,
    link: &Link,
    room: &str,
    frame: &[u8],
    exclude: Option<u64>,
    who: Waiting,
) -> Result<(), Waiting> {
    let Some(rule) = rule(shard, room) else {
        return Err(who);
    };
    let proto = &shard.shared.proto;
    if proto.history[rule].latest_by.is_some() {
        return publish_latest(shard, link, rule, room, frame, exclude, who);
    }
    let Some(parts) = StampParts::entering(proto, rule, frame) else {
        return Err(who);
    };
    let spec = &proto.history[rule];
    let (meta, stream) = keys(&link.prefix, room);
    let channel = link.room_channel(room);
    let head = envelope::head(
        &link.cfg.node_id,
        exclude.map(|c| (link.shard_id as u16, c)),
    );
    let (epoch, epoch_bytes) = proposed();
    let size = spec.size.to_string();
    let ttl = spec.ttl_ms.max(1).to_string();
    let cmd: [&[u8]; 14] = [
        b"EVAL",
        APPEND,
        b"3",
        &meta,
        &stream,
        &channel,
        epoch.as_bytes(),
        &epoch_bytes,
        size.as_bytes(),
        ttl.as_bytes(),
        &head,
        &parts.head,
        &parts.mid,
        link.publish_verb(),
    ];
    link.command(&cmd, who);
    // Counted where the message enters (once per cluster), not where it is fanned out.
    Probe::inc(&shard.probe.history_appends, 1);
    Ok(())
}

/// [`publish`] for a latest-value room, through [`APPEND_LATEST`].
fn publish_latest(
    shard: &Shard,
    link: &Link,
    rule: usize,
    room: &str,
    frame: &[u8],
    exclude: Option<u64>,
    who: Waiting,
) -> Result<(), Waiting> {
    let proto = &shard.shared.proto;
    let Some((parts, value_key)) = StampParts::entering_latest(proto, rule, frame) else {
        return Err(who);
    };
    let spec = &proto.history[rule];
    let [meta, values, order, times] = latest_keys(&link.prefix, room);
    let channel = link.room_channel(room);
    let head = envelope::head(
        &link.cfg.node_id,
        exclude.map(|c| (link.shard_id as u16, c)),
    );
    let (epoch, epoch_bytes) = proposed();
    let size = spec.size.to_string();
    let ttl = spec.ttl_ms.max(1).to_string();
    let cmd: [&[u8]; 17] = [
        b"EVAL",
        APPEND_LATEST,
        b"5",
        &meta,
        &values,
        &order,
        &times,
        &channel,
        epoch.as_bytes(),
        &epoch_bytes,
        size.as_bytes(),
        ttl.as_bytes(),
        &head,
        &parts.head,
        &parts.mid,
        value_key.as_bytes(),
        link.publish_verb(),
    ];
    link.command(&cmd, who);
    Probe::inc(&shard.probe.history_appends, 1);
    Ok(())
}

/// While the link is down: `true` when `frame` would enter a Redis history, so it is dropped
/// (counted) instead of delivered here without a position.
pub(super) fn refuse_local(shard: &Shard, room: &str, frame: &[u8]) -> bool {
    let proto = &shard.shared.proto;
    let refused = rule(shard, room).is_some_and(|r| {
        StampParts::entering(proto, r, frame).is_some()
            || StampParts::entering_latest(proto, r, frame).is_some()
    });
    if refused {
        shard.probe.broker.dropped(BrokerDrop::HistoryRefused, 1);
    }
    refused
}

/// What the read script said.
struct Read {
    epoch: Epoch,
    top: u64,
    now_ms: u64,
    entries: Vec<ReadEntry>,
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Bulk(b) | Value::Simple(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn parse_read(v: Value) -> Option<Read> {
    let Value::Array(mut parts) = v else {
        return None;
    };
    if parts.len() != 4 {
        return None;
    }
    let Value::Array(raw) = parts.pop()? else {
        return None;
    };
    let now_ms = int(&parts[2])?;
    let top = int(&parts[1])?;
    let epoch = Epoch(int(&parts[0])?);
    let mut entries = Vec::with_capacity(raw.len());
    for e in raw {
        let Value::Array(e) = e else { return None };
        if let [offset, Value::Bulk(frame), at] = &e[..] {
            // A latest value: offset, frame, time.
            entries.push(ReadEntry {
                offset: int(offset)?,
                inserted_at_ms: int(at)?,
                frame: frame.clone(),
            });
            continue;
        }
        let [id, Value::Array(fields)] = &e[..] else {
            return None;
        };
        let Value::Bulk(id) = id else { return None };
        let offset = std::str::from_utf8(id)
            .ok()?
            .split('-')
            .next()?
            .parse()
            .ok()?;
        let (mut frame, mut at) = (None, None);
        for kv in fields.chunks(2) {
            match kv {
                [Value::Bulk(k), Value::Bulk(v)] if &k[..] == b"f" => frame = Some(v.clone()),
                [Value::Bulk(k), v] if &k[..] == b"t" => at = int(v),
                _ => {}
            }
        }
        entries.push(ReadEntry {
            offset,
            inserted_at_ms: at?,
            frame: frame?,
        });
    }
    Some(Read {
        epoch,
        top,
        now_ms,
        entries,
    })
}

/// `conn` joined `room` (a Redis-history room of kind `rule`) on its owner shard from `since`:
/// reads what it missed and sends it with the live frames buffered meanwhile (module doc).
pub fn catch_up(shard: &Rc<Shard>, conn: &Rc<Conn>, rule: usize, since: Since) {
    let latest = shard.shared.proto.history[rule].latest_by.is_some();
    if since == Since::Fresh && !latest {
        // A client that does not resume: live frames reach it as they come, nothing to tell.
        return;
    }
    let position = match since {
        Since::At(p) => Some(p),
        Since::Fresh | Since::Start | Since::Malformed => None,
    };
    let subscribed = link_for(&conn.room)
        .filter(|l| l.up.get() && l.subs.borrow().get(&*conn.room).is_some_and(|s| s.active));
    let Some(link) = subscribed else {
        let mut cursor = Cursor::catching_up(position, 0);
        shard.caught_up(conn, since, unavailable(&mut cursor, position));
        return;
    };
    let proto = &shard.shared.proto;
    let spec = &proto.history[rule];
    let limits = HistoryLimits {
        size: spec.size,
        ttl_ms: spec.ttl_ms,
    };
    let max = spec.max_catch_up;
    shard.start_catching(
        conn,
        Cursor::catching_up(position, proto.limits.queue_max_messages),
    );
    let (epoch, epoch_bytes) = proposed();
    let ttl = spec.ttl_ms.max(1).to_string();
    let (tx, rx) = oneshot::channel();
    if latest {
        let [meta, values, order, times] = latest_keys(&link.prefix, &conn.room);
        let cmd: [&[u8]; 10] = [
            b"EVAL",
            READ_LATEST,
            b"4",
            &meta,
            &values,
            &order,
            &times,
            epoch.as_bytes(),
            &epoch_bytes,
            ttl.as_bytes(),
        ];
        link.command(&cmd, Waiting::Reply(tx));
    } else {
        let (meta, stream) = keys(&link.prefix, &conn.room);
        let (from, count) = match position {
            Some(p) => (
                (p.offset.saturating_add(1)).to_string(),
                (max.min(spec.size) + 1).to_string(),
            ),
            None => (String::new(), "0".to_owned()),
        };
        let cmd: [&[u8]; 10] = [
            b"EVAL",
            READ,
            b"2",
            &meta,
            &stream,
            epoch.as_bytes(),
            &epoch_bytes,
            ttl.as_bytes(),
            from.as_bytes(),
            count.as_bytes(),
        ];
        link.command(&cmd, Waiting::Reply(tx));
    }
    let (shard, conn) = (shard.clone(), conn.clone());
    glommio::spawn_local(async move {
        let answer = glommio::timer::timeout(PUBLISH_TIMEOUT, async { Ok(rx.await) }).await;
        let read = match answer {
            Ok(Ok(Ok(v))) => parse_read(v),
            _ => None,
        };
        let Some(mut cursor) = shard.stop_catching(&conn) else {
            // The cursor broke while buffering; the socket is closing.
            return;
        };
        let read_ok = read.is_some();
        let caught = match (read, since) {
            (None, _) => unavailable(&mut cursor, position),
            (Some(r), _) if latest => {
                let snapshot = snapshot_read(limits, r.epoch, r.top, position, r.now_ms, r.entries);
                cursor.on_snapshot(snapshot).map(|mut c| {
                    if since == Since::Malformed {
                        c.recovery = Recovery::NotRecovered(Unrecoverable::Malformed);
                    }
                    c
                })
            }
            (Some(r), Since::At(p)) => {
                let resume = resume_read(limits, r.epoch, r.top, p, max, r.now_ms, r.entries);
                cursor.on_history(resume)
            }
            (Some(r), _) => {
                let top = Position {
                    offset: r.top,
                    epoch: r.epoch,
                };
                cursor.on_top(top).map(|mut c| {
                    if since == Since::Malformed {
                        c.recovery = Recovery::NotRecovered(Unrecoverable::Malformed);
                    }
                    c
                })
            }
        };
        shard.caught_up(&conn, since, caught);
        if read_ok && cursor.is_live() && shard.conn(conn.id).is_some() {
            // Still drops what the read held, until the subscription brings a new frame.
            shard.start_catching(&conn, cursor);
        }
        shard.write_batch();
    })
    .detach();
}

/// The answer when the history cannot be read: not recovered, from the client's own position
/// (or, for a client without one, from just before the first frame buffered meanwhile), with
/// the buffered frames that follow it.
fn unavailable(cursor: &mut Cursor, position: Option<Position>) -> Result<CaughtUp, SeamError> {
    let start = cursor.before_buffered().or(position).unwrap_or(Position {
        offset: 0,
        epoch: Epoch(0),
    });
    let cut = Resume::NotRecovered {
        reason: Unrecoverable::Unavailable,
        top: start,
    };
    match position {
        Some(_) => cursor.on_history(cut),
        // `on_top` tells a joining client it joined; this one is told it did not recover.
        None => cursor.on_top(start).map(|mut c| {
            c.recovery = Recovery::NotRecovered(Unrecoverable::Unavailable);
            c
        }),
    }
}
