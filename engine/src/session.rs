//! The per-connection state machine after the handshake: what each inbound message does,
//! rate limits, error counting and token expiry. Owned by the connection's shard.
//!
//! Sans-IO: the caller passes bytes and the current time in, and carries out the returned
//! [`Effect`]s (write to this socket, fan out to a room, close).

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::auth::{Identity, Verifier};
use crate::geo::{Position, Radius};
use crate::message::{self, Fields, Inbound, RenderCtx};
use crate::protocol::{
    Action, ForwardId, GeoUpdate, MsgId, Protocol, Recipients, Rejection, Template, ValueTemplate,
};
use crate::token_bucket::TokenBucket;
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
    /// Narrow what this socket receives from now on (replaces any earlier filter).
    SetFilter(Filter),
    /// A change to a geo pool or a dispatched job, for the shard that owns it.
    Geo(GeoEffect),
    /// Hand the message to the backend (`forward_to`); the rest waits for its answer.
    Forward(Box<ForwardCall>),
}

/// A client message for the app's backend, and what its acceptance lets happen. Owned by the
/// connection's shard.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardCall {
    pub forward: ForwardId,
    /// The request body, but for `room`: the connection adds its home room's name.
    pub body: Map<String, Value>,
    /// Where the answer's `broadcast` goes; `None` is the home room.
    pub room: Option<String>,
    /// The message's own actions (reply, broadcast, geo), carried out once the backend
    /// accepts it, in order with the answer's own messages after them.
    pub then: Vec<Effect>,
}

/// A per-connection delivery filter: messages of the `applies_to` wire types pass only when
/// their `field` is one of `values`; other messages always pass. Owned by the connection's
/// shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub applies_to: Vec<String>,
    pub field: String,
    pub values: Vec<String>,
}

impl Filter {
    /// `obj` is the outbound message; `None` (not a JSON object) passes, it cannot be judged.
    pub fn admits(&self, obj: Option<&Map<String, Value>>) -> bool {
        let Some(obj) = obj else {
            return true;
        };
        let wire = obj.get("type").and_then(Value::as_str).unwrap_or("");
        if !self.applies_to.iter().any(|w| w == wire) {
            return true;
        }
        match obj.get(&self.field) {
            Some(Value::String(s)) => self.values.iter().any(|v| v == s),
            Some(Value::Number(n)) => self.values.iter().any(|v| *v == n.to_string()),
            _ => false,
        }
    }
}

/// The JSON object inside an unfragmented, unmasked text frame built by [`encode`].
pub fn frame_object(frame: &[u8]) -> Option<Map<String, Value>> {
    let len7 = *frame.get(1)? & 0x7f;
    let start = match len7 {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(frame.get(start..)?).ok()
}

/// A geo change one message (or a disconnect) asks for. The shard adds the connection's home
/// room and id and routes it to the owner of the pool (`geo:<pool>:<key>`) or job. Crosses
/// shards (Send).
#[derive(Debug, Clone, PartialEq)]
pub enum GeoEffect {
    Provider {
        pool: usize,
        key: String,
        provider: String,
        change: ProviderChange,
    },
    Search {
        pool: usize,
        key: String,
        change: SearchChange,
    },
    Respond {
        dispatch: usize,
        job: String,
        provider: String,
        accepted: bool,
        frame: Bytes,
    },
}

/// Crosses shards (Send).
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderChange {
    Upsert {
        pos: Position,
        sub: String,
    },
    /// The provider said it is inactive.
    Deactivate,
    /// Its connection ended: removes it only if that connection was the one that put it in.
    Disconnected,
}

/// Crosses shards (Send).
#[derive(Debug, Clone, PartialEq)]
pub enum SearchChange {
    Set {
        centre: Position,
        radius: Radius,
        sub: Option<String>,
    },
    Clear,
    /// Its connection ended: clears it only if that connection set it.
    Disconnected,
}

/// What one turn of message handling may read: the protocol, the clock, the id source.
pub struct Turn<'a> {
    pub proto: &'a Protocol,
    /// One verifier per token kind, by `TokenId` (for in-band token refresh).
    pub verifiers: &'a [Verifier],
    pub now_ms: u64,
    pub ids: &'a mut IdGen,
}

/// The state of one authenticated (or public) socket. Owned by the connection's shard.
#[derive(Debug)]
pub struct Session {
    pub endpoint: usize,
    pub params: Vec<String>,
    pub identity: Option<Identity>,
    /// Unix second from which `identity`'s token no longer verifies; kept beside it so the
    /// connection can tell a refresh by comparing one number per message.
    valid_until: Option<u64>,
    buckets: Vec<(MsgId, TokenBucket)>,
    errors: u32,
    /// The pool instance this connection's provider is active in.
    geo_provider: Option<ProviderSlot>,
    /// (pool, key) of this connection's standing search.
    geo_search: Option<(usize, String)>,
}

/// Where a connection's provider is active. Owned by the connection's shard.
#[derive(Debug)]
struct ProviderSlot {
    pool: usize,
    key: String,
    sub: String,
    /// In the pool instance. A status update without a position (as VISIBLE's clients send
    /// it) makes the provider active but leaves it out until its next move places it.
    placed: bool,
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
    pub fn new(
        proto: &Protocol,
        endpoint: usize,
        params: Vec<String>,
        mut identity: Option<Identity>,
        now_ms: u64,
    ) -> Self {
        if let Some(id) = identity.as_mut() {
            proto.keep_read_claims(&mut id.claims);
        }
        let buckets = proto.endpoints[endpoint]
            .inbound
            .iter()
            .filter_map(|&m| {
                proto.messages[m]
                    .rate
                    .map(|r| (m, TokenBucket::full(r, now_ms)))
            })
            .collect();
        Session {
            endpoint,
            params,
            valid_until: identity.as_ref().map(|id| valid_until(proto, id)),
            identity,
            buckets,
            errors: 0,
            geo_provider: None,
            geo_search: None,
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.user_id.as_str())
    }

    /// Unix seconds at which the token expires, if any.
    pub fn expires_at(&self) -> Option<u64> {
        self.identity.as_ref().map(|i| i.expires_at)
    }

    /// The unix second from which the token no longer verifies, if there is one: `exp` plus
    /// its kind's leeway, the boundary `Verifier::verify` applies at admission. Changes only
    /// when the token is refreshed in band.
    pub fn valid_until(&self) -> Option<u64> {
        self.valid_until
    }

    /// Runs `f` with what templates may read for this session.
    fn with_ctx<R>(
        &self,
        t: &mut Turn<'_>,
        inbound: Option<&dyn Fields>,
        f: impl FnOnce(&mut RenderCtx<'_>) -> R,
    ) -> R {
        let ids = &mut *t.ids;
        let mut next = || ids.next_id();
        f(&mut RenderCtx {
            params: &self.params,
            param_names: &t.proto.endpoints[self.endpoint].path.params,
            claims: self.identity.as_ref().map(|i| &i.claims),
            user_id: self.user_id(),
            inbound,
            now_ms: t.now_ms,
            next_id: &mut next,
            minted: None,
            geo: None,
        })
    }

    fn render(
        &self,
        t: &mut Turn<'_>,
        msg: MsgId,
        base: Option<Map<String, Value>>,
        with: &[(String, ValueTemplate)],
        inbound: Option<&dyn Fields>,
    ) -> Bytes {
        let spec = &t.proto.messages[msg];
        encode(&self.with_ctx(t, inbound, |ctx| message::build(spec, base, with, ctx)))
    }

    /// Messages the endpoint sends on connect, in declaration order.
    pub fn on_connect(&self, t: &mut Turn<'_>, out: &mut Vec<Effect>) {
        let proto = t.proto;
        for s in &proto.endpoints[self.endpoint].on_connect {
            out.push(Effect::Send(self.render(t, s.send, None, &s.with, None)));
        }
    }

    /// Presence: what the rest of the home room hears when this socket joins.
    pub fn on_join(&self, t: &mut Turn<'_>, out: &mut Vec<Effect>) {
        let proto = t.proto;
        for s in &proto.endpoints[self.endpoint].on_join {
            out.push(Effect::Room {
                room: None,
                frame: self.render(t, s.send, None, &s.with, None),
                recipients: Recipients::ExcludeSender,
            });
        }
    }

    /// Presence: what a joining socket is told about each user already in its home room
    /// (`online`). Ids that are whole numbers go out as numbers, as tokens carry them.
    pub fn online(&self, t: &mut Turn<'_>, users: &[Box<str>], out: &mut Vec<Effect>) {
        let proto = t.proto;
        let Some(o) = &proto.endpoints[self.endpoint].online else {
            return;
        };
        for user in users {
            let id = user
                .parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(user.to_string()));
            let mut base = Map::new();
            base.insert(o.user_field.clone(), id);
            out.push(Effect::Send(self.render(
                t,
                o.send,
                Some(base),
                &o.with,
                None,
            )));
        }
    }

    /// Presence: frames for the rest of the home room once this socket has left it.
    pub fn on_leave(&self, t: &mut Turn<'_>) -> Vec<Bytes> {
        let proto = t.proto;
        proto.endpoints[self.endpoint]
            .on_leave
            .iter()
            .map(|s| self.render(t, s.send, None, &s.with, None))
            .collect()
    }

    /// Renders a room name template (action rooms) for this session.
    fn room(&self, t: &mut Turn<'_>, tpl: &Template, inbound: &Inbound) -> String {
        self.with_ctx(t, Some(inbound), |ctx| ctx.string(tpl))
    }

    /// Counts an error against the client; answers with the protocol's error message or, past
    /// the limit, closes with `last`.
    fn reject(&mut self, t: &mut Turn<'_>, why: Reject, out: &mut Vec<Effect>) {
        self.errors += 1;
        if self.errors > t.proto.limits.max_errors {
            out.push(Effect::Close(why.rejection));
            return;
        }
        if let Some(err) = t.proto.error_reply {
            let with = [
                (
                    "code".to_owned(),
                    ValueTemplate::Literal(Value::String(why.code.into())),
                ),
                (
                    "message".to_owned(),
                    ValueTemplate::Literal(Value::String(why.text)),
                ),
            ];
            out.push(Effect::Send(self.render(t, err, None, &with, None)));
        }
    }

    /// A binary message: JSON protocols take text only.
    pub fn handle_binary(&mut self, out: &mut Vec<Effect>) {
        out.push(Effect::CloseRaw(1003, "Binary messages are not accepted"));
    }

    /// One complete inbound text message.
    pub fn handle_text(&mut self, t: &mut Turn<'_>, text: &[u8], out: &mut Vec<Effect>) {
        let proto = t.proto;
        let ep = &proto.endpoints[self.endpoint];
        let obj = match Inbound::parse(text) {
            Ok(Some(o)) => o,
            Ok(None) => {
                return self.reject(t, Reject::invalid("message must be a JSON object"), out)
            }
            Err(_) => {
                return self.reject(
                    t,
                    Reject::new("invalid_json", "message is not valid JSON"),
                    out,
                )
            }
        };
        if let (Some(wire), Some(Value::String(ty))) = (&ep.refresh, obj.field(&ep.type_field)) {
            if wire == ty {
                return self.refresh(t, &obj, out);
            }
        }
        let msg_id = match (obj.field(&ep.type_field), ep.untyped_inbound) {
            (Some(Value::String(w)), _) => match ep.inbound_by_wire.get(w.as_str()) {
                Some(&id) => id,
                None => {
                    return self.reject(
                        t,
                        Reject::new(
                            "unknown_type",
                            "this endpoint does not accept that message type",
                        ),
                        out,
                    )
                }
            },
            (None, Some(id)) => id,
            _ => return self.reject(t, Reject::invalid("message has no type"), out),
        };
        let spec = &proto.messages[msg_id];
        if let Err(e) = message::check(&spec.schema, &obj, "") {
            return self.reject(t, Reject::invalid(&e.describe()), out);
        }
        if !spec.only_if.is_empty() {
            let claims = self.identity.as_ref().map(|i| &i.claims);
            if !spec
                .only_if
                .iter()
                .all(|c| c.eval_claims(claims, &self.params))
            {
                return;
            }
        }
        if spec.ignore_if_empty.iter().any(|f| {
            obj.field(f)
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
        }) {
            return;
        }
        if let Some(rate) = spec.rate {
            if let Some((_, b)) = self.buckets.iter_mut().find(|(m, _)| *m == msg_id) {
                if b.take(rate, t.now_ms).is_err() {
                    let why = Reject {
                        code: "rate_limited",
                        text: "too many messages of this type".into(),
                        rejection: Rejection::RateLimited,
                    };
                    return self.reject(t, why, out);
                }
            }
        }
        if let Some(f) = &spec.filter {
            let values = obj
                .field(&f.values_from)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Effect::SetFilter(Filter {
                applies_to: f
                    .applies_to
                    .iter()
                    .map(|m| {
                        proto
                            .messages
                            .iter()
                            .find(|s| &s.name == m)
                            .map(|s| s.wire_type.clone())
                            .unwrap_or_else(|| m.clone())
                    })
                    .collect(),
                field: f.field.clone(),
                values,
            }));
        }
        let mut geo = Vec::new();
        if let Err(text) = self.geo_effects(t, msg_id, &obj, &mut geo) {
            return self.reject(t, Reject::invalid(&text), out);
        }
        // A forwarded message's own actions wait for the backend's acceptance.
        let actions_from = out.len();
        if let Some(a) = &spec.reply {
            let frame = self.action_frame(t, msg_id, a, &obj);
            out.push(Effect::Send(frame));
        }
        if let Some(a) = &spec.broadcast {
            let frame = self.action_frame(t, msg_id, a, &obj);
            let room = a.room.as_ref().map(|tpl| self.room(t, tpl, &obj));
            out.push(Effect::Room {
                room,
                frame,
                recipients: a.recipients,
            });
        }
        out.extend(geo.into_iter().map(Effect::Geo));
        if let Some(f) = spec.forward_to {
            let then = out.split_off(actions_from);
            let call = self.forward_call(t, f, msg_id, &obj, then);
            out.push(Effect::Forward(Box::new(call)));
        }
    }

    /// The backend request for a forwarded message: who sent what, where. `forward_id` is
    /// fresh per message and the same on every retry, so the backend can store it once.
    fn forward_call(
        &self,
        t: &mut Turn<'_>,
        forward: ForwardId,
        msg_id: MsgId,
        obj: &Inbound,
        then: Vec<Effect>,
    ) -> ForwardCall {
        let proto = t.proto;
        let spec = &proto.messages[msg_id];
        let ep = &proto.endpoints[self.endpoint];
        let path: Map<String, Value> = ep
            .path
            .params
            .iter()
            .zip(&self.params)
            .map(|(p, v)| (p.name.clone(), Value::String(v.clone())))
            .collect();
        let mut body = Map::new();
        body.insert(
            "forward_id".into(),
            Value::String(t.ids.next_id().to_string()),
        );
        body.insert("endpoint".into(), Value::String(ep.name.clone()));
        body.insert("path".into(), Value::Object(path));
        // As hooks send it: a number when the id is one, else text.
        body.insert(
            "user_id".into(),
            self.user_id().map(message::id_value).unwrap_or(Value::Null),
        );
        body.insert(
            "claims".into(),
            self.identity
                .as_ref()
                .map(|i| Value::Object(i.claims.clone()))
                .unwrap_or(Value::Null),
        );
        body.insert("type".into(), Value::String(spec.wire_type.clone()));
        body.insert(
            "message".into(),
            Value::Object(message::declared_fields(&spec.schema, obj)),
        );
        let room = proto.forwards[forward]
            .broadcast
            .as_ref()
            .and_then(|b| b.room.as_ref())
            .map(|tpl| self.room(t, tpl, obj));
        ForwardCall {
            forward,
            body,
            room,
            then,
        }
    }

    /// What the connection's end means for geo state: its provider leaves, its search ends.
    pub fn on_disconnect(&mut self, out: &mut Vec<Effect>) {
        let placed = self.geo_provider.take().filter(|p| p.placed);
        if let (Some(ProviderSlot { pool, key, .. }), Some(provider)) = (placed, self.user_id()) {
            out.push(Effect::Geo(GeoEffect::Provider {
                pool,
                key,
                provider: provider.to_owned(),
                change: ProviderChange::Disconnected,
            }));
        }
        if let Some((pool, key)) = self.geo_search.take() {
            out.push(Effect::Geo(GeoEffect::Search {
                pool,
                key,
                change: SearchChange::Disconnected,
            }));
        }
    }

    /// The geo effects of one valid message, or why its values cannot be used (a schema
    /// error for the client: missing, NaN or out-of-range coordinates).
    fn geo_effects(
        &mut self,
        t: &mut Turn<'_>,
        msg_id: MsgId,
        obj: &Inbound,
        out: &mut Vec<GeoEffect>,
    ) -> Result<(), String> {
        let spec = &t.proto.messages[msg_id];
        if let Some(a) = &spec.geo_provider {
            let provider = self
                .user_id()
                .ok_or("only an authenticated caller can be a provider")?
                .to_owned();
            match a.update {
                GeoUpdate::Move => {
                    let pos = position(obj, &a.latitude, &a.longitude)?;
                    if let Some(slot) = &mut self.geo_provider {
                        slot.placed = true;
                        out.push(GeoEffect::Provider {
                            pool: slot.pool,
                            key: slot.key.clone(),
                            provider,
                            change: ProviderChange::Upsert {
                                pos,
                                sub: slot.sub.clone(),
                            },
                        });
                    }
                }
                GeoUpdate::Status => {
                    let active = flag(obj, a.active.as_deref())?;
                    let key = self.room(t, &a.key, obj);
                    let previous = self.geo_provider.take();
                    if !active {
                        if let Some(p) = previous.filter(|p| p.placed) {
                            out.push(GeoEffect::Provider {
                                pool: p.pool,
                                key: p.key,
                                provider,
                                change: ProviderChange::Deactivate,
                            });
                        }
                        return self.search_effects(t, msg_id, obj, out);
                    }
                    // No position at all is VISIBLE's documented status update: active, placed
                    // by the next move. Half a position is a mistake.
                    let pos = match (obj.field(&a.latitude), obj.field(&a.longitude)) {
                        (None, None) => None,
                        _ => Some(position(obj, &a.latitude, &a.longitude)?),
                    };
                    let sub = a
                        .sub
                        .as_deref()
                        .and_then(|f| text(obj, f))
                        .unwrap_or_default();
                    let same = |p: &ProviderSlot| p.pool == a.pool && p.key == key;
                    let slot = match (previous, pos) {
                        // Already in place here with the same sub: nothing changes.
                        (Some(p), None) if p.placed && same(&p) && p.sub == sub => p,
                        (previous, pos) => {
                            // Leaves where it was, unless the upsert below replaces it there.
                            if let Some(p) = previous.filter(|p| p.placed) {
                                if pos.is_none() || !same(&p) {
                                    out.push(GeoEffect::Provider {
                                        pool: p.pool,
                                        key: p.key,
                                        provider: provider.clone(),
                                        change: ProviderChange::Deactivate,
                                    });
                                }
                            }
                            if let Some(pos) = pos {
                                out.push(GeoEffect::Provider {
                                    pool: a.pool,
                                    key: key.clone(),
                                    provider,
                                    change: ProviderChange::Upsert {
                                        pos,
                                        sub: sub.clone(),
                                    },
                                });
                            }
                            ProviderSlot {
                                pool: a.pool,
                                key,
                                sub,
                                placed: pos.is_some(),
                            }
                        }
                    };
                    self.geo_provider = Some(slot);
                }
            }
        }
        self.search_effects(t, msg_id, obj, out)
    }

    /// A message's standing-search effects (`geo_search`) and job answers (`geo_respond`).
    fn search_effects(
        &mut self,
        t: &mut Turn<'_>,
        msg_id: MsgId,
        obj: &Inbound,
        out: &mut Vec<GeoEffect>,
    ) -> Result<(), String> {
        let spec = &t.proto.messages[msg_id];
        if let Some(a) = &spec.geo_search {
            let searching = flag(obj, a.searching.as_deref())?;
            let previous = self.geo_search.take();
            if searching {
                let centre = position(obj, &a.latitude, &a.longitude)?;
                let km = obj
                    .field(&a.radius_km)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| format!("{}: required when searching", a.radius_km))?;
                let radius = Radius::from_km(km).map_err(|e| format!("{}: {e}", a.radius_km))?;
                let key = self.room(t, &a.key, obj);
                let sub = a
                    .sub
                    .as_deref()
                    .and_then(|f| text(obj, f))
                    .filter(|s| !s.is_empty());
                if let Some((pool, old_key)) = previous {
                    if pool != a.pool || old_key != key {
                        out.push(GeoEffect::Search {
                            pool,
                            key: old_key,
                            change: SearchChange::Clear,
                        });
                    }
                }
                out.push(GeoEffect::Search {
                    pool: a.pool,
                    key: key.clone(),
                    change: SearchChange::Set {
                        centre,
                        radius,
                        sub,
                    },
                });
                self.geo_search = Some((a.pool, key));
            } else if let Some((pool, key)) = previous {
                out.push(GeoEffect::Search {
                    pool,
                    key,
                    change: SearchChange::Clear,
                });
            }
        }
        if let Some(a) = &spec.geo_respond {
            let provider = self
                .user_id()
                .ok_or("only an authenticated caller can respond")?
                .to_owned();
            let job = self.room(t, &a.job, obj);
            let accepted = obj.field(&a.accept_field) == Some(&a.accept_value);
            let frame = self.action_frame(t, msg_id, &a.relay, obj);
            out.push(GeoEffect::Respond {
                dispatch: a.dispatch,
                job,
                provider,
                accepted,
                frame,
            });
        }
        Ok(())
    }

    /// Replaces the socket's token with a fresh one for the same user, so a long-lived socket
    /// outlives short-lived access tokens. Anything else closes with the declared code.
    fn refresh(&mut self, t: &mut Turn<'_>, obj: &Inbound, out: &mut Vec<Effect>) {
        let ep = &t.proto.endpoints[self.endpoint];
        let Some(token) = obj.field("token").and_then(Value::as_str) else {
            out.push(Effect::Close(Rejection::TokenMissing));
            return;
        };
        match crate::auth::verify_any(t.verifiers, &ep.tokens, token, t.now_ms / 1000) {
            Ok(mut id) => {
                t.proto.keep_read_claims(&mut id.claims);
                if self
                    .identity
                    .as_ref()
                    .is_some_and(|cur| cur.user_id == id.user_id)
                {
                    self.valid_until = Some(valid_until(t.proto, &id));
                    self.identity = Some(id);
                } else {
                    out.push(Effect::Close(Rejection::TokenInvalid));
                }
            }
            Err(r) => out.push(Effect::Close(Rejection::token(r))),
        }
    }

    fn action_frame(&self, t: &mut Turn<'_>, msg_id: MsgId, a: &Action, obj: &Inbound) -> Bytes {
        if let Some(frame) = &a.frame {
            return self.with_ctx(t, Some(obj), |ctx| frame.text_frame(ctx));
        }
        let base = a
            .forward
            .then(|| message::declared_fields(&t.proto.messages[msg_id].schema, obj));
        self.render(t, a.send, base, &a.with, Some(obj))
    }
}

/// See [`Session::valid_until`].
fn valid_until(proto: &Protocol, id: &Identity) -> u64 {
    let leeway = proto
        .tokens
        .iter()
        .find(|t| *t.name == *id.token_kind)
        .map_or(0, |t| t.leeway_s);
    id.expires_at.saturating_add(leeway)
}

/// A position from two number fields; missing, non-finite or out-of-range values are the
/// client's schema error.
pub fn position(obj: &dyn Fields, lat: &str, lon: &str) -> Result<Position, String> {
    let read = |f: &str| {
        obj.field(f)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("{f}: required field is missing"))
    };
    let (la, lo) = (read(lat)?, read(lon)?);
    Position::new(la, lo).map_err(|e| match e {
        crate::geo::GeoError::Latitude => format!("{lat}: {e}"),
        _ => format!("{lon}: {e}"),
    })
}

/// A flag field; an undeclared flag (`None`) is always on, a declared but absent one is off.
fn flag(obj: &dyn Fields, field: Option<&str>) -> Result<bool, String> {
    match field {
        None => Ok(true),
        Some(f) => Ok(obj.field(f).and_then(Value::as_bool).unwrap_or(false)),
    }
}

/// A string or integer field as text.
pub fn text(obj: &dyn Fields, field: &str) -> Option<String> {
    match obj.field(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A refused client message: the error code sent back and the close used past the limit.
struct Reject {
    code: &'static str,
    text: String,
    rejection: Rejection,
}

impl Reject {
    fn new(code: &'static str, text: &str) -> Self {
        Reject {
            code,
            text: text.to_owned(),
            rejection: Rejection::TooManyErrors,
        }
    }

    fn invalid(text: &str) -> Self {
        Reject::new("invalid_message", text)
    }
}

/// Serialises once into a ready-to-send text frame shared by every recipient.
pub fn encode(obj: &Map<String, Value>) -> Bytes {
    // Serialising a Map cannot fail: keys are strings and values are plain JSON.
    let json = serde_json::to_vec(obj).unwrap_or_default();
    codec::text_frame(&json)
}

#[cfg(test)]
mod filter_tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn filters_apply_to_their_types_only() {
        let f = Filter {
            applies_to: vec!["notification".into()],
            field: "notification_type".into(),
            values: vec!["reservation".into(), "7".into()],
        };
        let n = |t: Value| obj(json!({"type": "notification", "notification_type": t}));
        assert!(f.admits(Some(&n(json!("reservation")))));
        assert!(f.admits(Some(&n(json!(7)))));
        assert!(!f.admits(Some(&n(json!("payment")))));
        assert!(!f.admits(Some(&obj(json!({"type": "notification"})))));
        assert!(f.admits(Some(&obj(json!({"type": "pong"})))));
        assert!(f.admits(None));
    }

    #[test]
    fn frames_decode_back_to_their_object() {
        for len in [10usize, 200, 70_000] {
            let o = obj(json!({"type": "notification", "message": "x".repeat(len)}));
            assert_eq!(frame_object(&encode(&o)), Some(o));
        }
        assert_eq!(frame_object(b"\x81"), None);
    }
}

#[cfg(test)]
mod geo_tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::auth::UserId;
    use crate::protocol::load_protocol;

    fn proto() -> Protocol {
        load_protocol(include_str!("../../config/protocols/visible.toml")).unwrap()
    }

    fn session(p: &Protocol, endpoint: &str, user: u64) -> Session {
        let ep = p.endpoints.iter().position(|e| e.name == endpoint).unwrap();
        let identity = Identity {
            user_id: UserId::from_claim(&json!(user)).unwrap(),
            claims: json!({"user_id": user}).as_object().unwrap().clone(),
            expires_at: u64::MAX,
            token_kind: Arc::from("access"),
        };
        Session::new(p, ep, Vec::new(), Some(identity), 0)
    }

    fn run(p: &Protocol, s: &mut Session, v: Value) -> Vec<Effect> {
        let mut ids = IdGen::new(0, 0);
        let mut out = Vec::new();
        let mut t = Turn {
            proto: p,
            verifiers: &[],
            now_ms: 0,
            ids: &mut ids,
        };
        s.handle_text(&mut t, v.to_string().as_bytes(), &mut out);
        out
    }

    fn geo(effects: Vec<Effect>) -> Vec<GeoEffect> {
        effects
            .into_iter()
            .map(|e| match e {
                Effect::Geo(g) => g,
                other => panic!("expected a geo effect, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn provider_status_move_category_change_and_disconnect() {
        let p = proto();
        let mut s = session(&p, "location_provider", 7);
        // A move before any status is not an error and does nothing.
        let out = run(
            &p,
            &mut s,
            json!({"type": "location_update", "latitude": 1.0, "longitude": 2.0}),
        );
        assert!(out.is_empty());
        let out = geo(run(
            &p,
            &mut s,
            json!({"type": "provider_status_update", "active": true, "category_code": "A",
                   "subcategory_code": "S", "latitude": 1.0, "longitude": 2.0}),
        ));
        assert!(
            matches!(&out[..], [GeoEffect::Provider { key, provider, change: ProviderChange::Upsert { sub, .. }, .. }]
            if key == "A" && provider == "7" && sub == "S")
        );
        let out = geo(run(
            &p,
            &mut s,
            json!({"type": "location_update", "latitude": 1.5, "longitude": 2.0}),
        ));
        assert!(
            matches!(&out[..], [GeoEffect::Provider { key, change: ProviderChange::Upsert { pos, sub }, .. }]
            if key == "A" && sub == "S" && pos.lat() == 1.5)
        );
        // Changing category leaves the old pool instance first.
        let out = geo(run(
            &p,
            &mut s,
            json!({"type": "provider_status_update", "active": true, "category_code": "B",
                   "latitude": 1.0, "longitude": 2.0}),
        ));
        assert!(matches!(&out[..], [
            GeoEffect::Provider { key: k1, change: ProviderChange::Deactivate, .. },
            GeoEffect::Provider { key: k2, change: ProviderChange::Upsert { .. }, .. },
        ] if k1 == "A" && k2 == "B"));
        let mut out = Vec::new();
        s.on_disconnect(&mut out);
        assert!(
            matches!(&geo(out)[..], [GeoEffect::Provider { key, change: ProviderChange::Disconnected, .. }] if key == "B")
        );
        let mut out = Vec::new();
        s.on_disconnect(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_status_without_position_waits_for_the_next_move() {
        let p = proto();
        let mut s = session(&p, "location_provider", 7);
        let status = |sub: &str| {
            json!({"type": "provider_status_update", "active": true, "category_code": "A",
                   "subcategory_code": sub})
        };
        // VISIBLE's documented update: active, but nowhere yet.
        assert!(run(&p, &mut s, status("S")).is_empty());
        let mut out = Vec::new();
        s.on_disconnect(&mut out);
        assert!(out.is_empty(), "nothing to take out: {out:?}");
        assert!(run(&p, &mut s, status("S")).is_empty());
        let out = geo(run(
            &p,
            &mut s,
            json!({"type": "location_update", "latitude": 1.0, "longitude": 2.0}),
        ));
        assert!(
            matches!(&out[..], [GeoEffect::Provider { key, change: ProviderChange::Upsert { sub, .. }, .. }]
            if key == "A" && sub == "S")
        );
        // The same status again leaves it where it is; another sub takes it out until the
        // next move places it with that sub.
        assert!(run(&p, &mut s, status("S")).is_empty());
        let out = geo(run(&p, &mut s, status("T")));
        assert!(
            matches!(&out[..], [GeoEffect::Provider { key, change: ProviderChange::Deactivate, .. }] if key == "A")
        );
        let out = geo(run(
            &p,
            &mut s,
            json!({"type": "location_update", "latitude": 1.0, "longitude": 2.0}),
        ));
        assert!(
            matches!(&out[..], [GeoEffect::Provider { change: ProviderChange::Upsert { sub, .. }, .. }] if sub == "T")
        );
        // Going inactive takes it out.
        let out = geo(run(
            &p,
            &mut s,
            json!({"type": "provider_status_update", "active": false, "category_code": "A"}),
        ));
        assert!(matches!(
            &out[..],
            [GeoEffect::Provider {
                change: ProviderChange::Deactivate,
                ..
            }]
        ));
    }

    #[test]
    fn bad_positions_are_rejected_before_any_effect() {
        let p = proto();
        let mut s = session(&p, "location_provider", 7);
        for bad in [
            json!({"type": "provider_status_update", "active": true, "category_code": "A",
                   "latitude": 1.0}),
            json!({"type": "provider_status_update", "active": true, "category_code": "A",
                   "latitude": 95.0, "longitude": 2.0}),
        ] {
            let out = run(&p, &mut s, bad);
            assert!(
                matches!(&out[..], [Effect::Send(_)]),
                "an error reply only: {out:?}"
            );
        }
        // Inactive needs no position.
        let out = run(
            &p,
            &mut s,
            json!({"type": "provider_status_update", "active": false, "category_code": "A"}),
        );
        assert!(out.is_empty());
    }

    #[test]
    fn search_set_replace_and_stop() {
        let p = proto();
        let mut s = session(&p, "location_seeker", 9);
        let search = |cat: &str, sub: Option<&str>| {
            let mut v = json!({"type": "seeker_search_update", "searching": true,
                "latitude": 10.0, "longitude": 20.0, "category_code": cat, "distance_radius": 5});
            if let Some(x) = sub {
                v["subcategory_code"] = json!(x);
            }
            v
        };
        let out = geo(run(&p, &mut s, search("A", Some(""))));
        assert!(
            matches!(&out[..], [GeoEffect::Search { key, change: SearchChange::Set { sub: None, radius, .. }, .. }]
            if key == "A" && radius.km() == 5.0)
        );
        let out = geo(run(&p, &mut s, search("B", Some("S"))));
        assert!(matches!(&out[..], [
            GeoEffect::Search { key: k1, change: SearchChange::Clear, .. },
            GeoEffect::Search { key: k2, change: SearchChange::Set { sub: Some(_), .. }, .. },
        ] if k1 == "A" && k2 == "B"));
        let out = geo(run(
            &p,
            &mut s,
            json!({"type": "seeker_search_update", "searching": false, "category_code": "B"}),
        ));
        assert!(
            matches!(&out[..], [GeoEffect::Search { key, change: SearchChange::Clear, .. }] if key == "B")
        );
        let mut out = Vec::new();
        s.on_disconnect(&mut out);
        assert!(out.is_empty());
    }
}

#[cfg(test)]
mod claim_tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::auth::UserId;
    use crate::protocol::load_protocol;

    #[test]
    fn a_session_keeps_only_the_claims_its_protocol_reads() {
        let p = load_protocol(include_str!("../../config/protocols/hunarmitra.toml")).unwrap();
        let read: Vec<&str> = p.claims_read.iter().map(String::as_str).collect();
        assert_eq!(read, ["is_staff", "name", "role"]);
        let claims = json!({"user_id": 7, "name": "Asha", "role": "worker", "jti": "0123456789abcdef", "iat": 1, "exp": 2});
        let identity = Identity {
            user_id: UserId::from_claim(&json!(7)).unwrap(),
            claims: claims.as_object().unwrap().clone(),
            expires_at: 2,
            token_kind: Arc::from("access"),
        };
        let ep = p
            .endpoints
            .iter()
            .position(|e| e.name == "booking")
            .unwrap();
        let s = Session::new(&p, ep, vec!["b1".into()], Some(identity), 0);
        let kept = &s.identity.as_ref().unwrap().claims;
        assert_eq!(
            Value::Object(kept.clone()),
            json!({"name": "Asha", "role": "worker"})
        );
        // The user id survives separately: `{user.id}` never reads the claims map.
        assert_eq!(
            s.identity.as_ref().unwrap().user_id,
            UserId::from_claim(&json!(7)).unwrap()
        );
    }
}

#[cfg(test)]
mod expiry_tests {
    use serde_json::json;

    use super::*;
    use crate::auth::{Algorithm, Issuer, KeyMaterial};
    use crate::protocol::load_protocol;

    const SECRET: &[u8] = b"test-secret-that-is-at-least-32-bytes-long!!";
    const NOW: u64 = 1_700_000_000;

    /// The engine-core protocol with a 5 s leeway on its access tokens, and their verifier.
    fn setup() -> (Protocol, Vec<Verifier>, Issuer) {
        let src = include_str!("../../tests/fixtures/core.toml").replace(
            "claims = { token_type = \"access\" }",
            "claims = { token_type = \"access\" }\nleeway_s = 5",
        );
        let p = load_protocol(&src).unwrap();
        let key = KeyMaterial::Hmac(SECRET.to_vec());
        let v = crate::auth::hmac_verifier(&p.tokens[0], SECRET);
        (p, vec![v], Issuer::new(Algorithm::HS256, &key).unwrap())
    }

    fn token(iss: &Issuer, user: u64, ttl_s: u64) -> String {
        let claims = json!({"user_id": user, "role": "member", "token_type": "access"});
        iss.issue(claims.as_object().unwrap().clone(), NOW, ttl_s)
            .unwrap()
    }

    #[test]
    fn valid_until_adds_the_leeway_and_follows_a_refresh() {
        let (p, verifiers, iss) = setup();
        let id = verifiers[0].verify(&token(&iss, 5, 3), NOW).unwrap();
        let ep = p.endpoints.iter().position(|e| e.name == "room").unwrap();
        let mut s = Session::new(&p, ep, vec!["r".into()], Some(id), NOW * 1000);
        assert_eq!(s.expires_at(), Some(NOW + 3));
        assert_eq!(s.valid_until(), Some(NOW + 3 + 5));

        let refresh = json!({"type": "refresh_token", "token": token(&iss, 5, 3600)});
        let mut ids = IdGen::new(0, 0);
        let mut out = Vec::new();
        let mut turn = Turn {
            proto: &p,
            verifiers: &verifiers,
            now_ms: (NOW + 2) * 1000,
            ids: &mut ids,
        };
        s.handle_text(&mut turn, refresh.to_string().as_bytes(), &mut out);
        assert_eq!(out, []);
        assert_eq!(s.valid_until(), Some(NOW + 3600 + 5));

        // Another user's token, or garbage, closes the socket and leaves the deadline as it was.
        for bad in [token(&iss, 6, 60), "garbage".into()] {
            let msg = json!({"type": "refresh_token", "token": bad});
            out.clear();
            s.handle_text(&mut turn, msg.to_string().as_bytes(), &mut out);
            assert_eq!(out, [Effect::Close(Rejection::TokenInvalid)]);
            assert_eq!(s.valid_until(), Some(NOW + 3600 + 5));
        }
    }
}

#[cfg(test)]
mod path_tests {
    //! `{path.<p>}` in a message's actions reads the parameter of the endpoint the message
    //! arrived on, whatever its index there.
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::auth::UserId;
    use crate::protocol::load_protocol;

    const SRC: &str = r#"
version = 1
name = "paths"
about = "One message accepted on two endpoints with the parameter at different places."
[tokens.access]
about = "Access token."
key = "jwt"
algorithms = ["HS256"]
[[endpoints]]
name = "pair"
about = "Parameter second."
path = "/ws/pair/{org}/{room_id}/"
tokens = ["access"]
token_sources = ["query:token"]
room = "room:{path.org}:{path.room_id}"
inbound = ["say"]
[[endpoints]]
name = "single"
about = "Parameter first."
path = "/ws/single/{room_id}/"
tokens = ["access"]
token_sources = ["query:token"]
room = "room:{path.room_id}"
inbound = ["say"]
[messages.say]
about = "Said."
direction = "client"
fields.text = { type = "string" }
broadcast = { send = "said", room = "copy:{path.room_id}", with = { text = "{in.text}", room_id = "{path.room_id}", at = "{path.room_id|now.iso}" } }
[messages.said]
about = "What was said, and where."
direction = "server"
fields.text = { type = "string" }
fields.room_id = { type = "string" }
fields.at = { type = "string" }
[close.auth]
about = "Bad token."
code = 4001
reason = "Unauthenticated"
reconnect = "after-reauth"
[close.away]
about = "Going away."
code = "going_away"
reason = "Going away"
reconnect = "backoff"
[close_on]
token_missing = "auth"
token_invalid = "auth"
token_expired = "auth"
forbidden = "auth"
slow_consumer = "away"
rate_limited = "away"
too_many_errors = "away"
idle = "away"
auth_timeout = "auth"
shutdown = "away"
internal = "away"
"#;

    fn said(p: &Protocol, endpoint: &str, params: &[&str]) -> (Option<String>, Value) {
        let ep = p.endpoints.iter().position(|e| e.name == endpoint).unwrap();
        let identity = Identity {
            user_id: UserId::from_claim(&json!(1)).unwrap(),
            claims: Map::new(),
            expires_at: u64::MAX,
            token_kind: Arc::from("access"),
        };
        let params = params.iter().map(|s| s.to_string()).collect();
        let mut s = Session::new(p, ep, params, Some(identity), 0);
        let mut ids = IdGen::new(0, 0);
        let mut out = Vec::new();
        let mut t = Turn {
            proto: p,
            verifiers: &[],
            now_ms: 0,
            ids: &mut ids,
        };
        s.handle_text(&mut t, br#"{"type": "say", "text": "hi"}"#, &mut out);
        match out.as_slice() {
            [Effect::Room { room, frame, .. }] => (
                room.clone(),
                Value::Object(frame_object(frame).expect("a frame")),
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_path_parameter_is_read_by_name_on_each_endpoint() {
        let p = load_protocol(SRC).unwrap();
        let want = |r: &str| {
            (
                Some(format!("copy:{r}")),
                json!({"type": "said", "text": "hi", "room_id": r, "at": r}),
            )
        };
        assert_eq!(said(&p, "pair", &["acme", "r-7"]), want("r-7"));
        assert_eq!(said(&p, "single", &["r-9"]), want("r-9"));
    }

    #[test]
    fn an_endpoint_without_the_parameter_is_refused_by_name() {
        let src = SRC
            .replace("path = \"/ws/single/{room_id}/\"", "path = \"/ws/single/\"")
            .replace(
                "room = \"room:{path.room_id}\"\ninbound",
                "room = \"lobby\"\ninbound",
            );
        let d = load_protocol(&src).unwrap_err();
        assert_eq!(d.len(), 3, "{d:?}"); // with, room and the alternative each name it
        assert!(
            d.iter()
                .all(|d| d.code == crate::protocol::Code::BadTemplate
                    && d.message.contains("endpoint `single` accepts this message")),
            "{d:?}"
        );
    }
}
