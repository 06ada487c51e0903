//! Where a shard keeps the histories of the rooms it owns, and how a frame gets its position:
//! the seam between the runtime's fan-out and [`RoomHistory`] / [`LatestValues`]. Sans-IO:
//! the caller passes the protocol and the time in.
//!
//! The runtime calls the store at two places only, both on the room's owner shard:
//!
//! - [`Store::append`] for every delivery to a room whose kind keeps history, before the
//!   fan-out: a message that enters gets the room's next position, written into its frame
//!   once (the frame every member shares), and the stamped frame is kept;
//! - [`Store::catch_up`] when a socket joins its home room, in the same turn as the join:
//!   what it missed since its position (or the latest values), then the answer it is told.
//!
//! Nothing can be published between the read and the join (one turn on one shard), so the
//! [`Cursor`] goes live at once and no member needs a cursor afterwards: every later message
//! reaches every member through the same fan-out, in offset order. With the cluster's Redis
//! (`runtime/cluster/history.rs`) positions are decided in Redis instead and reads yield: that
//! path uses this module's [`StampParts`] (so its frames are byte for byte these) and
//! [`rule_in_redis`], keeps a [`Cursor::catching_up`] per joining member and feeds it the
//! live frames until its read lands.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{
    CaughtUp, Cursor, Epoch, EpochSource, HistoryLimits, LatestValues, Position, Recovery,
    RoomHistory, Unrecoverable,
};
use crate::protocol::{HistorySpec, Protocol, ResumeSpec};

/// A reconnecting client's last position, as it came in the upgrade request. Crosses shards
/// (Send), in the hand-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Since {
    /// No position parameter at all: a client that does not resume (an app's existing client).
    /// It joins at the room's top and is told nothing, so its flow is the one it always had.
    #[default]
    Fresh,
    /// The offset parameter present and empty: a client that resumes but has no position
    /// yet. It joins at the top and is told where that is.
    Start,
    At(Position),
    /// Something that is not a position (answered "not recovered", reason `malformed`).
    Malformed,
}

impl Since {
    /// Reads a position from its wire form: an offset (decimal) and an epoch (decimal text).
    pub fn parse(offset: Option<&str>, epoch: Option<&str>) -> Since {
        match (offset, epoch) {
            (None, None) => Since::Fresh,
            (Some(""), None | Some("")) => Since::Start,
            (Some(o), Some(e)) if !e.is_empty() => match (o.parse::<u64>(), e.parse::<u64>()) {
                (Ok(offset), Ok(epoch)) => Since::At(Position {
                    offset,
                    epoch: Epoch(epoch),
                }),
                // An epoch Beacon never wrote names no history that exists.
                (Ok(offset), Err(_)) => Since::At(Position {
                    offset,
                    epoch: Epoch(u64::MAX),
                }),
                _ => Since::Malformed,
            },
            _ => Since::Malformed,
        }
    }

    /// Whether the client is told how its join went (`recovered` / `not_recovered`).
    pub fn wants_answer(self) -> bool {
        self != Since::Fresh
    }
}

/// A latest-value message's key: its `field`, compared as text.
fn key_of(obj: &Map<String, Value>, field: &str) -> Option<Rc<str>> {
    Some(match obj.get(field)? {
        Value::String(k) => Rc::from(k.as_str()),
        other => Rc::from(other.to_string()),
    })
}

/// The key of a stamped frame of a latest-value room whose key field is `field` (a snapshot
/// frame going to a joining socket, whose queue must know it to conflate it later).
pub fn latest_key(frame: &[u8], field: &str) -> Option<Rc<str>> {
    let obj: Map<String, Value> = serde_json::from_slice(text_payload(frame)?).ok()?;
    key_of(&obj, field)
}

/// The history rule of `room` when its history lives in the cluster's Redis (`redis`: the
/// cluster broker is Redis and the protocol declares `[resume]`).
pub fn rule_in_redis(proto: &Protocol, redis: bool, room: &str) -> Option<usize> {
    if !redis {
        return None;
    }
    proto.resume.as_ref()?;
    proto.history_for(room)
}

/// The wire form of an epoch: decimal text, so that JavaScript keeps all 64 bits.
pub fn epoch_text(e: Epoch) -> String {
    e.0.to_string()
}

enum Log {
    Messages(RoomHistory),
    Latest(LatestValues<Rc<str>>),
}

struct Room {
    log: Log,
    /// The last append or catch-up: a log emptied by its TTL is dropped a TTL after this.
    used_ms: u64,
}

impl Room {
    fn held(&self) -> usize {
        match &self.log {
            Log::Messages(h) => h.len(),
            Log::Latest(l) => l.len(),
        }
    }
}

/// The in-memory histories of the rooms one shard owns. Owned by the rooms' owner shard.
pub struct MemoryStore {
    rooms: HashMap<String, Room>,
    epochs: EpochSource,
    /// Messages (or latest values) held across rooms, for the gauge.
    held: usize,
}

/// Where history lives: the seam a broker-backed store plugs into. Owned by the rooms' owner
/// shard.
pub enum Store {
    /// In this shard's memory: lost with the process, so a restart gives every room a new
    /// epoch and resuming clients are told to reload.
    Memory(MemoryStore),
}

/// A frame that entered its room's history, with its position written in. Owned by the
/// room's owner shard (it lives for one fan-out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    pub frame: Bytes,
    /// In a latest-value room, the value of its `latest_by` field (read once, here, from the
    /// JSON the store parses anyway): a member's queue keeps one unsent frame per key
    /// (conflation). `None` elsewhere, so other rooms' fan-out never looks at keys.
    pub key: Option<Rc<str>>,
}

/// What [`Store::append`] did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Messages held across rooms afterwards.
    pub messages: usize,
    pub rooms: usize,
}

impl Store {
    /// `seed` must differ between processes and shards (see [`EpochSource::new`]).
    pub fn in_memory(seed: u64) -> Store {
        Store::Memory(MemoryStore {
            rooms: HashMap::new(),
            epochs: EpochSource::new(seed),
            held: 0,
        })
    }

    /// A frame delivered to `room`, whose kind is `proto.history[rule]`: when it is one of the
    /// kind's messages, the frame stamped with its position, now kept; otherwise `None`, and
    /// it is delivered as it is.
    pub fn append(
        &mut self,
        proto: &Protocol,
        rule: usize,
        room: &str,
        frame: &Bytes,
        now_ms: u64,
    ) -> Option<Stamped> {
        let Store::Memory(s) = self;
        let spec = &proto.history[rule];
        let resume = proto.resume.as_ref()?;
        let payload = text_payload(frame)?;
        let key = match &spec.latest_by {
            None => {
                if !spec.enters(&wire_type(payload)?) {
                    return None;
                }
                None
            }
            Some(field) => {
                let obj: Map<String, Value> = serde_json::from_slice(payload).ok()?;
                if !obj
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| spec.enters(t))
                {
                    return None;
                }
                Some(key_of(&obj, field)?)
            }
        };
        let room = s.room(spec, room, now_ms);
        let before = room.held();
        let next = match &room.log {
            Log::Messages(h) => h.next_position(),
            Log::Latest(l) => l.next_position(),
        };
        let stamped = stamp(payload, resume, next);
        let pos = match (&mut room.log, &key) {
            (Log::Messages(h), _) => h.append(now_ms, stamped.clone()),
            (Log::Latest(l), Some(k)) => l.set(now_ms, k.clone(), stamped.clone()),
            (Log::Latest(_), None) => return None,
        };
        debug_assert_eq!(pos, next);
        room.used_ms = now_ms;
        let after = room.held();
        s.held = (s.held + after).saturating_sub(before);
        Some(Stamped {
            frame: stamped,
            key,
        })
    }

    /// A socket joins `room` (kind `proto.history[rule]`) from `since`, in the turn of the
    /// join: the frames it missed (or the room's latest values), in order, and how it
    /// recovered.
    pub fn catch_up(
        &mut self,
        proto: &Protocol,
        rule: usize,
        room: &str,
        since: Since,
        now_ms: u64,
    ) -> CaughtUp {
        let Store::Memory(s) = self;
        let spec = &proto.history[rule];
        let room = s.room(spec, room, now_ms);
        room.used_ms = now_ms;
        let before = room.held();
        let position = match since {
            Since::At(p) => Some(p),
            Since::Fresh | Since::Start | Since::Malformed => None,
        };
        let mut cursor = Cursor::catching_up(position, 0);
        let caught = match &mut room.log {
            Log::Messages(h) => match since {
                Since::Fresh | Since::Start => cursor.on_top(h.top()),
                Since::At(p) => cursor.on_history(h.resume(now_ms, p, spec.max_catch_up)),
                Since::Malformed => {
                    h.expire(now_ms);
                    Ok(lost(Unrecoverable::Malformed, h.top(), Vec::new()))
                }
            },
            Log::Latest(l) => {
                let snapshot = l.snapshot(now_ms, position);
                match since {
                    Since::Malformed => Ok(lost(
                        Unrecoverable::Malformed,
                        snapshot.top,
                        snapshot.values,
                    )),
                    _ => cursor.on_snapshot(snapshot),
                }
            }
        };
        let after = room.held();
        let top = match &room.log {
            Log::Messages(h) => h.top(),
            Log::Latest(l) => l.top(),
        };
        s.held = (s.held + after).saturating_sub(before);
        // The cursor cannot fail here (nothing was buffered, the read matches its state);
        // were it to, the client is told to reload rather than given a doubtful batch.
        caught.unwrap_or_else(|_| lost(Unrecoverable::EpochChanged, top, Vec::new()))
    }

    /// Drops the logs that the TTL has emptied and nobody used for a TTL, except in rooms
    /// `occupied` says have members: their clients keep a position in that epoch.
    pub fn sweep(&mut self, proto: &Protocol, now_ms: u64, occupied: impl Fn(&str) -> bool) {
        let Store::Memory(s) = self;
        let mut held = 0;
        s.rooms.retain(|name, room| {
            let ttl = match proto.history_for(name) {
                Some(rule) => proto.history[rule].ttl_ms,
                None => 0,
            };
            match &mut room.log {
                Log::Messages(h) => h.expire(now_ms),
                Log::Latest(l) => l.expire(now_ms),
            }
            held += room.held();
            room.held() > 0 || room.used_ms.saturating_add(ttl) > now_ms || occupied(name)
        });
        s.held = held;
    }

    pub fn held(&self) -> Held {
        let Store::Memory(s) = self;
        Held {
            messages: s.held,
            rooms: s.rooms.len(),
        }
    }
}

impl MemoryStore {
    fn room(&mut self, spec: &HistorySpec, name: &str, now_ms: u64) -> &mut Room {
        if !self.rooms.contains_key(name) {
            let limits = HistoryLimits {
                size: spec.size,
                ttl_ms: spec.ttl_ms,
            };
            let epoch = self.epochs.next_epoch();
            let log = match spec.latest_by {
                None => Log::Messages(RoomHistory::new(limits, epoch, now_ms)),
                Some(_) => Log::Latest(LatestValues::new(limits, epoch, now_ms)),
            };
            self.rooms.insert(
                name.to_owned(),
                Room {
                    log,
                    used_ms: now_ms,
                },
            );
        }
        self.rooms.get_mut(name).expect("inserted above")
    }
}

fn lost(reason: Unrecoverable, top: Position, deliver: Vec<(Position, Bytes)>) -> CaughtUp {
    CaughtUp {
        recovery: Recovery::NotRecovered(reason),
        start: top,
        deliver,
    }
}

/// The payload of an unmasked, unfragmented text frame as the engine encodes them.
fn text_payload(frame: &[u8]) -> Option<&[u8]> {
    if *frame.first()? != 0x81 {
        return None;
    }
    let len7 = *frame.get(1)?;
    if len7 & 0x80 != 0 {
        return None;
    }
    let start = match len7 {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    frame.get(start..)
}

/// The `type` of a server message's payload. Every server frame Beacon builds starts with
/// it, so this is a prefix read; anything else is parsed.
fn wire_type(payload: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    const HEAD: &[u8] = br#"{"type":""#;
    if let Some(rest) = payload.strip_prefix(HEAD) {
        let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        if rest[end] == b'"' {
            return std::str::from_utf8(&rest[..end]).ok().map(Into::into);
        }
    }
    let obj: Map<String, Value> = serde_json::from_slice(payload).ok()?;
    match obj.get("type")? {
        Value::String(t) => Some(t.clone().into()),
        _ => None,
    }
}

/// The frame for `payload` (a JSON object) with the position fields added at its end.
fn stamp(payload: &[u8], resume: &ResumeSpec, pos: Position) -> Bytes {
    let parts = StampParts::of(payload, resume);
    // Written straight into the payload: no number is formatted into a String first.
    use std::io::Write as _;
    let mut out = parts.head;
    let _ = write!(out, "{}", pos.offset);
    out.extend_from_slice(&parts.mid);
    let _ = write!(out, "{}\"}}", pos.epoch.0);
    crate::ws::codec::text_frame(&out)
}

/// A message's stamped payload around its position: `head`, the offset in decimal, `mid`, the
/// epoch in decimal, `"}`. A store that decides positions elsewhere (the cluster's Redis
/// script) writes them in between, so its frames are byte for byte what [`Store::append`]
/// would have built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampParts {
    pub head: Vec<u8>,
    pub mid: Vec<u8>,
}

impl StampParts {
    fn of(payload: &[u8], resume: &ResumeSpec) -> StampParts {
        let body = payload.strip_suffix(b"}").unwrap_or(payload);
        let mut head = Vec::with_capacity(payload.len() + 64);
        head.extend_from_slice(body);
        if body.iter().any(|b| !b.is_ascii_whitespace() && *b != b'{') {
            head.push(b',');
        }
        // Field names are identifiers (validated): no escaping needed.
        head.push(b'"');
        head.extend_from_slice(resume.offset_field.as_bytes());
        head.extend_from_slice(b"\":");
        let mid = format!(",\"{}\":\"", resume.epoch_field).into_bytes();
        StampParts { head, mid }
    }

    /// The parts for `frame` delivered to a room of kind `proto.history[rule]`, when it is
    /// one of the kind's messages and the kind keeps messages (not latest values); `None`
    /// otherwise, and the frame goes out as it is.
    pub fn entering(proto: &Protocol, rule: usize, frame: &[u8]) -> Option<StampParts> {
        let spec = &proto.history[rule];
        let resume = proto.resume.as_ref()?;
        if spec.latest_by.is_some() {
            return None;
        }
        let payload = text_payload(frame)?;
        spec.enters(&wire_type(payload)?)
            .then(|| StampParts::of(payload, resume))
    }

    /// As [`StampParts::entering`] for a latest-value kind: the parts and the message's key.
    pub fn entering_latest(
        proto: &Protocol,
        rule: usize,
        frame: &[u8],
    ) -> Option<(StampParts, Rc<str>)> {
        let spec = &proto.history[rule];
        let resume = proto.resume.as_ref()?;
        let field = spec.latest_by.as_deref()?;
        let payload = text_payload(frame)?;
        let obj: Map<String, Value> = serde_json::from_slice(payload).ok()?;
        if !obj
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| spec.enters(t))
        {
            return None;
        }
        Some((StampParts::of(payload, resume), key_of(&obj, field)?))
    }
}

/// The answer a joining socket is told after its catch-up: `recovered` (also on a fresh join,
/// telling it where it starts) or `not_recovered` with the reason, each with the position the
/// client continues from.
pub fn notice(proto: &Protocol, caught: &CaughtUp) -> Option<Bytes> {
    let resume = proto.resume.as_ref()?;
    let at = caught.deliver.last().map_or(caught.start, |(p, _)| *p);
    let (msg, reason) = match caught.recovery {
        Recovery::Recovered | Recovery::Joined => (resume.recovered, None),
        Recovery::NotRecovered(r) => (resume.not_recovered, Some(r)),
    };
    let mut out = Map::new();
    out.insert(
        "type".into(),
        Value::String(proto.messages[msg].wire_type.clone()),
    );
    out.insert(resume.offset_field.clone(), Value::from(at.offset));
    out.insert(
        resume.epoch_field.clone(),
        Value::String(epoch_text(at.epoch)),
    );
    if let Some(r) = reason {
        out.insert(
            resume.reason_field.clone(),
            Value::String(r.code().to_owned()),
        );
    }
    Some(crate::session::encode(&out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::load_protocol;

    const PROTO: &str = r#"
version = 1
name = "t"
about = "History test."

[[endpoints]]
name = "room"
about = "A room."
path = "/ws/{id}/"
room = "r:{path.id}"

[messages.status]
about = "A status."
direction = "server"
fields.status = { type = "string" }

[messages.location]
about = "A position."
direction = "server"
fields.worker = { type = "string" }

[messages.other]
about = "Not kept."
direction = "server"

[messages.resumed]
about = "Recovered."
direction = "server"
fields.offset = { type = "int" }
fields.epoch = { type = "string" }

[messages.reload]
about = "Not recovered."
direction = "server"
fields.offset = { type = "int" }
fields.epoch = { type = "string" }
fields.reason = { type = "string" }

[history."r:*"]
about = "Statuses."
size = 3
ttl_s = 60
messages = ["status"]

[history."loc:*"]
about = "Latest location per worker."
size = 10
ttl_s = 60
messages = ["location"]
latest_by = "worker"

[resume]
about = "Positions."
offset_field = "offset"
epoch_field = "epoch"
recovered = "resumed"
not_recovered = "reload"
reason_field = "reason"

[close.bye]
about = "Bye."
code = "going_away"
reason = "bye"
reconnect = "backoff"

[close_on]
token_missing = "bye"
token_invalid = "bye"
token_expired = "bye"
forbidden = "bye"
slow_consumer = "bye"
rate_limited = "bye"
too_many_errors = "bye"
idle = "bye"
auth_timeout = "bye"
shutdown = "bye"
internal = "bye"
"#;

    fn proto() -> Protocol {
        load_protocol(PROTO).unwrap_or_else(|d| panic!("{d:?}"))
    }

    fn json(frame: &Bytes) -> Value {
        serde_json::from_slice(text_payload(frame).unwrap()).unwrap()
    }

    fn msg(v: Value) -> Bytes {
        crate::session::encode(v.as_object().unwrap())
    }

    #[test]
    fn entering_messages_are_stamped_once_others_pass() {
        let p = proto();
        let mut s = Store::in_memory(1);
        let rule = p.history_for("r:1").unwrap();
        let f = msg(serde_json::json!({"type": "status", "status": "a"}));
        let stamped = s.append(&p, rule, "r:1", &f, 0).unwrap();
        assert_eq!(stamped.key, None, "only latest-value rooms have keys");
        let v = json(&stamped.frame);
        assert_eq!(v["status"], "a");
        assert_eq!(v["offset"], 1);
        assert!(v["epoch"].as_str().unwrap().parse::<u64>().is_ok());
        let other = msg(serde_json::json!({"type": "other"}));
        assert_eq!(s.append(&p, rule, "r:1", &other, 0), None);
        assert_eq!(p.history_for("x:1"), None);
        assert_eq!(s.held().messages, 1);
    }

    #[test]
    fn stamp_parts_build_the_same_frame() {
        let p = proto();
        let mut s = Store::in_memory(1);
        let rule = p.history_for("r:1").unwrap();
        for f in [
            msg(serde_json::json!({"type": "status", "status": "a"})),
            crate::ws::codec::text_frame(
                format!(r#"{{"type":"status","s":"{}"}}"#, "x".repeat(300)).as_bytes(),
            ),
        ] {
            let parts = StampParts::entering(&p, rule, &f).unwrap();
            let stamped = s.append(&p, rule, "r:1", &f, 0).unwrap().frame;
            let v = json(&stamped);
            let mut built = parts.head.clone();
            built.extend_from_slice(v["offset"].to_string().as_bytes());
            built.extend_from_slice(&parts.mid);
            built.extend_from_slice(v["epoch"].as_str().unwrap().as_bytes());
            built.extend_from_slice(b"\"}");
            assert_eq!(crate::ws::codec::text_frame(&built), stamped);
        }
        let other = msg(serde_json::json!({"type": "other"}));
        assert_eq!(StampParts::entering(&p, rule, &other), None);
        let loc = msg(serde_json::json!({"type": "location", "worker": "w"}));
        assert_eq!(
            StampParts::entering(&p, p.history_for("loc:1").unwrap(), &loc),
            None
        );
    }

    #[test]
    fn catch_up_from_a_position_and_its_notice() {
        let p = proto();
        let mut s = Store::in_memory(1);
        let rule = p.history_for("r:1").unwrap();
        let mut stamped = Vec::new();
        for i in 0..3 {
            let f = msg(serde_json::json!({"type": "status", "status": i.to_string()}));
            stamped.push(s.append(&p, rule, "r:1", &f, 0).unwrap().frame);
        }
        let epoch = json(&stamped[0])["epoch"].as_str().unwrap().to_owned();
        let since = Since::parse(Some("1"), Some(&epoch));
        let caught = s.catch_up(&p, rule, "r:1", since, 0);
        assert_eq!(caught.recovery, Recovery::Recovered);
        let frames: Vec<&Bytes> = caught.deliver.iter().map(|(_, f)| f).collect();
        assert_eq!(frames, vec![&stamped[1], &stamped[2]]);
        let n = json(&notice(&p, &caught).unwrap());
        assert_eq!(n["type"], "resumed");
        assert_eq!(n["offset"], 3);
        assert_eq!(n["epoch"], epoch.as_str());

        let gone = s.catch_up(&p, rule, "r:1", Since::parse(Some("1"), Some("5")), 0);
        let n = json(&notice(&p, &gone).unwrap());
        assert_eq!(n["type"], "reload");
        assert_eq!(n["reason"], "epoch_changed");
        assert_eq!(n["offset"], 3);
        let bad = s.catch_up(&p, rule, "r:1", Since::parse(Some("x"), None), 0);
        assert_eq!(json(&notice(&p, &bad).unwrap())["reason"], "malformed");
        let fresh = s.catch_up(&p, rule, "r:1", Since::Fresh, 0);
        assert!(fresh.deliver.is_empty());
        assert_eq!(json(&notice(&p, &fresh).unwrap())["type"], "resumed");
    }

    #[test]
    fn latest_values_are_kept_per_key() {
        let p = proto();
        let mut s = Store::in_memory(1);
        let rule = p.history_for("loc:1").unwrap();
        for (w, n) in [("a", 1), ("b", 2), ("a", 3)] {
            let f = msg(serde_json::json!({"type": "location", "worker": w, "n": n}));
            let stamped = s.append(&p, rule, "loc:1", &f, 0).unwrap();
            assert_eq!(
                stamped.key.as_deref(),
                Some(w),
                "the key rides beside the frame"
            );
        }
        let f = msg(serde_json::json!({"type": "location", "worker": 7}));
        let stamped = s.append(&p, rule, "loc:1", &f, 0).unwrap();
        assert_eq!(stamped.key.as_deref(), Some("7"), "keys compare as text");
        let caught = s.catch_up(&p, rule, "loc:1", Since::Fresh, 0);
        let got: Vec<(String, u64)> = caught
            .deliver
            .iter()
            .map(|(_, f)| {
                let v = json(f);
                (
                    match &v["worker"] {
                        Value::String(w) => w.clone(),
                        other => other.to_string(),
                    },
                    v["offset"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, vec![("b".into(), 2), ("a".into(), 3), ("7".into(), 4)]);
    }

    #[test]
    fn sweep_keeps_used_and_occupied_rooms() {
        let p = proto();
        let mut s = Store::in_memory(1);
        let rule = p.history_for("r:1").unwrap();
        let f = msg(serde_json::json!({"type": "status", "status": "a"}));
        s.append(&p, rule, "r:1", &f, 0).unwrap();
        s.catch_up(&p, rule, "r:2", Since::Fresh, 0);
        s.sweep(&p, 59_999, |_| false);
        assert_eq!(
            s.held(),
            Held {
                messages: 1,
                rooms: 2
            }
        );
        s.sweep(&p, 60_000, |r| r == "r:2");
        assert_eq!(
            s.held(),
            Held {
                messages: 0,
                rooms: 1
            }
        );
    }

    #[test]
    fn a_catch_up_larger_than_the_queue_is_refused_at_startup() {
        let src = PROTO.replacen(
            "[[endpoints]]",
            "[limits]\nqueue_max_messages = 20\n\n[[endpoints]]",
            1,
        );
        let diags = load_protocol(&src).unwrap_err();
        let codes: Vec<&str> = diags.iter().map(|d| d.code.as_str()).collect();
        // `r:*` may send 3 and `loc:*` 10 (its keys) at once: only the second is over 20 - 16.
        assert_eq!(codes, ["B050"], "{diags:?}");
        assert!(diags[0].message.contains("loc:*"), "{}", diags[0].message);
    }

    #[test]
    fn since_parses_or_says_malformed() {
        assert_eq!(Since::parse(None, None), Since::Fresh);
        assert_eq!(Since::parse(Some(""), None), Since::Start);
        assert_eq!(Since::parse(Some(""), Some("")), Since::Start);
        assert_eq!(Since::parse(Some(""), Some("4")), Since::Malformed);
        assert_eq!(Since::parse(None, Some("4")), Since::Malformed);
        assert_eq!(Since::parse(Some("3"), Some("")), Since::Malformed);
        assert_eq!(Since::parse(Some("3"), None), Since::Malformed);
        assert_eq!(Since::parse(Some("-1"), Some("4")), Since::Malformed);
        assert!(matches!(Since::parse(Some("3"), Some("zz")), Since::At(_)));
    }

    mod against_a_model {
        //! The store as the runtime drives it: publishes stamped and kept, time passing,
        //! sweeps that drop idle rooms (a new epoch), and clients coming back from the last
        //! position they were told. Against a model of every message ever published, each
        //! catch-up is exactly what the client missed, in order, with the position written
        //! in every frame; or nothing and "not recovered".
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Publish,
            Advance(u64),
            Sweep { occupied: bool },
            Back(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => Just(Op::Publish),
                2 => (0u64..40).prop_map(|s| Op::Advance(s * 1000)),
                1 => any::<bool>().prop_map(|occupied| Op::Sweep { occupied }),
                4 => (0usize..3).prop_map(Op::Back),
            ]
        }

        proptest! {
            #[test]
            fn catch_ups_are_exactly_what_was_missed(ops in proptest::collection::vec(op(), 1..120)) {
                let p = proto();
                let rule = p.history_for("r:1").unwrap();
                let mut s = Store::in_memory(3);
                let mut now = 0u64;
                // (epoch text, offset, text, published at) of everything published.
                let mut model: Vec<(String, u64, String, u64)> = Vec::new();
                let mut clients: Vec<Option<(u64, String)>> = vec![None; 3];
                for (i, o) in ops.into_iter().enumerate() {
                    match o {
                        Op::Publish => {
                            let f = msg(serde_json::json!({"type": "status", "status": i.to_string()}));
                            let v = json(&s.append(&p, rule, "r:1", &f, now).unwrap().frame);
                            let (offset, epoch) = (v["offset"].as_u64().unwrap(), v["epoch"].as_str().unwrap().to_owned());
                            if let Some(last) = model.last().filter(|m| m.0 == epoch) {
                                prop_assert_eq!(offset, last.1 + 1);
                            }
                            model.push((epoch, offset, i.to_string(), now));
                        }
                        Op::Advance(ms) => now += ms,
                        Op::Sweep { occupied } => s.sweep(&p, now, |_| occupied),
                        Op::Back(c) => {
                            let since = match &clients[c] {
                                None => Since::Start,
                                Some((o, e)) => Since::parse(Some(&o.to_string()), Some(e)),
                            };
                            let caught = s.catch_up(&p, rule, "r:1", since, now);
                            let told = json(&notice(&p, &caught).unwrap());
                            let at = (told["offset"].as_u64().unwrap(), told["epoch"].as_str().unwrap().to_owned());
                            match (&clients[c], caught.recovery) {
                                (Some((o, e)), Recovery::Recovered) => {
                                    let missed: Vec<_> = model.iter().filter(|m| &m.0 == e && m.1 > *o).collect();
                                    prop_assert_eq!(missed.len(), caught.deliver.len());
                                    for (m, (pos, f)) in missed.iter().zip(&caught.deliver) {
                                        let v = json(f);
                                        prop_assert_eq!(pos.offset, m.1);
                                        prop_assert_eq!(v["offset"].as_u64(), Some(m.1));
                                        prop_assert_eq!(v["epoch"].as_str(), Some(m.0.as_str()));
                                        prop_assert_eq!(v["status"].as_str(), Some(m.2.as_str()));
                                    }
                                    prop_assert_eq!(&at.1, e);
                                }
                                (Some(_), Recovery::NotRecovered(_)) => prop_assert!(caught.deliver.is_empty()),
                                (None, Recovery::Joined) => prop_assert!(caught.deliver.is_empty()),
                                (from, r) => prop_assert!(false, "{:?} from {:?}", r, from),
                            }
                            // The position told is the room's newest: nothing after it exists.
                            if let Some(last) = model.last().filter(|m| m.0 == at.1) {
                                prop_assert_eq!(at.0, last.1);
                            } else {
                                prop_assert_eq!(at.0, 0, "a new epoch starts at 0");
                            }
                            clients[c] = Some(at);
                        }
                    }
                }
            }
        }
    }
}
