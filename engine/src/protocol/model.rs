//! The frozen protocol: validated, indexed, immutable. Crosses shards (Send): built once at
//! startup and shared read-only behind an `Arc`.

use std::collections::HashMap;

use serde_json::Value;

/// Index into [`Protocol::messages`].
pub type MsgId = usize;
/// Index into [`Protocol::closes`].
pub type CloseId = usize;
/// Index into [`Protocol::tokens`].
pub type TokenId = usize;
/// Index into [`Protocol::hooks`].
pub type HookId = usize;
/// Index into [`Protocol::forwards`].
pub type ForwardId = usize;

#[derive(Debug)]
pub struct Protocol {
    pub name: String,
    pub about: String,
    pub limits: Limits,
    pub tokens: Vec<TokenSpec>,
    pub endpoints: Vec<Endpoint>,
    pub messages: Vec<MessageSpec>,
    pub closes: Vec<CloseSpec>,
    pub close_on: CloseOn,
    /// Server message sent to a client whose message failed validation; `None` closes instead.
    pub error_reply: Option<MsgId>,
    /// Server-direction messages by their wire `type`, for the publish API.
    pub server_by_wire: HashMap<String, MsgId>,
    /// Geo pools and dispatch endpoints (`[geo]`); empty when the protocol has none.
    pub geo: GeoSpec,
    pub hooks: Vec<Hook>,
    pub http: Vec<HttpEndpoint>,
    pub forwards: Vec<Forward>,
    /// Every claim some template (`{claims.x}`) or condition reads. An open connection keeps
    /// only these of its token's claims: a token's other claims (`jti`, `iat`, ...) would
    /// cost every idle socket a few hundred bytes for nothing.
    pub claims_read: std::collections::BTreeSet<String>,
    /// Room kinds that keep history (`[history."<pattern>"]`), in file order; at most one
    /// matches a room.
    pub history: Vec<HistorySpec>,
    /// How positions travel on the wire; present whenever `history` is not empty.
    pub resume: Option<ResumeSpec>,
    /// What Django's channel layer delivers through Beacon (`[channel_layer]`).
    pub channel_layer: Option<ChannelLayerSpec>,
}

/// `[channel_layer]`, checked: groups to rooms and event types to server messages.
#[derive(Debug)]
pub struct ChannelLayerSpec {
    pub groups: Vec<crate::channel_layer::GroupMap>,
    pub events: HashMap<String, EventMap>,
}

/// The server message one event type becomes.
#[derive(Debug)]
pub struct EventMap {
    pub send: MsgId,
    pub body: crate::channel_layer::EventBody,
}

impl Protocol {
    /// The history rule of `room`'s kind, if its kind keeps history.
    pub fn history_for(&self, room: &str) -> Option<usize> {
        if self.history.is_empty() {
            return None;
        }
        self.history.iter().position(|h| h.matches(room))
    }

    /// Drops the claims nothing after admission reads (see [`Protocol::claims_read`]).
    pub fn keep_read_claims(&self, claims: &mut serde_json::Map<String, serde_json::Value>) {
        if claims.keys().all(|k| self.claims_read.contains(k)) {
            return;
        }
        // Rebuilt rather than retained so the map's spare capacity goes too.
        *claims = std::mem::take(claims)
            .into_iter()
            .filter(|(k, _)| self.claims_read.contains(k))
            .collect();
    }
}

/// A room kind that keeps history: its recent messages (or, with `latest_by`, the latest one
/// per key), each stamped with its position. Crosses shards (Send), read-only.
#[derive(Debug)]
pub struct HistorySpec {
    /// The pattern as written: `booking:*` (every room starting `booking:`) or an exact name.
    pub pattern: String,
    pub about: String,
    /// What a room name must start with (the pattern before `*`), or equal without `*`.
    pub prefix: String,
    pub wildcard: bool,
    pub size: usize,
    pub ttl_ms: u64,
    /// The most missed messages one resume sends; more is "not recovered".
    pub max_catch_up: usize,
    /// The server messages that enter history, by wire type; others pass through unchanged.
    pub wire_types: Vec<String>,
    /// A latest-value room: only the newest message per value of this field is kept.
    pub latest_by: Option<String>,
}

impl HistorySpec {
    /// Whether some room the template renders may be of this kind (judged from the
    /// template's leading text), e.g. for documenting an endpoint's resume parameters.
    pub fn may_match(&self, room: &Template) -> bool {
        let mut lead = String::new();
        let mut whole = true;
        for p in &room.pieces {
            match p {
                Piece::Text(t) => lead.push_str(t),
                Piece::Var(_) => {
                    whole = false;
                    break;
                }
            }
        }
        match (whole, self.wildcard) {
            (true, _) => self.matches(&lead),
            (false, true) => lead.starts_with(&self.prefix) || self.prefix.starts_with(&lead),
            (false, false) => self.prefix.starts_with(&lead),
        }
    }

    pub fn matches(&self, room: &str) -> bool {
        if self.wildcard {
            room.starts_with(&self.prefix)
        } else {
            room == self.prefix
        }
    }

    pub fn enters(&self, wire_type: &str) -> bool {
        self.wire_types.iter().any(|w| w == wire_type)
    }
}

/// `[resume]`: the wire names of a position and the messages that answer a resume. Crosses
/// shards (Send), read-only.
#[derive(Debug)]
pub struct ResumeSpec {
    pub about: String,
    /// Added to every message that enters history (an integer) ...
    pub offset_field: String,
    /// ... with its room's epoch (a string).
    pub epoch_field: String,
    /// Query parameters of a reconnecting client's last position.
    pub offset_param: String,
    pub epoch_param: String,
    /// Sent after the missed messages (or on a fresh join), with the position fields.
    pub recovered: MsgId,
    /// Sent instead of them when the client cannot have every one, with the reason.
    pub not_recovered: MsgId,
    pub reason_field: String,
}

/// An authorization question put to the app's backend: `POST <backend><path>`.
#[derive(Debug)]
pub struct Hook {
    pub name: String,
    pub about: String,
    /// Path under the deployment's backend base URL.
    pub path: String,
    pub timeout_ms: u64,
    /// 0: never cached.
    pub cache_ttl_ms: u64,
    /// Close used when the backend cannot answer (timeout, refused, 5xx): fail closed.
    pub unavailable: CloseId,
}

/// Client messages handed to the app's backend: `POST <backend><path>` with the message, the
/// sender and its room; the backend stores it and answers what to send, or refuses.
#[derive(Debug)]
pub struct Forward {
    pub name: String,
    pub about: String,
    /// Path under the deployment's backend base URL.
    pub path: String,
    /// Per attempt.
    pub timeout_ms: u64,
    /// Further attempts after a timeout, a failed connection or a 5xx (same `forward_id`).
    pub retries: u32,
    /// The server message the answer's `broadcast` object becomes, and where it goes.
    pub broadcast: Option<ForwardBroadcast>,
    /// The server message the answer's `reply` object becomes (to the sender only).
    pub reply: Option<MsgId>,
    pub unavailable: Unavailable,
}

#[derive(Debug)]
pub struct ForwardBroadcast {
    pub send: MsgId,
    /// `None`: the sender's home room.
    pub room: Option<Template>,
    pub recipients: Recipients,
}

/// What a client whose message could not be handed to the backend gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// The protocol's error reply with this code; the socket stays open.
    Error(String),
    /// This declared close.
    Close(CloseId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
}

/// A token minted by an HTTP endpoint.
#[derive(Debug)]
pub struct Mint {
    pub token: TokenId,
    pub ttl_s: u64,
    pub with: Vec<(String, ValueTemplate)>,
}

/// An HTTP endpoint declared by the protocol.
#[derive(Debug)]
pub struct HttpEndpoint {
    pub name: String,
    pub about: String,
    pub method: HttpMethod,
    pub path: PathPattern,
    /// Token kinds accepted as `Authorization: Bearer`; empty means public.
    pub tokens: Vec<TokenId>,
    pub authorize: Vec<Rule>,
    /// The message whose schema the JSON body must match (read by `{in.*}`).
    pub body: Option<MsgId>,
    /// Per caller (user id) across all shards.
    pub rate: Option<Rate>,
    pub mint: Option<Mint>,
    pub broadcast: Option<Action>,
    pub respond: Vec<(String, ValueTemplate)>,
}

/// A filter a client message sets on its own connection: outbound messages of the listed wire
/// types reach it only when `field` is one of the values the client sent.
#[derive(Debug)]
pub struct FilterSpec {
    pub field: String,
    /// The inbound field (an array of strings) holding the accepted values.
    pub values_from: String,
    pub applies_to: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub handshake_timeout_ms: u64,
    pub auth_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub ping_interval_ms: u64,
    pub queue_max_messages: usize,
    pub queue_max_bytes: usize,
    pub max_errors: u32,
    /// Open sockets one user may hold across all endpoints (0: no cap).
    pub max_connections_per_user: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug)]
pub struct TokenSpec {
    pub name: String,
    pub about: String,
    /// Name of the key in the deployment config's `[keys]` table.
    pub key: String,
    /// Where `key` is written in the protocol file, for diagnostics about key material.
    pub key_span: std::ops::Range<usize>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub user_id_claim: String,
    pub required_claims: Vec<String>,
    pub exact_claims: Vec<(String, Value)>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `?name=<token>` in the request URL.
    Query(String),
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Sec-WebSocket-Protocol: <marker>, <token>`; the marker is echoed back.
    Subprotocol(String),
    /// A first client message `{"type": <wire>, "token": ...}` within the auth timeout.
    FirstMessage(String),
}

#[derive(Debug)]
pub struct Endpoint {
    pub name: String,
    pub about: String,
    pub path: PathPattern,
    pub tokens: Vec<TokenId>,
    pub token_sources: Vec<TokenSource>,
    pub room: Template,
    pub inbound: Vec<MsgId>,
    pub outbound: Vec<MsgId>,
    pub on_connect: Vec<SendSpec>,
    pub authorize: Vec<Rule>,
    /// Allowed `Origin` values (scheme://host[:port]); `None` accepts any origin.
    pub origins: Option<Vec<String>>,
    /// The JSON field naming an inbound message's type.
    pub type_field: String,
    /// The message an inbound object without a type field is taken as.
    pub untyped_inbound: Option<MsgId>,
    /// Inbound wire type -> message, for this endpoint only.
    pub inbound_by_wire: HashMap<String, MsgId>,
    /// Conformance echo: every data message comes back unchanged (RFC 6455 test suites, load
    /// tests). Such an endpoint has no inbound messages.
    pub echo: bool,
    /// Wire type of a client message `{"type": <refresh>, "token": ...}` that replaces the
    /// socket's token (same user) before it expires.
    pub refresh: Option<String>,
    /// Close used when the path has this endpoint's shape but lacks parameters (see
    /// [`PathPattern::misses_params`]); `None` answers such paths with 404.
    pub missing_params: Option<CloseId>,
    /// Sent to the rest of the home room when a socket joins / leaves it.
    pub on_join: Vec<SendSpec>,
    pub on_leave: Vec<SendSpec>,
    /// Sent to a joining socket once per other user present in its home room.
    pub online: Option<OnlineSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamType {
    String,
    Int,
}

#[derive(Debug)]
pub struct ParamSpec {
    pub name: String,
    pub ty: ParamType,
    pub max_length: usize,
}

#[derive(Debug)]
pub enum Segment {
    Literal(String),
    Param(usize),
}

/// A path like `/ws/bookings/{booking_id}/`: literal segments and typed parameters, each
/// parameter a whole segment.
#[derive(Debug)]
pub struct PathPattern {
    pub source: String,
    pub segments: Vec<Segment>,
    pub params: Vec<ParamSpec>,
    pub trailing_slash: bool,
}

impl PathPattern {
    /// Matches a raw request path; returns the parameter values in declaration order.
    /// `Err(())` means the path has this shape but a parameter failed its type.
    pub fn matches(&self, path: &str) -> Option<Result<Vec<String>, ParamError>> {
        let trimmed = path.strip_prefix('/')?;
        let (body, has_slash) = match trimmed.strip_suffix('/') {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        if has_slash != self.trailing_slash && !(body.is_empty() && self.segments.is_empty()) {
            return None;
        }
        let parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut values = vec![String::new(); self.params.len()];
        let mut bad = None;
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                Segment::Literal(lit) => {
                    if lit != part {
                        return None;
                    }
                }
                Segment::Param(i) => {
                    let spec = &self.params[*i];
                    match check_param(spec, part) {
                        Ok(v) => values[*i] = v,
                        Err(e) => {
                            bad.get_or_insert(e);
                        }
                    }
                }
            }
        }
        Some(match bad {
            Some(e) => Err(e),
            None => Ok(values),
        })
    }
}

impl PathPattern {
    /// Whether `path` has this pattern's literal segments but lacks parameters: a parameter
    /// segment is empty (`/ws/chat//7/`) or the path stops before trailing parameter segments
    /// (`/ws/chat/3/`, `/ws/chat/`). Literal mismatches are not "missing", they are elsewhere.
    pub fn misses_params(&self, path: &str) -> bool {
        if self.params.is_empty() {
            return false;
        }
        let Some(trimmed) = path.strip_prefix('/') else {
            return false;
        };
        let body = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        if parts.len() > self.segments.len() {
            return false;
        }
        let mut missing = parts.len() < self.segments.len();
        for (seg, part) in self.segments.iter().zip(&parts) {
            match seg {
                Segment::Literal(l) if l != part => return false,
                Segment::Literal(_) => {}
                Segment::Param(_) => missing |= part.is_empty(),
            }
        }
        // Only parameters may be absent at the end.
        let rest_are_params = self.segments[parts.len()..]
            .iter()
            .all(|s| matches!(s, Segment::Param(_)));
        missing && rest_are_params
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamError {
    Empty,
    TooLong,
    NotAnInteger,
    BadEncoding,
}

fn check_param(spec: &ParamSpec, raw: &str) -> Result<String, ParamError> {
    if raw.is_empty() {
        return Err(ParamError::Empty);
    }
    let value = percent_decode(raw).ok_or(ParamError::BadEncoding)?;
    if value.len() > spec.max_length {
        return Err(ParamError::TooLong);
    }
    if spec.ty == ParamType::Int && !is_int(&value) {
        return Err(ParamError::NotAnInteger);
    }
    Ok(value)
}

fn is_int(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.len() <= 19 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Percent-decodes a path segment or query value; `None` on bad escapes or non-UTF-8.
pub fn percent_decode(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A string template such as `booking:{path.booking_id}`.
#[derive(Debug, Clone)]
pub struct Template {
    pub source: String,
    pub pieces: Vec<Piece>,
}

#[derive(Debug, Clone)]
pub enum Piece {
    Text(String),
    Var(Var),
}

/// A value the engine fills in when it renders a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Var {
    /// A path parameter, by index.
    Path(usize),
    /// A path parameter by name, in a message's action: the message may be accepted on
    /// several endpoints whose parameters sit at different indexes (validation checks that
    /// every one of them declares it).
    PathNamed(String),
    /// A claim of the caller's token (top-level key).
    Claim(String),
    /// The caller's user id (canonical string form).
    UserId,
    /// A field of the inbound message, by dotted path.
    In(Vec<String>),
    /// A fresh id, unique within this process run.
    GenId,
    /// The server's current time, ISO 8601 UTC with microseconds.
    NowIso,
    /// The server's current time in milliseconds since the Unix epoch.
    NowMs,
    /// The token an HTTP endpoint just minted.
    Minted,
    /// The first alternative that has a value (`{in.timestamp|now.iso}`).
    Or(Vec<Var>),
    /// A fact about one matched provider, in geo templates only.
    Geo(GeoVar),
}

/// What a geo template may say about a matched provider (`{geo.<name>}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeoVar {
    /// The provider's user id (a number when it is one).
    ProviderId,
    Latitude,
    Longitude,
    /// Great-circle distance from the search centre, km.
    DistanceKm,
    /// The distance as text with one decimal, e.g. `2.5km`.
    Distance,
    /// The rendered pool key (e.g. the category).
    PoolKey,
    /// The provider's sub filter value (e.g. the subcategory), `""` when it has none.
    Sub,
}

impl GeoVar {
    pub const ALL: [(&'static str, GeoVar); 7] = [
        ("provider_id", GeoVar::ProviderId),
        ("latitude", GeoVar::Latitude),
        ("longitude", GeoVar::Longitude),
        ("distance_km", GeoVar::DistanceKm),
        ("distance", GeoVar::Distance),
        ("pool_key", GeoVar::PoolKey),
        ("sub", GeoVar::Sub),
    ];
}

/// A JSON value with template strings inside, rendered per message.
#[derive(Debug, Clone)]
pub enum ValueTemplate {
    Literal(Value),
    /// A string that is exactly one variable: the value keeps its JSON type.
    Whole(Var),
    Interp(Template),
    Object(Vec<(String, ValueTemplate)>),
    Array(Vec<ValueTemplate>),
}

#[derive(Debug)]
pub struct SendSpec {
    pub send: MsgId,
    pub with: Vec<(String, ValueTemplate)>,
}

/// One message per user already present, with that user's id in `user_field`.
#[derive(Debug)]
pub struct OnlineSpec {
    pub send: MsgId,
    pub user_field: String,
    pub with: Vec<(String, ValueTemplate)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Client,
    Server,
    Both,
}

impl Direction {
    pub fn inbound(self) -> bool {
        matches!(self, Direction::Client | Direction::Both)
    }
    pub fn outbound(self) -> bool {
        matches!(self, Direction::Server | Direction::Both)
    }
}

#[derive(Debug)]
pub struct MessageSpec {
    pub name: String,
    pub about: String,
    pub direction: Direction,
    pub wire_type: String,
    pub schema: Schema,
    pub reply: Option<Action>,
    pub broadcast: Option<Action>,
    /// Inbound messages whose listed string fields are empty (after trimming) are dropped.
    pub ignore_if_empty: Vec<String>,
    pub rate: Option<Rate>,
    /// Inbound messages from callers who fail these (claim) conditions are dropped silently.
    pub only_if: Vec<Cond>,
    pub filter: Option<FilterSpec>,
    /// Puts the sender (a provider) into, moves it within, or takes it out of a geo pool.
    pub geo_provider: Option<GeoProviderAction>,
    /// Starts, replaces or ends the sender's standing search over a geo pool.
    pub geo_search: Option<GeoSearchAction>,
    /// Answers a dispatched job (accept or reject) on behalf of the sender.
    pub geo_respond: Option<GeoRespondAction>,
    /// Handed to the backend first; the actions above run once it accepts.
    pub forward_to: Option<ForwardId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    Everyone,
    ExcludeSender,
}

#[derive(Debug)]
pub struct Action {
    pub send: MsgId,
    pub with: Vec<(String, ValueTemplate)>,
    /// Copy the inbound message's declared fields into the output before `with` applies.
    pub forward: bool,
    pub recipients: Recipients,
    /// Target room; `None` is the sender's home room.
    pub room: Option<Template>,
    /// `send` and `with` compiled for splicing, set once the protocol has validated; `None`
    /// for a forwarding action or a template that needs the general renderer.
    pub frame: Option<crate::message::Frame>,
}

#[derive(Debug, Default)]
pub struct Schema {
    pub fields: Vec<FieldSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Int,
    Number,
    Bool,
    Object,
    Array,
    /// A user or record id: an integer or a non-empty string.
    Id,
    Any,
}

#[derive(Debug)]
pub struct FieldSpec {
    pub name: String,
    pub ty: FieldType,
    pub required: bool,
    pub enum_values: Vec<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub max_length: Option<usize>,
    pub items: Option<FieldType>,
    pub nested: Option<Schema>,
}

#[derive(Debug)]
pub struct Rule {
    pub cond: Cond,
    pub deny: CloseId,
}

#[derive(Debug)]
pub enum Cond {
    Authenticated,
    ClaimEquals(String, Value),
    ClaimIn(String, Vec<Value>),
    /// The claim, read as an id (number or string), equals a path parameter.
    ClaimEqualsParam(String, usize),
    AllOf(Vec<Cond>),
    AnyOf(Vec<Cond>),
    /// Ask the app's backend (async; evaluated at the handshake only).
    Hook(HookId),
}

/// An id claim (number or string) equals a path parameter (always a string): `123 == "123"`.
pub fn id_eq(v: &Value, s: &str) -> bool {
    match v {
        Value::String(x) => x == s,
        Value::Number(n) => n.to_string() == s,
        _ => false,
    }
}

impl Cond {
    /// Evaluates claim conditions; a hook condition is false here (callers that can wait
    /// evaluate hooks themselves; validation keeps hooks out of synchronous places).
    pub fn eval_claims(
        &self,
        claims: Option<&serde_json::Map<String, Value>>,
        params: &[String],
    ) -> bool {
        let claim = |name: &str| claims.and_then(|c| c.get(name));
        match self {
            Cond::Authenticated => claims.is_some(),
            Cond::ClaimEquals(name, v) => claim(name) == Some(v),
            Cond::ClaimIn(name, vs) => claim(name).is_some_and(|c| vs.contains(c)),
            Cond::ClaimEqualsParam(name, i) => {
                claim(name).is_some_and(|c| params.get(*i).is_some_and(|p| id_eq(c, p)))
            }
            Cond::AllOf(cs) => cs.iter().all(|c| c.eval_claims(claims, params)),
            Cond::AnyOf(cs) => cs.iter().any(|c| c.eval_claims(claims, params)),
            Cond::Hook(_) => false,
        }
    }

    pub fn uses_hook(&self) -> bool {
        match self {
            Cond::Hook(_) => true,
            Cond::AllOf(cs) | Cond::AnyOf(cs) => cs.iter().any(Cond::uses_hook),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    Never,
    Backoff,
    Immediate,
    AfterReauth,
}

impl Reconnect {
    pub fn as_str(self) -> &'static str {
        match self {
            Reconnect::Never => "never",
            Reconnect::Backoff => "backoff",
            Reconnect::Immediate => "immediate",
            Reconnect::AfterReauth => "after-reauth",
        }
    }
}

#[derive(Debug)]
pub struct CloseSpec {
    pub name: String,
    pub about: String,
    pub code: u16,
    pub reason: String,
    pub reconnect: Reconnect,
}

/// Every reason the engine closes a socket on its own initiative. Each maps to exactly one
/// declared close entry through the protocol's `[close_on]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    TokenMissing,
    TokenInvalid,
    TokenExpired,
    Forbidden,
    SlowConsumer,
    RateLimited,
    TooManyErrors,
    Idle,
    AuthTimeout,
    Shutdown,
    Internal,
    /// The user already holds `max_connections_per_user` sockets. Only required in
    /// `[close_on]` when that limit is set.
    TooManyConnections,
}

impl Rejection {
    /// The close for a token that did not verify.
    pub fn token(r: crate::auth::TokenRejection) -> Rejection {
        match r {
            crate::auth::TokenRejection::Expired => Rejection::TokenExpired,
            crate::auth::TokenRejection::Invalid => Rejection::TokenInvalid,
        }
    }

    pub const ALL: [Rejection; 12] = [
        Rejection::TokenMissing,
        Rejection::TokenInvalid,
        Rejection::TokenExpired,
        Rejection::Forbidden,
        Rejection::SlowConsumer,
        Rejection::RateLimited,
        Rejection::TooManyErrors,
        Rejection::Idle,
        Rejection::AuthTimeout,
        Rejection::Shutdown,
        Rejection::Internal,
        Rejection::TooManyConnections,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Rejection::TokenMissing => "token_missing",
            Rejection::TokenInvalid => "token_invalid",
            Rejection::TokenExpired => "token_expired",
            Rejection::Forbidden => "forbidden",
            Rejection::SlowConsumer => "slow_consumer",
            Rejection::RateLimited => "rate_limited",
            Rejection::TooManyErrors => "too_many_errors",
            Rejection::Idle => "idle",
            Rejection::AuthTimeout => "auth_timeout",
            Rejection::Shutdown => "shutdown",
            Rejection::Internal => "internal",
            Rejection::TooManyConnections => "too_many_connections",
        }
    }
}

#[derive(Debug)]
pub struct CloseOn {
    pub map: [CloseId; Rejection::ALL.len()],
}

impl CloseOn {
    pub fn get(&self, r: Rejection) -> CloseId {
        self.map[r as usize]
    }
}

impl Protocol {
    /// Every action that sends a message: replies, broadcasts and geo relays of messages, then
    /// HTTP endpoints' broadcasts, in declaration order.
    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.messages
            .iter()
            .flat_map(|m| {
                m.reply
                    .iter()
                    .chain(&m.broadcast)
                    .chain(m.geo_respond.iter().map(|r| &r.relay))
            })
            .chain(self.http.iter().filter_map(|h| h.broadcast.as_ref()))
    }

    /// [`Protocol::actions`], in the same order, to set their compiled frames.
    pub fn actions_mut(&mut self) -> impl Iterator<Item = &mut Action> {
        self.messages
            .iter_mut()
            .flat_map(|m| {
                m.reply
                    .iter_mut()
                    .chain(&mut m.broadcast)
                    .chain(m.geo_respond.iter_mut().map(|r| &mut r.relay))
            })
            .chain(self.http.iter_mut().filter_map(|h| h.broadcast.as_mut()))
    }

    pub fn close_for(&self, r: Rejection) -> &CloseSpec {
        &self.closes[self.close_id_for(r)]
    }

    /// The declared close a rejection ends in.
    pub fn close_id_for(&self, r: Rejection) -> CloseId {
        self.close_on.get(r)
    }

    pub fn message(&self, id: MsgId) -> &MessageSpec {
        &self.messages[id]
    }

    /// The endpoint whose path pattern matches, with its parameter values.
    pub fn route(&self, path: &str) -> Option<(usize, Result<Vec<String>, ParamError>)> {
        self.endpoints
            .iter()
            .enumerate()
            .find_map(|(i, e)| e.path.matches(path).map(|m| (i, m)))
    }
}

/// Everything under `[geo]`. Crosses shards (Send): part of the frozen protocol.
#[derive(Debug, Default)]
pub struct GeoSpec {
    pub pools: Vec<GeoPoolSpec>,
    pub dispatches: Vec<DispatchSpec>,
}

impl GeoSpec {
    pub fn dispatch_at(&self, path: &str) -> Option<usize> {
        self.dispatches.iter().position(|d| d.path == path)
    }
}

/// A family of provider indexes, one per rendered key (e.g. per category), each on the shard
/// that owns `geo:<pool>:<key>`, and the messages its searches produce.
#[derive(Debug)]
pub struct GeoPoolSpec {
    pub name: String,
    pub about: String,
    /// The key template as written; each action renders its own parsed copy.
    pub key_source: String,
    pub nearby: GeoList,
    pub entered: Option<GeoSend>,
    pub left: Option<GeoSend>,
    pub moved: Option<GeoSend>,
    /// At most one `moved` per (seeker, provider) in this many milliseconds.
    pub moved_min_interval_ms: u64,
}

/// A server message rendered from a template that may use `{geo.*}`.
#[derive(Debug)]
pub struct GeoSend {
    pub send: MsgId,
    pub with: Vec<(String, ValueTemplate)>,
}

/// A server message carrying a list of matches, one rendered `item` per provider.
#[derive(Debug)]
pub struct GeoList {
    pub send: MsgId,
    pub list: String,
    pub item: Vec<(String, ValueTemplate)>,
    pub with: Vec<(String, ValueTemplate)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeoUpdate {
    /// Sets active/inactive, pool key and sub filter value; position when active.
    Status,
    /// Moves a provider already active (in the pool and key its last status put it).
    Move,
}

#[derive(Debug)]
pub struct GeoProviderAction {
    pub pool: usize,
    pub key: Template,
    pub update: GeoUpdate,
    /// Bool field: false takes the provider out; absent means always active.
    pub active: Option<String>,
    pub latitude: String,
    pub longitude: String,
    pub sub: Option<String>,
}

#[derive(Debug)]
pub struct GeoSearchAction {
    pub pool: usize,
    pub key: Template,
    /// Bool field: false ends the search; absent means always searching.
    pub searching: Option<String>,
    pub latitude: String,
    pub longitude: String,
    pub radius_km: String,
    pub sub: Option<String>,
}

#[derive(Debug)]
pub struct GeoRespondAction {
    pub dispatch: usize,
    pub job: Template,
    pub accept_field: String,
    pub accept_value: Value,
    /// What the job's seeker room receives (rendered on the responder's shard).
    pub relay: Action,
}

/// A declared HTTP endpoint that offers a job to the nearest matching providers of a pool.
#[derive(Debug)]
pub struct DispatchSpec {
    pub name: String,
    pub about: String,
    pub path: String,
    pub pool: usize,
    /// Checks the request body; its fields are `{in.*}` in the templates below.
    pub body: MsgId,
    pub key: Template,
    pub latitude: String,
    pub longitude: String,
    pub radius_km: String,
    pub sub: Option<String>,
    /// Int field with how many providers to offer the job to; absent means 1.
    pub max: Option<String>,
    pub max_limit: usize,
    pub job: Template,
    /// One per matched provider, delivered to the room `to` renders for it.
    pub send: GeoSend,
    pub to: Template,
    pub seeker_room: Template,
    /// Sent to the other offered providers once one accepts.
    pub taken: GeoSend,
    pub job_ttl_ms: u64,
}
