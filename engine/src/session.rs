//! The per-connection state machine after the handshake: what each inbound message does,
//! rate limits, error counting and token expiry. Owned by the connection's shard.
//!
//! Sans-IO: the caller passes bytes and the current time in, and carries out the returned
//! [`Effect`]s (write to this socket, fan out to a room, close).

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::auth::Identity;
use crate::message::{self, RenderCtx};
use crate::protocol::{Action, MsgId, Protocol, Recipients, Rejection};
use crate::ws::codec;

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write this encoded frame to the sender's socket.
    Send(Bytes),
    /// Deliver an encoded frame to every member of a room. `room: None` is the home room.
    Room {
        room: Option<String>,
        frame: Bytes,
        recipients: Recipients,
    },
    /// Close with the protocol's declared code for this rejection.
    Close(Rejection),
    /// Close with an RFC 6455 code the engine picks itself (e.g. 1003 for binary data).
    CloseRaw(u16, &'static str),
}

/// Token bucket: `burst` messages at once, refilled at `per_second`.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// The state of one authenticated (or public) socket. Owned by the connection's shard.
#[derive(Debug)]
pub struct Session {
    pub endpoint: usize,
    pub params: Vec<String>,
    pub identity: Option<Identity>,
    buckets: Vec<(MsgId, Bucket)>,
    errors: u32,
}

/// Fresh ids for `{gen.id}`: unique per process because each shard owns a disjoint range.
/// Owned by its shard.
#[derive(Debug)]
pub struct IdGen {
    next: u64,
}

impl IdGen {
    pub fn new(shard: usize, start_ms: u64) -> Self {
        // ids stay below 2^53 so JavaScript clients read them exactly; starting from the clock
        // keeps them increasing across restarts unless a shard averaged more than one id per
        // millisecond of uptime.
        IdGen {
            next: start_ms.saturating_mul(64) | (shard as u64 & 63),
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.next += 64;
        self.next
    }
}

impl Session {
    pub fn new(proto: &Protocol, endpoint: usize, params: Vec<String>, identity: Option<Identity>, now_ms: u64) -> Self {
        let buckets = proto.endpoints[endpoint]
            .inbound
            .iter()
            .filter_map(|&m| {
                proto.messages[m].rate.map(|r| {
                    (
                        m,
                        Bucket {
                            tokens: r.burst as f64,
                            last_ms: now_ms,
                        },
                    )
                })
            })
            .collect();
        Session {
            endpoint,
            params,
            identity,
            buckets,
            errors: 0,
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.user_id.as_str())
    }

    /// Unix seconds at which the token expires, if any.
    pub fn expires_at(&self) -> Option<u64> {
        self.identity.as_ref().map(|i| i.expires_at)
    }

    fn render(
        &self,
        proto: &Protocol,
        msg: MsgId,
        base: Option<Map<String, Value>>,
        with: &[(String, crate::protocol::ValueTemplate)],
        inbound: Option<&Map<String, Value>>,
        now_ms: u64,
        ids: &mut IdGen,
    ) -> Bytes {
        let mut next = || ids.next_id();
        let mut ctx = RenderCtx {
            params: &self.params,
            claims: self.identity.as_ref().map(|i| &i.claims),
            user_id: self.user_id(),
            inbound,
            now_ms,
            next_id: &mut next,
        };
        let obj = message::build(&proto.messages[msg], base, with, &mut ctx);
        encode(&obj)
    }

    /// Messages the endpoint sends on connect, in declaration order.
    pub fn on_connect(&self, proto: &Protocol, now_ms: u64, ids: &mut IdGen, out: &mut Vec<Effect>) {
        for s in &proto.endpoints[self.endpoint].on_connect {
            out.push(Effect::Send(self.render(proto, s.send, None, &s.with, None, now_ms, ids)));
        }
    }

    /// Renders a room name template (action rooms) for this session.
    fn room(&self, t: &crate::protocol::Template, inbound: &Map<String, Value>, now_ms: u64, ids: &mut IdGen) -> String {
        let mut next = || ids.next_id();
        let mut ctx = RenderCtx {
            params: &self.params,
            claims: self.identity.as_ref().map(|i| &i.claims),
            user_id: self.user_id(),
            inbound: Some(inbound),
            now_ms,
            next_id: &mut next,
        };
        ctx.string(t)
    }

    fn reject(&mut self, proto: &Protocol, code: &'static str, text: &str, last: Rejection, now_ms: u64, ids: &mut IdGen, out: &mut Vec<Effect>) {
        self.errors += 1;
        if self.errors > proto.limits.max_errors {
            out.push(Effect::Close(last));
            return;
        }
        if let Some(err) = proto.error_reply {
            let with = [
                ("code".to_owned(), crate::protocol::ValueTemplate::Literal(Value::String(code.into()))),
                ("message".to_owned(), crate::protocol::ValueTemplate::Literal(Value::String(text.into()))),
            ];
            out.push(Effect::Send(self.render(proto, err, None, &with, None, now_ms, ids)));
        }
    }

    /// A binary message: JSON protocols take text only.
    pub fn handle_binary(&mut self, out: &mut Vec<Effect>) {
        out.push(Effect::CloseRaw(1003, "Binary messages are not accepted"));
    }

    /// One complete inbound text message.
    pub fn handle_text(&mut self, proto: &Protocol, text: &[u8], now_ms: u64, ids: &mut IdGen, out: &mut Vec<Effect>) {
        let ep = &proto.endpoints[self.endpoint];
        let obj = match serde_json::from_slice::<Value>(text) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return self.reject(proto, "invalid_message", "message must be a JSON object", Rejection::TooManyErrors, now_ms, ids, out),
            Err(_) => return self.reject(proto, "invalid_json", "message is not valid JSON", Rejection::TooManyErrors, now_ms, ids, out),
        };
        let msg_id = match obj.get(&ep.type_field) {
            Some(Value::String(t)) => match ep.inbound_by_wire.get(t.as_str()) {
                Some(&id) => id,
                None => return self.reject(proto, "unknown_type", "this endpoint does not accept that message type", Rejection::TooManyErrors, now_ms, ids, out),
            },
            None if ep.untyped_inbound.is_some() => ep.untyped_inbound.unwrap_or_default(),
            _ => return self.reject(proto, "invalid_message", "message has no type", Rejection::TooManyErrors, now_ms, ids, out),
        };
        let spec = &proto.messages[msg_id];
        if let Err(e) = message::check(&spec.schema, &obj, "") {
            let text = e.describe();
            return self.reject(proto, "invalid_message", &text, Rejection::TooManyErrors, now_ms, ids, out);
        }
        if spec
            .ignore_if_empty
            .iter()
            .any(|f| obj.get(f).and_then(Value::as_str).is_none_or(|s| s.trim().is_empty()))
        {
            return;
        }
        if let Some(rate) = spec.rate {
            if let Some((_, b)) = self.buckets.iter_mut().find(|(m, _)| *m == msg_id) {
                let elapsed = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
                b.tokens = (b.tokens + elapsed * rate.per_second).min(rate.burst as f64);
                b.last_ms = now_ms;
                if b.tokens < 1.0 {
                    return self.reject(proto, "rate_limited", "too many messages of this type", Rejection::RateLimited, now_ms, ids, out);
                }
                b.tokens -= 1.0;
            }
        }
        if let Some(a) = &spec.reply {
            let frame = self.action_frame(proto, msg_id, a, &obj, now_ms, ids);
            out.push(Effect::Send(frame));
        }
        if let Some(a) = &spec.broadcast {
            let frame = self.action_frame(proto, msg_id, a, &obj, now_ms, ids);
            let room = a.room.as_ref().map(|t| self.room(t, &obj, now_ms, ids));
            out.push(Effect::Room {
                room,
                frame,
                recipients: a.recipients,
            });
        }
    }

    fn action_frame(&self, proto: &Protocol, msg_id: MsgId, a: &Action, obj: &Map<String, Value>, now_ms: u64, ids: &mut IdGen) -> Bytes {
        let base = a
            .forward
            .then(|| message::declared_fields(&proto.messages[msg_id].schema, obj));
        self.render(proto, a.send, base, &a.with, Some(obj), now_ms, ids)
    }
}

/// Serialises once into a ready-to-send text frame shared by every recipient.
pub fn encode(obj: &Map<String, Value>) -> Bytes {
    // Serialising a Map cannot fail: keys are strings and values are plain JSON.
    let json = serde_json::to_vec(obj).unwrap_or_default();
    codec::text_frame(&json)
}
