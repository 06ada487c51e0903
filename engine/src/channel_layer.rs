//! Django Channels' Redis channel layers, seen from Beacon's side: an unchanged Django backend
//! calls `async_to_sync(channel_layer.group_send)("booking_42", {"type": "booking.status", ...})`
//! and the event reaches Beacon's sockets in room `booking:42`.
//!
//! Sans-IO like [`crate::publish`]: names, bytes and mappings in, keys, rooms and frames out.
//! The runtime does the Redis commands; everything that must match what `channels_redis`
//! (4.x) writes and reads is decided here, so it is tested without Redis.
//!
//! # What channels_redis does, and where Beacon stands in it
//!
//! **`RedisChannelLayer`** (`channels_redis.core`, the default). A group is the sorted set
//! `<prefix>:group:<group>` whose members are channel names (score: time of `group_add`;
//! members older than `group_expiry` are dropped by the next `group_send`). `group_send` maps
//! each member channel to a Redis key: a process-specific channel `specific.<client>!<local>`
//! maps to `<prefix>specific.<client>!` (no separator after the prefix), so all of a process's
//! channels share one key, and it `ZADD`s one copy of the event per key (score: now) with
//! `__asgi_channel__` listing the full channel names that copy is for, unless the key already
//! holds `capacity` entries (100 by default: the copy is then dropped on Django's side, logged
//! at INFO). A copy is 12 random bytes (so that equal events stay distinct members of the
//! sorted set), then msgpack of the event dict.
//!
//! Beacon is one such process per shard: client name `beacon.<node>.<shard>`
//! ([`Names::client`]). For each room with members that maps to a group it adds the channel
//! `specific.<client>!<group>` to that group, so the copy that arrives names the group in
//! `__asgi_channel__`, which is how Beacon knows the room (a `group_send` does not carry its
//! group otherwise). It pops copies from its one key `<prefix>specific.<client>!`, renews its
//! memberships well inside `group_expiry`, and removes them when the room empties.
//!
//! **`RedisPubSubChannelLayer`** (`channels_redis.pubsub`). `group_send` is
//! `PUBLISH <prefix>__group__<group>` of plain msgpack (no random bytes); no membership, no
//! capacity, nothing kept for a subscriber that is away. Beacon subscribes to the group's
//! channel while the room has members.
//!
//! Encrypted layers (`symmetric_encryption_keys`) and the JSON serializer are not read:
//! such bytes fail to decode and are counted as undecodable, never delivered garbled.
//!
//! # Groups and rooms
//!
//! The protocol declares the correspondence as two patterns with the same named parameters,
//! e.g. group `booking_{booking_id}` and room `booking:{booking_id}` ([`Pattern`]). A room
//! gets a group only when every parameter value is a valid group-name piece (ASCII letters,
//! digits, `-`, `_`, `.`) and the channel name stays under channels' 100-character limit.
//!
//! # Events and messages
//!
//! A consumer's handler for event type `booking.status` is `booking_status`, Python code
//! Beacon cannot run; the protocol declares what it sent instead ([`EventBody`]): the event's
//! own fields as a declared server message (`{"type": "booking_status", **event}`), or one
//! field of the event holding the whole message (`json.dumps(event["message"])`). Either way
//! the message is checked against its declared schema exactly as a publish is.

use serde_json::{Map, Value};

use crate::protocol::Protocol;

/// Longest channel or group name channels accepts (`channels.layers.BaseChannelLayer`).
pub const MAX_NAME_LEN: usize = 100;

/// Random bytes `RedisChannelLayer` puts before each copy (`random_prefix_length`).
pub const RANDOM_PREFIX_LEN: usize = 12;

/// Which of channels_redis' layers the Django backend runs (its `CHANNEL_LAYERS` `BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `channels_redis.core.RedisChannelLayer`: group sorted sets, one inbox key per process.
    Core,
    /// `channels_redis.pubsub.RedisPubSubChannelLayer`: one PUB/SUB channel per group.
    PubSub,
}

/// Whether `s` is a valid piece of a channels group name: ASCII letters, digits, `-`, `_`, `.`.
pub fn valid_group_piece(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The Redis names one shard of Beacon uses as one channels "process". Exists on every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The layer's `prefix` (channels_redis default `asgi`).
    pub prefix: String,
    /// This shard's client name, `beacon.<node>.<shard>`; stable across restarts so a
    /// restarted node takes its memberships back instead of leaving stale ones for a day.
    pub client: String,
}

impl Names {
    pub fn new(prefix: &str, node: &str, shard: usize) -> Names {
        Names {
            prefix: prefix.to_owned(),
            client: format!("beacon.{node}.{shard}"),
        }
    }

    /// The sorted set holding `group`'s member channels (core layer).
    pub fn group_key(&self, group: &str) -> String {
        format!("{}:group:{group}", self.prefix)
    }

    /// The channel this shard adds to `group`, or `None` when the name would be too long.
    pub fn channel(&self, group: &str) -> Option<String> {
        let c = format!("specific.{}!{group}", self.client);
        (c.len() < MAX_NAME_LEN).then_some(c)
    }

    /// The sorted set every copy for this shard's channels lands in (core layer).
    pub fn inbox_key(&self) -> String {
        format!("{}specific.{}!", self.prefix, self.client)
    }

    /// The group a channel of this shard stands for, from a copy's `__asgi_channel__`.
    pub fn group_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix("specific.")?
            .strip_prefix(self.client.as_str())?
            .strip_prefix('!')
    }

    /// The PUB/SUB channel of `group` (pubsub layer).
    pub fn pubsub_channel(&self, group: &str) -> String {
        format!("{}__group__{group}", self.prefix)
    }

    /// The group a PUB/SUB channel stands for.
    pub fn group_of_pubsub<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("__group__")
    }
}

/// A name pattern with named parameters: `booking_{booking_id}`, `chat:{a}:{b}`. Plain value,
/// part of the frozen protocol (crosses shards, read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub source: String,
    pieces: Vec<PatternPiece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternPiece {
    Text(String),
    Param(String),
}

/// Why a pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("unclosed `{{`")]
    Unclosed,
    #[error("`{{{0}}}` is not a parameter name (letters, digits, `_`)")]
    BadName(String),
    #[error("`{{{0}}}` and `{{{1}}}` touch: put literal text between parameters")]
    Adjacent(String, String),
    #[error("`{{{0}}}` appears twice")]
    Repeated(String),
}

impl Pattern {
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        let mut pieces = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest.find('}').ok_or(PatternError::Unclosed)?;
                    let name = &rest[1..end];
                    if name.is_empty()
                        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(PatternError::BadName(name.to_owned()));
                    }
                    if let Some(PatternPiece::Param(prev)) = pieces.last() {
                        return Err(PatternError::Adjacent(prev.clone(), name.to_owned()));
                    }
                    if pieces
                        .iter()
                        .any(|p| matches!(p, PatternPiece::Param(n) if n == name))
                    {
                        return Err(PatternError::Repeated(name.to_owned()));
                    }
                    pieces.push(PatternPiece::Param(name.to_owned()));
                    rest = &rest[end + 1..];
                }
                Some(i) => {
                    pieces.push(PatternPiece::Text(rest[..i].to_owned()));
                    rest = &rest[i..];
                }
                None => {
                    pieces.push(PatternPiece::Text(rest.to_owned()));
                    rest = "";
                }
            }
        }
        Ok(Pattern {
            source: source.to_owned(),
            pieces,
        })
    }

    /// The parameter names, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            PatternPiece::Param(n) => Some(n.as_str()),
            PatternPiece::Text(_) => None,
        })
    }

    /// The literal text of the pattern, concatenated (for checking its characters).
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            PatternPiece::Text(t) => Some(t.as_str()),
            PatternPiece::Param(_) => None,
        })
    }

    /// The parameter values when `name` matches, each non-empty. A parameter takes the
    /// shortest run up to the literal after it (the last one takes the rest), so in
    /// `chat_{a}_{b}` the name `chat_1_2_3` gives a = `1`, b = `2_3`.
    pub fn capture(&self, name: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut rest = name;
        let mut i = 0;
        while i < self.pieces.len() {
            match &self.pieces[i] {
                PatternPiece::Text(t) => rest = rest.strip_prefix(t.as_str())?,
                PatternPiece::Param(n) => {
                    let value = match self.pieces.get(i + 1) {
                        Some(PatternPiece::Text(next)) => &rest[..rest.find(next.as_str())?],
                        _ => rest,
                    };
                    if value.is_empty() {
                        return None;
                    }
                    out.push((n.clone(), value.to_owned()));
                    rest = &rest[value.len()..];
                }
            }
            i += 1;
        }
        rest.is_empty().then_some(out)
    }

    /// This pattern with the values filled in; `None` when one is missing.
    pub fn fill(&self, values: &[(String, String)]) -> Option<String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                PatternPiece::Text(t) => out.push_str(t),
                PatternPiece::Param(n) => {
                    out.push_str(&values.iter().find(|(k, _)| k == n)?.1);
                }
            }
        }
        Some(out)
    }
}

/// One declared correspondence between Django groups and Beacon rooms. Part of the frozen
/// protocol.
#[derive(Debug, Clone)]
pub struct GroupMap {
    pub group: Pattern,
    pub room: Pattern,
}

/// What a consumer sent for one event type. Part of the frozen protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    /// The event's own fields, `type` replaced by the message's wire type.
    Fields,
    /// The event's field of this name holds the whole message.
    Field(String),
}

/// A message built from an event: the server message's wire type and its fields, not yet
/// checked against its schema (the caller does that as for a publish).
pub fn message_of(
    event: &Event,
    wire_type: &str,
    body: &EventBody,
) -> Result<Map<String, Value>, Dropped> {
    let mut msg = match body {
        EventBody::Fields => event.fields.clone(),
        EventBody::Field(f) => match event.fields.get(f) {
            Some(Value::Object(m)) => m.clone(),
            _ => return Err(Dropped::BadMessage),
        },
    };
    msg.insert("type".to_owned(), Value::String(wire_type.to_owned()));
    Ok(msg)
}

/// Room for `group` under the first mapping whose group pattern matches.
pub fn room_of(maps: &[GroupMap], group: &str) -> Option<String> {
    maps.iter()
        .find_map(|m| m.group.capture(group).and_then(|v| m.room.fill(&v)))
}

/// Group for `room` under the first mapping whose room pattern matches and whose values make
/// a valid group name.
pub fn group_of(maps: &[GroupMap], room: &str) -> Option<String> {
    maps.iter().find_map(|m| {
        let values = m.room.capture(room)?;
        if !values.iter().all(|(_, v)| valid_group_piece(v)) {
            return None;
        }
        m.group.fill(&values).filter(|g| g.len() < MAX_NAME_LEN)
    })
}

/// An event as `group_send` wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's `type` (`booking.status`).
    pub event_type: String,
    /// Its other fields, `type` and `__asgi_channel__` removed.
    pub fields: Map<String, Value>,
    /// The channels this copy is for (core layer; empty for pubsub).
    pub channels: Vec<String>,
}

/// Why an event is not delivered; the label it is counted under in
/// `beacon_channel_layer_dropped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("not msgpack of a dict with a string `type` (encrypted, or another serializer)")]
    Undecodable,
    #[error("for none of this shard's channels")]
    NotOurs,
    #[error("no declared mapping for the group")]
    UnknownGroup,
    #[error("no declared mapping for the event type")]
    UnknownEvent,
    #[error("the event does not make a valid message")]
    BadMessage,
}

impl Dropped {
    pub const ALL: [Dropped; 5] = [
        Dropped::Undecodable,
        Dropped::NotOurs,
        Dropped::UnknownGroup,
        Dropped::UnknownEvent,
        Dropped::BadMessage,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Dropped::Undecodable => "undecodable",
            Dropped::NotOurs => "not_ours",
            Dropped::UnknownGroup => "unknown_group",
            Dropped::UnknownEvent => "unknown_event",
            Dropped::BadMessage => "bad_message",
        }
    }
}

/// What one copy delivers: the rooms it is for and the one frame they all get.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub rooms: Vec<String>,
    pub frame: bytes::Bytes,
}

/// Everything between a copy's bytes and the frames Beacon sends: decode, find the rooms
/// (core: this shard's channels named in the copy; pubsub: the channel it was published on),
/// map the event type, check the message against its schema.
pub fn deliverable(
    proto: &Protocol,
    names: &Names,
    flavor: Flavor,
    pubsub_channel: Option<&str>,
    bytes: &[u8],
) -> Result<Delivery, Dropped> {
    let Some(spec) = &proto.channel_layer else {
        return Err(Dropped::UnknownGroup);
    };
    let event = decode(flavor, bytes)?;
    let groups: Vec<&str> = match flavor {
        Flavor::Core => event
            .channels
            .iter()
            .filter_map(|c| names.group_of(c))
            .collect(),
        Flavor::PubSub => pubsub_channel
            .and_then(|c| names.group_of_pubsub(c))
            .into_iter()
            .collect(),
    };
    if groups.is_empty() {
        return Err(Dropped::NotOurs);
    }
    let rooms: Vec<String> = groups
        .iter()
        .filter_map(|g| room_of(&spec.groups, g))
        .collect();
    if rooms.is_empty() {
        return Err(Dropped::UnknownGroup);
    }
    let map = spec
        .events
        .get(&event.event_type)
        .ok_or(Dropped::UnknownEvent)?;
    let msg = message_of(&event, &proto.messages[map.send].wire_type, &map.body)?;
    let frame = crate::publish::encode_message(proto, &msg).map_err(|_| Dropped::BadMessage)?;
    Ok(Delivery { rooms, frame })
}

/// Most nesting an event may have; deeper is undecodable (a stack bound, not a format rule).
const MAX_DEPTH: usize = 64;

/// Decodes one copy as the `flavor` layer wrote it.
pub fn decode(flavor: Flavor, bytes: &[u8]) -> Result<Event, Dropped> {
    let body = match flavor {
        Flavor::Core => bytes.get(RANDOM_PREFIX_LEN..).ok_or(Dropped::Undecodable)?,
        Flavor::PubSub => bytes,
    };
    let mut rd = body;
    let v = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|_| Dropped::Undecodable)?;
    if !rd.is_empty() {
        return Err(Dropped::Undecodable);
    }
    let Value::Object(mut fields) = to_json(v, 0).ok_or(Dropped::Undecodable)? else {
        return Err(Dropped::Undecodable);
    };
    let Some(Value::String(event_type)) = fields.remove("type") else {
        return Err(Dropped::Undecodable);
    };
    let channels = match fields.remove("__asgi_channel__") {
        None => Vec::new(),
        Some(Value::String(c)) => vec![c],
        Some(Value::Array(cs)) => cs
            .into_iter()
            .map(|c| match c {
                Value::String(s) => Ok(s),
                _ => Err(Dropped::Undecodable),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Dropped::Undecodable),
    };
    Ok(Event {
        event_type,
        fields,
        channels,
    })
}

/// msgpack as JSON: what Python's `msgpack.packb` makes of JSON-like dicts. Bytes, extension
/// types, non-string keys and non-finite floats have no JSON form and make the event
/// undecodable.
fn to_json(v: rmpv::Value, depth: usize) -> Option<Value> {
    use rmpv::Value as M;
    if depth > MAX_DEPTH {
        return None;
    }
    Some(match v {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Value::from(u),
            (None, Some(s)) => Value::from(s),
            _ => return None,
        },
        M::F32(f) => Value::from(serde_json::Number::from_f64(f64::from(f))?),
        M::F64(f) => Value::from(serde_json::Number::from_f64(f)?),
        M::String(s) => Value::String(s.into_str()?),
        M::Array(a) => Value::Array(
            a.into_iter()
                .map(|x| to_json(x, depth + 1))
                .collect::<Option<_>>()?,
        ),
        M::Map(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, x) in m {
                let M::String(k) = k else { return None };
                out.insert(k.into_str()?, to_json(x, depth + 1)?);
            }
            Value::Object(out)
        }
        M::Binary(_) | M::Ext(..) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    /// msgpack as Python's `msgpack.packb(event)` writes a small dict of strings and ints.
    fn packb(v: &Value) -> Vec<u8> {
        fn conv(v: &Value) -> rmpv::Value {
            match v {
                Value::Null => rmpv::Value::Nil,
                Value::Bool(b) => rmpv::Value::Boolean(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => rmpv::Value::from(i),
                    None => rmpv::Value::F64(n.as_f64().unwrap()),
                },
                Value::String(s) => rmpv::Value::from(s.as_str()),
                Value::Array(a) => rmpv::Value::Array(a.iter().map(conv).collect()),
                Value::Object(m) => rmpv::Value::Map(
                    m.iter()
                        .map(|(k, v)| (rmpv::Value::from(k.as_str()), conv(v)))
                        .collect(),
                ),
            }
        }
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &conv(v)).unwrap();
        out
    }

    #[test]
    fn names_are_the_ones_channels_redis_uses() {
        let n = Names::new("asgi", "n1", 0);
        assert_eq!(n.group_key("booking_42"), "asgi:group:booking_42");
        assert_eq!(
            n.channel("booking_42").as_deref(),
            Some("specific.beacon.n1.0!booking_42")
        );
        // `self.prefix + non_local_name(channel)`: no separator after the prefix.
        assert_eq!(n.inbox_key(), "asgispecific.beacon.n1.0!");
        assert_eq!(
            n.group_of("specific.beacon.n1.0!booking_42"),
            Some("booking_42")
        );
        assert_eq!(n.group_of("specific.beacon.n1.1!booking_42"), None);
        assert_eq!(n.pubsub_channel("booking_42"), "asgi__group__booking_42");
        assert_eq!(
            n.group_of_pubsub("asgi__group__booking_42"),
            Some("booking_42")
        );
        assert_eq!(n.channel(&"g".repeat(90)), None);
    }

    #[test]
    fn patterns_capture_and_fill_both_ways() {
        let maps = vec![
            GroupMap {
                group: pat("booking_{booking_id}"),
                room: pat("booking:{booking_id}"),
            },
            GroupMap {
                group: pat("chat_{customer}_{therapist}"),
                room: pat("chat:{customer}:{therapist}"),
            },
        ];
        assert_eq!(room_of(&maps, "booking_42").as_deref(), Some("booking:42"));
        assert_eq!(group_of(&maps, "booking:42").as_deref(), Some("booking_42"));
        assert_eq!(room_of(&maps, "chat_12_34").as_deref(), Some("chat:12:34"));
        assert_eq!(group_of(&maps, "chat:12:34").as_deref(), Some("chat_12_34"));
        // Not a valid group piece: the room has no group rather than a wrong one.
        assert_eq!(group_of(&maps, "booking:a b"), None);
        assert_eq!(group_of(&maps, "booking:"), None);
        assert_eq!(room_of(&maps, "user_1"), None);
        assert_eq!(room_of(&maps, "booking_"), None);
    }

    #[test]
    fn bad_patterns_say_why() {
        assert_eq!(Pattern::parse("a_{x"), Err(PatternError::Unclosed));
        assert_eq!(
            Pattern::parse("a_{x}{y}"),
            Err(PatternError::Adjacent("x".into(), "y".into()))
        );
        assert_eq!(
            Pattern::parse("{x}_{x}"),
            Err(PatternError::Repeated("x".into()))
        );
        assert_eq!(
            Pattern::parse("a_{x.y}"),
            Err(PatternError::BadName("x.y".into()))
        );
    }

    #[test]
    fn a_core_copy_decodes_after_its_random_bytes() {
        let event = json!({"type": "booking.status", "booking_id": "42", "status": "arrived",
                           "__asgi_channel__": ["specific.beacon.n1.0!booking_42"]});
        let mut bytes = vec![7u8; RANDOM_PREFIX_LEN];
        bytes.extend(packb(&event));
        let e = decode(Flavor::Core, &bytes).unwrap();
        assert_eq!(e.event_type, "booking.status");
        assert_eq!(
            Value::Object(e.fields.clone()),
            json!({"booking_id": "42", "status": "arrived"})
        );
        assert_eq!(e.channels, ["specific.beacon.n1.0!booking_42"]);
        // Pubsub copies have no random bytes.
        let e2 = decode(Flavor::PubSub, &packb(&json!({"type": "x", "n": 1}))).unwrap();
        assert_eq!((e2.event_type.as_str(), e2.channels.len()), ("x", 0));
    }

    #[test]
    fn what_has_no_json_form_is_undecodable() {
        let bad = |bytes: &[u8]| decode(Flavor::PubSub, bytes);
        assert_eq!(bad(b""), Err(Dropped::Undecodable));
        assert_eq!(bad(&packb(&json!(["type"]))), Err(Dropped::Undecodable));
        assert_eq!(
            bad(&packb(&json!({"no_type": 1}))),
            Err(Dropped::Undecodable)
        );
        let mut trailing = packb(&json!({"type": "x"}));
        trailing.push(0xc0);
        assert_eq!(bad(&trailing), Err(Dropped::Undecodable));
        let mut bin = Vec::new();
        rmpv::encode::write_value(
            &mut bin,
            &rmpv::Value::Map(vec![
                ("type".into(), "x".into()),
                ("b".into(), rmpv::Value::Binary(vec![1, 2])),
            ]),
        )
        .unwrap();
        assert_eq!(bad(&bin), Err(Dropped::Undecodable));
        // Too short for the core layer's random bytes.
        assert_eq!(decode(Flavor::Core, &[1, 2, 3]), Err(Dropped::Undecodable));
        // Deep nesting is refused, not recursed into.
        let mut deep = vec![0x91u8; 10_000];
        deep.push(0xc0);
        assert_eq!(bad(&deep), Err(Dropped::Undecodable));
    }

    const LAYER: &str = r#"
[channel_layer]
about = "HunarMitra's consumers: booking groups and user groups."
groups = [
  { group = "booking_{id}", room = "booking:{id}" },
  { group = "user_{id}", room = "user:{id}" },
]
events."booking.status" = { send = "booking_status" }
events."notify" = { send = "notification", from = "payload" }
"#;

    fn proto() -> Protocol {
        let src = format!("{}{LAYER}", include_str!("../../protocol.toml"));
        crate::protocol::load_protocol(&src).unwrap()
    }

    fn copy(event: Value) -> Vec<u8> {
        let mut bytes = vec![0xab; RANDOM_PREFIX_LEN];
        bytes.extend(packb(&event));
        bytes
    }

    fn payload(frame: &bytes::Bytes) -> Value {
        assert!(frame[1] < 126);
        serde_json::from_slice(&frame[2..]).unwrap()
    }

    #[test]
    fn a_copy_becomes_one_frame_for_each_room_it_names() {
        let p = proto();
        let n = Names::new("asgi", "n1", 1);
        let ch = |g: &str| n.channel(g).unwrap();
        let d = deliverable(
            &p,
            &n,
            Flavor::Core,
            None,
            &copy(
                json!({"type": "booking.status", "booking_id": "42", "status": "arrived",
                         "extra": 1, "__asgi_channel__": [ch("booking_42"), ch("booking_43"),
                                                          "specific.other!booking_44"]}),
            ),
        )
        .unwrap();
        assert_eq!(d.rooms, ["booking:42", "booking:43"]);
        assert_eq!(
            payload(&d.frame),
            json!({"type": "booking_status", "booking_id": "42", "status": "arrived"})
        );
        let d = deliverable(
            &p,
            &n,
            Flavor::PubSub,
            Some("asgi__group__user_7"),
            &packb(&json!({"type": "notify", "payload": {"title": "t", "message": "m"}})),
        )
        .unwrap();
        assert_eq!(d.rooms, ["user:7"]);
        assert_eq!(
            payload(&d.frame),
            json!({"type": "notification", "title": "t", "message": "m"})
        );
    }

    #[test]
    fn each_reason_not_to_deliver_is_named() {
        let p = proto();
        let n = Names::new("asgi", "n1", 0);
        let core = |event: Value| deliverable(&p, &n, Flavor::Core, None, &copy(event));
        let ours = n.channel("booking_1").unwrap();
        assert_eq!(
            core(json!({"type": "booking.status", "__asgi_channel__": ["specific.x!booking_1"]})),
            Err(Dropped::NotOurs)
        );
        assert_eq!(
            core(
                json!({"type": "booking.status", "__asgi_channel__": [n.channel("chat_1").unwrap()]})
            ),
            Err(Dropped::UnknownGroup)
        );
        assert_eq!(
            core(json!({"type": "booking.other", "__asgi_channel__": [ours.clone()]})),
            Err(Dropped::UnknownEvent)
        );
        assert_eq!(
            core(
                json!({"type": "booking.status", "status": "teleported", "booking_id": "1",
                        "__asgi_channel__": [ours]})
            ),
            Err(Dropped::BadMessage)
        );
        assert_eq!(
            deliverable(&p, &n, Flavor::Core, None, b"short"),
            Err(Dropped::Undecodable)
        );
    }

    #[test]
    fn messages_come_from_the_fields_or_one_field() {
        let e = Event {
            event_type: "chat.message".into(),
            fields: json!({"message": {"text": "hi", "id": 5}, "sender": 3})
                .as_object()
                .unwrap()
                .clone(),
            channels: vec![],
        };
        let whole = message_of(&e, "chat_message", &EventBody::Fields).unwrap();
        assert_eq!(whole["type"], "chat_message");
        assert_eq!(whole["sender"], 3);
        let inner = message_of(&e, "chat_message", &EventBody::Field("message".into())).unwrap();
        assert_eq!(
            Value::Object(inner),
            json!({"text": "hi", "id": 5, "type": "chat_message"})
        );
        assert_eq!(
            message_of(&e, "m", &EventBody::Field("sender".into())),
            Err(Dropped::BadMessage)
        );
    }
}
